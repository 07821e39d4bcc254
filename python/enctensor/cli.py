"""The ``enctensor`` command: keygen, encrypt, decrypt, inspect, verify.

Failures print one line, ``enctensor: error: <file>: <what went wrong> — <what to do>``, and
exit with a code that says what kind of failure it was (see ``EXIT_*``). No traceback is
shown unless ``ENCTENSOR_DEBUG=1`` is set, and no partial output is ever left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

from . import FORMAT_VERSION, __version__, generate_key
from . import _api as api
from .convert import FORMATS, decrypt_file, detect_format, encrypt_file, verify_file
from .convert._common import InputFormatError
from .errors import FormatError, IntegrityError, WrongKeyError

EXIT_OK = 0
EXIT_IO = 1  # and anything else that is not one of the classes below
EXIT_USAGE = 2
EXIT_WRONG_KEY = 3
EXIT_INTEGRITY = 4
EXIT_FORMAT = 5
EXIT_INTERRUPTED = 130

PASSPHRASE_ENV = "ENCTENSOR_PASSPHRASE"
DEBUG_ENV = "ENCTENSOR_DEBUG"
KEY_SIZE = 32

_EPILOG = """\
exit status: 0 success, 1 I/O or other error, 2 usage error, 3 wrong key or passphrase,
4 integrity failure (the file was modified or corrupted), 5 not a valid file of its format.

Passphrases are never taken from the command line: --passphrase reads ENCTENSOR_PASSPHRASE
if it is set, and otherwise asks on the terminal."""


class CliError(Exception):
    """A failure to report as one line: ``<file>: <what> — <hint>``, exiting with ``code``."""

    def __init__(self, code: int, file: str | None, what: str, hint: str | None = None) -> None:
        super().__init__(what)
        self.code = code
        self.file = file
        self.what = what
        self.hint = hint

    def line(self) -> str:
        text = f"{self.file}: {self.what}" if self.file else self.what
        if self.hint:
            text += f" — {self.hint}"
        return "enctensor: error: " + " ".join(text.split())


# --- Keys and passphrases -----------------------------------------------------------------

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def read_key_file(path: str) -> bytes:
    """A key from a file of 32 raw bytes, or of 64 hex characters (``keygen``'s format; blank
    lines and ``#`` comment lines are ignored)."""
    with open(path, "rb") as f:
        raw = f.read(4096)
    if len(raw) == KEY_SIZE:
        return raw
    try:
        lines = [ln.strip() for ln in raw.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        lines = []
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) == 1 and _HEX_KEY.fullmatch(lines[0]):
        return bytes.fromhex(lines[0])
    raise CliError(
        EXIT_USAGE,
        path,
        "not a key file: a key file holds 32 raw bytes or 64 hex characters",
        "make one with `enctensor keygen FILE`",
    )


def read_passphrase(confirm: bool) -> str:
    """The passphrase from ``ENCTENSOR_PASSPHRASE``, or asked on the terminal (twice when
    encrypting). Never read from the command line, where other users could see it."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise CliError(EXIT_USAGE, None, f"{PASSPHRASE_ENV} is set but empty", "set it to the passphrase")
        return env
    with warnings.catch_warnings():
        # getpass falls back to reading stdin with echo on when there is no terminal: refuse.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            first = getpass.getpass("Enter passphrase: ")
            if confirm and getpass.getpass("Confirm passphrase: ") != first:
                raise CliError(EXIT_USAGE, None, "the passphrases do not match", "try again")
        except (getpass.GetPassWarning, EOFError, OSError):
            raise CliError(
                EXIT_USAGE,
                None,
                "no terminal to ask for the passphrase on",
                f"set {PASSPHRASE_ENV} instead",
            ) from None
    if not first:
        raise CliError(EXIT_USAGE, None, "the passphrase is empty", "type a passphrase")
    return first


def credentials(args: argparse.Namespace, confirm: bool) -> dict[str, Any]:
    """``key=`` or ``passphrase=`` for the converters, from ``--key-file``/``--passphrase``."""
    if args.passphrase:
        return {"passphrase": read_passphrase(confirm)}
    if not args.key_file:
        raise CliError(
            EXIT_USAGE,
            None,
            "no key given",
            "use --key-file FILE (make one with `enctensor keygen`) or --passphrase",
        )
    return {"key": [read_key_file(k) for k in args.key_file]}


# --- Progress -----------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (tqdm if it is installed), shown only for work that takes
    more than a second, and only when stderr is a terminal and --quiet is not given. Called as
    ``progress(done, total)`` in bytes, from any thread."""

    DELAY = 1.0

    def __init__(self, desc: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._bar: Any = None
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            try:
                from tqdm import tqdm
            except ImportError:
                self._fallback(done, total)
                return
            if self._bar is None:
                self._bar = tqdm(
                    total=total,
                    desc=self.desc,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    delay=self.DELAY,
                    file=self.stream,
                    leave=False,
                    dynamic_ncols=True,
                )
            self._bar.update(done - self._bar.n)

    def _fallback(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._start < self.DELAY or (now - self._last_draw < 0.2 and done < total):
            return
        self._last_draw = now
        pct = 100 * done // total if total else 100
        self.stream.write(f"\r{self.desc}: {pct:3d}% ({_size(done)} of {_size(total)})")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """For one long call that reports nothing: shows the elapsed time while it runs."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(0.25):
                elapsed = time.monotonic() - self._start
                if elapsed >= self.DELAY:
                    with self._lock:
                        self.stream.write(f"\r{self.desc}: {elapsed:.0f} s")
                        self.stream.flush()
                        self._drawn = True

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def _progress(args: argparse.Namespace, desc: str) -> Progress:
    return Progress(desc, enabled=not args.quiet and sys.stderr.isatty())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# --- Commands -----------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_key()
    # O_EXCL: never overwrite (a lost key is lost data); 0600 from the start, not chmod later.
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise CliError(
            EXIT_IO, args.out, "already exists", "keygen never overwrites a key file; choose another name"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(args.out)
        raise
    return EXIT_OK


def _refuse_existing(out: str, force: bool) -> None:
    if not force and (os.path.exists(out) or os.path.islink(out)):
        raise CliError(EXIT_IO, out, "already exists", "use --force to overwrite it")


def _warn(msg: str) -> None:
    print(f"enctensor: warning: {msg}", file=sys.stderr)


def cmd_encrypt(args: argparse.Namespace) -> int:
    fmt = detect_format(args.input)
    if fmt not in FORMATS:
        if fmt in ("enctensor", "enctensor-index"):
            raise CliError(
                EXIT_FORMAT, args.input, "is already encrypted", "use `enctensor decrypt` to decrypt it"
            )
        raise CliError(
            EXIT_FORMAT,
            args.input,
            "not a safetensors file, TVM .params file or sharded checkpoint index",
            "encrypt takes one of those (for a sharded checkpoint, its *.index.json)",
        )
    if fmt == "index" and not args.output.endswith(".json"):
        raise CliError(
            EXIT_USAGE,
            args.output,
            "a sharded checkpoint's encrypted index must be a .json file",
            "name it like model.enct.index.json; the shards are written next to it",
        )
    _refuse_existing(args.output, args.force)
    creds = credentials(args, confirm=True)
    progress = _progress(args, f"encrypting {os.path.basename(args.input)}")
    try:
        encrypt_file(
            args.input,
            args.output,
            chunk_size=args.chunk_size,
            scrypt_log_n=args.scrypt_log_n,
            overwrite=args.force,
            progress=progress,
            **creds,
        )
    finally:
        progress.close()
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    fmt = detect_format(args.input)
    if fmt not in ("enctensor", "enctensor-index"):
        if fmt in FORMATS:
            raise CliError(
                EXIT_FORMAT,
                args.input,
                f"is not encrypted (it looks like {_describe(fmt)})",
                "use `enctensor encrypt` to encrypt it",
            )
        raise CliError(
            EXIT_FORMAT,
            args.input,
            "not an enctensor file",
            "decrypt takes a file made by `enctensor encrypt`",
        )
    _refuse_existing(args.output, args.force)
    creds = credentials(args, confirm=False)
    progress = _progress(args, f"decrypting {os.path.basename(args.input)}")
    try:
        result = decrypt_file(
            args.input, args.output, format=args.format, overwrite=args.force, progress=progress, **creds
        )
    finally:
        progress.close()
    if result.dropped_metadata:
        _warn(
            f"{args.output}: a {result.output_format} file cannot hold metadata; dropped"
            f" {', '.join(repr(k) for k in result.dropped_metadata)}"
        )
    return EXIT_OK


def _describe(fmt: str | None) -> str:
    return {
        "safetensors": "a safetensors file",
        "params": "a TVM .params file",
        "index": "a sharded checkpoint index",
    }.get(fmt or "", "something else")


def _human_inspect(path: str, info: dict[str, Any], out: TextIO) -> None:
    tensors = info["tensors"]
    total = sum(t["nbytes"] for t in tensors)
    enc = sum(1 for t in tensors if t["encrypted"])
    out.write(f"{path}: enctensor v{info['format_version']}, {_size(info['file_size'])}\n")
    out.write(f"  chunk size  {_size(info['chunk_size'])}\n")
    out.write(f"  stanzas     {', '.join(info['stanzas'])}\n")
    if "signed" in info:
        out.write(f"  signed      {'yes' if info['signed'] else 'no'}\n")
    if info["metadata"]:
        out.write("  metadata\n")
        width = max(len(k) for k in info["metadata"])
        out.writelines(f"    {k:<{width}}  {v}\n" for k, v in info["metadata"].items())
    else:
        out.write("  metadata    (none)\n")
    out.write(f"  tensors     {len(tensors)}, {_size(total)}, {enc} encrypted\n")
    if tensors:
        rows = [
            (
                t["name"],
                t["dtype"],
                "[" + ", ".join(map(str, t["shape"])) + "]",
                _size(t["nbytes"]),
                "yes" if t["encrypted"] else "no",
            )
            for t in tensors
        ]
        head = ("name", "dtype", "shape", "size", "encrypted")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
        out.writelines(
            "    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
            for r in [head, *rows]
        )
    out.write(
        "  (read without a key: nothing above is authenticated until the file is opened with its key)\n"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    fmt = detect_format(args.file)
    if fmt != "enctensor":
        raise CliError(
            EXIT_FORMAT,
            args.file,
            "not an enctensor file" + (f" (it looks like {_describe(fmt)})" if fmt in FORMATS else ""),
            "inspect reads files made by `enctensor encrypt`"
            + ("; for a sharded checkpoint, inspect each shard" if fmt == "enctensor-index" else ""),
        )
    info = api.inspect(args.file)
    if args.json:
        json.dump({"file": args.file, **info}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _human_inspect(args.file, info, sys.stdout)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    fmt = detect_format(args.file)
    if fmt not in ("enctensor", "enctensor-index"):
        raise CliError(
            EXIT_FORMAT, args.file, "not an enctensor file", "verify checks files made by `enctensor encrypt`"
        )
    creds = credentials(args, confirm=False)
    progress = _progress(args, f"verifying {os.path.basename(args.file)}")
    try:
        with progress.ticking():
            tensors, nbytes = verify_file(args.file, **creds)
    finally:
        progress.close()
    if not args.quiet:
        print(f"{args.file}: OK ({tensors} tensors, {_size(nbytes)}, every chunk verified)")
    return EXIT_OK


# --- Argument parsing ---------------------------------------------------------------------


def _chunk_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KkMm]i?B?)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 64K or 4096)")
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[(m.group(2) or "")[:1].lower()]
    if n & (n - 1) or not 4096 <= n <= 64 << 20:
        raise argparse.ArgumentTypeError(f"{text}: the chunk size must be a power of two from 4K to 64M")
    return n


def _log_n(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 10 <= n <= 20:
        raise argparse.ArgumentTypeError("must be between 10 and 20")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse, with its one-line error in the same style as the rest (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"enctensor: error: {message} — see `{self.prog} --help`\n")


def _add_key_options(p: argparse.ArgumentParser, many: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-k",
        "--key-file",
        action="append",
        metavar="FILE",
        help=f"a key file (32 raw bytes or 64 hex characters, as `keygen` writes); {many}",
    )
    g.add_argument(
        "-p",
        "--passphrase",
        action="store_true",
        help=f"use a passphrase: from ${PASSPHRASE_ENV} if set, else asked on the terminal",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="enctensor",
        description="Encrypt, decrypt, inspect and verify enctensor files, and make keys.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"enctensor {__version__} (format v{FORMAT_VERSION})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "keygen",
        help="make a new random key file",
        description="Write a new random 32-byte key to OUT as 64 hex characters, readable by you only"
        " (mode 0600). Never overwrites a file.",
    )
    p.add_argument("out", metavar="OUT", help="the key file to create")
    p.set_defaults(run=cmd_keygen)

    common = _Parser(add_help=False)
    common.add_argument("-f", "--force", action="store_true", help="overwrite OUT (and shards) if they exist")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "encrypt",
        parents=[common],
        help="encrypt a safetensors file, TVM .params file or sharded checkpoint",
        description="Encrypt IN to the enctensor file OUT. The format of IN is detected from its content:"
        " a .safetensors file, a TVM .params file, or a Hugging Face sharded checkpoint given by its"
        " *.index.json (then OUT is the encrypted index, e.g. model.enct.index.json, and the encrypted"
        " shards, X.enct for X.safetensors, are written next to it).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    _add_key_options(p, "give it several times to let any of the keys open the file")
    p.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=1 << 20,
        metavar="SIZE",
        help="bytes per authenticated chunk (default 1M)",
    )
    p.add_argument(
        "--scrypt-log-n",
        type=_log_n,
        default=18,
        metavar="N",
        help="passphrase work factor 2^N, 10..20 (default 18; lower is faster to open and to guess)",
    )
    p.set_defaults(run=cmd_encrypt)

    p = sub.add_parser(
        "decrypt",
        parents=[common],
        help="decrypt to safetensors, TVM .params or a sharded checkpoint",
        description="Decrypt the enctensor file (or encrypted sharded index) IN to OUT, verifying every"
        " byte. The output format comes from --format, else from OUT's extension (.safetensors, .params,"
        " .json for an index), else from what IN was converted from, else safetensors.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    _add_key_options(p, "give it several times to try each key")
    p.add_argument("--format", choices=FORMATS, help="the output format")
    p.set_defaults(run=cmd_decrypt)

    p = sub.add_parser(
        "inspect",
        help="show the tensors, metadata and key stanzas of a file (no key needed)",
        description="Show the header of an enctensor file: tensors, metadata, stanza types, chunk size."
        " Needs no key, so nothing shown is authenticated.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser(
        "verify",
        help="check every authentication tag of a file",
        description="Check the header MAC and every chunk tag of FILE (or of every shard of an encrypted"
        " index) without writing any plaintext.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE")
    _add_key_options(p, "give it several times to try each key")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=cmd_verify)
    return parser


# --- Errors -------------------------------------------------------------------------------


def _strip_path(msg: str, path: str | None) -> str:
    """Rust messages start with the file name (``<path>: ...`` or ``not a valid enctensor
    file: <path>: ...``); the CLI puts it first itself."""
    if path:
        for prefix in ("not a valid enctensor file: ", ""):
            if msg.startswith(f"{prefix}{path}: "):
                return prefix + msg[len(prefix) + len(path) + 2 :]
    return msg


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check the permissions of the file and its directory",
    errno.EPERM: "check the permissions of the file and its directory",
    errno.EROFS: "write somewhere else",
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "give a file name",
    errno.EEXIST: "use --force to overwrite it",
}


def classify(e: BaseException, default_file: str | None) -> CliError:
    """The one-line report and exit status for an exception."""
    if isinstance(e, CliError):
        return e
    path = getattr(e, "enctensor_path", None) or default_file
    if isinstance(e, WrongKeyError):
        return CliError(
            EXIT_WRONG_KEY,
            path,
            _strip_path(str(e), path),
            "check that the key file (or passphrase) is one this file was encrypted to",
        )
    if isinstance(e, IntegrityError):
        return CliError(EXIT_INTEGRITY, path, _strip_path(str(e), path), "do not use it; get an intact copy")
    if isinstance(e, InputFormatError):
        return CliError(EXIT_FORMAT, path, _strip_path(str(e), path), "check that it is the file you meant")
    if isinstance(e, FormatError):
        return CliError(EXIT_FORMAT, path, _strip_path(str(e), path), "check that it is the file you meant")
    if isinstance(e, OSError):
        code = e.errno
        if code is None:  # from Rust: "<what>: <strerror> (os error N)"
            m = re.search(r"\(os error (\d+)\)", str(e))
            code = int(m.group(1)) if m else None
        if e.filename is not None:
            what = e.strerror or str(e)
            path = os.fsdecode(e.filename)
        else:
            what = _strip_path(str(e), path)
        hint = _OS_HINTS.get(code or -1)
        if isinstance(e, FileExistsError) and e.strerror == "already exists":
            hint = "use --force to overwrite it"
        return CliError(EXIT_IO, path, what[:1].lower() + what[1:] if what else str(e), hint)
    if isinstance(e, ValueError):
        return CliError(EXIT_USAGE, None, str(e), "see `enctensor --help`")
    return CliError(
        EXIT_IO,
        path,
        f"internal error: {type(e).__name__}: {e}",
        f"please report this (set {DEBUG_ENV}=1 to see the traceback)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    default_file = getattr(args, "input", None) or getattr(args, "file", None) or getattr(args, "out", None)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\nenctensor: interrupted (no output was written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `enctensor inspect x | head`: stop quietly; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_IO
    except Exception as e:
        if os.environ.get(DEBUG_ENV):
            raise
        failure = classify(e, default_file)
        print(failure.line(), file=sys.stderr)
        return failure.code


__all__ = ["EXIT_FORMAT", "EXIT_INTEGRITY", "EXIT_IO", "EXIT_OK", "EXIT_USAGE", "EXIT_WRONG_KEY", "main"]
