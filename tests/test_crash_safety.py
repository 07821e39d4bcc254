"""Crash safety: a process killed (SIGKILL, no cleanup) in the middle of ``save`` or ``rekey``
never leaves a file that is partial, or that no key opens.

- ``save`` over an existing file writes ``.{name}.<random>.tmp`` next to it and renames it
  over the file only when complete: killed mid-write, the old file must still load intact.
- ``rekey`` that outgrows the first page rewrites the file the same way.
- ``rekey`` in place is one write within the first page: killed at any moment, the file must
  open with the old key or the new one, never neither.

Each child process prints "ready" once imported, so that kill times are measured from the
start of the operation, not from the interpreter's start-up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array

import enctensor
from enctensor import WrongKeyError

# Tensor data written by the killed children: large enough that writing it takes a while
# (encrypting and writing 192 MiB takes at least ~0.1 s even on a fast machine).
BIG = 192 << 20
NEW_KEYS = [bytes([i]) * 32 for i in range(100, 200)]  # 100 key stanzas: more than a page


def temp_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for p in tmp_path.glob(".*.tmp"):  # what killed writers left behind
        p.unlink()


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        _, err = proc.communicate(timeout=60)
        raise AssertionError(f"child did not start: {line!r} {err}")
    return proc


def kill(proc: subprocess.Popen[str]) -> str:
    """SIGKILLs the child; returns what it printed after "ready" (and closes its pipes)."""
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode
    return out


def wait_for_temp(path: Path, proc: subprocess.Popen[str], min_size: int, timeout: float = 60.0) -> bool:
    """Polls until a temporary file of at least ``min_size`` bytes exists next to ``path``;
    False if the child finished (or died) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in temp_files(path):
            try:
                if t.stat().st_size >= min_size:
                    return True
            except FileNotFoundError:  # renamed in the meantime
                pass
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    raise AssertionError("no temporary file appeared")


SAVE_CHILD = """
    import sys
    import numpy as np
    import enctensor
    arr = np.full(int(sys.argv[2]), 7, dtype=np.uint8)
    print("ready", flush=True)
    enctensor.save({"big": arr}, sys.argv[1], key=bytes(range(32)), chunk_size=1 << 20)
    print("done", flush=True)
"""


def test_save_killed_mid_write_leaves_the_old_file(workdir: Path) -> None:
    path = workdir / "model.enct"
    old = {"a": sample_array(np.float32, (1000, 3), 1), "b": sample_array(np.int8, (77,), 2)}
    enctensor.save(old, path, key=KEY)
    before = path.read_bytes()
    inode = path.stat().st_ino
    mid_write = 0
    # Kill as soon as the temporary file exists, once some data is in it, and well into it.
    for min_size in (0, 1 << 20, 64 << 20):
        proc = spawn(SAVE_CHILD, str(path), str(BIG))
        landed = wait_for_temp(path, proc, min_size)
        kill(proc)
        if landed and temp_files(path):
            mid_write += 1
            assert path.read_bytes() == before, "a partial file replaced the old one"
            assert path.stat().st_ino == inode
            got = enctensor.load(path, key=KEY)
            assert list(got) == list(old) and all(same(got[k], old[k]) for k in old)
            for t in temp_files(path):  # the partial new file is not a valid file
                with pytest.raises(enctensor.FormatError):
                    enctensor.load(t, key=KEY)
                t.unlink()
        else:  # the save completed before the kill: the new file, complete
            got = enctensor.load(path, key=KEY)
            assert list(got) == ["big"] and got["big"].nbytes == BIG
            enctensor.save(old, path, key=KEY)
            before, inode = path.read_bytes(), path.stat().st_ino
    assert mid_write >= 2, "the kill never landed in the middle of a write"
    assert temp_files(path) == []


REKEY_CHILD = """
    import sys
    import enctensor
    new_keys = [bytes([i]) * 32 for i in range(100, 200)]
    print("ready", flush=True)
    how = enctensor.rekey(sys.argv[1], key=bytes(range(32)), new_keys=new_keys, scrypt_log_n=10)
    print(how, flush=True)
"""


def test_rekey_rewrite_killed_mid_write_leaves_the_old_file(workdir: Path) -> None:
    path = workdir / "model.enct"
    tensors = {"big": sample_array(np.uint8, (BIG,), 3), "small": sample_array(np.float64, (10,), 4)}
    enctensor.save(tensors, path, key=KEY, chunk_size=1 << 20)
    # These new stanzas do not fit in the first page: rekey rewrites the file.
    probe = workdir / "probe.enct"
    enctensor.save({"x": np.arange(3)}, probe, key=KEY)
    assert enctensor.rekey(probe, key=KEY, new_keys=NEW_KEYS) == "rewritten"
    probe.unlink()
    before = path.read_bytes()
    mid_write = 0
    for min_size in (0, 1 << 20, 64 << 20):
        proc = spawn(REKEY_CHILD, str(path))
        landed = wait_for_temp(path, proc, min_size)
        kill(proc)
        if landed and temp_files(path):
            mid_write += 1
            assert path.read_bytes() == before, "a partial file replaced the old one"
            with pytest.raises(WrongKeyError):
                enctensor.load(path, key=NEW_KEYS[0])
            for t in temp_files(path):
                t.unlink()
        else:  # completed: the rewritten file opens with the new keys only
            with pytest.raises(WrongKeyError):
                enctensor.load(path, key=KEY)
            enctensor.rekey(path, key=NEW_KEYS[-1], new_keys=[KEY])
            before = path.read_bytes()
        got = enctensor.load(path, key=KEY)
        assert all(same(got[k], tensors[k]) for k in tensors)
    assert mid_write >= 2, "the kill never landed in the middle of a rewrite"
    assert temp_files(path) == []


INPLACE_CHILD = """
    import sys
    import enctensor
    keys = [bytes(range(32)), bytes(range(1, 33))]
    current = int(sys.argv[2])
    print("ready", flush=True)
    while True:
        how = enctensor.rekey(sys.argv[1], key=keys[current], new_keys=[keys[1 - current]])
        assert how == "in-place", how
        current = 1 - current
        print(".", end="", flush=True)  # one dot per completed rekey
"""


def opens_with(path: Path, tensors: dict[str, np.ndarray]) -> int | None:
    """Index of the key (KEY, OTHER_KEY) that opens ``path`` (checking the tensors), or None."""
    for i, k in enumerate((KEY, OTHER_KEY)):
        try:
            got = enctensor.load(path, key=k)
        except WrongKeyError:
            continue
        assert list(got) == list(tensors) and all(same(got[n], tensors[n]) for n in tensors)
        return i
    return None


def test_rekey_in_place_killed_at_random_moments_opens_with_old_or_new_key(workdir: Path) -> None:
    path = workdir / "model.enct"
    tensors = {"w": sample_array(np.float32, (4096, 8), 5), "b": sample_array(np.int64, (9,), 6)}
    enctensor.save(tensors, path, key=KEY, chunk_size=4096)
    rng = random.Random(1234)
    size = path.stat().st_size
    current = 0
    rekeys = 0
    for _ in range(12):
        proc = spawn(INPLACE_CHILD, str(path), str(current))
        time.sleep(rng.uniform(0.0, 0.25))
        done = kill(proc).count(".")
        rekeys += done
        which = opens_with(path, tensors)
        assert which is not None, "after a kill mid-rekey, neither the old nor the new key opens the file"
        # Each completed rekey switched the key; a kill after the write but before the dot
        # was printed may have switched it once more.
        assert which in ((current + done) % 2, (current + done + 1) % 2)
        current = which
        assert path.stat().st_size == size
        assert temp_files(path) == []  # in place: no temporary file, ever
    print(f"\n{rekeys} in-place rekeys completed between 12 kills")
    assert rekeys >= 12, "the kills did not land while the child was re-keying"


def test_temp_file_names_and_cleanup_after_failed_save(workdir: Path) -> None:
    """A save that fails cleanly (not killed) removes its temporary file itself."""
    path = workdir / "m.enct"
    enctensor.save({"a": np.arange(4)}, path, key=KEY)
    with pytest.raises(ValueError):
        enctensor.save({"a": np.arange(4), "b" * 5000: np.arange(2)}, path, key=KEY)
    assert temp_files(path) == []
    assert sorted(os.listdir(workdir)) == ["m.enct"]
