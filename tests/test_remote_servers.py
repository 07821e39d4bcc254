"""The test servers of remote_servers.py, driven through fsspec (HTTP) and s3fs (S3): ranged
reads are answered and recorded exactly, and each injected fault surfaces as documented there."""

from __future__ import annotations

import errno
import http.client
import os
import threading
from pathlib import Path

import aiohttp
import fsspec
import pytest
from fsspec.exceptions import FSTimeoutError
from remote_servers import (  # noqa: F401
    RangeServer,
    Request,
    S3Server,
    http_server_fixture,
    s3_bucket_fixture,
    s3_server_fixture,
)

DATA = bytes(range(256)) * 40  # 10240 bytes


def http_fs(**kwargs: object) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("http", skip_instance_cache=True, **kwargs)


def raw(
    server: RangeServer, name: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request with the stdlib client, for protocol details fsspec never sends."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, f"/{name}", headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(http_server: RangeServer) -> tuple[RangeServer, str]:
    (http_server.root / "f.bin").write_bytes(DATA)
    return http_server, http_server.url("f.bin")


# --- HTTP -----------------------------------------------------------------------------------


def test_http_info_and_ranged_reads(served: tuple[RangeServer, str]) -> None:
    server, url = served
    fs = http_fs()
    info = fs.info(url)
    assert info["size"] == len(DATA) and info["ETag"].startswith('"')
    assert server.requests == [Request("HEAD", "/f.bin", None, 200, 0)]
    server.reset()

    assert fs.cat_file(url, 100, 350) == DATA[100:350]
    assert server.requests == [Request("GET", "/f.bin", "bytes=100-349", 206, 250)]
    server.reset()

    assert fs.cat_file(url, -7) == DATA[-7:]
    assert fs.cat_file(url, 10_000) == DATA[10_000:]
    assert [(r.range, r.body_bytes) for r in server.gets()] == [("bytes=-7", 7), ("bytes=10000-", 240)]
    server.reset()

    with fs.open(url) as f:
        assert f.read() == DATA
    assert [r.method for r in server.requests] == ["HEAD", "GET"]
    assert server.bytes_sent() == len(DATA)


def test_http_protocol_details(served: tuple[RangeServer, str]) -> None:
    server, _ = served
    status, headers, body = raw(server, "f.bin", "HEAD")
    assert (status, headers["Content-Length"], headers["Accept-Ranges"], body) == (200, "10240", "bytes", b"")
    etag = headers["ETag"]
    assert "Last-Modified" in headers and "Content-Encoding" not in headers

    status, headers, body = raw(server, "f.bin", Range="bytes=10200-")
    assert (status, headers["Content-Range"], body) == (206, "bytes 10200-10239/10240", DATA[10200:])
    status, headers, body = raw(server, "f.bin", Range="bytes=10240-")
    assert (status, headers["Content-Range"], body) == (416, "bytes */10240", b"")
    assert raw(server, "f.bin", Range="bytes=0-1,5-6")[::2] == (200, DATA)  # several ranges: all

    assert raw(server, "f.bin", **{"If-Match": etag})[0] == 200
    assert raw(server, "f.bin", **{"If-Match": '"other"'})[0] == 412
    assert raw(server, "f.bin", Range="bytes=0-0", **{"If-Range": etag})[2] == DATA[:1]
    assert raw(server, "f.bin", Range="bytes=0-0", **{"If-Range": '"old"'})[2] == DATA  # changed: all
    assert raw(server, "../etc/passwd")[0] == 404


def test_http_missing_file(http_server: RangeServer) -> None:
    fs = http_fs()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(http_server.url("nope.bin"), 0, 10)
    with pytest.raises(FileNotFoundError):
        fs.info(http_server.url("nope.bin"))
    # info falls back to a GET when the HEAD fails.
    assert [(r.method, r.status) for r in http_server.requests] == [("GET", 404), ("HEAD", 404), ("GET", 404)]


@pytest.mark.parametrize("status", [503, 500])
def test_http_fail_next(served: tuple[RangeServer, str], status: int) -> None:
    server, url = served
    fs = http_fs()
    server.fail_next(1, status)
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        fs.cat_file(url, 0, 100)
    assert caught.value.status == status
    assert fs.cat_file(url, 0, 100) == DATA[:100]  # one GET only: fsspec does not retry
    assert [r.status for r in server.gets()] == [status, 206]


def test_http_hang_next_times_out(served: tuple[RangeServer, str]) -> None:
    server, url = served
    fs = http_fs(client_kwargs={"timeout": aiohttp.ClientTimeout(total=0.5)})
    server.hang_next(1, 1.5)
    with pytest.raises(FSTimeoutError) as caught:
        fs.cat_file(url, 0, 100)
    assert isinstance(caught.value, TimeoutError)
    assert fs.cat_file(url, 0, 100) == DATA[:100]
    # The log waits for the hung request, answered once its sleep is over.
    assert len(server.gets()) == 2


def test_http_cut_next(served: tuple[RangeServer, str]) -> None:
    server, url = served
    server.cut_next(1, 10)
    with pytest.raises(aiohttp.ClientPayloadError):
        http_fs().cat_file(url, 0, 100)
    assert server.gets() == [Request("GET", "/f.bin", "bytes=0-99", 206, 10)]


def test_http_short_next_returns_fewer_bytes(served: tuple[RangeServer, str]) -> None:
    server, url = served
    server.short_next(1, 10)
    assert http_fs().cat_file(url, 50, 150) == DATA[50:60]  # silently short
    assert server.gets() == [Request("GET", "/f.bin", "bytes=50-149", 206, 10)]


def test_http_faults_are_counted_across_threads(served: tuple[RangeServer, str]) -> None:
    server, url = served
    fs = http_fs()
    server.fail_next(3)
    outcomes: list[bool] = []

    def read() -> None:
        try:
            outcomes.append(fs.cat_file(url, 0, 10) == DATA[:10])
        except aiohttp.ClientResponseError:
            outcomes.append(False)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] * 3 + [True] * 5
    assert sorted(r.status for r in server.gets()) == [206] * 5 + [503] * 3


def test_http_after_gets_replaces_file(served: tuple[RangeServer, str]) -> None:
    server, url = served
    path: Path = server.root / "f.bin"

    def replace() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(DATA[::-1])
        os.replace(tmp, path)

    fs = http_fs()
    old_etag = fs.info(url)["ETag"]
    server.after_gets(2, replace)
    assert fs.cat_file(url, 0, 4) == DATA[:4]
    assert fs.cat_file(url, 0, 4) == DATA[:4]  # the 2nd GET, still the old file
    assert fs.cat_file(url, 0, 4) == DATA[::-1][:4]
    assert fs.info(url)["ETag"] != old_etag
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        fs.cat_file(url, 0, 4, headers={"If-Match": old_etag})
    assert caught.value.status == 412


# --- S3 -------------------------------------------------------------------------------------


@pytest.fixture
def s3_object(s3_bucket: tuple[S3Server, str]) -> tuple[S3Server, str]:
    server, bucket = s3_bucket
    server.client().put_object(Bucket=bucket, Key="dir/f.bin", Body=DATA)
    server.reset()
    return server, f"{bucket}/dir/f.bin"


def test_s3_options_stay_local(s3_server: S3Server) -> None:
    opts = s3_server.storage_options()
    assert opts["client_kwargs"]["endpoint_url"].startswith("http://127.0.0.1:")
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_s3_info_and_ranged_read(s3_object: tuple[S3Server, str]) -> None:
    server, path = s3_object
    fs = fsspec.filesystem("s3", **server.storage_options())
    assert fs.info(path)["size"] == len(DATA)
    assert fs.cat_file(path, start=100, end=350) == DATA[100:350]
    key = "/" + path
    assert server.requests == [
        Request("HEAD", key, None, 200, 0, ""),
        Request("GET", key, "bytes=100-349", 206, 250, ""),
    ]
    assert server.bytes_sent() == 250


def test_s3_missing_key(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    with pytest.raises(FileNotFoundError):
        server.filesystem().cat_file(f"{bucket}/nope", start=0, end=3)


@pytest.mark.parametrize(("status", "code"), [(503, errno.EBUSY), (500, errno.EREMOTEIO)])
def test_s3_fail_next_without_retries(s3_object: tuple[S3Server, str], status: int, code: int) -> None:
    server, path = s3_object
    server.fail_next(1, status)
    with pytest.raises(OSError) as caught:
        server.filesystem(retry=False).cat_file(path, start=0, end=10)
    assert caught.value.errno == code
    assert [r.status for r in server.gets()] == [status]


@pytest.mark.parametrize("status", [503, 500])
def test_s3_botocore_retries_one_failure(s3_object: tuple[S3Server, str], status: int) -> None:
    server, path = s3_object
    server.fail_next(1, status)
    assert server.filesystem().cat_file(path, start=0, end=10) == DATA[:10]
    assert [r.status for r in server.gets()] == [status, 206]


def test_s3fs_retries_slowdown_itself(s3_object: tuple[S3Server, str]) -> None:
    server, path = s3_object
    one_attempt = {"retries": {"total_max_attempts": 1}}  # botocore: no retry
    server.fail_next(3, 503)
    assert server.filesystem(config_kwargs=one_attempt).cat_file(path, start=0, end=10) == DATA[:10]
    assert [r.status for r in server.gets()] == [503, 503, 503, 206]
    server.reset()
    server.fail_next(3, 500)  # s3fs does not retry InternalError
    with pytest.raises(OSError):
        server.filesystem(config_kwargs=one_attempt).cat_file(path, start=0, end=10)
    assert [r.status for r in server.gets()] == [500]
    server.clear_faults()


def test_s3_after_gets_replaces_object(s3_object: tuple[S3Server, str]) -> None:
    server, path = s3_object
    bucket, key = path.split("/", 1)
    fs = server.filesystem(retry=False)
    server.after_gets(1, lambda: server.client().put_object(Bucket=bucket, Key=key, Body=b"new"))
    assert fs.ls(f"{bucket}/dir") == [path]  # a bucket listing: not counted
    assert fs.cat_file(path) == DATA
    assert fs.cat_file(path) == b"new"
    assert [r.method for r in server.requests] == ["GET", "GET", "PUT", "GET"]
