"""Keys, passphrases, recipients, identities and verification keys given by callers: checked,
and turned into the keyword arguments of the Rust core.

No secret ever reaches an exception, its message, ``args``, ``filename`` or ``object``, or a
chained exception:

- raw keys are bytes-like (``bytes``, ``bytearray``, ``memoryview``); a key file is named by an
  ``os.PathLike`` (``pathlib.Path``) or read with :func:`read_key_file`. A ``str`` where a key is
  expected is a ``TypeError`` that does not show it: a key (or a passphrase) given as text must
  not end up as the ``filename`` of a ``FileNotFoundError``;
- a passphrase is ``str`` or bytes-like UTF-8; one that is not valid UTF-8 is a ``ValueError``
  that does not show it (no ``UnicodeDecodeError`` with the bytes in ``.object``);
- errors raised while decoding, opening or parsing secret material are raised outside the
  ``except`` block that caught them (so they have no ``__context__``), ``from None``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from . import _bech32

KEY_SIZE = 32
X25519_TEXT_PREFIX = "x25519:"
ED25519_TEXT_PREFIX = "ed25519:"
#: The Bech32 prefixes of age's X25519 keys (C2SP age, "The X25519 recipient type").
AGE_RECIPIENT_HRP = "age"
AGE_IDENTITY_HRP = "AGE-SECRET-KEY-"
#: Key files are small; anything larger is not one (and is not read whole).
MAX_KEY_FILE = 1 << 20

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_LOWER_HEX_64 = re.compile(r"[0-9a-f]{64}")

_READ_KEY_FILE_HINT = "to read a key file named by a string use enctensor.read_key_file(...)"


def generate_key() -> bytes:
    """A new random 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


class FileKey:
    """A file key that a key provider unwrapped itself (for example by asking a KMS or HSM to
    decrypt an ``rsa-oaep`` stanza's body). Its repr never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | bytearray | memoryview) -> None:
        self._key = check_key(key, "FileKey()")

    def __repr__(self) -> str:
        return "FileKey(<redacted>)"


# ---- types ------------------------------------------------------------------------------------

BytesLike: TypeAlias = bytes | bytearray | memoryview
#: A private key that opens files: X25519 or RSA.
Identity: TypeAlias = x25519.X25519PrivateKey | rsa.RSAPrivateKey
#: What ``key=`` takes when opening a file: 32 raw bytes, an identity, a :class:`FileKey`, or the
#: path of a key file (``keygen``'s 64 hex digits or 32 raw bytes, or a PEM private key).
Key: TypeAlias = BytesLike | Identity | FileKey | os.PathLike[str]
#: A key provider: gets the file's stanza descriptions (type and public fields), returns a key.
KeyProvider: TypeAlias = Callable[[list[dict[str, Any]]], Key]
#: ``key=`` of the openers: a key or a key provider.
KeyArg: TypeAlias = Key | KeyProvider
#: What ``key=`` takes when writing (each of several keys): 32 raw bytes or a key file's path.
WriteKey: TypeAlias = BytesLike | os.PathLike[str]
Passphrase: TypeAlias = str | bytes
#: A recipient: an X25519 or RSA public key object, its text (``x25519:<hex>`` or PEM; public
#: keys are not secret, so a ``str`` is fine here), PEM bytes, or the path of a file holding one.
Recipient: TypeAlias = x25519.X25519PublicKey | rsa.RSAPublicKey | str | BytesLike | os.PathLike[str]
#: A signature verification key: an Ed25519 public key, its 32 raw bytes, the ``ed25519:<hex>``
#: text that ``enctensor keygen --ed25519`` prints, or the path of a file holding that or a PEM
#: public key.
VerifyKey: TypeAlias = ed25519.Ed25519PublicKey | BytesLike | str | os.PathLike[str]
#: A publisher signing key: an Ed25519 private key, or the path of its PEM file.
SigningKey: TypeAlias = ed25519.Ed25519PrivateKey | os.PathLike[str]
#: What :func:`read_key_file` returns.
KeyFileContent: TypeAlias = (
    bytes
    | x25519.X25519PrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | x25519.X25519PublicKey
    | rsa.RSAPublicKey
    | ed25519.Ed25519PublicKey
)


def _label(what: str) -> str:
    """``key=`` for a keyword argument, ``FileKey()`` as it is."""
    return what if what.endswith(")") else what + "="


def _str_key_error(what: str, takes: str) -> TypeError:
    return TypeError(
        f"{_label(what)} takes {takes}, got a str (its value is not shown: it may be a key or a passphrase);"
        f" {_READ_KEY_FILE_HINT}"
    )


def _type_name(value: object) -> str:
    return type(value).__name__.removeprefix("_")


def _kind(key: object) -> str:
    if isinstance(key, x25519.X25519PrivateKey):
        return "an X25519 private key"
    if isinstance(key, x25519.X25519PublicKey):
        return "an X25519 public key"
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA private key"
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA public key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 signing key"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "an Ed25519 verification key"
    if isinstance(key, bytes):
        return "a raw 32-byte key"
    return f"a {_type_name(key)}"


# ---- raw keys and passphrases -----------------------------------------------------------------


def check_key(key: object, what: str = "key") -> bytes:
    """Returns a raw key as bytes, or raises naming the problem (never the key itself)."""
    if isinstance(key, str):
        raise _str_key_error(what, "32 raw bytes (bytes, bytearray or memoryview)")
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"{_label(what)} must be 32 raw bytes, not {_type_name(key)}")
    raw = bytes(key)
    if len(raw) != KEY_SIZE:
        raise ValueError(
            f"a key must be exactly {KEY_SIZE} bytes, got {len(raw)} (use enctensor.generate_key();"
            " a passphrase goes to passphrase=)"
        )
    return raw


def _write_key(key: object, what: str) -> bytes:
    if isinstance(key, str):
        raise _str_key_error(
            what,
            "32 raw bytes (bytes-like) or a path-like object (pathlib.Path) to a key file, or a list of those",
        )
    if isinstance(key, os.PathLike):
        content = read_key_file(key)
        if not isinstance(content, bytes):
            hint = (
                "; to encrypt to a public key give it in recipients="
                if isinstance(content, x25519.X25519PrivateKey | rsa.RSAPrivateKey | x25519.X25519PublicKey)
                else ""
            )
            raise TypeError(f"{_label(what)}: the file holds {_kind(content)}, not a 32-byte key{hint}")
        return content
    if isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey | FileKey):
        raise TypeError(
            f"{_label(what)} takes 32-byte keys when encrypting, not {_kind(key)}; to encrypt to an X25519 or"
            " RSA key give its public key in recipients="
        )
    return check_key(key, what)


def check_keys(key: object, what: str = "key") -> list[bytes]:
    """One raw key (or key file path) or an iterable of them, for writing."""
    if key is None:
        return []
    if isinstance(key, str | bytes | bytearray | memoryview | os.PathLike):
        return [_write_key(key, what)]
    if isinstance(key, Iterable):
        return [_write_key(k, what) for k in key]
    return [_write_key(key, what)]


def check_passphrase(passphrase: object, what: str = "passphrase") -> str | None:
    """A passphrase as ``str`` (``None`` stays ``None``); bytes must be UTF-8. Errors never
    carry the passphrase (no ``UnicodeDecodeError`` or ``UnicodeEncodeError`` with it)."""
    if passphrase is None:
        return None
    text: str | None
    if isinstance(passphrase, bytes | bytearray | memoryview):
        try:
            text = bytes(passphrase).decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:  # raised here, not in the except block: no __context__ holding it
            raise ValueError(f"{_label(what)} bytes must be valid UTF-8 (the value is not shown)") from None
    elif isinstance(passphrase, str):
        text = passphrase
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = None
        if text is None:
            raise ValueError(
                f"{_label(what)} must be text that can be encoded as UTF-8 (it holds a lone surrogate;"
                " the value is not shown)"
            ) from None
    else:
        raise TypeError(f"{_label(what)} must be a str or UTF-8 bytes, not {_type_name(passphrase)}")
    if not text:
        raise ValueError(f"the {what} is empty")
    return text


# ---- key files -------------------------------------------------------------------------------


def _looks_like_key_material(text: str, named_as_path: bool = False) -> bool:
    """Whether a string given as a path might rather be a key or a passphrase, so that it is
    not shown in an error. A ``str`` is shown only if it plainly is a file name (it has a
    directory separator or an extension); an ``os.PathLike`` unless it looks like a key."""
    t = text.strip()
    if not t or len(t) > 4096:
        return True
    if re.fullmatch(r"[0-9a-fA-F]{32,}", t) or re.fullmatch(r"[A-Za-z0-9+/=_-]{40,}", t):
        return True
    if t.upper().startswith("AGE-SECRET-KEY-") or "PRIVATE KEY" in t:
        return True
    if named_as_path:
        return False
    return not (os.sep in t or "/" in t or re.fullmatch(r"[^\s]+\.[A-Za-z0-9]{1,10}", t))


def _shown_path(path: str | os.PathLike[str]) -> str | None:
    shown = os.fspath(path)
    if isinstance(shown, bytes):
        shown = os.fsdecode(shown)
    return None if _looks_like_key_material(shown, isinstance(path, os.PathLike)) else shown


def _read_small(path: str | os.PathLike[str]) -> bytes:
    """A key file's bytes (at most ``MAX_KEY_FILE``). An error that cannot be opened names the
    path only if it plainly is one (see :func:`_looks_like_key_material`)."""
    failure: OSError | None = None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        failure = e
    if failure is not None:
        shown = _shown_path(path)
        reason = failure.strerror or type(failure).__name__
        what = f"cannot read the key file: {reason}" + ("" if shown else " (the path given is not shown)")
        code = failure.errno or errno.EIO
        # OSError(errno, ...) is the matching subclass (FileNotFoundError, PermissionError, ...).
        raise (OSError(code, what) if shown is None else OSError(code, what, shown)) from None
    if len(data) > MAX_KEY_FILE:
        raise ValueError("too large to be a key file")
    return data


def _raw_key(data: bytes) -> bytes | None:
    """The key in a key file's bytes: 32 raw bytes, or 64 hex characters (``keygen``'s
    format; blank lines and ``#`` comment lines are ignored)."""
    if len(data) == KEY_SIZE:
        return data
    lines = _text_lines(data)
    if lines is not None and len(lines) == 1 and _HEX_KEY.fullmatch(lines[0]):
        return bytes.fromhex(lines[0])
    return None


def _text_lines(data: bytes) -> list[str] | None:
    """Non-blank, non-comment lines of an ASCII file, stripped; None if it is not ASCII."""
    text: str | None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is None:
        return None
    return [ln for ln in (ln.strip() for ln in text.splitlines()) if ln and not ln.startswith("#")]


def _one_line_public(line: str) -> x25519.X25519PublicKey | ed25519.Ed25519PublicKey | None:
    """An ``x25519:<hex>`` or ``ed25519:<hex>`` line, or None if it has neither prefix."""
    for prefix, cls in (
        (X25519_TEXT_PREFIX, x25519.X25519PublicKey),
        (ED25519_TEXT_PREFIX, ed25519.Ed25519PublicKey),
    ):
        if line.startswith(prefix):
            digits = line[len(prefix) :]
            if not _LOWER_HEX_64.fullmatch(digits):
                raise ValueError(
                    f"the one-line form of a public key is {prefix!r} and 64 lowercase hex digits"
                )
            return cls.from_public_bytes(bytes.fromhex(digits))
    return None


# ---- age's X25519 keys, and OpenSSH keys (refused) --------------------------------------------

#: What enctensor reads, named in the messages that refuse something else.
ACCEPTED_PUBLIC = (
    "an X25519 recipient (x25519:<hex>, or age's age1…), an RSA or X25519 PEM public key, or for"
    " signatures ed25519:<hex> or an Ed25519 PEM public key"
)
ACCEPTED_PRIVATE = (
    "a PEM private key (X25519, RSA or Ed25519; PKCS#8 or traditional; password-protected or not), an"
    " age X25519 identity (AGE-SECRET-KEY-1…), or a 32-byte key file (`enctensor keygen`)"
)
_OPENSSH_PUBLIC = re.compile(
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s"
)
_AGE_ONLY_X25519 = (
    "enctensor reads only age's X25519 keys (age1… recipients of 62 characters, AGE-SECRET-KEY-1… identities)"
)


def openssh_refusal(data: str | bytes) -> str | None:
    """Why ``data`` is refused if it is an OpenSSH key (public or private), else None."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        return f"an OpenSSH private key, which enctensor does not read: give {ACCEPTED_PRIVATE}"
    if _OPENSSH_PUBLIC.match(text.lstrip()) or "---- BEGIN SSH2 PUBLIC KEY ----" in text:
        return f"an OpenSSH public key, which enctensor does not read: give {ACCEPTED_PUBLIC}"
    return None


def _refuse_openssh(data: str | bytes, what: str = "") -> None:
    refusal = openssh_refusal(data)
    if refusal is not None:
        raise ValueError(f"{_label(what)} got {refusal}" if what else f"the file holds {refusal}")


def age_recipient_text(key: x25519.X25519PublicKey) -> str:
    """age's text form of an X25519 recipient: ``age1…`` (Bech32 of the 32-byte public key).
    Any age X25519 recipient is an enctensor recipient; the files are not age files."""
    return _bech32.encode(AGE_RECIPIENT_HRP, key.public_bytes_raw())


def age_key(line: str) -> x25519.X25519PrivateKey | x25519.X25519PublicKey | None:
    """The key of one line holding an age X25519 recipient (``age1…``) or identity
    (``AGE-SECRET-KEY-1…``); None if the line is not an age key at all. An age key that
    enctensor does not read (post-quantum, plugin) or that is malformed (checksum, case,
    length) is a :class:`ValueError` that does not show it."""
    t = line.strip()
    pos = t.rfind("1")  # Bech32's data alphabet has no "1": this is the separator
    hrp = t[:pos].lower() if pos > 0 else ""
    if hrp == AGE_RECIPIENT_HRP:
        kind, wanted = "recipient", AGE_RECIPIENT_HRP
    elif hrp == AGE_IDENTITY_HRP.lower():
        kind, wanted = "identity", AGE_IDENTITY_HRP
    elif hrp.startswith(("age1pq", "age-secret-key-pq-")):
        raise ValueError(f"an age post-quantum key (age1pq1… or AGE-SECRET-KEY-PQ-1…): {_AGE_ONLY_X25519}")
    elif hrp.startswith(("age1", "age-plugin-")):
        raise ValueError(f"an age plugin key (age1<plugin>1… or AGE-PLUGIN-…): {_AGE_ONLY_X25519}")
    else:
        return None
    problem: str | None = None
    try:
        got_hrp, data = _bech32.decode(t)
    except ValueError as e:
        problem, got_hrp, data = str(e), "", b""
    if problem is None and got_hrp != wanted:
        # As age itself: recipients are lower case, identities upper case.
        problem = (
            "age writes recipients in lower case (age1…) and identities in upper case (AGE-SECRET-KEY-1…)"
        )
    elif problem is None and len(data) != KEY_SIZE:
        problem = f"it encodes {len(data)} bytes, not a 32-byte X25519 key"
    if problem is not None:  # raised outside the except block: no chained exception
        raise ValueError(f"not a valid age {kind} (the value is not shown): {problem}") from None
    if kind == "identity":
        return x25519.X25519PrivateKey.from_private_bytes(data)
    return x25519.X25519PublicKey.from_public_bytes(data)


def read_age_key(data: bytes) -> x25519.X25519PrivateKey | x25519.X25519PublicKey | None:
    """The age key of a key file (blank lines and ``#`` comments ignored, as ``age-keygen``
    writes them); None if it holds no age key. One key per file."""
    lines = _text_lines(data)
    if not lines:
        return None
    keys = [age_key(ln) for ln in lines]
    found = [k for k in keys if k is not None]
    if not found:
        return None
    if len(found) != len(lines):
        raise ValueError("the file mixes age keys with other lines (not shown)")
    if len(found) > 1:
        raise ValueError(
            f"the file holds {len(found)} age keys; enctensor reads one key per file: put each in its own"
            " file and give each"
        )
    return found[0]


def pem_is_protected(data: bytes) -> bool:
    """Whether a PEM private key is encrypted with a password (PKCS#8 ``ENCRYPTED PRIVATE KEY``,
    or the traditional OpenSSL ``Proc-Type: 4,ENCRYPTED``)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _pem_private(data: bytes, password: bytes | None) -> Any:
    problem: str | None = None
    key: Any = None
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        problem = (
            "the private key is password-protected: give its password (read_key_file(path, password=...))"
            if password is None
            else "the private key is not password-protected: give no password="
        )
    except (ValueError, UnsupportedAlgorithm):
        problem = (
            "not a valid PEM private key (or of a kind enctensor does not know)"
            if password is None
            else "cannot decrypt the private key: wrong password, or not a valid PEM private key"
        )
    if problem is not None:
        raise ValueError(problem) from None
    return key


def _pem_public(data: bytes) -> Any:
    key: Any = None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if key is None:
        raise ValueError("not a valid PEM public key (or of a kind enctensor does not know)") from None
    return key


def _parse_key_material(data: bytes, password: bytes | None) -> KeyFileContent:
    raw = _raw_key(data)
    if raw is not None:
        return raw
    _refuse_openssh(data)
    if b"PRIVATE KEY-----" in data:
        key = _pem_private(data, password)
    elif b"PUBLIC KEY-----" in data:
        key = _pem_public(data)
    else:
        age = read_age_key(data)
        if age is not None:
            return age
        lines = _text_lines(data)
        one = _one_line_public(lines[0]) if lines is not None and len(lines) == 1 else None
        if one is None:
            raise ValueError(
                "not a key file: expected 32 raw bytes or 64 hex characters (`enctensor keygen`), a PEM"
                " private or public key, an age X25519 identity (AGE-SECRET-KEY-1…) or recipient (age1…),"
                " or a one-line x25519:<hex> / ed25519:<hex> public key"
            )
        return one
    if not isinstance(
        key,
        x25519.X25519PrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | x25519.X25519PublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey,
    ):
        raise TypeError(f"the file holds {_kind(key)}; enctensor uses X25519, RSA and Ed25519 keys")
    return key


def read_key_file(path: str | os.PathLike[str], *, password: bytes | str | None = None) -> KeyFileContent:
    """Reads a key file named by ``path`` (a ``str`` or ``os.PathLike``: its argument is by
    definition a path) and returns what it holds:

    - ``bytes``: a 32-byte key, from a file of 64 hex digits (``enctensor keygen FILE``) or of
      32 raw bytes;
    - an ``X25519PrivateKey``, ``RSAPrivateKey`` or ``Ed25519PrivateKey`` from a PEM private key
      file (``keygen --x25519/--rsa/--ed25519``; PKCS#8 or traditional); ``password`` decrypts
      a protected one (``ENCRYPTED PRIVATE KEY``, or traditional ``Proc-Type: 4,ENCRYPTED``);
    - an ``X25519PrivateKey`` from an age identity file (``AGE-SECRET-KEY-1…``, as
      ``age-keygen`` writes it, ``#`` comment lines and all);
    - an ``X25519PublicKey``, ``RSAPublicKey`` or ``Ed25519PublicKey`` from a PEM public key file,
      the one-line ``x25519:<hex>`` / ``ed25519:<hex>`` text that ``keygen`` prints, or an age
      recipient (``age1…``).

    age's X25519 keys are the same keys as enctensor's (the same curve and encoding of the
    32 bytes), so they work here; an enctensor file is not an age file, and age cannot open it
    (nor enctensor an age file). OpenSSH keys are refused, with what is accepted instead.

    The result goes to ``key=`` (raw keys, X25519 and RSA identities), ``recipients=`` (X25519
    and RSA public keys), ``sign_with=`` and ``verify_with=``. ``key=`` and the others also take
    a ``pathlib.Path`` to such a file directly. Errors never show the key material, and show
    the path only when it plainly is one.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"read_key_file() takes a path (str or os.PathLike), not {_type_name(path)}")
    pw = check_passphrase(password, "password")
    return _parse_key_material(_read_small(path), None if pw is None else pw.encode("utf-8"))


def load_private_key(path: str | os.PathLike[str], password: bytes | str | None = None) -> Identity:
    """An X25519 or RSA private key (an identity, for ``key=``) from a PEM file."""
    key = read_key_file(path, password=password)
    if not isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"the file holds {_kind(key)}, not an X25519 or RSA private key")
    return key


# ---- public keys (recipients) -----------------------------------------------------------------


def x25519_public_text(key: x25519.X25519PublicKey) -> str:
    """The one-line text form of an X25519 recipient: ``x25519:`` and 64 lowercase hex digits."""
    return X25519_TEXT_PREFIX + key.public_bytes_raw().hex()


def ed25519_public_text(key: ed25519.Ed25519PublicKey) -> str:
    """The one-line text form of a signature verification key: ``ed25519:`` and 64 hex digits."""
    return ED25519_TEXT_PREFIX + key.public_bytes_raw().hex()


def _one_line_public_or_age(line: str, what: str) -> Any:
    """``x25519:<hex>``, ``ed25519:<hex>`` or an age recipient; None for other text. An age
    identity (a secret key) is refused without being shown."""
    one = _one_line_public(line)
    if one is not None:
        return one
    age = age_key(line)
    if isinstance(age, x25519.X25519PrivateKey):
        raise TypeError(
            (f"{_label(what)} got" if what else "got")
            + " an age identity, a secret key (the value is not shown), where a public key was expected;"
            " give its recipient (age1…, as `age-keygen -y` prints it)"
        )
    return age


def _public_from_text(text: str, what: str) -> Any:
    """A public key from its one-line or PEM text; TypeError (not showing it) for other text."""
    t = text.strip()
    _refuse_openssh(t, what)
    if "\n" not in t:
        one = _one_line_public_or_age(t, what)
        if one is not None:
            return one
    if "-----BEGIN" in t and "PUBLIC KEY-----" in t:
        return _pem_public(t.encode("ascii", "replace"))
    if "PRIVATE KEY-----" in t:
        raise ValueError(
            f"{_label(what)} got a PEM private key; give the public key (the value is not shown)"
        )
    raise TypeError(
        f"{_label(what)} takes a str only as the one-line x25519:<hex> / ed25519:<hex> / age1… text or a PEM"
        " public key; got another str (not shown: it may be a key). Give a path as a path-like object"
        f" (pathlib.Path); {_READ_KEY_FILE_HINT}"
    )


def _public_from_bytes(data: BytesLike) -> Any:
    raw = bytes(data)
    if b"PRIVATE KEY-----" in raw:
        raise ValueError("got a PEM private key where a public key was expected (the value is not shown)")
    _refuse_openssh(raw)
    if b"PUBLIC KEY-----" in raw:
        return _pem_public(raw)
    lines = _text_lines(raw)
    one = _one_line_public_or_age(lines[0], "") if lines is not None and len(lines) == 1 else None
    if one is None:
        raise ValueError(
            "not a PEM public key or a one-line x25519:<hex> / ed25519:<hex> / age1… key (not shown)"
        )
    return one


def load_public_key(
    source: str | os.PathLike[str] | bytes,
) -> x25519.X25519PublicKey | rsa.RSAPublicKey:
    """A recipient from its one-line ``x25519:<hex>`` or ``age1…`` text or PEM text or bytes,
    or from a file holding one (named by an ``os.PathLike``, or by a ``str`` that is not key
    text)."""
    if isinstance(source, str) and not _is_key_text(source):
        key: Any = read_key_file(source)
    elif isinstance(source, os.PathLike):
        key = read_key_file(source)
    elif isinstance(source, str):
        key = _public_from_text(source, "source")
    elif isinstance(source, bytes | bytearray | memoryview):
        key = _public_from_bytes(source)
    else:
        raise TypeError(f"load_public_key() takes text, bytes or a path, not {_type_name(source)}")
    if not isinstance(key, x25519.X25519PublicKey | rsa.RSAPublicKey):
        raise TypeError(f"a recipient is an X25519 or RSA public key, not {_kind(key)}")
    return key


def _is_key_text(text: str) -> bool:
    """Whether a ``str`` is key text rather than a path (by its start)."""
    t = text.strip()
    return (
        t.startswith((X25519_TEXT_PREFIX, ED25519_TEXT_PREFIX, "-----", "---- "))
        or age_key_prefix(t)
        or openssh_refusal(t) is not None
    )


def age_key_prefix(text: str) -> bool:
    """Whether ``text`` starts as an age key does (``age1``, ``AGE-SECRET-KEY-``, ``AGE-PLUGIN-``)."""
    return text.lower().startswith(("age1", "age-secret-key-", "age-plugin-"))


def _recipient(r: object) -> x25519.X25519PublicKey | rsa.RSAPublicKey:
    key: Any
    if isinstance(r, str):
        key = _public_from_text(r, "recipients")
    elif isinstance(r, os.PathLike):
        key = read_key_file(r)
    elif isinstance(r, bytes | bytearray | memoryview):
        key = _public_from_bytes(r)
    else:
        key = r
    if isinstance(key, x25519.X25519PublicKey | rsa.RSAPublicKey):
        return key
    if isinstance(key, x25519.X25519PrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"a recipient is a public key, not {_kind(key)}: give key.public_key()")
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        raise TypeError(f"a recipient is an X25519 or RSA public key, not {_kind(key)} (those sign files)")
    raise TypeError(
        "a recipient must be an X25519 or RSA public key (an object, its x25519:<hex>, age1… or PEM text,"
        f" or a pathlib.Path to a file of one), not {_kind(key)}"
    )


def recipient_kwargs(recipients: object) -> dict[str, list[bytes]]:
    """``x25519`` (raw public keys) and ``rsa_spki`` (DER) for the core's write functions."""
    out: dict[str, list[bytes]] = {"x25519": [], "rsa_spki": []}
    if recipients is None:
        return out
    single = (
        str,
        bytes,
        bytearray,
        memoryview,
        os.PathLike,
        x25519.X25519PublicKey,
        rsa.RSAPublicKey,
    )
    items: Iterable[object] = (
        [recipients] if isinstance(recipients, single) or not isinstance(recipients, Iterable) else recipients
    )
    for r in items:
        key = _recipient(r)
        if isinstance(key, x25519.X25519PublicKey):
            out["x25519"].append(key.public_bytes_raw())
        else:
            if not 2048 <= key.key_size <= 4096:
                raise ValueError(f"RSA recipients must be 2048 to 4096 bits, got {key.key_size}")
            out["rsa_spki"].append(
                key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
    return out


# ---- signing and verification keys ------------------------------------------------------------


def sign_seed(sign_with: object) -> bytes | None:
    """The Ed25519 seed of ``sign_with=``: an ``Ed25519PrivateKey`` or the path of its PEM file."""
    if sign_with is None:
        return None
    if isinstance(sign_with, str):
        raise _str_key_error(
            "sign_with", "an Ed25519PrivateKey or a path-like object (pathlib.Path) to its PEM file"
        )
    key: Any = read_key_file(sign_with) if isinstance(sign_with, os.PathLike) else sign_with
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError(f"sign_with= must be an Ed25519 private key, not {_kind(key)}")
    return key.private_bytes_raw()


def verify_bytes(verify_with: object) -> bytes | None:
    """The 32 raw bytes of ``verify_with=``: an ``Ed25519PublicKey``, 32 raw bytes, the
    ``ed25519:<hex>`` text, or a path-like object to a file holding that or a PEM public key."""
    if verify_with is None:
        return None
    key: Any
    if isinstance(verify_with, ed25519.Ed25519PublicKey):
        key = verify_with
    elif isinstance(verify_with, bytes | bytearray | memoryview):
        raw = bytes(verify_with)
        if len(raw) != KEY_SIZE:
            raise ValueError(
                f"verify_with= as raw bytes must be the 32-byte Ed25519 public key, got {len(raw)} bytes"
            )
        return raw
    elif isinstance(verify_with, str):
        key = _public_from_text(verify_with, "verify_with")
    elif isinstance(verify_with, os.PathLike):
        key = read_key_file(verify_with)
    else:
        key = verify_with
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TypeError(
            "verify_with= must be an Ed25519 public key (an Ed25519PublicKey, its 32 raw bytes, the"
            f" ed25519:<hex> text, or a pathlib.Path to a file of one), not {_kind(key)}"
        )
    return key.public_bytes_raw()


# ---- opening ----------------------------------------------------------------------------------


def _credential(key: object) -> dict[str, bytes]:
    """The ``_core.Reader`` keyword argument for one key (after any provider ran)."""
    if isinstance(key, FileKey):
        return {"file_key": key._key}
    if isinstance(key, os.PathLike):
        key = read_key_file(key)
    if isinstance(key, x25519.X25519PrivateKey):
        return {"x25519": key.private_bytes_raw()}
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"rsa_pkcs8": der}
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError("key= got an Ed25519 signing key: it signs files (sign_with=), it does not open them")
    if isinstance(key, x25519.X25519PublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise TypeError(f"key= got {_kind(key)}: opening a file takes the private key")
    if isinstance(key, str):
        raise _str_key_error(
            "key",
            "32 raw bytes (bytes-like), an X25519 or RSA private key object, a FileKey, or a path-like"
            " object (pathlib.Path) to a key file",
        )
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(
            "key= must be 32 raw bytes, an X25519 or RSA private key, a FileKey, a pathlib.Path to a key"
            f" file, or a key provider, not {_type_name(key)}"
        )
    return {"key": check_key(key)}


def holder_kwargs(keys: object, what: str = "remove_keys") -> dict[str, list[bytes]]:
    """The core's arguments that find the stanzas of these keys' holders (``rekey``'s
    ``remove_keys=``): ``keys`` (raw keys), ``x25519_identities`` and ``rsa_pkcs8``, from 32
    raw bytes, X25519 or RSA private keys, or path-like objects to key files, one or an iterable."""
    out: dict[str, list[bytes]] = {"keys": [], "x25519_identities": [], "rsa_pkcs8": []}
    single = (str, bytes, bytearray, memoryview, os.PathLike, x25519.X25519PrivateKey, rsa.RSAPrivateKey)
    items: Iterable[object] = [keys] if isinstance(keys, single) or not isinstance(keys, Iterable) else keys
    for k in items:
        if isinstance(k, FileKey):
            raise TypeError(f"{_label(what)} takes keys that open a stanza, not a FileKey (it opens none)")
        if isinstance(k, str):
            raise _str_key_error(
                what, "32 raw bytes, an X25519 or RSA private key, or a path-like object to a key file"
            )
        [(kind, value)] = _credential(k).items()
        out[{"key": "keys", "x25519": "x25519_identities", "rsa_pkcs8": "rsa_pkcs8"}[kind]].append(value)
    return out


def opener(
    key: object, passphrase: object, stanzas: Callable[[], list[dict[str, Any]]] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``_core.Reader``: exactly one way of opening the file.

    ``key`` may be 32 raw bytes, an ``X25519PrivateKey`` or ``RSAPrivateKey``, a
    :class:`FileKey`, a path-like object to a key file, or a callable that receives the file's
    stanza descriptions (type and public fields, from ``stanzas()``) and returns one of those.
    """
    if isinstance(key, str):
        _credential(key)  # raises the TypeError that does not show it
    p = check_passphrase(passphrase)
    if key is not None and p is not None:
        raise ValueError("give either a key or a passphrase, not both")
    if key is None and p is None:
        raise ValueError("give a key or a passphrase to open this file")
    if p is not None:
        return {"passphrase": p}
    if callable(key) and not isinstance(
        key, x25519.X25519PrivateKey | rsa.RSAPrivateKey | FileKey | os.PathLike
    ):
        if stanzas is None:
            raise TypeError("a key provider cannot be used here")
        key = key(stanzas())
        if key is None:
            raise ValueError("the key provider returned no key")
    return _credential(key)
