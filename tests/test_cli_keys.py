"""The command line's key management, driven as a user would: the installed ``enctensor``
console script and ``python -m enctensor``, in subprocesses without a terminal, on files
written by the safetensors library and by TVM. Covers public-key recipients and identities
(X25519, RSA), passphrases, publisher signatures (Ed25519) and re-keying."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_array
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519
from safetensors.numpy import load_file, save_file

import enctensor
from enctensor import cli

PAGE = 4096
PASSPHRASE = "correct horse battery staple"
TENSORS = {
    "embed.weight": sample_array(np.float32, (300, 64), 1),  # 75 KiB: several 4 KiB pages
    "ln.bias": sample_array(np.float16, (64,), 2),
    "mask": sample_array(np.bool_, (7,), 3),
    "step": np.array(12, dtype=np.int64),
}

Run = Callable[..., subprocess.CompletedProcess[str]]

# --- Running the CLI ----------------------------------------------------------------------


def _script() -> list[str]:
    exe = shutil.which("enctensor")
    assert exe is not None, "the enctensor console script is not installed (pip install -e .)"
    return [exe]


EXES = {"script": _script, "module": lambda: [sys.executable, "-m", "enctensor"]}


def make_runner(exe: list[str], cwd: Path) -> Run:
    def run(
        *args: str | Path,
        passphrase: str | None = None,
        new_passphrase: str | None = None,
        cwd: Path = cwd,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the CLI without a terminal (pipes, a new session), with the passphrase
        environment variables only if given."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in (cli.PASSPHRASE_ENV, cli.NEW_PASSPHRASE_ENV, cli.DEBUG_ENV)
        }
        if passphrase is not None:
            env[cli.PASSPHRASE_ENV] = passphrase
        if new_passphrase is not None:
            env[cli.NEW_PASSPHRASE_ENV] = new_passphrase
        return subprocess.run(
            [*exe, *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            timeout=300,
            check=False,
        )

    return run


@pytest.fixture
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """The CLI working in tmp_path: the console script, or as ``BOTH`` parametrizes it."""
    return make_runner(EXES[getattr(request, "param", "script")](), tmp_path)


#: Runs a test both with the console script and with ``python -m enctensor``.
BOTH = pytest.mark.parametrize("run", list(EXES), indirect=True)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    return proc


def assert_failed(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit status ``code``, and exactly one line on stderr in the CLI's style, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("enctensor: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --- Keys, made once by `enctensor keygen` ------------------------------------------------


class Keys:
    """Key files made by ``enctensor keygen`` in one directory, with what keygen printed."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.printed: dict[str, str] = {}

    def path(self, name: str) -> Path:
        return self.dir / name

    def recipient(self, name: str) -> str:
        return self.printed[name].strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """alice, carol, stranger: X25519; bob: RSA-2048; publisher, rival: Ed25519; old.key,
    new.key: raw keys. bob's public key is written with --public-out."""
    d = tmp_path_factory.mktemp("keys")
    run = make_runner(_script(), d)
    k = Keys(d)
    for name in ("alice", "carol", "stranger"):
        k.printed[name] = ok(run("keygen", "--x25519", f"{name}.pem")).stdout
        (d / f"{name}.pub").write_text(k.printed[name])
    ok(run("keygen", "--rsa", "--bits", "2048", "bob.pem", "--public-out", "bob.pub.pem"))
    for name in ("publisher", "rival"):
        k.printed[name] = ok(run("keygen", "--ed25519", f"{name}.pem")).stdout
        (d / f"{name}.pub").write_text(k.printed[name])
    for name in ("old.key", "new.key"):
        ok(run("keygen", name))
    return k


@pytest.fixture(scope="module")
def rsa4096(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five RSA-4096 key pairs from ``enctensor keygen --rsa --bits 4096``, made in parallel."""
    d = tmp_path_factory.mktemp("rsa4096")
    procs = [
        subprocess.Popen(
            [*_script(), "keygen", "--rsa", "--bits", "4096", f"r{i}.pem", "--public-out", f"r{i}.pub.pem"],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for i in range(5)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return [d / f"r{i}.pem" for i in range(5)]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """model.safetensors, written by the safetensors library."""
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, path, metadata={"format": "pt"})
    return path


def after_stanzas_end(data: bytes) -> int:
    """Where the header starts: after the 32-byte preamble and the stanza area."""
    return 32 + struct.unpack_from("<I", data, 12)[0]


def files_in(d: Path) -> set[str]:
    return set(os.listdir(d))


def key_hex(path: Path) -> str:
    return path.read_text().strip()


def private_secrets(k: Keys) -> list[str]:
    """Strings that must never appear in the CLI's output: every private key, raw and PEM."""
    out = [key_hex(k.path("old.key")), key_hex(k.path("new.key"))]
    for name in ("alice", "carol", "stranger", "bob", "publisher", "rival"):
        pem = k.path(f"{name}.pem").read_text()
        out.append(pem.splitlines()[1])  # the first line of the base64 body
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if isinstance(key, x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey):
            out.append(key.private_bytes_raw().hex())
    return out


def assert_no_secrets(k: Keys, *procs: subprocess.CompletedProcess[str]) -> None:
    for proc in procs:
        for secret in private_secrets(k):
            assert secret not in proc.stdout and secret not in proc.stderr


# --- keygen -------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("option", "key_type", "prefix"),
    [
        ("--x25519", x25519.X25519PrivateKey, "x25519:"),
        ("--ed25519", ed25519.Ed25519PrivateKey, "ed25519:"),
        ("--rsa", rsa.RSAPrivateKey, "-----BEGIN PUBLIC KEY-----"),
    ],
)
def test_keygen_kinds(run: Run, tmp_path: Path, option: str, key_type: type, prefix: str) -> None:
    proc = ok(run("keygen", option, "id.pem"))
    path = tmp_path / "id.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, key_type)
    assert proc.stderr.startswith("id.pem: wrote") and proc.stderr.count("\n") == 1
    printed = proc.stdout
    assert printed.startswith(prefix) and printed.endswith("\n")
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size == cli.DEFAULT_RSA_BITS
        public = serialization.load_pem_public_key(printed.encode())
        assert (
            isinstance(public, rsa.RSAPublicKey)
            and public.public_numbers() == key.public_key().public_numbers()
        )
    else:
        assert len(printed) == len(prefix) + 64 + 1
        assert bytes.fromhex(printed[len(prefix) : -1]) == key.public_key().public_bytes_raw()
    # pubkey prints the same from the private key file.
    assert ok(run("pubkey", "id.pem")).stdout == printed

    # Never overwritten, not even by another kind.
    for again in ([option], ["--x25519"], []):
        assert_failed(run("keygen", *again, "id.pem"), 1, "id.pem", "already exists")
    assert path.read_bytes() == pem


def test_keygen_public_out_and_usage(run: Run, tmp_path: Path) -> None:
    proc = ok(run("keygen", "--rsa", "--bits", "2048", "r.pem", "--public-out", "r.pub.pem"))
    assert proc.stdout == ""
    private = serialization.load_pem_private_key((tmp_path / "r.pem").read_bytes(), password=None)
    public = serialization.load_pem_public_key((tmp_path / "r.pub.pem").read_bytes())
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert stat.S_IMODE((tmp_path / "r.pem").stat().st_mode) == 0o600

    ok(run("keygen", "--x25519", "x.pem", "--public-out", "x.pub"))
    assert (tmp_path / "x.pub").read_text().startswith("x25519:")

    # An existing public-key file: refused before anything is made, no private key left.
    before = files_in(tmp_path)
    assert_failed(run("keygen", "--x25519", "y.pem", "--public-out", "x.pub"), 1, "x.pub", "already exists")
    assert_failed(run("keygen", "--x25519", "y.pem", "--public-out", "y.pem"), 2, "y.pem")
    assert_failed(run("keygen", "--x25519", "--bits", "4096", "y.pem"), 2, "--bits")
    assert_failed(run("keygen", "--public-out", "y.pub", "y.key"), 2, "--public-out")
    assert run("keygen", "--rsa", "--bits", "1024", "y.pem").returncode == 2
    assert run("keygen", "--rsa", "--x25519", "y.pem").returncode == 2
    assert files_in(tmp_path) == before

    # The raw key file is as it was: 64 hex characters and a newline.
    assert ok(run("keygen", "raw.key")).stdout == ""
    text = (tmp_path / "raw.key").read_text()
    assert len(text) == 65 and bytes.fromhex(text[:64])


# --- Recipients and identities --------------------------------------------------------------


@BOTH
def test_several_recipients_each_identity_opens(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    proc = ok(
        run(
            "encrypt",
            model.name,
            "model.enct",
            "--recipient",
            keys.recipient("alice"),  # the one-line text keygen printed
            "-r",
            keys.path("carol.pub"),  # a file holding it
            "-r",
            keys.path("bob.pub.pem"),  # a PEM RSA public key
            "--key-file",
            keys.path("old.key"),
        )
    )
    assert proc.stdout == "" and proc.stderr.startswith("model.enct: encrypted")
    info = json.loads(ok(run("inspect", "model.enct", "--json")).stdout)
    assert sorted(info["stanzas"]) == ["key", "rsa-oaep", "x25519", "x25519"]
    assert info["signed"] is False
    assert [s["type"] for s in info["stanza_details"]] == info["stanzas"]
    text = ok(run("inspect", "model.enct")).stdout
    assert "2 x25519" in text and "rsa-oaep 2048-bit" in text and "signed      no" in text

    original = model.read_bytes()
    for i, how in enumerate(
        [
            ["--identity", keys.path("alice.pem")],
            ["-i", keys.path("carol.pem")],
            ["-i", keys.path("bob.pem")],
            ["-k", keys.path("old.key")],
            ["-i", keys.path("stranger.pem"), "-i", keys.path("bob.pem")],  # each is tried
            ["-i", keys.path("stranger.pem"), "-k", keys.path("old.key")],
        ]
    ):
        ok(run("decrypt", "model.enct", f"out{i}.safetensors", *how))
        assert (tmp_path / f"out{i}.safetensors").read_bytes() == original
        loaded = load_file(tmp_path / f"out{i}.safetensors")
        assert all(loaded[n].tobytes() == a.tobytes() for n, a in TENSORS.items())
        ok(run("verify", "model.enct", *how))

    before = files_in(tmp_path)
    wrong = run("decrypt", "model.enct", "x.safetensors", "-i", keys.path("stranger.pem"))
    line = assert_failed(wrong, 3, "model.enct", "X25519", "--identity")
    assert "rsa-oaep" in line  # says what would open it
    assert_failed(run("verify", "model.enct", "-k", keys.path("new.key")), 3, "model.enct")
    assert_failed(
        run("verify", "model.enct", "-i", keys.path("stranger.pem"), "-k", keys.path("new.key")),
        3,
        "none of the 2 keys",
    )
    assert files_in(tmp_path) == before
    assert_no_secrets(keys, wrong)


def test_recipients_and_signature_through_tvm_params(run: Run, tmp_path: Path, keys: Keys) -> None:
    tvm = pytest.importorskip("tvm")
    arrays = {
        "w": sample_array(np.float32, (64, 32), 1),
        "h": sample_array(np.float16, (5,), 2),
        "flag": np.array([True, False, True]),
        "n": np.array(3, dtype=np.int32),
    }
    tvm.runtime.save_param_dict_to_file(
        {n: tvm.runtime.tensor(a) for n, a in arrays.items()}, str(tmp_path / "m.params")
    )
    ok(
        run(
            "encrypt",
            "m.params",
            "m.enct",
            "-r",
            keys.recipient("alice"),
            "-r",
            keys.path("bob.pub.pem"),
            "--sign-with",
            keys.path("publisher.pem"),
        )
    )
    for identity in ("alice", "bob"):
        out = f"{identity}.params"
        ok(
            run(
                "decrypt",
                "m.enct",
                out,
                "-i",
                keys.path(f"{identity}.pem"),
                "--verify-with",
                keys.recipient("publisher"),
            )
        )
        assert (tmp_path / out).read_bytes() == (tmp_path / "m.params").read_bytes()
        loaded = tvm.runtime.load_param_dict_from_file(str(tmp_path / out))
        assert all(loaded[n].numpy().tobytes() == a.tobytes() for n, a in arrays.items())
    # verify without --verify-with passes (the MAC and tags hold) but says the signature was
    # not checked: the MAC proves only that some key holder wrote the file.
    unchecked = ok(run("verify", "m.enct", "-i", keys.path("alice.pem")))
    assert "signature was NOT checked" in unchecked.stdout, unchecked.stdout
    checked = ok(
        run("verify", "m.enct", "-i", keys.path("alice.pem"), "--verify-with", keys.path("publisher.pub"))
    )
    assert "publisher signature valid" in checked.stdout and "NOT checked" not in checked.stdout
    assert_failed(run("decrypt", "m.enct", "x.params", "-i", keys.path("stranger.pem")), 3)
    assert_failed(
        run("verify", "m.enct", "-i", keys.path("alice.pem"), "--verify-with", keys.path("rival.pub")),
        4,
        "signature",
    )
    assert not (tmp_path / "x.params").exists()


def test_sharded_checkpoint_recipients_signature_and_rekey(run: Run, tmp_path: Path, keys: Keys) -> None:
    src, enc, out = tmp_path / "src", tmp_path / "enc", tmp_path / "out"
    for d in (src, enc, out):
        d.mkdir()
    weight_map = {}
    for s in (1, 2):
        shard = f"model-0000{s}-of-00002.safetensors"
        tensors = {f"l{s}.w": sample_array(np.float32, (64, 64), s)}
        save_file(tensors, src / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
    index = {"metadata": {"total_size": 2 * 64 * 64 * 4}, "weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    ok(
        run(
            "encrypt",
            "src/model.safetensors.index.json",
            "enc/model.enct.index.json",
            "-r",
            keys.recipient("alice"),
            "-r",
            keys.path("bob.pub.pem"),
            "-s",
            keys.path("publisher.pem"),
        )
    )
    shards = sorted(enc.glob("*.enct"))
    assert len(shards) == 2
    for shard in shards:  # every shard: the same recipients, its own signature
        info = enctensor.inspect(shard)
        assert sorted(info["stanzas"]) == ["rsa-oaep", "x25519"] and info["signed"] is True
    index_arg = "enc/model.enct.index.json"
    pub = keys.recipient("publisher")
    ok(run("verify", index_arg, "-i", keys.path("bob.pem"), "--verify-with", pub))
    assert_failed(
        run("verify", index_arg, "-i", keys.path("bob.pem"), "--verify-with", keys.recipient("rival")), 4
    )

    # A wrong current key changes no shard.
    before = {p: p.read_bytes() for p in shards}
    assert_failed(run("rekey", index_arg, "-i", keys.path("stranger.pem"), "-r", keys.recipient("carol")), 3)
    assert {p: p.read_bytes() for p in shards} == before

    proc = ok(
        run("rekey", index_arg, "-i", keys.path("alice.pem"), "--new-recipient", keys.recipient("carol"))
    )
    # One line per file, each followed by its stanza list (indented).
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith(" ")]
    assert len(lines) == 2 and all("in place" in ln for ln in lines)
    assert sorted(ln.split(":")[0] for ln in lines) == [f"enc/{p.name}" for p in shards]
    for p in shards:
        assert p.read_bytes()[PAGE:] == before[p][PAGE:]
    assert_failed(run("verify", index_arg, "-i", keys.path("alice.pem")), 3)
    ok(
        run(
            "decrypt",
            index_arg,
            "out/model.safetensors.index.json",
            "-i",
            keys.path("carol.pem"),
            "--verify-with",
            pub,
        )
    )
    for name in files_in(src):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


# --- Passphrases ------------------------------------------------------------------------------


@BOTH
def test_passphrase_right_and_wrong(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    ok(run("encrypt", model.name, "p.enct", "--passphrase", "--scrypt-log-n", "10", passphrase=PASSPHRASE))
    assert PASSPHRASE.encode() not in (tmp_path / "p.enct").read_bytes()
    assert json.loads(ok(run("inspect", "p.enct", "--json")).stdout)["stanzas"] == ["scrypt"]
    ok(run("decrypt", "p.enct", "p.safetensors", "-p", passphrase=PASSPHRASE))
    assert (tmp_path / "p.safetensors").read_bytes() == model.read_bytes()
    wrong = run("decrypt", "p.enct", "q.safetensors", "-p", passphrase="Correct horse battery staple")
    assert_failed(wrong, 3, "p.enct", "--passphrase")
    assert PASSPHRASE not in wrong.stderr
    assert_failed(run("decrypt", "p.enct", "q.safetensors", "-i", keys.path("alice.pem")), 3)
    assert not (tmp_path / "q.safetensors").exists()

    # A passphrase must be the only way in, and is never taken from argv.
    assert_failed(
        run("encrypt", model.name, "q.enct", "-p", "-r", keys.recipient("alice"), passphrase=PASSPHRASE),
        2,
        "--passphrase",
    )
    assert_failed(
        run("decrypt", "p.enct", "q.safetensors", "-p", "-i", keys.path("alice.pem"), passphrase=PASSPHRASE),
        2,
        "--passphrase",
    )
    assert run("encrypt", model.name, "q.enct", "--passphrase", PASSPHRASE).returncode == 2
    assert_failed(run("decrypt", "p.enct", "q.safetensors", "-p"), 2, cli.PASSPHRASE_ENV)  # no terminal
    assert not (tmp_path / "q.enct").exists()


# --- Signatures -------------------------------------------------------------------------------


@BOTH
def test_signatures(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    ok(
        run(
            "encrypt",
            model.name,
            "s.enct",
            "-k",
            keys.path("old.key"),
            "--sign-with",
            keys.path("publisher.pem"),
        )
    )
    ok(run("encrypt", model.name, "u.enct", "-k", keys.path("old.key")))  # unsigned
    key = ["-k", keys.path("old.key")]

    info = json.loads(ok(run("inspect", "s.enct", "--json")).stdout)
    assert info["signed"] is True and info["stanzas"] == ["key"]
    assert "signed      yes" in ok(run("inspect", "s.enct")).stdout
    assert json.loads(ok(run("inspect", "u.enct", "--json")).stdout)["signed"] is False

    # The publisher's key, as the one-line text, a file of it, or a PEM public key file.
    publisher = serialization.load_pem_private_key(keys.path("publisher.pem").read_bytes(), password=None)
    assert isinstance(publisher, ed25519.Ed25519PrivateKey)
    (tmp_path / "publisher.pub.pem").write_bytes(
        publisher.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for pub in (keys.recipient("publisher"), keys.path("publisher.pub"), "publisher.pub.pem"):
        proc = ok(run("verify", "s.enct", *key, "--verify-with", pub))
        assert "publisher signature valid" in proc.stdout
    ok(run("decrypt", "s.enct", "s.safetensors", *key, "--verify-with", keys.recipient("publisher")))
    assert (tmp_path / "s.safetensors").read_bytes() == model.read_bytes()
    ok(run("verify", "s.enct", *key))  # without --verify-with the signature is not required

    before = files_in(tmp_path)
    rival = keys.recipient("rival")
    assert_failed(run("verify", "s.enct", *key, "--verify-with", rival), 4, "s.enct", "signature")
    assert_failed(run("decrypt", "s.enct", "x.safetensors", *key, "--verify-with", rival), 4, "signature")
    assert_failed(
        run("verify", "u.enct", *key, "--verify-with", keys.recipient("publisher")), 4, "u.enct", "not signed"
    )
    assert_failed(
        run("decrypt", "u.enct", "x.safetensors", *key, "--verify-with", keys.path("publisher.pub")), 4
    )
    assert files_in(tmp_path) == before

    # Keys of the wrong kind are usage errors, named, before anything is read.
    assert_failed(run("verify", "s.enct", *key, "--verify-with", keys.recipient("alice")), 2, "X25519")
    assert_failed(run("verify", "s.enct", *key, "--verify-with", keys.path("publisher.pem")), 2, "pubkey")
    assert_failed(
        run("encrypt", model.name, "x.enct", *key, "--sign-with", keys.path("alice.pem")), 2, "Ed25519"
    )
    assert_failed(run("encrypt", model.name, "x.enct", *key, "--sign-with", keys.path("publisher.pub")), 2)
    assert files_in(tmp_path) == before


# --- Re-keying ----------------------------------------------------------------------------------


@BOTH
def test_rekey_in_place(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    ok(run("encrypt", model.name, "m.enct", "-k", keys.path("old.key"), "-s", keys.path("publisher.pem")))
    path = tmp_path / "m.enct"
    before = path.read_bytes()
    proc = ok(
        run(
            "rekey",
            "m.enct",
            "--key-file",
            keys.path("old.key"),
            "--new-key-file",
            keys.path("new.key"),
            "--new-recipient",
            keys.recipient("alice"),
        )
    )
    assert proc.stdout.splitlines()[0] == "m.enct: re-keyed in place (one page rewritten)"
    after = path.read_bytes()
    assert len(after) == len(before) and after[PAGE:] == before[PAGE:], "only the first page may change"
    assert after[:PAGE] != before[:PAGE]
    assert sorted(json.loads(ok(run("inspect", "m.enct", "--json")).stdout)["stanzas"]) == ["key", "x25519"]

    old = run("decrypt", "m.enct", "x.safetensors", "-k", keys.path("old.key"))
    assert_failed(old, 3, "m.enct")
    pub = keys.recipient("publisher")
    for i, how in enumerate((["-k", keys.path("new.key")], ["-i", keys.path("alice.pem")])):
        ok(run("decrypt", "m.enct", f"o{i}.safetensors", *how, "--verify-with", pub))  # still signed
        assert (tmp_path / f"o{i}.safetensors").read_bytes() == model.read_bytes()
    assert not (tmp_path / "x.safetensors").exists()

    # Wrong current key: exit 3, nothing changed.
    assert_failed(
        run("rekey", "m.enct", "-k", keys.path("old.key"), "--new-key-file", keys.path("old.key")), 3
    )
    assert path.read_bytes() == after
    assert_no_secrets(keys, proc, old)


def test_rekey_rewrites_for_many_rsa4096_recipients(
    run: Run, tmp_path: Path, keys: Keys, model: Path, rsa4096: list[Path]
) -> None:
    ok(run("encrypt", model.name, "m.enct", "-k", keys.path("old.key"), "-s", keys.path("publisher.pem")))
    before = (tmp_path / "m.enct").read_bytes()
    recipients = [a for p in rsa4096 for a in ("-r", p.with_suffix(".pub.pem"))]
    # --replace: only the five RSA stanzas (-r alone would add them beside the key's).
    proc = ok(run("rekey", "m.enct", "-k", keys.path("old.key"), "--replace", *recipients))
    assert proc.stdout.startswith("m.enct: re-keyed, rewritten (") and "in place" not in proc.stdout
    after = (tmp_path / "m.enct").read_bytes()
    assert len(after) > len(before)
    info = json.loads(ok(run("inspect", "m.enct", "--json")).stdout)
    assert info["stanzas"] == ["rsa-oaep"] * 5 and info["signed"] is True
    assert "5 rsa-oaep 4096-bit" in ok(run("inspect", "m.enct")).stdout
    # Everything after the stanza area (header, MAC, tag table, tensor bytes) is copied
    # unchanged; only where it starts moved.
    assert after[after_stanzas_end(after) :] == before[after_stanzas_end(before) :]
    assert after_stanzas_end(after) > after_stanzas_end(before) == PAGE

    assert_failed(run("verify", "m.enct", "-k", keys.path("old.key")), 3)
    pub = keys.recipient("publisher")
    for i in (0, 4):
        ok(run("decrypt", "m.enct", f"o{i}.safetensors", "-i", rsa4096[i], "--verify-with", pub))
        assert (tmp_path / f"o{i}.safetensors").read_bytes() == model.read_bytes()
    ok(run("verify", "m.enct", "-i", keys.path("bob.pem"), "-i", rsa4096[2]))  # bob: not a recipient
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_rekey_passphrases(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    ok(run("encrypt", model.name, "m.enct", "-p", "--scrypt-log-n", "10", passphrase=PASSPHRASE))
    path = tmp_path / "m.enct"
    before = path.read_bytes()

    # Usage errors first, nothing changed.
    assert_failed(run("rekey", "m.enct", "-p", passphrase=PASSPHRASE), 2, "--new-")
    assert_failed(
        run(
            "rekey",
            "m.enct",
            "-p",
            "--new-passphrase",
            "--new-key-file",
            keys.path("new.key"),
            passphrase=PASSPHRASE,
            new_passphrase="x",
        ),
        2,
        "--new-passphrase",
    )
    assert_failed(
        run("rekey", "m.enct", "-p", "--new-passphrase", passphrase=PASSPHRASE), 2, cli.NEW_PASSPHRASE_ENV
    )
    assert_failed(
        run("rekey", "m.enct", "-p", "--new-passphrase", passphrase="wrong", new_passphrase="new one"), 3
    )
    assert path.read_bytes() == before

    proc = ok(
        run(
            "rekey",
            "m.enct",
            "-p",
            "--new-passphrase",
            "--scrypt-log-n",
            "11",
            passphrase=PASSPHRASE,
            new_passphrase="new one",
        )
    )
    assert "in place" in proc.stdout and PASSPHRASE not in proc.stdout + proc.stderr
    assert path.read_bytes()[PAGE:] == before[PAGE:]
    assert_failed(run("verify", "m.enct", "-p", passphrase=PASSPHRASE), 3)
    ok(run("verify", "m.enct", "-p", passphrase="new one"))

    # From a passphrase to a recipient, and back to a key file.
    # A passphrase is always the only stanza: it goes as the recipient comes.
    ok(
        run(
            "rekey",
            "m.enct",
            "-p",
            "--remove-passphrase",
            "-r",
            keys.recipient("alice"),
            passphrase="new one",
        )
    )
    assert_failed(run("verify", "m.enct", "-p", passphrase="new one"), 3)
    ok(run("rekey", "m.enct", "-i", keys.path("alice.pem"), "--new-key-file", keys.path("new.key"), "-q"))
    ok(run("decrypt", "m.enct", "o.safetensors", "-k", keys.path("new.key")))
    assert (tmp_path / "o.safetensors").read_bytes() == model.read_bytes()
    assert_failed(run("rekey", model.name, "-k", keys.path("new.key"), "-r", keys.recipient("alice")), 5)


# --- Key material given to the wrong option --------------------------------------------------------


def test_wrong_kind_of_key_file(run: Run, tmp_path: Path, keys: Keys, model: Path) -> None:
    ok(run("encrypt", model.name, "m.enct", "-k", keys.path("old.key")))
    before = files_in(tmp_path)
    cases = [
        (["verify", "m.enct", "-k", keys.path("alice.pem")], 2, "--identity"),
        (["verify", "m.enct", "-i", keys.path("old.key")], 2, "--key-file"),
        (["verify", "m.enct", "-i", keys.path("alice.pub")], 2, "public key"),
        (["verify", "m.enct", "-i", keys.path("publisher.pem")], 2, "Ed25519"),
        # An identity argument that cannot be read is not shown (it might be a key).
        (["verify", "m.enct", "-i", "missing.pem"], 1, "the value given is not shown"),
        (["encrypt", model.name, "x.enct", "-r", keys.path("alice.pem")], 2, "pubkey"),
        (["encrypt", model.name, "x.enct", "-r", keys.recipient("publisher")], 2, "Ed25519"),
        (["encrypt", model.name, "x.enct", "-r", "x25519:" + "0" * 10], 2, "64 lowercase hex"),
        (["encrypt", model.name, "x.enct", "-r", "missing.pub"], 1, "missing.pub"),
        (["encrypt", model.name, "x.enct", "-r", model.name], 2, "not a public key"),
        (["encrypt", model.name, "x.enct"], 2, "--recipient"),
    ]
    procs = []
    for args, code, needle in cases:
        procs.append(run(*args))
        assert_failed(procs[-1], code, needle)
    # A secret given where a recipient belongs is not echoed back.
    secret = key_hex(keys.path("new.key"))
    proc = run("encrypt", model.name, "x.enct", "-r", secret)
    assert proc.returncode == 1 and secret not in proc.stderr
    assert files_in(tmp_path) == before
    assert_no_secrets(keys, *procs)


def test_console_script_is_installed() -> None:
    exe = shutil.which("enctensor")
    assert exe is not None
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and enctensor.__version__ in proc.stdout
