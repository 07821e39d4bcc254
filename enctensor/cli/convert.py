"""``enctensor encrypt`` and ``enctensor decrypt``: convert between plaintext formats
(safetensors, TVM .params, sharded checkpoints) and enctensor files."""

from __future__ import annotations

import argparse
import os
import re
import sys

from .._api import DEFAULT_CHUNK_SIZE
from ..convert import FORMATS, decrypt_file, detect_format, encrypt_file
from ._common import (
    _EPILOG,
    DEFAULT_SCRYPT_LOG_N,
    EXIT_FORMAT,
    EXIT_OK,
    EXIT_USAGE,
    PASSPHRASE_ENV,
    CliError,
    Subparsers,
    _add_open_options,
    _check_encrypted,
    _Parser,
    _progress,
    _refuse_existing,
    _refuse_same_file,
    _scrypt_option,
    credentials,
    write_credentials,
)


def _warn(msg: str) -> None:
    print(f"enctensor: warning: {msg}", file=sys.stderr)


def cmd_encrypt(args: argparse.Namespace) -> int:
    fmt = detect_format(args.input)
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
    if fmt == "index" and not args.output.endswith(".json"):
        raise CliError(
            EXIT_USAGE,
            args.output,
            "a sharded checkpoint's encrypted index must be a .json file",
            "name it like model.enct.index.json; the shards are written next to it",
        )
    _refuse_same_file(args.input, args.output)
    _refuse_existing(args.output, args.force)
    creds = write_credentials(args)
    progress = _progress(args, f"encrypting {os.path.basename(args.input)}")
    try:
        encrypt_file(
            args.input,
            args.output,
            chunk_size=args.chunk_size,
            scrypt_log_n=DEFAULT_SCRYPT_LOG_N if args.scrypt_log_n is None else args.scrypt_log_n,
            overwrite=args.force,
            progress=progress,
            **creds,
        )
    finally:
        progress.close()
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    _check_encrypted(args.input, "decrypt")
    _refuse_same_file(args.input, args.output)
    _refuse_existing(args.output, args.force)
    creds = credentials(args)
    progress = _progress(args, f"decrypting {os.path.basename(args.input)}")
    try:
        result = decrypt_file(
            args.input,
            args.output,
            format=args.format,
            overwrite=args.force,
            mode=args.mode,
            progress=progress,
            **creds,
        )
    finally:
        progress.close()
    if result.dropped_metadata:
        _warn(
            f"{args.output}: a {result.output_format} file cannot hold metadata; dropped"
            f" {', '.join(repr(k) for k in result.dropped_metadata)}"
        )
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
    common.add_argument("-f", "--force", action="store_true", help="overwrite OUT (and shards) if they exist")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
        " and its own signature).\n\nWhoever holds any of the keys given opens OUT: key files and"
        " recipients can be combined and repeated; a passphrase must be the only way in.",
        epilog="examples:\n"
        "  enctensor encrypt model.safetensors model.enct -k model.key\n"
        "  enctensor encrypt model.safetensors model.enct -r x25519:<hex> -r kms.pub.pem\n"
        "  enctensor encrypt model.params model.enct -r alice.pub --sign-with publisher.pem\n"
        "  ENCTENSOR_PASSPHRASE=... enctensor encrypt model.safetensors model.enct --passphrase\n\n"
        + _EPILOG,
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
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
        help="an X25519 or RSA public key: x25519:<hex> as `keygen --x25519` prints it, or a file"
        " holding that or a PEM public key; repeatable",
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
        " .json for an index), else from what IN was converted from, else safetensors.",
        epilog="examples:\n"
        "  enctensor decrypt model.enct model.safetensors -k model.key\n"
        "  enctensor decrypt model.enct model.params -i me.pem --verify-with ed25519:<hex>\n\n" + _EPILOG,
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    _add_open_options(p)
    p.add_argument("--format", choices=FORMATS, help="the output format")
    p.add_argument(
        "--mode",
        type=_octal_mode,
        metavar="MODE",
        help="permissions of the plaintext files written, in octal, e.g. 640 (default: 600, readable"
        " by you only; a file replaced with --force keeps its mode)",
    )
    p.set_defaults(run=cmd_decrypt)
