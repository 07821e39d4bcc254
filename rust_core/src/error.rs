//! One error type for the crate; the bindings map each variant to one Python exception.

use std::fmt;

/// Everything that can go wrong. Messages never contain key material.
#[derive(Debug)]
pub enum Error {
    /// The bytes are not a well-formed enctensor v1 file ("format failure"), or the reader
    /// refuses the file by a local policy (the scrypt cost cap, see [`Error::policy`]).
    Format(String),
    /// No stanza opens with the key or passphrase given ("no match").
    WrongKey(String),
    /// The header MAC or a chunk tag failed ("header failure" / "payload failure").
    Integrity(String),
    /// A verification key was given and the publisher signature is missing or invalid (a
    /// kind of integrity failure: "header failure").
    Signature(String),
    /// The caller passed something unusable (bad key length, wrong buffer size, ...).
    InvalidArgument(String),
    /// An operating-system error, with the path or action it concerns.
    Io(std::io::Error, String),
    /// The caller asked the operation to stop (Ctrl-C); nothing was written.
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Starts the message of a policy refusal (see [`Error::policy`]).
const POLICY: &str = "refused by this reader's policy";

impl Error {
    pub(crate) fn format(msg: impl Into<String>) -> Self {
        Error::Format(msg.into())
    }
    /// A refusal by the reader's local policy, reported as a format failure (the file may be
    /// valid: the message says which limit refused it and how to lift it).
    pub(crate) fn policy(msg: impl Into<String>) -> Self {
        Error::Format(format!("{POLICY}: {}", msg.into()))
    }
    pub(crate) fn io(err: std::io::Error, context: impl Into<String>) -> Self {
        Error::Io(err, context.into())
    }
    /// Prefixes the message with a file name or other context.
    pub fn context(self, ctx: &str) -> Self {
        match self {
            Error::Format(m) => Error::Format(format!("{ctx}: {m}")),
            Error::WrongKey(m) => Error::WrongKey(format!("{ctx}: {m}")),
            Error::Integrity(m) => Error::Integrity(format!("{ctx}: {m}")),
            Error::Signature(m) => Error::Signature(format!("{ctx}: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{ctx}: {m}")),
            Error::Io(e, m) => Error::Io(e, format!("{ctx}: {m}")),
            Error::Interrupted => Error::Interrupted,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format(m) if m.contains(POLICY) => write!(f, "{m}"),
            Error::Format(m) => write!(f, "not a valid enctensor file: {m}"),
            Error::WrongKey(m) => write!(f, "{m}"),
            Error::Integrity(m) | Error::Signature(m) => write!(f, "{m}"),
            Error::InvalidArgument(m) => write!(f, "{m}"),
            Error::Io(e, m) => write!(f, "{m}: {e}"),
            Error::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for Error {}
