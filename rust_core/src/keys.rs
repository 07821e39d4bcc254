//! Stanzas: wrapping the file key for each way of opening a file, and unwrapping it
//! (`spec/FORMAT.md`, "Stanzas"), plus the publisher signature ("Signature").

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::crypto::{self, GcmKey, SecretKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::header::{
    Fingerprint, Stanza, BODY_LEN, FINGERPRINT_LEN, MAX_LOG_N, MAX_RSA_BODY, MIN_LOG_N,
    MIN_RSA_BODY, SALT_LEN, SIG_LEN, X25519_LEN,
};

const LABEL_X25519: &[u8] = b"enctensor.v1 x25519";
const LABEL_RSA: &[u8] = b"enctensor.v1 rsa-oaep";
const LABEL_COMMITMENT: &[u8] = b"enctensor.v1 stanza commitment";
const LABEL_SEAL: &[u8] = b"enctensor.v1 stanza seal";
/// Recipient fingerprints (`spec/FORMAT.md`, "Recipient fingerprints"): one label per stanza
/// type, so that a raw key and a public key with the same bytes never share a fingerprint.
const LABEL_FINGERPRINT_KEY: &[u8] = b"enctensor.v1 fingerprint key";
const LABEL_FINGERPRINT_X25519: &[u8] = b"enctensor.v1 fingerprint x25519";
const LABEL_FINGERPRINT_RSA: &[u8] = b"enctensor.v1 fingerprint rsa-oaep";
/// Followed by a zero byte in the signed message.
const LABEL_SIGNATURE: &[u8] = b"enctensor.v1 ed25519-blake3";
const ZERO_NONCE: [u8; 12] = [0u8; 12];
/// Length of the commitment at the start of a `key`, `scrypt` or `x25519` body.
const COMMIT_LEN: usize = 32;
/// An Ed25519 public key.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// The reader's default scrypt cost cap (`spec/FORMAT.md`, "scrypt"): 2^18 is 256 MiB.
pub const DEFAULT_MAX_SCRYPT_LOG_N: u8 = 18;

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
    /// What kind of credential this is, for messages (never its value).
    pub fn describe(&self) -> &'static str {
        match self {
            Credential::Key(_) => "raw key",
            Credential::Passphrase(_) => "passphrase",
            Credential::X25519(_) => "X25519 identity",
            Credential::Rsa(_) => "RSA private key",
            Credential::FileKey(_) => "file key",
        }
    }

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

/// Someone a file is written for, and whether their stanza carries their fingerprint.
pub struct Recipient {
    kind: RecipientKind,
    fingerprint: bool,
}

enum RecipientKind {
    Key(SecretKey),
    Passphrase(Zeroizing<String>),
    /// An X25519 public key.
    X25519([u8; X25519_LEN]),
    /// An RSA public key and its DER SubjectPublicKeyInfo as AWS-LC encodes it (the
    /// fingerprint's input: one encoding per key, whatever DER the caller gave).
    Rsa {
        key: Box<OaepPublicEncryptingKey>,
        spki: Vec<u8>,
    },
}

impl Recipient {
    fn of(kind: RecipientKind) -> Self {
        Recipient {
            kind,
            fingerprint: false,
        }
    }

    pub fn key(bytes: &[u8]) -> Result<Self> {
        match Credential::key(bytes)? {
            Credential::Key(k) => Ok(Self::of(RecipientKind::Key(k))),
            _ => unreachable!(),
        }
    }

    pub fn passphrase(p: &str) -> Result<Self> {
        match Credential::passphrase(p)? {
            Credential::Passphrase(p) => Ok(Self::of(RecipientKind::Passphrase(p))),
            _ => unreachable!(),
        }
    }

    pub fn x25519(public: &[u8]) -> Result<Self> {
        Ok(Self::of(RecipientKind::X25519(*fixed::<X25519_LEN>(
            public,
            "an X25519 public key",
        )?)))
    }

    /// An RSA public key as DER SubjectPublicKeyInfo.
    pub fn rsa_spki(der: &[u8]) -> Result<Self> {
        let key = PublicEncryptingKey::from_der(der)
            .map_err(|e| invalid(format!("not a usable RSA public key: {e}")))?;
        if !(MIN_RSA_BODY..=MAX_RSA_BODY).contains(&key.key_size_bytes()) {
            return Err(invalid("RSA keys must be 2048 to 4096 bits"));
        }
        let spki = key
            .as_der()
            .map_err(|_| invalid("RSA key rejected"))?
            .as_ref()
            .to_vec();
        let key = OaepPublicEncryptingKey::new(key).map_err(|_| invalid("RSA key rejected"))?;
        Ok(Self::of(RecipientKind::Rsa {
            key: Box::new(key),
            spki,
        }))
    }

    pub fn is_passphrase(&self) -> bool {
        matches!(self.kind, RecipientKind::Passphrase(_))
    }

    /// The stanza made for this recipient will carry its fingerprint. A passphrase has none.
    pub fn with_fingerprint(mut self) -> Result<Self> {
        if self.is_passphrase() {
            return Err(invalid(
                "a passphrase (scrypt) stanza cannot carry a fingerprint: one derived from the \
                 passphrase would test guesses without scrypt",
            ));
        }
        self.fingerprint = true;
        Ok(self)
    }

    /// This recipient's fingerprint (`None` for a passphrase), whether or not its stanza will
    /// carry it.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match &self.kind {
            RecipientKind::Key(key) => Some(fingerprint(LABEL_FINGERPRINT_KEY, &key[..])),
            RecipientKind::X25519(public) => Some(fingerprint(LABEL_FINGERPRINT_X25519, public)),
            RecipientKind::Rsa { spki, .. } => Some(fingerprint(LABEL_FINGERPRINT_RSA, spki)),
            RecipientKind::Passphrase(_) => None,
        }
    }

    /// What kind of recipient this is, for messages (never its value).
    pub fn describe(&self) -> &'static str {
        match self.kind {
            RecipientKind::Key(_) => "raw key",
            RecipientKind::Passphrase(_) => "passphrase",
            RecipientKind::X25519(_) => "X25519 recipient",
            RecipientKind::Rsa { .. } => "RSA recipient",
        }
    }

    /// Whether `stanza` is already this recipient's: a `key` stanza that this key opens (its
    /// commitment matches: no decryption), a stanza carrying this recipient's fingerprint, or,
    /// for a passphrase, any passphrase stanza (a file holds one at most).
    pub fn owns(&self, stanza: &Stanza) -> bool {
        match (&self.kind, stanza) {
            (RecipientKind::Key(key), Stanza::Key { salt, body, .. }) => {
                commits_to(&key_wrap_key(key, salt), body)
            }
            (RecipientKind::Passphrase(_), Stanza::Scrypt { .. }) => true,
            _ => {
                stanza.fingerprint().is_some()
                    && stanza.fingerprint() == self.fingerprint().as_ref()
            }
        }
    }
}

/// `fingerprint = first 16 bytes of HKDF(ikm = material, salt = "", info = label)`: a short
/// hash of a public key, or of a raw key a value that reveals nothing about it (HKDF is a PRF).
fn fingerprint(label: &[u8], material: &[u8]) -> Fingerprint {
    let full = crypto::hkdf(material, &[], &[label]);
    full[..FINGERPRINT_LEN]
        .try_into()
        .expect("HKDF output is longer than a fingerprint")
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

/// The commitment to a wrap key that starts a stanza body.
fn commitment(wrap_key: &SecretKey) -> SecretKey {
    crypto::hkdf(&wrap_key[..], &[], &[LABEL_COMMITMENT])
}

/// The AES-256-GCM key that seals the file key in a stanza body.
fn seal_key(wrap_key: &SecretKey) -> GcmKey {
    GcmKey::new(&crypto::hkdf(&wrap_key[..], &[], &[LABEL_SEAL]))
}

/// Whether a key-committing body was made with `wrap_key`: its commitment matches (compared
/// in constant time). Two wrap keys with one commitment would be an HKDF collision.
fn commits_to(wrap_key: &SecretKey, body: &[u8; BODY_LEN]) -> bool {
    crypto::ct_eq(&commitment(wrap_key)[..], &body[..COMMIT_LEN])
}

/// Opens a key-committing body: the commitment must match `wrap_key` (compared in constant
/// time) before AES-GCM runs, so one body opens under one wrap key only.
fn unwrap_body(wrap_key: &SecretKey, body: &[u8; BODY_LEN]) -> Option<SecretKey> {
    if !commits_to(wrap_key, body) {
        return None;
    }
    let sealed = &body[COMMIT_LEN..];
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let ok = seal_key(wrap_key).open_into(
        ZERO_NONCE,
        b"",
        &sealed[..KEY_LEN],
        &sealed[KEY_LEN..],
        &mut out[..],
    );
    ok.then_some(out)
}

/// `commitment || AES-GCM-Seal(seal key, 0, file key, "")`.
fn wrap_body(wrap_key: &SecretKey, file_key: &SecretKey) -> [u8; BODY_LEN] {
    let mut body = [0u8; BODY_LEN];
    body[..COMMIT_LEN].copy_from_slice(&commitment(wrap_key)[..]);
    let sealed = &mut body[COMMIT_LEN..];
    sealed[..KEY_LEN].copy_from_slice(&file_key[..]);
    let tag = seal_key(wrap_key).seal(ZERO_NONCE, b"", &mut sealed[..KEY_LEN]);
    sealed[KEY_LEN..].copy_from_slice(&tag);
    body
}

/// Checks the caller's scrypt cost cap: 10..=20.
pub fn check_max_scrypt_log_n(max_scrypt_log_n: u8) -> Result<()> {
    if !(MIN_LOG_N..=MAX_LOG_N).contains(&u64::from(max_scrypt_log_n)) {
        return Err(invalid(format!(
            "max_scrypt_log_n must be between {MIN_LOG_N} and {MAX_LOG_N}, got {max_scrypt_log_n}"
        )));
    }
    Ok(())
}

/// The reader's scrypt cost policy (`spec/FORMAT.md`, "scrypt"): refuses, before scrypt
/// runs, a file whose `scrypt` stanza asks for more than `2^max_scrypt_log_n`. Applied to the
/// file whatever credential is given, as the reference reader does.
pub fn check_scrypt_policy(stanzas: &[Stanza], max_scrypt_log_n: u8) -> Result<()> {
    check_max_scrypt_log_n(max_scrypt_log_n)?;
    for s in stanzas {
        if let Stanza::Scrypt { log_n, .. } = s {
            if *log_n > max_scrypt_log_n {
                return Err(Error::policy(format!(
                    "the passphrase (scrypt) stanza asks for log_n = {log_n} ({} MiB of memory \
                     per attempt, doubling the time with each step), above this reader's limit \
                     max_scrypt_log_n = {max_scrypt_log_n}; if you trust this file, allow it \
                     with max_scrypt_log_n={log_n} (CLI: --max-scrypt-log-n {log_n})",
                    1u64 << (log_n - 10)
                )));
            }
        }
    }
    Ok(())
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
/// A file whose scrypt stanza costs more than `2^max_scrypt_log_n` is refused first
/// ([`check_scrypt_policy`]).
pub fn open_stanzas(
    stanzas: &[Stanza],
    cred: &Credential,
    max_scrypt_log_n: u8,
) -> Result<SecretKey> {
    check_scrypt_policy(stanzas, max_scrypt_log_n)?;
    let mut tried = false;
    match cred {
        Credential::Key(key) => {
            for s in stanzas {
                if let Stanza::Key { salt, body, .. } = s {
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
            let me = X25519Identity::new(secret)?;
            for s in stanzas {
                if let Stanza::X25519 { share, body, .. } = s {
                    tried = true;
                    if let Some(fk) = me.wrap_key(share).and_then(|w| unwrap_body(&w, body)) {
                        return Ok(fk);
                    }
                }
            }
            Err(no_match(stanzas, "X25519 identity", tried))
        }
        Credential::FileKey(k) => Ok(k.clone()),
        Credential::Rsa(key) => {
            for s in stanzas {
                if let Stanza::RsaOaep { body, .. } = s {
                    if body.len() != key.key_size_bytes() {
                        continue;
                    }
                    tried = true;
                    if let Some(fk) = rsa_open(key, body) {
                        return Ok(fk);
                    }
                }
            }
            Err(no_match(stanzas, "RSA private key", tried))
        }
    }
}

/// The file key in an `rsa-oaep` body: OAEP decryption that yields exactly 32 bytes.
fn rsa_open(key: &OaepPrivateDecryptingKey, body: &[u8]) -> Option<SecretKey> {
    let pt = rsa_oaep_sha256_decrypt(key, body, LABEL_RSA)?;
    fixed(&pt, "file key").ok()
}

/// An X25519 identity made ready to compute wrap keys (its public key computed once).
struct X25519Identity {
    me: agreement::PrivateKey,
    public: Vec<u8>,
}

impl X25519Identity {
    fn new(secret: &SecretKey) -> Result<Self> {
        let me = agreement::PrivateKey::from_private_key(&X25519, &secret[..])
            .map_err(|_| invalid("not a usable X25519 private key"))?;
        let public = me
            .compute_public_key()
            .map_err(|_| invalid("X25519 key rejected"))?
            .as_ref()
            .to_vec();
        Ok(X25519Identity { me, public })
    }

    /// The wrap key of an `x25519` stanza with this `share`, for this identity (`None` for a
    /// low-order share).
    fn wrap_key(&self, share: &[u8; X25519_LEN]) -> Option<SecretKey> {
        agree_x25519(&self.me, share)
            .map(|shared| x25519_wrap_key(&shared[..], share, &self.public))
    }
}

/// The stanzas of `stanzas` that were made for the holder of `cred` (their positions), without
/// opening the file: a `key` or `x25519` stanza whose commitment matches the wrap key `cred`
/// derives (nothing is decrypted: the commitment binds the wrap key), an `rsa-oaep` stanza
/// that OAEP-decrypts to a 32-byte key. This is how a key identifies its stanza in a file whose
/// stanzas carry no fingerprint (`inspect` with a key, re-keying that removes a key's stanza).
/// A passphrase or a file key identifies no stanza: an error.
pub fn stanzas_of(stanzas: &[Stanza], cred: &Credential) -> Result<Vec<usize>> {
    let x25519 = match cred {
        Credential::X25519(secret) => Some(X25519Identity::new(secret)?),
        Credential::Passphrase(_) | Credential::FileKey(_) => {
            return Err(invalid(
                "only a raw key or an X25519 or RSA private key identifies its stanza (a \
                 passphrase stanza is always a file's only one)",
            ))
        }
        _ => None,
    };
    let owns = |s: &Stanza| match (cred, s) {
        (Credential::Key(key), Stanza::Key { salt, body, .. }) => {
            commits_to(&key_wrap_key(key, salt), body)
        }
        (Credential::X25519(_), Stanza::X25519 { share, body, .. }) => x25519
            .as_ref()
            .and_then(|me| me.wrap_key(share))
            .is_some_and(|w| commits_to(&w, body)),
        (Credential::Rsa(key), Stanza::RsaOaep { body, .. }) => {
            body.len() == key.key_size_bytes() && rsa_open(key, body).is_some()
        }
        _ => false,
    };
    Ok(stanzas
        .iter()
        .enumerate()
        .filter(|(_, s)| owns(s))
        .map(|(i, _)| i)
        .collect())
}

/// A stanza's type and public fields (hex for bytes), for key providers and `inspect`.
pub fn describe(s: &Stanza) -> Vec<(String, String)> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = vec![("type".to_owned(), s.kind().to_owned())];
    let mut add = |k: &str, v: String| out.push((k.to_owned(), v));
    match s {
        Stanza::Key { salt, body, .. } => {
            add("salt", hex(salt));
            add("body", hex(body));
        }
        Stanza::Scrypt { salt, log_n, body } => {
            add("salt", hex(salt));
            add("log_n", log_n.to_string());
            add("body", hex(body));
        }
        Stanza::X25519 { share, body, .. } => {
            add("share", hex(share));
            add("body", hex(body));
        }
        Stanza::RsaOaep { body, .. } => add("body", hex(body)),
        Stanza::Unknown { .. } => {}
    }
    if let Some(fp) = s.fingerprint() {
        add(crate::header::FINGERPRINT_MEMBER, hex(fp));
    }
    out
}

/// Makes a stanza that wraps `file_key` for `recipient` with fresh randomness.
/// The stanza carries the recipient's fingerprint if the recipient asked for it
/// ([`Recipient::with_fingerprint`]).
pub fn make_stanza(file_key: &SecretKey, recipient: &Recipient, log_n: u8) -> Result<Stanza> {
    let mut salt = [0u8; SALT_LEN];
    crypto::random(&mut salt)?;
    let fingerprint = recipient
        .fingerprint
        .then(|| recipient.fingerprint())
        .flatten();
    Ok(match &recipient.kind {
        RecipientKind::Key(key) => Stanza::Key {
            salt,
            body: wrap_body(&key_wrap_key(key, &salt), file_key),
            fingerprint,
        },
        RecipientKind::Passphrase(p) => Stanza::Scrypt {
            salt,
            log_n,
            body: wrap_body(&scrypt_wrap_key(p, &salt, log_n)?, file_key),
        },
        RecipientKind::X25519(public) => {
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
                fingerprint,
            }
        }
        RecipientKind::Rsa { key, .. } => {
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
            Stanza::RsaOaep {
                body: out,
                fingerprint,
            }
        }
    })
}

/// The message an `ed25519-blake3` signature covers (`spec/FORMAT.md`, "Signature"):
/// `label || 0x00 || u64le(header_len) || u64le(C) || BLAKE3(header || MAC || tags || digests)`.
/// `C` is the number of chunks, `tags.len() / 16`.
pub fn signed_message(header: &[u8], mac: &[u8], tags: &[u8], digests: &[u8]) -> Vec<u8> {
    let mut transcript = blake3::Hasher::new();
    for part in [header, mac, tags, digests] {
        transcript.update(part);
    }
    let n_chunks = (tags.len() / crate::crypto::TAG_LEN) as u64;
    let mut m = Vec::with_capacity(LABEL_SIGNATURE.len() + 1 + 16 + 32);
    m.extend_from_slice(LABEL_SIGNATURE);
    m.push(0);
    m.extend_from_slice(&(header.len() as u64).to_le_bytes());
    m.extend_from_slice(&n_chunks.to_le_bytes());
    m.extend_from_slice(transcript.finalize().as_bytes());
    m
}

/// Signs `message` with an Ed25519 private key given as its 32-byte seed (RFC 8032).
pub fn sign(seed: &[u8], message: &[u8]) -> Result<[u8; SIG_LEN]> {
    let seed = fixed::<32>(seed, "an Ed25519 private key")?;
    // SigningKey wipes its secret on drop (ed25519-dalek's "zeroize" feature).
    let key = SigningKey::from_bytes(&seed);
    Ok(key.sign(message).to_bytes())
}

fn unusable(why: &str) -> Error {
    Error::Signature(format!(
        "the verification key is unusable: it is {why}, not an Ed25519 public key that can \
         prove who signed a file"
    ))
}

/// A caller-supplied Ed25519 verification key (`spec/FORMAT.md`, "Signature", step 1): a
/// canonical encoding of a point of the prime-order subgroup, not of small order. The eight
/// small-order points, the identity among them, would accept a forged `(R = identity, S = 0)`
/// (or similar) on every file: they are refused with [`Error::Signature`].
pub fn verifying_key(public: &[u8]) -> Result<VerifyingKey> {
    let bytes: [u8; ED25519_PUBLIC_LEN] = public.try_into().map_err(|_| {
        invalid(format!(
            "an Ed25519 verification key is {ED25519_PUBLIC_LEN} bytes, got {}",
            public.len()
        ))
    })?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| unusable("not the encoding of a point of the curve"))?;
    if key.is_weak() {
        return Err(unusable(
            "a small-order point (such as the identity, 01 00 … 00, under which a forged \
             signature verifies for every file)",
        ));
    }
    let point = key.to_edwards();
    if point.compress().to_bytes() != bytes {
        return Err(unusable("a non-canonical encoding of a point"));
    }
    if !point.is_torsion_free() {
        return Err(unusable(
            "a point with a small-order component (outside the prime-order subgroup)",
        ));
    }
    Ok(key)
}

/// Strict Ed25519 verification (RFC 8032 §5.1.7 without the cofactor; non-canonical `S`,
/// non-canonical or small-order `R` refused: ed25519-dalek's `verify_strict`).
pub fn verify_strict(key: &VerifyingKey, message: &[u8], sig: &[u8; SIG_LEN]) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    key.verify_strict(message, &sig).is_ok()
}

/// [`verifying_key`] then [`verify_strict`], for conformance tests with raw messages.
pub fn ed25519_verify(public: &[u8], message: &[u8], sig: &[u8]) -> Result<bool> {
    let key = verifying_key(public)?;
    Ok(<&[u8; SIG_LEN]>::try_from(sig).is_ok_and(|s| verify_strict(&key, message, s)))
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
            *open_stanzas(&s, &Credential::key(&[2u8; 32]).unwrap(), 18).unwrap(),
            *fk
        );
        let c = Credential::key(&[3u8; 32]).unwrap();
        assert!(matches!(open_stanzas(&s, &c, 18), Err(Error::WrongKey(_))));
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
        assert_eq!(*open_stanzas(&s, &right, 18).unwrap(), *fk);
        let q = Credential::passphrase("wrong horse").unwrap();
        assert!(matches!(open_stanzas(&s, &q, 18), Err(Error::WrongKey(_))));
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
        assert_eq!(*open_stanzas(&s, &cred, 18).unwrap(), *fk);
        let mallory = agreement::PrivateKey::generate(&X25519).unwrap();
        let wrong = Credential::x25519(&seed(&mallory)).unwrap();
        assert!(matches!(
            open_stanzas(&s, &wrong, 18),
            Err(Error::WrongKey(_))
        ));
        // A low-order share never opens.
        let low = vec![Stanza::X25519 {
            share: [0u8; 32],
            body: [0u8; BODY_LEN],
            fingerprint: None,
        }];
        assert!(matches!(
            open_stanzas(&low, &cred, 18),
            Err(Error::WrongKey(_))
        ));
    }

    /// The 32 bytes of a wrap key, as `SecretKey`.
    fn wk(b: u8) -> SecretKey {
        Zeroizing::new([b; 32])
    }

    #[test]
    fn bodies_commit_to_their_wrap_key() {
        let fk = Zeroizing::new([9u8; 32]);
        let (a, b) = (wk(1), wk(2));
        let body_a = wrap_body(&a, &fk);
        assert_eq!(body_a.len(), 80);
        assert_eq!(*unwrap_body(&a, &body_a).unwrap(), *fk);
        assert!(unwrap_body(&b, &body_a).is_none());
        // A body built to open under B's seal key, but carrying A's commitment: AES-GCM alone
        // would open it under B; the commitment check refuses it before AES-GCM runs.
        let body_b = wrap_body(&b, &fk);
        let mut crafted = body_b;
        crafted[..32].copy_from_slice(&body_a[..32]);
        assert!(
            unwrap_body(&b, &crafted).is_none(),
            "refused at the commitment"
        );
        assert!(
            unwrap_body(&a, &crafted).is_none(),
            "A's seal key does not open B's seal"
        );
        let mut sealed_ok = [0u8; 32];
        assert!(
            seal_key(&b).open_into(
                ZERO_NONCE,
                b"",
                &crafted[32..64],
                &crafted[64..],
                &mut sealed_ok
            ),
            "the sealed part alone does open under B"
        );
        // A flipped commitment byte: no longer opens under its own key.
        let mut flipped = body_a;
        flipped[5] ^= 1;
        assert!(unwrap_body(&a, &flipped).is_none());
        // The commitment and the seal key are two different derivations of the wrap key.
        assert_ne!(
            commitment(&a)[..],
            crypto::hkdf(&a[..], &[], &[LABEL_SEAL])[..]
        );
    }

    #[test]
    fn scrypt_policy_refuses_before_running_scrypt() {
        let stanza = |log_n| {
            vec![Stanza::Scrypt {
                salt: [0u8; 16],
                log_n,
                body: [0u8; BODY_LEN],
            }]
        };
        let p = Credential::passphrase("pw").unwrap();
        // Had scrypt run on this stanza (a GiB at log_n 20), its wrong body would have ended
        // the search with WrongKey: a policy error (Format) shows the refusal came first.
        let err = open_stanzas(&stanza(20), &p, 18).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format(_)), "{msg}");
        assert!(
            msg.contains("max_scrypt_log_n") && msg.contains("--max-scrypt-log-n"),
            "{msg}"
        );
        assert!(!msg.contains("not a valid enctensor file"), "{msg}");
        // Any credential: the policy is about the file.
        let k = Credential::key(&[1u8; 32]).unwrap();
        assert!(matches!(
            open_stanzas(&stanza(19), &k, 18),
            Err(Error::Format(_))
        ));
        // Allowed by the caller: scrypt runs (and the zero body does not open).
        assert!(matches!(
            open_stanzas(&stanza(11), &p, 11),
            Err(Error::WrongKey(_))
        ));
        for bad in [0u8, 9, 21, 64] {
            assert!(matches!(
                open_stanzas(&stanza(10), &p, bad),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn signatures_sign_and_verify_strictly() {
        let seed = [7u8; 32];
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let m = signed_message(b"{}", &[1u8; 32], &[2u8; 32], &[3u8; 64]);
        assert_eq!(m.len(), 27 + 1 + 8 + 8 + 32);
        assert_eq!(&m[..28], b"enctensor.v1 ed25519-blake3\0");
        assert_eq!(m[28..36], 2u64.to_le_bytes());
        assert_eq!(m[36..44], 2u64.to_le_bytes());
        let sig = sign(&seed, &m).unwrap();
        assert!(ed25519_verify(&public, &m, &sig).unwrap());
        // Every part of the transcript is bound.
        for other in [
            signed_message(b"{ }", &[1u8; 32], &[2u8; 32], &[3u8; 64]),
            signed_message(b"{}", &[0u8; 32], &[2u8; 32], &[3u8; 64]),
            signed_message(b"{}", &[1u8; 32], &[2u8; 48], &[3u8; 64]),
            signed_message(b"{}", &[1u8; 32], &[2u8; 32], &[3u8; 96]),
        ] {
            assert!(!ed25519_verify(&public, &other, &sig).unwrap());
        }
        let other_key = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(!ed25519_verify(&other_key, &m, &sig).unwrap());
        assert!(matches!(
            ed25519_verify(&public[..31], &m, &sig),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// The eight small-order points (the identity first) are refused as verification keys;
    /// under the identity, `(R = identity, S = 0)` satisfies the plain equation for any message.
    #[test]
    fn small_order_verification_keys_are_refused() {
        let small_order = [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        ];
        let identity = hex::decode(small_order[0]).unwrap();
        let mut forged = [0u8; 64];
        forged[0] = 1; // R = identity, S = 0
        let m = signed_message(b"{}", &[0u8; 32], &[], &[]);
        for h in small_order {
            let key = hex::decode(h).unwrap();
            let err = ed25519_verify(&key, &m, &forged).unwrap_err();
            assert!(matches!(err, Error::Signature(_)), "{h}: {err}");
            assert!(err.to_string().contains("unusable"), "{err}");
        }
        let err = verifying_key(&identity).unwrap_err().to_string();
        assert!(err.contains("small-order"), "{err}");
        // The identity with the sign bit set (a non-canonical second encoding) too.
        let mut neg = identity.clone();
        neg[31] |= 0x80;
        assert!(matches!(verifying_key(&neg), Err(Error::Signature(_))));
        // A genuine key plus a point of order 8: outside the prime-order subgroup.
        let genuine = SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_edwards();
        let torsion =
            VerifyingKey::from_bytes(&hex::decode(small_order[4]).unwrap().try_into().unwrap())
                .unwrap()
                .to_edwards();
        let mixed = (genuine + torsion).compress().to_bytes();
        assert!(matches!(verifying_key(&mixed), Err(Error::Signature(_))));
    }

    #[test]
    fn fingerprints_are_derived_per_kind_and_written_only_when_asked() {
        let fk = Zeroizing::new([9u8; 32]);
        let key = Recipient::key(&[1u8; 32]).unwrap();
        let same_bytes = Recipient::x25519(&[1u8; 32]).unwrap();
        let fp = key.fingerprint().unwrap();
        assert_eq!(fp.len(), 16);
        // Its own label per kind: the same 32 bytes as a raw key and as a public key differ.
        assert_ne!(Some(fp), same_bytes.fingerprint());
        assert_eq!(
            fp[..],
            crypto::hkdf(&[1u8; 32], &[], &[b"enctensor.v1 fingerprint key"])[..16]
        );
        assert_eq!(Recipient::passphrase("pw").unwrap().fingerprint(), None);
        assert!(matches!(
            Recipient::passphrase("pw").unwrap().with_fingerprint(),
            Err(Error::InvalidArgument(_))
        ));
        // Not written unless asked for; written, it is the recipient's.
        assert_eq!(make_stanza(&fk, &key, 0).unwrap().fingerprint(), None);
        let marked = make_stanza(&fk, &key.with_fingerprint().unwrap(), 0).unwrap();
        assert_eq!(marked.fingerprint(), Some(&fp));
        // The key finds its stanza by the commitment, fingerprint or not; another key does not.
        let cred = Credential::key(&[1u8; 32]).unwrap();
        let other = Credential::key(&[2u8; 32]).unwrap();
        let plain = make_stanza(&fk, &Recipient::key(&[1u8; 32]).unwrap(), 0).unwrap();
        assert_eq!(stanzas_of(&[plain, marked], &cred).unwrap(), [0, 1]);
        assert!(stanzas_of(
            &[make_stanza(&fk, &Recipient::key(&[1u8; 32]).unwrap(), 0).unwrap()],
            &other
        )
        .unwrap()
        .is_empty());
        assert!(matches!(
            stanzas_of(&[], &Credential::passphrase("pw").unwrap()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
