//! PyO3 bindings: `enctensor._core`. Thin by design: convert arguments, run all byte work with
//! the GIL released, map [`Error`] to the Python exceptions of `enctensor.errors` in one place.

use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::dtype::Dtype;
use crate::error::Error;
use crate::header::{self, Header};
use crate::keys::Credential;
use crate::reader::{self, Reader};
use crate::writer::{self, TensorSource, WriteOptions};

pyo3::import_exception!(enctensor.errors, FormatError);
pyo3::import_exception!(enctensor.errors, WrongKeyError);
pyo3::import_exception!(enctensor.errors, IntegrityError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Format(_) => FormatError::new_err(msg),
            Error::WrongKey(_) => WrongKeyError::new_err(msg),
            Error::Integrity(_) => IntegrityError::new_err(msg),
            Error::InvalidArgument(_) => PyValueError::new_err(msg),
            Error::Io(err, _) => match err.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                std::io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(msg),
                std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
                _ => PyOSError::new_err(msg),
            },
        }
    }
}

fn credential(key: Option<&[u8]>, passphrase: Option<&str>) -> PyResult<Credential> {
    match (key, passphrase) {
        (Some(k), None) => Ok(Credential::key(k)?),
        (None, Some(p)) => Ok(Credential::passphrase(p)?),
        (None, None) => Err(PyValueError::new_err(
            "give a key or a passphrase to open this file",
        )),
        (Some(_), Some(_)) => Err(PyValueError::new_err(
            "give either a key or a passphrase, not both",
        )),
    }
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

/// Everything `inspect` shows: (tensors, metadata, stanza types, chunk size, file length).
type Inspection = (Vec<TensorRow>, Vec<(String, String)>, Vec<String>, u64, u64);

fn inspection(h: &Header) -> Inspection {
    (
        tensor_rows(h),
        h.metadata.clone(),
        h.stanzas.iter().map(|s| s.kind().to_owned()).collect(),
        h.chunk_size,
        h.file_len(),
    )
}

/// An opened and authenticated enctensor file.
#[pyclass(frozen, module = "enctensor._core", name = "Reader")]
struct PyReader {
    inner: Reader,
}

#[pymethods]
impl PyReader {
    #[new]
    #[pyo3(signature = (path, *, key=None, passphrase=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        key: Option<&[u8]>,
        passphrase: Option<&str>,
    ) -> PyResult<Self> {
        let cred = credential(key, passphrase)?;
        let inner = py.detach(|| Reader::open(&path, &cred))?;
        Ok(PyReader { inner })
    }

    #[staticmethod]
    #[pyo3(signature = (data, *, key=None, passphrase=None))]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        key: Option<&[u8]>,
        passphrase: Option<&str>,
    ) -> PyResult<Self> {
        let cred = credential(key, passphrase)?;
        let data = data.to_vec();
        let inner = py.detach(|| Reader::from_bytes(data, &cred))?;
        Ok(PyReader { inner })
    }

    /// `(name, dtype, shape, encrypted, nbytes)` for every tensor, in file order.
    fn tensors(&self) -> Vec<TensorRow> {
        tensor_rows(self.inner.header())
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
        let mut seen = std::collections::HashSet::new();
        if !raw.iter().all(|&(_, p, n)| n == 0 || seen.insert(p)) {
            return Err(PyValueError::new_err("destinations must not share memory"));
        }
        py.detach(|| {
            let mut slices: Vec<(usize, &mut [u8])> = raw
                .iter()
                // SAFETY: every export is held by `held` until `detach` returns; the caller
                // gives a distinct buffer per tensor (same start addresses are refused above).
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

    /// Verifies every chunk tag without keeping any plaintext.
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

type TensorIn<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>, bool);

struct Prepared {
    specs: Vec<(String, Dtype, Vec<u64>, usize, usize, bool)>,
    _held: Vec<Held>,
    opts: WriteOptions,
}

fn prepare(
    tensors: Vec<TensorIn<'_>>,
    metadata: Vec<(String, String)>,
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    log_n: u8,
    chunk_size: u64,
) -> PyResult<Prepared> {
    let mut credentials = keys
        .iter()
        .map(|k| Credential::key(k))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = passphrase {
        credentials.push(Credential::passphrase(p)?);
    }
    let mut specs = Vec::with_capacity(tensors.len());
    let mut held = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data, encrypted) in tensors {
        let dt = Dtype::parse(&dtype)
            .ok_or_else(|| PyValueError::new_err(format!("unknown dtype {dtype:?}")))?;
        let h = hold(&data, false, &format!("the data of tensor {name:?}"))?;
        specs.push((name, dt, shape, h.ptr, h.len, encrypted));
        held.push(h);
    }
    Ok(Prepared {
        specs,
        _held: held,
        opts: WriteOptions {
            chunk_size,
            metadata,
            credentials,
            log_n,
        },
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

/// Writes an encrypted file atomically. `tensors` is `[(name, dtype, shape, buffer, encrypted)]`.
#[pyfunction]
#[pyo3(signature = (path, tensors, *, metadata, keys, passphrase=None, log_n=18, chunk_size=1048576))]
#[allow(clippy::too_many_arguments)]
fn write_file(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<TensorIn<'_>>,
    metadata: Vec<(String, String)>,
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    log_n: u8,
    chunk_size: u64,
) -> PyResult<u64> {
    let prep = prepare(tensors, metadata, keys, passphrase, log_n, chunk_size)?;
    let n = py.detach(|| writer::write_file_atomic(&path, &prep.sources(), &prep.opts))?;
    Ok(n)
}

/// Like `write_file`, returning the file as `bytes`.
#[pyfunction]
#[pyo3(signature = (tensors, *, metadata, keys, passphrase=None, log_n=18, chunk_size=1048576))]
fn write_bytes<'py>(
    py: Python<'py>,
    tensors: Vec<TensorIn<'py>>,
    metadata: Vec<(String, String)>,
    keys: Vec<Vec<u8>>,
    passphrase: Option<&str>,
    log_n: u8,
    chunk_size: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let prep = prepare(tensors, metadata, keys, passphrase, log_n, chunk_size)?;
    let out = py.detach(|| {
        let mut cur = std::io::Cursor::new(Vec::new());
        writer::write_to(&mut cur, &prep.sources(), &prep.opts).map(|_| cur.into_inner())
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", header::VERSION)?;
    m.add_class::<PyReader>()?;
    m.add_function(wrap_pyfunction!(inspect_file, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(write_bytes, m)?)?;
    Ok(())
}
