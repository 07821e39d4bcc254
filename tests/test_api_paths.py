"""What the numpy API takes as a path (issue 13, sections 4 and 5): a directory is a clear
``IsADirectoryError`` worded as the CLI words it; ``enctensor.load`` of an encrypted sharded
checkpoint's index loads the whole set (as ``load_sharded``, refusing a broken set); ``save``
has ``overwrite=`` (default ``True``), the CLI's ``--force``.

Sharded sets are written by the real converter (``encrypt_file``) from files written by the
safetensors library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY, same, sample_array
from safetensors.numpy import save_file

import enctensor
from enctensor import FormatError, IntegrityError, WrongKeyError
from enctensor._sharded import load_sharded
from enctensor.convert import encrypt_file

ENCTENSOR = Path(sys.executable).parent / "enctensor"
INDEX = "model.enct.index.json"
PLAIN_INDEX = "model.safetensors.index.json"
N = 3


def shard(s: int, ext: str = ".enct") -> str:
    return f"model-{s + 1:05d}-of-{N:05d}{ext}"


def write_plain(d: Path, seed: int, release: str) -> Path:
    """A checkpoint laid out as transformers' save_pretrained does, in ``N`` shards, each with
    the metadata entry ``release``."""
    d.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    for s in range(N):
        tensors = {
            f"layers.{s}.{k}": sample_array(np.float32, (8, 4 + s), 100 * seed + 10 * s + i)
            for i, k in enumerate("qk")
        }
        save_file(tensors, d / shard(s, ".safetensors"), metadata={"format": "pt", "release": release})
        weight_map.update(dict.fromkeys(tensors, shard(s, ".safetensors")))
    index = d / PLAIN_INDEX
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    return index


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Encrypted sets ``a`` and ``b`` (same key, names and layout, other values), and the
    plaintext index of ``a``."""
    root = tmp_path_factory.mktemp("sets")
    out: dict[str, Path] = {}
    for name, seed in (("a", 1), ("b", 2)):
        plain = write_plain(root / "plain" / name, seed, name)
        enc = root / "enc" / name
        enc.mkdir(parents=True)
        encrypt_file(plain, enc / INDEX, key=KEY)
        out[name] = enc
        out[f"plain-{name}"] = plain
    return out


# --- Directories ----------------------------------------------------------------------------

READERS: dict[str, Callable[[Path], Any]] = {
    "load": lambda p: enctensor.load(p, key=KEY),
    "safe_open": lambda p: enctensor.safe_open(p, key=KEY),
    "inspect": enctensor.inspect,
    "verify": lambda p: enctensor.verify(p, key=KEY),
    "rekey": lambda p: enctensor.rekey(p, key=KEY, new_keys=[OTHER_KEY]),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("as_str", [False, True])
def test_a_directory_is_a_clear_error(tmp_path: Path, reader: str, as_str: bool) -> None:
    d = tmp_path / "model_dir"
    d.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        READERS[reader](str(d) if as_str else d)  # type: ignore[arg-type]
    e = info.value
    assert isinstance(e, OSError) and not isinstance(e, enctensor.EncTensorError)
    assert e.filename == str(d)
    assert e.strerror == "is a directory"
    assert str(e) == (
        f"{d}: is a directory — give a file name: an .enct file, or the *.enct.index.json of a"
        " sharded checkpoint"
    )
    assert os.listdir(d) == []


def test_the_cli_words_it_the_same_way(tmp_path: Path) -> None:
    d = tmp_path / "model_dir"
    d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCTENSOR_")}
    proc = subprocess.run(
        [str(ENCTENSOR), "inspect", str(d)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    with pytest.raises(IsADirectoryError) as info:
        enctensor.inspect(d)
    # The CLI: "<path>: is a directory — give a file name"; the API says the same, then
    # which files to give.
    cli = proc.stderr.strip().removeprefix("enctensor: error: ")
    assert cli == f"{d}: is a directory — give a file name", proc.stderr
    assert str(info.value).startswith(cli + ": ")


def test_save_onto_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    for overwrite in (True, False):
        with pytest.raises(IsADirectoryError, match=r"is a directory — give a file name$"):
            enctensor.save({"a": np.zeros(3)}, d, key=KEY, overwrite=overwrite)
    assert os.listdir(d) == []


# --- Sharded checkpoints through enctensor.load ---------------------------------------------


def test_load_of_an_index_is_the_whole_set(sets: dict[str, Path]) -> None:
    index = sets["a"] / INDEX
    out = enctensor.load(index, key=KEY)
    whole = load_sharded(index, key=KEY)
    assert list(out) == list(whole)
    assert all(same(out[n], whole[n]) for n in whole)
    # ... and what the shards hold, one by one, in set order.
    per_shard: dict[str, np.ndarray] = {}
    for s in range(N):
        per_shard.update(enctensor.load(sets["a"] / shard(s), key=KEY))
    assert list(out) == list(per_shard)
    assert sorted(out) == sorted(f"layers.{s}.{k}" for s in range(N) for k in "qk")
    assert all(same(out[n], per_shard[n]) for n in per_shard)
    # ... which are the plaintext tensors.
    for s in range(N):
        with enctensor.safe_open(sets["a"] / shard(s), key=KEY) as f:
            assert sorted(f.keys()) == [f"layers.{s}.k", f"layers.{s}.q"]
    # A str path, and the arguments of load, work too.
    again = enctensor.load(os.fspath(index), key=KEY, expect_metadata={"release": "a"}, max_scrypt_log_n=18)
    assert all(same(again[n], out[n]) for n in out)


def test_load_of_an_index_is_detected_by_content(sets: dict[str, Path], tmp_path: Path) -> None:
    d = shutil.copytree(sets["a"], tmp_path / "a")
    os.rename(d / INDEX, d / "weights.map")
    out = enctensor.load(d / "weights.map", key=KEY)
    assert len(out) == 2 * N


def test_load_of_an_index_applies_the_arguments_to_every_shard(sets: dict[str, Path]) -> None:
    index = sets["a"] / INDEX
    with pytest.raises(WrongKeyError):
        enctensor.load(index, key=OTHER_KEY)
    with pytest.raises(IntegrityError, match="release"):
        enctensor.load(index, key=KEY, expect_metadata={"release": "b"})
    with pytest.raises(ValueError, match="max_scrypt_log_n"):
        enctensor.load(index, key=KEY, max_scrypt_log_n=30)


def _swap_in_other_release(d: Path, sets: dict[str, Path]) -> None:
    shutil.copyfile(sets["b"] / shard(1), d / shard(1))


def _drop_last_shard(d: Path, sets: dict[str, Path]) -> None:
    (d / shard(N - 1)).unlink()
    obj = json.loads((d / INDEX).read_text())
    obj["weight_map"] = {t: s for t, s in obj["weight_map"].items() if s != shard(N - 1)}
    (d / INDEX).write_text(json.dumps(obj))


def _swap_two_shards(d: Path, sets: dict[str, Path]) -> None:
    tmp = d / "tmp"
    os.rename(d / shard(0), tmp)
    os.rename(d / shard(1), d / shard(0))
    os.rename(tmp, d / shard(1))


@pytest.mark.parametrize("attack", [_swap_in_other_release, _drop_last_shard, _swap_two_shards])
def test_a_broken_set_is_an_integrity_error_through_load(
    sets: dict[str, Path], tmp_path: Path, attack: Callable[[Path, dict[str, Path]], None]
) -> None:
    d = shutil.copytree(sets["a"], tmp_path / "a")
    attack(d, sets)
    with pytest.raises(IntegrityError) as via_load:
        enctensor.load(d / INDEX, key=KEY)
    with pytest.raises(IntegrityError) as via_sharded:
        load_sharded(d / INDEX, key=KEY)
    assert str(via_load.value) == str(via_sharded.value)


def test_readers_of_one_file_refuse_an_index_clearly(sets: dict[str, Path]) -> None:
    index = sets["a"] / INDEX
    for name in ("inspect", "verify"):
        with pytest.raises(FormatError, match=r"the index of a sharded checkpoint.*give one of its shards"):
            READERS[name](index)
    with pytest.raises(FormatError, match=r"unencrypted shards.*enctensor encrypt"):
        enctensor.load(sets["plain-a"], key=KEY)
    # Anything else that is not an enctensor file is still the core's FormatError.
    with pytest.raises(FormatError):
        enctensor.load(sets["plain-a"].parent / shard(0, ".safetensors"), key=KEY)


def test_load_of_a_json_that_is_no_index(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": 8}')
    with pytest.raises(FormatError):
        enctensor.load(p, key=KEY)
    with pytest.raises(FileNotFoundError):
        enctensor.load(tmp_path / "missing.enct", key=KEY)


# --- save(overwrite=) -------------------------------------------------------------------------


def test_save_overwrites_by_default(tmp_path: Path) -> None:
    p = tmp_path / "m.enct"
    enctensor.save({"a": np.arange(3)}, p, key=KEY)
    enctensor.save({"b": np.arange(4)}, p, key=KEY)
    assert list(enctensor.load(p, key=KEY)) == ["b"]
    enctensor.save({"c": np.arange(5)}, p, key=KEY, overwrite=True)
    assert list(enctensor.load(p, key=KEY)) == ["c"]


def test_save_without_overwrite_refuses_an_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "m.enct"
    p.write_bytes(b"precious")
    with pytest.raises(FileExistsError) as info:
        enctensor.save({"a": np.arange(3)}, p, key=KEY, overwrite=False)
    assert info.value.filename == str(p) and str(p) in str(info.value)
    assert p.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["m.enct"]
    # A dangling symlink exists too.
    link = tmp_path / "link.enct"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        enctensor.save({"a": np.arange(3)}, link, key=KEY, overwrite=False)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(tmp_path)) == ["link.enct", "m.enct"]


def test_save_without_overwrite_writes_a_new_file(tmp_path: Path) -> None:
    p = tmp_path / "new.enct"
    t = {"a": sample_array(np.float32, (64, 33), 5)}
    enctensor.save(t, p, key=KEY, overwrite=False, metadata={"m": "1"})
    assert os.listdir(tmp_path) == ["new.enct"]
    assert same(enctensor.load(p, key=KEY, expect_metadata={"m": "1"})["a"], t["a"])
    assert p.read_bytes()[:8] == enctensor.save_bytes(t, key=KEY)[:8]


def test_save_without_overwrite_loses_a_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that appears at the target while it is being written is kept, not replaced."""
    from enctensor import _core

    p = tmp_path / "m.enct"
    real = _core.write_file

    def racing(path: str, *args: Any, **kwargs: Any) -> int:
        p.write_bytes(b"theirs")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_core, "write_file", racing)
    with pytest.raises(FileExistsError):
        enctensor.save({"a": np.arange(3)}, p, key=KEY, overwrite=False)
    assert p.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["m.enct"]


def test_overwrite_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="overwrite"):
        enctensor.save({"a": np.arange(3)}, tmp_path / "m.enct", key=KEY, overwrite="no")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
