"""Signed vs unsigned loads (issue 11): what checking a publisher signature costs.

With ``verify_with``, every chunk's stored bytes are hashed with BLAKE3 and compared with the
signed digest table before they are decrypted. This script measures that cost in paired rounds
that alternate the order (on these VMs memory freed a few seconds ago is slow to touch again,
so a fixed order favours whichever loader runs second), and reports the median of the
per-round ratios. It also measures the machine's ceiling for the extra work: BLAKE3 alone over
the same bytes, in memory, on all cores.

    python benches/bench_signed.py [--gib 1] [--rounds 11]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import enctensor
import enctensor.torch as et

KEY = bytes(range(32))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()

    n = 16
    per = int(args.gib * (1 << 30)) // n // 4
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": rng.standard_normal(per, dtype=np.float32) for i in range(n)}
    nbytes = sum(a.nbytes for a in tensors.values())
    publisher = Ed25519PrivateKey.generate()
    pub = publisher.public_key()

    model = torch.nn.Module()
    for k, v in tensors.items():
        model.register_parameter(k, torch.nn.Parameter(torch.from_numpy(v.copy()), requires_grad=False))

    with tempfile.TemporaryDirectory() as d:
        plain, signed = Path(d, "u.enct"), Path(d, "s.enct")
        enctensor.save(tensors, plain, key=KEY)
        enctensor.save(tensors, signed, key=KEY, sign_with=publisher)

        cases = {
            "enctensor.torch.load_model (existing parameters)": (
                lambda: et.load_model(model, plain, key=KEY),
                lambda: et.load_model(model, signed, key=KEY, verify_with=pub),
            ),
            "enctensor.load (fresh arrays)": (
                lambda: enctensor.load(plain, key=KEY),
                lambda: enctensor.load(signed, key=KEY, verify_with=pub),
            ),
        }
        # The ceiling of the extra work: BLAKE3 over the same bytes on both cores (blake3's own
        # threads), with no crypto and no I/O.
        buf = np.concatenate(list(tensors.values())).view(np.uint8)
        hash_times = [timed(lambda: blake3(buf, max_threads=2).digest()) for _ in range(args.rounds)]

        print(f"{nbytes / 2**30:.2f} GiB, {n} tensors, {args.rounds} paired rounds, order alternating")
        print(
            f"BLAKE3 alone over the same bytes, 2 threads: {nbytes / statistics.median(hash_times) / 1e9:.2f} GB/s"
        )
        for label, (unsigned, signed_fn) in cases.items():
            for fn, path in ((unsigned, plain), (signed_fn, signed)):  # warm-up
                warm(path)
                fn()
            ratios, tu, ts = [], [], []
            for r in range(args.rounds):
                order = [(unsigned, plain, tu), (signed_fn, signed, ts)]
                if r % 2:
                    order.reverse()
                for fn, path, out in order:
                    warm(path)
                    out.append(timed(fn))
                ratios.append(ts[-1] / tu[-1])
            mu, ms = statistics.median(tu), statistics.median(ts)
            print(
                f"{label}: unsigned {mu:.3f} s ({nbytes / mu / 1e9:.2f} GB/s), signed {ms:.3f} s "
                f"({nbytes / ms / 1e9:.2f} GB/s); signed/unsigned median of per-round ratios "
                f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
