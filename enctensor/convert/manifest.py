"""The manifest of an encrypted model directory: what authenticates the files it copies.

Encrypting a model directory (:mod:`enctensor.convert.directory`) copies every file that is
not weights (``config.json``, tokenizer files, ...) unchanged. So that those copies are as
authentic as the weights, every encrypted file the converter writes (a single file, every
shard of a set, every shard of a tensor cache) carries the metadata entry ``enctensor.files``,
which its MAC (and, when signed, its publisher signature) covers; in a sharded set every
shard holds it, so the set binding covers it too. Its value is canonical JSON (sorted keys, no
whitespace, ``ensure_ascii=False``), at most :data:`MAX_MANIFEST_LEN` bytes::

    {"encrypted":["model.enct",...],"files":{"config.json":{"sha256":"<64 hex>","size":n},...},
     "path":"model.enct","version":1}

``files`` maps the relative path (``/``-separated, from the directory's root) of every copied
file to its size and SHA-256; ``encrypted`` lists every file the converter wrote encrypted
(``.enct`` files and encrypted indexes); ``path`` is the relative path of the file that holds
the entry (so a weight file moved to another place in the tree, or from_pretrained given a
subdirectory, finds the root). All the weight files of a directory hold the same entry but for
``path``. File modes are not recorded: uploads and downloads (the Hugging Face Hub, object
stores) do not keep them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .._sharded import _no_duplicates
from ..errors import IntegrityError
from ._common import InputFormatError, PathLike, tag_path

#: The metadata key of the manifest entry.
MANIFEST_KEY = "enctensor.files"
MANIFEST_VERSION = 1
#: The largest manifest entry (UTF-8 bytes): some 7,000 copied files.
MAX_MANIFEST_LEN = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest entry, without the ``path`` of the file that held it."""

    files: Mapping[str, FileEntry]
    encrypted: tuple[str, ...]

    def text(self, path: str) -> str:
        """The canonical entry for the weight file at relative path ``path``; ``ValueError``
        if it exceeds :data:`MAX_MANIFEST_LEN` (too many copied files)."""
        obj = {
            "version": MANIFEST_VERSION,
            "path": path,
            "files": {p: {"size": e.size, "sha256": e.sha256} for p, e in self.files.items()},
            "encrypted": list(self.encrypted),
        }
        text = _canonical(obj)
        if len(text.encode("utf-8")) > MAX_MANIFEST_LEN:
            raise InputFormatError(
                f"the directory's manifest of {len(self.files)} copied files is larger than"
                f" {MAX_MANIFEST_LEN} bytes: move files that are not part of the model out of the directory"
            )
        return text


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_relative_path(p: object) -> bool:
    """A ``/``-separated relative path whose components are plain names (no ``..``)."""
    if not isinstance(p, str) or not p or "\\" in p or "\0" in p:
        return False
    parts = p.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def _fail(path: PathLike, message: str) -> IntegrityError:
    e = IntegrityError(f"{path}: {message}")
    tag_path(e, path)
    return e


def read(path: Path, metadata: Mapping[str, str]) -> tuple[str, Manifest]:
    """The ``(path, manifest)`` of the manifest entry in the authenticated ``metadata`` of the
    encrypted file ``path``; :class:`IntegrityError` if it is absent or malformed."""
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        raise _fail(
            path,
            f"no {MANIFEST_KEY} metadata entry, so nothing authenticates the files copied beside it: this"
            " directory was not written by encrypt_file (or by a version from before copied files were"
            " authenticated); encrypt the plaintext model directory again with encrypt_file",
        )
    problem = None
    try:
        if len(text.encode("utf-8")) > MAX_MANIFEST_LEN:
            raise ValueError(f"longer than {MAX_MANIFEST_LEN} bytes")
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
        if _canonical(obj) != text:
            raise ValueError("not canonical JSON")
    except (ValueError, RecursionError, UnicodeEncodeError) as e:
        raise _fail(path, f"malformed {MANIFEST_KEY} metadata entry: {e}") from None
    if not isinstance(obj, dict) or obj.keys() != {"version", "path", "files", "encrypted"}:
        problem = "it needs exactly version, path, files and encrypted"
    elif obj["version"] != MANIFEST_VERSION:
        problem = f"unsupported version {obj['version']!r}"
    elif not is_relative_path(obj["path"]):
        problem = "path is not a relative path"
    elif not isinstance(obj["encrypted"], list) or not all(is_relative_path(p) for p in obj["encrypted"]):
        problem = "encrypted is not a list of relative paths"
    elif obj["path"] not in obj["encrypted"]:
        problem = "path is not one of the encrypted files"
    elif not isinstance(obj["files"], dict) or not all(
        is_relative_path(p)
        and isinstance(e, dict)
        and e.keys() == {"size", "sha256"}
        and isinstance(e["size"], int)
        and not isinstance(e["size"], bool)
        and e["size"] >= 0
        and isinstance(e["sha256"], str)
        and _SHA256.fullmatch(e["sha256"])
        for p, e in obj["files"].items()
    ):
        problem = "files does not map relative paths to a size and a SHA-256"
    elif set(obj["files"]) & set(obj["encrypted"]) or len(set(obj["encrypted"])) != len(obj["encrypted"]):
        problem = "a file is listed twice"
    if problem is not None:
        raise _fail(path, f"malformed {MANIFEST_KEY} metadata entry: {problem}")
    files = {p: FileEntry(e["size"], e["sha256"]) for p, e in obj["files"].items()}
    return obj["path"], Manifest(files, tuple(obj["encrypted"]))


def root_of(path: Path, rel: str) -> Path:
    """The root of the tree in which the file ``path`` is at relative path ``rel``;
    :class:`IntegrityError` if ``path`` does not end with ``rel`` (the file was moved)."""
    parts = PurePosixPath(rel).parts
    absolute = path.absolute()
    if len(absolute.parts) <= len(parts) or absolute.parts[-len(parts) :] != parts:
        raise _fail(
            path,
            f"the {MANIFEST_KEY} metadata entry says this file is {rel} in its model directory: it was moved"
            " or renamed",
        )
    # Keep the caller's relative form when the path has enough components (for messages).
    base = path if len(path.parts) > len(parts) else absolute
    return base.parents[len(parts) - 1]


def copy_hashed(src: BinaryIO, dst: BinaryIO | None, limit: int | None = None) -> FileEntry:
    """Copies ``src`` to ``dst`` (if given) and returns the size and SHA-256 of what was
    read; reads at most ``limit + 1`` bytes when ``limit`` is given (a file that grew past
    the size it should have is not read to its end)."""
    h = hashlib.sha256()
    size = 0
    while True:
        want = _COPY_BLOCK if limit is None else min(_COPY_BLOCK, limit + 1 - size)
        block = src.read(want) if want > 0 else b""
        if not block:
            break
        h.update(block)
        size += len(block)
        if dst is not None:
            dst.write(block)
    return FileEntry(size, h.hexdigest())


def check_copy(path: PathLike, rel: str, got: FileEntry, manifest: Manifest) -> None:
    """:class:`IntegrityError` unless ``got`` is what the manifest records for ``rel``."""
    want = manifest.files[rel]
    if got.size != want.size or got.sha256 != want.sha256:
        raise _fail(
            path,
            f"changed since the directory was encrypted ({got.size} bytes, the manifest of the encrypted"
            f" weights records {want.size} bytes and another SHA-256): restore it from the publisher",
        )


def reserved(path: PathLike, metadata: Mapping[str, str] | None) -> None:
    """Refuses an input whose own metadata holds the manifest key."""
    if metadata and MANIFEST_KEY in metadata:
        raise InputFormatError(
            f"{path}: metadata key {MANIFEST_KEY!r} is reserved for enctensor's converters"
        )


__all__ = [
    "MANIFEST_KEY",
    "MAX_MANIFEST_LEN",
    "FileEntry",
    "Manifest",
    "check_copy",
    "copy_hashed",
    "read",
    "reserved",
    "root_of",
]
