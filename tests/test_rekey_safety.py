"""Re-keying and file replacement that cannot hurt another file (issue 11, items 5, 7 and 9).

- ``rekey`` works through one descriptor: it opens the path once, locks it, authenticates what
  that descriptor reads and writes the same descriptor; a rewrite swaps its new file in only if
  the path still names the file it authenticated. A file renamed over (or away from) the path
  while another process re-keys in a loop is never touched.
- More than 256 stanzas are refused before anything is written, by ``save``, ``save_bytes``,
  ``rekey`` and the command line.
- A replaced file keeps its mode (and owner, where permitted): ``save`` over a file and a
  rewriting ``rekey``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import same, sample_array

import enctensor
from enctensor import cli

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
# Enough key stanzas (about 250 bytes each) that the stanza area outgrows the first page.
EXTRA = [bytes([i]) * 32 for i in range(1, 101)]
KEYS_257 = [i.to_bytes(2, "big") * 16 for i in range(257)]

TENSORS_A = {"w": sample_array(np.float32, (128, 64), 1), "b": sample_array(np.float16, (64,), 2)}
TENSORS_B = {"emb": sample_array(np.int32, (100, 40), 3), "x": sample_array(np.uint8, (999,), 4)}


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp"))


# --- (a) renaming other files over the path while re-keying -------------------------------

# Rotates the files at P and Q through R (P -> R, Q -> P, R -> Q: the two files trade names,
# and P is briefly missing) as fast as it can, until the stop file exists (at most 30 s).
SWAPPER = """
    import os, sys, time
    p, q, r, stop = sys.argv[1:5]
    swaps = 0
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(stop) and time.monotonic() < deadline:
        os.rename(p, r)
        os.rename(q, p)
        os.rename(r, q)
        swaps += 1
    print(swaps, flush=True)
"""


def _check_no_file_damaged(directory: Path, b_bytes: bytes) -> None:
    """Every file in ``directory`` (temporary names included) is B, byte for byte, or a copy
    of A that opens with A's key and holds A's tensors; B is there exactly once."""
    bs = 0
    damaged = []
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        data = f.read_bytes()
        if data == b_bytes:
            bs += 1
            continue
        try:
            got = enctensor.load(f, key=KEY_A)
        except (enctensor.EncTensorError, OSError) as e:
            try:
                enctensor.load(f, key=KEY_B)
                how = "opens with B's key but its bytes changed"
            except (enctensor.EncTensorError, OSError) as e2:
                how = f"opens with neither key: {type(e).__name__}: {e} / {type(e2).__name__}: {e2}"
            damaged.append(f"{f.name}: {how}")
            continue
        if set(got) != set(TENSORS_A) or not all(same(got[k], TENSORS_A[k]) for k in TENSORS_A):
            damaged.append(f"{f.name}: opens with A's key but its tensors are not A's")
    assert not damaged, "files damaged by re-keying another file:\n" + "\n".join(damaged)
    assert bs == 1, f"B is present {bs} times (it was replaced or lost)"


@pytest.mark.parametrize("variant", ["in-place", "rewriting"])
def test_rekey_never_damages_a_file_renamed_over_its_path(tmp_path: Path, variant: str) -> None:
    """One process rotates two valid files A and B through the names P and Q (via R) while
    this one re-keys P with A's key in a loop, for about 1.5 s (the loop's length bounds the
    test; nothing is asserted about timing). Re-keying may fail (P names B,
    or nothing, at that moment) but must never write into B or replace it: afterwards B is
    there, byte-identical, and every other file is A, intact and opening with A's key."""
    d = tmp_path / "race"
    d.mkdir()
    p, q, r = d / "p.enct", d / "q.enct", d / "r.enct"
    enctensor.save(TENSORS_A, p, key=KEY_A)
    enctensor.save(TENSORS_B, q, key=KEY_B)
    b_bytes = q.read_bytes()
    if variant == "rewriting":
        # Every re-key below rewrites the file: it alternately grows and shrinks the area.
        assert enctensor.rekey(p, key=KEY_A, new_keys=[KEY_A, *EXTRA]) == "rewritten"
        assert enctensor.rekey(p, key=KEY_A, new_keys=[KEY_A]) == "rewritten"
    stop = tmp_path / "stop"
    swapper = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SWAPPER), str(p), str(q), str(r), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = "in-place" if variant == "in-place" else "rewritten"
    outcomes: dict[str, int] = {}
    try:
        assert swapper.stdout is not None and swapper.stdout.readline().strip() == "ready"
        start = time.monotonic()
        grow = True
        # About 1.5 s, longer (up to 10 s) until a few re-keys succeeded (P named A throughout).
        while swapper.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed > 10 or (elapsed > 1.5 and outcomes.get(done, 0) >= 3):
                break
            new_keys = [KEY_A] if variant == "in-place" or not grow else [KEY_A, *EXTRA]
            try:
                how = enctensor.rekey(p, key=KEY_A, new_keys=new_keys)
                outcomes[how] = outcomes.get(how, 0) + 1
                grow = not grow
            except (enctensor.EncTensorError, OSError) as e:
                # P named B (wrong key) or nothing, or was swapped during a rewrite.
                outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
    finally:
        stop.touch()
        out, err = swapper.communicate(timeout=60)
    assert swapper.returncode == 0, err
    print(f"\n{variant}: {out.split()[-1]} swaps, re-key outcomes {outcomes}")
    assert int(out.split()[-1]) > 0
    assert outcomes.get(done, 0) > 0, f"no re-key succeeded while the files were swapped: {outcomes}"
    _check_no_file_damaged(d, b_bytes)


def test_rekey_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.enct"
    link = tmp_path / "link.enct"
    enctensor.save(TENSORS_A, target, key=KEY_A)
    link.symlink_to(target.name)
    assert enctensor.rekey(link, key=KEY_A, new_keys=[KEY_A, *EXTRA]) == "rewritten"
    assert link.is_symlink() and os.readlink(link) == target.name
    assert enctensor.rekey(link, key=EXTRA[0], new_keys=[KEY_B]) == "rewritten"
    got = enctensor.load(target, key=KEY_B)
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)
    assert temp_files(tmp_path) == []


def test_concurrent_rekeys_of_one_file_all_land(tmp_path: Path) -> None:
    """The advisory lock orders re-keys of one file: two processes each re-key it 16 times
    (grow: a rewrite; shrink: a rewrite; same size: in place), always keeping A's key. A re-key
    that waited for the lock while the other replaced the file opens the new file: every
    re-key succeeds, the file ends up valid with the stanzas of the last one (a grow), and no
    temporary file is left behind."""
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    child = """
        import sys
        import enctensor
        key = bytes(range(32))
        extra = [bytes([i]) * 32 for i in range(1, 101)]
        hows = []
        for i in range(16):
            new_keys = [key, *extra] if i % 3 == 0 else [key]
            hows.append(enctensor.rekey(sys.argv[1], key=key, new_keys=new_keys))
        print(" ".join(hows), flush=True)
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(child), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert len(out.split()) == 16
    assert len(enctensor.inspect(path)["stanzas"]) == 1 + len(EXTRA)
    got = enctensor.load(path, key=KEY_A)
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)
    assert temp_files(tmp_path) == []


# --- (b) more than 256 stanzas ------------------------------------------------------------


def test_save_and_save_bytes_refuse_257_keys_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="256"):
        enctensor.save(TENSORS_B, path, key=KEYS_257)
    assert path.read_bytes() == before
    new = tmp_path / "new.enct"
    with pytest.raises(ValueError, match="256"):
        enctensor.save(TENSORS_B, new, key=KEYS_257)
    assert not new.exists()
    with pytest.raises(ValueError, match="256"):
        enctensor.save_bytes(TENSORS_B, key=KEYS_257)
    assert temp_files(tmp_path) == []
    # 256 is the limit, not beyond it: such a file is written and opens with the last key.
    enctensor.save(TENSORS_B, new, key=KEYS_257[:256])
    got = enctensor.load(new, key=KEYS_257[255])
    assert all(same(got[k], TENSORS_B[k]) for k in TENSORS_B)
    data = enctensor.save_bytes(TENSORS_B, key=KEYS_257[:256])
    got = enctensor.load_bytes(data, key=KEYS_257[0])
    assert all(same(got[k], TENSORS_B[k]) for k in TENSORS_B)


@pytest.mark.parametrize("grown", [False, True])
def test_rekey_refuses_257_keys_and_leaves_the_file_untouched(tmp_path: Path, grown: bool) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    if grown:
        enctensor.rekey(path, key=KEY_A, new_keys=[KEY_A, *EXTRA])
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    with pytest.raises(ValueError, match="256"):
        enctensor.rekey(path, key=KEY_A, new_keys=KEYS_257)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert temp_files(tmp_path) == []
    got = enctensor.load(path, key=KEY_A)
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)
    # 256 new keys are fine (a rewrite: they do not fit the first page).
    assert enctensor.rekey(path, key=KEY_A, new_keys=KEYS_257[:256]) == "rewritten"
    got = enctensor.load(path, key=KEYS_257[255])
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)


def _enctensor_exe() -> str:
    exe = Path(sys.executable).parent / "enctensor"
    assert exe.exists(), f"no enctensor console script next to {sys.executable}"
    return str(exe)


def _run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (cli.PASSPHRASE_ENV, cli.NEW_PASSPHRASE_ENV)}
    return subprocess.run(
        [_enctensor_exe(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _key_files(directory: Path, keys: list[bytes]) -> list[Path]:
    directory.mkdir()
    paths = []
    for i, k in enumerate(keys):
        f = directory / f"k{i}.key"
        f.write_text(k.hex() + "\n")
        f.chmod(0o600)
        paths.append(f)
    return paths


def test_cli_refuses_257_keys_and_leaves_files_untouched(tmp_path: Path) -> None:
    import safetensors.numpy as safetensors_numpy

    keys = _key_files(tmp_path / "keys", KEYS_257)
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEYS_257[0])
    before = path.read_bytes()

    new_keys = [a for k in keys for a in ("--new-key-file", k)]
    proc = _run_cli("rekey", path, "-k", keys[0], *new_keys, cwd=tmp_path)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert "256" in proc.stderr
    assert path.read_bytes() == before

    src = tmp_path / "m.safetensors"
    safetensors_numpy.save_file(TENSORS_B, str(src))
    out = tmp_path / "out.enct"
    proc = _run_cli("encrypt", src, out, *[a for k in keys for a in ("-k", k)], cwd=tmp_path)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr
    assert "256" in proc.stderr
    assert not out.exists()
    assert temp_files(tmp_path) == []

    # 256 are accepted.
    proc = _run_cli("rekey", path, "-k", keys[0], *new_keys[:-2], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = enctensor.load(path, key=KEYS_257[255])
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)


# --- (c) modes and owners -----------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o444])
def test_save_over_a_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    assert _mode(path) == 0o666 & ~_umask(), "a new file gets the default mode"
    path.chmod(mode)
    enctensor.save(TENSORS_B, path, key=KEY_B)
    assert _mode(path) == mode
    enctensor.save(TENSORS_A, path, key=KEY_A)
    assert _mode(path) == mode
    got = enctensor.load(path, key=KEY_A)
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)


def test_save_over_a_plain_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    path.write_bytes(b"not an enctensor file")
    path.chmod(0o600)
    enctensor.save(TENSORS_A, path, key=KEY_A)
    assert _mode(path) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_rekey_keeps_the_mode_in_place_and_rewriting(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    path.chmod(mode)
    assert enctensor.rekey(path, key=KEY_A, new_keys=[KEY_B]) == "in-place"
    assert _mode(path) == mode
    assert enctensor.rekey(path, key=KEY_B, new_keys=[KEY_A, *EXTRA]) == "rewritten"  # grows
    assert _mode(path) == mode
    assert enctensor.rekey(path, key=KEY_A, new_keys=[KEY_B]) == "rewritten"  # shrinks back
    assert _mode(path) == mode
    got = enctensor.load(path, key=KEY_B)
    assert all(same(got[k], TENSORS_A[k]) for k in TENSORS_A)
    assert temp_files(tmp_path) == []


def test_replaced_files_keep_their_owner(tmp_path: Path) -> None:
    """As root the owner of a replaced file can be kept even when it is someone else; as
    anyone else the owner (ourselves) must at least be unchanged."""
    path = tmp_path / "m.enct"
    enctensor.save(TENSORS_A, path, key=KEY_A)
    if os.geteuid() == 0:
        os.chown(path, 4242, 4343)
    owner = (path.stat().st_uid, path.stat().st_gid)
    path.chmod(0o640)
    enctensor.save(TENSORS_A, path, key=KEY_A)
    assert (path.stat().st_uid, path.stat().st_gid) == owner
    assert enctensor.rekey(path, key=KEY_A, new_keys=[KEY_A, *EXTRA]) == "rewritten"
    assert (path.stat().st_uid, path.stat().st_gid) == owner
    assert _mode(path) == 0o640
