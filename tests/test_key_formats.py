"""Key formats from other tools (issue 13, section 3, "Identities"): age's X25519 keys
(Bech32 ``age1…`` recipients and ``AGE-SECRET-KEY-1…`` identities, checked against the C2SP
age spec's vectors and age's own Bech32 test data), password-protected PEM private keys
(PKCS#8 ``ENCRYPTED PRIVATE KEY`` and traditional encrypted RSA), ``keygen --protect``, and
OpenSSH keys, refused with what is accepted. CLI cases run the real entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_support import cli, dialog, failed, ok
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519
from safetensors.numpy import save_file

import enctensor
from enctensor import _bech32
from enctensor._keys import age_recipient_text

# C2SP age, "The X25519 recipient type": an identity and the recipient computed from it.
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
SPEC_IDENTITY_BYTES = bytes([0x42] * 32)
# age's internal/bech32/bech32_test.go (with the BIP 173 vectors it includes).
BECH32_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
]
BECH32_INVALID = [
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e2w",  # checksum
    "s lit1checkupstagehandshakeupstreamerranterredcaperredp8hs2p",  # space in the prefix
    "split1cheo2y9e2w",  # "o" in the data part
    "split1a2y9w",  # data part too short
    "1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",  # empty prefix
    "spl\x7ft1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",  # DEL in the prefix
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",  # long
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "de1lg7wt\xff",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
]
PASSWORD = "tr0ub4dor identity pass"
OPENSSH_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host\n"
)
OPENSSH_PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def _identity_file(key: x25519.X25519PrivateKey) -> str:
    """An identity file as age-keygen writes it."""
    recipient = age_recipient_text(key.public_key())
    secret = _bech32.encode("AGE-SECRET-KEY-", key.private_bytes_raw())
    return f"# created: 2026-12-01T12:00:00Z\n# public key: {recipient}\n{secret}\n"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    save_file({"w": np.arange(96, dtype=np.float32).reshape(8, 12)}, tmp_path / "model.safetensors")
    return tmp_path


# --- Bech32 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", BECH32_VALID)
def test_bech32_valid_vectors_round_trip(text: str) -> None:
    hrp, data = _bech32.decode(text)
    assert _bech32.encode(hrp, data) == text
    # Any changed character is caught by the checksum.
    pos = text.rfind("1") + 1
    flipped = text[:pos] + chr(ord(text[pos]) ^ 1) + text[pos + 1 :]
    with pytest.raises(ValueError, match="Bech32"):
        _bech32.decode(flipped)


@pytest.mark.parametrize("text", BECH32_INVALID)
def test_bech32_invalid_vectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not valid Bech32") as info:
        _bech32.decode(text)
    assert text not in str(info.value)  # the text may be a secret key: never shown


def test_bech32_mixed_case_and_length_caps() -> None:
    with pytest.raises(ValueError, match="mixes upper and lower case"):
        _bech32.decode("A12uEL5L")
    with pytest.raises(ValueError, match="longer than 90"):
        _bech32.decode("a1" + "q" * 89)
    with pytest.raises(ValueError, match="too long"):
        _bech32.encode("age", bytes(60))


# --- age keys in Python ------------------------------------------------------------------------


def test_the_spec_identity_and_recipient(tmp_path: Path) -> None:
    """The C2SP age spec's identity decodes to its 32 bytes, and its public key is the spec's
    recipient: age's key encodings and enctensor's X25519 keys are the same keys."""
    (tmp_path / "id.age").write_text(f"# public key: {SPEC_RECIPIENT}\n{SPEC_IDENTITY}\n")
    (tmp_path / "id.pub").write_text(SPEC_RECIPIENT + "\n")
    ident = enctensor.read_key_file(tmp_path / "id.age")
    assert isinstance(ident, x25519.X25519PrivateKey)
    assert ident.private_bytes_raw() == SPEC_IDENTITY_BYTES
    assert age_recipient_text(ident.public_key()) == SPEC_RECIPIENT
    pub = enctensor.read_key_file(tmp_path / "id.pub")
    assert isinstance(pub, x25519.X25519PublicKey)
    assert pub.public_bytes_raw() == ident.public_key().public_bytes_raw()
    from_text = enctensor.load_public_key(SPEC_RECIPIENT)
    assert isinstance(from_text, x25519.X25519PublicKey)
    assert from_text.public_bytes_raw() == pub.public_bytes_raw()


def test_python_api_takes_age_keys(tmp_path: Path) -> None:
    key = x25519.X25519PrivateKey.generate()
    (tmp_path / "id.age").write_text(_identity_file(key))
    tensors = {"a": np.arange(50, dtype=np.int32)}
    out = tmp_path / "m.enct"
    enctensor.save(tensors, out, recipients=[age_recipient_text(key.public_key())])
    assert enctensor.inspect(out)["stanzas"] == ["x25519"]
    ident = enctensor.read_key_file(tmp_path / "id.age")
    assert isinstance(ident, x25519.X25519PrivateKey)
    for k in (ident, tmp_path / "id.age"):
        assert np.array_equal(enctensor.load(out, key=k)["a"], tensors["a"])
    # Identities stay non-str: the identity's text itself is refused without being shown.
    secret = _bech32.encode("AGE-SECRET-KEY-", key.private_bytes_raw())
    with pytest.raises(TypeError) as info:
        enctensor.load(out, key=secret)  # type: ignore[arg-type]
    assert secret not in str(info.value) and secret.lower() not in str(info.value)
    # ... and given as a recipient, it is refused as a secret, not shown.
    with pytest.raises(TypeError, match="age identity") as info2:
        enctensor.save(tensors, tmp_path / "x.enct", recipients=[secret])
    assert secret not in str(info2.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (SPEC_RECIPIENT[:-1] + "q", "wrong checksum"),
        (SPEC_RECIPIENT.upper(), "lower case"),
        (SPEC_IDENTITY.lower(), "upper case"),
        ("age1" + SPEC_RECIPIENT[4:10].upper() + SPEC_RECIPIENT[10:], "mixes upper and lower case"),
        (_bech32.encode("age", bytes(31)), "31 bytes"),
        ("age1pq1" + "q" * 1900, "post-quantum"),
        ("age1yubikey1" + "q" * 60, "plugin"),
        ("AGE-PLUGIN-YUBIKEY-1" + "Q" * 40, "plugin"),
    ],
)
def test_bad_age_keys_are_refused_without_being_shown(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "k").write_text(text + "\n")
    with pytest.raises(ValueError, match=match) as info:
        enctensor.read_key_file(tmp_path / "k")
    assert text not in str(info.value)


def test_several_keys_in_one_age_file_are_refused(tmp_path: Path) -> None:
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    (tmp_path / "k").write_text(_identity_file(a) + _identity_file(b))
    with pytest.raises(ValueError, match="one key per file"):
        enctensor.read_key_file(tmp_path / "k")


def test_openssh_keys_are_refused_saying_what_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519.pub").write_text(OPENSSH_PUBLIC)
    (tmp_path / "id_ed25519").write_text(OPENSSH_PRIVATE)
    with pytest.raises(ValueError, match=r"OpenSSH public key.*age1"):
        enctensor.read_key_file(tmp_path / "id_ed25519.pub")
    with pytest.raises(ValueError, match=r"OpenSSH private key.*AGE-SECRET-KEY-1"):
        enctensor.read_key_file(tmp_path / "id_ed25519")
    with pytest.raises(ValueError, match="OpenSSH public key"):
        enctensor.save({"a": np.zeros(2)}, tmp_path / "m.enct", recipients=[OPENSSH_PUBLIC.strip()])


# --- age keys through the CLI ------------------------------------------------------------------


def test_cli_encrypts_to_age_recipients_and_decrypts_with_age_identities(work: Path) -> None:
    key = x25519.X25519PrivateKey.generate()
    (work / "me.age").write_text(_identity_file(key))
    (work / "me.age.pub").write_text(f"# a comment\n{age_recipient_text(key.public_key())}\n")
    other = x25519.X25519PrivateKey.generate()
    ok(
        cli(
            "encrypt",
            "model.safetensors",
            "m.enct",
            "-r",
            age_recipient_text(other.public_key()),  # on the command line
            "-r",
            "me.age.pub",  # in a recipients file
            cwd=work,
        )
    )
    info = json.loads(ok(cli("inspect", "--json", "m.enct", cwd=work)).stdout)
    assert info["stanzas"] == ["x25519", "x25519"]
    ok(cli("decrypt", "m.enct", "back.safetensors", "-i", "me.age", cwd=work))
    assert (work / "back.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()
    # pubkey reads an age identity; --age prints the age form.
    x_text = enctensor.x25519_public_text(key.public_key())
    assert ok(cli("pubkey", "me.age", cwd=work)).stdout.decode() == x_text + "\n"
    assert ok(cli("pubkey", "--age", "me.age", cwd=work)).stdout.decode().strip() == age_recipient_text(
        key.public_key()
    )


def test_cli_refuses_age_keys_it_cannot_use(work: Path) -> None:
    key = x25519.X25519PrivateKey.generate()
    secret = _bech32.encode("AGE-SECRET-KEY-", key.private_bytes_raw())
    (work / "me.age").write_text(_identity_file(key))
    (work / "me.age.pub").write_text(age_recipient_text(key.public_key()) + "\n")
    # An identity given where a recipient goes: on the command line, or in a file.
    for arg in (secret, "me.age"):
        proc = cli("encrypt", "model.safetensors", "m.enct", "-r", arg, cwd=work)
        line = failed(proc, 2, "age identity", "age1")
        assert secret not in line and secret.lower() not in line
    # A mistyped recipient: the checksum catches it.
    good = age_recipient_text(key.public_key())
    bad = good[:-1] + ("q" if good[-1] != "q" else "p")  # one character changed
    failed(cli("encrypt", "model.safetensors", "m.enct", "-r", bad, cwd=work), 2, "wrong checksum")
    # The identity is not a key file.
    failed(cli("encrypt", "model.safetensors", "m.enct", "-k", "me.age", cwd=work), 2, "--identity")
    assert not (work / "m.enct").exists()
    # The identity's text where its file belongs: not shown, and said to be a key.
    ok(cli("encrypt", "model.safetensors", "m.enct", "-r", "me.age.pub", cwd=work))
    line = failed(
        cli("decrypt", "m.enct", "o.safetensors", "-i", secret, cwd=work), 1, "looks like a key itself"
    )
    assert secret not in line and secret.lower() not in line


def test_cli_refuses_openssh_keys_saying_what_is_accepted(work: Path) -> None:
    (work / "id_ed25519.pub").write_text(OPENSSH_PUBLIC)
    (work / "id_ed25519").write_text(OPENSSH_PRIVATE)
    for arg in ("id_ed25519.pub", OPENSSH_PUBLIC.strip()):
        proc = cli("encrypt", "model.safetensors", "m.enct", "-r", arg, cwd=work)
        failed(proc, 2, "OpenSSH public key", "x25519:<hex>", "age1")
    ok(cli("keygen", "k.key", cwd=work))
    ok(cli("encrypt", "model.safetensors", "m.enct", "-k", "k.key", cwd=work))
    failed(cli("decrypt", "m.enct", "o.safetensors", "-i", "id_ed25519", cwd=work), 2, "OpenSSH private key")
    failed(cli("verify", "m.enct", "-k", "k.key", "--verify-with", "id_ed25519.pub", cwd=work), 2, "OpenSSH")


# --- Password-protected private keys ---------------------------------------------------------


def _protected_files(d: Path) -> dict[str, x25519.X25519PrivateKey | rsa.RSAPrivateKey]:
    """Three protected identities (and their recipients' PEM files): X25519 and RSA in
    PKCS#8 (ENCRYPTED PRIVATE KEY), RSA in the traditional format (Proc-Type: 4,ENCRYPTED)."""
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.BestAvailableEncryption(PASSWORD.encode())
    x = x25519.X25519PrivateKey.generate()
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files: dict[str, tuple[x25519.X25519PrivateKey | rsa.RSAPrivateKey, bytes]] = {
        "x.pem": (x, x.private_bytes(pem, serialization.PrivateFormat.PKCS8, enc)),
        "r.pem": (r, r.private_bytes(pem, serialization.PrivateFormat.PKCS8, enc)),
        "trad.pem": (r, r.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, enc)),
    }
    for name, (key, data) in files.items():
        (d / name).write_bytes(data)
        (d / (name + ".pub")).write_bytes(key.public_key().public_bytes(pem, spki))
    assert b"ENCRYPTED PRIVATE KEY" in (d / "r.pem").read_bytes()
    assert b"Proc-Type: 4,ENCRYPTED" in (d / "trad.pem").read_bytes()
    return {name: key for name, (key, _) in files.items()}


@pytest.mark.parametrize("name", ["x.pem", "r.pem", "trad.pem"])
def test_protected_identity_from_the_environment(work: Path, name: str) -> None:
    _protected_files(work)
    ok(cli("encrypt", "model.safetensors", "m.enct", "-r", name + ".pub", cwd=work))
    env = {"ENCTENSOR_IDENTITY_PASSPHRASE": PASSWORD}
    ok(cli("decrypt", "m.enct", "back.safetensors", "-i", name, cwd=work, env=env))
    assert (work / "back.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()
    # A wrong passphrase: exit status 3, nothing written, neither passphrase shown.
    wrong = "not the passphrase 5150"
    proc = cli(
        "decrypt",
        "m.enct",
        "o.safetensors",
        "-i",
        name,
        cwd=work,
        env={"ENCTENSOR_IDENTITY_PASSPHRASE": wrong},
    )
    line = failed(proc, 3, name, "wrong passphrase", "ENCTENSOR_IDENTITY_PASSPHRASE")
    assert wrong not in line and PASSWORD not in line
    assert not (work / "o.safetensors").exists()
    # No variable and no terminal to ask on: says what to do; never "write an unprotected copy".
    line = failed(
        cli("decrypt", "m.enct", "o.safetensors", "-i", name, cwd=work), 2, "ENCTENSOR_IDENTITY_PASSPHRASE"
    )
    assert "unprotected" not in line


def test_protected_identity_asks_on_the_terminal(work: Path) -> None:
    _protected_files(work)
    ok(cli("encrypt", "model.safetensors", "m.enct", "-r", "r.pem.pub", cwd=work))
    status, shown = dialog(
        "decrypt",
        "m.enct",
        "back.safetensors",
        "-i",
        "r.pem",
        cwd=work,
        answers=[(b"Enter passphrase for r.pem: ", PASSWORD.encode())],
    )
    assert status == 0, shown
    assert PASSWORD not in shown  # not echoed
    assert (work / "back.safetensors").read_bytes() == (work / "model.safetensors").read_bytes()


def test_python_reads_protected_keys_with_a_password(work: Path) -> None:
    keys = _protected_files(work)
    tensors = {"a": np.arange(9, dtype=np.int16)}
    for name in ("x.pem", "r.pem", "trad.pem"):
        got = enctensor.read_key_file(work / name, password=PASSWORD)
        assert isinstance(got, x25519.X25519PrivateKey | rsa.RSAPrivateKey)
        assert type(got) is type(keys[name])
        out = work / f"{name}.enct"
        enctensor.save(tensors, out, recipients=[work / (name + ".pub")])
        assert np.array_equal(enctensor.load(out, key=got)["a"], tensors["a"])
        # A path to a protected key cannot be opened without its password: the error says how.
        with pytest.raises(ValueError, match=r"password-protected.*read_key_file"):
            enctensor.load(out, key=work / name)


def test_keygen_protect(work: Path) -> None:
    env = {"ENCTENSOR_IDENTITY_PASSPHRASE": PASSWORD}
    for kind in ("--x25519", "--rsa", "--ed25519"):
        name = kind.strip("-") + ".pem"
        args = ("keygen", kind, "--protect", name, "--public-out", name + ".pub")
        ok(
            cli(*args, "--bits", "2048", cwd=work, env=env)
            if kind == "--rsa"
            else cli(*args, cwd=work, env=env)
        )
        data = (work / name).read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert os.stat(work / name).st_mode & 0o777 == 0o600
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, password=None)
        key = serialization.load_pem_private_key(data, password=PASSWORD.encode())
        assert isinstance(
            key,
            {"--x25519": x25519.X25519PrivateKey, "--rsa": rsa.RSAPrivateKey}.get(
                kind, ed25519.Ed25519PrivateKey
            ),
        )
    # The protected identity and signing key work where keys go.
    ok(
        cli(
            "encrypt",
            "model.safetensors",
            "m.enct",
            "-r",
            "x25519.pem.pub",
            "-s",
            "ed25519.pem",
            cwd=work,
            env=env,
        )
    )
    ok(cli("verify", "m.enct", "-i", "x25519.pem", "--verify-with", "ed25519.pem.pub", cwd=work, env=env))
    # A key file (32 raw bytes) has nothing to protect.
    failed(cli("keygen", "--protect", "k.key", cwd=work, env=env), 2, "--protect")
    assert not (work / "k.key").exists()


def test_keygen_protect_asks_twice_on_the_terminal(work: Path) -> None:
    status, shown = dialog(
        "keygen",
        "--x25519",
        "--protect",
        "me.pem",
        cwd=work,
        answers=[
            (b"Enter passphrase for the new key: ", PASSWORD.encode()),
            (b"Confirm passphrase for the new key: ", PASSWORD.encode()),
        ],
    )
    assert status == 0, shown
    key = serialization.load_pem_private_key((work / "me.pem").read_bytes(), password=PASSWORD.encode())
    assert isinstance(key, x25519.X25519PrivateKey)
    # A typo in the confirmation: no key is made.
    status, shown = dialog(
        "keygen",
        "--x25519",
        "--protect",
        "other.pem",
        cwd=work,
        answers=[
            (b"Enter passphrase for the new key: ", PASSWORD.encode()),
            (b"Confirm passphrase for the new key: ", b"something else"),
        ],
    )
    assert status == 2 and "do not match" in shown
    assert not (work / "other.pem").exists()
