"""TVM / MLC-LLM tensor caches (issue 15, section 3): caches dumped by
``tvm.contrib.tvmjs.dump_tensor_cache`` (raw, f32-to-bf16 and mixed records, several shards,
an out-of-band shard) encrypt into a bound set of enctensor files and decrypt back byte for
byte; ``enctensor.tvm.load_tensor_cache`` returns what TVM's loader returns for the
plaintext cache; the md5 TVM never checks is replaced by authentication."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array
from test_cli import run

import enctensor
from enctensor import IntegrityError, WrongKeyError
from enctensor.convert import InputFormatError, decrypt_file, detect_format, encrypt_file

tvm = pytest.importorskip("tvm")
tvmjs = pytest.importorskip("tvm.contrib.tvmjs")
enctensor_tvm = pytest.importorskip("enctensor.tvm")

INDEX = "tensor-cache.enct.index.json"


def params() -> dict[str, Any]:
    """Every dtype TVM's loader reads, a zero-size and a scalar tensor, and one large tensor
    that gets a shard of its own (TVM's out-of-band shard), out of order."""
    out: dict[str, Any] = {
        "embed.weight": sample_array(np.float32, (64, 48), 1),
        "ln.weight": sample_array(np.float16, (48,), 2),
        "q.scale": sample_array(ml_dtypes.bfloat16, (5, 3), 3),
        "ids": sample_array(np.int32, (7,), 4),
        "packed": sample_array(np.uint32, (3, 4), 5),
        "mask": sample_array(np.bool_, (6,), 6),
        "q8": sample_array(np.int8, (9,), 7),
        "fp8": sample_array(ml_dtypes.float8_e4m3fn, (4,), 8),
        "big": sample_array(np.float32, (200, 200), 9),  # 160 kB: out of band with a 0.1 MB cap
        "empty": np.zeros((0, 3), np.float32),
        "step": np.array(3.5, np.float64),
        "tail": sample_array(np.float32, (10,), 10),
    }
    # Finite floats only for the float32 tensors that bf16 encoding rounds (TVM rounds NaN
    # payloads too, but the point here is the bytes, which are compared exactly anyway).
    for name in ("embed.weight", "big", "tail", "empty"):
        out[name] = np.random.default_rng(len(name)).standard_normal(out[name].shape).astype(np.float32)
    return out


FORMATS: dict[str, Any] = {
    "raw": "raw",
    "bf16": "f32-to-bf16",
    "mixed": {"embed.weight": "f32-to-bf16", "*": "raw"},
}


def dump(d: Path, encode_format: Any) -> Path:
    tvmjs.dump_tensor_cache(
        params(),
        str(d),
        encode_format=encode_format,
        meta_data={
            "ParamSize": 12,
            "BitsPerParam": 16.5,
            "model": "tiny-ü",
            "nested": [1, None, {"k": True}],
        },
        shard_cap_mb=0.1,
        show_progress=False,
    )
    return d


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caches")
    out = {name: dump(root / name, fmt) for name, fmt in FORMATS.items()}
    # As MLC-LLM deploys it: the cache beside the chat config and the tokenizer.
    (out["bf16"] / "mlc-chat-config.json").write_text('{"model_type": "llama"}\n')
    (out["bf16"] / "tokenizer.json").write_text('{"version": "1.0"}\n')
    assert len(json.loads((out["raw"] / "tensor-cache.json").read_text())["records"]) >= 2
    assert (out["bf16"] / "tensor-cache-b16.json").exists() and (
        out["mixed"] / "tensor-cache-b16.json"
    ).exists()
    return out


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if n.endswith((".partial", ".old", ".tmp"))]


def tvm_load(path: Path) -> tuple[dict[str, Any], Any]:
    """``tvm.contrib.tvmjs.load_tensor_cache`` on CPU. It opens its files without closing
    them; the warnings that CPython gives for that are TVM's, not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result: tuple[dict[str, Any], Any] = tvmjs.load_tensor_cache(str(path), tvm.cpu())
    return result


def assert_same_cache(ours: tuple[dict[str, Any], Any], theirs: tuple[dict[str, Any], Any]) -> None:
    (mine, my_meta), (tvm_dict, tvm_meta) = ours, theirs
    assert my_meta == tvm_meta
    assert list(mine) == list(tvm_dict)  # the same order, too
    for name, t in tvm_dict.items():
        ours_t = mine[name]
        assert isinstance(ours_t, tvm.runtime.Tensor)
        assert (str(ours_t.dtype), tuple(ours_t.shape)) == (str(t.dtype), tuple(t.shape)), name
        assert same(ours_t.numpy(), t.numpy()), name


@pytest.mark.parametrize("kind", list(FORMATS))
def test_round_trip_is_byte_identical(tmp_path: Path, caches: dict[str, Path], kind: str) -> None:
    src, enc, back = caches[kind], tmp_path / "enc", tmp_path / "back"
    assert detect_format(src) == "directory"
    result = encrypt_file(src, enc, key=KEY, chunk_size=4096)
    cache = json.loads((src / "tensor-cache.json").read_text())
    assert result.tensors == sum(len(s["records"]) for s in cache["records"]) == len(params())

    shards = [s["dataPath"] for s in cache["records"]]
    copied = {"mlc-chat-config.json", "tokenizer.json"} & set(os.listdir(src))
    assert set(os.listdir(enc)) == {INDEX, *(s.replace(".bin", ".enct") for s in shards), *copied}
    # No plaintext shard, and no md5 of one (it would confirm a guess of the weights).
    blob = b"".join((enc / n).read_bytes() for n in os.listdir(enc))
    for s in cache["records"]:
        assert s["md5sum"].encode() not in blob
    big = (src / shards[0]).read_bytes()
    assert big[:4096] not in blob

    decrypt_file(enc, back, key=KEY)
    assert files(back) == files(src)


@pytest.mark.parametrize("kind", list(FORMATS))
def test_load_tensor_cache_returns_what_tvm_returns(
    tmp_path: Path, caches: dict[str, Path], kind: str
) -> None:
    enc = tmp_path / "enc"
    encrypt_file(caches[kind], enc, key=KEY)
    theirs = tvm_load(caches[kind])
    assert_same_cache(enctensor_tvm.load_tensor_cache(enc, key=KEY), theirs)
    assert_same_cache(enctensor_tvm.load_tensor_cache(enc / INDEX, key=KEY, device="cpu"), theirs)
    if kind == "bf16":
        # Widened from bf16 as TVM does: not the float32 values that were dumped.
        assert not same(theirs[0]["tail"].numpy(), params()["tail"])


def test_the_encrypted_cache_is_an_ordinary_sharded_set(tmp_path: Path, caches: dict[str, Path]) -> None:
    enc = tmp_path / "enc"
    encrypt_file(caches["mixed"], enc, key=KEY)
    loaded = enctensor.load(enc / INDEX, key=KEY)
    p = params()
    assert same(loaded["ids"], p["ids"]) and same(loaded["fp8"], p["fp8"])
    assert loaded["embed.weight"].dtype == ml_dtypes.bfloat16  # the stored (encoded) values
    assert same(loaded["tail"], p["tail"])  # raw in the mixed cache
    assert enctensor.convert.verify_file(enc / INDEX, key=KEY)[0] == len(p)
    with pytest.raises(ValueError, match="decrypt the directory"):
        decrypt_file(enc / INDEX, tmp_path / "out.json", key=KEY)


def test_tampered_shard_is_an_integrity_error(tmp_path: Path, caches: dict[str, Path]) -> None:
    enc = tmp_path / "enc"
    encrypt_file(caches["raw"], enc, key=KEY)
    shard = enc / "params_shard_0.enct"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        enctensor_tvm.load_tensor_cache(enc, key=KEY)
    with pytest.raises(IntegrityError):
        decrypt_file(enc, tmp_path / "back", key=KEY)
    assert not (tmp_path / "back").exists() and leftovers(tmp_path) == []


def test_missing_and_swapped_shards_are_refused(tmp_path: Path, caches: dict[str, Path]) -> None:
    enc = tmp_path / "enc"
    encrypt_file(caches["raw"], enc, key=KEY)
    swapped = tmp_path / "swapped"
    shutil.copytree(enc, swapped)
    a, b = swapped / "params_shard_0.enct", swapped / "params_shard_1.enct"
    a.rename(swapped / "x")
    b.rename(a)
    (swapped / "x").rename(b)
    with pytest.raises(IntegrityError, match="swapped or renamed"):
        enctensor_tvm.load_tensor_cache(swapped, key=KEY)

    (enc / "params_shard_1.enct").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        enctensor_tvm.load_tensor_cache(enc, key=KEY)
    with pytest.raises(IntegrityError, match="missing"):
        decrypt_file(enc, tmp_path / "back", key=KEY)
    assert not (tmp_path / "back").exists() and leftovers(tmp_path) == []


def test_wrong_key(tmp_path: Path, caches: dict[str, Path]) -> None:
    enc = tmp_path / "enc"
    encrypt_file(caches["bf16"], enc, key=KEY)
    with pytest.raises(WrongKeyError):
        enctensor_tvm.load_tensor_cache(enc, key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        decrypt_file(enc, tmp_path / "back", key=OTHER_KEY)
    assert not (tmp_path / "back").exists()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_shard_that_does_not_match_its_md5_is_refused(tmp_path: Path, caches: dict[str, Path]) -> None:
    """TVM never checks the md5 it writes; encrypting does, once, before sealing the bytes."""
    src = _copy(caches["raw"], tmp_path / "src")
    shard = src / "params_shard_1.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    assert tvm_load(src)  # TVM loads it all the same
    with pytest.raises(InputFormatError, match="md5sum"):
        encrypt_file(src, tmp_path / "enc", key=KEY)
    assert not (tmp_path / "enc").exists() and leftovers(tmp_path) == []


def test_caches_not_laid_out_as_tvm_writes_them_are_refused(tmp_path: Path, caches: dict[str, Path]) -> None:
    src = _copy(caches["bf16"], tmp_path / "src")
    cache = src / "tensor-cache.json"
    original = cache.read_text()
    cache.write_text(json.dumps(json.loads(original), indent=2))
    with pytest.raises(InputFormatError, match="not laid out as TVM writes it"):
        encrypt_file(src, tmp_path / "enc", key=KEY)

    cache.write_text(original)
    (src / "tensor-cache-b16.json").write_text("{}")
    with pytest.raises(InputFormatError, match="stale"):
        encrypt_file(src, tmp_path / "enc", key=KEY)

    obj = json.loads(original)
    obj["records"][0]["records"][0]["byteOffset"] += 4
    cache.write_text(json.dumps(obj, indent=4))
    (src / "tensor-cache-b16.json").unlink()
    with pytest.raises(InputFormatError, match="without gaps"):
        encrypt_file(src, tmp_path / "enc", key=KEY)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_older_ndarray_cache_name(tmp_path: Path, caches: dict[str, Path]) -> None:
    src = _copy(caches["bf16"], tmp_path / "src")
    (src / "tensor-cache.json").rename(src / "ndarray-cache.json")
    (src / "tensor-cache-b16.json").rename(src / "ndarray-cache-b16.json")
    encrypt_file(src, tmp_path / "enc", key=KEY)
    assert (tmp_path / "enc" / "ndarray-cache.enct.index.json").is_file()
    decrypt_file(tmp_path / "enc", tmp_path / "back", key=KEY)
    assert files(tmp_path / "back") == files(src)
    theirs = tvm_load(src / "ndarray-cache.json")
    assert_same_cache(enctensor_tvm.load_tensor_cache(tmp_path / "enc", key=KEY), theirs)


def test_a_dtype_enctensor_has_no_name_for_is_kept_as_bytes(tmp_path: Path) -> None:
    """float4 (one byte per element, as TVM dumps it): stored as raw bytes, restored exactly,
    and loaded as TVM's loader loads it."""
    src = tmp_path / "src"
    values = np.arange(6).astype(ml_dtypes.float4_e2m1fn)
    tvmjs.dump_tensor_cache({"w": values, "b": np.ones(2, np.float32)}, str(src), "raw", show_progress=False)
    encrypt_file(src, tmp_path / "enc", key=KEY)
    info = {t["name"]: t for t in enctensor.inspect(tmp_path / "enc" / "params_shard_0.enct")["tensors"]}
    assert info["w"]["dtype"] == "U8" and info["w"]["shape"] == [6]
    decrypt_file(tmp_path / "enc", tmp_path / "back", key=KEY)
    assert files(tmp_path / "back") == files(src)
    theirs = tvm_load(src)
    assert str(theirs[0]["w"].dtype) == "float4_e2m1fn"
    assert_same_cache(enctensor_tvm.load_tensor_cache(tmp_path / "enc", key=KEY), theirs)


def test_decrypted_md5_is_recomputed(tmp_path: Path, caches: dict[str, Path]) -> None:
    enc, back = tmp_path / "enc", tmp_path / "back"
    encrypt_file(caches["raw"], enc, key=KEY)
    decrypt_file(enc, back, key=KEY)
    for s in json.loads((back / "tensor-cache.json").read_text())["records"]:
        assert s["md5sum"] == hashlib.md5((back / s["dataPath"]).read_bytes()).hexdigest()


def test_cache_round_trip_through_the_cli(tmp_path: Path, caches: dict[str, Path]) -> None:
    assert run("keygen", "model.key", cwd=tmp_path).returncode == 0
    proc = run("encrypt", caches["bf16"], "enc", "-k", "model.key", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run("decrypt", "enc", "back", "-k", "model.key", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert files(tmp_path / "back") == files(caches["bf16"])
