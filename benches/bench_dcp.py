"""torch.distributed.checkpoint on 2 ranks: enctensor's EncWriter/EncReader against DCP's own
FileSystemWriter/FileSystemReader (plaintext, one torch.save per item), in the same run.

A state dict of ``--tensors`` float32 matrices (``--gib`` in all) is sharded row-wise as
DTensors over a 2-rank CPU mesh (gloo on 127.0.0.1), so each rank saves and loads its half.
Every round saves and then loads with both backends, the order alternating between rounds;
each operation is timed on rank 0 from a barrier before it to a barrier after it (the slower
rank's time). Saves are fsync'd by both (DCP's default ``sync_files=True``; enctensor always);
loads go into existing DTensors from the page cache (the files were just written). The figures
are medians, and medians of the per-round ratios enctensor/DCP.

    python benches/bench_dcp.py [--gib 1] [--tensors 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from enctensor.torch.dcp import EncReader, EncWriter

KEY = bytes(range(32))
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(mesh: Any, rank: int, n: int, rows: int, cols: int, fill: bool) -> dict[str, DTensor]:
    """``n`` (rows x cols) float32 matrices as Shard(0) DTensors, built from their local halves."""
    g = torch.Generator().manual_seed(1000 * rank + 1)
    out = {}
    for i in range(n):
        local = torch.randn(rows // WORLD, cols, generator=g) if fill else torch.zeros(rows // WORLD, cols)
        out[f"layers.{i}.weight"] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
    return out


def _timed(fn: Callable[[], None]) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _worker(rank: int, port: int, args: argparse.Namespace, root: str, out: str) -> None:
    warnings.filterwarnings("ignore")  # DCP warns each time it overwrites its own checkpoint
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(minutes=10))
    mesh = init_device_mesh("cpu", (WORLD,))
    cols = 1024
    rows = int(args.gib * (1 << 30)) // args.tensors // (4 * cols) // WORLD * WORLD
    state = _state(mesh, rank, args.tensors, rows, cols, fill=True)
    target = _state(mesh, rank, args.tensors, rows, cols, fill=False)
    nbytes = args.tensors * rows * cols * 4
    enc, plain = Path(root, "enctensor"), Path(root, "dcp")
    backends: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "enctensor": (
            lambda: dcp.save(state, storage_writer=EncWriter(enc, key=KEY)),
            lambda: dcp.load(target, storage_reader=EncReader(enc, key=KEY)),
        ),
        "dcp": (
            lambda: dcp.save(state, storage_writer=dcp.FileSystemWriter(plain)),
            lambda: dcp.load(target, storage_reader=dcp.FileSystemReader(plain)),
        ),
    }
    times: dict[str, dict[str, list[float]]] = {b: {"save": [], "load": []} for b in backends}
    for name, (save, load) in backends.items():  # warm-up, and a check that both load right
        save()
        for t in target.values():
            t.to_local().zero_()
        load()
        same = all(torch.equal(target[k].to_local(), state[k].to_local()) for k in state)
        assert same, f"{name} loaded other values"
    for r in range(args.rounds):
        names = list(backends) if r % 2 == 0 else list(reversed(backends))
        for op in ("save", "load"):
            for name in names:
                times[name][op].append(_timed(backends[name][0 if op == "save" else 1]))
    if rank == 0:
        Path(out).write_text(json.dumps({"nbytes": nbytes, "tensors": args.tensors, "times": times}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        out = os.path.join(d, "result.json")
        mp.start_processes(_worker, args=(_free_port(), args, d, out), nprocs=WORLD, start_method="spawn")
        result = json.loads(Path(out).read_text())
    nbytes, times = result["nbytes"], result["times"]
    print(
        f"{nbytes / 2**30:.2f} GiB in {result['tensors']} row-sharded DTensors on {WORLD} ranks (gloo, CPU),"
        f" {args.rounds} paired rounds, order alternating"
    )
    for op in ("save", "load"):
        enc, plain = times["enctensor"][op], times["dcp"][op]
        ratios = [e / p for e, p in zip(enc, plain, strict=True)]
        me, mp_ = statistics.median(enc), statistics.median(plain)
        print(
            f"{op}: enctensor {me:.3f} s ({nbytes / me / 1e9:.2f} GB/s), DCP FileSystem (plaintext)"
            f" {mp_:.3f} s ({nbytes / mp_ / 1e9:.2f} GB/s); enctensor/DCP median of per-round ratios"
            f" {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
