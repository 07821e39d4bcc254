"""Concurrency, and files that change underneath an open handle.

- Many threads on one ``safe_open`` handle, many handles on one file, and many writers racing
  on one path all give exactly the right bytes.
- A file replaced by rename while open keeps serving the old contents.
- A file truncated under an open handle raises ``FormatError`` (the SIGBUS guard turns the
  fault into zero pages and a typed error) for ``get_tensor``, ``get_slice`` and ``load``. These
  run in a subprocess, so that a SIGBUS shows as a signal exit instead of killing pytest.
- A file overwritten in place (same length) while open raises ``IntegrityError``, never
  returns garbage.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_DTYPES, KEY, same, sample_array

import enctensor
from enctensor import IntegrityError


def mixed_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Every dtype, multi-chunk tensors (4 KiB chunks), a clear one, an empty and a 0-d one."""
    out = {f"t{i}": sample_array(d, (97, 61), seed + i) for i, d in enumerate(ALL_DTYPES)}
    out["long"] = sample_array(np.float32, (50_000,), seed + 100)
    out["clear"] = sample_array(np.int16, (3000,), seed + 101)
    out["empty"] = np.zeros((0, 5), dtype=np.uint8)
    out["scalar"] = np.array(seed, dtype=np.int64)
    return out


def save_mixed(path: Path, seed: int = 0, key: bytes = KEY) -> dict[str, np.ndarray]:
    tensors = mixed_tensors(seed)
    enctensor.save(tensors, path, key=key, chunk_size=4096, plaintext=["clear"])
    return tensors


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """Runs ``work(i)`` on ``n`` threads started together; re-raises the first failure (a
    Rust panic, ``PanicException``, included)."""
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        barrier.wait(timeout=60)
        work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(body, i) for i in range(n)]
        for f in futures:
            f.result(timeout=300)


def random_index(rng: random.Random, shape: tuple[int, ...]) -> tuple[slice | int, ...]:
    out: list[slice | int] = []
    for n in shape:
        if n and rng.random() < 0.3:
            out.append(rng.randrange(-n, n))
        else:
            a, b = sorted(rng.randrange(n + 1) for _ in range(2))
            out.append(slice(a, b, rng.choice([1, 1, 2, 3, -1])))
    return tuple(out)


def test_many_threads_on_one_handle(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    tensors = save_mixed(path)
    names = list(tensors)
    with enctensor.safe_open(path, key=KEY) as f:

        def work(i: int) -> None:
            rng = random.Random(i)
            for _ in range(60):
                name = rng.choice(names)
                arr = tensors[name]
                if rng.random() < 0.5:
                    assert same(f.get_tensor(name), arr), name
                else:
                    idx = random_index(rng, arr.shape)
                    got = np.ascontiguousarray(f.get_slice(name)[idx])
                    assert same(got, np.ascontiguousarray(arr[idx])), (name, idx)

        run_threads(8, work)


def test_many_handles_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    tensors = save_mixed(path, seed=1)

    def work(i: int) -> None:
        rng = random.Random(100 + i)
        if i % 3 == 0:  # whole loads, each with its own handle
            got = enctensor.load(path, key=KEY)
            assert list(got) == list(tensors) and all(same(got[k], tensors[k]) for k in tensors)
            return
        with enctensor.safe_open(path, key=KEY) as f:
            assert f.keys() == list(tensors)
            for name in rng.sample(list(tensors), 8):
                assert same(f.get_tensor(name), tensors[name]), name

    run_threads(24, work)


def test_writers_racing_on_one_path(tmp_path: Path) -> None:
    """Concurrent atomic saves while a reader loads: the path always holds one complete
    file, never a mix, and no temporary file is left."""
    path = tmp_path / "m.enct"
    versions = {i: {"v": sample_array(np.float64, (20_000,), i), "id": np.array(i)} for i in range(6)}
    enctensor.save(versions[0], path, key=KEY)
    writers_left = [5]
    lock = threading.Lock()
    done = threading.Event()
    loads = [0]

    def work(i: int) -> None:
        if i == 0:  # the reader, until every writer is done
            while not done.is_set():
                got = enctensor.load(path, key=KEY)
                assert same(got["v"], versions[int(got["id"])]["v"])
                loads[0] += 1
            return
        try:
            for _ in range(5):
                enctensor.save(versions[i], path, key=KEY, chunk_size=4096)
        finally:
            with lock:
                writers_left[0] -= 1
                if writers_left[0] == 0:
                    done.set()

    run_threads(6, work)
    got = enctensor.load(path, key=KEY)
    assert int(got["id"]) in range(1, 6) and same(got["v"], versions[int(got["id"])]["v"])
    assert loads[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.enct"]


def test_file_replaced_by_rename_keeps_serving_the_old_contents(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    old = save_mixed(path, seed=2)
    other = tmp_path / "other.enct"
    new = save_mixed(other, seed=3)
    with enctensor.safe_open(path, key=KEY) as f:
        os.replace(other, path)  # a rename over the open file
        for name in old:
            assert same(f.get_tensor(name), old[name]), name
        assert same(np.ascontiguousarray(f.get_slice("long")[100:9000:7]), old["long"][100:9000:7])
        enctensor.save(mixed_tensors(4), path, key=KEY)  # and save's own rename
        assert same(f.get_tensor("t3"), old["t3"])
        with enctensor.safe_open(path, key=KEY) as g:  # a new handle sees the new file
            assert same(g.get_tensor("t3"), mixed_tensors(4)["t3"])
    assert not same(new["t3"], old["t3"])


def run_child(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_clean_exit(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (a negative code is a signal: -7 is SIGBUS)\n{proc.stderr[-3000:]}"
    )
    return proc.stdout.split()


# The child opens the file, truncates it to argv[2] bytes, then reads in the way argv[3] says,
# and prints the class of the outcome. The file has one 4 MiB tensor ("a", 1 MiB chunks) and a
# small one after it ("b").
TRUNCATE_CHILD = """
    import os, sys
    import numpy as np
    import enctensor
    import enctensor._api as api

    path, cut, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    key = bytes(range(32))
    arr = np.arange(1 << 20, dtype=np.float32)
    enctensor.save({"a": arr, "b": np.arange(10)}, path, key=key)
    size = os.path.getsize(path)
    cut = cut if cut >= 0 else size + cut

    def attempt(fn):
        try:
            fn()
            print("loaded", flush=True)
        except enctensor.EncTensorError as e:
            print(type(e).__name__, flush=True)
            assert "truncated" in str(e) or type(e).__name__ != "FormatError", str(e)

    if how == "load":
        # Truncate between opening (stanzas, MAC) and reading the tensors.
        original = api.read_all
        def truncate_then_read(reader):
            os.truncate(path, cut)
            return original(reader)
        api.read_all = truncate_then_read
        attempt(lambda: enctensor.load(path, key=key))
    else:
        with enctensor.safe_open(path, key=key) as f:
            os.truncate(path, cut)
            if how == "get_tensor":
                attempt(lambda: f.get_tensor("a"))
                attempt(lambda: f.get_tensor("b"))
            else:
                attempt(lambda: f.get_slice("a")[(1 << 20) - 5 :])
                attempt(lambda: f.get_slice("b")[3:5])
            attempt(lambda: f.get_tensor("a"))  # and again: still an error, never garbage
    print("alive", flush=True)
"""


@pytest.mark.parametrize("how", ["get_tensor", "get_slice", "load"])
@pytest.mark.parametrize("cut", [0, 4096, 2 << 20, -1], ids=["to0", "to4k", "half", "minus1"])
def test_truncated_under_an_open_handle_is_a_format_error(tmp_path: Path, how: str, cut: int) -> None:
    out = assert_clean_exit(run_child(TRUNCATE_CHILD, str(tmp_path / "m.enct"), str(cut), how))
    assert out[-1] == "alive"
    results = out[:-1]
    # Every read after the truncation fails with FormatError, never garbage: a read past the
    # new end is caught by the SIGBUS guard, and a cut within the last mapped page (no SIGBUS)
    # by the size check that follows every read of a mapped file.
    assert results == ["FormatError"] * len(results), results


OVERWRITE_CHILD = """
    import os, sys
    import numpy as np
    import enctensor

    path, what = sys.argv[1], sys.argv[2]
    key = bytes(range(32))
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1 << 18).astype(np.float32)
    c = np.arange(50_000, dtype=np.int32)
    enctensor.save({"a": a, "clear": c}, path, key=key, chunk_size=4096, plaintext=["clear"])
    size = os.path.getsize(path)
    with enctensor.safe_open(path, key=key) as f:
        assert (f.get_tensor("a") == a).all()  # pages now cached and mapped
        with open(path, "r+b") as w:
            if what == "random":  # noise over everything after the first page
                w.seek(4096)
                w.write(rng.integers(0, 256, size - 4096, dtype=np.uint8).tobytes())
            elif what == "other_file":  # another valid file of the very same layout
                enctensor.save({"a": a[::-1].copy(), "clear": c[::-1].copy()}, path + ".2", key=key,
                               chunk_size=4096, plaintext=["clear"])
                data = open(path + ".2", "rb").read()
                assert len(data) == size
                w.write(data)
            else:  # one byte of the clear tensor
                w.seek(size - 1)
                w.write(b"\\xff")
            w.flush()
            os.fsync(w.fileno())
        for name, fn in [
            ("a", lambda: f.get_tensor("a")),
            ("a_slice", lambda: f.get_slice("a")[1000:1010]),
            ("clear", lambda: f.get_tensor("clear")),
            ("clear_slice", lambda: f.get_slice("clear")[-3:]),
        ]:
            try:
                got = fn()
                print(name, "loaded", flush=True)
            except enctensor.EncTensorError as e:
                print(name, type(e).__name__, flush=True)
    print("alive", flush=True)
"""


@pytest.mark.parametrize("what", ["random", "other_file", "last_byte"])
def test_overwritten_in_place_while_open_is_an_integrity_error(tmp_path: Path, what: str) -> None:
    out = assert_clean_exit(run_child(OVERWRITE_CHILD, str(tmp_path / "m.enct"), what))
    assert out[-1] == "alive"
    results = dict(zip(out[:-1:2], out[1:-1:2], strict=True))
    if what == "last_byte":  # only the last chunk of the clear tensor changed
        assert results == {
            "a": "loaded",
            "a_slice": "loaded",
            "clear": "IntegrityError",
            "clear_slice": "IntegrityError",
        }
    else:
        assert set(results.values()) == {"IntegrityError"}, results


def test_overwritten_in_place_in_this_process(tmp_path: Path) -> None:
    """The same in-process (no SIGBUS risk: the length does not change)."""
    path = tmp_path / "m.enct"
    tensors = save_mixed(path, seed=5)
    with enctensor.safe_open(path, key=KEY) as f:
        assert same(f.get_tensor("long"), tensors["long"])
        data = bytearray(path.read_bytes())
        for i in range(len(data) - 1, len(data) - 300_000, -4096):
            data[i] ^= 0xFF
        with open(path, "r+b") as w:
            w.write(data)
        with pytest.raises(IntegrityError):
            f.get_tensor("long")


MANY_HANDLES_CHILD = """
    import os, sys
    import numpy as np
    import enctensor

    path, n = sys.argv[1], int(sys.argv[2])
    key = bytes(range(32))
    enctensor.save({"a": np.ones(1 << 20, dtype=np.float32)}, path, key=key)
    handles = [enctensor.safe_open(path, key=key) for _ in range(n)]
    os.truncate(path, 8192)
    for i in (0, n // 2, n - 1):
        try:
            handles[i].get_tensor("a")
            print("loaded", flush=True)
        except enctensor.EncTensorError as e:
            print(type(e).__name__, flush=True)
    print("alive", flush=True)
"""


def test_truncated_under_100_open_handles(tmp_path: Path) -> None:
    out = assert_clean_exit(run_child(MANY_HANDLES_CHILD, str(tmp_path / "m.enct"), "100"))
    assert out == ["FormatError"] * 3 + ["alive"]


def test_truncated_under_200_open_handles(tmp_path: Path) -> None:
    out = assert_clean_exit(run_child(MANY_HANDLES_CHILD, str(tmp_path / "m.enct"), "200"))
    assert out == ["FormatError"] * 3 + ["alive"]


FAULTHANDLER_CHILD = """
    import faulthandler, os, sys
    import numpy as np
    import enctensor

    path = sys.argv[1]
    key = bytes(range(32))
    enctensor.save({"a": np.ones(1 << 20, dtype=np.float32)}, path, key=key)
    with enctensor.safe_open(path, key=key) as f:  # installs the SIGBUS guard
        faulthandler.enable()  # installs its own SIGBUS handler over the guard
        os.truncate(path, 8192)
        try:
            f.get_tensor("a")
            print("loaded", flush=True)
        except enctensor.EncTensorError as e:
            print(type(e).__name__, flush=True)
    print("alive", flush=True)
"""


def test_truncated_after_faulthandler_enable(tmp_path: Path) -> None:
    out = assert_clean_exit(run_child(FAULTHANDLER_CHILD, str(tmp_path / "m.enct")))
    assert out == ["FormatError", "alive"]


VERIFY_CHILD = """
    import os, sys
    import numpy as np
    import enctensor
    from enctensor import _core

    path = sys.argv[1]
    key = bytes(range(32))
    enctensor.save({"a": np.ones(1 << 20, dtype=np.float32)}, path, key=key)
    reader = _core.Reader(path, key=key)  # what the converters use to verify their output
    os.truncate(path, 8192)
    try:
        reader.verify()
        print("verified", flush=True)
    except enctensor.EncTensorError as e:
        print(type(e).__name__, flush=True)
    print("alive", flush=True)
"""


def test_truncated_under_verify_is_typed(tmp_path: Path) -> None:
    out = assert_clean_exit(run_child(VERIFY_CHILD, str(tmp_path / "m.enct")))
    assert out[-1] == "alive" and out[0] in ("FormatError", "IntegrityError"), out


def test_truncated_under_verify_is_a_format_error(tmp_path: Path) -> None:
    out = assert_clean_exit(run_child(VERIFY_CHILD, str(tmp_path / "m.enct")))
    assert out == ["FormatError", "alive"]


REKEY_LOOP_CHILD = """
    import sys
    import enctensor
    key, other = bytes(range(32)), bytes(range(1, 33))
    both = False
    print("ready", flush=True)
    while True:
        enctensor.rekey(sys.argv[1], key=key, new_keys=[key, other] if not both else [key])
        both = not both
"""


def test_readers_racing_an_in_place_rekey_always_open(tmp_path: Path) -> None:
    """Another process re-keys in place (one write within the first page), flipping the file
    between stanzas for {KEY} and for {KEY, other}: every load with KEY must open it. A
    buffered read is not atomic against that write (one pread of the page returned half of
    the new stanzas 3 times in 20,000 here), so the reader re-reads a first page that changed
    while it failed to open."""
    path = tmp_path / "m.enct"
    other = bytes(range(1, 33))
    tensors = {"w": sample_array(np.float32, (1000,), 7)}
    enctensor.save(tensors, path, key=KEY)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(REKEY_LOOP_CHILD), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    other_opened = set()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for i in range(10_000):
            assert same(enctensor.load(path, key=KEY)["w"], tensors["w"])
            if i % 50 == 0:
                try:
                    enctensor.load(path, key=other)
                    other_opened.add(True)
                except enctensor.WrongKeyError:
                    other_opened.add(False)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert other_opened == {True, False}, "the re-keys did not run meanwhile"
