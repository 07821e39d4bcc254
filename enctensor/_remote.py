"""Files named by URL (``s3://``, ``http(s)://``, ``gs://``, ... anything ``fsspec`` opens).

Opening one takes a metadata request (size and version) and at most two ranged reads: the
first 64 KiB, and, if the tables run past them, the rest up to the tensor data. Each read
afterwards fetches only the chunks it needs: adjacent ranges are coalesced, large ones split
into parts fetched in parallel (bounded), and every part is decrypted as it arrives, straight
into the destination. A failure anywhere zeroes every destination of the read before the
error is raised: a tensor is returned whole and verified, or not at all.

Transient failures (5xx, timeouts, dropped connections, short bodies) are retried with
backoff; then :class:`RemoteReadError` names the URL. A file replaced between requests fails
authentication (the new file's chunks do not verify under the old header), and is reported as
:class:`ObjectChangedError` when its version (ETag, generation, mtime) shows it changed.

Writes go to a local temporary file, then are uploaded whole with ``put_file`` (multipart where
the backend does that, as s3fs does for large files): a reader sees the old object or the new
one, never part of one.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import _core
from .errors import EncTensorError, FormatError, IntegrityError, ObjectChangedError, RemoteReadError

__all__ = ["RemoteFile", "RemoteReader", "is_url", "open_remote", "upload"]

#: A URL with a scheme other than ``file``: ``s3://bucket/key``, ``https://host/path``, ...
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: The first read of an open: preamble, stanza area, header and, for files of up to about
#: 2,500 chunks of tag and digest tables, the tables too.
HEAD_BYTES = 64 << 10


def _env_int(name: str, default: int, low: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if n < low:
        raise ValueError(f"{name} must be at least {low}, not {n}")
    return n


#: Ranges fetched at once by one read (ENCTENSOR_REMOTE_CONCURRENCY).
CONCURRENCY = _env_int("ENCTENSOR_REMOTE_CONCURRENCY", 8, 1)
#: The largest range one request fetches (ENCTENSOR_REMOTE_PART, bytes): large enough that a
#: request's latency is small beside its transfer, small enough to spread over CONCURRENCY.
PART_BYTES = _env_int("ENCTENSOR_REMOTE_PART", 8 << 20, 1)
#: Ranges at most this far apart are fetched as one (the bytes between are read and dropped).
MERGE_GAP = 64 << 10
#: Attempts per request (ENCTENSOR_REMOTE_ATTEMPTS), with exponential backoff between them.
ATTEMPTS = _env_int("ENCTENSOR_REMOTE_ATTEMPTS", 4, 1)
BACKOFF_SECONDS = 0.2

# Errors that another attempt cannot mend.
_FINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, EncTensorError)

T = TypeVar("T")


def is_url(path: object) -> bool:
    """True for a ``str`` URL that names a remote file (``file://`` URLs are local paths)."""
    return isinstance(path, str) and _URL.match(path) is not None and not path.startswith("file://")


def local_path(path: str) -> str:
    """``path`` without a ``file://`` scheme."""
    return path.removeprefix("file://")


class UrlPath(os.PathLike[str]):
    """A URL with what naming shards next to an index needs of ``pathlib.PurePath``
    (``name``, ``parent``, ``/``); ``os.fspath`` gives the URL back."""

    def __init__(self, url: str) -> None:
        self._url = url

    def __fspath__(self) -> str:
        return self._url

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"UrlPath({self._url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @property
    def name(self) -> str:
        return self._url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self._url.rstrip("/").rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> UrlPath:
        # A name from an index must stay a file next to it: these would make it a query, a
        # fragment or an encoded path (an index may be hostile until its set is checked).
        if any(c in name for c in "?#%/\\"):
            raise ValueError(f"{name!r} cannot name a file next to {self._url}: it holds ? # % / or \\")
        return UrlPath(f"{self._url.rstrip('/')}/{name}")


def as_path(path: str | os.PathLike[str]) -> Path | UrlPath:
    """``path`` as a ``Path``, or a :class:`UrlPath` if it is a URL."""
    p = os.fspath(path)
    return UrlPath(p) if is_url(p) else Path(local_path(p))


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            "reading or writing a URL needs fsspec (and the backend of its scheme, such as s3fs):"
            " pip install 'enctensor[remote]' (or 'enctensor[s3]')"
        ) from None
    return fsspec


def _version(info: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies one version of an object in fsspec's ``info``: its size and whichever
    of ETag, version id, generation or modification time the backend reports."""
    fields = (
        "ETag",
        "etag",
        "VersionId",
        "generation",
        "LastModified",
        "Last-Modified",
        "last_modified",
        "mtime",
    )
    return (info.get("size"), *(str(info[f]) for f in fields if info.get(f) is not None))


@dataclass
class RemoteFile:
    """One remote object: its filesystem, path within it, URL (for messages), size and the
    version seen when it was opened."""

    fs: Any
    path: str
    url: str
    size: int
    version: tuple[Any, ...]

    def _attempts(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff on errors another attempt may mend; then
        :class:`RemoteReadError` naming the URL and ``what`` was being done."""
        for attempt in range(ATTEMPTS):
            try:
                return call()
            except _FINAL:
                raise
            except Exception as e:  # noqa: BLE001 (network, HTTP 5xx, timeouts, short reads: all retried)
                last = e
                if attempt + 1 < ATTEMPTS:
                    time.sleep(BACKOFF_SECONDS * 2**attempt * (0.5 + random.random()))
        raise RemoteReadError(
            f"{self.url}: {what} failed {ATTEMPTS} times; the last error: {type(last).__name__}: {last}"
        ) from last

    def fetch(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)``, exactly, as immutable ``bytes``."""

        def get() -> bytes:
            data = self.fs.cat_file(self.path, start=start, end=end)
            if len(data) != end - start:
                raise OSError(f"the server sent {len(data)} bytes of the {end - start} asked for")
            return bytes(data)

        if end <= start:
            return b""
        return self._attempts(f"reading bytes {start}..{end}", get)

    def changed(self) -> bool:
        """True if the object is no longer the version seen at open (or is gone)."""
        with contextlib.suppress(Exception):  # a listing cache would show the old version
            self.fs.invalidate_cache(self.path)
        try:
            info = self._attempts("reading its size and version", lambda: self.fs.info(self.path))
        except (OSError, EncTensorError):
            return True
        return _version(info) != self.version

    def check_unchanged(self, error: BaseException) -> None:
        """Raises :class:`ObjectChangedError` from ``error`` if the object changed since it was
        opened: that explains an authentication failure, or a range past its new end."""
        if isinstance(error, EncTensorError | OSError) and self.changed():
            raise ObjectChangedError(
                f"{self.url} was replaced or removed while it was being read (its version changed"
                " since it was opened): open it again to read the new file"
            ) from error


def url_filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path within it."""
    fs, path = _fsspec().core.url_to_fs(url, **dict(storage_options or {}))
    return fs, path


def open_remote(url: str, storage_options: Mapping[str, Any] | None = None) -> RemoteFile:
    """Resolves ``url`` with fsspec and reads its size and version (one metadata request)."""
    fs, path = url_filesystem(url, storage_options)
    probe = RemoteFile(fs, path, url, 0, ())
    info = probe._attempts("reading its size and version", lambda: fs.info(path))
    if info.get("type") == "directory":
        raise IsADirectoryError(21, "is a directory (give a file's URL)", url)
    return RemoteFile(fs, path, url, int(info["size"]), _version(info))


def read_front(remote: RemoteFile) -> bytes:
    """The start of the file up to its tensor data, in at most two ranged reads."""
    head = remote.fetch(0, min(remote.size, HEAD_BYTES))
    need = _core.prefix_len(head, remote.size)
    if need > len(head):
        head += remote.fetch(len(head), need)
    return head


@dataclass
class _Piece:
    """Bytes ``[lo, lo + len(out))`` of tensor ``index``, whose chunks are the file range
    ``[a, b)``, to decrypt into ``out``."""

    a: int
    b: int
    index: int
    lo: int
    out: memoryview


class RemoteReader:
    """An opened, authenticated remote file, with the methods of ``_core.Reader`` that the
    readers above it use; chunks are fetched as reads ask for them."""

    def __init__(self, remote: RemoteFile, inner: _core.Reader) -> None:
        self.remote = remote
        self._inner = inner
        self._rows = inner.tensors()

    @property
    def name(self) -> str:
        return self.remote.url

    @property
    def chunk_size(self) -> int:
        return self._inner.chunk_size

    def tensors(self) -> list[tuple[str, str, list[int], bool, int]]:
        return self._inner.tensors()

    def metadata(self) -> list[tuple[str, str]]:
        return self._inner.metadata()

    def inspect(self) -> Any:
        return self._inner.inspect()

    def read_into(self, index: int, dst: Any) -> None:
        self.read_many_into([(index, dst)])

    def read_many_into(self, jobs: Sequence[tuple[int, Any]]) -> None:
        for index, dst in jobs:  # whole tensors: as the core, refuse a destination of another size
            if 0 <= index < len(self._rows) and memoryview(dst).nbytes != self._rows[index][4]:
                name, nbytes = self._rows[index][0], self._rows[index][4]
                raise ValueError(
                    f"destination for tensor {name!r} is {memoryview(dst).nbytes} bytes, it needs {nbytes}"
                )
        self._read([(index, 0, dst) for index, dst in jobs])

    def read_range_into(self, index: int, start: int, dst: Any) -> None:
        self._read([(index, start, dst)])

    def verify(self) -> None:
        """Fetches and verifies every chunk (and the padding between tensors), at most
        CONCURRENCY parts in memory at once, keeping no plaintext."""
        batch: list[tuple[int, int, Any]] = []
        held = 0
        for index, row in enumerate(self._rows):
            nbytes = row[4]
            for lo in range(0, max(nbytes, 1), PART_BYTES):
                size = min(PART_BYTES, nbytes - lo)
                batch.append((index, lo, bytearray(size)))
                held += size
                if held >= CONCURRENCY * PART_BYTES:
                    self._verify_batch(batch)
                    batch, held = [], 0
        self._verify_batch(batch)

    def _verify_batch(self, batch: list[tuple[int, int, Any]]) -> None:
        try:
            self._read(batch)
        finally:
            for _, _, scratch in batch:
                scratch[:] = bytes(len(scratch))

    def _pieces(self, jobs: Sequence[tuple[int, int, Any]]) -> tuple[list[_Piece], list[memoryview]]:
        """Splits each job into pieces of at most PART_BYTES (whole chunks), with the file
        range each needs."""
        pieces: list[_Piece] = []
        views: list[memoryview] = []
        step = max(1, PART_BYTES // self.chunk_size) * self.chunk_size
        for index, start, dst in jobs:
            if not 0 <= index < len(self._rows):
                raise ValueError(f"tensor index {index} is out of range")
            view = memoryview(dst).cast("B")
            if view.readonly:
                raise ValueError("the destination is read-only")
            views.append(view)
            end = start + len(view)
            if self._rows[index][4] == 0:  # chunk 0 of an empty tensor still has a tag to check
                a, b = self._inner.span(index, 0, 0)
                pieces.append(_Piece(a, b, index, 0, view))
                continue
            lo = start
            while lo < end:
                hi = min(end, lo // step * step + step)
                a, b = self._inner.span(index, lo, hi)
                pieces.append(_Piece(a, b, index, lo, view[lo - start : hi - start]))
                lo = hi
        return pieces, views

    def _read(self, jobs: Sequence[tuple[int, int, Any]]) -> None:
        pieces, views = self._pieces(jobs)
        try:
            self._fetch_and_open(pieces)
        except BaseException as e:
            for view in views:
                view[:] = bytes(len(view))
            self.remote.check_unchanged(e)
            raise

    def _fetch_and_open(self, pieces: list[_Piece]) -> None:
        requests = list(_coalesce(pieces))

        def run(request: tuple[int, int, list[_Piece]]) -> None:
            a, b, members = request
            data = self.remote.fetch(a, b)
            for p in members:
                self._inner.read_range_from(p.index, p.lo, p.out, a, data)

        if len(requests) <= 1:
            for request in requests:
                run(request)
            return
        pool = ThreadPoolExecutor(min(CONCURRENCY, len(requests)), thread_name_prefix="enctensor-fetch")
        try:
            futures = [pool.submit(run, r) for r in requests]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
        finally:
            # On a failure or Ctrl-C, requests not started are dropped; those running finish
            # first, so that no thread writes a destination after the caller zeroed it.
            pool.shutdown(wait=True, cancel_futures=True)


def _coalesce(pieces: list[_Piece]) -> Iterator[tuple[int, int, list[_Piece]]]:
    """Groups pieces into requests ``(a, b, pieces)``: in file order, merging ranges at most
    MERGE_GAP apart while the request stays within PART_BYTES (or is one piece)."""
    current: tuple[int, int, list[_Piece]] | None = None
    for p in sorted(pieces, key=lambda p: (p.a, p.b)):
        if current is not None:
            a, b, members = current
            if p.a - b <= MERGE_GAP and max(b, p.b) - a <= PART_BYTES:
                current = (a, max(b, p.b), [*members, p])
                continue
            yield current
        current = (p.a, p.b, [p])
    if current is not None:
        yield current


def open_reader(
    url: str,
    storage_options: Mapping[str, Any] | None,
    opener: Callable[[Callable[[], list[dict[str, Any]]]], dict[str, Any]],
    **kwargs: Any,
) -> RemoteReader:
    """Opens and authenticates the remote file ``url``. ``opener`` turns the file's stanza
    descriptions (for a key provider) into the key arguments of ``_core.Reader``; ``kwargs``
    are the rest (``verify_key``, ``max_scrypt_log_n``)."""
    remote = open_remote(url, storage_options)
    front = read_front(remote)
    how = opener(lambda: [dict(fields) for fields in _core.inspect_front(front, remote.size)[2]])
    return reader_from_front(remote, front, **how, **kwargs)


def reader_from_front(remote: RemoteFile, front: bytes, **kwargs: Any) -> RemoteReader:
    """A reader of ``remote`` from its ``front`` (:func:`read_front`): ``kwargs`` are those of
    ``_core.Reader`` (a credential, ``verify_key``, ``max_scrypt_log_n``). A front fetched
    once serves several tries with other credentials."""
    try:
        inner = _core.Reader.from_front(front, remote.size, remote.url, **kwargs)
    except (IntegrityError, FormatError) as e:
        remote.check_unchanged(e)
        raise
    return RemoteReader(remote, inner)


def inspect_url(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """``_core.inspect_front`` of the remote file ``url``."""
    remote = open_remote(url, storage_options)
    return _core.inspect_front(read_front(remote), remote.size)


@contextlib.contextmanager
def upload(
    url: str, storage_options: Mapping[str, Any] | None = None, *, overwrite: bool = True
) -> Iterator[str]:
    """Yields a local temporary file name to write; on success, uploads it whole to ``url``
    (retried like reads) and removes it. Nothing is uploaded if the block raises. With
    ``overwrite=False`` an existing object is a :class:`FileExistsError`, before anything is
    written."""
    fs, path = url_filesystem(url, storage_options)
    if not overwrite and fs.exists(path):
        raise FileExistsError(17, "already exists", url)
    suffix = os.path.basename(path.rstrip("/")) or "upload"
    with tempfile.TemporaryDirectory(prefix="enctensor-upload-") as tmp:
        local = os.path.join(tmp, suffix)
        yield local
        target = RemoteFile(fs, path, url, 0, ())
        target._attempts("uploading", lambda: fs.put_file(local, path))
