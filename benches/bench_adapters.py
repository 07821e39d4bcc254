"""Loading through the framework adapters vs the plaintext loaders they replace.

Measures, on the same ~``--gib`` GiB of float32 weights with the page cache warm, the median
of ``--runs`` interleaved runs of:

- ``enctensor.torch.load_model`` vs ``safetensors.torch.load_model`` (into one existing model);
- ``enctensor.torch.load_file`` vs ``safetensors.torch.load_file``, which only maps the file
  (its pages are read when first touched), so it is also shown followed by ``.clone()`` of
  every tensor into private memory, which is what enctensor returns;
- ``enctensor.tvm.load`` vs ``tvm.runtime.load_param_dict_from_file``;
- where ``load_file`` should put tensors: ``torch.empty`` (what it does) vs numpy's
  64-byte/2 MiB aligned huge-page buffers adopted with ``torch.from_numpy``, both in this
  process (allocator caches warm) and in fresh processes (every page faulted in anew).

Prints a markdown table of GB/s and ratios. Usage: ``python benches/bench_adapters.py --gib 1``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
import tvm
import tvm.runtime

import enctensor
import enctensor.torch as et
import enctensor.tvm as ev
from enctensor import _api
from enctensor._alloc import aligned_empty

KEY = bytes(range(32))
WIDTH = 4096  # one 4096 x 4096 float32 layer = 64 MiB


class Stack(torch.nn.Module):
    """``n`` square linear layers: 64 MiB of weights and 16 KiB of bias each."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH) for _ in range(n))


def build(n: int) -> Stack:
    """A model with random weights, every page of it already touched."""
    with torch.device("meta"):
        m = Stack(n)
    m.to_empty(device="cpu")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    gc.collect()
    return dt


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def load_file_numpy_alloc(path: Path, *, key: bytes) -> dict[str, torch.Tensor]:
    """The alternative destination: numpy aligned_empty (huge pages) + torch.from_numpy."""
    reader = _api._open(path, key, None)
    rows = reader.tensors()
    bufs = [aligned_empty(nbytes) for *_, nbytes in rows]
    reader.read_many_into(list(enumerate(bufs)))
    return {
        name: torch.from_numpy(b).view(et.TORCH_DTYPES[dtype]).reshape(shape)
        for (name, dtype, shape, _, _), b in zip(rows, bufs, strict=True)
    }


DESTINATIONS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "torch.empty": et.load_file,
    "numpy": load_file_numpy_alloc,
}


def fresh_process(mode: str, path: Path) -> float:
    """Seconds for one load in a new Python process (so no page was touched before)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def child(mode: str, path: str) -> None:
    t0 = time.perf_counter()
    out = DESTINATIONS[mode](Path(path), key=KEY)
    print(time.perf_counter() - t0)
    del out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of weights (default 1)")
    ap.add_argument("--runs", type=int, default=5, help="interleaved runs per case (default 5)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    layers = max(1, round(args.gib * 16))
    model = build(layers)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        st_path, enc_path, params_path = Path(d) / "m.safetensors", Path(d) / "m.enct", Path(d) / "m.params"
        safetensors.torch.save_model(model, str(st_path))
        et.save_model(model, enc_path, key=KEY)
        params = {k: tvm.runtime.tensor(v.numpy()) for k, v in model.state_dict().items()}
        tvm.runtime.save_param_dict_to_file(params, str(params_path))
        del params
        for p in (st_path, enc_path, params_path):
            warm(p)
        target = build(layers)  # loaded into repeatedly: its pages are already faulted in

        cases: dict[str, Callable[[], object]] = {
            "enctensor.torch.load_model": lambda: et.load_model(target, enc_path, key=KEY),
            "safetensors.torch.load_model": lambda: safetensors.torch.load_model(target, st_path),
            "enctensor.torch.load_file": lambda: et.load_file(enc_path, key=KEY),
            "safetensors.torch.load_file (lazy mmap)": lambda: safetensors.torch.load_file(st_path),
            "safetensors.torch.load_file + clone": lambda: {
                k: v.clone() for k, v in safetensors.torch.load_file(st_path).items()
            },
            "enctensor.tvm.load": lambda: ev.load(enc_path, key=KEY),
            "tvm.runtime.load_param_dict_from_file": lambda: tvm.runtime.load_param_dict_from_file(
                str(params_path)
            ),
            "load_file into numpy aligned_empty + from_numpy": lambda: load_file_numpy_alloc(
                enc_path, key=KEY
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        fresh: dict[str, list[float]] = {mode: [] for mode in DESTINATIONS}
        for fn in cases.values():  # one untimed warm-up each
            timed(fn)
        for _ in range(args.runs):
            for name, fn in cases.items():
                times[name].append(timed(fn))
            for mode, samples in fresh.items():
                samples.append(fresh_process(mode, enc_path))

    med = {name: statistics.median(v) for name, v in times.items()}

    def gbps(s: float) -> str:
        return f"{nbytes / s / 1e9:.2f}"

    rows = [
        ("load_model", "enctensor.torch.load_model", "safetensors.torch.load_model"),
        ("load_file", "enctensor.torch.load_file", "safetensors.torch.load_file (lazy mmap)"),
        ("load_file, private copies", "enctensor.torch.load_file", "safetensors.torch.load_file + clone"),
        ("TVM params", "enctensor.tvm.load", "tvm.runtime.load_param_dict_from_file"),
    ]
    print(
        f"\n{nbytes / 2**30:.2f} GiB in {layers * 2} tensors (float32), page cache warm, "
        f"median of {args.runs} interleaved runs, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"tvm {tvm.__version__}, enctensor {enctensor.__version__}\n"
    )
    print("| operation | enctensor GB/s | baseline | baseline GB/s | enctensor / baseline |")
    print("|---|---:|---|---:|---:|")
    for label, ours, base in rows:
        ratio = med[base] / med[ours]
        print(f"| {label} | {gbps(med[ours])} | `{base}` | {gbps(med[base])} | {ratio:.2f}x |")
    print("\nWhere `load_file` puts the decrypted bytes (GB/s):\n")
    print("| destination | in this process | fresh process |")
    print("|---|---:|---:|")
    print(
        f"| `torch.empty` (used) | {gbps(med['enctensor.torch.load_file'])} | "
        f"{gbps(statistics.median(fresh['torch.empty']))} |"
    )
    print(
        f"| numpy `aligned_empty` + `torch.from_numpy` | "
        f"{gbps(med['load_file into numpy aligned_empty + from_numpy'])} | "
        f"{gbps(statistics.median(fresh['numpy']))} |"
    )


if __name__ == "__main__":
    main()
