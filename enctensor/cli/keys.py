"""``enctensor keygen`` and ``enctensor pubkey``: make keys, and print the public part of one."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from .. import generate_key
from .._keys import age_recipient_text, ed25519_public_text, x25519_public_text
from ._common import (
    _KEYS_EPILOG,
    DEFAULT_RSA_BITS,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    IDENTITY_PASSPHRASE_ENV,
    RSA_BITS,
    CliError,
    Subparsers,
    _env_or_prompt,
    _kind,
    _progress,
    _size,
    read_private_key,
)
from ._output import add_json_option, elapsed, json_epilog, report, wants_json


def public_text(key: object) -> str:
    """What to hand out for a private key: its one-line form, or a PEM public key for RSA."""
    if isinstance(key, x25519.X25519PrivateKey):
        return x25519_public_text(key.public_key()) + "\n"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ed25519_public_text(key.public_key()) + "\n"
    if isinstance(key, rsa.RSAPrivateKey):
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
    raise TypeError(f"no public form for {type(key).__name__}")


def _refuse_existing_key(path: str) -> None:
    if os.path.lexists(path):
        raise CliError(
            EXIT_IO, path, "already exists", "keygen never overwrites a key file; choose another name"
        )


def _create_new(path: str, data: bytes, mode: int) -> None:
    """Writes a new file: O_EXCL (never overwrites: a lost key is lost data), created with
    ``mode`` from the start (not chmod-ed later), fsync-ed; removed again if writing fails."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        _refuse_existing_key(path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


_KIND_NAMES = {
    None: "key file (32 random bytes)",
    "x25519": "X25519 private key",
    "rsa": "RSA private key",
    "ed25519": "Ed25519 signing key",
}


def _check_keygen_usage(args: argparse.Namespace) -> None:
    kind: str | None = args.kind
    if args.out == "-":
        raise CliError(
            EXIT_USAGE,
            None,
            "keygen writes a new key to a file only (created readable by you only), not to stdout",
            "give a file name",
        )
    if args.bits is not None and kind != "rsa":
        raise CliError(EXIT_USAGE, None, "--bits is for RSA keys", "use it with --rsa")
    if args.protect and kind is None:
        raise CliError(
            EXIT_USAGE,
            None,
            "--protect is for private keys (--x25519, --rsa, --ed25519): a key file is 32 raw bytes",
            "to protect a file with a passphrase, encrypt it with --passphrase",
        )
    if args.public_out is not None:
        if kind is None:
            raise CliError(
                EXIT_USAGE,
                None,
                "a key file has no public part, so --public-out is for --x25519, --rsa and --ed25519",
            )
        if args.public_out != "-" and os.path.abspath(args.public_out) == os.path.abspath(args.out):
            raise CliError(EXIT_USAGE, args.out, "is given both as OUT and as --public-out", "give two names")


def _new_private_key(args: argparse.Namespace) -> Any:
    if args.kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    if args.kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    progress = _progress(args, f"generating an RSA-{args.bits or DEFAULT_RSA_BITS} key")
    with progress.ticking():
        key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits or DEFAULT_RSA_BITS)
    progress.close()
    return key


def cmd_keygen(args: argparse.Namespace) -> int:
    _check_keygen_usage(args)
    public_out = None if args.public_out in (None, "-") else args.public_out
    _refuse_existing_key(args.out)
    if public_out is not None:
        _refuse_existing_key(public_out)
    # Asked before the key is made (and twice): a typo must not lock the new key away.
    password = (
        _env_or_prompt(IDENTITY_PASSPHRASE_ENV, "Enter passphrase for the new key", confirm=True)
        if args.protect
        else None
    )
    key: Any = None
    public: str | None = None
    if args.kind is None:
        data = (generate_key().hex() + "\n").encode("ascii")
    else:
        key = _new_private_key(args)
        encryption: serialization.KeySerializationEncryption = (
            serialization.NoEncryption()
            if password is None
            else serialization.BestAvailableEncryption(password.encode("utf-8"))
        )
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        public = public_text(key)
    _create_new(args.out, data, 0o600)
    if public is not None and public_out is not None:
        try:
            _create_new(public_out, public.encode("ascii"), 0o644)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(args.out)  # ours, just made: no key pair is left half written
            raise
    elif public is not None and not wants_json(args):
        sys.stdout.write(public)
        sys.stdout.flush()
    _report_keygen(args, key, len(data), public, public_out, protected=password is not None)
    return EXIT_OK


def _report_keygen(
    args: argparse.Namespace, key: Any, size: int, public: str | None, public_out: str | None, protected: bool
) -> None:
    where = (
        f"; its public key is in {public_out}"
        if public_out
        else "; its public key is on stdout"
        if public is not None
        else ""
    )
    summary = (
        f"{args.out}: wrote a new {_KIND_NAMES[args.kind]} ({_size(size)}, mode 0600"
        + (", password-protected" if protected else "")
        + f") in {elapsed(args):.2f} s{where}"
    )
    fields = {
        "kind": args.kind or "key",
        "file": args.out,
        "bits": key.key_size if isinstance(key, rsa.RSAPrivateKey) else None,
        "protected": protected,
        "public_key": public.strip() if public is not None and args.kind != "rsa" else public,
        "age_recipient": age_recipient_text(key.public_key()) if args.kind == "x25519" else None,
        "public_key_file": public_out,
        "seconds": elapsed(args),
    }
    report(args, fields, summary)


def cmd_pubkey(args: argparse.Namespace) -> int:
    key = read_private_key(args.key, "KEY")
    if not isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CliError(EXIT_USAGE, args.key, f"is {_kind(key)}; enctensor uses X25519, RSA and Ed25519 keys")
    if args.age:
        if not isinstance(key, x25519.X25519PrivateKey):
            raise CliError(EXIT_USAGE, args.key, f"is {_kind(key)}; --age prints X25519 recipients only")
        sys.stdout.write(age_recipient_text(key.public_key()) + "\n")
    else:
        sys.stdout.write(public_text(key))
    return EXIT_OK


# --- Argument parsing ---------------------------------------------------------------------


def add_parser(sub: Subparsers) -> None:
    """Adds ``keygen`` and ``pubkey`` to the subcommands."""
    _add_keygen(sub)
    _add_pubkey(sub)


def _add_keygen(sub: Subparsers) -> None:
    p = sub.add_parser(
        "keygen",
        help="make a new key file, X25519 or RSA key pair, or Ed25519 signing key",
        description="Make a new key, readable by you only (mode 0600), in OUT. Never overwrites a file."
        "\n\nWithout an option, OUT gets a random 32-byte key (64 hex characters), for --key-file."
        " With --x25519 or --rsa, OUT gets a private key (PEM, PKCS#8), for --identity, and its public"
        " key is printed on stdout: the recipient that others encrypt to (--recipient). With --ed25519,"
        " OUT gets a publisher signing key (--sign-with) and the printed ed25519:<hex> checks the"
        " signatures (--verify-with).\n\nWith --protect, the private key is encrypted with a passphrase"
        f" (PKCS#8, from ${IDENTITY_PASSPHRASE_ENV} if set, else asked twice on the terminal); --identity"
        " and --sign-with ask for it (or read the same variable) when they read the key.\n\nOn a"
        " terminal, one line on stderr says what was written (unless --quiet).",
        epilog="examples:\n"
        "  enctensor keygen model.key\n"
        "  enctensor keygen --x25519 me.pem > me.pub        # me.pub: x25519:<hex>\n"
        "  enctensor keygen --x25519 --protect me.pem --public-out me.pub\n"
        "  enctensor keygen --rsa --bits 4096 kms.pem --public-out kms.pub.pem\n"
        "  enctensor keygen --ed25519 publisher.pem > publisher.pub\n\n"
        + json_epilog("keygen")
        + "\n\n"
        + _KEYS_EPILOG,
    )
    p.add_argument("out", metavar="OUT", help="the key file to create")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--x25519",
        dest="kind",
        action="store_const",
        const="x25519",
        help="an X25519 private key; prints the recipient x25519:<hex>",
    )
    kind.add_argument(
        "--rsa",
        dest="kind",
        action="store_const",
        const="rsa",
        help="an RSA private key; prints the PEM public key",
    )
    kind.add_argument(
        "--ed25519",
        dest="kind",
        action="store_const",
        const="ed25519",
        help="an Ed25519 publisher signing key; prints the verification key ed25519:<hex>",
    )
    p.add_argument(
        "--bits",
        type=int,
        choices=RSA_BITS,
        help=f"the RSA modulus size (default {DEFAULT_RSA_BITS})",
    )
    p.add_argument(
        "--public-out",
        metavar="FILE",
        help="write the public key to FILE (never overwritten) instead of printing it (- prints it)",
    )
    p.add_argument(
        "--protect",
        action="store_true",
        help=f"encrypt the private key with a passphrase (from ${IDENTITY_PASSPHRASE_ENV}, else asked twice)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display and no summary line")
    add_json_option(p)
    p.set_defaults(run=cmd_keygen)


def _add_pubkey(sub: Subparsers) -> None:
    p = sub.add_parser(
        "pubkey",
        help="print the public key of a private key file",
        description="Print the public key of the private key file KEY: x25519:<hex> for an X25519 key"
        " (the recipient; age1… with --age), ed25519:<hex> for an Ed25519 signing key (the verification"
        " key), the PEM public key for RSA. KEY may be password-protected (then its passphrase is read"
        f" from ${IDENTITY_PASSPHRASE_ENV}, else asked) or an age identity file (AGE-SECRET-KEY-1…).",
    )
    p.add_argument("key", metavar="KEY", help="a PEM private key file, or an age identity file")
    p.add_argument(
        "--age",
        action="store_true",
        help="print an X25519 recipient in age's form (age1…), which enctensor takes too",
    )
    p.set_defaults(run=cmd_pubkey)
