"""Keys, passphrases, recipients and identities given by callers: checked, and turned into the
keyword arguments of the Rust core. Key bytes never appear in an error message."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

KEY_SIZE = 32
X25519_TEXT_PREFIX = "x25519:"


def generate_key() -> bytes:
    """A new random 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def check_key(key: object) -> bytes:
    """Returns a raw key as bytes, or raises naming the problem (never the key itself)."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"a key must be bytes, not {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ValueError(
            f"a key must be exactly {KEY_SIZE} bytes, got {len(raw)} (use enctensor.generate_key())"
        )
    return raw


def check_keys(key: object) -> list[bytes]:
    """One raw key or an iterable of raw keys, for writing."""
    if key is None:
        return []
    if isinstance(key, bytes | bytearray | memoryview):
        return [check_key(key)]
    if isinstance(key, Iterable) and not isinstance(key, str):
        return [check_key(k) for k in key]
    raise TypeError(f"a key must be bytes, not {type(key).__name__}")


def check_passphrase(passphrase: object) -> str | None:
    if passphrase is None:
        return None
    if isinstance(passphrase, bytes):
        passphrase = passphrase.decode("utf-8")
    if not isinstance(passphrase, str):
        raise TypeError(f"a passphrase must be str, not {type(passphrase).__name__}")
    if not passphrase:
        raise ValueError("the passphrase is empty")
    return passphrase


# ---- public keys (recipients) -----------------------------------------------------------------


def x25519_public_text(key: x25519.X25519PublicKey) -> str:
    """The one-line text form of an X25519 recipient: ``x25519:`` and 64 lowercase hex digits."""
    return X25519_TEXT_PREFIX + key.public_bytes_raw().hex()


def load_public_key(source: str | os.PathLike[str] | bytes) -> x25519.X25519PublicKey | rsa.RSAPublicKey:
    """A recipient from its one-line X25519 text form, PEM bytes, or a file holding either."""
    if isinstance(source, str) and source.startswith(X25519_TEXT_PREFIX):
        text = source
    elif isinstance(source, bytes):
        text = source.decode("ascii", "replace")
    else:
        with open(source, "rb") as f:
            data = f.read(1 << 20)
        text = data.decode("ascii", "replace")
    text = text.strip()
    if text.startswith(X25519_TEXT_PREFIX):
        digits = text[len(X25519_TEXT_PREFIX) :]
        if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError("an X25519 recipient is 'x25519:' and 64 lowercase hex digits")
        return x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(digits))
    key = serialization.load_pem_public_key(text.encode("ascii"))
    if not isinstance(key, x25519.X25519PublicKey | rsa.RSAPublicKey):
        raise TypeError(f"recipients must be X25519 or RSA public keys, not {type(key).__name__}")
    return key


def recipient_kwargs(recipients: Iterable[object]) -> dict[str, list[bytes]]:
    """``x25519`` (raw public keys) and ``rsa_spki`` (DER) for the core's write functions."""
    out: dict[str, list[bytes]] = {"x25519": [], "rsa_spki": []}
    if isinstance(recipients, str | bytes | os.PathLike) or not isinstance(recipients, Iterable):
        recipients = [recipients]
    for r in recipients:
        if isinstance(r, str | bytes | os.PathLike):
            r = load_public_key(r)
        if isinstance(r, x25519.X25519PublicKey):
            out["x25519"].append(r.public_bytes_raw())
        elif isinstance(r, rsa.RSAPublicKey):
            if not 2048 <= r.key_size <= 4096:
                raise ValueError(f"RSA recipients must be 2048 to 4096 bits, got {r.key_size}")
            out["rsa_spki"].append(
                r.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
        else:
            raise TypeError(
                f"a recipient must be an X25519 or RSA public key (or a file/text of one), not {type(r).__name__}"
            )
    return out


def sign_seed(sign_with: object) -> bytes | None:
    if sign_with is None:
        return None
    if not isinstance(sign_with, ed25519.Ed25519PrivateKey):
        raise TypeError(f"sign_with must be an Ed25519PrivateKey, not {type(sign_with).__name__}")
    return sign_with.private_bytes_raw()


def verify_bytes(verify_with: object) -> bytes | None:
    if verify_with is None:
        return None
    if not isinstance(verify_with, ed25519.Ed25519PublicKey):
        raise TypeError(f"verify_with must be an Ed25519PublicKey, not {type(verify_with).__name__}")
    return verify_with.public_bytes_raw()


# ---- private keys (identities) ----------------------------------------------------------------


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> Any:
    """A private key from a PEM file (PKCS#8; X25519 or RSA)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    return serialization.load_pem_private_key(data, password=password)


class FileKey:
    """A file key that a key provider unwrapped itself (for example by asking a KMS or HSM to
    decrypt an ``rsa-oaep`` stanza's body). Its repr never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = check_key(key)

    def __repr__(self) -> str:
        return "FileKey(<redacted>)"


# A key provider: gets the file's stanza descriptions, returns a key (anything `key=` takes).
KeyProvider = Callable[[list[dict[str, Any]]], Any]


def opener(
    key: object, passphrase: object, stanzas: Callable[[], list[dict[str, Any]]] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``_core.Reader``: exactly one way of opening the file.

    ``key`` may be 32 raw bytes, an ``X25519PrivateKey`` or ``RSAPrivateKey``, a path to a PEM
    private key file, or a callable that receives the file's stanza descriptions (type and
    public fields, from ``stanzas()``) and returns one of those.
    """
    p = check_passphrase(passphrase)
    if key is not None and p is not None:
        raise ValueError("give either a key or a passphrase, not both")
    if key is None and p is None:
        raise ValueError("give a key or a passphrase to open this file")
    if p is not None:
        return {"passphrase": p}
    if callable(key) and not isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey):
        if stanzas is None:
            raise TypeError("a key provider cannot be used here")
        key = key(stanzas())
        if key is None:
            raise ValueError("the key provider returned no key")
    if isinstance(key, FileKey):
        return {"file_key": key._key}
    if isinstance(key, str | os.PathLike):
        key = load_private_key(key)
    if isinstance(key, x25519.X25519PrivateKey):
        return {"x25519": key.private_bytes_raw()}
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"rsa_pkcs8": der}
    return {"key": check_key(key)}
