"""Pure-Python reference reader and writer for the enctensor file format, version 1.

This module follows ``spec/FORMAT.md`` section by section, for readability rather than
speed. It depends only on the standard library, ``cryptography`` (AES-GCM, HKDF, HMAC,
scrypt, X25519, RSA-OAEP, Ed25519) and ``blake3`` (the standard library's ``hashlib`` has no
BLAKE3). Section names of the spec appear in comments as ``# --- Spec: <section> ---``.

Reader::

    tensors, metadata = read(data, key=key)           # or passphrase="...", or identity=...
    tensors, metadata = read(data, identity=x25519_private_key, verify_key=ed25519_public_key)
    part = read_tensor(data, "w", key=key, byte_range=(0, 16), verify_key=...)   # a slice
    info = inspect(data)                              # format checks only, no key
    shards = read_sharded("dir/model.enct.index.json", key=key)   # a sharded set, checked whole

``identity`` is a ``cryptography`` ``X25519PrivateKey`` or ``RSAPrivateKey``; ``verify_key``
an ``Ed25519PublicKey`` (or its 32 raw bytes): when it is given, the file must carry a valid
signature by it, and every chunk read is checked against the digest table.
``max_scrypt_log_n`` (default 18) is the local scrypt cost policy of FORMAT.md, `scrypt`.
Failures are reported with the four classes of "Reader checks, in order":
:class:`FormatFailure`, :class:`NoMatch`, :class:`HeaderFailure`, :class:`PayloadFailure`,
all subclasses of :class:`RefError` (and never subclassed, so that callers can map them by
type). Two attributes say more: ``FormatFailure.policy`` is true for a refusal by the scrypt
cost cap (a policy, not a defect of the bytes), ``HeaderFailure.signature`` for a failure of
the verification key or the signature (not of the MAC). :func:`read_sharded` adds
:class:`SetFailure` (also a :class:`RefError`): the shards of a set are each authentic but are
not one whole set as its index describes it (FORMAT.md, "Sharded sets and rollback").

Writer::

    data = write([("w", "F32", (2, 3), raw_bytes, True)], metadata={}, keys=[key],
                 recipients=[x25519_public_key, rsa_public_key], sign_with=ed25519_private_key,
                 rng=os.urandom)
    data = rekey(data, key=key, new_keys=[other_key], rng=os.urandom)

:func:`write` is :func:`draft` followed by :func:`finish`; the vector generator uses the two
steps separately to inject defects before or after the header MAC is computed.
"""

from __future__ import annotations

import hmac as std_hmac
import itertools
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import blake3 as _blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
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
    "SMALL_ORDER_ENCODINGS",
    "Draft",
    "FormatFailure",
    "HeaderFailure",
    "Identity",
    "NoMatch",
    "OaepEncrypt",
    "PayloadFailure",
    "Recipient",
    "RefError",
    "SetFailure",
    "Shard",
    "ShardEntry",
    "Tensor",
    "TensorSpec",
    "canonical_header_bytes",
    "canonical_stanza_area_len",
    "chunk_digest_table",
    "draft",
    "ed25519_verify_strict",
    "finish",
    "inspect",
    "make_stanzas",
    "read",
    "read_sharded",
    "read_tensor",
    "recipient_fingerprint",
    "rekey",
    "signature_message",
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
    """Class 1, "format failure": the file does not follow the format (no key needed).

    ``policy`` is true when it is instead the local scrypt cost policy that refused the file
    before running scrypt (FORMAT.md, `scrypt`: log_n above ``max_scrypt_log_n``, 18 by
    default), reported in this class as the reference core does; the message then names the
    policy and how to lift it."""

    def __init__(self, message: str, *, policy: bool = False) -> None:
        super().__init__(message)
        self.policy = policy


class NoMatch(RefError):
    """Class 2, "no match": no stanza opens with what the caller gave."""


class HeaderFailure(RefError):
    """Class 3, "header failure": the header MAC does not verify, or a verification key was
    given and it is unusable or the signature is missing or does not verify (then
    ``signature`` is true)."""

    def __init__(self, message: str, *, signature: bool = False) -> None:
        super().__init__(message)
        self.signature = signature


def signature_failure(message: str) -> HeaderFailure:
    """A header failure caused by the verification key or the signature, not the MAC."""
    return HeaderFailure(message, signature=True)


class PayloadFailure(RefError):
    """Class 4, "payload failure": a chunk tag does not verify, or a verification key was
    given and a chunk's BLAKE3 digest differs from its digest table entry."""


class SetFailure(RefError):
    """A sharded set is not one whole set (FORMAT.md, "Sharded sets and rollback": "an
    integrity failure"): every shard opened and is authentic on its own, but a shard lacks the
    ``enctensor.shard`` entry or its entry is malformed, the shards belong to different sets,
    a file holds another position of the set than its name, a file of the set is missing, or
    the index does not map each tensor to the shard that holds it. Raised only by
    :func:`read_sharded`; not one of the four classes of a single file."""


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


def blake3(data: bytes) -> bytes:
    """BLAKE3 in its default (unkeyed) mode, 32 bytes of output."""
    return _blake3.blake3(data).digest()


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
PAGE_SIZE = 4096
MIN_STANZA_AREA_LEN = PAGE_SIZE - PREAMBLE_LEN  # 4064: 4096 * k - 32 with k = 1
MAX_STANZA_AREA_LEN = 1_048_544  # 4096 * 256 - 32
MIN_HEADER_LEN = 2
MAX_HEADER_LEN = 16_777_216
MAC_LEN = 32
TAG_LEN = 16
DIGEST_LEN = 32


# --- Spec: Stanza area ----------------------------------------------------------------------

STANZA_AREA_MEMBERS = frozenset({"stanzas", "signature"})  # "stanzas" is required


def canonical_stanza_area_len(content_len: int) -> int:
    """Spec, Stanza area: the only allowed stanza_area_len for a stanza area whose JSON,
    without trailing spaces, is ``content_len`` (J) bytes long: align(32 + J, 4096) - 32."""
    return align(PREAMBLE_LEN + content_len, PAGE_SIZE) - PREAMBLE_LEN


# --- Spec: Header ---------------------------------------------------------------------------

CIPHER = "AES-256-GCM"
CHUNK_DIGEST = "BLAKE3"
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 67_108_864
MAX_STANZAS = 256
MAX_METADATA_ENTRIES = 65_536
MAX_TENSORS = 262_144
MAX_NAME_BYTES = 4096
MAX_DIMS = 64
MAX_JSON_DEPTH = 128

HEADER_MEMBERS = frozenset({"cipher", "chunk_size", "metadata", "tensors"})  # all required
OPTIONAL_HEADER_MEMBERS = frozenset({"chunk_digest"})
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
DATA_OFFSET_ALIGN = PAGE_SIZE


# --- Spec: Stanzas --------------------------------------------------------------------------

MAX_STANZA_MEMBERS = 16
MAX_STANZA_STRING_BYTES = 16_384
MAX_UNKNOWN_STANZA_BYTES = 16_384  # all strings of all stanzas of unknown types, together
SALT_LEN = 16
COMMITMENT_LEN = 32
BODY_LEN = COMMITMENT_LEN + 32 + 16  # commitment || AES-GCM ciphertext of the file key || tag
SHARE_LEN = 32
FILE_KEY_LEN = 32
MIN_LOG_N = 10
MAX_LOG_N = 20
DEFAULT_MAX_SCRYPT_LOG_N = 18
MIN_RSA_BYTES = 256  # 2048-bit modulus
MAX_RSA_BYTES = 512  # 4096-bit modulus
KNOWN_STANZA_TYPES = frozenset({"key", "scrypt", "x25519", "rsa-oaep"})
KEY_STANZA_MEMBERS = frozenset({"type", "salt", "body"})
SCRYPT_STANZA_MEMBERS = frozenset({"type", "salt", "log_n", "body"})
X25519_STANZA_MEMBERS = frozenset({"type", "share", "body"})
RSA_OAEP_STANZA_MEMBERS = frozenset({"type", "body"})
# Spec, Recipient fingerprints: an optional member of these three types (never of scrypt).
FINGERPRINT_MEMBER = "fingerprint"
FINGERPRINT_LEN = 16
FINGERPRINT_INFO = {
    "key": b"enctensor.v1 fingerprint key",
    "x25519": b"enctensor.v1 fingerprint x25519",
    "rsa-oaep": b"enctensor.v1 fingerprint rsa-oaep",
}
WRAP_NONCE = bytes(12)
COMMITMENT_INFO = b"enctensor.v1 stanza commitment"
SEAL_INFO = b"enctensor.v1 stanza seal"
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


def stanza_commitment(wrap_key: bytes) -> bytes:
    """commitment = HKDF(ikm = wrap key, salt = "", info = "enctensor.v1 stanza commitment")."""
    return hkdf(wrap_key, b"", COMMITMENT_INFO)


def stanza_seal_key(wrap_key: bytes) -> bytes:
    """seal key = HKDF(ikm = wrap key, salt = "", info = "enctensor.v1 stanza seal")."""
    return hkdf(wrap_key, b"", SEAL_INFO)


def seal_file_key(wrap_key: bytes, file_key: bytes) -> bytes:
    """body = commitment || ct || tag, with ct, tag = AES-GCM-Seal(seal key, 0^12, file key, "")."""
    sealed = AESGCM(stanza_seal_key(wrap_key)).encrypt(WRAP_NONCE, file_key, b"")
    return stanza_commitment(wrap_key) + sealed


def open_file_key(wrap_key: bytes, body: bytes) -> bytes | None:
    """The file key of a committing body, or None: the commitment is compared in constant time
    first, and AES-GCM-Open runs only if it matches."""
    if not std_hmac.compare_digest(stanza_commitment(wrap_key), body[:COMMITMENT_LEN]):
        return None
    try:
        return AESGCM(stanza_seal_key(wrap_key)).decrypt(WRAP_NONCE, body[COMMITMENT_LEN:], b"")
    except InvalidTag:
        return None


# --- Spec: Header MAC -----------------------------------------------------------------------

HEADER_INFO = b"enctensor.v1 header"


# --- Spec: Tensor data ----------------------------------------------------------------------

TENSOR_INFO = b"enctensor.v1 tensor"


# --- Spec: Signature ------------------------------------------------------------------------

SIGNATURE_MEMBERS = frozenset({"type", "sig"})
SIGNATURE_TYPE = "ed25519-blake3"
SIGNATURE_LEN = 64
SIGNATURE_LABEL = b"enctensor.v1 ed25519-blake3"


def signature_message(header: bytes, mac: bytes, tag_table: bytes, digest_table: bytes) -> bytes:
    """Spec, Signature:
    transcript = BLAKE3(header || MAC || tag table || digest table)
    message    = "enctensor.v1 ed25519-blake3" || 0x00 || u64le(header_len) || u64le(C) || transcript
    """
    transcript = blake3(header + mac + tag_table + digest_table)
    chunks = len(tag_table) // TAG_LEN
    return SIGNATURE_LABEL + b"\x00" + u64le(len(header)) + u64le(chunks) + transcript


# --- Ed25519 points (RFC 8032 §5.1), for the strict checks OpenSSL does not make ------------
#
# cryptography's Ed25519PublicKey.verify is OpenSSL's: RFC 8032 §5.1.7 without the cofactor,
# rejecting S >= L and (by comparing encodings) non-canonical R, but it accepts a small-order
# public key (the identity key accepts R = identity, S = 0 for every message), a small-order
# R and a public key with a small-order component. FORMAT.md, Signature, requires refusing
# those, so they are checked here with the curve's own arithmetic before OpenSSL verifies.

ED25519_P = 2**255 - 19
ED25519_L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
ED25519_D = -121665 * pow(121666, -1, ED25519_P) % ED25519_P
_SQRT_M1 = pow(2, (ED25519_P - 1) // 4, ED25519_P)

EdPoint = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z
ED25519_IDENTITY: EdPoint = (0, 1, 1, 0)


def ed_add(p1: EdPoint, p2: EdPoint) -> EdPoint:
    """Point addition (RFC 8032 §5.1.4)."""
    p = ED25519_P
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % p
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % p
    c = 2 * p1[3] * p2[3] * ED25519_D % p
    d = 2 * p1[2] * p2[2] % p
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def ed_mul(s: int, point: EdPoint) -> EdPoint:
    """s * point (double and add)."""
    q = ED25519_IDENTITY
    while s > 0:
        if s & 1:
            q = ed_add(q, point)
        point = ed_add(point, point)
        s >>= 1
    return q


def ed_equal(p1: EdPoint, p2: EdPoint) -> bool:
    p = ED25519_P
    return (p1[0] * p2[2] - p2[0] * p1[2]) % p == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % p == 0


def ed_decode(s: bytes) -> EdPoint | None:
    """RFC 8032 §5.1.3 decoding, strict: None for a non-canonical y (y >= p), a y with no x on
    the curve, and the sign bit set with x = 0 (a second encoding of (0, ±1))."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    p = ED25519_P
    if y >= p:
        return None
    x2 = (y * y - 1) * pow(ED25519_D * y * y + 1, -1, p) % p
    if x2 == 0:
        if sign:
            return None
        return (0, y, 1, 0)
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * _SQRT_M1 % p
    if (x * x - x2) % p:
        return None
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)


def ed_encode(point: EdPoint) -> bytes:
    p = ED25519_P
    zinv = pow(point[2], -1, p)
    x, y = point[0] * zinv % p, point[1] * zinv % p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def ed_is_small_order(point: EdPoint) -> bool:
    """8 * point is the identity: the point lies in the torsion subgroup of order 8."""
    return ed_equal(ed_mul(8, point), ED25519_IDENTITY)


def ed_in_prime_order_subgroup(point: EdPoint) -> bool:
    return ed_equal(ed_mul(ED25519_L, point), ED25519_IDENTITY)


def _small_order_encodings() -> frozenset[bytes]:
    """The canonical encodings of the eight points of order dividing 8, computed from the
    curve: L * P lies in the torsion subgroup for any point P; one of order 8 generates it."""
    y = 2
    while True:
        point = ed_decode(y.to_bytes(32, "little"))
        y += 1
        if point is None:
            continue
        torsion = ed_mul(ED25519_L, point)
        if not ed_equal(ed_mul(4, torsion), ED25519_IDENTITY):  # order exactly 8
            return frozenset(ed_encode(ed_mul(k, torsion)) for k in range(8))


# The same eight encodings as published (libsodium's ge25519_has_small_order blocklist, and
# "Taming the many EdDSAs", Chalkias, Garillot, Nikolaenko, SSR 2020, Table 2), restricted to
# canonical encodings: the identity, (0, -1), the two points of order 4 and four of order 8.
SMALL_ORDER_ENCODINGS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # (0, -1) (order 2)
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    )
)
assert _small_order_encodings() == SMALL_ORDER_ENCODINGS


def ed25519_check_verify_key(public: bytes) -> None:
    """Spec, Signature, verifying, step 1. Raises HeaderFailure (signature=True) if the key is
    unusable."""
    if public in SMALL_ORDER_ENCODINGS:
        raise signature_failure(
            "the verification key is a small-order point (it would accept forged signatures): unusable"
        )
    point = ed_decode(public)
    if point is None:
        raise signature_failure("the verification key is not a canonical encoding of a curve point: unusable")
    if not ed_in_prime_order_subgroup(point):
        raise signature_failure(
            "the verification key is not in the prime-order subgroup (it has a small-order "
            "component): unusable"
        )


def ed25519_verify_strict(public: bytes, sig: bytes, message: bytes) -> bool:
    """Spec, Signature, verifying, step 2 (the key is checked by ed25519_check_verify_key):
    RFC 8032 §5.1.7 without the cofactor, rejecting S >= L, a non-canonical or invalid R and a
    small-order R. The equation itself is checked by OpenSSL (through cryptography)."""
    if len(sig) != SIGNATURE_LEN:
        return False
    r_point = ed_decode(sig[:32])
    if r_point is None or ed_is_small_order(r_point):
        return False
    if int.from_bytes(sig[32:], "little") >= ED25519_L:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


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
    # Names are compared after unescaping, code point by code point (that is, byte for byte
    # in UTF-8), without Unicode normalization.
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


# A JSON string token (the escapes inside it skipped as pairs) or a bracket outside strings.
_JSON_NESTING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _check_nesting(text: str, what: str) -> None:
    """Spec, Header: nesting deeper than 128 levels is rejected, each object and each array
    counting as one level (the outermost object is level 1). Checked on the text before
    parsing, so that a deep document costs no recursion."""
    depth = 0
    for token in _JSON_NESTING_TOKEN.finditer(text):
        c = token.group()
        if c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise FormatFailure(f"{what} JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        elif c in "]}":
            depth -= 1


def parse_strict_json(raw: bytes, what: str = "header") -> dict[str, Any]:
    """Parse the header (or stanza area) bytes as strict JSON; return the top-level object.

    The object must start at the first byte and be followed only by ASCII spaces.
    """
    try:
        text = raw.decode("utf-8")  # strict: rejects invalid and overlong UTF-8, surrogates
    except UnicodeDecodeError:
        raise FormatFailure(f"{what} is not valid UTF-8") from None
    if not text.startswith("{"):
        raise FormatFailure(f"{what} does not start with '{{'")
    _check_nesting(text, what)
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
    first_tag: int  # index of its first tag (and digest) in the tables


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
    header_bytes: bytes  # exactly as stored (Spec, Header MAC)
    mac: bytes
    tag_table: bytes
    digest_table: bytes  # empty without "chunk_digest"

    @property
    def chunk_digest(self) -> bool:
        return "chunk_digest" in self.header

    @property
    def authenticated(self) -> bytes:
        """header || tag table || digest table: what the header MAC covers."""
        return self.header_bytes + self.tag_table + self.digest_table


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
        raise FormatFailure(f"signature type {signature['type']!r} is not {SIGNATURE_TYPE!r}")
    if not is_hex(signature["sig"], SIGNATURE_LEN):
        raise FormatFailure("signature sig is not 128 lowercase hex digits")
    return stanzas, bytes.fromhex(signature["sig"])


def _check_header_schema(header: dict[str, Any]) -> None:
    """Spec, Header: exact members, types and limits (dtypes are checked per tensor)."""
    members = set(header)
    if not HEADER_MEMBERS <= members <= HEADER_MEMBERS | OPTIONAL_HEADER_MEMBERS:
        missing = sorted(HEADER_MEMBERS - members)
        extra = sorted(members - HEADER_MEMBERS - OPTIONAL_HEADER_MEMBERS)
        raise FormatFailure(f"header members: missing {missing}, unknown {extra}")

    if header["cipher"] != CIPHER:
        raise FormatFailure(f"unknown cipher {header['cipher']!r}")

    if "chunk_digest" in header and header["chunk_digest"] != CHUNK_DIGEST:
        raise FormatFailure(f"chunk_digest {header['chunk_digest']!r} is not {CHUNK_DIGEST!r}")

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


def _stanza_string_bytes(stanza: dict[str, Any]) -> int:
    """Member names and string values, UTF-8 after unescaping, `type` included."""
    return sum(utf8_len(m) + (utf8_len(v) if isinstance(v, str) else 0) for m, v in stanza.items())


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
    if kind in FINGERPRINT_INFO and FINGERPRINT_MEMBER in stanza:
        # Spec, Recipient fingerprints: optional, exactly 16 bytes of lowercase hex; it is
        # checked here and ignored when opening.
        if not is_hex(stanza[FINGERPRINT_MEMBER], FINGERPRINT_LEN):
            raise FormatFailure(
                f"{kind} stanza fingerprint is not {2 * FINGERPRINT_LEN} lowercase hex digits"
            )
        stanza = {m: v for m, v in stanza.items() if m != FINGERPRINT_MEMBER}
    if kind == "key":
        if set(stanza) != KEY_STANZA_MEMBERS:
            raise FormatFailure(f"key stanza members {sorted(stanza)}")
        if not is_hex(stanza["salt"], SALT_LEN):
            raise FormatFailure("key stanza salt is not 32 lowercase hex digits")
    elif kind == "scrypt":
        if FINGERPRINT_MEMBER in stanza:
            raise FormatFailure(
                "an scrypt stanza has no fingerprint (it would test passphrases without scrypt)"
            )
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
        raise FormatFailure(f"{kind} stanza body is not {2 * BODY_LEN} lowercase hex digits")


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
    if (
        not MIN_STANZA_AREA_LEN <= stanza_area_len <= MAX_STANZA_AREA_LEN
        or (stanza_area_len + PREAMBLE_LEN) % PAGE_SIZE
    ):
        raise FormatFailure(f"stanza_area_len {stanza_area_len} is not 4096 * k - 32 in [4064, 1,048,544]")
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise FormatFailure(f"header_len {header_len} out of bounds")
    if reserved != 0:
        raise FormatFailure(f"reserved field is {reserved}, not 0")
    if data_offset % DATA_OFFSET_ALIGN:
        raise FormatFailure("data_offset is not a multiple of 4096")
    header_start = PREAMBLE_LEN + stanza_area_len  # H
    mac_start = header_start + header_len
    if len(data) < mac_start:
        raise FormatFailure("file too short for the stanza area and the header")

    # --- Spec: Stanza area ---
    area_bytes = data[PREAMBLE_LEN:header_start]
    content_len = len(area_bytes.rstrip(b" "))  # J
    if stanza_area_len != canonical_stanza_area_len(content_len):
        raise FormatFailure(
            f"stanza_area_len {stanza_area_len} is not the canonical "
            f"{canonical_stanza_area_len(content_len)} for {content_len} bytes of stanzas"
        )
    area = parse_strict_json(area_bytes, "stanza area")
    stanzas, signature = _check_stanza_area(area)

    # --- Spec: Header ---
    header = parse_header_json(data[header_start:mac_start])
    _check_header_schema(header)
    chunk_size: int = header["chunk_size"]
    seen_names: set[str] = set()
    for t in header["tensors"]:
        _check_tensor_entry(t, seen_names)
    has_digests = "chunk_digest" in header
    # --- Spec: Signature --- (its structure; a signed file has a digest table)
    if signature is not None and not has_digests:
        raise FormatFailure("a signature in a file whose header has no chunk_digest")

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
    tags_start = mac_start + MAC_LEN
    tags_end = checked_u64(tags_start + checked_u64(TAG_LEN * total_chunks, "tag table length"), "tags_end")
    digest_table_len = checked_u64(DIGEST_LEN * total_chunks, "digest table length") if has_digests else 0
    tables_end = checked_u64(tags_end + digest_table_len, "tables_end")
    canonical_offset = checked_u64(align(tables_end, PAGE_SIZE), "data_offset")
    if data_offset != canonical_offset:
        raise FormatFailure(f"data_offset {data_offset} is not align(tables_end, 4096) = {canonical_offset}")
    data_end = entries[-1].end if entries else 0
    file_len = checked_u64(data_offset + data_end, "file length")
    # Exact file length (checked before the padding so that every byte read below exists).
    if len(data) < file_len:
        raise FormatFailure(f"file is truncated: {len(data)} bytes, expected {file_len}")
    if len(data) > file_len:
        raise FormatFailure(f"trailing data: {len(data)} bytes, expected {file_len}")
    if any(data[tables_end:data_offset]):
        raise FormatFailure("non-zero padding between the tables and data_offset")
    for prev, cur in itertools.pairwise(entries):
        if any(data[data_offset + prev.end : data_offset + cur.begin]):
            raise FormatFailure(f"non-zero padding before tensor {cur.name!r}")

    # --- Spec: Stanzas ---
    unknown_bytes = 0
    for stanza in stanzas:
        _check_stanza(stanza)
        if stanza["type"] not in KNOWN_STANZA_TYPES:
            unknown_bytes += _stanza_string_bytes(stanza)
    if unknown_bytes > MAX_UNKNOWN_STANZA_BYTES:
        raise FormatFailure(
            f"stanzas of unknown types carry {unknown_bytes} bytes of strings; at most "
            f"{MAX_UNKNOWN_STANZA_BYTES}"
        )
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
        header_bytes=data[header_start:mac_start],
        mac=data[mac_start:tags_start],
        tag_table=data[tags_start:tags_end],
        digest_table=data[tags_end:tables_end],
    )


# --- Spec: Stanzas, `scrypt` (the local cost policy) -----------------------------------------


def _check_scrypt_policy(parsed: _Parsed, max_scrypt_log_n: int) -> None:
    """FORMAT.md, `scrypt`: by default refuse log_n > 18 before running scrypt, unless the
    caller allows more. Applied to the file (before any stanza is opened), whatever
    credential was given."""
    for stanza in parsed.stanzas:
        if stanza["type"] == "scrypt" and stanza["log_n"] > max_scrypt_log_n:
            raise FormatFailure(
                f"the scrypt stanza has log_n {stanza['log_n']}, above the limit of "
                f"{max_scrypt_log_n} (2^{stanza['log_n']} costs about {2 ** (stanza['log_n'] - 10)} MiB "
                f"per attempt); pass max_scrypt_log_n={stanza['log_n']} (CLI: --max-scrypt-log-n "
                f"{stanza['log_n']}) to allow it",
                policy=True,
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
    """The wrap key of a committing stanza for what the caller gave, or None if not applicable."""
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
        file_key = open_file_key(wrap_key, bytes.fromhex(stanza["body"]))
        if file_key is not None:
            return file_key
    raise NoMatch("no stanza opens with what was given")


# --- Spec: Header MAC -----------------------------------------------------------------------


def mac_key(file_key: bytes) -> bytes:
    return hkdf(file_key, b"", HEADER_INFO)


def header_mac(file_key: bytes, header: bytes, tag_table: bytes, digest_table: bytes) -> bytes:
    """MAC = HMAC(mac key, header || tag table || digest table)."""
    return hmac_sha256(mac_key(file_key), header + tag_table + digest_table)


def _verify_mac(parsed: _Parsed, file_key: bytes) -> None:
    expected_mac = header_mac(file_key, parsed.header_bytes, parsed.tag_table, parsed.digest_table)
    if not std_hmac.compare_digest(expected_mac, parsed.mac):
        raise HeaderFailure("header MAC does not verify")


# --- Spec: Signature ------------------------------------------------------------------------


def _verify_signature(parsed: _Parsed, verify_key: bytes) -> None:
    ed25519_check_verify_key(verify_key)  # step 1: an unusable key is refused
    if parsed.signature is None:
        raise signature_failure("a verification key was given but the file is not signed")
    message = signature_message(parsed.header_bytes, parsed.mac, parsed.tag_table, parsed.digest_table)
    if not ed25519_verify_strict(verify_key, parsed.signature, message):
        raise signature_failure("the signature does not verify under the given key")


# --- Spec: Tensor data ----------------------------------------------------------------------


def tensor_key(file_key: bytes, name: str) -> bytes:
    return hkdf(file_key, b"", TENSOR_INFO + b"\x00" + name.encode("utf-8"))


def chunk_nonce(j: int, m: int) -> bytes:
    return u88be(j) + (b"\x01" if j == m - 1 else b"\x00")


def _decrypt_all(parsed: _Parsed, data: bytes, file_key: bytes, check_digests: bool) -> list[Tensor]:
    """Every tensor of an opened file, decrypted and verified (digests too when
    ``check_digests``); raises on the first chunk that fails, so nothing is released unless
    every chunk verifies."""
    return [
        Tensor(
            e.name,
            e.dtype,
            e.shape,
            _open_chunks(parsed, data, file_key, e, 0, e.chunks, check_digests),
            e.encrypted,
        )
        for e in parsed.entries
    ]


def _open_chunks(
    parsed: _Parsed, data: bytes, file_key: bytes, e: _Entry, first: int, stop: int, check_digests: bool
) -> bytes:
    """Chunks [first, stop) of tensor e, each verified before any of its bytes is used: with
    a verification key its BLAKE3 digest first (Spec, Signature, step 3), then its tag."""
    aead = AESGCM(tensor_key(file_key, e.name))
    base = parsed.data_offset + e.begin
    out = bytearray()
    for j in range(first, stop):
        lo = j * parsed.chunk_size
        hi = min((j + 1) * parsed.chunk_size, e.nbytes)
        stored = data[base + lo : base + hi]
        k = e.first_tag + j  # index in the tag table and in the digest table
        if check_digests:
            want = parsed.digest_table[k * DIGEST_LEN : (k + 1) * DIGEST_LEN]
            if not std_hmac.compare_digest(blake3(stored), want):
                raise PayloadFailure(f"tensor {e.name!r}: chunk {j} differs from its signed digest")
        tag = parsed.tag_table[k * TAG_LEN : (k + 1) * TAG_LEN]
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
        "chunk_digest": p.chunk_digest,
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


def _verify_key_bytes(verify_key: Ed25519PublicKey | bytes | None) -> bytes | None:
    if verify_key is None:
        return None
    if isinstance(verify_key, Ed25519PublicKey):
        return verify_key.public_bytes_raw()
    if isinstance(verify_key, bytes | bytearray) and len(verify_key) == 32:
        return bytes(verify_key)
    raise TypeError("verify_key must be an Ed25519PublicKey or its 32 raw bytes")


def _check_credentials(key: bytes | None, identity: object, max_scrypt_log_n: int) -> None:
    if key is not None and len(key) != 32:
        raise ValueError("a key is exactly 32 bytes")
    if identity is not None and not isinstance(identity, X25519PrivateKey | RSAPrivateKey):
        raise TypeError("identity must be an X25519PrivateKey or an RSAPrivateKey")
    if not _is_int(max_scrypt_log_n) or not MIN_LOG_N <= max_scrypt_log_n <= MAX_LOG_N:
        raise ValueError(f"max_scrypt_log_n must lie in [{MIN_LOG_N}, {MAX_LOG_N}]")


def _open(
    parsed: _Parsed,
    key: bytes | None,
    passphrase: str | None,
    identity: Identity | None,
    verify_key: bytes | None,
    max_scrypt_log_n: int,
) -> bytes:
    """Checks 2 and 3 of "Reader checks, in order"; returns the verified file key."""
    _check_scrypt_policy(parsed, max_scrypt_log_n)  # local policy, before opening any stanza
    file_key = _open_file_key(parsed.stanzas, key, passphrase, identity)  # 2. no match
    _verify_mac(parsed, file_key)  # 3. header failure: the MAC first,
    if verify_key is not None:
        _verify_signature(parsed, verify_key)  # then the key and the signature if a key is given
    return file_key


def read(
    data: bytes,
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    identity: Identity | None = None,
    verify_key: Ed25519PublicKey | bytes | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> tuple[list[Tensor], dict[str, str]]:
    """Read a whole file: all checks of "Reader checks, in order", then every tensor."""
    _check_credentials(key, identity, max_scrypt_log_n)
    vk = _verify_key_bytes(verify_key)
    data = bytes(data)
    parsed = _parse(data)  # 1. format failure
    file_key = _open(parsed, key, passphrase, identity, vk, max_scrypt_log_n)  # 2. and 3.
    tensors = _decrypt_all(parsed, data, file_key, vk is not None)  # 4. payload failure
    return tensors, dict(parsed.metadata)


def read_tensor(
    data: bytes,
    name: str,
    *,
    byte_range: tuple[int, int] | None = None,
    key: bytes | None = None,
    passphrase: str | None = None,
    identity: Identity | None = None,
    verify_key: Ed25519PublicKey | bytes | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> bytes:
    """Bytes [start, stop) of one tensor's plaintext (all of it by default). Only the chunks
    that cover the range are read, each verified whole (tag, and digest with a verify key)."""
    _check_credentials(key, identity, max_scrypt_log_n)
    vk = _verify_key_bytes(verify_key)
    data = bytes(data)
    parsed = _parse(data)
    file_key = _open(parsed, key, passphrase, identity, vk, max_scrypt_log_n)
    matches = [e for e in parsed.entries if e.name == name]
    if not matches:
        raise KeyError(name)
    e = matches[0]
    start, stop = (0, e.nbytes) if byte_range is None else byte_range
    if not 0 <= start <= stop <= e.nbytes:
        raise ValueError(f"byte range [{start}, {stop}) outside [0, {e.nbytes})")
    if start == stop:
        return b""
    first, last = start // parsed.chunk_size, (stop - 1) // parsed.chunk_size
    plain = _open_chunks(parsed, data, file_key, e, first, last + 1, vk is not None)
    offset = first * parsed.chunk_size
    return plain[start - offset : stop - offset]


# --- Spec: Sharded sets and rollback -------------------------------------------------------

SHARD_METADATA_KEY = "enctensor.shard"
SHARD_ENTRY_MEMBERS = frozenset({"checkpoint", "index", "count", "files"})  # all required
CHECKPOINT_LEN = 16  # bytes, written as 32 lowercase hex digits


@dataclass(frozen=True)
class ShardEntry:
    """The value of a shard's ``enctensor.shard`` metadata entry."""

    checkpoint: str
    index: int
    count: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class Shard:
    """One shard of a set as released by :func:`read_sharded`."""

    file: str
    tensors: list[Tensor]
    metadata: dict[str, str]


def is_plain_file_name(name: object) -> bool:
    """A shard is named by a plain file name next to the index: not empty, not ``.`` or
    ``..``, no ``/``, ``\\`` or NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def parse_index(raw: bytes) -> dict[str, str]:
    """The ``weight_map`` of a set's index file (tensor name -> shard file name). The index is
    not authenticated; one that is not a JSON object with a ``weight_map`` object of plain
    file names is a format failure of the index (other members, such as ``metadata``, are
    not read)."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # FormatFailure is not a ValueError
        raise FormatFailure(f"the index is not JSON: {exc}") from None
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatFailure("the index is not an object with a weight_map object")
    for tensor, file in weight_map.items():
        if not is_plain_file_name(file):
            raise FormatFailure(f"the index maps {tensor!r} to {file!r}, not a plain file name")
    return weight_map


def parse_shard_entry(file: str, metadata: dict[str, str]) -> ShardEntry:
    """The ``enctensor.shard`` entry of the (authenticated) metadata of the shard read from
    ``file``: a JSON object (strict JSON, as in the header) with ``checkpoint`` (16 bytes,
    lowercase hex), ``count`` (an integer >= 1), ``files`` (``count`` distinct plain file
    names) and ``index`` (an integer in [0, count)); other members are ignored. A missing or
    malformed entry is a set failure: the file is authentic, but not a shard of a set."""
    text = metadata.get(SHARD_METADATA_KEY)
    if text is None:
        raise SetFailure(f"{file}: no {SHARD_METADATA_KEY} metadata entry: not a shard of a set")
    try:
        obj = parse_strict_json(text.encode("utf-8"), SHARD_METADATA_KEY)
    except FormatFailure as exc:
        raise SetFailure(f"{file}: malformed {SHARD_METADATA_KEY} entry: {exc}") from None
    if not SHARD_ENTRY_MEMBERS <= obj.keys():
        raise SetFailure(f"{file}: {SHARD_METADATA_KEY} lacks one of {sorted(SHARD_ENTRY_MEMBERS)}")
    checkpoint, index, count, files = obj["checkpoint"], obj["index"], obj["count"], obj["files"]
    if not is_hex(checkpoint, CHECKPOINT_LEN):
        raise SetFailure(f"{file}: checkpoint is not {CHECKPOINT_LEN} bytes of lowercase hex")
    if not _is_int(count) or count < 1:
        raise SetFailure(f"{file}: count is not a positive integer")
    if not isinstance(files, list) or len(files) != count:
        raise SetFailure(f"{file}: files is not a list of count ({count}) names")
    if not all(is_plain_file_name(f) for f in files) or len(set(files)) != count:
        raise SetFailure(f"{file}: files holds a name twice or one that is not a plain file name")
    if not _is_int(index) or not 0 <= index < count:
        raise SetFailure(f"{file}: index is not an integer in [0, {count})")
    return ShardEntry(checkpoint, index, count, tuple(files))


def read_sharded(
    index_path: str | PathLike[str],
    *,
    key: bytes | None = None,
    passphrase: str | None = None,
    identity: Identity | None = None,
    verify_key: Ed25519PublicKey | bytes | None = None,
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> list[Shard]:
    """Read a sharded set: its index (``weight_map``) and the shards next to it, every shard
    with the same credentials, checked as one whole set; the shards in set order.

    The index is not authenticated: it only says where to start (its first shard, in
    ``weight_map`` order), and is then checked against the shards' authenticated entries.
    Shard by shard, in the order of the set's ``files``: checks 1 to 3 of "Reader checks,
    in order" (format, no match, header: a shard's failure keeps its class), then the set
    checks of FORMAT.md, "Sharded sets and rollback" (:class:`SetFailure`): the shard has
    the entry, with the same ``checkpoint``, ``count`` and ``files`` as the first shard,
    ``count`` equal to the number of files (:func:`parse_shard_entry`), and ``index`` equal
    to its position in ``files``; every file of ``files`` is there and read; the index maps
    each of its tensors to it and no other tensor to it, and no tensor to a file outside the
    set. Tensors are decrypted (check 4, payload) only once the whole set passed.
    """
    _check_credentials(key, identity, max_scrypt_log_n)
    vk = _verify_key_bytes(verify_key)
    index_path = Path(index_path)
    weight_map = parse_index(index_path.read_bytes())
    listed: dict[str, list[str]] = {}  # shard file -> tensors the index maps to it
    for tensor, file in weight_map.items():
        listed.setdefault(file, []).append(tensor)
    if not listed:
        raise SetFailure("the index maps no tensor to any shard")

    def open_shard(file: str) -> tuple[bytes, _Parsed, bytes, ShardEntry]:
        try:
            data = (index_path.parent / file).read_bytes()
        except FileNotFoundError:
            raise SetFailure(f"{file}: a shard of the set is missing") from None
        parsed = _parse(data)  # 1. format failure
        file_key = _open(parsed, key, passphrase, identity, vk, max_scrypt_log_n)  # 2. and 3.
        return data, parsed, file_key, parse_shard_entry(file, dict(parsed.metadata))

    first_file = next(iter(listed))
    first = open_shard(first_file)
    anchor = first[3]
    for file, tensors in listed.items():
        if file not in anchor.files:
            raise SetFailure(f"the index maps {tensors[0]!r} to {file}, which is not a file of the set")
    opened: list[tuple[str, bytes, _Parsed, bytes]] = []
    for i, file in enumerate(anchor.files):
        data, parsed, file_key, entry = first if file == first_file else open_shard(file)
        if (entry.checkpoint, entry.count, entry.files) != (anchor.checkpoint, anchor.count, anchor.files):
            raise SetFailure(
                f"{file}: belongs to set {entry.checkpoint} ({entry.count} files), not to set"
                f" {anchor.checkpoint} of {first_file} ({anchor.count} files)"
            )
        if entry.index != i:
            raise SetFailure(f"{file}: holds shard {entry.index} of the set but is named as shard {i}")
        held = [e.name for e in parsed.entries]
        if set(held) != set(listed.get(file, [])):
            raise SetFailure(f"{file}: the index does not map exactly the tensors this shard holds")
        opened.append((file, data, parsed, file_key))
    return [  # 4. payload failure; nothing is released unless every chunk of every shard verifies
        Shard(file, _decrypt_all(parsed, data, file_key, vk is not None), dict(parsed.metadata))
        for file, data, parsed, file_key in opened
    ]


# ============================================================================================
# Writer
# ============================================================================================


@dataclass
class Draft:
    """Everything of a file except the preamble, the stanza area, the MAC and the padding.

    ``stanzas`` and ``header`` are JSON values (mutable, serialized by :func:`finish`);
    ``tag_table``, ``digest_table`` (empty unless the header has ``chunk_digest``) and
    ``data`` (the tensor data section, relative to data_offset) are mutable too, so that the
    vector generator can inject defects before the MAC is computed.
    """

    file_key: bytes
    stanzas: list[dict[str, Any]]
    header: dict[str, Any]
    tag_table: bytearray
    digest_table: bytearray
    data: bytearray


def key_stanza(file_key: bytes, key: bytes, salt: bytes) -> dict[str, Any]:
    """Spec, Stanzas, `key`."""
    wrap_key = hkdf(key, salt, KEY_INFO)
    return {"type": "key", "salt": salt.hex(), "body": seal_file_key(wrap_key, file_key).hex()}


def scrypt_stanza(file_key: bytes, passphrase: str, salt: bytes, log_n: int) -> dict[str, Any]:
    """Spec, Stanzas, `scrypt`."""
    wrap_key = scrypt(passphrase.encode("utf-8"), SCRYPT_SALT_PREFIX + salt, log_n)
    body = seal_file_key(wrap_key, file_key)
    return {"type": "scrypt", "salt": salt.hex(), "log_n": log_n, "body": body.hex()}


def x25519_stanza(file_key: bytes, recipient: X25519PublicKey, ephemeral_secret: bytes) -> dict[str, Any]:
    """Spec, Stanzas, `x25519`: ``ephemeral_secret`` is 32 fresh random bytes."""
    e = X25519PrivateKey.from_private_bytes(ephemeral_secret)
    share = e.public_key().public_bytes_raw()
    secret = e.exchange(recipient)  # raises ValueError for a low-order recipient key
    wrap_key = hkdf(secret, share + recipient.public_bytes_raw(), X25519_INFO)
    return {"type": "x25519", "share": share.hex(), "body": seal_file_key(wrap_key, file_key).hex()}


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


def recipient_fingerprint(recipient: bytes | Recipient) -> bytes:
    """Spec, Recipient fingerprints: the first 16 bytes of HKDF(ikm = X, salt = "", info =
    "enctensor.v1 fingerprint <type>"), X being a raw 32-byte key (type key), an X25519 public
    key's 32 bytes (x25519) or an RSA public key's DER SubjectPublicKeyInfo (rsa-oaep)."""
    if isinstance(recipient, bytes):
        if len(recipient) != 32:
            raise ValueError("keys are exactly 32 bytes")
        kind, material = "key", recipient
    elif isinstance(recipient, X25519PublicKey):
        kind, material = "x25519", recipient.public_bytes_raw()
    elif isinstance(recipient, RSAPublicKey):
        kind = "rsa-oaep"
        material = recipient.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise TypeError("a fingerprint is of a raw key, an X25519PublicKey or an RSAPublicKey")
    return hkdf(material, b"", FINGERPRINT_INFO[kind])[:FINGERPRINT_LEN]


def make_stanzas(
    file_key: bytes,
    *,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    recipients: Sequence[Recipient] = (),
    log_n: int = 18,
    rng: Callable[[int], bytes],
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
    fingerprints: bool = False,
) -> list[dict[str, Any]]:
    """Stanzas for the given keys, then the recipients, in order; or one scrypt stanza.

    Randomness comes from rng: a 16-byte salt per key or scrypt stanza and a 32-byte
    ephemeral secret per X25519 recipient, in stanza order (RSA-OAEP uses oaep_encrypt).
    With ``fingerprints``, each key and recipient stanza carries its recipient's fingerprint
    (a passphrase has none: ValueError). More than 256 stanzas are refused (ValueError) before
    anything is computed."""
    if passphrase is not None:
        if keys or recipients:
            raise ValueError("an scrypt stanza must be the only stanza of its file")
        if fingerprints:
            raise ValueError("an scrypt stanza has no fingerprint")
        if not MIN_LOG_N <= log_n <= MAX_LOG_N:
            raise ValueError(f"log_n must lie in [{MIN_LOG_N}, {MAX_LOG_N}]")
        return [scrypt_stanza(file_key, passphrase, rng(SALT_LEN), log_n)]
    if not keys and not recipients:
        raise ValueError("give one or more keys or recipients, or a passphrase")
    if len(keys) + len(recipients) > MAX_STANZAS:
        raise ValueError(f"{len(keys) + len(recipients)} stanzas; a file has at most {MAX_STANZAS}")
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
    if fingerprints:
        for stanza, whose in zip(stanzas, [*keys, *recipients], strict=True):
            stanza[FINGERPRINT_MEMBER] = recipient_fingerprint(whose).hex()
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


def chunk_digest_table(header: dict[str, Any], section: bytes) -> bytes:
    """Spec, Layout: BLAKE3 of the stored bytes of every chunk, in tag table order, for the
    tensors of ``header`` stored in ``section`` (the data section, from data_offset)."""
    chunk_size = header["chunk_size"]
    table = bytearray()
    for t in header["tensors"]:
        begin, end = t["offsets"]
        nbytes = end - begin
        for j in range(max(1, -(-nbytes // chunk_size))):
            lo = begin + j * chunk_size
            table += blake3(bytes(section[lo : min(lo + chunk_size, end)]))
    return bytes(table)


def draft(
    tensors: Sequence[TensorSpec],
    *,
    metadata: dict[str, str],
    chunk_size: int = 1 << 20,
    chunk_digest: bool = False,
    keys: Sequence[bytes] = (),
    passphrase: str | None = None,
    recipients: Sequence[Recipient] = (),
    log_n: int = 18,
    rng: Callable[[int], bytes],
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> Draft:
    """Build a canonical file minus preamble, stanza area, MAC and padding. Randomness comes
    from rng: first the 32-byte file key, then what :func:`make_stanzas` draws. With
    ``chunk_digest`` the header has ``"chunk_digest": "BLAKE3"`` and the draft a digest table
    (a writer does this when, and only when, it signs)."""
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
    header: dict[str, Any] = {"cipher": CIPHER, "chunk_size": chunk_size}
    if chunk_digest:
        header["chunk_digest"] = CHUNK_DIGEST
    header["metadata"] = dict(metadata)
    header["tensors"] = entries
    digest_table = bytearray(chunk_digest_table(header, bytes(section)) if chunk_digest else b"")
    return Draft(
        file_key=file_key,
        stanzas=stanzas,
        header=header,
        tag_table=tag_table,
        digest_table=digest_table,
        data=section,
    )


def canonical_header_bytes(header: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, members in insertion order, no trailing spaces."""
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def stanza_area_json(stanzas: list[dict[str, Any]], signature: bytes | None) -> bytes:
    """The stanza area object as compact UTF-8 JSON, without the padding spaces."""
    area: dict[str, Any] = {"stanzas": stanzas}
    if signature is not None:
        area["signature"] = {"type": SIGNATURE_TYPE, "sig": signature.hex()}
    return canonical_header_bytes(area)


def _checked_area_len(content_len: int) -> int:
    area_len = canonical_stanza_area_len(content_len)
    if area_len > MAX_STANZA_AREA_LEN:
        raise ValueError(f"the stanzas need {content_len} bytes; the stanza area holds at most 1,048,544")
    return area_len


def finish(
    d: Draft,
    *,
    sign_with: Ed25519PrivateKey | None = None,
    signature: bytes | None = None,
    stanza_area_len: int | None = None,
    header_bytes: bytes | None = None,
    data_offset: int | None = None,
    magic: bytes = MAGIC,
    version: int = VERSION,
    stanza_area_len_field: int | None = None,
    header_len: int | None = None,
    reserved: int = 0,
    mac: bytes | None = None,
) -> bytes:
    """Preamble || stanza area || header || MAC || tag table || digest table || zero padding
    || data.

    By default stanza_area_len is the canonical length and data_offset = align(tables_end,
    4096). The keyword arguments after sign_with exist for the vector generator: the MAC and
    the signature are always computed over the header and tables actually written, whatever
    they contain (the preamble and stanza area are not covered); ``signature`` writes given
    signature bytes instead of signing.
    """
    header = canonical_header_bytes(d.header) if header_bytes is None else header_bytes
    signed = sign_with is not None or signature is not None
    # The signature has a fixed length, so the area's size is known before it is computed.
    content_len = len(stanza_area_json(d.stanzas, bytes(SIGNATURE_LEN) if signed else None))
    if stanza_area_len is None:
        stanza_area_len = _checked_area_len(content_len)
    elif stanza_area_len < content_len:
        raise ValueError(f"the stanzas need {content_len} bytes, more than stanza_area_len")
    tags_end = PREAMBLE_LEN + stanza_area_len + len(header) + MAC_LEN + len(d.tag_table)
    tables_end = tags_end + len(d.digest_table)
    if data_offset is None:
        data_offset = align(tables_end, PAGE_SIZE)
    preamble = (
        magic
        + u32le(version)
        + u32le(stanza_area_len if stanza_area_len_field is None else stanza_area_len_field)
        + u32le(len(header) if header_len is None else header_len)
        + u32le(reserved)
        + u64le(data_offset)
    )
    tags, digests = bytes(d.tag_table), bytes(d.digest_table)
    if mac is None:
        mac = header_mac(d.file_key, header, tags, digests)
    if sign_with is not None:
        signature = sign_with.sign(signature_message(header, mac, tags, digests))
    area = stanza_area_json(d.stanzas, signature).ljust(stanza_area_len, b" ")
    padding = bytes(max(0, data_offset - tables_end))
    return preamble + area + header + mac + tags + digests + padding + bytes(d.data)


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
    oaep_encrypt: OaepEncrypt = oaep_encrypt_randomized,
) -> bytes:
    """Write a canonical file; a signed one (sign_with) has chunk_digest and a digest table.
    Refuses (ValueError, nothing returned) more than 256 stanzas or a stanza area over the
    maximum."""
    d = draft(
        tensors,
        metadata=metadata,
        chunk_size=chunk_size,
        chunk_digest=sign_with is not None,
        keys=keys,
        passphrase=passphrase,
        recipients=recipients,
        log_n=log_n,
        rng=rng,
        oaep_encrypt=oaep_encrypt,
    )
    return finish(d, sign_with=sign_with)


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
    max_scrypt_log_n: int = DEFAULT_MAX_SCRYPT_LOG_N,
) -> bytes:
    """Replace the stanza area: new stanzas wrapping the same file key, the signature member
    kept as it is. When the canonical stanza_area_len does not change (the new stanzas fit
    in the first page, or in as many pages as before), only the stanza area changes; else the
    file is rewritten with the canonical stanza_area_len and data_offset, every byte of the
    header, MAC, tag table, digest table and data copied unchanged.

    The file key is opened with key / passphrase / identity and the header MAC verified
    first. A new stanza list that a reader would reject (more than 256 stanzas, an area over
    the maximum) is refused with ValueError.
    """
    _check_credentials(key, identity, max_scrypt_log_n)
    data = bytes(data)
    parsed = _parse(data)
    file_key = _open(parsed, key, passphrase, identity, None, max_scrypt_log_n)
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
    area_len = _checked_area_len(len(area))
    area = area.ljust(area_len, b" ")
    old_header_start = PREAMBLE_LEN + parsed.stanza_area_len
    if area_len == parsed.stanza_area_len:
        return data[:PREAMBLE_LEN] + area + data[old_header_start:]
    # Rewrite: the tables keep their bytes, the data section moves to the canonical offset.
    tables = data[old_header_start : old_header_start + parsed.header_len + MAC_LEN] + (
        parsed.tag_table + parsed.digest_table
    )
    tables_end = PREAMBLE_LEN + area_len + len(tables)
    data_offset = align(tables_end, PAGE_SIZE)
    preamble = data[:12] + u32le(area_len) + data[16:24] + u64le(data_offset)
    return preamble + area + tables + bytes(data_offset - tables_end) + data[parsed.data_offset :]
