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
