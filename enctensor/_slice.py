"""Turning a numpy-style index into the byte range it touches, so that a slice decrypts only
the chunks that cover it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SlicePlan:
    """Elements ``[lo, hi]`` (flat, inclusive) hold the result; ``offset`` and ``strides`` (in
    elements, relative to ``lo``) pick it out of them. ``empty`` means nothing is read."""

    shape: tuple[int, ...]
    lo: int
    hi: int
    offset: int
    strides: tuple[int, ...]
    empty: bool


def plan(shape: tuple[int, ...], index: Any) -> SlicePlan:
    items = index if isinstance(index, tuple) else (index,)
    if sum(1 for it in items if it is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(shape) - (len(items) - 1)
        items = items[:at] + (slice(None),) * max(fill, 0) + items[at + 1 :]
    if len(items) > len(shape):
        raise IndexError(f"too many indices: the tensor has {len(shape)} dimensions, got {len(items)}")
    items = items + (slice(None),) * (len(shape) - len(items))

    elem_strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        elem_strides[d] = elem_strides[d + 1] * shape[d + 1]

    out_shape: list[int] = []
    out_strides: list[int] = []
    lo = hi = first = 0
    empty = False
    for item, n, stride in zip(items, shape, elem_strides, strict=True):
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            count = len(range(start, stop, step))
            out_shape.append(count)
            out_strides.append(step * stride)
            if count == 0:
                empty = True
                continue
            a, b = start, start + (count - 1) * step
        elif isinstance(item, int) or hasattr(item, "__index__"):
            i = item.__index__()
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for a dimension of size {n}")
            a = b = i % n if n else i
        else:
            raise TypeError(f"only integers, slices and '...' can index a tensor slice, not {item!r}")
        lo += min(a, b) * stride
        hi += max(a, b) * stride
        first += a * stride
    return SlicePlan(tuple(out_shape), lo, hi, first - lo, tuple(out_strides), empty)
