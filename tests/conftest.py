"""Shared fixtures: fixed keys and a small set of tensors of every dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import settings

# The loopback S3 and HTTP servers of the remote-file tests, as fixtures every test module sees.
from remote_servers import http_server, s3_bucket, s3_server  # noqa: F401

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile("ci")

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

ALL_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e5m2,
    np.int16,
    np.uint16,
    np.float16,
    ml_dtypes.bfloat16,
    np.int32,
    np.uint32,
    np.float32,
    np.int64,
    np.uint64,
    np.float64,
]


def sample_array(dtype: object, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic data of any supported dtype, from random bytes (so every bit pattern,
    including NaNs, occurs; comparisons must therefore be on bytes)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = rng.integers(0, 256, size=n, dtype=np.uint8)
    if dt == np.bool_:
        raw &= 1
    return raw.view(dt).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN-safe)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture
def tensors() -> dict[str, np.ndarray]:
    out = {f"t_{np.dtype(d).name}": sample_array(d, (3, 5), i) for i, d in enumerate(ALL_DTYPES)}
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 4), dtype=np.int32)
    out["multi_chunk"] = sample_array(np.float32, (3000, 7), 99)  # 84 kB: 21 chunks of 4 KiB
    return out
