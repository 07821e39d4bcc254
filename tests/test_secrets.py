"""No secret in any error (issue 11, item 3), and the typed key handling that guarantees it:
every entry point of the library and the CLI is given a secret in every wrong form, and the
secret must appear nowhere in what comes back: ``str(e)``, ``repr(e)``, ``e.args``,
``e.filename``, ``e.object``, chained exceptions (even suppressed ones), the formatted
traceback, the CLI's stdout and stderr.

Also here: plaintext written by ``decrypt`` is private (item 7), the scrypt read cap
(item 8), ``expect_metadata`` (the rollback pin of FORMAT.md "Sharded sets and rollback"),
the forms ``verify_with`` takes, and :func:`enctensor.read_key_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tvm.runtime
from conftest import KEY, OTHER_KEY
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from safetensors.numpy import save_file as st_save_file

import enctensor
import enctensor.torch as et
import enctensor.tvm as ev
from enctensor import FormatError, IntegrityError, SignatureError, WrongKeyError
from enctensor.convert import decrypt_file, encrypt_file, rekey_file, verify_file

#: The secret key of these tests: its bytes, hex (either case) and text must never be shown.
SECRET = hashlib.sha256(b"enctensor test_secrets: a key that must never be shown").digest()
SECRET_HEX = SECRET.hex()
#: A passphrase given where a key belongs.
PASSPHRASE = "correct horse battery staple q7Zx"
#: A passphrase that is not UTF-8 (its readable middle must not be shown either).
BAD_PASSPHRASE = b"\xff\xfe" + b"sekrit-pass-9c1d" + b"\x80"
#: A passphrase that cannot be encoded as UTF-8 (a lone surrogate).
SURROGATE_PASSPHRASE = "surrogate-pass-\udcff-4e2b"

NEEDLES: dict[str, list[str | bytes]] = {
    "key_hex": [SECRET_HEX, SECRET_HEX.upper(), SECRET, repr(SECRET)],
    "passphrase": [PASSPHRASE, PASSPHRASE.encode()],
    "bad_passphrase": [BAD_PASSPHRASE, "sekrit-pass-9c1d", b"sekrit-pass-9c1d", repr(BAD_PASSPHRASE)],
    "surrogate": ["surrogate-pass-", b"surrogate-pass-", repr(SURROGATE_PASSPHRASE)],
}


# --- the checks ------------------------------------------------------------------------------


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and every exception chained to it, suppressed or not."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [x.__context__, x.__cause__]
        if isinstance(x, BaseExceptionGroup):
            todo += list(x.exceptions)


def _shown(e: BaseException) -> Iterator[str | bytes]:
    """Everything of an exception that can end up in a log or on a screen."""
    for x in _chain(e):
        yield str(x)
        yield repr(x)
        yield repr(x.args)
        for a in x.args:
            yield bytes(a) if isinstance(a, bytes | bytearray) else str(a)
        for attr in ("filename", "filename2", "object", "name", "path", "enctensor_path"):
            v = getattr(x, attr, None)
            if v is not None:
                yield bytes(v) if isinstance(v, bytes | bytearray | memoryview) else str(v)
                yield repr(v)
        yield from getattr(x, "__notes__", [])
        yield "".join(traceback.format_exception(x))
        yield "".join(traceback.format_exception(x, chain=True))


def assert_not_shown(texts: Iterator[str | bytes] | list[str | bytes], needles: list[str | bytes]) -> None:
    for text in texts:
        for needle in needles:
            if isinstance(text, str) and isinstance(needle, str):
                assert needle.lower() not in text.lower(), (needle, text[:2000])
            elif isinstance(text, bytes | bytearray) and isinstance(needle, bytes):
                assert needle not in text, (needle, text[:2000])


def raises_clean(
    fn: Callable[[], object], expected: type[BaseException], match: str, needles: list[str | bytes]
) -> BaseException:
    """``fn()`` raises ``expected`` with ``match`` in its message, and shows none of ``needles``."""
    with pytest.raises(BaseException) as info:
        fn()
    e = info.value
    assert isinstance(e, expected), "".join(traceback.format_exception(e))
    assert match in str(e), str(e)
    assert_not_shown(_shown(e), needles)
    return e


# --- fixtures --------------------------------------------------------------------------------


TENSORS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}


class Files:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.enct = d / "m.enct"
        enctensor.save(TENSORS, self.enct, key=KEY, metadata={"version": "2"})
        self.blob = self.enct.read_bytes()
        self.plain = d / "m.safetensors"
        st_save_file(TENSORS, str(self.plain))
        self.model = torch.nn.Linear(4, 3)
        self.pt = d / "model.enct"
        et.save_model(self.model, self.pt, key=KEY)
        self.out = d / "out.safetensors"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def _readers(f: Files) -> dict[str, Callable[..., object]]:
    """Every entry point that opens an encrypted file, taking the credential keywords."""
    return {
        "load": lambda **kw: enctensor.load(f.enct, **kw),
        "load_bytes": lambda **kw: enctensor.load_bytes(f.blob, **kw),
        "safe_open": lambda **kw: enctensor.safe_open(f.enct, **kw),
        "safe_open_pt": lambda **kw: enctensor.safe_open(f.enct, framework="pt", **kw),
        "safe_open_tvm": lambda **kw: enctensor.safe_open(f.enct, framework="tvm", **kw),
        "verify": lambda **kw: enctensor.verify(f.enct, **kw),
        "rekey": lambda **kw: enctensor.rekey(f.enct, new_keys=[OTHER_KEY], **kw),
        "torch.load_file": lambda **kw: et.load_file(f.pt, **kw),
        "torch.load": lambda **kw: et.load(f.pt.read_bytes(), **kw),
        "torch.load_model": lambda **kw: et.load_model(torch.nn.Linear(4, 3), f.pt, **kw),
        "tvm.load": lambda **kw: ev.load(f.enct, **kw),
        "tvm.load_bytes": lambda **kw: ev.load_bytes(f.blob, **kw),
        "decrypt_file": lambda **kw: decrypt_file(f.enct, f.out, **kw),
        "verify_file": lambda **kw: verify_file(f.enct, **kw),
        "rekey_file": lambda **kw: rekey_file(f.enct, new_keys=[OTHER_KEY], **kw),
    }


def _writers(f: Files) -> dict[str, Callable[..., object]]:
    """Every entry point that encrypts, taking the credential keywords."""
    out = f.dir / "new.enct"
    t = {k: torch.from_numpy(v) for k, v in TENSORS.items()}
    params = {k: tvm.runtime.tensor(v) for k, v in TENSORS.items()}
    return {
        "save": lambda **kw: enctensor.save(TENSORS, out, **kw),
        "save_bytes": lambda **kw: enctensor.save_bytes(TENSORS, **kw),
        "torch.save_file": lambda **kw: et.save_file(t, out, **kw),
        "torch.save": lambda **kw: et.save(t, **kw),
        "torch.save_model": lambda **kw: et.save_model(torch.nn.Linear(4, 3), out, **kw),
        "tvm.save": lambda **kw: ev.save(params, out, **kw),
        "tvm.save_bytes": lambda **kw: ev.save_bytes(params, **kw),
        "encrypt_file": lambda **kw: encrypt_file(f.plain, out, **kw),
    }


READERS = [
    "load",
    "load_bytes",
    "safe_open",
    "safe_open_pt",
    "safe_open_tvm",
    "verify",
    "rekey",
    "torch.load_file",
    "torch.load",
    "torch.load_model",
    "tvm.load",
    "tvm.load_bytes",
    "decrypt_file",
    "verify_file",
    "rekey_file",
]
WRITERS = [
    "save",
    "save_bytes",
    "torch.save_file",
    "torch.save",
    "torch.save_model",
    "tvm.save",
    "tvm.save_bytes",
    "encrypt_file",
]

#: (id, keywords, needles, exception, part of its message) for opening a file.
WRONG_OPEN_FORMS: list[tuple[str, dict[str, Any], str, type[BaseException], str]] = [
    ("key-as-hex-str", {"key": SECRET_HEX}, "key_hex", TypeError, "read_key_file"),
    ("passphrase-as-key", {"key": PASSPHRASE}, "passphrase", TypeError, "read_key_file"),
    ("non-utf8-passphrase", {"passphrase": BAD_PASSPHRASE}, "bad_passphrase", ValueError, "UTF-8"),
    ("surrogate-passphrase", {"passphrase": SURROGATE_PASSPHRASE}, "surrogate", ValueError, "UTF-8"),
    ("keys-list-with-hex-str", {"key": [KEY, SECRET_HEX]}, "key_hex", TypeError, "read_key_file"),
    ("verify-with-hex-str", {"key": KEY, "verify_with": SECRET_HEX}, "key_hex", TypeError, "read_key_file"),
]

#: The same for encrypting.
WRONG_WRITE_FORMS: list[tuple[str, dict[str, Any], str, type[BaseException], str]] = [
    ("key-as-hex-str", {"key": SECRET_HEX}, "key_hex", TypeError, "read_key_file"),
    ("passphrase-as-key", {"key": PASSPHRASE}, "passphrase", TypeError, "read_key_file"),
    ("keys-list-with-hex-str", {"key": [KEY, SECRET_HEX]}, "key_hex", TypeError, "read_key_file"),
    ("non-utf8-passphrase", {"passphrase": BAD_PASSPHRASE}, "bad_passphrase", ValueError, "UTF-8"),
    ("surrogate-passphrase", {"passphrase": SURROGATE_PASSPHRASE}, "surrogate", ValueError, "UTF-8"),
    ("recipient-as-hex-str", {"key": KEY, "recipients": [SECRET_HEX]}, "key_hex", TypeError, "read_key_file"),
    ("sign-with-hex-str", {"key": KEY, "sign_with": SECRET_HEX}, "key_hex", TypeError, "read_key_file"),
]


# --- every entry point, every wrong form -------------------------------------------------------


#: Entry points that take a list of keys, tried in turn.
TAKE_KEY_LISTS = {"decrypt_file", "verify_file", "rekey_file"}


def _open_cases() -> list[Any]:
    cases = []
    for entry in READERS:
        for form, kwargs, secret, exc, match in WRONG_OPEN_FORMS:
            if "verify_with" in kwargs and entry.startswith("rekey"):
                continue  # re-keying checks no signature
            if isinstance(kwargs.get("key"), list) and entry not in TAKE_KEY_LISTS:
                continue  # a list is not a key there at all
            cases.append(pytest.param(entry, kwargs, secret, exc, match, id=f"{form}-{entry}"))
    return cases


@pytest.mark.parametrize(("entry", "kwargs", "secret", "exc", "match"), _open_cases())
def test_openers_never_show_a_secret(
    files: Files, entry: str, kwargs: dict[str, Any], secret: str, exc: type[BaseException], match: str
) -> None:
    before = files.enct.read_bytes()
    raises_clean(lambda: _readers(files)[entry](**kwargs), exc, match, NEEDLES[secret])
    assert files.enct.read_bytes() == before
    assert not files.out.exists()


@pytest.mark.parametrize("entry", WRITERS)
@pytest.mark.parametrize(
    ("kwargs", "secret", "exc", "match"),
    [pytest.param(kw, s, e, m, id=i) for i, kw, s, e, m in WRONG_WRITE_FORMS],
)
def test_writers_never_show_a_secret(
    files: Files, entry: str, kwargs: dict[str, Any], secret: str, exc: type[BaseException], match: str
) -> None:
    raises_clean(lambda: _writers(files)[entry](**kwargs), exc, match, NEEDLES[secret])
    assert not (files.dir / "new.enct").exists()


@pytest.mark.parametrize("entry", ["rekey", "rekey_file"])
@pytest.mark.parametrize(
    ("kwargs", "secret", "exc", "match"),
    [
        pytest.param({"new_keys": [SECRET_HEX]}, "key_hex", TypeError, "read_key_file", id="new-key-hex-str"),
        pytest.param({"new_keys": SECRET_HEX}, "key_hex", TypeError, "read_key_file", id="new-keys-hex-str"),
        pytest.param(
            {"new_keys": [PASSPHRASE]}, "passphrase", TypeError, "read_key_file", id="new-key-passphrase"
        ),
        pytest.param(
            {"new_passphrase": BAD_PASSPHRASE},
            "bad_passphrase",
            ValueError,
            "UTF-8",
            id="new-passphrase-non-utf8",
        ),
        pytest.param(
            {"new_recipients": [SECRET_HEX]},
            "key_hex",
            TypeError,
            "read_key_file",
            id="new-recipient-hex-str",
        ),
    ],
)
def test_rekey_new_credentials_never_show_a_secret(
    files: Files, entry: str, kwargs: dict[str, Any], secret: str, exc: type[BaseException], match: str
) -> None:
    before = files.enct.read_bytes()
    fn = enctensor.rekey if entry == "rekey" else rekey_file
    raises_clean(lambda: fn(files.enct, key=KEY, **kwargs), exc, match, NEEDLES[secret])
    assert files.enct.read_bytes() == before


def test_a_key_provider_returning_a_str_is_refused_without_showing_it(files: Files) -> None:
    def provider(stanzas: list[dict[str, Any]]) -> Any:
        return SECRET_HEX

    raises_clean(
        lambda: enctensor.load(files.enct, key=provider),
        TypeError,
        "read_key_file",
        NEEDLES["key_hex"],
    )


def test_helpers_never_show_a_secret(tmp_path: Path) -> None:
    """The explicit helpers take a str path, by definition; one that is key material is not
    shown when it cannot be opened."""
    helpers: list[Callable[[str], object]] = [enctensor.read_key_file, enctensor.load_private_key]
    for fn in helpers:
        for text, needles in ((SECRET_HEX, NEEDLES["key_hex"]), (PASSPHRASE, NEEDLES["passphrase"])):
            e = raises_clean(partial(fn, text), FileNotFoundError, "not shown", needles)
            assert getattr(e, "filename", None) is None
    raises_clean(
        lambda: enctensor.read_key_file(tmp_path / "x", password=BAD_PASSPHRASE),
        ValueError,
        "UTF-8",
        NEEDLES["bad_passphrase"],
    )
    raises_clean(lambda: enctensor.FileKey(SECRET_HEX), TypeError, "read_key_file", NEEDLES["key_hex"])  # type: ignore[arg-type]
    # A real path is named, to be useful.
    e = raises_clean(lambda: enctensor.read_key_file(tmp_path / "missing.key"), FileNotFoundError, "", [])
    assert getattr(e, "filename", None) == str(tmp_path / "missing.key")


# --- the CLI ---------------------------------------------------------------------------------


def cli(cwd: Path, *args: str | Path, passphrase: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCTENSOR_")}
    if passphrase is not None:
        env["ENCTENSOR_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "enctensor", *map(str, args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli_dir(files: Files) -> Path:
    d = files.dir
    (d / "good.key").write_text(KEY.hex() + "\n")
    return d


CLI_CASES = [
    ("decrypt-k-hex", ["decrypt", "m.enct", "o.safetensors", "-k", SECRET_HEX], "key_hex"),
    ("decrypt-k-passphrase", ["decrypt", "m.enct", "o.safetensors", "-k", PASSPHRASE], "passphrase"),
    ("decrypt-i-hex", ["decrypt", "m.enct", "o.safetensors", "-i", SECRET_HEX], "key_hex"),
    ("verify-k-hex", ["verify", "m.enct", "-k", SECRET_HEX], "key_hex"),
    ("verify-i-passphrase", ["verify", "m.enct", "-i", PASSPHRASE], "passphrase"),
    ("rekey-k-hex", ["rekey", "m.enct", "-k", SECRET_HEX, "--new-key-file", "good.key"], "key_hex"),
    (
        "rekey-new-key-file-hex",
        ["rekey", "m.enct", "-k", "good.key", "--new-key-file", SECRET_HEX],
        "key_hex",
    ),
    ("encrypt-k-hex", ["encrypt", "m.safetensors", "n.enct", "-k", SECRET_HEX], "key_hex"),
    (
        "encrypt-sign-with-hex",
        ["encrypt", "m.safetensors", "n.enct", "-k", "good.key", "-s", SECRET_HEX],
        "key_hex",
    ),
    ("pubkey-hex", ["pubkey", SECRET_HEX], "key_hex"),
    ("stray-argument-hex", ["decrypt", "m.enct", "o.safetensors", "-k", "good.key", SECRET_HEX], "key_hex"),
    ("stray-argument-hex-verify", ["verify", "m.enct", SECRET_HEX], "key_hex"),
]


@pytest.mark.parametrize(("args", "secret"), [pytest.param(a, s, id=i) for i, a, s in CLI_CASES])
def test_cli_never_echoes_a_key(cli_dir: Path, args: list[str], secret: str) -> None:
    before = sorted(p.name for p in cli_dir.iterdir())
    enct = (cli_dir / "m.enct").read_bytes()
    proc = cli(cli_dir, *args)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not shown" in proc.stderr, proc.stderr
    assert_not_shown([proc.stdout, proc.stderr], NEEDLES[secret])
    assert sorted(p.name for p in cli_dir.iterdir()) == before
    assert (cli_dir / "m.enct").read_bytes() == enct


def test_cli_never_shows_a_passphrase(tmp_path: Path) -> None:
    enctensor.save(TENSORS, tmp_path / "p.enct", passphrase=PASSPHRASE, scrypt_log_n=10)
    wrong = "Tr0ub4dor&3 wrong passphrase"
    for args in (
        ["verify", "p.enct", "-p", "--max-scrypt-log-n", "18"],
        ["decrypt", "p.enct", "o.safetensors", "-p", "--max-scrypt-log-n", "18"],
        ["rekey", "p.enct", "-p", "--max-scrypt-log-n", "18", "--new-key-file", "missing.key"],
    ):
        proc = cli(tmp_path, *args, passphrase=wrong)
        assert proc.returncode in (1, 3), proc.stderr
        assert_not_shown([proc.stdout, proc.stderr], [wrong, PASSPHRASE])
    ok = cli(tmp_path, "verify", "p.enct", "-p", "--max-scrypt-log-n", "18", passphrase=PASSPHRASE)
    assert ok.returncode == 0, ok.stderr
    assert_not_shown([ok.stdout, ok.stderr], [PASSPHRASE])


# --- plaintext is private ----------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_decrypt_file_writes_plaintext_0600_unless_asked(files: Files, umask_022: None) -> None:
    decrypt_file(files.enct, files.dir / "a.safetensors", key=KEY)
    assert _mode(files.dir / "a.safetensors") == 0o600
    decrypt_file(files.enct, files.dir / "b.params", key=KEY, mode=0o640)
    assert _mode(files.dir / "b.params") == 0o640
    # A replaced file keeps its mode; mode= overrides it.
    (files.dir / "c.safetensors").write_bytes(b"old")
    os.chmod(files.dir / "c.safetensors", 0o644)
    decrypt_file(files.enct, files.dir / "c.safetensors", key=KEY, overwrite=True)
    assert _mode(files.dir / "c.safetensors") == 0o644
    decrypt_file(files.enct, files.dir / "c.safetensors", key=KEY, overwrite=True, mode=0o600)
    assert _mode(files.dir / "c.safetensors") == 0o600
    with pytest.raises(ValueError, match="mode"):
        decrypt_file(files.enct, files.dir / "d.safetensors", key=KEY, mode=0o4755)
    assert not (files.dir / "d.safetensors").exists()
    assert not [p.name for p in files.dir.iterdir() if p.name.endswith(".partial")]


def test_decrypted_sharded_checkpoint_is_0600(tmp_path: Path, umask_022: None) -> None:
    shards = {"model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["b"]}
    weight_map = {}
    for name, tensors in shards.items():
        st_save_file({t: np.full(3, i, np.float32) for i, t in enumerate(tensors)}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    encrypt_file(tmp_path / "model.safetensors.index.json", tmp_path / "model.enct.index.json", key=KEY)
    out = tmp_path / "out"
    out.mkdir()
    decrypt_file(tmp_path / "model.enct.index.json", out / "model.safetensors.index.json", key=KEY)
    written = sorted(out.iterdir())
    assert len(written) == 3
    assert all(_mode(p) == 0o600 for p in written), [(p.name, oct(_mode(p))) for p in written]


def test_replaced_encrypted_output_keeps_its_mode(files: Files, umask_022: None) -> None:
    target = files.dir / "kept.enct"
    encrypt_file(files.plain, target, key=KEY)
    os.chmod(target, 0o600)
    encrypt_file(files.plain, target, key=OTHER_KEY, overwrite=True)
    assert _mode(target) == 0o600
    assert enctensor.load(target, key=OTHER_KEY)["w"].tobytes() == TENSORS["w"].tobytes()


def test_cli_decrypt_writes_plaintext_0600(cli_dir: Path, umask_022: None) -> None:
    proc = cli(cli_dir, "decrypt", "m.enct", "o.safetensors", "-k", "good.key")
    assert proc.returncode == 0, proc.stderr
    assert _mode(cli_dir / "o.safetensors") == 0o600
    proc = cli(cli_dir, "decrypt", "m.enct", "p.safetensors", "-k", "good.key", "--mode", "644")
    assert proc.returncode == 0, proc.stderr
    assert _mode(cli_dir / "p.safetensors") == 0o644
    os.chmod(cli_dir / "o.safetensors", 0o640)
    proc = cli(cli_dir, "decrypt", "m.enct", "o.safetensors", "-k", "good.key", "--force")
    assert proc.returncode == 0, proc.stderr
    assert _mode(cli_dir / "o.safetensors") == 0o640
    proc = cli(cli_dir, "decrypt", "m.enct", "q.safetensors", "-k", "good.key", "--mode", "rw")
    assert proc.returncode == 2 and "not a file mode" in proc.stderr
    assert "--mode" in cli(cli_dir, "decrypt", "--help").stdout


# --- expect_metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry", ["load", "load_bytes", "safe_open", "verify", "decrypt_file", "verify_file"]
)
def test_expect_metadata_pins_a_release(files: Files, entry: str) -> None:
    run = _readers(files)[entry]
    run(key=KEY, expect_metadata={"version": "2"})
    files.out.unlink(missing_ok=True)
    for pins, needle in (({"version": "3"}, "'version'"), ({"version": "2", "release": "b"}, "'release'")):
        e = raises_clean(partial(run, key=KEY, expect_metadata=pins), IntegrityError, needle, [])
        assert "expect_metadata" in str(e)
        assert not files.out.exists()
    # Checked after the key and the MAC: a wrong key is still a wrong key.
    with pytest.raises(WrongKeyError):
        run(key=OTHER_KEY, expect_metadata={"version": "3"})
    with pytest.raises(TypeError, match="expect_metadata"):
        run(key=KEY, expect_metadata={"version": 2})


@pytest.mark.parametrize(
    "entry", ["torch.load_file", "torch.load", "torch.load_model", "tvm.load", "tvm.load_bytes"]
)
def test_expect_metadata_in_framework_loaders(tmp_path: Path, entry: str) -> None:
    model = torch.nn.Linear(4, 3)
    pt = tmp_path / "model.enct"
    et.save_model(model, pt, key=KEY, metadata={"version": "7"})
    f = Files.__new__(Files)
    f.pt, f.enct, f.blob, f.out, f.dir = pt, pt, pt.read_bytes(), tmp_path / "o", tmp_path
    run = _readers(f)[entry]
    run(key=KEY, expect_metadata={"version": "7"})
    raises_clean(lambda: run(key=KEY, expect_metadata={"version": "6"}), IntegrityError, "'version'", [])


def test_expect_metadata_is_checked_after_the_signature(files: Files) -> None:
    publisher = ed25519.Ed25519PrivateKey.generate()
    signed = files.dir / "s.enct"
    enctensor.save(TENSORS, signed, key=KEY, sign_with=publisher, metadata={"version": "2"})
    pub = publisher.public_key()
    enctensor.load(signed, key=KEY, verify_with=pub, expect_metadata={"version": "2"})
    with pytest.raises(SignatureError):
        enctensor.load(
            signed,
            key=KEY,
            verify_with=ed25519.Ed25519PrivateKey.generate().public_key(),
            expect_metadata={"version": "1"},
        )


def test_cli_expect_metadata(cli_dir: Path) -> None:
    ok = cli(cli_dir, "verify", "m.enct", "-k", "good.key", "--expect-metadata", "version=2")
    assert ok.returncode == 0, ok.stderr
    proc = cli(
        cli_dir, "decrypt", "m.enct", "o.safetensors", "-k", "good.key", "--expect-metadata", "version=1"
    )
    assert proc.returncode == 4 and "'version'" in proc.stderr, proc.stderr
    assert not (cli_dir / "o.safetensors").exists()


# --- verify_with forms -------------------------------------------------------------------------


def test_verify_with_takes_a_key_its_bytes_its_text_or_a_path(tmp_path: Path) -> None:
    publisher = ed25519.Ed25519PrivateKey.generate()
    pub = publisher.public_key()
    path = tmp_path / "s.enct"
    enctensor.save(TENSORS, path, key=KEY, sign_with=publisher)
    text = enctensor.ed25519_public_text(pub)
    assert text.startswith("ed25519:") and len(text) == 8 + 64
    (tmp_path / "publisher.pub").write_text(text + "\n")
    (tmp_path / "publisher.pub.pem").write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forms: list[Any] = [
        pub,
        pub.public_bytes_raw(),
        bytearray(pub.public_bytes_raw()),
        text,
        " " + text + "\n",
        tmp_path / "publisher.pub",
        tmp_path / "publisher.pub.pem",
        enctensor.read_key_file(str(tmp_path / "publisher.pub")),
    ]
    for form in forms:
        assert enctensor.load(path, key=KEY, verify_with=form)["w"].tobytes() == TENSORS["w"].tobytes()
        enctensor.verify(path, key=KEY, verify_with=form)
        verify_file(path, key=KEY, verify_with=form)
    rival = enctensor.ed25519_public_text(ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(SignatureError):
        enctensor.load(path, key=KEY, verify_with=rival)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        enctensor.load(path, key=KEY, verify_with="ed25519:abcd")
    with pytest.raises(ValueError, match="32"):
        enctensor.load(path, key=KEY, verify_with=b"\x01" * 31)
    # A path given as a str is refused: it might as well be a secret.
    raises_clean(
        lambda: enctensor.load(path, key=KEY, verify_with=str(tmp_path / "publisher.pub")),
        TypeError,
        "read_key_file",
        [],
    )
    x_text = enctensor.x25519_public_text(x25519.X25519PrivateKey.generate().public_key())
    with pytest.raises(TypeError, match="Ed25519"):
        enctensor.load(path, key=KEY, verify_with=x_text)


# --- read_key_file and key paths -------------------------------------------------------------


def test_read_key_file_reads_what_keygen_writes(tmp_path: Path) -> None:
    ident = x25519.X25519PrivateKey.generate()
    signer = ed25519.Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    files = {
        "hex.key": (KEY.hex() + "\n").encode(),
        "commented.key": b"# a key\n\n" + KEY.hex().upper().encode() + b"\n",
        "raw.key": KEY,
        "id.pem": ident.private_bytes(pem, pkcs8, none),
        "protected.pem": ident.private_bytes(pem, pkcs8, serialization.BestAvailableEncryption(b"pw")),
        "signer.pem": signer.private_bytes(pem, pkcs8, none),
        "id.pub": (enctensor.x25519_public_text(ident.public_key()) + "\n").encode(),
        "id.pub.pem": ident.public_key().public_bytes(pem, spki),
        "signer.pub": (enctensor.ed25519_public_text(signer.public_key()) + "\n").encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for as_path in (str, Path):
        assert enctensor.read_key_file(as_path(tmp_path / "hex.key")) == KEY
        assert enctensor.read_key_file(as_path(tmp_path / "commented.key")) == KEY
        assert enctensor.read_key_file(as_path(tmp_path / "raw.key")) == KEY
    got_id = enctensor.read_key_file(tmp_path / "id.pem")
    assert isinstance(got_id, x25519.X25519PrivateKey)
    assert got_id.private_bytes_raw() == ident.private_bytes_raw()
    got_protected = enctensor.read_key_file(tmp_path / "protected.pem", password="pw")
    assert isinstance(got_protected, x25519.X25519PrivateKey)
    with pytest.raises(ValueError, match="password"):
        enctensor.read_key_file(tmp_path / "protected.pem")
    with pytest.raises(ValueError, match="password"):
        enctensor.read_key_file(tmp_path / "protected.pem", password=b"wrong")
    assert isinstance(enctensor.read_key_file(tmp_path / "signer.pem"), ed25519.Ed25519PrivateKey)
    for name in ("id.pub", "id.pub.pem"):
        pub = enctensor.read_key_file(tmp_path / name)
        assert isinstance(pub, x25519.X25519PublicKey)
        assert pub.public_bytes_raw() == ident.public_key().public_bytes_raw()
    assert isinstance(enctensor.read_key_file(tmp_path / "signer.pub"), ed25519.Ed25519PublicKey)
    (tmp_path / "junk").write_bytes(b"not a key\n")
    with pytest.raises(ValueError, match="not a key file"):
        enctensor.read_key_file(tmp_path / "junk")
    with pytest.raises(TypeError, match="path"):
        enctensor.read_key_file(KEY)  # type: ignore[arg-type]

    # Paths to key files work wherever keys go.
    out = tmp_path / "m.enct"
    enctensor.save(
        TENSORS,
        out,
        key=tmp_path / "hex.key",
        recipients=[tmp_path / "id.pub"],
        sign_with=tmp_path / "signer.pem",
    )
    keys: list[Any] = [
        tmp_path / "raw.key",
        tmp_path / "id.pem",
        got_id,
        enctensor.read_key_file(str(tmp_path / "hex.key")),
    ]
    for key in keys:
        got = enctensor.load(out, key=key, verify_with=tmp_path / "signer.pub")
        assert got["w"].tobytes() == TENSORS["w"].tobytes()
    with pytest.raises(TypeError, match="signs files"):
        enctensor.load(out, key=tmp_path / "signer.pem")
    with pytest.raises(TypeError, match="private key"):
        enctensor.load(out, key=tmp_path / "id.pub")
    with pytest.raises(TypeError, match="recipients="):
        enctensor.save(TENSORS, tmp_path / "n.enct", key=tmp_path / "id.pem")


# --- the scrypt cap ----------------------------------------------------------------------------

CAPPED_PASSPHRASE = "a costly passphrase"


@pytest.fixture(scope="module")
def costly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file whose passphrase stanza asks for scrypt at log_n = 19 (512 MiB)."""
    path = tmp_path_factory.mktemp("scrypt") / "costly.enct"
    enctensor.save(TENSORS, path, passphrase=CAPPED_PASSPHRASE, scrypt_log_n=19)
    return path


def test_scrypt_cap_refuses_log_n_19_by_default(costly: Path) -> None:
    for run in (
        lambda **kw: enctensor.load(costly, passphrase=CAPPED_PASSPHRASE, **kw),
        lambda **kw: enctensor.load_bytes(costly.read_bytes(), passphrase=CAPPED_PASSPHRASE, **kw),
        lambda **kw: enctensor.verify(costly, passphrase=CAPPED_PASSPHRASE, **kw),
        lambda **kw: verify_file(costly, passphrase=CAPPED_PASSPHRASE, **kw),
        lambda **kw: et.load_file(costly, passphrase=CAPPED_PASSPHRASE, **kw),
    ):
        with pytest.raises(FormatError, match="max_scrypt_log_n"):
            run()
        with pytest.raises(FormatError, match="max_scrypt_log_n"):
            run(max_scrypt_log_n=18)
    with pytest.raises(ValueError, match="max_scrypt_log_n"):
        enctensor.load(costly, passphrase=CAPPED_PASSPHRASE, max_scrypt_log_n=21)
    before = costly.read_bytes()
    with pytest.raises(FormatError, match="max_scrypt_log_n"):
        enctensor.rekey(costly, passphrase=CAPPED_PASSPHRASE, new_keys=[KEY])
    assert costly.read_bytes() == before


def test_scrypt_cap_can_be_raised(costly: Path, tmp_path: Path) -> None:
    got = enctensor.load(costly, passphrase=CAPPED_PASSPHRASE, max_scrypt_log_n=19)
    assert got["w"].tobytes() == TENSORS["w"].tobytes()
    # A passphrase may be UTF-8 bytes too.
    got = enctensor.load_bytes(
        costly.read_bytes(), passphrase=CAPPED_PASSPHRASE.encode(), max_scrypt_log_n=19
    )
    assert got["b"].tobytes() == TENSORS["b"].tobytes()
    copy = tmp_path / "c.enct"
    copy.write_bytes(costly.read_bytes())
    enctensor.rekey(copy, passphrase=CAPPED_PASSPHRASE, max_scrypt_log_n=19, new_keys=[KEY])
    assert enctensor.load(copy, key=KEY)["b"].tobytes() == TENSORS["b"].tobytes()


def test_cli_scrypt_cap(costly: Path, tmp_path: Path) -> None:
    refused = cli(costly.parent, "verify", costly.name, "-p", passphrase=CAPPED_PASSPHRASE)
    assert refused.returncode == 5, refused.stderr
    assert "--max-scrypt-log-n" in refused.stderr or "max_scrypt_log_n" in refused.stderr
    accepted = cli(
        costly.parent, "verify", costly.name, "-p", "--max-scrypt-log-n", "19", passphrase=CAPPED_PASSPHRASE
    )
    assert accepted.returncode == 0, accepted.stderr
    assert_not_shown([refused.stderr, accepted.stdout, accepted.stderr], [CAPPED_PASSPHRASE])
    for command in (["decrypt", costly.name, str(tmp_path / "o.safetensors")], ["rekey", costly.name]):
        assert "--max-scrypt-log-n" in cli(costly.parent, *command, "--help").stdout
    bad = cli(costly.parent, "verify", costly.name, "-p", "--max-scrypt-log-n", "21", passphrase="x")
    assert bad.returncode == 2
