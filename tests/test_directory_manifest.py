"""The manifest of an encrypted model directory: the files ``encrypt_file`` copies beside the
weights (config, tokenizer, chat config, ...) are recorded (relative path, size, SHA-256) in
the ``enctensor.files`` metadata entry of every encrypted file, so the header MAC and the
publisher signature cover them. ``decrypt_file``, ``verify_directory`` / ``verify_file`` and
``enctensor.transformers.from_pretrained`` refuse a directory in which a copied file was
changed, removed or added, naming the file; an untouched directory round-trips byte for byte.
Models are tiny ones written by transformers' ``save_pretrained`` and a tensor cache written
by ``tvm.contrib.tvmjs.dump_tensor_cache``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import KEY
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import enctensor
from enctensor import IntegrityError, SignatureError
from enctensor.convert import InputFormatError, decrypt_file, encrypt_file, verify_directory, verify_file
from enctensor.convert import manifest as mf
from enctensor.transformers import from_pretrained

tvmjs = pytest.importorskip("tvm.contrib.tvmjs")

TOKENIZER = {"version": "1.0", "added_tokens": [{"id": 0, "content": "[CLS]", "special": True}]}


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def entry(path: Path) -> dict[str, object]:
    """The parsed manifest entry of an encrypted file (metadata is readable without a key)."""
    return json.loads(enctensor.inspect(path)["metadata"][mf.MANIFEST_KEY])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plaintext model directories: a tiny BERT (single file, with a tokenizer and a pooling
    config in a subdirectory), the same sharded, a tiny GPT-2 (with generation_config.json)
    and an MLC-style tensor cache with its chat config and tokenizer."""
    root = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    out = {}
    for name, shard in (("bert", "10GB"), ("bert-sharded", "8KB")):
        d = root / name
        bert.save_pretrained(d, max_shard_size=shard)
        (d / "tokenizer.json").write_text(json.dumps(TOKENIZER))
        (d / "1_Pooling").mkdir()
        (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
        out[name] = d
    assert (out["bert-sharded"] / "model.safetensors.index.json").is_file()
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    )
    gpt2.save_pretrained(root / "gpt2")
    assert (root / "gpt2" / "generation_config.json").is_file()
    out["gpt2"] = root / "gpt2"
    cache = root / "mlc"
    rng = np.random.default_rng(0)
    params = {f"w{i}": rng.standard_normal((40, 40)).astype(np.float32) for i in range(3)}
    tvmjs.dump_tensor_cache(params, str(cache), encode_format="raw", shard_cap_mb=0.01, show_progress=False)
    (cache / "mlc-chat-config.json").write_text('{"conv_template": "chatml", "temperature": 0.7}\n')
    (cache / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    out["mlc"] = cache
    return out


@pytest.fixture(scope="module")
def enc(plain: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("enc")
    for name, d in plain.items():
        encrypt_file(d, root / name, key=KEY)
    return {name: root / name for name in plain}


def test_every_weight_file_holds_the_manifest_of_the_copied_files(
    plain: dict[str, Path], enc: dict[str, Path]
) -> None:
    for name, weights in (
        ("bert", ["model.enct"]),
        ("bert-sharded", sorted(p.name for p in enc["bert-sharded"].glob("model-*.enct"))),
        ("mlc", sorted(p.name for p in enc["mlc"].glob("params_shard_*.enct"))),
    ):
        copied = {
            p.relative_to(plain[name]).as_posix(): p.read_bytes()
            for p in plain[name].rglob("*")
            if p.is_file() and (enc[name] / p.relative_to(plain[name])).is_file()
        }
        assert "tokenizer.json" in copied
        for w in weights:
            e = entry(enc[name] / w)
            assert e["path"] == w  # every file, every shard of a set, names itself
            assert e["files"] == {
                rel: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for rel, b in copied.items()
            }
            listed = {p.name for p in enc[name].iterdir() if p.name.endswith((".enct", ".enct.index.json"))}
            assert set(e["encrypted"]) == listed  # type: ignore[arg-type]
    assert "1_Pooling/config.json" in entry(enc["bert"] / "model.enct")["files"]  # type: ignore[operator]


@pytest.mark.parametrize("name", ["bert", "bert-sharded", "gpt2", "mlc"])
def test_an_untouched_directory_verifies_and_round_trips_byte_for_byte(
    plain: dict[str, Path], enc: dict[str, Path], tmp_path: Path, name: str
) -> None:
    tensors, nbytes = verify_directory(enc[name], key=KEY)
    assert tensors > 0 and nbytes > 0
    assert verify_file(enc[name], key=KEY) == (tensors, nbytes)
    decrypt_file(enc[name], tmp_path / "back", key=KEY)
    assert contents(tmp_path / "back") == contents(plain[name])  # no manifest entry written back


@pytest.mark.parametrize("name", ["bert", "bert-sharded", "gpt2"])
def test_an_untouched_directory_loads_with_from_pretrained(
    plain: dict[str, Path], enc: dict[str, Path], name: str
) -> None:
    ref = transformers.AutoModel.from_pretrained(plain[name])
    model = from_pretrained(transformers.AutoModel, enc[name], key=KEY)
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def _change(path: Path) -> None:
    """Same size, one byte different (so only the SHA-256 can tell)."""
    data = bytearray(path.read_bytes())
    i = data.index(b"0") if b"0" in data else len(data) - 2
    data[i] = ord("1") if data[i] != ord("1") else ord("2")
    path.write_bytes(bytes(data))


TAMPERING = {
    "config changed": ("config.json", _change),
    "tokenizer changed": ("tokenizer.json", lambda p: p.write_text(p.read_text().replace("[CLS]", "[EVIL]"))),
    "config in a subdirectory changed": ("1_Pooling/config.json", _change),
    "tokenizer removed": ("tokenizer.json", Path.unlink),
    "file added": ("tokenizer_config.json", lambda p: p.write_text('{"chat_template": "{{ evil }}"}')),
    "code added in a subdirectory": ("1_Pooling/modeling_evil.py", lambda p: p.write_text("import os\n")),
}


def tampered(src: Path, tmp_path: Path, rel: str, how: object) -> Path:
    d = Path(shutil.copytree(src, tmp_path / "tampered", symlinks=True))
    how(d / rel)  # type: ignore[operator]
    return d


@pytest.mark.parametrize("case", list(TAMPERING))
@pytest.mark.parametrize("name", ["bert", "bert-sharded"])
def test_a_tampered_copied_file_is_refused_naming_it(
    enc: dict[str, Path], tmp_path: Path, name: str, case: str
) -> None:
    rel, how = TAMPERING[case]
    d = tampered(enc[name], tmp_path, rel, how)
    for check in (
        lambda: decrypt_file(d, tmp_path / "out", key=KEY),
        lambda: verify_directory(d, key=KEY),
        lambda: verify_file(d, key=KEY),
        lambda: from_pretrained(transformers.AutoModel, d, key=KEY),
    ):
        with pytest.raises(IntegrityError, match=rel.replace(".", r"\.")) as error:
            check()
        assert error.value.enctensor_path == os.fspath(d / rel)  # type: ignore[attr-defined]
    assert sorted(os.listdir(tmp_path)) == ["tampered"]  # no output, no temporary tree left


@pytest.mark.parametrize(
    "rel, how",
    [
        ("mlc-chat-config.json", _change),
        ("tokenizer.json", Path.unlink),
        ("tokenizer_config.json", lambda p: p.write_text("{}")),
    ],
)
def test_a_tampered_tensor_cache_directory_is_refused_naming_the_file(
    enc: dict[str, Path], tmp_path: Path, rel: str, how: object
) -> None:
    d = tampered(enc["mlc"], tmp_path, rel, how)
    with pytest.raises(IntegrityError, match=rel.replace(".", r"\.")):
        decrypt_file(d, tmp_path / "out", key=KEY)
    with pytest.raises(IntegrityError, match=rel.replace(".", r"\.")):
        verify_directory(d, key=KEY)
    assert not (tmp_path / "out").exists()


def test_from_pretrained_checks_the_generation_config(enc: dict[str, Path], tmp_path: Path) -> None:
    d = tampered(
        enc["gpt2"], tmp_path, "generation_config.json", lambda p: p.write_text('{"do_sample": true}')
    )
    with pytest.raises(
        IntegrityError, match=r"generation_config\.json: changed since the directory was encrypted"
    ):
        from_pretrained(transformers.AutoModelForCausalLM, d, key=KEY)


def test_a_removed_weight_file_of_the_tree_is_refused(plain: dict[str, Path], tmp_path: Path) -> None:
    src = Path(shutil.copytree(plain["bert"], tmp_path / "plain"))
    shutil.copy(src / "model.safetensors", src / "1_Pooling" / "extra.safetensors")
    encrypt_file(src, tmp_path / "enc", key=KEY)
    assert "1_Pooling/extra.enct" in entry(tmp_path / "enc" / "model.enct")["encrypted"]  # type: ignore[operator]
    os.unlink(tmp_path / "enc" / "1_Pooling" / "extra.enct")
    for check in (
        lambda: decrypt_file(tmp_path / "enc", tmp_path / "out", key=KEY),
        lambda: verify_directory(tmp_path / "enc", key=KEY),
        lambda: from_pretrained(transformers.AutoModel, tmp_path / "enc", key=KEY),
    ):
        with pytest.raises(IntegrityError, match=r"1_Pooling/extra\.enct: listed in the manifest .* missing"):
            check()


def test_gitattributes_may_be_added_and_is_not_copied(
    plain: dict[str, Path], enc: dict[str, Path], tmp_path: Path
) -> None:
    # What a git host adds on upload; no model loader reads it.
    d = tampered(enc["bert"], tmp_path, ".gitattributes", lambda p: p.write_text("*.enct filter=lfs\n"))
    verify_directory(d, key=KEY)
    from_pretrained(transformers.AutoModel, d, key=KEY)
    decrypt_file(d, tmp_path / "back", key=KEY)
    assert contents(tmp_path / "back") == contents(plain["bert"])


def test_weight_files_of_two_encryptions_are_not_mixed(plain: dict[str, Path], tmp_path: Path) -> None:
    src = Path(shutil.copytree(plain["bert"], tmp_path / "plain"))
    shutil.copy(src / "model.safetensors", src / "extra.safetensors")
    encrypt_file(src, tmp_path / "a", key=KEY)
    (src / "config.json").write_text((src / "config.json").read_text().replace("16", "17"))
    encrypt_file(src, tmp_path / "b", key=KEY)
    # b's config and model.enct (a genuine, consistent pair) with a's extra.enct.
    shutil.copy(tmp_path / "a" / "extra.enct", tmp_path / "b" / "extra.enct")
    with pytest.raises(IntegrityError, match=r"model\.enct|extra\.enct") as error:
        verify_directory(tmp_path / "b", key=KEY)
    assert "files of different encryptions" in str(error.value)


def test_a_directory_without_a_manifest_is_refused(plain: dict[str, Path], tmp_path: Path) -> None:
    # Assembled by hand: the weights encrypted on their own, the config copied.
    d = tmp_path / "by-hand"
    d.mkdir()
    encrypt_file(plain["bert"] / "model.safetensors", d / "model.enct", key=KEY)
    shutil.copy(plain["bert"] / "config.json", d / "config.json")
    for check in (
        lambda: decrypt_file(d, tmp_path / "out", key=KEY),
        lambda: verify_directory(d, key=KEY),
        lambda: from_pretrained(transformers.AutoModel, d, key=KEY),
    ):
        with pytest.raises(IntegrityError, match=r"model\.enct: no enctensor\.files metadata entry"):
            check()


def test_the_manifest_cannot_be_changed_without_the_key(enc: dict[str, Path], tmp_path: Path) -> None:
    d = Path(shutil.copytree(enc["bert"], tmp_path / "forged"))
    config = d / "config.json"
    old = hashlib.sha256(config.read_bytes()).hexdigest()
    config.write_text(config.read_text().replace("16", "32"))
    new = hashlib.sha256(config.read_bytes()).hexdigest()
    # Same size; rewrite the recorded SHA-256 in the header in place.
    raw = (d / "model.enct").read_bytes()
    assert raw.count(old.encode()) == 1
    (d / "model.enct").write_bytes(raw.replace(old.encode(), new.encode()))
    with pytest.raises(IntegrityError):
        verify_directory(d, key=KEY)
    with pytest.raises(IntegrityError):
        decrypt_file(d, tmp_path / "out", key=KEY)


def test_a_signed_directory_covers_the_manifest_with_the_signature(
    plain: dict[str, Path], tmp_path: Path
) -> None:
    publisher = Ed25519PrivateKey.generate()
    pub = publisher.public_key()
    reader = X25519PrivateKey.generate()
    src = Path(shutil.copytree(plain["bert"], tmp_path / "plain"))
    encrypt_file(src, tmp_path / "signed", recipients=[reader.public_key()], sign_with=publisher)
    verify_directory(tmp_path / "signed", key=reader, verify_with=pub)

    # An attacker knows the recipient's public key (that is all encrypting to it takes): they
    # change the config and encrypt the directory again, with a manifest that matches it,
    # signed with their own key.
    (src / "config.json").write_text((src / "config.json").read_text().replace("16", "32"))
    encrypt_file(
        src, tmp_path / "forged", recipients=[reader.public_key()], sign_with=Ed25519PrivateKey.generate()
    )
    verify_directory(tmp_path / "forged", key=reader)  # consistent: only the signature can tell
    for check in (
        lambda: verify_directory(tmp_path / "forged", key=reader, verify_with=pub),
        lambda: decrypt_file(tmp_path / "forged", tmp_path / "out", key=reader, verify_with=pub),
        lambda: from_pretrained(transformers.AutoModel, tmp_path / "forged", key=reader, verify_with=pub),
    ):
        with pytest.raises(SignatureError):
            check()
    # Nor can the genuine signed weights be paired with the changed config.
    shutil.copy(src / "config.json", tmp_path / "signed" / "config.json")
    with pytest.raises(IntegrityError, match=r"config\.json: changed"):
        verify_directory(tmp_path / "signed", key=reader, verify_with=pub)


def test_the_manifest_key_is_reserved_in_inputs(plain: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    tensors = {"w": np.zeros(4, np.float32)}
    from safetensors.numpy import save_file

    save_file(tensors, src / "model.safetensors", metadata={mf.MANIFEST_KEY: "{}"})
    with pytest.raises(InputFormatError, match="reserved"):
        encrypt_file(src, tmp_path / "enc", key=KEY)
    assert sorted(os.listdir(tmp_path)) == ["plain"]


def test_manifest_entries_are_parsed_strictly(tmp_path: Path) -> None:
    good = mf.Manifest({"config.json": mf.FileEntry(2, "0" * 64)}, ("model.enct",)).text("model.enct")
    assert mf.read(tmp_path / "model.enct", {mf.MANIFEST_KEY: good})[0] == "model.enct"
    bad = [
        good.replace(",", ", ", 1),  # not canonical
        good.replace('"config.json"', '"../config.json"'),  # leaves the directory
        good.replace('"config.json"', '"/etc/passwd"'),
        good.replace('"version":1', '"version":2'),
        good.replace('"path":"model.enct"', '"path":"other.enct"'),  # not an encrypted file of it
        good.replace('"size":2', '"size":-2'),
        good.replace("0" * 64, "0" * 63),
        '{"files":{},"files":{}}',
        "[]",
    ]
    for text in bad:
        with pytest.raises(IntegrityError, match=r"malformed enctensor\.files"):
            mf.read(tmp_path / "model.enct", {mf.MANIFEST_KEY: text})
    many = {f"f{i:06}.json": mf.FileEntry(1, "0" * 64) for i in range(mf.MAX_MANIFEST_LEN // 90)}
    with pytest.raises(InputFormatError, match="larger than"):
        mf.Manifest(many, ("model.enct",)).text("model.enct")


def test_cli_verify_checks_a_whole_directory(enc: dict[str, Path], tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(KEY)
    cmd = [sys.executable, "-m", "enctensor", "verify", "-k", str(key)]
    good = subprocess.run([*cmd, str(enc["bert"])], capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    d = tampered(enc["bert"], tmp_path, "config.json", _change)
    bad = subprocess.run([*cmd, str(d)], capture_output=True, text=True, check=False)
    assert bad.returncode == 4 and "config.json" in bad.stderr, bad.stderr
