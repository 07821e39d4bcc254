"""The converters (enctensor.convert), driven on files written by the safetensors library and
by TVM: bit-identical round trips, byte-identical .params, sharded checkpoints, streaming
memory bounds, atomic outputs and the errors of malformed inputs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import ALL_DTYPES, KEY, OTHER_KEY, same, sample_array
from safetensors import safe_open as st_safe_open
from safetensors.numpy import load_file, save_file

import enctensor
from enctensor import IntegrityError, WrongKeyError
from enctensor.convert import (
    InputFormatError,
    decrypt_file,
    detect_format,
    encrypt_file,
    output_format,
    tvm_params,
    verify_file,
)
from enctensor.convert import _common as common

tvm = pytest.importorskip("tvm")


def st_tensors() -> dict[str, np.ndarray]:
    """Every dtype, a scalar, an empty tensor, and tensors spanning many 4 KiB chunks."""
    out = {f"t_{np.dtype(d).name}": sample_array(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 4), dtype=np.int32)
    out["multi_chunk"] = sample_array(np.float32, (3000, 7), 99)  # 84 kB: 21 chunks of 4 KiB
    out["odd_size"] = sample_array(np.uint8, (12289,), 7)  # 3 chunks and 1 byte
    return out


#: Tensors of st_tensors() whose dtype safetensors.numpy can load (not bf16 or fp8).
NUMPY_NATIVE = {
    f"t_{np.dtype(d).name}"
    for d in ALL_DTYPES
    if np.dtype(d).name.startswith(("bool", "int", "uint", "float"))
} - {"t_float8_e4m3fn", "t_float8_e5m2"} | {"scalar", "empty", "multi_chunk", "odd_size"}


def files_in(d: Path) -> set[str]:
    """Every entry of ``d``, hidden temporary files included."""
    return set(os.listdir(d))


# --- safetensors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [{"format": "pt", "note": 'ünïcode \n\t\x01 "quoted"', "z": "last", "a": "first"}, None],
    ids=["metadata", "no-metadata"],
)
def test_safetensors_round_trip_is_byte_identical(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    tensors = st_tensors()
    src, enc, back = tmp_path / "m.safetensors", tmp_path / "m.enct", tmp_path / "back.safetensors"
    save_file(tensors, src, metadata=metadata)

    result = encrypt_file(src, enc, key=KEY, chunk_size=4096)
    assert result.source_format == "safetensors" and result.outputs == [enc]
    assert result.tensors == len(tensors)
    # The encrypted file is an ordinary enctensor file holding the same tensors, and its
    # metadata is __metadata__ exactly: nothing of the converter's is added.
    info = enctensor.inspect(enc)
    assert info["metadata"] == (metadata or {})
    assert all(t["encrypted"] for t in info["tensors"])
    loaded = enctensor.load(enc, key=KEY)
    assert all(same(loaded[n], a) for n, a in tensors.items())
    assert tensors["multi_chunk"].tobytes() not in enc.read_bytes()  # it is encrypted

    decrypt_file(enc, back, key=KEY)
    assert back.read_bytes() == src.read_bytes()
    with st_safe_open(back, framework="np") as f:
        assert f.metadata() == metadata
        assert set(f.keys()) == set(tensors)
        # safetensors.numpy cannot make bf16/fp8 arrays; those are covered by the bytes above.
        for name in set(tensors) & NUMPY_NATIVE:
            assert same(f.get_tensor(name), tensors[name]), name
    native = tmp_path / "native.safetensors"
    save_file({n: tensors[n] for n in NUMPY_NATIVE}, native, metadata=metadata)
    encrypt_file(native, tmp_path / "native.enct", key=KEY)
    decrypt_file(tmp_path / "native.enct", tmp_path / "native_back.safetensors", key=KEY)
    out = load_file(tmp_path / "native_back.safetensors")
    assert set(out) == NUMPY_NATIVE and all(same(out[n], tensors[n]) for n in NUMPY_NATIVE)


def test_safetensors_empty_metadata_is_kept_apart_from_none(tmp_path: Path) -> None:
    src, enc, back = tmp_path / "m.safetensors", tmp_path / "m.enct", tmp_path / "b.safetensors"
    save_file({"x": np.ones(3, np.float32)}, src, metadata={})
    encrypt_file(src, enc, key=KEY)
    decrypt_file(enc, back, key=KEY)
    with st_safe_open(back, framework="np") as f:
        assert f.metadata() == {}
    assert back.read_bytes() == src.read_bytes()


def test_safetensors_written_by_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load
    from safetensors.torch import save_file as torch_save

    tensors = {
        "emb": torch.randn(64, 32, dtype=torch.bfloat16),
        "ln": torch.randn(32, dtype=torch.float16),
        "mask": torch.tensor([True, False, True]),
        "step": torch.tensor(7, dtype=torch.int64),
    }
    src, enc, back = tmp_path / "t.safetensors", tmp_path / "t.enct", tmp_path / "b.safetensors"
    torch_save(tensors, src, metadata={"format": "pt"})
    encrypt_file(src, enc, key=KEY)
    decrypt_file(enc, back, key=KEY)
    assert back.read_bytes() == src.read_bytes()
    out = torch_load(back)
    assert all(torch.equal(out[n], t) for n, t in tensors.items())


def test_decrypt_of_a_native_file_to_safetensors(tmp_path: Path) -> None:
    """A file saved with enctensor.save (not converted) decrypts to a valid safetensors file."""
    tensors = st_tensors()
    enc, out = tmp_path / "n.enct", tmp_path / "n.safetensors"
    enctensor.save(tensors, enc, key=KEY, metadata={"k": "v"}, plaintext=["scalar"], chunk_size=4096)
    decrypt_file(enc, out, key=KEY)
    with st_safe_open(out, framework="np") as f:
        assert f.metadata() == {"k": "v"}
        assert set(f.keys()) == set(tensors)
        assert all(same(f.get_tensor(n), tensors[n]) for n in NUMPY_NATIVE)


def test_decryption_streams_in_many_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a step of two chunks, every tensor is written in several pieces, the last partial."""
    monkeypatch.setattr(common, "DECRYPT_STEP", 8192)
    tensors = st_tensors()
    src, enc, back = tmp_path / "m.safetensors", tmp_path / "m.enct", tmp_path / "b.safetensors"
    save_file(tensors, src)
    encrypt_file(src, enc, key=KEY, chunk_size=4096)
    seen: list[tuple[int, int]] = []
    decrypt_file(enc, back, key=KEY, progress=lambda d, t: seen.append((d, t)))
    assert back.read_bytes() == src.read_bytes()
    total = sum(a.nbytes for a in tensors.values())
    assert len(seen) > 10 and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_encrypt_progress_reaches_total(tmp_path: Path) -> None:
    src, enc = tmp_path / "m.safetensors", tmp_path / "m.enct"
    save_file(st_tensors(), src)
    seen: list[tuple[int, int]] = []
    result = encrypt_file(src, enc, key=KEY, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (result.nbytes, result.nbytes)


# --- TVM .params --------------------------------------------------------------------------

# name -> array, in a deliberately unsorted order (names keep the order of the file).
TVM_ARRAYS: dict[str, np.ndarray] = {
    "z_f32": sample_array(np.float32, (4, 3), 1),
    "bool": np.array([True, False, True, True]),
    "f16": sample_array(np.float16, (5,), 2),
    "bf16": sample_array(ml_dtypes.bfloat16, (2, 2), 3),
    "i8": sample_array(np.int8, (7,), 4),
    "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "scalar": np.array(1.25, dtype=np.float64),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "i16": sample_array(np.int16, (3,), 5),
    "u32": sample_array(np.uint32, (3,), 6),
    "i64": sample_array(np.int64, (2,), 7),
    "f8_e4m3fn": sample_array(ml_dtypes.float8_e4m3fn, (6,), 8),
    "f8_e5m2": sample_array(ml_dtypes.float8_e5m2, (6,), 9),
    "a_multi_chunk": sample_array(np.float32, (5000,), 10),
    # No enctensor dtype: stored as raw bytes, their TVM dtype kept in the metadata.
    "f8_e4m3fnuz": sample_array(ml_dtypes.float8_e4m3fnuz, (3,), 11),
    "f4_e2m1fn": np.zeros(5, dtype=ml_dtypes.float4_e2m1fn),
}


def tvm_save(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    tvm.runtime.save_param_dict_to_file({n: tvm.runtime.tensor(a) for n, a in arrays.items()}, str(path))
    return path.read_bytes()


def test_params_layout_matches_what_tvm_writes(tmp_path: Path) -> None:
    """The layout documented in enctensor.convert.tvm_params, byte for byte."""
    arrays = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "flag": np.array(True),
        "h": np.ones(2, np.float16),
    }
    data = tvm_save(tmp_path / "p.params", arrays)
    expected = struct.pack("<QQQ", tvm_params.PARAMS_MAGIC, 0, 3)
    for name in arrays:
        expected += struct.pack("<Q", len(name)) + name.encode()
    expected += struct.pack("<Q", 3)
    for code, bits, arr in [(2, 32, arrays["w"]), (6, 8, arrays["flag"]), (2, 16, arrays["h"])]:
        expected += struct.pack("<QQiiiBBH", tvm_params.TENSOR_MAGIC, 0, 1, 0, arr.ndim, code, bits, 1)
        expected += struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<q", arr.nbytes) + arr.tobytes()
    assert data == expected


def test_params_round_trip_is_byte_identical_and_tvm_loads_it(tmp_path: Path) -> None:
    src, enc, back = tmp_path / "m.params", tmp_path / "m.enct", tmp_path / "back.params"
    original = tvm_save(src, TVM_ARRAYS)
    assert detect_format(src) == "params"

    result = encrypt_file(src, enc, key=KEY, chunk_size=4096)
    assert result.source_format == "params" and result.tensors == len(TVM_ARRAYS)
    info = enctensor.inspect(enc)
    assert [t["name"] for t in info["tensors"]] == list(TVM_ARRAYS)
    meta = json.loads(info["metadata"][tvm_params.METADATA_KEY])
    assert meta["version"] == 1 and set(meta["tensors"]) == {"14", "15"}  # only the raw dtypes
    loaded = enctensor.load(enc, key=KEY)
    with common.MappedFile(src) as m:
        in_file = {t.name: m.read(t.offset, t.nbytes) for t in tvm_params.read_params(m).tensors}
    for name, arr in TVM_ARRAYS.items():
        if name in ("f8_e4m3fnuz", "f4_e2m1fn"):
            # Raw bytes as TVM wrote them. (For float4, TVM 0.27 writes one byte per element
            # but reads them from a packed half-size buffer: the tail is whatever follows it.)
            assert loaded[name].dtype == np.uint8 and loaded[name].tobytes() == in_file[name]
        else:
            assert same(loaded[name], arr), name
            assert arr.tobytes() == in_file[name]

    assert output_format(tmp_path / "noext", enc) == "params"  # recorded in the metadata
    decrypt_file(enc, back, key=KEY)
    assert back.read_bytes() == original
    params = tvm.runtime.load_param_dict_from_file(str(back))
    originals = tvm.runtime.load_param_dict_from_file(str(src))
    assert list(params) == list(TVM_ARRAYS)
    for name, arr in TVM_ARRAYS.items():
        assert same(params[name].numpy(), originals[name].numpy()), name
        if name != "f4_e2m1fn":
            assert same(params[name].numpy(), arr), name


def test_params_unusual_header_fields_survive(tmp_path: Path) -> None:
    """Reserved words and device fields that TVM itself always writes as 0 and CPU are kept."""
    data = bytearray(tvm_save(tmp_path / "t.params", {"a": np.ones(2, np.float32), "b": np.ones(1, np.int8)}))
    struct.pack_into("<Q", data, 8, 0xDEADBEEF)  # file reserved word
    first = data.index(struct.pack("<Q", tvm_params.TENSOR_MAGIC))
    struct.pack_into("<Qii", data, first + 8, 77, 2, 3)  # tensor reserved word, device (2, 3)
    src, enc, back = tmp_path / "odd.params", tmp_path / "odd.enct", tmp_path / "back.params"
    src.write_bytes(bytes(data))
    encrypt_file(src, enc, key=KEY)
    decrypt_file(enc, back, key=KEY)
    assert back.read_bytes() == bytes(data)


def test_native_file_to_params_uses_the_canonical_tvm_dtypes(tmp_path: Path) -> None:
    tensors = {f"t_{np.dtype(d).name}": sample_array(d, (2, 3), i) for i, d in enumerate(ALL_DTYPES)}
    enc, out = tmp_path / "n.enct", tmp_path / "n.params"
    enctensor.save(tensors, enc, key=KEY, metadata={"dropped": "yes"})
    assert output_format(tmp_path / "x", enc) == "safetensors"
    result = decrypt_file(enc, out, key=KEY)
    assert result.output_format == "params" and result.dropped_metadata == ["dropped"]
    params = tvm.runtime.load_param_dict_from_file(str(out))
    for name, arr in tensors.items():
        assert same(params[name].numpy(), arr), name
    # ... and writing them with TVM gives the very same bytes.
    assert tvm_save(tmp_path / "tvm.params", tensors) == out.read_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "trailing"),
        (lambda d: d[:8] + b"\0" * 8 + d[16:24].replace(b"\x01", b"\x02") + d[24:], "count"),
        (lambda d: d.replace(struct.pack("<Q", tvm_params.TENSOR_MAGIC), b"\0" * 8), "magic"),
    ],
    ids=["truncated", "trailing", "count-mismatch", "tensor-magic"],
)
def test_malformed_params_are_refused(tmp_path: Path, mutate: Callable[[bytes], bytes], message: str) -> None:
    data = tvm_save(tmp_path / "ok.params", {"w": np.ones(3, np.float32)})
    bad = tmp_path / "bad.params"
    bad.write_bytes(mutate(data))
    with pytest.raises(InputFormatError, match=message):
        encrypt_file(bad, tmp_path / "bad.enct", key=KEY)
    assert not (tmp_path / "bad.enct").exists()


# --- Sharded checkpoints ------------------------------------------------------------------


def make_sharded(d: Path, n_shards: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    """A checkpoint laid out as transformers' save_pretrained does it."""
    all_tensors: dict[str, np.ndarray] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {
            f"layers.{s}.{k}": sample_array(np.float32, (64, 16 + s), 10 * s + i) for i, k in enumerate("qkv")
        }
        save_file(tensors, d / shard, metadata={"format": "pt"})
        for name, arr in tensors.items():
            weight_map[name] = shard
            total += arr.nbytes
        all_tensors.update(tensors)
    index = d / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
        + "\n"
    )
    return index, all_tensors


def test_sharded_round_trip(tmp_path: Path) -> None:
    src_dir, enc_dir, out_dir = tmp_path / "src", tmp_path / "enc", tmp_path / "out"
    for d in (src_dir, enc_dir, out_dir):
        d.mkdir()
    index, tensors = make_sharded(src_dir)
    assert detect_format(index) == "index"

    enc_index = enc_dir / "model.enct.index.json"
    result = encrypt_file(index, enc_index, key=KEY)
    assert result.tensors == len(tensors)
    assert files_in(enc_dir) == {"model.enct.index.json"} | {
        f"model-0000{i}-of-00003.enct" for i in (1, 2, 3)
    }
    assert detect_format(enc_index) == "enctensor-index"
    enc_obj = json.loads(enc_index.read_text())
    orig_obj = json.loads(index.read_text())
    assert enc_obj["metadata"] == orig_obj["metadata"]
    assert enc_obj["weight_map"] == {
        k: v.replace(".safetensors", ".enct") for k, v in orig_obj["weight_map"].items()
    }
    for shard in set(enc_obj["weight_map"].values()):
        assert detect_format(enc_dir / shard) == "enctensor"

    assert verify_file(enc_index, key=KEY) == (len(tensors), sum(a.nbytes for a in tensors.values()))
    out_index = out_dir / "model.safetensors.index.json"
    decrypt_file(enc_index, out_index, key=KEY)
    assert out_index.read_bytes() == index.read_bytes()
    for shard in set(orig_obj["weight_map"].values()):
        assert (out_dir / shard).read_bytes() == (src_dir / shard).read_bytes()


def test_sharded_index_edited_to_move_a_tensor_is_detected(tmp_path: Path) -> None:
    index, _ = make_sharded(tmp_path)
    enc_index = tmp_path / "model.enct.index.json"
    encrypt_file(index, enc_index, key=KEY)
    obj = json.loads(enc_index.read_text())
    obj["weight_map"]["layers.0.q"] = "model-00002-of-00003.enct"
    enc_index.write_text(json.dumps(obj))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match="index does not match"):
        decrypt_file(enc_index, out / "model.safetensors.index.json", key=KEY)
    assert files_in(out) == set()


def test_sharded_index_may_not_point_outside_its_directory(tmp_path: Path) -> None:
    index, _ = make_sharded(tmp_path, 1)
    obj = json.loads(index.read_text())
    obj["weight_map"]["layers.0.q"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(obj))
    with pytest.raises(InputFormatError, match="plain file name"):
        encrypt_file(index, tmp_path / "e.index.json", key=KEY)


def test_sharded_failure_leaves_no_shard_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    index, _ = make_sharded(src)
    enc = tmp_path / "enc"
    enc.mkdir()
    encrypt_file(index, enc / "m.index.json", key=KEY)
    last = enc / "model-00003-of-00003.enct"
    data = bytearray(last.read_bytes())
    data[-1] ^= 1
    last.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError):
        decrypt_file(enc / "m.index.json", out / "m.index.json", key=KEY)
    assert files_in(out) == set()  # not even the two shards that decrypted fine


# --- Keys, outputs, errors ----------------------------------------------------------------


@pytest.fixture
def st_file(tmp_path: Path) -> Path:
    src = tmp_path / "m.safetensors"
    save_file(st_tensors(), src, metadata={"format": "pt"})
    return src


def test_several_keys_and_passphrase(tmp_path: Path, st_file: Path) -> None:
    enc = tmp_path / "m.enct"
    encrypt_file(st_file, enc, key=[KEY, OTHER_KEY])
    assert enctensor.inspect(enc)["stanzas"] == ["key", "key"]
    decrypt_file(enc, tmp_path / "a.safetensors", key=[bytes(32), OTHER_KEY])  # tried in turn
    with pytest.raises(WrongKeyError):
        decrypt_file(enc, tmp_path / "b.safetensors", key=bytes(32))
    assert not (tmp_path / "b.safetensors").exists()

    penc = tmp_path / "p.enct"
    encrypt_file(st_file, penc, passphrase="correct horse", scrypt_log_n=10)
    assert enctensor.inspect(penc)["stanzas"] == ["scrypt"]
    decrypt_file(penc, tmp_path / "p.safetensors", passphrase="correct horse")
    assert (tmp_path / "p.safetensors").read_bytes() == st_file.read_bytes()
    with pytest.raises(WrongKeyError):
        verify_file(penc, passphrase="wrong")


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path, st_file: Path) -> None:
    enc = tmp_path / "m.enct"
    enc.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        encrypt_file(st_file, enc, key=KEY)
    assert enc.read_bytes() == b"precious"
    encrypt_file(st_file, enc, key=KEY, overwrite=True)
    assert detect_format(enc) == "enctensor"


def test_integrity_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    src, enc = tmp_path / "m.safetensors", tmp_path / "m.enct"
    save_file({"a": sample_array(np.float32, (3000,), 1), "b": sample_array(np.int8, (5000,), 2)}, src)
    encrypt_file(src, enc, key=KEY, chunk_size=4096)
    assert enctensor.inspect(enc)["tensors"][-1]["nbytes"] > 100
    data = bytearray(enc.read_bytes())
    data[-100] ^= 0x40  # in the last tensor's last chunk
    enc.write_bytes(bytes(data))
    before = files_in(tmp_path)
    with pytest.raises(IntegrityError):
        decrypt_file(enc, tmp_path / "out.safetensors", key=KEY)
    with pytest.raises(IntegrityError):
        verify_file(enc, key=KEY)
    assert files_in(tmp_path) == before


def test_unwritable_destination_leaves_nothing_behind(tmp_path: Path, st_file: Path) -> None:
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        encrypt_file(st_file, tmp_path / "a_file" / "m.enct", key=KEY)
    with pytest.raises(FileNotFoundError):
        encrypt_file(st_file, tmp_path / "missing" / "m.enct", key=KEY)
    assert files_in(tmp_path) == {"a_file", "m.safetensors"}


def test_detect_format(tmp_path: Path, st_file: Path) -> None:
    (tmp_path / "junk").write_bytes(b"hello world, not a tensor file")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "other.json").write_text('{"not": "an index"}')
    assert detect_format(st_file) == "safetensors"
    assert detect_format(tmp_path / "junk") is None
    assert detect_format(tmp_path / "empty") is None
    assert detect_format(tmp_path / "other.json") is None
    with pytest.raises(InputFormatError, match="not a safetensors file"):
        encrypt_file(tmp_path / "junk", tmp_path / "j.enct", key=KEY)
    enc = tmp_path / "m.enct"
    encrypt_file(st_file, enc, key=KEY)
    with pytest.raises(InputFormatError, match="looks like an enctensor file"):
        encrypt_file(enc, tmp_path / "again.enct", key=KEY)
    with pytest.raises(InputFormatError, match="looks like a safetensors file"):
        decrypt_file(st_file, tmp_path / "x.safetensors", key=KEY)


def test_output_format_rules(tmp_path: Path, st_file: Path) -> None:
    enc = tmp_path / "m.enct"
    encrypt_file(st_file, enc, key=KEY)
    assert output_format("o.safetensors", enc) == "safetensors"
    assert output_format("o.params", enc) == "params"
    assert output_format("o.bin", enc, "params") == "params"
    assert output_format("o.bin", enc) == "safetensors"  # nothing recorded: the default
    with pytest.raises(ValueError, match="extension"):
        output_format("o.safetensors", enc, "params")
    with pytest.raises(ValueError, match="index"):
        decrypt_file(enc, tmp_path / "o.json", key=KEY)


def _st_file_with_header(path: Path, header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "cover 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "holes"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "do not match"),
        ({"a": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "does not support"),
        ({"__metadata__": {"n": 1}}, b"", "str to str"),
        ({"__metadata__": {"enctensor.tvm_params": "{}"}}, b"", "reserved"),
    ],
    ids=["trailing-data", "hole", "size-mismatch", "unsupported-dtype", "bad-metadata", "reserved-key"],
)
def test_malformed_safetensors_are_refused(
    tmp_path: Path, header: dict[str, object], data: bytes, message: str
) -> None:
    bad = tmp_path / "bad.safetensors"
    _st_file_with_header(bad, header, data)
    with pytest.raises(InputFormatError, match=message):
        encrypt_file(bad, tmp_path / "bad.enct", key=KEY)
    assert files_in(tmp_path) == {"bad.safetensors"}


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    raw = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    bad = tmp_path / "dup.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    with pytest.raises(InputFormatError, match="duplicate"):
        encrypt_file(bad, tmp_path / "dup.enct", key=KEY)


# --- Memory -------------------------------------------------------------------------------

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, threading, time
    from enctensor.convert import decrypt_file, encrypt_file

    def anon():  # anonymous memory (heap, buffers); mapped file pages are not counted
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise SystemExit("no RssAnon")

    src, enc, back, key = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
    peak, stop, growth = [0], threading.Event(), {}

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)

    for name, run in [("encrypt", lambda: encrypt_file(src, enc, key=key)),
                      ("decrypt", lambda: decrypt_file(enc, back, key=key))]:
        base = peak[0] = anon()
        stop.clear()
        t = threading.Thread(target=sample)
        t.start()
        run()
        stop.set()
        t.join()
        growth[name] = peak[0] - base
    print(json.dumps(growth))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_conversion_memory_is_bounded_by_a_step_not_a_tensor(tmp_path: Path) -> None:
    """A 256 MiB tensor converts both ways with well under 256 MiB of process memory.

    Peak anonymous RSS (heap and buffers, sampled every millisecond in a fresh process) is
    the memory a conversion needs; pages of the mapped input are page cache that the kernel
    can drop, so they are not counted. Expected: about 32 MiB each way (the Rust writer's
    encryption batch; two 16 MiB decryption steps). Holding the tensor would need 256 MiB.
    """
    size = 256 << 20
    src, enc, back = tmp_path / "big.safetensors", tmp_path / "big.enct", tmp_path / "back.safetensors"
    save_file({"big": np.full(size // 4, 1.5, dtype=np.float32), "small": np.ones(3, np.int8)}, src)
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(src), str(enc), str(back), KEY.hex()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    growth = json.loads(proc.stdout)
    assert growth["encrypt"] < size // 3, growth
    assert growth["decrypt"] < size // 3, growth
    assert back.read_bytes() == src.read_bytes()
