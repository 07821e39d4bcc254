"""enctensor demo: encrypt a sample model's weights, inspect the file without a key, load it
back with the key beside safetensors loading the same tensors in plaintext, and show what a
wrong key and a flipped bit get.

    python examples/demo.py [--mib 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import safetensors.numpy

import enctensor


def sample_model(mib: int) -> dict[str, np.ndarray]:
    """A transformer-shaped set of weights: embeddings, attention and MLP blocks, norms."""
    rng = np.random.default_rng(0)
    dim = 1024
    layers = max(1, mib // 16)  # ~16 MiB of float32 per layer at dim 1024
    out: dict[str, np.ndarray] = {"embed.weight": rng.standard_normal((8192, dim), dtype=np.float32)}
    for i in range(layers):
        p = f"layers.{i}."
        out[p + "attn.qkv.weight"] = rng.standard_normal((3 * dim, dim), dtype=np.float32)
        out[p + "attn.out.weight"] = rng.standard_normal((dim, dim), dtype=np.float32)
        out[p + "norm.weight"] = np.ones(dim, dtype=np.float32)
        out[p + "step"] = np.array(i, dtype=np.int64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512, help="approximate size of the sample model")
    args = ap.parse_args()

    tensors = sample_model(args.mib)
    nbytes = sum(a.nbytes for a in tensors.values())
    print(f"sample model: {len(tensors)} tensors, {nbytes / 2**20:.0f} MiB")

    key = enctensor.generate_key()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.enct")
        t0 = time.perf_counter()
        enctensor.save(tensors, path, key=key, metadata={"model": "demo", "dim": "1024"})
        dt = time.perf_counter() - t0
        size = os.path.getsize(path)
        print(f"encrypted  -> {path}: {size / 2**20:.0f} MiB in {dt:.2f} s ({nbytes / dt / 1e9:.2f} GB/s)")

        info = enctensor.inspect(path)
        first = info["tensors"][1]
        print(
            f"inspected without a key: format v{info['format_version']}, {len(info['tensors'])} tensors, "
            f"stanzas {info['stanzas']}, metadata {info['metadata']}; e.g. {first['name']} "
            f"{first['dtype']} {first['shape']}"
        )

        # The plaintext baseline, measured here in the same run: safetensors on the same tensors.
        plain = os.path.join(d, "model.safetensors")
        t0 = time.perf_counter()
        safetensors.numpy.save_file(tensors, plain)
        st_save = time.perf_counter() - t0
        print(
            f"baseline   -> safetensors.numpy.save_file (no encryption, no fsync): {st_save:.2f} s "
            f"({nbytes / st_save / 1e9:.2f} GB/s)"
        )

        def timed_load(fn, file: str) -> tuple[float, dict[str, np.ndarray]]:
            with open(file, "rb") as f:  # warm the page cache, as a second load would find it
                while f.read(1 << 24):
                    pass
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out

        # First run of each, then a warm one (the first pays for fresh memory and allocator set-up).
        # Every load starts with the arrays of the previous loads freed: neither reader gets
        # pages the other has just faulted in while the other gets fresh ones.
        rows = []
        for run in ("first", "warm"):
            dt_enc, loaded = timed_load(lambda: enctensor.load(path, key=key), path)
            same = all(np.array_equal(loaded[k], v) for k, v in tensors.items())
            n_loaded = len(loaded)
            del loaded
            dt_st, plain_loaded = timed_load(lambda: safetensors.numpy.load_file(plain), plain)
            del plain_loaded
            rows.append((run, dt_enc, dt_st))
        print(f"decrypted + verified {n_loaded} tensors; identical to the originals: {same}")
        print("  load run | enctensor.load (decrypt + verify) | safetensors.numpy.load_file (plaintext)")
        for run, dt_enc, dt_st in rows:
            print(
                f"  {run:8} | {dt_enc:.3f} s {nbytes / dt_enc / 1e9:6.2f} GB/s          "
                f"| {dt_st:.3f} s {nbytes / dt_st / 1e9:6.2f} GB/s"
            )

        with enctensor.safe_open(path, key=key) as f:
            part = f.get_slice("embed.weight")[100:104]
        print(
            f"get_slice('embed.weight')[100:104] -> shape {part.shape}, "
            f"matches: {np.array_equal(part, tensors['embed.weight'][100:104])}"
        )

        try:
            enctensor.load(path, key=enctensor.generate_key())
        except enctensor.WrongKeyError as e:
            print(f"wrong key   -> WrongKeyError: {e}")

        with open(path, "r+b") as f:
            f.seek(size - 12345)
            b = f.read(1)
            f.seek(size - 12345)
            f.write(bytes([b[0] ^ 1]))
        try:
            enctensor.load(path, key=key)
        except enctensor.IntegrityError as e:
            print(f"flipped bit -> IntegrityError: {e}")
    if not same:
        raise SystemExit("round trip mismatch")


if __name__ == "__main__":
    main()
