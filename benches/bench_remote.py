"""Remote enctensor files over real loopback servers: what ranged reads buy, what crypto costs.

One float32 tensor of shape [rows, 1024] (``--mib`` MiB, 32-byte key) is served by the test
servers of ``tests/remote_servers.py`` on 127.0.0.1: plain HTTP with Range support
(``RangeServer``) and moto's S3 API (``S3Server``), both read through fsspec (aiohttp, s3fs).
Every request the client makes is counted on the server. Per backend, each round runs once:

1. ``safe_open(url)`` and ``get_slice`` of 1 % of the rows (a contiguous block in the middle),
   timed and counted apart; beside it the alternative without ranged reads: ``fs.cat_file`` of
   the whole object, then ``enctensor.load_bytes`` of it and the same slice;
2. ``enctensor.load(url)`` of the whole file; beside it the plaintext peer (the same tensor
   as a ``.safetensors`` object on the same server, fetched whole with ``fs.cat_file`` and
   parsed with ``safetensors.numpy.load``: what a user without enctensor does), the
   transport ceiling (``fs.cat_file`` of the enctensor object, no decryption), the ranged GETs
   ``enctensor.load`` makes, made the same way but without decryption, and the floor of one
   request (a ranged GET of 1 byte).

The order of the cases reverses every other round (``--rounds``, after an untimed warm-up
round that also checks the results); the figures are medians, ratios the medians of the
per-round ratios. The servers are threads of this process: they share the machine's cores
and the GIL with the client, so every figure includes the server's work.

The HTTP server is the tests' RangeServer (each range served from a map of the file, with
TCP_NODELAY, as production servers do). moto reads the whole
object for every GetObject, ranged or not: the floor row shows what that costs per request,
and the report what it adds up to over a load's requests.

    python benches/bench_remote.py [--backend http|s3|both] [--mib 256] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import pytest
from _measure import KEY, cpu_model, freeze_imports, loadavg, warm
from remote_servers import RangeServer, S3Server, isolate_aws_env

import enctensor
from enctensor import _remote
from enctensor._alloc import destinations

COLS = 1024
CEILING = "cat_file of the enctensor object, no crypto"
PARALLEL = "the same ranged GETs, into a fresh array, no crypto"
FLOOR = "one ranged GET of 1 byte"
T = TypeVar("T")


@dataclass
class Sample:
    """One timed call and what the server answered during it."""

    seconds: float
    gets: int  # GET requests
    others: int  # other requests (HEAD, for HTTP and S3 alike)
    sent: int  # body bytes the server sent

    def __add__(self, other: Sample) -> Sample:
        return Sample(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


@dataclass
class Backend:
    name: str
    server: RangeServer | S3Server
    fs: Any  # the fsspec filesystem the peer and the ceiling use
    enc_url: str
    enc_path: str  # enc_url within fs
    st_path: str  # the .safetensors object within fs
    options: dict[str, Any] | None  # storage_options for enctensor
    local: list[Path]  # files the server reads from disk (warmed before each case)


def measure(server: RangeServer | S3Server, fn: Callable[[], T]) -> tuple[Sample, T]:
    """``fn()`` timed, with the requests the server answered meanwhile; garbage collected
    before, so that no collection lands in the timing."""
    gc.collect()
    server.reset()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    log = server.requests  # waits for responses the server has not logged yet
    gets = sum(r.method == "GET" for r in log)
    return Sample(seconds, gets, len(log) - gets, sum(r.body_bytes for r in log)), out


@contextmanager
def http_backend(root: Path, enc: Path, st: Path) -> Iterator[Backend]:
    import fsspec

    with RangeServer(root) as server:
        url = server.url(enc.name)
        yield Backend(
            "http", server, fsspec.filesystem("http"), url, url, server.url(st.name), None, [enc, st]
        )


@contextmanager
def s3_backend(scratch: Path, enc: Path, st: Path) -> Iterator[Backend]:
    import fsspec

    with pytest.MonkeyPatch.context() as mp:  # sets os.environ, undone on exit
        isolate_aws_env(mp, scratch)
        with S3Server() as server:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            server.make_bucket(bucket)
            # s3fs's instance cache on (its default, unlike the tests' storage_options): every
            # open reuses one client, as a user's process would, instead of building one.
            options = server.storage_options()
            options.pop("skip_instance_cache")
            fs = fsspec.filesystem("s3", **options)
            for path in (enc, st):
                fs.put_file(str(path), f"{bucket}/{path.name}")
            key = f"{bucket}/{enc.name}"
            yield Backend("s3", server, fs, f"s3://{key}", key, f"{bucket}/{st.name}", options, [])
            server.delete_bucket(bucket)


def run_backend(b: Backend, w: np.ndarray, rounds: int) -> dict[str, list[Sample]]:
    """Every case once per round, the order reversed every other round, after a warm-up round
    that checks the results; returns the samples of each row by its label."""
    import safetensors.numpy

    rows = w.shape[0]
    k = max(1, rows // 100)
    lo = rows // 2 - k // 2
    want = w[lo : lo + k]
    samples: dict[str, list[Sample]] = {}
    check = True

    def record(label: str, sample: Sample) -> None:
        samples.setdefault(label, []).append(sample)

    def ranged_slice() -> None:
        opened, f = measure(
            b.server, lambda: enctensor.safe_open(b.enc_url, key=KEY, storage_options=b.options)
        )
        sliced, got = measure(b.server, lambda: f.get_slice("w")[lo : lo + k])
        f.close()
        record("safe_open", opened)
        record("get_slice 1 %", sliced)
        record("safe_open + get_slice 1 %", opened + sliced)
        assert not check or np.array_equal(got, want)

    def full_download() -> None:
        def run() -> np.ndarray:
            return enctensor.load_bytes(b.fs.cat_file(b.enc_path), key=KEY)["w"][lo : lo + k].copy()

        sample, got = measure(b.server, run)
        record("cat_file + load_bytes + slice", sample)
        assert not check or np.array_equal(got, want)

    def whole_load() -> None:
        sample, got = measure(b.server, lambda: enctensor.load(b.enc_url, key=KEY, storage_options=b.options))
        record("enctensor.load", sample)
        assert not check or np.array_equal(got["w"], w)

    def peer() -> None:
        sample, got = measure(b.server, lambda: safetensors.numpy.load(b.fs.cat_file(b.st_path)))
        record(f"cat_file + safetensors.numpy.load (plaintext, {b.name})", sample)
        assert not check or np.array_equal(got["w"], w)

    def ceiling() -> None:
        sample, got = measure(b.server, lambda: b.fs.cat_file(b.enc_path))
        record(CEILING, sample)
        assert not check or len(got) == b.fs.size(b.enc_path)

    def parallel_ranges() -> None:
        # enctensor.load's transfer without its crypto: parts of PART_BYTES, CONCURRENCY at
        # once, each copied as it arrives into a destination with the pages enctensor gives its
        # own (faulting fresh pages in one by one from 8 threads is far slower here).
        size = b.fs.size(b.enc_path)

        def run() -> np.ndarray:
            dst = destinations([size])[0]

            def part(a: int) -> None:
                end = min(size, a + _remote.PART_BYTES)
                dst[a:end] = np.frombuffer(b.fs.cat_file(b.enc_path, start=a, end=end), np.uint8)

            with ThreadPoolExecutor(_remote.CONCURRENCY) as pool:
                list(pool.map(part, range(0, size, _remote.PART_BYTES)))
            return dst

        sample, got = measure(b.server, run)
        record(PARALLEL, sample)
        assert not check or got[:8].tobytes() == b.fs.cat_file(b.enc_path, start=0, end=8)

    def floor() -> None:
        sample, got = measure(b.server, lambda: b.fs.cat_file(b.enc_path, start=0, end=1))
        record(FLOOR, sample)
        assert not check or len(got) == 1

    cases = [ranged_slice, full_download, whole_load, peer, ceiling, parallel_ranges, floor]
    for r in range(-1, rounds):  # round -1: warm-up (connections, imports, caches) and checks
        for case in cases[::-1] if r % 2 else cases:
            for path in b.local:  # untimed: this VM evicts page cache that has been idle a while
                warm(path)
            case()
        if r == -1:
            samples.clear()
            check = False
    return samples


# --- report ---------------------------------------------------------------------------------


def med(xs: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in xs)


def speedup(num: list[Sample], den: list[Sample]) -> float:
    """Median over rounds of den's time / num's time: num's speed in units of den's."""
    return statistics.median(d.seconds / n.seconds for n, d in zip(num, den, strict=True))


def sent(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 1 << 20 else f"{nbytes / 1024:.1f} KiB"


def plural(n: float, what: str) -> str:
    return f"{n:g} {what}{'' if n == 1 else 's'}"


def report(b: Backend, s: dict[str, list[Sample]], file_size: int, tensor_bytes: int) -> dict[str, Any]:
    peer = f"cat_file + safetensors.numpy.load (plaintext, {b.name})"
    full = "cat_file + load_bytes + slice"
    head = "| case | median s | range s | GETs | other requests | sent | % of file |"

    def row(label: str, extra: str) -> str:
        xs = s[label]
        times = [x.seconds for x in xs]
        return (
            f"| `{label}` | {med(xs, 'seconds'):.4f} | {min(times):.4f}-{max(times):.4f}"
            f" | {med(xs, 'gets'):g} | {med(xs, 'others'):g} | {sent(med(xs, 'sent'))}"
            f" | {100 * med(xs, 'sent') / file_size:.2f} % | {extra} |"
        )

    print(f"\n### {b.name}: 1 % of the rows (contiguous, middle of the tensor)\n")
    print(head + " speed x full download |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in ("safe_open", "get_slice 1 %", "safe_open + get_slice 1 %", full):
        print(row(label, f"{speedup(s[label], s[full]):.2f}x" if label != "safe_open" else ""))
    print(f"\n### {b.name}: the whole file (MB/s: {tensor_bytes / 2**20:.0f} MiB of tensor data / time)\n")
    print(head + " MB/s | speed x peer |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    load = s["enctensor.load"]

    def mbps(label: str) -> float:
        return tensor_bytes / med(s[label], "seconds") / 1e6

    for label in ("enctensor.load", peer, CEILING, PARALLEL):
        print(row(label, f"{mbps(label):.0f} | {speedup(s[label], s[peer]):.2f}x"))
    print(row(FLOOR, " | "))
    print(
        f"\nenctensor.load at {100 * speedup(load, s[CEILING]):.0f} % of the speed of `cat_file` and at"
        f" {100 * speedup(load, s[PARALLEL]):.0f} % of the same ranged GETs without crypto (medians of"
        f" per-round ratios); enctensor.load minus the latter, medians:"
        f" {med(load, 'seconds') - med(s[PARALLEL], 'seconds'):+.3f} s."
    )
    floor = med(s[FLOOR], "seconds")
    print(
        f"One request costs at least {floor:.4f} s here (the floor row): enctensor.load's"
        f" {med(load, 'gets'):g} GETs x that = {med(load, 'gets') * floor:.3f} s, run up to"
        f" {_remote.CONCURRENCY} at once."
    )
    sl, opened = s["get_slice 1 %"], s["safe_open"]
    summary = (
        f"{b.name}: 1% slice fetched {sent(med(sl, 'sent'))} in {plural(med(sl, 'gets'), 'request')}"
        f" ({100 * med(sl, 'sent') / file_size:.2f} % of file; the open {sent(med(opened, 'sent'))}"
        f" in {plural(med(opened, 'gets'), 'GET')} + {plural(med(opened, 'others'), 'other request')})"
        f" vs full download {sent(med(s[full], 'sent'))}, open + slice"
        f" {speedup(s['safe_open + get_slice 1 %'], s[full]):.1f}x faster; whole load {mbps('enctensor.load'):.0f}"
        f" MB/s vs safetensors-over-{b.name} {mbps(peer):.0f} MB/s ({speedup(load, s[peer]):.2f}x),"
        f" transport ceiling {mbps(CEILING):.0f} MB/s (cat_file; the same ranged GETs without crypto:"
        f" {mbps(PARALLEL):.0f} MB/s)"
    )
    return {
        "file_bytes": file_size,
        "samples": {label: [asdict(x) for x in xs] for label, xs in s.items()},
        "median_seconds": {label: med(xs, "seconds") for label, xs in s.items()},
        "speed_x_full_download": speedup(s["safe_open + get_slice 1 %"], s[full]),
        "load_speed_x_peer": speedup(load, s[peer]),
        "load_speed_x_cat_file": speedup(load, s[CEILING]),
        "load_speed_x_parallel_ranges": speedup(load, s[PARALLEL]),
        "summary": summary,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["http", "s3", "both"], default="both")
    ap.add_argument("--mib", type=int, default=256, help="tensor size in MiB (float32, 1024 columns)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    import aiohttp
    import fsspec
    import safetensors.numpy

    backends = ["http", "s3"] if args.backend == "both" else [args.backend]
    rows = args.mib * 2**20 // (4 * COLS)
    w = np.random.default_rng(0).random((rows, COLS), dtype=np.float32)
    versions = f"fsspec {fsspec.__version__}, aiohttp {aiohttp.__version__}"
    if "s3" in backends:
        import moto
        import s3fs

        versions += f", s3fs {s3fs.__version__}, moto {moto.__version__}"
    print(f"# Remote reads: float32 [{rows}, {COLS}] ({w.nbytes / 2**20:.0f} MiB), {args.rounds} rounds\n")
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} cores; load average at start {loadavg()}")
    servers = {"http": "HTTP: the tests' RangeServer (ranges from a map, TCP_NODELAY)", "s3": "S3: moto"}
    print(
        f"- servers: threads of this process on 127.0.0.1 ({'; '.join(servers[n] for n in backends)});"
        " they share the cores and the GIL with the client, so every time includes the server's work"
    )
    print(
        f"- enctensor remote reads: {_remote.CONCURRENCY} parts at once (ENCTENSOR_REMOTE_CONCURRENCY),"
        f" parts of at most {_remote.PART_BYTES / 2**20:g} MiB (ENCTENSOR_REMOTE_PART); {versions}"
    )
    print("- order of the cases reversed every other round; ratios are medians of per-round ratios")
    out: dict[str, Any] = {"mib": args.mib, "shape": [rows, COLS], "rounds": args.rounds, "backends": {}}
    summaries = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        root = Path(d)
        enc, st = root / "w.enct", root / "w.safetensors"
        enctensor.save({"w": w}, enc, key=KEY)
        safetensors.numpy.save_file({"w": w}, str(st))
        file_size = enc.stat().st_size
        print(f"- files: {file_size} bytes (enctensor), {st.stat().st_size} bytes (safetensors)")
        freeze_imports()
        for name in backends:  # one server at a time
            if name == "http":
                served = http_backend(root, enc, st)
            else:
                (root / "aws").mkdir()
                served = s3_backend(root / "aws", enc, st)
            with served as b:
                samples = run_backend(b, w, args.rounds)
                out["backends"][name] = report(b, samples, file_size, w.nbytes)
            summaries.append(out["backends"][name]["summary"])
    print(f"\nLoad average at end {loadavg()}.\n")
    print("\n".join(summaries))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
