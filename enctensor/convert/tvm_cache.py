"""TVM / MLC-LLM tensor caches <-> encrypted sets, without TVM.

A tensor cache is what ``tvm.contrib.tvmjs.dump_tensor_cache`` writes (the format MLC-LLM
and WebLLM deploy): ``tensor-cache.json`` (``json.dump(indent=4)``)::

    {"metadata": <any JSON>,
     "records": [{"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": n,
                  "records": [{"name", "shape", "dtype", "format", "nbytes", "byteOffset"}, ...],
                  "md5sum": "<md5 of the shard>"}, ...]}

and the shards, each the concatenation of its records' bytes in ``byteOffset`` order. A
record's ``format`` is ``"raw"`` (the bytes of ``dtype``) or ``"f32-to-bf16"`` (a float32
tensor stored as bfloat16, rounded to nearest even); ``tensor-cache-b16.json`` is a copy with
those records relabelled as raw bfloat16. Older caches are named ``ndarray-cache.json``.

Encrypted, the cache is a set (:mod:`enctensor.convert.sharded`, bound by ``enctensor.shard``):
``params_shard_N.bin`` becomes ``params_shard_N.enct``, one tensor per record, typed where
enctensor has the dtype (an ``f32-to-bf16`` record as the BF16 it holds; a dtype enctensor
has no name for, or whose size does not match its shape, as raw ``U8`` bytes), in shard
order; next to them ``tensor-cache.enct.index.json``, an ordinary encrypted index (so
``enctensor.load``, ``verify_file`` and ``rekey_file`` take it). What restores the cache byte
for byte is in the metadata entry ``enctensor.tvm_cache`` of the set's first file (compact
JSON)::

    {"version":1,"file":"tensor-cache.json","b16":true,"cache":<tensor-cache.json, parsed>}

with every ``md5sum`` replaced by ``null``. TVM writes the md5 and never checks it; here it is
checked once, when encrypting (a shard that does not match it is refused), is not kept
(an md5 of the plaintext, readable without a key, would let anyone confirm a guess of the
weights) and is computed again from the decrypted bytes. The MAC of every file, and the set
binding, authenticate everything instead. The cache is restored only in the layout TVM
writes: a ``tensor-cache.json`` that ``json.dumps(indent=4)`` does not reproduce, records that
do not cover their shard exactly in order, or a ``-b16`` file that does not match are
refused before anything is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .._api import Reader
from .._dtypes import ITEMSIZE
from .._sharded import SHARD_KEY, bind, is_plain_name
from ..errors import FormatError
from . import sharded
from ._common import (
    Decryptor,
    InputFormatError,
    MappedFile,
    Meter,
    PathLike,
    Row,
    Secret,
    Staging,
    about,
    open_output,
    write_encrypted,
)

#: The names TVM gives a cache's JSON (``tensor-cache.json`` since TVM 0.21, before that
#: ``ndarray-cache.json``).
CACHE_FILES = ("tensor-cache.json", "ndarray-cache.json")
#: The metadata key of the set's first file that holds the cache's JSON.
CACHE_KEY = "enctensor.tvm_cache"
RECORD_FORMATS = ("raw", "f32-to-bf16")
MAX_NDIM = 64  # the enctensor format's limit
MAX_NAME_BYTES = 4096

#: Format dtype name -> TVM dtype string.
TVM_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
FORMAT_NAMES: dict[str, str] = {v: k for k, v in TVM_DTYPES.items()}


def b16_name(cache_file: str) -> str:
    """``tensor-cache.json`` -> ``tensor-cache-b16.json``."""
    return cache_file.removesuffix(".json") + "-b16.json"


def index_name(cache_file: str) -> str:
    """``tensor-cache.json`` -> ``tensor-cache.enct.index.json``, the encrypted set's index."""
    return cache_file.removesuffix(".json") + ".enct.index.json"


def encrypted_name(data_path: str) -> str:
    """``params_shard_0.bin`` -> ``params_shard_0.enct``."""
    return data_path.removesuffix(".bin") + sharded.ENC_SUFFIX


@dataclass(frozen=True)
class Record:
    name: str
    shape: list[int]
    dtype: str  # TVM's dtype string
    format: str
    nbytes: int
    offset: int

    @property
    def bf16_encoded(self) -> bool:
        """Whether the bytes are bfloat16 standing for float32 values (as TVM decides)."""
        return self.format == "f32-to-bf16" and self.dtype == "float32"

    def typed_as(self) -> str | None:
        """The enctensor dtype whose values the bytes are (BF16 for a bf16-encoded float32),
        if enctensor has one and the size matches the shape; else ``None`` (raw bytes)."""
        enct = "BF16" if self.bf16_encoded else FORMAT_NAMES.get(self.dtype)
        if enct is not None and math.prod(self.shape) * ITEMSIZE[enct] == self.nbytes:
            return enct
        return None

    def stored(self) -> tuple[str, list[int]]:
        """The enctensor dtype and shape this record is stored as."""
        enct = self.typed_as()
        return (enct, self.shape) if enct is not None else ("U8", [self.nbytes])


@dataclass(frozen=True)
class Shard:
    data_path: str
    nbytes: int
    records: list[Record]
    md5: str | None

    @property
    def encrypted_name(self) -> str:
        return encrypted_name(self.data_path)


@dataclass(frozen=True)
class Cache:
    """A parsed tensor cache: the name of its JSON, the JSON (every ``md5sum`` ``None``),
    its shards, and whether a ``-b16`` copy goes with it."""

    file: str
    obj: dict[str, Any]
    shards: list[Shard]
    b16: bool

    @property
    def metadata(self) -> Any:
        return self.obj["metadata"]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _members(shown: PathLike, what: str, obj: object, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict) or not set(required) <= obj.keys():
        raise InputFormatError(f"{shown}: {what} must be an object with {', '.join(required)}")
    return obj


def _record(shown: PathLike, obj: object) -> Record:
    rec = _members(shown, "a record", obj, ("name", "shape", "dtype", "format", "nbytes", "byteOffset"))
    name, shape, dtype, fmt = rec["name"], rec["shape"], rec["dtype"], rec["format"]
    if not isinstance(name, str) or not name:
        raise InputFormatError(f"{shown}: a record name must be a non-empty string, not {name!r}")
    try:
        too_long = len(name.encode("utf-8")) > MAX_NAME_BYTES
    except UnicodeEncodeError:
        raise InputFormatError(f"{shown}: record name {name!r} is not valid Unicode") from None
    if too_long:
        raise InputFormatError(f"{shown}: record name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_uint(d) for d in shape)):
        raise InputFormatError(f"{shown}: record {name!r}: bad shape {shape!r}")
    if not isinstance(dtype, str):
        raise InputFormatError(f"{shown}: record {name!r}: dtype is not a string")
    if fmt not in RECORD_FORMATS:
        raise InputFormatError(
            f"{shown}: record {name!r}: format {fmt!r} is not one TVM writes ({', '.join(RECORD_FORMATS)})"
        )
    if not (_is_uint(rec["nbytes"]) and _is_uint(rec["byteOffset"])):
        raise InputFormatError(
            f"{shown}: record {name!r}: nbytes and byteOffset must be non-negative integers"
        )
    return Record(name, list(shape), dtype, fmt, rec["nbytes"], rec["byteOffset"])


def parse_cache(shown: PathLike, obj: object, *, md5: bool) -> list[Shard]:
    """Checks the parsed JSON of a cache and returns its shards. ``md5``: whether every
    ``md5sum`` present must be an md5 (a plaintext cache) or ``null`` (the stored copy)."""
    top = _members(shown, "a tensor cache", obj, ("metadata", "records"))
    if not isinstance(top["records"], list) or not top["records"]:
        raise InputFormatError(f"{shown}: the tensor cache lists no shard: there is nothing to encrypt")
    shards: list[Shard] = []
    names: set[str] = set()
    stored_as: set[str] = set()
    for item in top["records"]:
        s = _members(shown, "a shard record", item, ("dataPath", "format", "nbytes", "records"))
        path, nbytes, records = s["dataPath"], s["nbytes"], s["records"]
        if not is_plain_name(path) or path in (*CACHE_FILES, *map(b16_name, CACHE_FILES)):
            raise InputFormatError(f"{shown}: dataPath {path!r} is not a plain file name next to the cache")
        if encrypted_name(path) in stored_as:
            raise InputFormatError(f"{shown}: two shards would be stored as {encrypted_name(path)!r}")
        stored_as.add(encrypted_name(path))
        if s["format"] != "raw-shard" or not _is_uint(nbytes):
            raise InputFormatError(f"{shown}: shard {path}: format must be raw-shard and nbytes an integer")
        digest = s.get("md5sum")
        if "md5sum" in s and not (isinstance(digest, str) if md5 else digest is None):
            raise InputFormatError(f"{shown}: shard {path}: bad md5sum {digest!r}")
        if not isinstance(records, list) or not records:
            raise InputFormatError(f"{shown}: shard {path} holds no record")
        parsed = [_record(shown, r) for r in records]
        pos = 0
        for r in parsed:
            if r.name in names:
                raise InputFormatError(f"{shown}: record name {r.name!r} appears twice")
            names.add(r.name)
            if r.offset != pos:
                raise InputFormatError(
                    f"{shown}: shard {path}: record {r.name!r} starts at byte {r.offset}, expected {pos}: records"
                    " must follow each other without gaps, as TVM writes them"
                )
            pos += r.nbytes
        if pos != nbytes:
            raise InputFormatError(
                f"{shown}: shard {path}: its records cover {pos} bytes, but it holds {nbytes}"
            )
        shards.append(Shard(path, nbytes, parsed, digest))
    return shards


def cache_text(obj: Any) -> bytes:
    """A cache's JSON as TVM writes it."""
    return json.dumps(obj, indent=4).encode("utf-8")


def b16_text(obj: dict[str, Any]) -> bytes:
    """The ``-b16`` JSON that TVM writes next to a cache with ``f32-to-bf16`` records."""
    records = copy.deepcopy(obj["records"])
    for shard in records:
        for item in shard["records"]:
            if item["format"] == "f32-to-bf16" and item["dtype"] == "float32":
                item["format"] = "raw"
                item["dtype"] = "bfloat16"
    return cache_text({"metadata": obj["metadata"], "records": records})


def _has_bf16(shards: list[Shard]) -> bool:
    return any(r.bf16_encoded for s in shards for r in s.records)


def _without_md5(obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["records"] = [{k: (None if k == "md5sum" else v) for k, v in s.items()} for s in obj["records"]]
    return out


def read_cache(directory: Path, file: str) -> Cache:
    """Reads and checks the plaintext cache whose JSON is ``directory / file`` (not its shards)."""
    path = directory / file
    raw, obj = sharded.read_json(path, "tensor cache")
    shards = parse_cache(path, obj, md5=True)
    if cache_text(obj) != raw:
        raise InputFormatError(
            f"{path}: not laid out as TVM writes it (json.dump with indent=4), so it could not be restored"
            " byte for byte: write it with tvm.contrib.tvmjs.dump_tensor_cache"
        )
    b16_path = directory / b16_name(file)
    b16 = b16_path.exists()
    if b16 and (not _has_bf16(shards) or sharded.read_json(b16_path, "tensor cache")[0] != b16_text(obj)):
        raise InputFormatError(
            f"{b16_path}: does not match {file} as TVM derives it (a stale copy?): remove it, or dump the"
            " cache again"
        )
    return Cache(file, _without_md5(obj), shards, b16)


def consumed(cache: Cache) -> list[str]:
    """The files of the plaintext cache's directory that the cache accounts for."""
    return [cache.file, *([b16_name(cache.file)] if cache.b16 else []), *(s.data_path for s in cache.shards)]


def outputs(cache: Cache) -> list[str]:
    """The files the encrypted cache is made of."""
    return [index_name(cache.file), *(s.encrypted_name for s in cache.shards)]


def _bookkeeping(cache: Cache) -> str:
    return json.dumps(
        {"version": 1, "file": cache.file, "b16": cache.b16, "cache": cache.obj}, separators=(",", ":")
    )


def _rows(m: MappedFile, shard: Shard) -> list[Row]:
    return [(r.name, *r.stored(), m.view(r.offset, r.nbytes), True) for r in shard.records]


def encrypt(
    directory: Path,
    cache: Cache,
    out_dir: Path,
    secret: Secret,
    staging: Staging,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter,
    extra_metadata: Callable[[str], list[tuple[str, str]]] = lambda name: [],
) -> int:
    """Stages the encrypted set of the cache ``cache`` of ``directory`` in ``out_dir``;
    returns the number of tensors. Every shard is checked against its size and md5sum.
    ``extra_metadata(encrypted shard name)`` is added to each shard's metadata (a model
    directory's manifest)."""

    def member(position: int, shard: Shard) -> sharded.Member:
        src = directory / shard.data_path

        def encrypt_shard(tmp: Path, entry: str) -> int:
            with MappedFile(src) as m:
                if m.size != shard.nbytes:
                    raise InputFormatError(
                        f"{src}: holds {m.size} bytes, but {cache.file} says {shard.nbytes}"
                    )
                if shard.md5 is not None and hashlib.md5(m.view(0, m.size).data).hexdigest() != shard.md5:
                    raise InputFormatError(
                        f"{src}: does not match the md5sum {cache.file} records for it: the shard was"
                        " changed or damaged after TVM wrote it"
                    )
                rows = _rows(m, shard)
                metadata = [(CACHE_KEY, _bookkeeping(cache))] if position == 0 else []
                try:
                    write_encrypted(
                        tmp,
                        rows,
                        [*metadata, (SHARD_KEY, entry), *extra_metadata(shard.encrypted_name)],
                        secret,
                        chunk_size=chunk_size,
                        scrypt_log_n=scrypt_log_n,
                        meter=meter,
                        shown=out_dir / shard.encrypted_name,
                    )
                finally:
                    del rows  # release the views before the map is closed
            return len(shard.records)

        return sharded.Member(shard.encrypted_name, encrypt_shard)

    weight_map = {r.name: s.encrypted_name for s in cache.shards for r in s.records}
    index = {"metadata": {"format": "tvm-tensor-cache", "file": cache.file}, "weight_map": weight_map}
    members = [member(i, s) for i, s in enumerate(cache.shards)]
    return sharded.stage_set(out_dir / index_name(cache.file), members, sharded.dump_index(index), staging)


# --- Reading the encrypted set ------------------------------------------------------------


def is_cache(readers: list[tuple[str, Reader]]) -> bool:
    """Whether a bound set (in set order) is an encrypted tensor cache."""
    return any(k == CACHE_KEY for k, _ in readers[0][1].metadata())


def _fail(shown: PathLike, problem: str) -> FormatError:
    return FormatError(f"{shown}: {problem}: this set was not written by enctensor's tensor-cache converter")


def stored_cache(index_path: Path, readers: list[tuple[str, Reader]]) -> Cache:
    """The cache that the (authenticated, bound) set ``readers`` stores, checked against the
    tensors of every file."""
    first = index_path.parent / readers[0][0]
    text = dict(readers[0][1].metadata()).get(CACHE_KEY)
    if text is None:
        raise _fail(first, f"the set's first file has no {CACHE_KEY} metadata entry")
    try:
        book = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _fail(first, f"malformed {CACHE_KEY} metadata entry ({e})") from None
    if not isinstance(book, dict) or book.get("version") != 1:
        raise _fail(first, f"unsupported {CACHE_KEY} metadata entry")
    file, b16, obj = book.get("file"), book.get("b16"), book.get("cache")
    if file not in CACHE_FILES or not isinstance(b16, bool):
        raise _fail(first, f"malformed {CACHE_KEY} metadata entry")
    try:
        shards = parse_cache(first, obj, md5=False)
    except InputFormatError as e:
        raise _fail(first, str(e)) from None
    assert isinstance(obj, dict)
    if b16 and not _has_bf16(shards):
        raise _fail(first, "a -b16 copy is recorded for a cache without f32-to-bf16 records")
    if [s.encrypted_name for s in shards] != [name for name, _ in readers]:
        raise _fail(first, "the shards it records are not the files of the set")
    for shard, (name, reader) in zip(shards, readers, strict=True):
        held = [(row[0], row[1], list(row[2]), row[4]) for row in reader.tensors()]
        if held != [(r.name, *r.stored(), r.nbytes) for r in shard.records]:
            raise _fail(index_path.parent / name, "its tensors are not the records of the cache")
    return Cache(file, obj, shards, b16)


def open_cache(
    index_path: PathLike, open_shard: Callable[[Path], Any], *, expect_checkpoint: str | None = None
) -> tuple[Cache, list[tuple[str, Any]]]:
    """Opens (``open_shard`` authenticates each file) and binds the encrypted set of a cache
    given by its index, and returns the cache it stores and the readers, in shard order."""
    index_path = Path(index_path)
    index = sharded.read_index(index_path)
    readers = bind(index_path, index.shards, open_shard, expect_checkpoint=expect_checkpoint)
    if not is_cache(readers):
        raise FormatError(f"{index_path}: an encrypted sharded checkpoint, not an encrypted tensor cache")
    return stored_cache(index_path, readers), readers


class _Md5Writer:
    """Writes to a file and hashes what it writes (the md5sum TVM records for a shard)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.md5 = hashlib.md5()

    def write(self, data: Any) -> int:
        self.md5.update(data)
        return self._out.write(data)


def write_plain(
    cache: Cache, readers: list[tuple[str, Reader]], out_dir: Path, staging: Staging, *, meter: Meter
) -> int:
    """Stages the plaintext cache (shards, JSON, ``-b16`` JSON) of a set opened with
    :func:`open_cache` in ``out_dir``; returns the number of tensors."""
    plan = [staging.add(out_dir / s.data_path) for s in cache.shards]
    json_tmp = staging.add(out_dir / cache.file)
    b16_tmp = staging.add(out_dir / b16_name(cache.file)) if cache.b16 else None
    obj = copy.deepcopy(cache.obj)
    for shard, shard_obj, (_, reader), tmp in zip(cache.shards, obj["records"], readers, plan, strict=True):
        with open_output(tmp) as f:
            out: Any = _Md5Writer(f)
            with Decryptor(reader, meter) as dec, about(out_dir / shard.data_path):
                for i, r in enumerate(shard.records):
                    dec.copy(i, r.nbytes, out)
        if "md5sum" in shard_obj:
            shard_obj["md5sum"] = out.md5.hexdigest()
    with open_output(json_tmp) as f:
        f.write(cache_text(obj))
    if b16_tmp is not None:
        with open_output(b16_tmp) as f:
            f.write(b16_text(obj))
    return sum(len(s.records) for s in cache.shards)


__all__ = [
    "CACHE_FILES",
    "CACHE_KEY",
    "TVM_DTYPES",
    "Cache",
    "Record",
    "Shard",
    "encrypt",
    "open_cache",
    "read_cache",
    "stored_cache",
    "write_plain",
]
