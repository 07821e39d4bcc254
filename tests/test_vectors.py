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
    allowed = {"expect", "comment", "key", "passphrase", "identity", "verify_key", "tensors", "metadata"}
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


def test_vectors_cover_credentials() -> None:
    """Identities of both kinds and verification keys are exercised, in several classes."""
    specs = [load_vector(n).spec for n in NAMES]
    for kind in ("x25519", "rsa"):
        expects = {s["expect"] for s in specs if s.get("identity", {}).get("type") == kind}
        assert {"success", "no match", "format failure", "header failure"} <= expects, kind
    expects = {s["expect"] for s in specs if "verify_key" in s}
    assert {"success", "no match", "format failure", "header failure", "payload failure"} <= expects


# --- Reference reader -----------------------------------------------------------------------


def ref_outcome(v: VectorCase) -> tuple[str, list[ref.Tensor], dict[str, str]]:
    try:
        tensors, metadata = ref.read(
            v.data, key=v.key, passphrase=v.passphrase, identity=v.identity, verify_key=v.verify_key
        )
    except ref.RefError as exc:
        return EXPECT_OF_REF_ERROR[type(exc)], [], {}
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


@pytest.mark.parametrize("name", NAMES)
def test_reference_inspect(name: str) -> None:
    """inspect() needs no key and fails exactly on format failures."""
    v = load_vector(name)
    if v.expect == "format failure":
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


def test_generator_reproduces_committed_vectors(tmp_path: Path) -> None:
    generator = load_generator()
    generator.main(tmp_path)
    produced = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in VECTORS_DIR.iterdir() if p.suffix in (".enct", ".json"))
    assert produced == committed
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
    data_align = rng.choice([64, 4096])
    publisher = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) if rng.random() < 0.5 else None
    common: dict[str, Any] = {
        "metadata": metadata,
        "chunk_size": chunk_size,
        "rng": rng.randbytes,
        "data_align": data_align,
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
    assert info["data_offset"] % data_align == 0
    assert info["stanza_area_len"] == 4096 - 32  # the writer's default when the stanzas fit
    assert info["signed"] is (publisher is not None)
    assert len(info["stanzas"]) == len(openers)
    want = [(n, dt, tuple(sh), raw, enc) for n, dt, sh, raw, enc in tensors]
    for opener in openers:
        verify = {"verify_key": publisher.public_key()} if publisher is not None else {}
        got, got_metadata = ref.read(data, **opener, **verify)
        assert [(t.name, t.dtype, t.shape, t.data, t.encrypted) for t in got] == want
        assert got_metadata == metadata
    with pytest.raises(ref.NoMatch):
        ref.read(data, key=bytes(32), identity=X25519PrivateKey.from_private_bytes(bytes(32)))
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    with pytest.raises(ref.HeaderFailure):
        ref.read(data, **openers[0], verify_key=stranger)
    if tensors:
        with pytest.raises((ref.PayloadFailure, ref.FormatFailure)):
            ref.read(data[:-1] + bytes([data[-1] ^ 1]), **openers[0])


def test_reference_stanza_area_len() -> None:
    """Default 4096 - 32 when the stanzas fit, else the smallest multiple of 4096 minus 32."""
    rng = random.Random(1)
    tensors = random_tensors(rng, 2)

    def area_len(**kwargs: Any) -> int:
        data = ref.write(tensors, metadata={}, rng=rng.randbytes, **kwargs)
        return int(ref.inspect(data)["stanza_area_len"])

    assert area_len(keys=[bytes(32)]) == 4064
    many = [X25519PrivateKey.from_private_bytes(rng.randbytes(32)).public_key() for _ in range(40)]
    assert area_len(recipients=many) == 8192 - 32
    assert area_len(keys=[bytes(32)], stanza_area_len=200) == 200
    with pytest.raises(ValueError):
        area_len(keys=[bytes(32)], stanza_area_len=100)  # the stanza does not fit


def test_reference_rekey() -> None:
    """Re-keying replaces the stanza area only; the signature and everything else survive."""
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
    with pytest.raises(ValueError):  # 60 stanzas do not fit in 4064 bytes
        ref.rekey(data, key=old, new_keys=[rng.randbytes(32) for _ in range(60)], rng=rng.randbytes)


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


def rust_error_classes() -> dict[str, type[BaseException]]:
    import enctensor

    return {
        "format failure": enctensor.FormatError,
        "no match": enctensor.WrongKeyError,
        "header failure": enctensor.IntegrityError,
        "payload failure": enctensor.IntegrityError,
    }


@pytest.mark.parametrize("name", NAMES)
def test_rust_load_bytes(name: str) -> None:
    import numpy as np

    import enctensor

    v = load_vector(name)
    key = v.key if v.key is not None else v.identity  # raw bytes or a private key object
    if v.expect != "success":
        classes = rust_error_classes()
        with pytest.raises(enctensor.EncTensorError) as info:
            enctensor.load_bytes(v.data, key=key, passphrase=v.passphrase, verify_with=v.verify_key)
        expected = classes[v.expect]
        others = {c for c in classes.values() if c is not expected}
        assert isinstance(info.value, expected), (v.expect, repr(info.value))
        assert not isinstance(info.value, tuple(others)), (v.expect, repr(info.value))
        return

    arrays = enctensor.load_bytes(v.data, key=key, passphrase=v.passphrase, verify_with=v.verify_key)
    want = v.spec["tensors"]
    assert list(arrays) == [w["name"] for w in want]
    for w in want:
        arr = arrays[w["name"]]
        assert isinstance(arr, np.ndarray), w["name"]
        assert arr.dtype == numpy_dtype(w["dtype"]), (w["name"], arr.dtype)
        assert list(arr.shape) == w["shape"], w["name"]
        assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == w["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_rust_inspect_bytes(name: str) -> None:
    import enctensor

    v = load_vector(name)
    if v.expect == "format failure":
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
