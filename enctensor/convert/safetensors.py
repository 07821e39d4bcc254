"""``.safetensors`` <-> enctensor.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}, ...}``, padded with
spaces) and the tensor bytes, which must cover the data section exactly, without holes.

The tensors are stored in data order, their bytes unchanged. ``__metadata__`` becomes the
enctensor metadata as it is, in the same order. Writing back produces the header the
safetensors library itself writes (compact JSON, ``__metadata__`` first, tensors in data
order, space padding to a multiple of 8), so a file written by that library converts back
byte for byte with nothing added to the metadata. Two cases need the converter's metadata
entry ``"enctensor.safetensors"`` (compact JSON):

- ``{"empty_metadata":true}``: ``__metadata__`` is present but empty, which decryption must
  tell from a file without it (``safe_open(...).metadata()`` returns ``{}`` for one and
  ``None`` for the other);
- ``{"header":"<the header text>"}``: the header is not the one the safetensors library
  would write (another writer: other member order, whitespace, escapes or padding). The
  header is kept as it was (it says nothing the enctensor header does not: names, dtypes,
  shapes, offsets and metadata), and decryption writes it back after checking that it
  describes exactly the file's tensors and metadata.

Decrypting to safetensors keeps every metadata entry (all are strings, which
``__metadata__`` holds), including ``"enctensor.tvm_params"`` of a file converted from a TVM
``.params`` file (so that converting the result back gives the ``.params`` file again). A
source file may carry that entry only with a value the ``.params`` converter accepts for its
tensors; ``"enctensor.safetensors"`` is the converter's own and refused in a source file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .._api import Reader
from .._dtypes import ITEMSIZE as _ITEMSIZE
from ..errors import FormatError
from . import tvm_params
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
#: Metadata key written only when it is needed to restore the header as it was (see above).
BOOKKEEPING_KEY = "enctensor.safetensors"

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
    #: The JSON header as stored (padding included, length prefix excluded).
    raw: bytes

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
        return parse_header(m.read(8, n), m.path, m.size - 8 - n)


def parse_header(raw: bytes, path: PathLike, data_len: int) -> Header:
    """Parses and checks the JSON header ``raw`` of a safetensors file (of ``path``, for
    messages) whose data section is ``data_len`` bytes long."""
    with about(path):
        if not raw.startswith(b"{"):
            raise InputFormatError(f"{path}: not a safetensors file: the header is not a JSON object")
        try:
            obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except InputFormatError as e:
            raise InputFormatError(f"{path}: invalid safetensors header: {e}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InputFormatError(f"{path}: invalid safetensors header: {e}") from None
        if not isinstance(obj, dict):
            raise InputFormatError(f"{path}: invalid safetensors header: not a JSON object")
        metadata = obj.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise InputFormatError(f"{path}: invalid safetensors header: __metadata__ must map str to str")
        if metadata and BOOKKEEPING_KEY in metadata:
            raise InputFormatError(
                f"{path}: metadata key {BOOKKEEPING_KEY!r} is reserved for enctensor's converters"
            )
        tensors = [_entry(Path(path), name, info) for name, info in obj.items()]
        # Stable: zero-byte tensors at the same offset keep their header order.
        tensors.sort(key=lambda t: (t.begin, t.end))
        pos = 0
        for t in tensors:
            if t.begin != pos:
                raise InputFormatError(
                    f"{path}: invalid safetensors file: tensor {t.name!r} starts at {t.begin}, expected {pos}"
                    " (tensor data must not overlap or leave holes)"
                )
            pos = t.end
        if pos != data_len:
            raise InputFormatError(
                f"{path}: invalid safetensors file: the tensors cover {pos} bytes of data but the file"
                f" holds {data_len}"
            )
        header = Header(metadata, tensors, 8 + len(raw), raw)
        if metadata and tvm_params.METADATA_KEY in metadata:
            _check_tvm_bookkeeping(header, path)
        return header


class _Described:
    """What a reader of the encrypted file would say about the tensors and metadata of a
    safetensors header (for checking converter metadata before anything is written)."""

    def __init__(self, metadata: Mapping[str, str], tensors: Iterable[TensorEntry]) -> None:
        self._metadata = list(metadata.items())
        self._rows = [(t.name, t.dtype, t.shape, True, t.end - t.begin) for t in tensors]

    def metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def tensors(self) -> list[tuple[str, str, list[int], bool, int]]:
        return self._rows


def _check_tvm_bookkeeping(header: Header, path: PathLike) -> None:
    """A source file may carry the ``.params`` converter's entry only as that converter
    would read it for these tensors (as a decrypted ``.params``-born file does)."""
    try:
        tvm_params.plan(_Described(header.metadata or {}, header.tensors), path)  # type: ignore[arg-type]
    except InputFormatError as e:
        raise InputFormatError(
            f"{path}: metadata key {tvm_params.METADATA_KEY!r} is reserved for enctensor's converters,"
            f" and its value here is not one they read ({e})"
        ) from None


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


def canonical_header(
    metadata: Mapping[str, str] | None, tensors: Iterable[tuple[str, str, list[int], int]]
) -> bytes:
    """The JSON header the safetensors library writes (padding included, no length prefix)
    for ``metadata`` and ``(name, dtype, shape, nbytes)`` in data order."""
    obj: dict[str, Any] = {}
    if metadata is not None:
        obj["__metadata__"] = dict(metadata)
    pos = 0
    for name, dtype, shape, nbytes in tensors:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    js = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return js + b" " * (-len(js) % 8)


def enct_metadata(header: Header) -> list[tuple[str, str]]:
    """The enctensor metadata that stands for ``__metadata__`` (see the module docstring)."""
    out = list((header.metadata or {}).items())
    canonical = canonical_header(
        header.metadata, ((t.name, t.dtype, t.shape, t.end - t.begin) for t in header.tensors)
    )
    if header.raw != canonical:
        book: dict[str, Any] = {"header": header.raw.decode("utf-8")}
    elif header.metadata == {}:
        book = {"empty_metadata": True}
    else:
        return out
    return [*out, (BOOKKEEPING_KEY, json.dumps(book, separators=(",", ":"), ensure_ascii=False))]


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


def _bookkeeping(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        book = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return book if isinstance(book, dict) else {}


def header_bytes(reader: Reader, shown: PathLike) -> bytes:
    """The safetensors header (with its length prefix) for the tensors and metadata of
    ``reader``: the stored original if the file has one (checked against the file), else the
    one the safetensors library writes."""
    md = dict(reader.metadata())
    book = _bookkeeping(md.pop(BOOKKEEPING_KEY, None))
    rows = [(name, dtype, list(shape), nbytes) for name, dtype, shape, _, nbytes in reader.tensors()]
    if isinstance(book.get("header"), str):
        raw: bytes = book["header"].encode("utf-8")
        stored = parse_header(raw, shown, sum(r[3] for r in rows))
        described = [(t.name, t.dtype, t.shape, t.end - t.begin) for t in stored.tensors]
        if described != rows or (stored.metadata or {}) != md:
            raise FormatError(
                f"{shown}: the safetensors header stored in its {BOOKKEEPING_KEY!r} metadata entry does not"
                " describe the tensors and metadata of the file: it was not written by enctensor's converter"
            )
    else:
        if any(name == "__metadata__" for name, *_ in rows):
            raise InputFormatError(
                f"{shown}: a tensor named '__metadata__' cannot be stored in a safetensors file"
            )
        empty = book.get("empty_metadata") is True
        raw = canonical_header(md if md or empty else None, rows)
    return struct.pack("<Q", len(raw)) + raw


def write(reader: Reader, out: BinaryIO, *, meter: Meter | None, shown: PathLike) -> list[str]:
    """Writes the decrypted tensors of ``reader`` as a safetensors file to ``out``, one
    bounded step at a time; returns the metadata keys that were dropped (none: a safetensors
    file holds every metadata entry)."""
    out.write(header_bytes(reader, shown))
    with Decryptor(reader, meter) as dec, about(shown):
        for i, (_, _, _, _, nbytes) in enumerate(reader.tensors()):
            dec.copy(i, nbytes, out)
    return []


def data_size(path: PathLike) -> int:
    """Bytes of tensor data in a safetensors file (for progress totals)."""
    with MappedFile(path) as m:
        return read_header(m).nbytes


__all__ = [
    "Header",
    "InputFormatError",
    "TensorEntry",
    "canonical_header",
    "encrypt",
    "header_bytes",
    "parse_header",
    "read_header",
    "write",
]
