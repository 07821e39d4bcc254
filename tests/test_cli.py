"""The command line, driven as a user would: ``python -m enctensor ...`` in a subprocess, on
files written by the safetensors library and by TVM (cmd/age/testdata style, in pytest)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_array
from safetensors import safe_open as st_safe_open
from safetensors.numpy import load_file, save_file

import enctensor
from enctensor import cli

PASSPHRASE = "correct horse battery staple"


def run(
    *args: str | Path,
    cwd: Path,
    passphrase: str | None = None,
    exe: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs the CLI without a terminal (stdin, stdout, stderr are pipes; a new session, so no
    controlling terminal either) and with ``ENCTENSOR_PASSPHRASE`` only if given."""
    env = {k: v for k, v in os.environ.items() if k not in (cli.PASSPHRASE_ENV, cli.DEBUG_ENV)}
    if passphrase is not None:
        env[cli.PASSPHRASE_ENV] = passphrase
    return subprocess.run(
        [*(exe or [sys.executable, "-m", "enctensor"]), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        timeout=120,
        check=False,
    )


def assert_failed(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit status ``code``, and exactly one line on stderr in the CLI's style, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("enctensor: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def files_in(d: Path) -> set[str]:
    return set(os.listdir(d))


TENSORS = {
    "embed.weight": sample_array(np.float32, (300, 64), 1),
    "ln.bias": sample_array(np.float16, (64,), 2),
    "mask": sample_array(np.bool_, (7,), 3),
    "step": np.array(12, dtype=np.int64),
    "empty": np.zeros((0, 2), dtype=np.uint8),
}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory holding model.safetensors (written by safetensors) and key.key."""
    save_file(TENSORS, tmp_path / "model.safetensors", metadata={"format": "pt", "source": "tests"})
    assert run("keygen", "key.key", cwd=tmp_path).returncode == 0
    return tmp_path


def corrupt(path: Path, offset_from_end: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


# --- Help and usage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["keygen"], ["pubkey"], ["encrypt"], ["decrypt"], ["inspect"], ["verify"], ["rekey"]],
)
def test_help(tmp_path: Path, command: list[str]) -> None:
    proc = run(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: enctensor")
    if command in ([], ["encrypt"], ["decrypt"], ["verify"], ["rekey"]):
        assert "exit status" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["encrypt", "model.safetensors"],
        ["encrypt", "model.safetensors", "m.enct", "--key-file", "key.key", "--passphrase"],
        ["encrypt", "model.safetensors", "m.enct", "--passphrase", PASSPHRASE],  # never on argv
        ["encrypt", "model.safetensors", "m.enct", "--chunk-size", "1000"],
    ],
    ids=[
        "nothing",
        "unknown-command",
        "missing-out",
        "key-and-passphrase",
        "passphrase-on-argv",
        "bad-chunk",
    ],
)
def test_usage_errors_exit_2(work: Path, args: list[str]) -> None:
    proc = run(*args, cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert "enctensor: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "m.enct").exists()


def test_no_key_given_is_a_usage_error(work: Path) -> None:
    assert_failed(run("encrypt", "model.safetensors", "m.enct", cwd=work), 2, "--key-file")


def test_version(tmp_path: Path) -> None:
    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0 and enctensor.__version__ in proc.stdout


# --- keygen -------------------------------------------------------------------------------


def test_keygen_mode_format_and_no_overwrite(tmp_path: Path) -> None:
    proc = run("keygen", "k.key", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "k.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n") and bytes.fromhex(text[:64])
    assert text[:64] == text[:64].lower()
    assert run("keygen", "k2.key", cwd=tmp_path).returncode == 0
    assert (tmp_path / "k2.key").read_text() != text  # random

    assert_failed(run("keygen", "k.key", cwd=tmp_path), 1, "k.key", "already exists")
    assert path.read_text() == text


def test_keygen_into_a_missing_directory(tmp_path: Path) -> None:
    assert_failed(run("keygen", "nowhere/k.key", cwd=tmp_path), 1, "nowhere/k.key")


def test_raw_and_hex_key_files_are_both_accepted(work: Path) -> None:
    key = bytes.fromhex((work / "key.key").read_text().strip())
    (work / "raw.key").write_bytes(key)
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "raw.key", cwd=work).returncode == 0
    assert run("verify", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    (work / "bad.key").write_text("not a key\n")
    assert_failed(run("verify", "m.enct", "-k", "bad.key", cwd=work), 2, "bad.key", "keygen")


# --- Round trips --------------------------------------------------------------------------


def test_safetensors_round_trip(work: Path) -> None:
    proc = run("encrypt", "model.safetensors", "model.enct", "--key-file", "key.key", cwd=work)
    assert proc.returncode == 0, proc.stderr
    # No terminal: no progress bar; one summary line on stderr, nothing on stdout.
    assert proc.stdout == "" and proc.stderr.startswith("model.enct: encrypted 5 tensors (")
    assert proc.stderr.count("\n") == 1
    assert (work / "model.enct").read_bytes()[:8] == b"\x89ETS\r\n\x1a\n"
    proc = run("decrypt", "model.enct", "back.safetensors", "--key-file", "key.key", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "back.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()
    out = load_file(work / "back.safetensors")
    assert all(out[n].tobytes() == a.tobytes() and out[n].shape == a.shape for n, a in TENSORS.items())
    with st_safe_open(work / "back.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt", "source": "tests"}


def test_params_round_trip(tmp_path: Path) -> None:
    tvm = pytest.importorskip("tvm")
    arrays = {
        "w": sample_array(np.float32, (8, 4), 1),
        "flag": np.array([True, False]),
        "h": sample_array(np.float16, (3,), 2),
        "scalar": np.array(7, dtype=np.int8),
        "big": np.array([2**64 - 1], dtype=np.uint64),
    }
    tvm.runtime.save_param_dict_to_file(
        {n: tvm.runtime.tensor(a) for n, a in arrays.items()}, str(tmp_path / "m.params")
    )
    assert run("keygen", "k", cwd=tmp_path).returncode == 0
    assert run("encrypt", "m.params", "m.enct", "-k", "k", cwd=tmp_path).returncode == 0
    # No extension: the format the file came from is recorded, so .params it is.
    proc = run("decrypt", "m.enct", "restored", "-k", "k", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "restored").read_bytes() == (tmp_path / "m.params").read_bytes()
    loaded = tvm.runtime.load_param_dict_from_file(str(tmp_path / "restored"))
    assert list(loaded) == list(arrays)
    assert all(loaded[n].numpy().tobytes() == a.tobytes() for n, a in arrays.items())
    # --format overrides what was recorded.
    assert (
        run("decrypt", "m.enct", "as_st", "-k", "k", "--format", "safetensors", cwd=tmp_path).returncode == 0
    )
    assert load_file(tmp_path / "as_st")["w"].tobytes() == arrays["w"].tobytes()


def test_sharded_round_trip(tmp_path: Path) -> None:
    src, enc, out = tmp_path / "src", tmp_path / "enc", tmp_path / "out"
    for d in (src, enc, out):
        d.mkdir()
    weight_map = {}
    for s in (1, 2):
        shard = f"model-0000{s}-of-00002.safetensors"
        tensors = {
            f"l{s}.w": sample_array(np.float32, (16, 16), s),
            f"l{s}.b": sample_array(np.float32, (16,), 10 + s),
        }
        save_file(tensors, src / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
    index = {"metadata": {"total_size": 2 * (16 * 16 + 16) * 4}, "weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    assert run("keygen", "k", cwd=tmp_path).returncode == 0

    assert_failed(
        run("encrypt", "src/model.safetensors.index.json", "enc/model.enct", "-k", "k", cwd=tmp_path),
        2,
        ".json",
    )
    proc = run(
        "encrypt", "src/model.safetensors.index.json", "enc/model.enct.index.json", "-k", "k", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert files_in(enc) == {
        "model.enct.index.json",
        "model-00001-of-00002.enct",
        "model-00002-of-00002.enct",
    }
    assert run("verify", "enc/model.enct.index.json", "-k", "k", cwd=tmp_path).returncode == 0
    proc = run(
        "decrypt", "enc/model.enct.index.json", "out/model.safetensors.index.json", "-k", "k", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert files_in(out) == files_in(src)
    for name in files_in(src):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


# --- Failures -----------------------------------------------------------------------------


def test_wrong_key_exits_3(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    assert run("keygen", "other.key", cwd=work).returncode == 0
    before = files_in(work)
    assert_failed(
        run("decrypt", "model.enct", "out.safetensors", "-k", "other.key", cwd=work), 3, "model.enct", "key"
    )
    assert_failed(run("verify", "model.enct", "-k", "other.key", cwd=work), 3, "model.enct")
    assert files_in(work) == before


def test_tampered_file_exits_4_and_leaves_nothing(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    corrupt(work / "model.enct")  # the last byte of the last tensor
    before = files_in(work)
    assert_failed(
        run("decrypt", "model.enct", "out.safetensors", "-k", "key.key", cwd=work),
        4,
        "model.enct",
        "authentication",
    )
    assert_failed(run("verify", "model.enct", "-k", "key.key", cwd=work), 4, "model.enct")
    assert files_in(work) == before  # no output, no temporary file


def test_tampered_header_exits_4(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    data = bytearray((work / "model.enct").read_bytes())
    i = data.index(b'"source"')
    data[i + 1 : i + 7] = b"SOURCE"  # still well-formed JSON, so only the MAC can tell
    (work / "model.enct").write_bytes(bytes(data))
    assert_failed(run("verify", "model.enct", "-k", "key.key", cwd=work), 4, "header")
    # inspect needs no key and shows the (unauthenticated) header as it is.
    assert run("inspect", "model.enct", cwd=work).returncode == 0


def test_not_an_enctensor_file_exits_5(work: Path) -> None:
    (work / "junk.bin").write_bytes(b"\x00" * 100)
    assert_failed(
        run("encrypt", "junk.bin", "j.enct", "-k", "key.key", cwd=work),
        5,
        "junk.bin",
        "not a safetensors file",
    )
    assert_failed(
        run("decrypt", "model.safetensors", "x.safetensors", "-k", "key.key", cwd=work), 5, "encrypt"
    )
    assert_failed(run("verify", "junk.bin", "-k", "key.key", cwd=work), 5, "junk.bin")
    assert_failed(run("inspect", "model.safetensors", cwd=work), 5, "safetensors")
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    assert_failed(
        run("encrypt", "model.enct", "again.enct", "-k", "key.key", cwd=work), 5, "already encrypted"
    )
    data = bytearray((work / "model.enct").read_bytes())
    data[9:12] = b"\xff\xff\xff"  # the version
    (work / "bad.enct").write_bytes(bytes(data))
    assert_failed(
        run("decrypt", "bad.enct", "o.safetensors", "-k", "key.key", cwd=work), 5, "bad.enct", "version"
    )
    assert not (work / "o.safetensors").exists()


def test_missing_input_exits_1(work: Path) -> None:
    assert_failed(
        run("encrypt", "nope.safetensors", "m.enct", "-k", "key.key", cwd=work), 1, "nope.safetensors"
    )
    # A key file argument that cannot be read is not shown (it might be a key typed there).
    proc = run("encrypt", "model.safetensors", "m.enct", "-k", "nope.key", cwd=work)
    assert_failed(proc, 1, "cannot read the key file", "not shown")
    assert "nope.key" not in proc.stderr


def test_unwritable_output_leaves_nothing(work: Path) -> None:
    (work / "a_file").write_text("")
    before = files_in(work)
    for out in ("a_file/m.enct", "no_such_dir/m.enct"):
        assert_failed(run("encrypt", "model.safetensors", out, "-k", "key.key", cwd=work), 1, out)
    assert files_in(work) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_read_only_output_directory(work: Path) -> None:
    ro = work / "ro"
    ro.mkdir()
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    ro.chmod(0o500)
    try:
        assert_failed(
            run("decrypt", "m.enct", "ro/m.safetensors", "-k", "key.key", cwd=work), 1, "ro/", "ermission"
        )
        assert files_in(ro) == set()
    finally:
        ro.chmod(0o700)


def test_existing_output_needs_force(work: Path) -> None:
    (work / "model.enct").write_text("keep me")
    assert_failed(
        run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work),
        1,
        "model.enct",
        "--force",
    )
    assert (work / "model.enct").read_text() == "keep me"
    assert (
        run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", "--force", cwd=work).returncode
        == 0
    )
    assert (
        enctensor.load(work / "model.enct", key=bytes.fromhex((work / "key.key").read_text()))["step"] == 12
    )
    (work / "out.safetensors").write_text("keep me too")
    assert_failed(run("decrypt", "model.enct", "out.safetensors", "-k", "key.key", cwd=work), 1, "--force")
    assert (work / "out.safetensors").read_text() == "keep me too"
    assert run("decrypt", "model.enct", "out.safetensors", "-k", "key.key", "-f", cwd=work).returncode == 0
    assert (work / "out.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()


# --- inspect and verify -------------------------------------------------------------------


def test_inspect(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    proc = run("inspect", "model.enct", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["file"] == "model.enct" and info["stanzas"] == ["key"]
    assert info["metadata"] == {"format": "pt", "source": "tests"}
    assert {t["name"]: (t["dtype"], t["shape"]) for t in info["tensors"]} == {
        "embed.weight": ("F32", [300, 64]),
        "ln.bias": ("F16", [64]),
        "mask": ("BOOL", [7]),
        "step": ("I64", []),
        "empty": ("U8", [0, 2]),
    }
    text = run("inspect", "model.enct", cwd=work).stdout
    assert (
        "embed.weight" in text
        and "[300, 64]" in text
        and "source" in text
        and "nothing above is authenticated" in text
    )


def test_verify(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "model.enct", "-k", "key.key", cwd=work).returncode == 0
    proc = run("verify", "model.enct", "-k", "key.key", cwd=work)
    assert proc.returncode == 0 and "OK" in proc.stdout and "5 tensors" in proc.stdout
    assert run("verify", "model.enct", "-k", "key.key", "--quiet", cwd=work).stdout == ""


def test_several_key_files(work: Path) -> None:
    assert run("keygen", "second.key", cwd=work).returncode == 0
    assert run("keygen", "third.key", cwd=work).returncode == 0
    proc = run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", "-k", "second.key", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert run("verify", "m.enct", "-k", "second.key", cwd=work).returncode == 0
    assert (
        run("decrypt", "m.enct", "o.safetensors", "-k", "third.key", "-k", "key.key", cwd=work).returncode
        == 0
    )
    assert_failed(run("verify", "m.enct", "-k", "third.key", cwd=work), 3)


# --- Passphrases --------------------------------------------------------------------------


def test_passphrase_from_the_environment(work: Path) -> None:
    proc = run(
        "encrypt",
        "model.safetensors",
        "p.enct",
        "--passphrase",
        "--scrypt-log-n",
        "10",
        cwd=work,
        passphrase=PASSPHRASE,
    )
    assert proc.returncode == 0, proc.stderr
    assert PASSPHRASE.encode() not in (work / "p.enct").read_bytes()
    assert json.loads(run("inspect", "p.enct", "--json", cwd=work).stdout)["stanzas"] == ["scrypt"]
    assert run("verify", "p.enct", "--passphrase", cwd=work, passphrase=PASSPHRASE).returncode == 0
    proc = run("decrypt", "p.enct", "p.safetensors", "--passphrase", cwd=work, passphrase=PASSPHRASE)
    assert proc.returncode == 0, proc.stderr
    assert (work / "p.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()
    assert_failed(run("decrypt", "p.enct", "q.safetensors", "--passphrase", cwd=work, passphrase="wrong"), 3)
    assert_failed(run("decrypt", "p.enct", "q.safetensors", "-k", "key.key", cwd=work), 3)
    assert not (work / "q.safetensors").exists()


def test_passphrase_without_a_terminal_or_environment(work: Path) -> None:
    """No terminal to ask on (and stdin is not read, where it would echo): a usage error."""
    proc = run("encrypt", "model.safetensors", "p.enct", "--passphrase", cwd=work)
    assert_failed(proc, 2, cli.PASSPHRASE_ENV)
    assert not (work / "p.enct").exists()
    assert_failed(
        run("encrypt", "model.safetensors", "p.enct", "--passphrase", cwd=work, passphrase=""), 2, "empty"
    )


# --- Progress -----------------------------------------------------------------------------


def test_progress_is_drawn_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.Progress, "DELAY", 0.0)
    quiet = io.StringIO()
    bar = cli.Progress("converting", enabled=False, stream=quiet)
    bar(10, 100)
    bar.close()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = cli.Progress("converting", enabled=True, stream=shown)
    for done in (0, 50, 100):
        bar(done, 100)
    bar.close()
    assert "converting" in shown.getvalue()


def test_console_script(work: Path) -> None:
    """The ``enctensor`` entry point that pyproject.toml declares (``pip install -e .``)."""
    exe = shutil.which("enctensor")
    assert exe is not None, "the enctensor console script is not installed: run `pip install -e .`"
    assert run("--help", cwd=work, exe=[exe]).returncode == 0
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work, exe=[exe]).returncode == 0
    proc = run("decrypt", "m.enct", "back.safetensors", "-k", "key.key", cwd=work, exe=[exe])
    assert proc.returncode == 0, proc.stderr
    assert (work / "back.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()
    assert_failed(
        run("verify", "m.enct", "-k", "nope.key", cwd=work, exe=[exe]), 1, "cannot read the key file"
    )


def test_progress_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm is optional: without it, a plain one-line bar is drawn and then erased."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `from tqdm import tqdm` fail
    monkeypatch.setattr(cli.Progress, "DELAY", 0.0)
    shown = io.StringIO()
    bar = cli.Progress("decrypting", enabled=True, stream=shown)
    bar(512 << 20, 1 << 30)
    bar.close()
    assert "decrypting:  50% (512.0 MiB of 1.0 GiB)" in shown.getvalue()
    assert shown.getvalue().endswith("\r\033[K")
