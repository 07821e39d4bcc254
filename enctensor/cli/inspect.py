"""``enctensor inspect`` (the header, without a key) and ``enctensor verify`` (every tag and
the signature, with a key, writing no plaintext)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from .. import _api as api
from ..convert import FORMATS, detect_format, verify_file
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
    stanza_summary,
)


def _human_inspect(path: str, info: dict[str, Any], out: TextIO) -> None:
    tensors = info["tensors"]
    total = sum(t["nbytes"] for t in tensors)
    enc = sum(1 for t in tensors if t["encrypted"])
    details = info.get("stanza_details") or [{"type": t} for t in info["stanzas"]]
    out.write(f"{path}: enctensor v{info['format_version']}, {_size(info['file_size'])}\n")
    out.write(f"  chunk size  {_size(info['chunk_size'])}\n")
    opens = _opens_with(details)
    out.write(f"  stanzas     {stanza_summary(details)}" + (f" (open with {opens})" if opens else "") + "\n")
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
    _check_encrypted(args.file, "verify")
    creds = credentials(args)
    progress = _progress(args, f"verifying {os.path.basename(args.file)}")
    try:
        with progress.ticking():
            tensors, nbytes = verify_file(args.file, **creds)
    finally:
        progress.close()
    if not args.quiet:
        if creds.get("verify_with") is not None:
            signed = ", publisher signature valid"
        elif _is_signed(args.file):
            # The MAC proves only that a key holder wrote the file: say the signature was skipped.
            signed = "; the file is signed, but the signature was NOT checked (give --verify-with)"
        else:
            signed = ""
        print(f"{args.file}: OK ({tensors} tensors, {_size(nbytes)}, every chunk verified{signed})")
    return EXIT_OK


def _is_signed(path: str) -> bool:
    """Whether a single file carries a publisher signature (False for an index or another path)."""
    try:
        return bool(api.inspect(path).get("signed"))
    except (OSError, ValueError):  # an index or another non-enctensor path
        return False


# --- Argument parsing ---------------------------------------------------------------------


def add_parser(sub: Subparsers) -> None:
    """Adds ``inspect`` and ``verify`` to the subcommands."""
    _add_inspect(sub)
    _add_verify(sub)


def _add_inspect(sub: Subparsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show the tensors, metadata, key stanzas and signature of a file (no key needed)",
        description="Show the header of an enctensor file: tensors, metadata, stanza types (who can"
        " open it), whether it is signed, chunk size. Needs no key, so nothing shown is authenticated.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_inspect)


def _add_verify(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="check every authentication tag (and the signature) of a file",
        description="Check the header MAC and every chunk tag of FILE (or of every shard of an encrypted"
        " index) without writing any plaintext; with --verify-with, also the publisher signature.",
        epilog="example:\n  enctensor verify model.enct -i me.pem --verify-with publisher.pub\n\n" + _EPILOG,
    )
    p.add_argument("file", metavar="FILE")
    _add_open_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=cmd_verify)
