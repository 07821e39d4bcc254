"""Stopping a long write (issue 13): Ctrl-C reaches the Rust writer between batches, SIGTERM
does the same for the CLI, and a temporary file left by a process killed outright is removed
by the next write to the same target. Real signals to real processes.

The sources are zeros (a fresh numpy array, or a sparse safetensors file): several GiB to
encrypt, but nothing to allocate or read from disk, so the write is long and the test cheap.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import enctensor

KEY = bytes(range(32))
BIG = 6 << 30  # long enough that the write is still running when the signal arrives

SAVE_ZEROS = r"""
import sys, numpy as np, enctensor
print("start", flush=True)
try:
    enctensor.save({"w": np.zeros(int(sys.argv[2]), dtype=np.uint8)}, sys.argv[1], key=bytes(range(32)))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def _wait_for_temp(d: Path, proc: subprocess.Popen[str]) -> None:
    """Until the writer has created its temporary file (the write is under way)."""
    for _ in range(2000):
        if _temps(d) or proc.poll() is not None:
            return
        time.sleep(0.005)


def _start_save(target: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_ZEROS, str(target), str(BIG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    _wait_for_temp(target.parent, proc)
    return proc


def test_ctrl_c_stops_a_save_inside_the_writer(tmp_path: Path) -> None:
    target = tmp_path / "big.enct"
    proc = _start_save(target)
    assert _temps(tmp_path), "the write should be under way"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    # Without the check between batches the handler would run only after save() returned,
    # with the file written: it must not exist, and save() itself raised KeyboardInterrupt.
    assert out.split() == ["interrupted"], out
    assert proc.returncode == 3
    assert not target.exists()
    assert _temps(tmp_path) == []


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "big.enct"
    proc = _start_save(target)
    proc.kill()  # SIGKILL: no clean-up runs
    proc.communicate(timeout=60)
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".big.enct.")
    # A live process's temporary file (another writer still at work) must survive.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".big.enct.{live.pid}-0123456789ab.tmp"
        busy.write_bytes(b"in progress")
        enctensor.save({"w": np.arange(10, dtype=np.uint8)}, target, key=KEY)
        assert _temps(tmp_path) == [busy.name]
    finally:
        live.kill()
        live.wait()
    assert np.array_equal(enctensor.load(target, key=KEY)["w"], np.arange(10, dtype=np.uint8))


def _sparse_safetensors(path: Path, nbytes: int) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + nbytes)


def _cli_encrypt(tmp_path: Path, sig: signal.Signals) -> tuple[int, str, Path]:
    src = tmp_path / "big.safetensors"
    _sparse_safetensors(src, BIG)
    key = tmp_path / "k.key"
    key.write_bytes(KEY)
    out = tmp_path / "big.enct"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "enctensor", "encrypt", "--key-file", str(key), "-q", str(src), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for_temp(tmp_path, proc)
    assert _temps(tmp_path), "the write should be under way"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, out


def test_cli_ctrl_c_stops_an_encrypt(tmp_path: Path) -> None:
    code, err, out = _cli_encrypt(tmp_path, signal.SIGINT)
    assert code == 130, err
    assert not out.exists()
    assert _temps(tmp_path) == []
    assert "Traceback" not in err


def test_cli_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    code, err, out = _cli_encrypt(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert not out.exists()
    # Unlike a plain SIGTERM death, the temporary file was cleaned up.
    assert _temps(tmp_path) == []
    assert "Traceback" not in err


def test_a_killed_cli_encrypt_leaves_nothing_after_the_next_one(tmp_path: Path) -> None:
    src = tmp_path / "big.safetensors"
    _sparse_safetensors(src, BIG)
    key = tmp_path / "k.key"
    key.write_bytes(KEY)
    out = tmp_path / "big.enct"
    cmd = [sys.executable, "-m", "enctensor", "encrypt", "--key-file", str(key), "-q", "--force"]
    proc = subprocess.Popen([*cmd, str(src), str(out)], stderr=subprocess.PIPE, text=True)
    _wait_for_temp(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    # Left behind: the staging file and the Rust writer's temporary file beside it.
    assert hidden and all(n.lstrip(".").startswith("big.enct.") for n in hidden), hidden
    small = tmp_path / "small.safetensors"
    _sparse_safetensors(small, 16)
    subprocess.run([*cmd, str(small), str(out)], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert [t["shape"] for t in enctensor.inspect(out)["tensors"]] == [[16]]
