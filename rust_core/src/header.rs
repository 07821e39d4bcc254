//! The preamble, the JSON header and the layout they imply (`spec/FORMAT.md`, "Preamble",
//! "Header", "Layout", "Stanzas"). Everything here runs before any key is known, on bytes an
//! attacker may have written: every size is capped and every sum and product is checked.

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::json::{parse_header_json, Json};

pub const MAGIC: [u8; 8] = *b"\x89ETS\r\n\x1a\n";
pub const VERSION: u32 = 1;
pub const PREAMBLE_LEN: u64 = 24;
pub const MAC_LEN: u64 = 32;
pub const TAG_LEN: u64 = 16;
pub const CIPHER: &str = "AES-256-GCM";
/// Largest header accepted; checked before the header is read or allocated.
pub const MAX_HEADER_LEN: u64 = 64 << 20;
/// Zero bytes allowed between the tag table and the data (room to re-key in place).
pub const MAX_PADDING: u64 = 1 << 20;
/// Alignment of `data_offset` and of every tensor within the data section.
pub const DATA_ALIGN: u64 = 64;
pub const MIN_CHUNK: u64 = 4096;
pub const MAX_CHUNK: u64 = 64 << 20;
pub const MAX_STANZAS: usize = 256;
pub const MAX_STANZA_MEMBERS: usize = 16;
pub const MAX_STANZA_STRING: usize = 16_384;
pub const MAX_TENSORS: usize = 1 << 20;
pub const MAX_METADATA: usize = 65_536;
pub const MAX_NAME_LEN: usize = 4096;
pub const MAX_DIMS: usize = 64;
pub const SALT_LEN: usize = 16;
pub const BODY_LEN: usize = 48;
pub const MIN_LOG_N: u64 = 10;
pub const MAX_LOG_N: u64 = 20;

/// A way to open the file: it wraps the file key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stanza {
    Key {
        salt: [u8; SALT_LEN],
        body: [u8; BODY_LEN],
    },
    Scrypt {
        salt: [u8; SALT_LEN],
        log_n: u8,
        body: [u8; BODY_LEN],
    },
    /// A stanza type this reader does not know; kept so `inspect` can list it.
    Unknown { kind: String },
}

impl Stanza {
    pub fn kind(&self) -> &str {
        match self {
            Stanza::Key { .. } => "key",
            Stanza::Scrypt { .. } => "scrypt",
            Stanza::Unknown { kind } => kind,
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

/// A parsed and structurally validated header (not yet authenticated).
#[derive(Clone, Debug)]
pub struct Header {
    pub header_len: u64,
    pub data_offset: u64,
    pub chunk_size: u64,
    pub stanzas: Vec<Stanza>,
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<TensorInfo>,
    pub n_tags: u64,
}

impl Header {
    pub fn tags_offset(&self) -> u64 {
        PREAMBLE_LEN + self.header_len + MAC_LEN
    }
    pub fn tags_end(&self) -> u64 {
        self.tags_offset() + self.n_tags * TAG_LEN
    }
    pub fn mac_offset(&self) -> u64 {
        PREAMBLE_LEN + self.header_len
    }
    /// Total file length implied by the header.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.tensors.last().map_or(0, |t| t.end)
    }
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

/// Reads the 24-byte preamble; returns `(header_len, data_offset)`.
pub fn parse_preamble(bytes: &[u8], file_len: u64) -> Result<(u64, u64)> {
    if file_len < PREAMBLE_LEN || bytes.len() < PREAMBLE_LEN as usize {
        return Err(Error::format(format!(
            "the file is {file_len} bytes long, shorter than the 24-byte preamble"
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::format(
            "wrong magic bytes: this is not an enctensor file (a .safetensors or .params file \
             must be converted with `enctensor encrypt` first)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Error::format(format!(
            "format version {version} is not supported (this reader knows version {VERSION})"
        )));
    }
    let header_len = u64::from(u32::from_le_bytes(
        bytes[12..16].try_into().expect("4 bytes"),
    ));
    let data_offset = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if !(2..=MAX_HEADER_LEN).contains(&header_len) {
        return Err(Error::format(format!(
            "header length {header_len} is outside the allowed range 2..={MAX_HEADER_LEN}"
        )));
    }
    let needed = PREAMBLE_LEN + header_len + MAC_LEN;
    if needed > file_len {
        return Err(Error::format(format!(
            "header length {header_len} runs past the end of the {file_len}-byte file \
             (truncated file?)"
        )));
    }
    if data_offset % DATA_ALIGN != 0 {
        return Err(Error::format(format!(
            "data offset {data_offset} is not a multiple of 64"
        )));
    }
    Ok((header_len, data_offset))
}

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::format(msg))
}

fn as_object<'a>(v: &'a Json, what: &str) -> Result<&'a [(String, Json)]> {
    match v {
        Json::Object(m) => Ok(m),
        other => fail(format!("{what} must be an object, not {}", other.kind())),
    }
}

/// Checks that `members` are exactly `names` (any order) and returns them in `names` order.
fn exact_members<'a, const N: usize>(
    members: &'a [(String, Json)],
    names: [&str; N],
    what: &str,
) -> Result<[&'a Json; N]> {
    for (k, _) in members {
        if !names.contains(&k.as_str()) {
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

fn as_str<'a>(v: &'a Json, what: &str) -> Result<&'a str> {
    match v {
        Json::Str(s) => Ok(s),
        other => fail(format!("{what} must be a string, not {}", other.kind())),
    }
}

fn as_int(v: &Json, what: &str) -> Result<u64> {
    match v {
        Json::Int(n) => Ok(*n),
        other => fail(format!("{what} must be an integer, not {}", other.kind())),
    }
}

fn as_array<'a>(v: &'a Json, what: &str) -> Result<&'a [Json]> {
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
        Some((_, t)) => as_str(t, &format!("{what} type"))?,
        None => return fail(format!("{what} has no \"type\"")),
    };
    match kind {
        "key" => {
            let [_, salt, body] = exact_members(members, ["type", "salt", "body"], &what)?;
            Ok(Stanza::Key {
                salt: hex_exact(salt, &format!("{what} salt"))?,
                body: hex_exact(body, &format!("{what} body"))?,
            })
        }
        "scrypt" => {
            let [_, salt, log_n, body] =
                exact_members(members, ["type", "salt", "log_n", "body"], &what)?;
            let log_n = as_int(log_n, &format!("{what} log_n"))?;
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
        other => Ok(Stanza::Unknown {
            kind: other.to_owned(),
        }),
    }
}

fn align_up(n: u64, a: u64) -> Option<u64> {
    n.checked_add(a - 1).map(|x| x / a * a)
}

/// Parses the header JSON and checks the layout it implies against the preamble and the file
/// length (`spec/FORMAT.md`, "Layout").
pub fn parse_header(
    json: &[u8],
    header_len: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<Header> {
    let root = parse_header_json(json).map_err(Error::Format)?;
    let members = as_object(&root, "the header")?;
    let [cipher, chunk_size, stanzas, metadata, tensors] = exact_members(
        members,
        ["cipher", "chunk_size", "stanzas", "metadata", "tensors"],
        "the header",
    )?;

    let cipher = as_str(cipher, "cipher")?;
    if cipher != CIPHER {
        return fail(format!(
            "cipher {cipher:?} is not supported (only {CIPHER:?})"
        ));
    }
    let chunk_size = as_int(chunk_size, "chunk_size")?;
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
        return fail(format!(
            "chunk_size {chunk_size} must be a power of two between {MIN_CHUNK} and {MAX_CHUNK}"
        ));
    }

    let stanza_list = as_array(stanzas, "stanzas")?;
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
    if stanzas.len() > 1 && stanzas.iter().any(|s| matches!(s, Stanza::Scrypt { .. })) {
        return fail("a passphrase (scrypt) stanza must be the only stanza of its file");
    }

    let meta_members = as_object(metadata, "metadata")?;
    if meta_members.len() > MAX_METADATA {
        return fail(format!("metadata has more than {MAX_METADATA} entries"));
    }
    let metadata = meta_members
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                as_str(v, &format!("metadata value of {k:?}"))?.to_owned(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;

    let tensor_list = as_array(tensors, "tensors")?;
    if tensor_list.len() > MAX_TENSORS {
        return fail(format!("more than {MAX_TENSORS} tensors"));
    }
    let mut names = std::collections::HashSet::with_capacity(tensor_list.len());
    let mut out = Vec::with_capacity(tensor_list.len());
    let mut prev_end = 0u64;
    let mut n_tags = 0u64;
    let overflow = || Error::format("sizes or offsets overflow 64 bits");
    for (i, t) in tensor_list.iter().enumerate() {
        let what = format!("tensor {i}");
        let members = as_object(t, &what)?;
        let [name, dtype, shape, offsets, encrypted] = exact_members(
            members,
            ["name", "dtype", "shape", "offsets", "encrypted"],
            &what,
        )?;
        let name = as_str(name, &format!("{what} name"))?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return fail(format!(
                "{what}: names must be 1 to {MAX_NAME_LEN} bytes long"
            ));
        }
        let what = format!("tensor {name:?}");
        if !names.insert(name) {
            return fail(format!("duplicate tensor name {name:?}"));
        }
        let dtype_name = as_str(dtype, &format!("{what} dtype"))?;
        let dtype = Dtype::parse(dtype_name)
            .ok_or_else(|| Error::format(format!("{what}: unknown dtype {dtype_name:?}")))?;
        let dims = as_array(shape, &format!("{what} shape"))?;
        if dims.len() > MAX_DIMS {
            return fail(format!("{what}: more than {MAX_DIMS} dimensions"));
        }
        let shape = dims
            .iter()
            .map(|d| as_int(d, &format!("{what} shape")))
            .collect::<Result<Vec<_>>>()?;
        // The product of the non-zero dimensions must fit even when another dimension is
        // zero, so that the check does not depend on the order of the dimensions.
        let nbytes = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .map(|n| if shape.contains(&0) { 0 } else { n })
            .ok_or_else(|| {
                Error::format(format!(
                    "{what}: the byte size of shape {shape:?} overflows 64 bits"
                ))
            })?;
        let offs = as_array(offsets, &format!("{what} offsets"))?;
        if offs.len() != 2 {
            return fail(format!("{what}: offsets must be [begin, end]"));
        }
        let (begin, end) = (
            as_int(&offs[0], &format!("{what} offsets"))?,
            as_int(&offs[1], &format!("{what} offsets"))?,
        );
        let want_begin = if i == 0 {
            0
        } else {
            align_up(prev_end, DATA_ALIGN).ok_or_else(overflow)?
        };
        let want_end = want_begin.checked_add(nbytes).ok_or_else(overflow)?;
        if begin != want_begin || end != want_end {
            return fail(format!(
                "{what}: offsets [{begin}, {end}] are not the canonical [{want_begin}, {want_end}] \
                 (tensors are packed in order, each 64-byte aligned)"
            ));
        }
        let encrypted = match encrypted {
            Json::Bool(b) => *b,
            other => {
                return fail(format!(
                    "{what} encrypted must be a boolean, not {}",
                    other.kind()
                ))
            }
        };
        let n_chunks = nbytes.div_ceil(chunk_size).max(1);
        out.push(TensorInfo {
            name: name.to_owned(),
            dtype,
            shape,
            encrypted,
            begin,
            end,
            first_tag: n_tags,
            n_chunks,
        });
        n_tags = n_tags.checked_add(n_chunks).ok_or_else(overflow)?;
        prev_end = end;
    }

    let header = Header {
        header_len,
        data_offset,
        chunk_size,
        stanzas,
        metadata,
        tensors: out,
        n_tags,
    };
    let tags_end = n_tags
        .checked_mul(TAG_LEN)
        .and_then(|t| t.checked_add(PREAMBLE_LEN + header_len + MAC_LEN))
        .ok_or_else(overflow)?;
    if data_offset < tags_end || data_offset - tags_end > MAX_PADDING {
        return fail(format!(
            "data offset {data_offset} must lie between the end of the tag table ({tags_end}) and \
             {MAX_PADDING} bytes after it"
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

/// Checks that every byte the layout leaves as padding is zero: after the tag table and
/// between tensors. `file` is the whole file.
pub fn check_padding(header: &Header, file: &[u8]) -> Result<()> {
    let tags_end = header.tags_end() as usize;
    if file[tags_end..header.data_offset as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return fail("the padding between the tag table and the data is not all zero");
    }
    let base = header.data_offset as usize;
    for pair in header.tensors.windows(2) {
        let gap = &file[base + pair[0].end as usize..base + pair[1].begin as usize];
        if gap.iter().any(|&b| b != 0) {
            return fail(format!(
                "the padding before tensor {:?} is not all zero",
                pair[1].name
            ));
        }
    }
    Ok(())
}

/// Parses and validates everything that can be checked without a key.
pub fn parse_file(file: &[u8]) -> Result<Header> {
    let file_len = file.len() as u64;
    let (header_len, data_offset) = parse_preamble(file, file_len)?;
    let json = &file[PREAMBLE_LEN as usize..(PREAMBLE_LEN + header_len) as usize];
    let header = parse_header(json, header_len, data_offset, file_len)?;
    check_padding(&header, file)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_rejects_bad_magic_version_and_lengths() {
        let mut p = Vec::from(MAGIC);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&100u32.to_le_bytes());
        p.extend_from_slice(&4096u64.to_le_bytes());
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
        let mut bad = p.clone();
        bad[12..16].copy_from_slice(&(200u32 << 20).to_le_bytes());
        assert!(matches!(
            parse_preamble(&bad, u64::MAX),
            Err(Error::Format(_))
        ));
        let mut bad = p;
        bad[16] = 1;
        assert!(matches!(
            parse_preamble(&bad, 10_000),
            Err(Error::Format(_))
        ));
    }

    fn header_json(tensors: &str) -> String {
        format!(
            r#"{{"cipher":"AES-256-GCM","chunk_size":4096,"stanzas":[{{"type":"x"}}],"metadata":{{}},"tensors":[{tensors}]}}"#
        )
    }

    #[test]
    fn canonical_offsets_and_exact_length() {
        let j = header_json(
            r#"{"name":"a","dtype":"F32","shape":[3],"offsets":[0,12],"encrypted":true},
               {"name":"b","dtype":"U8","shape":[5000],"offsets":[64,5064],"encrypted":false}"#,
        );
        let hl = j.len() as u64;
        let tags_end = 24 + hl + 32 + 3 * 16;
        let data_offset = tags_end.div_ceil(64) * 64;
        let h = parse_header(j.as_bytes(), hl, data_offset, data_offset + 5064).unwrap();
        assert_eq!(h.n_tags, 3);
        assert_eq!(h.tensors[1].first_tag, 1);
        assert!(parse_header(j.as_bytes(), hl, data_offset, data_offset + 5063).is_err());
        assert!(parse_header(j.as_bytes(), hl, data_offset, data_offset + 5065).is_err());
        let bad = j.replace("[64,5064]", "[12,5012]");
        assert!(parse_header(
            bad.as_bytes(),
            bad.len() as u64,
            data_offset,
            data_offset + 5012
        )
        .is_err());
    }

    #[test]
    fn overflowing_shapes_are_format_errors() {
        let j = header_json(
            r#"{"name":"a","dtype":"F64","shape":[9007199254740991,9007199254740991],"offsets":[0,0],"encrypted":true}"#,
        );
        assert!(matches!(
            parse_header(j.as_bytes(), j.len() as u64, 4096, 4096),
            Err(Error::Format(_))
        ));
    }

    #[test]
    fn stanza_rules() {
        let base = |stanzas: &str| {
            format!(
                r#"{{"cipher":"AES-256-GCM","chunk_size":4096,"stanzas":[{stanzas}],"metadata":{{}},"tensors":[]}}"#
            )
        };
        let salt = "00".repeat(16);
        let body = "ab".repeat(48);
        let key = format!(r#"{{"type":"key","salt":"{salt}","body":"{body}"}}"#);
        let scrypt = format!(r#"{{"type":"scrypt","salt":"{salt}","log_n":10,"body":"{body}"}}"#);
        let check = |s: String| {
            let hl = s.len() as u64;
            let d = (24 + hl + 32).div_ceil(64) * 64;
            parse_header(s.as_bytes(), hl, d, d)
        };
        assert!(check(base(&key)).is_ok());
        assert!(check(base(&scrypt)).is_ok());
        assert!(check(base(&format!("{key},{scrypt}"))).is_err());
        assert!(check(base(&scrypt.replace("\"log_n\":10", "\"log_n\":40"))).is_err());
        assert!(check(base(&key.replace("\"ab", "\"AB"))).is_err());
        assert!(check(base(&key.replace("}", ",\"extra\":\"x\"}"))).is_err());
        assert!(check(base(r#"{"type":"future-recipient","x":"y","n":3}"#)).is_ok());
        assert!(check(base(r#"{"type":"future-recipient","x":{"nested":1}}"#)).is_err());
        assert!(check(base("")).is_err());
    }
}
