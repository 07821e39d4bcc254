"""Destination buffers: uninitialised, aligned so that every framework can adopt them."""

from __future__ import annotations

import numpy as np

# TVM's from_dlpack requires 64-byte alignment; large buffers get 2 MiB alignment so that
# transparent huge pages back them (numpy madvises large allocations), which halves the cost
# of first-touch page faults while decrypting into them.
_SMALL_ALIGN = 64
_HUGE_ALIGN = 2 << 20
_HUGE_MIN = 4 << 20


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised, C-contiguous uint8 array of ``nbytes`` bytes, 64-byte aligned."""
    align = _HUGE_ALIGN if nbytes >= _HUGE_MIN else _SMALL_ALIGN
    raw = np.empty(nbytes + align, dtype=np.uint8)
    skip = (-raw.ctypes.data) % align
    # numpy keeps the base pointer for an empty slice; slice a byte first to keep the alignment.
    return raw[skip : skip + max(nbytes, 1)][:nbytes]


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
    tensor in it goes, as with tensors that share a storage in torch."""
    out = [_UNSET] * len(sizes)
    group: list[tuple[int, int]] = []  # (index, offset in the block being filled)
    used = 0

    def flush() -> None:
        block = aligned_empty(used)
        for i, off in group:
            out[i] = block[off : off + sizes[i]]

    for i, n in enumerate(sizes):
        if not 0 < n < PACK_MAX:
            out[i] = aligned_empty(n)
            continue
        step = -(-n // _SMALL_ALIGN) * _SMALL_ALIGN
        if used + step > BLOCK:
            flush()
            group, used = [], 0
        group.append((i, used))
        used += step
    if group:
        flush()
    return out


def small_destinations(sizes: list[int]) -> dict[int, np.ndarray]:
    """Shared-block buffers (see ``destinations``) for the tensors under ``PACK_MAX``, by
    index; adapters allocate the larger ones with their own framework."""
    small = [i for i, n in enumerate(sizes) if 0 < n < PACK_MAX]
    return dict(zip(small, destinations([sizes[i] for i in small]), strict=True))
