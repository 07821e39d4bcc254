//! Status codes of the C ABI, the thread-local error message, and the guard every entry point
//! runs its body in (no panic crosses the ABI).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::Error;

/// What every fallible function returns: `ENCT_OK` (0) or one of the `ENCT_ERR_*` codes.
pub type enct_status = i32;

/// Success.
pub const ENCT_OK: enct_status = 0;
/// The bytes are not a well-formed enctensor file, or the reader's policy refuses it (the
/// scrypt cost cap). Python: `enctensor.FormatError`.
pub const ENCT_ERR_FORMAT: enct_status = 1;
/// No stanza of the file opens with the credential given (wrong key, passphrase or identity;
/// or a key provider's file key that does not authenticate the header). Python:
/// `enctensor.WrongKeyError`.
pub const ENCT_ERR_WRONG_KEY: enct_status = 2;
/// The header MAC, a chunk tag or a chunk digest failed: the file was modified or corrupted.
/// Python: `enctensor.IntegrityError`.
pub const ENCT_ERR_INTEGRITY: enct_status = 3;
/// A verification key was given and the publisher signature is missing or invalid (or the
/// key is unusable). Python: `enctensor.SignatureError`.
pub const ENCT_ERR_SIGNATURE: enct_status = 4;
/// No tensor (or metadata entry) of that name. Python: `enctensor.TensorNotFoundError`
/// (`KeyError` for metadata).
pub const ENCT_ERR_NOT_FOUND: enct_status = 5;
/// The caller passed something unusable: a NULL pointer, a key of the wrong length, a
/// destination of the wrong size, a range outside the tensor, overlapping destinations.
/// Python: `ValueError` / `TypeError`.
pub const ENCT_ERR_INVALID_ARGUMENT: enct_status = 6;
/// An operating-system error (the file cannot be opened, mapped or read; threads cannot be
/// started); `enct_last_os_error` gives its errno. Python: `OSError`.
pub const ENCT_ERR_IO: enct_status = 7;
/// The key provider callback returned non-zero: it could not give a file key.
pub const ENCT_ERR_KEY_PROVIDER: enct_status = 8;
/// A bug in enctensor: a panic was caught at the ABI boundary. The handle it concerned may
/// still be closed.
pub const ENCT_ERR_PANIC: enct_status = 9;

/// Every status and its name, for `enct_status_name`.
const NAMES: [(enct_status, &std::ffi::CStr); 10] = [
    (ENCT_OK, c"ENCT_OK"),
    (ENCT_ERR_FORMAT, c"ENCT_ERR_FORMAT"),
    (ENCT_ERR_WRONG_KEY, c"ENCT_ERR_WRONG_KEY"),
    (ENCT_ERR_INTEGRITY, c"ENCT_ERR_INTEGRITY"),
    (ENCT_ERR_SIGNATURE, c"ENCT_ERR_SIGNATURE"),
    (ENCT_ERR_NOT_FOUND, c"ENCT_ERR_NOT_FOUND"),
    (ENCT_ERR_INVALID_ARGUMENT, c"ENCT_ERR_INVALID_ARGUMENT"),
    (ENCT_ERR_IO, c"ENCT_ERR_IO"),
    (ENCT_ERR_KEY_PROVIDER, c"ENCT_ERR_KEY_PROVIDER"),
    (ENCT_ERR_PANIC, c"ENCT_ERR_PANIC"),
];

thread_local! {
    /// The message of the last failure on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// The errno of the last failure on this thread, if it was an operating-system error.
    static LAST_OS_ERROR: Cell<i32> = const { Cell::new(0) };
}

/// A failure on its way to the caller: a status, a message (never key material) and, for
/// `ENCT_ERR_IO`, an errno.
pub(crate) struct Failure {
    status: enct_status,
    message: String,
    os_error: i32,
}

impl Failure {
    pub(crate) fn new(status: enct_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            os_error: 0,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(ENCT_ERR_INVALID_ARGUMENT, message)
    }

    pub(crate) fn io(err: &std::io::Error, message: impl Into<String>) -> Self {
        Failure {
            status: ENCT_ERR_IO,
            message: message.into(),
            os_error: err.raw_os_error().unwrap_or(0),
        }
    }

    fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message");
        Failure::new(
            ENCT_ERR_PANIC,
            format!("internal error in enctensor (a bug, please report it): {what}"),
        )
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Format(_) => Failure::new(ENCT_ERR_FORMAT, message),
            Error::WrongKey(_) => Failure::new(ENCT_ERR_WRONG_KEY, message),
            Error::Integrity(_) => Failure::new(ENCT_ERR_INTEGRITY, message),
            Error::Signature(_) => Failure::new(ENCT_ERR_SIGNATURE, message),
            Error::InvalidArgument(_) => Failure::invalid(message),
            Error::Io(err, _) => Failure::io(&err, message),
            // Only writes stop on request, and the C ABI has none.
            Error::Interrupted => Failure::invalid(message),
        }
    }
}

/// Stores `failure` as this thread's last error and returns its status.
fn record(failure: Failure) -> enct_status {
    // A message is text for people: an interior NUL (from a tensor name) is shown escaped
    // rather than cutting the message short.
    let text = failure.message.replace('\0', "\\0");
    let message = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = message);
    LAST_OS_ERROR.with(|e| e.set(failure.os_error));
    failure.status
}

/// Runs the body of an entry point: its failure, or a panic, becomes a status and this
/// thread's last error; nothing unwinds into the caller.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> enct_status {
    // AssertUnwindSafe: after a panic the entry point returns ENCT_ERR_PANIC; the only state
    // a body mutates is the caller's output buffers (zeroed by the reader on failure) and the
    // handle it creates (not handed out when the body did not finish).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ENCT_OK,
        Ok(Err(failure)) => record(failure),
        Err(payload) => record(Failure::panic(payload.as_ref())),
    }
}

/// Like [`guard`] for the functions that cannot fail but return a value: `fallback` if the
/// body panicked.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        record(Failure::panic(payload.as_ref()));
        fallback
    })
}

/// The name of a status code (`"ENCT_ERR_FORMAT"`), or `"ENCT_ERR_UNKNOWN"` for a code this
/// library does not define. The string is static.
#[no_mangle]
pub extern "C" fn enct_status_name(status: enct_status) -> *const c_char {
    guard_value(c"ENCT_ERR_UNKNOWN".as_ptr(), || {
        NAMES
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(c"ENCT_ERR_UNKNOWN".as_ptr(), |(_, name)| name.as_ptr())
    })
}

/// The message of the last failure on the calling thread (UTF-8, NUL-terminated; `""` if
/// nothing failed yet). It names the file and what is wrong, never a key or passphrase. The
/// pointer is valid until the next failing call on this thread; successful calls leave it
/// unchanged.
#[no_mangle]
pub extern "C" fn enct_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), || LAST_ERROR.with(|m| m.borrow().as_ptr()))
}

/// The errno of the last failure on the calling thread if it was `ENCT_ERR_IO` from the
/// operating system (`ENOENT`, `EACCES`, ...), else 0.
#[no_mangle]
pub extern "C" fn enct_last_os_error() -> i32 {
    guard_value(0, || LAST_OS_ERROR.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: enct_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(enct_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, ENCT_ERR_PANIC);
        assert!(last_error().contains("internal error") && last_error().contains("boom"));
        let value = guard_value(7, || -> i32 { panic!("{}", String::from("formatted")) });
        assert_eq!(value, 7);
        assert!(last_error().contains("formatted"));
    }

    #[test]
    fn errors_map_to_their_codes_and_errno() {
        let cases = [
            (Error::Format("x".into()), ENCT_ERR_FORMAT),
            (Error::WrongKey("x".into()), ENCT_ERR_WRONG_KEY),
            (Error::Integrity("x".into()), ENCT_ERR_INTEGRITY),
            (Error::Signature("x".into()), ENCT_ERR_SIGNATURE),
            (
                Error::InvalidArgument("x".into()),
                ENCT_ERR_INVALID_ARGUMENT,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(guard(|| Err(err.into())), code);
            assert_eq!(enct_last_os_error(), 0);
        }
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            guard(|| Err(Error::Io(io, "cannot open f".into()).into())),
            ENCT_ERR_IO
        );
        assert_eq!(enct_last_os_error(), libc::ENOENT);
        assert!(last_error().starts_with("cannot open f"));
    }

    #[test]
    fn interior_nul_is_escaped_and_names_are_complete() {
        assert_eq!(
            guard(|| Err(Failure::new(ENCT_ERR_NOT_FOUND, "a\0b"))),
            ENCT_ERR_NOT_FOUND
        );
        assert_eq!(last_error(), "a\\0b");
        for (code, name) in NAMES {
            // SAFETY: enct_status_name returns a static NUL-terminated string.
            assert_eq!(unsafe { CStr::from_ptr(enct_status_name(code)) }, name);
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(enct_status_name(-1)) };
        assert_eq!(unknown, c"ENCT_ERR_UNKNOWN");
    }
}
