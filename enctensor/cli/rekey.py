"""``enctensor rekey``: change who can open a file (or every shard of a checkpoint)."""

from __future__ import annotations

import argparse
from typing import Any

from ..convert import rekey_file
from ._common import (
    _EPILOG,
    DEFAULT_SCRYPT_LOG_N,
    EXIT_OK,
    EXIT_USAGE,
    NEW_PASSPHRASE_ENV,
    CliError,
    Subparsers,
    _add_open_options,
    _check_encrypted,
    _current_credentials,
    _scrypt_option,
    read_key_file,
    read_new_passphrase,
    read_passphrase,
    read_recipient,
    refuse_duplicates,
)


def cmd_rekey(args: argparse.Namespace) -> int:
    _check_encrypted(args.file, "rekey")
    # Every usage error before any file is read or any passphrase asked for.
    if args.new_passphrase and (args.new_key_file or args.new_recipient):
        raise CliError(
            EXIT_USAGE,
            None,
            "--new-passphrase cannot be combined with --new-key-file or --new-recipient",
            "a passphrase must be the only way to open a file; give one or the other",
        )
    if not (args.new_passphrase or args.new_key_file or args.new_recipient):
        raise CliError(
            EXIT_USAGE,
            None,
            "nothing to re-key to",
            "give --new-key-file FILE, --new-recipient PUB (each may be repeated) or --new-passphrase",
        )
    if args.scrypt_log_n is not None and not args.new_passphrase:
        raise CliError(
            EXIT_USAGE,
            None,
            "--scrypt-log-n sets the new passphrase's work factor, and no --new-passphrase is given",
            "add --new-passphrase, or leave --scrypt-log-n out",
        )
    current = _current_credentials(args)
    new_keys = [read_key_file(k, "--new-key-file") for k in args.new_key_file or ()]
    new_recipients = [read_recipient(r) for r in args.new_recipient or ()]
    refuse_duplicates(new_keys, "--new-key-file")
    refuse_duplicates(new_recipients, "--new-recipient")
    if "passphrase" in current:
        current["passphrase"] = read_passphrase(confirm=False)
    new_passphrase = read_new_passphrase() if args.new_passphrase else None

    def report(path: Any, how: str) -> None:
        if not args.quiet:
            what = (
                "re-keyed in place (one page rewritten)"
                if how == "in-place"
                else "re-keyed, rewritten (the new stanzas did not fit in the first page; tensor bytes copied)"
            )
            print(f"{path}: {what}", flush=True)

    rekey_file(
        args.file,
        new_keys=new_keys,
        new_recipients=new_recipients,
        new_passphrase=new_passphrase,
        scrypt_log_n=DEFAULT_SCRYPT_LOG_N if args.scrypt_log_n is None else args.scrypt_log_n,
        on_done=report,
        **current,
    )
    return EXIT_OK


# --- Argument parsing ---------------------------------------------------------------------


def add_parser(sub: Subparsers) -> None:
    """Adds ``rekey`` to the subcommands."""
    p = sub.add_parser(
        "rekey",
        help="change who can open a file (or every shard of a checkpoint), in place",
        description="Replace the key stanzas of FILE (or of every shard of an encrypted index): opened"
        " with a current key file, identity or passphrase, it will open with the new key files,"
        " recipients or passphrase only. Tensor bytes, header, MAC and signature are untouched: usually"
        " one single-page write in place; when the new stanzas do not fit, the file is rewritten"
        " atomically. Prints which, for each file.\n\nRe-keying keeps the file key: whoever could read"
        " the file and kept its file key still can. To revoke access, decrypt and encrypt again.",
        epilog="examples:\n"
        "  enctensor rekey model.enct -k old.key --new-key-file new.key\n"
        "  enctensor rekey model.enct.index.json -i me.pem --new-recipient me.pub -r alice.pub\n"
        "  ENCTENSOR_PASSPHRASE=old ENCTENSOR_NEW_PASSPHRASE=new enctensor rekey m.enct -p"
        " --new-passphrase\n\n" + _EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="an enctensor file or encrypted sharded checkpoint index")
    _add_open_options(p, verify=False)
    g = p.add_argument_group("who can open it afterwards (new key files and recipients, or --new-passphrase)")
    g.add_argument(
        "--new-key-file",
        action="append",
        metavar="FILE",
        help="a key file; repeatable",
    )
    g.add_argument(
        "-r",
        "--new-recipient",
        action="append",
        metavar="PUB",
        help="an X25519 or RSA public key (x25519:<hex> or a file holding that or a PEM public key); repeatable",
    )
    g.add_argument(
        "--new-passphrase",
        action="store_true",
        help=f"a new passphrase: from ${NEW_PASSPHRASE_ENV} if set, else asked twice on the terminal",
    )
    _scrypt_option(p, "new passphrase")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=cmd_rekey)
