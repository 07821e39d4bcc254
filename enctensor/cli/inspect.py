"""``enctensor inspect`` (the header, without a key) and ``enctensor verify`` (every tag and
the signature, with a key, writing no plaintext)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, TextIO

from .. import _api as api
from .._remote import is_url
from ..errors import FormatError
from ._common import (
    _EPILOG,
    EXIT_FORMAT,
    EXIT_OK,
    CliError,
    Subparsers,
    _add_open_options,
    _check_encrypted,
    _describe,
    _opens_with,
    _progress,
    _size,
    credentials,
    read_identity,
    read_key_file,
    refuse_directory,
    stanza_summary,
)
from ._output import add_json_option, elapsed, json_epilog, report, wants_json
from ._sets import inspect_set
from ._stanzas import Notes, holders, named, stanza_lines


def _human_inspect(
    path: str, info: dict[str, Any], out: TextIO, note: bool = True, holders: Notes | None = None
) -> None:
    tensors = info["tensors"]
    total = sum(t["nbytes"] for t in tensors)
    enc = sum(1 for t in tensors if t["encrypted"])
    details = info.get("stanza_details") or [{"type": t} for t in info["stanzas"]]
    out.write(f"{path}: enctensor v{info['format_version']}, {_size(info['file_size'])}\n")
    out.write(f"  chunk size  {_size(info['chunk_size'])}\n")
    opens = _opens_with(details)
    out.write(f"  stanzas     {stanza_summary(details)}" + (f" (open with {opens})" if opens else "") + "\n")
    out.writelines(line + "\n" for line in stanza_lines(details, holders or {}, "    "))
    if "signed" in info:
        out.write(
            "  signed      "
            + ("yes, Ed25519 (check it with --verify-with PUBLISHER_KEY)" if info["signed"] else "no")
            + "\n"
        )
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
    if note:
        out.write(
            "  (read without a key: nothing above is authenticated until the file is opened with its key)\n"
        )


def _keys_to_match(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(name, key)`` for each --key-file and --identity: the stanzas each opens are marked."""
    return [
        *zip(
            named(args.key_file, "-k/--key-file"),
            (read_key_file(k) for k in args.key_file or ()),
            strict=True,
        ),
        *zip(
            named(args.identity, "-i/--identity"),
            (read_identity(i) for i in args.identity or ()),
            strict=True,
        ),
    ]


def _opened_by(notes: Notes) -> dict[str, list[int]]:
    """``--json``'s ``stanzas_opened_by``: each key's name and the stanzas it opens."""
    out: dict[str, list[int]] = {}
    for i, texts in sorted(notes.items()):
        for t in texts:
            out.setdefault(t.removeprefix("opens with "), []).append(i)
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    refuse_directory(args.file)
    keys = _keys_to_match(args)
    # The converters (to name what a file is) are imported only when it is not an enctensor
    # file: start-up time.
    if api._index_format(args.file) == "enctensor-index":
        return _inspect_index(args, keys)
    failed = False
    try:
        info = api.inspect(args.file)
    except FormatError:
        failed = True
    if failed:
        _not_an_enctensor_file(args.file)
    notes = holders(args.file, keys)
    if args.json:
        extra = (
            {"stanzas_opened_by": {name: _opened_by(notes).get(name, []) for name, _ in keys}} if keys else {}
        )
        json.dump({"file": args.file, **info, **extra}, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _human_inspect(args.file, info, sys.stdout, holders=notes)
        _say_which_open_none(keys, notes, sys.stdout)
    return EXIT_OK


def _say_which_open_none(keys: list[tuple[str, Any]], notes: Notes, out: TextIO) -> None:
    opening = set(_opened_by(notes))
    for name, _ in keys:
        if name not in opening:
            out.write(f"  ({name} opens none of these stanzas)\n")


def _not_an_enctensor_file(path: str) -> None:
    """Says what ``path`` is instead, if it is one of the formats the converters know."""
    from ..convert import FORMATS, detect_format

    fmt = None if is_url(path) else detect_format(path)
    if fmt == "enctensor" or is_url(path):
        api.inspect(path)  # a damaged enctensor file: its own error
    raise CliError(
        EXIT_FORMAT,
        path,
        "not an enctensor file" + (f" (it looks like {_describe(fmt)})" if fmt in FORMATS else ""),
        "inspect reads files made by `enctensor encrypt` (and their sharded checkpoint indexes)",
    )


def _inspect_index(args: argparse.Namespace, keys: list[tuple[str, Any]]) -> int:
    shards = inspect_set(args.file)
    if args.json:
        json.dump(shards.as_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    out = sys.stdout
    out.write(
        f"{args.file}: encrypted sharded checkpoint, {len(shards.shards)} shard(s),"
        f" {shards.tensors} tensors, {_size(shards.nbytes)}\n"
    )
    out.write(f"  checkpoint  {', '.join(shards.checkpoints) or '(not recorded)'}\n")
    out.write(
        f"  set         {shards.set_problem or 'whole (as far as the headers, read without a key, say)'}\n"
    )
    for n, shard in enumerate(shards.shards, 1):
        out.write(f"\nshard {n} of {len(shards.shards)}: {shard.name}")
        if shard.info is None:
            out.write(f"\n  did not open: {shard.error}\n")
            continue
        out.write(f" (listed with {shard.listed} tensors)\n")
        notes = holders(shard.path, keys)
        _human_inspect(os.fspath(shard.path), shard.info, out, note=False, holders=notes)
        _say_which_open_none(keys, notes, out)
    out.write(
        "\n(read without a key: nothing above is authenticated until the files are opened with their key)\n"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from ..convert import detect_format, verify_file

    # An encrypted model directory is verified whole: weights and the copied files they list.
    if is_url(args.file) or not (
        os.path.isdir(args.file) and detect_format(args.file) == "enctensor-directory"
    ):
        _check_encrypted(args.file, "verify")
    creds = credentials(args)
    progress = _progress(args, f"verifying {os.path.basename(args.file)}")
    try:
        with progress.ticking():
            tensors, nbytes = verify_file(args.file, **creds)
    finally:
        progress.close()
    checked = creds.get("verify_with") is not None
    signed = True if checked else _is_signed(args.file)
    if wants_json(args):
        fields = {
            "file": args.file,
            "tensors": tensors,
            "tensor_bytes": nbytes,
            "signed": signed,
            "signature_checked": checked,
            "seconds": elapsed(args),
        }
        report(args, fields)
    elif not args.quiet:
        if checked:
            note = ", publisher signature valid"
        elif signed:
            # The MAC proves only that a key holder wrote the file: say the signature was skipped.
            note = "; the file is signed, but the signature was NOT checked (give --verify-with)"
        else:
            note = ""
        print(f"{args.file}: OK ({tensors} tensors, {_size(nbytes)}, every chunk verified{note})")
    return EXIT_OK


def _is_signed(path: str) -> bool | None:
    """Whether a file (every shard of an encrypted index) carries a publisher signature; None
    if that is not known (shards that differ, or that cannot be read)."""
    from ..convert import detect_format

    if is_url(path):
        with contextlib.suppress(OSError, ValueError):
            return bool(api.inspect(path).get("signed"))
        return None
    if detect_format(path) == "enctensor-index":
        states = {None if s.info is None else bool(s.info.get("signed")) for s in inspect_set(path).shards}
        return states.pop() if len(states) == 1 else None
    try:
        return bool(api.inspect(path).get("signed"))
    except (OSError, ValueError):
        return None


# --- Argument parsing ---------------------------------------------------------------------


def add_parser(sub: Subparsers) -> None:
    """Adds ``inspect`` and ``verify`` to the subcommands."""
    _add_inspect(sub)
    _add_verify(sub)


def _add_inspect(sub: Subparsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show the tensors, metadata, key stanzas and signature of a file (no key needed)",
        description="Show the header of an enctensor file: tensors, metadata, stanzas (numbered from 0,"
        " as `rekey --remove-stanza` takes them, with the recipient fingerprint of those written with"
        " --fingerprint), whether it is signed, chunk size. Needs no key, so nothing shown is"
        " authenticated. With --key-file or --identity, the stanzas each key opens are marked: this tells"
        " which stanza is whose without fingerprints (the file is not verified: use `verify`)."
        "\n\nFor the encrypted index of a sharded checkpoint (*.enct.index.json): every shard the index"
        " names, with its tensors and sizes, or why it did not open, and whether the shards' headers"
        " describe one whole set (`verify` checks that with the key).",
        epilog="--json: for a file, its header as one object (file, format_version, chunk_size, file_size,"
        " stanzas, stanza_details (each stanza's type, public fields and fingerprint if any), signed,"
        " metadata, tensors; with --key-file/--identity also stanzas_opened_by: {key: [stanza numbers]}). For"
        " an index: {file, kind:"
        ' "enctensor-index", tensors, nbytes, checkpoints, set_ok, set_problem, shards: [{file, listed,'
        " opened, error, header}]}, header being the file's object or null.",
    )
    p.add_argument(
        "file", metavar="FILE", help="an enctensor file, or the encrypted index of a sharded checkpoint"
    )
    p.add_argument(
        "-k",
        "--key-file",
        action="append",
        metavar="FILE",
        help="mark the stanza(s) this key file opens (found with the key, fingerprints or not); repeatable",
    )
    p.add_argument(
        "-i",
        "--identity",
        action="append",
        metavar="PRIVATE_KEY",
        help="mark the stanza(s) this X25519 or RSA private key (or age identity) opens; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_inspect)


def _add_verify(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="check every authentication tag (and the signature) of a file",
        description="Check the header MAC and every chunk tag of FILE (or of every shard of an encrypted"
        " index) without writing any plaintext; with --verify-with, also the publisher signature.",
        epilog="example:\n  enctensor verify model.enct -i me.pem --verify-with publisher.pub\n\n"
        + json_epilog("verify")
        + "\n\n"
        + _EPILOG,
    )
    p.add_argument("file", metavar="FILE")
    _add_open_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    add_json_option(p)
    p.set_defaults(run=cmd_verify)
