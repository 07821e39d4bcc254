"""The stanza list that ``inspect`` and ``rekey`` print: one line per stanza, numbered from 0
(the numbers ``rekey --remove-stanza`` takes), with the recipient fingerprint it carries, if
any, and what is known of its holder (a key given on the command line that opens it, or the
argument it was added for)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import _api as api
from ._common import _ordinal, _shown_arg, stanza_summary

#: What is known of who holds each stanza: notes by stanza position.
Notes = dict[int, list[str]]


def arg_name(text: str, option: str, n: int, public: bool = False) -> str:
    """How to name the ``n``-th (from 1) argument of ``option`` in the list: as given, unless it
    might be a key (then by position only); a public key given as text (``public``), shortened."""
    if public and text.startswith(("x25519:", "age1")):
        return text[:18] + "…"
    return _shown_arg(text) or f"the {_ordinal(n)} {option}"


def named(texts: Sequence[str] | None, option: str, public: bool = False) -> list[str]:
    """:func:`arg_name` of each argument of a repeatable option, in order."""
    return [arg_name(t, option, n, public) for n, t in enumerate(texts or (), 1)]


def holders(path: str | os.PathLike[str], keys: Iterable[tuple[str, Any]]) -> Notes:
    """``opens with NAME`` for the stanzas of ``path`` that each ``(NAME, key)`` opens (a raw key
    or an X25519 or RSA identity; found without fingerprints, see :func:`enctensor._api.stanzas_for`)."""
    notes: Notes = {}
    for name, key in keys:
        for i in api.stanzas_for(path, key):
            notes.setdefault(i, []).append(f"opens with {name}")
    return notes


def merged(*notes: Mapping[int, list[str]]) -> Notes:
    out: Notes = {}
    for n in notes:
        for i, texts in n.items():
            out.setdefault(i, []).extend(texts)
    return out


def stanza_lines(
    details: Sequence[Mapping[str, Any]], notes: Mapping[int, list[str]], indent: str
) -> list[str]:
    """``0  x25519  fingerprint 1f2e…  opens with me.pem``: one line per stanza, in columns
    (the fingerprint column only if some stanza carries one)."""
    rows = [
        [
            str(i),
            stanza_summary([dict(st)]),
            f"fingerprint {st['fingerprint']}" if "fingerprint" in st else "",
            ", ".join(notes.get(i, ())),
        ]
        for i, st in enumerate(details)
    ]
    columns = [c for c in range(4) if any(r[c] for r in rows)]
    widths = {c: max(len(r[c]) for r in rows) for c in columns}
    return [(indent + "  ".join(r[c].ljust(widths[c]) for c in columns)).rstrip() for r in rows]
