"""The format's dtype names and the numpy dtypes that hold them."""

from __future__ import annotations

import ml_dtypes
import numpy as np

# Format dtype name -> numpy dtype (little-endian). bf16 and fp8 come from ml_dtypes, which is
# what JAX and TVM use for them on the numpy side.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}

_BY_NUMPY: dict[np.dtype, str] = {dt: name for name, dt in NUMPY_DTYPES.items()}


def format_dtype(dtype: np.dtype) -> str:
    """The format name for a numpy dtype, or TypeError naming what is supported."""
    name = _BY_NUMPY.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        supported = ", ".join(sorted(str(d) for d in NUMPY_DTYPES.values()))
        raise TypeError(f"dtype {dtype} is not supported by enctensor (supported: {supported})")
    return name


def numpy_dtype(name: str) -> np.dtype:
    return NUMPY_DTYPES[name]
