"""Destination pages (``ENCTENSOR_PAGES``): each strategy gives the pages it names, aligned,
adopted without a copy by numpy, torch and TVM, and unmapped when the last user goes."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm.runtime

import enctensor
from enctensor import _alloc

MIB = 1 << 20
LARGE = 64 * MIB  # above glibc's largest mmap threshold (32 MiB): "huge" is its own mapping too


def vma(addr: int) -> dict[str, str]:
    """The /proc/self/smaps entry of the mapping that holds ``addr``."""
    found: dict[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            if found is not None:
                break
            lo, hi = (int(x, 16) for x in head.split("-"))
            if lo <= addr < hi:
                found = {"range": head}
        elif found is not None:
            k, _, v = line.partition(":")
            found[k] = v.strip()
    assert found is not None, f"no mapping holds {addr:#x}"
    return found


def resident_kib(addr: int) -> int:
    return int(vma(addr)["Rss"].split()[0])


def anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.fixture(params=_alloc.PAGES)
def pages(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(_alloc.PAGES_ENV, request.param)
    return str(request.param)


def test_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_alloc.PAGES_ENV, raising=False)
    assert _alloc.pages() == _alloc.DEFAULT_PAGES
    monkeypatch.setenv(_alloc.PAGES_ENV, " Small ")
    assert _alloc.pages() == "small"


def test_unknown_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_alloc.PAGES_ENV, "gigantic")
    with pytest.raises(ValueError, match=r"ENCTENSOR_PAGES='gigantic' is not one of huge, small, populate"):
        _alloc.aligned_empty(LARGE)


def test_each_strategy_gives_the_pages_it_names(pages: str) -> None:
    a = _alloc.aligned_empty(LARGE)
    assert a.dtype == np.uint8 and a.nbytes == LARGE and a.flags.c_contiguous and a.flags.writeable
    entry = vma(a.ctypes.data)
    flags = entry["VmFlags"].split()
    if pages == "huge":
        assert a.ctypes.data % (2 * MIB) == 0
        assert "hg" in flags  # numpy advised MADV_HUGEPAGE
        assert isinstance(a.base, np.ndarray)
    else:
        assert a.ctypes.data % mmap.PAGESIZE == 0
        assert "nh" in flags and "hg" not in flags  # MADV_NOHUGEPAGE: 4 KiB pages
        if pages == "map-populate":
            assert isinstance(a.base, memoryview) and isinstance(a.base.obj, mmap.mmap)
        # populate and map-populate fault every page in before returning; small leaves that to
        # the writes (a few KiB may be resident from neighbouring activity, never most of it).
        if pages == "small":
            assert resident_kib(a.ctypes.data) < LARGE // 1024 // 2
        else:
            assert resident_kib(a.ctypes.data) >= LARGE // 1024


def test_small_sizes_keep_numpy_and_64_byte_alignment(pages: str) -> None:
    for n in (0, 1, 100, _alloc.LARGE_MIN - 1):
        a = _alloc.aligned_empty(n)
        assert a.nbytes == n and a.ctypes.data % 64 == 0
        assert not isinstance(a.base, memoryview)


def test_destinations_populate_large_buffers_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_alloc.PAGES_ENV, "populate")
    sizes = [8 * MIB, 64 << 10, 12 * MIB + 4096 + 17, 64 << 10]
    bufs = _alloc.destinations(sizes)
    assert [b.nbytes for b in bufs] == sizes
    for b in (bufs[0], bufs[2]):
        assert resident_kib(b.ctypes.data) >= b.nbytes // 1024
    assert bufs[1].base is bufs[3].base  # the small ones share one block
    assert all(b.ctypes.data % 64 == 0 for b in bufs)


def test_load_decrypts_into_the_strategys_pages(pages: str, tmp_path: Path) -> None:
    key = bytes(range(32))
    rng = np.random.default_rng(5)
    tensors: dict[str, np.ndarray] = {
        "big": rng.random((1024, 2048), dtype=np.float32),
        "small": np.arange(10, dtype=np.int64),
    }
    path = tmp_path / "m.enct"
    enctensor.save(tensors, path, key=key)
    out = enctensor.load(path, key=key)
    for name, want in tensors.items():
        np.testing.assert_array_equal(out[name], want)
    flags = vma(out["big"].ctypes.data)["VmFlags"].split()
    assert ("hg" in flags) == (pages == "huge")
    assert ("nh" in flags) == (pages != "huge")


def test_torch_and_tvm_adopt_without_a_copy(pages: str) -> None:
    a = _alloc.aligned_empty(LARGE)
    a[:8] = np.arange(8, dtype=np.uint8)
    t = torch.from_numpy(a)
    assert t.data_ptr() == a.ctypes.data
    v = tvm.runtime.from_dlpack(a)  # TVM refuses buffers that are not 64-byte aligned
    back = np.from_dlpack(v)
    assert back.ctypes.data == a.ctypes.data
    t[0] = 200  # one memory: a write through torch is seen through TVM
    assert back[0] == 200 and a[0] == 200


@pytest.mark.parametrize("adopt", ["numpy", "torch", "tvm"])
def test_memory_is_freed_with_the_last_user(pages: str, adopt: str) -> None:
    gc.collect()
    before = anon_kib()
    a = _alloc.aligned_empty(LARGE)
    a.fill(7)
    holder: object = a
    if adopt == "torch":
        holder = torch.from_numpy(a)
    elif adopt == "tvm":
        holder = tvm.runtime.from_dlpack(a)
    view = a[LARGE // 2 :]
    del a  # reference counting frees at once: no gc.collect() needed (it takes ~0.3 s with torch loaded)
    assert anon_kib() - before >= LARGE // 1024 * 9 // 10  # still held by the adopter and the view
    assert view[-1] == 7
    del view
    assert anon_kib() - before >= LARGE // 1024 * 9 // 10  # the adopter alone keeps it
    del holder
    assert anon_kib() - before < LARGE // 1024 // 4
