//! The primitives of the format, all from vetted libraries: AES-256-GCM from BoringSSL (its
//! VAES code where the CPU has it), HKDF and HMAC (constant-time verification) from
//! aws-lc-rs, BLAKE3 from the `blake3` crate, Ed25519 from ed25519-dalek (in `keys`).
//! Nothing here is hand-written cryptography: this module only fixes the labels, nonces and
//! key sizes of `spec/FORMAT.md`.

use aws_lc_rs::{hkdf, hmac};
use boring_sys as ffi;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const LABEL_KEY_STANZA: &[u8] = b"enctensor.v1 key";
pub const LABEL_SCRYPT: &[u8] = b"enctensor.v1 scrypt";
pub const LABEL_HEADER: &[u8] = b"enctensor.v1 header";
pub const LABEL_TENSOR: &[u8] = b"enctensor.v1 tensor";

/// A 32-byte secret that is wiped from memory when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// HKDF-SHA-256 with a 32-byte output; `info` parts are concatenated.
pub fn hkdf(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> SecretKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    prk.expand(info, Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA-256 can always produce 32 bytes");
    out
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| Error::InvalidArgument("the system random generator failed".into()))
}

/// An AES-256-GCM key through BoringSSL's `EVP_AEAD` interface (`boring-sys`). Why
/// BoringSSL: it runs VAES GCM code on 256-bit registers (Zen 3, Intel client CPUs) and on
/// AVX-512 where present, and unlike ring it decrypts *out of place*, so a chunk can go from a
/// map of the file straight into its destination in one pass (benches/README.md has the
/// figures). Boxed so that the expanded key never moves and `Drop` can wipe the only copy.
pub struct GcmKey {
    ctx: Box<ffi::EVP_AEAD_CTX>,
}

// SAFETY: the context is plain data owned by the Box plus a pointer to BoringSSL's static,
// immutable method table; it has no thread affinity.
unsafe impl Send for GcmKey {}
// SAFETY: `&self` methods only pass `const EVP_AEAD_CTX *` to `EVP_AEAD_CTX_open_gather` and
// `EVP_AEAD_CTX_seal_scatter`, which aead.h documents as callable concurrently on one context
// (the per-call GCM state is on the C stack). Only `Drop` (with `&mut self`) mutates it.
unsafe impl Sync for GcmKey {}

impl Drop for GcmKey {
    fn drop(&mut self) {
        let p: *mut ffi::EVP_AEAD_CTX = &mut *self.ctx;
        // SAFETY: `p` is our boxed context, initialised by `EVP_AEAD_CTX_init` (or all-zero, for
        // which cleanup is a documented no-op); `&mut self` means no call is running on it. For
        // AES-GCM cleanup frees nothing and leaves the round keys and GHASH powers in the
        // struct, so it is wiped with OPENSSL_cleanse (which the compiler cannot elide); all
        // zeros is again a valid value for the Box to free.
        unsafe {
            ffi::EVP_AEAD_CTX_cleanup(p);
            ffi::OPENSSL_cleanse(p.cast(), std::mem::size_of::<ffi::EVP_AEAD_CTX>());
        }
    }
}

impl GcmKey {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // SAFETY: EVP_AEAD_CTX is a C struct of a pointer, a byte union and an integer: all
        // zeros is the state `EVP_AEAD_CTX_zero` produces.
        let mut ctx: Box<ffi::EVP_AEAD_CTX> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `EVP_aead_aes_256_gcm` returns a static table; `ctx` is a valid, exclusively
        // borrowed context; `key` is 32 readable bytes that BoringSSL expands into `ctx` without
        // keeping a pointer to them; tag length 16 is the full tag; `impl` must be NULL.
        let ok = unsafe {
            ffi::EVP_AEAD_CTX_init(
                &mut *ctx,
                ffi::EVP_aead_aes_256_gcm(),
                key.as_ptr(),
                KEY_LEN,
                TAG_LEN,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(ok, 1, "AES-256-GCM accepts every 32-byte key");
        GcmKey { ctx }
    }

    /// Seals `len` bytes from `input` to `output` (equal, or not overlapping). Returns the tag.
    ///
    /// # Safety
    /// `input` must be readable and `output` writable for `len` bytes, and they must be the
    /// same pointer or not overlap.
    unsafe fn seal_raw(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        input: *const u8,
        output: *mut u8,
        len: usize,
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        let mut tag_len = 0usize;
        // SAFETY: the caller vouches for `input`/`output`; the context is initialised and only
        // read; `tag` is TAG_LEN writable bytes and `max_out_tag_len` says so; no extra input.
        // BoringSSL keeps no pointer to any argument.
        let ok = unsafe {
            ffi::EVP_AEAD_CTX_seal_scatter(
                &*self.ctx,
                output,
                tag.as_mut_ptr(),
                &mut tag_len,
                TAG_LEN,
                nonce.as_ptr(),
                nonce.len(),
                input,
                len,
                std::ptr::null(),
                0,
                aad.as_ptr(),
                aad.len(),
            )
        };
        // Sealing fails only for inputs beyond GCM's length limit (64 GiB), far above a chunk.
        assert!(ok == 1 && tag_len == TAG_LEN, "AES-GCM seal of a chunk");
        tag
    }

    /// Opens `len` bytes from `input` into `output` (equal, or not overlapping) and verifies
    /// `tag` in constant time. On failure `output` is zeroed: no unverified plaintext remains.
    ///
    /// # Safety
    /// As [`GcmKey::seal_raw`].
    unsafe fn open_raw(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        input: *const u8,
        output: *mut u8,
        len: usize,
        tag: &[u8],
    ) -> bool {
        // SAFETY: as in `seal_raw`; `tag` is `tag.len()` readable bytes (a wrong length fails).
        let ok = unsafe {
            ffi::EVP_AEAD_CTX_open_gather(
                &*self.ctx,
                output,
                nonce.as_ptr(),
                nonce.len(),
                input,
                len,
                tag.as_ptr(),
                tag.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok == 1 {
            return true;
        }
        // BoringSSL already wipes the output on failure; do not rest the guarantee on that.
        // SAFETY: the caller vouches that `output` is writable for `len` bytes.
        unsafe {
            std::ptr::write_bytes(output, 0, len);
            ffi::ERR_clear_error();
        }
        false
    }

    /// Encrypts `in_out` in place and returns the detached tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let p = in_out.as_mut_ptr();
        // SAFETY: one exclusively borrowed buffer as both input and output (in == out).
        unsafe { self.seal_raw(nonce, aad, p, p, in_out.len()) }
    }

    /// Encrypts `plaintext` into `out` (same length) and returns the detached tag.
    pub fn seal_into(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        assert_eq!(plaintext.len(), out.len(), "seal_into: equal lengths");
        // SAFETY: `out` is an exclusive borrow, so it does not overlap `plaintext`.
        unsafe { self.seal_raw(nonce, aad, plaintext.as_ptr(), out.as_mut_ptr(), out.len()) }
    }

    /// Decrypts `in_out` in place and verifies `tag` (constant time). Returns false on a bad
    /// tag; `in_out` is then zeroed.
    #[must_use]
    pub fn open_in_place(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        tag: &[u8],
        in_out: &mut [u8],
    ) -> bool {
        let p = in_out.as_mut_ptr();
        // SAFETY: one exclusively borrowed buffer as both input and output (in == out).
        unsafe { self.open_raw(nonce, aad, p, p, in_out.len(), tag) }
    }

    /// Decrypts `ciphertext` into `out` (same length) in one pass and verifies `tag` in
    /// constant time. Returns false on a bad tag or a length mismatch; `out` is then zeroed.
    ///
    /// The GCM code reads each ciphertext block twice (for GHASH and for the XOR): callers
    /// must not pass bytes that another process can change during the call (see
    /// `reader::ReadLease`).
    #[must_use]
    pub fn open_into(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> bool {
        if ciphertext.len() != out.len() {
            out.fill(0);
            return false;
        }
        // SAFETY: `out` is an exclusive borrow, so it does not overlap `ciphertext`.
        unsafe {
            self.open_raw(
                nonce,
                aad,
                ciphertext.as_ptr(),
                out.as_mut_ptr(),
                out.len(),
                tag,
            )
        }
    }

    /// Verifies a GMAC tag over `data` (AES-GCM with empty plaintext, `data` as associated data).
    #[must_use]
    pub fn verify_gmac(&self, nonce: [u8; 12], data: &[u8], tag: &[u8]) -> bool {
        self.open_in_place(nonce, data, tag, &mut [])
    }

    pub fn gmac(&self, nonce: [u8; 12], data: &[u8]) -> [u8; TAG_LEN] {
        self.seal(nonce, data, &mut [])
    }
}

/// STREAM nonce of chunk `j` of `m`: an 11-byte big-endian counter and a last-chunk flag.
pub fn chunk_nonce(j: u64, m: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&j.to_be_bytes());
    n[11] = u8::from(j + 1 == m);
    n
}

/// The key that seals the chunks of the tensor called `name`.
pub fn tensor_key(file_key: &[u8; KEY_LEN], name: &str) -> GcmKey {
    let k = hkdf(file_key, &[], &[LABEL_TENSOR, &[0u8], name.as_bytes()]);
    GcmKey::new(&k)
}

/// HMAC-SHA-256 over the parts, keyed from the file key.
pub fn header_mac(file_key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; 32] {
    let mac_key = hkdf(file_key, &[], &[LABEL_HEADER]);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
        .as_ref()
        .try_into()
        .expect("32-byte HMAC-SHA-256")
}

/// BLAKE3 of a chunk's stored bytes: its digest table entry. One call over the whole chunk,
/// so that BLAKE3 hashes its 1 KiB blocks in parallel SIMD lanes (AVX2: 8, AVX-512: 16).
pub fn chunk_digest(stored: &[u8]) -> blake3::Hash {
    blake3::hash(stored)
}

/// Constant-time equality of two byte strings of public length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    #[allow(deprecated)]
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_rfc5869_case_1() {
        // RFC 5869 A.1 (first 32 bytes of OKM).
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf(&ikm, &salt, &[&info]);
        assert_eq!(
            okm[..].to_vec(),
            hex::decode("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")
                .unwrap()
        );
    }

    #[test]
    fn nonces_mark_the_last_chunk() {
        assert_eq!(chunk_nonce(0, 1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(chunk_nonce(0, 2), [0; 12]);
        assert_eq!(chunk_nonce(258, 300)[9..], [1, 2, 0]);
    }

    #[test]
    fn seal_open_and_gmac() {
        let k = GcmKey::new(&[7u8; 32]);
        let mut buf = *b"hello tensors!!!";
        let tag = k.seal(chunk_nonce(0, 1), b"", &mut buf);
        let mut out = [0u8; 16];
        assert!(k.open_into(chunk_nonce(0, 1), b"", &buf, &tag, &mut out));
        assert_eq!(&out, b"hello tensors!!!");
        assert!(!k.open_into(chunk_nonce(0, 2), b"", &buf, &tag, &mut out));
        let g = k.gmac(chunk_nonce(0, 1), b"clear");
        assert!(k.verify_gmac(chunk_nonce(0, 1), b"clear", &g));
        assert!(!k.verify_gmac(chunk_nonce(0, 1), b"clean", &g));
    }
}
