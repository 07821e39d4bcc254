"""Plumbing shared by the converters: credentials, mapped inputs, staged atomic outputs,
streaming decryption and progress reporting."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import numpy as np

from .. import _core
from .._alloc import aligned_empty
from .._api import (
    DEFAULT_MAX_SCRYPT_LOG_N,
    Reader,
    check_expect_metadata,
    check_max_scrypt_log_n,
    check_pinned_metadata,
)
from .._keys import check_keys, check_passphrase, opener, recipient_kwargs, sign_seed, verify_bytes
from .._remote import is_url, open_remote, read_front, reader_from_front
from ..errors import FormatError, WrongKeyError

PathLike = str | os.PathLike[str]
T = TypeVar("T")

#: ``progress(done, total)``: bytes of tensor data converted so far, out of ``total``. It may
#: be called from another thread than the caller's.
ProgressCallback = Callable[[int, int], None]


#: Plaintext decrypted per step when writing a plaintext file: bounds the converter's memory.
#: Each step decrypts several chunks in parallel, so it should span a few chunks.
DECRYPT_STEP = 16 << 20

#: The magic bytes of an enctensor file (spec/FORMAT.md, "Preamble").
ENCT_MAGIC = b"\x89ETS\r\n\x1a\n"


class InputFormatError(FormatError):
    """The input is not a well-formed file of the format being converted (a safetensors
    file, a TVM ``.params`` file or a sharded checkpoint index), or it holds something that
    enctensor cannot represent."""


def tag_path(exc: BaseException, path: PathLike) -> None:
    """Records which file an error concerns (for the CLI), unless something already did."""
    if getattr(exc, "enctensor_path", None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            exc.enctensor_path = os.fspath(path)  # type: ignore[attr-defined]


@contextlib.contextmanager
def about(path: PathLike) -> Iterator[None]:
    """Tags any exception raised in the block with ``path`` (see :func:`tag_path`)."""
    try:
        yield
    except BaseException as e:
        tag_path(e, path)
        raise


# --- Credentials --------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """What to encrypt to (and sign with), or what to try when decrypting (and the publisher
    key to require a signature from). Its repr never shows key material."""

    #: Writing: raw 32-byte keys. Reading: the ``_core.Reader`` keyword arguments of each
    #: credential to try, in turn (raw keys and identities, already loaded).
    keys: tuple[Any, ...] = field(default=(), repr=False)
    passphrase: str | None = field(default=None, repr=False)
    #: Writing: raw X25519 public keys and DER RSA public keys of the recipients.
    x25519: tuple[bytes, ...] = ()
    rsa_spki: tuple[bytes, ...] = ()
    #: Writing: the Ed25519 seed to sign every output with.
    sign_seed: bytes | None = field(default=None, repr=False)
    #: Reading: the Ed25519 public key whose valid signature is required.
    verify_key: bytes | None = None
    #: Reading: the largest scrypt work factor (log2) a passphrase stanza may ask for.
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N
    #: Reading: metadata entries every opened file must hold with exactly these values.
    expect_metadata: tuple[tuple[str, str], ...] = ()
    #: Reading: fsspec's options for files named by URL (they may hold credentials).
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def for_writing(
        cls, key: object = None, passphrase: object = None, recipients: object = (), sign_with: object = None
    ) -> Secret:
        """From ``key=`` (32 bytes, or several such keys), ``recipients=`` (X25519 or RSA
        public keys, PEM files or ``x25519:<hex>`` texts) and ``passphrase=`` (which must be
        the only way in), plus ``sign_with=`` (an Ed25519 private key), as :func:`enctensor.save`."""
        keys = tuple(check_keys(key))
        public = recipient_kwargs(() if recipients is None else recipients)
        p = check_passphrase(passphrase)
        if p is not None and (keys or public["x25519"] or public["rsa_spki"]):
            raise ValueError(
                "a passphrase must be the only way to open a file: give either a passphrase, or keys"
                " and recipients"
            )
        if p is None and not keys and not public["x25519"] and not public["rsa_spki"]:
            raise ValueError("give a key (32 bytes), recipients or a passphrase to encrypt to")
        return cls(keys, p, tuple(public["x25519"]), tuple(public["rsa_spki"]), sign_seed(sign_with))

    @classmethod
    def for_reading(
        cls,
        key: object = None,
        passphrase: object = None,
        verify_with: object = None,
        *,
        max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
        expect_metadata: Mapping[str, str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Secret:
        """From ``key=`` (anything :func:`enctensor.load` takes as a key except a key provider,
        or a list or tuple of those, tried in turn) or ``passphrase=``, plus ``verify_with=``
        (an Ed25519 public key, as :func:`enctensor.load` takes it), ``max_scrypt_log_n=`` and
        ``expect_metadata=`` (checked on every file opened), and ``storage_options=`` for
        files named by URL."""
        pins = check_expect_metadata(expect_metadata)
        cap = check_max_scrypt_log_n(max_scrypt_log_n)
        if isinstance(key, str):
            opener(key, None)  # the TypeError that does not show it
        given = tuple(key) if isinstance(key, list | tuple) else (() if key is None else (key,))
        p = check_passphrase(passphrase)
        if given and p is not None:
            raise ValueError("give either a key or a passphrase, not both")
        if not given and p is None:
            raise ValueError("give a key or a passphrase")
        verify_key = verify_bytes(verify_with)
        # Loaded once (a key file is read here, not for every shard).
        creds = tuple(opener(k, None) for k in given)
        return cls(
            creds,
            p,
            verify_key=verify_key,
            max_scrypt_log_n=cap,
            expect_metadata=pins,
            storage_options=storage_options,
        )

    def write_args(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "passphrase": self.passphrase,
            "x25519": list(self.x25519),
            "rsa_spki": list(self.rsa_spki),
            "sign_seed": self.sign_seed,
        }

    def credentials(self) -> list[dict[str, Any]]:
        """The ``_core.Reader`` (and ``_core.rekey``) keyword arguments of each credential to
        try, in turn, with the scrypt cap."""
        cap = {"max_scrypt_log_n": self.max_scrypt_log_n}
        if self.passphrase is not None:
            return [{"passphrase": self.passphrase, **cap}]
        return [{**cred, **cap} for cred in self.keys]

    def attempt(self, path: PathLike, fn: Callable[[dict[str, Any]], T]) -> tuple[T, dict[str, Any]]:
        """``fn(credential)`` with each credential in turn until one is not refused with
        :class:`WrongKeyError`; returns its result and the credential. When several were
        given and none opens ``path``, the error says so."""
        creds = self.credentials()
        last: WrongKeyError | None = None
        with about(path):
            for cred in creds:
                try:
                    return fn(cred), cred
                except WrongKeyError as e:
                    last = e
            assert last is not None
            if len(creds) == 1:
                raise last
            raise WrongKeyError(
                f"{path}: no key opens this file: none of the {len(creds)} keys and identities given"
                " matches any of its stanzas"
            ) from None

    def open_credential(self, path: PathLike) -> dict[str, Any]:
        """The first credential that opens (and authenticates) ``path``."""
        p = os.fspath(path)
        return self.attempt(path, lambda cred: _core.Reader(p, **cred))[1]

    def open(self, path: PathLike) -> Reader:
        """Opens and authenticates ``path`` with the first credential that opens it (and
        checks its signature, if a verification key was given), then checks the
        ``expect_metadata`` entries. A URL is opened by ranges (with ``storage_options``),
        its front fetched once for every credential tried."""
        p = os.fspath(path)
        open_with: Callable[[dict[str, Any]], Reader]
        if is_url(p):
            remote = open_remote(p, self.storage_options)
            front = read_front(remote)

            def open_with(cred: dict[str, Any]) -> Reader:
                return reader_from_front(remote, front, **cred, verify_key=self.verify_key)

        else:

            def open_with(cred: dict[str, Any]) -> Reader:
                return _core.Reader(p, **cred, verify_key=self.verify_key)

        reader = self.attempt(path, open_with)[0]
        with about(path):
            check_pinned_metadata(reader.metadata(), self.expect_metadata, p)
        return reader


# --- Inputs -------------------------------------------------------------------------------


class MappedFile:
    """A read-only map of a whole input file. ``view(offset, n)`` gives uint8 views of it
    without copying, which the Rust writer encrypts from; touched pages are page cache that
    the kernel can drop, not memory of this process."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        with about(path):
            self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._map: mmap.mmap | None = None
            if self.size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                with contextlib.suppress(AttributeError, OSError):
                    self._map.madvise(mmap.MADV_SEQUENTIAL)
        except BaseException:
            self._file.close()
            raise

    def view(self, offset: int, n: int) -> np.ndarray:
        """Bytes ``[offset, offset + n)`` as a read-only uint8 array (bounds checked)."""
        if offset < 0 or n < 0 or offset + n > self.size:
            raise InputFormatError(
                f"{self.path}: byte range {offset}..{offset + n} is past the end of the file"
            )
        if n == 0 or self._map is None:
            return np.empty(0, dtype=np.uint8)
        return np.frombuffer(self._map, dtype=np.uint8, count=n, offset=offset)

    def read(self, offset: int, n: int) -> bytes:
        """A copy of bytes ``[offset, offset + n)``, for headers (bounds checked)."""
        return self.view(offset, n).tobytes()

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # A view is still referenced (e.g. by a traceback being propagated); the map
                # is released when the last view is.
                pass
            self._map = None
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Outputs ------------------------------------------------------------------------------


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(final: Path, suffix: str) -> Path:
    """``dir/.<name>.<pid>-<random>.<suffix>`` beside ``final``, after removing those that
    earlier writes to ``final`` left behind when their process died (SIGKILL, power loss):
    the pid in the name says whose it is, and a live process's is never touched."""
    remove_stale_temporaries(final, suffix)
    return final.parent / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temporaries(final: Path, suffix: str) -> None:
    """Removes the temporary files or trees of dead processes for ``final`` (see
    :func:`temporary_name`), with the Rust writer's own temporary files inside them."""
    prefix, end = f".{final.name}.", f".{suffix}"
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(end)):
            continue
        pid, dash, rest = name[len(prefix) : -len(end)].partition("-")
        if not (dash and pid.isdigit() and len(rest) == 8) or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        for stray in final.parent.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stray.unlink()


@dataclass
class Staging:
    """Output files written under temporary names in their final directories and put in
    place together by :meth:`commit`. Leaving the ``with`` block without committing (an
    error, Ctrl-C) removes every temporary file: no partial output is ever left behind.

    Without ``overwrite``, an existing output is refused before any work is done, and put in
    place with ``link`` + ``unlink`` so that a file created meanwhile is not clobbered either.

    Modes: with ``mode`` given, every output gets exactly that mode. Otherwise an output that
    replaces a file keeps that file's mode (and owner and group, where permitted), and a new
    output gets ``new_mode`` if given (plaintext: 0600), else the writer's default (0666 less
    the umask). With either given, the temporary files are created 0600, so plaintext is
    never readable by others while it is written.
    """

    overwrite: bool = False
    mode: int | None = None
    new_mode: int | None = None
    _pending: list[tuple[Path, Path]] = field(default_factory=list)
    _committed: bool = False

    def add(self, final: PathLike) -> Path:
        """Reserves a temporary file next to ``final`` and returns its path."""
        final = Path(final)
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file name", os.fspath(final))
        if not self.overwrite and (final.exists() or final.is_symlink()):
            raise FileExistsError(errno.EEXIST, "already exists", os.fspath(final))
        if any(f == final for _, f in self._pending):
            raise ValueError(f"{final} would be written twice")
        parent = final.parent
        if not parent.is_dir():
            if parent.exists():
                raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory", os.fspath(final))
            raise FileNotFoundError(errno.ENOENT, f"the directory {parent} does not exist", os.fspath(final))
        tmp = temporary_name(final, "partial")
        # Creating the file now both reserves the name and finds an unwritable directory
        # before any expensive work.
        private = self.mode is not None or self.new_mode is not None
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
            0o600 if private else 0o666,
        )
        os.close(fd)
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        """Moves every temporary file to its final name and returns the final names."""
        done: list[Path] = []
        try:
            for tmp, final in self._pending:
                self._set_mode(tmp, final)
                if self.overwrite:
                    os.replace(tmp, final)
                else:
                    _link_no_clobber(tmp, final)
                done.append(final)
        except BaseException:
            if not self.overwrite:
                for f in done:  # ours: they did not exist before
                    with contextlib.suppress(OSError):
                        os.unlink(f)
            raise
        for d in {f.parent for _, f in self._pending}:
            _fsync_dir(d)
        self._committed = True
        return done

    def _set_mode(self, tmp: Path, final: Path) -> None:
        """Gives ``tmp`` the mode (and owner) its output is to have, before it is renamed."""
        if self.mode is not None:
            os.chmod(tmp, self.mode)
            return
        try:
            old = os.stat(final)
        except OSError:
            old = None
        if old is not None and stat.S_ISREG(old.st_mode):
            mode = stat.S_IMODE(old.st_mode)
            os.chmod(tmp, mode)
            ours = os.stat(tmp)
            if (ours.st_uid, ours.st_gid) != (old.st_uid, old.st_gid):
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
                with contextlib.suppress(OSError):
                    os.chown(tmp, -1, old.st_gid)
                if os.stat(tmp).st_gid != old.st_gid:
                    # The group could not be kept: its permissions would go to another group.
                    mode &= ~0o070
                # chown may clear set-id bits: set the mode again.
                os.chmod(tmp, mode)
        elif self.new_mode is not None:
            os.chmod(tmp, self.new_mode)

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            # The Rust writer's own temporary file, if it was interrupted before its cleanup.
            for stray in tmp.parent.glob(f".{tmp.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(stray)
        self._pending.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            self.discard()


def _link_no_clobber(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists", os.fspath(final)) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # No hard links on this file system: a (racy) check, then rename.
        if final.exists():
            raise FileExistsError(errno.EEXIST, "already exists", os.fspath(final)) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def open_output(tmp: Path) -> Iterator[BinaryIO]:
    """Opens a reserved temporary file for writing; fsyncs it before closing."""
    f = open(tmp, "r+b")  # noqa: SIM115 - the file is reserved (created) by Staging.add
    try:
        f.truncate(0)
        yield f
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()


# --- Progress -----------------------------------------------------------------------------


class Meter:
    """Counts converted bytes across several files and reports them to a callback."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        if self._callback is not None:
            self._callback(min(done, self.total), self.total)

    def set_within(self, base: int, n: int) -> None:
        """Reports ``base + n`` done (for a file whose progress is polled)."""
        with self._lock:
            self.done = max(self.done, base + n)
            done = self.done
        if self._callback is not None:
            self._callback(min(done, self.total), self.total)


@contextlib.contextmanager
def _poll_temp_file(tmp: Path, meter: Meter | None, base: int, expected: int) -> Iterator[None]:
    """Reports the growth of the Rust writer's temporary file next to ``tmp`` while it writes.

    The Rust writer has no progress callback; its temporary file is ``.<name>.<hex>.tmp`` and
    grows front to back. If that ever changes, progress simply stays at the start.
    """
    if meter is None or meter._callback is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        pattern = f".{tmp.name}.*.tmp"
        found: Path | None = None
        while not stop.wait(0.1):
            if found is None:
                found = next(tmp.parent.glob(pattern), None)
                if found is None:
                    continue
            try:
                size = found.stat().st_size
            except OSError:
                return  # renamed into place: done
            meter.set_within(base, min(size, expected))

    t = threading.Thread(target=run, name="enctensor-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


# --- Encrypting and decrypting ------------------------------------------------------------

Row = tuple[str, str, list[int], np.ndarray, bool]


def write_encrypted(
    tmp: Path,
    rows: Sequence[Row],
    metadata: Iterable[tuple[str, str]],
    secret: Secret,
    *,
    chunk_size: int,
    scrypt_log_n: int,
    meter: Meter | None = None,
    shown: PathLike | None = None,
) -> None:
    """Encrypts ``rows`` (views of a mapped input) to ``tmp`` with the Rust writer, which
    reads them in bounded batches; reports progress by watching its temporary file."""
    base = meter.done if meter is not None else 0
    nbytes = sum(int(r[3].nbytes) for r in rows)
    with about(shown if shown is not None else tmp), _poll_temp_file(tmp, meter, base, nbytes):
        _core.write_file(
            os.fspath(tmp),
            list(rows),
            metadata=list(metadata),
            chunk_size=chunk_size,
            log_n=scrypt_log_n,
            **secret.write_args(),
        )
    if meter is not None:
        meter.set_within(base, nbytes)


def decrypt_step(chunk_size: int) -> int:
    """Bytes decrypted per step: whole chunks (no partial-chunk scratch copies), ~16 MiB."""
    return max(chunk_size, DECRYPT_STEP // chunk_size * chunk_size)


class Decryptor:
    """Decrypts tensors of an opened file into a file object, one bounded step at a time.

    Two buffers alternate: while one step is written out by a helper thread, the next is
    decrypted (both release the GIL), so decryption and writing overlap.
    """

    def __init__(self, reader: Reader, meter: Meter | None = None) -> None:
        self._reader = reader
        self._step = decrypt_step(reader.chunk_size)
        self._bufs: list[np.ndarray] = []
        self._meter = meter
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enctensor-write")

    def _buffers(self) -> list[np.ndarray]:
        if not self._bufs:
            self._bufs = [aligned_empty(self._step) for _ in range(2)]
        return self._bufs

    def _report(self, n: int) -> None:
        if self._meter is not None:
            self._meter.add(n)

    def copy(self, index: int, nbytes: int, out: BinaryIO) -> None:
        """Writes the plaintext of tensor ``index`` (``nbytes`` long) to ``out``."""
        if nbytes == 0:
            # Still verify the (empty) chunk's tag: a zero-byte tensor is authenticated too.
            self._reader.read_into(index, np.empty(0, dtype=np.uint8).data)
            return
        bufs = self._buffers()
        pending: Future[int] | None = None
        pos = k = n = 0
        try:
            while pos < nbytes:
                n = min(self._step, nbytes - pos)
                buf = bufs[k % 2][:n]
                self._reader.read_range_into(index, pos, buf.data)
                if pending is not None:
                    pending.result()
                    self._report(self._step)
                pending = self._pool.submit(out.write, buf.data)
                pos += n
                k += 1
            assert pending is not None
            pending.result()
            self._report(n)
        finally:
            # Never return (or raise) while the helper may still be reading a buffer.
            if pending is not None:
                wait([pending])

    def close(self) -> None:
        self._pool.shutdown()
        self._bufs = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
