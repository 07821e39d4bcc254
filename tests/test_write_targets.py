"""Writes go through a symbolic link (the link stays, the file it names is replaced
atomically, its mode kept) and never replace what is not a regular file: renaming over a
FIFO, a device such as /dev/stdout or a dangling link would replace it, not write to it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import enctensor

KEY = bytes(range(32))
VALUES = {"w": np.arange(12, dtype=np.float32)}


def test_save_through_a_symlink_replaces_the_file_it_names(tmp_path: Path) -> None:
    real = tmp_path / "store" / "model.enct"
    real.parent.mkdir()
    enctensor.save({"w": np.zeros(3, dtype=np.float32)}, real, key=KEY)
    real.chmod(0o640)
    link = tmp_path / "model.enct"
    link.symlink_to(real)
    enctensor.save(VALUES, link, key=KEY, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert np.array_equal(enctensor.load(real, key=KEY)["w"], VALUES["w"])
    assert sorted(p.name for p in real.parent.iterdir()) == ["model.enct"]


def test_save_refuses_a_fifo_and_leaves_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        enctensor.save(VALUES, fifo, key=KEY, overwrite=True)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_save_refuses_a_dangling_link_and_leaves_it(tmp_path: Path) -> None:
    link = tmp_path / "model.enct"
    link.symlink_to(tmp_path / "missing" / "model.enct")
    with pytest.raises(ValueError, match="does not exist"):
        enctensor.save(VALUES, link, key=KEY, overwrite=True)
    assert link.is_symlink()
