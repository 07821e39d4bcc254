"""Hostile files: every one must fail with a typed ``enctensor`` error, fast and in bounded
memory, and never crash (signal, Rust panic), hang or load.

The files are generated here (nothing binary is committed), with the reference writer
(``spec/reference/enctensor_ref.py``: ``draft``/``finish`` compute the MAC over whatever header
is written, so a defect put into the header still reaches the reader's later checks) or by
hand. Each file is also read by the reference reader, whose verdict must match the class
expected here.

The files run in a worker subprocess, so that a crash or a hang is recorded (and does not kill
pytest), and so that memory can be measured: Rust allocations are invisible to tracemalloc,
so the worker resets its peak RSS (``/proc/self/clear_refs``) before each file and reads it
(``VmHWM``) after, and compares it with its RSS after warm-up. (``ru_maxrss`` would not do:
Linux carries it over ``execve`` from the parent, here pytest, whose RSS is far larger.) CPU
time is measured per operation: it is robust on a loaded machine, unlike wall time.
Files that are large by themselves (a 64 MiB header) each get a worker of their own.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "spec" / "reference"))

import enctensor_ref as ref

KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
PASSPHRASE = "correct horse battery staple"
X25519_IDENTITY = bytes(range(96, 128))
PUBLISHER = Ed25519PrivateKey.from_private_bytes(bytes(range(192, 224)))

MB = 1 << 20
CPU_BUDGET_S = 1.0  # per operation (inspect, load, load_bytes, safe_open) of one file
RSS_BUDGET = 100 * MB  # growth of the worker's peak RSS over its baseline
HANG_S = 60  # a file that takes this long is a hang

TYPED = ("FormatError", "WrongKeyError", "IntegrityError")
REF_CLASS = {
    ref.FormatFailure: "FormatError",
    ref.NoMatch: "WrongKeyError",
    ref.HeaderFailure: "IntegrityError",
    ref.PayloadFailure: "IntegrityError",
}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "FormatError", "WrongKeyError", "IntegrityError" or "success" (a control)
    cred: str = "key"  # "key", "passphrase" or "x25519"
    ops: tuple[str, ...] = ("inspect", "load", "load_bytes", "safe_open")


@dataclass
class Outcome:
    case: Case
    ops: dict[str, str] = field(default_factory=dict)  # op -> exception class or "loaded"
    messages: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    rss_growth: int = 0  # peak RSS at the end of this file minus the worker's baseline
    digests: dict[str, str] = field(default_factory=dict)  # tensor -> sha256, for loads
    fate: str = "done"  # "done", "crash" or "hang"
    detail: str = ""


# ---- building files --------------------------------------------------------------------------


class Rng:
    """Deterministic randomness for the reference writer."""

    def __init__(self, label: str) -> None:
        self._r = random.Random(label)

    def __call__(self, n: int) -> bytes:
        return self._r.randbytes(n)


def small_tensors() -> list[ref.TensorSpec]:
    r = random.Random("tensors")
    return [
        ("w", "F32", (2, 3), r.randbytes(24), True),
        ("b", "F32", (3,), r.randbytes(12), True),
        ("big", "U8", (9000,), r.randbytes(9000), True),  # 3 chunks of 4 KiB
        ("ids", "I64", (4,), r.randbytes(32), False),
    ]


def draft(label: str = "base", keys: tuple[bytes, ...] = (KEY,), **kw: Any) -> ref.Draft:
    kw.setdefault("metadata", {"format": "pt"})
    return ref.draft(small_tensors(), chunk_size=4096, keys=keys, rng=Rng(label), **kw)


def finish(d: ref.Draft, **kw: Any) -> bytes:
    return bytes(ref.finish(d, **kw))


def header_text(d: ref.Draft) -> str:
    return str(ref.canonical_header_bytes(d.header).decode("utf-8"))


def edit_header(d: ref.Draft, old: str, new: str, **kw: Any) -> bytes:
    """The file with one edit of the header text; the MAC is computed over the edited text."""
    text = header_text(d)
    assert text.count(old) == 1, (old, text)
    return finish(d, header_bytes=text.replace(old, new).encode("utf-8"), **kw)


def raw_header(d: ref.Draft, header: bytes, **kw: Any) -> bytes:
    return finish(d, header_bytes=header, **kw)


def layout(data: bytes) -> tuple[int, int, int]:
    """(stanza_area_len, header_len, data_offset) from a preamble."""
    area, header, _reserved, data_offset = struct.unpack_from("<IIIQ", data, 12)
    return area, header, data_offset


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def with_area(data: bytes, area: bytes) -> bytes:
    """The (canonical) file with its stanza area replaced by ``area`` padded with spaces to the
    canonical length, ``align(32 + len(area), 4096) - 32``. When that differs from the old
    length, the file is rewritten as re-keying does: everything from the header on moves by the
    difference (a multiple of 4096), and so does ``data_offset``, which stays canonical."""
    old, _, doff = layout(data)
    new = ref.canonical_stanza_area_len(len(area.rstrip(b" ")))
    assert new <= ref.MAX_STANZA_AREA_LEN, new
    pre = patch(patch(data[:32], 12, "<I", new), 24, "<Q", doff + new - old)
    return pre + area.ljust(new, b" ") + data[32 + old :]


def stanza_area(*stanzas: str, extra: str = "") -> bytes:
    return ('{"stanzas":[' + ",".join(stanzas) + "]" + extra + "}").encode("utf-8")


def key_stanza_text(d: ref.Draft, **changes: Any) -> str:
    """The draft's first stanza as compact JSON, with some members changed."""
    return json.dumps({**d.stanzas[0], **changes}, separators=(",", ":"))


def tampered(hex_value: str) -> str:
    """The same length of hex, another value (of a stanza body: another commitment)."""
    return ("00" if hex_value[:2] != "00" else "ff") + hex_value[2:]


def tampered_seal(body: str) -> str:
    """A stanza body with the same commitment and another sealed file key."""
    at = 2 * ref.COMMITMENT_LEN
    return body[:at] + tampered(body[at:])


# A stanza body is commitment (32) || AES-GCM ciphertext of the file key (32) || tag (16).
HEX16, HEX80 = "00" * 16, "22" * ref.BODY_LEN


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def preamble_cases() -> list[Case]:
    base = finish(draft())
    area, hlen, doff = layout(base)
    f = "FormatError"
    cases = [
        Case("empty_file", b"", f),
        Case("31_bytes", base[:31], f),
        Case("preamble_only", base[:32], f),
        Case("wrong_magic", flip(base, 0), f),
        Case("safetensors_file", struct.pack("<Q", 15) + b'{"a":{}}       ' + bytes(64), f),
        Case("random_bytes", random.Random(1).randbytes(8192), f),
        Case("magic_then_random", base[:8] + random.Random(2).randbytes(8192), f),
        Case("reserved_nonzero", patch(base, 20, "<I", 1), f),
        Case("data_offset_unaligned", patch(base, 24, "<Q", doff + 1), f),
        Case("data_offset_zero", patch(base, 24, "<Q", 0), f),
        Case("data_offset_2^63", patch(base, 24, "<Q", 1 << 63), f),
        Case("data_offset_u64_max_aligned", patch(base, 24, "<Q", (1 << 64) - 64), f),
        Case("data_offset_past_eof", patch(base, 24, "<Q", doff + 4096), f),
        # Formerly refused for slack over 1 MiB; any slack is now refused (data_offset must be
        # align(tables_end, 4096): one page of slack is spec/vectors/layout_data_offset_slack).
        Case("data_offset_slack_over_1MiB", finish(draft(), data_offset=doff + (1 << 20) + 4096), f),
    ]
    for v in (0, 2, 0x100, 0xFFFFFFFF):
        cases.append(Case(f"version_{v}", patch(base, 8, "<I", v), f))
    for v in (0, 15, (1 << 20) + 1, 200_000_000, 0xFFFFFFFF, 1 << 20, area + 64):
        cases.append(Case(f"stanza_area_len_{v}", patch(base, 12, "<I", v), f))
    cap = ref.MAX_HEADER_LEN
    for v in (0, 1, cap + 1, 64 << 20, 200_000_000, 0xFFFFFFFF, cap, hlen + 64, hlen - 1):
        cases.append(Case(f"header_len_{v}", patch(base, 16, "<I", v), f))
    return cases


def stanza_area_cases() -> list[Case]:
    d = draft()
    base = finish(d)
    # A signature is only well formed in a file with a digest table (else it is a format
    # failure by itself), so the signature cases edit a signed file: each is malformed only in
    # the way it is named after. Areas that need more than the first page get the canonical
    # larger area (with_area), so that their length is not what is rejected.
    signed = finish(draft("signed", chunk_digest=True), sign_with=PUBLISHER)
    key = key_stanza_text(d)
    signed_key = key_stanza_text(draft("signed", chunk_digest=True))
    sig = '"signature":{"type":"ed25519-blake3","sig":"' + "00" * 64
    f, w = "FormatError", "WrongKeyError"
    unknown = '{"type":"future"}'
    cases = [
        Case("area_all_spaces", with_area(base, b""), f),
        Case("area_array", with_area(base, b"[]"), f),
        Case("area_nul_padding", with_area(base, stanza_area(key)).replace(b" " * 64, b"\0" * 64, 1), f),
        Case("area_bom", with_area(base, b"\xef\xbb\xbf" + stanza_area(key)), f),
        Case("area_invalid_utf8", with_area(base, b'{"stanzas":[{"type":"\xff\xfe"}]}'), f),
        Case("area_lone_surrogate", with_area(base, stanza_area('{"type":"\\ud800"}', key)), f),
        Case("area_trailing_newline", with_area(base, stanza_area(key) + b"\n"), f),
        Case("area_trailing_garbage", with_area(base, stanza_area(key) + b" }"), f),
        Case("area_two_objects", with_area(base, stanza_area(key) + b"{}"), f),
        Case("area_duplicate_stanzas", with_area(base, stanza_area(key, extra=',"stanzas":[]')), f),
        Case("area_extra_member", with_area(base, stanza_area(key, extra=',"x":1')), f),
        Case(
            "area_no_stanzas",
            with_area(signed, ("{" + sig + '"}}').encode()),
            f,
        ),
        Case("area_zero_stanzas", with_area(base, stanza_area()), f),
        Case("area_257_stanzas", with_area(base, stanza_area(*[unknown] * 256, key)), f),
        Case("area_nested_100k", with_area(base, b'{"stanzas":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), f),
        Case(
            "area_nested_in_stanza",
            with_area(base, stanza_area(key, '{"type":"x","v":' + "[" * 200 + "]" * 200 + "}")),
            f,
        ),
        Case("stanza_not_object", with_area(base, stanza_area(key, "1")), f),
        Case("stanza_null", with_area(base, stanza_area("null", key)), f),
        Case("stanza_no_type", with_area(base, stanza_area('{"salt":"00"}', key)), f),
        Case("stanza_type_int", with_area(base, stanza_area('{"type":1}', key)), f),
        Case(
            "stanza_17_members",
            with_area(
                base, stanza_area('{"type":"x",' + ",".join(f'"m{i}":"v"' for i in range(16)) + "}", key)
            ),
            f,
        ),
        Case(
            "stanza_string_16385",
            with_area(base, stanza_area('{"type":"x","v":"' + "a" * 16385 + '"}', key)),
            f,
        ),
        Case(
            "stanza_name_16385",
            with_area(base, stanza_area('{"type":"x","' + "a" * 16385 + '":"v"}', key)),
            f,
        ),
        Case("stanza_type_16385", with_area(base, stanza_area('{"type":"' + "a" * 16385 + '"}', key)), f),
        Case("stanza_float", with_area(base, stanza_area('{"type":"x","v":1.5}', key)), f),
        Case("stanza_negative", with_area(base, stanza_area('{"type":"x","v":-1}', key)), f),
        Case("stanza_bool", with_area(base, stanza_area('{"type":"x","v":true}', key)), f),
        Case("stanza_object_value", with_area(base, stanza_area('{"type":"x","v":{}}', key)), f),
        Case("stanza_int_2^53", with_area(base, stanza_area('{"type":"x","v":9007199254740992}', key)), f),
        Case(
            "stanza_int_10^400", with_area(base, stanza_area('{"type":"x","v":1' + "0" * 400 + "}", key)), f
        ),
        Case("key_salt_uppercase", with_area(base, stanza_area(key_stanza_text(d, salt="AB" * 16))), f),
        Case(
            "key_salt_15_bytes",
            with_area(base, stanza_area(f'{{"type":"key","salt":"{"00" * 15}","body":"{HEX80}"}}')),
            f,
        ),
        # One byte short of the 80-byte body (the 48-byte body of the former format:
        # spec/vectors/stanza_body_48_bytes).
        Case(
            "key_body_79_bytes",
            with_area(base, stanza_area(f'{{"type":"key","salt":"{HEX16}","body":"{"22" * 79}"}}')),
            f,
        ),
        Case(
            "key_body_odd_hex",
            with_area(base, stanza_area(f'{{"type":"key","salt":"{HEX16}","body":"{HEX80}0"}}')),
            f,
        ),
        Case("key_extra_member", with_area(base, stanza_area(key[:-1] + ',"r":8}')), f),
        Case("key_missing_body", with_area(base, stanza_area(f'{{"type":"key","salt":"{HEX16}"}}')), f),
        # A changed commitment: the reader's commitment does not match, AES-GCM is not run.
        Case(
            "key_body_tampered",
            with_area(base, stanza_area(key_stanza_text(d, body=tampered(d.stanzas[0]["body"])))),
            w,
        ),
        # The commitment matches, the sealed file key does not open (AES-GCM-Open fails).
        Case(
            "key_body_seal_tampered",
            with_area(base, stanza_area(key_stanza_text(d, body=tampered_seal(d.stanzas[0]["body"])))),
            w,
        ),
        Case(
            "key_salt_tampered",
            with_area(base, stanza_area(key_stanza_text(d, salt=tampered(d.stanzas[0]["salt"])))),
            w,
        ),
        Case(
            "rsa_body_255",
            with_area(base, stanza_area('{"type":"rsa-oaep","body":"' + "00" * 255 + '"}', key)),
            f,
        ),
        Case(
            "rsa_body_513",
            with_area(base, stanza_area('{"type":"rsa-oaep","body":"' + "00" * 513 + '"}', key)),
            f,
        ),
        Case(
            "rsa_body_odd",
            with_area(base, stanza_area('{"type":"rsa-oaep","body":"' + "0" * 513 + '"}', key)),
            f,
        ),
        Case("rsa_body_int", with_area(base, stanza_area('{"type":"rsa-oaep","body":7}', key)), f),
        Case(
            "x25519_share_uppercase",
            with_area(base, stanza_area(f'{{"type":"x25519","share":"{"AB" * 32}","body":"{HEX80}"}}')),
            f,
        ),
        Case(
            "sig_wrong_type",
            with_area(
                signed, stanza_area(signed_key, extra=',"signature":{"type":"rsa","sig":"' + "00" * 64 + '"}')
            ),
            f,
        ),
        Case(
            "sig_63_bytes",
            with_area(signed, stanza_area(signed_key, extra="," + sig[:-2] + '"}')),
            f,
        ),
        Case("sig_not_object", with_area(signed, stanza_area(signed_key, extra=',"signature":"x"')), f),
        Case(
            "sig_extra_member",
            with_area(signed, stanza_area(signed_key, extra="," + sig + '","x":1}')),
            f,
        ),
        # Only stanzas that this credential cannot use: no match, before any expensive work.
        Case(
            "only_unknown_stanzas",
            with_area(base, stanza_area(unknown, '{"type":"future","n":9007199254740991}')),
            w,
        ),
        Case(
            "only_rsa_stanza_for_key",
            with_area(base, stanza_area('{"type":"rsa-oaep","body":"' + "00" * 256 + '"}')),
            w,
        ),
    ]
    # X25519: low-order shares give an all-zero secret and never open.
    low_order = [
        "00" * 32,
        "01" + "00" * 31,
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]
    for i, share in enumerate(low_order):
        area = stanza_area(f'{{"type":"x25519","share":"{share}","body":"{HEX80}"}}')
        cases.append(Case(f"x25519_low_order_share_{i}", with_area(base, area), w, cred="x25519"))
    return cases


def scrypt_cases() -> list[Case]:
    """Work factors that would take hours or 100 GB must be refused before scrypt runs."""
    d = ref.draft(
        small_tensors(), metadata={}, chunk_size=4096, passphrase=PASSPHRASE, log_n=10, rng=Rng("s")
    )
    base = finish(d)
    good = json.dumps(d.stanzas[0], separators=(",", ":"))
    assert '"log_n":10' in good
    f, w = "FormatError", "WrongKeyError"
    cases = []
    for log_n in (
        "40",
        "21",
        "9",
        "0",
        "255",
        "256",
        "9007199254740991",
        "9007199254740992",
        "18446744073709551616",
        "18.0",
        "1e1",
        "-18",
        '"18"',
        "null",
        "true",
    ):
        area = stanza_area(good.replace('"log_n":10', f'"log_n":{log_n}'))
        cases.append(
            Case(f"scrypt_log_n_{log_n.strip(chr(34))}", with_area(base, area), f, cred="passphrase")
        )
    # In range, but above the reader's default cost policy (max_scrypt_log_n = 18): refused
    # before scrypt runs (1 GiB and seconds at 20), as a format failure naming the parameter.
    # inspect opens no stanza and accepts these files, so only the reads are tried.
    for log_n_in_range in (19, 20):
        area = stanza_area(good.replace('"log_n":10', f'"log_n":{log_n_in_range}'))
        cases.append(
            Case(
                f"scrypt_log_n_{log_n_in_range}_over_policy",
                with_area(base, area),
                f,
                cred="passphrase",
                ops=("load", "load_bytes", "safe_open"),
            )
        )
    huge_r = good[:-1] + ',"r":1099511627776,"p":1099511627776}'
    cases += [
        Case("scrypt_extra_r_member", with_area(base, stanza_area(huge_r)), f, cred="passphrase"),
        Case(
            "scrypt_beside_key",
            with_area(base, stanza_area(good, f'{{"type":"key","salt":"{HEX16}","body":"{HEX80}"}}')),
            f,
            cred="passphrase",
        ),
        Case("scrypt_twice", with_area(base, stanza_area(good, good)), f, cred="passphrase"),
        # An unknown stanza type with absurd parameters is ignored: no match, nothing run.
        Case(
            "scrypt_like_unknown_stanza",
            with_area(
                base,
                stanza_area('{"type":"scrypt2","salt":"00","log_n":60,"r":1099511627776,"p":1099511627776}'),
            ),
            w,
            cred="passphrase",
        ),
        Case(
            "scrypt_wrong_body",
            with_area(base, stanza_area(key_stanza_text(d, body=tampered(d.stanzas[0]["body"])))),
            w,
            cred="passphrase",
        ),
    ]
    return cases


def header_cases() -> list[Case]:
    d = draft()
    text = header_text(d)
    f = "FormatError"
    shape_w, off_w = '"shape":[2,3]', '"offsets":[0,24]'
    cases = [
        Case("header_array", raw_header(d, b"[" + text.encode() + b"]"), f),
        Case("header_empty_object", raw_header(d, b"{}"), f),
        Case("header_leading_space", raw_header(d, b" " + text.encode()), f),
        Case("header_bom", raw_header(d, b"\xef\xbb\xbf" + text.encode()), f),
        Case("header_trailing_newline", raw_header(d, text.encode() + b"\n"), f),
        Case("header_trailing_nul", raw_header(d, text.encode() + b"\0"), f),
        Case("header_two_objects", raw_header(d, text.encode() + b"{}"), f),
        Case("header_truncated_json", raw_header(d, text.encode()[:-1]), f),
        Case(
            "header_invalid_utf8",
            raw_header(d, text.replace('"w"', '"w\udcff"').encode("utf-8", "surrogateescape")),
            f,
        ),
        Case("header_overlong_utf8", raw_header(d, text.replace('"w"', '"\xc0\xaf"').encode("latin-1")), f),
        Case("header_lone_surrogate", edit_header(d, '"format":"pt"', '"format":"\\ud800"'), f),
        Case(
            "header_nested_1M",
            edit_header(d, '"format":"pt"', '"format":' + "[" * 1_000_000 + "]" * 1_000_000),
            f,
        ),
        Case("header_nested_200", edit_header(d, '"format":"pt"', '"format":' + "[" * 200 + "]" * 200), f),
        Case(
            "header_nested_objects",
            edit_header(d, '"format":"pt"', '"format":' + '{"a":' * 50_000 + "1" + "}" * 50_000),
            f,
        ),
        Case("dup_top_member", edit_header(d, '"metadata":{', '"metadata":{},"metadata":{'), f),
        Case("dup_tensor_member", edit_header(d, '{"name":"w",', '{"name":"w","name":"w",'), f),
        Case("dup_metadata_key", edit_header(d, '"format":"pt"', '"format":"pt","format":"pt"'), f),
        Case("dup_tensor_name", edit_header(d, '"name":"b"', '"name":"w"'), f),
        Case("dup_tensor_name_escaped", edit_header(d, '"name":"b"', '"name":"\\u0077"'), f),
        Case("extra_top_member", edit_header(d, '"metadata":{', '"x":1,"metadata":{'), f),
        Case("extra_tensor_member", edit_header(d, '{"name":"w",', '{"name":"w","x":1,'), f),
        Case("missing_encrypted", edit_header(d, ',"encrypted":false', ""), f),
        Case("cipher_aes128", edit_header(d, "AES-256-GCM", "AES-128-GCM"), f),
        Case("cipher_int", edit_header(d, '"AES-256-GCM"', "1"), f),
        Case("metadata_int_value", edit_header(d, '"format":"pt"', '"format":1'), f),
        Case("metadata_null_value", edit_header(d, '"format":"pt"', '"format":null'), f),
        Case("metadata_object_value", edit_header(d, '"format":"pt"', '"format":{}'), f),
        Case("metadata_array", edit_header(d, '"metadata":{"format":"pt"}', '"metadata":["pt"]'), f),
        Case(
            "metadata_65537_entries",
            edit_header(d, '"format":"pt"', ",".join(f'"{i:x}":""' for i in range(65_537))),
            f,
        ),
        Case(
            "tensors_object",
            raw_header(d, (text.replace('"tensors":[', '"tensors":{"t":[') + "}").encode()),
            f,
        ),
        Case("tensor_entry_int", edit_header(d, '"tensors":[', '"tensors":[1,'), f),
        Case("name_empty", edit_header(d, '"name":"w"', '"name":""'), f),
        Case("name_4097_bytes", edit_header(d, '"name":"w"', '"name":"' + "é" * 2048 + 'w"'), f),
        Case("name_int", edit_header(d, '"name":"w"', '"name":7'), f),
        Case("negative_zero", edit_header(d, '"chunk_size":4096', '"chunk_size":-0'), f),
        Case("plus_sign", edit_header(d, '"chunk_size":4096', '"chunk_size":+4096'), f),
        Case("chunk_size_string", edit_header(d, '"chunk_size":4096', '"chunk_size":"4096"'), f),
        Case("encrypted_int", edit_header(d, '"encrypted":false', '"encrypted":0'), f),
        Case("encrypted_string", edit_header(d, '"encrypted":false', '"encrypted":"false"'), f),
        Case("encrypted_null", edit_header(d, '"encrypted":false', '"encrypted":null'), f),
    ]
    for cs in (
        "0",
        "4095",
        "4097",
        "12288",
        "2048",
        str(1 << 27),
        "9007199254740991",
        "4096.0",
        "4e3",
        "04096",
    ):
        cases.append(Case(f"chunk_size_{cs}", edit_header(d, '"chunk_size":4096', f'"chunk_size":{cs}'), f))
    for dt in ("F128", "f32", "", "F32 ", "FLOAT", "\\u0046\\u0033\\u0032x", "7"):
        new = f'"dtype":{dt}' if dt == "7" else f'"dtype":"{dt}"'
        cases.append(Case(f"dtype_{dt!r}", edit_header(d, '"dtype":"I64"', new), f))
    shapes = {
        "negative": "[-1,3]",
        "fraction": "[1.5,3]",
        "exponent": "[1e3]",
        "leading_zero": "[02,3]",
        "2^53": "[9007199254740992]",
        "2^64": "[18446744073709551616]",
        "string": '["2","3"]',
        "nested": "[[2,3]]",
        "null": "[null]",
        "bool": "[true]",
        "object": "{}",
        "65_dims": "[" + ",".join(["1"] * 65) + "]",
        "overflow_2^32x2^32": "[4294967296,4294967296]",
        "overflow_with_zero": "[9007199254740991,9007199254740991,0]",
        "overflow_2^21_cubed": "[2097152,2097152,2097152]",
    }
    for label, shape in shapes.items():
        cases.append(Case(f"shape_{label}", edit_header(d, shape_w, f'"shape":{shape}'), f))
    # A huge tensor whose offsets agree with its shape: only the file length can stop it, and
    # it must, before anything is allocated.
    cases.append(
        Case(
            "shape_1TiB_consistent",
            edit_header(d, f"{shape_w},{off_w}", '"shape":[1099511627776],"offsets":[0,1099511627776]'),
            f,
        )
    )
    cases.append(
        Case(
            "shape_2^53-1_elements",
            edit_header(
                d,
                f'"dtype":"F32",{shape_w},{off_w}',
                '"dtype":"U8","shape":[9007199254740991],"offsets":[0,9007199254740991]',
            ),
            f,
        )
    )
    offsets = {
        "past_end": "[0,9007199254740991]",
        "reversed": "[24,0]",
        "one": "[0]",
        "three": "[0,24,48]",
        "strings": '["0","24"]',
        "negative": "[-0,24]",
        "gap": "[64,88]",
        "overlap_next": "[0,64]",
    }
    for label, off in offsets.items():
        cases.append(Case(f"offsets_{label}", edit_header(d, off_w, f'"offsets":{off}'), f))
    cases.append(Case("offsets_overlapping", edit_header(d, '"offsets":[64,76]', '"offsets":[0,12]'), f))
    return cases


def short_tag_table(drop: int, page_offset: int, label: str) -> bytes:
    """A file whose tag table lacks its last ``drop`` bytes (the MAC computed over the table as
    written), with a metadata entry sized so that the written tables end ``page_offset``
    bytes into a page (0: on a page boundary, where the written data_offset is)."""
    d = draft(label, metadata={"format": "pt", "pad": ""})
    d.tag_table = d.tag_table[: len(d.tag_table) - drop]
    end = ref.PAGE_SIZE + len(ref.canonical_header_bytes(d.header)) + ref.MAC_LEN + len(d.tag_table)
    d.header["metadata"]["pad"] = "x" * ((page_offset - end) % ref.PAGE_SIZE)
    data = finish(d)
    area, hlen, doff = layout(data)
    written_end = 32 + area + hlen + ref.MAC_LEN + len(d.tag_table)
    assert written_end % ref.PAGE_SIZE == page_offset and doff == ref.align(written_end, ref.PAGE_SIZE)
    return data


def layout_cases() -> list[Case]:
    d = draft()
    base = finish(d)
    area, hlen, doff = layout(base)
    mac_at = 32 + area + hlen
    tags_at = mac_at + 32
    f, i = "FormatError", "IntegrityError"
    tables_end = tags_at + len(d.tag_table)
    assert tables_end < doff - 1, "the canonical file has zero padding before its data"
    gap = doff + 64 - 1  # inside the zero padding between tensor "w" (24 bytes) and "b"
    return [
        Case("trailing_byte", base + b"\0", f),
        Case("trailing_1MiB", base + bytes(MB), f),
        Case("truncated_1", base[:-1], f),
        Case("truncated_at_data", base[:doff], f),
        Case("truncated_in_tags", base[: tags_at + 20], f),
        Case("truncated_in_mac", base[: mac_at + 5], f),
        # Tag tables shorter than the header says (the MAC computed over what is written). The
        # reader computes the table's end from the header, past what was written. These were
        # two files whose class depended on where their tables happened to end (the data was
        # 64-byte aligned then); with data_offset = align(tables_end, 4096), both outcomes are
        # built on purpose: when the written tables end on a page boundary, the data_offset
        # written is a page short of the reader's (format failure); when they end mid-page,
        # the reader takes zero padding for the missing tags and the MAC fails.
        Case("short_tag_table", short_tag_table(16, 0, "short"), f),
        Case("short_tag_table_in_padding", short_tag_table(16, 2048, "short"), i),
        Case("no_tag_table", short_tag_table(len(d.tag_table), 0, "none"), f),
        Case("no_tag_table_in_padding", short_tag_table(len(d.tag_table), 2048, "none"), i),
        # Formerly in the padding of a file with a page of slack before its data; any slack is
        # now a format failure by itself (data_offset_slack_over_1MiB), so the byte is put in
        # the canonical file's padding, the last byte before the data.
        Case("padding_before_data_nonzero", flip(base, doff - 1), f),
        Case("padding_between_tensors_nonzero", flip(base, gap), f),
        Case("mac_zeroed", base[:mac_at] + bytes(32) + base[mac_at + 32 :], i),
        Case("mac_flipped", flip(base, mac_at + 31), i),
        Case("tag_flipped", flip(base, tags_at), i),
        Case("ciphertext_flipped", flip(base, doff + 3), i),
        Case("cleartext_flipped", flip(base, len(base) - 1), i),
        Case("header_flipped_after_mac", flip(base, 32 + area + header_text(d).index('"w"') + 1, 0x03), i),
        Case("wrong_key", finish(draft("other", keys=(OTHER_KEY,))), "WrongKeyError"),
    ]


def control_cases() -> list[Case]:
    """Odd but valid files: they must load, with the tensors the reference reader reads."""
    d = draft()
    base = finish(d)
    key = key_stanza_text(d)
    # Unknown stanzas may carry at most 16,384 bytes of strings in all (names and values, "type"
    # included): "s" fills what the other strings leave, so the budget is reached exactly. The
    # area needs five pages, so the file has the canonical grown stanza area (with_area).
    names_and_type = len("type" + "scrypt2" + "log_n" + "r" + "p" + "s")
    s_value = "a" * (ref.MAX_UNKNOWN_STANZA_BYTES - names_and_type)
    weird = '{"type":"scrypt2","log_n":60,"r":1099511627776,"p":1099511627776,"s":"' + s_value + '"}'
    return [
        Case("control_plain", base, "success"),
        Case("control_signed", finish(draft("signed", chunk_digest=True), sign_with=PUBLISHER), "success"),
        Case("control_unknown_huge_r_beside_key", with_area(base, stanza_area(weird, key)), "success"),
        Case(
            "control_255_unknown_and_key",
            with_area(base, stanza_area(*['{"type":"x"}'] * 255, key)),
            "success",
        ),
    ]


def small_cases() -> list[Case]:
    cases = preamble_cases() + stanza_area_cases() + scrypt_cases() + header_cases()
    cases += layout_cases() + control_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), [n for n, k in Counter(names).items() if k > 1]
    return cases


# ---- header-sized files (tens of MB within the caps) -------------------------------------------


KEY_AREA = b'{"stanzas":[{"type":"key","salt":"' + b"00" * 16 + b'","body":"' + b"00" * ref.BODY_LEN + b'"}]}'


def by_hand(header: bytes, n_tags: int, area: bytes = KEY_AREA) -> bytes:
    """A file around ``header`` with a key stanza that no key opens and a zero MAC."""
    area_len = 4096 - 32
    tags_end = 32 + area_len + len(header) + 32 + 16 * n_tags
    data_offset = -(-tags_end // 4096) * 4096
    pre = bytes(ref.MAGIC) + struct.pack("<IIIIQ", 1, area_len, len(header), 0, data_offset)
    return pre + area.ljust(area_len, b" ") + header + bytes(32 + 16 * n_tags + data_offset - tags_end)


def zero_byte_tensors_header(n: int) -> bytes:
    entries = b",".join(
        b'{"name":"%x","dtype":"U8","shape":[0],"offsets":[0,0],"encrypted":true}' % i for i in range(n)
    )
    return b'{"cipher":"AES-256-GCM","chunk_size":4096,"metadata":{},"tensors":[' + entries + b"]}"


def zero_byte_tensors_header_len(n: int) -> int:
    """len(zero_byte_tensors_header(n)), without building it: entry i names itself in hex."""
    entry = len(zero_byte_tensors_header(1)) - len(zero_byte_tensors_header(0)) - 1  # without a name
    total = len(zero_byte_tensors_header(0)) + max(0, n - 1)  # the frame and the commas
    lo, digits = 0, 1
    while lo < n:
        hi = min(n, 16**digits)
        total += (hi - lo) * (entry + digits)
        lo, digits = hi, digits + 1
    return total


def max_zero_byte_tensors() -> int:
    """As many zero-byte tensors as fit in a 64 MiB header (fewer than the 1,048,576 allowed)."""
    lo, hi = 0, ref.MAX_TENSORS
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if zero_byte_tensors_header_len(mid) <= ref.MAX_HEADER_LEN:
            lo = mid
        else:
            hi = mid - 1
    return lo


def large_header_cases() -> list[Case]:
    """Headers close to the cap (``ref.MAX_HEADER_LEN``, 16 MiB)."""
    cap = ref.MAX_HEADER_LEN
    head = b'{"cipher":"AES-256-GCM","chunk_size":4096,"metadata":'
    big_value = b'{"m":"' + b"x" * (cap - MB) + b'"},"tensors":[]}'
    empties = b"{}," * (cap // 3 - 100) + b"{}"
    dims_head = head + b'{},"tensors":[{"name":"a","dtype":"U8","shape":['
    dims_tail = b'],"offsets":[0,0],"encrypted":true}]}'
    n_dims = (cap - len(dims_head) - len(dims_tail)) // 2
    return [
        Case("metadata_value_near_cap", by_hand(head + big_value, 0), "WrongKeyError", ops=("load",)),
        Case("metadata_value_near_cap_inspect", by_hand(head + big_value, 0), "success", ops=("inspect",)),
        Case(
            "tensors_5M_empty_objects", by_hand(head + b'{},"tensors":[' + empties + b"]}", 0), "FormatError"
        ),
        # Millions of dimensions in one shape: the 64-dimension limit must hold without
        # unbounded work (the parser may collect the list before counting it).
        Case(
            f"shape_{n_dims}_dims",
            by_hand(dims_head + b"0," * (n_dims - 1) + b"0" + dims_tail, 1),
            "FormatError",
        ),
        Case(
            "header_of_nesting_at_cap",
            by_hand(head + b'{"m":' + b"[" * (cap // 2 - 100) + b"]" * (cap // 2 - 100) + b"}}", 0),
            "FormatError",
        ),
        Case(
            "header_len_at_cap",
            by_hand(head + b'{"m":"' + b" " * (cap - 200) + b'"},"tensors":[]}', 0)[:100_000],
            "FormatError",
        ),
    ]


# ---- the worker ---------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import faulthandler, hashlib, json, sys, time

    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import enctensor

    manifest, results = sys.argv[1], sys.argv[2]
    cases = json.loads(open(manifest).read())
    creds = {
        "key": {"key": bytes(range(32))},
        "passphrase": {"passphrase": "correct horse battery staple"},
        "x25519": {"key": X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))},
    }

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak():
        # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def digests(tensors):
        return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in tensors.items()}

    def read_handle(path, cred):
        with enctensor.safe_open(path, **cred) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    # Warm up (thread pool, imports) so that the baseline includes them.
    blob = enctensor.save_bytes({"a": np.arange(5000, dtype=np.float32)}, key=bytes(range(32)), chunk_size=4096)
    enctensor.load_bytes(blob, key=bytes(range(32)))
    enctensor.inspect_bytes(blob)
    baseline = status("VmRSS")
    out = open(results, "a")
    for case in cases:
        out.write(json.dumps({"start": case["name"]}) + "\\n")
        out.flush()
        # A file that takes this long is a hang: dump the stacks and exit (no signal handler).
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        reset_peak()
        before = status("VmRSS")
        path, cred = case["path"], creds[case["cred"]]
        ops = {
            "inspect": lambda: enctensor.inspect(path),
            "load": lambda: digests(enctensor.load(path, **cred)),
            "load_bytes": lambda: digests(enctensor.load_bytes(open(path, "rb").read(), **cred)),
            "safe_open": lambda: digests(read_handle(path, cred)),
        }
        res = {"name": case["name"], "ops": {}, "messages": {}, "cpu": {}, "digests": {}}
        for op in case["ops"]:
            t0 = time.process_time()
            try:
                value = ops[op]()
                res["ops"][op] = "loaded"
                if op != "inspect":
                    res["digests"] = value
            except BaseException as e:  # a Rust panic is a pyo3_runtime.PanicException (BaseException)
                # Subclasses (SignatureError is an IntegrityError) count as their base class.
                bases = (enctensor.FormatError, enctensor.WrongKeyError, enctensor.IntegrityError)
                res["ops"][op] = next((b.__name__ for b in bases if isinstance(e, b)), type(e).__name__)
                res["messages"][op] = str(e)[:300]
            res["cpu"][op] = time.process_time() - t0
        faulthandler.cancel_dump_traceback_later()
        res["rss_growth"] = status("VmHWM") - min(before, baseline)
        out.write(json.dumps(res) + "\\n")
        out.flush()
    """
)


def run_cases(cases: list[Case], workdir: Path) -> list[Outcome]:
    """Runs ``cases`` in worker subprocesses; a crash or hang is pinned on the file being read,
    and the worker restarted after it."""
    workdir.mkdir(parents=True, exist_ok=True)
    worker = workdir / "worker.py"
    worker.write_text(f"HANG_S = {HANG_S}\n" + WORKER)
    paths = {}
    for i, c in enumerate(cases):
        paths[c.name] = workdir / f"{i:04d}.enct"
        paths[c.name].write_bytes(c.data)
    by_name = {c.name: c for c in cases}
    outcomes: dict[str, Outcome] = {}
    remaining = list(cases)
    attempt = 0
    while remaining:
        attempt += 1
        manifest = workdir / f"manifest{attempt}.json"
        results = workdir / f"results{attempt}.jsonl"
        manifest.write_text(
            json.dumps(
                [
                    {"name": c.name, "path": str(paths[c.name]), "cred": c.cred, "ops": c.ops}
                    for c in remaining
                ]
            )
        )
        fate, detail = "done", ""
        try:
            proc = subprocess.run(
                [sys.executable, str(worker), str(manifest), str(results)],
                check=False,
                capture_output=True,
                text=True,
                timeout=60 + 2 * HANG_S + 2 * len(remaining),
            )
            if proc.returncode != 0 and "Timeout (" in proc.stderr:
                fate, detail = "hang", proc.stderr[-2000:]
            elif proc.returncode != 0:
                fate, detail = "crash", f"exit {proc.returncode}: {proc.stderr[-2000:]}"
        except subprocess.TimeoutExpired:
            fate, detail = "hang", "timed out"
        started = None
        for line in results.read_text().splitlines() if results.exists() else []:
            rec = json.loads(line)
            if "start" in rec:
                started = rec["start"]
                continue
            started = None
            o = Outcome(
                by_name[rec["name"]],
                rec["ops"],
                rec["messages"],
                rec["cpu"],
                rec["rss_growth"],
                rec["digests"],
            )
            outcomes[o.case.name] = o
        if fate == "done":
            assert started is None and len(outcomes) == len(cases), "the worker stopped early"
            break
        if started is None:  # died outside any file (startup): fail loudly
            raise AssertionError(f"worker {fate}: {detail}")
        outcomes[started] = Outcome(by_name[started], fate=fate, detail=detail)
        remaining = [c for c in remaining if c.name not in outcomes]
    return [outcomes[c.name] for c in cases]


def reference_verdict(c: Case) -> str:
    """What the reference reader makes of a case (the same credential)."""
    creds: dict[str, dict[str, Any]] = {
        "key": {"key": KEY},
        "passphrase": {"passphrase": PASSPHRASE},
        "x25519": {"identity": X25519PrivateKey.from_private_bytes(X25519_IDENTITY)},
    }
    cred = creds[c.cred]
    try:
        ref.read(c.data, **cred)
    except ref.RefError as e:
        return REF_CLASS[type(e)]
    return "success"


def reference_digests(c: Case) -> dict[str, str]:
    tensors, _ = ref.read(c.data, key=KEY)
    return {t.name: hashlib.sha256(t.data).hexdigest() for t in tensors}


@dataclass
class Tally:
    files: int = 0
    typed: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    silent_loads: list[str] = field(default_factory=list)
    wrong_class: list[str] = field(default_factory=list)
    untyped: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    fat: list[str] = field(default_factory=list)

    def add(self, o: Outcome, cpu_budget: float, rss_budget: int) -> None:
        c = o.case
        self.files += 1
        problems_before = len(self.problems())
        if o.fate == "crash":
            self.crashes.append(f"{c.name}: {o.detail}")
            return
        if o.fate == "hang":
            self.hangs.append(c.name)
            return
        for op, got in o.ops.items():
            want = c.expect
            if op == "inspect" and want != "FormatError":
                want = "success"  # inspect needs no key: only format failures stop it
            if got == "loaded":
                if want != "success":
                    self.silent_loads.append(f"{c.name} ({op})")
            elif got not in TYPED:
                self.untyped.append(f"{c.name} ({op}): {got}: {o.messages.get(op, '')}")
            elif got != want:
                self.wrong_class.append(f"{c.name} ({op}): {got}, expected {want}: {o.messages.get(op, '')}")
        worst = max(o.cpu.values(), default=0.0)
        if worst > cpu_budget:
            self.slow.append(f"{c.name}: {worst:.2f} s CPU")
        if o.rss_growth > rss_budget:
            self.fat.append(f"{c.name}: +{o.rss_growth / MB:.0f} MB")
        if c.expect != "success" and len(self.problems()) == problems_before:
            self.typed += 1

    def summary(self) -> str:
        return (
            f"hostile files: {self.files} tried, {self.typed} typed errors, {len(self.crashes)} crashes, "
            f"{len(self.hangs)} hangs, {len(self.silent_loads)} silent loads, {len(self.untyped)} untyped, "
            f"{len(self.wrong_class)} wrong class, {len(self.slow)} over the CPU budget, "
            f"{len(self.fat)} over the memory budget"
        )

    def problems(self) -> list[str]:
        return (
            self.crashes
            + self.hangs
            + self.silent_loads
            + self.untyped
            + self.wrong_class
            + self.slow
            + self.fat
        )


# ---- tests -------------------------------------------------------------------------------------


def test_expected_classes_agree_with_the_reference_reader() -> None:
    """The class each hostile case expects is the one the reference reader reports."""
    disagree = []
    for c in small_cases():
        got = reference_verdict(c)
        if got != c.expect:
            disagree.append(f"{c.name}: reference says {got}, case expects {c.expect}")
    assert not disagree, "\n".join(disagree)


def test_hostile_files_fail_fast_with_typed_errors(tmp_path: Path) -> None:
    cases = small_cases()
    outcomes = run_cases(cases, tmp_path / "small")
    tally = Tally()
    controls = 0
    for o in outcomes:
        tally.add(o, CPU_BUDGET_S, RSS_BUDGET)
        if o.case.expect == "success" and o.fate == "done":
            controls += 1
            assert o.digests == reference_digests(o.case), o.case.name
    peak = max(o.rss_growth for o in outcomes)
    worst_cpu = max((max(o.cpu.values(), default=0.0), o.case.name) for o in outcomes)
    print(f"\n{tally.summary()}; {controls} valid controls loaded")
    print(f"peak RSS growth {peak / MB:.1f} MB; most CPU {worst_cpu[0]:.3f} s ({worst_cpu[1]})")
    assert tally.files >= 200
    assert not tally.problems(), "\n".join(tally.problems())
    assert tally.typed + controls == tally.files


def test_large_headers_within_the_caps(tmp_path: Path) -> None:
    """Headers of tens of MB are allowed (64 MiB cap): the reader reads them, so memory may
    grow with the file, but boundedly (at most a few copies of the header) and fast."""
    tally = Tally()
    for i, c in enumerate(large_header_cases()):
        (o,) = run_cases([c], tmp_path / f"large{i}")
        tally.add(o, cpu_budget=CPU_BUDGET_S, rss_budget=RSS_BUDGET + 3 * len(c.data))
        print(
            f"\n{c.name}: {len(c.data) / MB:.0f} MB file, {o.ops}, CPU {o.cpu}, +{o.rss_growth / MB:.0f} MB RSS"
        )
    print(tally.summary())
    assert not tally.problems(), "\n".join(tally.problems())


def test_max_zero_byte_tensors_within_the_header_cap(tmp_path: Path) -> None:
    """As many zero-byte tensors as fit in the header cap (about 225,000 in 16 MiB; the
    tensor limit itself cannot be reached). The key stanza opens nothing, so the load must end
    in WrongKeyError, fast and within memory proportional to the file. (With the former 64 MiB
    cap and JSON tree, 895,716 tensors cost 2.6 s CPU and +1.09 GB before the key was tried.)"""
    n = max_zero_byte_tensors()
    c = Case(
        f"zero_byte_tensors_{n}", by_hand(zero_byte_tensors_header(n), n), "WrongKeyError", ops=("load",)
    )
    (o,) = run_cases([c], tmp_path / "many")
    print(
        f"\n{c.name}: {len(c.data) / MB:.0f} MB file: {o.ops}, CPU {o.cpu}, +{o.rss_growth / MB:.0f} MB RSS"
    )
    assert o.fate == "done", o.detail
    assert o.ops == {"load": "WrongKeyError"}, o.messages
    assert o.cpu["load"] < CPU_BUDGET_S, o.cpu
    assert o.rss_growth < RSS_BUDGET + 2 * len(c.data), o.rss_growth


def test_helpers_build_what_they_claim() -> None:
    """Spot checks that the case builders make the defect they are named after."""
    d = draft()
    base = finish(d)
    assert reference_verdict(Case("base", base, "success")) == "success"
    assert layout(patch(base, 16, "<I", 64 << 20))[1] == 64 << 20
    # with_area: in place when the area fits in the first page, else the canonical grown area
    # (and back), the file otherwise unchanged and valid.
    key = key_stanza_text(d)
    assert with_area(base, stanza_area(key)) == base
    grown = with_area(base, stanza_area('{"type":"x","v":"' + "a" * 8000 + '"}', key))
    assert layout(grown)[0] == 3 * 4096 - 32 and layout(grown)[2] == layout(base)[2] + 2 * 4096
    assert reference_verdict(Case("grown", grown, "success")) == "success"
    assert with_area(grown, stanza_area(key)) == base
    # The signed file the signature cases edit is signed, and verifies.
    signed = finish(draft("signed", chunk_digest=True), sign_with=PUBLISHER)
    ref.read(signed, key=KEY, verify_key=PUBLISHER.public_key())
    # The unknown stanza of the control is exactly at the budget.
    (weird,) = (c for c in control_cases() if c.name == "control_unknown_huge_r_beside_key")
    parsed = json.loads(weird.data[32 : 32 + layout(weird.data)[0]])
    unknown = parsed["stanzas"][0]
    strings = sum(len(k) + (len(v) if isinstance(v, str) else 0) for k, v in unknown.items())
    assert strings == ref.MAX_UNKNOWN_STANZA_BYTES, strings
    for n in (0, 1, 2, 15, 16, 17, 300, 5000):
        assert zero_byte_tensors_header_len(n) == len(zero_byte_tensors_header(n)), n
    n = max_zero_byte_tensors()
    assert zero_byte_tensors_header_len(n) <= ref.MAX_HEADER_LEN < zero_byte_tensors_header_len(n + 1)
    assert 100_000 < n < ref.MAX_TENSORS
    for c in large_header_cases():
        assert len(c.data) < 2 * ref.MAX_HEADER_LEN and layout(c.data)[1] <= ref.MAX_HEADER_LEN, c.name
