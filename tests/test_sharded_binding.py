"""The shards of an encrypted checkpoint are bound together (spec/FORMAT.md, "Sharded sets and
rollback"; issue 11, item 6): every shard's authenticated header carries the metadata entry
``enctensor.shard`` = {"checkpoint", "index", "count", "files"}, and every reader of a set
(``load_sharded``, ``verify_file``/``decrypt_file`` of an index, ``enctensor verify``/``decrypt``
of an index) checks it. A dropped, extra, swapped, renamed or mixed-in shard, or an index that
points a tensor at the wrong shard, is an ``IntegrityError`` (CLI exit status 4), with or
without a publisher signature.

Every set here is written by the real converters (``encrypt_file``, ``enctensor encrypt``)
from files written by the safetensors library; the CLI is the installed ``enctensor`` entry
point, run in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors.numpy import save_file

import enctensor
from enctensor import IntegrityError
from enctensor._sharded import SHARD_KEY, load_sharded
from enctensor.convert import InputFormatError, decrypt_file, encrypt_file, rekey_file, verify_file
from enctensor.convert import _common as common
from enctensor.convert import sharded as conv_sharded

#: The installed console script, as a user runs it.
ENCTENSOR = Path(sys.executable).parent / "enctensor"
INDEX = "model.enct.index.json"
PLAIN_INDEX = "model.safetensors.index.json"
EXIT_INTEGRITY = 4


def shard(s: int, n: int = 3, ext: str = ".enct") -> str:
    return f"model-{s + 1:05d}-of-{n:05d}{ext}"


def write_plain(d: Path, n: int, seed: int) -> Path:
    """A checkpoint laid out as transformers' save_pretrained does: ``n`` shards with the
    tensors ``layers.{s}.q`` and ``layers.{s}.k``, values depending on ``seed``."""
    d.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(n):
        tensors = {
            f"layers.{s}.{k}": sample_array(np.float32, (8, 4 + s), 100 * seed + 10 * s + i)
            for i, k in enumerate("qk")
        }
        save_file(tensors, d / shard(s, n, ".safetensors"), metadata={"format": "pt"})
        for name, arr in tensors.items():
            weight_map[name] = shard(s, n, ".safetensors")
            total += arr.nbytes
    index = d / PLAIN_INDEX
    index.write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
        + "\n"
    )
    return index


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``enctensor`` entry point, without a terminal."""
    assert ENCTENSOR.exists(), ENCTENSOR
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCTENSOR_")}
    return subprocess.run(
        [str(ENCTENSOR), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        timeout=120,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def read_entry(path: Path) -> dict[str, Any]:
    entry = json.loads(enctensor.inspect(path)["metadata"][SHARD_KEY])
    assert isinstance(entry, dict)
    return entry


def files_in(d: Path) -> set[str]:
    return set(os.listdir(d))


class Releases:
    """Encrypted releases of one publisher, all with the same key (``KEY``) and file names:
    ``a`` and ``b`` (3 shards, the same tensor names, other values), ``c`` (4 shards: its
    fourth holds tensors that ``a`` lacks). ``sa``, ``sb``, ``sc``: the same, signed by
    ``publisher`` (written by ``enctensor encrypt --sign-with``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.publisher = Ed25519PrivateKey.generate()
        self.public: Ed25519PublicKey = self.publisher.public_key()
        keys = root / "keys"
        keys.mkdir()
        self.key_file = keys / "k"
        self.key_file.write_text(KEY.hex() + "\n")
        self.key_file.chmod(0o600)
        self.sign_file = keys / "publisher.pem"
        self.sign_file.write_bytes(
            self.publisher.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.sign_file.chmod(0o600)
        self.verify_text = "ed25519:" + self.public.public_bytes_raw().hex()
        self.plain = {
            name: write_plain(root / "plain" / name, n, seed)
            for name, n, seed in (("a", 3, 1), ("b", 3, 2), ("c", 4, 3))
        }
        self.enc: dict[str, Path] = {}
        for name, src in self.plain.items():
            out = root / "enc" / name
            out.mkdir(parents=True)
            encrypt_file(src, out / INDEX, key=KEY)
            self.enc[name] = out
            signed = root / "enc" / f"s{name}"
            signed.mkdir()
            ok(
                run(
                    "encrypt",
                    src,
                    signed / INDEX,
                    "-k",
                    self.key_file,
                    "--sign-with",
                    self.sign_file,
                    cwd=root,
                )
            )
            self.enc[f"s{name}"] = signed

    def copy(self, name: str, dst: Path) -> Path:
        shutil.copytree(self.enc[name], dst)
        return dst


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return Releases(tmp_path_factory.mktemp("releases"))


# --- The attacks --------------------------------------------------------------------------
# Each edits a copy of release `a` (or `sa`) in place, using files of the other releases of
# the same publisher (`other` is "b"/"sb", `more` "c"/"sc"), and returns a pattern that the
# error message must contain (the shard or tensor concerned).


def _index(d: Path) -> dict[str, Any]:
    obj = json.loads((d / INDEX).read_text())
    assert isinstance(obj, dict)
    return obj


def _write_index(d: Path, obj: dict[str, Any]) -> None:
    (d / INDEX).write_text(json.dumps(obj, indent=2) + "\n")


def drop_shard(d: Path, rel: Releases, other: str, more: str) -> str:
    """The last shard and its index entries are removed."""
    (d / shard(2)).unlink()
    obj = _index(d)
    obj["weight_map"] = {t: s for t, s in obj["weight_map"].items() if s != shard(2)}
    _write_index(d, obj)
    return re.escape(shard(2))


def extra_shard(d: Path, rel: Releases, other: str, more: str) -> str:
    """A fourth shard, from another release (same key, same publisher), added with its entries."""
    extra = shard(3, 4)
    shutil.copyfile(rel.enc[more] / extra, d / extra)
    obj = _index(d)
    obj["weight_map"].update({f"layers.3.{k}": extra for k in "qk"})
    _write_index(d, obj)
    return re.escape(extra)


def swap_shards(d: Path, rel: Releases, other: str, more: str) -> str:
    """Shards 1 and 2 swap file names; the index is fixed to match (so each file holds what
    the index says)."""
    first, second = d / shard(0), d / shard(1)
    tmp = d / "tmp"
    first.rename(tmp)
    second.rename(first)
    tmp.rename(second)
    swap = {shard(0): shard(1), shard(1): shard(0)}
    obj = _index(d)
    obj["weight_map"] = {t: swap.get(s, s) for t, s in obj["weight_map"].items()}
    _write_index(d, obj)
    return f"{re.escape(shard(0))}|{re.escape(shard(1))}"


def rename_shard(d: Path, rel: Releases, other: str, more: str) -> str:
    """Shard 2 is renamed, and the index follows it."""
    (d / shard(1)).rename(d / "model-renamed.enct")
    obj = _index(d)
    obj["weight_map"] = {
        t: "model-renamed.enct" if s == shard(1) else s for t, s in obj["weight_map"].items()
    }
    _write_index(d, obj)
    return f"model-renamed\\.enct|{re.escape(shard(1))}"


def mix_release(d: Path, rel: Releases, other: str, more: str) -> str:
    """Shard 2 replaced by shard 2 of another release (same key, publisher, file and tensor
    names): a partial rollback."""
    shutil.copyfile(rel.enc[other] / shard(1), d / shard(1))
    return re.escape(shard(1))


def move_tensor(d: Path, rel: Releases, other: str, more: str) -> str:
    """The index points a tensor of shard 1 at shard 2."""
    obj = _index(d)
    obj["weight_map"]["layers.0.q"] = shard(1)
    _write_index(d, obj)
    return re.escape("layers.0.q")


Attack = Callable[[Path, Releases, str, str], str]
ATTACKS: list[Attack] = [
    drop_shard,
    extra_shard,
    swap_shards,
    rename_shard,
    mix_release,
    move_tensor,
]


def attacked(rel: Releases, tmp_path: Path, attack: Attack, signed: bool) -> tuple[Path, str]:
    base, other, more = ("sa", "sb", "sc") if signed else ("a", "b", "c")
    d = rel.copy(base, tmp_path / "enc")
    return d, attack(d, rel, other, more)


def creds(rel: Releases, signed: bool) -> dict[str, Any]:
    return {"key": KEY, "verify_with": rel.public if signed else None}


# --- Through Python -----------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_intact_sets_load_verify_and_decrypt(releases: Releases, tmp_path: Path, signed: bool) -> None:
    for name in ("a", "b", "c"):
        d = releases.enc[f"s{name}" if signed else name]
        plain_dir = releases.plain[name].parent
        want = {}
        for f in sorted(plain_dir.glob("*.safetensors")):
            with enctensor.safe_open(d / f.name.replace(".safetensors", ".enct"), key=KEY) as h:
                want.update({k: h.get_tensor(k) for k in h.keys()})  # noqa: SIM118
        got = load_sharded(d / INDEX, **creds(releases, signed))
        assert list(got) == list(want) and all(same(got[k], want[k]) for k in want)
        assert verify_file(d / INDEX, **creds(releases, signed))[0] == len(want)
        out = tmp_path / f"out-{name}"
        out.mkdir()
        decrypt_file(d / INDEX, out / PLAIN_INDEX, **creds(releases, signed))
        # Byte for byte what the safetensors library wrote: the binding entry is not kept.
        assert files_in(out) == files_in(plain_dir)
        for f in plain_dir.iterdir():
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_attack_is_an_integrity_error_in_python(
    releases: Releases, tmp_path: Path, attack: Attack, signed: bool
) -> None:
    d, needle = attacked(releases, tmp_path, attack, signed)
    out = tmp_path / "out"
    out.mkdir()
    c = creds(releases, signed)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("load_sharded", lambda: load_sharded(d / INDEX, **c)),
        ("verify_file", lambda: verify_file(d / INDEX, **c)),
        ("decrypt_file", lambda: decrypt_file(d / INDEX, out / PLAIN_INDEX, **c)),
    ]
    for what, call in calls:
        with pytest.raises(IntegrityError) as info:
            call()
        msg = str(info.value)
        assert re.search(needle, msg), (what, msg)
        assert KEY.hex() not in msg.lower() and KEY.hex() not in repr(info.value.args).lower(), what
    assert files_in(out) == set()  # decrypt left nothing behind


# --- Through the command line -------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest.mark.parametrize("command", ["verify", "decrypt"])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__)
def test_attack_is_an_integrity_error_in_the_cli(
    releases: Releases, tmp_path: Path, attack: Attack, command: str, signed: bool
) -> None:
    d, needle = attacked(releases, tmp_path, attack, signed)
    out = tmp_path / "out"
    out.mkdir()
    args: list[str | Path] = [command, d / INDEX]
    if command == "decrypt":
        args.append(out / PLAIN_INDEX)
    args += ["-k", releases.key_file]
    if signed:
        args += ["--verify-with", releases.verify_text]
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == EXIT_INTEGRITY, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("enctensor: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(needle, lines[0]), lines[0]
    assert KEY.hex() not in proc.stderr.lower()
    assert files_in(out) == set()


def test_cli_accepts_intact_signed_set(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("sa", tmp_path / "enc")
    proc = ok(
        run("verify", d / INDEX, "-k", releases.key_file, "--verify-with", releases.verify_text, cwd=tmp_path)
    )
    assert "OK" in proc.stdout
    out = tmp_path / "out"
    out.mkdir()
    ok(
        run(
            "decrypt",
            d / INDEX,
            out / PLAIN_INDEX,
            "-k",
            releases.key_file,
            "--verify-with",
            releases.verify_text,
            cwd=tmp_path,
        )
    )
    plain_dir = releases.plain["a"].parent
    for f in plain_dir.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()


# --- What the writers put in each shard ---------------------------------------------------


def test_every_shard_carries_the_entry(releases: Releases) -> None:
    checkpoints = set()
    for name, n in (("a", 3), ("b", 3), ("c", 4), ("sa", 3), ("sb", 3), ("sc", 4)):
        files = [shard(i, n) for i in range(n)]
        ids = set()
        for i, f in enumerate(files):
            md = enctensor.inspect(releases.enc[name] / f)["metadata"]
            assert md["format"] == "pt"  # the source metadata is kept
            text = md[SHARD_KEY]
            entry = json.loads(text)
            assert entry == {"checkpoint": entry["checkpoint"], "index": i, "count": n, "files": files}
            assert re.fullmatch(r"[0-9a-f]{32}", entry["checkpoint"])
            # Compact JSON, sorted keys: deterministic bytes.
            assert text == json.dumps(entry, separators=(",", ":"), sort_keys=True)
            ids.add(entry["checkpoint"])
        assert len(ids) == 1
        checkpoints |= ids
    assert len(checkpoints) == 6  # fresh per set, even for the same source (a and sa)


def test_source_shard_with_the_reserved_entry_is_refused(tmp_path: Path) -> None:
    src = write_plain(tmp_path / "src", 2, 1)
    forged = {"layers.1.q": sample_array(np.float32, (2, 2), 5)}
    save_file(forged, src.parent / shard(1, 2, ".safetensors"), metadata={SHARD_KEY: "{}"})
    obj = json.loads(src.read_text())
    obj["weight_map"] = {t: s for t, s in obj["weight_map"].items() if t != "layers.1.k"}
    src.write_text(json.dumps(obj))
    (tmp_path / "enc").mkdir()
    with pytest.raises(InputFormatError, match=re.escape(SHARD_KEY)):
        encrypt_file(src, tmp_path / "enc" / INDEX, key=KEY)
    assert files_in(tmp_path / "enc") == set()


def test_empty_index_is_not_encrypted(tmp_path: Path) -> None:
    (tmp_path / PLAIN_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    (tmp_path / "enc").mkdir()
    with pytest.raises(InputFormatError, match="no tensor"):
        encrypt_file(tmp_path / PLAIN_INDEX, tmp_path / "enc" / INDEX, key=KEY)


def test_rekey_of_an_index_keeps_the_binding(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("sa", tmp_path / "enc")
    before = {f: read_entry(d / f) for f in (shard(i) for i in range(3))}
    rekey_file(d / INDEX, key=KEY, new_keys=[OTHER_KEY])
    assert {f: read_entry(d / f) for f in before} == before
    assert verify_file(d / INDEX, key=OTHER_KEY, verify_with=releases.public)[0] == 6
    # ... and a shard of another release, re-keyed the same way, is still refused.
    other = releases.copy("sb", tmp_path / "other")
    rekey_file(other / INDEX, key=KEY, new_keys=[OTHER_KEY])
    shutil.copyfile(other / shard(1), d / shard(1))
    with pytest.raises(IntegrityError, match=re.escape(shard(1))):
        verify_file(d / INDEX, key=OTHER_KEY, verify_with=releases.public)


# --- More ways a set can be wrong ---------------------------------------------------------


def test_shard_without_the_entry_is_refused(releases: Releases, tmp_path: Path) -> None:
    """Shard 2 replaced by the same plaintext encrypted on its own with the same key."""
    d = releases.copy("a", tmp_path / "enc")
    (d / shard(1)).unlink()
    encrypt_file(releases.plain["a"].parent / shard(1, 3, ".safetensors"), d / shard(1), key=KEY)
    with pytest.raises(IntegrityError, match=re.escape(SHARD_KEY)):
        load_sharded(d / INDEX, key=KEY)
    with pytest.raises(IntegrityError, match=re.escape(shard(1))):
        verify_file(d / INDEX, key=KEY)


def test_missing_shard_file_is_an_integrity_error(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("a", tmp_path / "enc")
    (d / shard(2)).unlink()  # still in the index
    with pytest.raises(IntegrityError, match=re.escape(shard(2)) + ".*missing"):
        verify_file(d / INDEX, key=KEY)
    with pytest.raises(IntegrityError, match="missing"):
        load_sharded(d / INDEX, key=KEY)
    proc = run("verify", d / INDEX, "-k", releases.key_file, cwd=tmp_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr


def test_expect_checkpoint_pins_a_release(releases: Releases, tmp_path: Path) -> None:
    """A whole set rolled back (every shard and the index of an older release) verifies:
    only a caller who pins the checkpoint (or a metadata entry) detects it."""
    pinned = read_entry(releases.enc["a"] / shard(0))["checkpoint"]
    assert set(load_sharded(releases.enc["a"] / INDEX, key=KEY, expect_checkpoint=pinned.upper()))
    rolled_back = releases.copy("b", tmp_path / "enc")
    load_sharded(rolled_back / INDEX, key=KEY)  # nothing binds a version
    with pytest.raises(IntegrityError, match=pinned):
        load_sharded(rolled_back / INDEX, key=KEY, expect_checkpoint=pinned)
    secret = common.Secret.for_reading(KEY)
    with pytest.raises(IntegrityError, match=pinned):
        conv_sharded.verify(rolled_back / INDEX, secret, expect_checkpoint=pinned)
    with pytest.raises(ValueError, match="32 hexadecimal"):
        load_sharded(releases.enc["a"] / INDEX, key=KEY, expect_checkpoint="v1")


def test_expect_metadata_is_checked_on_every_shard(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("a", tmp_path / "enc")
    assert len(load_sharded(d / INDEX, key=KEY, expect_metadata={"format": "pt"})) == 6
    with pytest.raises(IntegrityError, match="format"):
        load_sharded(d / INDEX, key=KEY, expect_metadata={"format": "tf"})
    with pytest.raises(IntegrityError, match="version"):
        load_sharded(d / INDEX, key=KEY, expect_metadata={"version": "2"})
    with pytest.raises(TypeError):
        load_sharded(d / INDEX, key=KEY, expect_metadata={"format": 1})  # type: ignore[dict-item]


def test_signed_set_needs_the_publisher(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("a", tmp_path / "enc")  # not signed
    with pytest.raises(enctensor.SignatureError):
        load_sharded(d / INDEX, key=KEY, verify_with=releases.public)
    rival = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(enctensor.SignatureError):
        load_sharded(releases.enc["sa"] / INDEX, key=KEY, verify_with=rival)


def test_emptied_index_is_refused(releases: Releases, tmp_path: Path) -> None:
    """Every shard dropped from the index. An empty index does not say whether its shards are
    encrypted, so the converters and the CLI take it for a plaintext index and refuse it as a
    format error; the loader of sets refuses it as an integrity failure."""
    d = releases.copy("sa", tmp_path / "enc")
    obj = _index(d)
    obj["weight_map"] = {}
    _write_index(d, obj)
    with pytest.raises(IntegrityError, match="no shard"):
        load_sharded(d / INDEX, key=KEY, verify_with=releases.public)
    with pytest.raises(enctensor.FormatError):
        verify_file(d / INDEX, key=KEY, verify_with=releases.public)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(enctensor.FormatError):
        decrypt_file(d / INDEX, out / PLAIN_INDEX, key=KEY, verify_with=releases.public)
    assert files_in(out) == set()
    for args in (("verify", d / INDEX), ("decrypt", d / INDEX, out / PLAIN_INDEX)):
        proc = run(*args, "-k", releases.key_file, "--verify-with", releases.verify_text, cwd=tmp_path)
        assert proc.returncode == 5, proc.stderr  # EXIT_FORMAT: "is not encrypted"
    assert files_in(out) == set()


# --- Through the hooks in files this change does not own ----------------------------------
# (enctensor/__init__.py exports load_sharded; convert.rekey_file re-keys the set the shards
# record, checked whole, through sharded.set_credentials; verify_file/decrypt_file and the
# CLI's verify/decrypt take expect_checkpoint / --expect-checkpoint.)


def test_load_sharded_is_public(releases: Releases) -> None:
    assert getattr(enctensor, "load_sharded", None) is load_sharded
    assert "load_sharded" in enctensor.__all__


def test_rekey_refuses_a_broken_set_and_changes_nothing(releases: Releases, tmp_path: Path) -> None:
    d = releases.copy("a", tmp_path / "enc")
    mix_release(d, releases, "b", "c")
    before = {f: f.read_bytes() for f in d.iterdir()}
    with pytest.raises(IntegrityError, match=re.escape(shard(1))):
        rekey_file(d / INDEX, key=KEY, new_keys=[OTHER_KEY])
    assert {f: f.read_bytes() for f in d.iterdir()} == before
    proc = run("rekey", d / INDEX, "-k", releases.key_file, "--new-key-file", releases.key_file, cwd=tmp_path)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert {f: f.read_bytes() for f in d.iterdir()} == before


def test_expect_checkpoint_in_the_converters_and_the_cli(releases: Releases, tmp_path: Path) -> None:
    pinned = read_entry(releases.enc["sa"] / shard(0))["checkpoint"]
    good = releases.copy("sa", tmp_path / "good")
    rolled_back = releases.copy("sb", tmp_path / "rolled_back")
    pin: dict[str, Any] = {"expect_checkpoint": pinned}
    assert verify_file(good / INDEX, key=KEY, verify_with=releases.public, **pin)[0] == 6
    with pytest.raises(IntegrityError, match=pinned):
        verify_file(rolled_back / INDEX, key=KEY, verify_with=releases.public, **pin)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match=pinned):
        decrypt_file(rolled_back / INDEX, out / PLAIN_INDEX, key=KEY, verify_with=releases.public, **pin)
    assert files_in(out) == set()
    opts = ["-k", releases.key_file, "--verify-with", releases.verify_text, "--expect-checkpoint", pinned]
    ok(run("verify", good / INDEX, *opts, cwd=tmp_path))
    proc = run("verify", rolled_back / INDEX, *opts, cwd=tmp_path)
    assert proc.returncode == EXIT_INTEGRITY and pinned in proc.stderr, proc.stderr
    proc = run("decrypt", rolled_back / INDEX, out / PLAIN_INDEX, *opts, cwd=tmp_path)
    assert proc.returncode == EXIT_INTEGRITY and pinned in proc.stderr, proc.stderr
    assert files_in(out) == set()
