"""Fresh destinations: which pages a loader should decrypt into on this machine (issue 12, item 2).

Every loader that returns new arrays pays the first touch of fresh memory once per byte, and
on this VM that, not AES-GCM, is the bound. This script measures, in one process and in paired
rounds of alternating order, ``enctensor.load`` of ``--mib`` MiB (16 float32 tensors, page
cache warm, destinations fresh each round) with each ``ENCTENSOR_PAGES`` strategy of
``enctensor/_alloc.py``:

- ``huge``: numpy's allocation (numpy advises ``MADV_HUGEPAGE``);
- ``small``: 4 KiB pages (anonymous mmap, ``MADV_NOHUGEPAGE``), faulted in by the core's threads;
- ``populate``: the same, pre-faulted with ``MADV_POPULATE_WRITE`` on all cores first;
- ``map-populate``: ``mmap(MAP_POPULATE)`` (the kernel faults them in on one thread);

beside the framework allocators the torch and TVM adapters use (``torch.empty``,
``tvm.runtime.empty``), the plaintext peer (``safetensors.numpy.load_file``), and, as each
strategy's ceiling, the same bytes copied without crypto from a map of the plaintext file into
the same kind of fresh destination on all cores. ``--processes`` also times one load per fresh
process (every page new to the process, as a script that loads a model once sees it).

    python benches/bench_fresh.py [--mib 512] [--rounds 11] [--processes 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import (
    KEY,
    copy_from_file,
    freeze_imports,
    gbps,
    loadavg,
    make_tensors,
    median,
    ratio,
    rounds,
    safetensors_regions,
    warm,
    with_pages,
)

from enctensor import _alloc


def cases(enc: Path, st: Path) -> dict[str, Callable[[], object]]:
    import safetensors.numpy
    import torch
    import tvm.runtime

    import enctensor
    import enctensor.torch as et
    import enctensor.tvm as ev

    regions = safetensors_regions(st)
    sizes = [n for _, _, n in regions]
    threads = len(os.sched_getaffinity(0))

    def copy_into(alloc: Callable[[], list[np.ndarray]]) -> Callable[[], object]:
        def run() -> object:
            dsts = alloc()
            copy_from_file(st, regions, dsts, threads)
            return dsts

        return run

    def torch_empty() -> list[np.ndarray]:
        return [torch.empty(n, dtype=torch.uint8).numpy() for n in sizes]

    def tvm_empty() -> list[np.ndarray]:
        return [np.from_dlpack(tvm.runtime.empty((n,), "uint8")) for n in sizes]

    out: dict[str, Callable[[], object]] = {}
    for how in _alloc.PAGES:
        out[f"enctensor.load, {how}"] = with_pages(how, lambda: enctensor.load(enc, key=KEY))
    out["enctensor.torch.load_file (torch.empty)"] = lambda: et.load_file(enc, key=KEY)
    out["enctensor.tvm.load (tvm.runtime.empty)"] = lambda: ev.load(enc, key=KEY)
    out["safetensors.numpy.load_file (plaintext peer)"] = lambda: safetensors.numpy.load_file(str(st))
    for how in _alloc.PAGES:
        out[f"copy, no crypto, {how}"] = with_pages(how, copy_into(lambda: _alloc.destinations(sizes)))
    out["copy, no crypto, torch.empty"] = copy_into(torch_empty)
    out["copy, no crypto, tvm.runtime.empty"] = copy_into(tvm_empty)
    return out


def child(how: str, enc: str, st: str) -> None:
    """One load in this fresh process; prints its seconds."""
    import safetensors.numpy

    import enctensor
    import enctensor.torch as et
    import enctensor.tvm as ev

    fns: dict[str, Callable[[], object]] = {
        "torch.empty": lambda: et.load_file(enc, key=KEY),
        "tvm.runtime.empty": lambda: ev.load(enc, key=KEY),
        "safetensors": lambda: safetensors.numpy.load_file(st),
    }
    fn = fns.get(how) or with_pages(how, lambda: enctensor.load(enc, key=KEY))
    t0 = time.perf_counter()
    out = fn()
    print(time.perf_counter() - t0)
    del out


def in_processes(enc: Path, st: Path, n: int) -> dict[str, list[float]]:
    def one(how: str) -> Callable[[], object]:
        def run() -> object:
            warm(enc)
            warm(st)
            r = subprocess.run(
                [sys.executable, __file__, "--child", how, str(enc), str(st)],
                check=True,
                capture_output=True,
                text=True,
            )
            return float(r.stdout.split()[-1])

        return run

    names = [*_alloc.PAGES, "torch.empty", "tvm.runtime.empty", "safetensors"]
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n):
        for name in names[::-1] if r % 2 else names:
            times[name].append(one(name)())  # type: ignore[arg-type]
    return times


def table(times: dict[str, list[float]], nbytes: int, base: str) -> list[str]:
    lines = [
        f"| case | median s | range s | GB/s | {base} / case (median of per-round ratios) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in times.items():
        lines.append(
            f"| {name} | {median(t):.3f} | {min(t):.3f}-{max(t):.3f} | {gbps(nbytes, median(t)):.2f} | "
            f"{ratio(times, base, name):.2f}x |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--processes", type=int, default=5, help="rounds of one load per fresh process (0: skip)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    import safetensors.numpy

    import enctensor

    tensors = make_tensors(16, (args.mib << 20) // 16)
    nbytes = sum(a.nbytes for a in tensors.values())
    print(
        f"{nbytes >> 20} MiB in 16 tensors; {os.cpu_count()} CPUs; kernel {os.uname().release}; "
        f"THP {Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text().strip()}; "
        f"default ENCTENSOR_PAGES={_alloc.DEFAULT_PAGES}; load average {loadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="enct-fresh-") as d:
        enc, st = Path(d, "m.enct"), Path(d, "m.safetensors")
        enctensor.save(tensors, enc, key=KEY)
        safetensors.numpy.save_file(tensors, str(st))
        del tensors

        def prepare(name: str) -> None:
            warm(st if "copy" in name or "safetensors" in name else enc)

        runs = cases(enc, st)
        freeze_imports()
        times = rounds(runs, args.rounds, prepare)
        print(f"\nIn this process, {args.rounds} rounds, order alternating; destinations fresh each round:\n")
        print("\n".join(table(times, nbytes, "enctensor.load, huge")))
        if args.processes:
            times = in_processes(enc, st, args.processes)
            print(f"\nOne load per fresh process, {args.processes} rounds, order alternating:\n")
            print("\n".join(table(times, nbytes, "huge")))
    print(f"\nload average at end {loadavg()}")


if __name__ == "__main__":
    main()
