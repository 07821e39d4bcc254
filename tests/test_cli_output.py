"""What the CLI shows (issue 13, sections 3 and 5): the summary line of ``encrypt``,
``decrypt`` and ``keygen`` on a terminal, the progress bar's single unit system, metadata kept
when decrypting to safetensors, and ``inspect`` of a sharded checkpoint's index listing every
shard. CLI cases run the real entry point."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_support import cli, environment, failed, ok, with_terminal_stderr
from safetensors import safe_open
from safetensors.numpy import save_file

import enctensor
from enctensor.cli import Progress

SIZE = r"\d+(?:\.\d)? (?:B|KiB|MiB|GiB)"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    save_file({"w": np.arange(3000, dtype=np.float32)}, tmp_path / "m.safetensors", metadata={"a": "b"})
    ok(cli("keygen", "k.key", cwd=tmp_path))
    return tmp_path


# --- One summary line on a terminal ---------------------------------------------------------


def test_encrypt_and_decrypt_summarize_on_a_terminal(work: Path) -> None:
    status, stdout, shown = with_terminal_stderr(
        "encrypt", "m.safetensors", "m.enct", "-k", "k.key", cwd=work
    )
    assert status == 0 and stdout == b"", shown
    # A progress bar (drawn when the machine is slow) is erased before the summary line.
    lines = shown.rsplit("\x1b[K", 1)[-1].strip().splitlines()
    assert len(lines) == 1, shown
    assert re.fullmatch(
        rf"m\.enct: encrypted 1 tensor \(11\.7 KiB\) from m\.safetensors, {SIZE} written in \d+\.\d s",
        lines[0],
    ), lines
    status, stdout, shown = with_terminal_stderr(
        "decrypt", "m.enct", "b.safetensors", "-k", "k.key", cwd=work
    )
    assert status == 0 and stdout == b"", shown
    size = (work / "b.safetensors").stat().st_size
    assert re.fullmatch(
        rf"b\.safetensors: decrypted 1 tensor \(11\.7 KiB\) from m\.enct, {size / 1024:.1f} KiB written in"
        r" \d+\.\d s",
        shown.rsplit("\x1b[K", 1)[-1].strip(),
    ), shown
    # --quiet: nothing. No terminal: the same line (on stderr: stdout stays for data, scripts
    # that parse use --json).
    status, _, shown = with_terminal_stderr(
        "decrypt", "m.enct", "c.safetensors", "-k", "k.key", "-q", cwd=work
    )
    assert status == 0 and shown == ""
    proc = ok(cli("decrypt", "m.enct", "d.safetensors", "-k", "k.key", cwd=work))
    assert proc.stdout == b"" and proc.stderr.startswith(b"d.safetensors: decrypted 1 tensor (")


def test_keygen_summarizes_on_a_terminal_and_keeps_stdout_for_the_key(work: Path) -> None:
    status, stdout, shown = with_terminal_stderr("keygen", "--x25519", "me.pem", cwd=work)
    assert status == 0, shown
    assert stdout.decode().startswith("x25519:") and stdout.count(b"\n") == 1  # only the recipient
    assert re.fullmatch(
        rf"me\.pem: wrote a new X25519 private key \({SIZE}, mode 0600\) in \d+\.\d\d s; its public key is"
        " on stdout",
        shown.strip(),
    ), shown
    status, stdout, shown = with_terminal_stderr("keygen", "new.key", cwd=work)
    assert status == 0 and stdout == b""
    assert re.fullmatch(
        r"new\.key: wrote a new key file \(32 random bytes\) \(65 B, mode 0600\) in \S+ s", shown.strip()
    )


# --- The progress bar: one unit system ----------------------------------------------------------


def test_progress_uses_binary_units_for_sizes_and_rate() -> None:
    shown = io.StringIO()
    bar = Progress("encrypting m.safetensors", enabled=True, stream=shown, delay=0)
    total = 3 << 30
    for done in (0, 700 << 20, 5 << 29, total):
        bar(done, total)
    text = shown.getvalue()
    bar.close()
    assert "encrypting m.safetensors" in text and "/s" in text
    units = re.findall(r"\d(?:\.\d+)? ?([kKMGTP]?i?B)\b", text)
    assert units and set(units) <= {"B", "KiB", "MiB", "GiB", "TiB"}, text
    # Directly: the same units for what is done, the total and the rate.
    line = bar.line(512 << 20, 1 << 30, 2.0)
    assert line.startswith("encrypting m.safetensors:  50% (512.0 MiB of 1.0 GiB) [")
    assert line.endswith("] 256.0 MiB/s, 2 s left")


# --- Metadata survives decryption to safetensors -------------------------------------------------


def test_decrypt_to_safetensors_keeps_string_metadata(work: Path) -> None:
    ok(cli("encrypt", "m.safetensors", "m.enct", "-k", "k.key", cwd=work))
    proc = ok(cli("decrypt", "m.enct", "b.safetensors", "-k", "k.key", cwd=work))
    assert b"metadata" not in proc.stderr
    with safe_open(work / "b.safetensors", "np") as f:
        assert f.metadata() == {"a": "b"}
    # A TVM .params file is what cannot hold it: said so, naming the entry.
    proc = ok(cli("decrypt", "m.enct", "b.params", "-k", "k.key", cwd=work))
    text = proc.stderr.decode()
    assert "a TVM .params file holds no metadata; left out 'a'" in text and "cannot hold" not in text


# --- inspect of a sharded checkpoint -----------------------------------------------------------


@pytest.fixture
def sharded(work: Path) -> Path:
    save_file({"a": np.ones((4, 4), np.float32), "b": np.zeros(3, np.int64)}, work / "m-1.safetensors")
    save_file({"c": np.ones(5, np.float16)}, work / "m-2.safetensors")
    weight_map = {"a": "m-1.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}
    (work / "m.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ok(cli("encrypt", "m.safetensors.index.json", "m.enct.index.json", "-k", "k.key", cwd=work))
    return work


def test_inspect_an_index_lists_every_shard(sharded: Path) -> None:
    text = ok(cli("inspect", "m.enct.index.json", cwd=sharded)).stdout.decode()
    assert text.startswith("m.enct.index.json: encrypted sharded checkpoint, 2 shard(s), 3 tensors, 98 B\n")
    assert "set         whole" in text
    assert "shard 1 of 2: m-1.enct (listed with 2 tensors)" in text
    assert "shard 2 of 2: m-2.enct (listed with 1 tensors)" in text
    for row in (r"a\s+F32\s+\[4, 4\]\s+64 B\s+yes", r"b\s+I64\s+\[3\]\s+24 B", r"c\s+F16\s+\[5\]\s+10 B"):
        assert re.search(row, text), row
    info = json.loads(ok(cli("inspect", "--json", "m.enct.index.json", cwd=sharded)).stdout)
    assert info["kind"] == "enctensor-index" and info["tensors"] == 3 and info["nbytes"] == 98
    assert info["set_ok"] is True and len(info["checkpoints"]) == 1
    assert [(s["file"], s["listed"], s["opened"]) for s in info["shards"]] == [
        ("m-1.enct", 2, True),
        ("m-2.enct", 1, True),
    ]
    assert [t["name"] for t in info["shards"][1]["header"]["tensors"]] == ["c"]


def test_inspect_an_index_says_which_shard_did_not_open(sharded: Path) -> None:
    (sharded / "m-2.enct").unlink()
    proc = ok(cli("inspect", "m.enct.index.json", cwd=sharded))
    text = proc.stdout.decode()
    assert "shard 1 of 2: m-1.enct (listed with 2 tensors)" in text
    assert re.search(r"shard 2 of 2: m-2\.enct\n  did not open: .*No such file", text), text
    assert "set         shard 2 of 2 of this checkpoint is missing" in text
    info = json.loads(ok(cli("inspect", "--json", "m.enct.index.json", cwd=sharded)).stdout)
    assert (
        info["set_ok"] is False
        and info["shards"][1]["opened"] is False
        and info["shards"][1]["header"] is None
    )
    # A shard that is not an enctensor file: named, with why.
    (sharded / "m-2.enct").write_bytes(b"garbage")
    info = json.loads(ok(cli("inspect", "--json", "m.enct.index.json", cwd=sharded)).stdout)
    assert "not a valid enctensor file" in info["shards"][1]["error"]
    # A shard encrypted on its own (no binding entry) is reported by the set check.
    enctensor.save({"c": np.ones(5, np.float16)}, sharded / "m-2.enct", key=sharded / "k.key")
    info = json.loads(ok(cli("inspect", "--json", "m.enct.index.json", cwd=sharded)).stdout)
    assert info["shards"][1]["opened"] is True and "no enctensor.shard metadata entry" in info["set_problem"]
    failed(cli("verify", "m.enct.index.json", "-k", "k.key", cwd=sharded), 4, "enctensor.shard")


# --- Start-up: what --help, --version and keygen do not import ----------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["keygen", "new.key"],
        ["keygen", "--x25519", "x.pem"],
        ["inspect", "m.enct"],
    ],
)
def test_quick_commands_do_not_import_the_converters(work: Path, args: list[str]) -> None:
    """Start-up time (issue 13: under 0.3 s): these commands import neither the converters
    nor any framework; ``python -X importtime`` lists every module imported."""
    ok(cli("encrypt", "m.safetensors", "m.enct", "-k", "k.key", cwd=work))
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "enctensor", *args],
        cwd=work,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    assert "enctensor.cli" in imported
    for heavy in ("enctensor.convert", "ml_dtypes", "torch", "tvm", "safetensors", "tqdm"):
        assert heavy not in imported, heavy


def test_format_choices_are_the_converters_formats() -> None:
    from enctensor.cli.convert import OUTPUT_FORMATS
    from enctensor.convert import FORMATS

    assert OUTPUT_FORMATS == FORMATS
