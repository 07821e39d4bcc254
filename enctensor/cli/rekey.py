"""``enctensor rekey``: change who can open a file (or every shard of a checkpoint): add and
remove stanzas, keeping the others, or replace them all."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa, x25519

from .. import _api as api
from .._api import DEFAULT_SCRYPT_LOG_N
from .._remote import is_url
from ._common import (
    _EPILOG,
    EXIT_OK,
    EXIT_USAGE,
    NEW_PASSPHRASE_ENV,
    CliError,
    Subparsers,
    _add_open_options,
    _check_encrypted,
    _current_credentials,
    _scrypt_option,
    read_identity,
    read_key_file,
    read_new_passphrase,
    read_passphrase,
    read_recipient,
    refuse_duplicates,
)
from ._output import add_json_option, elapsed, json_epilog, wants_json
from ._output import report as report_json
from ._stanzas import holders, merged, named, stanza_lines

_ADD = ("add_key_file", "add_recipient", "add_passphrase")
_REMOVE = ("remove_key_file", "remove_identity", "remove_recipient", "remove_stanza", "remove_passphrase")
_OLD = ("new_key_file", "new_recipient", "new_passphrase")


def _usage(what: str, hint: str) -> CliError:
    return CliError(EXIT_USAGE, None, what, hint)


def _check_usage(args: argparse.Namespace) -> None:
    """Every usage error, before any file is read or any passphrase asked for."""
    given = {name for name in (*_ADD, *_REMOVE, *_OLD) if getattr(args, name)}
    old, adding, removing = given & set(_OLD), given & set(_ADD), given & set(_REMOVE)
    if old and (adding or removing or args.replace):
        raise _usage(
            "--new-key-file, --new-recipient and --new-passphrase replace every stanza: they cannot be"
            " combined with --add-*, --remove-* or --replace",
            "to keep the other stanzas use --add-key-file / -r/--add-recipient; to replace them all,"
            " --replace with --add-*",
        )
    if args.replace and removing:
        raise _usage(
            "--replace removes every stanza: name none to remove", "leave out --remove-* or --replace"
        )
    passphrase = args.new_passphrase or args.add_passphrase
    if passphrase and (args.new_key_file or args.new_recipient or args.add_key_file or args.add_recipient):
        flag = "--new-passphrase" if args.new_passphrase else "--add-passphrase"
        raise _usage(
            f"{flag} cannot be combined with --{'new' if old else 'add'}-key-file or"
            f" --{'new' if old else 'add'}-recipient",
            "a passphrase must be the only way to open a file; give one or the other",
        )
    if not given:
        raise _usage(
            "nothing to re-key to",
            "give stanzas to add (--add-key-file FILE, -r/--add-recipient PUB, --add-passphrase) or to remove"
            " (--remove-key-file, --remove-identity, --remove-recipient, --remove-stanza N,"
            " --remove-passphrase); --new-key-file/--new-recipient/--new-passphrase replace every stanza",
        )
    if args.replace and not adding:
        raise _usage(
            "--replace needs the new stanzas", "give --add-key-file, -r/--add-recipient or --add-passphrase"
        )
    if args.scrypt_log_n is not None and not passphrase:
        raise _usage(
            "--scrypt-log-n sets the new passphrase's work factor, and neither --add-passphrase nor"
            " --new-passphrase is given",
            "add --add-passphrase, or leave --scrypt-log-n out",
        )
    if args.fingerprint and (passphrase or not (adding or old)):
        raise _usage(
            "--fingerprint marks the key and recipient stanzas being added"
            + (", and a passphrase stanza has none" if passphrase else ", and none is added"),
            "leave --fingerprint out, or add --add-key-file / -r/--add-recipient",
        )


def _older(args: argparse.Namespace) -> bool:
    """Whether the older options (--new-*: replace every stanza) are used."""
    return bool(args.new_key_file or args.new_recipient or args.new_passphrase)


def _changes(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The stanza changes for ``rekey_file`` (every key file read), and the names of the
    stanzas added, in the order they are written after the kept ones: key files, then X25519,
    then RSA recipients (then a passphrase, added by the caller)."""
    old = _older(args)
    option = "--new" if old else "--add"
    key_files = (args.new_key_file if old else args.add_key_file) or []
    recipient_args = (args.new_recipient if old else args.add_recipient) or []
    keys = [read_key_file(k, f"{option}-key-file") for k in key_files]
    recipients = [read_recipient(r) for r in recipient_args]
    refuse_duplicates(keys, f"{option}-key-file")
    refuse_duplicates(recipients, f"{option}-recipient")
    names = named(recipient_args, f"{option}-recipient", public=True)
    added = [
        *named(key_files, f"{option}-key-file"),
        *(n for n, r in zip(names, recipients, strict=True) if isinstance(r, x25519.X25519PublicKey)),
        *(n for n, r in zip(names, recipients, strict=True) if isinstance(r, rsa.RSAPublicKey)),
    ]
    if old:
        return {"new_keys": keys, "new_recipients": recipients}, added
    remove_keys: list[Any] = [read_key_file(k, "--remove-key-file") for k in args.remove_key_file or ()]
    remove_keys += [read_identity(i) for i in args.remove_identity or ()]
    remove_recipients = [read_recipient(r) for r in args.remove_recipient or ()]
    refuse_duplicates(remove_recipients, "--remove-recipient")
    changes = {
        "add_keys": keys,
        "add_recipients": recipients,
        "remove_keys": remove_keys,
        "remove_recipients": remove_recipients,
        "remove_stanzas": args.remove_stanza or [],
        "remove_passphrase": args.remove_passphrase,
        "replace": args.replace,
    }
    return changes, added


def cmd_rekey(args: argparse.Namespace) -> int:
    from ..convert import rekey_file  # imported when needed: start-up time

    if is_url(args.file):
        raise CliError(
            EXIT_USAGE,
            args.file,
            "is a URL, and rekey rewrites a local file in place",
            "download it, re-key the copy, then upload it again",
        )
    _check_encrypted(args.file, "rekey")
    _check_usage(args)
    current = _current_credentials(args)
    changes, added = _changes(args)
    if "passphrase" in current:
        current["passphrase"] = read_passphrase(confirm=False)
    if args.new_passphrase or args.add_passphrase:
        changes["new_passphrase" if _older(args) else "add_passphrase"] = read_new_passphrase()
        added.append("a passphrase")
    if args.fingerprint:
        changes["fingerprints"] = True
    # The keys that opened the file, by name: the list marks the stanzas they open.
    names = named(args.key_file, "-k/--key-file") + named(args.identity, "-i/--identity")
    opened_with = list(zip(names, current.get("key", []), strict=True))
    rekeyed: list[dict[str, str]] = []

    def report(path: Any, how: str) -> None:
        rekeyed.append({"file": os.fspath(path), "how": "in-place" if how == "in-place" else "rewritten"})
        if not args.quiet and not wants_json(args):
            _print_rekeyed(path, how, opened_with, added)

    scrypt_log_n = DEFAULT_SCRYPT_LOG_N if args.scrypt_log_n is None else args.scrypt_log_n
    rekey_file(args.file, scrypt_log_n=scrypt_log_n, on_done=report, **changes, **current)
    if wants_json(args):
        report_json(args, {"file": args.file, "files": rekeyed, "seconds": elapsed(args)})
    return EXIT_OK


def _print_rekeyed(path: Any, how: str, opened_with: list[tuple[str, Any]], added: list[str]) -> None:
    """How ``path`` was written, then who can open it now: its stanzas, numbered as ``inspect``
    lists them, marked with the keys given that open them and the arguments they were added for."""
    what = (
        "re-keyed in place (one page rewritten)"
        if how == "in-place"
        else "re-keyed, rewritten (the new stanzas did not fit in the first page; tensor bytes copied)"
    )
    print(f"{path}: {what}", flush=True)
    details = api.inspect(path)["stanza_details"]
    first_added = len(details) - len(added)
    notes = merged(
        holders(path, opened_with), {first_added + i: [f"added: {n}"] for i, n in enumerate(added)}
    )
    print(f"  who can open it now ({len(details)} stanza(s), numbered as `enctensor inspect` lists them):")
    print("\n".join(stanza_lines(details, notes, "    ")), flush=True)


# --- Argument parsing ---------------------------------------------------------------------


def add_parser(sub: Subparsers) -> None:
    """Adds ``rekey`` to the subcommands."""
    p = sub.add_parser(
        "rekey",
        help="add or remove who can open a file (or every shard of a checkpoint), in place",
        description="Change the key stanzas of FILE (or of every shard of an encrypted index), opened with a"
        " current key file, identity or passphrase: add stanzas for new key files, recipients or a"
        " passphrase, and remove stanzas, keeping every other one. Then print the stanzas, numbered as"
        " `inspect` lists them, with what is known of whose each is. Tensor bytes, header, MAC and"
        " signature are untouched: usually one single-page write in place; when the new stanzas do not"
        " fit, the file is rewritten atomically.\n\n"
        "A stanza does not say whose it is unless it was written with --fingerprint (then anyone who knows"
        " a recipient's public key can tell that it opens the file: see SECURITY.md). Without fingerprints,"
        " remove a stanza with the key that opens it (--remove-key-file, --remove-identity) or by its"
        " number (--remove-stanza N). A change that would leave no stanza is refused.\n\n"
        "Re-keying keeps the file key: whoever could read the file and kept its file key still can. To"
        " revoke access, decrypt and encrypt again.",
        epilog="examples:\n"
        "  enctensor rekey model.enct -i me.pem -r alice.pub            # alice can open it too\n"
        "  enctensor rekey model.enct -i me.pem --remove-identity bob.pem   # bob's stanza goes\n"
        "  enctensor rekey model.enct -i me.pem -r carol.pub --fingerprint\n"
        "  enctensor rekey model.enct -i me.pem --remove-recipient carol.pub   # needs the fingerprint\n"
        "  enctensor rekey model.enct -k old.key --remove-stanza 1\n"
        "  enctensor rekey model.enct.index.json -k old.key --replace --add-key-file new.key\n"
        "  ENCTENSOR_PASSPHRASE=old ENCTENSOR_NEW_PASSPHRASE=new enctensor rekey m.enct -p"
        " --remove-passphrase --add-passphrase\n\n" + json_epilog("rekey") + "\n\n" + _EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="an enctensor file or encrypted sharded checkpoint index")
    _add_open_options(p, verify=False)
    add = p.add_argument_group("stanzas to add (after the ones kept)")
    add.add_argument("--add-key-file", action="append", metavar="FILE", help="a key file; repeatable")
    add.add_argument(
        "-r",
        "--add-recipient",
        action="append",
        metavar="PUB",
        help="an X25519 or RSA public key (x25519:<hex>, age1…, or a file holding that or a PEM public key);"
        " repeatable",
    )
    add.add_argument(
        "--add-passphrase",
        action="store_true",
        help=f"a passphrase (from ${NEW_PASSPHRASE_ENV} if set, else asked twice); it must be the only"
        " stanza: remove every other one (or --replace)",
    )
    add.add_argument(
        "--fingerprint",
        action="store_true",
        help="the added key and recipient stanzas carry their recipient's fingerprint, so that"
        " --remove-recipient and `inspect` can tell whose they are; the file then names its recipients to"
        " anyone who knows their public keys (default: no fingerprint, as in age)",
    )
    _scrypt_option(p, "new passphrase")
    rm = p.add_argument_group("stanzas to remove (every other stanza is kept)")
    rm.add_argument(
        "--remove-key-file",
        action="append",
        metavar="FILE",
        help="the stanza this key file opens; repeatable",
    )
    rm.add_argument(
        "--remove-identity",
        action="append",
        metavar="PRIVATE_KEY",
        help="the stanza this X25519 or RSA private key (or age identity) opens; repeatable",
    )
    rm.add_argument(
        "--remove-recipient",
        action="append",
        metavar="PUB",
        help="the stanza carrying this public key's fingerprint (only in files written with --fingerprint;"
        " otherwise use --remove-identity or --remove-stanza); repeatable",
    )
    rm.add_argument(
        "--remove-stanza",
        action="append",
        type=_position,
        metavar="N",
        help="the stanza at position N, from 0, as `enctensor inspect FILE` lists them; repeatable",
    )
    rm.add_argument("--remove-passphrase", action="store_true", help="the passphrase stanza")
    rm.add_argument(
        "--replace",
        action="store_true",
        help="remove every current stanza: the file opens with the --add-* ones only",
    )
    old = p.add_argument_group("the older form: replace every stanza (same as --replace with --add-*)")
    old.add_argument("--new-key-file", action="append", metavar="FILE", help="a key file; repeatable")
    old.add_argument("--new-recipient", action="append", metavar="PUB", help="a public key; repeatable")
    old.add_argument(
        "--new-passphrase",
        action="store_true",
        help=f"a new passphrase: from ${NEW_PASSPHRASE_ENV} if set, else asked twice on the terminal",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    add_json_option(p)
    p.set_defaults(run=cmd_rekey)


def _position(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a stanza number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("stanzas are numbered from 0, as `enctensor inspect` lists them")
    return n
