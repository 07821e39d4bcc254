"""Sharded sets: the metadata entry that binds the shards of a checkpoint together, the checks
every reader of a set makes (spec/FORMAT.md, "Sharded sets and rollback"), :func:`open_set`
(how every reader opens a set) and :func:`load_sharded`.

A set is an index (``<name>.enct.index.json``: ``{"metadata": ..., "weight_map": {tensor:
shard file name}}``, not authenticated) and its shards. Each shard written as part of a set
carries the metadata entry ``enctensor.shard``, compact JSON with sorted keys::

    {"checkpoint":"<32 hex digits>","count":n,"files":["<shard 0>",...,"<shard n-1>"],"index":i}

``checkpoint`` is 16 random bytes, fresh for every set written. The entry is covered by the
shard's MAC (and signature), so it is as genuine as the shard: :func:`bind` trusts the
index for nothing but where to start and checks it against the entries.

This module imports nothing from :mod:`enctensor.convert` at import time (the converters
import it, and the numpy API may too).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from ._api import DEFAULT_MAX_SCRYPT_LOG_N, Reader, _open, read_readers
from ._remote import UrlPath, as_path
from .errors import IntegrityError

if TYPE_CHECKING:
    from .convert.sharded import Index

PathLike = str | os.PathLike[str]

#: The metadata key of the binding entry.
SHARD_KEY = "enctensor.shard"
_CHECKPOINT = re.compile(r"[0-9a-f]{32}")
#: Shards named in an error message before "...".
_SHOWN = 4


@dataclass(frozen=True)
class ShardEntry:
    """A parsed ``enctensor.shard`` entry."""

    checkpoint: str
    index: int
    count: int
    files: tuple[str, ...]


def new_checkpoint() -> str:
    """A fresh checkpoint id: 16 random bytes as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def entry_text(checkpoint: str, index: int, files: Sequence[str]) -> str:
    """The value of ``enctensor.shard`` for shard ``index`` of the set ``files``."""
    if not _CHECKPOINT.fullmatch(checkpoint):
        raise ValueError("a checkpoint id is 32 lowercase hexadecimal digits")
    if not 0 <= index < len(files):
        raise ValueError(f"shard index {index} is outside the set of {len(files)} files")
    obj = {"checkpoint": checkpoint, "index": index, "count": len(files), "files": list(files)}
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def is_plain_name(name: object) -> TypeGuard[str]:
    """A shard is a plain file name next to its index: no directory, no ``..``, no NUL."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and os.path.basename(name) == name
    )


def _fail(path: PathLike, message: str) -> IntegrityError:
    """An :class:`IntegrityError` about ``path`` (the CLI names that file)."""
    e = IntegrityError(f"{os.fspath(path)}: {message}")
    e.enctensor_path = os.fspath(path)  # type: ignore[attr-defined]
    return e


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate member {k!r}")
        out[k] = v
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_entry(path: PathLike, metadata: Mapping[str, str]) -> ShardEntry:
    """The ``enctensor.shard`` entry of the (authenticated) ``metadata`` of shard ``path``;
    :class:`IntegrityError` if it is absent or malformed."""
    text = metadata.get(SHARD_KEY)
    if text is None:
        raise _fail(
            path,
            f"this file has no {SHARD_KEY} metadata entry, so it was not written as a shard of this"
            " checkpoint (a file encrypted on its own, or of an older library, put in the set)",
        )
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise _fail(path, f"malformed {SHARD_KEY} metadata entry: {e}") from None
    if not isinstance(obj, dict) or not {"checkpoint", "index", "count", "files"} <= obj.keys():
        raise _fail(path, f"malformed {SHARD_KEY} metadata entry: it needs checkpoint, index, count, files")
    checkpoint, index, count, files = obj["checkpoint"], obj["index"], obj["count"], obj["files"]
    problem = None
    if not isinstance(checkpoint, str) or not _CHECKPOINT.fullmatch(checkpoint):
        problem = "checkpoint is not 32 lowercase hexadecimal digits"
    elif not _is_int(count) or count < 1:
        problem = "count is not a positive integer"
    elif not isinstance(files, list) or len(files) != count:
        problem = f"files does not list count ({count}) file names"
    elif not all(is_plain_name(f) for f in files):
        problem = "files holds a name that is not a plain file name"
    elif len(set(files)) != len(files):
        problem = "files names a file twice"
    elif not _is_int(index) or not 0 <= index < count:
        problem = f"index is not an integer from 0 to {count - 1}"
    if problem is not None:
        raise _fail(path, f"malformed {SHARD_KEY} metadata entry: {problem}")
    return ShardEntry(checkpoint, index, count, tuple(files))


def check_expected_checkpoint(expect_checkpoint: str | None) -> str | None:
    """``expect_checkpoint`` normalized to lowercase; :class:`ValueError` if it is not a
    checkpoint id."""
    if expect_checkpoint is None:
        return None
    if not isinstance(expect_checkpoint, str):
        raise TypeError(f"expect_checkpoint must be a str, not {type(expect_checkpoint).__name__}")
    pinned = expect_checkpoint.lower()
    if not _CHECKPOINT.fullmatch(pinned):
        raise ValueError("expect_checkpoint must be a checkpoint id: 32 hexadecimal digits")
    return pinned


def bind(
    index_path: PathLike,
    listed: Mapping[str, Sequence[str]],
    open_shard: Callable[[Any], Any],  # given a Path, or a UrlPath for a URL index
    *,
    expect_checkpoint: str | None = None,
) -> list[tuple[str, Any]]:
    """Opens the shards of the set whose index is ``index_path`` and checks that they are one
    whole set, as the index describes it; returns ``(file name, reader)`` in set order.

    ``listed`` maps each shard file name of the index's ``weight_map`` to the tensors mapped
    to it (index order); ``open_shard(path)`` opens and authenticates a shard (MAC, signature,
    any ``expect_metadata`` pins) and returns a ``_core.Reader`` (or an object with
    ``metadata()`` and ``tensors()``).

    Checked (any failure is an :class:`IntegrityError` naming the shard or tensor): every
    shard has the entry; all have the same ``checkpoint``, ``count`` and ``files`` (and
    ``checkpoint`` equals ``expect_checkpoint`` if given); the file named ``files[i]`` is shard
    ``i``; every file of ``files`` is present, in the index and read, and no other file is in
    the index; the index maps every tensor of each shard to that shard and nothing else to
    it.
    """
    index_path = as_path(index_path)
    pinned = check_expected_checkpoint(expect_checkpoint)
    if not listed:
        raise _fail(index_path, "the index maps no tensor to any shard: no shard of the checkpoint is listed")
    directory = index_path.parent

    def shard_path(name: str) -> Path | UrlPath:
        return directory / name

    # Where to start: the first shard of the index that is there. Everything else is checked
    # against its authenticated entry.
    first: tuple[str, Any] | None = None
    missing: FileNotFoundError | None = None
    for name in listed:
        try:
            first = (name, open_shard(shard_path(name)))
            break
        except FileNotFoundError as e:
            missing = missing or e
    if first is None:
        assert missing is not None
        raise missing
    first_name, first_reader = first
    anchor = parse_entry(shard_path(first_name), dict(first_reader.metadata()))
    files = anchor.files
    if pinned is not None and anchor.checkpoint != pinned:
        raise _fail(
            shard_path(first_name),
            f"this shard belongs to checkpoint {anchor.checkpoint}, but checkpoint {pinned} was expected"
            " (another release?)",
        )
    in_set = set(files)
    for name, tensors in listed.items():
        if name not in in_set:
            raise _fail(
                index_path,
                f"the index maps tensor {tensors[0]!r} to {name}, which is not a shard of this checkpoint"
                f" (its {len(files)} shards, as {first_name} records them: {_listing(files)})",
            )
    for i, name in enumerate(files):
        if name not in listed:
            raise _fail(
                shard_path(name),
                f"shard {i + 1} of {len(files)} of this checkpoint is not in the index {index_path.name}"
                " (the index lists none of its tensors: a shard was dropped)",
            )

    readers: list[tuple[str, Any]] = []
    for i, name in enumerate(files):
        path = shard_path(name)
        if name == first_name:
            reader = first_reader
        else:
            try:
                reader = open_shard(path)
            except FileNotFoundError:
                raise _fail(
                    path, f"shard {i + 1} of {len(files)} of this checkpoint is missing (no such file)"
                ) from None
        metadata = dict(reader.metadata())
        entry = anchor if name == first_name else parse_entry(path, metadata)
        if entry.checkpoint != anchor.checkpoint or entry.count != anchor.count or entry.files != files:
            raise _fail(
                path,
                f"this shard belongs to another checkpoint ({entry.checkpoint}, {entry.count} shards) than"
                f" {first_name} ({anchor.checkpoint}, {anchor.count} shards): shards of different releases"
                " are mixed",
            )
        if entry.index != i:
            raise _fail(
                path,
                f"this file is shard {entry.index + 1} of {entry.count} ({files[entry.index]}), but it is"
                f" named as shard {i + 1} ({name}): shards were swapped or renamed",
            )
        _check_tensors(index_path, path, listed[name], [row[0] for row in reader.tensors()])
        readers.append((name, reader))
    return readers


def _check_tensors(
    index_path: Path | UrlPath, path: Path | UrlPath, listed: Sequence[str], held: Sequence[str]
) -> None:
    listed_set, held_set = set(listed), set(held)
    absent = [t for t in listed if t not in held_set]
    if absent:
        raise _fail(
            path,
            f"the index does not match this shard: {index_path.name} maps tensor {absent[0]!r} to it,"
            " which it does not hold" + (f" ({len(absent)} such tensors)" if len(absent) > 1 else ""),
        )
    unlisted = [t for t in held if t not in listed_set]
    if unlisted:
        raise _fail(
            path,
            f"the index does not match this shard: it holds tensor {unlisted[0]!r}, which"
            f" {index_path.name} does not map to it"
            + (f" ({len(unlisted)} such tensors)" if len(unlisted) > 1 else ""),
        )


def open_set(
    index_path: PathLike,
    *,
    key: Any = None,
    passphrase: Any = None,
    verify_with: Any = None,
    expect_metadata: Mapping[str, str] | None = None,
    expect_checkpoint: str | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
    index: Index | None = None,
) -> list[tuple[str, Reader]]:
    """Opens and authenticates every shard of the sharded checkpoint whose encrypted index is
    ``index_path`` and checks that they are one whole set (:func:`bind`); returns ``(shard
    file name, reader)`` in set order. The arguments are those of :func:`load_sharded`; no
    tensor is decrypted. A URL index names shards at URLs next to it (``storage_options`` as
    for :func:`enctensor.load`). ``index`` is the index at ``index_path`` if the caller has
    already read it."""
    from .convert.sharded import read_index

    pinned = check_expected_checkpoint(expect_checkpoint)
    if index is None:
        index = read_index(index_path, storage_options)

    def open_shard(path: Path | UrlPath) -> Reader:
        try:
            return _open(
                path,
                key,
                passphrase,
                verify_with,
                expect_metadata=expect_metadata,
                max_scrypt_log_n=max_scrypt_log_n,
                storage_options=storage_options,
            )
        except BaseException as e:
            if getattr(e, "enctensor_path", None) is None:
                with contextlib.suppress(AttributeError, TypeError):
                    e.enctensor_path = os.fspath(path)  # type: ignore[attr-defined]
            raise

    return bind(index_path, index.shards, open_shard, expect_checkpoint=pinned)


def set_metadata(readers: Sequence[Any]) -> dict[str, str]:
    """The metadata of a set as one checkpoint: the entries every shard holds with the same
    value (in the first shard's order), without the shards' own ``enctensor.shard`` entries.
    Entries that differ between shards are left out."""
    common = {k: v for k, v in readers[0].metadata() if k != SHARD_KEY}
    for reader in readers[1:]:
        held = dict(reader.metadata())
        common = {k: v for k, v in common.items() if held.get(k) == v}
    return common


def load_sharded(
    index_path: PathLike,
    *,
    key: Any = None,
    passphrase: Any = None,
    verify_with: Any = None,
    expect_metadata: Mapping[str, str] | None = None,
    expect_checkpoint: str | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Decrypts and verifies every tensor of the sharded checkpoint whose encrypted index is
    ``index_path`` (``*.enct.index.json``, shards next to it) into numpy arrays, shard by
    shard in set order.

    ``key``, ``passphrase``, ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are
    as for :func:`enctensor.load` and apply to every shard. Before any tensor is decrypted,
    the set is checked to be whole (:func:`bind`): a missing, extra, swapped, renamed or
    mixed-in shard, or an index that does not map each tensor to the shard holding it, is an
    :class:`IntegrityError`. ``expect_checkpoint`` pins the set's checkpoint id (the
    ``checkpoint`` of any shard's ``enctensor.shard`` metadata entry, 32 hex digits), so that
    a whole set rolled back to an older release is refused too.
    """
    readers = open_set(
        index_path,
        key=key,
        passphrase=passphrase,
        verify_with=verify_with,
        expect_metadata=expect_metadata,
        expect_checkpoint=expect_checkpoint,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    return read_readers([reader for _, reader in readers])


__all__ = [
    "SHARD_KEY",
    "ShardEntry",
    "bind",
    "check_expected_checkpoint",
    "entry_text",
    "is_plain_name",
    "load_sharded",
    "new_checkpoint",
    "open_set",
    "parse_entry",
    "set_metadata",
]
