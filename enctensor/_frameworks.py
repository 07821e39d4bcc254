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


# name -> function(framework tensor, device) -> the tensor on that device (frameworks with devices).
_MOVERS: dict[str, Callable[[Any, Any], Any]] = {}


def register(
    names: tuple[str, ...],
    fn: Callable[[np.ndarray, str], Any],
    *,
    to_device: Callable[[Any, Any], Any] | None = None,
) -> None:
    for n in names:
        _CONVERTERS[n] = fn
        if to_device is not None:
            _MOVERS[n] = to_device


def converter(framework: str, device: Any = None) -> Callable[[np.ndarray, str], Any]:
    if framework not in _CONVERTERS:
        # Adapters register themselves on import; importing them here keeps torch and TVM optional.
        if framework in ("pt", "torch"):
            from . import torch as _torch  # noqa: F401
        elif framework == "tvm":
            from . import tvm as _tvm  # noqa: F401
    try:
        fn = _CONVERTERS[framework]
    except KeyError:
        raise ValueError(
            f"unknown framework {framework!r} (choose from 'numpy', 'pt', 'torch', 'tvm')"
        ) from None
    if device is None:
        return fn
    move = _MOVERS.get(framework)
    if move is None:
        if str(device) == "cpu":
            return fn
        raise ValueError(f"framework {framework!r} has no devices: device must be 'cpu' or None")
    return lambda a, dtype: move(fn(a, dtype), device)
