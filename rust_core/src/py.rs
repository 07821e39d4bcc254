//! PyO3 bindings: `enctensor._core`. Thin by design: convert arguments, run all byte work with
//! the GIL released, map [`Error`] to the Python exceptions of `enctensor.errors` in one place.

use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::dtype::Dtype;
use crate::error::Error;
use crate::header::{self, Header};
use crate::keys::{self, describe, Credential, Recipient};
use crate::reader::{self, Reader};
use crate::rekey::{change_stanzas, Changes, Rekeyed, Removal};
use crate::writer::{self, TensorSource, WriteOptions};
use zeroize::Zeroizing;

pyo3::import_exception!(enctensor.errors, FormatError);
pyo3::import_exception!(enctensor.errors, WrongKeyError);
pyo3::import_exception!(enctensor.errors, IntegrityError);
pyo3::import_exception!(enctensor.errors, SignatureError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Format(_) => FormatError::new_err(msg),
            Error::WrongKey(_) => WrongKeyError::new_err(msg),
            Error::Integrity(_) => IntegrityError::new_err(msg),
            Error::Signature(_) => SignatureError::new_err(msg),
            Error::InvalidArgument(_) => PyValueError::new_err(msg),
            // OSError(errno, message) picks the subclass (FileNotFoundError, ...) from errno
            // and sets `.errno`, so callers can branch on it without parsing the message.
            Error::Io(err, _) => match err.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, msg)),
                None => PyOSError::new_err(msg),
            },
            Error::Interrupted => PyKeyboardInterrupt::new_err(()),
        }
    }
}

/// Between batches of a write, with the GIL released: takes it back for a moment to run
/// Python's signal handlers, so that Ctrl-C (or a SIGTERM handler the program set) stops a
/// long write within milliseconds; the exception a handler raised is kept in `raised` and
/// raised once the write has cleaned up. Only the main thread runs handlers.
fn signal_raised(raised: &std::sync::Mutex<Option<PyErr>>) -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            if let Ok(mut slot) = raised.lock() {
                *slot = Some(e);
            }
            true
        }
    })
}

/// Exactly one of the ways to open a file.
fn credential(
    key: Option<&[u8]>,
    passphrase: Option<&str>,
    x25519: Option<&[u8]>,
    rsa_pkcs8: Option<&[u8]>,
    file_key: Option<&[u8]>,
) -> PyResult<Credential> {
    if let Some(k) = file_key {
        if key.is_some() || passphrase.is_some() || x25519.is_some() || rsa_pkcs8.is_some() {
            return Err(PyValueError::new_err(
                "give one key or passphrase, not several",
            ));
        }
        return Ok(Credential::file_key(k)?);
    }
    let given = [
        key.is_some(),
        passphrase.is_some(),
        x25519.is_some(),
        rsa_pkcs8.is_some(),
    ];
    match given.iter().filter(|&&g| g).count() {
        0 => {
            return Err(PyValueError::new_err(
                "give a key or a passphrase to open this file",
            ))
        }
        1 => {}
        _ => {
            return Err(PyValueError::new_err(
                "give one key or passphrase, not several",
            ))
        }
    }
    Ok(if let Some(k) = key {
        Credential::key(k)?
    } else if let Some(p) = passphrase {
        Credential::passphrase(p)?
    } else if let Some(x) = x25519 {
        Credential::x25519(x)?
    } else {
        Credential::rsa_pkcs8(rsa_pkcs8.expect("one credential"))?
    })
}

fn recipients(
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    x25519: Vec<Vec<u8>>,
    rsa_spki: Vec<Vec<u8>>,
) -> PyResult<Vec<Recipient>> {
    let mut out = keys
        .iter()
        .map(|k| Recipient::key(k))
        .collect::<Result<Vec<_>, _>>()?;
    for x in &x25519 {
        out.push(Recipient::x25519(x)?);
    }
    for r in &rsa_spki {
        out.push(Recipient::rsa_spki(r)?);
    }
    if let Some(p) = passphrase {
        out.push(Recipient::passphrase(p)?);
    }
    Ok(out)
}

/// The scrypt cost cap a caller allows (10..=20), as a `ValueError` otherwise.
fn scrypt_cap(max_scrypt_log_n: i64) -> PyResult<u8> {
    match u8::try_from(max_scrypt_log_n) {
        Ok(n) => {
            keys::check_max_scrypt_log_n(n)?;
            Ok(n)
        }
        Err(_) => Err(PyValueError::new_err(format!(
            "max_scrypt_log_n must be between 10 and 20, got {max_scrypt_log_n}"
        ))),
    }
}

fn seed(sign_seed: Option<&[u8]>) -> PyResult<Option<Zeroizing<[u8; 32]>>> {
    sign_seed
        .map(|s| {
            <[u8; 32]>::try_from(s)
                .map(Zeroizing::new)
                .map_err(|_| PyValueError::new_err("an Ed25519 private key seed is 32 bytes"))
        })
        .transpose()
}

/// A held buffer export: its address and length stay valid while `_buf` lives.
struct Held {
    _buf: PyBuffer<u8>,
    ptr: usize,
    len: usize,
}

fn hold(obj: &Bound<'_, PyAny>, writable: bool, what: &str) -> PyResult<Held> {
    let buf = PyBuffer::<u8>::get(obj).map_err(|e| {
        PyValueError::new_err(format!("{what} must be a contiguous uint8 buffer ({e})"))
    })?;
    if writable && buf.readonly() {
        return Err(PyValueError::new_err(format!("{what} is read-only")));
    }
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{what} is not C-contiguous")));
    }
    let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    Ok(Held {
        _buf: buf,
        ptr,
        len,
    })
}

impl Held {
    /// # Safety
    /// The caller must not let Python code touch the buffer while the slice is alive (the
    /// GIL is released around its use; the export itself is held by `self`).
    unsafe fn slice_mut<'a>(ptr: usize, len: usize) -> &'a mut [u8] {
        if len == 0 {
            return &mut [];
        }
        // SAFETY: `ptr`/`len` describe a live, writable, contiguous export (checked in `hold`);
        // exclusivity is the caller's contract, as for any buffer filled with the GIL released.
        unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
    }

    /// # Safety
    /// As for [`Held::slice_mut`], for a read-only view.
    unsafe fn slice<'a>(ptr: usize, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        // SAFETY: `ptr`/`len` describe a live contiguous export held by the caller.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
    }
}

type TensorRow = (String, &'static str, Vec<u64>, bool, u64);

fn tensor_rows(h: &Header) -> Vec<TensorRow> {
    h.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.name(),
                t.shape.clone(),
                t.encrypted,
                t.nbytes(),
            )
        })
        .collect()
}

/// Everything `inspect` shows: (tensors, metadata, stanza descriptions, chunk size, file
/// length, signed).
type Inspection = (
    Vec<TensorRow>,
    Vec<(String, String)>,
    Vec<Vec<(String, String)>>,
    u64,
    u64,
    bool,
);

fn inspection(h: &Header) -> Inspection {
    (
        tensor_rows(h),
        h.metadata.clone(),
        h.stanzas.iter().map(describe).collect(),
        h.chunk_size,
        h.file_len(),
        h.signature.is_some(),
    )
}

/// An opened and authenticated enctensor file.
#[pyclass(frozen, module = "enctensor._core", name = "Reader")]
struct PyReader {
    inner: Reader,
}

/// The buffer of a Python `bytes` object, lent to a reader instead of copied: `bytes` are
/// immutable, and the reference held here keeps the buffer alive as long as the reader.
struct LentBytes {
    _owner: Py<PyBytes>,
    ptr: usize,
    len: usize,
}

impl LentBytes {
    fn new(data: &Bound<'_, PyBytes>) -> LentBytes {
        let bytes = data.as_bytes();
        LentBytes {
            _owner: data.clone().unbind(),
            ptr: bytes.as_ptr() as usize,
            len: bytes.len(),
        }
    }
}

impl AsRef<[u8]> for LentBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` are the buffer of the `bytes` object `_owner` holds a reference
        // to, so it outlives `self`; a `bytes` object's buffer never moves or changes.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

#[pymethods]
impl PyReader {
    /// Opens and authenticates `path`. With `verify_key` (32-byte Ed25519 public key) the
    /// signature must verify and every chunk read is checked against the signed digests.
    /// `max_scrypt_log_n` (10..=20) caps the scrypt cost a file may ask for.
    #[new]
    #[pyo3(signature = (path, *, key=None, passphrase=None, x25519=None, rsa_pkcs8=None, file_key=None, verify_key=None, max_scrypt_log_n=18))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        key: Option<&[u8]>,
        passphrase: Option<&str>,
        x25519: Option<&[u8]>,
        rsa_pkcs8: Option<&[u8]>,
        file_key: Option<&[u8]>,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: i64,
    ) -> PyResult<Self> {
        let cap = scrypt_cap(max_scrypt_log_n)?;
        let cred = credential(key, passphrase, x25519, rsa_pkcs8, file_key)?;
        let inner = py.detach(|| Reader::open(&path, &cred, verify_key, cap))?;
        Ok(PyReader { inner })
    }

    #[staticmethod]
    #[pyo3(signature = (data, *, key=None, passphrase=None, x25519=None, rsa_pkcs8=None, file_key=None, verify_key=None, max_scrypt_log_n=18))]
    #[allow(clippy::too_many_arguments)]
    fn from_bytes(
        py: Python<'_>,
        data: &Bound<'_, PyBytes>,
        key: Option<&[u8]>,
        passphrase: Option<&str>,
        x25519: Option<&[u8]>,
        rsa_pkcs8: Option<&[u8]>,
        file_key: Option<&[u8]>,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: i64,
    ) -> PyResult<Self> {
        let cap = scrypt_cap(max_scrypt_log_n)?;
        let cred = credential(key, passphrase, x25519, rsa_pkcs8, file_key)?;
        let lent = LentBytes::new(data);
        let inner = py.detach(|| Reader::from_held(Box::new(lent), &cred, verify_key, cap))?;
        Ok(PyReader { inner })
    }

    /// Opens a file read by ranges (a remote file) from `front`, its first
    /// [`prefix_len`] bytes, and its length `file_len`; `name` (its URL) names it in errors.
    /// Tensor bytes are then fetched by the caller ([`PyReader::span`]) and decrypted with
    /// [`PyReader::read_range_from`].
    #[staticmethod]
    #[pyo3(signature = (front, file_len, name, *, key=None, passphrase=None, x25519=None, rsa_pkcs8=None, file_key=None, verify_key=None, max_scrypt_log_n=18))]
    #[allow(clippy::too_many_arguments)]
    fn from_front(
        py: Python<'_>,
        front: &[u8],
        file_len: u64,
        name: String,
        key: Option<&[u8]>,
        passphrase: Option<&str>,
        x25519: Option<&[u8]>,
        rsa_pkcs8: Option<&[u8]>,
        file_key: Option<&[u8]>,
        verify_key: Option<&[u8]>,
        max_scrypt_log_n: i64,
    ) -> PyResult<Self> {
        let cap = scrypt_cap(max_scrypt_log_n)?;
        let cred = credential(key, passphrase, x25519, rsa_pkcs8, file_key)?;
        let inner = py.detach(|| {
            Reader::from_front(front.to_vec(), file_len, name, &cred, verify_key, cap)
        })?;
        Ok(PyReader { inner })
    }

    /// The file range `(a, b)` to fetch to decrypt bytes `[start, end)` of tensor `index`.
    fn span(&self, index: usize, start: u64, end: u64) -> PyResult<(u64, u64)> {
        Ok(self.inner.span(index, start, end)?)
    }

    /// Decrypts bytes `[start, start + len(dst))` of tensor `index` out of `data`, the bytes
    /// of the file range starting at `at` (holding at least what `span` named). `data` must be
    /// `bytes`: immutable, so no other thread can change it while it is decrypted in one pass.
    fn read_range_from(
        &self,
        py: Python<'_>,
        index: usize,
        start: u64,
        dst: &Bound<'_, PyAny>,
        at: u64,
        data: &Bound<'_, PyBytes>,
    ) -> PyResult<()> {
        let held = hold(dst, true, "the destination")?;
        let (ptr, len) = (held.ptr, held.len);
        let fetched = data.as_bytes();
        py.detach(|| {
            // SAFETY: `held` keeps the export alive until after `detach` returns.
            let out = unsafe { Held::slice_mut(ptr, len) };
            self.inner.read_range_from(index, start, out, at, fetched)
        })?;
        Ok(())
    }

    /// The file's name in messages (its path, or the URL given to `from_front`).
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// `(name, dtype, shape, encrypted, nbytes)` for every tensor, in file order.
    fn tensors(&self) -> Vec<TensorRow> {
        tensor_rows(self.inner.header())
    }

    /// The file's chunk size in bytes.
    #[getter]
    fn chunk_size(&self) -> u64 {
        self.inner.header().chunk_size
    }

    fn metadata(&self) -> Vec<(String, String)> {
        self.inner.header().metadata.clone()
    }

    fn inspect(&self) -> Inspection {
        inspection(self.inner.header())
    }

    /// Decrypts tensor `index` into the writable uint8 buffer `dst`.
    fn read_into(&self, py: Python<'_>, index: usize, dst: &Bound<'_, PyAny>) -> PyResult<()> {
        let held = hold(dst, true, "the destination")?;
        let (ptr, len) = (held.ptr, held.len);
        py.detach(|| {
            // SAFETY: `held` keeps the export alive until after `detach` returns.
            let out = unsafe { Held::slice_mut(ptr, len) };
            self.inner.read_into(index, out)
        })?;
        Ok(())
    }

    /// Decrypts many tensors at once, all chunks in parallel: `jobs` is `[(index, dst), ...]`.
    fn read_many_into(&self, py: Python<'_>, jobs: Vec<(usize, Bound<'_, PyAny>)>) -> PyResult<()> {
        let held = jobs
            .iter()
            .map(|(i, d)| Ok((*i, hold(d, true, "a destination")?)))
            .collect::<PyResult<Vec<_>>>()?;
        let raw: Vec<(usize, usize, usize)> =
            held.iter().map(|(i, h)| (*i, h.ptr, h.len)).collect();
        // The destinations become `&mut [u8]` written in parallel: they must not overlap.
        let mut spans: Vec<(usize, usize)> =
            raw.iter().filter(|r| r.2 > 0).map(|r| (r.1, r.2)).collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(PyValueError::new_err("destinations must not overlap"));
        }
        py.detach(|| {
            let mut slices: Vec<(usize, &mut [u8])> = raw
                .iter()
                // SAFETY: every export is held by `held` until `detach` returns, and the
                // destinations were checked above not to overlap.
                .map(|&(i, p, n)| (i, unsafe { Held::slice_mut(p, n) }))
                .collect();
            self.inner.read_many(&mut slices)
        })?;
        drop(held);
        Ok(())
    }

    /// Decrypts bytes `[start, start + len(dst))` of tensor `index`, verifying only the chunks
    /// that cover them.
    fn read_range_into(
        &self,
        py: Python<'_>,
        index: usize,
        start: u64,
        dst: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let held = hold(dst, true, "the destination")?;
        let (ptr, len) = (held.ptr, held.len);
        py.detach(|| {
            // SAFETY: `held` keeps the export alive until after `detach` returns.
            let out = unsafe { Held::slice_mut(ptr, len) };
            self.inner.read_range_into(index, start, out)
        })?;
        Ok(())
    }

    /// Verifies every chunk tag (and, with a verification key, every chunk digest) without
    /// keeping any plaintext.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify_all())?;
        Ok(())
    }
}

/// Parses and validates a file without a key.
#[pyfunction]
fn inspect_file(py: Python<'_>, path: PathBuf) -> PyResult<Inspection> {
    let h = py.detach(|| reader::inspect_path(&path))?;
    Ok(inspection(&h))
}

#[pyfunction]
fn inspect_bytes(data: &[u8]) -> PyResult<Inspection> {
    Ok(inspection(&header::parse_file(data)?))
}

/// How many bytes from the start of a file of `file_len` bytes `Reader.from_front` needs,
/// from its first 32 bytes or more (`head`).
#[pyfunction]
fn prefix_len(head: &[u8], file_len: u64) -> PyResult<u64> {
    Ok(header::prefix_len(head, file_len)?)
}

/// Parses and validates, without a key, a file read by ranges from its first `prefix_len`
/// bytes and its length.
#[pyfunction]
fn inspect_front(front: &[u8], file_len: u64) -> PyResult<Inspection> {
    Ok(inspection(&header::parse_prefix(front, file_len)?))
}

type TensorIn<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>, bool);

struct Prepared {
    specs: Vec<(String, Dtype, Vec<u64>, usize, usize, bool)>,
    _held: Vec<Held>,
    opts: WriteOptions,
}

/// Who a file is written for, and how: the keyword arguments shared by the write functions.
struct Targets {
    recipients: Vec<Recipient>,
    sign_seed: Option<Zeroizing<[u8; 32]>>,
    log_n: u8,
    chunk_size: u64,
}

fn prepare(
    tensors: Vec<TensorIn<'_>>,
    metadata: Vec<(String, String)>,
    t: Targets,
) -> PyResult<Prepared> {
    let mut specs = Vec::with_capacity(tensors.len());
    let mut held = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data, encrypted) in tensors {
        let dt = Dtype::parse(&dtype)
            .ok_or_else(|| PyValueError::new_err(format!("unknown dtype {dtype:?}")))?;
        let h = hold(&data, false, &format!("the data of tensor {name:?}"))?;
        specs.push((name, dt, shape, h.ptr, h.len, encrypted));
        held.push(h);
    }
    let opts = WriteOptions {
        chunk_size: t.chunk_size,
        metadata,
        recipients: t.recipients,
        log_n: t.log_n,
        sign_seed: t.sign_seed,
    };
    Ok(Prepared {
        specs,
        _held: held,
        opts,
    })
}

impl Prepared {
    fn sources(&self) -> Vec<TensorSource<'_>> {
        self.specs
            .iter()
            .map(|(name, dtype, shape, p, n, enc)| TensorSource {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                // SAFETY: the exports are held in `self._held` for as long as `self` lives.
                data: unsafe { Held::slice(*p, *n) },
                encrypted: *enc,
            })
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn targets(
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    x25519: Option<Vec<Vec<u8>>>,
    rsa_spki: Option<Vec<Vec<u8>>>,
    sign_seed: Option<&[u8]>,
    log_n: u8,
    chunk_size: u64,
) -> PyResult<Targets> {
    Ok(Targets {
        recipients: recipients(
            keys,
            passphrase,
            x25519.unwrap_or_default(),
            rsa_spki.unwrap_or_default(),
        )?,
        sign_seed: seed(sign_seed)?,
        log_n,
        chunk_size,
    })
}

/// Writes an encrypted file atomically. `tensors` is `[(name, dtype, shape, buffer, encrypted)]`.
#[pyfunction]
#[pyo3(signature = (path, tensors, *, metadata, keys, passphrase=None, x25519=None, rsa_spki=None, sign_seed=None, log_n=18, chunk_size=262144, fingerprints=false))]
#[allow(clippy::too_many_arguments)]
fn write_file(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<TensorIn<'_>>,
    metadata: Vec<(String, String)>,
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    x25519: Option<Vec<Vec<u8>>>,
    rsa_spki: Option<Vec<Vec<u8>>>,
    sign_seed: Option<&[u8]>,
    log_n: u8,
    chunk_size: u64,
    fingerprints: bool,
) -> PyResult<u64> {
    let t = targets(
        keys, passphrase, x25519, rsa_spki, sign_seed, log_n, chunk_size,
    )?
    .with_fingerprints(fingerprints)?;
    let prep = prepare(tensors, metadata, t)?;
    let raised = std::sync::Mutex::new(None);
    let stop = || signal_raised(&raised);
    let written =
        py.detach(|| writer::write_file_atomic_until(&path, &prep.sources(), &prep.opts, &stop));
    match written {
        Err(Error::Interrupted) => Err(raised
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| PyKeyboardInterrupt::new_err(()))),
        other => Ok(other?),
    }
}

/// Like `write_file`, returning the file as `bytes`.
#[pyfunction]
#[pyo3(signature = (tensors, *, metadata, keys, passphrase=None, x25519=None, rsa_spki=None, sign_seed=None, log_n=18, chunk_size=262144, fingerprints=false))]
#[allow(clippy::too_many_arguments)]
fn write_bytes<'py>(
    py: Python<'py>,
    tensors: Vec<TensorIn<'py>>,
    metadata: Vec<(String, String)>,
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    x25519: Option<Vec<Vec<u8>>>,
    rsa_spki: Option<Vec<Vec<u8>>>,
    sign_seed: Option<&[u8]>,
    log_n: u8,
    chunk_size: u64,
    fingerprints: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let t = targets(
        keys, passphrase, x25519, rsa_spki, sign_seed, log_n, chunk_size,
    )?
    .with_fingerprints(fingerprints)?;
    let prep = prepare(tensors, metadata, t)?;
    let out = py.detach(|| {
        let mut cur = std::io::Cursor::new(Vec::new());
        writer::write_to(&mut cur, &prep.sources(), &prep.opts).map(|_| cur.into_inner())
    })?;
    // The new bytes object is reachable by no one else until returned, so it is filled with
    // the GIL released.
    PyBytes::new_with(py, out.len(), |dst| {
        py.detach(|| dst.copy_from_slice(&out));
        Ok(())
    })
}

/// Changes who can open a file (opened with one credential) without touching tensor bytes.
/// Returns "in-place" or "rewritten".
///
/// `new_*` are the stanzas to write. With `keep=False` (the default) they replace every
/// current stanza. With `keep=True` the current stanzas stay, except those named by
/// `remove_stanzas` (positions from 0), `remove_keys`, `remove_x25519_identities` and
/// `remove_rsa_pkcs8` (the stanzas these keys open), `remove_x25519` and `remove_rsa_spki`
/// (the stanzas carrying these public keys' fingerprints) and `remove_passphrase`; the new
/// stanzas come after them. `fingerprints=True` makes the new stanzas carry their recipient's
/// fingerprint.
#[pyfunction]
#[pyo3(signature = (path, *, key=None, passphrase=None, x25519=None, rsa_pkcs8=None, file_key=None, new_keys=None, new_passphrase=None, new_x25519=None, new_rsa_spki=None, keep=false, remove_stanzas=None, remove_keys=None, remove_x25519_identities=None, remove_rsa_pkcs8=None, remove_x25519=None, remove_rsa_spki=None, remove_passphrase=false, fingerprints=false, log_n=18, max_scrypt_log_n=18))]
#[allow(clippy::too_many_arguments)]
fn rekey(
    py: Python<'_>,
    path: PathBuf,
    key: Option<&[u8]>,
    passphrase: Option<&str>,
    x25519: Option<&[u8]>,
    rsa_pkcs8: Option<&[u8]>,
    file_key: Option<&[u8]>,
    new_keys: Option<Vec<Vec<u8>>>,
    new_passphrase: Option<&str>,
    new_x25519: Option<Vec<Vec<u8>>>,
    new_rsa_spki: Option<Vec<Vec<u8>>>,
    keep: bool,
    remove_stanzas: Option<Vec<usize>>,
    remove_keys: Option<Vec<Vec<u8>>>,
    remove_x25519_identities: Option<Vec<Vec<u8>>>,
    remove_rsa_pkcs8: Option<Vec<Vec<u8>>>,
    remove_x25519: Option<Vec<Vec<u8>>>,
    remove_rsa_spki: Option<Vec<Vec<u8>>>,
    remove_passphrase: bool,
    fingerprints: bool,
    log_n: u8,
    max_scrypt_log_n: i64,
) -> PyResult<&'static str> {
    let cap = scrypt_cap(max_scrypt_log_n)?;
    let cred = credential(key, passphrase, x25519, rsa_pkcs8, file_key)?;
    let to = fingerprinted(
        recipients(
            new_keys.unwrap_or_default(),
            new_passphrase,
            new_x25519.unwrap_or_default(),
            new_rsa_spki.unwrap_or_default(),
        )?,
        fingerprints,
    )?;
    let mut remove: Vec<Removal> = remove_stanzas
        .unwrap_or_default()
        .into_iter()
        .map(Removal::Index)
        .collect();
    for k in remove_keys.unwrap_or_default() {
        remove.push(Removal::Holder(Credential::key(&k)?));
    }
    for x in remove_x25519_identities.unwrap_or_default() {
        remove.push(Removal::Holder(Credential::x25519(&x)?));
    }
    for r in remove_rsa_pkcs8.unwrap_or_default() {
        remove.push(Removal::Holder(Credential::rsa_pkcs8(&r)?));
    }
    for x in remove_x25519.unwrap_or_default() {
        remove.push(Removal::Recipient(Recipient::x25519(&x)?));
    }
    for r in remove_rsa_spki.unwrap_or_default() {
        remove.push(Removal::Recipient(Recipient::rsa_spki(&r)?));
    }
    if remove_passphrase {
        remove.push(Removal::Passphrase);
    }
    let changes = Changes {
        keep,
        remove: &remove,
        add: &to,
        log_n,
    };
    let (how, _) = py.detach(|| change_stanzas(&path, &cred, &changes, cap))?;
    Ok(match how {
        Rekeyed::InPlace => "in-place",
        Rekeyed::Rewritten => "rewritten",
    })
}

/// `recipients`, each marked to carry its fingerprint when `on` (a passphrase cannot: an
/// error).
fn fingerprinted(recipients: Vec<Recipient>, on: bool) -> PyResult<Vec<Recipient>> {
    if !on {
        return Ok(recipients);
    }
    Ok(recipients
        .into_iter()
        .map(Recipient::with_fingerprint)
        .collect::<Result<Vec<_>, _>>()?)
}

impl Targets {
    /// Makes every stanza of the file carry its recipient's fingerprint when `on`
    /// (`write_file(..., fingerprints=True)`).
    fn with_fingerprints(mut self, on: bool) -> PyResult<Targets> {
        self.recipients = fingerprinted(self.recipients, on)?;
        Ok(self)
    }
}

/// The positions (from 0) of the stanzas of the file at `path` that were made for the holder
/// of this raw key or X25519 or RSA private key, found without a fingerprint and without
/// opening the file (see `keys::stanzas_of`). The file is parsed (format checks) but not
/// authenticated: this only says which stanza is whose.
#[pyfunction]
#[pyo3(signature = (path, *, key=None, x25519=None, rsa_pkcs8=None))]
fn stanzas_of(
    py: Python<'_>,
    path: PathBuf,
    key: Option<&[u8]>,
    x25519: Option<&[u8]>,
    rsa_pkcs8: Option<&[u8]>,
) -> PyResult<Vec<usize>> {
    let cred = credential(key, None, x25519, rsa_pkcs8, None)?;
    let h = py.detach(|| reader::inspect_path(&path))?;
    Ok(py.detach(|| keys::stanzas_of(&h.stanzas, &cred))?)
}

/// `stanzas_of` for a file read by ranges: from its first `prefix_len` bytes and its length.
#[pyfunction]
#[pyo3(signature = (front, file_len, *, key=None, x25519=None, rsa_pkcs8=None))]
fn stanzas_of_front(
    py: Python<'_>,
    front: &[u8],
    file_len: u64,
    key: Option<&[u8]>,
    x25519: Option<&[u8]>,
    rsa_pkcs8: Option<&[u8]>,
) -> PyResult<Vec<usize>> {
    let cred = credential(key, None, x25519, rsa_pkcs8, None)?;
    let h = header::parse_prefix(front, file_len)?;
    Ok(py.detach(|| keys::stanzas_of(&h.stanzas, &cred))?)
}

/// The recipient fingerprint (16 bytes, `spec/FORMAT.md`, "Recipient fingerprints") of one
/// raw key, X25519 public key or RSA public key (DER SubjectPublicKeyInfo).
#[pyfunction]
#[pyo3(signature = (*, key=None, x25519=None, rsa_spki=None))]
fn recipient_fingerprint<'py>(
    py: Python<'py>,
    key: Option<&[u8]>,
    x25519: Option<&[u8]>,
    rsa_spki: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let r = match (key, x25519, rsa_spki) {
        (Some(k), None, None) => Recipient::key(k)?,
        (None, Some(x), None) => Recipient::x25519(x)?,
        (None, None, Some(r)) => Recipient::rsa_spki(r)?,
        _ => {
            return Err(PyValueError::new_err(
                "give exactly one of key=, x25519= or rsa_spki=",
            ))
        }
    };
    let fp = r
        .fingerprint()
        .expect("keys and public keys have a fingerprint");
    Ok(PyBytes::new(py, &fp))
}

/// Sets how tensor bytes are read, for benchmarks: "onepass" (straight out of the map under a
/// read lease, the default) or "copy" (`pread` into the destination, then decrypt there).
#[pyfunction]
fn _set_read_mode(mode: &str) -> PyResult<()> {
    let mode = match mode {
        "onepass" => crate::lease::ReadMode::OnePass,
        "copy" => crate::lease::ReadMode::Copy,
        _ => {
            return Err(PyValueError::new_err(
                "read mode must be \"onepass\" or \"copy\"",
            ))
        }
    };
    crate::lease::set_preferred(mode);
    Ok(())
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", header::VERSION)?;
    m.add_class::<PyReader>()?;
    m.add_function(wrap_pyfunction!(inspect_file, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_front, m)?)?;
    m.add_function(wrap_pyfunction!(prefix_len, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(write_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(rekey, m)?)?;
    m.add_function(wrap_pyfunction!(stanzas_of, m)?)?;
    m.add_function(wrap_pyfunction!(stanzas_of_front, m)?)?;
    m.add_function(wrap_pyfunction!(recipient_fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(_set_read_mode, m)?)?;
    Ok(())
}
