"""enctensor.torch: the safetensors.torch API over encrypted files, load_model in place,
safe_open(framework="pt"), and the typed errors through the adapter."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import KEY, OTHER_KEY
from hypothesis import given
from hypothesis import strategies as st

import enctensor
import enctensor.torch as et
from enctensor import IntegrityError, TensorNotFoundError, WrongKeyError

ALL_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int16,
    torch.uint16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint32,
    torch.float32,
    torch.int64,
    torch.uint64,
    torch.float64,
]
FORMAT_NAMES = ["BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "I16", "U16", "F16", "BF16"]
FORMAT_NAMES += ["I32", "U32", "F32", "I64", "U64", "F64"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random bytes of any dtype (every bit pattern occurs, NaNs included)."""
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    raw = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)
    if dtype == torch.bool:
        raw &= 1
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    if not t.numel():
        return torch.empty(0, dtype=torch.uint8)
    flat = t.detach().cpu().contiguous()
    return flat.as_strided((flat.numel(),), (1,)).view(torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN-safe)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def every_dtype() -> dict[str, torch.Tensor]:
    out = {f"t_{str(d).split('.')[1]}": sample(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros((0, 4), dtype=torch.int32)
    out["empty_bf16"] = torch.zeros((2, 0), dtype=torch.bfloat16)
    out["multi_chunk"] = sample(torch.float32, (3000, 7), 99)  # 84 kB: 21 chunks of 4 KiB
    return out


def tamper(path: Path) -> None:
    """Flips the last byte of the file: the last byte of the last tensor's ciphertext."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# save_file / load_file / save / load


def test_round_trip_every_dtype(tmp_path: Path) -> None:
    tensors = every_dtype()
    path = tmp_path / "m.enct"
    et.save_file(tensors, path, key=KEY, metadata={"format": "pt"}, chunk_size=4096)
    out = et.load_file(path, key=KEY)
    assert list(out) == list(tensors)
    for name, t in tensors.items():
        assert same(out[name], t), name
        assert out[name].device.type == "cpu" and out[name].is_contiguous()
    # Values, not only bytes, for the dtypes where equality has no NaN caveat.
    assert torch.equal(out["t_int64"], tensors["t_int64"])
    assert torch.equal(out["t_bool"], tensors["t_bool"])
    assert torch.equal(out["scalar"], torch.tensor(2.5))
    assert [r["dtype"] for r in enctensor.inspect(path)["tensors"][:15]] == FORMAT_NAMES
    assert enctensor.inspect(path)["metadata"] == {"format": "pt"}


def test_loaded_tensors_are_independent_and_writable(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(10, dtype=torch.float32), "b": torch.arange(10, dtype=torch.float32)}
    et.save_file(tensors, tmp_path / "m.enct", key=KEY)
    out = et.load_file(tmp_path / "m.enct", key=KEY)
    out["a"] += 1
    assert torch.equal(out["a"], torch.arange(10, dtype=torch.float32) + 1)
    assert torch.equal(out["b"], torch.arange(10, dtype=torch.float32))
    assert out["a"].untyped_storage().data_ptr() != out["b"].untyped_storage().data_ptr()
    assert out["a"].data_ptr() % 64 == 0


def test_bytes_round_trip() -> None:
    tensors = every_dtype()
    data = et.save(tensors, key=KEY, metadata={"k": "v"})
    assert isinstance(data, bytes) and data[:4] == b"\x89ETS"
    out = et.load(data, key=KEY)
    assert list(out) == list(tensors)
    assert all(same(out[n], t) for n, t in tensors.items())
    assert et.load(bytearray(data), key=KEY).keys() == tensors.keys()


def test_interoperates_with_the_numpy_api(tmp_path: Path) -> None:
    tensors = every_dtype()
    et.save_file(tensors, tmp_path / "pt.enct", key=KEY)
    arrays = enctensor.load(tmp_path / "pt.enct", key=KEY)
    for name, t in tensors.items():
        assert arrays[name].shape == tuple(t.shape)
        assert arrays[name].tobytes() == bits(t).numpy().tobytes(), name
    enctensor.save(arrays, tmp_path / "np.enct", key=KEY)
    back = et.load_file(tmp_path / "np.enct", key=KEY)
    assert all(same(back[n], t) for n, t in tensors.items())


def test_passphrase_several_keys_and_plaintext(tmp_path: Path) -> None:
    t = {"w": sample(torch.bfloat16, (4, 4)), "b": sample(torch.float32, (4,), 1)}
    et.save_file(t, tmp_path / "p.enct", passphrase="correct horse", scrypt_log_n=10)
    assert same(et.load_file(tmp_path / "p.enct", passphrase="correct horse")["w"], t["w"])
    et.save_file(t, tmp_path / "k.enct", key=[KEY, OTHER_KEY], plaintext=["b"])
    for k in (KEY, OTHER_KEY):
        out = et.load_file(tmp_path / "k.enct", key=k)
        assert same(out["w"], t["w"]) and same(out["b"], t["b"])
    assert [r["encrypted"] for r in enctensor.inspect(tmp_path / "k.enct")["tensors"]] == [True, False]


def test_numpy_api_options_pass_through(tmp_path: Path) -> None:
    """Options of enctensor.save / enctensor.load (here a publisher signature) work through
    every torch entry point."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    m = torch.nn.Linear(3, 2)
    et.save_model(m, tmp_path / "m.enct", key=KEY, sign_with=signer)
    et.save_file({"w": m.weight}, tmp_path / "w.enct", key=KEY, sign_with=signer)
    data = et.save({"w": m.weight}, key=KEY, sign_with=signer)
    dst = torch.nn.Linear(3, 2)
    assert et.load_model(dst, tmp_path / "m.enct", key=KEY, verify_with=signer.public_key()) == ([], [])
    assert same(dst.weight, m.weight) and same(dst.bias, m.bias)
    assert same(et.load_file(tmp_path / "w.enct", key=KEY, verify_with=signer.public_key())["w"], m.weight)
    assert same(et.load(data, key=KEY, verify_with=signer.public_key())["w"], m.weight)
    with pytest.raises(IntegrityError, match="signature"):
        et.load_file(tmp_path / "w.enct", key=KEY, verify_with=stranger.public_key())
    with pytest.raises(IntegrityError, match="signature"):
        et.load_model(torch.nn.Linear(3, 2), tmp_path / "m.enct", key=KEY, verify_with=stranger.public_key())


def test_parameters_and_tensors_that_require_grad(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.randn(3, 3))
    et.save_file({"p": p, "g": torch.randn(2, requires_grad=True)}, tmp_path / "m.enct", key=KEY)
    out = et.load_file(tmp_path / "m.enct", key=KEY)
    assert same(out["p"], p.detach()) and not out["p"].requires_grad


def test_views_are_saved_as_their_own_bytes(tmp_path: Path) -> None:
    base = torch.arange(20, dtype=torch.int64)
    # Contiguous for torch, yet with a stride of 2: empty, and one element.
    odd = torch.arange(4, dtype=torch.bfloat16)
    et.save_file({"v": base[5:10], "e": odd[0:0:2], "one": odd[1:2:2]}, tmp_path / "m.enct", key=KEY)
    out = et.load_file(tmp_path / "m.enct", key=KEY)
    assert torch.equal(out["v"], torch.arange(5, 10))
    assert out["e"].shape == (0,) and out["e"].dtype == torch.bfloat16
    assert torch.equal(out["one"], torch.tensor([1.0], dtype=torch.bfloat16))


def test_non_contiguous_is_refused(tmp_path: Path) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    with pytest.raises(ValueError, match="'x' is not contiguous"):
        et.save_file({"x": t}, tmp_path / "m.enct", key=KEY)
    with pytest.raises(ValueError, match="not contiguous"):
        et.save({"x": torch.zeros(4, 4)[:, ::2]}, key=KEY)
    assert not (tmp_path / "m.enct").exists()


def test_shared_memory_is_refused_by_save_file(tmp_path: Path) -> None:
    a = torch.zeros(4)
    with pytest.raises(RuntimeError, match="share memory"):
        et.save_file({"a": a, "b": a}, tmp_path / "m.enct", key=KEY)
    with pytest.raises(RuntimeError, match="share memory"):
        et.save_file({"a": a, "b": a[1:3]}, tmp_path / "m.enct", key=KEY)
    # Disjoint halves of one storage are distinct tensors.
    flat = torch.arange(8, dtype=torch.float32)
    et.save_file({"lo": flat[:4], "hi": flat[4:]}, tmp_path / "m.enct", key=KEY)
    out = et.load_file(tmp_path / "m.enct", key=KEY)
    assert torch.equal(out["lo"], flat[:4]) and torch.equal(out["hi"], flat[4:])


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match=r"dtype torch\.complex64"):
        et.save({"c": torch.zeros(2, dtype=torch.complex64)}, key=KEY)
    with pytest.raises(ValueError, match="sparse"):
        et.save({"s": torch.eye(3).to_sparse()}, key=KEY)
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        et.save({"n": np.zeros(3)}, key=KEY)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="dict"):
        et.save([torch.zeros(1)], key=KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="meta"):
        et.save({"m": torch.empty(3, device="meta")}, key=KEY)
    with pytest.raises(ValueError, match="give a key"):
        et.save({"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="plaintext"):
        et.save({"a": torch.zeros(1)}, key=KEY, plaintext=["b"])


# --------------------------------------------------------------------------------------------
# save_model / load_model


class Tied(torch.nn.Module):
    """An embedding tied to the output head, a batch norm (buffers incl. an int64 0-d one),
    and a non-persistent buffer (not in the state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.head = torch.nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.proj(self.emb(x))))


def trained(seed: int) -> Tied:
    torch.manual_seed(seed)
    m = Tied()
    m.train()
    m(torch.randint(0, 16, (32,)))  # moves the batch-norm statistics off their defaults
    m.eval()
    return m


def test_save_model_drops_tied_names_like_safetensors(tmp_path: Path) -> None:
    m = trained(0)
    et.save_model(m, tmp_path / "m.enct", key=KEY, metadata={"user": "x"})
    safetensors.torch.save_model(m, str(tmp_path / "m.safetensors"), metadata={"user": "x"})
    info = enctensor.inspect(tmp_path / "m.enct")
    with safetensors.safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        assert sorted(t["name"] for t in info["tensors"]) == sorted(f.keys())
        assert info["metadata"] == f.metadata() == {"user": "x", "head.weight": "emb.weight"}
        for t in info["tensors"]:
            assert same(et.load_file(tmp_path / "m.enct", key=KEY)[t["name"]], f.get_tensor(t["name"]))


def test_load_model_fills_the_models_own_storage(tmp_path: Path) -> None:
    src = trained(0)
    et.save_model(src, tmp_path / "m.enct", key=KEY)
    dst = trained(1)
    before = {n: t.data_ptr() for n, t in dst.state_dict().items()}
    params = {n: p for n, p in dst.named_parameters()}
    assert et.load_model(dst, tmp_path / "m.enct", key=KEY) == ([], [])
    for name, t in src.state_dict().items():
        assert same(dst.state_dict()[name], t), name
    # Decrypted in place: same storage, same Parameter objects, ties kept.
    assert {n: t.data_ptr() for n, t in dst.state_dict().items()} == before
    assert all(p is params[n] for n, p in dst.named_parameters())
    assert dst.head.weight is dst.emb.weight
    assert dst.bn.num_batches_tracked.item() == src.bn.num_batches_tracked.item() == 1
    x = torch.randint(0, 16, (5,))
    assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("misalign", [0, 4, 16, 40])
def test_load_model_into_misaligned_storage(tmp_path: Path, misalign: int) -> None:
    """Parameters wrapping numpy memory at any offset (the core reads into those through an
    aligned bounce buffer) get the same bytes, in place, on every chunk; and a flipped bit
    still zeroes them."""
    rng = np.random.default_rng(3)
    shapes = {"a": (300, 513), "b": (7,), "c": (1024, 257)}  # several chunks, odd lengths
    src = {k: torch.from_numpy(rng.random(s, dtype=np.float32)) for k, s in shapes.items()}
    path = tmp_path / "m.enct"
    et.save_file(src, path, key=KEY)
    m = torch.nn.Module()
    for k, s in shapes.items():
        n = int(np.prod(s))
        raw = np.zeros(n * 4 + 64, dtype=np.uint8)
        at = (misalign - raw.ctypes.data) % 64
        arr = raw[at : at + n * 4].view(np.float32).reshape(s)
        m.register_parameter(k, torch.nn.Parameter(torch.from_numpy(arr), requires_grad=False))
    ptrs = {k: p.data_ptr() for k, p in m.named_parameters()}
    assert et.load_model(m, path, key=KEY) == ([], [])
    for k, p in m.named_parameters():
        assert p.data_ptr() == ptrs[k] and p.data_ptr() % 64 == misalign
        assert torch.equal(p, src[k]), k
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        et.load_model(m, path, key=KEY)
    assert all(not p.any() for _, p in m.named_parameters())


def test_load_model_reads_files_written_by_safetensors_layout(tmp_path: Path) -> None:
    """A checkpoint that kept the other name of a tie (e.g. written by another tool) loads
    into the model's shared storage just the same."""
    src = trained(0)
    sd = src.state_dict()
    del sd["emb.weight"]  # keep head.weight instead
    et.save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.enct", key=KEY)
    dst = trained(1)
    assert et.load_model(dst, tmp_path / "m.enct", key=KEY) == ([], [])
    assert same(dst.emb.weight, src.emb.weight) and dst.head.weight is dst.emb.weight


def test_load_model_missing_and_unexpected_like_safetensors(tmp_path: Path) -> None:
    src = trained(0)
    sd = {k: v.clone() for k, v in src.state_dict().items()}  # both tied names, as clones
    del sd["proj.bias"]
    sd["extra"] = torch.ones(2)
    et.save_file(sd, tmp_path / "m.enct", key=KEY)
    safetensors.torch.save_file(sd, tmp_path / "m.safetensors")

    dst = trained(1)
    missing, unexpected = et.load_model(dst, tmp_path / "m.enct", key=KEY, strict=False)
    ref_missing, ref_unexpected = safetensors.torch.load_model(
        trained(1), tmp_path / "m.safetensors", strict=False
    )
    assert (sorted(missing), sorted(unexpected)) == (sorted(ref_missing), sorted(ref_unexpected))
    assert missing == ["proj.bias"] and sorted(unexpected) == ["extra", "head.weight"]
    assert same(dst.proj.weight, src.proj.weight) and same(dst.emb.weight, src.emb.weight)
    assert not same(dst.proj.bias, src.proj.bias)

    fresh = trained(1)
    snapshot = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        et.load_model(fresh, tmp_path / "m.enct", key=KEY)
    with pytest.raises(RuntimeError) as ref:
        safetensors.torch.load_model(trained(1), tmp_path / "m.safetensors")
    assert str(info.value).startswith("Error(s) in loading state_dict for Tied:")
    for line in (
        'Missing key(s) in state_dict: "proj.bias"',
        'Unexpected key(s) in state_dict: "extra", "head.weight"',
    ):
        assert line in str(info.value) and line in str(ref.value)
    # Refused before writing anything.
    assert all(same(fresh.state_dict()[k], v) for k, v in snapshot.items())


def test_load_model_size_and_dtype_mismatch(tmp_path: Path) -> None:
    et.save_file({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, tmp_path / "shape.enct", key=KEY)
    m = torch.nn.Linear(3, 5)
    w = m.weight.detach().clone()
    with pytest.raises(
        RuntimeError, match=r"size mismatch for weight: copying a param with shape torch.Size\(\[4, 3\]\)"
    ):
        et.load_model(m, tmp_path / "shape.enct", key=KEY, strict=False)
    assert torch.equal(m.weight, w)  # untouched
    et.save_file(
        {"weight": torch.zeros(5, 3, dtype=torch.bfloat16), "bias": torch.zeros(5)},
        tmp_path / "dt.enct",
        key=KEY,
    )
    with pytest.raises(
        RuntimeError, match=r"dtype mismatch for weight: the checkpoint holds BF16 \(torch.bfloat16\)"
    ):
        et.load_model(m, tmp_path / "dt.enct", key=KEY)
    assert torch.equal(m.weight, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_load_model_low_precision(tmp_path: Path, dtype: torch.dtype) -> None:
    src = torch.nn.Linear(8, 4)
    src.weight.data = sample(dtype, (4, 8), 3)
    src.bias.data = sample(dtype, (4,), 4)
    et.save_model(src, tmp_path / "m.enct", key=KEY)
    dst = torch.nn.Linear(8, 4).to(dtype)
    ptr = dst.weight.data_ptr()
    assert et.load_model(dst, tmp_path / "m.enct", key=KEY) == ([], [])
    assert same(dst.weight, src.weight) and same(dst.bias, src.bias) and dst.weight.data_ptr() == ptr


def test_load_model_into_non_contiguous_parameter(tmp_path: Path) -> None:
    src = torch.nn.Linear(4, 3)
    et.save_model(src, tmp_path / "m.enct", key=KEY)
    dst = torch.nn.Linear(4, 3)
    dst.weight = torch.nn.Parameter(torch.zeros(4, 3).t())  # odd strides: staged, then copy_
    assert not dst.weight.is_contiguous()
    et.load_model(dst, tmp_path / "m.enct", key=KEY)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_load_model_refuses_meta_parameters(tmp_path: Path) -> None:
    et.save_model(torch.nn.Linear(2, 2), tmp_path / "m.enct", key=KEY)
    with torch.device("meta"):
        m = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="meta device"):
        et.load_model(m, tmp_path / "m.enct", key=KEY)


# --------------------------------------------------------------------------------------------
# safe_open(framework="pt")


@pytest.mark.parametrize("framework", ["pt", "torch"])
def test_safe_open_get_tensor_every_dtype(tmp_path: Path, framework: str) -> None:
    tensors = every_dtype()
    et.save_file(tensors, tmp_path / "m.enct", key=KEY, chunk_size=4096)
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework=framework) as f:
        assert f.keys() == list(tensors)
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert isinstance(got, torch.Tensor) and same(got, t), name


def test_safe_open_get_slice_every_dtype(tmp_path: Path) -> None:
    tensors = every_dtype()
    et.save_file(tensors, tmp_path / "m.enct", key=KEY, chunk_size=4096)
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="pt", device="cpu") as f:
        for name, t in tensors.items():
            if t.dim() != 2 or not t.numel():
                continue
            for index in [(slice(1, None), slice(None, None, 2)), (1,), (slice(0, 0),), (Ellipsis, -1)]:
                got = f.get_slice(name)[index]
                assert isinstance(got, torch.Tensor)
                assert same(got, t[index]), (name, index)
        assert same(f.get_slice("scalar")[()], tensors["scalar"])
        assert same(f.get_slice("empty")[:, 1:], tensors["empty"][:, 1:])
        assert same(f.get_slice("empty_bf16")[1], tensors["empty_bf16"][1])


def test_safe_open_converter_adopts_numpy_buffers() -> None:
    """get_tensor's decrypted numpy buffer becomes the torch tensor's memory (no copy), for
    ml_dtypes bf16/fp8 too; arrays torch cannot adopt are copied."""
    import ml_dtypes

    from enctensor._frameworks import converter

    convert = converter("pt")
    for np_dtype, name, dtype in [
        (np.float32, "F32", torch.float32),
        (ml_dtypes.bfloat16, "BF16", torch.bfloat16),
        (ml_dtypes.float8_e4m3fn, "F8_E4M3", torch.float8_e4m3fn),
        (np.bool_, "BOOL", torch.bool),
    ]:
        a = np.zeros((3, 4), dtype=np_dtype)
        t = convert(a, name)
        assert t.dtype == dtype and t.shape == (3, 4) and t.data_ptr() == a.ctypes.data
    frozen = np.arange(4, dtype=np.int64)
    frozen.flags.writeable = False
    t = convert(frozen, "I64")  # torch would warn about a read-only buffer: copied instead
    assert torch.equal(t, torch.arange(4)) and t.data_ptr() != frozen.ctypes.data


@given(
    rows=st.integers(0, 40),
    cols=st.integers(1, 9),
    start=st.integers(-45, 45),
    stop=st.integers(-45, 45),
    step=st.integers(1, 4),
    col=st.integers(0, 8),
)
def test_safe_open_slices_match_torch_indexing(
    rows: int, cols: int, start: int, stop: int, step: int, col: int
) -> None:
    t = sample(torch.bfloat16, (rows, cols), rows * 10 + cols)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.enct"
        et.save_file({"t": t}, path, key=KEY, chunk_size=4096)
        with enctensor.safe_open(path, key=KEY, framework="pt") as f:
            index = (slice(start, stop, step), col % cols)
            assert same(f.get_slice("t")[index], t[index])


# --------------------------------------------------------------------------------------------
# Typed errors through the adapter


def test_wrong_key_through_the_adapter(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    et.save_model(trained(0), path, key=KEY)
    with pytest.raises(WrongKeyError):
        et.load_file(path, key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        et.load(path.read_bytes(), key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        et.load_model(trained(1), path, key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        enctensor.safe_open(path, key=OTHER_KEY, framework="pt")


def test_tampered_file_through_the_adapter(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    et.save_model(trained(0), path, key=KEY)
    tamper(path)
    last = enctensor.inspect(path)["tensors"][-1]["name"]
    with pytest.raises(IntegrityError):
        et.load_file(path, key=KEY)
    with pytest.raises(IntegrityError):
        et.load(path.read_bytes(), key=KEY)
    with enctensor.safe_open(path, key=KEY, framework="pt") as f:
        with pytest.raises(IntegrityError):
            f.get_tensor(last)
        with pytest.raises(IntegrityError):
            f.get_slice(last)[...]
    m = trained(1)
    with pytest.raises(IntegrityError):
        et.load_model(m, path, key=KEY)
    # No unverified plaintext is left in the model: what was being loaded is wiped.
    assert all(not t.any() for t in m.state_dict().values())


def test_missing_tensor_through_the_adapter(tmp_path: Path) -> None:
    et.save_file({"a": torch.zeros(2)}, tmp_path / "m.enct", key=KEY)
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="pt") as f:
        with pytest.raises(TensorNotFoundError, match="'nope'"):
            f.get_tensor("nope")
        with pytest.raises(KeyError):
            f.get_slice("nope")


# --------------------------------------------------------------------------------------------
# Optional dependency, devices


def test_import_enctensor_does_not_import_torch_and_missing_torch_is_explained() -> None:
    code = (
        "import sys\n"
        "import enctensor\n"
        "assert 'torch' not in sys.modules\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "try:\n"
        "    import enctensor.torch\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "try:\n"
        "    enctensor.safe_open('x', key=bytes(32), framework='pt')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("pip install '.[torch]'") == 2, out


def test_safe_open_device_argument(tmp_path: Path) -> None:
    et.save_file({"a": torch.arange(3)}, tmp_path / "m.enct", key=KEY)
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="pt", device="cpu") as f:
        assert f.get_tensor("a").device == torch.device("cpu")
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="numpy", device="cpu") as f:
        assert isinstance(f.get_tensor("a"), np.ndarray)
    with pytest.raises(ValueError, match="no devices"):
        enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="numpy", device="cuda:0")


@cuda
def test_cuda(tmp_path: Path) -> None:
    tensors = every_dtype()
    et.save_file(tensors, tmp_path / "m.enct", key=KEY)
    for device in ("cuda:0", 0, torch.device("cuda", 0)):
        out = et.load_file(tmp_path / "m.enct", key=KEY, device=device)
        for name, t in tensors.items():
            assert out[name].device == torch.device("cuda", 0) and same(out[name], t), name
    with enctensor.safe_open(tmp_path / "m.enct", key=KEY, framework="pt", device="cuda:0") as f:
        assert f.get_tensor("t_bfloat16").device.type == "cuda"
        assert same(f.get_slice("t_bfloat16")[1:], tensors["t_bfloat16"][1:])
    src = trained(0)
    et.save_model(src, tmp_path / "model.enct", key=KEY)
    dst = trained(1).cuda()
    assert et.load_model(dst, tmp_path / "model.enct", key=KEY) == ([], [])
    assert all(same(dst.state_dict()[n], t) for n, t in src.state_dict().items())
    assert dst.head.weight is dst.emb.weight and dst.emb.weight.device.type == "cuda"
    # Saving from the device works too.
    et.save_file({"g": tensors["t_float32"].cuda()}, tmp_path / "g.enct", key=KEY)
    assert same(et.load_file(tmp_path / "g.enct", key=KEY)["g"], tensors["t_float32"])
