"""Inputs and outputs of ``encrypt`` and ``decrypt`` that are not plain files: ``-``
(standard input or output), special files (``/dev/stdout``, a FIFO, a character device) and
symbolic links.

- ``-`` as IN: standard input is copied to a temporary file first, in a private directory
  (mode 0700) under ``$TMPDIR``, removed afterwards. The converters detect the format from the
  content and map the input, so they need a file (for ``encrypt``, the plaintext is on disk
  there meanwhile; ``--help`` says so).
- ``-`` as OUT, or ``--force`` onto a FIFO or character device: the output is written in
  order into the stream, never replacing it. ``encrypt`` writes the file to a private
  temporary directory first (the format fills in its tables last) and then copies it;
  ``decrypt`` writes the plaintext into the stream as each step is verified, so on a failure
  the stream stops part way and the exit status says so.
- ``--force`` onto a symbolic link replaces the file it points to, atomically, and keeps the
  link. A file named ``-`` is never created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ._common import EXIT_IO, EXIT_USAGE, CliError, show_as

#: The name that means standard input (as IN) or standard output (as OUT).
STDIO = "-"
#: How standard input and output are named in messages.
STDIN_SHOWN = "<stdin>"
STDOUT_SHOWN = "<stdout>"
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Output:
    """Where a command writes. ``stream``: written in order into ``path`` (``-`` is standard
    output); otherwise a regular file replaced atomically at ``path``, which is the file a
    symbolic link ``shown`` points to, so the link stays."""

    shown: str
    path: str
    stream: bool


def _is_magic_link(path: str) -> bool:
    """``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``: names of an open descriptor, which
    can be written through but not replaced."""
    real = os.path.abspath(path)
    return real.startswith(("/dev/", "/proc/"))


def resolve_output(out: str, force: bool) -> Output:
    """Where to write OUT; refuses a directory, an existing file without ``force``, a dangling
    symbolic link, a socket or a block device, and binary data onto a terminal."""
    if out == STDIO:
        _refuse_terminal(sys.stdout.fileno(), "standard output")
        return Output(out, out, True)
    try:
        st = os.lstat(out)
    except OSError:
        return Output(out, out, False)  # new (or unreachable: the writer reports why)
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(out)
        except OSError:
            raise CliError(
                EXIT_IO,
                out,
                "is a symbolic link to a file that does not exist (or cannot be reached)",
                "give the file it should point to, or remove the link",
            ) from None
    if stat.S_ISDIR(st.st_mode):
        # Said once, the same with and without --force.
        raise CliError(EXIT_IO, out, "is a directory, not a file name", "give a file name")
    special = stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)
    if not force:
        hint = "use --force to write into it" if special else "use --force to overwrite it"
        raise CliError(EXIT_IO, out, "already exists", hint)
    if special or (stat.S_ISREG(st.st_mode) and _is_magic_link(out)):
        return Output(out, out, True)
    if not stat.S_ISREG(st.st_mode):
        raise CliError(
            EXIT_IO,
            out,
            "is a special file that cannot be written as a stream (a socket or a block device)",
            "give a regular file, a FIFO, or - for standard output",
        )
    return Output(out, os.path.realpath(out) if link else out, False)


def _refuse_terminal(fd: int, what: str) -> None:
    if os.isatty(fd):
        raise CliError(
            EXIT_USAGE,
            None,
            f"will not write binary data to a terminal ({what})",
            "redirect it to a file or a pipe, or give a file name",
        )


@contextlib.contextmanager
def open_stream(output: Output) -> Iterator[BinaryIO]:
    """The stream ``output`` names, open for writing (standard output is not closed)."""
    if output.path == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(output.path, "wb") as f:
        _refuse_terminal(f.fileno(), output.shown)
        yield f


@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    """A new directory readable by the user only (0700), removed with everything in it."""
    with tempfile.TemporaryDirectory(prefix="enctensor-", ignore_cleanup_errors=True) as d:
        yield d


@contextlib.contextmanager
def input_file(given: str) -> Iterator[str]:
    """A file name for IN: ``given`` itself, or for ``-`` a private temporary copy of
    standard input (named ``<stdin>`` in messages)."""
    if given != STDIO:
        yield given
        return
    if sys.stdin is None or os.isatty(sys.stdin.fileno()):
        raise CliError(
            EXIT_USAGE,
            None,
            "IN is - (standard input), which is a terminal",
            "pipe or redirect the input into enctensor, or give a file name",
        )
    with private_dir() as d:
        path = os.path.join(d, "stdin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, _COPY_BLOCK)
        show_as(path, STDIN_SHOWN)
        yield path


def copy_into(src: str, output: Output) -> int:
    """Copies the file ``src`` into the stream ``output``; returns the bytes written."""
    n = 0
    with open(src, "rb") as f, open_stream(output) as out:
        while block := f.read(_COPY_BLOCK):
            out.write(block)
            n += len(block)
    return n


class CountingWriter:
    """A binary stream that counts the bytes written through it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.written = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self._out.write(data)
        self.written += len(data) if n is None else n
        return len(data) if n is None else n
