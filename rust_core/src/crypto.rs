//! The primitives of the format, all from vetted libraries: AES-256-GCM from ring (its
//! VAES/AVX2 code where the CPU has it), HKDF and HMAC (constant-time verification) from
//! aws-lc-rs, BLAKE3 from the `blake3` crate, Ed25519 from ed25519-dalek (in `keys`).
//! Nothing here is hand-written cryptography: this module only fixes the labels, nonces and
//! key sizes of `spec/FORMAT.md`.

use std::mem::{ManuallyDrop, MaybeUninit};

use aws_lc_rs::{hkdf, hmac};
use ring::aead as ring_aead;
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

/// An AES-256-GCM key (ring: its VAES/AVX2 code runs twice as fast as AWS-LC's AES-NI code
/// on CPUs without AVX-512, e.g. AMD Zen 3). ring does not wipe its key schedule, so this
/// type does it on drop.
pub struct GcmKey(ManuallyDrop<Box<ring_aead::LessSafeKey>>);

impl Drop for GcmKey {
    fn drop(&mut self) {
        // SAFETY: `self.0` is never used again. `LessSafeKey` holds only plain data (round
        // keys, GHASH table, a &'static algorithm) and no destructor of its own runs here; its
        // bytes are overwritten and the allocation is freed as uninitialised memory of the
        // same layout.
        unsafe {
            let raw = Box::into_raw(ManuallyDrop::take(&mut self.0));
            std::ptr::drop_in_place(raw);
            let bytes = std::slice::from_raw_parts_mut(
                raw.cast::<MaybeUninit<u8>>(),
                std::mem::size_of::<ring_aead::LessSafeKey>(),
            );
            for b in bytes.iter_mut() {
                std::ptr::write_volatile(b, MaybeUninit::new(0));
            }
            drop(Box::from_raw(
                raw.cast::<MaybeUninit<ring_aead::LessSafeKey>>(),
            ));
        }
    }
}

fn ring_nonce(nonce: [u8; 12]) -> ring_aead::Nonce {
    ring_aead::Nonce::assume_unique_for_key(nonce)
}

impl GcmKey {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound =
            ring_aead::UnboundKey::new(&ring_aead::AES_256_GCM, key).expect("32-byte AES-256 key");
        GcmKey(ManuallyDrop::new(Box::new(ring_aead::LessSafeKey::new(
            unbound,
        ))))
    }

    /// Encrypts `in_out` in place and returns the detached tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(ring_nonce(nonce), ring_aead::Aad::from(aad), in_out)
            .expect("AES-GCM seal of a chunk below the GCM length limit");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    /// Decrypts `in_out` in place and verifies `tag` (constant time, inside ring). Returns
    /// false on a bad tag; `in_out` then holds no plaintext worth using.
    #[must_use]
    pub fn open_in_place(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        tag: &[u8],
        in_out: &mut [u8],
    ) -> bool {
        let Ok(tag) = ring_aead::Tag::try_from(tag) else {
            return false;
        };
        self.0
            .open_in_place_separate_tag(
                ring_nonce(nonce),
                ring_aead::Aad::from(aad),
                tag,
                in_out,
                0..,
            )
            .is_ok()
    }

    /// Decrypts `ciphertext` into `out` (same length) and verifies `tag` in constant time.
    /// Returns false on a bad tag; `out` then holds no plaintext worth using.
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
            return false;
        }
        out.copy_from_slice(ciphertext);
        self.open_in_place(nonce, aad, tag, out)
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
