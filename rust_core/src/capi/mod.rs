//! The C ABI (`include/enctensor.h`, generated from this module by cbindgen), behind the
//! `capi` feature: open a file from a path or from memory with a raw key, an X25519 or RSA
//! identity, a passphrase or a key provider callback, list its tensors and metadata, and
//! decrypt tensors or byte ranges into caller buffers on a pool of the caller's size.
//!
//! Every entry point runs in [`status::guard`] (no panic crosses the ABI), checks every pointer
//! for NULL and every length for overflow, and reports failures as an `enct_status` plus a
//! thread-local message. Handles own their secrets, which are wiped when they are freed.
#![allow(non_camel_case_types)]

mod pool;
mod status;

use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::dtype::Dtype;
use crate::header::{self, Header, Stanza};
use crate::keys::{self, Credential, DEFAULT_MAX_SCRYPT_LOG_N};
use crate::reader::{self, Reader};

use pool::OwnPool;
pub use status::*;
use status::{guard, guard_value, Failure};

/// Length of a file key (what a key provider writes).
pub const ENCT_FILE_KEY_LEN: usize = 32;
/// The most threads a reader's pool may have.
pub const ENCT_MAX_THREADS: u32 = 1024;

/// One stanza of a file, as a key provider sees it: its type and public fields. Pointers are
/// valid only during the callback.
#[repr(C)]
pub struct enct_stanza {
    /// `"key"`, `"scrypt"`, `"x25519"`, `"rsa-oaep"`, or the name of a type this reader does
    /// not know (NUL-terminated; `kind_len` bytes without the NUL).
    pub kind: *const c_char,
    pub kind_len: usize,
    /// The salt of a `key` or `scrypt` stanza (16 bytes), else NULL and 0.
    pub salt: *const u8,
    pub salt_len: usize,
    /// The scrypt cost of a `scrypt` stanza (log2 N), else 0.
    pub log_n: u32,
    /// The ephemeral public key of an `x25519` stanza (32 bytes), else NULL and 0.
    pub share: *const u8,
    pub share_len: usize,
    /// The wrapped file key (80 bytes; for `rsa-oaep`, the RSA ciphertext), else NULL and 0.
    pub body: *const u8,
    pub body_len: usize,
}

/// A key provider: a platform keystore, a TEE or a KMS that unwraps one of the file's stanzas
/// itself. It gets the file's stanzas and writes the 32-byte file key to `file_key`; it
/// returns 0 on success, anything else if it cannot (the open then fails with
/// `ENCT_ERR_KEY_PROVIDER`). Only the header MAC can tell whether the key is right: a wrong
/// one fails with `ENCT_ERR_WRONG_KEY`. It runs on the thread that opens the file and must
/// not unwind (no C++ exception, no longjmp) through the library.
pub type enct_key_provider = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        stanzas: *const enct_stanza,
        count: usize,
        file_key: *mut u8,
    ) -> i32,
>;

/// What opens a file: made by one of the `enct_credential_*` functions, freed (and its secret
/// wiped) by `enct_credential_free`. One credential may open any number of files, from any
/// number of threads at once (a key provider may then be called concurrently).
pub struct enct_credential {
    kind: CredentialKind,
}

enum CredentialKind {
    Ready(Credential),
    Provider {
        provider: unsafe extern "C" fn(*mut c_void, *const enct_stanza, usize, *mut u8) -> i32,
        user_data: *mut c_void,
    },
}

/// Options of `enct_open_path` and `enct_open_memory`. Zero-initialise it (`= {0}`) for the
/// defaults; NULL options mean the defaults too.
#[repr(C)]
pub struct enct_open_options {
    /// NULL, or the publisher's Ed25519 public key (`verify_key_len` = 32): the file must then
    /// carry a valid publisher signature, and every chunk read is checked against the signed
    /// digest table.
    pub verify_key: *const u8,
    pub verify_key_len: usize,
    /// The largest scrypt cost (log2 N, 10 to 20) a passphrase stanza may ask for; 0 for the
    /// default, 18 (256 MiB).
    pub max_scrypt_log_n: u32,
    /// Threads that decrypt for this handle: 0 for all cores (one pool shared by all handles),
    /// n (1 to `ENCT_MAX_THREADS`) for a pool of n threads owned by this handle. (Small reads
    /// run on the calling thread: waking others would cost more than it saves.)
    pub threads: u32,
}

/// A string handed to C: its bytes followed by a NUL.
type NulTerminated = Box<[u8]>;

/// An open, authenticated file. Reading functions may be called from several threads at
/// once; `enct_close` must not race with them.
pub struct enct_reader {
    reader: Reader,
    pool: Option<OwnPool>,
    /// Tensor names, each followed by a NUL.
    names: Vec<NulTerminated>,
    /// Metadata keys and values, each followed by a NUL.
    metadata: Vec<(NulTerminated, NulTerminated)>,
}

/// One tensor of an open file. Pointers are valid until the reader is closed.
#[repr(C)]
pub struct enct_tensor_info {
    /// The name (UTF-8, NUL-terminated; `name_len` bytes without the NUL, which is exact even
    /// if the name holds a NUL itself).
    pub name: *const c_char,
    pub name_len: usize,
    /// The element type as the format names it: `"F32"`, `"BF16"`, `"F8_E4M3"`, `"BOOL"`, ...
    /// (static, NUL-terminated).
    pub dtype: *const c_char,
    /// Bytes per element.
    pub elem_size: usize,
    /// Number of dimensions, and the dimensions (NULL when `ndim` is 0).
    pub ndim: usize,
    pub shape: *const u64,
    /// Size of the tensor's bytes (what a destination must hold).
    pub nbytes: u64,
    /// false for a tensor stored in the clear (still authenticated).
    pub encrypted: bool,
}

// A handle is used from whichever threads the caller likes.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<enct_reader>();
};

// ---- pointer and length checks ---------------------------------------------------------------

/// `len` bytes at `ptr` as a slice; NULL is allowed only for an empty one.
///
/// # Safety
/// If `ptr` is not NULL and `len` is not 0, `ptr` must point to `len` readable bytes that
/// stay valid and unmodified for `'a`.
unsafe fn input<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    check_span(ptr as usize, len, what)?;
    // SAFETY: not NULL, the span does not wrap or exceed isize::MAX (check_span), and the
    // caller guarantees `len` readable bytes at `ptr` for 'a.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` writable bytes at `ptr` as a slice; NULL is allowed only for an empty one.
///
/// # Safety
/// If `ptr` is not NULL and `len` is not 0, `ptr` must point to `len` writable bytes that
/// nothing else accesses during `'a`.
unsafe fn output<'a>(ptr: *mut c_void, len: usize, what: &str) -> Result<&'a mut [u8], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_span(ptr as usize, len, what)?;
    // SAFETY: not NULL, the span does not wrap or exceed isize::MAX (check_span), and the
    // caller guarantees `len` writable bytes at `ptr`, used by nothing else, for 'a.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) })
}

/// A non-empty span must start at a non-NULL address, fit in `isize::MAX` bytes (the limit of
/// a Rust slice) and not wrap around the address space.
fn check_span(addr: usize, len: usize, what: &str) -> Result<(), Failure> {
    if addr == 0 {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    if len > isize::MAX as usize || addr.checked_add(len).is_none() {
        return Err(Failure::invalid(format!(
            "{what}: a length of {len} bytes is impossible at this address"
        )));
    }
    Ok(())
}

/// The object behind a handle argument.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` made by this library.
unsafe fn object<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or points to a live T.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// Where a result goes; it must not be NULL.
///
/// # Safety
/// `ptr` must be NULL or valid for writing a `T`.
unsafe fn slot<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for writes of a T; a T is plain
    // data here (pointers, integers), so viewing the uninitialised slot as one is sound.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// A NUL-terminated string argument.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string valid for `'a`.
unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a CStr, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller guarantees a NUL-terminated string valid for 'a.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// `bytes` followed by a NUL, for strings handed to C.
fn nul_terminated(bytes: &[u8]) -> NulTerminated {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.extend_from_slice(bytes);
    v.push(0);
    v.into_boxed_slice()
}

fn dtype_name(d: Dtype) -> *const c_char {
    static NAMES: OnceLock<Vec<CString>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        Dtype::ALL
            .iter()
            .map(|d| CString::new(d.name()).expect("dtype names have no NUL"))
            .collect()
    });
    let i = Dtype::ALL
        .iter()
        .position(|x| *x == d)
        .expect("every dtype is in ALL");
    names[i].as_ptr()
}

// ---- credentials -----------------------------------------------------------------------------

fn new_credential(out: &mut *mut enct_credential, kind: CredentialKind) {
    *out = Box::into_raw(Box::new(enct_credential { kind }));
}

/// The body of the constructors that take bytes: `len` bytes at `ptr` (named `what` in
/// messages) made into a credential by `make`, stored at `out`.
///
/// # Safety
/// `ptr` must point to `len` readable bytes; `out` must be NULL or valid for writing a pointer.
unsafe fn credential_from_bytes(
    ptr: *const u8,
    len: usize,
    what: &str,
    out: *mut *mut enct_credential,
    make: impl FnOnce(&[u8]) -> Result<Credential, Failure>,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { slot(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
        let bytes = unsafe { input(ptr, len, what) }?;
        new_credential(out, CredentialKind::Ready(make(bytes)?));
        Ok(())
    })
}

/// A credential from a raw 32-byte key (`enctensor keygen`). The bytes are copied.
///
/// # Safety
/// `key` must point to `key_len` readable bytes; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_key(
    key: *const u8,
    key_len: usize,
    out: *mut *mut enct_credential,
) -> enct_status {
    // SAFETY: the caller's guarantees are those credential_from_bytes needs.
    unsafe { credential_from_bytes(key, key_len, "key", out, |b| Ok(Credential::key(b)?)) }
}

/// A credential from an X25519 identity: the 32-byte private key (RFC 7748). The bytes are
/// copied.
///
/// # Safety
/// `private_key` must point to `len` readable bytes; `out` must be valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_x25519(
    private_key: *const u8,
    len: usize,
    out: *mut *mut enct_credential,
) -> enct_status {
    // SAFETY: the caller's guarantees are those credential_from_bytes needs.
    unsafe {
        credential_from_bytes(private_key, len, "private_key", out, |b| {
            Ok(Credential::x25519(b)?)
        })
    }
}

/// A credential from an RSA identity: the private key as unencrypted PKCS #8 DER (2048 to
/// 4096 bits).
///
/// # Safety
/// `der` must point to `len` readable bytes; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_rsa_pkcs8(
    der: *const u8,
    len: usize,
    out: *mut *mut enct_credential,
) -> enct_status {
    // SAFETY: the caller's guarantees are those credential_from_bytes needs.
    unsafe { credential_from_bytes(der, len, "der", out, |b| Ok(Credential::rsa_pkcs8(b)?)) }
}

/// A credential from a passphrase: `len` bytes of UTF-8 (no NUL needed). The bytes are
/// copied.
///
/// # Safety
/// `passphrase` must point to `len` readable bytes; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_passphrase(
    passphrase: *const c_char,
    len: usize,
    out: *mut *mut enct_credential,
) -> enct_status {
    let make = |bytes: &[u8]| {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            Failure::invalid("the passphrase is not valid UTF-8 (its value is not shown)")
        })?;
        Ok(Credential::passphrase(text)?)
    };
    // SAFETY: the caller's guarantees are those credential_from_bytes needs.
    unsafe { credential_from_bytes(passphrase.cast::<u8>(), len, "passphrase", out, make) }
}

/// A credential that asks `provider` for the file key each time a file is opened with it
/// (after the file's structure is checked, before its header is authenticated). `user_data`
/// is passed to it as is.
///
/// # Safety
/// `provider` must be safe to call as documented at `enct_key_provider`, with `user_data`,
/// for as long as the credential is used; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_provider(
    provider: enct_key_provider,
    user_data: *mut c_void,
    out: *mut *mut enct_credential,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { slot(out, "out") }?;
        *out = std::ptr::null_mut();
        let provider = provider.ok_or_else(|| Failure::invalid("provider is NULL"))?;
        new_credential(
            out,
            CredentialKind::Provider {
                provider,
                user_data,
            },
        );
        Ok(())
    })
}

/// Frees a credential and wipes its secret. NULL is ignored.
///
/// # Safety
/// `credential` must be NULL or a credential from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn enct_credential_free(credential: *mut enct_credential) {
    guard_value((), || {
        if !credential.is_null() {
            // SAFETY: made by Box::into_raw in new_credential and, per the caller, not freed
            // before. Dropping it wipes the key (Zeroizing) or frees the RSA key.
            drop(unsafe { Box::from_raw(credential) });
        }
    });
}

// ---- opening -----------------------------------------------------------------------------------

/// Where a file comes from.
enum Source<'a> {
    Path(&'a Path),
    Memory(Vec<u8>),
}

/// Checked options: the verification key, the scrypt cap, the pool size.
struct Options<'a> {
    verify_key: Option<&'a [u8]>,
    max_scrypt_log_n: u8,
    threads: u32,
}

/// # Safety
/// `options` must be NULL or point to a valid `enct_open_options` whose `verify_key` (if not
/// NULL) points to `verify_key_len` readable bytes, all valid for `'a`.
unsafe fn options<'a>(options: *const enct_open_options) -> Result<Options<'a>, Failure> {
    // SAFETY: per the caller, NULL or a valid enct_open_options.
    let Some(o) = (unsafe { options.as_ref() }) else {
        return Ok(Options {
            verify_key: None,
            max_scrypt_log_n: DEFAULT_MAX_SCRYPT_LOG_N,
            threads: 0,
        });
    };
    let verify_key = if o.verify_key.is_null() {
        if o.verify_key_len != 0 {
            return Err(Failure::invalid(
                "options.verify_key is NULL but options.verify_key_len is not 0",
            ));
        }
        None
    } else {
        // SAFETY: per the caller, verify_key_len readable bytes at verify_key.
        Some(unsafe { input(o.verify_key, o.verify_key_len, "options.verify_key") }?)
    };
    let max_scrypt_log_n = match o.max_scrypt_log_n {
        0 => DEFAULT_MAX_SCRYPT_LOG_N,
        n => {
            let n = u8::try_from(n).map_err(|_| {
                Failure::invalid(format!(
                    "options.max_scrypt_log_n must be between 10 and 20 (or 0 for the default), got {n}"
                ))
            })?;
            keys::check_max_scrypt_log_n(n)?;
            n
        }
    };
    if o.threads > ENCT_MAX_THREADS {
        return Err(Failure::invalid(format!(
            "options.threads must be at most {ENCT_MAX_THREADS} (0 for all cores), got {}",
            o.threads
        )));
    }
    Ok(Options {
        verify_key,
        max_scrypt_log_n,
        threads: o.threads,
    })
}

/// Asks the provider for the file key of a file whose (unauthenticated) header is `header`.
fn provider_key(
    provider: unsafe extern "C" fn(*mut c_void, *const enct_stanza, usize, *mut u8) -> i32,
    user_data: *mut c_void,
    header: &Header,
) -> Result<Credential, Failure> {
    let types: Vec<NulTerminated> = header
        .stanzas
        .iter()
        .map(|s| nul_terminated(s.kind().as_bytes()))
        .collect();
    let empty = (std::ptr::null(), 0);
    let stanzas: Vec<enct_stanza> = header
        .stanzas
        .iter()
        .zip(&types)
        .map(|(s, t)| {
            let (salt, log_n, share, body) = match s {
                Stanza::Key { salt, body, .. } => {
                    ((salt.as_ptr(), salt.len()), 0, empty, body as &[u8])
                }
                Stanza::Scrypt { salt, log_n, body } => (
                    (salt.as_ptr(), salt.len()),
                    u32::from(*log_n),
                    empty,
                    body as &[u8],
                ),
                Stanza::X25519 { share, body, .. } => {
                    (empty, 0, (share.as_ptr(), share.len()), body as &[u8])
                }
                Stanza::RsaOaep { body, .. } => (empty, 0, empty, body.as_slice()),
                Stanza::Unknown { .. } => (empty, 0, empty, &[] as &[u8]),
            };
            enct_stanza {
                kind: t.as_ptr().cast::<c_char>(),
                kind_len: t.len() - 1,
                salt: salt.0,
                salt_len: salt.1,
                log_n,
                share: share.0,
                share_len: share.1,
                body: if body.is_empty() {
                    std::ptr::null()
                } else {
                    body.as_ptr()
                },
                body_len: body.len(),
            }
        })
        .collect();
    let mut file_key = Zeroizing::new([0u8; ENCT_FILE_KEY_LEN]);
    // SAFETY: `stanzas` (and the type names and header fields it points to) outlive the call;
    // `file_key` is ENCT_FILE_KEY_LEN writable bytes; the caller of enct_credential_provider
    // guaranteed that the provider may be called with `user_data`.
    let rc = unsafe {
        provider(
            user_data,
            stanzas.as_ptr(),
            stanzas.len(),
            file_key.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Failure::new(
            ENCT_ERR_KEY_PROVIDER,
            format!("the key provider could not give a file key (it returned {rc})"),
        ));
    }
    Ok(Credential::file_key(&file_key[..])?)
}

/// Opens and authenticates `source`; the body of `enct_open_path` and `enct_open_memory`.
fn open(
    source: Source<'_>,
    credential: &enct_credential,
    opts: &Options<'_>,
    out: &mut *mut enct_reader,
) -> Result<(), Failure> {
    let asked;
    let cred = match &credential.kind {
        CredentialKind::Ready(c) => c,
        CredentialKind::Provider {
            provider,
            user_data,
        } => {
            // As Python's key providers: the stanzas of the checked (not yet authenticated)
            // header, then the file is opened with the file key the provider gives.
            let header = match &source {
                Source::Path(p) => reader::inspect_path(p)?,
                Source::Memory(bytes) => {
                    header::parse_file(bytes).map_err(|e| e.context("<bytes>"))?
                }
            };
            // Refused files are refused before the keystore is asked.
            keys::check_scrypt_policy(&header.stanzas, opts.max_scrypt_log_n)?;
            asked = provider_key(*provider, *user_data, &header)?;
            &asked
        }
    };
    let reader = match source {
        Source::Path(p) => Reader::open(p, cred, opts.verify_key, opts.max_scrypt_log_n)?,
        Source::Memory(bytes) => {
            Reader::from_bytes(bytes, cred, opts.verify_key, opts.max_scrypt_log_n)?
        }
    };
    let pool =
        match opts.threads {
            0 => None,
            n => Some(OwnPool::new(n as usize).map_err(|e| {
                Failure::io(&e, format!("cannot start {n} decryption threads: {e}"))
            })?),
        };
    let h = reader.header();
    let names = h
        .tensors
        .iter()
        .map(|t| nul_terminated(t.name.as_bytes()))
        .collect();
    let metadata = h
        .metadata
        .iter()
        .map(|(k, v)| (nul_terminated(k.as_bytes()), nul_terminated(v.as_bytes())))
        .collect();
    *out = Box::into_raw(Box::new(enct_reader {
        reader,
        pool,
        names,
        metadata,
    }));
    Ok(())
}

/// Opens the file at `path` (NUL-terminated, in the file system's encoding), unwraps its file
/// key with `credential`, and authenticates its header (and, with `options->verify_key`, its
/// publisher signature). The file is mapped, and tensor bytes are read with `pread` when
/// asked for. On success `*out` is a reader to close with `enct_close`; on failure it is NULL.
///
/// # Safety
/// `path` must be a NUL-terminated string; `credential` a live credential; `options` NULL or
/// valid (see `enct_open_options`); `out` valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn enct_open_path(
    path: *const c_char,
    credential: *const enct_credential,
    options: *const enct_open_options,
    out: *mut *mut enct_reader,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { slot(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees a NUL-terminated path.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: the caller guarantees a live credential or NULL.
        let credential = unsafe { object(credential, "credential") }?;
        // SAFETY: the caller guarantees valid options or NULL.
        let opts = unsafe { self::options(options) }?;
        let path = Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
        open(Source::Path(path), credential, &opts, out)
    })
}

/// Like `enct_open_path`, for a file held in memory (an asset of an app bundle): the `len`
/// bytes at `data` are copied, so the caller may free them as soon as this returns. (For a
/// large file on disk, `enct_open_path` avoids the copy.)
///
/// # Safety
/// `data` must point to `len` readable bytes; the other arguments as for `enct_open_path`.
#[no_mangle]
pub unsafe extern "C" fn enct_open_memory(
    data: *const u8,
    len: usize,
    credential: *const enct_credential,
    options: *const enct_open_options,
    out: *mut *mut enct_reader,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees `out` is NULL or writable.
        let out = unsafe { slot(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller guarantees `len` readable bytes at `data`.
        let bytes = unsafe { input(data, len, "data") }?;
        // SAFETY: the caller guarantees a live credential or NULL.
        let credential = unsafe { object(credential, "credential") }?;
        // SAFETY: the caller guarantees valid options or NULL.
        let opts = unsafe { self::options(options) }?;
        open(Source::Memory(bytes.to_vec()), credential, &opts, out)
    })
}

/// Closes a reader: unmaps the file, wipes its file key, and stops its threads, which have
/// ended when this returns (so the library may be unloaded next). NULL is ignored.
///
/// # Safety
/// `reader` must be NULL or a reader from this library not closed before, and no other thread
/// may be using it.
#[no_mangle]
pub unsafe extern "C" fn enct_close(reader: *mut enct_reader) {
    guard_value((), || {
        if !reader.is_null() {
            // SAFETY: made by Box::into_raw in open and, per the caller, not closed before
            // nor in use. Dropping the Reader wipes the file key (Zeroizing).
            drop(unsafe { Box::from_raw(reader) });
        }
    });
}

// ---- what is in the file -----------------------------------------------------------------------

impl enct_reader {
    fn check_index(&self, index: usize) -> Result<(), Failure> {
        let n = self.names.len();
        if index >= n {
            return Err(Failure::invalid(format!(
                "tensor index {index} is out of range: {} has {n} tensors",
                self.reader.name()
            )));
        }
        Ok(())
    }

    /// Runs `work` on this handle's pool, or on the shared one.
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

/// The number of tensors in the file.
///
/// # Safety
/// `reader` must be a live reader; `count` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_tensor_count(
    reader: *const enct_reader,
    count: *mut usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `count` is NULL or writable.
        *unsafe { slot(count, "count") }? = r.names.len();
        Ok(())
    })
}

/// Describes tensor `index` (0 to count - 1, in file order).
///
/// # Safety
/// `reader` must be a live reader; `info` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_describe_tensor(
    reader: *const enct_reader,
    index: usize,
    info: *mut enct_tensor_info,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `info` is NULL or writable.
        let info = unsafe { slot(info, "info") }?;
        r.check_index(index)?;
        let t = &r.reader.header().tensors[index];
        let name = &r.names[index];
        *info = enct_tensor_info {
            name: name.as_ptr().cast::<c_char>(),
            name_len: name.len() - 1,
            dtype: dtype_name(t.dtype),
            elem_size: t.dtype.size() as usize,
            ndim: t.shape.len(),
            shape: if t.shape.is_empty() {
                std::ptr::null()
            } else {
                t.shape.as_ptr()
            },
            nbytes: t.nbytes(),
            encrypted: t.encrypted,
        };
        Ok(())
    })
}

/// The index of the tensor named `name` (NUL-terminated); `ENCT_ERR_NOT_FOUND` if there is
/// none.
///
/// # Safety
/// `reader` must be a live reader; `name` a NUL-terminated string; `index` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_find_tensor(
    reader: *const enct_reader,
    name: *const c_char,
    index: *mut usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees a NUL-terminated string or NULL.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: the caller guarantees `index` is NULL or writable.
        let index = unsafe { slot(index, "index") }?;
        let wanted = name.to_bytes_with_nul();
        match r.names.iter().position(|n| &n[..] == wanted) {
            Some(i) => {
                *index = i;
                Ok(())
            }
            None => Err(Failure::new(
                ENCT_ERR_NOT_FOUND,
                format!(
                    "{}: no tensor named {:?}",
                    r.reader.name(),
                    name.to_string_lossy()
                ),
            )),
        }
    })
}

/// The number of metadata entries.
///
/// # Safety
/// `reader` must be a live reader; `count` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_metadata_count(
    reader: *const enct_reader,
    count: *mut usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `count` is NULL or writable.
        *unsafe { slot(count, "count") }? = r.metadata.len();
        Ok(())
    })
}

/// Metadata entry `index` (in file order): its key and value (UTF-8, NUL-terminated, valid
/// until the reader is closed). `key_len` and `value_len` (bytes without the NUL) may be NULL.
///
/// # Safety
/// `reader` must be a live reader; `key` and `value` valid for writing a pointer; `key_len`
/// and `value_len` NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_metadata_entry(
    reader: *const enct_reader,
    index: usize,
    key: *mut *const c_char,
    key_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `key` is NULL or writable.
        let key = unsafe { slot(key, "key") }?;
        // SAFETY: the caller guarantees `value` is NULL or writable.
        let value = unsafe { slot(value, "value") }?;
        let Some((k, v)) = r.metadata.get(index) else {
            return Err(Failure::invalid(format!(
                "metadata index {index} is out of range: {} has {} entries",
                r.reader.name(),
                r.metadata.len()
            )));
        };
        *key = k.as_ptr().cast::<c_char>();
        *value = v.as_ptr().cast::<c_char>();
        // SAFETY: the caller guarantees `key_len` is NULL or writable.
        if let Some(len) = unsafe { key_len.as_mut() } {
            *len = k.len() - 1;
        }
        // SAFETY: the caller guarantees `value_len` is NULL or writable.
        if let Some(len) = unsafe { value_len.as_mut() } {
            *len = v.len() - 1;
        }
        Ok(())
    })
}

/// The value of metadata entry `key` (NUL-terminated); `ENCT_ERR_NOT_FOUND` if there is none.
/// `value_len` may be NULL.
///
/// # Safety
/// `reader` must be a live reader; `key` a NUL-terminated string; `value` valid for writing a
/// pointer; `value_len` NULL or valid for writing.
#[no_mangle]
pub unsafe extern "C" fn enct_metadata_get(
    reader: *const enct_reader,
    key: *const c_char,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees a NUL-terminated string or NULL.
        let key = unsafe { c_str(key, "key") }?;
        // SAFETY: the caller guarantees `value` is NULL or writable.
        let value = unsafe { slot(value, "value") }?;
        let wanted = key.to_bytes_with_nul();
        let Some((_, v)) = r.metadata.iter().find(|(k, _)| &k[..] == wanted) else {
            return Err(Failure::new(
                ENCT_ERR_NOT_FOUND,
                format!(
                    "{}: no metadata entry {:?}",
                    r.reader.name(),
                    key.to_string_lossy()
                ),
            ));
        };
        *value = v.as_ptr().cast::<c_char>();
        // SAFETY: the caller guarantees `value_len` is NULL or writable.
        if let Some(len) = unsafe { value_len.as_mut() } {
            *len = v.len() - 1;
        }
        Ok(())
    })
}

// ---- decrypting --------------------------------------------------------------------------------

/// Decrypts and verifies tensor `index` into `dst`, which must be exactly the tensor's
/// `nbytes` (any alignment; e.g. the data pointer of a `DLTensor`). On failure `dst` is
/// zeroed: no unauthenticated byte is ever left in it.
///
/// # Safety
/// `reader` must be a live reader; `dst` must point to `dst_len` writable bytes that nothing
/// else uses during the call.
#[no_mangle]
pub unsafe extern "C" fn enct_read_tensor(
    reader: *const enct_reader,
    index: usize,
    dst: *mut c_void,
    dst_len: usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `dst_len` writable bytes at `dst`, used by nothing else.
        let out = unsafe { output(dst, dst_len, "dst") }?;
        r.check_index(index)?;
        r.run(|| r.reader.read_into(index, out))?;
        Ok(())
    })
}

/// Decrypts bytes `[offset, offset + len)` of tensor `index` into `dst`, verifying every chunk
/// that covers them (and only those). On failure `dst` is zeroed.
///
/// # Safety
/// As for `enct_read_tensor`, with `len` writable bytes at `dst`.
#[no_mangle]
pub unsafe extern "C" fn enct_read_range(
    reader: *const enct_reader,
    index: usize,
    offset: u64,
    dst: *mut c_void,
    len: usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // SAFETY: the caller guarantees `len` writable bytes at `dst`, used by nothing else.
        let out = unsafe { output(dst, len, "dst") }?;
        r.check_index(index)?;
        r.run(|| r.reader.read_range_into(index, offset, out))?;
        Ok(())
    })
}

/// Decrypts `count` whole tensors at once, all their chunks in parallel: tensor `indices[i]`
/// into `dsts[i]`, which holds `lens[i]` bytes (exactly its `nbytes`). The destinations must
/// not overlap. On any failure every destination is zeroed.
///
/// # Safety
/// `reader` must be a live reader; `indices`, `dsts` and `lens` must each point to `count`
/// readable elements; each `dsts[i]` to `lens[i]` writable bytes that nothing else uses
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn enct_read_tensors(
    reader: *const enct_reader,
    indices: *const usize,
    dsts: *const *mut c_void,
    lens: *const usize,
    count: usize,
) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        // The three arrays: not NULL, and `count` elements that fit the address space.
        for (addr, size, what) in [
            (indices as usize, size_of::<usize>(), "indices"),
            (dsts as usize, size_of::<*mut c_void>(), "dsts"),
            (lens as usize, size_of::<usize>(), "lens"),
        ] {
            if count != 0 {
                let bytes = count
                    .checked_mul(size)
                    .ok_or_else(|| Failure::invalid(format!("count {count} is impossible")))?;
                check_span(addr, bytes, what)?;
            }
        }
        let mut raw: Vec<(usize, *mut c_void, usize)> = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: i < count, and the caller guarantees `count` readable elements at each
            // array (checked above not to be NULL nor to wrap); read_unaligned because C does
            // not promise Rust's alignment for them.
            let job = unsafe {
                (
                    indices.add(i).read_unaligned(),
                    dsts.add(i).read_unaligned(),
                    lens.add(i).read_unaligned(),
                )
            };
            r.check_index(job.0)?;
            if job.2 != 0 {
                check_span(job.1 as usize, job.2, &format!("dsts[{i}]"))?;
            }
            raw.push(job);
        }
        // No two destinations may overlap: checked before any slice is made of them.
        let mut spans: Vec<(usize, usize)> = raw
            .iter()
            .filter(|j| j.2 != 0)
            .map(|j| (j.1 as usize, j.2))
            .collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Failure::invalid(format!(
                "destinations overlap: {} bytes at {:#x} and {} bytes at {:#x}",
                w[0].1, w[0].0, w[1].1, w[1].0
            )));
        }
        let mut jobs: Vec<(usize, &mut [u8])> = Vec::with_capacity(count);
        for (index, dst, len) in raw {
            // SAFETY: the caller guarantees `len` writable bytes at `dst`, used by nothing
            // else during the call; the destinations do not overlap one another (above).
            jobs.push((index, unsafe { output(dst, len, "dst") }?));
        }
        r.run(|| r.reader.read_many(&mut jobs))?;
        Ok(())
    })
}

/// Verifies every chunk of every tensor without handing out any plaintext (a full integrity
/// check, for example after download).
///
/// # Safety
/// `reader` must be a live reader.
#[no_mangle]
pub unsafe extern "C" fn enct_verify_all(reader: *const enct_reader) -> enct_status {
    guard(|| {
        // SAFETY: the caller guarantees a live reader or NULL.
        let r = unsafe { object(reader, "reader") }?;
        r.run(|| r.reader.verify_all())?;
        Ok(())
    })
}

/// The library version (static, NUL-terminated), e.g. `"0.1.0"`.
#[no_mangle]
pub extern "C" fn enct_version() -> *const c_char {
    guard_value(std::ptr::null(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0")
            .as_ptr()
            .cast::<c_char>()
    })
}
