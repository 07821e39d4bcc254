"""Running the real ``enctensor`` entry point (``python -m enctensor``) in a subprocess for the
CLI tests of issue 13: with bytes on stdin and stdout, or with a terminal (a pty) on stderr or
as the controlling terminal, to answer prompts."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ENTRY = [sys.executable, "-m", "enctensor"]
#: Variables the CLI reads; a test sets the ones it means to.
_CLI_VARIABLES = (
    "ENCTENSOR_PASSPHRASE",
    "ENCTENSOR_NEW_PASSPHRASE",
    "ENCTENSOR_IDENTITY_PASSPHRASE",
    "ENCTENSOR_DEBUG",
)


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLI_VARIABLES}
    env.update(extra or {})
    return env


def cli(
    *args: str | Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stdout: int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """Runs the CLI without a terminal (a new session): ``input`` on stdin (nothing if None)."""
    return subprocess.run(
        [*ENTRY, *map(str, args)],
        cwd=cwd,
        env=environment(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
        timeout=120,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def failed(proc: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    """Exit status ``code`` and one error line in the CLI's style holding every needle."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("enctensor: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _drain(fd: int, until: bytes | None, timeout: float) -> bytes:
    """What the terminal shows, until ``until`` appears (or the other side closes)."""
    out = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in out:
        left = deadline - time.monotonic()
        assert left > 0, out
        if not select.select([fd], [], [], left)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    return out


def with_terminal_stderr(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> tuple[int, bytes, str]:
    """Runs the CLI with stderr on a terminal (stdin empty, stdout a pipe): (status, stdout,
    what the terminal showed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*ENTRY, *map(str, args)],
            cwd=cwd,
            env=environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=120)
        shown = _drain(master, None, 30)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return proc.returncode, stdout, shown.decode(errors="replace")


def dialog(
    *args: str | Path,
    cwd: Path,
    answers: list[tuple[bytes, bytes]],
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Runs the CLI with a terminal as its controlling terminal (and stdin, stdout, stderr):
    waits for each prompt and types its answer. Returns (status, everything shown)."""
    argv = [*ENTRY, *map(str, args)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(cwd)
        os.execve(sys.executable, argv, environment(env))
    status = None
    shown = b""
    try:
        for prompt, answer in answers:
            shown += _drain(fd, prompt, 60)
            os.write(fd, answer + b"\n")
        shown += _drain(fd, None, 120)
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:  # a failed check above: do not leave the child waiting for input
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")
