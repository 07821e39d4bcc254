"""Destination buffers: uninitialised, aligned so that every framework can adopt them.

Large destinations (``LARGE_MIN`` bytes and up) get their pages one of these ways, chosen by
the environment variable ``ENCTENSOR_PAGES`` (read at each allocation) or, unset,
``DEFAULT_PAGES``:

- ``huge``: numpy's allocator, 2 MiB aligned; numpy advises ``MADV_HUGEPAGE`` for arrays this
  large, so transparent huge pages back them where the kernel has some to give.
- ``small``: numpy's allocator, page aligned, advised ``MADV_NOHUGEPAGE`` (4 KiB pages),
  faulted in by the core's threads as they write the plaintext.
- ``populate``: the same, faulted in before it is returned with
  ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14 or later; plain ``small`` elsewhere) on all
  cores: one system call per thread instead of one fault per page.
- ``map-populate``: ``mmap(MAP_POPULATE)``, faulted in by the kernel on the calling thread.

numpy's allocator is malloc: below glibc's largest mmap threshold (32 MiB) it hands a process
back the memory an earlier load freed, already faulted in (populating such pages is a page
table walk); above it, every array is a fresh mapping, unmapped when the array goes.
``map-populate`` buffers are mappings wrapped by numpy without a copy, unmapped when the last
array (or torch/TVM tensor adopting them) is freed. ``benches/bench_fresh.py`` measures the
four in one run; ``benches/README.md`` has the figures behind the default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading

import numpy as np

PAGES_ENV = "ENCTENSOR_PAGES"
PAGES = ("huge", "small", "populate", "map-populate")
#: Chosen by ``benches/bench_fresh.py`` on the 2-vCPU VM of benches/README.md: one 512 MiB load
#: in a fresh process took 0.17 s with ``populate``, 0.20 s ``small``, 0.30 s ``map-populate``
#: and 0.52 s ``huge`` (medians of 5); in one process all but ``map-populate`` were within 10 %.
DEFAULT_PAGES = "populate"

# TVM's from_dlpack requires 64-byte alignment; huge-page buffers are 2 MiB aligned so that
# whole huge pages back them.
_SMALL_ALIGN = 64
_HUGE_ALIGN = 2 << 20
#: Destinations this large get their pages as ``ENCTENSOR_PAGES`` says; smaller ones come
#: from numpy's allocator (malloc recycles them from one load to the next).
LARGE_MIN = 4 << 20

_MADV_POPULATE_WRITE = 23  # linux/mman.h; Python's mmap module does not name it
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.madvise.restype = ctypes.c_int
# Set when the kernel refuses MADV_POPULATE_WRITE (before 5.14): ``populate`` is then ``small``.
_no_populate = threading.Event()


def pages() -> str:
    """The page strategy for large destinations: ``ENCTENSOR_PAGES`` if set, else the default."""
    value = os.environ.get(PAGES_ENV, "").strip().lower()
    if not value:
        return DEFAULT_PAGES
    if value not in PAGES:
        raise ValueError(
            f"{PAGES_ENV}={value!r} is not one of {', '.join(PAGES)}; unset it for the default ({DEFAULT_PAGES})"
        )
    return value


def _numpy_empty(nbytes: int, align: int) -> np.ndarray:
    raw = np.empty(nbytes + align, dtype=np.uint8)
    skip = (-raw.ctypes.data) % align
    # numpy keeps the base pointer for an empty slice; slice a byte first to keep the alignment.
    return raw[skip : skip + max(nbytes, 1)][:nbytes]


def _small_pages(nbytes: int) -> np.ndarray:
    """Page-aligned memory from numpy's allocator, advised to keep 4 KiB pages (numpy advised
    huge pages when it allocated it)."""
    page = mmap.PAGESIZE
    span = -(-nbytes // page) * page
    out = _numpy_empty(span, page)
    # Failure (a kernel without transparent huge pages) leaves the pages as they are.
    _libc.madvise(out.ctypes.data, span, mmap.MADV_NOHUGEPAGE)
    return out[:nbytes]


def _mapped(nbytes: int) -> np.ndarray:
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    # Only matters where THP is "always": keeps the 4 KiB pages that were asked for.
    m.madvise(mmap.MADV_NOHUGEPAGE)
    # The array's base is a memoryview of the mapping, which is unmapped when the last view goes.
    return np.frombuffer(m, dtype=np.uint8)


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def populate(arrays: list[np.ndarray]) -> None:
    """Faults in the pages of ``arrays`` with ``MADV_POPULATE_WRITE``, their bytes split evenly
    over one thread per core (ctypes releases the GIL during each call)."""
    spans = [(a.ctypes.data, a.nbytes) for a in arrays if a.nbytes]
    total = sum(n for _, n in spans)
    if not total or _no_populate.is_set():
        return
    threads = min(_threads(), max(1, total // LARGE_MIN))
    share = -(-total // threads)
    page = mmap.PAGESIZE
    # Cut the spans into per-thread pieces of about ``share`` bytes, on page boundaries.
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(threads)]
    k, room = 0, share
    for addr, n in spans:
        while n > 0:
            take = n if k == threads - 1 else min(n, -(-room // page) * page)
            pieces[k].append((addr, take))
            addr, n, room = addr + take, n - take, room - take
            if room <= 0 and k < threads - 1:
                k, room = k + 1, share

    def run(mine: list[tuple[int, int]]) -> None:
        for addr, n in mine:
            start = addr - addr % page
            if _libc.madvise(start, addr + n - start, _MADV_POPULATE_WRITE) != 0:
                # EINVAL: a kernel without MADV_POPULATE_WRITE; the pages fault in on write.
                _no_populate.set()
                return

    workers = [threading.Thread(target=run, args=(p,)) for p in pieces[1:] if p]
    for w in workers:
        w.start()
    run(pieces[0])
    for w in workers:
        w.join()


def _large_empty(nbytes: int, how: str) -> np.ndarray:
    if how == "huge":
        return _numpy_empty(nbytes, _HUGE_ALIGN)
    if how == "map-populate":
        return _mapped(nbytes)
    return _small_pages(nbytes)


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised, C-contiguous uint8 array of ``nbytes`` bytes, 64-byte aligned (page
    aligned when large)."""
    if nbytes < LARGE_MIN:
        return _numpy_empty(nbytes, _SMALL_ALIGN)
    how = pages()
    out = _large_empty(nbytes, how)
    if how == "populate":
        populate([out])
    return out


#: Tensors smaller than this are carved out of shared blocks of about ``BLOCK`` bytes.
PACK_MAX = 1 << 20
BLOCK = 4 << 20
_UNSET = np.empty(0, dtype=np.uint8)


def destinations(sizes: list[int]) -> list[np.ndarray]:
    """Uninitialised, 64-byte aligned uint8 buffers of these sizes. Tensors under
    ``PACK_MAX`` are carved out of shared blocks of up to ``BLOCK`` bytes: an allocation costs
    ~5 us, which for thousands of small tensors outweighs decrypting them (2,000 tensors of
    64 KiB), while blocks this size are still recycled by malloc from one load to the next
    instead of being mapped (and faulted in) afresh. A block's memory is freed when the last
    tensor in it goes, as with tensors that share a storage in torch. With the ``populate``
    strategy, all large buffers are faulted in together, on all cores."""
    out = [_UNSET] * len(sizes)
    group: list[tuple[int, int]] = []  # (index, offset in the block being filled)
    used = 0
    how = pages()
    large: list[np.ndarray] = []

    def flush() -> None:
        block = _numpy_empty(used, _SMALL_ALIGN)
        for i, off in group:
            out[i] = block[off : off + sizes[i]]

    for i, n in enumerate(sizes):
        if n >= LARGE_MIN:
            out[i] = _large_empty(n, how)
            large.append(out[i])
            continue
        if not 0 < n < PACK_MAX:
            out[i] = _numpy_empty(n, _SMALL_ALIGN)
            continue
        step = -(-n // _SMALL_ALIGN) * _SMALL_ALIGN
        if used + step > BLOCK:
            flush()
            group, used = [], 0
        group.append((i, used))
        used += step
    if group:
        flush()
    if how == "populate":
        populate(large)
    return out


def small_destinations(sizes: list[int]) -> dict[int, np.ndarray]:
    """Shared-block buffers (see ``destinations``) for the tensors under ``PACK_MAX``, by
    index; adapters allocate the larger ones with their own framework."""
    small = [i for i, n in enumerate(sizes) if 0 < n < PACK_MAX]
    return dict(zip(small, destinations([sizes[i] for i in small]), strict=True))
