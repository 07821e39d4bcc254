"""The numpy-level API: save, load, safe_open, inspect (shaped like safetensors)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Self

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import _core
from ._alloc import aligned_empty, destinations
from ._dtypes import format_dtype, numpy_dtype
from ._frameworks import converter
from ._keys import check_keys, check_passphrase, opener, recipient_kwargs, sign_seed, verify_bytes
from ._slice import plan
from .errors import TensorNotFoundError

PathLike = str | os.PathLike[str]
# 256 KiB: a slice decrypts at most two chunks more than it needs; throughput is the same as
# with 1 MiB chunks.
DEFAULT_CHUNK_SIZE = 256 << 10
DEFAULT_SCRYPT_LOG_N = 18

__all__ = [
    "TensorSlice",
    "inspect",
    "inspect_bytes",
    "load",
    "load_bytes",
    "rekey",
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
    key: Any,
    passphrase: Any,
    recipients: Any,
    sign_with: Any,
    metadata: Mapping[str, str] | None,
    chunk_size: int,
    scrypt_log_n: int,
) -> dict[str, Any]:
    keys = check_keys(key)
    p = check_passphrase(passphrase)
    public = recipient_kwargs(recipients)
    if not keys and p is None and not public["x25519"] and not public["rsa_spki"]:
        raise ValueError("give a key (32 bytes), recipients or a passphrase to encrypt to")
    return {
        "metadata": _check_metadata(metadata),
        "keys": keys,
        "passphrase": p,
        **public,
        "sign_seed": sign_seed(sign_with),
        "log_n": scrypt_log_n,
        "chunk_size": chunk_size,
    }


def save(
    tensors: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    key: bytes | Iterable[bytes] | None = None,
    passphrase: str | None = None,
    recipients: Iterable[Any] = (),
    sign_with: Ed25519PrivateKey | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> None:
    """Encrypts ``tensors`` to ``path`` atomically (temporary file, fsync, rename).

    Whoever holds any of these can open the file: ``key``, 32 raw bytes (or several keys);
    ``recipients``, X25519 or RSA public keys (``cryptography`` objects, PEM files, or the
    one-line ``x25519:<hex>`` form); or ``passphrase`` (scrypt; it must be the only way in).
    ``sign_with`` (an Ed25519 private key) signs the file for ``load(..., verify_with=...)``.
    Tensors named in ``plaintext`` are stored unencrypted but still authenticated.
    """
    rows = _tensor_rows(tensors, plaintext)
    args = _write_args(key, passphrase, recipients, sign_with, metadata, chunk_size, scrypt_log_n)
    _core.write_file(os.fspath(path), rows, **args)


def save_bytes(
    tensors: Mapping[str, np.ndarray],
    *,
    key: bytes | Iterable[bytes] | None = None,
    passphrase: str | None = None,
    recipients: Iterable[Any] = (),
    sign_with: Ed25519PrivateKey | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> bytes:
    """Like :func:`save`, returning the encrypted file as bytes."""
    rows = _tensor_rows(tensors, plaintext)
    args = _write_args(key, passphrase, recipients, sign_with, metadata, chunk_size, scrypt_log_n)
    return _core.write_bytes(rows, **args)


def _stanza_list(info: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(fields) for fields in info[2]]


def _open(path: PathLike, key: Any, passphrase: Any, verify_with: Any = None) -> _core.Reader:
    p = os.fspath(path)
    how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_file(p)))
    return _core.Reader(p, **how, verify_key=verify_bytes(verify_with))


def _open_bytes(
    data: bytes | bytearray | memoryview, key: Any, passphrase: Any, verify_with: Any = None
) -> _core.Reader:
    raw = bytes(data)
    how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_bytes(raw)))
    return _core.Reader.from_bytes(raw, **how, verify_key=verify_bytes(verify_with))


def read_all(reader: _core.Reader) -> dict[str, np.ndarray]:
    """Decrypts every tensor of an opened file, all chunks in parallel, into fresh arrays."""
    rows = reader.tensors()
    bufs = destinations([nbytes for (_, _, _, _, nbytes) in rows])
    reader.read_many_into(list(enumerate(bufs)))
    return {
        name: buf.view(numpy_dtype(dtype)).reshape(shape)
        for (name, dtype, shape, _, _), buf in zip(rows, bufs, strict=True)
    }


def load(
    path: PathLike,
    *,
    key: Any = None,
    passphrase: str | None = None,
    verify_with: Ed25519PublicKey | None = None,
) -> dict[str, np.ndarray]:
    """Decrypts and verifies every tensor of ``path`` into numpy arrays (file order).

    ``key`` is 32 raw bytes, an X25519 or RSA private key (object or PEM file path), or a key
    provider: a callable that gets the file's stanza descriptions and returns any of those,
    or a :class:`FileKey` it unwrapped itself (KMS, HSM, TEE). ``verify_with`` (an Ed25519
    public key) requires a valid publisher signature.
    """
    return read_all(_open(path, key, passphrase, verify_with))


def load_bytes(
    data: bytes | bytearray | memoryview,
    *,
    key: Any = None,
    passphrase: str | None = None,
    verify_with: Ed25519PublicKey | None = None,
) -> dict[str, np.ndarray]:
    """Like :func:`load`, from the bytes of a file."""
    return read_all(_open_bytes(data, key, passphrase, verify_with))


def _inspection(info: tuple[Any, ...]) -> dict[str, Any]:
    rows, metadata, _, chunk_size, file_size, signed = info
    stanzas = _stanza_list(info)
    return {
        "format_version": _core.FORMAT_VERSION,
        "tensors": [
            {"name": n, "dtype": d, "shape": list(s), "encrypted": e, "nbytes": b} for n, d, s, e, b in rows
        ],
        "metadata": dict(metadata),
        "stanzas": [s["type"] for s in stanzas],
        "stanza_details": stanzas,
        "signed": signed,
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


def rekey(
    path: PathLike,
    *,
    key: Any = None,
    passphrase: str | None = None,
    new_keys: Iterable[bytes] = (),
    new_recipients: Iterable[Any] = (),
    new_passphrase: str | None = None,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> str:
    """Replaces who can open ``path``: opened with ``key`` or ``passphrase``, its stanzas are
    replaced by ones for ``new_keys``, ``new_recipients`` and ``new_passphrase``. Tensor bytes,
    header, MAC and any signature are untouched. Usually one single-page write
    (``"in-place"``); when the new stanzas do not fit, the file is rewritten atomically with the
    tensor bytes copied unchanged (``"rewritten"``). The file key stays the same: whoever knew
    it keeps access; to revoke, re-encrypt with :func:`save`.
    """
    p = os.fspath(path)
    how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_file(p)))
    public = recipient_kwargs(new_recipients)
    new_p = check_passphrase(new_passphrase)
    keys = check_keys(list(new_keys))
    if not keys and new_p is None and not public["x25519"] and not public["rsa_spki"]:
        raise ValueError("rekey needs at least one new key, recipient or passphrase")
    return _core.rekey(
        p,
        **how,
        new_keys=keys,
        new_passphrase=new_p,
        new_x25519=public["x25519"],
        new_rsa_spki=public["rsa_spki"],
        log_n=scrypt_log_n,
    )


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
        reader = self._handle._reader_or_raise()
        # Read whole chunks: they are verified whole anyway, and the core then decrypts them
        # straight into `buf` instead of through a scratch buffer.
        cs = reader.chunk_size
        nbytes = math.prod(self._shape) * size
        start = p.lo * size // cs * cs
        stop = min(-(-(p.hi + 1) * size // cs) * cs, nbytes)
        buf = aligned_empty(stop - start)
        reader.read_range_into(self._index, start, buf)
        view = np.ndarray(
            p.shape,
            dtype=dt,
            buffer=buf,
            offset=p.lo * size - start + p.offset * size,
            strides=[s * size for s in p.strides],
        )
        # reshape: np.ascontiguousarray turns a 0-d array into a 1-d one.
        return self._handle._convert(np.ascontiguousarray(view).reshape(p.shape), self._dtype)


class safe_open:
    """Opens an encrypted file for random access: ``keys()``, ``metadata()``,
    ``get_tensor(name)``, ``get_slice(name)[...]``. The key is checked and the header
    authenticated on open; each tensor is verified as it is read. ``device`` (torch or TVM
    frameworks) puts the tensors on that device, as in safetensors."""

    def __init__(
        self,
        path: PathLike,
        *,
        key: Any = None,
        passphrase: str | None = None,
        framework: str = "numpy",
        device: Any = None,
        verify_with: Ed25519PublicKey | None = None,
    ) -> None:
        self._convert = converter(framework, device)
        self._reader: _core.Reader | None = _open(path, key, passphrase, verify_with)
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
