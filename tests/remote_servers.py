"""Real servers on 127.0.0.1 for tests of ranged reads from remote files through fsspec.

``RangeServer`` serves a directory over plain HTTP/1.1 (http.server in a thread);
``S3Server`` is moto's S3 API (the app ``moto.server.ThreadedMotoServer`` builds) behind a small
WSGI middleware. Both record every request and inject faults into the next GETs, so a test can
count the bytes a reader fetched and see how it copes with a failing, slow, truncated or
changing remote. No mocks: fsspec/aiohttp and s3fs/aiobotocore talk real HTTP to them.

Use the fixtures ``http_server``, ``s3_server`` and ``s3_bucket`` by importing them into the
test module (tests/ is on sys.path, as for cli_support), under their lint-clean names:
``from remote_servers import http_server_fixture, s3_bucket_fixture  # noqa: F401``.

Faults queue up in FIFO order, one per GET (for S3: per GetObject) in order of arrival, so
``fail_next(1); hang_next(1, 2)`` fails the next GET and stalls the one after it.

What each fault surfaces as through fsspec (measured with fsspec/s3fs 2026.9.0, aiohttp 3.14.5,
aiobotocore 3.10, botocore 1.43, moto 5.2.5; pinned by tests/test_remote_servers.py):

HTTP, ``fsspec.filesystem("http")``; it never retries:
  * missing file: ``cat_file``/``info``/``open`` raise FileNotFoundError. ``info`` (and so
    ``open``) sends a HEAD and, when that fails, a GET too, which takes a queued fault.
  * ``fail_next(1, 503)`` / ``(1, 500)``: ``cat_file`` raises aiohttp.ClientResponseError
    (``.status`` 503 / 500; an aiohttp.ClientError, not an OSError) after one GET.
  * ``hang_next(1, s)`` with ``client_kwargs={"timeout": aiohttp.ClientTimeout(total=0.5)}``:
    fsspec.exceptions.FSTimeoutError after 0.5 s (fsspec's sync() re-raises aiohttp's
    asyncio.TimeoutError as it; it subclasses TimeoutError, so it is an OSError).
  * ``cut_next(1, keep)``: aiohttp.ClientPayloadError ("Response payload is not completed",
    caused by a ContentLengthError); not an OSError.
  * ``short_next(1, keep)``: no error: ``cat_file`` returns just the ``keep`` bytes, so a caller
    needing n bytes must check the length itself.

S3, ``fsspec.filesystem("s3", **server.storage_options())``; two layers retry:
  * missing key: FileNotFoundError.
  * botocore (legacy mode) retries 500 and 503 itself: 5 attempts in all by default, with
    exponential backoff of up to seconds. ``config_kwargs={"retries": {"max_attempts": n}}``
    counts retries in that mode (n + 1 attempts); ``{"total_max_attempts": 1}`` (or
    ``max_attempts: 0``) means one attempt.
  * s3fs's ``_error_wrapper`` around each S3 call retries again errors saying "SlowDown" /
    "reduce your request rate" (503), not InternalError (500): ``S3FileSystem.retries`` = 5
    attempts, 0.1 s x 1.7**i apart. It is a class attribute to set on the instance
    (``fs.retries = 1``); there is no ``retries=`` argument (it would reach aiobotocore's
    AioSession: TypeError).
  * GetObject attempts for one ``cat_file`` that keeps failing, then the error raised:
      503 SlowDown:      default 25 (5 x 5, about 50 s); max_attempts 1 -> 10;
                         total_max_attempts 1 -> 5; that plus fs.retries = 1 -> 1;
                         fs.retries = 1 alone -> 5.
                         Raises OSError(errno.EBUSY).
      500 InternalError: default 5; max_attempts 1 -> 2; total_max_attempts 1 -> 1.
                         Raises OSError(errno.EREMOTEIO).
    (s3fs.errors.translate_boto_error; the botocore ClientError is the __cause__.)
  So a test of one failure uses ``server.filesystem(retry=False)`` (both set to one attempt);
  with the defaults, one injected 503 or 500 is retried away (two GETs, about a second).
  * s3fs's ``cat_file(path, version_id=None, start=None, end=None)``: pass start/end by keyword.

s3fs caches filesystem instances by constructor arguments, and each instance caches listings
(which ``info``/``size`` may then answer from): ``storage_options()`` includes
``skip_instance_cache=True`` so each ``fsspec.filesystem`` / ``fsspec.open`` call makes a fresh
instance; a test that keeps one instance across a change of an object calls
``fs.invalidate_cache()``.
"""

from __future__ import annotations

import email.utils
import http
import importlib
import mmap
import os
import socket
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest

HOST = "127.0.0.1"
#: A read arriving while an ``after_gets`` callback runs waits for it at most this long.
_GATE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None  # the Range header as sent, None if absent
    status: int  # 0 if no response was started
    body_bytes: int  # body bytes actually sent
    query: str = ""  # S3 only: the query string (tells GetObject from bucket calls)


@dataclass(frozen=True)
class _Fault:
    kind: Literal["fail", "hang", "cut", "short"]
    status: int = 503
    seconds: float = 0.0
    keep: int = 0


@dataclass
class _Trigger:
    remaining: int
    fn: Callable[[], object]


@dataclass
class _Slot:
    entry: Request | None = None


@dataclass
class _Ticket:
    slot: _Slot
    fault: _Fault | None = None
    callbacks: list[Callable[[], object]] = field(default_factory=list)


class _Recorder:
    """The request log and fault queue both servers share (all methods thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._log: list[_Slot] = []  # in order of arrival, filled in once answered
        self._faults: deque[_Fault] = deque()
        self._triggers: list[_Trigger] = []
        self._running = 0  # after_gets callbacks due or running
        self._inflight = 0  # requests admitted and not yet recorded
        self._closing = threading.Event()
        #: Exceptions from after_gets callbacks (and gate timeouts); fixtures fail on them.
        self.errors: list[BaseException] = []

    @property
    def requests(self) -> list[Request]:
        """Every request answered so far. Waits for those still being answered (a client can
        see its response complete a moment before the server records it; a hung request
        shows up once its sleep is over)."""
        with self._cond:
            self._settle()
            return [slot.entry for slot in self._log if slot.entry is not None]

    def reset(self) -> None:
        """Forgets the requests answered so far (not the pending faults: see clear_faults)."""
        with self._cond:
            self._settle()
            self._log = []

    def _settle(self) -> None:
        # Called holding self._cond.
        self._cond.wait_for(lambda: self._inflight == 0, _GATE_TIMEOUT)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()
            self._triggers.clear()

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]

    def bytes_sent(self) -> int:
        return sum(r.body_bytes for r in self.requests)

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next n GETs get ``status`` and a short body (for S3, an XML error)."""
        self._queue(n, _Fault("fail", status=status))

    def after_gets(self, k: int, fn: Callable[[], object]) -> None:
        """Calls ``fn()`` once, right after the k-th counted GET from now has been answered.
        Reads (GET, HEAD) arriving meanwhile wait for it; writes do not, so ``fn`` may itself
        write through the server (e.g. put_object to replace an S3 object)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        with self._cond:
            self._triggers.append(_Trigger(k, fn))

    def _queue(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._cond:
            self._faults.extend([fault] * n)

    def _admit(self, counted: bool, gated: bool) -> _Ticket:
        """Called when a request arrives: takes its fault and the callbacks it makes due."""
        with self._cond:
            if gated and not self._cond.wait_for(lambda: self._running == 0, _GATE_TIMEOUT):
                self.errors.append(TimeoutError("a read waited too long for an after_gets callback"))
            self._inflight += 1
            ticket = _Ticket(_Slot())
            self._log.append(ticket.slot)
            if not counted:
                return ticket
            if self._faults:
                ticket.fault = self._faults.popleft()
            for trigger in self._triggers:
                trigger.remaining -= 1
                if trigger.remaining == 0:
                    ticket.callbacks.append(trigger.fn)
            self._triggers = [t for t in self._triggers if t.remaining > 0]
            if ticket.callbacks:
                self._running += 1
            return ticket

    def _finish(self, entry: Request, ticket: _Ticket) -> None:
        """Called once the response is sent: records it, then runs the callbacks it made due."""
        with self._cond:
            ticket.slot.entry = entry
            self._inflight -= 1
            self._cond.notify_all()
        if not ticket.callbacks:
            return
        try:
            for fn in ticket.callbacks:
                try:
                    fn()
                # Kept for the fixtures' teardown to report: the test's thread cannot see it.
                except Exception as exc:  # noqa: BLE001
                    with self._cond:
                        self.errors.append(exc)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


# --- plain HTTP ---------------------------------------------------------------------------


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) for a single ``bytes=`` range; None if unsatisfiable; ValueError if the
    header is malformed or asks for several ranges (then the whole file is sent, RFC 9110)."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError(header)
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first or last) or not all(p.isdigit() for p in (first, last) if p):
        raise ValueError(header)
    if not first:  # bytes=-n: the last n bytes
        n = int(last)
        return (size - min(n, size), size) if n > 0 and size > 0 else None
    start = int(first)
    if last and int(last) < start:
        raise ValueError(header)
    if start >= size:
        return None
    return start, min(int(last) + 1, size) if last else size


def etag_of(st: os.stat_result) -> str:
    # Inode too, so that replacing a file (write temp + os.replace) always changes it.
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: the default 5 drops concurrent connects for 1 s

    def __init__(self, owner: RangeServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, 0), _RangeHandler)

    # Open connections are tracked so close() can end keep-alive ones (their threads would
    # otherwise wait for a next request forever and server_close() would never return).
    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects
    # http.server writes the headers and the body apart: without TCP_NODELAY a small body waits
    # for the client's delayed ACK of the headers (~40 ms a response).
    disable_nagle_algorithm = True
    server: _Httpd

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is server.requests

    def do_HEAD(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        rng = self.headers.get("Range")
        ticket = owner._admit(counted=self.command == "GET", gated=True)
        self._status = self._sent = 0
        try:
            self._respond(owner, path, rng, ticket.fault)
        except OSError:  # the client went away (e.g. after its timeout) or close() dropped it
            self.close_connection = True
        finally:
            owner._finish(Request(self.command, path, rng, self._status, self._sent), ticket)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes | memoryview, length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self._status = status
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._sent = len(body)

    def _respond(self, owner: RangeServer, path: str, rng: str | None, fault: _Fault | None) -> None:
        text = {"Content-Type": "text/plain"}
        if fault is not None and fault.kind == "fail":
            self._send(fault.status, text, f"injected failure {fault.status}\n".encode())
            return
        if fault is not None and fault.kind == "hang":
            owner._closing.wait(fault.seconds)  # close() wakes it early
        data_st = owner._read(path)
        if data_st is None:
            self._send(404, text, b"not found\n")
            return
        data, st = data_st
        size, etag = len(data), etag_of(st)
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        if_match = self.headers.get("If-Match")
        if if_match is not None and not _etag_matches(if_match, etag):
            self._send(412, text, b"precondition failed\n")
            return
        span: tuple[int, int] | None = (0, size)
        status = 200
        if_range = self.headers.get("If-Range")
        if rng is not None and self.command == "GET" and if_range in (None, etag, headers["Last-Modified"]):
            try:
                span = parse_range(rng, size)
                status = 206
            except ValueError:
                pass  # ignore a Range we do not support: whole file
        if span is None:
            self._send(416, {**text, "Content-Range": f"bytes */{size}"}, b"")
            return
        start, end = span
        body = data[start:end]
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if fault is not None and fault.kind == "short":
            self._send(status, headers, body[: fault.keep])
        elif fault is not None and fault.kind == "cut":
            self._send(status, headers, body[: fault.keep], length=len(body))
            self.close_connection = True
        else:
            self._send(status, headers, body)


def _etag_matches(if_match: str, etag: str) -> bool:
    # Strong comparison: a weak tag (W/"...") never matches.
    tags = [t.strip() for t in if_match.split(",")]
    return "*" in tags or etag in tags


class RangeServer(_Recorder):
    """Serves the files of ``root`` at ``url(name)`` until ``close()``; see the module doc."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self._httpd = _Httpd(self)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="RangeServer", daemon=True
        )
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{urllib.parse.quote(name)}"

    def hang_next(self, n: int, seconds: float) -> None:
        """The next n GETs are answered normally after ``seconds`` (or at close())."""
        self._queue(n, _Fault("hang", seconds=seconds))

    def cut_next(self, n: int, keep: int) -> None:
        """The next n GETs announce their full Content-Length, send ``keep`` body bytes and
        close the connection."""
        self._queue(n, _Fault("cut", keep=keep))

    def short_next(self, n: int, keep: int) -> None:
        """The next n GETs get a consistent but short answer: the first ``keep`` bytes of what
        they asked for, Content-Length ``keep``, the Content-Range of the range asked for."""
        self._queue(n, _Fault("short", keep=keep))

    def _read(self, path: str) -> tuple[bytes | memoryview, os.stat_result] | None:
        target = (self.root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if not target.is_relative_to(self.root):
            return None
        try:
            with open(target, "rb") as f:
                # The stat of the open file, so the ETag always describes the bytes sent.
                st = os.fstat(f.fileno())
                if st.st_size == 0:
                    return b"", st
                # A view of a map: a response reads only the bytes it sends (a ranged GET of a
                # 1 GiB file does not read the file); the map lives as long as the view.
                return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)), st
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.drop_connections()
        self._httpd.server_close()  # joins the handler threads
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- S3 (moto) ------------------------------------------------------------------------------

_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def require(module: str) -> Any:
    """Imports a test dependency, failing with a clear message (never skipping) if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed by the remote-file tests; install the test extra: "
            f"pip install -e '.[test]' ({exc})"
        ) from exc


def is_get_object(method: str, path: str, query: str) -> bool:
    """GET on /bucket/key, not a bucket call (list, location) nor an object sub-resource."""
    _, _, key = path.lstrip("/").partition("/")
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    allowed = {"x-id", "versionId", "partNumber"}
    return method == "GET" and bool(key) and all(p in allowed or p.startswith("response-") for p in params)


class _CountedBody:
    """Wraps a WSGI body to count the bytes the server writes; close() records the request
    (werkzeug calls it once the response has been written)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done: Callable[[int], None] | None = done
        self._count = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._count += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(self._count)


class S3Server(_Recorder):
    """moto's S3 on 127.0.0.1 (free port) in a thread, recording requests. Faults and
    ``after_gets`` count GetObject requests only. Build it inside ``isolate_aws_env``."""

    def __init__(self) -> None:
        super().__init__()
        require("moto")
        werkzeug_app = require("moto.moto_server.werkzeug_app")
        serving = require("werkzeug.serving")

        class QuietHandler(werkzeug_app.MotoRequestHandler):  # type: ignore[misc, name-defined]
            def log_request(self, *args: Any) -> None:
                pass  # the request log is server.requests

        # The same app ThreadedMotoServer serves, wrapped in self._wsgi.
        self._app = werkzeug_app.DomainDispatcherApplication(werkzeug_app.create_backend_app)
        self._httpd = serving.make_server(HOST, 0, self._wsgi, threaded=True, request_handler=QuietHandler)
        self.port: int = self._httpd.port
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="S3Server", daemon=True
        )
        self._thread.start()
        self._client: Any = None

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query, rng = environ.get("QUERY_STRING", ""), environ.get("HTTP_RANGE")
        writes = method in ("PUT", "POST", "DELETE")
        ticket = self._admit(counted=is_get_object(method, path, query), gated=not writes)
        status = [0]

        def done(count: int) -> None:
            self._finish(Request(method, path, rng, status[0], count, query), ticket)

        def recording_start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(line.split()[0])
            return start_response(line, headers, exc_info)

        fault = ticket.fault
        try:
            if fault is not None:
                body = _s3_error_body(fault.status, path)
                reason = http.HTTPStatus(fault.status).phrase
                headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                recording_start_response(f"{fault.status} {reason}", headers)
                return _CountedBody([body], done)
            return _CountedBody(self._app(environ, recording_start_response), done)
        except BaseException:
            done(0)
            raise

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """Options for ``fsspec.filesystem("s3", ...)`` / ``fsspec.open`` / s3fs; ``extra``
        is merged in (e.g. ``config_kwargs={"retries": {"total_max_attempts": 1}}``)."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            "skip_instance_cache": True,
            **extra,
        }

    def filesystem(self, retry: bool = True, **extra: Any) -> Any:
        """A fresh s3fs filesystem; ``retry=False`` makes each S3 call exactly one request
        (botocore and s3fs both retry otherwise: see the module doc)."""
        fsspec = require("fsspec")
        require("s3fs")
        if not retry:
            extra.setdefault("config_kwargs", {"retries": {"total_max_attempts": 1}})
        fs = fsspec.filesystem("s3", **self.storage_options(**extra))
        if not retry:
            fs.retries = 1  # s3fs's own retry loop: a class attribute, no __init__ argument
        return fs

    def client(self) -> Any:
        """A boto3 S3 client on this server (for setting up objects)."""
        if self._client is None:
            boto3 = require("boto3")
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._client

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)

    def close(self) -> None:
        self._closing.set()
        if self._client is not None:
            self._client.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _s3_error_body(status: int, resource: str) -> bytes:
    # Other statuses get a code s3fs does not know, so it translates them by status.
    code, message = _S3_ERRORS.get(status, ("InjectedError", "Injected error."))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>injected-{status}</RequestId></Error>"
    ).encode()


def isolate_aws_env(mp: pytest.MonkeyPatch, scratch: Path) -> None:
    """Dummy credentials and region, no config files, no instance metadata, no proxy for
    127.0.0.1, and none of the user's endpoint or retry settings."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_REGION", "us-east-1")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_CONFIG_FILE", str(scratch / "no-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "no-credentials"))
    mp.setenv("NO_PROXY", f"{HOST},localhost")
    mp.setenv("no_proxy", f"{HOST},localhost")


def _fail_on_errors(server: _Recorder) -> None:
    if server.errors:
        errors, server.errors = server.errors, []
        pytest.fail(f"server-side errors (after_gets callbacks): {errors!r}")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(name="http_server")
def http_server_fixture(tmp_path: Path) -> Iterator[RangeServer]:
    """A RangeServer serving this test's tmp_path (write files there, read ``url(name)``)."""
    require("fsspec")
    require("aiohttp")
    with RangeServer(tmp_path) as server:
        yield server
    _fail_on_errors(server)


@pytest.fixture(name="s3_server", scope="module")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server per test module, with an isolated AWS environment."""
    require("s3fs")
    with pytest.MonkeyPatch.context() as mp:
        isolate_aws_env(mp, tmp_path_factory.mktemp("aws"))
        with S3Server() as server:
            yield server


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_server: S3Server) -> Iterator[tuple[S3Server, str]]:
    """A fresh empty bucket on the module's S3 server, with an empty log and no faults."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(name)
    s3_server.clear_faults()
    s3_server.reset()
    yield s3_server, name
    s3_server.clear_faults()
    s3_server.delete_bucket(name)
    s3_server.reset()
    _fail_on_errors(s3_server)


# The fixtures under their own names: importing these works too, but then ruff reports F811
# wherever a test takes the fixture as an argument. Import the *_fixture names instead.
http_server = http_server_fixture
s3_server = s3_server_fixture
s3_bucket = s3_bucket_fixture
