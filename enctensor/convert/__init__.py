"""Converting checkpoints to and from enctensor files, streaming.

Inputs are memory-mapped and handed to the Rust writer as views, which encrypts them in
bounded batches; decryption writes one bounded step (about 16 MiB, whole chunks) at a time.
Neither direction holds a whole tensor in memory, so a checkpoint larger than free RAM
converts. Outputs are written under temporary names next to their final names and renamed
into place only when everything succeeded.

Formats (the names used by ``format=`` and the CLI):

- ``"safetensors"``: a ``.safetensors`` file (see :mod:`enctensor.convert.safetensors`);
- ``"params"``: a TVM ``.params`` file (see :mod:`enctensor.convert.tvm_params`);
- ``"index"``: a Hugging Face sharded checkpoint, given by its ``*.index.json`` (see
  :mod:`enctensor.convert.sharded`).

A directory converts as a whole: a Hugging Face model directory or a TVM / MLC-LLM tensor
cache becomes a directory of encrypted weights and unchanged other files, whose sizes and
SHA-256 the encrypted weights record (so they are authenticated too), and back (see
:mod:`enctensor.convert.directory`, :mod:`enctensor.convert.manifest` and
:mod:`enctensor.convert.tvm_cache`).

Example::

    from enctensor.convert import encrypt_file, decrypt_file
    key = enctensor.generate_key()
    encrypt_file("model.safetensors", "model.enct", key=key)
    decrypt_file("model.enct", "model.safetensors", key=key)
    encrypt_file("all-MiniLM-L6-v2/", "minilm.enct/", key=key)  # a model directory
    decrypt_file("minilm.enct/", "minilm/", key=key)
    verify_directory("minilm.enct/", key=key)  # weights, and config and tokenizer files

    # To public-key recipients, signed by the publisher; every shard of a sharded checkpoint
    # gets the same recipients and its own signature.
    encrypt_file("model.safetensors", "model.enct", recipients=["x25519:..."], sign_with=ed25519_key)
    decrypt_file("model.enct", "model.safetensors", key=x25519_identity, verify_with=ed25519_pub)
    rekey_file("model.enct", key=x25519_identity, new_recipients=[...])

Keys and passphrases are taken as :func:`enctensor.load` and :func:`enctensor.save` take them
(never a ``str`` as a key: use a ``pathlib.Path`` to a key file, or
:func:`enctensor.read_key_file`). Decrypted files are created with mode 0600 unless ``mode=``
says otherwise; a file replaced with ``overwrite=True`` keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _core
from .._api import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_SCRYPT_LOG_N,
    DEFAULT_SCRYPT_LOG_N,
    check_max_scrypt_log_n,
    stanza_changes,
)
from .._api import inspect as _inspect
from .._keys import (
    Key,
    Passphrase,
    Recipient,
    SigningKey,
    VerifyKey,
    WriteKey,
)
from .._remote import UrlPath, is_url, upload
from . import directory as _directory
from . import safetensors as _st
from . import sharded as _sharded
from . import tvm_cache as _tvm_cache
from . import tvm_params as _tvm
from ._common import (
    ENCT_MAGIC,
    InputFormatError,
    Meter,
    PathLike,
    ProgressCallback,
    Secret,
    Staging,
    about,
    open_output,
)

__all__ = [
    "FORMATS",
    "Conversion",
    "InputFormatError",
    "ProgressCallback",
    "decrypt_file",
    "detect_format",
    "encrypt_file",
    "output_format",
    "rekey_file",
    "verify_directory",
    "verify_file",
]

#: Plaintext formats that files convert to and from.
FORMATS = ("safetensors", "params", "index")
#: The mode of new plaintext files written by :func:`decrypt_file`.
PLAINTEXT_MODE = 0o600
_EXTENSIONS = {".safetensors": "safetensors", ".params": "params", ".json": "index"}
_DESCRIPTIONS = {
    "safetensors": "a safetensors file",
    "params": "a TVM .params file",
    "index": "a sharded checkpoint index",
    "enctensor": "an enctensor file",
    "enctensor-index": "an encrypted sharded checkpoint index",
    "directory": "a model directory",
    "enctensor-directory": "an encrypted model directory",
}


@dataclass(frozen=True)
class Conversion:
    """What a conversion did."""

    source_format: str
    output_format: str
    outputs: Sequence[Path | UrlPath]
    tensors: int
    nbytes: int
    #: Metadata keys of the encrypted file that the output format cannot hold.
    dropped_metadata: list[str] = field(default_factory=list)


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 8 + n <= size and head[8:9] == b"{"


def detect_format(path: PathLike) -> str | None:
    """The format of ``path`` from its content: ``"safetensors"``, ``"params"``,
    ``"index"``, ``"enctensor"``, ``"enctensor-index"``, or ``None`` if it is none of them;
    for a directory, ``"directory"`` (it holds plaintext weights: safetensors files or a TVM
    tensor cache), ``"enctensor-directory"`` (it holds encrypted ones) or ``None``, from the
    names of its files."""
    if os.path.isdir(path):
        with about(path):
            return _directory.kind(path)
    with about(path), open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if head.startswith(ENCT_MAGIC):
        return "enctensor"
    if _tvm.is_params(head):
        return "params"
    if _is_safetensors(head, size):
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        try:
            obj = _sharded.load_json(path)
        except InputFormatError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
            return None
        return "enctensor-index" if _index_is_encrypted(Path(path), obj["weight_map"]) else "index"
    return None


def url_format(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """:func:`detect_format` of a remote file, as far as it can be told without fetching the
    file: ``"enctensor-index"`` or ``"index"`` for a sharded checkpoint's index (a ``.json``
    URL, whose shards' names tell which), else ``"enctensor"`` (opening it says if not)."""
    from .._api import _index_format

    return _index_format(url, storage_options) or "enctensor"


def _input_format(src: PathLike, storage_options: Mapping[str, Any] | None) -> str | None:
    """:func:`detect_format` of a local ``src``, :func:`url_format` of a URL."""
    p = os.fspath(src)
    return url_format(p, storage_options) if is_url(p) else detect_format(src)


def _index_is_encrypted(path: Path, weight_map: dict[str, object]) -> bool:
    """Whether the shards of an index are enctensor files (the first one tells)."""
    for shard in weight_map.values():
        if not isinstance(shard, str):
            return False
        try:
            _sharded.safe_name(path, shard)
            with open(path.parent / shard, "rb") as f:
                return f.read(len(ENCT_MAGIC)) == ENCT_MAGIC
        except (InputFormatError, OSError):
            return shard.endswith(_sharded.ENC_SUFFIX)
    return False


def _not_a(path: PathLike, fmt: str | None, wanted: str) -> InputFormatError:
    what = _DESCRIPTIONS.get(fmt or "", "none of the formats enctensor converts")
    e = InputFormatError(f"{path}: not {wanted}: it looks like {what}" if fmt else f"{path}: not {wanted}")
    e.enctensor_path = os.fspath(path)  # type: ignore[attr-defined]
    e.detected_format = fmt  # type: ignore[attr-defined]
    return e


def encrypt_file(
    src: PathLike,
    dst: PathLike,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    recipients: Recipient | Iterable[Recipient] = (),
    sign_with: SigningKey | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Conversion:
    """Encrypts a safetensors file, a TVM ``.params`` file or a sharded checkpoint (given
    by its index JSON, whose encrypted counterpart is written to ``dst``, with the shards
    next to it), detected from the content of ``src``; or a model directory (a Hugging Face
    model directory, a TVM / MLC-LLM tensor cache, or both) into the new directory ``dst``
    (see :mod:`enctensor.convert.directory`).

    Whoever holds any of these opens the output: ``key``, 32 bytes (or several keys);
    ``recipients``, X25519 or RSA public keys (objects, PEM files or ``x25519:<hex>`` texts,
    as :func:`enctensor.save` takes them). ``passphrase`` derives a key with scrypt (work
    factor ``2**scrypt_log_n``) instead, and must then be the only way in. ``sign_with`` (an
    Ed25519 private key) signs every output file. An existing output is refused with
    :class:`FileExistsError` unless ``overwrite``; a replaced output keeps its mode.

    ``dst`` may be a URL (fsspec, with ``storage_options``) for a single file: it is encrypted
    to a local temporary file, then uploaded whole, as :func:`enctensor.save` does.
    """
    secret = Secret.for_writing(key, passphrase, recipients, sign_with)
    if is_url(os.fspath(dst)):
        url = os.fspath(dst)
        if os.path.isdir(src) or detect_format(src) == "index":
            raise ValueError(
                f"{url}: a URL takes one encrypted file; encrypt a sharded checkpoint or a directory"
                " locally, then upload the files"
            )
        with upload(url, storage_options, overwrite=overwrite) as local:
            done = _encrypt(src, local, secret, chunk_size, scrypt_log_n, overwrite=True, progress=progress)
        return Conversion(done.source_format, "enctensor", [UrlPath(url)], done.tensors, done.nbytes)
    return _encrypt(src, dst, secret, chunk_size, scrypt_log_n, overwrite=overwrite, progress=progress)


def _encrypt(
    src: PathLike,
    dst: PathLike,
    secret: Secret,
    chunk_size: int,
    scrypt_log_n: int,
    *,
    overwrite: bool,
    progress: ProgressCallback | None,
) -> Conversion:
    """:func:`encrypt_file` to a local ``dst``."""
    if os.path.isdir(src):
        tensors, nbytes = _directory.encrypt(
            src,
            dst,
            secret,
            chunk_size=chunk_size,
            scrypt_log_n=scrypt_log_n,
            overwrite=overwrite,
            progress=progress,
        )
        return Conversion("directory", "enctensor-directory", [Path(dst)], tensors, nbytes)
    fmt = detect_format(src)
    if fmt not in FORMATS:
        raise _not_a(src, fmt, "a safetensors file, TVM .params file or sharded checkpoint index")
    opts = {"chunk_size": chunk_size, "scrypt_log_n": scrypt_log_n}
    with Staging(overwrite) as staging:
        if fmt == "index":
            if Path(dst).suffix != ".json":
                raise ValueError(f"{dst}: the encrypted index of a sharded checkpoint must be a .json file")
            tensors, nbytes = _sharded.encrypt(
                src, dst, secret, staging, meter_factory=lambda total: Meter(total, progress), **opts
            )
        else:
            module = _st if fmt == "safetensors" else _tvm
            meter = Meter(module.data_size(src), progress)
            tmp = staging.add(dst)
            parsed = module.encrypt(src, tmp, secret, meter=meter, shown=dst, **opts)
            tensors, nbytes = len(parsed.tensors), meter.total
        outputs = staging.commit()
    return Conversion(fmt, "enctensor", outputs, tensors, nbytes)


def output_format(
    dst: PathLike,
    src: PathLike,
    requested: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """The plaintext format to decrypt ``src`` (an enctensor file or encrypted index, or a
    URL of one, with ``storage_options``) to: ``requested`` if given, else from ``dst``'s
    extension, else the format ``src`` was converted from if it is recorded, else
    ``"safetensors"``."""
    if requested is not None and requested not in FORMATS:
        raise ValueError(f"unknown format {requested!r} (choose from {', '.join(FORMATS)})")
    by_ext = _EXTENSIONS.get(Path(dst).suffix.lower())
    if requested is not None and by_ext is not None and requested != by_ext:
        raise ValueError(f"{dst}: the extension says {by_ext} but the format asked for is {requested}")
    if requested is not None or by_ext is not None:
        return requested or by_ext  # type: ignore[return-value]
    src_fmt = _input_format(src, storage_options)
    if src_fmt == "enctensor-index":
        return "index"
    with about(src):
        metadata = _inspect(src, storage_options=storage_options)["metadata"]
    return "params" if _tvm.METADATA_KEY in metadata else "safetensors"


def check_mode(mode: object) -> int | None:
    """``mode=``: ``None`` or permission bits (an int from 0 to 0o777)."""
    if mode is None:
        return None
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int (e.g. 0o600), not {type(mode).__name__}")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits from 0o000 to 0o777, got {mode:#o}")
    return mode


def decrypt_file(
    src: PathLike,
    dst: PathLike,
    *,
    key: Key | list[Key] | tuple[Key, ...] | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    expect_checkpoint: str | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    format: str | None = None,
    overwrite: bool = False,
    mode: int | None = None,
    progress: ProgressCallback | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Conversion:
    """Decrypts an enctensor file (or an encrypted sharded checkpoint index and its shards)
    to ``dst`` in the format chosen by :func:`output_format`. ``src`` may be a URL (fsspec,
    with ``storage_options``, as for :func:`enctensor.load`), fetched by ranges. Every byte
    is verified before it is written; on any failure no output is left behind. ``key`` is anything
    :func:`enctensor.load` takes as a key (except a key provider), or a list of those, tried
    in turn. ``verify_with`` (an Ed25519 public key) requires every file to carry a valid
    signature by its holder (:class:`~enctensor.IntegrityError` otherwise);
    ``expect_metadata`` and ``max_scrypt_log_n`` are as for :func:`enctensor.load` and apply
    to every file read; ``expect_checkpoint`` pins the checkpoint id of a sharded set (see
    :func:`enctensor.load_sharded`).

    The plaintext files are written atomically (temporary file in the same directory, fsync,
    rename) and created with mode ``0o600``, readable by their owner only, unless ``mode``
    (permission bits, e.g. ``0o644``) is given; a file replaced with ``overwrite=True`` keeps
    its mode (and owner and group, where permitted) unless ``mode`` is given.

    An encrypted model directory (what :func:`encrypt_file` makes of a directory) decrypts
    into the new directory ``dst``, byte for byte; ``mode`` then applies to the decrypted
    files (weights and their indexes), and copied files keep their modes."""
    file_mode = check_mode(mode)
    secret = Secret.for_reading(
        key,
        passphrase,
        verify_with,
        max_scrypt_log_n=max_scrypt_log_n,
        expect_metadata=expect_metadata,
        storage_options=storage_options,
    )
    if not is_url(os.fspath(src)) and os.path.isdir(src):
        if format is not None or expect_checkpoint is not None:
            raise ValueError(
                f"{src}: a directory decrypts to the formats it was encrypted from: format= and"
                " expect_checkpoint= apply to one file or one sharded checkpoint"
            )
        tensors, nbytes = _directory.decrypt(
            src, dst, secret, overwrite=overwrite, mode=file_mode, new_mode=PLAINTEXT_MODE, progress=progress
        )
        return Conversion("enctensor-directory", "directory", [Path(dst)], tensors, nbytes)
    src_fmt = _input_format(src, storage_options)
    if src_fmt not in ("enctensor", "enctensor-index"):
        raise _not_a(src, src_fmt, "an enctensor file or encrypted checkpoint index")
    _checkpoint_is_for_sets(src, src_fmt, expect_checkpoint)
    fmt = output_format(dst, src, format, storage_options=storage_options)
    if (src_fmt == "enctensor-index") != (fmt == "index"):
        if fmt == "index":
            raise ValueError(
                f"{dst}: a single enctensor file cannot be decrypted to a sharded checkpoint index"
            )
        raise ValueError(
            f"{dst}: an encrypted sharded checkpoint decrypts to an index (a .json file), not to {fmt}"
        )
    with Staging(overwrite, mode=file_mode, new_mode=PLAINTEXT_MODE) as staging:
        if fmt == "index":
            index, readers = _sharded.open_set(src, secret, expect_checkpoint=expect_checkpoint)
            if _tvm_cache.is_cache(readers):
                raise ValueError(
                    f"{src}: the index of an encrypted TVM tensor cache: decrypt the directory that holds it,"
                    " which gives the cache back as TVM wrote it"
                )
            tensors, nbytes, dropped = _sharded.write_plain(
                index, readers, dst, staging, meter_factory=lambda total: Meter(total, progress)
            )
        else:
            tmp = staging.add(dst)
            reader = secret.open(src)
            rows = reader.tensors()
            nbytes = sum(r[4] for r in rows)
            tensors = len(rows)
            meter = Meter(nbytes, progress)
            module = _st if fmt == "safetensors" else _tvm
            with open_output(tmp) as f:
                dropped = module.write(reader, f, meter=meter, shown=src)
            del reader
        outputs = staging.commit()
    return Conversion(src_fmt, fmt, outputs, tensors, nbytes, dropped)


def _checkpoint_is_for_sets(src: PathLike, fmt: str | None, expect_checkpoint: str | None) -> None:
    if expect_checkpoint is not None and fmt == "enctensor":
        raise ValueError(
            f"{src}: expect_checkpoint pins the checkpoint of a sharded set: give its encrypted index"
            " (for a single file, pin a metadata entry with expect_metadata)"
        )


def verify_file(
    src: PathLike,
    *,
    key: Key | list[Key] | tuple[Key, ...] | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    expect_checkpoint: str | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """Verifies every chunk tag of an enctensor file (or of every shard of an encrypted
    index) without keeping any plaintext, and with ``verify_with`` (an Ed25519 public key)
    the publisher signature of each; returns (tensors, bytes). Raises
    :class:`~enctensor.WrongKeyError`, :class:`~enctensor.IntegrityError` or
    :class:`~enctensor.FormatError`. ``expect_metadata``, ``expect_checkpoint`` and
    ``max_scrypt_log_n`` are as for :func:`decrypt_file`. An encrypted model directory is
    verified whole, as :func:`verify_directory` does. A URL (fsspec, with
    ``storage_options``) is fetched by ranges, every chunk of it."""
    secret = Secret.for_reading(
        key,
        passphrase,
        verify_with,
        max_scrypt_log_n=max_scrypt_log_n,
        expect_metadata=expect_metadata,
        storage_options=storage_options,
    )
    if not is_url(os.fspath(src)) and os.path.isdir(src):
        if expect_checkpoint is not None:
            raise ValueError(
                f"{src}: expect_checkpoint pins one sharded checkpoint: give its encrypted index, not a directory"
            )
        return _directory.verify(src, secret)
    fmt = _input_format(src, storage_options)
    _checkpoint_is_for_sets(src, fmt, expect_checkpoint)
    if fmt == "enctensor-index":
        return _sharded.verify(src, secret, expect_checkpoint=expect_checkpoint)
    if fmt != "enctensor":
        raise _not_a(src, fmt, "an enctensor file or encrypted checkpoint index")
    reader = secret.open(src)
    with about(src):
        reader.verify()
    rows = reader.tensors()
    return len(rows), sum(r[4] for r in rows)


def verify_directory(
    src: PathLike,
    *,
    key: Key | list[Key] | tuple[Key, ...] | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> tuple[int, int]:
    """Verifies an encrypted model directory (what :func:`encrypt_file` makes of a
    directory) without keeping any plaintext: every encrypted file is authenticated (and
    with ``verify_with`` its publisher signature checked; every sharded set checked whole),
    every one must hold the same manifest (``enctensor.files`` metadata entry, see
    :mod:`enctensor.convert.manifest`), the directory must hold exactly the files it lists
    (``.gitattributes`` excepted) and every copied file (config, tokenizer, ...) the size and
    SHA-256 it records; then every chunk is verified. Returns (tensors, bytes). A changed,
    missing or added file is an :class:`~enctensor.IntegrityError` naming it. Call it before
    loading files of the directory with other libraries (e.g. a tokenizer). The arguments
    are those of :func:`verify_file`."""
    if not os.path.isdir(src):
        raise NotADirectoryError(
            20, "not a directory: give an encrypted model directory (or use verify_file)", os.fspath(src)
        )
    secret = Secret.for_reading(
        key, passphrase, verify_with, max_scrypt_log_n=max_scrypt_log_n, expect_metadata=expect_metadata
    )
    return _directory.verify(src, secret)


def rekey_file(
    path: PathLike,
    *,
    key: Key | list[Key] | tuple[Key, ...] | None = None,
    passphrase: Passphrase | None = None,
    new_keys: Iterable[WriteKey] = (),
    new_recipients: Recipient | Iterable[Recipient] = (),
    new_passphrase: Passphrase | None = None,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    on_done: Callable[[Path, str], None] | None = None,
    **changes: Any,
) -> list[tuple[Path, str]]:
    """Changes who can open an enctensor file, or every shard of an encrypted sharded
    checkpoint index, as :func:`enctensor.rekey` does (``changes`` are its ``add_*``,
    ``remove_*``, ``replace`` and ``fingerprints`` arguments, applied to every file); returns
    ``(file, "in-place" | "rewritten")`` for each file, and calls ``on_done`` with the same as
    each is done.

    ``key`` is anything :func:`enctensor.load` takes as a key (except a key provider), or a
    list of those, tried in turn for each file. For an index, every shard is first opened
    (and authenticated) with the current credentials and the set is checked whole, so that a
    wrong key or a broken set changes nothing.
    A failure after that (I/O) leaves the shards before it re-keyed; the exception then has
    ``rekeyed``, the list of those files. ``max_scrypt_log_n`` is as for :func:`enctensor.load`.
    """
    secret = Secret.for_reading(key, passphrase, max_scrypt_log_n=check_max_scrypt_log_n(max_scrypt_log_n))
    new = stanza_changes(
        new_keys=new_keys,
        new_recipients=new_recipients,
        new_passphrase=new_passphrase,
        scrypt_log_n=scrypt_log_n,
        **changes,
    )
    fmt = detect_format(path)
    creds: list[dict[str, Any]] | None = None
    if fmt == "enctensor":
        files = [Path(path)]
    elif fmt == "enctensor-index":
        # Every shard opened and authenticated, and the set checked whole (a missing, mixed or
        # swapped shard changes nothing), with the credential that opens each, in set order.
        files_and_creds = _sharded.set_credentials(path, secret)
        files = [f for f, _ in files_and_creds]
        creds = [c for _, c in files_and_creds]
    else:
        raise _not_a(path, fmt, "an enctensor file or encrypted checkpoint index")

    def rekey_with(f: Path) -> Callable[[dict[str, Any]], str]:
        return lambda cred: _core.rekey(os.fspath(f), **cred, **new)

    done: list[tuple[Path, str]] = []
    try:
        for i, f in enumerate(files):
            if creds is None:
                how, _ = secret.attempt(f, rekey_with(f))
            else:
                with about(f):
                    how = rekey_with(f)(creds[i])
            done.append((f, how))
            if on_done is not None:
                on_done(f, how)
    except BaseException as e:
        if done:
            with contextlib.suppress(AttributeError, TypeError):
                e.rekeyed = [f for f, _ in done]  # type: ignore[attr-defined]
        raise
    return done
