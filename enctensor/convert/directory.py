"""Model directories <-> encrypted model directories.

A plaintext model directory is a Hugging Face model directory (``model.safetensors``, or
shards and ``model.safetensors.index.json``, and any other ``*.safetensors`` weight file), a
TVM / MLC-LLM tensor cache (``tensor-cache.json`` and its shards, see
:mod:`enctensor.convert.tvm_cache`), or both; subdirectories are converted the same way
(sentence-transformers keeps a pooling config in ``1_Pooling/``, diffusers a model per
subdirectory). Encrypting it writes a directory of the same layout in which:

- ``X.safetensors.index.json`` and its shards become the encrypted set
  ``X.enct.index.json`` + ``<shard>.enct`` (:mod:`enctensor.convert.sharded`);
- a tensor cache becomes the encrypted set ``tensor-cache.enct.index.json`` +
  ``params_shard_N.enct``;
- any other ``X.safetensors`` becomes ``X.enct``;
- every other file (config, tokenizer, README, ...) is copied unchanged, mode kept.

Decrypting inverts it byte for byte (decrypted files are created 0600 unless ``mode=`` says
otherwise, as :func:`enctensor.convert.decrypt_file` does for one file). Not copied: ``.git``
directories (a clone's LFS objects are the plaintext weights) and ``.cache/huggingface``
(``huggingface_hub``'s download state, which also holds partial downloads). A weight file in
a format enctensor does not encrypt (``pytorch_model.bin``, ``.pt``, ``.onnx``, ``.gguf``, ...)
would be copied in plaintext, so it is refused, as is an encrypted file in a plaintext
directory. Symbolic links to files are followed (the Hugging Face cache's snapshots are
made of them); links to directories are refused.

Only the weights are encrypted. The copied files (config, tokenizer) are authenticated: every
encrypted file holds the manifest of the directory (:mod:`enctensor.convert.manifest`: the
size and SHA-256 of every copied file, the list of encrypted files), covered by its MAC and
signature. Decrypting (:func:`decrypt`), :func:`verify` and ``enctensor.transformers`` check
the directory against it and refuse, with an :class:`~enctensor.IntegrityError` naming the
file, a copied file that was changed or removed, or a file that was added (except
``.gitattributes``, which git hosts add and no loader reads, and the directories never copied
above); a directory without a manifest (assembled by hand) is refused the same way. Modes are
not checked. Everything is written into a temporary directory next to the destination
(``.<name>.<hex>.partial``), which is renamed into place once every file is complete, so a
failure or an interruption never leaves a destination that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from .._api import Reader
from .._sharded import SHARD_KEY, parse_entry
from ..errors import IntegrityError
from . import manifest as mf
from . import safetensors as st
from . import sharded, tvm_cache
from ._common import (
    InputFormatError,
    MappedFile,
    Meter,
    PathLike,
    ProgressCallback,
    Secret,
    Staging,
    _fsync_dir,
    about,
    open_output,
    tag_path,
    temporary_name,
    write_encrypted,
)

PLAIN_SUFFIX = sharded.PLAIN_SUFFIX
ENC_SUFFIX = sharded.ENC_SUFFIX
PLAIN_INDEX_SUFFIX = ".safetensors.index.json"
ENC_INDEX_SUFFIX = ".enct.index.json"
#: Weight files in formats enctensor does not encrypt: copying them would leak the weights.
FOREIGN_WEIGHT_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".h5",
    ".hdf5",
    ".keras",
    ".msgpack",
    ".gguf",
    ".ggml",
    ".onnx",
    ".onnx_data",
    ".npy",
    ".npz",
    ".params",
    ".tflite",
    ".ot",
    ".nemo",
)
#: Directories (relative to the root) that are not part of the model and never copied.
SKIPPED_DIRS = (Path(".cache") / "huggingface",)
SKIPPED_NAMES = (".git",)
#: Files a checked directory may hold without the manifest listing them (git hosts add it; no
#: model loader reads it). They are not copied when decrypting.
UNLISTED_NAMES = (".gitattributes",)


@dataclass
class _Dir:
    """What to do in one directory of the tree (``rel`` to the root)."""

    rel: Path
    mode: int
    copies: list[str] = field(default_factory=list)
    #: Output name -> the input it comes from (to refuse two inputs writing one output).
    outputs: dict[str, str] = field(default_factory=dict)

    def output(self, root: Path, name: str, source: str) -> None:
        if name in self.outputs:
            raise InputFormatError(
                f"{root / self.rel}: {self.outputs[name]} and {source} would both be written as {name}"
            )
        self.outputs[name] = source


@dataclass
class _ToEncrypt(_Dir):
    singles: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)  # plaintext index names
    caches: list[tvm_cache.Cache] = field(default_factory=list)
    #: The names of the encrypted files (and indexes) this directory's weights become.
    encrypted: list[str] = field(default_factory=list)


Readers = list[tuple[str, Reader]]


@dataclass
class _ToDecrypt(_Dir):
    singles: dict[str, Reader] = field(default_factory=dict)
    sets: list[tuple[str, sharded.Index, Readers]] = field(default_factory=list)
    caches: list[tuple[tvm_cache.Cache, Readers]] = field(default_factory=list)


def _claim(claimed: dict[str, str], here: Path, name: str, by: str) -> None:
    """Records that input ``name`` is converted as part of ``by`` (only one may claim it)."""
    if name in claimed:
        raise InputFormatError(f"{here / name}: claimed by both {claimed[name]} and {by}")
    claimed[name] = by


def _walk(root: Path) -> Iterator[tuple[Path, int, list[str], list[str]]]:
    """``(relative directory, its mode, file names, subdirectory names)`` for every directory
    of the tree, parents first, names sorted. Links to files count as files; links to
    directories and special files are refused."""
    stack = [Path()]
    while stack:
        rel = stack.pop()
        here = root / rel
        with about(here):
            mode = stat.S_IMODE(os.stat(here).st_mode)
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        files, dirs = [], []
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name not in SKIPPED_NAMES and rel / e.name not in SKIPPED_DIRS:
                    dirs.append(e.name)
                continue
            with about(e.path):
                st_mode = os.stat(e.path).st_mode  # follows a link; a dangling one raises
            if stat.S_ISREG(st_mode):
                files.append(e.name)
            elif stat.S_ISDIR(st_mode):
                raise InputFormatError(
                    f"{e.path}: a symbolic link to a directory, which is not followed: copy the directory"
                    " in its place"
                )
            else:
                raise InputFormatError(f"{e.path}: not a regular file or a directory")
        yield rel, mode, files, dirs
        stack.extend(rel / d for d in reversed(dirs))


def kind(path: PathLike) -> str | None:
    """``"directory"`` if ``path`` holds plaintext weights (and no encrypted ones),
    ``"enctensor-directory"`` if it holds encrypted ones (and no plaintext ones), else ``None``."""
    plain = encrypted = False
    for _, _, files, _ in _walk(Path(path)):
        for name in files:
            plain = plain or name.endswith(PLAIN_SUFFIX) or name in tvm_cache.CACHE_FILES
            encrypted = encrypted or name.endswith((ENC_SUFFIX, ENC_INDEX_SUFFIX))
    if plain == encrypted:
        return None
    return "directory" if plain else "enctensor-directory"


# --- Planning -----------------------------------------------------------------------------


D = TypeVar("D", bound=_Dir)


def _plan(
    root: Path, new: Callable[[Path, int], D], fill: Callable[[Path, D, list[str]], int]
) -> tuple[list[D], int]:
    """A plan for every directory of the tree (parents first): ``fill(here, plan, file
    names)`` decides what to do with each file and returns the bytes of tensor data it will
    convert; returns the plans and the total."""
    plans: list[D] = []
    total = 0
    for rel, mode, files, dirs in _walk(root):
        d = new(rel, mode)
        for name in dirs:
            d.output(root, name, f"directory {name}")
        total += fill(root, d, files)
        plans.append(d)
    return plans, total


def _plan_encrypt(root: Path, d: _ToEncrypt, files: list[str]) -> int:
    """Plans one directory of a plaintext tree. Every input's header is read and checked
    here, before anything is written; returns the bytes of tensor data to encrypt."""
    here = root / d.rel
    total = 0
    claimed: dict[str, str] = {}
    for name in tvm_cache.CACHE_FILES:
        if name in files:
            cache = tvm_cache.read_cache(here, name)
            for f in tvm_cache.consumed(cache):
                _claim(claimed, here, f, name)
                if f not in files:
                    raise FileNotFoundError(
                        errno.ENOENT, f"listed in {name}, but missing", os.fspath(here / f)
                    )
            for out in tvm_cache.outputs(cache):
                d.output(root, out, name)
                d.encrypted.append(out)
            d.caches.append(cache)
            total += cache.nbytes
    for name in files:
        if not name.endswith(PLAIN_INDEX_SUFFIX):
            continue
        index = sharded.read_index(here / name)
        for shard in index.shards:
            if not shard.endswith(PLAIN_SUFFIX):
                raise InputFormatError(
                    f"{here / name}: shard {shard!r} is not a .safetensors file, which a model directory's"
                    " encrypted copy could not name back"
                )
            _claim(claimed, here, shard, name)
            d.output(root, sharded.encrypted_name(shard), shard)
            d.encrypted.append(sharded.encrypted_name(shard))
        _claim(claimed, here, name, name)
        d.output(root, name.removesuffix(PLAIN_INDEX_SUFFIX) + ENC_INDEX_SUFFIX, name)
        d.encrypted.append(name.removesuffix(PLAIN_INDEX_SUFFIX) + ENC_INDEX_SUFFIX)
        total += sharded.data_size(index)
        d.sets.append(name)
    for name in files:
        if name in claimed:
            continue
        if name.endswith(PLAIN_SUFFIX):
            d.singles.append(name)
            d.output(root, sharded.encrypted_name(name), name)
            d.encrypted.append(sharded.encrypted_name(name))
            total += st.data_size(here / name)
        elif name.endswith((ENC_SUFFIX, ENC_INDEX_SUFFIX)):
            raise InputFormatError(
                f"{here / name}: an encrypted file in the plaintext model directory {root}: decrypt the"
                " directory, or move the file out of it"
            )
        elif name.lower().endswith(FOREIGN_WEIGHT_SUFFIXES):
            raise InputFormatError(
                f"{here / name}: looks like weights in a format enctensor does not encrypt, which would be"
                " copied in plaintext: convert it to safetensors, or move it out of the directory"
            )
        else:
            d.copies.append(name)
            d.output(root, name, name)
    return total


def _plan_decrypt(secret: Secret) -> Callable[[Path, _ToDecrypt, list[str]], int]:
    """Plans one directory of an encrypted tree. Every encrypted file is opened and
    authenticated here, and every set checked whole, before anything is written; returns
    the bytes of tensor data to decrypt."""

    def fill(root: Path, d: _ToDecrypt, files: list[str]) -> int:
        here = root / d.rel
        total = 0
        claimed: dict[str, str] = {}
        for name in files:
            if not name.endswith(ENC_INDEX_SUFFIX):
                continue
            index, readers = sharded.open_set(here / name, secret)
            for f in (name, *index.shards):
                _claim(claimed, here, f, name)
            total += sum(row[4] for _, r in readers for row in r.tensors())
            if tvm_cache.is_cache(readers):
                cache = tvm_cache.stored_cache(here / name, readers)
                for out in tvm_cache.consumed(cache):
                    d.output(root, out, name)
                d.caches.append((cache, readers))
            else:
                for shard in index.shards:
                    d.output(root, sharded.decrypted_name(shard), shard)
                d.output(root, name.removesuffix(ENC_INDEX_SUFFIX) + PLAIN_INDEX_SUFFIX, name)
                d.sets.append((name, index, readers))
        for name in files:
            if name in claimed:
                continue
            if name.endswith(ENC_SUFFIX):
                d.singles[name] = _open_single(secret, here / name)
                d.output(root, sharded.decrypted_name(name), name)
                total += sum(row[4] for row in d.singles[name].tensors())
            else:
                d.copies.append(name)
                d.output(root, name, name)
        return total

    return fill


def _open_single(secret: Secret, path: Path) -> Reader:
    """Opens an encrypted file that no index of its directory lists; a shard of a set is
    refused (its index was removed: decrypting its shards one by one would hide that)."""
    reader = secret.open(path)
    if any(k == SHARD_KEY for k, _ in reader.metadata()):
        e = IntegrityError(
            f"{path}: a shard of a sharded set (its {SHARD_KEY} metadata entry says so), but no encrypted"
            " index in its directory lists it: the index was removed or renamed"
        )
        tag_path(e, path)
        raise e
    return reader


# --- Writing ------------------------------------------------------------------------------


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuses a destination that is the source, inside it or around it, or that exists and
    may not (or cannot) be replaced; creates nothing."""
    s, t = src.resolve(), dst.resolve()
    if t == s or s in t.parents:
        raise ValueError(f"{dst}: the output directory may not be {src} or inside it")
    if os.path.lexists(dst):
        if dst.is_symlink() or not dst.is_dir():
            raise FileExistsError(
                errno.EEXIST,
                "exists and is not a directory (or is a link to one): refusing to replace it",
                os.fspath(dst),
            )
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "already exists", os.fspath(dst))
        if t in s.parents:
            raise ValueError(
                f"{dst}: replacing it would delete the input directory {src}, which is inside it"
            )
    parent = dst.parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"the directory {parent} does not exist", os.fspath(dst))


def _copy(src: Path, dst: Path, limit: int | None = None) -> mf.FileEntry:
    """Copies a file's bytes (at most ``limit + 1`` of them, if given) and mode; the copy is
    fsynced. Returns the size and SHA-256 of what was copied."""
    with about(src), open(src, "rb") as fi, open(dst, "xb") as fo:
        copied = mf.copy_hashed(fi, fo, limit)
        fo.flush()
        os.fsync(fo.fileno())
        os.chmod(dst, stat.S_IMODE(os.fstat(fi.fileno()).st_mode))
    return copied


def _remove_tree(path: Path) -> None:
    """Removes a temporary tree, including directories already given read-only modes."""
    for here, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(here, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Renames the finished tree ``tmp`` to ``dst``; with ``overwrite``, an existing ``dst``
    is moved aside first and removed once the new tree is in place."""
    if not (overwrite and dst.is_dir() and not dst.is_symlink()):
        try:
            # rename refuses a non-empty directory created meanwhile.
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "already exists", os.fspath(dst))
            os.rename(tmp, dst)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "already exists", os.fspath(dst)) from None
            raise
        _fsync_dir(dst.parent)
        return
    old = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.old"
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    _fsync_dir(dst.parent)
    _remove_tree(old)


@contextlib.contextmanager
def _temporary_tree(dst: Path) -> Iterator[Path]:
    """A private directory next to ``dst``, removed unless the block renamed it away."""
    with about(dst):
        tmp = temporary_name(dst, "partial")
        os.mkdir(tmp, 0o700)
    try:
        yield tmp
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def _write_tree(
    root: Path,
    dst: Path,
    plans: Sequence[_Dir],
    staging: Staging,
    overwrite: bool,
    copied: Callable[[dict[str, mf.FileEntry]], None],
    convert: Callable[[Any, Path, Path], int],
    limits: Mapping[str, int] | None = None,
) -> int:
    """Writes the tree of ``plans`` into a temporary directory next to ``dst``: every
    directory and its copied files (at most ``limits[relative path] + 1`` bytes of each, if
    given), then ``copied({relative path: size and SHA-256 of the copy})`` is called, then
    every plan's ``convert(plan, input directory, output directory)`` stages its outputs
    (returning a number of tensors); then commits ``staging``, gives every directory its mode
    and renames the tree to ``dst``. Returns the number of tensors."""
    tensors = 0
    with _temporary_tree(dst) as tmp:
        with staging:
            # Copies first: the manifest the weights carry is made from (or checked against)
            # the bytes actually copied.
            hashes: dict[str, mf.FileEntry] = {}
            for d in plans:
                here, out = root / d.rel, tmp / d.rel
                if d.rel != Path():
                    os.mkdir(out, 0o700)
                for name in d.copies:
                    rel = (d.rel / name).as_posix()
                    hashes[rel] = _copy(here / name, out / name, None if limits is None else limits[rel])
            copied(hashes)
            for d in plans:
                tensors += convert(d, root / d.rel, tmp / d.rel)
            staging.commit()
        top_mode = _top_mode(plans[0].mode, dst)
        # Deepest first, so that a read-only directory is filled before it is made so.
        for d in reversed(plans):
            _fsync_dir(tmp / d.rel)
            os.chmod(tmp / d.rel, top_mode if d.rel == Path() else d.mode)
        _install(tmp, dst, overwrite)
    return tensors


def _top_mode(src_mode: int, dst: Path) -> int:
    """A replaced destination keeps its mode; a new one gets the source directory's."""
    try:
        return stat.S_IMODE(os.stat(dst).st_mode) if dst.is_dir() and not dst.is_symlink() else src_mode
    except OSError:
        return src_mode


def encrypt(
    src: PathLike,
    dst: PathLike,
    secret: Secret,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    overwrite: bool,
    progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Encrypts the model directory ``src`` into the new directory ``dst`` (see the module
    docstring); returns (tensors, bytes)."""
    root, dst = Path(src), Path(dst)
    _check_paths(root, dst, overwrite)
    plans, total = _plan(root, _ToEncrypt, _plan_encrypt)
    if not any(d.singles or d.sets or d.caches for d in plans):
        raise InputFormatError(
            f"{root}: not a model directory: no model.safetensors, *.safetensors,"
            f" *{PLAIN_INDEX_SUFFIX} or {' / '.join(tvm_cache.CACHE_FILES)} in it"
            + (
                " (it holds encrypted files: decrypt it instead)"
                if kind(root) == "enctensor-directory"
                else ""
            )
        )
    meter = Meter(total, progress)
    opts = {"chunk_size": chunk_size, "scrypt_log_n": scrypt_log_n}
    staging = Staging()
    encrypted = tuple(sorted((d.rel / name).as_posix() for d in plans for name in d.encrypted))
    manifest: mf.Manifest | None = None

    def copied(hashes: dict[str, mf.FileEntry]) -> None:
        nonlocal manifest
        manifest = mf.Manifest(dict(sorted(hashes.items())), encrypted)
        manifest.text(encrypted[0])  # refuses an oversized manifest before anything is encrypted

    def convert(d: _ToEncrypt, here: Path, out: Path) -> int:
        assert manifest is not None
        m = manifest

        def entries(name: str) -> list[tuple[str, str]]:
            return [(mf.MANIFEST_KEY, m.text((d.rel / name).as_posix()))]

        tensors = 0
        for cache in d.caches:
            tensors += tvm_cache.encrypt(
                here, cache, out, secret, staging, meter=meter, extra_metadata=entries, **opts
            )
        for name in d.sets:
            enc_index = out / (name.removesuffix(PLAIN_INDEX_SUFFIX) + ENC_INDEX_SUFFIX)
            tensors += _encrypt_set(here / name, enc_index, secret, staging, entries, meter=meter, **opts)
        for name in d.singles:
            enc_name = sharded.encrypted_name(name)
            tmp = staging.add(out / enc_name)
            tensors += _encrypt_safetensors(
                here / name, tmp, secret, entries(enc_name), meter=meter, shown=dst / d.rel / enc_name, **opts
            )
        return tensors

    return _write_tree(root, dst, plans, staging, overwrite, copied, convert), total


def _encrypt_safetensors(
    src: Path,
    tmp: Path,
    secret: Secret,
    extra_metadata: list[tuple[str, str]],
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter,
    shown: Path,
) -> int:
    """Encrypts a safetensors file as :func:`safetensors.encrypt` does, with
    ``extra_metadata`` (the manifest, a shard's binding) added; returns the number of tensors."""
    with MappedFile(src) as m:
        header = st.read_header(m)
        for k in (SHARD_KEY, mf.MANIFEST_KEY):
            if header.metadata and k in header.metadata:
                raise InputFormatError(f"{src}: metadata key {k!r} is reserved for enctensor's converters")
        rows = st.rows(m, header)
        try:
            write_encrypted(
                tmp,
                rows,
                [*st.enct_metadata(header), *extra_metadata],
                secret,
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=shown,
            )
        finally:
            del rows  # release the views before the map is closed
    return len(header.tensors)


def _encrypt_set(
    src: Path,
    dst: Path,
    secret: Secret,
    staging: Staging,
    extra_metadata: Callable[[str], list[tuple[str, str]]],
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter,
) -> int:
    """Stages the encrypted set of the sharded checkpoint ``src`` as
    :func:`sharded.encrypt` does, with ``extra_metadata(encrypted shard name)`` added to
    every shard; returns the number of tensors."""
    index = sharded.read_index(src)
    if not index.shards:
        raise InputFormatError(f"{src}: the index maps no tensor to any shard: there is nothing to encrypt")

    def member(shard: str) -> sharded.Member:
        name = sharded.encrypted_name(shard)

        def encrypt_shard(tmp: Path, entry: str) -> int:
            return _encrypt_safetensors(
                Path(index.shard_path(shard)),
                tmp,
                secret,
                [(SHARD_KEY, entry), *extra_metadata(name)],
                chunk_size=chunk_size,
                scrypt_log_n=scrypt_log_n,
                meter=meter,
                shown=dst.parent / name,
            )

        return sharded.Member(name, encrypt_shard)

    members = sorted((member(shard) for shard in index.shards), key=lambda m: m.name)
    renamed = sharded._renamed(index, sharded.encrypted_name)
    return sharded.stage_set(dst, members, sharded.dump_index(renamed, index.layout), staging)


def _plan_encrypted(root: Path, secret: Secret) -> tuple[list[_ToDecrypt], int, mf.Manifest]:
    """Plans the encrypted tree ``root`` (every encrypted file opened and authenticated, every
    set checked whole) and checks that every file holds the same manifest and that the tree
    has exactly the files it lists (contents are not read here); returns the plans, the bytes
    of tensor data and the manifest."""
    plans, total = _plan(root, _ToDecrypt, _plan_decrypt(secret))
    if not any(d.singles or d.sets or d.caches for d in plans):
        raise InputFormatError(
            f"{root}: not an encrypted model directory: no *{ENC_SUFFIX} or *{ENC_INDEX_SUFFIX} in it"
            + (" (it holds plaintext weights: encrypt it instead)" if kind(root) == "directory" else "")
        )
    found, manifest = check_weights(_opened(root, plans))
    if found.absolute() != root.absolute():
        first = _opened(root, plans)[0][0]
        raise _integrity(first, f"its {mf.MANIFEST_KEY} metadata entry places it elsewhere: it was moved")
    check_tree(root, manifest, contents=False)
    return plans, total, manifest


def _opened(root: Path, plans: Sequence[_ToDecrypt]) -> list[tuple[Path, Reader]]:
    """Every opened encrypted file of the tree: ``(path, reader)``."""
    out: list[tuple[Path, Reader]] = []
    for d in plans:
        here = root / d.rel
        for _, readers in d.caches:
            out += [(here / name, r) for name, r in readers]
        for _, _, readers in d.sets:
            out += [(here / name, r) for name, r in readers]
        out += [(here / name, r) for name, r in d.singles.items()]
    return out


def _integrity(path: PathLike, message: str) -> IntegrityError:
    e = IntegrityError(f"{path}: {message}")
    tag_path(e, path)
    return e


def check_weights(opened: Sequence[tuple[Path, Any]]) -> tuple[Path, mf.Manifest]:
    """The root of the encrypted model directory and its manifest, from the authenticated
    metadata of the opened encrypted files ``(path, reader)`` of the tree (one or all):
    every one must hold a manifest entry whose ``path`` is where it is, and all the same
    manifest (:class:`IntegrityError` naming the file otherwise)."""
    first: tuple[Path, mf.Manifest, Path] | None = None
    for path, reader in opened:
        rel, manifest = mf.read(path, dict(reader.metadata()))
        root = mf.root_of(path, rel)
        if first is None:
            first = (root, manifest, path)
        elif manifest != first[1] or root.absolute() != first[0].absolute():
            raise _integrity(
                path,
                f"its {mf.MANIFEST_KEY} metadata entry differs from that of {first[2]}: files of different"
                " encryptions of the directory were mixed",
            )
    if first is None:
        raise ValueError("no encrypted file to read the manifest from")
    return first[0], first[1]


def check_tree(root: Path, manifest: mf.Manifest, *, contents: bool = True) -> None:
    """Checks that the encrypted model directory ``root`` holds exactly the files of
    ``manifest`` (besides ``UNLISTED_NAMES`` and the directories never copied) and, with
    ``contents``, that every copied file has the recorded size and SHA-256;
    :class:`IntegrityError` naming the first file that differs."""
    actual = {
        (rel / name).as_posix(): root / rel / name for rel, _, files, _ in _walk(root) for name in files
    }
    listed = set(manifest.files) | set(manifest.encrypted)
    for p in sorted(listed - actual.keys()):
        raise _integrity(
            root / p,
            "listed in the manifest of the encrypted weights, but missing: the file was removed or renamed"
            " (restore it from the publisher)",
        )
    for p in sorted(actual.keys() - listed):
        if PurePosixPath(p).name not in UNLISTED_NAMES:
            raise _integrity(
                actual[p],
                "not in the manifest of the encrypted weights: it was added after the directory was encrypted"
                " (remove it, or encrypt the plaintext directory again with it)",
            )
    if contents:
        for p, want in manifest.files.items():
            with about(actual[p]), open(actual[p], "rb") as f:
                got = mf.copy_hashed(f, None, want.size)
            mf.check_copy(actual[p], p, got, manifest)


def check_loaded(weights: Path, readers: Sequence[Any]) -> Path:
    """For a loader that opened (and authenticated) the encrypted file ``weights`` of a
    model directory, or the shards of the encrypted index ``weights`` (``readers``, in set
    order): checks the manifest they hold and the whole directory against it
    (:func:`check_weights`, :func:`check_tree`); returns the directory's root."""
    if weights.name.endswith(ENC_INDEX_SUFFIX):
        entries = [parse_entry(weights, dict(r.metadata())) for r in readers]
        opened = [(weights.parent / e.files[e.index], r) for e, r in zip(entries, readers, strict=True)]
    else:
        opened = [(weights, r) for r in readers]
    root, manifest = check_weights(opened)
    check_tree(root, manifest)
    return root


class _WithoutManifest:
    """A reader whose metadata leaves out the manifest entry (for writing the plaintext file
    back as it was)."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def metadata(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self._reader.metadata() if k != mf.MANIFEST_KEY]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def decrypt(
    src: PathLike,
    dst: PathLike,
    secret: Secret,
    *,
    overwrite: bool,
    mode: int | None,
    new_mode: int,
    progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Decrypts the encrypted model directory ``src`` into the new directory ``dst``;
    returns (tensors, bytes). Decrypted files get ``mode`` if given, else ``new_mode``. The
    directory is checked against its manifest (files missing or added before anything is
    written, every copied file as it is copied), and nothing is renamed into place unless
    every file matches."""
    root, dst = Path(src), Path(dst)
    _check_paths(root, dst, overwrite)
    plans, total, manifest = _plan_encrypted(root, secret)
    for d in plans:
        d.copies = [n for n in d.copies if (d.rel / n).as_posix() in manifest.files]
    meter = Meter(total, progress)
    staging = Staging(mode=mode, new_mode=new_mode)

    def copied(hashes: dict[str, mf.FileEntry]) -> None:
        for rel, got in hashes.items():
            mf.check_copy(root / rel, rel, got, manifest)

    def convert(d: _ToDecrypt, here: Path, out: Path) -> int:
        tensors = 0
        for cache, readers in d.caches:
            tensors += tvm_cache.write_plain(cache, readers, out, staging, meter=meter)
        for name, index, readers in d.sets:
            plain_index = out / (name.removesuffix(ENC_INDEX_SUFFIX) + PLAIN_INDEX_SUFFIX)
            stripped: Any = [(n, _WithoutManifest(r)) for n, r in readers]
            tensors += sharded.write_plain(
                index, stripped, plain_index, staging, meter_factory=lambda _: meter
            )[0]
        for name, reader in d.singles.items():
            tmp = staging.add(out / sharded.decrypted_name(name))
            with open_output(tmp) as f:
                st.write(_WithoutManifest(reader), f, meter=meter, shown=here / name)  # type: ignore[arg-type]
            tensors += len(reader.tensors())
        return tensors

    limits = {p: e.size for p, e in manifest.files.items()}
    return _write_tree(root, dst, plans, staging, overwrite, copied, convert, limits), total


def verify(src: PathLike, secret: Secret) -> tuple[int, int]:
    """Verifies the encrypted model directory ``src``: every encrypted file authenticated
    (every set checked whole), the manifest they hold the same in all, the tree holding
    exactly its files, every copied file its size and SHA-256, then every chunk of every
    encrypted file; returns (tensors, bytes)."""
    root = Path(src)
    plans, total, manifest = _plan_encrypted(root, secret)
    check_tree(root, manifest)
    tensors = 0
    for path, reader in _opened(root, plans):
        with about(path):
            reader.verify()
        tensors += len(reader.tensors())
    return tensors, total


__all__ = [
    "FOREIGN_WEIGHT_SUFFIXES",
    "UNLISTED_NAMES",
    "check_loaded",
    "check_tree",
    "check_weights",
    "decrypt",
    "encrypt",
    "kind",
    "verify",
]
