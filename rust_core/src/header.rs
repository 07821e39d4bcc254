//! The preamble, the stanza area, the JSON header and the layout they imply
//! (`spec/FORMAT.md`, "Preamble", "Stanza area", "Header", "Layout", "Stanzas", "Signature").
//! Everything here runs before any key is known, on bytes an attacker may have written: every
//! size is capped and every sum and product is checked.

use std::fmt::{self, Display};

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use std::borrow::Cow;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::json::{frame, parse_header_json, Json, MAX_INT};

pub const MAGIC: [u8; 8] = *b"\x89ETS\r\n\x1a\n";
pub const VERSION: u32 = 1;
pub const PREAMBLE_LEN: u64 = 32;
pub const MAC_LEN: u64 = 32;
pub const TAG_LEN: u64 = 16;
pub const CIPHER: &str = "AES-256-GCM";
pub const DIGEST_LEN: u64 = 32;
/// The page: the header starts on a page boundary (`32 + stanza_area_len` is a multiple of
/// it) and so does the data section.
pub const PAGE: u64 = 4096;
/// Smallest and largest stanza area: `4096 × k - 32`, at most 1,048,544 bytes.
pub const MIN_STANZA_AREA: u64 = PAGE - PREAMBLE_LEN;
pub const MAX_STANZA_AREA: u64 = (1 << 20) - PREAMBLE_LEN;
/// Largest header accepted; checked before the header is read or allocated.
pub const MAX_HEADER_LEN: u64 = 16 << 20;
/// Alignment of every tensor within the data section.
pub const DATA_ALIGN: u64 = 64;
/// The only `chunk_digest` of version 1.
pub const CHUNK_DIGEST: &str = "BLAKE3";
/// The only signature type of version 1.
pub const SIGNATURE_TYPE: &str = "ed25519-blake3";
pub const MIN_CHUNK: u64 = 4096;
pub const MAX_CHUNK: u64 = 64 << 20;
pub const MAX_STANZAS: usize = 256;
pub const MAX_STANZA_MEMBERS: usize = 16;
pub const MAX_STANZA_STRING: usize = 16_384;
/// Total bytes of strings (member names and string values, `type` included) over all stanzas
/// of unknown types.
pub const MAX_UNKNOWN_STANZA_BYTES: usize = 16_384;
pub const MAX_TENSORS: usize = 1 << 18;
pub const MAX_METADATA: usize = 65_536;
pub const MAX_NAME_LEN: usize = 4096;
pub const MAX_DIMS: usize = 64;
pub const SALT_LEN: usize = 16;
/// A `key`, `scrypt` or `x25519` body: commitment (32) || wrapped file key (32) || tag (16).
pub const BODY_LEN: usize = 80;
pub const X25519_LEN: usize = 32;
pub const SIG_LEN: usize = 64;
/// RSA moduli of 2048 to 4096 bits.
pub const MIN_RSA_BODY: usize = 256;
pub const MAX_RSA_BODY: usize = 512;
pub const MIN_LOG_N: u64 = 10;
pub const MAX_LOG_N: u64 = 20;
/// The optional `fingerprint` member of a `key`, `x25519` or `rsa-oaep` stanza: 16 bytes
/// (`spec/FORMAT.md`, "Recipient fingerprints").
pub const FINGERPRINT_LEN: usize = 16;
pub const FINGERPRINT_MEMBER: &str = "fingerprint";

/// A recipient fingerprint: an unauthenticated label saying whose stanza it is.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// A member value of a stanza of an unknown type (the format allows only these two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    Str(String),
    Int(u64),
}

/// A way to open the file: it wraps the file key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stanza {
    Key {
        salt: [u8; SALT_LEN],
        body: [u8; BODY_LEN],
        fingerprint: Option<Fingerprint>,
    },
    /// A passphrase stanza never has a fingerprint: one derived from the passphrase would test
    /// guesses without scrypt.
    Scrypt {
        salt: [u8; SALT_LEN],
        log_n: u8,
        body: [u8; BODY_LEN],
    },
    X25519 {
        share: [u8; X25519_LEN],
        body: [u8; BODY_LEN],
        fingerprint: Option<Fingerprint>,
    },
    RsaOaep {
        body: Vec<u8>,
        fingerprint: Option<Fingerprint>,
    },
    /// A stanza type this reader does not know: never opened, but kept whole (every member,
    /// `type` included, in order) so that `inspect` can list it and a re-key keeps it.
    Unknown {
        kind: String,
        members: Vec<(String, Member)>,
    },
}

impl Stanza {
    pub fn kind(&self) -> &str {
        match self {
            Stanza::Key { .. } => "key",
            Stanza::Scrypt { .. } => "scrypt",
            Stanza::X25519 { .. } => "x25519",
            Stanza::RsaOaep { .. } => "rsa-oaep",
            Stanza::Unknown { kind, .. } => kind,
        }
    }

    /// The recipient fingerprint the stanza carries, if any.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        match self {
            Stanza::Key { fingerprint, .. }
            | Stanza::X25519 { fingerprint, .. }
            | Stanza::RsaOaep { fingerprint, .. } => fingerprint.as_ref(),
            Stanza::Scrypt { .. } | Stanza::Unknown { .. } => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub encrypted: bool,
    /// Offsets relative to `data_offset`.
    pub begin: u64,
    pub end: u64,
    /// Index of this tensor's first tag in the tag table.
    pub first_tag: u64,
    pub n_chunks: u64,
}

impl TensorInfo {
    pub fn nbytes(&self) -> u64 {
        self.end - self.begin
    }
}

/// A parsed and structurally validated file header (not yet authenticated).
#[derive(Clone, Debug)]
pub struct Header {
    pub stanza_area_len: u64,
    pub header_len: u64,
    pub data_offset: u64,
    pub chunk_size: u64,
    pub stanzas: Vec<Stanza>,
    /// The `ed25519-blake3` publisher signature (`spec/FORMAT.md`, "Signature"), if any.
    pub signature: Option<[u8; SIG_LEN]>,
    /// The header has `"chunk_digest": "BLAKE3"`: a digest table follows the tag table.
    pub chunk_digest: bool,
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<TensorInfo>,
    pub n_tags: u64,
}

impl Header {
    /// Offset of the header JSON ("H" in the spec).
    pub fn header_offset(&self) -> u64 {
        PREAMBLE_LEN + self.stanza_area_len
    }
    pub fn mac_offset(&self) -> u64 {
        self.header_offset() + self.header_len
    }
    pub fn tags_offset(&self) -> u64 {
        self.mac_offset() + MAC_LEN
    }
    pub fn tags_end(&self) -> u64 {
        self.tags_offset() + self.n_tags * TAG_LEN
    }
    /// Where the digest table starts (it is empty without `chunk_digest`).
    pub fn digests_offset(&self) -> u64 {
        self.tags_end()
    }
    /// End of the tag table and of the digest table, if any: the MAC covers the header and
    /// everything from `tags_offset()` to here.
    pub fn tables_end(&self) -> u64 {
        self.tags_end()
            + if self.chunk_digest {
                self.n_tags * DIGEST_LEN
            } else {
                0
            }
    }
    /// Total file length implied by the header.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.tensors.last().map_or(0, |t| t.end)
    }
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

/// The fixed-size fields at the start of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub stanza_area_len: u64,
    pub header_len: u64,
    pub data_offset: u64,
}

impl Preamble {
    pub fn to_bytes(self) -> [u8; PREAMBLE_LEN as usize] {
        let mut p = [0u8; PREAMBLE_LEN as usize];
        p[..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&VERSION.to_le_bytes());
        p[12..16].copy_from_slice(&(self.stanza_area_len as u32).to_le_bytes());
        p[16..20].copy_from_slice(&(self.header_len as u32).to_le_bytes());
        p[24..32].copy_from_slice(&self.data_offset.to_le_bytes());
        p
    }
}

/// Reads the 32-byte preamble and checks every length against its cap and the file length.
pub fn parse_preamble(bytes: &[u8], file_len: u64) -> Result<Preamble> {
    if file_len < PREAMBLE_LEN || bytes.len() < PREAMBLE_LEN as usize {
        return Err(Error::format(format!(
            "the file is {file_len} bytes long, shorter than the {PREAMBLE_LEN}-byte preamble"
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::format(
            "wrong magic bytes: this is not an enctensor file (a .safetensors or .params file \
             must be converted with `enctensor encrypt` first)",
        ));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(Error::format(format!(
            "format version {version} is not supported (this reader knows version {VERSION})"
        )));
    }
    let stanza_area_len = u64::from(u32_at(12));
    let header_len = u64::from(u32_at(16));
    let reserved = u32_at(20);
    let data_offset = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    if !(MIN_STANZA_AREA..=MAX_STANZA_AREA).contains(&stanza_area_len)
        || (PREAMBLE_LEN + stanza_area_len) % PAGE != 0
    {
        return Err(Error::format(format!(
            "stanza area length {stanza_area_len} is not 4096 × k - 32 between \
             {MIN_STANZA_AREA} and {MAX_STANZA_AREA}"
        )));
    }
    if !(2..=MAX_HEADER_LEN).contains(&header_len) {
        return Err(Error::format(format!(
            "header length {header_len} is outside the allowed range 2..={MAX_HEADER_LEN}"
        )));
    }
    if reserved != 0 {
        return Err(Error::format("the reserved preamble field is not zero"));
    }
    let needed = PREAMBLE_LEN + stanza_area_len + header_len + MAC_LEN;
    if needed > file_len {
        return Err(Error::format(format!(
            "the stanza area and header ({stanza_area_len} + {header_len} bytes) run past the \
             end of the {file_len}-byte file (truncated file?)"
        )));
    }
    if data_offset % PAGE != 0 {
        return Err(Error::format(format!(
            "data offset {data_offset} is not a multiple of {PAGE}"
        )));
    }
    Ok(Preamble {
        stanza_area_len,
        header_len,
        data_offset,
    })
}

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::format(msg))
}

fn as_object(v: &Json, what: impl Display) -> Result<&[(String, Json)]> {
    match v {
        Json::Object(m) => Ok(m),
        other => fail(format!("{what} must be an object, not {}", other.kind())),
    }
}

/// Checks that `members` are exactly `names` (any order) and returns them in `names` order.
fn exact_members<'a, const N: usize>(
    members: &'a [(String, Json)],
    names: [&str; N],
    what: impl Display,
) -> Result<[&'a Json; N]> {
    members_of(members, names, &[], what)
}

/// Checks that `members` are `names` (all required, any order) and some of `optional`, and
/// returns the required ones in `names` order.
fn members_of<'a, const N: usize>(
    members: &'a [(String, Json)],
    names: [&str; N],
    optional: &[&str],
    what: impl Display,
) -> Result<[&'a Json; N]> {
    for (k, _) in members {
        if !names.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return fail(format!("{what} has an unknown member {k:?}"));
        }
    }
    let mut out = Vec::with_capacity(N);
    for n in names {
        match members.iter().find(|(k, _)| k == n) {
            Some((_, v)) => out.push(v),
            None => return fail(format!("{what} is missing the member {n:?}")),
        }
    }
    Ok(out.try_into().expect("N members"))
}

fn as_str(v: &Json, what: impl Display) -> Result<&str> {
    match v {
        Json::Str(s) => Ok(s),
        other => fail(format!("{what} must be a string, not {}", other.kind())),
    }
}

fn as_int(v: &Json, what: impl Display) -> Result<u64> {
    match v {
        Json::Int(n) => Ok(*n),
        other => fail(format!("{what} must be an integer, not {}", other.kind())),
    }
}

fn as_array(v: &Json, what: impl Display) -> Result<&[Json]> {
    match v {
        Json::Array(a) => Ok(a),
        other => fail(format!("{what} must be an array, not {}", other.kind())),
    }
}

/// Decodes strict lowercase hex of exactly `N` bytes.
fn hex_exact<const N: usize>(v: &Json, what: &str) -> Result<[u8; N]> {
    let s = as_str(v, what)?;
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if s.len() != 2 * N {
        return fail(format!(
            "{what} must be {} lowercase hex digits, got {}",
            2 * N,
            s.len()
        ));
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return fail(format!("{what} must be lowercase hex")),
        }
    }
    Ok(out)
}

/// Decodes strict lowercase hex of any even length.
fn hex_any(v: &Json, what: &str) -> Result<Vec<u8>> {
    let s = as_str(v, what)?;
    let ok = s.len() % 2 == 0
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !ok {
        return fail(format!("{what} must be lowercase hex"));
    }
    let digit = |c: u8| {
        if c.is_ascii_digit() {
            c - b'0'
        } else {
            c - b'a' + 10
        }
    };
    Ok(s.as_bytes()
        .chunks(2)
        .map(|p| digit(p[0]) << 4 | digit(p[1]))
        .collect())
}

fn parse_stanza(v: &Json, i: usize) -> Result<Stanza> {
    let what = format!("stanza {i}");
    let members = as_object(v, &what)?;
    if members.len() > MAX_STANZA_MEMBERS {
        return fail(format!("{what} has more than {MAX_STANZA_MEMBERS} members"));
    }
    for (k, val) in members {
        if k.len() > MAX_STANZA_STRING {
            return fail(format!(
                "{what} has a member name longer than {MAX_STANZA_STRING} bytes"
            ));
        }
        match val {
            Json::Str(s) if s.len() > MAX_STANZA_STRING => {
                return fail(format!(
                    "{what} member {k:?} is longer than {MAX_STANZA_STRING} bytes"
                ))
            }
            Json::Str(_) | Json::Int(_) => {}
            other => {
                return fail(format!(
                    "{what} member {k:?} must be a string or integer, not {}",
                    other.kind()
                ))
            }
        }
    }
    let kind = match members.iter().find(|(k, _)| k == "type") {
        Some((_, t)) => as_str(t, format!("{what} type"))?,
        None => return fail(format!("{what} has no \"type\"")),
    };
    const FP: &[&str] = &[FINGERPRINT_MEMBER];
    match kind {
        "key" => {
            let [_, salt, body] = members_of(members, ["type", "salt", "body"], FP, &what)?;
            Ok(Stanza::Key {
                salt: hex_exact(salt, &format!("{what} salt"))?,
                body: hex_exact(body, &format!("{what} body"))?,
                fingerprint: fingerprint_member(members, &what)?,
            })
        }
        "scrypt" => {
            if members.iter().any(|(k, _)| k == FINGERPRINT_MEMBER) {
                return fail(format!(
                    "{what}: a passphrase (scrypt) stanza cannot have a fingerprint (one derived \
                     from the passphrase would test guesses without scrypt)"
                ));
            }
            let [_, salt, log_n, body] =
                exact_members(members, ["type", "salt", "log_n", "body"], &what)?;
            let log_n = as_int(log_n, format!("{what} log_n"))?;
            if !(MIN_LOG_N..=MAX_LOG_N).contains(&log_n) {
                return fail(format!(
                    "{what}: scrypt log_n {log_n} is outside {MIN_LOG_N}..={MAX_LOG_N} (refusing \
                     work factors that would take too long or too much memory)"
                ));
            }
            Ok(Stanza::Scrypt {
                salt: hex_exact(salt, &format!("{what} salt"))?,
                log_n: log_n as u8,
                body: hex_exact(body, &format!("{what} body"))?,
            })
        }
        "x25519" => {
            let [_, share, body] = members_of(members, ["type", "share", "body"], FP, &what)?;
            Ok(Stanza::X25519 {
                share: hex_exact(share, &format!("{what} share"))?,
                body: hex_exact(body, &format!("{what} body"))?,
                fingerprint: fingerprint_member(members, &what)?,
            })
        }
        "rsa-oaep" => {
            let [_, body] = members_of(members, ["type", "body"], FP, &what)?;
            let body = hex_any(body, &format!("{what} body"))?;
            if !(MIN_RSA_BODY..=MAX_RSA_BODY).contains(&body.len()) {
                return fail(format!(
                    "{what}: an RSA-OAEP body must be {MIN_RSA_BODY} to {MAX_RSA_BODY} bytes \
                     (2048- to 4096-bit keys), got {}",
                    body.len()
                ));
            }
            Ok(Stanza::RsaOaep {
                body,
                fingerprint: fingerprint_member(members, &what)?,
            })
        }
        other => Ok(Stanza::Unknown {
            kind: other.to_owned(),
            members: members
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Json::Str(s) => Member::Str(s.clone()),
                        Json::Int(n) => Member::Int(*n),
                        // Checked above: members are strings or integers.
                        other => return fail(format!("{what} member {k:?} is {}", other.kind())),
                    };
                    Ok((k.clone(), value))
                })
                .collect::<Result<_>>()?,
        }),
    }
}

/// The optional `fingerprint` member: exactly 16 bytes of lowercase hex when present.
fn fingerprint_member(members: &[(String, Json)], what: &str) -> Result<Option<Fingerprint>> {
    members
        .iter()
        .find(|(k, _)| k == FINGERPRINT_MEMBER)
        .map(|(_, v)| hex_exact(v, &format!("{what} fingerprint")))
        .transpose()
}

/// The canonical stanza area length for `json_len` bytes of stanza-area JSON (without the
/// padding): the smallest `4096 × k - 32` that holds it.
pub fn canonical_area_len(json_len: u64) -> u64 {
    (PREAMBLE_LEN + json_len).div_ceil(PAGE) * PAGE - PREAMBLE_LEN
}

/// Bytes of strings in a stanza (member names and string values, after unescaping).
fn string_bytes(v: &Json) -> usize {
    match v {
        Json::Object(members) => members
            .iter()
            .map(|(k, v)| k.len() + if let Json::Str(s) = v { s.len() } else { 0 })
            .sum(),
        _ => 0,
    }
}

/// Parses the stanza area: `{"stanzas": [...], "signature": {...}?}` followed by spaces, no
/// longer than it has to be (`spec/FORMAT.md`, "Stanza area").
pub fn parse_stanza_area(bytes: &[u8]) -> Result<(Vec<Stanza>, Option<[u8; SIG_LEN]>)> {
    let root = parse_header_json(bytes).map_err(|e| Error::format(format!("stanza area: {e}")))?;
    let json_len = frame(bytes).map_or(0, <[u8]>::len) as u64;
    let canonical = canonical_area_len(json_len);
    if bytes.len() as u64 != canonical {
        return fail(format!(
            "the stanza area is {} bytes, but its {json_len} bytes of JSON make it exactly \
             {canonical} (4096 × k - 32, no more spaces than needed)",
            bytes.len()
        ));
    }
    let members = as_object(&root, "the stanza area")?;
    for (k, _) in members {
        if k != "stanzas" && k != "signature" {
            return fail(format!("the stanza area has an unknown member {k:?}"));
        }
    }
    let stanza_list = match members.iter().find(|(k, _)| k == "stanzas") {
        Some((_, v)) => as_array(v, "stanzas")?,
        None => return fail("the stanza area has no \"stanzas\""),
    };
    if stanza_list.is_empty() || stanza_list.len() > MAX_STANZAS {
        return fail(format!(
            "the file must have 1 to {MAX_STANZAS} stanzas, it has {}",
            stanza_list.len()
        ));
    }
    let stanzas = stanza_list
        .iter()
        .enumerate()
        .map(|(i, s)| parse_stanza(s, i))
        .collect::<Result<Vec<_>>>()?;
    let unknown_bytes: usize = stanzas
        .iter()
        .zip(stanza_list)
        .filter(|(s, _)| matches!(s, Stanza::Unknown { .. }))
        .map(|(_, v)| string_bytes(v))
        .sum();
    if unknown_bytes > MAX_UNKNOWN_STANZA_BYTES {
        return fail(format!(
            "the stanzas of unknown types hold {unknown_bytes} bytes of strings, more than the \
             {MAX_UNKNOWN_STANZA_BYTES} allowed"
        ));
    }
    if stanzas.len() > 1 && stanzas.iter().any(|s| matches!(s, Stanza::Scrypt { .. })) {
        return fail("a passphrase (scrypt) stanza must be the only stanza of its file");
    }
    let signature = match members.iter().find(|(k, _)| k == "signature") {
        None => None,
        Some((_, v)) => {
            let m = as_object(v, "signature")?;
            let [kind, sig] = exact_members(m, ["type", "sig"], "signature")?;
            let kind = as_str(kind, "signature type")?;
            if kind != SIGNATURE_TYPE {
                return fail(format!(
                    "signature type {kind:?} is not supported (only {SIGNATURE_TYPE:?})"
                ));
            }
            Some(hex_exact(sig, "signature sig")?)
        }
    };
    Ok((stanzas, signature))
}

fn align_up(n: u64, a: u64) -> Option<u64> {
    n.checked_add(a - 1).map(|x| x / a * a)
}

/// A header integer: no sign, fraction or exponent, at most 2^53 - 1 (same rules as
/// [`crate::json::Json`], without building a tree).
#[derive(Clone, Copy)]
struct Int(u64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Int, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Int, E> {
                if v > MAX_INT {
                    return Err(E::custom(format!("integer {v} is larger than 2^53 - 1")));
                }
                Ok(Int(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Int, E> {
                Err(E::custom(format!("negative number {v} is not allowed")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Int, E> {
                Err(E::custom(format!("number {v} is not an integer")))
            }
        }
        d.deserialize_any(V)
    }
}

/// User metadata: string to string, names unique, order kept.
struct Metadata(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Metadata, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Metadata, A::Error> {
                let mut out = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.len() == MAX_METADATA {
                        return Err(de::Error::custom(format!(
                            "metadata has more than {MAX_METADATA} entries"
                        )));
                    }
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!("duplicate member name {k:?}")));
                    }
                    let v = map.next_value::<String>()?;
                    out.push((k, v));
                }
                Ok(Metadata(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A tensor entry as written. Strings borrow from the header bytes unless they have escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    dtype: Cow<'a, str>,
    shape: Vec<Int>,
    offsets: [Int; 2],
    encrypted: bool,
}

/// An optional string member that may be absent but never `null`.
fn some_str<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The header object. serde rejects unknown and duplicate members of these structs. Nesting
/// deeper than these records (4 levels) is a schema error before serde_json's own depth limit
/// could matter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader<'a> {
    #[serde(borrow)]
    cipher: Cow<'a, str>,
    chunk_size: Int,
    #[serde(default, deserialize_with = "some_str")]
    chunk_digest: Option<String>,
    metadata: Metadata,
    #[serde(borrow)]
    tensors: Vec<RawTensor<'a>>,
}

/// Parses the header JSON and checks the layout it implies against the preamble and the file
/// length (`spec/FORMAT.md`, "Layout"). Stanzas and signature are left empty. The header is
/// deserialized straight into typed records, without a JSON tree: a 64 MiB header listing
/// close to a million tensors parses in a fraction of a second.
pub fn parse_header(json: &[u8], pre: &Preamble, file_len: u64) -> Result<Header> {
    let body = frame(json).map_err(|e| Error::format(format!("header: {e}")))?;
    let raw: RawHeader =
        serde_json::from_slice(body).map_err(|e| Error::format(format!("invalid header: {e}")))?;
    if raw.cipher != CIPHER {
        return fail(format!(
            "cipher {:?} is not supported (only {CIPHER:?})",
            raw.cipher
        ));
    }
    let chunk_size = raw.chunk_size.0;
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return fail(format!(
            "chunk_size {chunk_size} must be a power of two between {MIN_CHUNK} and {MAX_CHUNK}"
        ));
    }
    let chunk_digest = match raw.chunk_digest.as_deref() {
        None => false,
        Some(CHUNK_DIGEST) => true,
        Some(other) => {
            return fail(format!(
                "chunk_digest {other:?} is not supported (only {CHUNK_DIGEST:?})"
            ))
        }
    };
    let metadata = raw.metadata.0;
    if raw.tensors.len() > MAX_TENSORS {
        return fail(format!("more than {MAX_TENSORS} tensors"));
    }
    let mut names = std::collections::HashSet::with_capacity(raw.tensors.len());
    let mut out = Vec::with_capacity(raw.tensors.len());
    let mut prev_end = 0u64;
    let mut n_tags = 0u64;
    let overflow = || Error::format("sizes or offsets overflow 64 bits");
    for (i, t) in raw.tensors.iter().enumerate() {
        let name: &str = &t.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return fail(format!(
                "tensor {i}: names must be 1 to {MAX_NAME_LEN} bytes long"
            ));
        }
        if !names.insert(name) {
            return fail(format!("duplicate tensor name {name:?}"));
        }
        let dtype = Dtype::parse(&t.dtype).ok_or_else(|| {
            Error::format(format!("tensor {name:?}: unknown dtype {:?}", t.dtype))
        })?;
        if t.shape.len() > MAX_DIMS {
            return fail(format!("tensor {name:?}: more than {MAX_DIMS} dimensions"));
        }
        let shape: Vec<u64> = t.shape.iter().map(|d| d.0).collect();
        // The product of the non-zero dimensions must fit even when another dimension is
        // zero, so that the check does not depend on the order of the dimensions.
        let nbytes = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .map(|n| if shape.contains(&0) { 0 } else { n })
            .ok_or_else(|| {
                Error::format(format!(
                    "tensor {name:?}: the byte size of shape {shape:?} overflows 64 bits"
                ))
            })?;
        let (begin, end) = (t.offsets[0].0, t.offsets[1].0);
        let want_begin = if i == 0 {
            0
        } else {
            align_up(prev_end, DATA_ALIGN).ok_or_else(overflow)?
        };
        let want_end = want_begin.checked_add(nbytes).ok_or_else(overflow)?;
        if begin != want_begin || end != want_end {
            return fail(format!(
                "tensor {name:?}: offsets [{begin}, {end}] are not the canonical \
                 [{want_begin}, {want_end}] (tensors are packed in order, each 64-byte aligned)"
            ));
        }
        let n_chunks = nbytes.div_ceil(chunk_size).max(1);
        out.push(TensorInfo {
            name: name.to_owned(),
            dtype,
            shape,
            encrypted: t.encrypted,
            begin,
            end,
            first_tag: n_tags,
            n_chunks,
        });
        n_tags = n_tags.checked_add(n_chunks).ok_or_else(overflow)?;
        prev_end = end;
    }

    let Preamble {
        stanza_area_len,
        header_len,
        data_offset,
    } = *pre;
    let header = Header {
        stanza_area_len,
        header_len,
        data_offset,
        chunk_size,
        stanzas: Vec::new(),
        signature: None,
        chunk_digest,
        metadata,
        tensors: out,
        n_tags,
    };
    let per_chunk = TAG_LEN + if chunk_digest { DIGEST_LEN } else { 0 };
    let tables_end = n_tags
        .checked_mul(per_chunk)
        .and_then(|t| t.checked_add(header.tags_offset()))
        .ok_or_else(overflow)?;
    let want_offset = align_up(tables_end, PAGE).ok_or_else(overflow)?;
    if data_offset != want_offset {
        return fail(format!(
            "data offset {data_offset} is not the canonical {want_offset} (the end of the tables, \
             {tables_end}, rounded up to a multiple of {PAGE})"
        ));
    }
    let expected_len = data_offset.checked_add(prev_end).ok_or_else(overflow)?;
    if file_len < expected_len {
        return fail(format!("the file is {file_len} bytes, but its header describes {expected_len} (truncated file?)"));
    }
    if file_len > expected_len {
        return fail(format!(
            "the file is {file_len} bytes, but its header describes {expected_len}: {} bytes of trailing data",
            file_len - expected_len
        ));
    }
    Ok(header)
}

/// Checks that every byte the layout leaves as padding is zero: after the tables and
/// between tensors. `file` is the whole file.
pub fn check_padding(header: &Header, file: &[u8]) -> Result<()> {
    check_table_padding(header, file)?;
    let base = header.data_offset as usize;
    for (i, pair) in header.tensors.windows(2).enumerate() {
        let gap = &file[base + pair[0].end as usize..base + pair[1].begin as usize];
        check_gap(header, i, gap)?;
    }
    Ok(())
}

/// Checks the padding between the tables and the data; `front` holds at least the first
/// `data_offset` bytes of the file.
fn check_table_padding(header: &Header, front: &[u8]) -> Result<()> {
    if front[header.tables_end() as usize..header.data_offset as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return fail("the padding between the tables and the data is not all zero");
    }
    Ok(())
}

/// The file range of the padding after tensor `i` (up to the next tensor; empty after the
/// last one).
pub fn gap_after(header: &Header, i: usize) -> (u64, u64) {
    let base = header.data_offset;
    let end = header.tensors[i].end;
    let next = header.tensors.get(i + 1).map_or(end, |t| t.begin);
    (base + end, base + next)
}

/// Checks that `gap`, the padding after tensor `i`, is all zero.
pub fn check_gap(header: &Header, i: usize, gap: &[u8]) -> Result<()> {
    match header.tensors.get(i + 1) {
        Some(next) if gap.iter().any(|&b| b != 0) => fail(format!(
            "the padding before tensor {:?} is not all zero",
            next.name
        )),
        _ => Ok(()),
    }
}

/// Parses and validates everything that can be checked without a key.
pub fn parse_file(file: &[u8]) -> Result<Header> {
    let header = parse_front(file, file.len() as u64)?;
    check_padding(&header, file)?;
    Ok(header)
}

/// Parses and validates what lies before the tensor data of a file of `file_len` bytes from
/// `front`, its first `data_offset` bytes (or more): a file read by ranges (a remote file).
/// The padding between tensors is not in `front`; a ranged reader checks each gap it fetches
/// ([`gap_after`], [`check_gap`]).
pub fn parse_prefix(front: &[u8], file_len: u64) -> Result<Header> {
    let pre = parse_preamble(front, file_len)?;
    if (front.len() as u64) < pre.data_offset.min(file_len) {
        return Err(Error::InvalidArgument(format!(
            "the first {} bytes of the file are needed to open it, {} were given",
            pre.data_offset.min(file_len),
            front.len()
        )));
    }
    let header = parse_front(front, file_len)?;
    Ok(header)
}

/// How many bytes from the start of a file of `file_len` bytes [`parse_prefix`] needs:
/// `data_offset`, read from the preamble at the start of `head` (checked against the file
/// length, so a hostile preamble cannot ask for more than the file).
pub fn prefix_len(head: &[u8], file_len: u64) -> Result<u64> {
    let pre = parse_preamble(head, file_len)?;
    if pre.data_offset > file_len {
        return fail(format!(
            "data offset {} is past the end of the {file_len}-byte file (truncated file?)",
            pre.data_offset
        ));
    }
    Ok(pre.data_offset)
}

/// The preamble, stanza area and header of a file of `file_len` bytes, from `front` (which
/// holds at least its first `data_offset` bytes), with the padding before the data checked.
fn parse_front(front: &[u8], file_len: u64) -> Result<Header> {
    let pre = parse_preamble(front, file_len)?;
    let area_end = (PREAMBLE_LEN + pre.stanza_area_len) as usize;
    if front.len() < area_end + pre.header_len as usize {
        return fail(format!(
            "the stanza area and header run past the first {} bytes of the file",
            front.len()
        ));
    }
    let (stanzas, signature) = parse_stanza_area(&front[PREAMBLE_LEN as usize..area_end])?;
    let json = &front[area_end..area_end + pre.header_len as usize];
    let mut header = parse_header(json, &pre, file_len)?;
    if signature.is_some() && !header.chunk_digest {
        return fail(format!(
            "the file has a signature but its header has no \"chunk_digest\" (an \
             {SIGNATURE_TYPE:?} signature covers the digest table)"
        ));
    }
    header.stanzas = stanzas;
    header.signature = signature;
    if (front.len() as u64) < header.data_offset {
        return fail(format!(
            "the tables run past the first {} bytes of the file",
            front.len()
        ));
    }
    check_table_padding(&header, front)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preamble(area: u64, header: u64, data_offset: u64) -> Vec<u8> {
        Preamble {
            stanza_area_len: area,
            header_len: header,
            data_offset,
        }
        .to_bytes()
        .to_vec()
    }

    #[test]
    fn preamble_rejects_bad_magic_version_lengths_and_reserved() {
        let p = preamble(4064, 100, 8192);
        assert!(parse_preamble(&p, 10_000).is_ok());
        assert!(matches!(parse_preamble(&p, 100), Err(Error::Format(_))));
        let mut bad = p.clone();
        bad[0] = b'{';
        assert!(matches!(
            parse_preamble(&bad, 10_000),
            Err(Error::Format(_))
        ));
        let mut bad = p.clone();
        bad[8] = 2;
        assert!(matches!(
            parse_preamble(&bad, 10_000),
            Err(Error::Format(_))
        ));
        let bad = preamble(4064, 200 << 20, 8192);
        assert!(matches!(
            parse_preamble(&bad, u64::MAX),
            Err(Error::Format(_))
        ));
        let bad = preamble(2 << 20, 100, 8192);
        assert!(matches!(
            parse_preamble(&bad, u64::MAX),
            Err(Error::Format(_))
        ));
        let mut bad = p.clone();
        bad[20] = 1;
        assert!(matches!(
            parse_preamble(&bad, 10_000),
            Err(Error::Format(_))
        ));
        for bad_offset in [8193, 8256, 4160] {
            let bad = preamble(4064, 100, bad_offset);
            assert!(matches!(
                parse_preamble(&bad, 10_000),
                Err(Error::Format(_))
            ));
        }
        // The stanza area is 4096 × k - 32, from 4064 to 1,048,544 bytes.
        for area in [16, 4063, 4065, 8191, 8192, 1_048_576, 1_048_544 + 4096] {
            let bad = preamble(area, 100, 8192);
            assert!(
                matches!(parse_preamble(&bad, u64::MAX), Err(Error::Format(_))),
                "{area}"
            );
        }
        for area in [4064, 8160, 1_048_544] {
            assert!(parse_preamble(&preamble(area, 100, 8192), u64::MAX).is_ok());
        }
    }

    fn header_json(tensors: &str) -> String {
        format!(
            r#"{{"cipher":"AES-256-GCM","chunk_size":4096,"metadata":{{}},"tensors":[{tensors}]}}"#
        )
    }

    fn pre(json: &str, n_tags: u64) -> Preamble {
        let hl = json.len() as u64;
        let digests = if json.contains("chunk_digest") { 32 } else { 0 };
        let tables_end = PREAMBLE_LEN + 4064 + hl + 32 + n_tags * (16 + digests);
        Preamble {
            stanza_area_len: 4064,
            header_len: hl,
            data_offset: tables_end.div_ceil(4096) * 4096,
        }
    }

    #[test]
    fn canonical_offsets_and_exact_length() {
        let j = header_json(
            r#"{"name":"a","dtype":"F32","shape":[3],"offsets":[0,12],"encrypted":true},
               {"name":"b","dtype":"U8","shape":[5000],"offsets":[64,5064],"encrypted":false}"#,
        );
        let p = pre(&j, 3);
        let h = parse_header(j.as_bytes(), &p, p.data_offset + 5064).unwrap();
        assert_eq!(h.n_tags, 3);
        assert_eq!(h.tensors[1].first_tag, 1);
        assert!(parse_header(j.as_bytes(), &p, p.data_offset + 5063).is_err());
        assert!(parse_header(j.as_bytes(), &p, p.data_offset + 5065).is_err());
        let bad = j.replace("[64,5064]", "[12,5012]");
        assert!(parse_header(bad.as_bytes(), &pre(&bad, 3), p.data_offset + 5012).is_err());
        // data_offset is exactly align(tables_end, 4096): one page more is a format failure.
        let mut far = p;
        far.data_offset += 4096;
        assert!(matches!(
            parse_header(j.as_bytes(), &far, far.data_offset + 5064),
            Err(Error::Format(_))
        ));
    }

    #[test]
    fn chunk_digest_adds_a_digest_table() {
        let tensor =
            r#"{"name":"a","dtype":"U8","shape":[5000],"offsets":[0,5000],"encrypted":true}"#;
        let plain = header_json(tensor);
        let digest = plain.replace(
            r#""chunk_size":4096,"#,
            r#""chunk_size":4096,"chunk_digest":"BLAKE3","#,
        );
        let p = pre(&digest, 2);
        let h = parse_header(digest.as_bytes(), &p, p.data_offset + 5000).unwrap();
        assert!(h.chunk_digest);
        assert_eq!(h.tables_end(), h.tags_end() + 64);
        let h = parse_header(
            plain.as_bytes(),
            &pre(&plain, 2),
            pre(&plain, 2).data_offset + 5000,
        )
        .unwrap();
        assert!(!h.chunk_digest);
        assert_eq!(h.tables_end(), h.tags_end());
        for bad in [r#""SHA-256""#, "null", "1", r#""blake3""#] {
            let j = digest.replace(r#""BLAKE3""#, bad);
            let p = pre(&j, 2);
            assert!(
                matches!(
                    parse_header(j.as_bytes(), &p, p.data_offset + 5000),
                    Err(Error::Format(_))
                ),
                "{bad}"
            );
        }
        let dup = digest.replace(
            r#""chunk_size":4096,"#,
            r#""chunk_size":4096,"chunk_digest":"BLAKE3","#,
        );
        let p = pre(&dup, 2);
        assert!(parse_header(dup.as_bytes(), &p, p.data_offset + 5000).is_err());
    }

    #[test]
    fn overflowing_shapes_are_format_errors() {
        for shape in [
            "[9007199254740991,9007199254740991]",
            "[0,9007199254740991,9007199254740991]",
        ] {
            let j = header_json(&format!(
                r#"{{"name":"a","dtype":"F64","shape":{shape},"offsets":[0,0],"encrypted":true}}"#
            ));
            let p = pre(&j, 1);
            assert!(matches!(
                parse_header(j.as_bytes(), &p, p.data_offset),
                Err(Error::Format(_))
            ));
        }
    }

    /// `json` padded with spaces to its canonical stanza area length.
    fn canonical(json: &str) -> String {
        let mut s = json.to_owned();
        let n = canonical_area_len(s.len() as u64) as usize;
        s.push_str(&" ".repeat(n - s.len()));
        s
    }

    #[test]
    fn stanza_area_length_is_canonical() {
        let key = format!(
            r#"{{"type":"key","salt":"{}","body":"{}"}}"#,
            "00".repeat(16),
            "ab".repeat(80)
        );
        let json = format!(r#"{{"stanzas":[{key}]}}"#);
        assert_eq!(canonical(&json).len(), 4064);
        assert!(parse_stanza_area(canonical(&json).as_bytes()).is_ok());
        // One page more of spaces, or too few, is a format failure.
        let grown = format!("{}{}", canonical(&json), " ".repeat(4096));
        assert!(matches!(
            parse_stanza_area(grown.as_bytes()),
            Err(Error::Format(_))
        ));
        assert!(matches!(
            parse_stanza_area(json.as_bytes()),
            Err(Error::Format(_))
        ));
        // 4064 bytes of JSON exactly fill the first page; one more needs the next page.
        assert_eq!(canonical_area_len(4064), 4064);
        assert_eq!(canonical_area_len(4065), 8160);
        assert_eq!(canonical_area_len(1), 4064);
        // Leading space: the first byte must be '{'.
        let shifted = format!(" {}", &canonical(&json)[..4063]);
        assert!(matches!(
            parse_stanza_area(shifted.as_bytes()),
            Err(Error::Format(_))
        ));
    }

    #[test]
    fn unknown_stanzas_have_a_budget_of_16384_bytes_of_strings() {
        let key = format!(
            r#"{{"type":"key","salt":"{}","body":"{}"}}"#,
            "00".repeat(16),
            "ab".repeat(80)
        );
        // type (4) + "future" (6) + "x" (1) + value: exactly at the budget, then one over.
        let unknown = |n: usize| format!(r#"{{"type":"future","x":"{}"}}"#, "v".repeat(n));
        let area = |list: String| canonical(&format!(r#"{{"stanzas":[{list}]}}"#));
        let at = 16_384 - 11;
        assert!(parse_stanza_area(area(format!("{key},{}", unknown(at))).as_bytes()).is_ok());
        assert!(matches!(
            parse_stanza_area(area(format!("{key},{}", unknown(at + 1))).as_bytes()),
            Err(Error::Format(m)) if m.contains("unknown types")
        ));
        // The budget is over all unknown stanzas together, counted after unescaping.
        let half = unknown(at / 2);
        assert!(matches!(
            parse_stanza_area(area(format!("{half},{half},{half}")).as_bytes()),
            Err(Error::Format(_))
        ));
        let escaped = format!(r#"{{"type":"future","x":"{}"}}"#, "\\u0041".repeat(at));
        assert!(parse_stanza_area(area(escaped).as_bytes()).is_ok());
        // Integers do not count; known stanzas do not count.
        let ints = r#"{"type":"future","n":123456789}"#;
        let keys = vec![key.clone(); 100].join(",");
        assert!(parse_stanza_area(area(format!("{keys},{ints}")).as_bytes()).is_ok());
    }

    #[test]
    fn stanza_area_rules() {
        let salt = "00".repeat(16);
        let body = "ab".repeat(80);
        let key = format!(r#"{{"type":"key","salt":"{salt}","body":"{body}"}}"#);
        let scrypt = format!(r#"{{"type":"scrypt","salt":"{salt}","log_n":10,"body":"{body}"}}"#);
        let x = format!(
            r#"{{"type":"x25519","share":"{}","body":"{body}"}}"#,
            "01".repeat(32)
        );
        let rsa = format!(r#"{{"type":"rsa-oaep","body":"{}"}}"#, "02".repeat(256));
        let area = |stanzas: &str| canonical(&format!(r#"{{"stanzas":[{stanzas}]}}"#));
        let check = |s: String| parse_stanza_area(s.as_bytes());
        // The old 48-byte body (no commitment) is a format failure.
        assert!(check(area(&key.replace(&body, &"ab".repeat(48)))).is_err());
        assert!(check(area(&key)).is_ok());
        assert!(check(area(&scrypt)).is_ok());
        assert_eq!(check(area(&format!("{key},{x},{rsa}"))).unwrap().0.len(), 3);
        assert!(check(area(&rsa.replace("\"02", "\"0202"))).is_ok());
        let short_rsa = format!(r#"{{"type":"rsa-oaep","body":"{}"}}"#, "02".repeat(255));
        assert!(check(area(&short_rsa)).is_err());
        assert!(check(area(&format!("{key},{scrypt}"))).is_err());
        assert!(check(area(&scrypt.replace("\"log_n\":10", "\"log_n\":40"))).is_err());
        assert!(check(area(&key.replace("\"ab", "\"AB"))).is_err());
        assert!(check(area(&key.replace('}', ",\"extra\":\"x\"}"))).is_err());
        assert!(check(area(r#"{"type":"future-recipient","x":"y","n":3}"#)).is_ok());
        assert!(check(area(r#"{"type":"future-recipient","x":{"nested":1}}"#)).is_err());
        assert!(check(area("")).is_err());
        assert!(check(canonical(&format!(r#"{{"stanzas":[{key}],"other":1}}"#))).is_err());
        let sig = format!(
            r#"{{"stanzas":[{key}],"signature":{{"type":"ed25519-blake3","sig":"{}"}}}}"#,
            "cd".repeat(64)
        );
        assert!(check(canonical(&sig)).unwrap().1.is_some());
        // The old "ed25519" type (header and tag table only) is a format failure.
        for other in ["ed25519", "rsa", "ED25519-BLAKE3"] {
            let s = canonical(&sig.replace("ed25519-blake3", other));
            assert!(matches!(check(s), Err(Error::Format(_))), "{other}");
        }
        let s = canonical(&sig.replace(r#","sig":"#, r#","extra":"x","sig":"#));
        assert!(matches!(check(s), Err(Error::Format(_))));
        let mut newline = area(&key);
        newline.pop();
        newline.push('\n');
        assert!(check(newline).is_err());
        let many = vec![key.clone(); 257].join(",");
        assert!(matches!(check(area(&many)), Err(Error::Format(_))));
    }

    #[test]
    fn fingerprint_members_are_optional_checked_and_kept() {
        let salt = "00".repeat(16);
        let body = "ab".repeat(80);
        let fp = "0f".repeat(16);
        let area = |stanzas: &str| canonical(&format!(r#"{{"stanzas":[{stanzas}]}}"#));
        let check = |s: String| parse_stanza_area(s.as_bytes());
        let key =
            |extra: &str| format!(r#"{{"type":"key","salt":"{salt}","body":"{body}"{extra}}}"#);
        let x = |extra: &str| {
            format!(
                r#"{{"type":"x25519","share":"{}","body":"{body}"{extra}}}"#,
                "01".repeat(32)
            )
        };
        let rsa = |extra: &str| {
            format!(
                r#"{{"type":"rsa-oaep","body":"{}"{extra}}}"#,
                "02".repeat(256)
            )
        };
        let with_fp = format!(r#","fingerprint":"{fp}""#);
        let parsed = check(area(&format!(
            "{},{},{},{}",
            key(&with_fp),
            x(&with_fp),
            rsa(&with_fp),
            key("")
        )))
        .unwrap()
        .0;
        let want = [0x0fu8; FINGERPRINT_LEN];
        assert_eq!(parsed[0].fingerprint(), Some(&want));
        assert_eq!(parsed[1].fingerprint(), Some(&want));
        assert_eq!(parsed[2].fingerprint(), Some(&want));
        assert_eq!(parsed[3].fingerprint(), None);
        // Wrong length, case, characters, type, or a huge value: format failures, for every type.
        for bad in [
            format!(r#","fingerprint":"{}""#, "0f".repeat(15)),
            format!(r#","fingerprint":"{}""#, "0f".repeat(17)),
            format!(r#","fingerprint":"{}""#, "0F".repeat(16)),
            format!(r#","fingerprint":"{}""#, "zz".repeat(16)),
            r#","fingerprint":"""#.to_owned(),
            r#","fingerprint":7"#.to_owned(),
            format!(r#","fingerprint":"{}""#, "ab".repeat(8192)),
            format!(r#","fingerprint":"{fp}","fingerprint":"{fp}""#),
        ] {
            for stanza in [key(&bad), x(&bad), rsa(&bad)] {
                let e = check(area(&stanza)).unwrap_err();
                assert!(matches!(e, Error::Format(_)), "{e}");
            }
        }
        // Never on a passphrase stanza.
        let scrypt =
            format!(r#"{{"type":"scrypt","salt":"{salt}","log_n":10,"body":"{body}"{with_fp}}}"#);
        let e = check(area(&scrypt)).unwrap_err().to_string();
        assert!(e.contains("cannot have a fingerprint"), "{e}");
        // A stanza of an unknown type keeps every member, whatever it is called.
        let future = r#"{"type":"future","fingerprint":"not hex","n":5}"#;
        let parsed = check(area(&format!("{},{future}", key("")))).unwrap().0;
        assert_eq!(
            parsed[1],
            Stanza::Unknown {
                kind: "future".into(),
                members: vec![
                    ("type".into(), Member::Str("future".into())),
                    ("fingerprint".into(), Member::Str("not hex".into())),
                    ("n".into(), Member::Int(5)),
                ],
            }
        );
        assert_eq!(parsed[1].fingerprint(), None);
    }
}
