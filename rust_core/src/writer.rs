//! Writing a file: lay out the header, encrypt tensor by tensor in bounded batches (never the
//! whole file in memory), then fill in the tag table and the header MAC. File writes are
//! atomic: a temporary file in the target directory, fsync, rename.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::crypto::{self, SecretKey, KEY_LEN, TAG_LEN};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{
    self, Stanza, CIPHER, DATA_ALIGN, MAGIC, MAX_CHUNK, MAX_NAME_LEN, MIN_CHUNK, VERSION,
};
use crate::keys::{make_stanza, Credential};

/// Writers page-align the data section so that tensor data can be mapped page by page.
pub const WRITER_DATA_ALIGN: u64 = 4096;
pub const DEFAULT_CHUNK: u64 = 1 << 20;
pub const DEFAULT_LOG_N: u8 = 18;
/// Plaintext encrypted per batch before it is written out: bounds the writer's memory.
const BATCH_BYTES: usize = 32 << 20;

/// One tensor to write: its bytes are borrowed, row-major, little-endian.
pub struct TensorSource<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data: &'a [u8],
    pub encrypted: bool,
}

pub struct WriteOptions {
    pub chunk_size: u64,
    pub metadata: Vec<(String, String)>,
    pub credentials: Vec<Credential>,
    /// scrypt work factor for a passphrase credential.
    pub log_n: u8,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: DEFAULT_CHUNK,
            metadata: Vec::new(),
            credentials: Vec::new(),
            log_n: DEFAULT_LOG_N,
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument(msg.into()))
}

fn check_inputs(tensors: &[TensorSource], opts: &WriteOptions) -> Result<()> {
    if opts.credentials.is_empty() {
        return invalid("nothing to encrypt to: give a key or a passphrase");
    }
    let passphrases = opts
        .credentials
        .iter()
        .filter(|c| matches!(c, Credential::Passphrase(_)))
        .count();
    if passphrases > 0 && opts.credentials.len() > 1 {
        return invalid(
            "a passphrase cannot be combined with other keys or passphrases in one file",
        );
    }
    if !opts.chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&opts.chunk_size) {
        return invalid(format!(
            "chunk_size must be a power of two between {MIN_CHUNK} and {MAX_CHUNK}, got {}",
            opts.chunk_size
        ));
    }
    let mut seen = HashSet::new();
    for t in tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME_LEN {
            return invalid(format!(
                "tensor names must be 1 to {MAX_NAME_LEN} bytes long: {:?}",
                t.name
            ));
        }
        if !seen.insert(t.name.as_str()) {
            return invalid(format!("duplicate tensor name {:?}", t.name));
        }
        let nbytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d));
        if nbytes != Some(t.data.len() as u64) {
            return invalid(format!(
                "tensor {:?}: {} bytes of data do not match dtype {} and shape {:?}",
                t.name,
                t.data.len(),
                t.dtype.name(),
                t.shape
            ));
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

fn stanza_json(s: &Stanza) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    match s {
        Stanza::Key { salt, body } => {
            format!(
                r#"{{"type":"key","salt":"{}","body":"{}"}}"#,
                hex(salt),
                hex(body)
            )
        }
        Stanza::Scrypt { salt, log_n, body } => format!(
            r#"{{"type":"scrypt","salt":"{}","log_n":{log_n},"body":"{}"}}"#,
            hex(salt),
            hex(body)
        ),
        Stanza::Unknown { .. } => unreachable!("writers only make known stanzas"),
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Serializes the header for `tensors` and returns `(json, per-tensor begin offsets, chunk counts)`.
fn build_header(
    tensors: &[TensorSource],
    opts: &WriteOptions,
    stanzas: &[Stanza],
) -> (Vec<u8>, Vec<u64>, Vec<u64>) {
    let mut begins = Vec::with_capacity(tensors.len());
    let mut chunks = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    let mut entries = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let begin = if i == 0 { 0 } else { align_up(end, DATA_ALIGN) };
        end = begin + t.data.len() as u64;
        begins.push(begin);
        chunks.push((t.data.len() as u64).div_ceil(opts.chunk_size).max(1));
        let shape = t
            .shape
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        entries.push(format!(
            r#"{{"name":{},"dtype":"{}","shape":[{shape}],"offsets":[{begin},{end}],"encrypted":{}}}"#,
            json_str(&t.name),
            t.dtype.name(),
            t.encrypted
        ));
    }
    let metadata = opts
        .metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect::<Vec<_>>()
        .join(",");
    let stanzas = stanzas
        .iter()
        .map(stanza_json)
        .collect::<Vec<_>>()
        .join(",");
    let json = format!(
        r#"{{"cipher":"{CIPHER}","chunk_size":{},"stanzas":[{stanzas}],"metadata":{{{metadata}}},"tensors":[{}]}}"#,
        opts.chunk_size,
        entries.join(",")
    );
    (json.into_bytes(), begins, chunks)
}

fn io_err(e: std::io::Error) -> Error {
    Error::io(e, "write failed")
}

/// Writes a complete file to `w` and returns the number of bytes written.
pub fn write_to<W: Write + Seek>(
    w: &mut W,
    tensors: &[TensorSource],
    opts: &WriteOptions,
) -> Result<u64> {
    check_inputs(tensors, opts)?;
    let mut file_key: SecretKey = Zeroizing::new([0u8; KEY_LEN]);
    crypto::random(&mut file_key[..])?;
    let stanzas = opts
        .credentials
        .iter()
        .map(|c| make_stanza(&file_key, c, opts.log_n))
        .collect::<Result<Vec<_>>>()?;
    let (json, begins, chunks) = build_header(tensors, opts, &stanzas);
    let header_len = json.len() as u64;
    if header_len > header::MAX_HEADER_LEN {
        return invalid(format!(
            "the header would be {header_len} bytes, more than the format allows"
        ));
    }
    let n_tags: u64 = chunks.iter().sum();
    let tags_offset = header::PREAMBLE_LEN + header_len + header::MAC_LEN;
    let tags_end = tags_offset + n_tags * header::TAG_LEN;
    let data_offset = align_up(tags_end, WRITER_DATA_ALIGN);

    let mut preamble = Vec::with_capacity(24);
    preamble.extend_from_slice(&MAGIC);
    preamble.extend_from_slice(&VERSION.to_le_bytes());
    preamble.extend_from_slice(&(header_len as u32).to_le_bytes());
    preamble.extend_from_slice(&data_offset.to_le_bytes());
    // Validate what we are about to write with the reader's own parser: a writer bug must
    // never produce a file that readers reject.
    let file_len = data_offset
        + tensors
            .last()
            .map_or(0, |t| begins[begins.len() - 1] + t.data.len() as u64);
    header::parse_header(&json, header_len, data_offset, file_len)
        .map_err(|e| Error::InvalidArgument(format!("cannot write this header: {e}")))?;

    w.write_all(&preamble).map_err(io_err)?;
    w.write_all(&json).map_err(io_err)?;
    write_zeros(w, data_offset - header::PREAMBLE_LEN - header_len)?;

    let cs = opts.chunk_size as usize;
    let mut tags: Vec<[u8; TAG_LEN]> = Vec::with_capacity(n_tags as usize);
    let mut pos = 0u64;
    let mut batch: Vec<u8> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        write_zeros(w, begins[i] - pos)?;
        let key = crypto::tensor_key(&file_key, &t.name);
        let m = chunks[i];
        if t.data.is_empty() {
            tags.push(if t.encrypted {
                key.seal(crypto::chunk_nonce(0, 1), b"", &mut [])
            } else {
                key.gmac(crypto::chunk_nonce(0, 1), b"")
            });
        }
        let per_batch = (BATCH_BYTES / cs).max(1);
        for (b, group) in t.data.chunks(cs * per_batch).enumerate() {
            let first = (b * per_batch) as u64;
            if t.encrypted {
                batch.clear();
                batch.resize(group.len(), 0);
                let new_tags: Vec<[u8; TAG_LEN]> = batch
                    .par_chunks_mut(cs)
                    .zip(group.par_chunks(cs))
                    .enumerate()
                    .map(|(j, (dst, src))| {
                        dst.copy_from_slice(src);
                        key.seal(crypto::chunk_nonce(first + j as u64, m), b"", dst)
                    })
                    .collect();
                tags.extend(new_tags);
                w.write_all(&batch).map_err(io_err)?;
            } else {
                let new_tags: Vec<[u8; TAG_LEN]> = group
                    .par_chunks(cs)
                    .enumerate()
                    .map(|(j, src)| key.gmac(crypto::chunk_nonce(first + j as u64, m), src))
                    .collect();
                tags.extend(new_tags);
                w.write_all(group).map_err(io_err)?;
            }
        }
        pos = begins[i] + t.data.len() as u64;
    }
    debug_assert_eq!(tags.len() as u64, n_tags);
    let tag_bytes: Vec<u8> = tags.concat();
    let mac = crypto::header_mac(&file_key, &[&preamble, &json, &tag_bytes]);
    w.seek(SeekFrom::Start(header::PREAMBLE_LEN + header_len))
        .map_err(io_err)?;
    w.write_all(&mac).map_err(io_err)?;
    w.write_all(&tag_bytes).map_err(io_err)?;
    w.seek(SeekFrom::Start(data_offset + pos)).map_err(io_err)?;
    w.flush().map_err(io_err)?;
    Ok(data_offset + pos)
}

fn write_zeros<W: Write>(w: &mut W, mut n: u64) -> Result<()> {
    const ZEROS: [u8; 4096] = [0u8; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k]).map_err(io_err)?;
        n -= k as u64;
    }
    Ok(())
}

/// Removes the temporary file unless the write completed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes `path` atomically: a crash or error leaves any previous file at `path` intact.
pub fn write_file_atomic(
    path: &Path,
    tensors: &[TensorSource],
    opts: &WriteOptions,
) -> Result<u64> {
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{shown} is not a file path")))?
        .to_string_lossy()
        .into_owned();
    let mut rnd = [0u8; 6];
    crypto::random(&mut rnd)?;
    let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let tmp_path = dir.join(format!(".{file_name}.{suffix}.tmp"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| Error::io(e, format!("cannot create a temporary file next to {shown}")))?;
    let guard = TempFile(Some(tmp_path.clone()));
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let n = write_to(&mut w, tensors, opts).map_err(|e| match e {
        Error::Io(err, _) => Error::io(err, format!("cannot write {shown}")),
        other => other,
    })?;
    let file: File = w
        .into_inner()
        .map_err(|e| Error::io(e.into_error(), format!("cannot write {shown}")))?;
    file.sync_all()
        .map_err(|e| Error::io(e, format!("cannot sync {shown}")))?;
    drop(file);
    fs::rename(&tmp_path, path).map_err(|e| Error::io(e, format!("cannot replace {shown}")))?;
    std::mem::forget(guard);
    // Make the rename itself durable.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(n)
}
