"""The numpy-level API: round trips, safe_open and slices, inspect, errors, atomic saves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_DTYPES, KEY, OTHER_KEY, same, sample_array
from hypothesis import given
from hypothesis import strategies as st

import enctensor
from enctensor import FormatError, IntegrityError, TensorNotFoundError, WrongKeyError


def test_round_trip_every_dtype(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(tensors, path, key=KEY, metadata={"format": "np", "note": "ünïcode"}, chunk_size=4096)
    out = enctensor.load(path, key=KEY)
    assert list(out) == list(tensors)
    for name, arr in tensors.items():
        assert same(out[name], arr), name
        assert out[name].flags.c_contiguous and out[name].flags.writeable
        assert out[name].ctypes.data % 64 == 0
    with enctensor.safe_open(path, key=KEY) as f:
        assert f.metadata() == {"format": "np", "note": "ünïcode"}


def test_bytes_round_trip_and_several_keys(tensors: dict[str, np.ndarray]) -> None:
    data = enctensor.save_bytes(tensors, key=[KEY, OTHER_KEY])
    for k in (KEY, OTHER_KEY):
        out = enctensor.load_bytes(data, key=k)
        assert all(same(out[n], a) for n, a in tensors.items())
    with pytest.raises(WrongKeyError):
        enctensor.load_bytes(data, key=bytes(32))


def test_passphrase(tmp_path: Path) -> None:
    t = {"a": np.arange(5, dtype=np.int64)}
    path = tmp_path / "p.enct"
    enctensor.save(t, path, passphrase="correct horse battery", scrypt_log_n=10)
    assert same(enctensor.load(path, passphrase="correct horse battery")["a"], t["a"])
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        enctensor.load(path, passphrase="incorrect horse")
    with pytest.raises(WrongKeyError, match="passphrase"):
        enctensor.load(path, key=KEY)
    assert enctensor.inspect(path)["stanzas"] == ["scrypt"]


def test_selective_encryption_leaves_named_tensors_readable(tmp_path: Path) -> None:
    secret = np.full(1000, 7, dtype=np.int32)
    public = np.arange(1000, dtype=np.int32)
    path = tmp_path / "s.enct"
    enctensor.save({"secret": secret, "public": public}, path, key=KEY, plaintext=["public"])
    raw = path.read_bytes()
    assert public.tobytes() in raw
    assert secret.tobytes() not in raw
    info = enctensor.inspect(path)
    assert [t["encrypted"] for t in info["tensors"]] == [True, False]
    out = enctensor.load(path, key=KEY)
    assert same(out["public"], public) and same(out["secret"], secret)
    # The clear tensor is still authenticated.
    at = raw.index(public.tobytes())
    bad = bytearray(raw)
    bad[at + 10] ^= 1
    with pytest.raises(IntegrityError, match="public"):
        enctensor.load_bytes(bytes(bad), key=KEY)


def test_ciphertext_does_not_contain_plaintext(tensors: dict[str, np.ndarray]) -> None:
    data = enctensor.save_bytes(tensors, key=KEY, chunk_size=4096)
    assert tensors["multi_chunk"].tobytes()[:4096] not in data


def test_inspect_needs_no_key(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(tensors, path, key=KEY, metadata={"a": "b"})
    info = enctensor.inspect(path)
    assert info["format_version"] == 1
    assert info["metadata"] == {"a": "b"}
    assert info["stanzas"] == ["key"]
    assert info["file_size"] == path.stat().st_size
    rows = {t["name"]: t for t in info["tensors"]}
    assert rows["scalar"] == {"name": "scalar", "dtype": "F32", "shape": [], "encrypted": True, "nbytes": 4}
    assert rows["t_bfloat16"]["dtype"] == "BF16"
    assert rows["t_float8_e4m3fn"]["dtype"] == "F8_E4M3"
    assert enctensor.inspect_bytes(path.read_bytes()) == info


def test_safe_open_get_tensor_and_keys(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(tensors, path, key=KEY)
    with enctensor.safe_open(path, key=KEY, framework="numpy") as f:
        assert f.keys() == list(tensors)
        for name, arr in tensors.items():
            assert same(f.get_tensor(name), arr)
        with pytest.raises(TensorNotFoundError, match="nope") as exc:
            f.get_tensor("nope")
        assert isinstance(exc.value, KeyError)
        sl = f.get_slice("multi_chunk")
        assert sl.get_shape() == [3000, 7] and sl.get_dtype() == "F32"
    with pytest.raises(ValueError, match="closed"):
        f.get_tensor("scalar")


INDEXES = [
    np.s_[:],
    np.s_[5],
    np.s_[-1],
    np.s_[10:20],
    np.s_[10:20, 2:5],
    np.s_[::-3, 1],
    np.s_[..., 3],
    np.s_[2999, ...],
    np.s_[100:90],
    np.s_[-500:, ::2],
    np.s_[1000:1001, -1:],
]


@pytest.mark.parametrize("index", INDEXES, ids=str)
def test_get_slice_matches_numpy(tmp_path: Path, index: object) -> None:
    arr = sample_array(np.float32, (3000, 7), 1)
    path = tmp_path / "m.enct"
    enctensor.save({"a": arr}, path, key=KEY, chunk_size=4096)
    with enctensor.safe_open(path, key=KEY) as f:
        got = f.get_slice("a")[index]
    want = arr[index]
    assert same(np.ascontiguousarray(got), np.ascontiguousarray(want))


@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
    data=st.data(),
)
def test_get_slice_random_indexes(shape: tuple[int, ...], data: st.DataObject) -> None:
    arr = sample_array(np.int16, shape, 3)
    blob = enctensor.save_bytes({"a": arr}, key=KEY, chunk_size=4096)
    index = tuple(
        data.draw(
            st.one_of(
                st.slices(n) if n else st.just(slice(None)),
                st.integers(-n, n - 1) if n else st.just(slice(None)),
            )
        )
        for n in shape
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.enct")
        Path(p).write_bytes(blob)
        with enctensor.safe_open(p, key=KEY) as f:
            got = f.get_slice("a")[index]
    assert same(np.ascontiguousarray(got), np.ascontiguousarray(arr[index]))


def test_slice_reads_only_covering_chunks(tmp_path: Path) -> None:
    """A slice of an intact region loads even though another chunk of the tensor is corrupt:
    proof that only the covering chunks are read and verified."""
    arr = sample_array(np.uint8, (64, 4096), 5)  # 64 chunks of 4 KiB, one row per chunk
    path = tmp_path / "m.enct"
    enctensor.save({"a": arr}, path, key=KEY, chunk_size=4096)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # last row's chunk
    path.write_bytes(bytes(raw))
    with enctensor.safe_open(path, key=KEY) as f:
        assert same(f.get_slice("a")[3:5], arr[3:5])
        with pytest.raises(IntegrityError, match="chunk 63"):
            f.get_slice("a")[63]
        with pytest.raises(IntegrityError):
            f.get_tensor("a")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_each_dtype_alone(dtype: object) -> None:
    arr = sample_array(dtype, (4, 3))
    out = enctensor.load_bytes(enctensor.save_bytes({"x": arr}, key=KEY), key=KEY)["x"]
    assert same(out, arr)


def test_big_endian_input_is_stored_little_endian() -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    out = enctensor.load_bytes(enctensor.save_bytes({"x": arr}, key=KEY), key=KEY)["x"]
    assert out.dtype == np.dtype("<i4") and np.array_equal(out, arr)


# ---- errors ---------------------------------------------------------------------------------


def test_bad_arguments_get_clear_errors(tmp_path: Path) -> None:
    a = {"a": np.zeros(4, np.float32)}
    with pytest.raises(ValueError, match=r"exactly 32 bytes, got 16"):
        enctensor.save(a, tmp_path / "x", key=b"k" * 16)
    with pytest.raises(TypeError, match="got a str") as e:
        enctensor.save(a, tmp_path / "x", key="k" * 32)  # type: ignore[arg-type]
    assert "k" * 32 not in str(e.value)
    with pytest.raises(ValueError, match="give a key"):
        enctensor.save(a, tmp_path / "x")
    with pytest.raises(ValueError, match="not C-contiguous"):
        enctensor.save({"a": np.zeros((4, 4))[:, ::2]}, tmp_path / "x", key=KEY)
    with pytest.raises(TypeError, match="object array"):
        enctensor.save({"a": np.array([1, "x"], dtype=object)}, tmp_path / "x", key=KEY)
    with pytest.raises(TypeError, match=r"complex128 is not supported"):
        enctensor.save({"a": np.zeros(3, np.complex128)}, tmp_path / "x", key=KEY)
    with pytest.raises(TypeError, match="numpy array"):
        enctensor.save({"a": [1, 2]}, tmp_path / "x", key=KEY)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="metadata"):
        enctensor.save(a, tmp_path / "x", key=KEY, metadata={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="chunk_size"):
        enctensor.save(a, tmp_path / "x", key=KEY, chunk_size=1000)
    with pytest.raises(ValueError, match="not being saved"):
        enctensor.save(a, tmp_path / "x", key=KEY, plaintext=["b"])
    with pytest.raises(ValueError, match="either a key or a passphrase"):
        enctensor.load_bytes(b"", key=KEY, passphrase="x")
    assert not list(tmp_path.iterdir()), "failed saves leave nothing behind"


def test_missing_file_and_non_enctensor_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.enct"):
        enctensor.load(tmp_path / "nothere.enct", key=KEY)
    with pytest.raises(FileNotFoundError):
        enctensor.inspect(tmp_path / "nothere.enct")
    st_file = tmp_path / "plain.safetensors"
    import safetensors.numpy

    safetensors.numpy.save_file({"a": np.zeros(3, np.float32)}, st_file)
    with pytest.raises(FormatError, match="magic"):
        enctensor.load(st_file, key=KEY)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="shorter than"):
        enctensor.load(empty, key=KEY)


def test_safetensors_refuses_enctensor_files(tmp_path: Path) -> None:
    """Ciphertext can never be mistaken for weights by a plaintext loader."""
    import safetensors.numpy

    path = tmp_path / "m.safetensors"
    enctensor.save({"a": np.zeros(3, np.float32)}, path, key=KEY)
    with pytest.raises(Exception, match=r"(?i)header"):
        safetensors.numpy.load_file(path)


def test_wrong_key_returns_nothing(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    path = tmp_path / "m.enct"
    enctensor.save(tensors, path, key=KEY)
    with pytest.raises(WrongKeyError, match="no key opens") as exc:
        enctensor.load(path, key=OTHER_KEY)
    assert KEY.hex() not in str(exc.value) and OTHER_KEY.hex() not in str(exc.value)
    assert str(path) in str(exc.value)


def test_flipped_bits_anywhere_are_detected(tmp_path: Path) -> None:
    arrays = {"a": sample_array(np.float32, (2000,), 1), "b": sample_array(np.int8, (9000,), 2)}
    blob = enctensor.save_bytes(arrays, key=KEY, chunk_size=4096, metadata={"k": "v"})
    info = enctensor.inspect_bytes(blob)
    assert info["file_size"] == len(blob)
    step = max(1, len(blob) // 400)
    outcomes: dict[str, int] = {}
    for pos in [*range(300), *range(300, len(blob), step), len(blob) - 1]:
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises((FormatError, WrongKeyError, IntegrityError)) as exc:
            enctensor.load_bytes(bytes(bad), key=KEY)
        outcomes[type(exc.value).__name__] = outcomes.get(type(exc.value).__name__, 0) + 1
    assert outcomes.get("IntegrityError", 0) > 0 and outcomes.get("FormatError", 0) > 0


def test_truncated_and_extended_files(tmp_path: Path) -> None:
    blob = enctensor.save_bytes({"a": np.arange(5000, dtype=np.int32)}, key=KEY)
    for cut in (1, 23, 24, 200, len(blob) - 1):
        with pytest.raises(FormatError):
            enctensor.load_bytes(blob[:cut], key=KEY)
    with pytest.raises(FormatError, match="trailing"):
        enctensor.load_bytes(blob + b"\0", key=KEY)


# ---- atomic saves ---------------------------------------------------------------------------


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    enctensor.save({"a": np.arange(3)}, path, key=KEY)
    enctensor.save({"b": np.arange(4)}, path, key=KEY)
    assert list(enctensor.load(path, key=KEY)) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.enct"]


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    enctensor.save({"a": np.arange(3)}, path, key=KEY)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        # Fails inside the Rust writer (names too long), after the temp file exists.
        enctensor.save({"x" * 5000: np.arange(3)}, path, key=KEY)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.enct"]


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        enctensor.save({"a": np.arange(3)}, tmp_path / "missing" / "m.enct", key=KEY)


# ---- concurrency ----------------------------------------------------------------------------


def test_many_threads_share_one_handle(tmp_path: Path) -> None:
    arrays = {f"t{i}": sample_array(np.float32, (257, 33), i) for i in range(16)}
    path = tmp_path / "m.enct"
    enctensor.save(arrays, path, key=KEY, chunk_size=4096)
    errors: list[AssertionError] = []
    with enctensor.safe_open(path, key=KEY) as f:

        def work(seed: int) -> None:
            try:
                for j in range(20):
                    name = f"t{(seed + j) % 16}"
                    assert same(f.get_tensor(name), arrays[name])
                    assert same(f.get_slice(name)[seed : seed + 9], arrays[name][seed : seed + 9])
            except AssertionError as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_file_replaced_while_open_keeps_serving_old_contents(tmp_path: Path) -> None:
    path = tmp_path / "m.enct"
    old = sample_array(np.float64, (1000,), 1)
    enctensor.save({"a": old}, path, key=KEY)
    with enctensor.safe_open(path, key=KEY) as f:
        enctensor.save({"a": sample_array(np.float64, (1000,), 2)}, path, key=KEY)
        assert same(f.get_tensor("a"), old)


def test_file_truncated_under_an_open_handle_is_a_typed_error(tmp_path: Path) -> None:
    """Without the SIGBUS guard this test would kill the interpreter."""
    path = tmp_path / "m.enct"
    arr = sample_array(np.uint8, (4 << 20,), 4)
    enctensor.save({"a": arr}, path, key=KEY)
    with enctensor.safe_open(path, key=KEY) as f:
        os.truncate(path, 8192)
        with pytest.raises(FormatError, match="truncated"):
            f.get_tensor("a")
        with pytest.raises(FormatError, match="truncated"):
            f.get_slice("a")[100:200]
    enctensor.save({"a": arr}, path, key=KEY)
    assert same(enctensor.load(path, key=KEY)["a"], arr)


def test_overlapping_destinations_are_refused() -> None:
    from enctensor import _core
    from enctensor._alloc import aligned_empty

    blob = enctensor.save_bytes({"a": np.zeros(256, np.float32), "b": np.zeros(256, np.float32)}, key=KEY)
    reader = _core.Reader.from_bytes(blob, key=KEY)
    buf = aligned_empty(1536)
    with pytest.raises(ValueError, match="overlap"):
        reader.read_many_into([(0, buf[:1024]), (1, buf[512:1536])])
    with pytest.raises(ValueError, match="overlap"):
        reader.read_many_into([(0, buf[:1024]), (0, buf[:1024])])
    reader.read_many_into([(0, buf[:1024]), (1, aligned_empty(1024))])


def test_small_tensors_loaded_into_shared_blocks_are_separate_and_aligned(tmp_path: Path) -> None:
    """Small tensors share allocations (blocks of a few MiB) when loaded: each must still be
    its own 64-byte aligned, writable array that no other tensor overlaps."""
    sizes = [1, 3, 64, 65, 1000, 70_000, (1 << 20) - 4, 1 << 20, 5]  # bytes, around the limits
    tensors = {f"t{i}": np.zeros(n, dtype=np.uint8) for i, n in enumerate(sizes)}
    enctensor.save(tensors, tmp_path / "m.enct", key=KEY)
    got = enctensor.load(tmp_path / "m.enct", key=KEY)
    assert got["t0"].base is got["t5"].base is got["t8"].base  # one block under 1 MiB each
    assert got["t7"].base is not got["t0"].base  # 1 MiB: an allocation of its own
    for i, name in enumerate(tensors):
        assert got[name].ctypes.data % 64 == 0 and got[name].flags.writeable
        got[name][...] = i + 1
    for i, name in enumerate(tensors):
        assert got[name].size == sizes[i] and (got[name] == i + 1).all(), name


def test_load_bytes_lends_the_buffer_instead_of_copying_it() -> None:
    """The reader keeps a reference to the ``bytes`` object (no copy of a file held in memory)
    and so keeps it alive after the caller dropped it."""
    import gc
    import sys

    from enctensor import _core

    data = enctensor.save_bytes({"a": np.arange(1000, dtype=np.int32)}, key=KEY)
    before = sys.getrefcount(data)
    reader = _core.Reader.from_bytes(data, key=KEY)
    assert sys.getrefcount(data) == before + 1
    del data
    gc.collect()
    out = bytearray(4000)
    reader.read_into(0, out)
    assert bytes(out) == np.arange(1000, dtype=np.int32).tobytes()
