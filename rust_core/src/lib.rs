//! enctensor core: parse, verify, decrypt and write enctensor v1 files (`spec/FORMAT.md`).
//!
//! The crate is plain Rust; the PyO3 bindings behind the `python` feature (module `py`) are a
//! thin layer that converts arguments, releases the GIL and maps [`Error`] to Python
//! exceptions in one place.

pub mod crypto;
pub mod dtype;
pub mod error;
pub mod header;
mod json;
pub mod keys;
pub mod lease;
pub mod reader;
pub mod rekey;
mod sigbus;
pub mod writer;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "capi")]
pub mod capi;

pub use dtype::Dtype;
pub use error::{Error, Result};
pub use header::{Header, Stanza, TensorInfo};
pub use keys::{Credential, Recipient};
pub use lease::ReadMode;
pub use reader::Reader;
pub use rekey::{change_stanzas, rekey_file, Changes, Rekeyed, Removal};
pub use writer::{write_file_atomic, write_to, TensorSource, WriteOptions};
