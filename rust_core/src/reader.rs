//! Opening a file: map it, validate the header, unwrap the file key, verify the header MAC
//! (and, with a verification key, the publisher signature), then decrypt and verify chunks
//! on all cores straight into caller-provided buffers: in one pass out of the map while a read
//! lease guarantees that nobody writes the file (`lease`), else through a private copy
//! (`pread` into the destination, then decrypt there while it is in cache). With a
//! verification key, each chunk's stored bytes are copied first and checked against the
//! signed BLAKE3 digest table before they are decrypted.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::crypto::{self, GcmKey, SecretKey};
use crate::error::{Error, Result};
use crate::header::{self, Header, TensorInfo, DIGEST_LEN, MAC_LEN, PAGE, TAG_LEN};
use crate::keys::{self, open_stanzas, signed_message, verify_strict, Credential};
use crate::lease::{Lease, ReadMode};
use crate::sigbus::{self, Guard};

pub use crate::keys::DEFAULT_MAX_SCRYPT_LOG_N;

/// A read-only map, registered with the SIGBUS guard. Field order matters: the guard is
/// dropped (unregistered) before the map is unmapped, and the lease before the file closes.
struct Mapped {
    guard: Guard,
    map: Mmap,
    lease: Lease,
    /// Kept to notice a truncation that SIGBUS cannot show (within the last mapped page).
    file: File,
}

impl Mapped {
    /// True if the file is now shorter than the map.
    fn shrunk(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|md| md.len() < self.map.len() as u64)
    }
}

/// Immutable bytes the caller handed over: a `Vec`, or memory another owner keeps alive and
/// unchanged (the Python bindings lend a `bytes` object's buffer instead of copying it).
pub type Held = Box<dyn AsRef<[u8]> + Send + Sync>;

/// The bytes of a file: a read-only map, a buffer the caller handed over, or only the front
/// of a file (everything before the data) read by ranges, whose chunks the caller fetches
/// and hands to [`Reader::read_range_from`].
enum Source {
    Map(Mapped),
    Owned(Held),
    Front { bytes: Vec<u8>, file_len: u64 },
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Map(m) => &m.map,
            Source::Owned(v) => (**v).as_ref(),
            Source::Front { bytes, .. } => bytes,
        }
    }

    /// Starts a read of tensor bytes: makes sure the SIGBUS guard is the installed handler,
    /// and says whether chunks may be decrypted straight out of these bytes. A buffer the
    /// caller handed over is private to this process; a map only under a read lease.
    fn begin_read(&self) -> ReadMode {
        match self {
            Source::Owned(_) | Source::Front { .. } => ReadMode::OnePass,
            Source::Map(m) => {
                sigbus::refresh();
                if m.guard.protected() {
                    m.lease.begin()
                } else {
                    ReadMode::Copy
                }
            }
        }
    }

    /// Ends a read begun with `mode`; false if it must be done again through the private copy.
    fn end_read(&self, mode: ReadMode) -> bool {
        match self {
            Source::Map(m) => m.lease.end(mode),
            Source::Owned(_) | Source::Front { .. } => true,
        }
    }

    /// Fails if the file shrank under the map while it was being read.
    fn check_intact(&self, name: &str) -> Result<()> {
        match self {
            Source::Map(m) if m.guard.truncated() || m.shrunk() => Err(Error::format(format!(
                "{name} was truncated or rewritten in place while it was being read; \
                 replace model files by renaming a new file over them"
            ))),
            _ => Ok(()),
        }
    }
}

/// Maps `path` read-only. Zero-length files cannot be mapped and are not valid files anyway.
fn map_file(path: &Path) -> Result<Source> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(e, format!("cannot open {shown}")))?;
    map_open_file(file, &shown)
}

/// Maps the open `file` (named `shown` in messages) read-only.
fn map_open_file(file: File, shown: &str) -> Result<Source> {
    let len = file
        .metadata()
        .map_err(|e| Error::io(e, format!("cannot stat {shown}")))?
        .len();
    if len == 0 {
        return Ok(Source::Owned(Box::new(Vec::new())));
    }
    // SAFETY: the map is read-only and private to this process. Another process could still
    // truncate or rewrite the file while it is mapped; writers of enctensor files replace
    // them by rename, which leaves this mapping on the old inode.
    let map = unsafe { MmapOptions::new().map(&file) }
        .map_err(|e| Error::io(e, format!("cannot map {shown}")))?;
    // Loads read the data section front to back, usually whole: ask for more read-ahead.
    // SAFETY: a valid open descriptor; the advice is only a hint (Apple systems lack it).
    #[cfg(not(target_vendor = "apple"))]
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL)
    };
    let guard = Guard::register(map.as_ptr(), map.len());
    let lease = Lease::new(&file);
    Ok(Source::Map(Mapped {
        guard,
        map,
        lease,
        file,
    }))
}

/// Parses a file without a key (`inspect`).
pub fn inspect_path(path: &Path) -> Result<Header> {
    let src = map_file(path)?;
    let name = path.display().to_string();
    let header = header::parse_file(src.bytes()).map_err(|e| e.context(&name));
    src.check_intact(&name)?;
    header
}

/// How many times an open is retried when the first page changed under it (see
/// `Reader::from_source`).
const REOPEN_ATTEMPTS: usize = 3;

/// Reads smaller than this run on the calling thread: waking a second thread (a halted
/// vCPU, on a VM) costs more than it saves (a 640 KiB slice took 0.30 ms on one thread and
/// 0.77 ms on two).
const PARALLEL_MIN: usize = 2 << 20;

/// Runs `f` on every item, on the calling thread when they cover fewer than `PARALLEL_MIN`
/// bytes, else on all cores; stops at the first error.
fn try_each<T: Send>(
    items: Vec<T>,
    bytes: usize,
    f: impl Fn(T) -> Result<()> + Sync + Send,
) -> Result<()> {
    if bytes < PARALLEL_MIN {
        items.into_iter().try_for_each(f)
    } else {
        items.into_par_iter().try_for_each(f)
    }
}

/// The end of the byte range `[start, start + len)` of tensor `t`, which must lie inside it.
fn range_end(t: &TensorInfo, start: u64, len: usize) -> Result<u64> {
    start
        .checked_add(len as u64)
        .filter(|&e| e <= t.nbytes())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "byte range is outside tensor {:?} ({} bytes)",
                t.name,
                t.nbytes()
            ))
        })
}

const BOUNCE_ALIGN: usize = 64;

thread_local! {
    /// Per thread, one chunk of ciphertext on its way to a misaligned destination.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An opened, authenticated file.
pub struct Reader {
    src: Source,
    header: Header,
    file_key: SecretKey,
    name: String,
    /// A verification key was given and the signature verified: every chunk read is checked
    /// against the digest table before it is decrypted.
    check_digests: bool,
}

/// One unit of parallel work: chunk `j` of a tensor, and where its plaintext goes.
struct Work<'a> {
    tensor: usize,
    key: usize,
    chunk: u64,
    out: &'a mut [u8],
}

impl Reader {
    /// Opens `path` with `cred`. With `verify_key` (an Ed25519 public key), the publisher
    /// signature must be present and valid, and every chunk read later is checked against the
    /// signed digest table. `max_scrypt_log_n` (10..=20, normally
    /// [`DEFAULT_MAX_SCRYPT_LOG_N`]) caps the scrypt cost the file may ask for.
    pub fn open(
        path: &Path,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
    ) -> Result<Reader> {
        Reader::check_arguments(verify_key, max_scrypt_log_n)?;
        let name = path.display().to_string();
        Reader::from_source(map_file(path)?, cred, verify_key, max_scrypt_log_n, name)
    }

    /// Opens the already open `file` (`name` in messages), mapping and reading it through this
    /// descriptor only: re-keying then writes the very file it authenticated, whatever its
    /// path names meanwhile.
    pub fn from_file(
        file: File,
        name: String,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
    ) -> Result<Reader> {
        Reader::check_arguments(verify_key, max_scrypt_log_n)?;
        Reader::from_source(
            map_open_file(file, &name)?,
            cred,
            verify_key,
            max_scrypt_log_n,
            name,
        )
    }

    /// Opens a file held in memory; as [`Reader::open`].
    pub fn from_bytes(
        bytes: Vec<u8>,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
    ) -> Result<Reader> {
        Reader::from_held(Box::new(bytes), cred, verify_key, max_scrypt_log_n)
    }

    /// Opens a file held in memory that nobody changes while the reader lives (it is
    /// decrypted out of it in one pass); as [`Reader::open`].
    pub fn from_held(
        bytes: Held,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
    ) -> Result<Reader> {
        Reader::check_arguments(verify_key, max_scrypt_log_n)?;
        Reader::from_source(
            Source::Owned(bytes),
            cred,
            verify_key,
            max_scrypt_log_n,
            "<bytes>".into(),
        )
    }

    /// Opens a file read by ranges (a remote file) from `front`, its first bytes up to the
    /// tensor data ([`header::prefix_len`]), and its length; as [`Reader::open`] otherwise.
    /// Chunks are then fetched by the caller and decrypted with [`Reader::read_range_from`].
    pub fn from_front(
        front: Vec<u8>,
        file_len: u64,
        name: String,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
    ) -> Result<Reader> {
        Reader::check_arguments(verify_key, max_scrypt_log_n)?;
        Reader::from_source(
            Source::Front {
                bytes: front,
                file_len,
            },
            cred,
            verify_key,
            max_scrypt_log_n,
            name,
        )
    }

    /// Caller errors that need no file: a verification key of the wrong length, a scrypt cap
    /// outside 10..=20. (Whether the key is a usable point is a header failure, reported
    /// after the MAC, in the spec's order.)
    fn check_arguments(verify_key: Option<&[u8]>, max_scrypt_log_n: u8) -> Result<()> {
        keys::check_max_scrypt_log_n(max_scrypt_log_n)?;
        match verify_key {
            Some(k) if k.len() != keys::ED25519_PUBLIC_LEN => Err(Error::InvalidArgument(format!(
                "an Ed25519 verification key is {} bytes, got {}",
                keys::ED25519_PUBLIC_LEN,
                k.len()
            ))),
            _ => Ok(()),
        }
    }

    fn from_source(
        src: Source,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
        name: String,
    ) -> Result<Reader> {
        // An in-place re-key rewrites the first page while others may be reading it, and a
        // buffered read is not atomic against a write: a reader can see half of the new
        // stanzas. If opening fails and the first page changed meanwhile, read it again.
        let mut attempts = 0;
        loop {
            let first_page = |s: &Source| s.bytes()[..s.bytes().len().min(PAGE as usize)].to_vec();
            let before = first_page(&src);
            match Reader::authenticate(&src, cred, verify_key, max_scrypt_log_n, &name) {
                Ok((header, file_key)) => {
                    return Ok(Reader {
                        src,
                        header,
                        file_key,
                        name,
                        check_digests: verify_key.is_some(),
                    })
                }
                Err(_) if attempts < REOPEN_ATTEMPTS && first_page(&src) != before => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Parses the header, opens a stanza, and checks the header MAC and, with `verify_key`,
    /// the publisher signature (in this order: format failure, no match, header failure).
    fn authenticate(
        src: &Source,
        cred: &Credential,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: u8,
        name: &str,
    ) -> Result<(Header, SecretKey)> {
        let bytes = src.bytes();
        let parsed = match src {
            Source::Front { file_len, .. } => header::parse_prefix(bytes, *file_len),
            _ => header::parse_file(bytes),
        }
        .map_err(|e| e.context(name));
        src.check_intact(name)?;
        let header = parsed?;
        let file_key =
            open_stanzas(&header.stanzas, cred, max_scrypt_log_n).map_err(|e| e.context(name))?;
        let mac_at = header.mac_offset() as usize;
        let json = &bytes[header.header_offset() as usize..mac_at];
        let mac = &bytes[mac_at..mac_at + MAC_LEN as usize];
        let tags = &bytes[header.tags_offset() as usize..header.tags_end() as usize];
        let digests = &bytes[header.digests_offset() as usize..header.tables_end() as usize];
        let expected = crypto::header_mac(&file_key, &[json, tags, digests]);
        let mac_ok = crypto::ct_eq(&expected, mac);
        // Checked only once the MAC verifies (below), but computed on these same bytes.
        let sig_ok = match (verify_key, mac_ok) {
            (Some(public), true) => Some(keys::verifying_key(public).map(|key| {
                header.signature.as_ref().is_some_and(|sig| {
                    verify_strict(&key, &signed_message(json, mac, tags, digests), sig)
                })
            })),
            _ => None,
        };
        src.check_intact(name)?;
        if !mac_ok && matches!(cred, Credential::FileKey(_)) {
            return Err(Error::WrongKey(format!(
                "{name}: no key opens this file: the file key from the key provider does not \
                 match it (or its header was modified)"
            )));
        }
        if !mac_ok {
            return Err(Error::Integrity(format!(
                "{name}: header authentication failed: the header, tag table or digest table was \
                 modified or corrupted (the key opened a stanza, which commits to one key, so it \
                 is the right key)"
            )));
        }
        let sig_ok = sig_ok.transpose().map_err(|e| e.context(name))?;
        if sig_ok == Some(false) {
            let why = if header.signature.is_some() {
                "the publisher signature is invalid"
            } else {
                "the file is not signed"
            };
            return Err(Error::Signature(format!(
                "{name}: {why}: it was not published by the holder of the verification key given"
            )));
        }
        Ok((header, file_key))
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn bytes(&self) -> &[u8] {
        self.src.bytes()
    }

    /// Fails for a file read by ranges, whose tensor data this reader does not hold.
    fn whole(&self) -> Result<()> {
        match self.src {
            Source::Front { .. } => Err(Error::InvalidArgument(format!(
                "{} is read by ranges: fetch the chunks (span) and decrypt them with \
                 read_range_from",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    fn tensor(&self, idx: usize) -> Result<&TensorInfo> {
        self.header
            .tensors
            .get(idx)
            .ok_or_else(|| Error::InvalidArgument(format!("tensor index {idx} is out of range")))
    }

    fn chunk_len(&self, t: &TensorInfo, j: u64) -> usize {
        let start = j * self.header.chunk_size;
        (t.nbytes() - start).min(self.header.chunk_size) as usize
    }

    /// Copies the stored bytes of `[start, start + out.len())` into `out`: from the file with
    /// `pread` (no page of the map is touched, so the ciphertext never becomes resident in
    /// this process), or from the owned buffer.
    fn fetch(&self, start: usize, out: &mut [u8]) -> Result<()> {
        match &self.src {
            Source::Owned(v) => {
                out.copy_from_slice(&(**v).as_ref()[start..start + out.len()]);
                Ok(())
            }
            Source::Map(m) if out.as_ptr() as usize % BOUNCE_ALIGN != 0 => {
                // The kernel copies into a destination that is not 64-byte aligned at a third
                // of its speed here (a model whose parameters wrap numpy arrays loaded at
                // 2.2 GB/s instead of 4.8): read into an aligned, cache-resident buffer and
                // copy from there.
                BOUNCE.with_borrow_mut(|bounce| {
                    bounce.resize(out.len() + BOUNCE_ALIGN, 0);
                    let at = bounce.as_ptr().align_offset(BOUNCE_ALIGN);
                    let staged = &mut bounce[at..at + out.len()];
                    self.pread(&m.file, start, staged)?;
                    out.copy_from_slice(staged);
                    Ok(())
                })
            }
            Source::Map(m) => self.pread(&m.file, start, out),
            Source::Front { .. } => self.whole(),
        }
    }

    fn pread(&self, file: &File, start: usize, out: &mut [u8]) -> Result<()> {
        match file.read_exact_at(out, start as u64) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::format(format!(
                "{} was truncated or rewritten in place while it was being read; \
                 replace model files by renaming a new file over them",
                self.name
            ))),
            Err(e) => Err(Error::io(e, format!("cannot read {}", self.name))),
        }
    }

    /// Verifies chunk `j` of tensor `t` and writes its plaintext to `out` (the chunk's length).
    /// `OnePass`: decrypted out of the source in one pass. Otherwise, and always with a
    /// verification key, the stored bytes are copied into `out`, checked against the signed
    /// digest table (with a verification key) and decrypted there while still in cache.
    fn open_chunk(
        &self,
        t: &TensorInfo,
        key: &GcmKey,
        j: u64,
        out: &mut [u8],
        mode: ReadMode,
    ) -> Result<()> {
        let at = self.chunk_offset(t, j);
        let bytes = self.bytes();
        let tag_at = (self.header.tags_offset() + (t.first_tag + j) * TAG_LEN) as usize;
        let tag = &bytes[tag_at..tag_at + TAG_LEN as usize];
        let nonce = crypto::chunk_nonce(j, t.n_chunks);
        if mode == ReadMode::OnePass && t.encrypted && !self.check_digests {
            return if key.open_into(nonce, b"", &bytes[at..at + out.len()], tag, out) {
                Ok(())
            } else {
                Err(self.chunk_failed(t, j))
            };
        }
        self.fetch(at, out)?;
        self.check_digest(t, j, out)?;
        let ok = if t.encrypted {
            key.open_in_place(nonce, b"", tag, out)
        } else {
            key.verify_gmac(nonce, out, tag)
        };
        if ok {
            Ok(())
        } else {
            Err(self.chunk_failed(t, j))
        }
    }

    /// With a verification key, checks `stored`, the stored bytes of chunk `j` of tensor `t`,
    /// against the signed digest table.
    fn check_digest(&self, t: &TensorInfo, j: u64, stored: &[u8]) -> Result<()> {
        if !self.check_digests {
            return Ok(());
        }
        let at = (self.header.digests_offset() + (t.first_tag + j) * DIGEST_LEN) as usize;
        let want = &self.bytes()[at..at + DIGEST_LEN as usize];
        // One call over the whole chunk: BLAKE3 hashes its 1 KiB blocks in SIMD lanes.
        if crypto::ct_eq(crypto::chunk_digest(stored).as_bytes(), want) {
            return Ok(());
        }
        Err(Error::Integrity(format!(
            "{}: tensor {:?}: chunk {j} of {}: its BLAKE3 digest does not match the signed \
             digest table: the stored bytes were modified after signing",
            self.name, t.name, t.n_chunks
        )))
    }

    #[cold]
    fn chunk_failed(&self, t: &TensorInfo, j: u64) -> Error {
        Error::Integrity(format!(
            "{}: tensor {:?}: chunk {j} of {} failed authentication: the file was modified or \
             corrupted",
            self.name, t.name, t.n_chunks
        ))
    }

    /// Runs `read` in the mode the source allows, and once more through the private copy if
    /// the read lease may have lapsed meanwhile.
    fn with_mode(&self, mut read: impl FnMut(ReadMode) -> Result<()>) -> Result<()> {
        let mode = self.src.begin_read();
        let result = read(mode);
        if self.src.end_read(mode) {
            result
        } else {
            read(ReadMode::Copy)
        }
    }

    /// Byte offset of chunk `j` of tensor `t` in the file.
    fn chunk_offset(&self, t: &TensorInfo, j: u64) -> usize {
        (self.header.data_offset + t.begin + j * self.header.chunk_size) as usize
    }

    fn run(&self, keys: &[GcmKey], mut work: Vec<Work<'_>>, mode: ReadMode) -> Result<()> {
        // File order: the threads read two runs of the file front to back, which read-ahead
        // follows.
        let offset = |w: &Work<'_>| self.chunk_offset(&self.header.tensors[w.tensor], w.chunk);
        work.sort_by_key(|w| offset(w));
        let open = |w: Work<'_>| {
            let t = &self.header.tensors[w.tensor];
            self.open_chunk(t, &keys[w.key], w.chunk, w.out, mode)
        };
        let total: usize = work.iter().map(|w| w.out.len()).sum();
        let result = try_each(work, total, open);
        self.src.check_intact(&self.name).and(result)
    }

    /// Decrypts whole tensors into `jobs` (`(tensor index, destination)`), all chunks of all
    /// tensors in parallel. On any failure every destination is zeroed and nothing is released.
    pub fn read_many(&self, jobs: &mut [(usize, &mut [u8])]) -> Result<()> {
        self.whole()?;
        for (idx, out) in jobs.iter() {
            let t = self.tensor(*idx)?;
            if out.len() as u64 != t.nbytes() {
                return Err(Error::InvalidArgument(format!(
                    "destination for tensor {:?} is {} bytes, it needs {}",
                    t.name,
                    out.len(),
                    t.nbytes()
                )));
            }
        }
        let keys: Vec<GcmKey> = jobs
            .par_iter()
            .map(|(idx, _)| crypto::tensor_key(&self.file_key, &self.header.tensors[*idx].name))
            .collect();
        let result = self.with_mode(|mode| self.run(&keys, self.work(&mut *jobs), mode));
        if result.is_err() {
            for (_, out) in jobs.iter_mut() {
                out.fill(0);
            }
        }
        result
    }

    /// The chunks of `jobs`, each with its slice of the destination.
    fn work<'a>(&self, jobs: &'a mut [(usize, &mut [u8])]) -> Vec<Work<'a>> {
        let cs = self.header.chunk_size as usize;
        let mut work = Vec::new();
        for (k, (idx, out)) in jobs.iter_mut().enumerate() {
            if out.is_empty() {
                work.push(Work {
                    tensor: *idx,
                    key: k,
                    chunk: 0,
                    out: &mut [],
                });
            }
            for (j, piece) in out.chunks_mut(cs).enumerate() {
                work.push(Work {
                    tensor: *idx,
                    key: k,
                    chunk: j as u64,
                    out: piece,
                });
            }
        }
        work
    }

    pub fn read_into(&self, idx: usize, out: &mut [u8]) -> Result<()> {
        self.read_many(&mut [(idx, out)])
    }

    /// Decrypts bytes `[start, start + out.len())` of a tensor, verifying every chunk that
    /// covers them (and only those).
    pub fn read_range_into(&self, idx: usize, start: u64, out: &mut [u8]) -> Result<()> {
        self.whole()?;
        let t = self.tensor(idx)?;
        range_end(t, start, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let key = crypto::tensor_key(&self.file_key, &t.name);
        let result = self.with_mode(|mode| {
            self.open_range(t, start, &mut *out, |j, buf| {
                self.open_chunk(t, &key, j, buf, mode)
            })
        });
        let result = self.src.check_intact(&self.name).and(result);
        if result.is_err() {
            out.fill(0);
        }
        result
    }

    /// Verifies every chunk of every tensor, holding at most one chunk per thread.
    pub fn verify_all(&self) -> Result<()> {
        self.whole()?;
        let work: Vec<(usize, u64)> = self
            .header
            .tensors
            .iter()
            .enumerate()
            .flat_map(|(i, t)| (0..t.n_chunks).map(move |j| (i, j)))
            .collect();
        let keys: Vec<GcmKey> = self
            .header
            .tensors
            .par_iter()
            .map(|t| crypto::tensor_key(&self.file_key, &t.name))
            .collect();
        let cs = self.header.chunk_size as usize;
        // The scratch holds plaintext: wiped when dropped. Its capacity is a whole chunk from
        // the start, so `resize` never reallocates (which would leave an unwiped copy).
        let result = self.with_mode(|mode| {
            work.par_iter().try_for_each_init(
                || Zeroizing::new(Vec::with_capacity(cs)),
                |scratch, &(i, j)| {
                    let t = &self.header.tensors[i];
                    scratch.resize(self.chunk_len(t, j), 0);
                    self.open_chunk(t, &keys[i], j, scratch, mode)
                },
            )
        });
        self.src.check_intact(&self.name).and(result)
    }

    /// The file range `[a, b)` a ranged reader fetches to decrypt bytes `[start, end)` of
    /// tensor `idx`: the chunks covering them (chunk 0 of an empty tensor), and the padding
    /// after the tensor when the last chunk is among them (so that it is checked too).
    pub fn span(&self, idx: usize, start: u64, end: u64) -> Result<(u64, u64)> {
        let t = self.tensor(idx)?;
        if start > end || end > t.nbytes() {
            return Err(Error::InvalidArgument(format!(
                "byte range {start}..{end} is outside tensor {:?} ({} bytes)",
                t.name,
                t.nbytes()
            )));
        }
        let cs = self.header.chunk_size;
        let (first, last) = match (t.nbytes(), start == end) {
            (0, _) => (0, 0),
            (_, true) => {
                let at = self.chunk_offset(t, start / cs) as u64;
                return Ok((at, at));
            }
            _ => (start / cs, (end - 1) / cs),
        };
        let a = self.chunk_offset(t, first) as u64;
        let b = if last + 1 == t.n_chunks {
            header::gap_after(&self.header, idx).1
        } else {
            self.chunk_offset(t, last) as u64 + self.chunk_len(t, last) as u64
        };
        Ok((a, b))
    }

    /// Decrypts bytes `[start, start + out.len())` of tensor `idx` out of `fetched`, the stored
    /// bytes of the file range `[at, at + fetched.len())`, which must hold every chunk covering
    /// them (a range [`Reader::span`] gave, or a larger one). Every such chunk is verified
    /// (digests too, with a verification key); so is the padding after the tensor when
    /// `fetched` holds it, and chunk 0 of an empty tensor. `fetched` is memory private to this
    /// process (no other writer), so each chunk is decrypted out of it in one pass. On
    /// failure `out` is zeroed.
    pub fn read_range_from(
        &self,
        idx: usize,
        start: u64,
        out: &mut [u8],
        at: u64,
        fetched: &[u8],
    ) -> Result<()> {
        let result = self.range_from(idx, start, out, at, fetched);
        if result.is_err() {
            out.fill(0);
        }
        result
    }

    fn range_from(
        &self,
        idx: usize,
        start: u64,
        out: &mut [u8],
        at: u64,
        fetched: &[u8],
    ) -> Result<()> {
        let t = self.tensor(idx)?;
        let end = range_end(t, start, out.len())?;
        let fetched_end = at
            .checked_add(fetched.len() as u64)
            .ok_or_else(|| Error::InvalidArgument("fetched range overflows".into()))?;
        let stored = |j: u64| -> Result<&[u8]> {
            let a = self.chunk_offset(t, j) as u64;
            let b = a + self.chunk_len(t, j) as u64;
            if a < at || b > fetched_end {
                return Err(Error::InvalidArgument(format!(
                    "the fetched bytes {at}..{fetched_end} do not hold chunk {j} of tensor {:?} \
                     ({a}..{b})",
                    t.name
                )));
            }
            Ok(&fetched[(a - at) as usize..(b - at) as usize])
        };
        let key = crypto::tensor_key(&self.file_key, &t.name);
        let (gap_a, gap_b) = header::gap_after(&self.header, idx);
        if gap_a < gap_b && at <= gap_a && gap_b <= fetched_end {
            let gap = &fetched[(gap_a - at) as usize..(gap_b - at) as usize];
            header::check_gap(&self.header, idx, gap).map_err(|e| e.context(&self.name))?;
        }
        if t.nbytes() == 0 {
            return self.open_stored(t, &key, 0, stored(0)?, &mut []);
        }
        if start == end {
            return Ok(());
        }
        // Chunks are contiguous: if the first and the last are held, all are (checked before
        // anything is decrypted).
        let cs = self.header.chunk_size;
        stored(start / cs)?;
        stored((end - 1) / cs)?;
        self.open_range(t, start, out, |j, buf| {
            self.open_stored(t, &key, j, stored(j)?, buf)
        })
    }

    /// Decrypts bytes `[start, start + out.len())` of tensor `t` (a range inside it) chunk by
    /// chunk, on all cores when it is large: `open(j, buf)` verifies chunk `j` whole into
    /// `buf` (the chunk's length); a chunk needed only in part goes through a scratch buffer.
    fn open_range(
        &self,
        t: &TensorInfo,
        start: u64,
        out: &mut [u8],
        open: impl Fn(u64, &mut [u8]) -> Result<()> + Sync + Send,
    ) -> Result<()> {
        let cs = self.header.chunk_size;
        let end = start + out.len() as u64;
        let total = out.len();
        let mut pieces = Vec::new();
        let mut rest = out;
        let mut pos = start;
        while pos < end {
            let j = pos / cs;
            let take = ((j + 1) * cs).min(end) - pos;
            let (piece, tail) = rest.split_at_mut(take as usize);
            pieces.push((j, (pos - j * cs) as usize, piece));
            rest = tail;
            pos += take;
        }
        try_each(
            pieces,
            total,
            |(j, skip, piece): (u64, usize, &mut [u8])| {
                let n = self.chunk_len(t, j);
                if skip == 0 && piece.len() == n {
                    return open(j, piece);
                }
                // Wiped when dropped: the rest of the chunk was not asked for.
                let mut scratch = Zeroizing::new(vec![0u8; n]);
                open(j, &mut scratch)?;
                piece.copy_from_slice(&scratch[skip..skip + piece.len()]);
                Ok(())
            },
        )
    }

    /// Verifies chunk `j` of tensor `t` from its stored bytes `stored`, private to this process,
    /// and writes its plaintext to `out` (the same length).
    fn open_stored(
        &self,
        t: &TensorInfo,
        key: &GcmKey,
        j: u64,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        self.check_digest(t, j, stored)?;
        let bytes = self.bytes();
        let tag_at = (self.header.tags_offset() + (t.first_tag + j) * TAG_LEN) as usize;
        let tag = &bytes[tag_at..tag_at + TAG_LEN as usize];
        let nonce = crypto::chunk_nonce(j, t.n_chunks);
        let ok = if t.encrypted {
            key.open_into(nonce, b"", stored, tag, out)
        } else {
            out.copy_from_slice(stored);
            key.verify_gmac(nonce, out, tag)
        };
        if ok {
            Ok(())
        } else {
            Err(self.chunk_failed(t, j))
        }
    }

    /// The file key, for re-keying. Crate-internal: never exposed to Python.
    pub(crate) fn file_key(&self) -> &SecretKey {
        &self.file_key
    }

    /// The raw file bytes, for re-keying.
    pub(crate) fn raw(&self) -> &[u8] {
        self.bytes()
    }
}
