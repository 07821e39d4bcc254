"""Test vectors of spec/vectors/ against the reference reader and the Rust-backed package.

Tests whose id contains "rust" exercise the ``enctensor`` package; everything else needs only
the pure-Python reference (``spec/reference/enctensor_ref.py``):

    python -m pytest tests/test_vectors.py -k "not rust"     # reference reader only
    python -m pytest tests/test_vectors.py                   # both
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
VECTORS_DIR = ROOT / "spec" / "vectors"

sys.path.insert(0, str(ROOT / "spec" / "reference"))

import enctensor_ref as ref

EXPECT_OF_REF_ERROR: dict[type[ref.RefError], str] = {
    ref.FormatFailure: "format failure",
    ref.NoMatch: "no match",
    ref.HeaderFailure: "header failure",
    ref.PayloadFailure: "payload failure",
}
EXPECT_CLASSES = frozenset({"success", *EXPECT_OF_REF_ERROR.values()})


def expect_of(exc: ref.RefError) -> str:
    """The vector class of a reference failure."""
    for cls, name in EXPECT_OF_REF_ERROR.items():
        if isinstance(exc, cls):
            return name
    raise TypeError(type(exc))


@dataclass(frozen=True)
class VectorCase:
    name: str
    spec: dict[str, Any]
    data: bytes

    @property
    def expect(self) -> str:
        return str(self.spec["expect"])

    @property
    def key(self) -> bytes | None:
        return bytes.fromhex(self.spec["key"]) if "key" in self.spec else None

    @property
    def passphrase(self) -> str | None:
        return self.spec.get("passphrase")

    @property
    def identity(self) -> ref.Identity | None:
        return load_identity(self.spec["identity"]) if "identity" in self.spec else None

    @property
    def verify_key(self) -> Ed25519PublicKey | None:
        if "verify_key" not in self.spec:
            return None
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.spec["verify_key"]))

    @property
    def max_scrypt_log_n(self) -> int | None:
        """The caller's scrypt cost policy; None: the reader's default (18)."""
        value = self.spec.get("max_scrypt_log_n")
        return None if value is None else int(value)


def load_identity(spec: dict[str, str]) -> ref.Identity:
    """The private key of a vector's "identity" member."""
    if spec["type"] == "x25519":
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(spec["private"]))
    assert spec["type"] == "rsa", spec
    key = serialization.load_pem_private_key(spec["private_pem"].encode("ascii"), password=None)
    assert isinstance(key, RSAPrivateKey)
    return key


def vector_names() -> list[str]:
    return sorted(p.stem for p in VECTORS_DIR.glob("*.json"))


def load_vector(name: str) -> VectorCase:
    spec = json.loads((VECTORS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return VectorCase(name, spec, (VECTORS_DIR / f"{name}.enct").read_bytes())


NAMES = vector_names()


def test_vectors_present() -> None:
    assert len(NAMES) >= 30
    for name in NAMES:
        assert (VECTORS_DIR / f"{name}.enct").is_file(), name
        assert "rust" not in name  # would break -k "not rust"
    counts = {c: sum(load_vector(n).expect == c for n in NAMES) for c in EXPECT_CLASSES}
    assert all(counts.values()), counts  # every class is exercised


def test_vector_json_schema() -> None:
    allowed = {
        "expect",
        "comment",
        "key",
        "passphrase",
        "identity",
        "verify_key",
        "max_scrypt_log_n",
        "tensors",
        "metadata",
    }
    for name in NAMES:
        v = load_vector(name)
        assert set(v.spec) <= allowed, name
        assert v.expect in EXPECT_CLASSES, name
        assert isinstance(v.spec["comment"], str), name
        assert ("tensors" in v.spec) == ("metadata" in v.spec) == (v.expect == "success"), name
        if v.key is not None:
            assert len(v.key) == 32, name
        # The package takes a raw key or an identity in the same argument: never both.
        assert not ("key" in v.spec and "identity" in v.spec), name
        if "identity" in v.spec:
            identity = v.spec["identity"]
            assert set(identity) in ({"type", "private"}, {"type", "private_pem"}), name
            assert isinstance(v.identity, X25519PrivateKey if identity["type"] == "x25519" else RSAPrivateKey)
        if "verify_key" in v.spec:
            assert len(bytes.fromhex(v.spec["verify_key"])) == 32, name
            assert v.spec["verify_key"] == v.spec["verify_key"].lower(), name
        if "max_scrypt_log_n" in v.spec:
            assert type(v.spec["max_scrypt_log_n"]) is int and 10 <= v.spec["max_scrypt_log_n"] <= 20, name
            assert "passphrase" in v.spec, name


def test_vectors_cover_credentials() -> None:
    """Identities of both kinds and verification keys are exercised, in several classes."""
    specs = [load_vector(n).spec for n in NAMES]
    for kind in ("x25519", "rsa"):
        expects = {s["expect"] for s in specs if s.get("identity", {}).get("type") == kind}
        assert {"success", "no match", "format failure", "header failure"} <= expects, kind
    expects = {s["expect"] for s in specs if "verify_key" in s}
    assert {"success", "no match", "format failure", "header failure", "payload failure"} <= expects


# --- Reference reader -----------------------------------------------------------------------


def ref_error(v: VectorCase) -> ref.RefError | None:
    """The reference reader's failure on a vector, or None if it reads."""
    try:
        ref_outcome_or_raise(v)
    except ref.RefError as exc:
        return exc
    return None


def ref_outcome_or_raise(v: VectorCase) -> tuple[list[ref.Tensor], dict[str, str]]:
    policy = ref.DEFAULT_MAX_SCRYPT_LOG_N if v.max_scrypt_log_n is None else v.max_scrypt_log_n
    outcome: tuple[list[ref.Tensor], dict[str, str]] = ref.read(
        v.data,
        key=v.key,
        passphrase=v.passphrase,
        identity=v.identity,
        verify_key=v.verify_key,
        max_scrypt_log_n=policy,
    )
    return outcome


def ref_outcome(v: VectorCase) -> tuple[str, list[ref.Tensor], dict[str, str]]:
    try:
        tensors, metadata = ref_outcome_or_raise(v)
    except ref.RefError as exc:
        return expect_of(exc), [], {}
    return "success", tensors, metadata


@pytest.mark.parametrize("name", NAMES)
def test_reference_reader(name: str) -> None:
    v = load_vector(name)
    got, tensors, metadata = ref_outcome(v)
    assert got == v.expect, v.spec["comment"]
    if v.expect != "success":
        return
    want = v.spec["tensors"]
    assert [t.name for t in tensors] == [w["name"] for w in want]
    for t, w in zip(tensors, want, strict=True):
        assert t.dtype == w["dtype"], t.name
        assert list(t.shape) == w["shape"], t.name
        assert t.encrypted is w["encrypted"], t.name
        assert hashlib.sha256(t.data).hexdigest() == w["sha256"], t.name
    assert metadata == v.spec["metadata"]


def is_policy_refusal(v: VectorCase) -> bool:
    """A format failure that is the reader's scrypt cost policy, not a defect of the bytes:
    inspect (which opens no stanza) accepts the file."""
    exc = ref_error(v)
    return isinstance(exc, ref.FormatFailure) and exc.policy


@pytest.mark.parametrize("name", NAMES)
def test_reference_inspect(name: str) -> None:
    """inspect() needs no key and fails exactly on format failures (other than the reader's
    scrypt cost policy)."""
    v = load_vector(name)
    if v.expect == "format failure" and not is_policy_refusal(v):
        with pytest.raises(ref.FormatFailure):
            ref.inspect(v.data)
        return
    info = ref.inspect(v.data)
    assert isinstance(info["signed"], bool)
    assert info["stanzas"] and all(isinstance(s, str) for s in info["stanzas"])
    if v.expect == "success" and v.verify_key is not None:
        assert info["signed"]
    if v.expect == "success":
        assert info["metadata"] == v.spec["metadata"]
        got = [(t["name"], t["dtype"], list(t["shape"]), t["encrypted"]) for t in info["tensors"]]
        want = [(w["name"], w["dtype"], w["shape"], w["encrypted"]) for w in v.spec["tensors"]]
        assert got == want


# --- Generator ------------------------------------------------------------------------------


def load_generator() -> ModuleType:
    path = VECTORS_DIR / "generate.py"
    spec = importlib.util.spec_from_file_location("enctensor_vectors_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def vector_files(root: Path) -> list[str]:
    """The vector files under root (set vectors' directories included), relative to it."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".enct", ".json")
    )


def test_generator_reproduces_committed_vectors(tmp_path: Path) -> None:
    generator = load_generator()
    generator.main(tmp_path)
    produced = vector_files(tmp_path)
    committed = vector_files(VECTORS_DIR)
    assert produced == committed
    assert any(f.startswith("sharded/") for f in produced)  # the set vectors are covered too
    for filename in produced:
        assert (tmp_path / filename).read_bytes() == (VECTORS_DIR / filename).read_bytes(), (
            f"{filename} differs: run python spec/vectors/generate.py"
        )


# --- Reference writer round trip ------------------------------------------------------------


def random_tensors(rng: random.Random, count: int) -> list[ref.TensorSpec]:
    tensors: list[ref.TensorSpec] = []
    for i in range(count):
        dtype = rng.choice(sorted(ref.DTYPE_SIZES))
        rank = rng.choice([0, 1, 1, 2, 3])
        shape = tuple(rng.choice([0, 1, 2, 3, 7, 64, 300]) for _ in range(rank))
        if rng.random() < 0.15:
            shape = (rng.randint(4096, 20000),)  # spans several 4096-byte chunks
        nbytes = ref.DTYPE_SIZES[dtype]
        for dim in shape:
            nbytes *= dim
        name = rng.choice(["w", "layer.", "ε", "block/"]) + str(i)
        tensors.append((name, dtype, shape, rng.randbytes(nbytes), rng.random() < 0.7))
    return tensors


def fixed_rsa_key() -> RSAPrivateKey:
    """The generator's fixed RSA-2048 test key (generating one per test would be slow)."""
    key: RSAPrivateKey = load_generator().RSA_A
    return key


@pytest.mark.parametrize("seed", range(9))
def test_reference_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    tensors = random_tensors(rng, rng.randint(0, 12))
    metadata = {f"k{i}": rng.choice(["", "v", "ü" * 3]) for i in range(rng.randint(0, 4))}
    chunk_size = rng.choice([4096, 8192, 1 << 20])
    publisher = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) if rng.random() < 0.5 else None
    common: dict[str, Any] = {
        "metadata": metadata,
        "chunk_size": chunk_size,
        "rng": rng.randbytes,
        "sign_with": publisher,
    }
    openers: list[dict[str, Any]]
    if seed % 3 == 2:
        passphrase = "pass " + str(seed)
        data = ref.write(tensors, passphrase=passphrase, log_n=10, **common)
        openers = [{"passphrase": passphrase}]
    else:
        keys = [rng.randbytes(32) for _ in range(rng.randint(0 if seed % 3 else 1, 2))]
        identities: list[ref.Identity] = [
            X25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(rng.randint(0, 2))
        ]
        if seed % 3 == 1:
            identities.append(fixed_rsa_key())
        data = ref.write(tensors, keys=keys, recipients=[i.public_key() for i in identities], **common)
        openers = [{"key": k} for k in keys] + [{"identity": i} for i in identities]
    info = ref.inspect(data)
    assert info["data_offset"] % 4096 == 0
    assert info["stanza_area_len"] == 4096 - 32  # the canonical length when the stanzas fit
    assert info["signed"] is (publisher is not None)
    assert info["chunk_digest"] is (publisher is not None)  # a digest table when, and only when, signing
    assert len(info["stanzas"]) == len(openers)
    want = [(n, dt, tuple(sh), raw, enc) for n, dt, sh, raw, enc in tensors]
    for opener in openers:
        verify: dict[str, Any] = {"verify_key": publisher.public_key()} if publisher else {}
        got, got_metadata = ref.read(data, **opener, **verify)
        assert [(t.name, t.dtype, t.shape, t.data, t.encrypted) for t in got] == want
        assert got_metadata == metadata
    with pytest.raises(ref.NoMatch):
        ref.read(data, key=bytes(32), identity=X25519PrivateKey.from_private_bytes(bytes(32)))
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    with pytest.raises(ref.HeaderFailure) as failure:
        ref.read(data, **openers[0], verify_key=stranger)
    assert failure.value.signature
    if tensors:
        with pytest.raises((ref.PayloadFailure, ref.FormatFailure)):
            ref.read(data[:-1] + bytes([data[-1] ^ 1]), **openers[0])


def test_reference_stanza_area_len() -> None:
    """The canonical stanza_area_len: 4096 - 32 when the stanzas fit, else the smallest
    4096 * k - 32 that holds them; more than 256 stanzas are refused by the writer."""
    rng = random.Random(1)
    tensors = random_tensors(rng, 2)

    def area_len(**kwargs: Any) -> int:
        data = ref.write(tensors, metadata={}, rng=rng.randbytes, **kwargs)
        return int(ref.inspect(data)["stanza_area_len"])

    assert area_len(keys=[bytes(32)]) == 4064
    many = [X25519PrivateKey.from_private_bytes(rng.randbytes(32)).public_key() for _ in range(40)]
    assert ref.canonical_stanza_area_len(4064) == 4064 and ref.canonical_stanza_area_len(4065) == 8160
    assert area_len(recipients=many) == ref.canonical_stanza_area_len(
        len(ref.stanza_area_json(ref.make_stanzas(bytes(32), recipients=many, rng=rng.randbytes), None))
    )
    assert area_len(recipients=many) in (8160, 12256)
    assert area_len(keys=[rng.randbytes(32) for _ in range(256)]) == 61408
    with pytest.raises(ValueError, match="256"):
        area_len(keys=[rng.randbytes(32) for _ in range(257)])


def test_reference_rekey() -> None:
    """Re-keying replaces the stanza area in place when its canonical length does not change,
    and otherwise moves everything after it unchanged; the signature survives both."""
    rng = random.Random(2)
    tensors = random_tensors(rng, 3)
    publisher = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    old, new = rng.randbytes(32), X25519PrivateKey.from_private_bytes(rng.randbytes(32))
    data = ref.write(tensors, metadata={"a": "b"}, keys=[old], sign_with=publisher, rng=rng.randbytes)
    rekeyed = ref.rekey(
        data, key=old, new_recipients=[new.public_key(), fixed_rsa_key().public_key()], rng=rng.randbytes
    )
    area_end = ref.PREAMBLE_LEN + ref.inspect(data)["stanza_area_len"]
    assert len(rekeyed) == len(data)
    assert rekeyed[: ref.PREAMBLE_LEN] == data[: ref.PREAMBLE_LEN] and rekeyed[area_end:] == data[area_end:]
    assert ref.inspect(rekeyed)["stanzas"] == ["x25519", "rsa-oaep"]
    for opener in ({"identity": new}, {"identity": fixed_rsa_key()}):
        got, _ = ref.read(rekeyed, **opener, verify_key=publisher.public_key())
        assert [t.data for t in got] == [raw for _, _, _, raw, _ in tensors]
    with pytest.raises(ref.NoMatch):
        ref.read(rekeyed, key=old)
    with pytest.raises(ref.NoMatch):  # re-keying needs a credential that opens the file
        ref.rekey(data, key=bytes(32), new_keys=[bytes(32)], rng=rng.randbytes)

    # 60 key stanzas do not fit in 4064 bytes: the file is rewritten with a larger area.
    keys = [rng.randbytes(32) for _ in range(60)]
    grown = ref.rekey(data, key=old, new_keys=keys, rng=rng.randbytes)
    info, grown_info = ref.inspect(data), ref.inspect(grown)
    assert grown_info["stanza_area_len"] == 16384 - 32
    assert grown_info["data_offset"] - grown_info["stanza_area_len"] == info["data_offset"] - 4064
    assert grown[grown_info["data_offset"] :] == data[info["data_offset"] :]
    got, _ = ref.read(grown, key=keys[-1], verify_key=publisher.public_key())
    assert [t.data for t in got] == [raw for _, _, _, raw, _ in tensors]
    # Shrinking back rewrites the file with the canonical one-page area: the original layout.
    shrunk = ref.rekey(grown, key=keys[0], new_keys=[old], rng=rng.randbytes)
    assert len(shrunk) == len(data) and shrunk[area_end:] == data[area_end:]
    with pytest.raises(ValueError, match="256"):  # refused before anything is written
        ref.rekey(data, key=old, new_keys=[rng.randbytes(32) for _ in range(257)], rng=rng.randbytes)


def test_reference_strict_ed25519() -> None:
    """The checks that OpenSSL's Ed25519 verification (cryptography) does not make, and that
    the reference reader adds (FORMAT.md, Signature, verifying, steps 1 and 2)."""
    assert len(ref.SMALL_ORDER_ENCODINGS) == 8
    for encoding in ref.SMALL_ORDER_ENCODINGS:
        point = ref.ed_decode(encoding)
        assert point is not None and ref.ed_is_small_order(point)
        with pytest.raises(ref.HeaderFailure, match="small-order") as info:
            ref.ed25519_check_verify_key(encoding)
        assert info.value.signature
    identity = bytes([1]) + bytes(31)
    forged = identity + bytes(32)  # R = identity, S = 0: valid for every message under the identity
    Ed25519PublicKey.from_public_bytes(identity).verify(forged, b"any message")  # OpenSSL accepts
    assert not ref.ed25519_verify_strict(identity, forged, b"any message")
    # Non-canonical encodings: y >= p, and the sign bit set with x = 0.
    assert ref.ed_decode((ref.ED25519_P + 1).to_bytes(32, "little")) is None
    assert ref.ed_decode(bytes([1]) + bytes(30) + b"\x80") is None
    # A genuine signature verifies; S + L does not.
    seed = bytes(range(192, 224))
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    ref.ed25519_check_verify_key(public)
    sig = Ed25519PrivateKey.from_private_bytes(seed).sign(b"m")
    assert ref.ed25519_verify_strict(public, sig, b"m")
    s_plus_l = (int.from_bytes(sig[32:], "little") + ref.ED25519_L).to_bytes(32, "little")
    assert not ref.ed25519_verify_strict(public, sig[:32] + s_plus_l, b"m")


KEYHOLDER_VECTOR = "signature_keyholder_edited_chunk"


def test_reference_slices_check_digests() -> None:
    """With a verification key every chunk read is checked against its digest, slices
    included: in the key-holder-edited vector only chunk 1 of 'embed' and the clear 'norm'
    were edited, so a slice within chunk 0 reads and one touching chunk 1 fails."""
    v = load_vector(KEYHOLDER_VECTOR)
    ref_key = bytes(range(32))
    assert v.verify_key is not None
    first = ref.read_tensor(v.data, "embed", byte_range=(0, 4096), key=ref_key, verify_key=v.verify_key)
    assert len(first) == 4096
    with pytest.raises(ref.PayloadFailure):
        ref.read_tensor(v.data, "embed", byte_range=(4090, 4100), key=ref_key, verify_key=v.verify_key)
    with pytest.raises(ref.PayloadFailure):
        ref.read_tensor(v.data, "norm", byte_range=(200, 201), key=ref_key, verify_key=v.verify_key)
    # Without a verification key the edited chunks verify (their tags are unchanged).
    assert len(ref.read_tensor(v.data, "embed", byte_range=(4090, 4100), key=ref_key)) == 10


def test_reference_scrypt_policy_names_the_parameter() -> None:
    v = load_vector("passphrase_log_n_19_default_policy")
    with pytest.raises(ref.FormatFailure, match="max_scrypt_log_n") as info:
        ref_outcome_or_raise(v)
    assert info.value.policy
    with pytest.raises(ValueError):
        ref.read(v.data, passphrase="x", max_scrypt_log_n=21)


# --- Sharded sets: reference reader --------------------------------------------------------
# Each directory of spec/vectors/sharded/ is one set vector: an index, shard files and
# expect.json. "set failure" is the class of FORMAT.md's "Sharded sets and rollback" (an
# integrity failure of the set; every shard is authentic on its own).

SHARDED_DIR = VECTORS_DIR / "sharded"
SET_EXPECT_CLASSES = frozenset({*EXPECT_CLASSES, "set failure"})


def set_expect_of(exc: ref.RefError) -> str:
    """The vector class of a reference failure on a set."""
    return "set failure" if isinstance(exc, ref.SetFailure) else expect_of(exc)


@dataclass(frozen=True)
class SetCase:
    name: str
    spec: dict[str, Any]

    @property
    def directory(self) -> Path:
        return SHARDED_DIR / self.name

    @property
    def index_path(self) -> Path:
        return self.directory / str(self.spec["index"])

    @property
    def expect(self) -> str:
        return str(self.spec["expect"])

    @property
    def key(self) -> bytes | None:
        return bytes.fromhex(self.spec["key"]) if "key" in self.spec else None

    @property
    def verify_key(self) -> Ed25519PublicKey | None:
        if "verify_key" not in self.spec:
            return None
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.spec["verify_key"]))


def set_names() -> list[str]:
    return sorted(p.parent.name for p in SHARDED_DIR.glob("*/expect.json"))


def load_set(name: str) -> SetCase:
    return SetCase(name, json.loads((SHARDED_DIR / name / "expect.json").read_text(encoding="utf-8")))


SET_NAMES = set_names()


def test_sharded_vectors_present() -> None:
    required = {
        "good",
        "signed",
        "missing_shard",
        "extra_shard",
        "swapped_names",
        "mixed_release",
        "index_wrong_shard",
        "index_omits_tensor",
        "no_shard_entry",
    }
    assert required <= set(SET_NAMES)
    assert sorted(p.name for p in SHARDED_DIR.iterdir()) == SET_NAMES  # no stray entries
    for name in SET_NAMES:
        assert "rust" not in name  # would break -k "not rust"
        v = load_set(name)
        files = sorted(p.name for p in v.directory.iterdir())
        shards = [f for f in files if f.endswith(".enct")]
        assert shards and files == sorted([*shards, "expect.json", v.spec["index"]]), name
    expects = {load_set(n).expect for n in SET_NAMES}
    assert {"success", "set failure"} <= expects


def test_sharded_json_schema() -> None:
    allowed = {"expect", "comment", "index", "key", "verify_key", "tensors", "metadata"}
    for name in SET_NAMES:
        v = load_set(name)
        assert set(v.spec) <= allowed, name
        assert v.expect in SET_EXPECT_CLASSES, name
        assert isinstance(v.spec["comment"], str), name
        assert v.spec["index"].endswith(".enct.index.json") and v.index_path.is_file(), name
        assert v.key is not None and len(v.key) == 32, name
        if "verify_key" in v.spec:
            assert v.spec["verify_key"] == v.spec["verify_key"].lower(), name
        assert ("tensors" in v.spec) == ("metadata" in v.spec) == (v.expect == "success"), name
        if v.expect == "success":
            shards = list(dict.fromkeys(w["shard"] for w in v.spec["tensors"]))
            assert list(v.spec["metadata"]) == shards, name  # set order, every shard


def ref_set_outcome(v: SetCase) -> tuple[str, list[ref.Shard]]:
    try:
        shards = ref.read_sharded(v.index_path, key=v.key, verify_key=v.verify_key)
    except ref.RefError as exc:
        return set_expect_of(exc), []
    return "success", shards


@pytest.mark.parametrize("name", SET_NAMES)
def test_reference_read_sharded(name: str) -> None:
    v = load_set(name)
    got, shards = ref_set_outcome(v)
    assert got == v.expect, v.spec["comment"]
    if v.expect != "success":
        return
    flat = [(s.file, t) for s in shards for t in s.tensors]
    want = v.spec["tensors"]
    assert [(f, t.name) for f, t in flat] == [(w["shard"], w["name"]) for w in want]
    for (_, t), w in zip(flat, want, strict=True):
        assert t.dtype == w["dtype"], t.name
        assert list(t.shape) == w["shape"], t.name
        assert t.encrypted is w["encrypted"], t.name
        assert hashlib.sha256(t.data).hexdigest() == w["sha256"], t.name
    assert {s.file: s.metadata for s in shards} == v.spec["metadata"]


# --- Rust-backed package --------------------------------------------------------------------
# These import enctensor inside the test so that the tests above run without it.

NUMPY_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}


def numpy_dtype(name: str) -> Any:
    import ml_dtypes
    import numpy as np

    special = {
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
    }
    return np.dtype(special[name]) if name in special else np.dtype(NUMPY_DTYPES[name])


def rust_expected_error(v: VectorCase) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
    """The exception class the package must raise for a failure vector, and the classes it
    must not be an instance of. A header failure caused by the verification key or the
    signature (as the reference reader reports it) is a SignatureError; one caused by the MAC
    an IntegrityError that is not a SignatureError; a payload failure (tag or digest) an
    IntegrityError that is not a SignatureError."""
    import enctensor

    integrity_only = (enctensor.FormatError, enctensor.WrongKeyError, enctensor.SignatureError)
    if v.expect == "format failure":
        return enctensor.FormatError, (enctensor.WrongKeyError, enctensor.IntegrityError)
    if v.expect == "no match":
        return enctensor.WrongKeyError, (enctensor.FormatError, enctensor.IntegrityError)
    exc = ref_error(v)
    if v.expect == "header failure" and isinstance(exc, ref.HeaderFailure) and exc.signature:
        return enctensor.SignatureError, (enctensor.FormatError, enctensor.WrongKeyError)
    assert v.expect in ("header failure", "payload failure"), v.expect
    return enctensor.IntegrityError, integrity_only


def rust_load_kwargs(v: VectorCase) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "key": v.key if v.key is not None else v.identity,  # raw bytes or a private key object
        "passphrase": v.passphrase,
        "verify_with": v.verify_key,
    }
    if v.max_scrypt_log_n is not None:
        kwargs["max_scrypt_log_n"] = v.max_scrypt_log_n
    return kwargs


@pytest.mark.parametrize("name", NAMES)
def test_rust_load_bytes(name: str) -> None:
    import numpy as np

    import enctensor

    v = load_vector(name)
    if v.expect != "success":
        expected, others = rust_expected_error(v)
        with pytest.raises(enctensor.EncTensorError) as info:
            enctensor.load_bytes(v.data, **rust_load_kwargs(v))
        assert isinstance(info.value, expected), (v.expect, repr(info.value))
        assert not isinstance(info.value, others), (v.expect, repr(info.value))
        return

    arrays = enctensor.load_bytes(v.data, **rust_load_kwargs(v))
    want = v.spec["tensors"]
    assert list(arrays) == [w["name"] for w in want]
    for w in want:
        arr = arrays[w["name"]]
        assert isinstance(arr, np.ndarray), w["name"]
        assert arr.dtype == numpy_dtype(w["dtype"]), (w["name"], arr.dtype)
        assert list(arr.shape) == w["shape"], w["name"]
        assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == w["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_rust_ranged_load(name: str) -> None:
    """Every vector read by ranges, as a remote file is (spec/FORMAT.md, "Ranged readers"):
    the front in at most two fetches, then the chunks. fsspec's in-memory filesystem stands in
    for the server (tests/test_remote_*.py use real loopback servers); the outcome is the
    vector's, as for a local file."""
    import fsspec
    import numpy as np

    import enctensor

    v = load_vector(name)
    url = f"memory://vectors/{name}.enct"
    fsspec.filesystem("memory").pipe_file(url, v.data)
    try:
        if v.expect != "success":
            expected, others = rust_expected_error(v)
            with pytest.raises(enctensor.EncTensorError) as info:
                enctensor.load(url, **rust_load_kwargs(v))
            assert isinstance(info.value, expected), (v.expect, repr(info.value))
            assert not isinstance(info.value, others), (v.expect, repr(info.value))
            return
        arrays = enctensor.load(url, **rust_load_kwargs(v))
        for w in v.spec["tensors"]:
            arr = arrays[w["name"]]
            assert arr.dtype == numpy_dtype(w["dtype"]) and list(arr.shape) == w["shape"], w["name"]
            assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == w["sha256"]
    finally:
        fsspec.filesystem("memory").rm_file(url)


def test_rust_scrypt_policy_message() -> None:
    """The refusal names the policy and how to lift it, and does not run scrypt."""
    import enctensor

    v = load_vector("passphrase_log_n_19_default_policy")
    with pytest.raises(enctensor.FormatError, match=r"max.scrypt.log.n"):
        enctensor.load_bytes(v.data, passphrase=v.passphrase)


def test_rust_slices_check_digests(tmp_path: Path) -> None:
    """With verify_with, every chunk a slice touches is checked against its digest; the
    key-holder-edited vector changed only chunk 1 of 'embed' (rows 16 to 23) and 'norm'."""
    import enctensor

    v = load_vector(KEYHOLDER_VECTOR)
    path = tmp_path / "edited.enct"
    path.write_bytes(v.data)
    with enctensor.safe_open(path, key=v.key, verify_with=v.verify_key) as f:
        assert f.get_slice("embed")[0:16].shape == (16, 64)  # chunk 0 only: unedited
        with pytest.raises(enctensor.IntegrityError) as info:
            f.get_slice("embed")[15:17]  # touches chunk 1
        assert not isinstance(info.value, enctensor.SignatureError)
        with pytest.raises(enctensor.IntegrityError):
            f.get_tensor("norm")
    with enctensor.safe_open(path, key=v.key) as f:  # without a verification key: tags verify
        assert f.get_slice("embed")[15:17].shape == (2, 64)


@pytest.mark.parametrize("name", NAMES)
def test_rust_inspect_bytes(name: str) -> None:
    import enctensor

    v = load_vector(name)
    if v.expect == "format failure" and not is_policy_refusal(v):
        with pytest.raises(enctensor.FormatError):
            enctensor.inspect_bytes(v.data)
        return
    info = enctensor.inspect_bytes(v.data)
    expected = ref.inspect(v.data)
    assert info["metadata"] == expected["metadata"]
    assert list(info["stanzas"]) == expected["stanzas"]
    assert info["signed"] is expected["signed"]
    got = [(t["name"], t["dtype"], list(t["shape"]), t["encrypted"]) for t in info["tensors"]]
    want = [(t["name"], t["dtype"], list(t["shape"]), t["encrypted"]) for t in expected["tensors"]]
    assert got == want


def rust_set_expected_error(v: SetCase) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
    """As rust_expected_error, for a set: a set failure is an IntegrityError (not a
    SignatureError); a shard's own failure keeps the mapping of its class."""
    import enctensor

    if v.expect == "format failure":
        return enctensor.FormatError, (enctensor.WrongKeyError, enctensor.IntegrityError)
    if v.expect == "no match":
        return enctensor.WrongKeyError, (enctensor.FormatError, enctensor.IntegrityError)
    integrity_only = (enctensor.FormatError, enctensor.WrongKeyError, enctensor.SignatureError)
    if v.expect == "header failure":
        try:
            ref.read_sharded(v.index_path, key=v.key, verify_key=v.verify_key)
        except ref.HeaderFailure as exc:
            if exc.signature:
                return enctensor.SignatureError, (enctensor.FormatError, enctensor.WrongKeyError)
    assert v.expect in ("header failure", "payload failure", "set failure"), v.expect
    return enctensor.IntegrityError, integrity_only


@pytest.mark.parametrize("name", SET_NAMES)
def test_rust_load_sharded(name: str) -> None:
    import numpy as np

    import enctensor

    v = load_set(name)
    if v.expect != "success":
        expected, others = rust_set_expected_error(v)
        with pytest.raises(enctensor.EncTensorError) as info:
            enctensor.load_sharded(v.index_path, key=v.key, verify_with=v.verify_key)
        assert isinstance(info.value, expected), (v.expect, repr(info.value))
        assert not isinstance(info.value, others), (v.expect, repr(info.value))
        return

    arrays = enctensor.load_sharded(v.index_path, key=v.key, verify_with=v.verify_key)
    want = v.spec["tensors"]
    assert list(arrays) == [w["name"] for w in want]  # set order, then file order
    for w in want:
        arr = arrays[w["name"]]
        assert isinstance(arr, np.ndarray), w["name"]
        assert arr.dtype == numpy_dtype(w["dtype"]), (w["name"], arr.dtype)
        assert list(arr.shape) == w["shape"], w["name"]
        assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == w["sha256"]
