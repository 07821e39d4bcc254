"""Bech32 (BIP 173), as age encodes its X25519 keys (``age1…`` recipients,
``AGE-SECRET-KEY-1…`` identities; C2SP age, "Conventions").

Strict: the checksum is verified, a mixed-case string is refused, the string is at most 90
characters (BIP 173's limit: age lifts it for its post-quantum keys, which enctensor does
not read; an X25519 key is 62 or 74 characters), and the padding bits must be zero. The
text may be a secret key, so no error message ever contains it.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
#: BIP 173's limit on the whole string.
MAX_LENGTH = 90
_CHECKSUM_LENGTH = 6
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_VALUES = {c: i for i, c in enumerate(CHARSET)}


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i, g in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise ValueError("not valid Bech32: bad padding in the data part")
    return out


def decode(text: str) -> tuple[str, bytes]:
    """``(human-readable part, data)`` of a Bech32 string; the part keeps the string's case.
    :class:`ValueError` (not showing the string) if it is not valid Bech32."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"not valid Bech32: longer than {MAX_LENGTH} characters")
    if not text.isascii():
        raise ValueError("not valid Bech32: it holds a character that is not ASCII")
    if text.lower() != text and text.upper() != text:
        raise ValueError("not valid Bech32: it mixes upper and lower case")
    pos = text.rfind("1")
    if pos < 1 or pos + 1 + _CHECKSUM_LENGTH > len(text):
        raise ValueError("not valid Bech32: no separator '1' followed by a data part")
    hrp = text[:pos]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError("not valid Bech32: a control character or space in the prefix")
    data: list[int] = []
    for c in text[pos + 1 :].lower():
        v = _VALUES.get(c)
        if v is None:
            raise ValueError("not valid Bech32: a character outside its alphabet in the data part")
        data.append(v)
    if _polymod(_hrp_expand(hrp.lower()) + data) != 1:
        raise ValueError("not valid Bech32: wrong checksum (a character was mistyped or lost)")
    return hrp, bytes(_convert_bits(data[:-_CHECKSUM_LENGTH], 5, 8, pad=False))


def encode(hrp: str, data: bytes) -> str:
    """The Bech32 string of ``data`` under ``hrp``: upper case if ``hrp`` is, else lower case."""
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp) or hrp not in (hrp.lower(), hrp.upper()):
        raise ValueError("a Bech32 prefix is 1 or more printable ASCII characters of one case")
    lower = hrp.lower()
    values = _convert_bits(list(data), 8, 5, pad=True)
    mod = _polymod(_hrp_expand(lower) + values + [0] * _CHECKSUM_LENGTH) ^ 1
    checksum = [(mod >> (5 * (_CHECKSUM_LENGTH - 1 - i))) & 31 for i in range(_CHECKSUM_LENGTH)]
    text = lower + "1" + "".join(CHARSET[v] for v in values + checksum)
    if len(text) > MAX_LENGTH:
        raise ValueError(f"too long for Bech32 ({len(text)} characters, at most {MAX_LENGTH})")
    return text.upper() if hrp == hrp.upper() and hrp != lower else text
