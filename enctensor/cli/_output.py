"""What a command reports when it is done: with ``--json``, one JSON object on stdout (also
on failure); otherwise, for ``encrypt``, ``decrypt`` and ``keygen``, one summary line on
stderr when it is a terminal (like the progress bar), unless ``--quiet``.

The JSON objects have stable keys, always present (``null`` when they do not apply), listed in
:data:`JSON_KEYS` and in each command's ``--help``; every object also has ``command`` and
``ok`` (and, when ``ok`` is false, ``exit_status`` and ``error``, the one-line message that
stderr shows too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

#: The keys of each command's ``--json`` object on success, in order (after ``command`` and ``ok``).
JSON_KEYS: dict[str, tuple[str, ...]] = {
    "encrypt": (
        "input",
        "output",
        "files",
        "format",
        "tensors",
        "tensor_bytes",
        "output_bytes",
        "stanzas",
        "signed",
        "seconds",
    ),
    "decrypt": (
        "input",
        "output",
        "files",
        "format",
        "tensors",
        "tensor_bytes",
        "output_bytes",
        "signed",
        "signature_checked",
        "metadata_left_out",
        "seconds",
    ),
    "verify": ("file", "tensors", "tensor_bytes", "signed", "signature_checked", "seconds"),
    "rekey": ("file", "files", "seconds"),
    "keygen": (
        "kind",
        "file",
        "bits",
        "protected",
        "public_key",
        "age_recipient",
        "public_key_file",
        "seconds",
    ),
}

#: What the keys mean, for ``--help`` (one paragraph per command).
JSON_HELP: dict[str, str] = {
    "encrypt": "input and output as given (- for stdin/stdout); files: the files written (an index and"
    " its shards; [] for a stream); format: what IN was (safetensors, params, index); tensors;"
    " tensor_bytes; output_bytes: bytes written; stanzas: the stanza types of OUT, in order; signed;"
    " seconds",
    "decrypt": "input, output, files, format (of OUT), tensors, tensor_bytes, output_bytes as for"
    " encrypt; signed: whether IN carries a publisher signature (null if not known); signature_checked:"
    " whether --verify-with checked it; metadata_left_out: metadata keys that OUT's format cannot hold;"
    " seconds",
    "verify": "file; tensors; tensor_bytes; signed (null if not known); signature_checked; seconds",
    "rekey": 'file; files: [{"file": path, "how": "in-place" or "rewritten"}] for each file re-keyed;'
    " seconds",
    "keygen": "kind: key, x25519, rsa or ed25519; file: the private key (or key file) written; bits (RSA);"
    " protected: whether it is password-protected; public_key: x25519:<hex>, ed25519:<hex> or the RSA"
    " PEM public key; age_recipient: the age1… form of an X25519 recipient; public_key_file; seconds",
}


def json_epilog(command: str) -> str:
    """The ``--help`` paragraph that documents the ``--json`` object of ``command``."""
    keys = ", ".join(("command", "ok", *JSON_KEYS[command]))
    return (
        f"--json prints one object on stdout with the keys {keys} ({JSON_HELP[command]}). On failure:"
        " command, ok (false), exit_status and error."
    )


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (on success and on failure; keys below) and nothing else",
    )


def start_clock(args: argparse.Namespace) -> None:
    args.started = time.monotonic()


def elapsed(args: argparse.Namespace) -> float:
    return round(time.monotonic() - getattr(args, "started", time.monotonic()), 3)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def print_json(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def report(args: argparse.Namespace, fields: dict[str, Any], summary: str | None = None) -> None:
    """The end of a successful command: its JSON object, or its summary line."""
    if wants_json(args):
        keys = JSON_KEYS[args.command]
        assert set(fields) == set(keys), sorted(set(fields) ^ set(keys))
        print_json({"command": args.command, "ok": True, **{k: fields[k] for k in keys}})
    elif summary is not None and not getattr(args, "quiet", False):
        print(summary, file=sys.stderr, flush=True)


def report_failure(args: argparse.Namespace, code: int, line: str) -> None:
    """With ``--json``, the failure as a JSON object too (stderr still has the line)."""
    if wants_json(args):
        error = line.removeprefix("enctensor: error: ")
        print_json({"command": args.command, "ok": False, "exit_status": code, "error": error})


def sizes(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Bytes in these files, and in the files under these directories (0 for one that is gone)."""
    total = 0
    for p in paths:
        if os.path.isdir(p):
            total += sizes(os.path.join(d, f) for d, _, files in os.walk(p) for f in files)
            continue
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total
