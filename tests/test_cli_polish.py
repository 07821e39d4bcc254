"""Small CLI fixes (issue 13, section 3), each driven through the installed ``enctensor``
entry point in a subprocess: prompts, hints, refusals, the temporary file's name in errors,
and a reader that stops early (``| head``)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_cli import PASSPHRASE, assert_failed, files_in
from test_cli import run as _run

from enctensor import cli

EXE = str(Path(sys.executable).with_name("enctensor"))


def run(*args: str | Path, cwd: Path, passphrase: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run(*args, cwd=cwd, passphrase=passphrase, exe=[EXE])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (cli.PASSPHRASE_ENV, cli.DEBUG_ENV)}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """model.safetensors, key.key, and an X25519 identity me.pem whose recipient is in me.pub."""
    save_file({"w": np.arange(64, dtype=np.float32)}, tmp_path / "model.safetensors")
    assert run("keygen", "key.key", cwd=tmp_path).returncode == 0
    proc = run("keygen", "--x25519", "me.pem", "--public-out", "me.pub", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def _read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, out
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def test_passphrase_prompts_read_naturally(work: Path) -> None:
    """On a terminal: "Enter passphrase:", then "Confirm passphrase:" (not "Confirm enter")."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(work)
        os.execve(EXE, [EXE, "encrypt", "model.safetensors", "m.enct", "-p", "--scrypt-log-n", "10"], _env())
    status = None
    try:
        first = _read_until(fd, b"passphrase: ")
        assert b"Enter passphrase: " in first, first
        os.write(fd, PASSPHRASE.encode() + b"\n")
        second = _read_until(fd, b"passphrase: ")
        assert b"Confirm passphrase: " in second, second
        assert b"Confirm enter" not in first + second
        os.write(fd, PASSPHRASE.encode() + b"\n")
        _read_until(fd, b"\0", timeout=60)  # until the child closes the terminal
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:  # a failed check above: do not leave the child waiting for input
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run("verify", "m.enct", "-p", cwd=work, passphrase=PASSPHRASE).returncode == 0


def test_missing_recipient_file_suggests_a_recipient(work: Path) -> None:
    proc = run("encrypt", "model.safetensors", "m.enct", "-r", "alice.pub", cwd=work)
    assert_failed(proc, 1, "alice.pub", "no such file", "x25519:<hex>", "PEM public key file")
    assert "ed25519" not in proc.stderr  # a verification key is not a recipient
    assert not (work / "m.enct").exists()
    # --verify-with suggests what it takes.
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    proc = run("verify", "m.enct", "-k", "key.key", "--verify-with", "pub.key", cwd=work)
    assert_failed(proc, 1, "pub.key", "ed25519:<hex>", "PEM public key file")
    assert "x25519" not in proc.stderr


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_onto_a_directory_is_reported_once(work: Path, force: list[str]) -> None:
    (work / "out").mkdir()
    proc = run("encrypt", "model.safetensors", "out", "-k", "key.key", *force, cwd=work)
    assert_failed(proc, 1, "out: is a directory")
    assert proc.stderr.count("directory") == 1, proc.stderr
    assert "--force" not in proc.stderr  # --force would not help
    assert files_in(work / "out") == set()


def test_scrypt_log_n_without_a_passphrase_is_a_usage_error(work: Path) -> None:
    before = files_in(work)
    proc = run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", "--scrypt-log-n", "12", cwd=work)
    assert_failed(proc, 2, "--scrypt-log-n", "--passphrase")
    assert files_in(work) == before
    # With --passphrase it is used.
    proc = run(
        "encrypt",
        "model.safetensors",
        "m.enct",
        "-p",
        "--scrypt-log-n",
        "10",
        cwd=work,
        passphrase=PASSPHRASE,
    )
    assert proc.returncode == 0, proc.stderr
    assert "log_n=10" in run("inspect", "m.enct", cwd=work).stdout
    # rekey: --scrypt-log-n is for --new-passphrase.
    proc = run("rekey", "m.enct", "-p", "--new-key-file", "key.key", "--scrypt-log-n", "12", cwd=work)
    assert_failed(proc, 2, "--scrypt-log-n", "--new-passphrase")
    assert "log_n=10" in run("inspect", "m.enct", cwd=work).stdout


def test_the_same_recipient_or_key_file_twice_is_refused(work: Path) -> None:
    """Refused (exit 2), not deduplicated: a repeated key is more likely a typo for another one."""
    one_line = (work / "me.pub").read_text().strip()
    before = files_in(work)
    proc = run("encrypt", "model.safetensors", "m.enct", "-r", one_line, "-r", "me.pub", cwd=work)
    assert_failed(proc, 2, "1st and 2nd -r/--recipient are the same public key")
    assert one_line not in proc.stderr
    proc = run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", "-k", "./key.key", cwd=work)
    assert_failed(proc, 2, "1st and 2nd -k/--key-file are the same key")
    assert files_in(work) == before
    # rekey's new recipients too; the file is not changed.
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    data = (work / "m.enct").read_bytes()
    proc = run(
        "rekey", "m.enct", "-k", "key.key", "--new-recipient", "me.pub", "--new-recipient", one_line, cwd=work
    )
    assert_failed(proc, 2, "same public key")
    assert (work / "m.enct").read_bytes() == data
    # Different recipients are fine.
    proc = run("keygen", "--x25519", "you.pem", "--public-out", "you.pub", cwd=work)
    assert proc.returncode == 0
    proc = run("encrypt", "model.safetensors", "m2.enct", "-r", "me.pub", "-r", "you.pub", cwd=work)
    assert proc.returncode == 0, proc.stderr


def test_output_onto_the_input_is_refused(work: Path) -> None:
    src = work / "model.safetensors"
    data = src.read_bytes()
    os.link(src, work / "hardlink.safetensors")
    for out in ("model.safetensors", "./model.safetensors", "hardlink.safetensors"):
        for force in ([], ["--force"]):
            proc = run("encrypt", "model.safetensors", out, "-k", "key.key", *force, cwd=work)
            assert_failed(proc, 2, "is the input file")
            assert src.read_bytes() == data
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    enc = (work / "m.enct").read_bytes()
    proc = run("decrypt", "m.enct", "m.enct", "-k", "key.key", "--force", cwd=work)
    assert_failed(proc, 2, "is the input file")
    assert (work / "m.enct").read_bytes() == enc
    assert not [n for n in files_in(work) if n.endswith(".partial")]


def test_errors_name_the_real_target_not_the_temporary_file(work: Path) -> None:
    # A name that fits, whose hidden temporary name (".NAME.<hex>.partial") is too long.
    name = "x" * 245 + ".enct"
    proc = run("encrypt", "model.safetensors", name, "-k", "key.key", cwd=work)
    assert_failed(proc, 1, f"{name}: file name too long")
    assert ".partial" not in proc.stderr
    assert f".{name}" not in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_permission_error_names_the_real_target(work: Path) -> None:
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = run("encrypt", "model.safetensors", "ro/m.enct", "-k", "key.key", cwd=work)
        assert_failed(proc, 1, "ro/m.enct", "ermission")
        assert ".partial" not in proc.stderr
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["inspect", "m.enct"], ["encrypt", "--help"]])
def test_a_reader_that_stops_early_is_not_an_error(work: Path, args: list[str]) -> None:
    """stdout's reader is gone before anything is written: exit 0, nothing on stderr."""
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    r, w = os.pipe()
    os.close(r)  # no reader at all: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [EXE, *args],
            check=False,
            cwd=work,
            env=_env(),
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_pipe_into_head(work: Path) -> None:
    assert run("encrypt", "model.safetensors", "m.enct", "-k", "key.key", cwd=work).returncode == 0
    for cmd in (f"'{EXE}' inspect m.enct", f"'{EXE}' --help"):
        proc = subprocess.run(
            ["bash", "-c", f"{cmd} | head -1; exit ${{PIPESTATUS[0]}}"],
            check=False,
            cwd=work,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 1
        assert proc.stderr == ""
