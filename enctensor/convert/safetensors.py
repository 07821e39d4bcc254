"""``.safetensors`` <-> enctensor.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}, ...}``, padded with
spaces) and the tensor bytes, which must cover the data section exactly, without holes.

The tensors are stored in data order, their bytes unchanged. ``__metadata__`` becomes the
enctensor metadata as it is, in the same order; nothing is added to it, except in one case: a
file whose ``__metadata__`` is present but empty gets ``"enctensor.safetensors":
"{"empty_metadata":true}"`` so that decryption can tell it from a file without
``__metadata__`` (``safe_open(...).metadata()`` returns ``{}`` for one and ``None`` for the
other). Writing back produces the header the safetensors library itself writes (compact JSON,
``__metadata__`` first, tensors in data order, space padding to a multiple of 8), so a file
written by that library converts back byte for byte.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .. import _core
from .._dtypes import ITEMSIZE as _ITEMSIZE
from ._common import (
    Decryptor,
    InputFormatError,
    MappedFile,
    Meter,
    PathLike,
    Row,
    Secret,
    about,
    write_encrypted,
)

#: The safetensors library refuses headers larger than this.
MAX_HEADER_LEN = 100_000_000
#: Metadata key written only when it is needed to restore an empty ``__metadata__``.
BOOKKEEPING_KEY = "enctensor.safetensors"
#: Metadata keys that the converters own; a source file may not use them.
RESERVED_KEYS = frozenset({BOOKKEEPING_KEY, "enctensor.tvm_params"})

#: dtype name -> element size; enctensor's dtypes are a subset of safetensors', same names.
ITEMSIZE: dict[str, int] = dict(_ITEMSIZE)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # relative to the start of the data section
    end: int


@dataclass(frozen=True)
class Header:
    """A parsed and validated safetensors header."""

    metadata: dict[str, str] | None
    tensors: list[TensorEntry]  # in data order
    data_start: int

    @property
    def nbytes(self) -> int:
        return self.tensors[-1].end if self.tensors else 0


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InputFormatError(f"duplicate key {k!r} in the JSON header")
        out[k] = v
    return out


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(m: MappedFile) -> Header:
    """Parses and checks the header of the mapped safetensors file ``m`` the way the
    safetensors library does (sizes, dtypes, offsets covering the data exactly)."""
    with about(m.path):
        if m.size < 8:
            raise InputFormatError(f"{m.path}: not a safetensors file: it is only {m.size} bytes long")
        (n,) = struct.unpack("<Q", m.read(0, 8))
        if n > MAX_HEADER_LEN or 8 + n > m.size:
            raise InputFormatError(
                f"{m.path}: not a safetensors file: its header length ({n}) is larger than the file"
                f" or than {MAX_HEADER_LEN} bytes"
            )
        raw = m.read(8, n)
        if not raw.startswith(b"{"):
            raise InputFormatError(f"{m.path}: not a safetensors file: the header is not a JSON object")
        try:
            obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except InputFormatError as e:
            raise InputFormatError(f"{m.path}: invalid safetensors header: {e}") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise InputFormatError(f"{m.path}: invalid safetensors header: {e}") from None
        if not isinstance(obj, dict):
            raise InputFormatError(f"{m.path}: invalid safetensors header: not a JSON object")
        metadata = obj.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise InputFormatError(f"{m.path}: invalid safetensors header: __metadata__ must map str to str")
        if metadata:
            reserved = sorted(RESERVED_KEYS & metadata.keys())
            if reserved:
                raise InputFormatError(
                    f"{m.path}: metadata key {reserved[0]!r} is reserved for enctensor's converters"
                )
        tensors = [_entry(m.path, name, info) for name, info in obj.items()]
        # Stable: zero-byte tensors at the same offset keep their header order.
        tensors.sort(key=lambda t: (t.begin, t.end))
        pos = 0
        for t in tensors:
            if t.begin != pos:
                raise InputFormatError(
                    f"{m.path}: invalid safetensors file: tensor {t.name!r} starts at {t.begin}, expected {pos}"
                    " (tensor data must not overlap or leave holes)"
                )
            pos = t.end
        data_len = m.size - 8 - n
        if pos != data_len:
            raise InputFormatError(
                f"{m.path}: invalid safetensors file: the tensors cover {pos} bytes of data but the file"
                f" holds {data_len}"
            )
        return Header(metadata, tensors, 8 + n)


def _entry(path: Path, name: str, info: object) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise InputFormatError(
            f"{path}: invalid safetensors header: entry {name!r} must have exactly dtype, shape, data_offsets"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise InputFormatError(f"{path}: invalid safetensors header: tensor {name!r}: dtype is not a string")
    if dtype not in ITEMSIZE:
        raise InputFormatError(
            f"{path}: tensor {name!r} has dtype {dtype}, which enctensor does not support"
            f" (supported: {', '.join(ITEMSIZE)})"
        )
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise InputFormatError(f"{path}: invalid safetensors header: tensor {name!r}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise InputFormatError(f"{path}: invalid safetensors header: tensor {name!r}: bad data_offsets")
    begin, end = offsets
    nbytes = ITEMSIZE[dtype]
    for d in shape:
        nbytes *= d
    if end < begin or end - begin != nbytes:
        raise InputFormatError(
            f"{path}: invalid safetensors header: tensor {name!r}: data_offsets {offsets} do not match"
            f" dtype {dtype} and shape {shape}"
        )
    if not name or len(name.encode("utf-8", "surrogatepass")) > 4096:
        raise InputFormatError(
            f"{path}: tensor name {name[:40]!r} must be 1 to 4096 bytes long for enctensor"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputFormatError(f"{path}: tensor name {name!r} is not valid Unicode") from None
    return TensorEntry(name, dtype, list(shape), begin, end)


def enct_metadata(header: Header) -> list[tuple[str, str]]:
    """The enctensor metadata that stands for ``__metadata__`` (see the module docstring)."""
    if header.metadata is None:
        return []
    if not header.metadata:
        return [(BOOKKEEPING_KEY, '{"empty_metadata":true}')]
    return list(header.metadata.items())


def rows(m: MappedFile, header: Header) -> list[Row]:
    """Writer rows whose buffers are views of the mapped file (nothing is copied)."""
    return [
        (t.name, t.dtype, t.shape, m.view(header.data_start + t.begin, t.end - t.begin), True)
        for t in header.tensors
    ]


def encrypt(
    src: PathLike,
    tmp: Path,
    secret: Secret,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter | None,
    shown: PathLike,
) -> Header:
    """Encrypts the safetensors file ``src`` to ``tmp`` (a staged output) and returns its header."""
    with MappedFile(src) as m:
        header = read_header(m)
        r = rows(m, header)
        try:
            write_encrypted(
                tmp,
                r,
                enct_metadata(header),
                secret,
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=shown,
            )
        finally:
            del r  # release the views before the map is closed
    return header


def header_bytes(reader: _core.Reader, shown: PathLike) -> tuple[bytes, list[str]]:
    """The safetensors header (with its length prefix) for the tensors of ``reader``, and
    the metadata keys that are dropped (converter bookkeeping of other formats)."""
    md = dict(reader.metadata())
    dropped = []
    marker = md.pop(BOOKKEEPING_KEY, None)
    for k in sorted(RESERVED_KEYS - {BOOKKEEPING_KEY}):
        if md.pop(k, None) is not None:
            dropped.append(k)
    obj: dict[str, Any] = {}
    if md:
        obj["__metadata__"] = md
    elif marker is not None:
        try:
            empty = json.loads(marker).get("empty_metadata") is True
        except (ValueError, AttributeError):
            empty = False
        if empty:
            obj["__metadata__"] = {}
    pos = 0
    for name, dtype, shape, _, nbytes in reader.tensors():
        if name == "__metadata__":
            raise InputFormatError(
                f"{shown}: a tensor named '__metadata__' cannot be stored in a safetensors file"
            )
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    js = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js, dropped


def write(reader: _core.Reader, out: BinaryIO, *, meter: Meter | None, shown: PathLike) -> list[str]:
    """Writes the decrypted tensors of ``reader`` as a safetensors file to ``out``, one
    bounded step at a time; returns the metadata keys that were dropped."""
    head, dropped = header_bytes(reader, shown)
    out.write(head)
    with Decryptor(reader, meter) as dec, about(shown):
        for i, (_, _, _, _, nbytes) in enumerate(reader.tensors()):
            dec.copy(i, nbytes, out)
    return dropped


def data_size(path: PathLike) -> int:
    """Bytes of tensor data in a safetensors file (for progress totals)."""
    with MappedFile(path) as m:
        return read_header(m).nbytes


__all__ = ["Header", "InputFormatError", "TensorEntry", "encrypt", "header_bytes", "read_header", "write"]
