//! Writing a file: lay out the header, encrypt tensor by tensor in bounded batches (never the
//! whole file in memory; a signed file's chunks are hashed with BLAKE3 right after sealing,
//! while in cache), then fill in the tag table, the digest table, the header MAC and the
//! stanza area (last, because a signature covers the tables and the MAC). File writes are
//! atomic: a temporary file in the target directory, fsync, rename.

use std::collections::HashSet;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::crypto::{self, GcmKey, SecretKey, KEY_LEN, TAG_LEN};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{
    self, Preamble, Stanza, CHUNK_DIGEST, CIPHER, DATA_ALIGN, MAX_CHUNK, MAX_NAME_LEN,
    MAX_STANZA_AREA, MIN_CHUNK, PREAMBLE_LEN, SIGNATURE_TYPE, SIG_LEN,
};
use crate::keys::{make_stanza, sign, signed_message, Recipient};

/// The data section starts on a page (`data_offset = align(tables_end, 4096)`).
pub const WRITER_DATA_ALIGN: u64 = header::PAGE;
pub const DEFAULT_CHUNK: u64 = 256 << 10;
pub const DEFAULT_LOG_N: u8 = 18;
/// The preamble and a stanza area of this size fill exactly the first page, so re-keying is
/// one single-page write.
pub const PAGE: u64 = header::PAGE;
/// Plaintext encrypted per batch; the writer holds at most two batches (one being encrypted,
/// one being written), which bounds its memory.
const BATCH_BYTES: usize = 16 << 20;

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
    pub recipients: Vec<Recipient>,
    /// scrypt work factor for a passphrase recipient.
    pub log_n: u8,
    /// Ed25519 private key (32-byte seed) to sign the file with (`ed25519-blake3`: the file
    /// then has `"chunk_digest": "BLAKE3"` and a digest table).
    pub sign_seed: Option<Zeroizing<[u8; 32]>>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: DEFAULT_CHUNK,
            metadata: Vec::new(),
            recipients: Vec::new(),
            log_n: DEFAULT_LOG_N,
            sign_seed: None,
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument(msg.into()))
}

/// Checks the set of recipients before anything is made or written (`save`, `save_bytes` and
/// `rekey` all start here): at least one, at most `MAX_STANZAS` (readers refuse more, so such
/// a file would open for nobody), and a passphrase only alone.
pub fn check_recipients(recipients: &[Recipient]) -> Result<()> {
    if recipients.is_empty() {
        return invalid("nothing to encrypt to: give a key, a recipient or a passphrase");
    }
    if recipients.len() > header::MAX_STANZAS {
        return invalid(format!(
            "too many keys and recipients: {} given, a file holds at most {} stanzas",
            recipients.len(),
            header::MAX_STANZAS
        ));
    }
    if recipients.iter().any(Recipient::is_passphrase) && recipients.len() > 1 {
        return invalid("a passphrase cannot be combined with other keys, recipients or passphrases in one file");
    }
    Ok(())
}

fn check_inputs(tensors: &[TensorSource], opts: &WriteOptions) -> Result<()> {
    check_recipients(&opts.recipients)?;
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One stanza as compact JSON. A stanza of an unknown type (kept by a re-key) is written back
/// with the members it was read with, in order.
fn stanza_json(s: &Stanza) -> String {
    // The optional member last, so that a stanza without one is the same bytes as before.
    let fp = s.fingerprint().map_or(String::new(), |f| {
        format!(r#","{}":"{}""#, header::FINGERPRINT_MEMBER, hex(f))
    });
    match s {
        Stanza::Key { salt, body, .. } => {
            format!(
                r#"{{"type":"key","salt":"{}","body":"{}"{fp}}}"#,
                hex(salt),
                hex(body)
            )
        }
        Stanza::Scrypt { salt, log_n, body } => format!(
            r#"{{"type":"scrypt","salt":"{}","log_n":{log_n},"body":"{}"}}"#,
            hex(salt),
            hex(body)
        ),
        Stanza::X25519 { share, body, .. } => {
            format!(
                r#"{{"type":"x25519","share":"{}","body":"{}"{fp}}}"#,
                hex(share),
                hex(body)
            )
        }
        Stanza::RsaOaep { body, .. } => {
            format!(r#"{{"type":"rsa-oaep","body":"{}"{fp}}}"#, hex(body))
        }
        Stanza::Unknown { members, .. } => {
            let members = members
                .iter()
                .map(|(k, v)| match v {
                    header::Member::Str(s) => format!("{}:{}", json_str(k), json_str(s)),
                    header::Member::Int(n) => format!("{}:{n}", json_str(k)),
                })
                .collect::<Vec<_>>()
                .join(",");
            format!("{{{members}}}")
        }
    }
}

/// The stanza area's JSON (unpadded).
pub fn stanza_area_json(stanzas: &[Stanza], signature: Option<&[u8; SIG_LEN]>) -> Vec<u8> {
    let list = stanzas
        .iter()
        .map(stanza_json)
        .collect::<Vec<_>>()
        .join(",");
    match signature {
        None => format!(r#"{{"stanzas":[{list}]}}"#),
        Some(sig) => format!(
            r#"{{"stanzas":[{list}],"signature":{{"type":"{SIGNATURE_TYPE}","sig":"{}"}}}}"#,
            hex(sig)
        ),
    }
    .into_bytes()
}

/// The stanza area length for `json_len` bytes of stanzas: the rest of the first page if they
/// fit, else whole pages ([`header::canonical_area_len`], the only length readers accept).
pub fn area_len_for(json_len: u64) -> u64 {
    header::canonical_area_len(json_len)
}

/// The stanza area padded with spaces to `area_len`.
pub fn padded_area(json: &[u8], area_len: u64) -> Vec<u8> {
    let mut area = json.to_vec();
    area.resize(area_len as usize, b' ');
    area
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Serializes the header for `tensors` (with `chunk_digest` when signing); returns
/// `(json, per-tensor begin offsets, chunk counts)`.
fn build_header(tensors: &[TensorSource], opts: &WriteOptions) -> (Vec<u8>, Vec<u64>, Vec<u64>) {
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
    let digest = if opts.sign_seed.is_some() {
        format!(r#""chunk_digest":"{CHUNK_DIGEST}","#)
    } else {
        String::new()
    };
    let json = format!(
        r#"{{"cipher":"{CIPHER}","chunk_size":{},{digest}"metadata":{{{metadata}}},"tensors":[{}]}}"#,
        opts.chunk_size,
        entries.join(",")
    );
    (json.into_bytes(), begins, chunks)
}

fn io_err(e: std::io::Error) -> Error {
    Error::io(e, "write failed")
}

/// Asked between batches of a write (every few milliseconds): true stops the write with
/// [`Error::Interrupted`] (the Python bindings check for Ctrl-C here).
pub type Stop<'a> = &'a (dyn Fn() -> bool + Sync);

/// Writes a complete file to `w` and returns the number of bytes written.
pub fn write_to<W: Write + Seek + Send>(
    w: &mut W,
    tensors: &[TensorSource],
    opts: &WriteOptions,
) -> Result<u64> {
    write_to_until(w, tensors, opts, &|| false)
}

/// [`write_to`], stopping early when `stop` says so.
pub fn write_to_until<W: Write + Seek + Send>(
    w: &mut W,
    tensors: &[TensorSource],
    opts: &WriteOptions,
    stop: Stop<'_>,
) -> Result<u64> {
    check_inputs(tensors, opts)?;
    let mut file_key: SecretKey = Zeroizing::new([0u8; KEY_LEN]);
    crypto::random(&mut file_key[..])?;
    let stanzas = opts
        .recipients
        .iter()
        .map(|r| make_stanza(&file_key, r, opts.log_n))
        .collect::<Result<Vec<_>>>()?;
    // The signature is only known at the end; size the area for it now (its hex has a fixed
    // length, so the area is exactly canonical).
    let placeholder = opts.sign_seed.as_ref().map(|_| [0u8; SIG_LEN]);
    let area_len = area_len_for(stanza_area_json(&stanzas, placeholder.as_ref()).len() as u64);
    if area_len > MAX_STANZA_AREA {
        return invalid(format!(
            "the stanzas need a {area_len}-byte stanza area, more than the format's \
             {MAX_STANZA_AREA}: give fewer or smaller keys and recipients"
        ));
    }
    let signing = opts.sign_seed.is_some();
    let (json, begins, chunks) = build_header(tensors, opts);
    let header_len = json.len() as u64;
    if header_len > header::MAX_HEADER_LEN {
        return invalid(format!(
            "the header would be {header_len} bytes, more than the format allows"
        ));
    }
    let n_tags: u64 = chunks.iter().sum();
    let header_offset = PREAMBLE_LEN + area_len;
    let mac_offset = header_offset + header_len;
    let per_chunk = header::TAG_LEN + if signing { header::DIGEST_LEN } else { 0 };
    let tables_end = mac_offset + header::MAC_LEN + n_tags * per_chunk;
    let data_offset = align_up(tables_end, WRITER_DATA_ALIGN);
    let pre = Preamble {
        stanza_area_len: area_len,
        header_len,
        data_offset,
    };
    // Validate what we are about to write with the reader's own parser: a writer bug must
    // never produce a file that readers reject.
    let data_len = tensors
        .last()
        .map_or(0, |t| begins[begins.len() - 1] + t.data.len() as u64);
    header::parse_header(&json, &pre, data_offset + data_len)
        .map_err(|e| Error::InvalidArgument(format!("cannot write this header: {e}")))?;

    w.write_all(&pre.to_bytes()).map_err(io_err)?;
    write_zeros(w, area_len)?;
    w.write_all(&json).map_err(io_err)?;
    write_zeros(w, data_offset - mac_offset)?;

    let keys: Vec<GcmKey> = tensors
        .par_iter()
        .map(|t| crypto::tensor_key(&file_key, &t.name))
        .collect();
    let segments = segments(tensors, &begins, &chunks, opts.chunk_size as usize);
    let (tags, digests) = encrypt_and_write(w, segments, &keys, signing, stop)?;
    let pos = tensors
        .last()
        .map_or(0, |t| begins[begins.len() - 1] + t.data.len() as u64);
    debug_assert_eq!(tags.len() as u64, n_tags);
    let tag_bytes: Vec<u8> = tags.concat();
    let digest_bytes: Vec<u8> = digests.concat();
    let mac = crypto::header_mac(&file_key, &[&json, &tag_bytes, &digest_bytes]);
    let signature = match &opts.sign_seed {
        Some(seed) => Some(sign(
            &seed[..],
            &signed_message(&json, &mac, &tag_bytes, &digest_bytes),
        )?),
        None => None,
    };
    let area = padded_area(&stanza_area_json(&stanzas, signature.as_ref()), area_len);
    w.seek(SeekFrom::Start(PREAMBLE_LEN)).map_err(io_err)?;
    w.write_all(&area).map_err(io_err)?;
    w.seek(SeekFrom::Start(mac_offset)).map_err(io_err)?;
    w.write_all(&mac).map_err(io_err)?;
    w.write_all(&tag_bytes).map_err(io_err)?;
    w.write_all(&digest_bytes).map_err(io_err)?;
    w.seek(SeekFrom::Start(data_offset + pos)).map_err(io_err)?;
    w.flush().map_err(io_err)?;
    Ok(data_offset + pos)
}

/// A piece of the data section, in file order: zero padding, or one chunk of one tensor.
enum Segment<'a> {
    Zeros(usize),
    Chunk {
        tensor: usize,
        nonce: [u8; 12],
        src: &'a [u8],
        encrypted: bool,
    },
}

impl Segment<'_> {
    fn len(&self) -> usize {
        match self {
            Segment::Zeros(n) => *n,
            Segment::Chunk { src, .. } => src.len(),
        }
    }
}

/// The data section as segments: padding before each tensor, then its chunks (a zero-byte
/// tensor has one empty chunk).
fn segments<'a>(
    tensors: &'a [TensorSource<'a>],
    begins: &'a [u64],
    chunks: &'a [u64],
    cs: usize,
) -> impl Iterator<Item = Segment<'a>> + 'a {
    let mut pos = 0u64;
    tensors.iter().enumerate().flat_map(move |(i, t)| {
        let gap = (begins[i] - pos) as usize;
        pos = begins[i] + t.data.len() as u64;
        let m = chunks[i];
        let pieces: Box<dyn Iterator<Item = &'a [u8]>> = if t.data.is_empty() {
            Box::new(std::iter::once(t.data))
        } else {
            Box::new(t.data.chunks(cs))
        };
        let chunk_segments = pieces.enumerate().map(move |(j, src)| Segment::Chunk {
            tensor: i,
            nonce: crypto::chunk_nonce(j as u64, m),
            src,
            encrypted: t.encrypted,
        });
        (gap > 0)
            .then_some(Segment::Zeros(gap))
            .into_iter()
            .chain(chunk_segments)
    })
}

/// Per-chunk results in file order: the tags, and the BLAKE3 digests of the stored bytes
/// (empty unless asked for).
type Tables = (Vec<[u8; TAG_LEN]>, Vec<[u8; 32]>);

/// One sealed chunk: its tag, and the BLAKE3 digest of its stored bytes if asked for.
type Sealed = ([u8; TAG_LEN], Option<[u8; 32]>);

/// Encrypts the segments in batches of about `BATCH_BYTES` on all cores while a second thread
/// writes the previous batch, so that encryption and I/O overlap. With `digests`, each chunk's
/// stored bytes are hashed right after sealing, in the same parallel step, while in cache.
fn encrypt_and_write<'a, W: Write + Send>(
    w: &mut W,
    segments: impl Iterator<Item = Segment<'a>>,
    keys: &[GcmKey],
    digests: bool,
    stop: Stop<'_>,
) -> Result<Tables> {
    // A rendezvous channel: at most two batches exist, one being written and one being filled.
    let (to_writer, from_producer) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<()> {
            for buf in from_producer {
                w.write_all(&buf).map_err(io_err)?;
                let _ = recycle.send(buf);
            }
            Ok(())
        });
        let mut tags = Vec::new();
        let mut sums = Vec::new();
        let mut segments = segments.peekable();
        while segments.peek().is_some() {
            if stop() {
                drop(to_writer);
                let _ = writer.join();
                return Err(Error::Interrupted);
            }
            let mut batch = Vec::new();
            let mut len = 0usize;
            while let Some(seg) =
                segments.next_if(|s| batch.is_empty() || len + s.len() <= BATCH_BYTES)
            {
                len += seg.len();
                batch.push(seg);
            }
            // Reuse a written buffer: its pages are already faulted in. Every byte of it is
            // overwritten below, since the segments tile the batch.
            let mut buf = recycled.try_recv().unwrap_or_default();
            buf.resize(len, 0);
            let mut slots = Vec::with_capacity(batch.len());
            let mut rest = &mut buf[..];
            for seg in &batch {
                let (slot, tail) = rest.split_at_mut(seg.len());
                slots.push(slot);
                rest = tail;
            }
            let sealed: Vec<Option<Sealed>> = batch
                .par_iter()
                .zip(slots.into_par_iter())
                .map(|(seg, slot)| match seg {
                    Segment::Zeros(_) => {
                        slot.fill(0);
                        None
                    }
                    Segment::Chunk {
                        tensor,
                        nonce,
                        src,
                        encrypted,
                    } => {
                        let key = &keys[*tensor];
                        // One pass: read the source once, write the ciphertext once.
                        let tag = if *encrypted {
                            key.seal_into(*nonce, b"", src, slot)
                        } else {
                            slot.copy_from_slice(src);
                            key.gmac(*nonce, slot)
                        };
                        let digest = digests.then(|| *crypto::chunk_digest(slot).as_bytes());
                        Some((tag, digest))
                    }
                })
                .collect();
            for (tag, digest) in sealed.into_iter().flatten() {
                tags.push(tag);
                sums.extend(digest);
            }
            if to_writer.send(buf).is_err() {
                break; // the writer stopped on an error, reported below
            }
        }
        drop(to_writer);
        writer.join().expect("the writer thread does not panic")?;
        Ok((tags, sums))
    })
}

pub(crate) fn write_zeros<W: Write>(w: &mut W, mut n: u64) -> Result<()> {
    const ZEROS: [u8; 4096] = [0u8; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k]).map_err(io_err)?;
        n -= k as u64;
    }
    Ok(())
}

/// A new temporary file beside a target (in the same directory, so that a rename onto the
/// target is atomic), named `.<name>.<pid>-<random>.tmp`; removed when dropped unless `keep`
/// is set (the write completed, or the name may have come to hold someone else's file). A
/// process killed outright (SIGKILL, power loss) cannot remove its own: the next write to the
/// same target removes those whose process is gone.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl TempFile {
    /// Creates (exclusively, read-write) a temporary file beside `target` (`shown` in
    /// messages); returns it, the directory it is in, and the open file.
    pub(crate) fn beside(target: &Path, shown: &str) -> Result<(TempFile, PathBuf, File)> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{shown} is not a file path")))?
            .to_string_lossy()
            .into_owned();
        remove_stale_temps(&dir, &name);
        let mut rnd = [0u8; 6];
        crypto::random(&mut rnd)?;
        let pid = std::process::id();
        let path = dir.join(format!(".{name}.{pid}-{}.tmp", hex(&rnd)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(e, format!("cannot create a temporary file next to {shown}")))?;
        Ok((TempFile { path, keep: false }, dir, file))
    }
}

/// Removes the temporary files that earlier writes to `dir/name` left behind when their
/// process died (its pid, in the name, no longer exists). Best effort: a pid reused since
/// keeps its file, which the next write after that process ends removes.
fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some((pid, random)) = rest.split_once('-') else {
            continue;
        };
        let well_formed = random.len() == 12 && random.bytes().all(|b| b.is_ascii_hexdigit());
        let Ok(pid) = pid.parse::<libc::pid_t>() else {
            continue;
        };
        if !well_formed || pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if gone && is_file {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes renames and unlinks in `dir` durable (best effort: not every file system can).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Gives `file` (a new file about to replace the one `old` describes) that file's mode and,
/// where permitted, its owner and group. The owner first: changing it clears the set-user-ID
/// and set-group-ID bits, which the mode then sets again.
pub(crate) fn keep_mode_and_owner(file: &File, old: &Metadata) -> io::Result<()> {
    let now = file.metadata()?;
    if (now.uid(), now.gid()) != (old.uid(), old.gid()) {
        let not_permitted =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL));
        if let Err(e) = std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())) {
            if !not_permitted(&e) {
                return Err(e);
            }
            // Not allowed to give the file away: keep at least the group, if we may.
            if let Err(e) = std::os::unix::fs::fchown(file, None, Some(old.gid())) {
                if !not_permitted(&e) {
                    return Err(e);
                }
            }
        }
    }
    file.set_permissions(Permissions::from_mode(old.mode() & 0o7777))
}

/// Replaces `path` atomically with what `fill` writes: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. On any error the temporary file is
/// removed and a previous file at `path` is left as it was. A replaced file keeps its mode
/// (and its owner and group where permitted); a new file gets the default `0666 & ~umask`.
pub fn atomic_replace<T>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<T>,
) -> Result<T> {
    let shown = path.display().to_string();
    let path = &replaced_file(path, &shown)?;
    let (mut temp, dir, file) = TempFile::beside(path, &shown)?;
    // Before any byte is written, so that the data is never readable more widely than before.
    if let Ok(old) = fs::metadata(path) {
        if old.is_file() {
            keep_mode_and_owner(&file, &old).map_err(|e| {
                Error::io(e, format!("cannot set the mode of a file next to {shown}"))
            })?;
        }
    }
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let out = fill(&mut w).map_err(|e| match e {
        Error::Io(err, _) => Error::io(err, format!("cannot write {shown}")),
        other => other,
    })?;
    let file: File = w
        .into_inner()
        .map_err(|e| Error::io(e.into_error(), format!("cannot write {shown}")))?;
    file.sync_all()
        .map_err(|e| Error::io(e, format!("cannot sync {shown}")))?;
    drop(file);
    fs::rename(&temp.path, path).map_err(|e| Error::io(e, format!("cannot replace {shown}")))?;
    temp.keep = true;
    // Make the rename itself durable.
    sync_dir(&dir);
    Ok(out)
}

/// The file that writing `path` (`shown` in messages) replaces: `path`, or the file a symbolic
/// link there points to (the link stays, as when a file is opened for writing through it).
/// Anything else that is not a regular file (a device such as /dev/stdout, a FIFO, a socket, a
/// directory, a dangling link) is refused: renaming over it would replace it, not write to it.
fn replaced_file(path: &Path, shown: &str) -> Result<PathBuf> {
    let refuse = |what: &str| {
        Err(Error::InvalidArgument(format!(
            "{shown} is {what}: enctensor writes files by renaming a new file over the path, \
             give the path of a regular file"
        )))
    };
    let link = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(Error::io(e, format!("cannot stat {shown}"))),
        Ok(md) => md.file_type().is_symlink(),
    };
    let real = if link {
        match fs::canonicalize(path) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return refuse("a symbolic link to a file that does not exist")
            }
            Err(e) => return Err(Error::io(e, format!("cannot resolve {shown}"))),
        }
    } else {
        path.to_path_buf()
    };
    let md = fs::metadata(&real).map_err(|e| Error::io(e, format!("cannot stat {shown}")))?;
    if md.is_file() {
        Ok(real)
    } else if md.is_dir() {
        refuse("a directory")
    } else {
        refuse("not a regular file (a device, FIFO or socket)")
    }
}

/// Writes `path` atomically: a crash or error leaves any previous file at `path` intact.
pub fn write_file_atomic(
    path: &Path,
    tensors: &[TensorSource],
    opts: &WriteOptions,
) -> Result<u64> {
    write_file_atomic_until(path, tensors, opts, &|| false)
}

/// [`write_file_atomic`], stopping early (and leaving `path` as it was) when `stop` says so.
pub fn write_file_atomic_until(
    path: &Path,
    tensors: &[TensorSource],
    opts: &WriteOptions,
    stop: Stop<'_>,
) -> Result<u64> {
    check_inputs(tensors, opts)?;
    atomic_replace(path, |w| write_to_until(w, tensors, opts, stop))
}
