"""Conversion speed: a ~1 GiB safetensors file -> enctensor -> safetensors, next to
``safetensors.numpy.save_file`` writing the same tensors from memory.

Run it as a script (it is not a test)::

    python benches/bench_convert.py [--size-mib 1024] [--repeat 3] [--dir DIR]

Files are written to a temporary directory (under ``--dir`` if given) and removed at the end.
The page cache is warm: each step reads a file that was just written, so the figures measure
the converter (mapping, AES-GCM, writing to the page cache, fsync), not the disk's read speed.
``save_file`` does not fsync; the conversions do (atomic writes), so ``save_file + fsync``
is shown too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import enctensor
from enctensor.convert import decrypt_file, encrypt_file


def make_tensors(total_mib: int) -> dict[str, np.ndarray]:
    """A transformer-like mix: mostly 32 MiB float32 matrices, some bf16 and small vectors."""
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    left = total_mib << 20
    i = 0
    while left > 0:
        n = min(32 << 20, left)
        if i % 4 == 3:
            tensors[f"layers.{i}.weight"] = rng.integers(0, 2**16, n // 2, dtype=np.uint16).view(np.float16)
        else:
            tensors[f"layers.{i}.weight"] = rng.random(n // 4, dtype=np.float32)
        tensors[f"layers.{i}.bias"] = rng.random(1024, dtype=np.float32)
        left -= n
        i += 1
    return tensors


def timed(fn: Callable[[], object], repeat: int, cleanup: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(repeat):
        cleanup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_save(tensors: dict[str, np.ndarray], src: Path, repeat: int) -> dict[str, list[float]]:
    """safetensors.numpy.save_file of the tensors from memory, without and with fsync."""

    def save() -> None:
        save_file(tensors, src, metadata={"format": "pt"})

    def save_and_fsync() -> None:
        save()
        fd = os.open(src, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def cleanup() -> None:
        src.unlink(missing_ok=True)

    return {
        "safetensors.numpy.save_file": timed(save, repeat, cleanup),
        "safetensors.numpy.save_file + fsync": timed(save_and_fsync, repeat, cleanup),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="tensor data size (default 1024)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    ap.add_argument("--dir", default=None, help="where to put the temporary files")
    args = ap.parse_args()

    key = enctensor.generate_key()
    tensors = make_tensors(args.size_mib)
    nbytes = sum(t.nbytes for t in tensors.values())
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src, enc, back = Path(d, "model.safetensors"), Path(d, "model.enct"), Path(d, "back.safetensors")

        results = bench_save(tensors, src, args.repeat)
        del tensors  # the conversions stream from the file; keep memory free for the page cache
        results["encrypt: safetensors -> enctensor"] = timed(
            lambda: encrypt_file(src, enc, key=key), args.repeat, lambda: enc.unlink(missing_ok=True)
        )
        results["decrypt: enctensor -> safetensors"] = timed(
            lambda: decrypt_file(enc, back, key=key), args.repeat, lambda: back.unlink(missing_ok=True)
        )
        assert back.read_bytes() == src.read_bytes(), "round trip is not byte-identical"

    print(f"{nbytes / 2**30:.2f} GiB of tensors, {os.cpu_count()} CPUs, best/median of {args.repeat} runs")
    print(f"{'step':40} {'best s':>8} {'median s':>9} {'GiB/s':>7}")
    for name, ts in results.items():
        best = min(ts)
        print(f"{name:40} {best:8.3f} {statistics.median(ts):9.3f} {nbytes / 2**30 / best:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
