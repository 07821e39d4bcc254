"""The ``enctensor`` command: keygen, pubkey, encrypt, decrypt, inspect, verify, rekey.

Failures print one line, ``enctensor: error: <file>: <what went wrong> — <what to do>``, and
exit with a code that says what kind of failure it was (see ``EXIT_*``). No traceback is
shown unless ``ENCTENSOR_DEBUG=1`` is set, and no partial output file is ever left behind
(plaintext decrypted into a stream, ``-`` or a FIFO, stops where a check failed).

One module per command group, each with its ``cmd_*`` functions and an ``add_parser``
that adds its subcommands: :mod:`.keys` (keygen, pubkey), :mod:`.convert` (encrypt,
decrypt), :mod:`.inspect` (inspect, verify), :mod:`.rekey` (rekey). What they share (exit
codes, errors, key and passphrase reading, progress, option groups) is in :mod:`._common`;
the ``--json`` objects and summary lines in :mod:`._output`; ``-`` and special files as inputs
and outputs in :mod:`._streams`; ``inspect`` of a sharded checkpoint in :mod:`._sets`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import FORMAT_VERSION, __version__

# A name imported `as` itself is re-exported: `enctensor.cli` offers what it did as one module.
from . import convert, inspect, keys, rekey
from ._common import _EPILOG, _KEYS_EPILOG, _Parser
from ._common import DEBUG_ENV as DEBUG_ENV
from ._common import DEFAULT_RSA_BITS as DEFAULT_RSA_BITS
from ._common import EXIT_FORMAT as EXIT_FORMAT
from ._common import EXIT_INTEGRITY as EXIT_INTEGRITY
from ._common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from ._common import EXIT_IO as EXIT_IO
from ._common import EXIT_OK as EXIT_OK
from ._common import EXIT_USAGE as EXIT_USAGE
from ._common import EXIT_WRONG_KEY as EXIT_WRONG_KEY
from ._common import IDENTITY_PASSPHRASE_ENV as IDENTITY_PASSPHRASE_ENV
from ._common import NEW_PASSPHRASE_ENV as NEW_PASSPHRASE_ENV
from ._common import PASSPHRASE_ENV as PASSPHRASE_ENV
from ._common import RSA_BITS as RSA_BITS
from ._common import CliError as CliError
from ._common import Progress as Progress
from ._common import classify as classify
from ._common import credentials as credentials
from ._common import read_identity as read_identity
from ._common import read_key_file as read_key_file
from ._common import read_new_passphrase as read_new_passphrase
from ._common import read_passphrase as read_passphrase
from ._common import read_private_key as read_private_key
from ._common import read_recipient as read_recipient
from ._common import read_signing_key as read_signing_key
from ._common import read_verify_key as read_verify_key
from ._common import stanza_summary as stanza_summary
from ._common import write_credentials as write_credentials
from ._output import report_failure, start_clock
from ._streams import STDIN_SHOWN, STDIO
from .convert import cmd_decrypt as cmd_decrypt
from .convert import cmd_encrypt as cmd_encrypt
from .inspect import cmd_inspect as cmd_inspect
from .inspect import cmd_verify as cmd_verify
from .keys import cmd_keygen as cmd_keygen
from .keys import cmd_pubkey as cmd_pubkey
from .keys import public_text as public_text
from .rekey import cmd_rekey as cmd_rekey


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="enctensor",
        description="Encrypt, decrypt, inspect, verify and re-key enctensor files, and make keys.",
        epilog=_EPILOG + "\n\n" + _KEYS_EPILOG,
    )
    parser.add_argument(
        "--version", action="version", version=f"enctensor {__version__} (format v{FORMAT_VERSION})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    # In this order in `enctensor --help`.
    for group in (keys, convert, inspect, rekey):
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    A reader that stops early (``enctensor inspect FILE | head -1``) is not an error: the rest
    of the output is dropped quietly and the status is 0, with no traceback and no complaint
    from Python when it flushes stdout at exit (the recipe in the :mod:`signal` docs)."""
    try:
        try:
            code = _main(argv)
        except SystemExit as e:  # --help, --version and usage errors exit from argparse
            if not isinstance(e.code, int | None):
                raise
            code = e.code or EXIT_OK
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the write in progress stops and removes its temporary
    file, and the exit status is 128 + SIGTERM, as for a process the signal killed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _main(argv: Sequence[str] | None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    args = build_parser().parse_args(argv)
    start_clock(args)
    run: Callable[[argparse.Namespace], int] = args.run
    default_file = (
        getattr(args, "input", None)
        or getattr(args, "file", None)
        or getattr(args, "out", None)
        or getattr(args, "key", None)
    )
    if default_file == STDIO:
        default_file = STDIN_SHOWN
    try:
        return run(args)
    except KeyboardInterrupt as e:
        code = 128 + signal.SIGTERM if isinstance(e, _Terminated) else EXIT_INTERRUPTED
        if args.command == "rekey":
            done = "the files reported above were re-keyed; the others were not changed"
        else:
            done = "no output was written"
        print(f"\nenctensor: interrupted ({done})", file=sys.stderr)
        report_failure(args, code, f"interrupted ({done})")
        return code
    except BrokenPipeError:
        raise  # the reader of stdout went away: see main()
    except Exception as e:
        if os.environ.get(DEBUG_ENV):
            raise
        failure = classify(e, default_file)
        print(failure.line(), file=sys.stderr)
        report_failure(args, failure.code, failure.line())
        return failure.code


__all__ = [
    "EXIT_FORMAT",
    "EXIT_INTEGRITY",
    "EXIT_IO",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_WRONG_KEY",
    "IDENTITY_PASSPHRASE_ENV",
    "NEW_PASSPHRASE_ENV",
    "PASSPHRASE_ENV",
    "main",
]
