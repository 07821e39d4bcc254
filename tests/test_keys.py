"""Key management: recipients (X25519, RSA-OAEP), identities, passphrases, re-keying, key
providers and publisher signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519

import enctensor
from enctensor import FormatError, IntegrityError, WrongKeyError


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return {"w": sample_array(np.float32, (300, 70), 1), "b": sample_array(np.int8, (5000,), 2)}


def test_each_of_several_recipients_opens_and_a_stranger_does_not(
    tmp_path: Path, arrays: dict[str, np.ndarray], rsa_key: rsa.RSAPrivateKey
) -> None:
    alice, bob, stranger = (x25519.X25519PrivateKey.generate() for _ in range(3))
    path = tmp_path / "m.enct"
    enctensor.save(
        arrays, path, key=KEY, recipients=[alice.public_key(), bob.public_key(), rsa_key.public_key()]
    )
    assert enctensor.inspect(path)["stanzas"] == ["key", "x25519", "x25519", "rsa-oaep"]
    for identity in (KEY, alice, bob, rsa_key):
        out = enctensor.load(path, key=identity)
        assert all(same(out[k], v) for k, v in arrays.items())
    with pytest.raises(WrongKeyError, match="X25519"):
        enctensor.load(path, key=stranger)
    with pytest.raises(WrongKeyError):
        enctensor.load(path, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(WrongKeyError):
        enctensor.load(path, key=OTHER_KEY)


def test_recipients_and_identities_from_files(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    ident = x25519.X25519PrivateKey.generate()
    priv_pem = tmp_path / "id.pem"
    priv_pem.write_bytes(
        ident.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub_pem = tmp_path / "id.pub.pem"
    pub_pem.write_bytes(
        ident.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    text = enctensor.x25519_public_text(ident.public_key())
    assert text.startswith("x25519:") and len(text) == 7 + 64
    recipients: list[Any] = [pub_pem, enctensor.read_key_file(str(pub_pem)), text]
    for recipient in recipients:
        blob = enctensor.save_bytes(arrays, recipients=[recipient])
        assert same(enctensor.load_bytes(blob, key=priv_pem)["w"], arrays["w"])
    with pytest.raises(ValueError, match="64 lowercase hex"):
        enctensor.save_bytes(arrays, recipients=["x25519:abcd"])


def test_passphrase_is_exclusive_and_bounded(arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        enctensor.save_bytes(arrays, key=KEY, passphrase="pw", scrypt_log_n=10)
    blob = enctensor.save_bytes(arrays, passphrase="open sesame", scrypt_log_n=10)
    assert same(enctensor.load_bytes(blob, passphrase="open sesame")["b"], arrays["b"])
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        enctensor.load_bytes(blob, passphrase="open sesame!")
    with pytest.raises(ValueError, match="log_n"):
        enctensor.save_bytes(arrays, passphrase="pw", scrypt_log_n=30)


def test_rekey_in_place_changes_who_opens_and_keeps_every_tensor_byte(
    tmp_path: Path, arrays: dict[str, np.ndarray]
) -> None:
    path = tmp_path / "m.enct"
    publisher = ed25519.Ed25519PrivateKey.generate()
    enctensor.save(arrays, path, key=KEY, sign_with=publisher)
    before = path.read_bytes()
    carol = x25519.X25519PrivateKey.generate()
    assert (
        enctensor.rekey(path, key=KEY, new_keys=[OTHER_KEY], new_recipients=[carol.public_key()])
        == "in-place"
    )
    after = path.read_bytes()
    assert len(after) == len(before)
    assert after[4096:] == before[4096:], "only the first page may change"
    assert after[:32] == before[:32], "the preamble is unchanged"
    with pytest.raises(WrongKeyError):
        enctensor.load(path, key=KEY)
    for k in (OTHER_KEY, carol):
        out = enctensor.load(path, key=k, verify_with=publisher.public_key())
        assert all(same(out[n], a) for n, a in arrays.items())


def test_rekey_that_outgrows_the_first_page_rewrites_atomically(
    tmp_path: Path, arrays: dict[str, np.ndarray], rsa_key: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(arrays, path, key=KEY)
    data_before = enctensor.load(path, key=KEY)
    old_info = enctensor.inspect(path)
    rsa_keys = [rsa.generate_private_key(public_exponent=65537, key_size=4096) for _ in range(5)]
    how = enctensor.rekey(path, key=KEY, new_recipients=[k.public_key() for k in rsa_keys])
    assert how == "rewritten"
    assert [p.name for p in tmp_path.iterdir()] == ["m.enct"]
    info = enctensor.inspect(path)
    assert info["stanzas"] == ["rsa-oaep"] * 5 and info["tensors"] == old_info["tensors"]
    out = enctensor.load(path, key=rsa_keys[3])
    assert all(same(out[n], a) for n, a in data_before.items())
    with pytest.raises(WrongKeyError):
        enctensor.load(path, key=KEY)


def test_rekey_with_the_wrong_key_changes_nothing(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(arrays, path, key=KEY)
    before = path.read_bytes()
    with pytest.raises(WrongKeyError):
        enctensor.rekey(path, key=OTHER_KEY, new_keys=[OTHER_KEY])
    with pytest.raises(ValueError, match="at least one"):
        enctensor.rekey(path, key=KEY)
    assert path.read_bytes() == before


def test_signatures(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    publisher = ed25519.Ed25519PrivateKey.generate()
    mallory = ed25519.Ed25519PrivateKey.generate()
    alice = x25519.X25519PrivateKey.generate()
    signed = enctensor.save_bytes(arrays, recipients=[alice.public_key()], sign_with=publisher)
    assert enctensor.inspect_bytes(signed)["signed"] is True
    assert same(enctensor.load_bytes(signed, key=alice, verify_with=publisher.public_key())["w"], arrays["w"])
    with pytest.raises(IntegrityError, match="signature is invalid"):
        enctensor.load_bytes(signed, key=alice, verify_with=mallory.public_key())
    # Anyone with Alice's public key can make a file she opens; only the signature tells.
    forged = enctensor.save_bytes({"w": np.zeros((300, 70), np.float32)}, recipients=[alice.public_key()])
    assert enctensor.inspect_bytes(forged)["signed"] is False
    enctensor.load_bytes(forged, key=alice)
    with pytest.raises(IntegrityError, match="not signed"):
        enctensor.load_bytes(forged, key=alice, verify_with=publisher.public_key())
    # A tampered signature.
    at = signed.index(b'"sig":"') + 7
    bad = bytearray(signed)
    bad[at] = ord("0") if bad[at] != ord("0") else ord("1")
    with pytest.raises(IntegrityError, match="signature"):
        enctensor.load_bytes(bytes(bad), key=alice, verify_with=publisher.public_key())
    with pytest.raises(TypeError, match="Ed25519PublicKey"):
        enctensor.load_bytes(signed, key=alice, verify_with=publisher)  # type: ignore[arg-type]


def test_key_provider_gets_stanza_descriptions(
    arrays: dict[str, np.ndarray], rsa_key: rsa.RSAPrivateKey
) -> None:
    blob = enctensor.save_bytes(arrays, key=KEY, recipients=[rsa_key.public_key()])
    seen: list[list[dict[str, Any]]] = []

    def provider(stanzas: list[dict[str, Any]]) -> bytes:
        seen.append(stanzas)
        return KEY

    assert same(enctensor.load_bytes(blob, key=provider)["b"], arrays["b"])
    assert [s["type"] for s in seen[0]] == ["key", "rsa-oaep"]

    def kms(stanzas: list[dict[str, Any]]) -> enctensor.FileKey:
        """Stands in for a KMS that holds the RSA key and decrypts the stanza body itself."""
        body = bytes.fromhex(next(s for s in stanzas if s["type"] == "rsa-oaep")["body"])
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"enctensor.v1 rsa-oaep"
        )
        return enctensor.FileKey(rsa_key.decrypt(body, oaep))

    assert same(enctensor.load_bytes(blob, key=kms)["w"], arrays["w"])
    with pytest.raises(WrongKeyError, match="key provider"):
        enctensor.load_bytes(blob, key=lambda _s: enctensor.FileKey(bytes(32)))
    assert "redacted" in repr(enctensor.FileKey(KEY)) and KEY.hex() not in repr(enctensor.FileKey(KEY))


def test_no_key_material_in_messages(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(arrays, path, key=KEY)
    for bad in (OTHER_KEY, KEY[:31]):
        with pytest.raises((WrongKeyError, ValueError)) as exc:
            enctensor.load(path, key=bad)
        assert bad.hex() not in str(exc.value) and repr(bad) not in str(exc.value)


def test_hostile_stanzas_are_format_errors(arrays: dict[str, np.ndarray]) -> None:
    blob = bytearray(enctensor.save_bytes(arrays, passphrase="pw", scrypt_log_n=10))
    at = blob.index(b'"log_n":10')
    blob[at : at + 10] = b'"log_n":40'
    with pytest.raises(FormatError, match="log_n"):
        enctensor.load_bytes(bytes(blob), passphrase="pw")


def test_signature_failures_have_their_own_class(arrays: dict[str, np.ndarray]) -> None:
    publisher = ed25519.Ed25519PrivateKey.generate()
    unsigned = enctensor.save_bytes(arrays, key=KEY)
    with pytest.raises(enctensor.SignatureError, match="not signed") as exc:
        enctensor.load_bytes(unsigned, key=KEY, verify_with=publisher.public_key())
    assert isinstance(exc.value, IntegrityError)
