"""Pure-Python reference reader and writer for the enctensor file format, version 1.

This module follows ``spec/FORMAT.md`` section by section, for readability rather than
speed. It depends only on the standard library and ``cryptography``. Section names of the
spec appear in comments as ``# --- Spec: <section> ---``.

Reader::

    tensors, metadata = read(data, key=key)           # or passphrase="..."
    info = inspect(data)                              # format checks only, no key

Failures are reported with the four classes of "Reader checks, in order":
:class:`FormatFailure`, :class:`NoMatch`, :class:`HeaderFailure`, :class:`PayloadFailure`,
all subclasses of :class:`RefError`.

Writer::

    data = write([("w", "F32", (2, 3), raw_bytes, True)], metadata={}, keys=[key], rng=os.urandom)

:func:`write` is :func:`draft` followed by :func:`finish`; the vector generator uses the two
steps separately to inject defects before or after the header MAC is computed.
"""

from __future__ import annotations

import hmac as std_hmac
import itertools
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "DTYPE_SIZES",
    "MAGIC",
    "Draft",
    "FormatFailure",
    "HeaderFailure",
    "NoMatch",
    "PayloadFailure",
    "RefError",
    "Tensor",
    "TensorSpec",
    "canonical_header_bytes",
    "draft",
    "finish",
    "inspect",
    "read",
    "write",
]


# --- Spec: Reader checks, in order ----------------------------------------------------------


class RefError(Exception):
    """Base class of every failure reported by the reference reader."""


class FormatFailure(RefError):
    """Class 1, "format failure": the file does not follow the format (no key needed)."""


class NoMatch(RefError):
    """Class 2, "no match": no stanza opens with what the caller gave."""


class HeaderFailure(RefError):
    """Class 3, "header failure": the header MAC does not verify."""


class PayloadFailure(RefError):
    """Class 4, "payload failure": a chunk tag does not verify."""


# --- Spec: Conventions ----------------------------------------------------------------------

U64_MAX = 2**64 - 1
JSON_INT_MAX = 2**53 - 1


def u32le(n: int) -> bytes:
    return struct.pack("<I", n)


def u64le(n: int) -> bytes:
    return struct.pack("<Q", n)


def u88be(n: int) -> bytes:
    return n.to_bytes(11, "big")


def align(n: int, a: int) -> int:
    """Smallest multiple of ``a`` that is greater than or equal to ``n``."""
    return -(-n // a) * a


def checked_u64(n: int, what: str) -> int:
    """Spec, Layout: "All arithmetic in this section MUST be overflow-checked"."""
    if not 0 <= n <= U64_MAX:
        raise FormatFailure(f"{what} does not fit in 64 bits")
    return n


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869) with output length 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104)."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def scrypt(password: bytes, salt: bytes, log_n: int) -> bytes:
    """scrypt (RFC 7914) with N = 2^log_n, r = 8, p = 1 and output length 32 bytes."""
    return Scrypt(salt=salt, length=32, n=2**log_n, r=8, p=1).derive(password)


def is_hex(value: object, nbytes: int) -> bool:
    """Lowercase hexadecimal of exactly ``nbytes`` bytes; nothing else is accepted."""
    return isinstance(value, str) and len(value) == 2 * nbytes and all(c in "0123456789abcdef" for c in value)


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


# --- Spec: Preamble -------------------------------------------------------------------------

MAGIC = b"\x89ETS\r\n\x1a\n"
VERSION = 1
PREAMBLE_LEN = 24
MIN_HEADER_LEN = 2
MAX_HEADER_LEN = 67_108_864
MAC_LEN = 32
TAG_LEN = 16


# --- Spec: Header ---------------------------------------------------------------------------

CIPHER = "AES-256-GCM"
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 67_108_864
MAX_STANZAS = 256
MAX_METADATA_ENTRIES = 65_536
MAX_TENSORS = 1_048_576
MAX_NAME_BYTES = 4096
MAX_DIMS = 64

HEADER_MEMBERS = frozenset({"cipher", "chunk_size", "stanzas", "metadata", "tensors"})
TENSOR_MEMBERS = frozenset({"name", "dtype", "shape", "offsets", "encrypted"})

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


# --- Spec: Layout ---------------------------------------------------------------------------

TENSOR_ALIGN = 64
DATA_OFFSET_ALIGN = 64
MAX_DATA_OFFSET_SLACK = 1_048_576


# --- Spec: Stanzas --------------------------------------------------------------------------

MAX_STANZA_MEMBERS = 16
MAX_STANZA_STRING_BYTES = 16_384
SALT_LEN = 16
BODY_LEN = 48
FILE_KEY_LEN = 32
MIN_LOG_N = 10
MAX_LOG_N = 20
KEY_STANZA_MEMBERS = frozenset({"type", "salt", "body"})
SCRYPT_STANZA_MEMBERS = frozenset({"type", "salt", "log_n", "body"})
WRAP_NONCE = bytes(12)
KEY_INFO = b"enctensor.v1 key"
SCRYPT_SALT_PREFIX = b"enctensor.v1 scrypt"


# --- Spec: Header MAC -----------------------------------------------------------------------

HEADER_INFO = b"enctensor.v1 header"


# --- Spec: Tensor data ----------------------------------------------------------------------

TENSOR_INFO = b"enctensor.v1 tensor"


@dataclass(frozen=True)
class Tensor:
    """One tensor as released by :func:`read`: raw little-endian element bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes
    encrypted: bool


# A tensor as given to the writer: (name, dtype, shape, raw bytes, encrypted).
TensorSpec = tuple[str, str, Sequence[int], bytes, bool]


# ============================================================================================
# Reader
# ============================================================================================

# --- Spec: Header (strict JSON) -------------------------------------------------------------


def _reject_float(literal: str) -> Any:
    # Called by the json module for every number with a fraction or an exponent.
    raise FormatFailure(f"number {literal!r} has a fraction or an exponent")


def _parse_int(literal: str) -> int:
    # Called for every number without fraction or exponent. Leading zeros are already invalid
    # JSON; a sign (including "-0") and values above 2^53 - 1 are rejected here.
    if literal.startswith("-"):
        raise FormatFailure(f"integer {literal!r} has a sign")
    if len(literal) > len(str(JSON_INT_MAX)) or int(literal) > JSON_INT_MAX:
        raise FormatFailure(f"integer {literal} is larger than 2^53 - 1")
    return int(literal)


def _reject_constant(literal: str) -> Any:
    # NaN, Infinity, -Infinity: not JSON at all.
    raise FormatFailure(f"{literal} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise FormatFailure(f"duplicate member name {name!r}")
        obj[name] = value
    return obj


def _check_strings_are_unicode(value: Any) -> None:
    """Reject strings that cannot be UTF-8 (lone surrogates written as \\u escapes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatFailure("string contains a lone surrogate escape") from None
    elif isinstance(value, dict):
        for name, member in value.items():
            _check_strings_are_unicode(name)
            _check_strings_are_unicode(member)
    elif isinstance(value, list):
        for item in value:
            _check_strings_are_unicode(item)


def parse_header_json(raw: bytes) -> dict[str, Any]:
    """Parse the header bytes as strict JSON; return the top-level object."""
    try:
        text = raw.decode("utf-8")  # strict: rejects invalid and overlong UTF-8, surrogates
    except UnicodeDecodeError:
        raise FormatFailure("header is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise FormatFailure("header starts with a byte order mark")
    decoder = json.JSONDecoder(
        object_pairs_hook=_object_without_duplicates,
        parse_float=_reject_float,
        parse_int=_parse_int,
        parse_constant=_reject_constant,
        strict=True,  # no raw control characters inside strings
    )
    try:
        # raw_decode does not skip leading whitespace: the header must start with the object.
        value, end = decoder.raw_decode(text)
        _check_strings_are_unicode(value)
    except RecursionError:
        raise FormatFailure("header JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise FormatFailure(f"header is not valid JSON: {exc}") from None
    if text[end:].strip(" ") != "":
        raise FormatFailure("header has trailing bytes other than ASCII space")
    if not isinstance(value, dict):
        raise FormatFailure("header is not a JSON object")
    return value


def _is_int(value: object) -> bool:
    # JSON integers only: bool is a subclass of int in Python and must not pass.
    return type(value) is int


def nbytes_of(shape: Sequence[int], dtype: str) -> int:
    """nbytes(t) = product(shape) * size(dtype), overflow-checked.

    Stricter reading (spec/vectors/README.md, "Readings pinned by the vectors"): the product
    of the non-zero dimensions times the element size must fit in 64 bits even when another
    dimension is zero, so that the result does not depend on the order of multiplication.
    """
    size = DTYPE_SIZES[dtype]
    nonzero = size
    for dim in shape:
        if dim != 0:
            nonzero *= dim
    checked_u64(nonzero, "tensor byte count")
    return size * math.prod(shape)


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    encrypted: bool
    nbytes: int
    chunks: int
    begin: int
    end: int
    first_tag: int  # index of its first tag in the tag table


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any]
    header_len: int
    data_offset: int
    chunk_size: int
    entries: list[_Entry]
    stanzas: list[dict[str, Any]]
    metadata: dict[str, str]
    signed: bytes  # preamble || header || tag table, exactly as stored
    mac: bytes
    tag_table: bytes


def _check_header_schema(header: dict[str, Any]) -> None:
    """Spec, Header: exact members, types and limits (dtypes are checked per tensor)."""
    if set(header) != HEADER_MEMBERS:
        missing = sorted(HEADER_MEMBERS - set(header))
        extra = sorted(set(header) - HEADER_MEMBERS)
        raise FormatFailure(f"header members: missing {missing}, unknown {extra}")

    if header["cipher"] != CIPHER:
        raise FormatFailure(f"unknown cipher {header['cipher']!r}")

    chunk_size = header["chunk_size"]
    if not _is_int(chunk_size):
        raise FormatFailure("chunk_size is not an integer")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise FormatFailure(f"chunk_size {chunk_size} is not a power of two in range")

    stanzas = header["stanzas"]
    if not isinstance(stanzas, list) or not all(isinstance(s, dict) for s in stanzas):
        raise FormatFailure("stanzas is not an array of objects")
    if not 1 <= len(stanzas) <= MAX_STANZAS:
        raise FormatFailure(f"{len(stanzas)} stanzas; 1 to {MAX_STANZAS} are allowed")

    metadata = header["metadata"]
    if not isinstance(metadata, dict):
        raise FormatFailure("metadata is not an object")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise FormatFailure("metadata values must be strings")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise FormatFailure("too many metadata entries")

    tensors = header["tensors"]
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise FormatFailure("tensors is not an array of objects")
    if len(tensors) > MAX_TENSORS:
        raise FormatFailure("too many tensors")


def _check_tensor_entry(t: dict[str, Any], seen_names: set[str]) -> None:
    """Spec, Header: one tensor entry (members, name, dtype, shape, offsets, encrypted)."""
    if set(t) != TENSOR_MEMBERS:
        raise FormatFailure(f"tensor entry members {sorted(t)} are not {sorted(TENSOR_MEMBERS)}")
    name = t["name"]
    if not isinstance(name, str) or not 1 <= utf8_len(name) <= MAX_NAME_BYTES:
        raise FormatFailure("tensor name must be a string of 1 to 4096 UTF-8 bytes")
    if name in seen_names:
        raise FormatFailure(f"duplicate tensor name {name!r}")
    seen_names.add(name)
    if not isinstance(t["dtype"], str) or t["dtype"] not in DTYPE_SIZES:
        raise FormatFailure(f"unknown dtype {t['dtype']!r}")
    shape = t["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise FormatFailure("shape is not an array of integers")
    if len(shape) > MAX_DIMS:
        raise FormatFailure(f"shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    offsets = t["offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise FormatFailure("offsets is not [begin, end]")
    if not isinstance(t["encrypted"], bool):
        raise FormatFailure("encrypted is not a boolean")


def _check_stanza(stanza: dict[str, Any]) -> None:
    """Spec, Stanzas: structural limits for every stanza, exact members for known ones."""
    if not isinstance(stanza.get("type"), str):
        raise FormatFailure("stanza has no string member 'type'")
    if len(stanza) > MAX_STANZA_MEMBERS:
        raise FormatFailure(f"stanza has {len(stanza)} members; at most {MAX_STANZA_MEMBERS}")
    for member, value in stanza.items():
        if not (isinstance(value, str) or _is_int(value)):
            raise FormatFailure(f"stanza member {member!r} is not a string or an integer")
        # Stricter reading (spec/vectors/README.md): member names are strings in the stanza too.
        for s in (member, value):
            if isinstance(s, str) and utf8_len(s) > MAX_STANZA_STRING_BYTES:
                raise FormatFailure("stanza string longer than 16,384 bytes")

    kind = stanza["type"]
    if kind == "key":
        if set(stanza) != KEY_STANZA_MEMBERS:
            raise FormatFailure(f"key stanza members {sorted(stanza)}")
    elif kind == "scrypt":
        if set(stanza) != SCRYPT_STANZA_MEMBERS:
            raise FormatFailure(f"scrypt stanza members {sorted(stanza)}")
        log_n = stanza["log_n"]
        if not _is_int(log_n) or not MIN_LOG_N <= log_n <= MAX_LOG_N:
            raise FormatFailure(f"scrypt log_n {log_n!r} outside [{MIN_LOG_N}, {MAX_LOG_N}]")
    else:
        return  # unknown type: ignored after the structural checks above
    if not is_hex(stanza["salt"], SALT_LEN):
        raise FormatFailure("stanza salt is not 32 lowercase hex digits")
    if not is_hex(stanza["body"], BODY_LEN):
        raise FormatFailure("stanza body is not 96 lowercase hex digits")


def _parse(data: bytes) -> _Parsed:
    """Every format check of the spec, in the spec's order. Raises only FormatFailure."""
    data = bytes(data)

    # --- Spec: Preamble ---
    if len(data) < PREAMBLE_LEN:
        raise FormatFailure("file shorter than the 24-byte preamble")
    if data[0:8] != MAGIC:
        raise FormatFailure("bad magic")
    (version,) = struct.unpack_from("<I", data, 8)
    if version != VERSION:
        raise FormatFailure(f"unsupported version {version}")
    (header_len,) = struct.unpack_from("<I", data, 12)
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise FormatFailure(f"header_len {header_len} out of bounds")
    (data_offset,) = struct.unpack_from("<Q", data, 16)
    if data_offset % DATA_OFFSET_ALIGN:
        raise FormatFailure("data_offset is not a multiple of 64")
    if len(data) < PREAMBLE_LEN + header_len:
        raise FormatFailure("file too short for the header")

    # --- Spec: Header ---
    header_bytes = data[PREAMBLE_LEN : PREAMBLE_LEN + header_len]
    header = parse_header_json(header_bytes)
    _check_header_schema(header)
    chunk_size: int = header["chunk_size"]
    seen_names: set[str] = set()
    for t in header["tensors"]:
        _check_tensor_entry(t, seen_names)

    # --- Spec: Layout ---
    entries: list[_Entry] = []
    total_chunks = 0
    prev_end = 0
    for i, t in enumerate(header["tensors"]):
        nbytes = nbytes_of(t["shape"], t["dtype"])
        chunks = max(1, -(-nbytes // chunk_size))
        begin = 0 if i == 0 else checked_u64(align(prev_end, TENSOR_ALIGN), "tensor begin")
        end = checked_u64(begin + nbytes, "tensor end")
        if t["offsets"] != [begin, end]:
            raise FormatFailure(f"tensor {t['name']!r}: offsets {t['offsets']} are not [{begin}, {end}]")
        entries.append(
            _Entry(
                name=t["name"],
                dtype=t["dtype"],
                shape=tuple(t["shape"]),
                encrypted=t["encrypted"],
                nbytes=nbytes,
                chunks=chunks,
                begin=begin,
                end=end,
                first_tag=total_chunks,
            )
        )
        total_chunks = checked_u64(total_chunks + chunks, "chunk count")
        prev_end = end
    tag_table_len = checked_u64(TAG_LEN * total_chunks, "tag table length")
    mac_start = PREAMBLE_LEN + header_len
    tags_start = mac_start + MAC_LEN
    tags_end = checked_u64(tags_start + tag_table_len, "tags_end")
    if not tags_end <= data_offset <= checked_u64(tags_end + MAX_DATA_OFFSET_SLACK, "slack"):
        raise FormatFailure(f"data_offset {data_offset} not in [{tags_end}, tags_end + 1 MiB]")
    data_end = entries[-1].end if entries else 0
    file_len = checked_u64(data_offset + data_end, "file length")
    # Exact file length (checked before the padding so that every byte read below exists).
    if len(data) < file_len:
        raise FormatFailure(f"file is truncated: {len(data)} bytes, expected {file_len}")
    if len(data) > file_len:
        raise FormatFailure(f"trailing data: {len(data)} bytes, expected {file_len}")
    if any(data[tags_end:data_offset]):
        raise FormatFailure("non-zero padding between the tag table and data_offset")
    for prev, cur in itertools.pairwise(entries):
        if any(data[data_offset + prev.end : data_offset + cur.begin]):
            raise FormatFailure(f"non-zero padding before tensor {cur.name!r}")

    # --- Spec: Stanzas ---
    stanzas: list[dict[str, Any]] = header["stanzas"]
    for stanza in stanzas:
        _check_stanza(stanza)
    if any(s["type"] == "scrypt" for s in stanzas) and len(stanzas) > 1:
        raise FormatFailure("an scrypt stanza must be the only stanza of its file")

    return _Parsed(
        header=header,
        header_len=header_len,
        data_offset=data_offset,
        chunk_size=chunk_size,
        entries=entries,
        stanzas=stanzas,
        metadata=header["metadata"],
        signed=data[:mac_start] + data[tags_start:tags_end],
        mac=data[mac_start:tags_start],
        tag_table=data[tags_start:tags_end],
    )


# --- Spec: Stanzas, Opening -----------------------------------------------------------------


def _wrap_key(stanza: dict[str, Any], key: bytes | None, passphrase: str | None) -> bytes | None:
    """The wrap key of a known stanza for what the caller gave, or None if not applicable."""
    if stanza["type"] == "key" and key is not None:
        return hkdf(key, bytes.fromhex(stanza["salt"]), KEY_INFO)
    if stanza["type"] == "scrypt" and passphrase is not None:
        salt = SCRYPT_SALT_PREFIX + bytes.fromhex(stanza["salt"])
        return scrypt(passphrase.encode("utf-8"), salt, stanza["log_n"])
    return None  # unknown type, or nothing given for this type


def _open_file_key(stanzas: Iterable[dict[str, Any]], key: bytes | None, passphrase: str | None) -> bytes:
    for stanza in stanzas:
        wrap_key = _wrap_key(stanza, key, passphrase)
        if wrap_key is None:
            continue
        try:
            # The first stanza that opens is used; later stanzas are not tried.
            return AESGCM(wrap_key).decrypt(WRAP_NONCE, bytes.fromhex(stanza["body"]), b"")
        except InvalidTag:
            continue
    raise NoMatch("no stanza opens with the given key or passphrase")


# --- Spec: Header MAC -----------------------------------------------------------------------


def mac_key(file_key: bytes) -> bytes:
    return hkdf(file_key, b"", HEADER_INFO)


# --- Spec: Tensor data ----------------------------------------------------------------------


def tensor_key(file_key: bytes, name: str) -> bytes:
    return hkdf(file_key, b"", TENSOR_INFO + b"\x00" + name.encode("utf-8"))


def chunk_nonce(j: int, m: int) -> bytes:
    return u88be(j) + (b"\x01" if j == m - 1 else b"\x00")


def _open_tensor(parsed: _Parsed, data: bytes, file_key: bytes, e: _Entry) -> bytes:
    aead = AESGCM(tensor_key(file_key, e.name))
    base = parsed.data_offset + e.begin
    out = bytearray()
    for j in range(e.chunks):
        lo = j * parsed.chunk_size
        hi = min((j + 1) * parsed.chunk_size, e.nbytes)
        stored = data[base + lo : base + hi]
        t = (e.first_tag + j) * TAG_LEN
        tag = parsed.tag_table[t : t + TAG_LEN]
        nonce = chunk_nonce(j, e.chunks)
        try:
            if e.encrypted:
                out += aead.decrypt(nonce, stored + tag, b"")
            else:
                aead.decrypt(nonce, tag, stored)  # GMAC: empty plaintext, chunk as aad
                out += stored
        except InvalidTag:
            raise PayloadFailure(f"tensor {e.name!r}: chunk {j} does not verify") from None
    return bytes(out)


# --- Public reader API ----------------------------------------------------------------------


def inspect(data: bytes) -> dict[str, Any]:
    """Format checks only (no key): the readable parts of the header."""
    p = _parse(data)
    return {
        "cipher": p.header["cipher"],
        "chunk_size": p.chunk_size,
        "header_len": p.header_len,
        "data_offset": p.data_offset,
        "metadata": dict(p.metadata),
        "stanzas": [s["type"] for s in p.stanzas],
        "tensors": [
            {
                "name": e.name,
                "dtype": e.dtype,
                "shape": e.shape,
                "offsets": (e.begin, e.end),
                "encrypted": e.encrypted,
            }
            for e in p.entries
        ],
    }


def read(
    data: bytes, *, key: bytes | None = None, passphrase: str | None = None
) -> tuple[list[Tensor], dict[str, str]]:
    """Read a whole file: all checks of "Reader checks, in order", then every tensor."""
    if key is not None and len(key) != 32:
        raise ValueError("a key is exactly 32 bytes")
    data = bytes(data)
    parsed = _parse(data)  # 1. format failure
    file_key = _open_file_key(parsed.stanzas, key, passphrase)  # 2. no match
    expected_mac = hmac_sha256(mac_key(file_key), parsed.signed)
    if not std_hmac.compare_digest(expected_mac, parsed.mac):  # 3. header failure
        raise HeaderFailure("header MAC does not verify")
    tensors = [  # 4. payload failure; nothing is released unless every chunk verifies
        Tensor(e.name, e.dtype, e.shape, _open_tensor(parsed, data, file_key, e), e.encrypted)
        for e in parsed.entries
    ]
    return tensors, dict(parsed.metadata)


# ============================================================================================
# Writer
# ============================================================================================


@dataclass
class Draft:
    """Everything of a file except the preamble, the header MAC and the padding.

    ``header`` is the JSON object (mutable, serialized by :func:`finish`), ``tag_table`` and
    ``data`` (the tensor data section, relative to data_offset) are mutable too, so that the
    vector generator can inject defects before the MAC is computed.
    """

    file_key: bytes
    header: dict[str, Any]
    tag_table: bytearray
    data: bytearray


def key_stanza(file_key: bytes, key: bytes, salt: bytes) -> dict[str, Any]:
    """Spec, Stanzas, `key`."""
    wrap_key = hkdf(key, salt, KEY_INFO)
    body = AESGCM(wrap_key).encrypt(WRAP_NONCE, file_key, b"")
    return {"type": "key", "salt": salt.hex(), "body": body.hex()}


def scrypt_stanza(file_key: bytes, passphrase: str, salt: bytes, log_n: int) -> dict[str, Any]:
    """Spec, Stanzas, `scrypt`."""
    wrap_key = scrypt(passphrase.encode("utf-8"), SCRYPT_SALT_PREFIX + salt, log_n)
    body = AESGCM(wrap_key).encrypt(WRAP_NONCE, file_key, b"")
    return {"type": "scrypt", "salt": salt.hex(), "log_n": log_n, "body": body.hex()}


def seal_tensor(
    file_key: bytes, name: str, plaintext: bytes, chunk_size: int, encrypted: bool
) -> tuple[bytes, bytes]:
    """Spec, Tensor data: returns (stored bytes, tags) for one tensor."""
    aead = AESGCM(tensor_key(file_key, name))
    m = max(1, -(-len(plaintext) // chunk_size))
    stored = bytearray()
    tags = bytearray()
    for j in range(m):
        chunk = plaintext[j * chunk_size : (j + 1) * chunk_size]
        if encrypted:
            sealed = aead.encrypt(chunk_nonce(j, m), chunk, b"")
            stored += sealed[:-TAG_LEN]
            tags += sealed[-TAG_LEN:]
        else:
            stored += chunk
            tags += aead.encrypt(chunk_nonce(j, m), b"", chunk)  # GMAC tag
    return bytes(stored), bytes(tags)


def draft(
    tensors: Sequence[TensorSpec],
    *,
    metadata: dict[str, str],
    chunk_size: int = 1 << 20,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    log_n: int = 18,
    rng: Callable[[int], bytes],
) -> Draft:
    """Build a canonical file minus preamble, MAC and padding. Randomness comes from rng:
    first the 32-byte file key, then one 16-byte salt per stanza in stanza order."""
    if bool(keys) == (passphrase is not None):
        raise ValueError("give either one or more keys or a passphrase")
    if any(len(k) != 32 for k in keys):
        raise ValueError("keys are exactly 32 bytes")
    file_key = rng(FILE_KEY_LEN)
    if passphrase is not None:
        stanzas = [scrypt_stanza(file_key, passphrase, rng(SALT_LEN), log_n)]
    else:
        stanzas = [key_stanza(file_key, k, rng(SALT_LEN)) for k in keys]

    entries: list[dict[str, Any]] = []
    tag_table = bytearray()
    section = bytearray()
    for name, dtype, shape, raw, encrypted in tensors:
        nbytes = DTYPE_SIZES[dtype] * math.prod(shape)
        if len(raw) != nbytes:
            raise ValueError(f"tensor {name!r}: {len(raw)} bytes, shape needs {nbytes}")
        begin = align(len(section), TENSOR_ALIGN) if entries else 0
        section += bytes(begin - len(section))
        stored, tags = seal_tensor(file_key, name, raw, chunk_size, encrypted)
        section += stored
        tag_table += tags
        entries.append(
            {
                "name": name,
                "dtype": dtype,
                "shape": list(shape),
                "offsets": [begin, begin + nbytes],
                "encrypted": encrypted,
            }
        )
    header = {
        "cipher": CIPHER,
        "chunk_size": chunk_size,
        "stanzas": stanzas,
        "metadata": dict(metadata),
        "tensors": entries,
    }
    return Draft(file_key=file_key, header=header, tag_table=tag_table, data=section)


def canonical_header_bytes(header: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, members in insertion order, no trailing spaces."""
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def finish(
    d: Draft,
    *,
    data_align: int = 4096,
    header_bytes: bytes | None = None,
    data_offset: int | None = None,
    magic: bytes = MAGIC,
    version: int = VERSION,
    header_len: int | None = None,
    mac: bytes | None = None,
) -> bytes:
    """Preamble || header || MAC || tag table || zero padding || data.

    By default data_offset = align(tags_end, data_align). The keyword arguments other than
    data_align exist for the vector generator: the MAC is always computed over the preamble,
    header and tag table actually written, whatever they contain.
    """
    header = canonical_header_bytes(d.header) if header_bytes is None else header_bytes
    tags_end = PREAMBLE_LEN + len(header) + MAC_LEN + len(d.tag_table)
    if data_offset is None:
        data_offset = align(tags_end, data_align)
    preamble = (
        magic + u32le(version) + u32le(len(header) if header_len is None else header_len) + u64le(data_offset)
    )
    if mac is None:
        mac = hmac_sha256(mac_key(d.file_key), preamble + header + bytes(d.tag_table))
    padding = bytes(max(0, data_offset - tags_end))
    return preamble + header + mac + bytes(d.tag_table) + padding + bytes(d.data)


def write(
    tensors: Sequence[TensorSpec],
    *,
    metadata: dict[str, str],
    chunk_size: int = 1 << 20,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    log_n: int = 18,
    rng: Callable[[int], bytes],
    data_align: int = 4096,
) -> bytes:
    """Write a canonical file (data_offset = align(tags_end, data_align))."""
    if data_align <= 0 or data_align % DATA_OFFSET_ALIGN:
        raise ValueError("data_align must be a positive multiple of 64")
    d = draft(
        tensors,
        metadata=metadata,
        chunk_size=chunk_size,
        keys=keys,
        passphrase=passphrase,
        log_n=log_n,
        rng=rng,
    )
    return finish(d, data_align=data_align)
