"""``inspect`` of a sharded checkpoint's encrypted index: every shard it names, read without
a key (tensors, sizes, stanzas, or why it did not open), and whether their headers describe one
whole set, checked with :func:`enctensor._sharded.bind` on those (unauthenticated) headers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _api as api
from .._sharded import bind, parse_entry
from ..errors import EncTensorError


@dataclass(frozen=True)
class ShardReport:
    name: str
    path: Path
    #: How many tensors the index maps to this shard.
    listed: int
    #: What ``enctensor.inspect`` returns for it, or None if it did not open.
    info: dict[str, Any] | None
    #: Why it did not open.
    error: str | None


@dataclass(frozen=True)
class SetReport:
    file: str
    shards: list[ShardReport]
    #: The checkpoint ids the shards' ``enctensor.shard`` entries give (one for a whole set).
    checkpoints: list[str]
    #: Why the headers do not describe one whole set, or None.
    set_problem: str | None

    @property
    def tensors(self) -> int:
        return sum(len(s.info["tensors"]) for s in self.shards if s.info is not None)

    @property
    def nbytes(self) -> int:
        return sum(t["nbytes"] for s in self.shards if s.info is not None for t in s.info["tensors"])

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": "enctensor-index",
            "tensors": self.tensors,
            "nbytes": self.nbytes,
            "checkpoints": self.checkpoints,
            "set_ok": self.set_problem is None,
            "set_problem": self.set_problem,
            "shards": [
                {
                    "file": s.name,
                    "listed": s.listed,
                    "opened": s.info is not None,
                    "error": s.error,
                    "header": s.info,
                }
                for s in self.shards
            ],
        }


class _Header:
    """A shard's header, read without a key, in the shape :func:`bind` reads."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info

    def metadata(self) -> dict[str, str]:
        return dict(self._info["metadata"])

    def tensors(self) -> list[Sequence[Any]]:
        return [(t["name"],) for t in self._info["tensors"]]


def _reason(e: BaseException, path: Path) -> str:
    from ._common import classify  # the CLI's wording for every kind of failure

    return classify(e, os.fspath(path)).what


def inspect_set(index_path: str) -> SetReport:
    """Reads the index and every shard's header (no key)."""
    from ..convert.sharded import read_index

    index = read_index(index_path)
    shards: list[ShardReport] = []
    checkpoints: dict[str, None] = {}
    for name, tensors in index.shards.items():
        path = Path(index.shard_path(name))
        info: dict[str, Any] | None = None
        error: str | None = None
        try:
            info = api.inspect(path)
        except (OSError, ValueError) as e:
            error = _reason(e, path)
        shards.append(ShardReport(name, path, len(tensors), info, error))
        if info is not None:
            try:
                checkpoints[parse_entry(path, info["metadata"]).checkpoint] = None
            except EncTensorError:
                pass  # bind() below says what is wrong with it
    problem: str | None = None
    try:
        bind(index.path, index.shards, lambda p: _Header(api.inspect(p)))
    except (OSError, ValueError) as e:
        problem = _reason(e, Path(index.path))
    return SetReport(index_path, shards, list(checkpoints), problem)
