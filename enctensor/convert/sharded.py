"""Hugging Face sharded checkpoints: ``model.safetensors.index.json`` + shards <-> an
encrypted index (e.g. ``model.enct.index.json``) + encrypted shards.

The encrypted index has the same structure as the original, with every ``weight_map`` entry
pointing to the encrypted shard: ``X.safetensors`` becomes ``X.enct`` (and back). Other
members (``metadata.total_size``, ...) are kept as they are, in their order, and the index is
written in the layout of the input: ``json.dumps`` with an indent of 2 (``transformers``,
``huggingface_hub``) or 4, or none, with or without a final newline. An index in any other
layout is written as ``transformers`` writes one (indent 2, final newline).

The index itself is not encrypted or authenticated (it holds only names). What binds the set
is each encrypted shard's metadata entry ``enctensor.shard`` (checkpoint id, position, count
and file names of the set; see :mod:`enctensor._sharded` and spec/FORMAT.md, "Sharded sets
and rollback"), which its MAC and signature cover. Decryption and verification check it
before anything is written: a missing, extra, swapped, renamed or mixed-in shard, or an index
that does not map each tensor to the shard that holds it, is an
:class:`~enctensor.IntegrityError`. The entry is not written back to the decrypted shards, so
a checkpoint converts back byte for byte. Re-keying changes no header, so it keeps the entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _core
from .._api import Reader
from .._remote import UrlPath, as_path, is_url, open_remote
from .._sharded import SHARD_KEY, bind, entry_text, is_plain_name, new_checkpoint
from . import safetensors as st
from ._common import (
    InputFormatError,
    MappedFile,
    Meter,
    PathLike,
    Secret,
    Staging,
    about,
    open_output,
    write_encrypted,
)

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


#: ``(indent, end)`` of the JSON layouts an index is written back in; the first is the default.
Layout = tuple[int | None, str]
LAYOUTS: tuple[Layout, ...] = ((2, "\n"), (2, ""), (4, "\n"), (4, ""), (None, ""), (None, "\n"))


@dataclass(frozen=True)
class Index:
    path: Path | UrlPath
    obj: dict[str, Any]
    shards: dict[str, list[str]]  # shard file name -> tensor names, in index order
    layout: Layout = LAYOUTS[0]

    def shard_path(self, shard: str) -> Path | UrlPath:
        return self.path.parent / shard


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InputFormatError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_limited(path: PathLike, storage_options: Mapping[str, Any] | None) -> bytes:
    """At most ``MAX_INDEX_LEN + 1`` bytes of ``path``, a local file or a URL."""
    if is_url(os.fspath(path)):
        remote = open_remote(os.fspath(path), storage_options)
        return remote.fetch(0, min(remote.size, MAX_INDEX_LEN + 1))
    with open(path, "rb") as f:
        return f.read(MAX_INDEX_LEN + 1)


def read_json(
    path: PathLike, what: str = "checkpoint index", storage_options: Mapping[str, Any] | None = None
) -> tuple[bytes, Any]:
    """The bytes of the JSON file ``path`` (``what`` it should be, for messages; at most
    ``MAX_INDEX_LEN`` bytes) and their parsed value (duplicate member names refused). ``path``
    may be a URL (fsspec, with ``storage_options``)."""
    with about(path):
        raw = _read_limited(path, storage_options)
        if len(raw) > MAX_INDEX_LEN:
            raise InputFormatError(f"{path}: too large for a {what}")
        try:
            return raw, json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InputFormatError(f"{path}: not a JSON {what}: {e}") from None


def load_json(path: PathLike) -> Any:
    """Parses a JSON checkpoint index of at most ``MAX_INDEX_LEN`` bytes."""
    return read_json(path)[1]


def safe_name(path: PathLike, name: object) -> str:
    """A shard must be a plain file name next to the index: no directories, no ``..``."""
    if not is_plain_name(name):
        raise InputFormatError(
            f"{path}: weight_map entry {name!r} is not a plain file name next to the index"
        )
    return name


def read_index(path: PathLike, storage_options: Mapping[str, Any] | None = None) -> Index:
    """Parses and checks a sharded checkpoint index (a local file, or a URL whose shards are
    URLs next to it)."""
    raw, obj = read_json(path, storage_options=storage_options)
    with about(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
            raise InputFormatError(f"{path}: not a checkpoint index: no weight_map object")
        shards: dict[str, list[str]] = {}
        for tensor, shard in obj["weight_map"].items():
            shards.setdefault(safe_name(path, shard), []).append(tensor)
        layout = next((lay for lay in LAYOUTS if dump_index(obj, lay) == raw), LAYOUTS[0])
        return Index(as_path(path), obj, shards, layout)


def dump_index(obj: dict[str, Any], layout: Layout = LAYOUTS[0]) -> bytes:
    indent, end = layout
    return (json.dumps(obj, indent=indent) + end).encode("utf-8")


def _renamed(index: Index, rename: Callable[[str], str]) -> dict[str, Any]:
    obj = dict(index.obj)
    obj["weight_map"] = {t: rename(s) for t, s in index.obj["weight_map"].items()}
    return obj


def _check_names(what: PathLike, index: Index, shard: str, names: list[str]) -> None:
    listed, held = set(index.shards[shard]), set(names)
    if listed != held:
        missing = sorted(listed - held)[:3]
        extra = sorted(held - listed)[:3]
        raise InputFormatError(
            f"{what}: the index does not match this shard (tensors listed but absent: {missing},"
            f" present but not listed: {extra})"
        )


def data_size(index: Index) -> int:
    total = 0
    for shard in index.shards:
        with MappedFile(index.shard_path(shard)) as m:
            header = st.read_header(m)
            _check_names(m.path, index, shard, [t.name for t in header.tensors])
            total += header.nbytes
    return total


def _encrypt_shard(
    src: Path,
    tmp: Path,
    secret: Secret,
    entry: str,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter,
    shown: Path,
) -> st.Header:
    """Encrypts one plaintext shard as :func:`safetensors.encrypt` does, with the set's
    ``enctensor.shard`` entry added to its metadata."""
    with MappedFile(src) as m:
        header = st.read_header(m)
        if header.metadata and SHARD_KEY in header.metadata:
            raise InputFormatError(
                f"{src}: metadata key {SHARD_KEY!r} is reserved for enctensor's converters"
            )
        rows = st.rows(m, header)
        try:
            write_encrypted(
                tmp,
                rows,
                [*st.enct_metadata(header), (SHARD_KEY, entry)],
                secret,
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=shown,
            )
        finally:
            del rows  # release the views before the map is closed
    return header


@dataclass(frozen=True)
class Member:
    """One file of a set to encrypt: its name next to the index, and how to write it."""

    name: str
    #: ``encrypt(staged temporary file, its enctensor.shard entry)`` writes the encrypted
    #: file and returns the number of tensors in it.
    encrypt: Callable[[Path, str], int]


def stage_set(index_dst: Path, members: Sequence[Member], index_text: bytes, staging: Staging) -> int:
    """Stages a set: every member, in the order given (the set's order), encrypted with the
    ``enctensor.shard`` entry of one fresh checkpoint id, and its index ``index_text`` at
    ``index_dst``; returns the number of tensors."""
    files = [m.name for m in members]
    checkpoint = new_checkpoint()
    plan = [staging.add(index_dst.parent / name) for name in files]
    index_tmp = staging.add(index_dst)
    tensors = 0
    for position, (member, tmp) in enumerate(zip(members, plan, strict=True)):
        tensors += member.encrypt(tmp, entry_text(checkpoint, position, files))
    with open_output(index_tmp) as f:
        f.write(index_text)
    return tensors


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
    """Stages the encrypted shards and index; returns (tensors, bytes). Every shard gets the
    ``enctensor.shard`` entry of one fresh checkpoint id; the set's files are the encrypted
    shard names, sorted (``model-00001-of-00003.enct``, ...)."""
    index = read_index(src)
    if not index.shards:
        raise InputFormatError(f"{src}: the index maps no tensor to any shard: there is nothing to encrypt")
    meter = meter_factory(data_size(index))
    dst = Path(dst)

    def member(shard: str) -> Member:
        name = encrypted_name(shard)

        def encrypt_shard(tmp: Path, entry: str) -> int:
            header = _encrypt_shard(
                Path(index.shard_path(shard)),
                tmp,
                secret,
                entry,
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=dst.parent / name,
            )
            return len(header.tensors)

        return Member(name, encrypt_shard)

    members = sorted((member(shard) for shard in index.shards), key=lambda m: m.name)
    tensors = stage_set(dst, members, dump_index(_renamed(index, encrypted_name), index.layout), staging)
    return tensors, meter.total


def open_set(
    src: PathLike,
    secret: Secret,
    *,
    expect_checkpoint: str | None = None,
) -> tuple[Index, list[tuple[str, Reader]]]:
    """Opens (and authenticates: MAC, signature, ``expect_metadata`` pins, as
    ``secret.open`` does) every shard of the encrypted index ``src`` and checks that they are
    one whole set as the index describes it (:func:`enctensor._sharded.bind`); returns the
    index and ``(shard file name, reader)`` in set order."""
    index = read_index(src, secret.storage_options)
    return index, bind(src, index.shards, secret.open, expect_checkpoint=expect_checkpoint)


def set_credentials(src: PathLike, secret: Secret) -> list[tuple[Path, dict[str, Any]]]:
    """For re-keying an encrypted index: every shard of the set, in set order, with the
    credential that opens it, after the whole set was opened, authenticated and checked to be
    one set (so that a wrong key, or a broken or mixed set, changes no shard)."""
    index = read_index(src)
    creds: dict[str, dict[str, Any]] = {}

    def open_shard(path: Path) -> Reader:
        p = os.fspath(path)
        reader, cred = secret.attempt(path, lambda c: _core.Reader(p, **c))
        creds[path.name] = cred
        return reader

    readers = bind(src, index.shards, open_shard)
    return [(Path(index.shard_path(name)), creds[name]) for name, _ in readers]


class _Unbound:
    """A reader whose metadata leaves out the ``enctensor.shard`` entry (for writing the
    plaintext shard back as it was)."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    def metadata(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._reader.metadata() if k != SHARD_KEY]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def write_plain(
    index: Index,
    readers: list[tuple[str, Reader]],
    dst: PathLike,
    staging: Staging,
    *,
    meter_factory: Callable[[int], Meter],
) -> tuple[int, int, list[str]]:
    """Stages the plaintext checkpoint of a set opened with :func:`open_set`: the index at
    ``dst`` and the shards next to it; returns (tensors, bytes, dropped metadata)."""
    dst = Path(dst)
    plan = [staging.add(dst.parent / decrypted_name(shard)) for shard, _ in readers]
    index_tmp = staging.add(dst)
    total = sum(r[4] for _, reader in readers for r in reader.tensors())
    meter = meter_factory(total)
    tensors = 0
    dropped: set[str] = set()
    for (shard, reader), tmp in zip(readers, plan, strict=True):
        with open_output(tmp) as f:
            unbound: Any = _Unbound(reader)
            dropped.update(st.write(unbound, f, meter=meter, shown=index.shard_path(shard)))
        tensors += len(reader.tensors())
    with open_output(index_tmp) as f:
        f.write(dump_index(_renamed(index, decrypted_name), index.layout))
    return tensors, total, sorted(dropped)


def verify(
    src: PathLike,
    secret: Secret,
    *,
    expect_checkpoint: str | None = None,
) -> tuple[int, int]:
    """Verifies every shard of an encrypted index, after checking that they are one whole set
    (:func:`open_set`); returns (tensors, bytes)."""
    index, readers = open_set(src, secret, expect_checkpoint=expect_checkpoint)
    tensors = nbytes = 0
    for shard, reader in readers:
        with about(index.shard_path(shard)):
            reader.verify()
        rows = reader.tensors()
        tensors += len(rows)
        nbytes += sum(r[4] for r in rows)
    return tensors, nbytes
