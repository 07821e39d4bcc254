"""Pure-Python reference reader and writer for the enctensor file format, version 1.

This module follows ``spec/FORMAT.md`` section by section, for readability rather than
speed. It depends only on the standard library and ``cryptography``. Section names of the
spec appear in comments as ``# --- Spec: <section> ---``.

Reader::

    tensors, metadata = read(data, key=key)           # or passphrase="...", or identity=...
    tensors, metadata = read(data, identity=x25519_private_key, verify_key=ed25519_public_key)
    info = inspect(data)                              # format checks only, no key

``identity`` is a ``cryptography`` ``X25519PrivateKey`` or ``RSAPrivateKey``; ``verify_key``
an ``Ed25519PublicKey``: when it is given, the file must carry a valid signature by it.
Failures are reported with the four classes of "Reader checks, in order":
:class:`FormatFailure`, :class:`NoMatch`, :class:`HeaderFailure`, :class:`PayloadFailure`,
all subclasses of :class:`RefError`.

Writer::

    data = write([("w", "F32", (2, 3), raw_bytes, True)], metadata={}, keys=[key],
                 recipients=[x25519_public_key, rsa_public_key], sign_with=ed25519_private_key,
                 rng=os.urandom)
    data = rekey(data, key=key, new_keys=[other_key], rng=os.urandom)   # in place, same length

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

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "DTYPE_SIZES",
    "MAGIC",
    "Draft",
    "FormatFailure",
    "HeaderFailure",
    "Identity",
    "NoMatch",
    "OaepEncrypt",
    "PayloadFailure",
    "Recipient",
    "RefError",
    "Tensor",
    "TensorSpec",
    "canonical_header_bytes",
    "default_stanza_area_len",
    "draft",
    "finish",
    "inspect",
    "make_stanzas",
    "read",
    "rekey",
    "stanza_area_json",
    "write",
]

# A private key that opens recipient stanzas, and the public key a writer wraps for.
Identity = X25519PrivateKey | RSAPrivateKey
Recipient = X25519PublicKey | RSAPublicKey
# RSAES-OAEP encryption of a file key (randomized); injectable so that vectors are stable.
OaepEncrypt = Callable[[RSAPublicKey, bytes], bytes]


# --- Spec: Reader checks, in order ----------------------------------------------------------


class RefError(Exception):
    """Base class of every failure reported by the reference reader."""


class FormatFailure(RefError):
    """Class 1, "format failure": the file does not follow the format (no key needed)."""


class NoMatch(RefError):
    """Class 2, "no match": no stanza opens with what the caller gave."""


class HeaderFailure(RefError):
    """Class 3, "header failure": the header MAC does not verify, or a verification key was
    given and the signature is missing or does not verify."""


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
    return is_hex_between(value, nbytes, nbytes)


def is_hex_between(value: object, min_bytes: int, max_bytes: int) -> bool:
    """Lowercase hexadecimal of an even number of digits, min_bytes to max_bytes bytes."""
    return (
        isinstance(value, str)
        and len(value) % 2 == 0
        and min_bytes <= len(value) // 2 <= max_bytes
        and all(c in "0123456789abcdef" for c in value)
    )


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


# --- Spec: Preamble -------------------------------------------------------------------------

MAGIC = b"\x89ETS\r\n\x1a\n"
VERSION = 1
PREAMBLE_LEN = 32
MIN_STANZA_AREA_LEN = 16
MAX_STANZA_AREA_LEN = 1_048_576
MIN_HEADER_LEN = 2
MAX_HEADER_LEN = 16_777_216
MAC_LEN = 32
TAG_LEN = 16


# --- Spec: Stanza area ----------------------------------------------------------------------

PAGE_SIZE = 4096
STANZA_AREA_MEMBERS = frozenset({"stanzas", "signature"})  # "stanzas" is required


def default_stanza_area_len(content_len: int) -> int:
    """Spec, Stanza area: ``4096 - 32`` when the stanzas fit, so that the preamble and the
    stanza area share the first page; else the smallest multiple of 4096 minus 32 that fits."""
    area_len = max(PAGE_SIZE, align(PREAMBLE_LEN + content_len, PAGE_SIZE)) - PREAMBLE_LEN
    if area_len > MAX_STANZA_AREA_LEN:
        raise ValueError(f"the stanzas need {content_len} bytes; the stanza area holds at most 1 MiB")
    return area_len


# --- Spec: Header ---------------------------------------------------------------------------

CIPHER = "AES-256-GCM"
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 67_108_864
MAX_STANZAS = 256
MAX_METADATA_ENTRIES = 65_536
MAX_TENSORS = 262_144
MAX_NAME_BYTES = 4096
MAX_DIMS = 64

HEADER_MEMBERS = frozenset({"cipher", "chunk_size", "metadata", "tensors"})
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
SHARE_LEN = 32
FILE_KEY_LEN = 32
MIN_LOG_N = 10
MAX_LOG_N = 20
MIN_RSA_BYTES = 256  # 2048-bit modulus
MAX_RSA_BYTES = 512  # 4096-bit modulus
KEY_STANZA_MEMBERS = frozenset({"type", "salt", "body"})
SCRYPT_STANZA_MEMBERS = frozenset({"type", "salt", "log_n", "body"})
X25519_STANZA_MEMBERS = frozenset({"type", "share", "body"})
RSA_OAEP_STANZA_MEMBERS = frozenset({"type", "body"})
WRAP_NONCE = bytes(12)
KEY_INFO = b"enctensor.v1 key"
SCRYPT_SALT_PREFIX = b"enctensor.v1 scrypt"
X25519_INFO = b"enctensor.v1 x25519"
RSA_OAEP_LABEL = b"enctensor.v1 rsa-oaep"


def oaep_padding() -> padding.OAEP:
    """RSAES-OAEP with SHA-256, MGF1 with SHA-256 and the enctensor label."""
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=RSA_OAEP_LABEL
    )


def rsa_modulus_bytes(key: RSAPrivateKey | RSAPublicKey) -> int:
    """k, the length of the modulus in bytes."""
    return (key.key_size + 7) // 8


# --- Spec: Header MAC -----------------------------------------------------------------------

HEADER_INFO = b"enctensor.v1 header"


# --- Spec: Tensor data ----------------------------------------------------------------------

TENSOR_INFO = b"enctensor.v1 tensor"


# --- Spec: Signature ------------------------------------------------------------------------

SIGNATURE_MEMBERS = frozenset({"type", "sig"})
SIGNATURE_TYPE = "ed25519"
SIGNATURE_LEN = 64
SIGNATURE_CONTEXT = b"enctensor.v1 signature\x00"


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

# --- Spec: Header (strict JSON; the stanza area follows the same rules) ---------------------


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


def parse_strict_json(raw: bytes, what: str = "header") -> dict[str, Any]:
    """Parse the header (or stanza area) bytes as strict JSON; return the top-level object.

    The object must start at the first byte and be followed only by ASCII spaces.
    """
    try:
        text = raw.decode("utf-8")  # strict: rejects invalid and overlong UTF-8, surrogates
    except UnicodeDecodeError:
        raise FormatFailure(f"{what} is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise FormatFailure(f"{what} starts with a byte order mark")
    decoder = json.JSONDecoder(
        object_pairs_hook=_object_without_duplicates,
        parse_float=_reject_float,
        parse_int=_parse_int,
        parse_constant=_reject_constant,
        strict=True,  # no raw control characters inside strings
    )
    try:
        # raw_decode does not skip leading whitespace: the text must start with the object.
        value, end = decoder.raw_decode(text)
        _check_strings_are_unicode(value)
    except RecursionError:
        raise FormatFailure(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise FormatFailure(f"{what} is not valid JSON: {exc}") from None
    if text[end:].strip(" ") != "":
        raise FormatFailure(f"{what} has trailing bytes other than ASCII space")
    if not isinstance(value, dict):
        raise FormatFailure(f"{what} is not a JSON object")
    return value


def parse_header_json(raw: bytes) -> dict[str, Any]:
    """Parse the header bytes as strict JSON; return the top-level object."""
    return parse_strict_json(raw, "header")


def _is_int(value: object) -> bool:
    # JSON integers only: bool is a subclass of int in Python and must not pass.
    return type(value) is int


def nbytes_of(shape: Sequence[int], dtype: str) -> int:
    """nbytes(t) = product(shape) * size(dtype), overflow-checked.

    The product of the non-zero dimensions times the element size must fit in 64 bits even
    when another dimension is zero, so that the result does not depend on the order of
    multiplication.
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
    stanza_area_len: int
    header_len: int
    data_offset: int
    chunk_size: int
    entries: list[_Entry]
    stanzas: list[dict[str, Any]]
    signature: bytes | None  # the 64-byte Ed25519 signature, if the file has one
    metadata: dict[str, str]
    authenticated: bytes  # header || tag table, exactly as stored (Spec, Header MAC)
    mac: bytes
    tag_table: bytes


def _check_stanza_area(area: dict[str, Any]) -> tuple[list[dict[str, Any]], bytes | None]:
    """Spec, Stanza area and Signature: members, the stanza array, the signature structure."""
    if "stanzas" not in area or not set(area) <= STANZA_AREA_MEMBERS:
        raise FormatFailure(f"stanza area members {sorted(area)}: 'stanzas' and optionally 'signature'")
    stanzas = area["stanzas"]
    if not isinstance(stanzas, list) or not all(isinstance(s, dict) for s in stanzas):
        raise FormatFailure("stanzas is not an array of objects")
    if not 1 <= len(stanzas) <= MAX_STANZAS:
        raise FormatFailure(f"{len(stanzas)} stanzas; 1 to {MAX_STANZAS} are allowed")
    if "signature" not in area:
        return stanzas, None
    signature = area["signature"]
    if not isinstance(signature, dict) or set(signature) != SIGNATURE_MEMBERS:
        raise FormatFailure("signature is not an object with exactly the members 'type' and 'sig'")
    if signature["type"] != SIGNATURE_TYPE:
        raise FormatFailure(f"signature type {signature['type']!r} is not 'ed25519'")
    if not is_hex(signature["sig"], SIGNATURE_LEN):
        raise FormatFailure("signature sig is not 128 lowercase hex digits")
    return stanzas, bytes.fromhex(signature["sig"])


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
    """Spec, Stanzas: structural limits for every stanza, exact members and lengths for known
    ones."""
    if not isinstance(stanza.get("type"), str):
        raise FormatFailure("stanza has no string member 'type'")
    if len(stanza) > MAX_STANZA_MEMBERS:
        raise FormatFailure(f"stanza has {len(stanza)} members; at most {MAX_STANZA_MEMBERS}")
    for member, value in stanza.items():
        if not (isinstance(value, str) or _is_int(value)):
            raise FormatFailure(f"stanza member {member!r} is not a string or an integer")
        # Member names count as strings of the stanza (spec: "member names included").
        for s in (member, value):
            if isinstance(s, str) and utf8_len(s) > MAX_STANZA_STRING_BYTES:
                raise FormatFailure("stanza string longer than 16,384 bytes")

    kind = stanza["type"]
    if kind == "key":
        if set(stanza) != KEY_STANZA_MEMBERS:
            raise FormatFailure(f"key stanza members {sorted(stanza)}")
        if not is_hex(stanza["salt"], SALT_LEN):
            raise FormatFailure("key stanza salt is not 32 lowercase hex digits")
    elif kind == "scrypt":
        if set(stanza) != SCRYPT_STANZA_MEMBERS:
            raise FormatFailure(f"scrypt stanza members {sorted(stanza)}")
        log_n = stanza["log_n"]
        if not _is_int(log_n) or not MIN_LOG_N <= log_n <= MAX_LOG_N:
            raise FormatFailure(f"scrypt log_n {log_n!r} outside [{MIN_LOG_N}, {MAX_LOG_N}]")
        if not is_hex(stanza["salt"], SALT_LEN):
            raise FormatFailure("scrypt stanza salt is not 32 lowercase hex digits")
    elif kind == "x25519":
        if set(stanza) != X25519_STANZA_MEMBERS:
            raise FormatFailure(f"x25519 stanza members {sorted(stanza)}")
        if not is_hex(stanza["share"], SHARE_LEN):
            raise FormatFailure("x25519 stanza share is not 64 lowercase hex digits")
    elif kind == "rsa-oaep":
        if set(stanza) != RSA_OAEP_STANZA_MEMBERS:
            raise FormatFailure(f"rsa-oaep stanza members {sorted(stanza)}")
        if not is_hex_between(stanza["body"], MIN_RSA_BYTES, MAX_RSA_BYTES):
            raise FormatFailure("rsa-oaep stanza body is not lowercase hex of 256 to 512 bytes")
        return
    else:
        return  # unknown type: ignored after the structural checks above
    if not is_hex(stanza["body"], BODY_LEN):
        raise FormatFailure(f"{kind} stanza body is not 96 lowercase hex digits")


def _parse(data: bytes) -> _Parsed:
    """Every format check of the spec, in the spec's order. Raises only FormatFailure."""
    data = bytes(data)

    # --- Spec: Preamble ---
    if len(data) < PREAMBLE_LEN:
        raise FormatFailure("file shorter than the 32-byte preamble")
    if data[0:8] != MAGIC:
        raise FormatFailure("bad magic")
    (version,) = struct.unpack_from("<I", data, 8)
    if version != VERSION:
        raise FormatFailure(f"unsupported version {version}")
    stanza_area_len, header_len, reserved, data_offset = struct.unpack_from("<IIIQ", data, 12)
    if not MIN_STANZA_AREA_LEN <= stanza_area_len <= MAX_STANZA_AREA_LEN:
        raise FormatFailure(f"stanza_area_len {stanza_area_len} out of bounds")
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise FormatFailure(f"header_len {header_len} out of bounds")
    if reserved != 0:
        raise FormatFailure(f"reserved field is {reserved}, not 0")
    if data_offset % DATA_OFFSET_ALIGN:
        raise FormatFailure("data_offset is not a multiple of 64")
    header_start = PREAMBLE_LEN + stanza_area_len  # H
    mac_start = header_start + header_len
    if len(data) < mac_start:
        raise FormatFailure("file too short for the stanza area and the header")

    # --- Spec: Stanza area ---
    area = parse_strict_json(data[PREAMBLE_LEN:header_start], "stanza area")
    stanzas, signature = _check_stanza_area(area)

    # --- Spec: Header ---
    header = parse_header_json(data[header_start:mac_start])
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
    for stanza in stanzas:
        _check_stanza(stanza)
    if any(s["type"] == "scrypt" for s in stanzas) and len(stanzas) > 1:
        raise FormatFailure("an scrypt stanza must be the only stanza of its file")

    return _Parsed(
        header=header,
        stanza_area_len=stanza_area_len,
        header_len=header_len,
        data_offset=data_offset,
        chunk_size=chunk_size,
        entries=entries,
        stanzas=stanzas,
        signature=signature,
        metadata=header["metadata"],
        authenticated=data[header_start:mac_start] + data[tags_start:tags_end],
        mac=data[mac_start:tags_start],
        tag_table=data[tags_start:tags_end],
    )


# --- Spec: Stanzas, Opening -----------------------------------------------------------------


def x25519_wrap_key(identity: X25519PrivateKey, share: bytes) -> bytes | None:
    """Spec, Stanzas, `x25519`: the wrap key, or None for a low-order share (the shared secret
    is 32 zero bytes), which is treated as not opening."""
    recipient = identity.public_key().public_bytes_raw()
    try:
        secret = identity.exchange(X25519PublicKey.from_public_bytes(share))
    except ValueError:  # cryptography refuses an all-zero shared secret
        return None
    if secret == bytes(32):
        return None
    return hkdf(secret, share + recipient, X25519_INFO)


def _wrap_key(
    stanza: dict[str, Any], key: bytes | None, passphrase: str | None, identity: Identity | None
) -> bytes | None:
    """The wrap key of an AES-GCM stanza for what the caller gave, or None if not applicable."""
    if stanza["type"] == "key" and key is not None:
        return hkdf(key, bytes.fromhex(stanza["salt"]), KEY_INFO)
    if stanza["type"] == "scrypt" and passphrase is not None:
        salt = SCRYPT_SALT_PREFIX + bytes.fromhex(stanza["salt"])
        return scrypt(passphrase.encode("utf-8"), salt, stanza["log_n"])
    if stanza["type"] == "x25519" and isinstance(identity, X25519PrivateKey):
        return x25519_wrap_key(identity, bytes.fromhex(stanza["share"]))
    return None  # unknown type, or nothing given for this type


def _open_rsa_oaep(stanza: dict[str, Any], identity: RSAPrivateKey) -> bytes | None:
    """Spec, Stanzas, `rsa-oaep`: the file key, or None if the stanza does not open."""
    body = bytes.fromhex(stanza["body"])
    if len(body) != rsa_modulus_bytes(identity):
        return None  # only stanzas whose body is as long as the modulus are tried
    try:
        file_key = identity.decrypt(body, oaep_padding())
    except ValueError:  # OAEP decoding failed: wrong key, wrong label, tampered body
        return None
    if len(file_key) != FILE_KEY_LEN:
        return None  # Spec: a stanza opens only if it yields exactly 32 bytes
    return file_key


def _open_file_key(
    stanzas: Iterable[dict[str, Any]],
    key: bytes | None,
    passphrase: str | None,
    identity: Identity | None,
) -> bytes:
    for stanza in stanzas:
        # The first stanza that opens is used; later stanzas are not tried.
        if stanza["type"] == "rsa-oaep":
            if isinstance(identity, RSAPrivateKey):
                file_key = _open_rsa_oaep(stanza, identity)
                if file_key is not None:
                    return file_key
            continue
        wrap_key = _wrap_key(stanza, key, passphrase, identity)
        if wrap_key is None:
            continue
        try:
            return AESGCM(wrap_key).decrypt(WRAP_NONCE, bytes.fromhex(stanza["body"]), b"")
        except InvalidTag:
            continue
    raise NoMatch("no stanza opens with what was given")


# --- Spec: Header MAC -----------------------------------------------------------------------


def mac_key(file_key: bytes) -> bytes:
    return hkdf(file_key, b"", HEADER_INFO)


def _verify_mac(parsed: _Parsed, file_key: bytes) -> None:
    expected_mac = hmac_sha256(mac_key(file_key), parsed.authenticated)
    if not std_hmac.compare_digest(expected_mac, parsed.mac):
        raise HeaderFailure("header MAC does not verify")


# --- Spec: Signature ------------------------------------------------------------------------


def _verify_signature(parsed: _Parsed, verify_key: Ed25519PublicKey) -> None:
    if parsed.signature is None:
        raise HeaderFailure("a verification key was given but the file is not signed")
    try:
        verify_key.verify(parsed.signature, SIGNATURE_CONTEXT + parsed.authenticated)
    except InvalidSignature:
        raise HeaderFailure("the signature does not verify under the given key") from None


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
    """Format checks only (no key): the readable parts of the file."""
    p = _parse(data)
    return {
        "cipher": p.header["cipher"],
        "chunk_size": p.chunk_size,
        "stanza_area_len": p.stanza_area_len,
        "header_len": p.header_len,
        "data_offset": p.data_offset,
        "metadata": dict(p.metadata),
        "stanzas": [s["type"] for s in p.stanzas],
        "signed": p.signature is not None,
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


def _check_credentials(key: bytes | None, identity: object, verify_key: object) -> None:
    if key is not None and len(key) != 32:
        raise ValueError("a key is exactly 32 bytes")
    if identity is not None and not isinstance(identity, X25519PrivateKey | RSAPrivateKey):
        raise TypeError("identity must be an X25519PrivateKey or an RSAPrivateKey")
    if verify_key is not None and not isinstance(verify_key, Ed25519PublicKey):
        raise TypeError("verify_key must be an Ed25519PublicKey")


def _open(
    parsed: _Parsed,
    key: bytes | None,
    passphrase: str | None,
    identity: Identity | None,
    verify_key: Ed25519PublicKey | None,
) -> bytes:
    """Checks 2 and 3 of "Reader checks, in order"; returns the verified file key."""
    file_key = _open_file_key(parsed.stanzas, key, passphrase, identity)  # 2. no match
    _verify_mac(parsed, file_key)  # 3. header failure: the MAC first,
    if verify_key is not None:
        _verify_signature(parsed, verify_key)  # then the signature if a key is given
    return file_key


def read(
    data: bytes,
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    identity: Identity | None = None,
    verify_key: Ed25519PublicKey | None = None,
) -> tuple[list[Tensor], dict[str, str]]:
    """Read a whole file: all checks of "Reader checks, in order", then every tensor."""
    _check_credentials(key, identity, verify_key)
    data = bytes(data)
    parsed = _parse(data)  # 1. format failure
    file_key = _open(parsed, key, passphrase, identity, verify_key)  # 2. and 3.
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
    """Everything of a file except the preamble, the stanza area, the MAC and the padding.

    ``stanzas`` and ``header`` are JSON values (mutable, serialized by :func:`finish`);
    ``tag_table`` and ``data`` (the tensor data section, relative to data_offset) are mutable
    too, so that the vector generator can inject defects before the MAC is computed.
    """

    file_key: bytes
    stanzas: list[dict[str, Any]]
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


def x25519_stanza(file_key: bytes, recipient: X25519PublicKey, ephemeral_secret: bytes) -> dict[str, Any]:
    """Spec, Stanzas, `x25519`: ``ephemeral_secret`` is 32 fresh random bytes."""
    e = X25519PrivateKey.from_private_bytes(ephemeral_secret)
    share = e.public_key().public_bytes_raw()
    secret = e.exchange(recipient)  # raises ValueError for a low-order recipient key
    wrap_key = hkdf(secret, share + recipient.public_bytes_raw(), X25519_INFO)
    body = AESGCM(wrap_key).encrypt(WRAP_NONCE, file_key, b"")
    return {"type": "x25519", "share": share.hex(), "body": body.hex()}


def oaep_encrypt_randomized(recipient: RSAPublicKey, plaintext: bytes) -> bytes:
    """RSAES-OAEP encryption with cryptography's own randomness."""
    return recipient.encrypt(plaintext, oaep_padding())


def rsa_oaep_stanza(
    file_key: bytes, recipient: RSAPublicKey, oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized
) -> dict[str, Any]:
    """Spec, Stanzas, `rsa-oaep`."""
    if not MIN_RSA_BYTES * 8 <= recipient.key_size <= MAX_RSA_BYTES * 8:
        raise ValueError("an RSA recipient key has a 2048- to 4096-bit modulus")
    body = oaep_encrypt(recipient, file_key)
    if len(body) != rsa_modulus_bytes(recipient):
        raise ValueError("an RSA-OAEP ciphertext is exactly as long as the modulus")
    return {"type": "rsa-oaep", "body": body.hex()}


def make_stanzas(
    file_key: bytes,
    *,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    recipients: Sequence[Recipient] = (),
    log_n: int = 18,
    rng: Callable[[int], bytes],
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> list[dict[str, Any]]:
    """Stanzas for the given keys, then the recipients, in order; or one scrypt stanza.

    Randomness comes from rng: a 16-byte salt per key or scrypt stanza and a 32-byte
    ephemeral secret per X25519 recipient, in stanza order (RSA-OAEP uses oaep_encrypt)."""
    if passphrase is not None:
        if keys or recipients:
            raise ValueError("an scrypt stanza must be the only stanza of its file")
        return [scrypt_stanza(file_key, passphrase, rng(SALT_LEN), log_n)]
    if not keys and not recipients:
        raise ValueError("give one or more keys or recipients, or a passphrase")
    if any(len(k) != 32 for k in keys):
        raise ValueError("keys are exactly 32 bytes")
    stanzas = [key_stanza(file_key, k, rng(SALT_LEN)) for k in keys]
    for r in recipients:
        if isinstance(r, X25519PublicKey):
            stanzas.append(x25519_stanza(file_key, r, rng(32)))
        elif isinstance(r, RSAPublicKey):
            stanzas.append(rsa_oaep_stanza(file_key, r, oaep_encrypt))
        else:
            raise TypeError("a recipient is an X25519PublicKey or an RSAPublicKey")
    return stanzas


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
    recipients: Sequence[Recipient] = (),
    log_n: int = 18,
    rng: Callable[[int], bytes],
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> Draft:
    """Build a canonical file minus preamble, stanza area, MAC and padding. Randomness comes
    from rng: first the 32-byte file key, then what :func:`make_stanzas` draws."""
    file_key = rng(FILE_KEY_LEN)
    stanzas = make_stanzas(
        file_key,
        keys=keys,
        passphrase=passphrase,
        recipients=recipients,
        log_n=log_n,
        rng=rng,
        oaep_encrypt=oaep_encrypt,
    )

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
        "metadata": dict(metadata),
        "tensors": entries,
    }
    return Draft(file_key=file_key, stanzas=stanzas, header=header, tag_table=tag_table, data=section)


def canonical_header_bytes(header: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, members in insertion order, no trailing spaces."""
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def stanza_area_json(stanzas: list[dict[str, Any]], signature: bytes | None) -> bytes:
    """The stanza area object as compact UTF-8 JSON, without the padding spaces."""
    area: dict[str, Any] = {"stanzas": stanzas}
    if signature is not None:
        area["signature"] = {"type": SIGNATURE_TYPE, "sig": signature.hex()}
    return canonical_header_bytes(area)


def signature_message(authenticated: bytes) -> bytes:
    """Spec, Signature: "enctensor.v1 signature" || 0x00 || header || tag table."""
    return SIGNATURE_CONTEXT + authenticated


def finish(
    d: Draft,
    *,
    data_align: int = 4096,
    stanza_area_len: int | None = None,
    sign_with: Ed25519PrivateKey | None = None,
    header_bytes: bytes | None = None,
    data_offset: int | None = None,
    magic: bytes = MAGIC,
    version: int = VERSION,
    stanza_area_len_field: int | None = None,
    header_len: int | None = None,
    reserved: int = 0,
    mac: bytes | None = None,
) -> bytes:
    """Preamble || stanza area || header || MAC || tag table || zero padding || data.

    By default stanza_area_len = :func:`default_stanza_area_len` and data_offset =
    align(tags_end, data_align). The keyword arguments after sign_with exist for the vector
    generator: the MAC and the signature are always computed over the header and tag table
    actually written, whatever they contain (the preamble and stanza area are not covered).
    """
    header = canonical_header_bytes(d.header) if header_bytes is None else header_bytes
    # The signature has a fixed length, so the area's size is known before it is computed.
    content_len = len(stanza_area_json(d.stanzas, bytes(SIGNATURE_LEN) if sign_with else None))
    if stanza_area_len is None:
        stanza_area_len = default_stanza_area_len(content_len)
    elif stanza_area_len < content_len:
        raise ValueError(f"the stanzas need {content_len} bytes, more than stanza_area_len")
    tags_end = PREAMBLE_LEN + stanza_area_len + len(header) + MAC_LEN + len(d.tag_table)
    if data_offset is None:
        data_offset = align(tags_end, data_align)
    preamble = (
        magic
        + u32le(version)
        + u32le(stanza_area_len if stanza_area_len_field is None else stanza_area_len_field)
        + u32le(len(header) if header_len is None else header_len)
        + u32le(reserved)
        + u64le(data_offset)
    )
    authenticated = header + bytes(d.tag_table)
    if mac is None:
        mac = hmac_sha256(mac_key(d.file_key), authenticated)
    signature = sign_with.sign(signature_message(authenticated)) if sign_with else None
    area = stanza_area_json(d.stanzas, signature).ljust(stanza_area_len, b" ")
    padding = bytes(max(0, data_offset - tags_end))
    return preamble + area + header + mac + bytes(d.tag_table) + padding + bytes(d.data)


def write(
    tensors: Sequence[TensorSpec],
    *,
    metadata: dict[str, str],
    chunk_size: int = 1 << 20,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    recipients: Sequence[Recipient] = (),
    sign_with: Ed25519PrivateKey | None = None,
    log_n: int = 18,
    rng: Callable[[int], bytes],
    data_align: int = 4096,
    stanza_area_len: int | None = None,
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> bytes:
    """Write a canonical file (data_offset = align(tags_end, data_align))."""
    if data_align <= 0 or data_align % DATA_OFFSET_ALIGN:
        raise ValueError("data_align must be a positive multiple of 64")
    if stanza_area_len is not None and not MIN_STANZA_AREA_LEN <= stanza_area_len <= MAX_STANZA_AREA_LEN:
        raise ValueError("stanza_area_len must lie in [16, 1 MiB]")
    d = draft(
        tensors,
        metadata=metadata,
        chunk_size=chunk_size,
        keys=keys,
        passphrase=passphrase,
        recipients=recipients,
        log_n=log_n,
        rng=rng,
        oaep_encrypt=oaep_encrypt,
    )
    return finish(d, data_align=data_align, stanza_area_len=stanza_area_len, sign_with=sign_with)


# --- Spec: Re-keying ------------------------------------------------------------------------


def rekey(
    data: bytes,
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    identity: Identity | None = None,
    new_keys: Sequence[bytes] = (),
    new_passphrase: str | None = None,
    new_recipients: Sequence[Recipient] = (),
    log_n: int = 18,
    rng: Callable[[int], bytes],
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> bytes:
    """Replace the stanza area in place: new stanzas wrapping the same file key, the
    signature member kept as it is, padded with spaces to the same stanza_area_len. Every
    byte outside the stanza area is unchanged.

    The file key is opened with key / passphrase / identity and the header MAC verified
    first. Raises ValueError if the new stanzas do not fit (the spec then rewrites the file
    with a larger stanza area, which changes the preamble: not done here).
    """
    _check_credentials(key, identity, None)
    data = bytes(data)
    parsed = _parse(data)
    file_key = _open(parsed, key, passphrase, identity, None)
    stanzas = make_stanzas(
        file_key,
        keys=new_keys,
        passphrase=new_passphrase,
        recipients=new_recipients,
        log_n=log_n,
        rng=rng,
        oaep_encrypt=oaep_encrypt,
    )
    area = stanza_area_json(stanzas, parsed.signature)
    if len(area) > parsed.stanza_area_len:
        raise ValueError(f"the new stanzas need {len(area)} bytes; the area has {parsed.stanza_area_len}")
    area = area.ljust(parsed.stanza_area_len, b" ")
    return data[:PREAMBLE_LEN] + area + data[PREAMBLE_LEN + parsed.stanza_area_len :]
