"""Hugging Face sharded checkpoints: ``model.safetensors.index.json`` + shards <-> an
encrypted index (e.g. ``model.enct.index.json``) + encrypted shards.

The encrypted index has the same structure as the original, with every ``weight_map`` entry
pointing to the encrypted shard: ``X.safetensors`` becomes ``X.enct`` (and back). Other
members (``metadata.total_size``, ...) are kept as they are. Indexes are written as the
``transformers`` library writes them (``json.dumps(indent=2)`` plus a newline), keeping the
member order of the input, so a ``transformers`` index converts back byte for byte.

The index itself is not encrypted or authenticated (it holds only names). Decryption checks
that every shard holds exactly the tensors that the index assigns to it, so an index that was
edited to move tensors between shards is detected; it cannot detect a whole shard replaced
by another file encrypted with the same key under the same tensor names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _core
from ..errors import IntegrityError
from . import safetensors as st
from ._common import InputFormatError, MappedFile, Meter, PathLike, Secret, Staging, about, open_output

#: An index larger than this is not an index (transformers' are a few hundred KiB at most).
MAX_INDEX_LEN = 64 << 20
PLAIN_SUFFIX = ".safetensors"
ENC_SUFFIX = ".enct"


def encrypted_name(shard: str) -> str:
    """``model-00001-of-00002.safetensors`` -> ``model-00001-of-00002.enct``."""
    return (shard.removesuffix(PLAIN_SUFFIX)) + ENC_SUFFIX


def decrypted_name(shard: str) -> str:
    """``model-00001-of-00002.enct`` -> ``model-00001-of-00002.safetensors``."""
    return (shard.removesuffix(ENC_SUFFIX)) + PLAIN_SUFFIX


@dataclass(frozen=True)
class Index:
    path: Path
    obj: dict[str, Any]
    shards: dict[str, list[str]]  # shard file name -> tensor names, in index order

    def shard_path(self, shard: str) -> Path:
        return self.path.parent / shard


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InputFormatError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_json(path: PathLike) -> Any:
    """Parses a JSON file of at most ``MAX_INDEX_LEN`` bytes."""
    with about(path), open(path, "rb") as f:
        raw = f.read(MAX_INDEX_LEN + 1)
        if len(raw) > MAX_INDEX_LEN:
            raise InputFormatError(f"{path}: too large for a checkpoint index")
        try:
            return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise InputFormatError(f"{path}: not a JSON checkpoint index: {e}") from None


def safe_name(path: PathLike, name: object) -> str:
    """A shard must be a plain file name next to the index: no directories, no ``..``."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.path.basename(name) != name
    ):
        raise InputFormatError(
            f"{path}: weight_map entry {name!r} is not a plain file name next to the index"
        )
    return name


def read_index(path: PathLike) -> Index:
    """Parses and checks a sharded checkpoint index."""
    obj = load_json(path)
    with about(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
            raise InputFormatError(f"{path}: not a checkpoint index: no weight_map object")
        shards: dict[str, list[str]] = {}
        for tensor, shard in obj["weight_map"].items():
            shards.setdefault(safe_name(path, shard), []).append(tensor)
        return Index(Path(path), obj, shards)


def dump_index(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _renamed(index: Index, rename: Callable[[str], str]) -> dict[str, Any]:
    obj = dict(index.obj)
    obj["weight_map"] = {t: rename(s) for t, s in index.obj["weight_map"].items()}
    return obj


def _check_names(what: PathLike, index: Index, shard: str, names: list[str], exc: type[Exception]) -> None:
    listed, held = set(index.shards[shard]), set(names)
    if listed != held:
        missing = sorted(listed - held)[:3]
        extra = sorted(held - listed)[:3]
        raise exc(
            f"{what}: the index does not match this shard (tensors listed but absent: {missing},"
            f" present but not listed: {extra})"
        )


def data_size(index: Index) -> int:
    total = 0
    for shard in index.shards:
        with MappedFile(index.shard_path(shard)) as m:
            header = st.read_header(m)
            _check_names(m.path, index, shard, [t.name for t in header.tensors], InputFormatError)
            total += header.nbytes
    return total


def encrypt(
    src: PathLike,
    dst: PathLike,
    secret: Secret,
    staging: Staging,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter_factory: Callable[[int], Meter],
) -> tuple[int, int]:
    """Stages the encrypted shards and index; returns (tensors, bytes)."""
    index = read_index(src)
    meter = meter_factory(data_size(index))
    dst = Path(dst)
    plan = [(shard, staging.add(dst.parent / encrypted_name(shard))) for shard in index.shards]
    index_tmp = staging.add(dst)
    tensors = 0
    for shard, tmp in plan:
        shard_path = index.shard_path(shard)
        header = st.encrypt(
            shard_path,
            tmp,
            secret,
            chunk_size=chunk_size,
            scrypt_log_n=scrypt_log_n,
            meter=meter,
            shown=dst.parent / encrypted_name(shard),
        )
        tensors += len(header.tensors)
    with open_output(index_tmp) as f:
        f.write(dump_index(_renamed(index, encrypted_name)))
    return tensors, meter.total


def _open_shards(index: Index, secret: Secret) -> list[tuple[str, _core.Reader]]:
    readers = []
    for shard in index.shards:
        path = index.shard_path(shard)
        reader = secret.open(path)
        _check_names(path, index, shard, [r[0] for r in reader.tensors()], IntegrityError)
        readers.append((shard, reader))
    return readers


def decrypt(
    src: PathLike,
    dst: PathLike,
    secret: Secret,
    staging: Staging,
    *,
    meter_factory: Callable[[int], Meter],
) -> tuple[int, int, list[str]]:
    """Stages the decrypted shards and index; returns (tensors, bytes, dropped metadata)."""
    index = read_index(src)
    dst = Path(dst)
    plan = [(shard, staging.add(dst.parent / decrypted_name(shard))) for shard in index.shards]
    index_tmp = staging.add(dst)
    readers = _open_shards(index, secret)
    total = sum(r[4] for _, reader in readers for r in reader.tensors())
    meter = meter_factory(total)
    tensors = 0
    dropped: set[str] = set()
    for (shard, reader), (_, tmp) in zip(readers, plan, strict=True):
        with open_output(tmp) as f:
            dropped.update(st.write(reader, f, meter=meter, shown=index.shard_path(shard)))
        tensors += len(reader.tensors())
    with open_output(index_tmp) as f:
        f.write(dump_index(_renamed(index, decrypted_name)))
    return tensors, total, sorted(dropped)


def verify(src: PathLike, secret: Secret) -> tuple[int, int]:
    """Verifies every shard of an encrypted index; returns (tensors, bytes)."""
    index = read_index(src)
    tensors = nbytes = 0
    for shard, reader in _open_shards(index, secret):
        with about(index.shard_path(shard)):
            reader.verify()
        rows = reader.tensors()
        tensors += len(rows)
        nbytes += sum(r[4] for r in rows)
    return tensors, nbytes
