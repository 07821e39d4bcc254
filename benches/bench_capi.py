"""Loading 1 GiB through the C ABI (benches/capi_load.c over libenctensor_core: into malloc'd
destinations, and into destinations faulted in beforehand as ``enctensor.load`` does) against
the Python ``enctensor.load`` and the plaintext peer ``safetensors.numpy.load_file``, same
tensors, page cache warm. Each load runs in a fresh process that times only the load (start-up
excluded); the three alternate, round after round, and the medians are reported.

    python benches/bench_capi.py [--gib 1] [--rounds 5]

Builds the library with cargo (release, feature ``capi``) and the C program with the system
``cc`` first. A script, not a test: timing belongs here, never in a test's assertion.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy

import enctensor

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))

PY_LOAD = """
import sys, time
import enctensor
t0 = time.perf_counter()
out = enctensor.load(sys.argv[1], key=bytes(range(32)))
print(time.perf_counter() - t0, sum(a.nbytes for a in out.values()))
"""

ST_LOAD = """
import sys, time
import safetensors.numpy
t0 = time.perf_counter()
out = safetensors.numpy.load_file(sys.argv[1])
print(time.perf_counter() - t0, sum(a.nbytes for a in out.values()))
"""


def build(work: Path) -> Path:
    """The C-ABI library and the bench program."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "rust_core" / "target")) / "release"
    cargo = ["cargo", "rustc", "--quiet", "--lib", "--release", "--features", "capi"]
    subprocess.run(
        [*cargo, "--crate-type", "cdylib", "--crate-type", "staticlib"], cwd=ROOT / "rust_core", check=True
    )
    exe = work / "capi_load"
    cc = [
        "cc",
        "-O2",
        "-std=c11",
        f"-I{ROOT / 'rust_core' / 'include'}",
        str(ROOT / "benches" / "capi_load.c"),
    ]
    subprocess.run(
        [*cc, f"-L{target}", "-lenctensor_core", f"-Wl,-rpath,{target}", "-o", str(exe)], check=True
    )
    return exe


def timed(cmd: list[str]) -> tuple[float, int]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        exe = build(work)
        n = 16
        per = int(args.gib * (1 << 30)) // n // 4
        rng = np.random.default_rng(0)
        tensors = {f"layer{i}.weight": rng.standard_normal(per, dtype=np.float32) for i in range(n)}
        enctensor.save(tensors, work / "model.enct", key=KEY)
        safetensors.numpy.save_file(tensors, str(work / "model.safetensors"))
        del tensors
        loads = {
            "C ABI, malloc'd destinations": [str(exe), str(work / "model.enct"), KEY.hex(), "malloc"],
            "C ABI, pre-faulted destinations": [str(exe), str(work / "model.enct"), KEY.hex(), "populate"],
            "Python enctensor.load": [sys.executable, "-c", PY_LOAD, str(work / "model.enct")],
            "safetensors.numpy.load_file (plaintext)": [
                sys.executable,
                "-c",
                ST_LOAD,
                str(work / "model.safetensors"),
            ],
        }
        times: dict[str, list[float]] = {k: [] for k in loads}
        sizes = {k: timed(cmd)[1] for k, cmd in loads.items()}  # warm-up: page cache, built code
        assert len(set(sizes.values())) == 1, sizes
        for _ in range(args.rounds):
            for k, cmd in loads.items():
                times[k].append(timed(cmd)[0])
        size = next(iter(sizes.values()))
        print(
            f"{size / (1 << 30):.2f} GiB, {n} tensors, {args.rounds} rounds alternating, {os.cpu_count()} cores"
        )
        for k, v in times.items():
            med = statistics.median(v)
            print(
                f"  {k:42s} median {med:.3f} s ({size / med / 1e9:.2f} GB/s), runs {', '.join(f'{t:.3f}' for t in v)}"
            )


if __name__ == "__main__":
    main()
