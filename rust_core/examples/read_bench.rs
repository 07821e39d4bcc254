//! Decrypt throughput of the core, without Python: `cargo run --release --example read_bench [MiB]`.
//! Writes a signed file of 16 tensors to the temp directory, then times `read_many` into fresh
//! (2 MiB-aligned, huge-page-advised) and into reused destinations, and into reused ones with
//! the verification key (every chunk's BLAKE3 digest checked too). Medians of 7 runs.

use std::alloc::{alloc, dealloc, Layout};
use std::time::Instant;

use enctensor_core::{
    write_file_atomic, Credential, Dtype, Reader, Recipient, TensorSource, WriteOptions,
};

const KEY: [u8; 32] = [1; 32];
const SEED: [u8; 32] = [2; 32];

struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(n: usize) -> Buf {
        let layout = Layout::from_size_align(n.max(1), 2 << 20).unwrap();
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: the range was just allocated; the advice is only a hint.
        unsafe { libc::madvise(ptr.cast(), n, libc::MADV_HUGEPAGE) };
        Buf { ptr, layout }
    }
    fn slice(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: `n` bytes were allocated; u8 has no invalid bit patterns, and the reader
        // writes every byte before it is read.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::args().nth(1).map_or(1024, |a| a.parse().unwrap());
    let per = (mib / 16) << 20;
    let path = std::env::temp_dir().join(format!("enct-read-bench-signed-{mib}.enct"));
    if !path.exists() {
        let data: Vec<u8> = (0..per).map(|i| (i * 31 % 251) as u8).collect();
        let tensors: Vec<TensorSource> = (0..16)
            .map(|i| TensorSource {
                name: format!("t{i}"),
                dtype: Dtype::U8,
                shape: vec![per as u64],
                data: &data,
                encrypted: true,
            })
            .collect();
        let opts = WriteOptions {
            recipients: vec![Recipient::key(&KEY).unwrap()],
            sign_seed: Some(zeroize::Zeroizing::new(SEED)),
            ..Default::default()
        };
        write_file_atomic(&path, &tensors, &opts).unwrap();
    }
    let _ = std::fs::read(&path).unwrap(); // warm the page cache
    let public = ed25519_dalek::SigningKey::from_bytes(&SEED)
        .verifying_key()
        .to_bytes();
    let open_with = |verify: Option<&[u8]>| {
        Reader::open(
            &path,
            &Credential::key(&KEY).unwrap(),
            verify,
            enctensor_core::reader::DEFAULT_MAX_SCRYPT_LOG_N,
        )
        .unwrap()
    };
    let open = || open_with(None);
    let total = (per * 16) as f64;
    let (mut fresh, mut reused, mut verified) = (Vec::new(), Vec::new(), Vec::new());
    let mut keep: Vec<Buf> = (0..16).map(|_| Buf::new(per)).collect();
    for _ in 0..7 {
        // A fresh reader (and map) per load, as `enctensor.load` does.
        let t0 = Instant::now();
        let reader = open();
        let mut bufs: Vec<Buf> = (0..16).map(|_| Buf::new(per)).collect();
        let mut jobs: Vec<(usize, &mut [u8])> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (i, b.slice(per)))
            .collect();
        reader.read_many(&mut jobs).unwrap();
        fresh.push(total / t0.elapsed().as_secs_f64() / 1e9);
        drop(jobs);
        drop(bufs);
        let t0 = Instant::now();
        let reader = open();
        let mut jobs: Vec<(usize, &mut [u8])> = keep
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (i, b.slice(per)))
            .collect();
        reader.read_many(&mut jobs).unwrap();
        reused.push(total / t0.elapsed().as_secs_f64() / 1e9);
        drop(jobs);
        let t0 = Instant::now();
        let reader = open_with(Some(&public));
        let mut jobs: Vec<(usize, &mut [u8])> = keep
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (i, b.slice(per)))
            .collect();
        reader.read_many(&mut jobs).unwrap();
        verified.push(total / t0.elapsed().as_secs_f64() / 1e9);
    }
    println!(
        "{mib} MiB, {} threads: fresh destinations {:.2} GB/s, reused {:.2} GB/s, reused with \
         the verification key {:.2} GB/s (medians of 7)",
        rayon::current_num_threads(),
        median(fresh),
        median(reused),
        median(verified)
    );
}
