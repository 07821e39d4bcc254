"""Managing who can open a file (issue 13, section 3): ``rekey`` adds and removes stanzas and
keeps every other one; a stanza is found by the key that opens it, by its position, or by the
optional recipient fingerprint (spec/FORMAT.md, "Recipient fingerprints"), which both readers
check for syntax and ignore when opening. The CLI tests drive the real entry point."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import cli, failed, ok
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519

import enctensor
from enctensor import _core
from enctensor.errors import FormatError, WrongKeyError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec" / "reference"))

import enctensor_ref as ref

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
TENSORS: dict[str, np.ndarray] = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.arange(5, dtype=np.int64),
}
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
KEY_C = bytes(range(64, 96))


class People:
    """X25519 identities alice and bob, an RSA-2048 identity carol, and their public keys."""

    def __init__(self) -> None:
        self.alice = x25519.X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
        self.bob = x25519.X25519PrivateKey.from_private_bytes(bytes(range(128, 160)))
        self.carol = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write(self, d: Path) -> None:
        """Key files a.key, b.key, c.key (keygen's 64 hex digits), NAME.pem identities and
        NAME.pub public keys, in ``d``."""
        for name, key in (("a", KEY_A), ("b", KEY_B), ("c", KEY_C)):
            (d / f"{name}.key").write_text(key.hex() + "\n")
        for name in ("alice", "bob", "carol"):
            private = getattr(self, name)
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            (d / f"{name}.pem").write_bytes(pem)
            public = private.public_key()
            if isinstance(public, x25519.X25519PublicKey):
                (d / f"{name}.pub").write_text(f"x25519:{public.public_bytes_raw().hex()}\n")
            else:
                (d / f"{name}.pub").write_bytes(
                    public.public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                )


@pytest.fixture(scope="module")
def people() -> People:
    return People()


@pytest.fixture
def work(tmp_path: Path, people: People) -> Path:
    people.write(tmp_path)
    return tmp_path


def opens(path: Path, key: Any) -> bool:
    """Whether ``key`` opens ``path`` (and it loads the saved tensors)."""
    try:
        loaded = enctensor.load(path, key=key)
    except WrongKeyError:
        return False
    assert all(np.array_equal(loaded[k], v) for k, v in TENSORS.items())
    return True


def stanzas(path: Path) -> list[dict[str, Any]]:
    return list(enctensor.inspect(path)["stanza_details"])


# --- Python API -----------------------------------------------------------------------------------


def test_adding_keeps_every_other_stanza(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A, recipients=[people.bob.public_key()])
    before = stanzas(path)
    how = enctensor.rekey(path, key=KEY_A, add_keys=[KEY_B], add_recipients=[people.alice.public_key()])
    assert how == "in-place"
    after = stanzas(path)
    assert after[:2] == before, "the kept stanzas are written back unchanged"
    assert [s["type"] for s in after] == ["key", "x25519", "key", "x25519"]
    assert all(opens(path, k) for k in (KEY_A, KEY_B, people.alice, people.bob))
    # Each key identifies its own stanza (no fingerprints in this file).
    assert all("fingerprint" not in s for s in after)
    assert enctensor._api.stanzas_for(path, KEY_B) == [2]
    assert enctensor._api.stanzas_for(path, people.bob) == [1]
    assert enctensor._api.stanzas_for(path, work / "c.key") == []


def test_removing_by_key_identity_and_position(work: Path, people: People) -> None:
    path = work / "m.enct"
    recipients: list[Any] = [people.alice.public_key(), people.bob.public_key(), people.carol.public_key()]
    enctensor.save(TENSORS, path, key=[KEY_A, KEY_B], recipients=recipients)
    # By the identity that opens it (found without fingerprints), then by a key file, then by
    # position: only the named stanza goes each time.
    enctensor.rekey(path, key=KEY_A, remove_keys=[people.carol])
    assert not opens(path, people.carol)
    assert all(opens(path, k) for k in (KEY_A, KEY_B, people.alice, people.bob))
    enctensor.rekey(path, key=people.alice, remove_keys=work / "b.key")
    assert not opens(path, KEY_B) and opens(path, KEY_A)
    assert [s["type"] for s in stanzas(path)] == ["key", "x25519", "x25519"]
    enctensor.rekey(path, key=KEY_A, remove_stanzas=[2])
    assert not opens(path, people.bob)
    assert opens(path, KEY_A) and opens(path, people.alice)
    assert len(stanzas(path)) == 2


def test_removing_by_fingerprint(work: Path, people: People) -> None:
    path = work / "m.enct"
    recipients: list[Any] = [people.alice.public_key(), people.carol.public_key()]
    enctensor.save(TENSORS, path, key=KEY_A, recipients=recipients, fingerprints=True)
    details = stanzas(path)
    # The fingerprints are those of the spec, computed here by the reference implementation.
    expected = [ref.recipient_fingerprint(r).hex() for r in (KEY_A, *recipients)]
    assert [s["fingerprint"] for s in details] == expected
    enctensor.rekey(path, key=people.alice, remove_recipients=[work / "carol.pub"])
    assert not opens(path, people.carol)
    assert opens(path, KEY_A) and opens(path, people.alice)
    assert [s["fingerprint"] for s in stanzas(path)] == expected[:2]


def test_fingerprints_only_on_the_stanzas_added_with_them(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A)
    enctensor.rekey(path, key=KEY_A, add_recipients=[people.bob.public_key()], fingerprints=True)
    details = stanzas(path)
    assert "fingerprint" not in details[0]
    assert details[1]["fingerprint"] == ref.recipient_fingerprint(people.bob.public_key()).hex()
    enctensor.rekey(path, key=KEY_A, remove_recipients=[people.bob.public_key()])
    assert not opens(path, people.bob) and opens(path, KEY_A)


def test_remove_recipient_without_fingerprints_says_how_to_proceed(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A, recipients=[people.alice.public_key()])
    before = path.read_bytes()
    with pytest.raises(ValueError) as e:
        enctensor.rekey(path, key=KEY_A, remove_recipients=[people.alice.public_key()])
    msg = str(e.value)
    for needle in ("carry no recipient fingerprints", "remove_keys=", "remove_stanzas=", "re-encrypt"):
        assert needle in msg, (needle, msg)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"remove_keys": [KEY_A]}, "without any stanza"),
        ({"remove_stanzas": [0]}, "nobody could open it"),
        ({"remove_stanzas": [1]}, "no stanza 1"),
        ({"remove_keys": [KEY_C]}, "opens no stanza"),
        ({"remove_passphrase": True}, "no passphrase"),
        ({"add_keys": [KEY_A]}, "already has stanza 0"),
        ({"add_passphrase": "pass phrase"}, "only stanza"),
    ],
)
def test_refusals_change_nothing(work: Path, changes: dict[str, Any], needle: str) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=needle):
        enctensor.rekey(path, key=KEY_A, **changes)
    assert path.read_bytes() == before


def test_argument_errors(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A)
    with pytest.raises(ValueError, match="nothing to do"):
        enctensor.rekey(path, key=KEY_A)
    with pytest.raises(ValueError, match="older form"):
        enctensor.rekey(path, key=KEY_A, new_keys=[KEY_B], add_keys=[KEY_C])
    with pytest.raises(ValueError, match="name none to remove"):
        enctensor.rekey(path, key=KEY_A, replace=True, add_keys=[KEY_B], remove_stanzas=[0])
    with pytest.raises(ValueError, match="fingerprint"):
        enctensor.rekey(path, key=KEY_A, remove_keys=[KEY_A], add_passphrase="pw pw", fingerprints=True)
    with pytest.raises(ValueError, match="fingerprint"):
        enctensor.save(TENSORS, work / "p.enct", passphrase="pw pw", fingerprints=True)
    with pytest.raises(TypeError, match="not shown"):
        enctensor.rekey(path, key=KEY_A, remove_keys=[KEY_A.hex()])  # type: ignore[list-item]


def test_replacing_stays_available_explicitly(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A, recipients=[people.alice.public_key()])
    enctensor.rekey(path, key=KEY_A, replace=True, add_keys=[KEY_B])
    assert opens(path, KEY_B) and not opens(path, KEY_A) and not opens(path, people.alice)
    enctensor.rekey(path, key=KEY_B, new_keys=[KEY_C])  # the older form replaces too
    assert opens(path, KEY_C) and not opens(path, KEY_B)


def test_a_passphrase_is_changed_by_removing_it(work: Path) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, passphrase="old one", scrypt_log_n=10)
    enctensor.rekey(path, passphrase="old one", remove_passphrase=True, add_keys=[KEY_A])
    assert opens(path, KEY_A)
    enctensor.rekey(path, key=KEY_A, remove_keys=[KEY_A], add_passphrase="new one", scrypt_log_n=10)
    assert enctensor.load(path, passphrase="new one")["w"].shape == (3, 4)


def test_kept_stanzas_survive_a_rewrite(work: Path, people: People) -> None:
    path = work / "m.enct"
    enctensor.save(TENSORS, path, key=KEY_A, recipients=[people.alice.public_key()], fingerprints=True)
    kept = stanzas(path)
    many = [bytes([i]) * 32 for i in range(100, 140)]  # 40 key stanzas: more than the first page
    assert enctensor.rekey(path, key=people.alice, add_keys=many) == "rewritten"
    assert stanzas(path)[:2] == kept
    assert opens(path, KEY_A) and opens(path, people.alice) and opens(path, many[-1])
    assert enctensor.rekey(path, key=KEY_A, remove_keys=many) == "rewritten"  # back to one page
    assert stanzas(path) == kept


# --- Fingerprints: derivation and hostile members in both readers --------------------------------


def test_core_fingerprints_match_the_spec(people: People) -> None:
    """The core derives what the reference (written from FORMAT.md) derives, for each kind."""
    carol = people.carol.public_key()
    spki = carol.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _core.recipient_fingerprint(key=KEY_A) == ref.recipient_fingerprint(KEY_A)
    alice = people.alice.public_key()
    assert _core.recipient_fingerprint(x25519=alice.public_bytes_raw()) == ref.recipient_fingerprint(alice)
    assert _core.recipient_fingerprint(rsa_spki=spki) == ref.recipient_fingerprint(carol)
    # A raw key and an X25519 public key with the same 32 bytes do not share a fingerprint.
    assert _core.recipient_fingerprint(key=KEY_A) != _core.recipient_fingerprint(x25519=KEY_A)
    assert len(_core.recipient_fingerprint(key=KEY_B)) == 16


@pytest.mark.parametrize("name", ["fingerprint_key_stanzas", "fingerprint_x25519", "fingerprint_rsa_oaep"])
def test_vector_fingerprints_are_those_of_their_recipients(name: str) -> None:
    """In each success vector with fingerprints, the stanza the vector's credential opens
    carries that credential's fingerprint, as the core derives it (the vectors hold the
    reference's)."""
    spec = json.loads((VECTORS / f"{name}.json").read_text())
    path = VECTORS / f"{name}.enct"
    if "key" in spec:
        key: Any = bytes.fromhex(spec["key"])
        fp = _core.recipient_fingerprint(key=key)
    elif spec["identity"]["type"] == "x25519":
        key = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(spec["identity"]["private"]))
        fp = _core.recipient_fingerprint(x25519=key.public_key().public_bytes_raw())
    else:
        key = serialization.load_pem_private_key(spec["identity"]["private_pem"].encode(), password=None)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fp = _core.recipient_fingerprint(rsa_spki=spki)
    [i] = enctensor._api.stanzas_for(path, key)
    assert stanzas(path)[i]["fingerprint"] == fp.hex()


def _edit_stanzas(data: bytes, edit: Callable[[list[dict[str, Any]]], None]) -> bytes:
    """``data`` with its stanza list edited in place (the stanza area is outside the MAC), padded
    back to the same length."""
    area_len = struct.unpack_from("<I", data, 12)[0]
    area = json.loads(data[32 : 32 + area_len])
    edit(area["stanzas"])
    text = json.dumps(area, separators=(",", ":")).encode()
    assert len(text) <= area_len
    return data[:32] + text.ljust(area_len, b" ") + data[32 + area_len :]


@pytest.mark.parametrize(
    "value",
    [
        "ab" * 15,  # 15 bytes
        "ab" * 17,  # 17 bytes
        "AB" * 16,  # uppercase
        "zz" * 16,  # not hex
        "",
        12345,
        "ab" * 1500,  # 3,000 hex digits: large, and still within the first page
    ],
    ids=["short", "long", "uppercase", "not-hex", "empty", "integer", "huge"],
)
def test_hostile_fingerprint_members_are_format_errors(work: Path, people: People, value: object) -> None:
    good = enctensor.save_bytes(TENSORS, key=KEY_A, recipients=[people.alice.public_key()], fingerprints=True)
    for i in (0, 1):  # a key stanza, an x25519 stanza

        def put(stanzas: list[dict[str, Any]], i: int = i) -> None:
            stanzas[i]["fingerprint"] = value

        bad = _edit_stanzas(good, put)
        with pytest.raises(FormatError, match="fingerprint"):
            enctensor.inspect_bytes(bad)
        with pytest.raises(FormatError):
            enctensor.load_bytes(bad, key=KEY_A)
        with pytest.raises(ref.FormatFailure, match="fingerprint"):
            ref.read(bad, key=KEY_A)


def test_a_16_kib_fingerprint_and_one_on_a_passphrase_are_format_errors() -> None:
    """The vectors' largest member (the stanza area grows to several pages) and a well-formed
    fingerprint on an scrypt stanza, refused before scrypt runs, by both readers."""
    for name in ("fingerprint_huge", "fingerprint_on_scrypt"):
        data = (VECTORS / f"{name}.enct").read_bytes()
        with pytest.raises(FormatError, match="fingerprint"):
            enctensor.inspect_bytes(data)
        with pytest.raises(ref.FormatFailure, match="fingerprint"):
            ref.inspect(data)
    data = _edit_stanzas(
        enctensor.save_bytes(TENSORS, passphrase="pw pw", scrypt_log_n=10),
        lambda stanzas: stanzas[0].update(fingerprint="00" * 16),
    )
    with pytest.raises(FormatError, match="fingerprint"):
        enctensor.load_bytes(data, passphrase="pw pw")


def test_readers_ignore_fingerprints_when_opening(people: People) -> None:
    """Labels swapped between two stanzas: both still open for their real holders."""
    good = enctensor.save_bytes(TENSORS, key=[KEY_A, KEY_B], fingerprints=True)

    def swap(stanzas: list[dict[str, Any]]) -> None:
        first, second = stanzas
        first["fingerprint"], second["fingerprint"] = second["fingerprint"], first["fingerprint"]

    swapped = _edit_stanzas(good, swap)
    assert swapped != good
    for key in (KEY_A, KEY_B):
        assert np.array_equal(enctensor.load_bytes(swapped, key=key)["w"], TENSORS["w"])
        assert ref.read(swapped, key=key)[1] == {}


# --- CLI, through the real entry point ------------------------------------------------------------


def _encrypt(work: Path, people: People, *args: str) -> Path:
    enctensor.save(TENSORS, work / "m.enct", key=KEY_A)
    if args:
        ok(cli("rekey", "m.enct", "-k", "a.key", *args, cwd=work))
    return work / "m.enct"


def _can_open(work: Path, *how: str) -> bool:
    proc = cli("verify", "m.enct", *how, cwd=work)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode == 0


def test_cli_add_recipient_keeps_everyone_and_lists_the_stanzas(work: Path, people: People) -> None:
    """The README's example: -r adds a recipient; the key that opened the file still does."""
    _encrypt(work, people)
    out = ok(
        cli("rekey", "m.enct", "-k", "a.key", "-r", "alice.pub", "-r", "carol.pub", cwd=work)
    ).stdout.decode()
    lines = out.splitlines()
    assert lines[0] == "m.enct: re-keyed in place (one page rewritten)"
    assert "who can open it now (3 stanza(s)" in lines[1]
    assert lines[2].split() == ["0", "key", "opens", "with", "a.key"]
    assert lines[3].split() == ["1", "x25519", "added:", "alice.pub"]
    assert lines[4].split() == ["2", "rsa-oaep", "2048-bit", "added:", "carol.pub"]
    for how in (["-k", "a.key"], ["-i", "alice.pem"], ["-i", "carol.pem"]):
        assert _can_open(work, *how), how
    assert not _can_open(work, "-i", "bob.pem")


def test_cli_removes_by_identity_key_file_and_number(work: Path, people: People) -> None:
    _encrypt(work, people, "-r", "alice.pub", "-r", "bob.pub", "--add-key-file", "b.key")
    ok(cli("rekey", "m.enct", "-k", "a.key", "--remove-identity", "bob.pem", cwd=work))
    assert not _can_open(work, "-i", "bob.pem")
    assert _can_open(work, "-i", "alice.pem") and _can_open(work, "-k", "b.key")
    ok(cli("rekey", "m.enct", "-i", "alice.pem", "--remove-key-file", "b.key", cwd=work))
    assert not _can_open(work, "-k", "b.key") and _can_open(work, "-k", "a.key")
    text = ok(cli("inspect", "m.enct", "-i", "alice.pem", cwd=work)).stdout.decode()
    assert "    1  x25519  opens with alice.pem" in text
    out = ok(cli("rekey", "m.enct", "-k", "a.key", "--remove-stanza", "1", cwd=work)).stdout.decode()
    assert "who can open it now (1 stanza(s)" in out
    assert not _can_open(work, "-i", "alice.pem") and _can_open(work, "-k", "a.key")


def test_cli_fingerprints_inspect_and_remove_recipient(work: Path, people: People) -> None:
    _encrypt(work, people, "-r", "alice.pub", "-r", "carol.pub", "--fingerprint")
    fp_carol = ref.recipient_fingerprint(people.carol.public_key()).hex()
    text = ok(cli("inspect", "m.enct", cwd=work)).stdout.decode()
    assert f"2  rsa-oaep 2048-bit  fingerprint {fp_carol}" in text
    info = json.loads(ok(cli("inspect", "m.enct", "--json", "-k", "a.key", "-k", "b.key", cwd=work)).stdout)
    assert (
        info["stanza_details"][2]["fingerprint"] == fp_carol
        and "fingerprint" not in info["stanza_details"][0]
    )
    assert info["stanzas_opened_by"] == {"a.key": [0], "b.key": []}
    ok(cli("rekey", "m.enct", "-k", "a.key", "--remove-recipient", "carol.pub", cwd=work))
    assert not _can_open(work, "-i", "carol.pem") and _can_open(work, "-i", "alice.pem")


def test_cli_remove_recipient_without_fingerprints_says_how_to_proceed(work: Path, people: People) -> None:
    path = _encrypt(work, people, "-r", "alice.pub")
    before = path.read_bytes()
    failed(
        cli("rekey", "m.enct", "-k", "a.key", "--remove-recipient", "alice.pub", cwd=work),
        2,
        "carry no recipient fingerprints",
        "--remove-identity",
        "--remove-stanza",
        "enctensor inspect",
        "nothing was changed",
    )
    assert path.read_bytes() == before


def test_cli_refuses_to_leave_no_stanza_and_usage_errors(work: Path, people: People) -> None:
    path = _encrypt(work, people)
    before = path.read_bytes()
    failed(
        cli("rekey", "m.enct", "-k", "a.key", "--remove-key-file", "a.key", cwd=work),
        2,
        "nobody could open it",
    )
    failed(
        cli("rekey", "m.enct", "-k", "a.key", "--replace", "--remove-stanza", "0", cwd=work), 2, "--replace"
    )
    failed(
        cli("rekey", "m.enct", "-k", "a.key", "--new-key-file", "b.key", "-r", "alice.pub", cwd=work),
        2,
        "--new-key-file",
    )
    failed(
        cli("rekey", "m.enct", "-k", "a.key", "--fingerprint", "--remove-stanza", "0", cwd=work),
        2,
        "--fingerprint",
    )
    negative = cli("rekey", "m.enct", "-k", "a.key", "--remove-stanza", "-1", cwd=work)
    assert negative.returncode == 2 and b"numbered from 0" in negative.stderr
    failed(cli("rekey", "m.enct", "-k", "a.key", "--remove-stanza", "3", cwd=work), 2, "no stanza 3")
    assert path.read_bytes() == before


def test_cli_replace_is_explicit(work: Path, people: People) -> None:
    _encrypt(work, people, "-r", "alice.pub")
    out = ok(
        cli("rekey", "m.enct", "-i", "alice.pem", "--replace", "--add-key-file", "b.key", cwd=work)
    ).stdout
    assert "(1 stanza(s)" in out.decode()
    assert _can_open(work, "-k", "b.key")
    assert not _can_open(work, "-k", "a.key") and not _can_open(work, "-i", "alice.pem")
