"""The numpy-level API: save, load, safe_open, inspect (shaped like safetensors)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Self

import numpy as np

from . import _core
from ._alloc import aligned_empty
from ._dtypes import format_dtype, numpy_dtype
from ._frameworks import converter
from ._keys import check_keys, check_passphrase, opener
from ._slice import plan
from .errors import TensorNotFoundError

PathLike = str | os.PathLike[str]
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_SCRYPT_LOG_N = 18

__all__ = [
    "TensorSlice",
    "inspect",
    "inspect_bytes",
    "load",
    "load_bytes",
    "safe_open",
    "save",
    "save_bytes",
]


def _check_metadata(metadata: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if metadata is None:
        return []
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str to str, not {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str; entry {k!r}: {type(v).__name__}")
    return list(metadata.items())


def _tensor_rows(
    tensors: Mapping[str, np.ndarray], plaintext: Iterable[str]
) -> list[tuple[str, str, list[int], np.ndarray, bool]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name to numpy array, not {type(tensors).__name__}")
    clear = set(plaintext)
    unknown = clear - set(tensors)
    if unknown:
        raise ValueError(f"plaintext names tensors that are not being saved: {sorted(unknown)}")
    rows = []
    for name, arr in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, not {type(name).__name__}")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy array, not {type(arr).__name__}")
        if arr.dtype.hasobject:
            raise TypeError(f"tensor {name!r} is an object array; only numeric and bool arrays can be saved")
        dtype = format_dtype(arr.dtype)
        if not arr.flags.c_contiguous:
            raise ValueError(
                f"tensor {name!r} is not C-contiguous; save np.ascontiguousarray(...) of it instead"
            )
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        rows.append((name, dtype, list(arr.shape), arr.reshape(-1).view(np.uint8), name not in clear))
    return rows


def _write_args(
    key: Any, passphrase: Any, metadata: Mapping[str, str] | None, chunk_size: int, scrypt_log_n: int
) -> dict[str, Any]:
    keys = check_keys(key)
    p = check_passphrase(passphrase)
    if not keys and p is None:
        raise ValueError("give a key (32 bytes) or a passphrase to encrypt to")
    return {
        "metadata": _check_metadata(metadata),
        "keys": keys,
        "passphrase": p,
        "log_n": scrypt_log_n,
        "chunk_size": chunk_size,
    }


def save(
    tensors: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    key: bytes | Iterable[bytes] | None = None,
    passphrase: str | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> None:
    """Encrypts ``tensors`` to ``path`` atomically (temporary file, fsync, rename).

    ``key`` is 32 raw bytes (or several keys, any of which opens the file); ``passphrase``
    derives a key with scrypt instead. Tensors named in ``plaintext`` are stored unencrypted
    but still authenticated.
    """
    rows = _tensor_rows(tensors, plaintext)
    _core.write_file(
        os.fspath(path), rows, **_write_args(key, passphrase, metadata, chunk_size, scrypt_log_n)
    )


def save_bytes(
    tensors: Mapping[str, np.ndarray],
    *,
    key: bytes | Iterable[bytes] | None = None,
    passphrase: str | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> bytes:
    """Like :func:`save`, returning the encrypted file as bytes."""
    rows = _tensor_rows(tensors, plaintext)
    return _core.write_bytes(rows, **_write_args(key, passphrase, metadata, chunk_size, scrypt_log_n))


def _open(path: PathLike, key: Any, passphrase: Any) -> _core.Reader:
    return _core.Reader(os.fspath(path), **opener(key, passphrase))


def _open_bytes(data: bytes | bytearray | memoryview, key: Any, passphrase: Any) -> _core.Reader:
    return _core.Reader.from_bytes(bytes(data), **opener(key, passphrase))


def read_all(reader: _core.Reader) -> dict[str, np.ndarray]:
    """Decrypts every tensor of an opened file, all chunks in parallel, into fresh arrays."""
    rows = reader.tensors()
    bufs = [aligned_empty(nbytes) for (_, _, _, _, nbytes) in rows]
    reader.read_many_into(list(enumerate(bufs)))
    return {
        name: buf.view(numpy_dtype(dtype)).reshape(shape)
        for (name, dtype, shape, _, _), buf in zip(rows, bufs, strict=True)
    }


def load(path: PathLike, *, key: bytes | None = None, passphrase: str | None = None) -> dict[str, np.ndarray]:
    """Decrypts and verifies every tensor of ``path`` into numpy arrays (file order)."""
    return read_all(_open(path, key, passphrase))


def load_bytes(
    data: bytes | bytearray | memoryview, *, key: bytes | None = None, passphrase: str | None = None
) -> dict[str, np.ndarray]:
    """Like :func:`load`, from the bytes of a file."""
    return read_all(_open_bytes(data, key, passphrase))


def _inspection(info: tuple[Any, ...]) -> dict[str, Any]:
    rows, metadata, stanzas, chunk_size, file_size = info
    return {
        "format_version": _core.FORMAT_VERSION,
        "tensors": [
            {"name": n, "dtype": d, "shape": list(s), "encrypted": e, "nbytes": b} for n, d, s, e, b in rows
        ],
        "metadata": dict(metadata),
        "stanzas": list(stanzas),
        "chunk_size": chunk_size,
        "file_size": file_size,
    }


def inspect(path: PathLike) -> dict[str, Any]:
    """Names, dtypes, shapes, metadata and stanza types of ``path``, read without a key.

    Nothing returned is authenticated: only a load with the key proves the header genuine.
    """
    return _inspection(_core.inspect_file(os.fspath(path)))


def inspect_bytes(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Like :func:`inspect`, for the bytes of a file."""
    return _inspection(_core.inspect_bytes(bytes(data)))


class TensorSlice:
    """A lazily read tensor: index it to decrypt only the chunks the index covers."""

    def __init__(self, handle: safe_open, index: int, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self._handle = handle
        self._index = index
        self._name = name
        self._dtype = dtype
        self._shape = shape

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index: Any) -> Any:
        p = plan(self._shape, index)
        dt = numpy_dtype(self._dtype)
        if p.empty:
            return self._handle._convert(np.empty(p.shape, dt), self._dtype)
        size = dt.itemsize
        buf = aligned_empty((p.hi - p.lo + 1) * size)
        self._handle._reader_or_raise().read_range_into(self._index, p.lo * size, buf)
        view = np.ndarray(
            p.shape, dtype=dt, buffer=buf, offset=p.offset * size, strides=[s * size for s in p.strides]
        )
        return self._handle._convert(np.ascontiguousarray(view), self._dtype)


class safe_open:
    """Opens an encrypted file for random access: ``keys()``, ``metadata()``,
    ``get_tensor(name)``, ``get_slice(name)[...]``. The key is checked and the header
    authenticated on open; each tensor is verified as it is read."""

    def __init__(
        self,
        path: PathLike,
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
        framework: str = "numpy",
    ) -> None:
        self._convert = converter(framework)
        self._reader: _core.Reader | None = _open(path, key, passphrase)
        self._rows = {row[0]: (i, row) for i, row in enumerate(self._reader.tensors())}
        self._metadata = dict(self._reader.metadata())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader = None

    def _reader_or_raise(self) -> _core.Reader:
        if self._reader is None:
            raise ValueError("this enctensor file is closed")
        return self._reader

    def keys(self) -> list[str]:
        return list(self._rows)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _row(self, name: str) -> tuple[int, tuple[Any, ...]]:
        try:
            return self._rows[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in this file") from None

    def get_tensor(self, name: str) -> Any:
        i, (_, dtype, shape, _, nbytes) = self._row(name)
        buf = aligned_empty(nbytes)
        self._reader_or_raise().read_into(i, buf)
        return self._convert(buf.view(numpy_dtype(dtype)).reshape(shape), dtype)

    def get_slice(self, name: str) -> TensorSlice:
        i, (_, dtype, shape, _, _) = self._row(name)
        self._reader_or_raise()
        return TensorSlice(self, i, name, dtype, tuple(shape))
