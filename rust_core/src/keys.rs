//! Stanzas: wrapping the file key for each way of opening a file, and unwrapping it
//! (`spec/FORMAT.md`, "Stanzas").

use zeroize::Zeroizing;

use crate::crypto::{self, GcmKey, SecretKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::header::{Stanza, BODY_LEN, MAX_LOG_N, MIN_LOG_N, SALT_LEN};

/// What the caller holds to open a file. Its `Debug` never shows the secret.
pub enum Credential {
    Key(SecretKey),
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(_) => f.write_str("Credential::Key(<redacted>)"),
            Credential::Passphrase(_) => f.write_str("Credential::Passphrase(<redacted>)"),
        }
    }
}

impl Credential {
    /// A raw key; it must be exactly 32 bytes.
    pub fn key(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument(format!(
                "a key must be exactly 32 bytes, got {} (use enctensor.generate_key() to make one)",
                bytes.len()
            ))
        })?;
        Ok(Credential::Key(Zeroizing::new(arr)))
    }

    pub fn passphrase(p: &str) -> Result<Self> {
        if p.is_empty() {
            return Err(Error::InvalidArgument("the passphrase is empty".into()));
        }
        Ok(Credential::Passphrase(Zeroizing::new(p.to_owned())))
    }
}

const ZERO_NONCE: [u8; 12] = [0u8; 12];

fn key_wrap_key(key: &[u8; KEY_LEN], salt: &[u8; SALT_LEN]) -> SecretKey {
    crypto::hkdf(key, salt, &[crypto::LABEL_KEY_STANZA])
}

fn scrypt_wrap_key(passphrase: &str, salt: &[u8; SALT_LEN], log_n: u8) -> Result<SecretKey> {
    if !(MIN_LOG_N..=MAX_LOG_N).contains(&u64::from(log_n)) {
        return Err(Error::InvalidArgument(format!(
            "scrypt log_n must be between {MIN_LOG_N} and {MAX_LOG_N}, got {log_n}"
        )));
    }
    let params = scrypt::Params::new(log_n, 8, 1, KEY_LEN)
        .map_err(|e| Error::InvalidArgument(format!("scrypt parameters: {e}")))?;
    let mut s = Vec::with_capacity(crypto::LABEL_SCRYPT.len() + SALT_LEN);
    s.extend_from_slice(crypto::LABEL_SCRYPT);
    s.extend_from_slice(salt);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    scrypt::scrypt(passphrase.as_bytes(), &s, &params, &mut out[..])
        .map_err(|e| Error::InvalidArgument(format!("scrypt: {e}")))?;
    Ok(out)
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

/// Tries every stanza the credential can open; returns the file key of the first that does.
pub fn open_stanzas(stanzas: &[Stanza], cred: &Credential) -> Result<SecretKey> {
    match cred {
        Credential::Key(key) => {
            let mut any = false;
            for s in stanzas {
                if let Stanza::Key { salt, body } = s {
                    any = true;
                    if let Some(fk) = unwrap_body(&key_wrap_key(key, salt), body) {
                        return Ok(fk);
                    }
                }
            }
            Err(Error::WrongKey(if any {
                "no key opens this file: the key given does not match any of its key stanzas".into()
            } else {
                format!(
                    "no key opens this file: it has no raw-key stanza (its stanzas: {})",
                    kinds(stanzas)
                )
            }))
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
            Err(Error::WrongKey(format!(
                "no key opens this file: it is not passphrase-protected (its stanzas: {})",
                kinds(stanzas)
            )))
        }
    }
}

fn kinds(stanzas: &[Stanza]) -> String {
    stanzas
        .iter()
        .map(|s| s.kind())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes a stanza that wraps `file_key` for `cred` with a fresh random salt.
pub fn make_stanza(file_key: &SecretKey, cred: &Credential, log_n: u8) -> Result<Stanza> {
    let mut salt = [0u8; SALT_LEN];
    crypto::random(&mut salt)?;
    Ok(match cred {
        Credential::Key(key) => Stanza::Key {
            salt,
            body: wrap_body(&key_wrap_key(key, &salt), file_key),
        },
        Credential::Passphrase(p) => Stanza::Scrypt {
            salt,
            log_n,
            body: wrap_body(&scrypt_wrap_key(p, &salt, log_n)?, file_key),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let fk = Zeroizing::new([9u8; 32]);
        let a = Credential::key(&[1u8; 32]).unwrap();
        let b = Credential::key(&[2u8; 32]).unwrap();
        let s = vec![
            make_stanza(&fk, &a, 0).unwrap(),
            make_stanza(&fk, &b, 0).unwrap(),
        ];
        assert_eq!(*open_stanzas(&s, &b).unwrap(), *fk);
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
        let p = Credential::passphrase("correct horse").unwrap();
        let s = vec![make_stanza(&fk, &p, 10).unwrap()];
        assert_eq!(*open_stanzas(&s, &p).unwrap(), *fk);
        let q = Credential::passphrase("wrong horse").unwrap();
        assert!(matches!(open_stanzas(&s, &q), Err(Error::WrongKey(_))));
        assert!(matches!(
            make_stanza(&fk, &p, 30),
            Err(Error::InvalidArgument(_))
        ));
    }
}
