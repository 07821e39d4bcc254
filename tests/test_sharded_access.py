"""Sharded checkpoints (``*.enct.index.json``) read as one checkpoint (issue 13, §5, first
point): ``enctensor.safe_open`` across all shards (keys, tensors, slices, metadata), and
``enctensor.torch.load_model`` / ``load_file`` with strictness computed over the union of all
shards, as ``safetensors.torch.load_model`` computes it over one file holding them all. Every
reader checks first that the set is whole, as ``load_sharded`` does.

The sets are written by the real converter (``encrypt_file`` of a ``model.safetensors.index.json``)
from shards written by the safetensors library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import KEY, OTHER_KEY

import enctensor
import enctensor.torch as et
from enctensor import IntegrityError, TensorNotFoundError, WrongKeyError
from enctensor._sharded import SHARD_KEY, load_sharded
from enctensor.convert import encrypt_file

INDEX = "model.enct.index.json"
PLAIN_INDEX = "model.safetensors.index.json"


class Net(torch.nn.Module):
    """Parameters and a persistent buffer, spread over three shards by :data:`LAYOUT`."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(300, 16)
        self.l1 = torch.nn.Linear(16, 24)
        self.l2 = torch.nn.Linear(24, 3)
        self.register_buffer("scale", torch.ones(3))


#: Shard -> the names of Net's state dict it holds.
LAYOUT = [["embed.weight", "l1.weight"], ["l1.bias", "l2.weight"], ["l2.bias", "scale"]]


def shard_name(s: int, ext: str = ".safetensors") -> str:
    return f"model-{s + 1:05d}-of-{len(LAYOUT):05d}{ext}"


def reference_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.scale.uniform_()
    return {k: v.clone() for k, v in net.state_dict().items()}


def write_set(
    d: Path,
    state: dict[str, torch.Tensor],
    layout: list[list[str]] = LAYOUT,
    metadata: Callable[[int], dict[str, str]] = lambda s: {"format": "pt"},
) -> Path:
    """Plaintext shards and index as transformers writes them, encrypted by the converter into
    ``d/model.enct.index.json`` and ``d/model-0000i-of-00003.enct``; returns the encrypted index."""
    plain = d / "plain"
    plain.mkdir(parents=True)
    weight_map = {}
    for s, names in enumerate(layout):
        safetensors.torch.save_file({n: state[n] for n in names}, plain / shard_name(s), metadata=metadata(s))
        weight_map.update(dict.fromkeys(names, shard_name(s)))
    (plain / PLAIN_INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    encrypt_file(plain / PLAIN_INDEX, d / INDEX, key=KEY)
    return d / INDEX


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return reference_state(0)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    return write_set(tmp_path_factory.mktemp("set"), state)


# --- safe_open across shards ------------------------------------------------------------------


def test_safe_open_of_an_index_reads_every_shard(index: Path, state: dict[str, torch.Tensor]) -> None:
    with enctensor.safe_open(index, key=KEY, framework="pt") as f:
        assert f.keys() == [n for names in LAYOUT for n in names]  # set order, then file order
        for name, t in state.items():
            got = f.get_tensor(name)
            assert got.dtype == t.dtype and torch.equal(got, t), name
        rows = f.get_slice("embed.weight")
        assert rows.get_shape() == [300, 16] and rows.get_dtype() == "F32"
        assert torch.equal(rows[17:260:3, 5:], state["embed.weight"][17:260:3, 5:])
        assert torch.equal(f.get_slice("l2.bias")[-1], state["l2.bias"][-1])  # a tensor of the last shard
    with enctensor.safe_open(index, key=KEY) as f:  # numpy
        assert np.array_equal(f.get_tensor("scale"), state["scale"].numpy())
        assert np.array_equal(f.get_slice("l1.weight")[3], state["l1.weight"][3].numpy())


def test_safe_open_of_an_index_matches_safetensors_on_each_plain_shard(index: Path) -> None:
    with enctensor.safe_open(index, key=KEY, framework="pt") as f:
        for s in range(len(LAYOUT)):
            with safetensors.safe_open(index.parent / "plain" / shard_name(s), framework="pt") as ref:
                held = ref.keys()
                for name in held:
                    assert torch.equal(f.get_tensor(name), ref.get_tensor(name)), name
                    assert torch.equal(f.get_slice(name)[1:], ref.get_slice(name)[1:]), name


def test_metadata_of_a_set_is_what_every_shard_agrees_on(
    tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    index = write_set(tmp_path, state, metadata=lambda s: {"format": "pt", "release": "7", "part": str(s)})
    with enctensor.safe_open(index, key=KEY) as f:
        # "part" differs between shards, and so does each shard's own enctensor.shard entry.
        assert f.metadata() == {"format": "pt", "release": "7"}
    shard = tmp_path / shard_name(1, ".enct")
    with enctensor.safe_open(shard, key=KEY) as one:  # one shard opened alone: all of its metadata
        assert one.metadata()["part"] == "1" and SHARD_KEY in one.metadata()


def test_safe_open_of_an_index_applies_the_arguments_to_every_shard(tmp_path: Path) -> None:
    index = write_set(tmp_path, reference_state(1), metadata=lambda s: {"release": "7" if s < 2 else "6"})
    with pytest.raises(WrongKeyError):
        enctensor.safe_open(index, key=OTHER_KEY)
    # The last shard is of another release: the pin is checked on every shard, not the first.
    with pytest.raises(IntegrityError, match=re.escape(shard_name(2, ".enct")) + r".*'release' is '6'"):
        enctensor.safe_open(index, key=KEY, expect_metadata={"release": "7"})


def test_safe_open_of_an_index_names_what_it_lacks_and_closes(index: Path) -> None:
    f = enctensor.safe_open(index, key=KEY)
    with pytest.raises(TensorNotFoundError, match=r"no tensor named 'nope' in this checkpoint \(3 shards\)"):
        f.get_tensor("nope")
    sliced = f.get_slice("l2.weight")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.get_tensor("l1.bias")
    with pytest.raises(ValueError, match="closed"):
        sliced[0]


def _swap_two_shards(d: Path) -> None:
    a, b = d / shard_name(0, ".enct"), d / shard_name(1, ".enct")
    os.rename(a, d / "tmp")
    os.rename(b, a)
    os.rename(d / "tmp", b)


def _mix_in_another_release(d: Path) -> None:
    other = write_set(d / "other", reference_state(2))
    shutil.copyfile(other.parent / shard_name(2, ".enct"), d / shard_name(2, ".enct"))


def _drop_a_shard(d: Path) -> None:
    (d / shard_name(1, ".enct")).unlink()
    obj = json.loads((d / INDEX).read_text())
    obj["weight_map"] = {t: s for t, s in obj["weight_map"].items() if s != shard_name(1, ".enct")}
    (d / INDEX).write_text(json.dumps(obj))


@pytest.mark.parametrize("attack", [_swap_two_shards, _mix_in_another_release, _drop_a_shard])
def test_every_reader_of_a_broken_set_refuses_it_as_load_sharded_does(
    index: Path, tmp_path: Path, attack: Callable[[Path], None]
) -> None:
    d = shutil.copytree(index.parent, tmp_path / "copy")
    attack(d)
    with pytest.raises(IntegrityError) as expected:
        load_sharded(d / INDEX, key=KEY)
    readers: dict[str, Callable[[], object]] = {
        "safe_open": lambda: enctensor.safe_open(d / INDEX, key=KEY, framework="pt"),
        "load_model": lambda: et.load_model(Net(), d / INDEX, key=KEY),
        "load_file": lambda: et.load_file(d / INDEX, key=KEY),
    }
    for name, read in readers.items():
        with pytest.raises(IntegrityError) as got:
            read()
        assert str(got.value) == str(expected.value), name


# --- torch: load_model and load_file across shards --------------------------------------------


def test_load_model_fills_the_model_from_every_shard_in_place(
    index: Path, state: dict[str, torch.Tensor]
) -> None:
    torch.manual_seed(9)
    model = Net()
    before = {n: t.data_ptr() for n, t in model.state_dict().items()}
    # Strict, although no single shard holds the whole model.
    assert et.load_model(model, index, key=KEY) == ([], [])
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
        assert t.data_ptr() == before[name], name  # decrypted into the model's own storage
    out = et.load_file(index, key=KEY)
    assert list(out) == [n for names in LAYOUT for n in names]
    assert all(torch.equal(out[n], state[n]) for n in state)


def test_strictness_is_over_all_shards_as_safetensors_for_one_file(tmp_path: Path) -> None:
    state = reference_state(3)
    state["extra"] = torch.arange(5.0)
    # l2.bias is in no shard; "extra" is in the last one; the other shards miss most of the
    # model, which is no error: only the union counts.
    layout = [["embed.weight", "l1.weight"], ["l1.bias", "l2.weight"], ["scale", "extra"]]
    index = write_set(tmp_path / "set", state, layout)
    merged = tmp_path / "merged.safetensors"
    safetensors.torch.save_file({n: state[n] for names in layout for n in names}, merged)

    with pytest.raises(RuntimeError) as ref_error:
        safetensors.torch.load_model(Net(), merged)
    with pytest.raises(RuntimeError) as error:
        et.load_model(Net(), index, key=KEY)
    for text in (str(ref_error.value), str(error.value)):
        assert re.search(r'Missing key\(s\) in state_dict: "l2.bias"\.?\n', text), text
        assert re.search(r'Unexpected key\(s\) in state_dict: "extra"\.?$', text), text

    ref_model, model = Net(), Net()
    ref_missing, ref_unexpected = safetensors.torch.load_model(ref_model, merged, strict=False)
    missing, unexpected = et.load_model(model, index, key=KEY, strict=False)
    assert (sorted(missing), unexpected) == (sorted(ref_missing), ref_unexpected) == (["l2.bias"], ["extra"])
    loaded = [n for n in model.state_dict() if n != "l2.bias"]
    for name in loaded:
        assert torch.equal(model.state_dict()[name], ref_model.state_dict()[name]), name


def test_a_strict_mismatch_writes_nothing(tmp_path: Path) -> None:
    index = write_set(tmp_path, reference_state(4), [LAYOUT[0], LAYOUT[1], ["scale"]])
    model = Net()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "l2.bias"'):
        et.load_model(model, index, key=KEY)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())


def test_a_shard_that_fails_to_verify_leaves_no_plaintext_of_any_shard(index: Path, tmp_path: Path) -> None:
    d = shutil.copytree(index.parent, tmp_path / "copy")
    last = d / shard_name(2, ".enct")
    data = bytearray(last.read_bytes())
    data[-1] ^= 1  # the last byte of a tensor's ciphertext: the header still authenticates
    last.write_bytes(bytes(data))
    model = Net()
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(7.0)
    with pytest.raises(IntegrityError):
        et.load_model(model, d / INDEX, key=KEY)
    # Shards 1 and 2 verified and were decrypted first; they are wiped too.
    for name, t in model.state_dict().items():
        assert not t.any(), name
