"""``--json`` on ``encrypt``, ``decrypt``, ``verify``, ``rekey`` and ``keygen`` (issue 13,
section 3): one JSON object on stdout and nothing else, with the keys that ``--help`` lists,
in that order, on success and (with ``ok`` false) on failure. Real entry point throughout."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import cli, ok
from cryptography.hazmat.primitives.asymmetric import x25519
from safetensors.numpy import save_file

import enctensor
from enctensor._keys import age_recipient_text


@pytest.fixture
def work(tmp_path: Path) -> Path:
    save_file(
        {"w": np.arange(300, dtype=np.float32), "i": np.arange(4, dtype=np.int64)}, tmp_path / "m.safetensors"
    )
    ok(cli("keygen", "k.key", cwd=tmp_path))
    return tmp_path


def _documented_keys(command: str, cwd: Path) -> list[str]:
    """The keys ``enctensor COMMAND --help`` says its --json object has, in order."""
    text = " ".join(ok(cli(command, "--help", cwd=cwd)).stdout.decode().split())
    m = re.search(r"--json prints one object on stdout with the keys (.+?) \(", text)
    assert m, text
    return [k.strip() for k in m.group(1).split(",")]


def _one_object(stdout: bytes) -> dict[str, Any]:
    text = stdout.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text  # one line, one object, nothing else
    obj = json.loads(text)
    assert isinstance(obj, dict)
    return obj


def _json(*args: str, cwd: Path, command: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    obj = _one_object(ok(cli(*args, "--json", cwd=cwd, env=env)).stdout)
    assert list(obj) == _documented_keys(command, cwd)
    assert obj["command"] == command and obj["ok"] is True
    return obj


def test_encrypt_json(work: Path) -> None:
    ok(cli("keygen", "--ed25519", "pub.pem", "--public-out", "pub.pub", cwd=work))
    obj = _json(
        "encrypt", "m.safetensors", "m.enct", "-k", "k.key", "-s", "pub.pem", cwd=work, command="encrypt"
    )
    assert obj["input"] == "m.safetensors" and obj["output"] == "m.enct" and obj["files"] == ["m.enct"]
    assert obj["format"] == "safetensors" and obj["tensors"] == 2 and obj["tensor_bytes"] == 300 * 4 + 4 * 8
    assert obj["output_bytes"] == (work / "m.enct").stat().st_size
    assert obj["stanzas"] == ["key"] and obj["signed"] is True
    assert isinstance(obj["seconds"], float) and obj["seconds"] >= 0


def test_decrypt_and_verify_json_say_what_was_checked(work: Path) -> None:
    ok(cli("keygen", "--ed25519", "pub.pem", "--public-out", "pub.pub", cwd=work))
    ok(cli("encrypt", "m.safetensors", "m.enct", "-k", "k.key", "-s", "pub.pem", cwd=work))
    obj = _json("decrypt", "m.enct", "back.safetensors", "-k", "k.key", cwd=work, command="decrypt")
    assert obj["files"] == ["back.safetensors"] and obj["format"] == "safetensors"
    assert (
        obj["output_bytes"]
        == (work / "back.safetensors").stat().st_size
        == (work / "m.safetensors").stat().st_size
    )
    assert obj["signed"] is True and obj["signature_checked"] is False and obj["metadata_left_out"] == []
    obj = _json(
        "decrypt",
        "m.enct",
        "b.safetensors",
        "-k",
        "k.key",
        "--verify-with",
        "pub.pub",
        cwd=work,
        command="decrypt",
    )
    assert obj["signature_checked"] is True
    obj = _json("verify", "m.enct", "-k", "k.key", cwd=work, command="verify")
    assert obj["file"] == "m.enct" and obj["tensors"] == 2 and obj["tensor_bytes"] == 1232
    assert obj["signed"] is True and obj["signature_checked"] is False
    obj = _json("verify", "m.enct", "-k", "k.key", "--verify-with", "pub.pub", cwd=work, command="verify")
    assert obj["signature_checked"] is True
    # A .params output cannot hold metadata: listed, not printed.
    enctensor.save({"a": np.zeros(3, np.float32)}, work / "md.enct", key=work / "k.key", metadata={"x": "y"})
    obj = _json("decrypt", "md.enct", "md.params", "-k", "k.key", cwd=work, command="decrypt")
    assert obj["format"] == "params" and obj["metadata_left_out"] == ["x"]


def test_rekey_json(work: Path) -> None:
    ok(cli("encrypt", "m.safetensors", "m.enct", "-k", "k.key", cwd=work))
    ok(cli("keygen", "new.key", cwd=work))
    obj = _json("rekey", "m.enct", "-k", "k.key", "--new-key-file", "new.key", cwd=work, command="rekey")
    assert obj["file"] == "m.enct" and obj["files"] == [{"file": "m.enct", "how": "in-place"}]
    ok(cli("verify", "m.enct", "-k", "new.key", cwd=work))


@pytest.mark.parametrize("kind", ["", "--x25519", "--ed25519", "--rsa"])
def test_keygen_json(work: Path, kind: str) -> None:
    args = ["keygen", *([kind] if kind else []), "new.pem", *(["--bits", "2048"] if kind == "--rsa" else [])]
    obj = _json(*args, cwd=work, command="keygen")  # stdout holds the object only: no public key line
    assert (
        obj["kind"] == (kind.strip("-") or "key") and obj["file"] == "new.pem" and obj["protected"] is False
    )
    assert obj["public_key_file"] is None and obj["bits"] == (2048 if kind == "--rsa" else None)
    if not kind:
        assert obj["public_key"] is None and obj["age_recipient"] is None
        return
    printed = ok(cli("pubkey", "new.pem", cwd=work)).stdout.decode()
    assert obj["public_key"] == (printed if kind == "--rsa" else printed.strip())
    if kind == "--x25519":
        key = enctensor.read_key_file(work / "new.pem")
        assert isinstance(key, x25519.X25519PrivateKey)
        assert obj["age_recipient"] == age_recipient_text(key.public_key())
    else:
        assert obj["age_recipient"] is None


def test_failures_are_one_json_object_too(work: Path) -> None:
    ok(cli("encrypt", "m.safetensors", "m.enct", "-k", "k.key", cwd=work))
    ok(cli("keygen", "other.key", cwd=work))
    for args, code in (
        (["decrypt", "m.enct", "o.safetensors", "-k", "other.key"], 3),
        (["verify", "m.enct", "-k", "other.key"], 3),
        (["encrypt", "m.safetensors", "m.enct", "-k", "k.key"], 1),  # exists
        (["rekey", "m.enct", "-k", "k.key"], 2),  # nothing to re-key to
        (["keygen", "k.key"], 1),  # exists
    ):
        proc = cli(*args, "--json", cwd=work)
        assert proc.returncode == code, proc.stderr
        obj = _one_object(proc.stdout)
        line = proc.stderr.decode().strip()
        assert list(obj) == ["command", "ok", "exit_status", "error"]
        assert obj["command"] == args[0] and obj["ok"] is False and obj["exit_status"] == code
        assert line == "enctensor: error: " + obj["error"]
    assert not (work / "o.safetensors").exists()
