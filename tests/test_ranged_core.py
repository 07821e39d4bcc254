"""The core's ranged-read API (``Reader.from_front``, ``span``, ``read_range_from``,
``prefix_len``) given hostile or mistaken inputs, and remote slices against local ones.

A caller hands the core bytes it fetched itself: every mismatch between what it says the
bytes are and what they are is refused with a typed error, never a panic or unchecked
plaintext, and the destination is zeroed."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
from conftest import KEY
from hypothesis import given
from hypothesis import strategies as st

import enctensor
from enctensor import _core


def file_bytes(tensors: dict[str, np.ndarray], chunk_size: int = 4096) -> bytes:
    return enctensor.save_bytes(tensors, key=KEY, chunk_size=chunk_size)


def front_reader(data: bytes) -> _core.Reader:
    need = _core.prefix_len(data[:64], len(data))
    return _core.Reader.from_front(data[:need], len(data), "test://x", key=KEY)


def test_the_front_must_reach_the_data() -> None:
    data = file_bytes({"a": np.arange(10_000, dtype=np.int32)})
    need = _core.prefix_len(data[:32], len(data))
    assert need % 4096 == 0 and need < len(data)
    with pytest.raises(ValueError, match=r"the first .* bytes of the file are needed"):
        _core.Reader.from_front(data[: need - 1], len(data), "test://x", key=KEY)
    # A length that disagrees with the header: truncation or trailing data.
    with pytest.raises(enctensor.FormatError, match="truncated"):
        _core.Reader.from_front(data[:need], len(data) - 1, "test://x", key=KEY)
    with pytest.raises(enctensor.FormatError, match="trailing data"):
        _core.Reader.from_front(data[:need], len(data) + 1, "test://x", key=KEY)


def test_a_hostile_preamble_cannot_ask_for_more_than_the_file() -> None:
    data = bytearray(file_bytes({"a": np.arange(10, dtype=np.int32)}))
    data[24:32] = (1 << 40).to_bytes(8, "little")  # data_offset far past the end
    with pytest.raises(enctensor.FormatError, match="past the end"):
        _core.prefix_len(bytes(data[:64]), len(data))
    with pytest.raises(enctensor.FormatError, match="not an enctensor file"):
        _core.prefix_len(b"{" + bytes(63), 64)
    with pytest.raises(enctensor.FormatError, match="shorter than the 32-byte preamble"):
        _core.prefix_len(b"", 0)


def test_fetched_bytes_that_do_not_hold_the_chunks_are_refused() -> None:
    a = np.arange(10_000, dtype=np.int32)  # 40,000 bytes: 10 chunks of 4 KiB
    data = file_bytes({"a": a})
    r = front_reader(data)
    lo, hi = r.span(0, 0, a.nbytes)
    assert hi == len(data)
    dst = bytearray(b"\xff" * a.nbytes)
    with pytest.raises(ValueError, match="do not hold chunk"):
        r.read_range_from(0, 0, dst, lo, data[lo : hi - 1])
    assert dst == bytes(len(dst))
    with pytest.raises(ValueError, match="do not hold chunk"):
        r.read_range_from(0, 0, dst, lo + 1, data[lo + 1 : hi])
    # Bytes at the wrong offset that still cover the range: the tags refuse them.
    with pytest.raises(enctensor.IntegrityError, match="failed authentication"):
        r.read_range_from(0, 0, dst, lo - 16, data[lo:hi] + bytes(16))
    assert dst == bytes(len(dst))
    with pytest.raises(ValueError, match="outside tensor"):
        r.read_range_from(0, 4, bytearray(a.nbytes), lo, data[lo:hi])
    with pytest.raises(ValueError, match="outside tensor"):
        r.span(0, 5, 4)
    with pytest.raises(ValueError, match="out of range"):
        r.span(3, 0, 0)
    with pytest.raises(TypeError):
        r.read_range_from(0, 0, dst, lo, bytearray(data[lo:hi]))  # must be immutable bytes
    r.read_range_from(0, 0, dst, lo, data[lo:hi])
    assert bytes(dst) == a.tobytes()


def test_a_front_only_reader_refuses_whole_file_reads() -> None:
    data = file_bytes({"a": np.arange(100, dtype=np.int32)})
    r = front_reader(data)
    for call in (
        lambda: r.read_into(0, bytearray(400)),
        r.verify,
        lambda: r.read_range_into(0, 0, bytearray(4)),
    ):
        with pytest.raises(ValueError, match="is read by ranges"):
            call()


def test_the_span_of_an_empty_tensor_and_of_the_last_chunk_include_what_must_be_checked() -> None:
    data = file_bytes({"e": np.zeros(0, np.int8), "a": np.arange(5, dtype=np.int8), "b": np.ones(3, np.int8)})
    r = front_reader(data)
    need = _core.prefix_len(data[:32], len(data))
    assert r.span(0, 0, 0) == (need, need)  # empty, and "a" begins at the same offset
    assert r.span(1, 0, 5) == (need, need + 64)  # 5 bytes and the padding up to "b"
    assert r.span(2, 0, 3) == (need + 64, len(data))
    r.read_range_from(0, 0, bytearray(), need, b"")  # chunk 0 of the empty tensor verifies
    tampered = bytearray(data)
    tampered[need + 7] = 1  # padding after "a"
    with pytest.raises(enctensor.FormatError, match='padding before tensor "b"'):
        r.read_range_from(1, 0, bytearray(5), need, bytes(tampered[need : need + 64]))


@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 40),
    chunk_log=st.integers(12, 14),
    lo=st.integers(0, 299),
    n=st.integers(0, 300),
    step=st.integers(1, 3),
)
def test_remote_slices_equal_local_slices(
    rows: int, cols: int, chunk_log: int, lo: int, n: int, step: int
) -> None:
    a = np.random.default_rng(rows * cols).standard_normal((rows, cols)).astype(np.float32)
    data = file_bytes({"pad": np.ones(3, np.int8), "a": a}, chunk_size=1 << chunk_log)
    url = f"memory://ranged/{uuid.uuid4().hex}.enct"
    fsspec.filesystem("memory").pipe_file(url, data)
    try:
        with enctensor.safe_open(url, key=KEY) as f:
            got = f.get_slice("a")[lo : lo + n : step, cols // 3 :]
        assert np.array_equal(got, a[lo : lo + n : step, cols // 3 :])
    finally:
        fsspec.filesystem("memory").rm_file(url)


def test_names_next_to_a_url_stay_files_in_its_directory() -> None:
    from enctensor._remote import UrlPath

    index = UrlPath("https://host/models/m.enct.index.json")
    assert str(index.parent / "m-1.enct") == "https://host/models/m-1.enct"
    assert index.name == "m.enct.index.json"
    for name in ("a?x=1", "a#b", "..%2Fsecret", "a/b"):
        with pytest.raises(ValueError, match="cannot name a file next to"):
            index.parent / name


def test_a_remote_whole_read_refuses_a_destination_of_another_size() -> None:
    from enctensor import _api

    url = f"memory://ranged/{uuid.uuid4().hex}.enct"
    fsspec.filesystem("memory").pipe_file(url, file_bytes({"a": np.arange(100, dtype=np.int32)}))
    try:
        reader = _api._open(url, KEY, None)
        for size in (399, 401):
            with pytest.raises(ValueError, match="it needs 400"):
                reader.read_into(0, bytearray(size))
    finally:
        fsspec.filesystem("memory").rm_file(url)
