"""``-`` as standard input and output of ``encrypt`` and ``decrypt``, ``--force`` onto
symbolic links and special files (written through, never replaced), and directories handed
to the converters (issue 13, section 3, "Streams"). Every case runs the real entry point."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from cli_support import ENTRY, cli, environment, failed, ok
from safetensors.numpy import load_file, save_file


@pytest.fixture
def work(tmp_path: Path) -> Path:
    save_file(
        {"w": np.arange(5000, dtype=np.float32), "b": np.ones(7, dtype=np.int64)},
        tmp_path / "model.safetensors",
        metadata={"source": "streams"},
    )
    ok(cli("keygen", "k.key", cwd=tmp_path))
    ok(cli("encrypt", "model.safetensors", "model.enct", "-k", "k.key", cwd=tmp_path))
    return tmp_path


def _no_dash(d: Path) -> None:
    assert not (d / "-").exists(), "a file named - was made"


def test_encrypt_and_decrypt_through_pipes(work: Path) -> None:
    plain = (work / "model.safetensors").read_bytes()
    enc = ok(cli("encrypt", "-", "-", "-k", "k.key", cwd=work, input=plain)).stdout
    assert enc[:8] == b"\x89ETS\r\n\x1a\n"
    (work / "piped.enct").write_bytes(enc)
    ok(cli("verify", "piped.enct", "-k", "k.key", cwd=work))
    back = ok(cli("decrypt", "-", "-", "-k", "k.key", cwd=work, input=enc)).stdout
    assert back == plain
    # Mixed: a file in, a stream out, and the other way round.
    assert ok(cli("decrypt", "model.enct", "-", "-k", "k.key", cwd=work)).stdout == plain
    ok(cli("encrypt", "-", "from-stdin.enct", "-k", "k.key", cwd=work, input=plain))
    ok(cli("decrypt", "from-stdin.enct", "back.safetensors", "-k", "k.key", cwd=work))
    assert (work / "back.safetensors").read_bytes() == plain
    _no_dash(work)


def test_stdin_is_named_in_errors_and_leaves_nothing(
    work: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("tmpdir")
    env = {"TMPDIR": str(tmp)}
    proc = cli("encrypt", "-", "x.enct", "-k", "k.key", cwd=work, input=b"not a model", env=env)
    failed(proc, 5, "not a safetensors file")
    # Wrong key on a piped file: the copy of stdin is named as such, and removed.
    ok(cli("keygen", "other.key", cwd=work))
    enc = (work / "model.enct").read_bytes()
    proc = cli("decrypt", "-", "-", "-k", "other.key", cwd=work, input=enc, env=env)
    assert proc.returncode == 3 and proc.stdout == b""
    assert "<stdin>" in proc.stderr.decode() and str(tmp) not in proc.stderr.decode()
    assert os.listdir(tmp) == []
    assert not (work / "x.enct").exists()
    _no_dash(work)


def test_a_terminal_is_refused_as_stdin_or_binary_stdout(work: Path) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        for args, where in (
            (["decrypt", "model.enct", "-", "-k", "k.key"], "stdout"),
            (["encrypt", "-", "x.enct", "-k", "k.key"], "stdin"),
        ):
            proc = subprocess.run(
                [*ENTRY, *args],
                cwd=work,
                env=environment(),
                stdin=slave if where == "stdin" else subprocess.DEVNULL,
                stdout=slave if where == "stdout" else subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
            assert proc.returncode == 2, proc.stderr
            assert b"terminal" in proc.stderr
    finally:
        os.close(slave)
        os.close(master)
    assert not (work / "x.enct").exists()
    _no_dash(work)


def test_a_sharded_index_is_not_a_stream(work: Path) -> None:
    save_file({"a": np.zeros(3, dtype=np.float32)}, work / "s-1.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "s-1.safetensors"}}
    (work / "m.safetensors.index.json").write_text(json.dumps(index))
    failed(cli("encrypt", "m.safetensors.index.json", "-", "-k", "k.key", cwd=work), 2, "sharded checkpoint")
    data = (work / "m.safetensors.index.json").read_bytes()
    failed(cli("encrypt", "-", "m.enct.index.json", "-k", "k.key", cwd=work, input=data), 2, "<stdin>")
    ok(cli("encrypt", "m.safetensors.index.json", "m.enct.index.json", "-k", "k.key", cwd=work))
    failed(cli("decrypt", "m.enct.index.json", "-", "-k", "k.key", cwd=work), 2, "sharded checkpoint")
    _no_dash(work)


def test_json_and_stdout_data_do_not_mix(work: Path) -> None:
    proc = cli("decrypt", "model.enct", "-", "-k", "k.key", "--json", cwd=work)
    failed(proc, 2, "--json", "standard output")
    assert json.loads(proc.stdout)["ok"] is False  # the only thing on stdout


def test_help_says_stdin_is_buffered_to_a_temporary_file(work: Path) -> None:
    text = ok(cli("encrypt", "--help", cwd=work)).stdout.decode()
    assert "- for standard input" in text and "temporary file" in text and "$TMPDIR" in text
    text = ok(cli("decrypt", "--help", cwd=work)).stdout.decode()
    assert "- for standard output" in text and "exit status" in text


# --- --force onto links and special files ------------------------------------------------------


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_force_onto_a_symlink_replaces_its_target_and_keeps_the_link(work: Path, command: str) -> None:
    src, out = (
        ("model.safetensors", "out.enct") if command == "encrypt" else ("model.enct", "out.safetensors")
    )
    (work / "real").mkdir()
    target = work / "real" / out
    target.write_bytes(b"old contents")
    target.chmod(0o640)
    (work / out).symlink_to(Path("real") / out)
    failed(cli(command, src, out, "-k", "k.key", cwd=work), 1, "already exists", "--force")
    ok(cli(command, src, out, "-k", "k.key", "--force", cwd=work))
    assert (work / out).is_symlink() and os.readlink(work / out) == os.path.join("real", out)
    assert target.read_bytes() != b"old contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's mode is kept
    assert sorted(os.listdir(work / "real")) == [out]  # no temporary file left beside it
    if command == "decrypt":
        assert target.read_bytes() == (work / "model.safetensors").read_bytes()
    else:
        ok(cli("verify", out, "-k", "k.key", cwd=work))


def test_force_onto_a_dangling_symlink_is_refused(work: Path) -> None:
    (work / "out.enct").symlink_to("nowhere/out.enct")
    failed(cli("encrypt", "model.safetensors", "out.enct", "-k", "k.key", "-f", cwd=work), 1, "symbolic link")
    assert (work / "out.enct").is_symlink() and not (work / "nowhere").exists()


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_force_onto_a_fifo_writes_into_it(work: Path, command: str) -> None:
    src = "model.safetensors" if command == "encrypt" else "model.enct"
    fifo = work / "pipe"
    os.mkfifo(fifo)
    failed(
        cli(command, src, "pipe", "-k", "k.key", cwd=work), 1, "already exists", "--force to write into it"
    )
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    ok(cli(command, src, "pipe", "-k", "k.key", "--force", cwd=work))
    reader.join(60)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not replaced by a file
    if command == "decrypt":
        assert received == [(work / "model.safetensors").read_bytes()]
    else:
        (work / "got.enct").write_bytes(received[0])
        ok(cli("verify", "got.enct", "-k", "k.key", cwd=work))


def test_force_onto_dev_stdout_writes_through(work: Path) -> None:
    with open(work / "captured", "wb") as f:
        ok(
            cli(
                "decrypt",
                "model.enct",
                "/dev/stdout",
                "-k",
                "k.key",
                "-f",
                "--format",
                "safetensors",
                cwd=work,
                stdout=f.fileno(),
            )
        )
    assert (work / "captured").read_bytes() == (work / "model.safetensors").read_bytes()
    proc = subprocess.run(
        [*ENTRY, "encrypt", "model.safetensors", "/dev/stdout", "-k", "k.key", "-f"],
        cwd=work,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (work / "via-stdout.enct").write_bytes(proc.stdout)
    ok(cli("decrypt", "via-stdout.enct", "v.safetensors", "-k", "k.key", cwd=work))
    assert load_file(work / "v.safetensors")["w"].tobytes() == np.arange(5000, dtype=np.float32).tobytes()


# --- Directories go to the converters -------------------------------------------------------


def test_directories_are_passed_to_the_converters(work: Path) -> None:
    model = work / "hf_model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "test"}\n')
    (model / "model.safetensors").write_bytes((work / "model.safetensors").read_bytes())
    ok(cli("encrypt", "hf_model", "enc_model", "-k", "k.key", cwd=work))
    assert (work / "enc_model" / "config.json").read_text() == '{"model_type": "test"}\n'
    ok(cli("decrypt", "enc_model", "plain_model", "-k", "k.key", cwd=work))
    for name in ("config.json", "model.safetensors"):
        assert (work / "plain_model" / name).read_bytes() == (model / name).read_bytes()
    # What the converters cannot convert, they say (not the CLI's "is a directory").
    (work / "empty").mkdir()
    line = failed(cli("encrypt", "empty", "out", "-k", "k.key", cwd=work), 5, "empty")
    assert "is a directory" not in line
    # inspect reads one file at a time: the same clear error as before; verify checks an
    # encrypted model directory whole (weights and the copied files they list).
    assert failed(cli("inspect", "enc_model", cwd=work), 1).endswith(
        "enc_model: is a directory — give a file name"
    )
    ok(cli("verify", "enc_model", "-k", "k.key", cwd=work))
    assert failed(cli("verify", "hf_model", "-k", "k.key", cwd=work), 1).endswith(
        "hf_model: is a directory — give a file name"
    )
