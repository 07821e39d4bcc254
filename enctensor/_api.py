"""The numpy-level API: save, load, safe_open, inspect (shaped like safetensors)."""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from . import _core
from ._alloc import aligned_empty, destinations
from ._dtypes import format_dtype, numpy_dtype
from ._frameworks import converter
from ._keys import (
    Key,
    KeyArg,
    Passphrase,
    Recipient,
    SigningKey,
    VerifyKey,
    WriteKey,
    check_keys,
    check_passphrase,
    holder_kwargs,
    opener,
    recipient_kwargs,
    sign_seed,
    verify_bytes,
)
from ._remote import (
    RemoteReader,
    inspect_url,
    is_url,
    local_path,
    open_reader,
    open_remote,
    read_front,
    upload,
)
from ._slice import plan
from .errors import FormatError, IntegrityError, TensorNotFoundError

if TYPE_CHECKING:
    from .convert.sharded import Index

PathLike = str | os.PathLike[str]
#: fsspec's options for a URL's filesystem (credentials, endpoint, ...), as in pandas.
StorageOptions = Mapping[str, Any] | None
#: An opened file: local (the core reads it) or remote (chunks fetched as reads need them).
Reader = _core.Reader | RemoteReader
# 256 KiB: a slice decrypts at most two chunks more than it needs; throughput is the same as
# with 1 MiB chunks.
DEFAULT_CHUNK_SIZE = 256 << 10
DEFAULT_SCRYPT_LOG_N = 18
#: Readers refuse a passphrase stanza whose scrypt work factor is above ``2**18`` (256 MiB,
#: about a second) before running scrypt, unless the caller raises this (up to 20).
DEFAULT_MAX_SCRYPT_LOG_N = 18

__all__ = [
    "TensorSlice",
    "inspect",
    "inspect_bytes",
    "load",
    "load_bytes",
    "rekey",
    "safe_open",
    "save",
    "save_bytes",
    "verify",
]


def check_max_scrypt_log_n(n: object) -> int:
    """``max_scrypt_log_n=``: an int from 10 to 20 (the format's range of scrypt work factors)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"max_scrypt_log_n must be an int, not {type(n).__name__}")
    if not 10 <= n <= 20:
        raise ValueError(f"max_scrypt_log_n must be between 10 and 20, got {n}")
    return n


def check_expect_metadata(expect: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``expect_metadata=``: entries the opened file must have, with exactly these values."""
    if expect is None:
        return ()
    if not isinstance(expect, Mapping):
        raise TypeError(f"expect_metadata must be a dict of str to str, not {type(expect).__name__}")
    for k, v in expect.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"expect_metadata must map str to str; entry {k!r}: {type(v).__name__}")
    return tuple(expect.items())


def _short(value: str, limit: int = 80) -> str:
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def check_pinned_metadata(
    metadata: Iterable[tuple[str, str]],
    expected: Iterable[tuple[str, str]],
    shown: str | os.PathLike[str] | None = None,
) -> None:
    """Raises :class:`IntegrityError` naming the first entry of ``expected`` that the (already
    authenticated) ``metadata`` lacks or holds with another value: a rolled-back or other file."""
    held = dict(metadata)
    where = f"{os.fspath(shown)}: " if shown is not None else ""
    for name, value in expected:
        if name not in held:
            raise IntegrityError(
                f"{where}the metadata has no entry {name!r}, which expect_metadata requires to be"
                f" {_short(value)} (an older or another file?)"
            )
        if held[name] != value:
            raise IntegrityError(
                f"{where}the metadata entry {name!r} is {_short(held[name])}, but expect_metadata requires"
                f" {_short(value)} (an older or another file?)"
            )


#: What to give instead of a directory, to a reader and to :func:`save`.
_READ_INSTEAD = "give a file name: an .enct file, or the *.enct.index.json of a sharded checkpoint"
_WRITE_INSTEAD = "give a file name"


class _DirectoryGiven(IsADirectoryError):
    """A directory given where a file name was expected. ``strerror`` is ``"is a directory"``
    (as the CLI shows it); ``str()`` also says what to give instead."""

    def __init__(self, path: str, instead: str) -> None:
        super().__init__(errno.EISDIR, "is a directory", path)
        self.instead = instead

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror} — {self.instead}"


def _file_name(path: PathLike, instead: str = _READ_INSTEAD) -> str:
    """``os.fspath(path)``; :class:`IsADirectoryError` saying what to give if it is a directory."""
    p = os.fspath(path)
    if is_url(p):
        return p
    p = local_path(p)
    if os.path.isdir(p):
        raise _DirectoryGiven(p, instead)
    return p


def _index_format(p: str, storage_options: StorageOptions = None) -> str | None:
    """``"enctensor-index"`` or ``"index"`` if ``p`` is the index of a sharded checkpoint
    (decided by content, as ``enctensor.convert.detect_format`` does: a JSON object with a
    ``weight_map``), else ``None``, also when ``p`` cannot be read (the reader reports that).
    A URL is looked at only if its name ends in ``.json`` (each look is a request)."""
    if is_url(p):
        if not p.endswith(".json"):
            return None
        from .convert.sharded import read_json

        try:
            _, obj = read_json(p, storage_options=storage_options)
        except (OSError, ValueError):
            return None
        return _index_format_of(obj)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.lstrip()[:1] != b"{":  # an enctensor file starts with its magic; skip the import
        return None
    from .convert import detect_format

    try:
        fmt = detect_format(p)
    except (OSError, ValueError):
        return None
    return fmt if fmt in ("index", "enctensor-index") else None


def _remote_index(p: str, storage_options: StorageOptions) -> Index | None:
    """The parsed index at URL ``p`` if it is a sharded checkpoint's index (looked at only when
    its name ends in ``.json``), else ``None``. A URL that cannot be fetched raises here, as
    opening it would (one failure, not one for each look)."""
    if not (is_url(p) and p.endswith(".json")):
        return None
    from .convert.sharded import read_index

    try:
        return read_index(p, storage_options)
    except ValueError:  # not an index, or a malformed one: _index_format and open_set tell which
        return None


def _index_format_of(obj: object) -> str | None:
    """:func:`_index_format` of a remote JSON file's value: an index whose shards are named
    ``*.enct`` is taken as encrypted (fetching a shard to look would cost a request)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        return None
    from .convert.sharded import ENC_SUFFIX

    shards = list(obj["weight_map"].values())
    encrypted = bool(shards) and all(isinstance(s, str) and s.endswith(ENC_SUFFIX) for s in shards)
    return "enctensor-index" if encrypted else "index"


def _not_one_file(p: str, fmt: str, what: str) -> FormatError:
    """The error of a reader of one file (``what``) given a sharded checkpoint's index."""
    if fmt == "index":
        return FormatError(
            f"{p}: the index of a sharded checkpoint of unencrypted shards, not an enctensor file:"
            " encrypt it with `enctensor encrypt` or enctensor.convert.encrypt_file"
        )
    return FormatError(
        f"{p}: the index of a sharded checkpoint, which {what} does not take: give one of its"
        " shards, or load the whole checkpoint with enctensor.load"
        " (enctensor.convert.verify_file or `enctensor verify` verify it)"
    )


def _check_metadata(metadata: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if metadata is None:
        return []
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of str to str, not {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str; entry {k!r}: {type(v).__name__}")
    return list(metadata.items())


def _tensor_rows(
    tensors: Mapping[str, np.ndarray], plaintext: Iterable[str]
) -> list[tuple[str, str, list[int], np.ndarray, bool]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name to numpy array, not {type(tensors).__name__}")
    clear = set(plaintext)
    unknown = clear - set(tensors)
    if unknown:
        raise ValueError(f"plaintext names tensors that are not being saved: {sorted(unknown)}")
    rows = []
    for name, arr in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, not {type(name).__name__}")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy array, not {type(arr).__name__}")
        if arr.dtype.hasobject:
            raise TypeError(f"tensor {name!r} is an object array; only numeric and bool arrays can be saved")
        dtype = format_dtype(arr.dtype)
        if not arr.flags.c_contiguous:
            raise ValueError(
                f"tensor {name!r} is not C-contiguous; save np.ascontiguousarray(...) of it instead"
            )
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        rows.append((name, dtype, list(arr.shape), arr.reshape(-1).view(np.uint8), name not in clear))
    return rows


def _write_args(
    key: object,
    passphrase: object,
    recipients: object,
    sign_with: object,
    metadata: Mapping[str, str] | None,
    chunk_size: int,
    scrypt_log_n: int,
    fingerprints: bool = False,
) -> dict[str, Any]:
    keys = check_keys(key)
    p = check_passphrase(passphrase)
    public = recipient_kwargs(recipients)
    if not keys and p is None and not public["x25519"] and not public["rsa_spki"]:
        raise ValueError("give a key (32 bytes), recipients or a passphrase to encrypt to")
    if not isinstance(fingerprints, bool):
        raise TypeError(f"fingerprints must be a bool, not {type(fingerprints).__name__}")
    if fingerprints and p is not None:
        raise ValueError(
            "a passphrase stanza cannot carry a fingerprint (it would test guesses without scrypt):"
            " leave fingerprints=False"
        )
    # Given only when asked for: the core's default is no fingerprints.
    extra: dict[str, Any] = {"fingerprints": True} if fingerprints else {}
    return {
        **extra,
        "metadata": _check_metadata(metadata),
        "keys": keys,
        "passphrase": p,
        **public,
        "sign_seed": sign_seed(sign_with),
        "log_n": scrypt_log_n,
        "chunk_size": chunk_size,
    }


def save(
    tensors: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    recipients: Recipient | Iterable[Recipient] = (),
    sign_with: SigningKey | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    overwrite: bool = True,
    fingerprints: bool = False,
    storage_options: StorageOptions = None,
) -> None:
    """Encrypts ``tensors`` to ``path`` atomically (temporary file, fsync, rename).

    ``overwrite`` (default ``True``, as safetensors' ``save_file``) replaces an existing
    ``path``; with ``overwrite=False`` an existing ``path`` is a :class:`FileExistsError` naming
    it and nothing is written, as the CLI does without ``--force`` (a file created at ``path``
    while this one is being written is not replaced either). A directory is an
    :class:`IsADirectoryError` either way.

    Whoever holds any of these can open the file: ``key``, 32 raw bytes or a
    ``pathlib.Path`` to a key file (or several of those); ``recipients``, X25519 or RSA public
    keys (``cryptography`` objects, their one-line ``x25519:<hex>`` or PEM text, or a
    ``pathlib.Path`` to a file of one); or ``passphrase`` (``str`` or UTF-8 bytes; scrypt; it
    must be the only way in). A ``str`` is never taken as a key or as a key file's path
    (``TypeError``): read a key file named by a string with :func:`enctensor.read_key_file`.
    ``sign_with`` (an Ed25519 private key, or a ``pathlib.Path`` to its PEM file) signs the
    file for ``load(..., verify_with=...)``. Tensors named in ``plaintext`` are stored
    unencrypted but still authenticated.

    ``fingerprints=True`` makes each key and recipient stanza carry its recipient's fingerprint,
    so that :func:`rekey` can later remove a recipient by its public key and ``inspect`` shows
    whose each stanza is; the file then tells anyone who knows a recipient's public key that it
    opens the file (SECURITY.md, "Recipient fingerprints"). Off by default, as in age.

    ``path`` may be a URL (``s3://bucket/model.enct``; ``storage_options`` as for
    :func:`load`): the file is written to a local temporary file, then uploaded whole
    (multipart where the backend does that), so readers see the old object or the new one.
    ``overwrite=False`` then checks that the object does not exist before uploading (a check,
    not an atomic guard: object stores have no no-clobber rename).
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, not {type(overwrite).__name__}")
    p = _file_name(path, _WRITE_INSTEAD)
    if is_url(p):
        rows = _tensor_rows(tensors, plaintext)
        args = _write_args(
            key, passphrase, recipients, sign_with, metadata, chunk_size, scrypt_log_n, fingerprints
        )
        with upload(p, storage_options, overwrite=overwrite) as local:
            _core.write_file(local, rows, **args)
        return
    if not overwrite and os.path.lexists(p):
        raise FileExistsError(errno.EEXIST, "already exists", p)
    rows = _tensor_rows(tensors, plaintext)
    args = _write_args(
        key, passphrase, recipients, sign_with, metadata, chunk_size, scrypt_log_n, fingerprints
    )
    if overwrite:
        _core.write_file(p, rows, **args)
        return
    from .convert._common import Staging

    # Written to a reserved temporary name, then hard-linked to ``p``, which fails if ``p``
    # has appeared meanwhile (the CLI's no-clobber write).
    with Staging(overwrite=False) as staging:
        tmp = staging.add(p)
        _core.write_file(os.fspath(tmp), rows, **args)
        staging.commit()


def save_bytes(
    tensors: Mapping[str, np.ndarray],
    *,
    key: WriteKey | Iterable[WriteKey] | None = None,
    passphrase: Passphrase | None = None,
    recipients: Recipient | Iterable[Recipient] = (),
    sign_with: SigningKey | None = None,
    metadata: Mapping[str, str] | None = None,
    plaintext: Iterable[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    fingerprints: bool = False,
) -> bytes:
    """Like :func:`save`, returning the encrypted file as bytes."""
    rows = _tensor_rows(tensors, plaintext)
    args = _write_args(
        key, passphrase, recipients, sign_with, metadata, chunk_size, scrypt_log_n, fingerprints
    )
    return _core.write_bytes(rows, **args)


def _stanza_list(info: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(fields) for fields in info[2]]


def _open(
    path: PathLike,
    key: object,
    passphrase: object,
    verify_with: object = None,
    *,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    what: str = "this function",
    storage_options: StorageOptions = None,
) -> Reader:
    """Opens and authenticates ``path`` (MAC, and the signature when ``verify_with`` is
    given), then checks the ``expect_metadata`` pins. ``what`` names the caller in the error
    for a sharded checkpoint's index. A URL is opened through fsspec with
    ``storage_options``."""
    p = _file_name(path)
    fmt = _index_format(p, storage_options)
    if fmt is not None:
        raise _not_one_file(p, fmt, what)
    return _open_file(
        p,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )


def _open_file(
    p: str,
    key: object,
    passphrase: object,
    verify_with: object,
    *,
    expect_metadata: Mapping[str, str] | None,
    max_scrypt_log_n: int,
    storage_options: StorageOptions = None,
) -> Reader:
    """:func:`_open` of a file name already known not to be a directory or an index."""
    pins = check_expect_metadata(expect_metadata)
    cap = check_max_scrypt_log_n(max_scrypt_log_n)
    verify_key = verify_bytes(verify_with)
    reader: Reader
    if is_url(p):
        reader = open_reader(
            p,
            storage_options,
            lambda stanzas: opener(key, passphrase, stanzas),
            verify_key=verify_key,
            max_scrypt_log_n=cap,
        )
    else:
        how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_file(p)))
        reader = _core.Reader(p, **how, verify_key=verify_key, max_scrypt_log_n=cap)
    check_pinned_metadata(reader.metadata(), pins, p)
    return reader


def _open_readers(
    path: PathLike,
    key: object,
    passphrase: object,
    verify_with: object = None,
    *,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: StorageOptions = None,
) -> tuple[list[Reader], bool]:
    """Opens and authenticates ``path``: an enctensor file (one reader; ``False``) or the
    index of an encrypted sharded checkpoint (a reader per shard, in set order, after the set
    was checked to be whole, see :func:`enctensor._sharded.open_set`; ``True``). The arguments
    are those of :func:`_open` and apply to every shard; a directory or an index of
    unencrypted shards is refused as :func:`_open` refuses it."""
    p = _file_name(path)
    # A URL index is fetched once, here, and handed to open_set (each fetch is a request).
    index = _remote_index(p, storage_options)
    fmt = _index_format_of(index.obj) if index is not None else _index_format(p, storage_options)
    if fmt == "enctensor-index":
        from ._sharded import open_set

        shards = open_set(
            p,
            key=key,
            passphrase=passphrase,
            verify_with=verify_with,
            expect_metadata=expect_metadata,
            max_scrypt_log_n=max_scrypt_log_n,
            storage_options=storage_options,
            index=index,
        )
        return [reader for _, reader in shards], True
    if fmt is not None:
        raise _not_one_file(p, fmt, "this function")
    reader = _open_file(
        p,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    return [reader], False


def _open_bytes(
    data: bytes | bytearray | memoryview,
    key: object,
    passphrase: object,
    verify_with: object = None,
    *,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> _core.Reader:
    pins = check_expect_metadata(expect_metadata)
    cap = check_max_scrypt_log_n(max_scrypt_log_n)
    verify_key = verify_bytes(verify_with)
    raw = bytes(data)
    how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_bytes(raw)))
    reader = _core.Reader.from_bytes(raw, **how, verify_key=verify_key, max_scrypt_log_n=cap)
    check_pinned_metadata(reader.metadata(), pins)
    return reader


def read_all(reader: Reader) -> dict[str, np.ndarray]:
    """Decrypts every tensor of an opened file, all chunks in parallel, into fresh arrays."""
    rows = reader.tensors()
    bufs = destinations([nbytes for (_, _, _, _, nbytes) in rows])
    reader.read_many_into(list(enumerate(bufs)))
    return {
        name: buf.view(numpy_dtype(dtype)).reshape(shape)
        for (name, dtype, shape, _, _), buf in zip(rows, bufs, strict=True)
    }


def read_readers(readers: Iterable[Reader]) -> dict[str, np.ndarray]:
    """:func:`read_all` of each reader in turn (the shards of a set), in one dict."""
    out: dict[str, np.ndarray] = {}
    for reader in readers:
        out.update(read_all(reader))
    return out


def load(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: StorageOptions = None,
) -> dict[str, np.ndarray]:
    """Decrypts and verifies every tensor of ``path`` into numpy arrays (file order).

    ``key`` is 32 raw bytes, an X25519 or RSA private key object, a ``pathlib.Path`` to a key
    file (``enctensor keygen``'s, or a PEM private key), or a key provider: a callable that
    gets the file's stanza descriptions and returns any of those, or a :class:`FileKey` it
    unwrapped itself (KMS, HSM, TEE). A ``str`` is never taken as a key or a path
    (``TypeError``, which does not show it): use :func:`enctensor.read_key_file` for a key file
    named by a string. ``passphrase`` is a ``str`` or UTF-8 bytes.

    ``verify_with`` (an ``Ed25519PublicKey``, its 32 raw bytes, the ``ed25519:<hex>`` text the
    CLI prints, or a ``pathlib.Path`` to a file of one) requires a valid publisher signature.
    ``expect_metadata`` pins a release: after the file is authenticated, each entry must be in
    its metadata with exactly that value, else :class:`IntegrityError` naming it (a signature
    binds no version: this is how a rolled-back file is refused). ``max_scrypt_log_n`` (10 to
    20, default 18) is the largest scrypt work factor a passphrase-protected file may ask for;
    a costlier one is refused with :class:`FormatError` before scrypt runs.

    ``path`` may also be the index of an encrypted sharded checkpoint (``*.enct.index.json``,
    recognised by its content, shards next to it): all its tensors are returned, as by
    :func:`enctensor.load_sharded`, which checks first that the set is whole (a missing,
    extra, swapped or mixed-in shard is an :class:`IntegrityError`) and applies these
    arguments to every shard. A directory is an :class:`IsADirectoryError` saying so.

    ``path`` may be a URL (``s3://bucket/model.enct``, ``https://...``, any scheme fsspec
    has a filesystem for; ``storage_options`` are that filesystem's options, as in pandas):
    the header and tables are fetched in at most two ranged requests, then the chunks in
    parallel ranged requests, each decrypted as it arrives (README, "Remote files").
    """
    readers, _ = _open_readers(
        path,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        storage_options=storage_options,
    )
    return read_readers(readers)


def load_bytes(
    data: bytes | bytearray | memoryview,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> dict[str, np.ndarray]:
    """Like :func:`load`, from the bytes of a file."""
    return read_all(
        _open_bytes(
            data,
            key,
            passphrase,
            verify_with,
            expect_metadata=expect_metadata,
            max_scrypt_log_n=max_scrypt_log_n,
        )
    )


def verify(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    verify_with: VerifyKey | None = None,
    expect_metadata: Mapping[str, str] | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
    storage_options: StorageOptions = None,
) -> None:
    """Checks the header MAC and every chunk of ``path`` (and, with ``verify_with``, the
    publisher signature and every chunk digest) without keeping any plaintext; raises
    :class:`WrongKeyError`, :class:`IntegrityError`, :class:`SignatureError` or
    :class:`FormatError`. The arguments are those of :func:`load`. It takes one file: the
    index of a sharded checkpoint is a :class:`FormatError` (verify a set with
    :func:`enctensor.convert.verify_file`)."""
    _open(
        path,
        key,
        passphrase,
        verify_with,
        expect_metadata=expect_metadata,
        max_scrypt_log_n=max_scrypt_log_n,
        what="enctensor.verify",
        storage_options=storage_options,
    ).verify()


def _inspection(info: tuple[Any, ...]) -> dict[str, Any]:
    rows, metadata, _, chunk_size, file_size, signed = info
    stanzas = _stanza_list(info)
    return {
        "format_version": _core.FORMAT_VERSION,
        "tensors": [
            {"name": n, "dtype": d, "shape": list(s), "encrypted": e, "nbytes": b} for n, d, s, e, b in rows
        ],
        "metadata": dict(metadata),
        "stanzas": [s["type"] for s in stanzas],
        "stanza_details": stanzas,
        "signed": signed,
        "chunk_size": chunk_size,
        "file_size": file_size,
    }


def inspect(path: PathLike, *, storage_options: StorageOptions = None) -> dict[str, Any]:
    """Names, dtypes, shapes, metadata and stanza types of ``path``, read without a key.

    Nothing returned is authenticated: only a load with the key proves the header genuine.
    A directory is an :class:`IsADirectoryError`, the index of a sharded checkpoint a
    :class:`FormatError` (inspect its shards). A URL reads only the header and tables.
    """
    p = _file_name(path)
    fmt = _index_format(p, storage_options)
    if fmt is not None:
        raise _not_one_file(p, fmt, "enctensor.inspect")
    if is_url(p):
        return _inspection(inspect_url(p, storage_options))
    return _inspection(_core.inspect_file(p))


def inspect_bytes(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Like :func:`inspect`, for the bytes of a file."""
    return _inspection(_core.inspect_bytes(bytes(data)))


def rekey(
    path: PathLike,
    *,
    key: KeyArg | None = None,
    passphrase: Passphrase | None = None,
    add_keys: WriteKey | Iterable[WriteKey] = (),
    add_recipients: Recipient | Iterable[Recipient] = (),
    add_passphrase: Passphrase | None = None,
    remove_keys: Key | Iterable[Key] = (),
    remove_recipients: Recipient | Iterable[Recipient] = (),
    remove_stanzas: Iterable[int] = (),
    remove_passphrase: bool = False,
    replace: bool = False,
    fingerprints: bool = False,
    new_keys: WriteKey | Iterable[WriteKey] = (),
    new_recipients: Recipient | Iterable[Recipient] = (),
    new_passphrase: Passphrase | None = None,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> str:
    """Changes who can open ``path``, opened with ``key`` or ``passphrase``: adds stanzas for
    ``add_keys``, ``add_recipients`` and ``add_passphrase`` and removes those named by the
    ``remove_*`` arguments, keeping every other stanza as it is.

    - ``remove_keys``: raw keys, X25519 or RSA private keys, or ``pathlib.Path``s to key files;
      each removes the stanzas it opens (found without fingerprints: for ``key`` and ``x25519``
      stanzas by their commitment, nothing is decrypted).
    - ``remove_recipients``: X25519 or RSA public keys (as ``recipients=`` of :func:`save`);
      each removes the stanzas carrying its fingerprint, so only in files written with
      ``fingerprints=True``; otherwise the error says how to proceed.
    - ``remove_stanzas``: positions, from 0, in the order of ``inspect(path)["stanza_details"]``.
    - ``remove_passphrase``: the passphrase stanza (a passphrase is always a file's only stanza:
      remove it to add others, or add one after removing the others).

    ``fingerprints=True`` makes the added stanzas carry their recipient's fingerprint (see
    SECURITY.md, "Recipient fingerprints": the file then tells anyone who knows a recipient's
    public key that it opens the file). ``replace=True`` removes every current stanza (nothing
    may then be named for removal); ``new_keys``, ``new_recipients`` and ``new_passphrase``, the
    older form, are ``replace=True`` with those added. Every removal must name a stanza, and a
    change that would leave no stanza (nobody could open the file) is refused, before anything
    is written.

    Tensor bytes, header, MAC and any signature are untouched. Usually one single-page write
    (``"in-place"``); when the new stanzas do not fit, the file is rewritten atomically with the
    tensor bytes copied unchanged (``"rewritten"``). The file key stays the same: whoever knew
    it keeps access; to revoke, re-encrypt with :func:`save`. Keys, passphrases and
    ``max_scrypt_log_n`` are taken as by :func:`load` and :func:`save`.
    """
    cap = check_max_scrypt_log_n(max_scrypt_log_n)
    changes = stanza_changes(
        add_keys=add_keys,
        add_recipients=add_recipients,
        add_passphrase=add_passphrase,
        remove_keys=remove_keys,
        remove_recipients=remove_recipients,
        remove_stanzas=remove_stanzas,
        remove_passphrase=remove_passphrase,
        replace=replace,
        fingerprints=fingerprints,
        new_keys=new_keys,
        new_recipients=new_recipients,
        new_passphrase=new_passphrase,
        scrypt_log_n=scrypt_log_n,
    )
    p = _file_name(path)
    how = opener(key, passphrase, lambda: _stanza_list(_core.inspect_file(p)))
    return _core.rekey(p, **how, **changes, max_scrypt_log_n=cap)


def _listed(value: object) -> object:
    """An iterable of keys or recipients as a list (a generator is read once); one key or
    recipient (bytes-like, ``str``, a path, a key object) as it is."""
    if isinstance(value, str | bytes | bytearray | memoryview | os.PathLike) or not isinstance(
        value, Iterable
    ):
        return value
    return list(value)


def _given(value: object) -> bool:
    """Whether a (listed) keys-or-recipients argument names anything: ``()``, ``[]`` and
    ``None`` do not."""
    return bool(value) if isinstance(value, list | tuple) else value is not None


def _stanza_positions(remove_stanzas: object) -> list[int]:
    if isinstance(remove_stanzas, int) and not isinstance(remove_stanzas, bool):
        remove_stanzas = [remove_stanzas]
    if not isinstance(remove_stanzas, Iterable) or isinstance(remove_stanzas, str | bytes):
        raise TypeError(
            f"remove_stanzas must be stanza positions (ints), not {type(remove_stanzas).__name__}"
        )
    out = []
    for i in remove_stanzas:
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(
                f"remove_stanzas takes stanza positions, ints from 0 as inspect() lists them; got {i!r}"
            )
        out.append(i)
    return out


def stanza_changes(
    *,
    add_keys: object = (),
    add_recipients: object = (),
    add_passphrase: object = None,
    remove_keys: object = (),
    remove_recipients: object = (),
    remove_stanzas: object = (),
    remove_passphrase: bool = False,
    replace: bool = False,
    fingerprints: bool = False,
    new_keys: object = (),
    new_recipients: object = (),
    new_passphrase: object = None,
    scrypt_log_n: int = DEFAULT_SCRYPT_LOG_N,
) -> dict[str, Any]:
    """The keyword arguments of ``_core.rekey`` for the arguments of :func:`rekey` (checked,
    and key files read, once): for one file, or for every shard of a set."""
    for name, flag in (
        ("remove_passphrase", remove_passphrase),
        ("replace", replace),
        ("fingerprints", fingerprints),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
    add_keys, add_recipients, remove_keys, remove_recipients, new_keys, new_recipients = map(
        _listed, (add_keys, add_recipients, remove_keys, remove_recipients, new_keys, new_recipients)
    )
    remove_stanzas = _stanza_positions(remove_stanzas)
    older = _given(new_keys) or _given(new_recipients) or new_passphrase is not None
    adding = _given(add_keys) or _given(add_recipients) or add_passphrase is not None
    removing = _given(remove_keys) or _given(remove_recipients) or _given(remove_stanzas) or remove_passphrase
    if older and (adding or removing or replace):
        raise ValueError(
            "new_keys, new_recipients and new_passphrase replace every stanza (the older form of rekey):"
            " give either those, or add_*/remove_* (with replace=True to replace every stanza)"
        )
    if older:
        add_keys, add_recipients, add_passphrase, replace = new_keys, new_recipients, new_passphrase, True
        what = "new"
    else:
        what = "add"
    if replace and removing:
        raise ValueError("replace=True removes every stanza: name none to remove")
    keys = check_keys(add_keys, f"{what}_keys")
    public = recipient_kwargs(add_recipients)
    new_p = check_passphrase(add_passphrase, f"{what}_passphrase")
    if new_p is not None and (keys or public["x25519"] or public["rsa_spki"]):
        raise ValueError(
            f"a passphrase must be the only way to open a file: give either {what}_passphrase, or"
            f" {what}_keys and {what}_recipients"
        )
    if replace and not keys and new_p is None and not public["x25519"] and not public["rsa_spki"]:
        raise ValueError("replacing every stanza needs at least one new key, recipient or passphrase")
    if not replace and not adding and not removing:
        raise ValueError(
            "rekey has nothing to do: give at least one stanza to add (add_keys=, add_recipients=,"
            " add_passphrase=) or to remove (remove_keys=, remove_recipients=, remove_stanzas=,"
            " remove_passphrase=True)"
        )
    if fingerprints and new_p is not None:
        raise ValueError(
            "a passphrase stanza cannot carry a fingerprint (it would test guesses without scrypt):"
            " leave fingerprints=False"
        )
    args: dict[str, Any] = {
        "new_keys": keys,
        "new_passphrase": new_p,
        "new_x25519": public["x25519"],
        "new_rsa_spki": public["rsa_spki"],
        "log_n": scrypt_log_n,
    }
    # Only what differs from the core's defaults (replace every stanza, no fingerprints).
    if not replace:
        holders = holder_kwargs(remove_keys)
        gone = recipient_kwargs(remove_recipients)
        optional = {
            "keep": True,
            "remove_stanzas": remove_stanzas,
            "remove_keys": holders["keys"],
            "remove_x25519_identities": holders["x25519_identities"],
            "remove_rsa_pkcs8": holders["rsa_pkcs8"],
            "remove_x25519": gone["x25519"],
            "remove_rsa_spki": gone["rsa_spki"],
            "remove_passphrase": remove_passphrase,
        }
        args.update({k: v for k, v in optional.items() if v})
    if fingerprints:
        args["fingerprints"] = True
    return args


def stanzas_for(path: PathLike, key: Key, *, storage_options: StorageOptions = None) -> list[int]:
    """The positions (from 0, as :func:`inspect` lists them) of the stanzas of ``path`` that
    ``key`` (32 raw bytes, an X25519 or RSA private key, or a ``pathlib.Path`` to a key file)
    opens: which stanza is whose, without fingerprints. The file is checked for format but not
    authenticated (use :func:`verify` for that). A URL reads only the header and tables."""
    p = _file_name(path)
    holders = holder_kwargs(key, "key")
    [(kind, [value])] = [(k, v) for k, v in holders.items() if v]
    arg = {"keys": "key", "x25519_identities": "x25519", "rsa_pkcs8": "rsa_pkcs8"}[kind]
    if is_url(p):
        remote = open_remote(p, storage_options)
        front = read_front(remote)
        on_front: list[int] = _core.stanzas_of_front(front, remote.size, **{arg: value})
        return on_front
    found: list[int] = _core.stanzas_of(p, **{arg: value})
    return found


class TensorSlice:
    """A lazily read tensor: index it to decrypt only the chunks the index covers."""

    def __init__(
        self, handle: safe_open, where: tuple[int, int], name: str, dtype: str, shape: tuple[int, ...]
    ) -> None:
        self._handle = handle
        self._where = where  # (position of the file among the handle's files, tensor index in it)
        self._name = name
        self._dtype = dtype
        self._shape = shape

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index: Any) -> Any:
        p = plan(self._shape, index)
        dt = numpy_dtype(self._dtype)
        if p.empty:
            return self._handle._convert(np.empty(p.shape, dt), self._dtype)
        size = dt.itemsize
        file, tensor = self._where
        reader = self._handle._reader_or_raise(file)
        # Read whole chunks: they are verified whole anyway, and the core then decrypts them
        # straight into `buf` instead of through a scratch buffer.
        cs = reader.chunk_size
        nbytes = math.prod(self._shape) * size
        start = p.lo * size // cs * cs
        stop = min(-(-(p.hi + 1) * size // cs) * cs, nbytes)
        buf = aligned_empty(stop - start)
        reader.read_range_into(tensor, start, buf)
        view = np.ndarray(
            p.shape,
            dtype=dt,
            buffer=buf,
            offset=p.lo * size - start + p.offset * size,
            strides=[s * size for s in p.strides],
        )
        # reshape: np.ascontiguousarray turns a 0-d array into a 1-d one.
        return self._handle._convert(np.ascontiguousarray(view).reshape(p.shape), self._dtype)


class safe_open:
    """Opens an encrypted file for random access: ``keys()``, ``metadata()``,
    ``get_tensor(name)``, ``get_slice(name)[...]``. The key is checked and the header
    authenticated on open; each tensor is verified as it is read. ``device`` (torch or TVM
    frameworks) puts the tensors on that device, as in safetensors. ``key``, ``passphrase``,
    ``verify_with``, ``expect_metadata`` and ``max_scrypt_log_n`` are those of :func:`load`.

    ``path`` may also be the index of an encrypted sharded checkpoint (``*.enct.index.json``):
    every shard is opened and authenticated, and the set checked to be whole, as
    :func:`enctensor.load` does, before this returns; the arguments apply to every shard.
    ``keys()`` then lists the tensors of all shards (set order, then file order), ``get_tensor``
    and ``get_slice`` read from whichever shard holds the tensor, and ``metadata()`` holds the
    entries that every shard has with the same value (each shard's own ``enctensor.shard``
    entry, which differs between shards, is left out).

    ``path`` may be a URL (``storage_options`` as for :func:`load`): opening it fetches the
    header and tables; ``get_tensor`` and ``get_slice(...)[...]`` then fetch only the chunks
    they need (a slice of 1 % of a file fetches about 1 % of it)."""

    def __init__(
        self,
        path: PathLike,
        *,
        key: KeyArg | None = None,
        passphrase: Passphrase | None = None,
        framework: str = "numpy",
        device: Any = None,
        verify_with: VerifyKey | None = None,
        expect_metadata: Mapping[str, str] | None = None,
        max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
        storage_options: StorageOptions = None,
    ) -> None:
        self._convert = converter(framework, device)
        readers, is_set = _open_readers(
            path,
            key,
            passphrase,
            verify_with,
            expect_metadata=expect_metadata,
            max_scrypt_log_n=max_scrypt_log_n,
            storage_options=storage_options,
        )
        self._readers: list[Reader] | None = readers
        # name -> ((file position, tensor index), tensors() row); a set's shards hold disjoint
        # names (open_set checked that the index maps every tensor to the one shard holding it).
        self._rows = {
            row[0]: ((f, i), row)
            for f, reader in enumerate(readers)
            for i, row in enumerate(reader.tensors())
        }
        if is_set:
            from ._sharded import set_metadata

            self._metadata = set_metadata(readers)
            self._scope = f"this checkpoint ({len(readers)} shards)"
        else:
            self._metadata = dict(readers[0].metadata())
            self._scope = "this file"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._readers = None

    def _reader_or_raise(self, file: int = 0) -> Reader:
        if self._readers is None:
            raise ValueError("this enctensor file is closed")
        return self._readers[file]

    def keys(self) -> list[str]:
        return list(self._rows)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _row(self, name: str) -> tuple[tuple[int, int], tuple[Any, ...]]:
        try:
            return self._rows[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self._scope}") from None

    def get_tensor(self, name: str) -> Any:
        (file, i), (_, dtype, shape, _, nbytes) = self._row(name)
        buf = aligned_empty(nbytes)
        self._reader_or_raise(file).read_into(i, buf)
        return self._convert(buf.view(numpy_dtype(dtype)).reshape(shape), dtype)

    def get_slice(self, name: str) -> TensorSlice:
        where, (_, dtype, shape, _, _) = self._row(name)
        self._reader_or_raise(where[0])
        return TensorSlice(self, where, name, dtype, tuple(shape))
