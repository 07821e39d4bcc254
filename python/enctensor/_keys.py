"""Checking keys and passphrases given by callers, and making new keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

KEY_SIZE = 32
Key = bytes | bytearray | memoryview


def generate_key() -> bytes:
    """A new random 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def check_key(key: object) -> bytes:
    """Returns ``key`` as bytes, or raises naming the problem (never the key itself)."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"a key must be bytes, not {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ValueError(
            f"a key must be exactly {KEY_SIZE} bytes, got {len(raw)} (use enctensor.generate_key())"
        )
    return raw


def check_keys(key: object) -> list[bytes]:
    """One key or an iterable of keys, for writing."""
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


def opener(key: object, passphrase: object) -> dict[str, object]:
    """Keyword arguments for ``_core.Reader``: exactly one of key and passphrase."""
    p = check_passphrase(passphrase)
    if key is not None and p is not None:
        raise ValueError("give either a key or a passphrase, not both")
    if key is None and p is None:
        raise ValueError("give a key or a passphrase to open this file")
    return {"key": check_key(key)} if key is not None else {"passphrase": p}
