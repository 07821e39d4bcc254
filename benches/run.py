"""enctensor measured against its peers, every target of issue 7 in one run.

    python benches/run.py                      # full run: 1 GiB + 2,000 x 64 KiB, 5 runs each
    python benches/run.py --quick              # smoke test: small sizes, 2 runs, under a minute
    python benches/run.py --gib 1 --runs 5 --out benches/README.md --chart benches/chart.png

A script, not a test. It writes the same tensors in every format (safetensors, enctensor,
cryptotensors, tensorizer, TVM params) to a temporary directory, then measures, with the
median of ``--runs`` runs interleaved across loaders in this one process:

- loading, page cache warm and cold (``fsync`` + ``posix_fadvise(DONTNEED)`` before each
  cold run), numpy, torch (``load_model``, ``load_file``) and TVM, against the plaintext
  loaders and the two encrypted peers;
- saving (``enctensor.save`` fsyncs, ``safetensors`` does not: both with and without);
- AES-256-GCM decrypt+verify of the core against OpenSSL (``cryptography``) on the same bytes,
  in subprocesses with ``RAYON_NUM_THREADS=1`` and ``2``;
- peak RSS growth while loading (fresh subprocesses);
- ``get_slice`` of 1 % of a tensor against loading the whole tensor;
- the prototype floor (``../shared/bench/floor.py`` beside the repository, subprocess).

It prints a markdown report and writes it into ``--out`` below the README's intro (the part
above the ``<!-- results -->`` marker is kept), and a bar chart (GB/s, warm) to ``--chart``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as md
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KEY = bytes(range(32))
# Ed25519 seed of the publisher that signs the "signed" file (issue 11: signed vs unsigned load).
SIGN_SEED = bytes(range(192, 224))
# The prototype floor lives in the shared folder beside the repository (not shipped with it).
FLOOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "floor.py"
MARKER = "<!-- results -->"


# --------------------------------------------------------------------------------------------
# helpers


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = now()
    out = fn()
    dt = now() - t0
    del out
    gc.collect()
    return dt


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def drop(path: Path) -> None:
    """Evicts the file's pages from the page cache (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def gbps(nbytes: int, s: float) -> float:
    return nbytes / s / 1e9


def verdict(ratio: float, target: float, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "**met**" if ok else "**not met**"


# --------------------------------------------------------------------------------------------
# data and files


def make_tensors(n: int, nbytes_each: int, seed: int = 0):
    """``n`` float32 tensors of ``nbytes_each`` bytes, square where that is exact."""
    import numpy as np

    rng = np.random.default_rng(seed)
    elems = nbytes_each // 4
    side = int(elems**0.5)
    shape = (side, side) if side * side == elems else (elems // 128, 128)
    return {f"w{i:05d}": rng.random(shape, dtype=np.float32) for i in range(n)}


def bag_module(tensors):
    """A torch module whose state_dict names are exactly the tensors' names."""
    import torch

    m = torch.nn.Module()
    for k, v in tensors.items():
        m.register_parameter(k, torch.nn.Parameter(torch.from_numpy(v.copy()), requires_grad=False))
    return m


def jwk_keys():
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
    d = sk.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
    x = sk.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    b64 = lambda b: base64.b64encode(b).decode()
    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "bench-enc", "k": b64(KEY)}
    sig = {"kty": "okp", "alg": "ed25519", "kid": "bench-sign", "d": b64(d), "x": b64(x)}
    return enc, sig


class Peers:
    """Imports of the optional peers; records why one cannot run."""

    def __init__(self) -> None:
        self.why: dict[str, str] = {}
        try:
            import cryptotensors
            import cryptotensors.numpy

            enc, sig = jwk_keys()
            cryptotensors.register_direct_key_provider(keys=[enc, sig])
            self.ct = cryptotensors
            self.ct_config = {"enc_key": enc, "sign_key": sig}
        except Exception as e:  # noqa: BLE001
            self.ct = None
            self.why["cryptotensors"] = f"{type(e).__name__}: {e}"
        try:
            from tensorizer import TensorDeserializer, TensorSerializer
            from tensorizer.serialization import DecryptionParams, EncryptionParams

            self.tz = (TensorSerializer, TensorDeserializer, EncryptionParams, DecryptionParams)
            EncryptionParams(KEY)  # needs libsodium
        except Exception as e:  # noqa: BLE001
            self.tz = None
            self.why["tensorizer"] = f"{type(e).__name__}: {e}"


def write_files(tensors, d: Path, peers: Peers) -> dict[str, Path]:
    import safetensors.numpy
    import torch
    import tvm.runtime

    import enctensor

    p = {
        "st": d / "m.safetensors",
        "enc": d / "m.enct",
        "enc_signed": d / "m.signed.enct",
        "ct": d / "m.crypto.safetensors",
        "tz": d / "m.tensors",
        "tvm": d / "m.params",
    }
    safetensors.numpy.save_file(tensors, str(p["st"]))
    enctensor.save(tensors, p["enc"], key=KEY)
    enctensor.save(tensors, p["enc_signed"], key=KEY, sign_with=publisher())
    if peers.ct is not None:
        try:
            peers.ct.numpy.save_file(tensors, str(p["ct"]), config=peers.ct_config)
        except Exception as e:  # noqa: BLE001
            peers.why["cryptotensors"] = f"save failed: {type(e).__name__}: {e}"
    if peers.tz is not None:
        ser, _, encp, _ = peers.tz
        try:
            s = ser(str(p["tz"]), encryption=encp(KEY))
            s.write_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
            s.close()
        except Exception as e:  # noqa: BLE001
            peers.why["tensorizer"] = f"save failed: {type(e).__name__}: {e}"
    params = {k: tvm.runtime.tensor(v) for k, v in tensors.items()}
    tvm.runtime.save_param_dict_to_file(params, str(p["tvm"]))
    del params
    for f in p.values():
        if f.exists():
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return {k: v for k, v in p.items() if v.exists()}


# --------------------------------------------------------------------------------------------
# loaders


def publisher():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(SIGN_SEED)


def loaders(files: dict[str, Path], tensors, peers: Peers, target_model):
    """name -> (callable, file it reads, label of the group it is compared in)."""
    import numpy as np
    import safetensors.numpy
    import safetensors.torch
    import tvm.runtime

    import enctensor
    import enctensor.torch as et
    import enctensor.tvm as ev

    verify_key = publisher().public_key()
    L: dict[str, tuple[Callable[[], object], Path]] = {
        "safetensors.numpy.load_file": (lambda: safetensors.numpy.load_file(str(files["st"])), files["st"]),
        "enctensor.load": (lambda: enctensor.load(files["enc"], key=KEY), files["enc"]),
        # The same tensors, signed; every chunk's BLAKE3 digest checked against the signature.
        "enctensor.load (signed, verify_with)": (
            lambda: enctensor.load(files["enc_signed"], key=KEY, verify_with=verify_key),
            files["enc_signed"],
        ),
        "safetensors.torch.load_model": (
            lambda: safetensors.torch.load_model(target_model, str(files["st"])),
            files["st"],
        ),
        "enctensor.torch.load_model": (
            lambda: et.load_model(target_model, files["enc"], key=KEY),
            files["enc"],
        ),
        "enctensor.torch.load_model (signed, verify_with)": (
            lambda: et.load_model(target_model, files["enc_signed"], key=KEY, verify_with=verify_key),
            files["enc_signed"],
        ),
        "enctensor.torch.load_file": (lambda: et.load_file(files["enc"], key=KEY), files["enc"]),
        "tvm.runtime.load_param_dict_from_file": (
            lambda: tvm.runtime.load_param_dict_from_file(str(files["tvm"])),
            files["tvm"],
        ),
        "enctensor.tvm.load": (lambda: ev.load(files["enc"], key=KEY), files["enc"]),
    }
    if "ct" in files and peers.ct is not None and "cryptotensors" not in peers.why:
        L["cryptotensors.numpy.load_file"] = (lambda: peers.ct.numpy.load_file(str(files["ct"])), files["ct"])
    if "tz" in files and peers.tz is not None and "tensorizer" not in peers.why:
        _, deser, _, decp = peers.tz

        def tz_load():
            d = deser(str(files["tz"]), device="cpu", encryption=decp.from_key(KEY), lazy_load=False)
            out = dict(d)
            d.close()
            return out

        L["tensorizer (encrypted)"] = (tz_load, files["tz"])

    # correctness spot-check before timing anything
    first = next(iter(tensors))
    assert np.array_equal(enctensor.load(files["enc"], key=KEY)[first], tensors[first])
    for name in ("cryptotensors.numpy.load_file", "tensorizer (encrypted)"):
        if name in L:
            try:
                out = L[name][0]()
                v = out[first]
                v = v.detach().numpy() if hasattr(v, "detach") else v
                assert np.array_equal(v, tensors[first]), f"{name} returned different bytes"
            except Exception as e:  # noqa: BLE001
                peers.why[name.split(".")[0].split(" ")[0]] = f"load failed: {type(e).__name__}: {e}"
                del L[name]
    return L


def measure_loads(L, runs: int, cold: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in L}
    if not cold:
        for fn, path in L.values():  # warm the cache and every allocator once
            warm(path)
            timed(fn)
    for _ in range(runs):
        for k, (fn, path) in L.items():
            # This VM's DAMON reclaim (kdamond) evicts page cache idle for a few seconds: a
            # file read during the previous round was 3-18 % resident minutes later. Read it
            # again right before a warm run, so that "warm" means warm.
            if cold:
                drop(path)
            else:
                warm(path)
            times[k].append(timed(fn))
    return times


# --------------------------------------------------------------------------------------------
# saving


def measure_saves(tensors, d: Path, runs: int) -> dict[str, list[float]]:
    import safetensors.numpy

    import enctensor

    sp, ep, sp2 = d / "save.safetensors", d / "save.enct", d / "save2.safetensors"

    def st_fsync():
        safetensors.numpy.save_file(tensors, str(sp2))
        fd = os.open(sp2, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    fns = {
        "safetensors.numpy.save_file": lambda: safetensors.numpy.save_file(tensors, str(sp)),
        "safetensors.numpy.save_file + fsync": st_fsync,
        "enctensor.save (fsync, atomic rename)": lambda: enctensor.save(tensors, ep, key=KEY),
        "safetensors.numpy.save (bytes)": lambda: safetensors.numpy.save(tensors),
        "enctensor.save_bytes": lambda: enctensor.save_bytes(tensors, key=KEY),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        timed(fn)
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    for p in (sp, ep, sp2):
        p.unlink(missing_ok=True)
    return times


# --------------------------------------------------------------------------------------------
# get_slice


def measure_slice(files: dict[str, Path], tensors, runs: int) -> dict[str, list[float]]:
    import safetensors

    import enctensor

    name = max(tensors, key=lambda k: tensors[k].nbytes)
    rows = tensors[name].shape[0]
    k = max(1, rows // 100)

    # one open handle each: the file is mapped and the key unwrapped once, outside the timing
    ef = enctensor.safe_open(files["enc"], key=KEY)
    sf = safetensors.safe_open(str(files["st"]), framework="np")

    def enc_full():
        return ef.get_tensor(name)

    def enc_slice():
        return ef.get_slice(name)[:k]

    def st_full():
        return sf.get_tensor(name)

    def st_slice():
        return sf.get_slice(name)[:k]

    def enc_open_slice():
        with enctensor.safe_open(files["enc"], key=KEY) as f:
            return f.get_slice(name)[:k]

    import numpy as np

    assert np.array_equal(enc_slice(), tensors[name][:k])
    fns = {
        "enctensor full": enc_full,
        "enctensor slice": enc_slice,
        "safetensors full": st_full,
        "safetensors slice": st_slice,
        "enctensor open + slice": enc_open_slice,
    }

    # A slice takes well under a millisecond: each run times a batch of calls (the gc.collect
    # before a single call would evict the caches and measure that instead), the full loads
    # as many calls as fit in about the same time.
    def per_call(fn: Callable[[], object], n: int) -> float:
        gc.collect()
        t0 = now()
        for _ in range(n):
            fn()
        return (now() - t0) / n

    batch = {"enctensor full": 3, "safetensors full": 3}
    times: dict[str, list[float]] = {x: [] for x in fns}
    for fn in fns.values():
        timed(fn)
    for _ in range(max(runs, 5)):
        for x, fn in fns.items():
            times[x].append(per_call(fn, batch.get(x, 50)))
    ef.close()
    times["_desc"] = [f"{name} {tuple(tensors[name].shape)}, rows [:{k}] = {k / rows:.2%}"]  # type: ignore[list-item]
    return times


# --------------------------------------------------------------------------------------------
# subprocess children: AES throughput, RSS


def child_aes(path: str, runs: int) -> None:
    """Core vs OpenSSL on the same plaintext bytes, into reused, prefaulted destinations.

    Threads: the core uses RAYON_NUM_THREADS (set by the parent); OpenSSL runs one
    `update_into` over the whole buffer on one thread, and, when RAYON_NUM_THREADS > 1, also
    1 MiB chunks on that many threads (what floor.py does).
    """
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from enctensor import _api
    from enctensor._alloc import aligned_empty

    threads = int(os.environ.get("RAYON_NUM_THREADS", "1"))
    reader = _api._open(path, KEY, None)
    rows = reader.tensors()
    bufs = [aligned_empty(n) for *_, n in rows]
    for b in bufs:
        b[:] = 1  # prefault
    jobs = list(enumerate(bufs))
    reader.read_many_into(jobs)
    total = sum(b.nbytes for b in bufs)

    # the same plaintext, one GCM message, and in 1 MiB chunks with separate tags
    plain = np.concatenate(bufs)
    key, nonce = os.urandom(32), os.urandom(12)
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    ct = bytearray(total + 16)
    n = enc.update_into(plain, ct)
    enc.finalize()
    ct_view = memoryview(ct)[:n]
    tag = enc.tag
    CH = 1 << 20
    chunk_tags = []
    ct_chunks = bytearray(total + 16)
    for i, s in enumerate(range(0, total, CH)):
        e = Cipher(algorithms.AES(key), modes.GCM(i.to_bytes(12, "big"))).encryptor()
        e.update_into(plain[s : s + CH], memoryview(ct_chunks)[s : s + CH + 15])
        e.finalize()
        chunk_tags.append(e.tag)
    ctc = memoryview(ct_chunks)[:total]
    del plain
    dst = np.empty(total + 16, np.uint8)
    dst[:] = 1  # prefault
    pool = ThreadPoolExecutor(threads)

    def core():
        reader.read_many_into(jobs)

    def openssl_one():
        d = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        d.update_into(ct_view, dst)
        d.finalize()

    def openssl_chunks():
        def one(i):
            s = i * CH
            d = Cipher(algorithms.AES(key), modes.GCM(i.to_bytes(12, "big"), chunk_tags[i])).decryptor()
            d.update_into(ctc[s : s + CH], dst[s : s + CH + 15])
            d.finalize()

        list(pool.map(one, range(len(chunk_tags))))

    fns = {"core": core, "openssl_1call": openssl_one}
    if threads > 1:
        fns["openssl_chunks"] = openssl_chunks
    res: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = now()
            fn()
            res[k].append(now() - t0)
    print(
        json.dumps({"bytes": total, "threads": threads, **{k: statistics.median(v) for k, v in res.items()}})
    )


def rss_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def child_rss(mode: str, path: str) -> None:
    """Peak RSS growth (KiB) of one load in a fresh process: sampled and ru_maxrss."""
    import numpy as np  # noqa: F401

    if mode.startswith("enctensor"):
        import enctensor
        import enctensor.torch as et

        fn = {
            "enctensor.load": lambda: enctensor.load(path, key=KEY),
            "enctensor.torch.load_file": lambda: et.load_file(path, key=KEY),
        }[mode]
    else:
        import safetensors.numpy
        import safetensors.torch

        fn = {
            "safetensors.numpy.load_file": lambda: safetensors.numpy.load_file(path),
            "safetensors.torch.load_file + clone": lambda: {
                k: v.clone() for k, v in safetensors.torch.load_file(path).items()
            },
        }[mode]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = rss_kib()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            r = rss_kib()
            peak[0] = max(peak[0], r["RssAnon"] + r["RssFile"])
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = fn()
    stop.set()
    th.join()
    after = rss_kib()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    print(
        json.dumps(
            {
                "base": before["RssAnon"] + before["RssFile"],
                "sampled_peak": max(peak[0], after["RssAnon"] + after["RssFile"]),
                "maxrss_before": maxrss_before,
                "hwm_before": before["VmHWM"],
                "hwm_after": after["VmHWM"],
                "vmrss_before": before["VmRSS"],
                "maxrss_after": maxrss_after,
                "after_anon": after["RssAnon"],
                "after_file": after["RssFile"],
                "before_anon": before["RssAnon"],
                "before_file": before["RssFile"],
            }
        )
    )


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(
        [sys.executable, __file__, *args], check=False, capture_output=True, text=True, env=e
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_floor(gib: float, runs: int) -> dict[str, float] | str:
    if not FLOOR.exists():
        return f"{FLOOR} not found"
    out = subprocess.run(
        [sys.executable, str(FLOOR), "--gib", str(gib), "--runs", str(runs)],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return f"floor.py failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    res: dict[str, float] = {}
    for line in out.stdout.splitlines():
        m = re.match(
            r"(numpy load|load_model)\s*: safetensors\s+([\d.]+) GB/s \| prototype\s+([\d.]+) GB/s", line
        )
        if m:
            key = "numpy" if m.group(1) == "numpy load" else "load_model"
            res[f"{key}_st"] = float(m.group(2))
            res[f"{key}_proto"] = float(m.group(3))
    res["raw"] = out.stdout.strip()  # type: ignore[assignment]
    return res


# --------------------------------------------------------------------------------------------
# report


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str, str]] = []

    def add(self, s: str = "") -> None:
        self.lines.append(s)
        print(s, flush=True)

    def target(self, what: str, ratio: float, target: float, higher: bool = True, note: str = "") -> None:
        cmp = "≥" if higher else "≤"
        self.targets.append(
            (
                what,
                f"{ratio:.2f}x" if higher else f"{ratio:.4f}",
                f"{cmp} {target:g}",
                verdict(ratio, target, higher) + (f" {note}" if note else ""),
            )
        )

    def missing(self, what: str, why: str, target: str) -> None:
        self.targets.append((what, "—", target, f"**cannot run**: {why}"))


def measure_machine(d: Path, nbytes: int, runs: int) -> list[tuple[str, float]]:
    """What this machine gives any loader: copies into fresh and prefaulted memory, first
    touch of fresh pages (huge and 4 KiB, right after a free and after an idle pause, since a
    VM may hand freed memory back to its host), and the disk's O_DIRECT write speed."""
    import mmap

    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    dst.fill(0)
    out: list[tuple[str, float]] = []

    def fresh_copy() -> None:
        np.copyto(np.empty_like(src), src)

    def touch_small() -> None:
        m = mmap.mmap(-1, nbytes)
        np.frombuffer(m, dtype=np.uint8)[::4096] = 1
        m.close()

    def touch_huge() -> None:
        np.empty(nbytes, dtype=np.uint8)[::4096] = 1

    def touch_huge_after_pause() -> float:
        time.sleep(3)
        return timed(touch_huge)

    cases: list[tuple[str, Callable[[], float]]] = [
        ("memcpy into a fresh numpy array (numpy advises huge pages)", lambda: timed(fresh_copy)),
        ("memcpy into a prefaulted array", lambda: timed(lambda: np.copyto(dst, src))),
        ("first touch, 4 KiB pages (anonymous mmap), one thread", lambda: timed(touch_small)),
        ("first touch, huge pages, right after the previous free", lambda: timed(touch_huge)),
        ("first touch, huge pages, after 3 s idle", touch_huge_after_pause),
    ]
    for label, fn in cases:
        fn()
        out.append((label, gbps(nbytes, statistics.median(fn() for _ in range(runs)))))
    path = d / "odirect.bin"
    size = min(nbytes, 256 << 20)
    buf = mmap.mmap(-1, 16 << 20)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    except OSError:
        fd = -1
    if fd >= 0:
        t0 = now()
        for _ in range(size // len(buf)):
            os.write(fd, buf)
        os.fsync(fd)
        out.append(("disk write, O_DIRECT + fsync (256 MiB)", gbps(size, now() - t0)))
        os.close(fd)
        path.unlink()
    return out


def med(v: list[float]) -> float:
    return statistics.median(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the large set (default 1 GiB)")
    ap.add_argument("--small", type=int, default=2000, help="number of 64 KiB tensors (default 2000)")
    ap.add_argument("--runs", type=int, default=None, help="interleaved runs per case (default 5)")
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 runs: a smoke test")
    ap.add_argument("--out", default=None, help="markdown file to write (e.g. benches/README.md)")
    ap.add_argument("--chart", default=None, help="PNG bar chart to write (e.g. benches/chart.png)")
    ap.add_argument("--dir", default=None, help="where to put the files (default: system temp dir)")
    ap.add_argument("--no-floor", action="store_true", help="skip floor.py")
    ap.add_argument("--child-aes", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-rss", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_aes:
        child_aes(args.child_aes[0], int(args.child_aes[1]))
        return
    if args.child_rss:
        child_rss(*args.child_rss)
        return
    if args.quick:
        args.gib = min(args.gib, 1 / 16)
        args.small = min(args.small, 200)
        args.runs = args.runs or 2
    runs = args.runs or 5
    t_start = time.time()
    load_start = loadavg()

    import numpy as np
    import safetensors
    import torch
    import tvm
    from bench_load import cpu_model  # reuse

    import enctensor

    peers = Peers()
    rep = Report()
    chart: dict[str, float] = {}

    try:
        from cryptography.hazmat.backends.openssl.backend import backend as _ob

        openssl = _ob.openssl_version_text()
    except Exception:  # noqa: BLE001
        openssl = "?"
    rep.add(f"## Results ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    rep.add()
    rep.add(
        f"- CPU: {cpu_model()}, {os.cpu_count()} threads; RAM {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"{platform.system()} {platform.release()}; THP {Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text().strip()}"
    )
    rep.add(
        f"- Python {platform.python_version()}; enctensor {enctensor.__version__}; numpy {np.__version__}; "
        f"torch {torch.__version__}; tvm {tvm.__version__}; safetensors {safetensors.__version__}; "
        f"cryptotensors {version('cryptotensors')}; tensorizer {version('tensorizer')}; "
        f"cryptography {version('cryptography')} ({openssl}); libsodium via libnacl {version('libnacl')}"
    )
    rep.add(
        f"- Command: `python benches/run.py {' '.join(sys.argv[1:])}`; medians of {runs} interleaved runs "
        f"(plus one untimed warm-up for warm runs); load average at start {load_start}"
    )
    rep.add()

    tmp = tempfile.TemporaryDirectory(prefix="enct-run-", dir=args.dir)
    d = Path(tmp.name)
    rep.add(f"### This machine ({int(args.gib * (1 << 30)) >> 20} MiB, medians of {runs})")
    rep.add()
    rep.add("| what | GB/s |")
    rep.add("|---|---:|")
    for label, rate in measure_machine(d, int(args.gib * (1 << 30)), runs):
        rep.add(f"| {label} | {rate:.2f} |")
    rep.add()
    sets = [
        ("large", f"{args.gib:g} GiB: 16 float32 tensors", 16, int(args.gib * (1 << 30) / 16)),
        ("small", f"{args.small} float32 tensors of 64 KiB", args.small, 64 << 10),
    ]
    summary: dict[str, dict] = {}
    for tag, desc, n, each in sets:
        tensors = make_tensors(n, each)
        nbytes = sum(v.nbytes for v in tensors.values())
        sd = d / tag
        sd.mkdir()
        files = write_files(tensors, sd, peers)
        target_model = bag_module(tensors)
        L = loaders(files, tensors, peers, target_model)
        res = {}
        for cold in (False, True):
            res[cold] = {k: med(v) for k, v in measure_loads(L, runs, cold).items()}
            gc.collect()
        summary[tag] = {"nbytes": nbytes, "loads": res, "desc": desc}

        rep.add(f"### Loading: {desc} ({nbytes / 2**20:.0f} MiB)")
        rep.add()
        rep.add("| loader | warm s | warm GB/s | cold s | cold GB/s |")
        rep.add("|---|---:|---:|---:|---:|")
        for k in L:
            w, c = res[False][k], res[True][k]
            rep.add(f"| `{k}` | {w:.4f} | {gbps(nbytes, w):.2f} | {c:.4f} | {gbps(nbytes, c):.2f} |")
        rep.add()
        if tag == "large":
            chart = {k: gbps(nbytes, res[False][k]) for k in L}

        # load targets
        pairs = [
            (
                "enctensor.torch.load_model / safetensors.torch.load_model",
                "enctensor.torch.load_model",
                "safetensors.torch.load_model",
                0.9,
            ),
            (
                "enctensor.load / safetensors.numpy.load_file",
                "enctensor.load",
                "safetensors.numpy.load_file",
                4,
            ),
            (
                "enctensor.tvm.load / tvm.runtime.load_param_dict_from_file",
                "enctensor.tvm.load",
                "tvm.runtime.load_param_dict_from_file",
                4,
            ),
            (
                "enctensor.load / cryptotensors.numpy.load_file",
                "enctensor.load",
                "cryptotensors.numpy.load_file",
                2.5,
            ),
            (
                "enctensor.torch.load_file / tensorizer (encrypted)",
                "enctensor.torch.load_file",
                "tensorizer (encrypted)",
                5,
            ),
        ]
        for label, ours, base, tgt in pairs:
            for cold in (False, True):
                what = f"{label}, {tag}, {'cold' if cold else 'warm'}"
                if base not in res[cold]:
                    peer = base.split(".")[0].split(" ")[0]
                    rep.missing(what, peers.why.get(peer, "not measured"), f"≥ {tgt:g}")
                    continue
                rep.target(what, res[cold][base] / res[cold][ours], tgt)
        # Signed loads (verify_with: signature plus a BLAKE3 digest per chunk) against the same
        # loader without a signature, measured in the same interleaved rounds (lower is better).
        for ours in ("enctensor.load", "enctensor.torch.load_model"):
            signed = f"{ours} (signed, verify_with)"
            for cold in (False, True):
                rep.target(
                    f"{signed} / unsigned, {tag}, {'cold' if cold else 'warm'}",
                    res[cold][signed] / res[cold][ours],
                    1.25,
                    higher=False,
                )

        # saving
        st = {k: med(v) for k, v in measure_saves(tensors, sd, max(3, runs)).items()}
        rep.add(f"### Saving: {desc}")
        rep.add()
        rep.add("| writer | s | GB/s |")
        rep.add("|---|---:|---:|")
        for k, v in st.items():
            rep.add(f"| `{k}` | {v:.4f} | {gbps(nbytes, v):.2f} |")
        rep.add()
        rep.target(
            f"enctensor.save / safetensors.numpy.save_file (no fsync), {tag}",
            st["safetensors.numpy.save_file"] / st["enctensor.save (fsync, atomic rename)"],
            2,
        )
        rep.target(
            f"enctensor.save / safetensors save_file + fsync (like for like), {tag}",
            st["safetensors.numpy.save_file + fsync"] / st["enctensor.save (fsync, atomic rename)"],
            2,
        )
        rep.target(
            f"enctensor.save_bytes / safetensors.numpy.save (bytes), {tag}",
            st["safetensors.numpy.save (bytes)"] / st["enctensor.save_bytes"],
            2,
        )

        # peak RSS (fresh processes, warm cache)
        warm(files["enc"])
        warm(files["st"])
        rep.add(f"### Peak RSS growth while loading: {desc} (fresh process, warm cache)")
        rep.add()
        rep.add(
            "| loader | sampled peak (RssAnon+RssFile) growth | VmHWM growth (HWM reset before the load) | growth / tensor bytes | RssFile after |"
        )
        rep.add("|---|---:|---:|---:|---:|")
        modes = [
            ("enctensor.load", files["enc"]),
            ("enctensor.torch.load_file", files["enc"]),
            ("safetensors.numpy.load_file", files["st"]),
            ("safetensors.torch.load_file + clone", files["st"]),
        ]
        for mode, f in modes[::2] if args.quick else modes:
            r = run_child(["--child-rss", mode, str(f)])
            hwm = r["hwm_after"] - r["vmrss_before"]  # VmHWM was reset just before the load
            growth = max(r["sampled_peak"] - r["base"], hwm)
            mr = hwm
            ratio = growth * 1024 / nbytes
            rep.add(
                f"| `{mode}` | {(r['sampled_peak'] - r['base']) / 1024:.0f} MiB | {mr / 1024:.0f} MiB | "
                f"{ratio:.3f} | {r['after_file'] / 1024:.0f} MiB |"
            )
            if mode.startswith("enctensor"):
                rep.target(f"peak RSS growth / tensor bytes, `{mode}`, {tag}", ratio, 1.15, higher=False)
        rep.add()

        if tag == "large":
            # get_slice
            sl = measure_slice(files, tensors, runs)
            desc_sl = sl.pop("_desc")[0]
            m = {k: med(v) for k, v in sl.items()}
            rep.add(f"### get_slice of 1 %: {desc_sl}")
            rep.add()
            rep.add("Seconds per call, timed over batches (50 slices, 3 full loads) after one gc.collect().")
            rep.add()
            rep.add("| case | s | slice / full |")
            rep.add("|---|---:|---:|")
            for lib in ("enctensor", "safetensors"):
                rep.add(f"| `{lib}` full `get_tensor` | {m[lib + ' full']:.5f} | |")
                rep.add(
                    f"| `{lib}` `get_slice(...)[:k]` | {m[lib + ' slice']:.5f} | "
                    f"{m[lib + ' slice'] / m[lib + ' full']:.2%} |"
                )
            rep.add(
                f"| `enctensor` `safe_open` + `get_slice(...)[:k]` | {m['enctensor open + slice']:.5f} | "
                f"{m['enctensor open + slice'] / m['enctensor full']:.2%} |"
            )
            rep.add()
            rep.target(
                "get_slice 1 % / full tensor load (enctensor), large",
                m["enctensor slice"] / m["enctensor full"],
                0.02,
                higher=False,
            )

            # AES core vs OpenSSL
            rep.add(
                f"### AES-256-GCM decrypt+verify, core vs OpenSSL ({nbytes / 2**20:.0f} MiB, warm, prefaulted destination)"
            )
            rep.add()
            rep.add(
                "| threads | core `read_many_into` GB/s | OpenSSL 1 `update_into` GB/s | OpenSSL 1 MiB chunks on N threads GB/s | core / OpenSSL 1 call |"
            )
            rep.add("|---:|---:|---:|---:|---:|")
            aes = {}
            for th in (1, 2):
                r = run_child(
                    ["--child-aes", str(files["enc"]), str(max(runs, 5))], {"RAYON_NUM_THREADS": str(th)}
                )
                aes[th] = r
                ch = f"{gbps(r['bytes'], r['openssl_chunks']):.2f}" if "openssl_chunks" in r else "—"
                rep.add(
                    f"| {th} | {gbps(r['bytes'], r['core']):.2f} | {gbps(r['bytes'], r['openssl_1call']):.2f} | {ch} | "
                    f"{r['openssl_1call'] / r['core']:.2f}x |"
                )
            rep.add()
            rep.target("core 1 thread / OpenSSL single-core", aes[1]["openssl_1call"] / aes[1]["core"], 0.9)
            rep.target("core 2 threads / OpenSSL single-core", aes[2]["openssl_1call"] / aes[2]["core"], 0.9)
            rep.target(
                "core scaling 2 threads / 1 thread (near-linear)", aes[1]["core"] / aes[2]["core"], 1.8
            )
            summary["aes"] = aes
        del tensors, target_model, L
        for f in files.values():
            f.unlink(missing_ok=True)
        gc.collect()

    # the prototype floor
    if not args.no_floor:
        fl = run_floor(args.gib, runs)
        rep.add(
            f"### Prototype floor (`shared/bench/floor.py`, {args.gib:g} GiB, {runs} runs, Python + OpenSSL on all threads)"
        )
        rep.add()
        if isinstance(fl, str):
            rep.add(f"floor.py could not run: {fl}")
        else:
            big = summary["large"]
            enc_np = gbps(big["nbytes"], big["loads"][False]["enctensor.load"])
            enc_lm = gbps(big["nbytes"], big["loads"][False]["enctensor.torch.load_model"])
            st_np = gbps(big["nbytes"], big["loads"][False]["safetensors.numpy.load_file"])
            st_lm = gbps(big["nbytes"], big["loads"][False]["safetensors.torch.load_model"])
            rep.add(
                "| path | safetensors GB/s (floor's run) | prototype floor GB/s | enctensor Rust core GB/s | safetensors GB/s (this run) | core / floor |"
            )
            rep.add("|---|---:|---:|---:|---:|---:|")
            rep.add(
                f"| numpy load | {fl.get('numpy_st', 0):.2f} | {fl.get('numpy_proto', 0):.2f} | {enc_np:.2f} | {st_np:.2f} | "
                f"{enc_np / fl.get('numpy_proto', float('nan')):.2f}x |"
            )
            rep.add(
                f"| load_model | {fl.get('load_model_st', 0):.2f} | {fl.get('load_model_proto', 0):.2f} | {enc_lm:.2f} | {st_lm:.2f} | "
                f"{enc_lm / fl.get('load_model_proto', float('nan')):.2f}x |"
            )
            rep.add()
            if "numpy_proto" in fl:
                rep.target(
                    "enctensor.load / prototype floor (numpy), warm large", enc_np / fl["numpy_proto"], 1.0
                )
                rep.target(
                    "enctensor.torch.load_model / prototype floor, warm large",
                    enc_lm / fl["load_model_proto"],
                    1.0,
                )
            chart["prototype floor (numpy, floor.py)"] = fl.get("numpy_proto", 0)

    # targets
    rep.add("### Targets")
    rep.add()
    rep.add("| target | measured | goal | verdict |")
    rep.add("|---|---:|---:|---|")
    for row in rep.targets:
        rep.add("| " + " | ".join(row) + " |")
    rep.add()
    met = sum("**met**" in r[3] for r in rep.targets)
    rep.add(
        f"{met} of {len(rep.targets)} met. Load average at end {loadavg()}; wall time {time.time() - t_start:.0f} s."
    )
    busiest = max(float(load_start.split()[0]), os.getloadavg()[0])
    if busiest >= 1.5:
        rep.add()
        rep.add(
            f"**Noisy run**: the 1-minute load average reached {busiest:.2f} at the start or end "
            f"of this run on {os.cpu_count()} CPUs (other work was running); treat these figures, "
            "the 2-thread ones above all, as lower bounds."
        )
    if peers.why:
        rep.add()
        for k, v in peers.why.items():
            rep.add(f"- {k}: {v}")

    if args.out:
        out = Path(args.out)
        intro = out.read_text().split(MARKER)[0] if out.exists() else "# Benchmarks\n\n"
        out.write_text(intro.rstrip() + "\n\n" + MARKER + "\n\n" + "\n".join(rep.lines) + "\n")
    if args.chart:
        draw_chart(chart, summary["large"]["desc"], Path(args.chart))
    tmp.cleanup()


def draw_chart(chart: dict[str, float], desc: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(chart)
    vals = [chart[n] for n in names]
    colors = [
        "tab:blue" if n.startswith("enctensor") else "tab:gray" if "floor" in n else "tab:orange"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    ax.barh(names[::-1], vals[::-1], color=colors[::-1])
    for i, v in enumerate(vals[::-1]):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("GB/s (higher is better)")
    ax.set_title(
        f"Loading, page cache warm, {desc}\nblue: enctensor, orange: peers, gray: Python prototype floor"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
