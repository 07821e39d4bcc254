"""Deterministic generator of the enctensor v1 test vectors (see README.md in this directory).

    python spec/vectors/generate.py            # rewrites spec/vectors/*.enct and *.json
    python spec/vectors/generate.py OUT_DIR    # writes them elsewhere

Every vector is one function below, registered with ``@vector``; the function name is the
vector name (``<area>_<defect>``). All randomness (file keys, salts, tensor contents) comes
from SHA-256 in counter mode over the fixed seed "enctensor test randomness" and a label, so
running the generator twice gives byte-identical files. Each vector is checked against the
reference reader before it is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))

import enctensor_ref as ref

HERE = Path(__file__).resolve().parent
SEED = b"enctensor test randomness"

KEY_A = bytes(range(32))  # 000102...1f
KEY_B = bytes(range(32, 64))  # 202122...3f
KEY_WRONG = bytes(range(64, 96))  # 404142...5f
PASSPHRASE = "correct horse battery staple"
PASSPHRASE_WRONG = "correct horse battery stapler"
LOG_N = 10  # small scrypt cost so that the vectors are fast to read
CHUNK = 4096  # the smallest chunk size, so that small tensors span several chunks

EXPECT_CLASSES = {
    ref.FormatFailure: "format failure",
    ref.NoMatch: "no match",
    ref.HeaderFailure: "header failure",
    ref.PayloadFailure: "payload failure",
}


# --- Deterministic randomness ---------------------------------------------------------------


class CounterRandom:
    """SHA-256 in counter mode: block i = SHA-256(seed || 0x00 || label || 0x00 || u64be(i)).

    Calling the object returns the next n bytes of the stream.
    """

    def __init__(self, label: str) -> None:
        self._prefix = SEED + b"\x00" + label.encode("utf-8") + b"\x00"
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._prefix + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def fill(label: str, n: int) -> bytes:
    """n pseudo-random bytes, a function of the label only."""
    return CounterRandom("data/" + label)(n)


FLOATS = [0.0, -0.0, 1.0, -2.5, 0.1, 3.140625, 1e-3, float("inf"), float("nan"), -7.75]


def tensor_bytes(dtype: str, shape: tuple[int, ...], label: str) -> bytes:
    """Plaintext for a tensor: readable values for float types, random bytes otherwise."""
    count = math.prod(shape)
    values = [FLOATS[i % len(FLOATS)] + (i // len(FLOATS)) * 0.25 for i in range(count)]
    if dtype == "BOOL":
        return bytes(b & 1 for b in fill(label, count))
    if dtype == "F16":
        return b"".join(struct.pack("<e", v) for v in values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)  # upper half of the F32
    if dtype == "F32":
        return b"".join(struct.pack("<f", v) for v in values)
    if dtype == "F64":
        return b"".join(struct.pack("<d", v) for v in values)
    return fill(label, count * ref.DTYPE_SIZES[dtype])


def t(
    name: str, dtype: str, shape: tuple[int, ...], encrypted: bool = True, label: str = ""
) -> ref.TensorSpec:
    """A tensor spec with generated contents."""
    return (name, dtype, shape, tensor_bytes(dtype, shape, label or name), encrypted)


# --- Vectors --------------------------------------------------------------------------------


@dataclass
class Vector:
    expect: str
    comment: str
    file: bytes
    key: bytes | None = KEY_A
    passphrase: str | None = None
    tensors: list[ref.TensorSpec] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


VECTORS: dict[str, Callable[[], Vector]] = {}


def vector(fn: Callable[[], Vector]) -> Callable[[], Vector]:
    assert fn.__name__ not in VECTORS
    # Test ids select the implementation under test with -k "rust": keep it out of names.
    assert "rust" not in fn.__name__
    VECTORS[fn.__name__] = fn
    return fn


def make(
    label: str,
    tensors: list[ref.TensorSpec],
    metadata: dict[str, str] | None = None,
    *,
    keys: tuple[bytes, ...] = (KEY_A,),
    passphrase: str | None = None,
    chunk_size: int = CHUNK,
) -> ref.Draft:
    """A canonical draft whose randomness is a function of the label."""
    return ref.draft(
        tensors,
        metadata={} if metadata is None else metadata,
        chunk_size=chunk_size,
        keys=() if passphrase is not None else keys,
        passphrase=passphrase,
        log_n=LOG_N,
        rng=CounterRandom(label),
    )


def finish(d: ref.Draft, **kwargs: Any) -> bytes:
    """ref.finish with 64-byte data alignment by default (keeps the vectors small)."""
    kwargs.setdefault("data_align", 64)
    return ref.finish(d, **kwargs)


def header_text(d: ref.Draft) -> str:
    return ref.canonical_header_bytes(d.header).decode("utf-8")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)


def with_header(d: ref.Draft, old: str, new: str, **kwargs: Any) -> bytes:
    """The file with one edit of the canonical header text; the MAC covers the edited text."""
    edited = replace_once(header_text(d), old, new)
    return finish(d, header_bytes=edited.encode("utf-8"), **kwargs)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@dataclass(frozen=True)
class Layout:
    """Positions in a finished file, read from its preamble."""

    header_len: int
    data_offset: int

    @property
    def mac_start(self) -> int:
        return ref.PREAMBLE_LEN + self.header_len

    @property
    def tags_start(self) -> int:
        return self.mac_start + ref.MAC_LEN


def layout(data: bytes) -> Layout:
    header_len, data_offset = struct.unpack_from("<IQ", data, 12)
    return Layout(header_len, data_offset)


def stored(d: ref.Draft, i: int) -> bytes:
    """The stored (encrypted or clear) bytes of tensor i of a canonical draft."""
    begin, end = d.header["tensors"][i]["offsets"]
    return bytes(d.data[begin:end])


def small() -> list[ref.TensorSpec]:
    """The small file most failure vectors start from."""
    return [
        t("w", "F32", (2, 3)),
        t("b", "F32", (3,)),
        t("ids", "I64", (4,), encrypted=False),
    ]


SMALL_META = {"format": "pt", "epoch": "7"}


def ok(
    comment: str,
    d_or_file: ref.Draft | bytes,
    tensors: list[ref.TensorSpec],
    metadata: dict[str, str],
    **kwargs: Any,
) -> Vector:
    file = finish(d_or_file) if isinstance(d_or_file, ref.Draft) else d_or_file
    return Vector("success", comment, file, tensors=tensors, metadata=metadata, **kwargs)


def fail(expect: str, comment: str, file: bytes, **kwargs: Any) -> Vector:
    return Vector(expect, comment, file, **kwargs)


def small_fail(label: str, expect: str, comment: str, edit: Callable[[ref.Draft], bytes]) -> Vector:
    """A failure vector made by editing the small file."""
    return fail(expect, comment, edit(make(label, small(), SMALL_META)))


# ---- success: dtypes ----

ALL_DTYPE_SHAPES: dict[str, tuple[int, ...]] = {
    "BOOL": (7,),
    "U8": (3, 5),
    "I8": (9,),
    "F8_E4M3": (2, 8),
    "F8_E5M2": (16,),
    "I16": (5,),
    "U16": (2, 3),
    "F16": (11,),
    "BF16": (3, 4),
    "I32": (6,),
    "U32": (1, 7),
    "F32": (2, 2, 2),
    "I64": (3,),
    "U64": (2, 2),
    "F64": (5,),
}


@vector
def dtype_all() -> Vector:
    tensors = [t(f"t_{dt.lower()}", dt, shape) for dt, shape in ALL_DTYPE_SHAPES.items()]
    meta = {"format": "pt", "note": "one tensor of each of the 15 dtypes"}
    d = make("dtype_all", tensors, meta)
    return ok(
        "One tensor of every dtype, encrypted, key stanza, data_offset aligned to 4096.",
        ref.finish(d, data_align=4096),
        tensors,
        meta,
    )


def _single(name: str, dtype: str, shape: tuple[int, ...], comment: str) -> Vector:
    tensors = [t("x", dtype, shape, label=name)]
    return ok(comment, make(name, tensors), tensors, {})


@vector
def dtype_bf16_matrix() -> Vector:
    return _single("dtype_bf16_matrix", "BF16", (4, 3), "A single BF16 matrix.")


@vector
def dtype_f8_e4m3_vector() -> Vector:
    return _single("dtype_f8_e4m3_vector", "F8_E4M3", (32,), "A single F8_E4M3 vector.")


@vector
def dtype_f8_e5m2_vector() -> Vector:
    return _single("dtype_f8_e5m2_vector", "F8_E5M2", (32,), "A single F8_E5M2 vector.")


@vector
def dtype_f64_plaintext() -> Vector:
    tensors = [t("x", "F64", (3, 3), encrypted=False, label="dtype_f64_plaintext")]
    return ok("A single unencrypted F64 matrix.", make("dtype_f64_plaintext", tensors), tensors, {})


@vector
def dtype_bool_noncanonical() -> Vector:
    tensors: list[ref.TensorSpec] = [("flags", "BOOL", (6,), b"\x00\x01\x02\x7f\x80\xff", True)]
    return ok(
        "BOOL bytes other than 0x00/0x01 are not checked: a reader returns them unchanged.",
        make("dtype_bool_noncanonical", tensors),
        tensors,
        {},
    )


# ---- success: shapes ----


@vector
def shape_scalars() -> Vector:
    tensors = [
        t("s_f32", "F32", ()),
        t("s_i64", "I64", (), encrypted=False),
        t("s_bool", "BOOL", ()),
        t("s_bf16", "BF16", ()),
        t("s_u8", "U8", ()),
    ]
    meta = {"kind": "scalars"}
    return ok(
        "0-d scalars (shape []), one element each.", make("shape_scalars", tensors, meta), tensors, meta
    )


@vector
def shape_empty_tensors() -> Vector:
    tensors = [
        t("empty0", "F32", (0,)),
        t("a", "U8", (5,)),
        t("empty1", "I64", (3, 0)),
        t("empty2", "F16", (0, 7), encrypted=False),
        t("b", "F64", (2,)),
        t("empty3", "BF16", (2, 0, 4)),
    ]
    return ok(
        "Zero-element tensors (one empty chunk each, encrypted and not) between others.",
        make("shape_empty_tensors", tensors),
        tensors,
        {},
    )


@vector
def shape_64_dims() -> Vector:
    shape = (1,) * 62 + (2, 3)
    tensors = [t("deep", "F32", shape)]
    return ok("A tensor with the maximum of 64 dimensions.", make("shape_64_dims", tensors), tensors, {})


@vector
def file_no_tensors() -> Vector:
    meta = {"note": "no tensors"}
    d = make("file_no_tensors", [], meta)
    return ok("Zero tensors: the file ends at data_offset.", d, [], meta)


@vector
def file_no_tensors_no_metadata() -> Vector:
    d = make("file_no_tensors_no_metadata", [], {})
    return ok("Zero tensors and empty metadata.", ref.finish(d, data_align=4096), [], {})


# ---- success: chunks ----


@vector
def chunks_partial_last() -> Vector:
    tensors = [t("x", "U8", (10000,))]
    return ok(
        "chunk_size 4096, 10000 bytes: chunks of 4096, 4096 and 1808 bytes.",
        make("chunks_partial_last", tensors),
        tensors,
        {},
    )


@vector
def chunks_exact_multiple() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "I32", (2, 1024), fill("chunks_exact_multiple", 8192), True)]
    return ok(
        "chunk_size 4096, 8192 bytes: exactly two full chunks, the second one last.",
        make("chunks_exact_multiple", tensors),
        tensors,
        {},
    )


@vector
def chunks_exactly_one() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "U8", (4096,), fill("chunks_exactly_one", 4096), True)]
    return ok(
        "Exactly one full chunk (it carries the last-chunk flag).",
        make("chunks_exactly_one", tensors),
        tensors,
        {},
    )


@vector
def chunks_several_tensors() -> Vector:
    tensors: list[ref.TensorSpec] = [
        ("a", "U8", (9000,), fill("cst/a", 9000), True),
        ("b", "U16", (4096,), fill("cst/b", 8192), False),
        ("c", "U8", (1,), fill("cst/c", 1), True),
        ("d", "I32", (3000,), fill("cst/d", 12000), False),
        ("e", "U64", (1100,), fill("cst/e", 8800), True),
    ]
    return ok(
        "Several multi-chunk tensors, encrypted and not: tag table indexes run across tensors.",
        ref.finish(make("chunks_several_tensors", tensors), data_align=4096),
        tensors,
        {},
    )


@vector
def chunks_size_16k() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "U8", (40000,), fill("chunks_size_16k", 40000), True)]
    return ok(
        "chunk_size 16384 (a larger power of two): chunks of 16384, 16384, 7232.",
        make("chunks_size_16k", tensors, chunk_size=16384),
        tensors,
        {},
    )


# ---- success: selective encryption ----


@vector
def selective_mixed() -> Vector:
    tensors: list[ref.TensorSpec] = [
        t("enc0", "F32", (4, 4)),
        t("clear0", "F32", (4, 4), encrypted=False),
        ("clear_big", "U8", (9000,), fill("selective_mixed/big", 9000), False),
        t("enc1", "I16", (10,)),
    ]
    return ok(
        "encrypted:false tensors are stored in the clear and authenticated with GMAC.",
        make("selective_mixed", tensors, {"policy": "partial"}),
        tensors,
        {"policy": "partial"},
    )


@vector
def selective_all_plaintext() -> Vector:
    tensors = [t("a", "F32", (3,), encrypted=False), t("b", "U8", (0,), encrypted=False)]
    return ok(
        "Every tensor unencrypted (including an empty one).",
        make("selective_all_plaintext", tensors),
        tensors,
        {},
    )


# ---- success: stanzas ----


@vector
def stanza_second_key_opens() -> Vector:
    tensors = small()
    d = make("stanza_second_key_opens", tensors, SMALL_META, keys=(KEY_B, KEY_A))
    return ok("Two key stanzas; the reader's key opens the second one.", d, tensors, SMALL_META)


@vector
def stanza_third_of_three() -> Vector:
    tensors = small()
    d = make("stanza_third_of_three", tensors, SMALL_META, keys=(KEY_WRONG, KEY_B, KEY_A))
    return ok("Three key stanzas; the reader's key opens the last one.", d, tensors, SMALL_META)


@vector
def stanza_unknown_type_ignored() -> Vector:
    tensors = small()
    d = make("stanza_unknown_type_ignored", tensors, SMALL_META)
    unknown = {
        "type": "x25519",
        "share": fill("x25519", 32).hex(),
        "body": fill("x25519body", 48).hex(),
        "epoch": 2**53 - 1,
    }
    d.header["stanzas"].insert(0, unknown)
    return ok(
        "An unknown stanza type (before the key stanza) is ignored; its integer member is "
        "2^53 - 1, the largest allowed.",
        d,
        tensors,
        SMALL_META,
    )


@vector
def stanza_unknown_at_limits() -> Vector:
    tensors = small()
    d = make("stanza_unknown_at_limits", tensors, SMALL_META)
    unknown: dict[str, Any] = {"type": "future"}
    for i in range(14):
        unknown[f"m{i:02d}"] = i
    unknown["long"] = "a" * 16384
    assert len(unknown) == 16
    d.header["stanzas"].append(unknown)
    return ok("An unknown stanza with exactly 16 members and a 16,384-byte string.", d, tensors, SMALL_META)


@vector
def passphrase_success() -> Vector:
    tensors = small()
    d = make("passphrase_success", tensors, SMALL_META, passphrase=PASSPHRASE)
    return ok("A single scrypt stanza (log_n 10).", d, tensors, SMALL_META, key=None, passphrase=PASSPHRASE)


@vector
def passphrase_unicode() -> Vector:
    passphrase = "pässwörd \U0001f511 ключ"
    tensors = small()
    d = make("passphrase_unicode", tensors, SMALL_META, passphrase=passphrase)
    return ok(
        "A non-ASCII passphrase: scrypt takes its UTF-8 bytes.",
        d,
        tensors,
        SMALL_META,
        key=None,
        passphrase=passphrase,
    )


# ---- success: header text ----


UNICODE_META = {"描述": "模型权重", "emoji": "\U0001f9ea", "empty": "", "": "empty name"}


def _unicode_tensors() -> list[ref.TensorSpec]:
    return [t("層.0.weight", "F32", (2, 2)), t("ε", "F16", (3,)), t("\U0001f600", "U8", (1,))]


@vector
def header_unicode() -> Vector:
    tensors = _unicode_tensors()
    d = make("header_unicode", tensors, UNICODE_META)
    return ok("Non-ASCII tensor names and metadata, written as raw UTF-8.", d, tensors, UNICODE_META)


@vector
def header_unicode_escapes() -> Vector:
    tensors = _unicode_tensors()
    d = make("header_unicode_escapes", tensors, UNICODE_META)
    text = json.dumps(d.header, separators=(",", ":"), ensure_ascii=True)
    assert "\\ud83d\\ude00" in text  # a surrogate pair escape for U+1F600
    return ok(
        "Same names as header_unicode written with \\u escapes (surrogate pairs included): "
        "tensor keys use the decoded name.",
        finish(d, header_bytes=text.encode()),
        tensors,
        UNICODE_META,
    )


@vector
def header_whitespace() -> Vector:
    tensors = small()
    d = make("header_whitespace", tensors, SMALL_META)
    text = json.dumps(d.header, indent="\t", separators=(" ,\r\n", " : "))
    return ok(
        "JSON whitespace (tab, CR, LF, space) between tokens is allowed.",
        finish(d, header_bytes=text.encode()),
        tensors,
        SMALL_META,
    )


@vector
def header_trailing_spaces() -> Vector:
    tensors = small()
    d = make("header_trailing_spaces", tensors, SMALL_META)
    text = header_text(d) + " " * 100
    return ok(
        "ASCII spaces after the header object are allowed.",
        finish(d, header_bytes=text.encode()),
        tensors,
        SMALL_META,
    )


@vector
def name_max_length() -> Vector:
    name = "n" * 4093 + "é" + "x"  # 4096 UTF-8 bytes
    tensors = [t(name, "F32", (2,))]
    return ok("A tensor name of exactly 4096 UTF-8 bytes.", make("name_max_length", tensors), tensors, {})


# ---- success: layout ----


def _spaces_to_align_tags_end(d: ref.Draft) -> bytes:
    """The header padded with spaces so that tags_end is a multiple of 64."""
    text = header_text(d).encode()
    fixed = ref.PREAMBLE_LEN + ref.MAC_LEN + len(d.tag_table)
    return text + b" " * (-(fixed + len(text)) % 64)


@vector
def layout_data_offset_minimal() -> Vector:
    tensors = small()
    d = make("layout_data_offset_minimal", tensors, SMALL_META)
    header = _spaces_to_align_tags_end(d)
    tags_end = ref.PREAMBLE_LEN + len(header) + ref.MAC_LEN + len(d.tag_table)
    return ok(
        "data_offset equals tags_end (no padding before the data).",
        finish(d, header_bytes=header, data_offset=tags_end),
        tensors,
        SMALL_META,
    )


@vector
def layout_data_offset_slack() -> Vector:
    tensors = small()
    d = make("layout_data_offset_slack", tensors, SMALL_META)
    tags_end = ref.PREAMBLE_LEN + len(header_text(d).encode()) + ref.MAC_LEN + len(d.tag_table)
    data_offset = ref.align(tags_end, 64) + 64 * 100
    return ok(
        "data_offset a multiple of 64 but not of 4096, with 6400+ bytes of zero slack.",
        finish(d, data_offset=data_offset),
        tensors,
        SMALL_META,
    )


# ---- no match ----


@vector
def key_wrong() -> Vector:
    d = make("key_wrong", small(), SMALL_META)
    return fail("no match", "The reader's key opens no stanza.", finish(d), key=KEY_WRONG)


@vector
def passphrase_wrong() -> Vector:
    d = make("passphrase_wrong", small(), SMALL_META, passphrase=PASSPHRASE)
    return fail("no match", "Wrong passphrase.", finish(d), key=None, passphrase=PASSPHRASE_WRONG)


@vector
def key_for_passphrase_file() -> Vector:
    d = make("key_for_passphrase_file", small(), SMALL_META, passphrase=PASSPHRASE)
    return fail("no match", "A key is given but the file has only an scrypt stanza.", finish(d), key=KEY_A)


@vector
def passphrase_for_key_file() -> Vector:
    d = make("passphrase_for_key_file", small(), SMALL_META)
    return fail(
        "no match",
        "A passphrase is given but the file has only key stanzas.",
        finish(d),
        key=None,
        passphrase=PASSPHRASE,
    )


@vector
def key_only_unknown_stanzas() -> Vector:
    d = make("key_only_unknown_stanzas", small(), SMALL_META)
    d.header["stanzas"] = [{"type": "x25519", "share": fill("share", 32).hex()}]
    return fail("no match", "The only stanza is of an unknown type.", finish(d))


@vector
def stanza_body_tampered() -> Vector:
    d = make("stanza_body_tampered", small(), SMALL_META)
    body = d.header["stanzas"][0]["body"]
    d.header["stanzas"][0]["body"] = ("1" if body[0] == "0" else "0") + body[1:]
    return fail(
        "no match",
        "The stanza body is altered (MAC recomputed): it no longer opens, which is "
        "reported before any MAC check.",
        finish(d),
    )


@vector
def order_no_match_before_header() -> Vector:
    d = make("order_no_match_before_header", small(), SMALL_META)
    data = finish(d)
    return fail(
        "no match",
        "Wrong key and a flipped MAC byte: no match comes first.",
        flip(data, layout(data).mac_start),
        key=KEY_WRONG,
    )


# ---- header failure ----


@vector
def mac_flipped() -> Vector:
    d = make("mac_flipped", small(), SMALL_META)
    data = finish(d)
    return fail(
        "header failure", "One bit of the header MAC flipped.", flip(data, layout(data).mac_start + 31, 0x80)
    )


@vector
def header_metadata_tampered() -> Vector:
    d = make("header_metadata_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"epoch":"7"'
    assert data.count(old) == 1
    return fail(
        "header failure",
        "A metadata value changed after the MAC (still valid JSON).",
        data.replace(old, b'"epoch":"8"'),
    )


@vector
def header_dtype_tampered() -> Vector:
    d = make("header_dtype_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"dtype":"I64"'
    assert data.count(old) == 1
    return fail(
        "header failure",
        "dtype I64 changed to U64 after the MAC (same size).",
        data.replace(old, b'"dtype":"U64"'),
    )


@vector
def header_shape_tampered() -> Vector:
    d = make("header_shape_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"shape":[2,3]'
    assert data.count(old) == 1
    return fail(
        "header failure", "shape [2,3] changed to [3,2] after the MAC.", data.replace(old, b'"shape":[3,2]')
    )


@vector
def header_space_appended() -> Vector:
    d = make("header_space_appended", small(), SMALL_META)
    original = finish(d)
    mac_start = layout(original).mac_start
    original_mac = original[mac_start : mac_start + ref.MAC_LEN]
    text = header_text(d) + " "
    return fail(
        "header failure",
        "A trailing space appended to the header (header_len + 1) with the old MAC.",
        finish(d, header_bytes=text.encode(), mac=original_mac),
    )


@vector
def preamble_data_offset_shifted() -> Vector:
    d = make("preamble_data_offset_shifted", small(), SMALL_META)
    data = finish(d)
    lay = layout(data)
    shifted = (
        data[:16]
        + struct.pack("<Q", lay.data_offset + 64)
        + data[24 : lay.data_offset]
        + bytes(64)
        + data[lay.data_offset :]
    )
    return fail(
        "header failure",
        "data_offset moved by 64 with 64 more zero bytes: a valid layout, but the MAC covers the preamble.",
        shifted,
    )


@vector
def tag_table_flipped() -> Vector:
    d = make("tag_table_flipped", small(), SMALL_META)
    data = finish(d)
    return fail(
        "header failure",
        "A tag byte flipped after the MAC: the MAC covers the tag table.",
        flip(data, layout(data).tags_start + 20),
    )


@vector
def tensors_swapped_with_tags() -> Vector:
    tensors = [t("p", "F32", (8,)), t("q", "F32", (8,))]
    d = make("tensors_swapped_with_tags", tensors)
    data = bytearray(finish(d))
    lay = layout(bytes(data))
    ts, do = lay.tags_start, lay.data_offset
    data[ts : ts + 16], data[ts + 16 : ts + 32] = data[ts + 16 : ts + 32], data[ts : ts + 16]
    data[do : do + 32], data[do + 64 : do + 96] = data[do + 64 : do + 96], data[do : do + 32]
    return fail(
        "header failure",
        "Two equal-size tensors: data and tag-table entries swapped after the MAC.",
        bytes(data),
    )


@vector
def stanza_transplanted() -> Vector:
    d = make("stanza_transplanted", small(), SMALL_META)
    rng = CounterRandom("stanza_transplanted/other")
    other_file_key = rng(32)
    d.header["stanzas"] = [ref.key_stanza(other_file_key, KEY_A, rng(16))]
    return fail(
        "header failure",
        "The stanza opens with the key but wraps another file key: the MAC, "
        "computed under the real file key, does not verify.",
        finish(d),
    )


@vector
def stanza_first_opening_wraps_other_key() -> Vector:
    d = make("stanza_first_opening_wraps_other_key", small(), SMALL_META)
    rng = CounterRandom("stanza_first_opening_wraps_other_key/other")
    decoy = ref.key_stanza(rng(32), KEY_A, rng(16))
    d.header["stanzas"].insert(0, decoy)
    return fail(
        "header failure",
        "Two stanzas open with the key; the first wraps another file key, the second the real "
        "one. The first stanza that opens fixes the file key, so the MAC fails (stricter "
        "reading: a reader does not go on to try other stanzas after a MAC failure).",
        finish(d),
    )


@vector
def order_header_before_payload() -> Vector:
    d = make("order_header_before_payload", small(), SMALL_META)
    data = finish(d)
    lay = layout(data)
    return fail(
        "header failure",
        "A flipped MAC byte and a flipped ciphertext byte: header failure comes first.",
        flip(flip(data, lay.mac_start), lay.data_offset),
    )


# ---- payload failure ----


@vector
def chunk_ciphertext_flipped() -> Vector:
    d = make("chunk_ciphertext_flipped", [("x", "U8", (10000,), fill("ccf", 10000), True)])
    data = finish(d)
    return fail(
        "payload failure",
        "One ciphertext byte of the middle chunk flipped.",
        flip(data, layout(data).data_offset + 5000),
    )


@vector
def chunk_last_byte_flipped() -> Vector:
    d = make("chunk_last_byte_flipped", small(), SMALL_META)
    return fail(
        "payload failure",
        "The last byte of the file (last tensor, unencrypted) flipped.",
        flip(finish(d), -1),
    )


@vector
def chunk_tag_flipped_before_mac() -> Vector:
    d = make("chunk_tag_flipped_before_mac", small(), SMALL_META)
    d.tag_table[16 + 3] ^= 0x01  # tag of tensor "b"
    return fail(
        "payload failure",
        "A tag byte flipped before the MAC was computed: the MAC verifies, the chunk does not.",
        finish(d),
    )


@vector
def chunk_plaintext_flipped() -> Vector:
    d = make("chunk_plaintext_flipped", small(), SMALL_META)
    data = finish(d)
    ids_begin = d.header["tensors"][2]["offsets"][0]
    return fail(
        "payload failure",
        "A byte of an encrypted:false tensor flipped.",
        flip(data, layout(data).data_offset + ids_begin + 3),
    )


@vector
def chunk_empty_tag_flipped_before_mac() -> Vector:
    tensors = [t("a", "F32", (2,)), t("empty", "F32", (0,)), t("b", "F32", (2,))]
    d = make("chunk_empty_tag_flipped_before_mac", tensors)
    d.tag_table[16] ^= 0x01
    return fail(
        "payload failure",
        "The tag of a zero-byte tensor's empty chunk is wrong (MAC valid): empty chunks are verified too.",
        finish(d),
    )


def _swap_chunks(d: ref.Draft, tensor_index: int, j: int, k: int, chunk: int) -> None:
    """Swap chunks j and k (stored bytes and tags) of a single-tensor draft, in place."""
    assert tensor_index == 0
    dj, dk = d.data[j * chunk : (j + 1) * chunk], d.data[k * chunk : (k + 1) * chunk]
    d.data[j * chunk : (j + 1) * chunk], d.data[k * chunk : (k + 1) * chunk] = dk, dj
    tj, tk = d.tag_table[16 * j : 16 * j + 16], d.tag_table[16 * k : 16 * k + 16]
    d.tag_table[16 * j : 16 * j + 16], d.tag_table[16 * k : 16 * k + 16] = tk, tj


@vector
def chunks_swapped_within_tensor() -> Vector:
    d = make("chunks_swapped_within_tensor", [("x", "U8", (10000,), fill("cswt", 10000), True)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Chunks 0 and 1 swapped with their tags, MAC recomputed: only the nonce (chunk counter) catches it.",
        finish(d),
    )


@vector
def chunks_swapped_last() -> Vector:
    d = make("chunks_swapped_last", [("x", "U8", (8192,), fill("csl", 8192), True)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Two full chunks swapped with their tags (MAC recomputed); the last one moves.",
        finish(d),
    )


@vector
def chunks_swapped_plaintext() -> Vector:
    d = make("chunks_swapped_plaintext", [("x", "U8", (8192,), fill("csp", 8192), False)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Two chunks of an encrypted:false tensor swapped with their tags (MAC "
        "recomputed): the GMAC nonce catches it.",
        finish(d),
    )


@vector
def chunk_duplicated() -> Vector:
    d = make("chunk_duplicated", [("x", "U8", (8192,), fill("cd", 8192), True)])
    d.data[CHUNK : 2 * CHUNK] = d.data[:CHUNK]
    d.tag_table[16:32] = d.tag_table[0:16]
    return fail("payload failure", "Chunk 0 (bytes and tag) copied over chunk 1, MAC recomputed.", finish(d))


def _equal_pair() -> list[ref.TensorSpec]:
    return [t("p", "F32", (8,)), t("q", "F32", (8,))]


@vector
def tensors_swapped_data() -> Vector:
    d = make("tensors_swapped_data", _equal_pair())
    data = bytearray(finish(d))
    do = layout(bytes(data)).data_offset
    data[do : do + 32], data[do + 64 : do + 96] = data[do + 64 : do + 96], data[do : do + 32]
    return fail(
        "payload failure",
        "Two equal-size tensors: only their data swapped (tag table untouched).",
        bytes(data),
    )


@vector
def tensors_swapped_with_tags_before_mac() -> Vector:
    d = make("tensors_swapped_with_tags_before_mac", _equal_pair())
    d.data[0:32], d.data[64:96] = d.data[64:96], d.data[0:32]
    d.tag_table[0:16], d.tag_table[16:32] = d.tag_table[16:32], d.tag_table[0:16]
    return fail(
        "payload failure",
        "Two equal-size tensors: data and tags swapped, MAC recomputed; the "
        "per-tensor key (derived from the name) catches it.",
        finish(d),
    )


@vector
def tensor_renamed_before_mac() -> Vector:
    d = make("tensor_renamed_before_mac", small(), SMALL_META)
    d.header["tensors"][1]["name"] = "c"
    return fail(
        "payload failure", "Tensor 'b' renamed 'c' in the header, MAC recomputed: its key changes.", finish(d)
    )


@vector
def tensor_encryption_cleared_before_mac() -> Vector:
    d = make("tensor_encryption_cleared_before_mac", small(), SMALL_META)
    d.header["tensors"][0]["encrypted"] = False
    return fail(
        "payload failure",
        "An encrypted tensor marked encrypted:false, MAC recomputed: the ciphertext "
        "does not verify as GMAC-authenticated plaintext.",
        finish(d),
    )


@vector
def tensor_encryption_set_before_mac() -> Vector:
    d = make("tensor_encryption_set_before_mac", small(), SMALL_META)
    d.header["tensors"][2]["encrypted"] = True
    return fail(
        "payload failure", "An encrypted:false tensor marked encrypted:true, MAC recomputed.", finish(d)
    )


# ---- format failure: preamble ----


@vector
def preamble_empty_file() -> Vector:
    return fail("format failure", "A zero-byte file.", b"")


@vector
def preamble_truncated() -> Vector:
    d = make("preamble_truncated", small(), SMALL_META)
    return fail("format failure", "Only the first 23 bytes of a file.", finish(d)[:23])


@vector
def preamble_bad_magic() -> Vector:
    d = make("preamble_bad_magic", small(), SMALL_META)
    return fail(
        "format failure",
        "Magic byte 0 is 0x88 instead of 0x89 (MAC valid).",
        finish(d, magic=b"\x88" + ref.MAGIC[1:]),
    )


@vector
def preamble_magic_text_mode() -> Vector:
    d = make("preamble_magic_text_mode", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "CR LF in the magic turned into LF (text-mode transfer).",
        data[:4] + b"\n" + data[6:],
    )


@vector
def preamble_bad_version() -> Vector:
    d = make("preamble_bad_version", small(), SMALL_META)
    return fail("format failure", "version 2 (MAC valid).", finish(d, version=2))


@vector
def preamble_version_zero() -> Vector:
    d = make("preamble_version_zero", small(), SMALL_META)
    return fail("format failure", "version 0 (MAC valid).", finish(d, version=0))


@vector
def preamble_header_len_too_large() -> Vector:
    d = make("preamble_header_len_too_large", small(), SMALL_META)
    return fail(
        "format failure",
        "header_len 67,108,865 (64 MiB + 1); must be rejected before reading.",
        finish(d, header_len=67_108_865),
    )


@vector
def preamble_header_len_too_small() -> Vector:
    d = make("preamble_header_len_too_small", small(), SMALL_META)
    return fail("format failure", "header_len 1 (minimum is 2).", finish(d, header_len=1))


@vector
def preamble_header_len_huge() -> Vector:
    d = make("preamble_header_len_huge", small(), SMALL_META)
    return fail("format failure", "header_len 0xFFFFFFFF.", finish(d, header_len=0xFFFFFFFF))


@vector
def preamble_header_len_past_end() -> Vector:
    d = make("preamble_header_len_past_end", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "header_len within bounds but larger than the rest of the file.",
        finish(d, header_len=len(data) - ref.PREAMBLE_LEN + 1),
    )


@vector
def preamble_data_offset_unaligned() -> Vector:
    d = make("preamble_data_offset_unaligned", small(), SMALL_META)
    tags_end = ref.PREAMBLE_LEN + len(header_text(d).encode()) + ref.MAC_LEN + len(d.tag_table)
    return fail(
        "format failure",
        "data_offset is not a multiple of 64 (layout otherwise consistent, MAC valid).",
        finish(d, data_offset=ref.align(tags_end, 64) + 32),
    )


# ---- format failure: JSON ----


def _json_fail(label: str, comment: str, old: str, new: str, **kwargs: Any) -> Vector:
    d = make(label, small(), SMALL_META)
    return fail("format failure", comment + " (MAC valid)", with_header(d, old, new, **kwargs))


def _raw_header_fail(label: str, comment: str, edit: Callable[[bytes], bytes]) -> Vector:
    d = make(label, small(), SMALL_META)
    header = edit(header_text(d).encode("utf-8"))
    return fail("format failure", comment + " (MAC valid)", finish(d, header_bytes=header))


@vector
def json_invalid() -> Vector:
    return _raw_header_fail(
        "json_invalid", "The closing brace of the header replaced by a space", lambda h: h[:-1] + b" "
    )


@vector
def json_invalid_utf8() -> Vector:
    return _raw_header_fail(
        "json_invalid_utf8", "Byte 0xFF inside a metadata string", lambda h: h.replace(b'"pt"', b'"p\xff"')
    )


@vector
def json_overlong_utf8() -> Vector:
    return _raw_header_fail(
        "json_overlong_utf8",
        "Overlong UTF-8 (0xC0 0xAF for '/') inside a metadata string",
        lambda h: h.replace(b'"pt"', b'"\xc0\xaf"'),
    )


@vector
def json_bom() -> Vector:
    return _raw_header_fail(
        "json_bom", "The header starts with a UTF-8 byte order mark", lambda h: b"\xef\xbb\xbf" + h
    )


@vector
def json_leading_space() -> Vector:
    return _raw_header_fail(
        "json_leading_space",
        "A space before the header object (stricter reading: only trailing spaces are allowed)",
        lambda h: b" " + h,
    )


@vector
def json_trailing_newline() -> Vector:
    return _raw_header_fail("json_trailing_newline", "A LF after the header object", lambda h: h + b"\n")


@vector
def json_trailing_nul() -> Vector:
    return _raw_header_fail("json_trailing_nul", "A NUL byte after the header object", lambda h: h + b"\x00")


@vector
def json_trailing_object() -> Vector:
    return _raw_header_fail(
        "json_trailing_object", "A second object after the header object", lambda h: h + b" {}"
    )


@vector
def json_not_object() -> Vector:
    return _raw_header_fail("json_not_object", "The header is a JSON array", lambda h: b"[" + h + b"]")


@vector
def json_duplicate_key_top() -> Vector:
    return _json_fail(
        "json_duplicate_key_top",
        "Member 'cipher' appears twice",
        '{"cipher":"AES-256-GCM",',
        '{"cipher":"AES-256-GCM","cipher":"AES-256-GCM",',
    )


@vector
def json_duplicate_key_metadata() -> Vector:
    return _json_fail(
        "json_duplicate_key_metadata",
        "Metadata key 'epoch' appears twice",
        '"epoch":"7"',
        '"epoch":"7","epoch":"7"',
    )


@vector
def json_duplicate_key_tensor() -> Vector:
    return _json_fail(
        "json_duplicate_key_tensor",
        "Member 'dtype' twice in a tensor entry",
        '"name":"b","dtype":"F32"',
        '"name":"b","dtype":"F32","dtype":"F32"',
    )


@vector
def json_duplicate_key_stanza() -> Vector:
    return _json_fail(
        "json_duplicate_key_stanza",
        "Member 'type' twice in a stanza",
        '{"type":"key"',
        '{"type":"key","type":"key"',
    )


@vector
def json_float_number() -> Vector:
    return _json_fail("json_float_number", "Shape dimension written 2.0", '"shape":[2,3]', '"shape":[2.0,3]')


@vector
def json_exponent_number() -> Vector:
    return _json_fail(
        "json_exponent_number", "chunk_size written 4096e0", '"chunk_size":4096', '"chunk_size":4096e0'
    )


@vector
def json_negative_number() -> Vector:
    return _json_fail("json_negative_number", "A negative shape dimension", '"shape":[2,3]', '"shape":[-2,3]')


@vector
def json_negative_zero() -> Vector:
    return _json_fail(
        "json_negative_zero",
        "Offset written -0 (a sign is not allowed)",
        '"offsets":[0,24]',
        '"offsets":[-0,24]',
    )


@vector
def json_leading_zero() -> Vector:
    return _json_fail("json_leading_zero", "Shape dimension written 03", '"shape":[3]', '"shape":[03]')


@vector
def json_integer_too_large() -> Vector:
    d = make("json_integer_too_large", small(), SMALL_META)
    d.header["stanzas"].append({"type": "future", "n": 2**53})
    return fail(
        "format failure",
        "2^53 as a member of an unknown stanza: integer limits apply everywhere (MAC valid)",
        finish(d),
    )


@vector
def json_nan() -> Vector:
    return _json_fail("json_nan", "chunk_size written NaN", '"chunk_size":4096', '"chunk_size":NaN')


@vector
def json_null() -> Vector:
    return _json_fail("json_null", "A metadata value is null", '"epoch":"7"', '"epoch":null')


@vector
def json_bool_as_integer() -> Vector:
    return _json_fail(
        "json_bool_as_integer", "A shape dimension written true", '"shape":[3]', '"shape":[true]'
    )


@vector
def json_control_character() -> Vector:
    return _json_fail("json_control_character", "A raw TAB inside a metadata string", '"pt"', '"p\t"')


@vector
def json_invalid_escape() -> Vector:
    return _json_fail(
        "json_invalid_escape", "Invalid escape \\x inside a metadata string", '"pt"', '"p\\x41"'
    )


@vector
def json_lone_surrogate() -> Vector:
    return _json_fail(
        "json_lone_surrogate",
        "A lone surrogate escape \\ud800 in a metadata string (not Unicode; stricter reading)",
        '"pt"',
        '"p\\ud800"',
    )


@vector
def json_deep_nesting() -> Vector:
    depth = 10000
    return _json_fail(
        "json_deep_nesting",
        f"A metadata value nested {depth} arrays deep",
        '"epoch":"7"',
        '"epoch":' + "[" * depth + "]" * depth,
    )


# ---- format failure: header schema ----


@vector
def header_unknown_member() -> Vector:
    return _json_fail(
        "header_unknown_member",
        "An extra top-level member 'version'",
        '"cipher":"AES-256-GCM",',
        '"cipher":"AES-256-GCM","version":1,',
    )


@vector
def header_missing_member() -> Vector:
    d = make("header_missing_member", small(), SMALL_META)
    del d.header["metadata"]
    return fail("format failure", "No 'metadata' member (MAC valid)", finish(d))


@vector
def header_bad_cipher() -> Vector:
    return _json_fail("header_bad_cipher", "cipher 'AES-128-GCM'", '"AES-256-GCM"', '"AES-128-GCM"')


@vector
def header_chunk_size_not_power_of_two() -> Vector:
    return _json_fail(
        "header_chunk_size_not_power_of_two", "chunk_size 6144", '"chunk_size":4096', '"chunk_size":6144'
    )


@vector
def header_chunk_size_too_small() -> Vector:
    return _json_fail(
        "header_chunk_size_too_small", "chunk_size 2048", '"chunk_size":4096', '"chunk_size":2048'
    )


@vector
def header_chunk_size_too_large() -> Vector:
    return _json_fail(
        "header_chunk_size_too_large",
        "chunk_size 134217728 (2^27)",
        '"chunk_size":4096',
        '"chunk_size":134217728',
    )


@vector
def header_stanzas_empty() -> Vector:
    d = make("header_stanzas_empty", small(), SMALL_META)
    d.header["stanzas"] = []
    return fail("format failure", "An empty stanzas array (MAC valid)", finish(d))


@vector
def header_metadata_not_string() -> Vector:
    return _json_fail(
        "header_metadata_not_string", "A metadata value is the integer 7", '"epoch":"7"', '"epoch":7'
    )


@vector
def header_metadata_nested() -> Vector:
    return _json_fail(
        "header_metadata_nested", "A metadata value is an object", '"epoch":"7"', '"epoch":{"a":"b"}'
    )


# ---- format failure: tensor entries ----


@vector
def tensor_unknown_dtype() -> Vector:
    return _json_fail("tensor_unknown_dtype", "dtype 'F128'", '"dtype":"I64"', '"dtype":"F128"')


@vector
def tensor_lowercase_dtype() -> Vector:
    return _json_fail(
        "tensor_lowercase_dtype", "dtype 'i64' (names are case-sensitive)", '"dtype":"I64"', '"dtype":"i64"'
    )


@vector
def tensor_unknown_member() -> Vector:
    return _json_fail(
        "tensor_unknown_member",
        "A tensor entry with an extra member 'layout'",
        '"name":"b",',
        '"name":"b","layout":"C",',
    )


@vector
def tensor_missing_member() -> Vector:
    d = make("tensor_missing_member", small(), SMALL_META)
    del d.header["tensors"][1]["encrypted"]
    return fail("format failure", "A tensor entry without 'encrypted' (MAC valid)", finish(d))


@vector
def tensor_duplicate_name() -> Vector:
    tensors = [t("x", "F32", (4,), label="a"), t("x", "F32", (4,), label="b")]
    d = make("tensor_duplicate_name", tensors)
    return fail("format failure", "Two tensors named 'x' (each sealed correctly, MAC valid)", finish(d))


@vector
def tensor_empty_name() -> Vector:
    d = make("tensor_empty_name", [t("", "F32", (2,), label="tensor_empty_name")])
    return fail("format failure", "A tensor with an empty name (MAC valid)", finish(d))


@vector
def tensor_name_too_long() -> Vector:
    name = "n" * 4095 + "é"  # 4096 characters, 4097 UTF-8 bytes
    d = make("tensor_name_too_long", [t(name, "F32", (2,), label="tensor_name_too_long")])
    return fail(
        "format failure", "A tensor name of 4096 characters but 4097 UTF-8 bytes (MAC valid)", finish(d)
    )


@vector
def tensor_shape_too_many_dims() -> Vector:
    shape = (1,) * 65
    d = make("tensor_shape_too_many_dims", [t("x", "F32", shape)])
    return fail("format failure", "A shape with 65 dimensions (MAC valid)", finish(d))


@vector
def tensor_shape_not_array() -> Vector:
    return _json_fail("tensor_shape_not_array", "shape is the integer 3", '"shape":[3]', '"shape":3')


def _overflow_shape(label: str, dtype: str, shape: list[int], comment: str) -> Vector:
    d = make(label, [t("x", "U8", (1,), label=label)])
    d.header["tensors"][0]["dtype"] = dtype
    d.header["tensors"][0]["shape"] = shape
    return fail("format failure", comment + " (MAC valid)", finish(d))


@vector
def tensor_shape_element_count_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_element_count_overflow", "U8", [2**32, 2**32], "shape [2^32, 2^32] of U8: 2^64 elements"
    )


@vector
def tensor_shape_byte_count_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_byte_count_overflow",
        "F64",
        [2**31, 2**30],
        "shape [2^31, 2^30] of F64: 2^61 elements fit, 2^64 bytes do not",
    )


@vector
def tensor_shape_zero_last_with_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_zero_last_with_overflow",
        "U8",
        [2**32, 2**32, 0],
        "shape [2^32, 2^32, 0]: zero bytes, but the other dimensions overflow 64 bits "
        "(stricter reading: rejected whatever the order of multiplication)",
    )


@vector
def tensor_shape_zero_first_with_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_zero_first_with_overflow",
        "U8",
        [0, 2**32, 2**32],
        "shape [0, 2^32, 2^32]: zero bytes, but the other dimensions overflow 64 bits "
        "(stricter reading: rejected whatever the order of multiplication)",
    )


@vector
def tensor_encrypted_not_bool() -> Vector:
    return _json_fail(
        "tensor_encrypted_not_bool",
        "encrypted written 1",
        '"offsets":[0,24],"encrypted":true',
        '"offsets":[0,24],"encrypted":1',
    )


@vector
def tensor_offsets_three_elements() -> Vector:
    return _json_fail(
        "tensor_offsets_three_elements", "offsets [0,24,24]", '"offsets":[0,24]', '"offsets":[0,24,24]'
    )


# ---- format failure: layout ----


def _placed(label: str, begins: list[int], comment: str) -> Vector:
    """The small file with tensors placed at the given begin offsets (header agrees, tags
    valid, file length agrees, MAC valid): only the canonical-offset rule is broken."""
    d = make(label, small(), SMALL_META)
    pieces = [stored(d, i) for i in range(3)]
    section = bytearray()
    for i, (begin, piece) in enumerate(zip(begins, pieces, strict=True)):
        section += bytes(begin - len(section)) + piece
        d.header["tensors"][i]["offsets"] = [begin, begin + len(piece)]
    d.data = section
    return fail("format failure", comment, finish(d))


@vector
def layout_offsets_not_canonical() -> Vector:
    return _placed(
        "layout_offsets_not_canonical",
        [0, 128, 192],
        "Tensor 'b' begins at 128 instead of 64 (data placed there, tags and MAC "
        "valid, file length matches the stated offsets)",
    )


@vector
def layout_offsets_unpadded() -> Vector:
    return _placed(
        "layout_offsets_unpadded",
        [0, 24, 64],
        "Tensor 'b' begins at 24, right after 'w', without 64-byte alignment "
        "(data placed there, tags and MAC valid)",
    )


@vector
def layout_padding_between_tensors_nonzero() -> Vector:
    d = make("layout_padding_between_tensors_nonzero", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "A non-zero byte in the padding between tensors 'w' and 'b'",
        flip(data, layout(data).data_offset + 40),
    )


@vector
def layout_padding_before_data_nonzero() -> Vector:
    d = make("layout_padding_before_data_nonzero", small(), SMALL_META)
    data = ref.finish(d, data_align=4096)
    return fail(
        "format failure",
        "A non-zero byte in the padding between tag table and data",
        flip(data, layout(data).data_offset - 1),
    )


@vector
def layout_truncated() -> Vector:
    d = make("layout_truncated", small(), SMALL_META)
    return fail("format failure", "The last byte of the file removed", finish(d)[:-1])


@vector
def layout_truncated_at_data_offset() -> Vector:
    d = make("layout_truncated_at_data_offset", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "The file cut at data_offset (all tensor data missing)",
        data[: layout(data).data_offset],
    )


@vector
def layout_truncated_in_tag_table() -> Vector:
    d = make("layout_truncated_in_tag_table", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure", "The file cut in the middle of the tag table", data[: layout(data).tags_start + 24]
    )


@vector
def layout_trailing_bytes() -> Vector:
    d = make("layout_trailing_bytes", small(), SMALL_META)
    return fail("format failure", "One zero byte appended", finish(d) + b"\x00")


@vector
def layout_trailing_alignment_padding() -> Vector:
    d = make("layout_trailing_alignment_padding", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "The last tensor padded with zeros to a multiple of 64",
        data + bytes(-len(data) % 64),
    )


@vector
def layout_no_tensors_trailing_bytes() -> Vector:
    d = make("layout_no_tensors_trailing_bytes", [], {})
    return fail("format failure", "Zero tensors, but bytes after data_offset", finish(d) + bytes(64))


@vector
def layout_data_offset_before_tags_end() -> Vector:
    d = make("layout_data_offset_before_tags_end", small(), SMALL_META)
    header = _spaces_to_align_tags_end(d)
    tags_end = ref.PREAMBLE_LEN + len(header) + ref.MAC_LEN + len(d.tag_table)
    data = finish(d, header_bytes=header, data_offset=tags_end - 64)
    return fail(
        "format failure", "data_offset 64 bytes before tags_end (data stored at tags_end, MAC valid)", data
    )


@vector
def order_format_before_no_match() -> Vector:
    d = make("order_format_before_no_match", small(), SMALL_META)
    return fail(
        "format failure",
        "Trailing bytes and a wrong key: format failure comes first",
        finish(d) + b"\x00",
        key=KEY_WRONG,
    )


# ---- format failure: stanzas ----


def _stanza_fail(
    label: str, comment: str, edit: Callable[[list[dict[str, Any]]], None], passphrase: str | None = None
) -> Vector:
    d = make(label, small(), SMALL_META, passphrase=passphrase)
    edit(d.header["stanzas"])
    key = None if passphrase else KEY_A
    return fail("format failure", comment + " (MAC valid)", finish(d), key=key, passphrase=passphrase)


def _set(member: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0][member] = value

    return edit


@vector
def stanza_log_n_too_large() -> Vector:
    return _stanza_fail("stanza_log_n_too_large", "scrypt log_n 21", _set("log_n", 21), PASSPHRASE)


@vector
def stanza_log_n_too_small() -> Vector:
    return _stanza_fail("stanza_log_n_too_small", "scrypt log_n 9", _set("log_n", 9), PASSPHRASE)


@vector
def stanza_log_n_huge() -> Vector:
    return _stanza_fail(
        "stanza_log_n_huge", "scrypt log_n 64: must not run scrypt", _set("log_n", 64), PASSPHRASE
    )


@vector
def stanza_log_n_string() -> Vector:
    return _stanza_fail(
        "stanza_log_n_string", 'scrypt log_n written as the string "10"', _set("log_n", "10"), PASSPHRASE
    )


def _append(stanza: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.append(stanza)

    return edit


@vector
def stanza_scrypt_beside_key() -> Vector:
    extra = ref.key_stanza(CounterRandom("sbk/fk")(32), KEY_A, CounterRandom("sbk/s")(16))
    return _stanza_fail(
        "stanza_scrypt_beside_key", "An scrypt stanza and a key stanza", _append(extra), PASSPHRASE
    )


@vector
def stanza_scrypt_beside_unknown() -> Vector:
    return _stanza_fail(
        "stanza_scrypt_beside_unknown",
        "An scrypt stanza and a stanza of unknown type",
        _append({"type": "x25519", "share": "00" * 32}),
        PASSPHRASE,
    )


@vector
def stanza_two_scrypt() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.append(dict(stanzas[0]))

    return _stanza_fail("stanza_two_scrypt", "Two scrypt stanzas", edit, PASSPHRASE)


@vector
def stanza_uppercase_hex() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["salt"] = stanzas[0]["salt"].upper()

    return _stanza_fail("stanza_uppercase_hex", "Key stanza salt in uppercase hex", edit)


@vector
def stanza_salt_short() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["salt"] = stanzas[0]["salt"][:30]

    return _stanza_fail("stanza_salt_short", "Key stanza salt of 15 bytes", edit)


@vector
def stanza_body_odd_length() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["body"] = stanzas[0]["body"][:95]

    return _stanza_fail("stanza_body_odd_length", "Key stanza body of 95 hex digits", edit)


@vector
def stanza_known_extra_member() -> Vector:
    return _stanza_fail(
        "stanza_known_extra_member", "A key stanza with an extra member 'note'", _set("note", "x")
    )


@vector
def stanza_known_missing_member() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        del stanzas[0]["salt"]

    return _stanza_fail("stanza_known_missing_member", "A key stanza without 'salt'", edit)


@vector
def stanza_missing_type() -> Vector:
    return _stanza_fail("stanza_missing_type", "A stanza without 'type'", _append({"share": "00"}))


@vector
def stanza_type_not_string() -> Vector:
    return _stanza_fail(
        "stanza_type_not_string", "A stanza whose 'type' is the integer 1", _append({"type": 1})
    )


@vector
def stanza_unknown_too_many_members() -> Vector:
    unknown: dict[str, Any] = {"type": "future"}
    for i in range(16):
        unknown[f"m{i:02d}"] = i
    return _stanza_fail(
        "stanza_unknown_too_many_members", "An unknown stanza with 17 members", _append(unknown)
    )


@vector
def stanza_unknown_string_too_long() -> Vector:
    return _stanza_fail(
        "stanza_unknown_string_too_long",
        "An unknown stanza with a 16,385-byte string",
        _append({"type": "future", "blob": "a" * 16385}),
    )


@vector
def stanza_unknown_member_name_too_long() -> Vector:
    return _stanza_fail(
        "stanza_unknown_member_name_too_long",
        "An unknown stanza with a 16,385-byte member name (stricter reading: member names "
        "are strings of the stanza too)",
        _append({"type": "future", "b" * 16385: "x"}),
    )


@vector
def stanza_unknown_bool_member() -> Vector:
    return _stanza_fail(
        "stanza_unknown_bool_member",
        "An unknown stanza with a boolean member",
        _append({"type": "future", "flag": True}),
    )


@vector
def stanza_unknown_array_member() -> Vector:
    return _stanza_fail(
        "stanza_unknown_array_member",
        "An unknown stanza with an array member",
        _append({"type": "future", "list": ["a"]}),
    )


@vector
def stanza_too_many() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.extend({"type": "future", "i": i} for i in range(256))

    return _stanza_fail("stanza_too_many", "257 stanzas", edit)


# --- Output ---------------------------------------------------------------------------------


def _classify(v: Vector) -> tuple[str, list[ref.Tensor], dict[str, str]]:
    try:
        tensors, metadata = ref.read(v.file, key=v.key, passphrase=v.passphrase)
    except ref.RefError as exc:
        return EXPECT_CLASSES[type(exc)], [], {}
    return "success", tensors, metadata


def _check(name: str, v: Vector) -> None:
    """The reference reader must agree with what the vector states."""
    got, tensors, metadata = _classify(v)
    assert got == v.expect, (name, got, v.expect)
    if v.expect == "success":
        want = [(n, dt, tuple(sh), raw, enc) for n, dt, sh, raw, enc in v.tensors]
        assert [(x.name, x.dtype, x.shape, x.data, x.encrypted) for x in tensors] == want, name
        assert metadata == v.metadata, name


def _vector_json(v: Vector) -> dict[str, Any]:
    out: dict[str, Any] = {"expect": v.expect, "comment": v.comment}
    if v.key is not None:
        out["key"] = v.key.hex()
    if v.passphrase is not None:
        out["passphrase"] = v.passphrase
    if v.expect == "success":
        out["tensors"] = [
            {
                "name": name,
                "dtype": dtype,
                "shape": list(shape),
                "encrypted": encrypted,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            for name, dtype, shape, raw, encrypted in v.tensors
        ]
        out["metadata"] = v.metadata
    return out


def dump_vector_json(obj: dict[str, Any]) -> str:
    """JSON with one member per line and one tensor per line (diff-friendly, still JSON)."""

    def one_line(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = []
    for member, value in obj.items():
        if member == "tensors" and value:
            items = ",\n".join("    " + one_line(item) for item in value)
            lines.append(f'  "tensors": [\n{items}\n  ]')
        else:
            lines.append(f"  {one_line(member)}: {one_line(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(out_dir: Path | str | None = None) -> list[str]:
    """Write every vector into out_dir (default: this directory); return the names.

    Stale ``*.enct`` / ``*.json`` files of vectors that no longer exist are removed.
    """
    out = HERE if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    for name, fn in VECTORS.items():
        v = fn()
        _check(name, v)
        (out / f"{name}.enct").write_bytes(v.file)
        text = dump_vector_json(_vector_json(v))
        (out / f"{name}.json").write_bytes(text.encode("utf-8"))
        written |= {f"{name}.enct", f"{name}.json"}
    for path in sorted(out.iterdir()):
        if path.suffix in (".enct", ".json") and path.name not in written:
            path.unlink()
    return list(VECTORS)


if __name__ == "__main__":
    names = main(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"wrote {len(names)} vectors")
