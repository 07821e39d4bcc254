"""The format's dtype names and the numpy dtypes that hold them."""

from __future__ import annotations

import sys

import numpy as np

# Format dtype name -> numpy dtype (little-endian) for the dtypes numpy has itself.
_NUMPY_OWN: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}
# bf16 and fp8 come from ml_dtypes (what JAX and TVM use for them on the numpy side). Importing
# it costs about half a second, so it is imported only when one of these dtypes is needed
# (a caller holding such an array has imported it already).
_ML_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "BF16": "bfloat16"}

#: Every format dtype name and its element size in bytes (no import of ml_dtypes needed).
ITEMSIZE: dict[str, int] = {
    **{name: dt.itemsize for name, dt in _NUMPY_OWN.items()},
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "BF16": 2,
}

_all: dict[str, np.dtype] = {}


def numpy_dtypes() -> dict[str, np.dtype]:
    """Every format dtype name -> its numpy dtype (imports ml_dtypes on first use)."""
    if not _all:
        import ml_dtypes

        _all.update(_NUMPY_OWN)
        _all.update({name: np.dtype(getattr(ml_dtypes, attr)) for name, attr in _ML_DTYPES.items()})
    return _all


_BY_NUMPY: dict[np.dtype, str] = {dt: name for name, dt in _NUMPY_OWN.items()}


def format_dtype(dtype: np.dtype) -> str:
    """The format name for a numpy dtype, or TypeError naming what is supported."""
    dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    name = _BY_NUMPY.get(dtype)
    if name is None and "ml_dtypes" in sys.modules:  # bf16/fp8 arrays come from ml_dtypes
        name = {dt: n for n, dt in numpy_dtypes().items()}.get(dtype)
    if name is None:
        supported = ", ".join(sorted(str(d) for d in numpy_dtypes().values()))
        raise TypeError(f"dtype {dtype} is not supported by enctensor (supported: {supported})")
    return name


def numpy_dtype(name: str) -> np.dtype:
    own = _NUMPY_OWN.get(name)
    return own if own is not None else numpy_dtypes()[name]
