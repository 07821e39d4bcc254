"""enctensor against its plaintext and encrypted peers: every target of issue 12 in one run.

    python benches/run.py --gib 1 --out benches/README.md --chart benches/chart.png
    python benches/run.py --quick        # smoke test: 64 MiB and 200 x 64 KiB, 3 rounds, ~15 s
    python benches/run.py --skip cold,save,rss,slice,small,machine,load   # leave parts out

How it measures (``benches/_measure.py``): each comparison is a group of cases timed once per
round in this one process, the order reversed every other round, ``--rounds`` rounds (11);
reported are median seconds, GB/s and the median of the per-round ratios to the group's
plaintext peer. Sizes: ``--gib``/2 and ``--gib`` GiB (16 float32 tensors each) and 2,000 x
64 KiB, page cache warm (the file is read right before each run: this VM evicts idle page
cache) and cold (``fsync`` + ``posix_fadvise(DONTNEED)`` before each run). Groups:

- ``load_model``: ``enctensor.torch.load_model`` (one pass out of the map, and two passes,
  ``_core._set_read_mode("copy")``) vs ``safetensors.torch.load_model``, into one existing model;
- ``numpy``: ``enctensor.load`` (one and two passes) vs ``safetensors.numpy.load_file`` and
  ``cryptotensors``;
- ``tvm``: ``enctensor.tvm.load`` vs ``tvm.runtime.load_param_dict_from_file``;
- ``load_file``: ``enctensor.torch.load_file`` vs ``safetensors.torch.load_file`` followed by a
  clone into private memory (what enctensor returns), and encrypted ``tensorizer``;
- ``save``: ``enctensor.save`` (fsync, atomic rename) vs ``safetensors.numpy.save_file`` without
  and with fsync, and where the time goes (new file or replaced, fsync, rename, page cache).

Every group holds its ceiling on this machine: the same bytes moved without crypto, into the
same kind of destination (a copy from a map of the plaintext file into the model, or into fresh
arrays, on 1 and 2 threads; a plain write of the tensor bytes). Then peak RSS growth during a
load in fresh processes (anonymous memory apart from file pages), ``get_slice`` of 1 % of a
tensor against loading it whole, and the targets table, which prints the ceiling beside each
target. The report goes to stdout, below the ``<!-- results -->`` marker of ``--out``, and a
chart of warm GB/s to ``--chart``.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as md
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import (
    KEY,
    copy_from_file,
    cpu_model,
    drop,
    freeze_imports,
    fsync_path,
    gbps,
    loadavg,
    make_tensors,
    median,
    parallel,
    ratio,
    rounds,
    safetensors_header,
    safetensors_regions,
    status_kib,
    touch_pieces,
    warm,
    with_pages,
)

MARKER = "<!-- results -->"
THREADS = len(os.sched_getaffinity(0))
MIB = 1 << 20

# Issue 12's goals: speed of enctensor / speed of the plaintext peer, warm unless said.
GOALS = {"load_model": 0.85, "numpy": 2.0, "tvm": 1.5, "load_file": 1.5, "cold": 1.0}
SAVE_GOALS = {"safetensors.numpy.save_file": 0.9, "safetensors.numpy.save_file + fsync": 1.0}
RSS_GOAL = 1.15
SLICE_GOAL = 0.02
#: "Nothing regresses": ratios of the previous report (2026-11-30, medians of 5 interleaved
#: runs, fixed order), which enctensor's wins must keep.
BEFORE = {
    ("load_model", "small"): 1.36,
    ("cryptotensors", "large"): 0.60,
    ("cryptotensors", "small"): 1.55,
    ("tensorizer", "large"): 1.54,
    ("tensorizer", "small"): 11.70,
}


# --------------------------------------------------------------------------------------------
# files and peers


def jwk_keys() -> tuple[dict[str, str], dict[str, str]]:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
    d = sk.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
    x = sk.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "bench-enc", "k": b64(KEY)}
    sig = {"kty": "okp", "alg": "ed25519", "kid": "bench-sign", "d": b64(d), "x": b64(x)}
    return enc, sig


class Peers:
    """The optional encrypted peers; records why one cannot run."""

    def __init__(self) -> None:
        self.why: dict[str, str] = {}
        self.ct = self.tz = None
        try:
            import cryptotensors
            import cryptotensors.numpy

            enc, sig = jwk_keys()
            cryptotensors.register_direct_key_provider(keys=[enc, sig])  # type: ignore[attr-defined]
            self.ct = cryptotensors
            self.ct_config = {"enc_key": enc, "sign_key": sig}
        except Exception as e:  # noqa: BLE001
            self.why["cryptotensors"] = f"{type(e).__name__}: {e}"
        try:
            from tensorizer import TensorDeserializer, TensorSerializer
            from tensorizer.serialization import DecryptionParams, EncryptionParams

            EncryptionParams(KEY)  # needs libsodium
            self.tz = (TensorSerializer, TensorDeserializer, EncryptionParams, DecryptionParams)
        except Exception as e:  # noqa: BLE001
            self.why["tensorizer"] = f"{type(e).__name__}: {e}"


def write_files(tensors: dict[str, np.ndarray], d: Path, peers: Peers) -> dict[str, Path]:
    import safetensors.numpy
    import torch
    import tvm.runtime

    import enctensor

    p = {
        "st": d / "m.safetensors",
        "enc": d / "m.enct",
        "ct": d / "m.crypto.safetensors",
        "tz": d / "m.tensors",
        "tvm": d / "m.params",
    }
    safetensors.numpy.save_file(tensors, str(p["st"]))
    enctensor.save(tensors, p["enc"], key=KEY)
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
            fsync_path(f)
    return {k: v for k, v in p.items() if v.exists()}


def bag_module(shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """A torch module whose state_dict names are the tensors' names; its parameters are
    allocated by torch and every page of them touched (an existing model)."""
    import torch

    m = torch.nn.Module()
    for k, shape in shapes.items():
        m.register_parameter(k, torch.nn.Parameter(torch.zeros(shape), requires_grad=False))
    return m


def one_pass_possible(path: Path) -> str:
    """Whether this process may take the read lease one-pass reads need on ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return "yes (read lease granted)"
    except OSError as e:
        return f"no: read lease refused ({e.strerror}); both read modes measure the two-pass path"
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# load groups


@dataclass
class Case:
    fn: Callable[[], object]
    file: Path  # warmed or dropped before each run
    kind: str  # "enctensor", "peer" or "ceiling" (chart colours)


@dataclass
class Group:
    key: str
    title: str
    ours: str
    peer: str
    ceiling: str
    cases: dict[str, Case] = field(default_factory=dict)


def read_mode(mode: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the core's read path set: "onepass" (out of the map) or "copy" (two passes)."""
    from enctensor import _core

    def run() -> object:
        _core._set_read_mode(mode)
        return fn()

    return run


def load_groups(files: dict[str, Path], model: torch.nn.Module, peers: Peers) -> list[Group]:
    import safetensors.numpy
    import safetensors.torch
    import torch
    import tvm.runtime

    import enctensor
    import enctensor.torch as et
    import enctensor.tvm as ev
    from enctensor import _alloc

    st, enc, tvmf = files["st"], files["enc"], files["tvm"]
    regions = safetensors_regions(st)
    sizes = [n for _, _, n in regions]
    params = dict(model.named_parameters())
    model_bytes = [params[name].detach().numpy().view(np.uint8).reshape(-1) for name, _, _ in regions]

    def copy_into(dsts: Callable[[], list[np.ndarray]], threads: int) -> Callable[[], object]:
        def run() -> object:
            out = dsts()
            copy_from_file(st, regions, out, threads)
            return out

        return run

    def ours(fn: Callable[[], object]) -> Case:
        return Case(read_mode("onepass", fn), enc, "enctensor")

    def two_pass(fn: Callable[[], object]) -> Case:
        return Case(read_mode("copy", fn), enc, "enctensor")

    def peer(fn: Callable[[], object], f: Path = st) -> Case:
        return Case(fn, f, "peer")

    def ceiling(fn: Callable[[], object]) -> Case:
        return Case(fn, st, "ceiling")

    lm = Group(
        "load_model",
        "into an existing model",
        "enctensor.torch.load_model",
        "safetensors.torch.load_model",
        f"copy map → model, {THREADS} threads, no crypto",
    )
    lm.cases = {
        lm.ours: ours(lambda: et.load_model(model, enc, key=KEY)),
        "enctensor.torch.load_model, two passes": two_pass(lambda: et.load_model(model, enc, key=KEY)),
        lm.peer: peer(lambda: safetensors.torch.load_model(model, str(st))),
        lm.ceiling: ceiling(copy_into(lambda: model_bytes, THREADS)),
        "copy map → model, 1 thread, no crypto": ceiling(copy_into(lambda: model_bytes, 1)),
    }
    npg = Group(
        "numpy",
        "fresh numpy arrays",
        "enctensor.load",
        "safetensors.numpy.load_file",
        f"copy map → fresh arrays ({_alloc.pages()} pages), {THREADS} threads, no crypto",
    )
    npg.cases = {
        npg.ours: ours(lambda: enctensor.load(enc, key=KEY)),
        "enctensor.load, two passes": two_pass(lambda: enctensor.load(enc, key=KEY)),
        npg.peer: peer(lambda: safetensors.numpy.load_file(str(st))),
    }
    if "ct" in files and peers.ct is not None and "cryptotensors" not in peers.why:
        ct = peers.ct
        npg.cases["cryptotensors.numpy.load_file"] = peer(
            lambda: ct.numpy.load_file(str(files["ct"])), files["ct"]
        )
    npg.cases[npg.ceiling] = ceiling(copy_into(lambda: _alloc.destinations(sizes), THREADS))

    tg = Group(
        "tvm",
        "fresh TVM tensors",
        "enctensor.tvm.load",
        "tvm.runtime.load_param_dict_from_file",
        f"copy map → fresh tvm.runtime.empty, {THREADS} threads, no crypto",
    )
    tg.cases = {
        tg.ours: ours(lambda: ev.load(enc, key=KEY)),
        tg.peer: peer(lambda: tvm.runtime.load_param_dict_from_file(str(tvmf)), tvmf),
        tg.ceiling: ceiling(
            copy_into(lambda: [np.from_dlpack(tvm.runtime.empty((n,), "uint8")) for n in sizes], THREADS)
        ),
    }

    lf = Group(
        "load_file",
        "fresh torch tensors",
        "enctensor.torch.load_file",
        "safetensors.torch.load_file + clone",
        f"copy map → fresh torch.empty, {THREADS} threads, no crypto",
    )
    lf.cases = {
        lf.ours: ours(lambda: et.load_file(enc, key=KEY)),
        lf.peer: peer(lambda: {k: v.clone() for k, v in safetensors.torch.load_file(str(st)).items()}),
    }
    if "tz" in files and peers.tz is not None and "tensorizer" not in peers.why:
        _, deser, _, decp = peers.tz

        def tz_load() -> object:
            d = deser(str(files["tz"]), device="cpu", encryption=decp.from_key(KEY), lazy_load=False)
            out = dict(d)
            d.close()
            return out

        lf.cases["tensorizer (encrypted)"] = peer(tz_load, files["tz"])
    lf.cases[lf.ceiling] = ceiling(
        copy_into(lambda: [torch.empty(n, dtype=torch.uint8).numpy() for n in sizes], THREADS)
    )
    return [lm, npg, tg, lf]


def check_results(groups: list[Group], tensors: dict[str, np.ndarray], peers: Peers) -> None:
    """Every loader returns the saved bytes before anything is timed; a failing peer is dropped."""
    first = next(iter(tensors))
    for g in groups:
        for name, case in list(g.cases.items()):
            if case.kind == "ceiling" or g.key == "load_model":
                continue
            try:
                v = case.fn()[first]  # type: ignore[index]
                v = v.detach() if hasattr(v, "detach") else v  # torch
                v = v.numpy() if hasattr(v, "numpy") else v  # torch, TVM
                if not np.array_equal(np.asarray(v), tensors[first]):
                    raise AssertionError(f"{name} returned different bytes")
            except Exception as e:
                if case.kind != "peer":
                    raise
                peers.why[name.split(".")[0].split(" ")[0]] = f"load failed: {type(e).__name__}: {e}"
                del g.cases[name]


def measure_groups(groups: list[Group], n: int, cold: bool) -> dict[str, dict[str, list[float]]]:
    """Each group in its own rounds; before each run its file is dropped (cold) or read (warm)."""
    out = {}
    for g in groups:
        files = {name: c.file for name, c in g.cases.items()}

        def prepare(name: str, files: dict[str, Path] = files) -> None:
            (drop if cold else warm)(files[name])

        out[g.key] = rounds({name: c.fn for name, c in g.cases.items()}, n, prepare, warmup=not cold)
    return out


# --------------------------------------------------------------------------------------------
# saving


@dataclass
class Saves:
    cases: dict[str, Callable[[], object]]
    #: Seconds of each phase of the cases that time their phases, per call.
    phases: dict[str, dict[str, list[float]]]
    #: Cases writing a new file: their target is removed (untimed) before each run.
    fresh: dict[str, Path]


SAVE_PEER = "safetensors.numpy.save_file"
SAVE_PEER_FSYNC = "safetensors.numpy.save_file + fsync"
#: The same work as enctensor.save without crypto: a plain write of the tensor bytes to a
#: temporary file, fsync, rename over the target, fsync of the directory.
SAVE_CEILING = "write the plaintext + fsync + rename, no crypto"
#: What safetensors.numpy.save_file does (a temporary file renamed over the target, no
#: fsync), without serialisation.
SAVE_CEILING_NO_FSYNC = "write the plaintext + rename, no crypto"
PHASES = ("write", "fsync", "rename", "directory fsync")


def save_cases(tensors: dict[str, np.ndarray], d: Path, detail: bool) -> Saves:
    """Every case replaces a file of the same size (as a training loop saving a checkpoint
    does) unless its name says "new file". safetensors 0.8's save_file writes a temporary file
    and renames it over the target, without fsync; on ext4 that rename starts writeback of the
    new file (auto_da_alloc), and it frees the replaced file's blocks and cached pages."""
    import safetensors.numpy

    import enctensor

    phases: dict[str, dict[str, list[float]]] = {}

    def timer(case: str) -> Callable[[str], None]:
        t = [time.perf_counter()]

        def lap(what: str) -> None:
            now = time.perf_counter()
            phases.setdefault(case, {}).setdefault(what, []).append(now - t[0])
            t[0] = now

        return lap

    def plain_write(path: Path) -> None:
        with open(path, "wb") as f:
            f.writelines(v.data.cast("B") for v in tensors.values())

    def plain(case: str, target: Path, durable: bool) -> Callable[[], None]:
        def run() -> None:
            lap = timer(case)
            tmp = target.with_name(f".{target.name}.tmp")
            plain_write(tmp)
            lap("write")
            if durable:
                fsync_path(tmp)
                lap("fsync")
            os.rename(tmp, target)
            lap("rename")
            if durable:
                fsync_path(target.parent)
                lap("directory fsync")

        return run

    def st_fsync(case: str, target: Path) -> Callable[[], None]:
        def run() -> None:
            lap = timer(case)
            safetensors.numpy.save_file(tensors, str(target))
            lap("write")  # write + rename, in safetensors
            fsync_path(target)
            lap("fsync")

        return run

    cases: dict[str, Callable[[], object]] = {
        "enctensor.save": lambda: enctensor.save(tensors, d / "e.enct", key=KEY),
        SAVE_PEER: lambda: safetensors.numpy.save_file(tensors, str(d / "s.safetensors")),
        SAVE_PEER_FSYNC: st_fsync(SAVE_PEER_FSYNC, d / "sf.safetensors"),
        SAVE_CEILING: plain(SAVE_CEILING, d / "pd.bin", durable=True),
        SAVE_CEILING_NO_FSYNC: plain(SAVE_CEILING_NO_FSYNC, d / "p.bin", durable=False),
    }
    fresh: dict[str, Path] = {}
    if detail:
        new = {
            "enctensor.save, new file": (d / "en.enct", lambda p: enctensor.save(tensors, p, key=KEY)),
            "safetensors.numpy.save_file, new file": (
                d / "sn.safetensors",
                lambda p: safetensors.numpy.save_file(tensors, str(p)),
            ),
            "write the plaintext + fsync + rename, no crypto, new file": (d / "pn.bin", None),
        }
        for name, (target, fn) in new.items():
            fresh[name] = target
            cases[name] = plain(name, target, durable=True) if fn is None else functools.partial(fn, target)
        cases["enctensor.save_bytes (no file)"] = lambda: enctensor.save_bytes(tensors, key=KEY)
        cases["safetensors.numpy.save (bytes, no file)"] = lambda: safetensors.numpy.save(tensors)
    return Saves(cases, phases, fresh)


def measure_saves(saves: Saves, n: int) -> dict[str, list[float]]:
    def prepare(name: str) -> None:
        if name in saves.fresh:
            saves.fresh[name].unlink(missing_ok=True)
        # Each save starts with no dirty pages of the previous one: otherwise a save without
        # fsync leaves its gigabyte to the disk while the next case runs.
        os.sync()

    times = rounds(saves.cases, n, prepare)
    for per in saves.phases.values():  # drop the warm-up call's phases
        for k in per:
            per[k] = per[k][-n:]
    return times


# --------------------------------------------------------------------------------------------
# get_slice


def measure_slice(
    files: dict[str, Path], tensors: dict[str, np.ndarray], n: int
) -> tuple[str, dict[str, float]]:
    import safetensors

    import enctensor

    name = max(tensors, key=lambda k: tensors[k].nbytes)
    rows = tensors[name].shape[0]
    k = max(1, rows // 100)
    # One open handle each: the file is mapped and the key unwrapped once, outside the timing.
    ef = enctensor.safe_open(files["enc"], key=KEY)
    sf = safetensors.safe_open(str(files["st"]), framework="np")

    def enc_open_slice() -> object:
        with enctensor.safe_open(files["enc"], key=KEY) as f:
            return f.get_slice(name)[:k]

    fns: dict[str, tuple[Callable[[], object], int]] = {
        "enctensor full": (lambda: ef.get_tensor(name), 3),
        "enctensor slice": (lambda: ef.get_slice(name)[:k], 50),
        "safetensors full": (lambda: sf.get_tensor(name), 3),  # type: ignore[no-untyped-call]
        "safetensors slice": (lambda: sf.get_slice(name)[:k], 50),  # type: ignore[no-untyped-call]
        "enctensor open + slice": (enc_open_slice, 50),
    }
    assert np.array_equal(fns["enctensor slice"][0](), tensors[name][:k])  # type: ignore[arg-type]

    # A slice takes well under a millisecond: each run times a batch of calls (the gc.collect
    # before a single call would evict the caches and measure that instead).
    def batch(fn: Callable[[], object], m: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(m):
                fn()

        return run

    times = rounds({x: batch(fn, m) for x, (fn, m) in fns.items()}, n, lambda _: warm(files["enc"]))
    ef.close()
    per_call = {x: median(times[x]) / fns[x][1] for x in fns}
    return f"{name} {tuple(tensors[name].shape)}, rows [:{k}] = {k / rows:.2%}", per_call


# --------------------------------------------------------------------------------------------
# peak RSS, in fresh processes sampled from outside (a sampler thread inside would wait for
# the GIL while a Python loader holds it)


RSS_MODES = {
    "enctensor.load": "enc",
    "enctensor.torch.load_file": "enc",
    "enctensor.tvm.load": "enc",
    "enctensor.torch.load_model": "enc",
    "safetensors.numpy.load_file": "st",
    "safetensors.torch.load_file + clone": "st",
    "tvm.runtime.load_param_dict_from_file": "tvm",
}


def child_rss(mode: str, path: str, st: str) -> None:
    """Sets up, says "ready", loads on "go", says "done", and exits on the next line. Imports
    only what ``mode`` needs (a load must not be charged for the others' imports, and quick
    runs start faster)."""
    fn: Callable[[], object]
    if mode == "enctensor.load":
        import enctensor

        fn = lambda: enctensor.load(path, key=KEY)
    elif mode == "enctensor.torch.load_file":
        import enctensor.torch as et

        fn = lambda: et.load_file(path, key=KEY)
    elif mode == "enctensor.tvm.load":
        import enctensor.tvm as ev

        fn = lambda: ev.load(path, key=KEY)
    elif mode == "enctensor.torch.load_model":
        import enctensor.torch as et

        _, header = safetensors_header(Path(st))
        model = bag_module({k: tuple(v["shape"]) for k, v in header.items()})
        fn = lambda: et.load_model(model, path, key=KEY)
    elif mode == "safetensors.numpy.load_file":
        import safetensors.numpy

        fn = lambda: safetensors.numpy.load_file(path)
    elif mode == "safetensors.torch.load_file + clone":
        import safetensors.torch

        fn = lambda: {k: v.clone() for k, v in safetensors.torch.load_file(path).items()}
    else:
        import tvm.runtime

        fn = lambda: tvm.runtime.load_param_dict_from_file(path)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    print("ready", flush=True)
    sys.stdin.readline()
    out = fn()
    print("done", flush=True)
    sys.stdin.readline()
    del out


def measure_rss(mode: str, files: dict[str, Path]) -> dict[str, int]:
    """KiB: the load's peak growth of RssAnon and of RssFile over the state before it, and of
    VmHWM (all resident memory), in a fresh process."""
    path = files[RSS_MODES[mode]]
    warm(path)
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(
            [sys.executable, __file__, "--child-rss", mode, str(path), str(files["st"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert p.stdin is not None and p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            p.wait()
            err.seek(0)
            raise RuntimeError(f"RSS child for {mode} failed: {err.read()[-2000:]}")
        base = status_kib(p.pid)
        done = threading.Event()
        stdout = p.stdout

        def wait_done() -> None:
            stdout.readline()
            done.set()

        reader = threading.Thread(target=wait_done)
        reader.start()
        p.stdin.write("go\n")
        p.stdin.flush()
        anon = file = 0
        while not done.is_set():
            s = status_kib(p.pid)
            anon, file = max(anon, s["RssAnon"]), max(file, s["RssFile"])
            time.sleep(0.0002)
        reader.join()
        end = status_kib(p.pid)
        p.stdin.write("exit\n")
        p.stdin.flush()
        if p.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"RSS child for {mode} failed: {err.read()[-2000:]}")
    return {
        "anon": max(anon, end["RssAnon"]) - base["RssAnon"],
        "file": max(file, end["RssFile"]) - base["RssFile"],
        "hwm": end["VmHWM"] - base["VmRSS"],
    }


# --------------------------------------------------------------------------------------------
# this machine


def measure_machine(nbytes: int, n: int, d: Path) -> list[tuple[str, float]]:
    """First touch of fresh memory (4 KiB and huge pages, 1 and all threads, and pre-faulting
    with MADV_POPULATE_WRITE), and the disk's O_DIRECT write speed."""
    import mmap

    from enctensor import _alloc

    def touch(how: str, threads: int) -> Callable[[], object]:
        def run() -> object:
            a = _alloc.aligned_empty(nbytes)
            parallel(touch_pieces([a]), threads)
            return a

        return with_pages(how, run)

    cases: dict[str, Callable[[], object]] = {
        "first touch, 4 KiB pages, 1 thread": touch("small", 1),
        f"first touch, 4 KiB pages, {THREADS} threads": touch("small", THREADS),
        "first touch, huge pages advised (numpy), 1 thread": touch("huge", 1),
        f"first touch, huge pages advised (numpy), {THREADS} threads": touch("huge", THREADS),
        f"MADV_POPULATE_WRITE, 4 KiB pages, {THREADS} threads": with_pages(
            "populate", lambda: _alloc.aligned_empty(nbytes)
        ),
    }
    times = rounds(cases, n)
    out = [(k, gbps(nbytes, median(v))) for k, v in times.items()]
    path = d / "odirect.bin"
    size = min(nbytes, 256 * MIB)
    buf = mmap.mmap(-1, 16 * MIB)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    except OSError:
        return out
    t0 = time.perf_counter()
    for _ in range(size // len(buf)):
        os.write(fd, buf)
    os.fsync(fd)
    out.append((f"disk write, O_DIRECT + fsync ({size >> 20} MiB)", gbps(size, time.perf_counter() - t0)))
    os.close(fd)
    path.unlink()
    return out


# --------------------------------------------------------------------------------------------
# report


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str, str, str]] = []

    def add(self, s: str = "") -> None:
        self.lines.append(s)
        print(s, flush=True)

    def target(
        self,
        what: str,
        measured: float,
        goal: float,
        higher: bool = True,
        ceiling: str = "",
        fmt: str = "{:.2f}x",
    ) -> None:
        ok = measured >= goal if higher else measured <= goal
        self.targets.append(
            (
                what,
                fmt.format(measured),
                f"{'≥' if higher else '≤'} {goal:g}",
                "**met**" if ok else "**not met**",
                ceiling,
            )
        )

    def missing(self, what: str, why: str, goal: str) -> None:
        self.targets.append((what, "—", goal, f"**cannot run**: {why}", ""))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for r in rows:
            self.add("| " + " | ".join(r) + " |")
        self.add()


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def group_rows(g: Group, times: dict[str, list[float]], nbytes: int) -> list[list[str]]:
    rows = []
    for name in g.cases:
        t = median(times[name])
        rows.append(
            [
                f"`{name}`" if g.cases[name].kind != "ceiling" else name,
                f"{t:.4f}",
                f"{gbps(nbytes, t):.2f}",
                f"{ratio(times, g.peer, name):.2f}x",
            ]
        )
    return rows


def ceiling_note(times: dict[str, list[float]], g: Group) -> str:
    """The no-crypto copy against the peer, and enctensor against the no-crypto copy."""
    return (
        f"{g.ceiling}: {ratio(times, g.peer, g.ceiling):.2f}x the peer; "
        f"enctensor at {ratio(times, g.ceiling, g.ours):.0%} of it"
    )


def draw_chart(chart: dict[str, tuple[float, str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(chart)[::-1]
    colors = {"enctensor": "tab:blue", "peer": "tab:orange", "ceiling": "tab:gray"}
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(names) + 1.6))
    ax.barh(names, [chart[n][0] for n in names], color=[colors[chart[n][1]] for n in names])
    for i, n in enumerate(names):
        ax.text(chart[n][0], i, f" {chart[n][0]:.2f}", va="center", fontsize=8)
    ax.set_xlabel("GB/s (higher is better)")
    ax.set_title(
        f"{title}\nblue: enctensor, orange: peers, gray: the same bytes copied without crypto", fontsize=10
    )
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# main


def report_loads(
    rep: Report, groups: list[Group], desc: str, nbytes: int, n_rounds: int, temps: list[bool], big: bool
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Measures the load groups warm (and cold), reports them, and adds their targets."""
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    for cold in temps:
        which = "cold" if cold else "warm"
        res[which] = measure_groups(groups, n_rounds, cold)
        rep.add(f"### Loading {desc}, page cache {which} ({nbytes / MIB:.0f} MiB, {n_rounds} rounds)")
        rep.add()
        for g in groups:
            rep.add(f"{g.key}: {g.title}; ratio = speed / `{g.peer}`'s, median of the per-round ratios")
            rep.add()
            rep.table(["case", "median s", "GB/s", "x peer"], group_rows(g, res[which][g.key], nbytes))
        passes = [
            f"`{g.ours}` {ratio(res[which][g.key], f'{g.ours}, two passes', g.ours):.2f}x"
            for g in groups
            if f"{g.ours}, two passes" in g.cases
        ]
        rep.add(
            f"One pass out of the map / two passes (pread, decrypt in place), speed: {', '.join(passes)}."
        )
        rep.add()
    for g in groups:
        w = res["warm"][g.key]
        if big:
            rep.target(
                f"`{g.ours}` / `{g.peer}`, {desc}, warm",
                ratio(w, g.peer, g.ours),
                GOALS[g.key],
                ceiling=ceiling_note(w, g),
            )
        elif g.key == "load_model":
            rep.target(
                f"`{g.ours}` / `{g.peer}`, {desc}, warm (was {BEFORE[('load_model', 'small')]:.2f}x)",
                ratio(w, g.peer, g.ours),
                1.0,
                ceiling=ceiling_note(w, g),
            )
        if "cold" in res and big:
            c = res["cold"][g.key]
            rep.target(
                f"`{g.ours}` / `{g.peer}`, {desc}, cold",
                ratio(c, g.peer, g.ours),
                GOALS["cold"],
                ceiling=ceiling_note(c, g),
            )
        for encrypted in ("cryptotensors.numpy.load_file", "tensorizer (encrypted)"):
            if encrypted in g.cases:
                before = BEFORE[(encrypted.split(".")[0].split(" ")[0], "large" if big else "small")]
                rep.target(
                    f"`{g.ours}` / `{encrypted}`, {desc}, warm (no regression)",
                    ratio(w, encrypted, g.ours),
                    before,
                )
    return res


def run_set(
    rep: Report,
    tag: str,
    desc: str,
    tensors: dict[str, np.ndarray],
    d: Path,
    peers: Peers,
    args: argparse.Namespace,
    largest: bool,
) -> tuple[dict[str, dict[str, dict[str, list[float]]]], dict[str, dict[str, str]]]:
    """Loads (warm, cold), saves, and for the largest set RSS and slices; adds the targets.
    Returns the load times (temperature -> group -> case -> seconds) and each case's kind."""
    nbytes = sum(v.nbytes for v in tensors.values())
    files = write_files(tensors, d, peers)
    model = bag_module({k: v.shape for k, v in tensors.items()})
    groups = load_groups(files, model, peers)
    check_results(groups, tensors, peers)
    big = tag != "small"
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    if "load" not in args.skip:
        temps = [False] if "cold" in args.skip or (args.quick and not big) else [False, True]
        res = report_loads(rep, groups, desc, nbytes, args.rounds, temps, big)
    for peer, why in peers.why.items():
        rep.missing(f"{peer}, {desc}", why, "no regression")

    if "save" not in args.skip:
        saves = save_cases(tensors, d, detail=largest)
        st = measure_saves(saves, args.rounds)
        rep.add(f"### Saving {desc} ({args.rounds} rounds; `os.sync()` before each save, untimed)")
        rep.add()
        rows = [
            [
                f"`{k}`",
                f"{median(v):.3f}",
                f"{gbps(nbytes, median(v)):.2f}",
                f"{ratio(st, k, 'enctensor.save'):.2f}x",
            ]
            for k, v in st.items()
        ]
        rep.table(
            ["writer", "median s", "GB/s", "`enctensor.save` speed / this (median of per-round ratios)"], rows
        )
        if saves.phases:
            rep.add(
                "Where the time goes (median seconds of each phase; safetensors' write includes its rename):"
            )
            rep.add()
            rep.table(
                ["case", *PHASES],
                [
                    [k, *(f"{median(v[p]):.3f}" if p in v else "" for p in PHASES)]
                    for k, v in saves.phases.items()
                ],
            )
        for peer, ceil in (
            ((SAVE_PEER, SAVE_CEILING_NO_FSYNC), (SAVE_PEER_FSYNC, SAVE_CEILING)) if big else ()
        ):
            note = (
                f"{ceil}: {ratio(st, peer, ceil):.2f}x the peer; "
                f"enctensor at {ratio(st, SAVE_CEILING, 'enctensor.save'):.0%} of the same work without crypto"
            )
            rep.target(
                f"`enctensor.save` / `{peer}`, {desc}",
                ratio(st, peer, "enctensor.save"),
                SAVE_GOALS[peer],
                ceiling=note,
            )
        if "enctensor.save, new file" in st and big:
            rep.target(
                f"`enctensor.save` / `{SAVE_PEER}`, both to a new file, {desc}",
                ratio(st, "safetensors.numpy.save_file, new file", "enctensor.save, new file"),
                SAVE_GOALS[SAVE_PEER],
                ceiling=f"write the plaintext + fsync + rename, no crypto, new file: "
                f"{ratio(st, 'safetensors.numpy.save_file, new file', 'write the plaintext + fsync + rename, no crypto, new file'):.2f}x the peer",
            )

    if largest and "rss" not in args.skip:
        rep.add(
            f"### Peak RSS growth during one load, {desc} (fresh process, page cache warm, sampled from outside)"
        )
        rep.add()
        rows = []
        modes = list(RSS_MODES) if not args.quick else ["enctensor.load", "safetensors.numpy.load_file"]
        for mode in modes:
            r = measure_rss(mode, files)
            rows.append(
                [
                    f"`{mode}`",
                    f"{r['anon'] / 1024:.0f} MiB",
                    f"{r['anon'] * 1024 / nbytes:.3f}",
                    f"{r['file'] / 1024:.0f} MiB",
                    f"{r['hwm'] / 1024:.0f} MiB",
                ]
            )
            if mode.startswith("enctensor"):
                rep.target(
                    f"peak anonymous RSS growth / tensor bytes, `{mode}`, {desc}",
                    r["anon"] * 1024 / nbytes,
                    RSS_GOAL,
                    higher=False,
                    fmt="{:.3f}",
                )
        rep.table(
            [
                "loader",
                "RssAnon growth",
                "/ tensor bytes",
                "RssFile growth (page cache mapped)",
                "VmHWM growth (all)",
            ],
            rows,
        )

    if largest and big and "slice" not in args.skip:
        desc_sl, m = measure_slice(files, tensors, args.rounds)
        rep.add(f"### get_slice of 1 %: {desc_sl}")
        rep.add()
        rep.add(
            "Seconds per call, timed over batches (50 slices, 3 full loads), in rounds of alternating order."
        )
        rep.add()
        rows = []
        for lib in ("enctensor", "safetensors"):
            rows.append([f"`{lib}` full `get_tensor`", f"{m[lib + ' full']:.5f}", ""])
            rows.append(
                [
                    f"`{lib}` `get_slice(...)[:k]`",
                    f"{m[lib + ' slice']:.5f}",
                    f"{m[lib + ' slice'] / m[lib + ' full']:.2%}",
                ]
            )
        rows.append(
            [
                "`enctensor` `safe_open` + `get_slice(...)[:k]`",
                f"{m['enctensor open + slice']:.5f}",
                f"{m['enctensor open + slice'] / m['enctensor full']:.2%}",
            ]
        )
        rep.table(["case", "s", "slice / full"], rows)
        rep.target(
            f"get_slice 1 % / full tensor load (enctensor), {desc}",
            m["enctensor slice"] / m["enctensor full"],
            SLICE_GOAL,
            higher=False,
            fmt="{:.4f}",
        )

    kinds = {g.key: {name: c.kind for name, c in g.cases.items()} for g in groups}
    del model, groups
    for f in files.values():
        f.unlink(missing_ok=True)
    return res, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--gib", type=float, default=1.0, help="the largest set (default 1 GiB; also measured: half of it)"
    )
    ap.add_argument("--small", type=int, default=2000, help="number of 64 KiB tensors (default 2000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per group (default 11)")
    ap.add_argument(
        "--quick", action="store_true", help="64 MiB and 200 x 64 KiB, 3 rounds: a smoke test (~15 s)"
    )
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: cold, save, rss, slice, small, machine, load",
    )
    ap.add_argument("--out", default=None, help="markdown file to write below its results marker")
    ap.add_argument("--chart", default=None, help="PNG bar chart to write")
    ap.add_argument("--dir", default=None, help="where to put the files (default: system temp dir)")
    ap.add_argument("--child-rss", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss:
        child_rss(*args.child_rss)
        return
    args.skip = set(filter(None, args.skip.split(",")))
    sizes = [args.gib / 2, args.gib]
    if args.quick:
        sizes, args.small, args.rounds = [min(args.gib, 1 / 16)], min(args.small, 200), args.rounds or 3
    args.rounds = args.rounds or 11
    t_start, load_start = time.time(), loadavg()

    import safetensors
    import torch
    import tvm

    import enctensor
    from enctensor import _alloc

    peers = Peers()
    freeze_imports()
    rep = Report()
    rep.add(f"## Results ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    rep.add()
    rep.add(
        f"- CPU: {cpu_model()}, {os.cpu_count()} threads; RAM {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"{platform.system()} {platform.release()}; THP {Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text().strip()}"
    )
    rep.add(
        f"- Python {platform.python_version()}; enctensor {enctensor.__version__}; numpy {np.__version__}; "
        f"torch {torch.__version__}; tvm {tvm.__version__}; safetensors {safetensors.__version__}; "
        f"cryptotensors {version('cryptotensors')}; tensorizer {version('tensorizer')}"
    )
    tmp = tempfile.TemporaryDirectory(prefix="enct-run-", dir=args.dir)
    d = Path(tmp.name)
    probe = d / "probe"
    probe.write_bytes(b"x")
    rep.add(
        f"- Command: `python benches/run.py {' '.join(sys.argv[1:])}`; {args.rounds} rounds per group, order "
        f"reversed every other round; load average at start {load_start}; one-pass reads: "
        f"{one_pass_possible(probe)}; destinations: ENCTENSOR_PAGES={_alloc.pages()}"
    )
    rep.add()
    if "machine" not in args.skip:
        rep.add(f"### This machine ({int(sizes[-1] * 1024)} MiB, {args.rounds} rounds)")
        rep.add()
        rep.table(
            ["what", "GB/s"],
            [[k, f"{v:.2f}"] for k, v in measure_machine(int(sizes[-1] * (1 << 30)), args.rounds, d)],
        )

    sets = [
        (f"{s * 1024:g}mib", f"{s * 1024:g} MiB (16 float32 tensors)", 16, int(s * (1 << 30)) // 16)
        for s in sizes
    ]
    if "small" not in args.skip:
        sets.append(("small", f"{args.small} x 64 KiB", args.small, 64 << 10))
    largest = sets[len(sizes) - 1][0]
    chart: dict[str, tuple[float, str]] = {}
    chart_title = ""
    for tag, desc, n, each in sets:
        tensors = make_tensors(n, each)
        sd = d / tag
        sd.mkdir()
        # RSS, slices and the save breakdown: on the largest set and the small tensors (a quick
        # run: the largest set only).
        detail = tag == largest or (tag == "small" and not args.quick)
        res, kinds = run_set(rep, tag, desc, tensors, sd, peers, args, largest=detail)
        if tag == largest and res:
            nbytes = sum(v.nbytes for v in tensors.values())
            chart_title = f"Loading {desc}, page cache warm"
            for g, per in res["warm"].items():
                for name, t in per.items():
                    chart[name] = (gbps(nbytes, median(t)), kinds[g][name])
        del tensors

    rep.add("### Targets (issue 12)")
    rep.add()
    rep.add(
        "Ratios are speed / the peer's speed, medians of the per-round ratios. The last column is this machine's "
        "ceiling for the path, measured in the same rounds: the same bytes moved without crypto."
    )
    rep.add()
    rep.table(
        ["target", "measured", "goal", "verdict", "ceiling (no crypto) and how close enctensor is"],
        [list(t) for t in rep.targets],
    )
    met = sum("**met**" in t[3] for t in rep.targets)
    rep.add(
        f"{met} of {len(rep.targets)} met. Load average at start {load_start}, at end {loadavg()}; wall time {time.time() - t_start:.0f} s."
    )
    busiest = max(float(load_start.split()[0]), os.getloadavg()[0])
    if busiest >= 1.5:
        rep.add()
        rep.add(
            f"**Noisy run**: the 1-minute load average reached {busiest:.2f} at the start or end of this run on "
            f"{os.cpu_count()} CPUs (other work was running); treat the figures, the 2-thread ones above all, as lower bounds."
        )
    if args.out:
        out = Path(args.out)
        intro = out.read_text().split(MARKER)[0] if out.exists() else "# Benchmarks\n\n"
        out.write_text(intro.rstrip() + "\n\n" + MARKER + "\n\n" + "\n".join(rep.lines) + "\n")
    if args.chart and chart:
        draw_chart(chart, chart_title, Path(args.chart))
    tmp.cleanup()


if __name__ == "__main__":
    main()
