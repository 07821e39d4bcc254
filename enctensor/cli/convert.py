"""``enctensor encrypt`` and ``enctensor decrypt``: convert between plaintext formats
(safetensors, TVM .params, sharded checkpoints) and enctensor files; ``-`` is standard input
or output (see :mod:`._streams`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .. import _api as api
from .._api import DEFAULT_CHUNK_SIZE, DEFAULT_SCRYPT_LOG_N
from .._remote import is_url
from ._common import (
    _EPILOG,
    EXIT_FORMAT,
    EXIT_OK,
    EXIT_USAGE,
    PASSPHRASE_ENV,
    CliError,
    Progress,
    Subparsers,
    _add_open_options,
    _check_encrypted,
    _Parser,
    _progress,
    _refuse_same_file,
    _scrypt_option,
    _size,
    credentials,
    show_as,
    write_credentials,
)
from ._output import add_json_option, elapsed, json_epilog, report, sizes, wants_json
from ._streams import (
    STDIN_SHOWN,
    STDIO,
    STDOUT_SHOWN,
    CountingWriter,
    Output,
    copy_into,
    input_file,
    open_stream,
    private_dir,
    resolve_output,
)

if TYPE_CHECKING:
    from ..convert import Conversion

#: ``enctensor.convert.FORMATS``, the plaintext formats (here so that ``--help`` need not import
#: the converters; a test checks that they are the same).
OUTPUT_FORMATS = ("safetensors", "params", "index")


def _note(msg: str) -> None:
    print(f"enctensor: {msg}", file=sys.stderr)


def _is_directory(path: str) -> bool:
    return path != STDIO and os.path.isdir(path)


def _check_usage(args: argparse.Namespace) -> None:
    if wants_json(args) and args.output == STDIO:
        raise CliError(
            EXIT_USAGE,
            None,
            "--json prints on standard output, which OUT - uses for the data",
            "give OUT a file name, or leave --json out",
        )
    if _is_directory(args.input) and args.output == STDIO:
        raise CliError(
            EXIT_USAGE, args.input, "is a directory, which converts to a directory, not to standard output"
        )


def _output(args: argparse.Namespace, shown_in: str, set_of_files: bool) -> Output:
    """Where OUT is written. A directory IN (a model or tensor-cache directory) goes to
    :mod:`enctensor.convert` as it is: it decides what it can convert, and where to."""
    if _is_directory(args.input):
        return Output(args.output, args.output, stream=False)
    if args.input != STDIO:
        _refuse_same_file(args.input, args.output)
    output = resolve_output(args.output, args.force)
    if output.stream and set_of_files:
        raise CliError(
            EXIT_USAGE,
            output.shown,
            f"is a stream, and {shown_in} is a sharded checkpoint, which is several files",
            "give OUT a file name ending in .json; the shards are written next to it",
        )
    return output


@contextlib.contextmanager
def _showing(args: argparse.Namespace, desc: str) -> Iterator[Progress]:
    progress = _progress(args, desc)
    try:
        yield progress
    finally:
        progress.close()


# --- encrypt ----------------------------------------------------------------------------------


def _encryptable(src: str, args: argparse.Namespace) -> str:
    """The format of IN (the CLI's own clear errors for what cannot be encrypted)."""
    from ..convert import FORMATS, detect_format

    fmt = detect_format(src)
    if fmt not in FORMATS:
        if fmt in ("enctensor", "enctensor-index"):
            raise CliError(
                EXIT_FORMAT,
                args.input,
                "is already encrypted",
                "use `enctensor decrypt` to decrypt it, or `enctensor rekey` to change who can open it",
            )
        raise CliError(
            EXIT_FORMAT,
            args.input,
            "not a safetensors file, TVM .params file or sharded checkpoint index",
            "encrypt takes one of those (for a sharded checkpoint, its *.index.json)",
        )
    if fmt == "index" and args.input == STDIO:
        raise CliError(
            EXIT_USAGE,
            STDIN_SHOWN,
            "is a sharded checkpoint index, whose shards are named relative to its own directory",
            "give the index's file name instead of -",
        )
    if fmt == "index" and not args.output.endswith(".json"):
        raise CliError(
            EXIT_USAGE,
            args.output,
            "a sharded checkpoint's encrypted index must be a .json file",
            "name it like model.enct.index.json; the shards are written next to it",
        )
    return fmt


def cmd_encrypt(args: argparse.Namespace) -> int:
    from ..convert import encrypt_file

    _check_usage(args)
    with input_file(args.input) as src:
        fmt = None if _is_directory(src) else _encryptable(src, args)
        output = _output(args, args.input, fmt == "index")
        creds = write_credentials(args)
        options: dict[str, Any] = {
            "chunk_size": args.chunk_size,
            "scrypt_log_n": DEFAULT_SCRYPT_LOG_N if args.scrypt_log_n is None else args.scrypt_log_n,
            **creds,
        }
        with _showing(args, f"encrypting {os.path.basename(args.input)}") as progress:
            if output.stream:
                with private_dir() as d:
                    tmp = os.path.join(d, "out.enct")
                    show_as(tmp, STDOUT_SHOWN if output.shown == STDIO else output.shown)
                    result = encrypt_file(src, tmp, progress=progress, **options)
                    stanzas = _stanza_types(result)
                    written, files = copy_into(tmp, output), []
            elif is_url(output.path):
                result, written, stanzas = _encrypt_to_url(src, fmt, output, args, options, progress)
                files = [output.path]
            else:
                result = encrypt_file(src, output.path, overwrite=args.force, progress=progress, **options)
                stanzas = _stanza_types(result)
                files = [os.fspath(p) for p in result.outputs]
                written = sizes(files)
    fields = {
        "input": args.input,
        "output": args.output,
        "files": files,
        "format": result.source_format,
        "tensors": result.tensors,
        "tensor_bytes": result.nbytes,
        "output_bytes": written,
        "stanzas": stanzas,
        "signed": creds.get("sign_with") is not None,
        "seconds": elapsed(args),
    }
    report(args, fields, _summary("encrypted", args, result, written))
    return EXIT_OK


def _encrypt_to_url(
    src: str,
    fmt: str | None,
    output: Output,
    args: argparse.Namespace,
    options: dict[str, Any],
    progress: Progress,
) -> tuple[Conversion, int, list[str]]:
    """Encrypts one file to a local temporary file and uploads it whole to the URL OUT (with
    options from the environment or fsspec's configuration); returns what was done, the bytes
    uploaded and the file's stanza types."""
    from .._remote import UrlPath, upload
    from ..convert import Conversion, encrypt_file

    if fmt in (None, "index"):  # None: a directory
        raise CliError(
            EXIT_USAGE,
            output.shown,
            "is a URL, which takes one encrypted file, and IN is a sharded checkpoint or a directory",
            "encrypt it to a local directory, then upload its files",
        )
    with upload(output.path, overwrite=args.force) as tmp:
        show_as(tmp, output.shown)
        done = encrypt_file(src, tmp, overwrite=True, progress=progress, **options)
        written, stanzas = sizes([tmp]), _stanza_types(done)
    result = Conversion(done.source_format, "enctensor", [UrlPath(output.path)], done.tensors, done.nbytes)
    return result, written, stanzas


def _stanza_types(result: Conversion) -> list[str]:
    """The stanza types of the (first) encrypted file written, in order (every file of one
    conversion gets the same recipients)."""
    from ..convert import detect_format

    for out in map(os.fspath, result.outputs):
        inside = sorted(os.listdir(out)) if os.path.isdir(out) else []
        for path in [os.path.join(out, name) for name in inside] or [out]:
            with contextlib.suppress(OSError, ValueError):  # a report, not a check: never fails
                if detect_format(path) == "enctensor":
                    return list(api.inspect(path)["stanzas"])
    return []


def _summary(done: str, args: argparse.Namespace, result: Conversion, written: int) -> str:
    parts = len(result.outputs)
    files = f" in {parts} files" if parts > 1 else ""
    return (
        f"{args.output}: {done} {result.tensors} tensor{'' if result.tensors == 1 else 's'} "
        f"({_size(result.nbytes)}) from {args.input},"
        f" {_size(written)} written{files} in {elapsed(args):.1f} s"
    )


# --- decrypt ----------------------------------------------------------------------------------


def cmd_decrypt(args: argparse.Namespace) -> int:
    from ..convert import decrypt_file

    _check_usage(args)
    with input_file(args.input) as src:
        src_fmt = None if _is_directory(src) else _check_encrypted(src, "decrypt")
        if src_fmt == "enctensor-index" and args.input == STDIO:
            raise CliError(
                EXIT_USAGE,
                STDIN_SHOWN,
                "is an encrypted sharded checkpoint index, whose shards are named relative to its own"
                " directory",
                "give the index's file name instead of -",
            )
        output = _output(args, args.input, src_fmt == "enctensor-index")
        creds = credentials(args)
        with _showing(args, f"decrypting {os.path.basename(args.input)}") as progress:
            if output.stream:
                result, written = _decrypt_into_stream(src, output, args, creds, progress)
                files: list[str] = []
            else:
                result = decrypt_file(
                    src,
                    output.path,
                    format=args.format,
                    overwrite=args.force,
                    mode=args.mode,
                    progress=progress,
                    **creds,
                )
                files = [os.fspath(p) for p in result.outputs]
                written = sizes(files)
        signed = True if creds.get("verify_with") is not None else _signed(src, src_fmt)
    _left_out(args, result)
    fields = {
        "input": args.input,
        "output": args.output,
        "files": files,
        "format": result.output_format,
        "tensors": result.tensors,
        "tensor_bytes": result.nbytes,
        "output_bytes": written,
        "signed": signed,
        "signature_checked": creds.get("verify_with") is not None,
        "metadata_left_out": list(result.dropped_metadata),
        "seconds": elapsed(args),
    }
    report(args, fields, _summary("decrypted", args, result, written))
    return EXIT_OK


def _decrypt_into_stream(
    src: str, output: Output, args: argparse.Namespace, creds: dict[str, Any], progress: Progress
) -> tuple[Conversion, int]:
    """Decrypts a single file into a stream as each step is verified (nothing goes to disk)."""
    from ..convert import Conversion, output_format
    from ..convert import safetensors as st
    from ..convert import tvm_params as tvm
    from ..convert._common import Meter, Secret

    fmt = output_format(output.shown, src, args.format)
    if fmt == "index":
        raise CliError(EXIT_USAGE, output.shown, "a single enctensor file does not decrypt to an index")
    if creds.get("expect_checkpoint") is not None:
        raise CliError(
            EXIT_USAGE,
            args.input,
            "--expect-checkpoint pins the checkpoint of a sharded set, and this is a single file",
            "pin a metadata entry with --expect-metadata instead",
        )
    secret = Secret.for_reading(
        creds.get("key"),
        creds.get("passphrase"),
        creds.get("verify_with"),
        max_scrypt_log_n=creds["max_scrypt_log_n"],
        expect_metadata=creds.get("expect_metadata"),
    )
    reader = secret.open(src)
    rows = reader.tensors()
    nbytes = sum(r[4] for r in rows)
    module = st if fmt == "safetensors" else tvm
    with open_stream(output) as out:
        counted = CountingWriter(out)
        dropped = module.write(reader, cast(BinaryIO, counted), meter=Meter(nbytes, progress), shown=src)
    return Conversion("enctensor", fmt, [], len(rows), nbytes, dropped), counted.written


def _signed(src: str, fmt: str | None) -> bool | None:
    """Whether IN carries a publisher signature (every shard of a set); None if not known."""
    paths: list[str] = [src]
    if fmt == "enctensor-index":
        from ..convert.sharded import read_index

        with contextlib.suppress(OSError, ValueError):
            index = read_index(src)
            paths = [os.fspath(index.shard_path(s)) for s in index.shards]
    elif fmt != "enctensor":
        return None
    states = set()
    for p in paths:
        try:
            states.add(bool(api.inspect(p).get("signed")))
        except (OSError, ValueError):
            return None
    return states.pop() if len(states) == 1 else None


def _left_out(args: argparse.Namespace, result: Conversion) -> None:
    """Says which metadata entries OUT could not hold. A safetensors file holds string metadata
    (``__metadata__``), so it keeps all of it; a TVM ``.params`` file holds none."""
    if not result.dropped_metadata or wants_json(args):
        return  # with --json: its metadata_left_out
    what = "a TVM .params file" if result.output_format == "params" else f"a {result.output_format} file"
    keys = ", ".join(repr(k) for k in result.dropped_metadata)
    _note(
        f"warning: {args.output}: {what} holds no metadata; left out {keys}"
        " (decrypt to a .safetensors file to keep it)"
    )


# --- Argument parsing ---------------------------------------------------------------------


def _chunk_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KkMm]i?B?)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 64K or 4096)")
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[(m.group(2) or "")[:1].lower()]
    if n & (n - 1) or not 4096 <= n <= 64 << 20:
        raise argparse.ArgumentTypeError(f"{text}: the chunk size must be a power of two from 4K to 64M")
    return n


def _size_arg(n: int) -> str:
    """``256K``, ``1M``: a chunk size as --chunk-size takes it."""
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n >> 10}K" if n % 1024 == 0 else str(n)


def _octal_mode(text: str) -> int:
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise argparse.ArgumentTypeError(
            f"not a file mode: {text!r} (octal permission bits, e.g. 600 or 0644)"
        )
    return int(digits, 8)


def add_parser(sub: Subparsers) -> None:
    """Adds ``encrypt`` and ``decrypt`` to the subcommands."""
    common = _Parser(add_help=False)
    common.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="overwrite OUT (and shards) if they exist; a symbolic link keeps pointing to the new file, and a"
        " FIFO or character device (e.g. /dev/stdout) is written into, never replaced",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    add_json_option(common)
    _add_encrypt(sub, common)
    _add_decrypt(sub, common)


def _add_encrypt(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "encrypt",
        parents=[common],
        help="encrypt a safetensors file, TVM .params file or sharded checkpoint",
        description="Encrypt IN to the enctensor file OUT. The format of IN is detected from its content:"
        " a .safetensors file, a TVM .params file, or a Hugging Face sharded checkpoint given by its"
        " *.index.json (then OUT is the encrypted index, e.g. model.enct.index.json, and the encrypted"
        " shards, X.enct for X.safetensors, are written next to it; each shard gets the same recipients"
        " and its own signature). A directory IN (a Hugging Face model directory, a TVM tensor cache)"
        " becomes the directory OUT: weights encrypted, other files copied; enctensor.convert says"
        " what it cannot convert.\n\nWhoever holds any of the keys given opens OUT: key files and"
        " recipients can be combined and repeated; a passphrase must be the only way in.\n\n"
        "IN may be - for standard input: it is first copied to a temporary file, readable by you only,"
        " in $TMPDIR (the plaintext is on disk there until enctensor exits; the format is detected and"
        " the tensors mapped from it). OUT may be - for standard output: the encrypted file is written to"
        " a temporary file first (its tables are filled in last), then copied. A file named - is never"
        " made. OUT may also be a URL (s3://, https://, ... through fsspec, with options from the"
        " environment or fsspec's configuration, e.g. FSSPEC_S3) when it is one file: it is written"
        " to a temporary file, then uploaded whole.\n\nOn a terminal, a progress bar and then one"
        " line on stderr say what was written, its size and the time taken (unless --quiet).",
        epilog="examples:\n"
        "  enctensor encrypt model.safetensors model.enct -k model.key\n"
        "  enctensor encrypt model.safetensors model.enct -r x25519:<hex> -r age1... -r kms.pub.pem\n"
        "  enctensor encrypt model.params model.enct -r alice.pub --sign-with publisher.pem\n"
        "  ENCTENSOR_PASSPHRASE=... enctensor encrypt model.safetensors model.enct --passphrase\n"
        "  curl -s https://host/model.safetensors | enctensor encrypt - - -r me.pub > model.enct\n"
        "  enctensor encrypt model.safetensors s3://bucket/model.enct -r age1...\n\n"
        + json_epilog("encrypt")
        + "\n\n"
        + _EPILOG,
    )
    p.add_argument("input", metavar="IN", help="the file to encrypt, or - for standard input")
    p.add_argument(
        "output",
        metavar="OUT",
        help="the enctensor file to write (a path or a URL), or - for standard output",
    )
    g = p.add_argument_group("who can open OUT (key files and recipients, or --passphrase)")
    g.add_argument(
        "-k",
        "--key-file",
        action="append",
        metavar="FILE",
        help="a key file (32 raw bytes or 64 hex characters, as `keygen FILE` writes); repeatable",
    )
    g.add_argument(
        "-r",
        "--recipient",
        action="append",
        metavar="PUB",
        help="an X25519 or RSA public key: x25519:<hex> as `keygen --x25519` prints it, an age recipient"
        " (age1…), or a file holding one of those or a PEM public key; repeatable",
    )
    g.add_argument(
        "-p",
        "--passphrase",
        action="store_true",
        help=f"use a passphrase: from ${PASSPHRASE_ENV} if set, else asked twice on the terminal",
    )
    p.add_argument(
        "-s",
        "--sign-with",
        metavar="PRIVATE_KEY",
        help="sign OUT (every shard) with this Ed25519 private key file (`keygen --ed25519`)",
    )
    p.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help=f"bytes per authenticated chunk, a power of two from 4K to 64M (default {_size_arg(DEFAULT_CHUNK_SIZE)})",
    )
    _scrypt_option(p, "passphrase")
    p.set_defaults(run=cmd_encrypt)


def _add_decrypt(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "decrypt",
        parents=[common],
        help="decrypt to safetensors, TVM .params or a sharded checkpoint",
        description="Decrypt the enctensor file (or encrypted sharded index) IN to OUT, verifying every"
        " byte. The output format comes from --format, else from OUT's extension (.safetensors, .params,"
        " .json for an index), else from what IN was converted from, else safetensors. A safetensors"
        " OUT keeps the file's metadata (in __metadata__); a .params file holds none.\n\n"
        "IN may be - for standard input (copied to a temporary file in $TMPDIR first: it is encrypted),"
        " or a URL (s3://, https://, ... through fsspec, with options from the environment or"
        " fsspec's configuration, e.g. FSSPEC_S3), fetched by ranges as it is decrypted."
        " OUT may be - for standard output (never a terminal): the plaintext is written into it as each"
        " step is verified, and nothing goes to disk; if a check fails, the output stops part way and"
        " the exit status is not 0, so a reader must check it. A file named - is never made.\n\nOn a"
        " terminal, a progress bar and then one line on stderr say what was written, its size and the"
        " time taken (unless --quiet).",
        epilog="examples:\n"
        "  enctensor decrypt model.enct model.safetensors -k model.key\n"
        "  enctensor decrypt model.enct model.params -i me.pem --verify-with ed25519:<hex>\n"
        "  enctensor decrypt model.enct - -i key.age | python load_from_stdin.py\n"
        "  enctensor decrypt s3://bucket/model.enct model.safetensors -i me.pem\n\n"
        + json_epilog("decrypt")
        + "\n\n"
        + _EPILOG,
    )
    p.add_argument(
        "input",
        metavar="IN",
        help="the enctensor file or encrypted index (a path or a URL), or - for standard input",
    )
    p.add_argument("output", metavar="OUT", help="the plaintext file to write, or - for standard output")
    _add_open_options(p)
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="the output format")
    p.add_argument(
        "--mode",
        type=_octal_mode,
        metavar="MODE",
        help="permissions of the plaintext files written, in octal, e.g. 640 (default: 600, readable"
        " by you only; a file replaced with --force keeps its mode)",
    )
    p.set_defaults(run=cmd_decrypt)
