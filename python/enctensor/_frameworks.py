"""Turning decrypted numpy arrays into the tensors of the framework a caller asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# name -> function(numpy array, format dtype name) -> framework tensor.
_CONVERTERS: dict[str, Callable[[np.ndarray, str], Any]] = {
    "numpy": lambda a, _dtype: a,
    "np": lambda a, _d: a,
}


def register(names: tuple[str, ...], fn: Callable[[np.ndarray, str], Any]) -> None:
    for n in names:
        _CONVERTERS[n] = fn


def converter(framework: str) -> Callable[[np.ndarray, str], Any]:
    if framework not in _CONVERTERS:
        # Adapters register themselves on import; importing them here keeps torch and TVM optional.
        if framework in ("pt", "torch"):
            from . import torch as _torch  # noqa: F401
        elif framework == "tvm":
            from . import tvm as _tvm  # noqa: F401
    try:
        return _CONVERTERS[framework]
    except KeyError:
        raise ValueError(
            f"unknown framework {framework!r} (choose from 'numpy', 'pt', 'torch', 'tvm')"
        ) from None
