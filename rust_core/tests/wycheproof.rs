//! Crypto conformance: Wycheproof vectors (and RFC 5869's HKDF cases) run through the exact
//! functions the format uses, so that a change of backend or of how a primitive is called is
//! caught. Each test prints how many vectors it ran (`cargo test --test wycheproof -- --nocapture`).
//!
//! - AES-256-GCM (12-byte nonces, 16-byte tags): `crypto::GcmKey::{seal, open_into}`.
//! - X25519: `keys::x25519_shared`, which returns `None` for an all-zero shared secret.
//! - RSA-OAEP with SHA-256 and MGF1-SHA-256, with labels: `keys::rsa_oaep_sha256_decrypt`.
//! - Ed25519: `keys::ed25519_verify` (the reader's key checks and strict verification, on raw
//!   messages), plus a check that a format signature with a non-canonical `S` is refused.
//! - HKDF-SHA-256 (32-byte output): `crypto::hkdf`.

use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use enctensor_core::crypto::{self, GcmKey};
use enctensor_core::keys;
use wycheproof::TestResult;

/// Counts per primitive, printed at the end of each test.
#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    skipped: usize,
}

impl Tally {
    fn count(&mut self, r: TestResult) {
        match r {
            TestResult::Valid => self.valid += 1,
            TestResult::Invalid => self.invalid += 1,
            TestResult::Acceptable => self.acceptable += 1,
        }
    }
    fn run(&self) -> usize {
        self.valid + self.invalid + self.acceptable
    }
    fn report(&self, what: &str) {
        println!(
            "{what}: {} vectors run ({} valid, {} invalid, {} acceptable), {} skipped",
            self.run(),
            self.valid,
            self.invalid,
            self.acceptable,
            self.skipped
        );
    }
}

#[test]
fn aes_256_gcm() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).expect("Wycheproof AES-GCM vectors");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let usable = group.key_size == 256 && group.nonce_size == 96 && group.tag_size == 128;
        if !usable {
            tally.skipped += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let id = t.tc_id;
            let key = GcmKey::new(t.key[..].try_into().expect("32-byte key"));
            let nonce: [u8; 12] = t.nonce[..].try_into().expect("12-byte nonce");
            let mut out = vec![0u8; t.ct.len()];
            let opened = key.open_into(nonce, &t.aad, &t.ct, &t.tag, &mut out);
            let mut sealed = t.pt.to_vec();
            let tag = key.seal(nonce, &t.aad, &mut sealed);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert!(opened, "tc {id}: a valid ciphertext must open");
                    assert_eq!(out, t.pt[..], "tc {id}: wrong plaintext");
                    assert_eq!(sealed, t.ct[..], "tc {id}: wrong ciphertext");
                    assert_eq!(tag[..], t.tag[..], "tc {id}: wrong tag");
                    // A flipped tag bit or a short tag never opens a valid ciphertext.
                    let mut bad_tag = t.tag.to_vec();
                    bad_tag[0] ^= 1;
                    assert!(!key.open_into(nonce, &t.aad, &t.ct, &bad_tag, &mut out));
                    assert!(!key.open_into(nonce, &t.aad, &t.ct, &t.tag[..15], &mut out));
                }
                TestResult::Invalid => {
                    assert!(
                        !opened,
                        "tc {id}: an invalid ciphertext or tag must not open"
                    );
                    assert!(
                        sealed != t.ct[..] || tag[..] != t.tag[..],
                        "tc {id}: seal reproduced an invalid vector"
                    );
                }
            }
            tally.count(t.result);
        }
    }
    tally.report("AES-256-GCM");
    assert!(tally.valid > 30 && tally.invalid > 20);
}

#[test]
fn x25519() {
    use wycheproof::xdh::{TestName, TestSet};
    let set = TestSet::load(TestName::X25519).expect("Wycheproof X25519 vectors");
    let mut tally = Tally::default();
    let mut zero_shared = 0;
    for group in &set.test_groups {
        for t in &group.tests {
            let id = t.tc_id;
            let got = keys::x25519_shared(&t.private_key, &t.public_key);
            let zero = t.shared_secret.iter().all(|&b| b == 0);
            match t.result {
                TestResult::Invalid => {
                    assert!(
                        got.is_none(),
                        "tc {id}: an invalid public key must be refused"
                    )
                }
                _ if zero => {
                    assert!(
                        got.is_none(),
                        "tc {id}: an all-zero shared secret must give None"
                    );
                    zero_shared += 1;
                }
                _ => {
                    let got = got.unwrap_or_else(|| panic!("tc {id}: no shared secret"));
                    assert_eq!(got[..], t.shared_secret[..], "tc {id}: wrong shared secret");
                }
            }
            tally.count(t.result);
        }
    }
    tally.report("X25519");
    println!("X25519: {zero_shared} all-zero shared secrets refused");
    assert!(tally.valid > 50 && zero_shared > 0);
}

#[test]
fn rsa_oaep_sha256() {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    use wycheproof::HashFunction;
    let mut tally = Tally::default();
    let mut keys_used = 0;
    for name in [
        TestName::Rsa2048Sha256Mgf1Sha256,
        TestName::Rsa3072Sha256Mgf1Sha256,
        TestName::Rsa4096Sha256Mgf1Sha256,
        TestName::RsaMisc,
    ] {
        let set = TestSet::load(name).expect("Wycheproof RSA-OAEP vectors");
        for group in &set.test_groups {
            // The format uses SHA-256 with MGF1-SHA-256 and 2048- to 4096-bit moduli.
            let usable = group.hash == HashFunction::Sha2_256
                && group.mgf_hash == HashFunction::Sha2_256
                && (2048..=4096).contains(&group.key_size);
            if !usable {
                tally.skipped += group.tests.len();
                continue;
            }
            let key = PrivateDecryptingKey::from_pkcs8(&group.pkcs8)
                .unwrap_or_else(|e| panic!("{name:?}: {}-bit key: {e}", group.key_size));
            let key = OaepPrivateDecryptingKey::new(key).expect("OAEP key");
            keys_used += 1;
            for t in &group.tests {
                let id = t.tc_id;
                let got = keys::rsa_oaep_sha256_decrypt(&key, &t.ct, &t.label);
                match t.result {
                    TestResult::Valid => {
                        let pt = got.unwrap_or_else(|| panic!("{name:?} tc {id}: must decrypt"));
                        assert_eq!(pt[..], t.pt[..], "{name:?} tc {id}: wrong plaintext");
                    }
                    TestResult::Invalid => {
                        assert!(got.is_none(), "{name:?} tc {id}: must not decrypt")
                    }
                    TestResult::Acceptable => {
                        if let Some(pt) = got {
                            assert_eq!(pt[..], t.pt[..], "{name:?} tc {id}: wrong plaintext");
                        }
                    }
                }
                // The same ciphertext under another label never decrypts.
                let mut other = t.label.to_vec();
                other.push(0);
                assert!(keys::rsa_oaep_sha256_decrypt(&key, &t.ct, &other).is_none());
                tally.count(t.result);
            }
        }
    }
    tally.report("RSA-OAEP SHA-256/MGF1-SHA-256");
    println!("RSA-OAEP: {keys_used} keys");
    assert!(tally.valid > 20 && tally.invalid > 20);
}

#[test]
fn ed25519_strict() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).expect("Wycheproof Ed25519 vectors");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let pk = group.key.pk.to_vec();
        // The signing library's own check agrees with ours on every key the vectors use.
        let lib = UnparsedPublicKey::new(&ED25519, pk.clone());
        for t in &group.tests {
            let ok = keys::ed25519_verify(&pk, &t.msg, &t.sig).expect("usable Wycheproof keys");
            match t.result {
                TestResult::Valid => assert!(ok, "tc {}: must verify", t.tc_id),
                TestResult::Invalid => assert!(!ok, "tc {}: must not verify", t.tc_id),
                TestResult::Acceptable => {}
            }
            if ok {
                assert!(lib.verify(&t.msg, &t.sig).is_ok(), "tc {}", t.tc_id);
            }
            tally.count(t.result);
        }
    }
    tally.report("Ed25519 (keys::ed25519_verify, strict)");
    assert!(tally.valid > 10 && tally.invalid > 50);
}

/// `keys::sign` makes what the reader verifies, and the same signature with `S + L` (a
/// non-canonical scalar: RFC 8032 §5.1.7 as the format requires) is refused.
#[test]
fn ed25519_format_signature_rejects_non_canonical_s() {
    // The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let seed: Vec<u8> = (192..224).collect();
    let public = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map(|p| {
            aws_lc_rs::signature::KeyPair::public_key(&p)
                .as_ref()
                .to_vec()
        })
        .expect("Ed25519 key");
    let (header, tags) = (br#"{"cipher":"AES-256-GCM"}"#.as_slice(), [7u8; 32]);
    let message = keys::signed_message(header, &[1u8; 32], &tags, &[2u8; 64]);
    let sig = keys::sign(&seed, &message).expect("sign");
    // The same signature as aws-lc-rs makes (Ed25519 is deterministic).
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("key");
    assert_eq!(pair.sign(&message).as_ref(), &sig[..]);
    let verify = |m: &[u8], s: &[u8]| keys::ed25519_verify(&public, m, s).expect("usable key");
    assert!(verify(&message, &sig));
    let other = keys::signed_message(b"{}", &[1u8; 32], &tags, &[2u8; 64]);
    assert!(!verify(&other, &sig));
    let mut malleable = sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(malleable[32 + i]) + u16::from(L[i]) + carry;
        malleable[32 + i] = s as u8;
        carry = s >> 8;
    }
    assert_eq!(carry, 0, "S + L fits in 256 bits");
    assert_ne!(malleable, sig);
    assert!(!verify(&message, &malleable));
}

#[test]
fn hkdf_rfc5869() {
    let hex = |s: &str| hex::decode(s).expect("hex");
    // RFC 5869 appendix A, test cases 1-3 (SHA-256); the format's HKDF outputs 32 bytes.
    let cases = [
        (
            vec![0x0b; 22],
            (0x00..=0x0c).collect::<Vec<u8>>(),
            (0xf0..=0xf9).collect::<Vec<u8>>(),
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        ),
        (
            (0x00..=0x4f).collect(),
            (0x60..=0xaf).collect(),
            (0xb0..=0xff).collect(),
            hex("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
        ),
        (
            vec![0x0b; 22],
            vec![],
            vec![],
            hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
        ),
    ];
    for (i, (ikm, salt, info, okm)) in cases.iter().enumerate() {
        let out = crypto::hkdf(ikm, salt, &[info]);
        assert_eq!(out[..], okm[..32], "RFC 5869 case {}", i + 1);
        // The format passes info in parts; splitting it must not change anything.
        let (a, b) = info.split_at(info.len() / 2);
        assert_eq!(crypto::hkdf(ikm, salt, &[a, b])[..], okm[..32]);
    }
    println!("HKDF-SHA-256 RFC 5869: {} cases run", cases.len());
}

#[test]
fn hkdf_sha256_wycheproof() {
    use wycheproof::hkdf::{TestName, TestSet};
    let set = TestSet::load(TestName::HkdfSha256).expect("Wycheproof HKDF-SHA-256 vectors");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            // HKDF-Expand's output of length L is a prefix of T(1) || T(2) || ..., so the
            // 32-byte output can be compared with any expected OKM over min(L, 32) bytes.
            // Invalid vectors are invalid only for their requested length (> 255 * 32).
            if t.result == TestResult::Invalid {
                tally.skipped += 1;
                continue;
            }
            let out = crypto::hkdf(&t.ikm, &t.salt, &[&t.info]);
            let n = t.size.min(32);
            assert_eq!(t.okm.len(), t.size, "tc {}", t.tc_id);
            assert_eq!(out[..n], t.okm[..n], "tc {}", t.tc_id);
            tally.count(t.result);
        }
    }
    tally.report("HKDF-SHA-256 (Wycheproof)");
    assert!(tally.valid > 50);
}
