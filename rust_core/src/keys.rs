//! Stanzas: wrapping the file key for each way of opening a file, and unwrapping it
//! (`spec/FORMAT.md`, "Stanzas"), plus the publisher signature ("Signature").

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{self, Ed25519KeyPair};
use zeroize::Zeroizing;

use crate::crypto::{self, GcmKey, SecretKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::header::{
    Stanza, BODY_LEN, MAX_LOG_N, MAX_RSA_BODY, MIN_LOG_N, MIN_RSA_BODY, SALT_LEN, SIG_LEN,
    X25519_LEN,
};

const LABEL_X25519: &[u8] = b"enctensor.v1 x25519";
const LABEL_RSA: &[u8] = b"enctensor.v1 rsa-oaep";
const LABEL_SIGNATURE: &[u8] = b"enctensor.v1 signature\0";
const ZERO_NONCE: [u8; 12] = [0u8; 12];

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<Zeroizing<[u8; N]>> {
    let arr: [u8; N] = bytes.try_into().map_err(|_| {
        invalid(format!(
            "{what} must be exactly {N} bytes, got {}",
            bytes.len()
        ))
    })?;
    Ok(Zeroizing::new(arr))
}

/// What the caller holds to open a file. Its `Debug` never shows the secret.
pub enum Credential {
    Key(SecretKey),
    Passphrase(Zeroizing<String>),
    /// An X25519 identity (private scalar).
    X25519(SecretKey),
    Rsa(Box<OaepPrivateDecryptingKey>),
    /// The file key itself, from a key provider that unwrapped a stanza elsewhere (a KMS or
    /// HSM). Only the header MAC can tell whether it is right.
    FileKey(SecretKey),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Credential::Key(_) => "Key",
            Credential::Passphrase(_) => "Passphrase",
            Credential::X25519(_) => "X25519",
            Credential::Rsa(_) => "Rsa",
            Credential::FileKey(_) => "FileKey",
        };
        write!(f, "Credential::{kind}(<redacted>)")
    }
}

impl Credential {
    /// A raw key; it must be exactly 32 bytes.
    pub fn key(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(invalid(format!(
                "a key must be exactly 32 bytes, got {} (use enctensor.generate_key() to make one)",
                bytes.len()
            )));
        }
        Ok(Credential::Key(fixed(bytes, "a key")?))
    }

    pub fn passphrase(p: &str) -> Result<Self> {
        if p.is_empty() {
            return Err(invalid("the passphrase is empty"));
        }
        Ok(Credential::Passphrase(Zeroizing::new(p.to_owned())))
    }

    pub fn x25519(secret: &[u8]) -> Result<Self> {
        Ok(Credential::X25519(fixed(secret, "an X25519 private key")?))
    }

    pub fn file_key(bytes: &[u8]) -> Result<Self> {
        Ok(Credential::FileKey(fixed(bytes, "a file key")?))
    }

    /// An RSA private key as PKCS#8 DER.
    pub fn rsa_pkcs8(der: &[u8]) -> Result<Self> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| invalid(format!("not a usable RSA private key: {e}")))?;
        if !(MIN_RSA_BODY..=MAX_RSA_BODY).contains(&key.key_size_bytes()) {
            return Err(invalid("RSA keys must be 2048 to 4096 bits"));
        }
        let key = OaepPrivateDecryptingKey::new(key).map_err(|_| invalid("RSA key rejected"))?;
        Ok(Credential::Rsa(Box::new(key)))
    }
}

/// Someone a file is written for.
pub enum Recipient {
    Key(SecretKey),
    Passphrase(Zeroizing<String>),
    /// An X25519 public key.
    X25519([u8; X25519_LEN]),
    Rsa(Box<OaepPublicEncryptingKey>),
}

impl Recipient {
    pub fn key(bytes: &[u8]) -> Result<Self> {
        match Credential::key(bytes)? {
            Credential::Key(k) => Ok(Recipient::Key(k)),
            _ => unreachable!(),
        }
    }

    pub fn passphrase(p: &str) -> Result<Self> {
        match Credential::passphrase(p)? {
            Credential::Passphrase(p) => Ok(Recipient::Passphrase(p)),
            _ => unreachable!(),
        }
    }

    pub fn x25519(public: &[u8]) -> Result<Self> {
        Ok(Recipient::X25519(*fixed::<X25519_LEN>(
            public,
            "an X25519 public key",
        )?))
    }

    /// An RSA public key as DER SubjectPublicKeyInfo.
    pub fn rsa_spki(der: &[u8]) -> Result<Self> {
        let key = PublicEncryptingKey::from_der(der)
            .map_err(|e| invalid(format!("not a usable RSA public key: {e}")))?;
        if !(MIN_RSA_BODY..=MAX_RSA_BODY).contains(&key.key_size_bytes()) {
            return Err(invalid("RSA keys must be 2048 to 4096 bits"));
        }
        let key = OaepPublicEncryptingKey::new(key).map_err(|_| invalid("RSA key rejected"))?;
        Ok(Recipient::Rsa(Box::new(key)))
    }

    pub fn is_passphrase(&self) -> bool {
        matches!(self, Recipient::Passphrase(_))
    }
}

fn key_wrap_key(key: &[u8; KEY_LEN], salt: &[u8; SALT_LEN]) -> SecretKey {
    crypto::hkdf(key, salt, &[crypto::LABEL_KEY_STANZA])
}

fn scrypt_wrap_key(passphrase: &str, salt: &[u8; SALT_LEN], log_n: u8) -> Result<SecretKey> {
    if !(MIN_LOG_N..=MAX_LOG_N).contains(&u64::from(log_n)) {
        return Err(invalid(format!(
            "scrypt log_n must be between {MIN_LOG_N} and {MAX_LOG_N}, got {log_n}"
        )));
    }
    let params = scrypt::Params::new(log_n, 8, 1, KEY_LEN)
        .map_err(|e| invalid(format!("scrypt parameters: {e}")))?;
    let mut s = Vec::with_capacity(crypto::LABEL_SCRYPT.len() + SALT_LEN);
    s.extend_from_slice(crypto::LABEL_SCRYPT);
    s.extend_from_slice(salt);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    scrypt::scrypt(passphrase.as_bytes(), &s, &params, &mut out[..])
        .map_err(|e| invalid(format!("scrypt: {e}")))?;
    Ok(out)
}

/// X25519(`me`, `peer`) as the `x25519` stanza uses it: `None` if AWS-LC rejects the peer
/// key or the shared secret is all zero (a low-order point).
fn agree_x25519(me: &agreement::PrivateKey, peer: &[u8]) -> Option<SecretKey> {
    agreement::agree(me, UnparsedPublicKey::new(&X25519, peer), (), |shared| {
        if shared.len() != KEY_LEN || shared.iter().all(|&b| b == 0) {
            return Err(());
        }
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(shared);
        Ok(out)
    })
    .ok()
}

/// X25519 of a raw private scalar and a peer public key, exactly as stanzas compute it (for
/// conformance tests); `None` for rejected keys and all-zero results.
pub fn x25519_shared(secret: &[u8], peer: &[u8]) -> Option<SecretKey> {
    let me = agreement::PrivateKey::from_private_key(&X25519, secret).ok()?;
    agree_x25519(&me, peer)
}

/// RSAES-OAEP decryption with SHA-256, MGF1-SHA-256 and the given label, as the `rsa-oaep`
/// stanza uses it (`None` on any failure).
pub fn rsa_oaep_sha256_decrypt(
    key: &OaepPrivateDecryptingKey,
    body: &[u8],
    label: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; key.key_size_bytes()]);
    let n = key
        .decrypt(&OAEP_SHA256_MGF1SHA256, body, &mut out[..], Some(label))
        .ok()?
        .len();
    out.truncate(n);
    Some(out)
}

/// The X25519 wrap key from a (non-zero) shared secret.
fn x25519_wrap_key(shared: &[u8], share: &[u8], recipient: &[u8]) -> SecretKey {
    crypto::hkdf(shared, &[share, recipient].concat(), &[LABEL_X25519])
}

fn unwrap_body(wrap_key: &SecretKey, body: &[u8; BODY_LEN]) -> Option<SecretKey> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let ok = GcmKey::new(wrap_key).open_into(
        ZERO_NONCE,
        b"",
        &body[..KEY_LEN],
        &body[KEY_LEN..],
        &mut out[..],
    );
    ok.then_some(out)
}

fn wrap_body(wrap_key: &SecretKey, file_key: &SecretKey) -> [u8; BODY_LEN] {
    let mut body = [0u8; BODY_LEN];
    body[..KEY_LEN].copy_from_slice(&file_key[..]);
    let tag = GcmKey::new(wrap_key).seal(ZERO_NONCE, b"", &mut body[..KEY_LEN]);
    body[KEY_LEN..].copy_from_slice(&tag);
    body
}

fn kinds(stanzas: &[Stanza]) -> String {
    stanzas
        .iter()
        .map(|s| s.kind())
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_match(stanzas: &[Stanza], what: &str, tried_any: bool) -> Error {
    Error::WrongKey(if tried_any {
        format!("no key opens this file: the {what} given does not match any of its stanzas")
    } else {
        format!(
            "no key opens this file: it has no stanza for a {what} (its stanzas: {})",
            kinds(stanzas)
        )
    })
}

/// Tries every stanza the credential can open; returns the file key of the first that does.
pub fn open_stanzas(stanzas: &[Stanza], cred: &Credential) -> Result<SecretKey> {
    let mut tried = false;
    match cred {
        Credential::Key(key) => {
            for s in stanzas {
                if let Stanza::Key { salt, body } = s {
                    tried = true;
                    if let Some(fk) = unwrap_body(&key_wrap_key(key, salt), body) {
                        return Ok(fk);
                    }
                }
            }
            Err(no_match(stanzas, "raw key", tried))
        }
        Credential::Passphrase(p) => {
            for s in stanzas {
                if let Stanza::Scrypt { salt, log_n, body } = s {
                    if let Some(fk) = unwrap_body(&scrypt_wrap_key(p, salt, *log_n)?, body) {
                        return Ok(fk);
                    }
                    return Err(Error::WrongKey(
                        "no key opens this file: wrong passphrase".into(),
                    ));
                }
            }
            Err(no_match(stanzas, "passphrase", false))
        }
        Credential::X25519(secret) => {
            let me = agreement::PrivateKey::from_private_key(&X25519, &secret[..])
                .map_err(|_| invalid("not a usable X25519 private key"))?;
            let my_public = me
                .compute_public_key()
                .map_err(|_| invalid("X25519 key rejected"))?;
            for s in stanzas {
                if let Stanza::X25519 { share, body } = s {
                    tried = true;
                    let wrap = agree_x25519(&me, share)
                        .map(|shared| x25519_wrap_key(&shared[..], share, my_public.as_ref()));
                    if let Some(fk) = wrap.and_then(|w| unwrap_body(&w, body)) {
                        return Ok(fk);
                    }
                }
            }
            Err(no_match(stanzas, "X25519 identity", tried))
        }
        Credential::FileKey(k) => Ok(k.clone()),
        Credential::Rsa(key) => {
            for s in stanzas {
                if let Stanza::RsaOaep { body } = s {
                    if body.len() != key.key_size_bytes() {
                        continue;
                    }
                    tried = true;
                    if let Some(pt) = rsa_oaep_sha256_decrypt(key, body, LABEL_RSA) {
                        if pt.len() == KEY_LEN {
                            return fixed(&pt, "file key");
                        }
                    }
                }
            }
            Err(no_match(stanzas, "RSA private key", tried))
        }
    }
}

/// A stanza's type and public fields (hex for bytes), for key providers and `inspect`.
pub fn describe(s: &Stanza) -> Vec<(String, String)> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = vec![("type".to_owned(), s.kind().to_owned())];
    let mut add = |k: &str, v: String| out.push((k.to_owned(), v));
    match s {
        Stanza::Key { salt, body } => {
            add("salt", hex(salt));
            add("body", hex(body));
        }
        Stanza::Scrypt { salt, log_n, body } => {
            add("salt", hex(salt));
            add("log_n", log_n.to_string());
            add("body", hex(body));
        }
        Stanza::X25519 { share, body } => {
            add("share", hex(share));
            add("body", hex(body));
        }
        Stanza::RsaOaep { body } => add("body", hex(body)),
        Stanza::Unknown { .. } => {}
    }
    out
}

/// Makes a stanza that wraps `file_key` for `recipient` with fresh randomness.
pub fn make_stanza(file_key: &SecretKey, recipient: &Recipient, log_n: u8) -> Result<Stanza> {
    let mut salt = [0u8; SALT_LEN];
    crypto::random(&mut salt)?;
    Ok(match recipient {
        Recipient::Key(key) => Stanza::Key {
            salt,
            body: wrap_body(&key_wrap_key(key, &salt), file_key),
        },
        Recipient::Passphrase(p) => Stanza::Scrypt {
            salt,
            log_n,
            body: wrap_body(&scrypt_wrap_key(p, &salt, log_n)?, file_key),
        },
        Recipient::X25519(public) => {
            let eph = agreement::PrivateKey::generate(&X25519)
                .map_err(|_| invalid("X25519 keygen failed"))?;
            let share: [u8; X25519_LEN] = eph
                .compute_public_key()
                .map_err(|_| invalid("X25519 keygen failed"))?
                .as_ref()
                .try_into()
                .expect("32-byte X25519 public key");
            let shared = agree_x25519(&eph, public)
                .ok_or_else(|| invalid("the X25519 recipient key is invalid (low-order point?)"))?;
            let wrap = x25519_wrap_key(&shared[..], &share, public);
            Stanza::X25519 {
                share,
                body: wrap_body(&wrap, file_key),
            }
        }
        Recipient::Rsa(key) => {
            let mut out = vec![0u8; key.ciphertext_size()];
            let n = key
                .encrypt(
                    &OAEP_SHA256_MGF1SHA256,
                    &file_key[..],
                    &mut out,
                    Some(LABEL_RSA),
                )
                .map_err(|_| invalid("RSA-OAEP encryption failed"))?
                .len();
            out.truncate(n);
            Stanza::RsaOaep { body: out }
        }
    })
}

/// The message an Ed25519 publisher signature covers.
fn signed_message(header: &[u8], tags: &[u8]) -> Vec<u8> {
    [LABEL_SIGNATURE, header, tags].concat()
}

/// Signs with an Ed25519 private key given as its 32-byte seed.
pub fn sign(seed: &[u8], header: &[u8], tags: &[u8]) -> Result<[u8; SIG_LEN]> {
    let seed = fixed::<32>(seed, "an Ed25519 private key")?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..])
        .map_err(|_| invalid("not a usable Ed25519 private key"))?;
    Ok(pair
        .sign(&signed_message(header, tags))
        .as_ref()
        .try_into()
        .expect("64-byte signature"))
}

/// Verifies a publisher signature against a caller-supplied 32-byte Ed25519 public key.
pub fn verify_signature(public: &[u8], sig: &[u8; SIG_LEN], header: &[u8], tags: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(&signed_message(header, tags), sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let fk = Zeroizing::new([9u8; 32]);
        let a = Recipient::key(&[1u8; 32]).unwrap();
        let b = Recipient::key(&[2u8; 32]).unwrap();
        let s = vec![
            make_stanza(&fk, &a, 0).unwrap(),
            make_stanza(&fk, &b, 0).unwrap(),
        ];
        assert_eq!(
            *open_stanzas(&s, &Credential::key(&[2u8; 32]).unwrap()).unwrap(),
            *fk
        );
        let c = Credential::key(&[3u8; 32]).unwrap();
        assert!(matches!(open_stanzas(&s, &c), Err(Error::WrongKey(_))));
        assert!(matches!(
            Credential::key(&[0u8; 31]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(!format!("{c:?}").contains('3'));
    }

    #[test]
    fn passphrase() {
        let fk = Zeroizing::new([9u8; 32]);
        let p = Recipient::passphrase("correct horse").unwrap();
        let s = vec![make_stanza(&fk, &p, 10).unwrap()];
        let right = Credential::passphrase("correct horse").unwrap();
        assert_eq!(*open_stanzas(&s, &right).unwrap(), *fk);
        let q = Credential::passphrase("wrong horse").unwrap();
        assert!(matches!(open_stanzas(&s, &q), Err(Error::WrongKey(_))));
        assert!(matches!(
            make_stanza(&fk, &p, 30),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn x25519_recipients() {
        let fk = Zeroizing::new([5u8; 32]);
        use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
        let seed = |k: &agreement::PrivateKey| -> Vec<u8> {
            let b: Curve25519SeedBin = k.as_be_bytes().unwrap();
            b.as_ref().to_vec()
        };
        let alice = agreement::PrivateKey::generate(&X25519).unwrap();
        let alice_secret = seed(&alice);
        let alice_pub = alice.compute_public_key().unwrap();
        let s = vec![make_stanza(&fk, &Recipient::x25519(alice_pub.as_ref()).unwrap(), 0).unwrap()];
        let cred = Credential::x25519(alice_secret.as_ref()).unwrap();
        assert_eq!(*open_stanzas(&s, &cred).unwrap(), *fk);
        let mallory = agreement::PrivateKey::generate(&X25519).unwrap();
        let wrong = Credential::x25519(&seed(&mallory)).unwrap();
        assert!(matches!(open_stanzas(&s, &wrong), Err(Error::WrongKey(_))));
        // A low-order share never opens.
        let low = vec![Stanza::X25519 {
            share: [0u8; 32],
            body: [0u8; 48],
        }];
        assert!(matches!(open_stanzas(&low, &cred), Err(Error::WrongKey(_))));
    }
}
