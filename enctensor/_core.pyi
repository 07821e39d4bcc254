"""Type stubs for the Rust extension ``enctensor._core`` (checked with ``mypy.stubtest``)."""

from collections.abc import Sequence
from os import PathLike
from typing import Any, TypeAlias, final

import numpy as np
from typing_extensions import Buffer

# A destination the core writes into. numpy arrays are buffers, but numpy's stubs say so
# (``__buffer__``) only on Python 3.12 and later.
_WritableBuffer: TypeAlias = Buffer | np.ndarray[Any, Any]

__all__ = [
    "FORMAT_VERSION",
    "Reader",
    "__version__",
    "_set_read_mode",
    "inspect_bytes",
    "inspect_file",
    "inspect_front",
    "prefix_len",
    "recipient_fingerprint",
    "rekey",
    "stanzas_of",
    "stanzas_of_front",
    "write_bytes",
    "write_file",
]
__version__: str
FORMAT_VERSION: int

# (name, dtype, shape, encrypted, nbytes)
_TensorRow: TypeAlias = tuple[str, str, list[int], bool, int]
# (tensors, metadata, stanza descriptions, chunk size, file length, signed)
_Inspection: TypeAlias = tuple[
    list[_TensorRow], list[tuple[str, str]], list[list[tuple[str, str]]], int, int, bool
]
# (name, dtype, shape, uint8 buffer, encrypted)
_TensorIn: TypeAlias = tuple[str, str, Sequence[int], Any, bool]

@final
class Reader:
    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
        x25519: bytes | None = None,
        rsa_pkcs8: bytes | None = None,
        file_key: bytes | None = None,
        verify_key: bytes | None = None,
        max_scrypt_log_n: int = 18,
    ) -> Reader: ...
    @staticmethod
    def from_bytes(
        data: bytes,
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
        x25519: bytes | None = None,
        rsa_pkcs8: bytes | None = None,
        file_key: bytes | None = None,
        verify_key: bytes | None = None,
        max_scrypt_log_n: int = 18,
    ) -> Reader: ...
    @staticmethod
    def from_front(
        front: bytes,
        file_len: int,
        name: str,
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
        x25519: bytes | None = None,
        rsa_pkcs8: bytes | None = None,
        file_key: bytes | None = None,
        verify_key: bytes | None = None,
        max_scrypt_log_n: int = 18,
    ) -> Reader: ...
    def span(self, index: int, start: int, end: int) -> tuple[int, int]: ...
    def read_range_from(self, index: int, start: int, dst: _WritableBuffer, at: int, data: bytes) -> None: ...
    @property
    def name(self) -> str: ...
    def tensors(self) -> list[_TensorRow]: ...
    @property
    def chunk_size(self) -> int: ...
    def metadata(self) -> list[tuple[str, str]]: ...
    def inspect(self) -> _Inspection: ...
    def read_into(self, index: int, dst: _WritableBuffer) -> None: ...
    def read_many_into(self, jobs: Sequence[tuple[int, _WritableBuffer]]) -> None: ...
    def read_range_into(self, index: int, start: int, dst: _WritableBuffer) -> None: ...
    def verify(self) -> None: ...

def inspect_file(path: str | PathLike[str]) -> _Inspection: ...
def inspect_bytes(data: bytes) -> _Inspection: ...
def inspect_front(front: bytes, file_len: int) -> _Inspection: ...
def prefix_len(head: bytes, file_len: int) -> int: ...
def write_file(
    path: str | PathLike[str],
    tensors: Sequence[_TensorIn],
    *,
    metadata: Sequence[tuple[str, str]],
    keys: Sequence[bytes],
    passphrase: str | None = None,
    x25519: Sequence[bytes] | None = None,
    rsa_spki: Sequence[bytes] | None = None,
    sign_seed: bytes | None = None,
    log_n: int = 18,
    chunk_size: int = 262144,
    fingerprints: bool = False,
) -> int: ...
def write_bytes(
    tensors: Sequence[_TensorIn],
    *,
    metadata: Sequence[tuple[str, str]],
    keys: Sequence[bytes],
    passphrase: str | None = None,
    x25519: Sequence[bytes] | None = None,
    rsa_spki: Sequence[bytes] | None = None,
    sign_seed: bytes | None = None,
    log_n: int = 18,
    chunk_size: int = 262144,
    fingerprints: bool = False,
) -> bytes: ...
def rekey(
    path: str | PathLike[str],
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    x25519: bytes | None = None,
    rsa_pkcs8: bytes | None = None,
    file_key: bytes | None = None,
    new_keys: Sequence[bytes] | None = None,
    new_passphrase: str | None = None,
    new_x25519: Sequence[bytes] | None = None,
    new_rsa_spki: Sequence[bytes] | None = None,
    keep: bool = False,
    remove_stanzas: Sequence[int] | None = None,
    remove_keys: Sequence[bytes] | None = None,
    remove_x25519_identities: Sequence[bytes] | None = None,
    remove_rsa_pkcs8: Sequence[bytes] | None = None,
    remove_x25519: Sequence[bytes] | None = None,
    remove_rsa_spki: Sequence[bytes] | None = None,
    remove_passphrase: bool = False,
    fingerprints: bool = False,
    log_n: int = 18,
    max_scrypt_log_n: int = 18,
) -> str: ...
def stanzas_of(
    path: str | PathLike[str],
    *,
    key: bytes | None = None,
    x25519: bytes | None = None,
    rsa_pkcs8: bytes | None = None,
) -> list[int]: ...
def stanzas_of_front(
    front: bytes,
    file_len: int,
    *,
    key: bytes | None = None,
    x25519: bytes | None = None,
    rsa_pkcs8: bytes | None = None,
) -> list[int]: ...
def recipient_fingerprint(
    *, key: bytes | None = None, x25519: bytes | None = None, rsa_spki: bytes | None = None
) -> bytes: ...
def _set_read_mode(mode: str) -> None: ...
