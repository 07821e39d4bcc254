"""TVM ``.params`` <-> enctensor, without TVM.

The layout of a ``.params`` file, as ``tvm.runtime.save_param_dict`` writes it (all integers
little-endian; checked against the bytes TVM 0.27 writes, for every dtype in the tests)::

    u64 magic = 0xF7E58D4F05049CB7, u64 reserved
    u64 count, then count names: u64 length + UTF-8 bytes
    u64 count (equal to the number of names), then per tensor, in name order:
        u64 magic = 0xDD5E40F096B4A13F, u64 reserved
        DLDevice: i32 device_type, i32 device_id        (TVM always writes CPU: 1, 0)
        i32 ndim
        DLDataType: u8 code, u8 bits, u16 lanes
        i64 shape[ndim]
        i64 data byte size, then the data (row-major, no padding or alignment)

Tensors keep their order and bytes. Everything needed to write the file back byte for byte
that the enctensor header does not already say is stored in the metadata key
``"enctensor.tvm_params"`` as compact JSON, ``{"version":1}`` in the usual case, plus:

- ``"reserved"``: the file's reserved word, if it is not 0;
- ``"tensors"``: ``{"<index>": {...}}`` for tensors that differ from the usual: ``"device"``
  ``[type, id]`` if not ``[1, 0]``, ``"reserved"`` if not 0, and ``"dtype"`` ``[code, bits,
  lanes]`` plus ``"shape"`` for a dtype that enctensor has no name for (float8 variants
  other than e4m3fn/e5m2, float4, int4, vector lanes, ...). Those tensors are stored as their
  raw bytes: dtype ``U8``, shape ``[nbytes]``.

The key's presence also records that the file came from TVM, so ``decrypt`` writes ``.params``
by default.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .._api import Reader
from .._dtypes import ITEMSIZE
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

PARAMS_MAGIC = 0xF7E58D4F05049CB7
TENSOR_MAGIC = 0xDD5E40F096B4A13F
METADATA_KEY = "enctensor.tvm_params"
CPU = (1, 0)
MAX_NDIM = 64  # the enctensor format's limit

#: DLPack (type code, bits) with one lane -> enctensor dtype. Codes: 0 int, 1 uint, 2 float,
#: 4 bfloat, 6 bool, 10 float8_e4m3fn, 12 float8_e5m2 (as TVM 0.27 writes them).
TO_ENCT: dict[tuple[int, int], str] = {
    (0, 8): "I8",
    (0, 16): "I16",
    (0, 32): "I32",
    (0, 64): "I64",
    (1, 8): "U8",
    (1, 16): "U16",
    (1, 32): "U32",
    (1, 64): "U64",
    (2, 16): "F16",
    (2, 32): "F32",
    (2, 64): "F64",
    (4, 16): "BF16",
    (6, 8): "BOOL",
    (10, 8): "F8_E4M3",
    (12, 8): "F8_E5M2",
}
FROM_ENCT: dict[str, tuple[int, int]] = {v: k for k, v in TO_ENCT.items()}
assert set(FROM_ENCT) == set(ITEMSIZE), "every enctensor dtype has a TVM code"


@dataclass(frozen=True)
class ParamTensor:
    """One tensor of a ``.params`` file, as its header describes it."""

    name: str
    code: int
    bits: int
    lanes: int
    device: tuple[int, int]
    reserved: int
    shape: list[int]
    offset: int  # of the data in the file
    nbytes: int

    def enct_dtype(self) -> str | None:
        """The enctensor dtype that holds this tensor as typed values, if there is one."""
        if self.lanes != 1:
            return None
        return TO_ENCT.get((self.code, self.bits))


@dataclass(frozen=True)
class Params:
    reserved: int
    tensors: list[ParamTensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Cursor:
    """Bounds-checked little-endian reads from a mapped file."""

    def __init__(self, m: MappedFile) -> None:
        self.m = m
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        n = struct.calcsize(fmt)
        if self.pos + n > self.m.size:
            raise InputFormatError(f"{self.m.path}: invalid .params file: truncated at byte {self.pos}")
        out = struct.unpack(fmt, self.m.read(self.pos, n))
        self.pos += n
        return out

    def count(self, what: str, min_item: int) -> int:
        (n,) = self.take("<Q")
        if n * min_item > self.m.size - self.pos:
            raise InputFormatError(
                f"{self.m.path}: invalid .params file: {what} count {n} is larger than the file"
            )
        return int(n)


def is_params(head: bytes) -> bool:
    return len(head) >= 8 and struct.unpack("<Q", head[:8])[0] == PARAMS_MAGIC


def read_params(m: MappedFile) -> Params:
    """Parses and checks the ``.params`` file ``m`` (the data is not read)."""
    path = m.path
    c = _Cursor(m)
    with about(path):
        magic, reserved = c.take("<QQ")
        if magic != PARAMS_MAGIC:
            raise InputFormatError(f"{path}: not a TVM .params file: wrong magic number")
        names = []
        for _ in range(c.count("name", 8)):
            (n,) = c.take("<Q")
            if n > m.size - c.pos:
                raise InputFormatError(f"{path}: invalid .params file: truncated in the names")
            raw = m.read(c.pos, n)
            c.pos += n
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputFormatError(f"{path}: a tensor name is not UTF-8: {raw[:40]!r}") from None
        count = c.count("tensor", 8 * 5)
        if count != len(names):
            raise InputFormatError(f"{path}: invalid .params file: {len(names)} names but {count} tensors")
        seen = set()
        tensors = []
        for name in names:
            if name in seen:
                raise InputFormatError(f"{path}: tensor name {name!r} appears twice")
            seen.add(name)
            if not name or len(name.encode("utf-8")) > 4096:
                raise InputFormatError(
                    f"{path}: tensor name {name[:40]!r} must be 1 to 4096 bytes long for enctensor"
                )
            tmagic, treserved, dev_type, dev_id, ndim, code, bits, lanes = c.take("<QQiiiBBH")
            if tmagic != TENSOR_MAGIC:
                raise InputFormatError(
                    f"{path}: invalid .params file: tensor {name!r} has a wrong magic number"
                )
            if not 0 <= ndim <= MAX_NDIM:
                raise InputFormatError(
                    f"{path}: tensor {name!r} has {ndim} dimensions; enctensor supports 0 to {MAX_NDIM}"
                )
            shape = list(c.take(f"<{ndim}q")) if ndim else []
            (nbytes,) = c.take("<q")
            if any(d < 0 for d in shape) or nbytes < 0:
                raise InputFormatError(f"{path}: invalid .params file: tensor {name!r} has a negative size")
            if nbytes > m.size - c.pos:
                raise InputFormatError(
                    f"{path}: invalid .params file: the data of tensor {name!r} is truncated"
                )
            t = ParamTensor(name, code, bits, lanes, (dev_type, dev_id), treserved, shape, c.pos, nbytes)
            dt = t.enct_dtype()
            if dt is not None:
                expected = ITEMSIZE[dt]
                for d in shape:
                    expected *= d
                if expected != nbytes:
                    raise InputFormatError(
                        f"{path}: invalid .params file: tensor {name!r} holds {nbytes} bytes, but its"
                        f" dtype and shape {shape} need {expected}"
                    )
            c.pos += nbytes
            tensors.append(t)
        if c.pos != m.size:
            raise InputFormatError(
                f"{path}: invalid .params file: {m.size - c.pos} bytes of trailing data after the last tensor"
            )
        return Params(reserved, tensors)


def bookkeeping(params: Params) -> str:
    """The value of the ``enctensor.tvm_params`` metadata key (see the module docstring)."""
    meta: dict[str, Any] = {"version": 1}
    if params.reserved:
        meta["reserved"] = params.reserved
    overrides: dict[str, Any] = {}
    for i, t in enumerate(params.tensors):
        o: dict[str, Any] = {}
        if t.device != CPU:
            o["device"] = list(t.device)
        if t.reserved:
            o["reserved"] = t.reserved
        if t.enct_dtype() is None:
            o["dtype"] = [t.code, t.bits, t.lanes]
            o["shape"] = t.shape
        if o:
            overrides[str(i)] = o
    if overrides:
        meta["tensors"] = overrides
    return json.dumps(meta, separators=(",", ":"))


def rows(m: MappedFile, params: Params) -> list[Row]:
    out: list[Row] = []
    for t in params.tensors:
        dt = t.enct_dtype()
        view = m.view(t.offset, t.nbytes)
        if dt is None:
            out.append((t.name, "U8", [t.nbytes], view, True))
        else:
            out.append((t.name, dt, t.shape, view, True))
    return out


def encrypt(
    src: PathLike,
    tmp: Path,
    secret: Secret,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter | None,
    shown: PathLike,
) -> Params:
    """Encrypts the ``.params`` file ``src`` to ``tmp`` (a staged output)."""
    with MappedFile(src) as m:
        params = read_params(m)
        r = rows(m, params)
        try:
            write_encrypted(
                tmp,
                r,
                [(METADATA_KEY, bookkeeping(params))],
                secret,
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=shown,
            )
        finally:
            del r
    return params


def _int(x: object, lo: int, hi: int, what: str, shown: PathLike) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise InputFormatError(f"{shown}: invalid {METADATA_KEY} metadata: bad {what} {x!r}")
    return x


@dataclass(frozen=True)
class _OutTensor:
    name: str
    dtype: tuple[int, int, int]
    device: tuple[int, int]
    reserved: int
    shape: list[int]
    nbytes: int


def plan(reader: Reader, shown: PathLike) -> tuple[int, list[_OutTensor], list[str]]:
    """What to write for the tensors of ``reader``: (file reserved word, tensors, metadata
    keys that a ``.params`` file cannot hold and are dropped)."""
    md = dict(reader.metadata())
    raw = md.pop(METADATA_KEY, None)
    dropped = list(md)
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            meta = json.loads(raw)
        except ValueError:
            raise InputFormatError(f"{shown}: invalid {METADATA_KEY} metadata: not JSON") from None
        if not isinstance(meta, dict) or meta.get("version") != 1:
            raise InputFormatError(f"{shown}: unsupported {METADATA_KEY} metadata version")
    u64, i32, i64 = (0, 2**64 - 1), (-(2**31), 2**31 - 1), (0, 2**63 - 1)
    reserved = _int(meta.get("reserved", 0), *u64, "reserved word", shown)
    rows = reader.tensors()
    overrides = meta.get("tensors", {})
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and k.isdigit() and int(k) < len(rows) and isinstance(v, dict)
        for k, v in overrides.items()
    ):
        raise InputFormatError(f"{shown}: invalid {METADATA_KEY} metadata: bad tensor overrides")
    out = []
    for i, (name, dtype, shape, _, nbytes) in enumerate(rows):
        o = overrides.get(str(i), {})
        dev = o.get("device", list(CPU))
        if not isinstance(dev, list) or len(dev) != 2:
            raise InputFormatError(f"{shown}: invalid {METADATA_KEY} metadata: bad device for {name!r}")
        device = (_int(dev[0], *i32, "device type", shown), _int(dev[1], *i32, "device id", shown))
        treserved = _int(o.get("reserved", 0), *u64, "reserved word", shown)
        if "dtype" in o:
            d, s = o["dtype"], o.get("shape")
            if not (isinstance(d, list) and len(d) == 3 and isinstance(s, list) and len(s) <= MAX_NDIM):
                raise InputFormatError(f"{shown}: invalid {METADATA_KEY} metadata: bad dtype for {name!r}")
            code = (
                _int(d[0], 0, 255, "code", shown),
                _int(d[1], 0, 255, "bits", shown),
                _int(d[2], 0, 65535, "lanes", shown),
            )
            tshape = [_int(x, *i64, "dimension", shown) for x in s]
        else:
            code = (*FROM_ENCT[dtype], 1)
            tshape = list(shape)
        out.append(_OutTensor(name, code, device, treserved, tshape, nbytes))
    return reserved, out, dropped


def write(reader: Reader, out: BinaryIO, *, meter: Meter | None, shown: PathLike) -> list[str]:
    """Writes the decrypted tensors of ``reader`` as a ``.params`` file to ``out``, one
    bounded step at a time; returns the metadata keys that were dropped."""
    reserved, tensors, dropped = plan(reader, shown)
    head = [struct.pack("<QQQ", PARAMS_MAGIC, reserved, len(tensors))]
    for t in tensors:
        b = t.name.encode("utf-8")
        head.append(struct.pack("<Q", len(b)) + b)
    head.append(struct.pack("<Q", len(tensors)))
    out.write(b"".join(head))
    with Decryptor(reader, meter) as dec, about(shown):
        for i, t in enumerate(tensors):
            out.write(
                struct.pack("<QQiii", TENSOR_MAGIC, t.reserved, t.device[0], t.device[1], len(t.shape))
                + struct.pack("<BBH", *t.dtype)
                + struct.pack(f"<{len(t.shape)}q", *t.shape)
                + struct.pack("<q", t.nbytes)
            )
            dec.copy(i, t.nbytes, out)
    return dropped


def data_size(path: PathLike) -> int:
    with MappedFile(path) as m:
        return read_params(m).nbytes


__all__ = ["METADATA_KEY", "ParamTensor", "Params", "encrypt", "is_params", "read_params", "write"]
