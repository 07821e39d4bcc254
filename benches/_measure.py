"""How the benches measure: paired rounds of alternating order, page cache control, and the
crypto-free copies that give this machine's ceiling for each load path.

On these VMs memory freed a few seconds ago is slow to touch again and page cache idle for a
while is evicted, so a fixed order favours whichever case runs second: every case of a group
runs once per round, the order reverses every other round, and ratios are taken within a
round (the median of the per-round ratios is what gets reported).
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import statistics
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

KEY = bytes(range(32))
#: Pieces handed to the copy threads: small enough to balance two threads, large enough that
#: Python's overhead per piece (~10 us) is noise.
PIECE = 16 << 20


def freeze_imports() -> None:
    """Moves every object alive now (torch's and TVM's import-time objects) out of the
    collector's reach: ``timed``'s collections then take microseconds instead of ~0.15 s."""
    gc.collect()
    gc.freeze()


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call takes; garbage is collected before, and the result freed after, the timing."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    gc.collect()
    return dt


_WARM_BUF = bytearray(1 << 20)


def warm(path: Path) -> None:
    """Reads the file into the page cache (this VM's DAMON reclaim evicts idle page cache),
    through one small reused buffer: no fresh memory is touched or freed on the way."""
    with open(path, "rb", buffering=0) as f:
        while f.readinto(_WARM_BUF):
            pass


def drop(path: Path) -> None:
    """Writes the file's dirty pages back, then evicts its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def rounds(
    cases: dict[str, Callable[[], object]],
    n: int,
    prepare: Callable[[str], None] = lambda name: None,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Times every case once per round for ``n`` rounds, the order reversed every other round;
    ``prepare(name)`` runs untimed right before each call (warming or dropping its file)."""
    names = list(cases)
    if warmup:  # first calls pay imports and allocator set-up
        for name in names:
            prepare(name)
            timed(cases[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        for name in names[::-1] if r % 2 else names:
            prepare(name)
            times[name].append(timed(cases[name]))
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``times[num] / times[den]`` taken within each round."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median(values: list[float]) -> float:
    return statistics.median(values)


def safetensors_header(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(offset of the data section, tensor entries by name) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def safetensors_regions(path: Path) -> list[tuple[str, int, int]]:
    """(name, file offset, length) of each tensor's bytes in a safetensors file, in file order."""
    data, header = safetensors_header(path)
    spans = [
        (data + v["data_offsets"][0], name, v["data_offsets"][1] - v["data_offsets"][0])
        for name, v in header.items()
    ]
    return [(name, at, n) for at, name, n in sorted(spans)]


def mapped(path: Path) -> np.ndarray:
    """The file as a read-only uint8 array over a shared mapping of it (the page cache),
    unmapped when the last view of it goes."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


_pool: ThreadPoolExecutor | None = None


def parallel(jobs: list[Callable[[], None]], threads: int) -> None:
    """Runs ``jobs`` on ``threads`` threads (numpy copies and ctypes calls release the GIL)."""
    global _pool
    if threads == 1:
        for job in jobs:
            job()
        return
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads)
    list(_pool.map(lambda job: job(), jobs))


def copy_pieces(dsts: list[np.ndarray], srcs: list[np.ndarray]) -> list[Callable[[], None]]:
    """``np.copyto`` jobs of at most ``PIECE`` bytes covering ``dst[i][:] = src[i]``."""

    def job(d: np.ndarray, s: np.ndarray) -> Callable[[], None]:
        return lambda: np.copyto(d, s)

    out = []
    for d, s in zip(dsts, srcs, strict=True):
        for at in range(0, d.nbytes, PIECE):
            out.append(job(d[at : at + PIECE], s[at : at + PIECE]))
    return out


def copy_from_file(
    path: Path, regions: list[tuple[str, int, int]], dsts: list[np.ndarray], threads: int
) -> None:
    """Copies the ``regions`` of ``path`` into ``dsts`` on ``threads`` threads, without crypto,
    through a map made for this call (as every loader maps its file: the page tables start
    empty, and no mapping outlives the call to keep the pages from being evicted)."""
    src = mapped(path)
    parallel(copy_pieces(dsts, [src[at : at + n] for _, at, n in regions]), threads)


def touch_pieces(dsts: list[np.ndarray]) -> list[Callable[[], None]]:
    """Jobs writing one byte per 4 KiB page of ``dsts`` (first touch without a copy)."""

    def job(d: np.ndarray) -> Callable[[], None]:
        return lambda: d[::4096].fill(1)

    return [job(d[at : at + PIECE]) for d in dsts for at in range(0, d.nbytes, PIECE)]


def with_pages(how: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``ENCTENSOR_PAGES=how`` (``enctensor._alloc`` reads it at each allocation)."""
    from enctensor import _alloc

    def run() -> object:
        before = os.environ.get(_alloc.PAGES_ENV)
        os.environ[_alloc.PAGES_ENV] = how
        try:
            return fn()
        finally:
            if before is None:
                del os.environ[_alloc.PAGES_ENV]
            else:
                os.environ[_alloc.PAGES_ENV] = before

    return run


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def status_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_tensors(n: int, nbytes_each: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` float32 tensors of ``nbytes_each`` bytes, square where that is exact."""
    rng = np.random.default_rng(seed)
    elems = nbytes_each // 4
    side = int(elems**0.5)
    shape = (side, side) if side * side == elems else (elems // 128, 128)
    return {f"w{i:05d}": rng.random(shape, dtype=np.float32) for i in range(n)}
