"""Exceptions raised by enctensor. Kept free of imports of the Rust extension, which imports
these classes by name (``pyo3::import_exception!``)."""

from __future__ import annotations

__all__ = [
    "EncTensorError",
    "FormatError",
    "IntegrityError",
    "ObjectChangedError",
    "RemoteReadError",
    "SignatureError",
    "TensorNotFoundError",
    "WrongKeyError",
]


class EncTensorError(ValueError):
    """Base class of every error that concerns an enctensor file's contents or keys."""


class FormatError(EncTensorError):
    """The bytes are not a well-formed enctensor file (or use an unsupported version)."""


class WrongKeyError(EncTensorError):
    """No stanza of the file opens with the key or passphrase given."""


class IntegrityError(EncTensorError):
    """The header MAC, a chunk tag or a chunk digest failed: the file was modified or
    corrupted; or a metadata entry pinned with ``expect_metadata`` is missing or differs (an
    older or another file)."""


class SignatureError(IntegrityError):
    """A verification key was given, and the file's publisher signature is missing or does
    not verify under it."""


class ObjectChangedError(IntegrityError):
    """A remote file was replaced (or removed) between the requests of one open or read: the
    bytes fetched last do not belong to the file authenticated first. Open it again."""


class RemoteReadError(OSError):
    """A request for a remote file kept failing (server errors, timeouts, dropped or short
    responses) after every retry. The message names the URL and the byte range."""


class TensorNotFoundError(EncTensorError, KeyError):
    """The file has no tensor of that name."""

    def __str__(self) -> str:  # KeyError would repr() the message.
        return str(self.args[0]) if self.args else ""
