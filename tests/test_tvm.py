"""enctensor.tvm: encrypted parameter dicts for TVM, adopted through DLPack without a copy;
a Relax model compiled with LLVM runs on decrypted parameters; safe_open(framework="tvm")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tvm
import tvm.runtime
from conftest import ALL_DTYPES, KEY, OTHER_KEY, same, sample_array
from tvm import relax

import enctensor
import enctensor.tvm as ev
from enctensor import IntegrityError, TensorNotFoundError, WrongKeyError

TVM_NAMES = {
    "bool": "bool",
    "uint8": "uint8",
    "int8": "int8",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "int16": "int16",
    "uint16": "uint16",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int32": "int32",
    "uint32": "uint32",
    "float32": "float32",
    "int64": "int64",
    "uint64": "uint64",
    "float64": "float64",
}


def arrays() -> dict[str, np.ndarray]:
    out = {f"t_{np.dtype(d).name}": sample_array(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 4), dtype=np.int32)
    out["empty_bf16"] = np.zeros((2, 0), dtype=ml_dtypes.bfloat16)
    out["multi_chunk"] = sample_array(np.float32, (3000, 7), 99)  # 84 kB: 21 chunks of 4 KiB
    return out


def as_tvm(a: np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(a)


def check(t: tvm.runtime.Tensor, a: np.ndarray) -> None:
    """``t`` holds exactly ``a``: TVM dtype, shape and bytes."""
    assert isinstance(t, tvm.runtime.Tensor)
    assert str(t.dtype) == TVM_NAMES[a.dtype.name]
    assert tuple(t.shape) == a.shape
    assert same(t.numpy(), a)


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_round_trip_every_dtype_from_tvm_tensors(tmp_path: Path) -> None:
    src = arrays()
    params = {name: as_tvm(a) for name, a in src.items()}
    ev.save(params, tmp_path / "p.enct", key=KEY, metadata={"format": "tvm"}, chunk_size=4096)
    out = ev.load(tmp_path / "p.enct", key=KEY)
    assert list(out) == list(src)
    for name, a in src.items():
        check(out[name], a)
    info = enctensor.inspect(tmp_path / "p.enct")
    assert info["metadata"] == {"format": "tvm"}
    assert [t["dtype"] for t in info["tensors"][:15]] == [
        "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "I16", "U16", "F16", "BF16",
        "I32", "U32", "F32", "I64", "U64", "F64",
    ]  # fmt: skip


def test_round_trip_from_numpy_and_mixed(tmp_path: Path) -> None:
    src = arrays()
    mixed = {name: (as_tvm(a) if i % 2 else a) for i, (name, a) in enumerate(src.items())}
    ev.save(mixed, tmp_path / "p.enct", key=KEY)
    out = ev.load(tmp_path / "p.enct", key=KEY)
    for name, a in src.items():
        check(out[name], a)
    # The numpy API reads what the TVM adapter wrote, and the other way round.
    back = enctensor.load(tmp_path / "p.enct", key=KEY)
    assert all(same(back[n], a) for n, a in src.items())
    enctensor.save(src, tmp_path / "np.enct", key=KEY)
    assert all(same(ev.load(tmp_path / "np.enct", key=KEY)[n].numpy(), a) for n, a in src.items())


def test_bytes_round_trip() -> None:
    src = arrays()
    data = ev.save_bytes({n: as_tvm(a) for n, a in src.items()}, key=KEY)
    assert isinstance(data, bytes) and data[:4] == b"\x89ETS"
    out = ev.load_bytes(data, key=KEY)
    for name, a in src.items():
        check(out[name], a)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_no_copy_between_decryption_and_tvm(dtype: object) -> None:
    """Both directions share memory with TVM: load() decrypts into a TVM tensor through the
    byte view DLPack gives numpy; safe_open's converter has TVM adopt the decrypted numpy
    buffer (bf16 and fp8 as bytes re-typed by a view)."""
    from enctensor._alloc import aligned_empty
    from enctensor._dtypes import format_dtype

    a = sample_array(dtype, (6, 7), 3)
    t = tvm.runtime.empty(a.shape, TVM_NAMES[a.dtype.name])
    view = ev._bytes_of(t, a.nbytes)
    assert view.ctypes.data == t.data_ptr() and view.nbytes == a.nbytes
    view[:] = a.reshape(-1).view(np.uint8)
    check(t, a)

    buf = aligned_empty(a.nbytes)
    buf[:] = a.reshape(-1).view(np.uint8)
    adopted = ev._adopt(buf, format_dtype(a.dtype), a.shape)
    assert adopted.data_ptr() == buf.ctypes.data
    check(adopted, a)
    buf[:] = 0  # the same memory: TVM sees the change
    assert not adopted.numpy().reshape(-1).view(np.uint8).any()


def test_loaded_tensors_are_aligned_and_distinct(tmp_path: Path) -> None:
    src = arrays()
    ev.save(src, tmp_path / "p.enct", key=KEY)
    out = ev.load(tmp_path / "p.enct", key=KEY)
    live = [out[n] for n, a in src.items() if a.nbytes]
    assert all(t.data_ptr() % 64 == 0 for t in live)
    assert len({t.data_ptr() for t in live}) == len(live)


def test_adopted_buffers_stay_alive(tmp_path: Path) -> None:
    import gc

    a = sample_array(np.float32, (256, 256), 7)
    ev.save({"w": a}, tmp_path / "p.enct", key=KEY)
    with enctensor.safe_open(tmp_path / "p.enct", key=KEY, framework="tvm") as f:
        t = f.get_tensor("w")  # adopts a numpy buffer nothing else refers to
    gc.collect()
    np.full((256, 256), 0.5, np.float32)  # would reuse the memory if it had been freed
    assert same(t.numpy(), a)


def test_save_refuses_bad_inputs() -> None:
    with pytest.raises(TypeError, match="dtype int4"):
        ev.save_bytes({"q": tvm.runtime.empty((4,), "int4")}, key=KEY)
    with pytest.raises(TypeError, match=r"tvm\.runtime\.Tensor or a numpy array"):
        ev.save_bytes({"x": [1, 2]}, key=KEY)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="not C-contiguous"):
        ev.save_bytes({"x": np.zeros((4, 4))[:, ::2]}, key=KEY)
    with pytest.raises(ValueError, match="give a key"):
        ev.save_bytes({"x": np.zeros(2)})


def test_passphrase_and_plaintext(tmp_path: Path) -> None:
    src = {"w": sample_array(ml_dtypes.bfloat16, (4, 4)), "b": sample_array(np.float32, (4,), 1)}
    ev.save(src, tmp_path / "p.enct", passphrase="pw", scrypt_log_n=10, plaintext=["b"])
    out = ev.load(tmp_path / "p.enct", passphrase="pw")
    check(out["w"], src["w"])
    check(out["b"], src["b"])
    assert [t["encrypted"] for t in enctensor.inspect(tmp_path / "p.enct")["tensors"]] == [True, False]


def test_numpy_api_options_pass_through(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    src = {"w": sample_array(np.float32, (4, 4))}
    ev.save(src, tmp_path / "p.enct", key=KEY, sign_with=signer)
    data = ev.save_bytes(src, key=KEY, sign_with=signer)
    check(ev.load(tmp_path / "p.enct", key=KEY, verify_with=signer.public_key())["w"], src["w"])
    check(ev.load_bytes(data, key=KEY, verify_with=signer.public_key())["w"], src["w"])
    with pytest.raises(IntegrityError, match="signature"):
        ev.load(tmp_path / "p.enct", key=KEY, verify_with=stranger.public_key())


# --------------------------------------------------------------------------------------------
# End to end: a Relax MLP compiled for LLVM, run on decrypted parameters


def mlp() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    w1 = relax.Var("w1", relax.TensorType((16, 32), "float32"))
    b1 = relax.Var("b1", relax.TensorType((32,), "float32"))
    w2 = relax.Var("w2", relax.TensorType((32, 8), "float32"))
    b2 = relax.Var("b2", relax.TensorType((8,), "float32"))
    with bb.function("main", [x, w1, b1, w2, b2]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.add(relax.op.matmul(x, w1), b1)))
            out = bb.emit_output(relax.op.add(relax.op.matmul(h, w2), b2))
        bb.emit_func_output(out)
    return bb.get()


def test_relax_mlp_runs_on_decrypted_params(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,)}
    plain = {n: tvm.runtime.tensor(rng.standard_normal(s).astype("float32")) for n, s in shapes.items()}
    ev.save(plain, tmp_path / "mlp.enct", key=KEY)
    # Also through TVM's own .params format, to compare with the usual way of shipping them.
    params_file = tmp_path / "mlp.params"
    tvm.runtime.save_param_dict_to_file(plain, str(params_file))

    ex = tvm.compile(mlp(), target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(rng.standard_normal((4, 16)).astype("float32"))

    decrypted = ev.load(tmp_path / "mlp.enct", key=KEY, device=tvm.cpu())
    from_params = tvm.runtime.load_param_dict_from_file(str(params_file))
    expected = vm["main"](x, *(plain[n] for n in shapes)).numpy()
    got = vm["main"](x, *(decrypted[n] for n in shapes)).numpy()
    assert np.array_equal(got, expected)
    assert np.array_equal(vm["main"](x, *(from_params[n] for n in shapes)).numpy(), expected)
    assert np.abs(expected).sum() > 0


# --------------------------------------------------------------------------------------------
# safe_open(framework="tvm")


def test_safe_open_get_tensor_and_slices(tmp_path: Path) -> None:
    src = arrays()
    ev.save(src, tmp_path / "p.enct", key=KEY, chunk_size=4096)
    with enctensor.safe_open(tmp_path / "p.enct", key=KEY, framework="tvm", device="cpu") as f:
        assert f.keys() == list(src)
        for name, a in src.items():
            t = f.get_tensor(name)
            check(t, a)
            if a.nbytes:
                assert t.data_ptr() % 64 == 0
            if a.ndim == 2 and a.size:
                for index in [(slice(1, None), slice(None, None, 2)), (1,), (slice(0, 0),), (Ellipsis, -1)]:
                    check(f.get_slice(name)[index], np.ascontiguousarray(a[index]))
        check(f.get_slice("scalar")[()], src["scalar"])
        check(
            f.get_slice("multi_chunk")[1000:2000:3, 2:],
            np.ascontiguousarray(src["multi_chunk"][1000:2000:3, 2:]),
        )


def test_safe_open_converter_copies_only_unadoptable_arrays() -> None:
    from enctensor._alloc import aligned_empty
    from enctensor._frameworks import converter

    convert = converter("tvm")
    aligned = aligned_empty(64).view(np.float32)
    aligned[:] = np.arange(16, dtype=np.float32)
    assert convert(aligned, "F32").data_ptr() == aligned.ctypes.data
    unaligned = aligned_empty(68)[4:].view(np.float32)
    unaligned[:] = np.arange(16, dtype=np.float32)
    t = convert(unaligned, "F32")
    assert t.data_ptr() != unaligned.ctypes.data and t.data_ptr() % 64 == 0
    assert np.array_equal(t.numpy(), np.arange(16, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Typed errors through the adapter


def test_wrong_key_through_the_adapter(tmp_path: Path) -> None:
    ev.save({"w": np.ones(3, np.float32)}, tmp_path / "p.enct", key=KEY)
    with pytest.raises(WrongKeyError):
        ev.load(tmp_path / "p.enct", key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        ev.load_bytes((tmp_path / "p.enct").read_bytes(), key=OTHER_KEY)
    with pytest.raises(WrongKeyError):
        enctensor.safe_open(tmp_path / "p.enct", key=OTHER_KEY, framework="tvm")


def test_tampered_file_through_the_adapter(tmp_path: Path) -> None:
    ev.save({"w": sample_array(np.float32, (64, 64))}, tmp_path / "p.enct", key=KEY, chunk_size=4096)
    tamper(tmp_path / "p.enct")
    with pytest.raises(IntegrityError):
        ev.load(tmp_path / "p.enct", key=KEY)
    with pytest.raises(IntegrityError):
        ev.load_bytes((tmp_path / "p.enct").read_bytes(), key=KEY)
    with enctensor.safe_open(tmp_path / "p.enct", key=KEY, framework="tvm") as f:
        with pytest.raises(IntegrityError):
            f.get_tensor("w")
        with pytest.raises(IntegrityError):
            f.get_slice("w")[-1]
        # Chunks other than the modified one still verify (4 chunks of 4 KiB).
        assert np.array_equal(f.get_slice("w")[:2].numpy(), sample_array(np.float32, (64, 64))[:2])


def test_missing_tensor_through_the_adapter(tmp_path: Path) -> None:
    ev.save({"w": np.ones(3, np.float32)}, tmp_path / "p.enct", key=KEY)
    with enctensor.safe_open(tmp_path / "p.enct", key=KEY, framework="tvm") as f:
        with pytest.raises(TensorNotFoundError, match="'nope'"):
            f.get_tensor("nope")
        with pytest.raises(KeyError):
            f.get_slice("nope")


def test_import_enctensor_does_not_import_tvm_and_missing_tvm_is_explained() -> None:
    code = (
        "import sys\n"
        "import enctensor\n"
        "assert 'tvm' not in sys.modules\n"
        "sys.modules['tvm'] = None  # as if TVM were not installed\n"
        "try:\n"
        "    import enctensor.tvm\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "try:\n"
        "    enctensor.safe_open('x', key=bytes(32), framework='tvm')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("pip install '.[tvm]'") == 2, out
