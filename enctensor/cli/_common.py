"""What the commands share: exit codes, the one-line error report, reading keys and
passphrases (credential plumbing), the progress display, the argument parser and the option
groups several commands take, and the classification of exceptions into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import os
import re
import shutil
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, NoReturn, TextIO, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from .. import _api as api
from .._api import DEFAULT_MAX_SCRYPT_LOG_N, DEFAULT_SCRYPT_LOG_N
from .._keys import (
    ED25519_TEXT_PREFIX,
    MAX_KEY_FILE,
    X25519_TEXT_PREFIX,
    _raw_key,
    age_key,
    age_key_prefix,
    openssh_refusal,
    pem_is_protected,
    read_age_key,
)
from .._remote import is_url
from ..errors import FormatError, IntegrityError, WrongKeyError

EXIT_OK = 0
EXIT_IO = 1  # and anything else that is not one of the classes below
EXIT_USAGE = 2
EXIT_WRONG_KEY = 3
EXIT_INTEGRITY = 4
EXIT_FORMAT = 5
EXIT_INTERRUPTED = 130

PASSPHRASE_ENV = "ENCTENSOR_PASSPHRASE"
NEW_PASSPHRASE_ENV = "ENCTENSOR_NEW_PASSPHRASE"
#: The passphrase of password-protected private keys (read, and written by ``keygen --protect``).
IDENTITY_PASSPHRASE_ENV = "ENCTENSOR_IDENTITY_PASSPHRASE"
DEBUG_ENV = "ENCTENSOR_DEBUG"
RSA_BITS = (2048, 3072, 4096)
DEFAULT_RSA_BITS = 3072

_EPILOG = """\
exit status: 0 success, 1 I/O or other error, 2 usage error, 3 wrong key, identity or
passphrase, 4 integrity failure (the file was modified or corrupted, or its publisher
signature is missing or not by the --verify-with key), 5 not a valid file of its format.

Passphrases are never taken from the command line: --passphrase reads ENCTENSOR_PASSPHRASE
if it is set, and otherwise asks on the terminal (--new-passphrase: ENCTENSOR_NEW_PASSPHRASE;
a password-protected private key: ENCTENSOR_IDENTITY_PASSPHRASE).
Keys are given as files, never as text on the command line; no error message shows a key, a
passphrase, or an argument given where a key file was expected that cannot be read."""

_KEYS_EPILOG = """\
Kinds of keys:
  key file    32 random bytes (keygen FILE): encrypts and decrypts (--key-file).
  X25519      keygen --x25519 FILE: FILE is the private identity (--identity); the public
              recipient x25519:<hex> that it prints is what others encrypt to (--recipient).
  RSA         keygen --rsa FILE: the same with RSA-OAEP, for HSMs and KMSes without X25519;
              the recipient is the PEM public key (printed, or --public-out PUB).
  Ed25519     keygen --ed25519 FILE: a publisher signing key (--sign-with FILE); the printed
              ed25519:<hex> (or a PEM public key file) checks signatures (--verify-with).
  age keys    an age X25519 recipient (age1...) and identity file (AGE-SECRET-KEY-1..., as
              age-keygen writes it) are X25519 keys: they work wherever X25519 keys do. Only
              the keys are shared: an enctensor file is not an age file (age cannot open it,
              nor enctensor an age file). OpenSSH keys (ssh-ed25519, ssh-rsa) are not read."""


class CliError(Exception):
    """A failure to report as one line: ``<file>: <what> — <hint>``, exiting with ``code``."""

    def __init__(self, code: int, file: str | None, what: str, hint: str | None = None) -> None:
        super().__init__(what)
        self.code = code
        self.file = file
        self.what = what
        self.hint = hint

    def line(self) -> str:
        text = f"{self.file}: {self.what}" if self.file else self.what
        if self.hint:
            text += f" — {self.hint}"
        return "enctensor: error: " + " ".join(text.split())


# --- Keys and passphrases -----------------------------------------------------------------

_LOWER_HEX_64 = re.compile(r"[0-9a-f]{64}")


#: Options (and arguments) that name a file holding a secret key: what each is called in errors.
_SECRET_FILE_OPTIONS = {
    "-k/--key-file": "key file",
    "--new-key-file": "key file",
    "-i/--identity": "private key file",
    "-s/--sign-with": "signing key file",
    "KEY": "private key file",
}


def _looks_like_a_key(text: str) -> bool:
    t = text.strip()
    return bool(
        re.fullmatch(r"(?:x25519:|ed25519:)?[0-9a-fA-F]{32,}", t)
        or re.fullmatch(r"[A-Za-z0-9+/=_-]{40,}", t)
        or t.upper().startswith("AGE-SECRET-KEY-")
        or "PRIVATE KEY" in t
    )


def _unreadable(e: OSError, text: str, option: str) -> CliError:
    """The error for a key file argument that cannot be opened. It never shows the argument:
    it may be a key, or a passphrase, typed where a file name was expected."""
    reason = "no such file" if e.errno == errno.ENOENT else (e.strerror or "cannot be opened").lower()
    kind = _SECRET_FILE_OPTIONS.get(option, "key file")
    given = f"given with {option}" if option.startswith("-") else f"given as {option}"
    if _looks_like_a_key(text):
        hint = (
            "it looks like a key itself: keys are never given on the command line, where other users"
            " can see them; put it in a file readable by you only (as `enctensor keygen FILE` writes"
            " one) and give the file's name"
        )
    else:
        hint = _OS_HINTS.get(e.errno or -1, "check the path")
    return CliError(
        EXIT_IO, None, f"cannot read the {kind} {given}: {reason} (the value given is not shown)", hint
    )


def _read_small(path: str, option: str | None = None) -> bytes:
    """A key file's bytes (at most ``MAX_KEY_FILE``; a larger file is not a key file). When
    ``option`` names a secret key option, an error opening it does not show the argument."""
    failure: OSError | None = None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        if option is None:
            raise
        failure = e
    if failure is not None:
        assert option is not None
        # Raised outside the except block: no chained exception names the argument either.
        raise _unreadable(failure, path, option) from None
    if len(data) > MAX_KEY_FILE:
        raise CliError(EXIT_USAGE, path, "too large to be a key file", "check the path")
    return data


def _is_pem(data: bytes, kind: str) -> bool:
    return f"{kind} KEY-----".encode() in data


def _refuse_openssh(data: str | bytes, where: str | None) -> None:
    """OpenSSH keys are refused, saying what is accepted instead."""
    refusal = openssh_refusal(data)
    if refusal is not None:
        raise CliError(EXIT_USAGE, where, ("is " if where else "the key given is ") + refusal)


def _age_key(data: bytes, where: str | None) -> x25519.X25519PrivateKey | x25519.X25519PublicKey | None:
    """The age X25519 key (recipient or identity) a file holds; None if it holds none."""
    failure: str | None = None
    try:
        return read_age_key(data)
    except ValueError as e:
        failure = str(e)
    # Raised outside the except block: nothing chained (the message never holds the key).
    raise CliError(EXIT_USAGE, where, failure, "check that the file is the one you meant") from None


def _is_public_text(data: bytes) -> bool:
    return _is_pem(data, "PUBLIC") or data.lstrip().startswith((b"x25519:", b"ed25519:", b"age1"))


def read_key_file(path: str, option: str = "-k/--key-file") -> bytes:
    """A key from a file of 32 raw bytes, or of 64 hex characters."""
    data = _read_small(path, option)
    key = _raw_key(data)
    if key is not None:
        return key
    _refuse_openssh(data, path)
    age = _age_key(data, path)
    if _is_pem(data, "PRIVATE") or isinstance(age, x25519.X25519PrivateKey):
        raise CliError(
            EXIT_USAGE,
            path,
            "is a private key, not a key file",
            "give an X25519 or RSA private key (or an age identity) with --identity (a signing key with"
            " --sign-with)",
        )
    if age is not None or _is_public_text(data):
        raise CliError(
            EXIT_USAGE,
            path,
            "is a public key, not a key file",
            "encrypt to a public key with --recipient (check signatures with --verify-with)",
        )
    raise CliError(
        EXIT_USAGE,
        path,
        "not a key file: a key file holds 32 raw bytes or 64 hex characters",
        "make one with `enctensor keygen FILE`",
    )


def read_private_key(path: str, option: str = "-i/--identity") -> Any:
    """A PEM private key file (PKCS#8 or a traditional format; a password-protected one is
    opened with ``ENCTENSOR_IDENTITY_PASSPHRASE`` or a passphrase asked on the terminal), or an
    age X25519 identity file (``AGE-SECRET-KEY-1…``)."""
    data = _read_small(path, option)
    _refuse_openssh(data, path)
    age = _age_key(data, path)
    if isinstance(age, x25519.X25519PrivateKey):
        return age
    if not _is_pem(data, "PRIVATE"):
        if age is not None or _is_public_text(data):
            raise CliError(
                EXIT_USAGE,
                path,
                "is a public key, not a private key",
                "a public key is for --recipient (or --verify-with); give the private key file here",
            )
        if _raw_key(data) is not None:
            raise CliError(
                EXIT_USAGE, path, "is a key file, not a PEM private key", "give it with --key-file instead"
            )
        raise CliError(
            EXIT_USAGE,
            path,
            "not a PEM private key or age identity file",
            "make one with `enctensor keygen --x25519 FILE` (or --rsa, --ed25519)",
        )
    if pem_is_protected(data):
        return _protected_private_key(data, path)
    failure: CliError | None = None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted in a way the markers above do not show: ask for its passphrase
        pass
    except (ValueError, UnsupportedAlgorithm):
        failure = CliError(
            EXIT_USAGE, path, "not a valid PEM private key (or of a kind enctensor does not know)"
        )
    if failure is not None:
        # Raised outside the except blocks: no chained exception carries the key's bytes.
        raise failure from None
    return _protected_private_key(data, path)


def read_identity_passphrase(path: str) -> bytes:
    """The passphrase of a protected private key: ``ENCTENSOR_IDENTITY_PASSPHRASE``, or asked
    on the terminal (never read from the command line)."""
    shown = _shown_arg(path)
    prompt = f"Enter passphrase for {shown}" if shown else "Enter passphrase for the private key"
    return _env_or_prompt(IDENTITY_PASSPHRASE_ENV, prompt, confirm=False).encode("utf-8")


def _protected_private_key(data: bytes, path: str) -> Any:
    password = read_identity_passphrase(path)
    failure: CliError | None = None
    try:
        return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        failure = CliError(
            EXIT_WRONG_KEY,
            path,
            "cannot decrypt this password-protected private key: wrong passphrase (or a damaged file)",
            f"check ${IDENTITY_PASSPHRASE_ENV}, or unset it to be asked on the terminal",
        )
    # Raised outside the except block: no chained exception carries the key or the passphrase.
    raise failure from None


def _check_rsa_size(path: str, bits: int) -> None:
    if not RSA_BITS[0] <= bits <= RSA_BITS[-1]:
        raise CliError(
            EXIT_USAGE, path, f"is a {bits}-bit RSA key", "enctensor takes RSA keys of 2048 to 4096 bits"
        )


def _kind(key: object) -> str:
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "an X25519 key"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "an Ed25519 signing key"
    return f"a key of another kind ({type(key).__name__.removeprefix('_')})"


def read_identity(path: str) -> x25519.X25519PrivateKey | rsa.RSAPrivateKey:
    """An X25519 or RSA private key file, to decrypt with."""
    key = read_private_key(path, "-i/--identity")
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa_size(path, key.key_size)
        return key
    if isinstance(key, x25519.X25519PrivateKey):
        return key
    hint = "an Ed25519 key signs files: give it to `encrypt --sign-with`" if "Ed25519" in _kind(key) else None
    raise CliError(EXIT_USAGE, path, f"is {_kind(key)}; an identity is an X25519 or RSA private key", hint)


def read_signing_key(path: str) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key file, to sign with."""
    key = read_private_key(path, "-s/--sign-with")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CliError(
            EXIT_USAGE,
            path,
            f"is {_kind(key)}; --sign-with takes an Ed25519 private key",
            "make one with `enctensor keygen --ed25519 FILE`",
        )
    return key


def _shown_arg(text: str) -> str | None:
    """How to name a command-line argument in an error: not at all if it might be a key."""
    if len(text) > 200 or _looks_like_a_key(text):
        return None
    return text


def _one_line_key(text: str, prefix: str, what: str, where: str | None) -> bytes:
    digits = text[len(prefix) :]
    if not _LOWER_HEX_64.fullmatch(digits):
        raise CliError(
            EXIT_USAGE,
            where,
            f"not a valid {what}: the one-line form is {prefix!r} and 64 lowercase hex digits",
            "copy it exactly as `enctensor keygen` or `enctensor pubkey` printed it",
        )
    return bytes.fromhex(digits)


#: What each public key option takes on one line, as ``keygen`` prints it.
_ONE_LINE_FORM = {
    "--recipient": "x25519:<hex> key (as `enctensor keygen --x25519` printed it) or an age1… recipient",
    "--verify-with": "ed25519:<hex> key (as `enctensor keygen --ed25519` printed it)",
}


def _age_text(text: str, where: str | None, option: str) -> x25519.X25519PublicKey:
    """An age recipient given as text (on the command line, or as a file's one line)."""
    failure: str | None = None
    key: object = None
    try:
        key = age_key(text)
    except ValueError as e:
        failure = str(e)
    if failure is not None:  # raised outside the except block: nothing chained
        raise CliError(EXIT_USAGE, where, failure, "copy it exactly as age-keygen printed it") from None
    if isinstance(key, x25519.X25519PrivateKey):
        raise CliError(
            EXIT_USAGE,
            where,
            ("is" if where else f"the {option} argument is")
            + f" an age identity, a secret key (not shown); {option} takes the public key",
            "give its recipient (age1…, as `age-keygen -y FILE` prints it)"
            + ("" if where else "; and never put a secret key on the command line, where others can see it"),
        )
    if key is None:  # starts as an age key does, but has no Bech32 separator
        raise CliError(EXIT_USAGE, where, "not a valid age key (the value is not shown)")
    assert isinstance(key, x25519.X25519PublicKey)
    return key


def _public_key_text_or_file(text: str, option: str) -> tuple[str, str | None, object]:
    """``(one-line text or "", file shown in errors, public key object or None)`` for an
    argument that is a one-line public key (``x25519:``/``ed25519:``, or an age recipient), or
    a file holding one or a PEM public key."""
    if text.startswith((X25519_TEXT_PREFIX, ED25519_TEXT_PREFIX)):
        return text.strip(), None, None
    if age_key_prefix(text):
        return "", None, _age_text(text, None, option)
    _refuse_openssh(text, None)
    failure: OSError | None = None
    try:
        data = _read_small(text)
    except OSError as e:
        failure = e
    if failure is not None:
        shown = _shown_arg(text)
        reason = (
            "no such file"
            if failure.errno == errno.ENOENT
            else (failure.strerror or "cannot be read").lower()
        )
        raise CliError(
            EXIT_IO,
            shown,
            f"{reason} (the {option} argument is a one-line public key or a PEM public key file"
            + (")" if shown else "; the value given is not shown)"),
            f"check the path, or give {_ONE_LINE_FORM[option]} or a PEM public key file",
        ) from None
    stripped = data.strip()
    if stripped.startswith((X25519_TEXT_PREFIX.encode(), ED25519_TEXT_PREFIX.encode())):
        return stripped.decode("ascii", "replace"), text, None
    _refuse_openssh(data, text)
    age = _age_key(data, text)
    if isinstance(age, x25519.X25519PublicKey):
        return "", text, age
    if _is_pem(data, "PRIVATE") or age is not None:
        age_id = age is not None
        raise CliError(
            EXIT_USAGE,
            text,
            f"is {'an age identity, ' if age_id else ''}a private key; {option} takes the public key",
            f"print the public key with `enctensor pubkey {'--age ' if age_id else ''}{text}`"
            + (" (age1…)" if age_id else ""),
        )
    if not _is_pem(data, "PUBLIC"):
        raise CliError(
            EXIT_USAGE,
            text,
            f"not a public key: expected a PEM public key or a one-line {_ONE_LINE_FORM[option]}",
            "use what `enctensor keygen` printed or wrote with --public-out",
        )
    try:
        return "", text, serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CliError(EXIT_USAGE, text, "not a valid PEM public key") from None


def read_recipient(text: str) -> x25519.X25519PublicKey | rsa.RSAPublicKey:
    """``--recipient``: ``x25519:<hex>``, or a file holding that or a PEM X25519/RSA public key."""
    line, where, key = _public_key_text_or_file(text, "--recipient")
    if line.startswith(ED25519_TEXT_PREFIX):
        raise CliError(
            EXIT_USAGE,
            where,
            "is an Ed25519 verification key, not a recipient",
            "recipients are X25519 (x25519:<hex>) or RSA public keys; an Ed25519 key goes to --verify-with",
        )
    if line:
        return x25519.X25519PublicKey.from_public_bytes(
            _one_line_key(line, X25519_TEXT_PREFIX, "X25519 recipient", where)
        )
    if isinstance(key, rsa.RSAPublicKey):
        _check_rsa_size(text, key.key_size)
        return key
    if isinstance(key, x25519.X25519PublicKey):
        return key
    raise CliError(EXIT_USAGE, where, f"is {_kind(key)}; a recipient is an X25519 or RSA public key")


def read_verify_key(text: str) -> ed25519.Ed25519PublicKey:
    """``--verify-with``: ``ed25519:<hex>``, or a file holding that or a PEM Ed25519 public key."""
    line, where, key = _public_key_text_or_file(text, "--verify-with")
    if line.startswith(X25519_TEXT_PREFIX):
        raise CliError(
            EXIT_USAGE,
            where,
            "is an X25519 recipient, not a signature verification key",
            "give the publisher's ed25519:<hex> key (from `enctensor keygen --ed25519`)",
        )
    if line:
        return ed25519.Ed25519PublicKey.from_public_bytes(
            _one_line_key(line, ED25519_TEXT_PREFIX, "Ed25519 public key", where)
        )
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CliError(EXIT_USAGE, where, f"is {_kind(key)}; --verify-with takes an Ed25519 public key")


def _env_or_prompt(env_name: str, prompt: str, confirm: bool) -> str:
    env = os.environ.get(env_name)
    if env is not None:
        if not env:
            raise CliError(EXIT_USAGE, None, f"{env_name} is set but empty", "set it to the passphrase")
        return env
    with warnings.catch_warnings():
        # getpass falls back to reading stdin with echo on when there is no terminal: refuse.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            first = getpass.getpass(f"{prompt}: ")
            # "Enter new passphrase" is confirmed by "Confirm new passphrase".
            again = "Confirm " + prompt.removeprefix("Enter ")
            if confirm and getpass.getpass(f"{again}: ") != first:
                raise CliError(EXIT_USAGE, None, "the passphrases do not match", "try again")
        except (getpass.GetPassWarning, EOFError, OSError):
            raise CliError(
                EXIT_USAGE,
                None,
                "no terminal to ask for the passphrase on",
                f"set {env_name} instead",
            ) from None
    if not first:
        raise CliError(EXIT_USAGE, None, "the passphrase is empty", "type a passphrase")
    return first


def read_passphrase(confirm: bool) -> str:
    """The passphrase from ``ENCTENSOR_PASSPHRASE``, or asked on the terminal (twice when
    encrypting). Never read from the command line, where other users could see it."""
    return _env_or_prompt(PASSPHRASE_ENV, "Enter passphrase", confirm)


def read_new_passphrase() -> str:
    """``rekey --new-passphrase``: from ``ENCTENSOR_NEW_PASSPHRASE``, or asked twice."""
    return _env_or_prompt(NEW_PASSPHRASE_ENV, "Enter new passphrase", True)


def write_credentials(args: argparse.Namespace) -> dict[str, Any]:
    """``key=``, ``recipients=``, ``passphrase=`` and ``sign_with=`` for the converters."""
    if args.passphrase and (args.key_file or args.recipient):
        raise CliError(
            EXIT_USAGE,
            None,
            "--passphrase cannot be combined with --key-file or --recipient",
            "a passphrase must be the only way to open a file; give one or the other",
        )
    if not (args.passphrase or args.key_file or args.recipient):
        raise CliError(
            EXIT_USAGE,
            None,
            "no key given",
            "use --key-file FILE (make one with `enctensor keygen`), --recipient PUB or --passphrase",
        )
    if args.scrypt_log_n is not None and not args.passphrase:
        raise CliError(
            EXIT_USAGE,
            None,
            "--scrypt-log-n sets the passphrase's work factor, and no --passphrase is given",
            "add --passphrase, or leave --scrypt-log-n out",
        )
    # Every file is read (and checked) before the passphrase is asked for.
    keys = [read_key_file(k) for k in args.key_file or ()]
    recipients = [read_recipient(r) for r in args.recipient or ()]
    refuse_duplicates(keys, "-k/--key-file")
    refuse_duplicates(recipients, "-r/--recipient")
    sign_with = read_signing_key(args.sign_with) if args.sign_with else None
    creds: dict[str, Any] = {"sign_with": sign_with}
    if args.passphrase:
        creds["passphrase"] = read_passphrase(confirm=True)
    else:
        creds["key"] = keys
        creds["recipients"] = recipients
    return creds


def _ordinal(n: int) -> str:
    return f"{n}" + ("th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th"))


def _key_identity(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, x25519.X25519PublicKey | rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    raise TypeError(f"not a key file or recipient: {type(key).__name__}")


def refuse_duplicates(keys: list[Any], option: str) -> None:
    """Refuses the same key file or recipient given twice (exit status 2): a duplicate would
    add a second stanza for the same key, and is more likely a mistake for another key. The
    arguments are named by position only: a value given may be a key."""
    seen: dict[bytes, int] = {}
    for n, key in enumerate(keys, 1):
        first = seen.setdefault(_key_identity(key), n)
        if first != n:
            what = "key" if option.endswith("key-file") else "public key"
            raise CliError(
                EXIT_USAGE,
                None,
                f"the {_ordinal(first)} and {_ordinal(n)} {option} are the same {what}",
                "give each once (did you mean another one?)",
            )


def _current_credentials(args: argparse.Namespace) -> dict[str, Any]:
    """``key=`` (key files and identities, tried in turn) or ``passphrase=``, from the
    options that open an existing file; the passphrase is read last, after every file."""
    if args.passphrase and (args.key_file or args.identity):
        raise CliError(
            EXIT_USAGE,
            None,
            "--passphrase cannot be combined with --key-file or --identity",
            "a file that opens with a passphrase opens with nothing else; give one or the other",
        )
    if not (args.passphrase or args.key_file or args.identity):
        raise CliError(
            EXIT_USAGE,
            None,
            "no key given",
            "use --key-file FILE, --identity PRIVATE_KEY or --passphrase to open the file",
        )
    keys: list[Any] = [read_key_file(k) for k in args.key_file or ()]
    keys += [read_identity(i) for i in args.identity or ()]
    creds: dict[str, Any] = {"key": keys} if keys else {"passphrase": None}
    creds["max_scrypt_log_n"] = args.max_scrypt_log_n
    return creds


def credentials(args: argparse.Namespace) -> dict[str, Any]:
    """``key=`` or ``passphrase=``, and ``verify_with=``, for the converters (decrypt, verify)."""
    creds = _current_credentials(args)
    creds["verify_with"] = read_verify_key(args.verify_with) if args.verify_with else None
    if args.expect_metadata:
        creds["expect_metadata"] = dict(args.expect_metadata)
    if args.expect_checkpoint is not None:
        creds["expect_checkpoint"] = args.expect_checkpoint
    if "passphrase" in creds:
        creds["passphrase"] = read_passphrase(confirm=False)
    return creds


# --- Progress -----------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr, shown only for work that takes more than a second, and only
    when stderr is a terminal and --quiet is not given. Called as ``progress(done, total)`` in
    bytes, from any thread. Every figure is in one unit system, binary (KiB, MiB, GiB), the
    rate as well: ``encrypting m.safetensors:  42% (1.2 GiB of 2.9 GiB) [##########--------------]
    410.3 MiB/s, 4 s left``."""

    DELAY = 1.0
    #: Redraw at most this often (seconds), except for the last update.
    INTERVAL = 0.1
    BAR_WIDTH = 24

    def __init__(
        self, desc: str, enabled: bool, stream: TextIO | None = None, delay: float | None = None
    ) -> None:
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.delay = self.DELAY if delay is None else delay
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._start < self.delay or (now - self._last_draw < self.INTERVAL and done < total):
                return
            self._last_draw = now
            self._draw(self.line(done, total, now - self._start, self._width()))

    def line(self, done: int, total: int, seconds: float, width: int = 120) -> str:
        """The text after ``seconds`` with ``done`` of ``total`` bytes; the bar is as wide as
        ``width`` columns leave room for (none if too few)."""
        fraction = min(done / total, 1.0) if total else 1.0
        rate = done / seconds if seconds > 0 else 0.0
        head = f"{self.desc}: {int(100 * fraction):3d}% ({_size(done)} of {_size(total)})"
        tail = f" {_size(rate)}/s" + (
            f", {(total - done) / rate:.0f} s left" if 0 < rate and done < total else ""
        )
        room = min(self.BAR_WIDTH, width - len(head) - len(tail) - 3)
        if room < 8:
            return head + tail
        filled = int(room * fraction)
        return f"{head} [{'#' * filled}{'-' * (room - filled)}]{tail}"

    @staticmethod
    def _width() -> int:
        return shutil.get_terminal_size((80, 24)).columns - 1

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text[: self._width()] + "\033[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """For one long call that reports nothing: shows the elapsed time while it runs."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(0.25):
                elapsed = time.monotonic() - self._start
                if elapsed >= self.delay:
                    with self._lock:
                        self._draw(f"{self.desc}: {elapsed:.0f} s")

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def _progress(args: argparse.Namespace, desc: str) -> Progress:
    return Progress(desc, enabled=not args.quiet and sys.stderr.isatty())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# --- Checks and descriptions shared by the commands ---------------------------------------


def _refuse_same_file(src: str, out: str) -> None:
    """Writing OUT would replace IN while it is read: refused (exit status 2), IN untouched."""
    with contextlib.suppress(OSError):
        if os.path.samefile(src, out):
            raise CliError(
                EXIT_USAGE, out, f"is the input file {src} itself", "write the output to another name"
            )


def refuse_directory(path: str) -> None:
    """``inspect``, ``verify`` and ``rekey`` read one file (or one sharded checkpoint's index)."""
    if os.path.isdir(path):
        raise CliError(EXIT_IO, path, "is a directory", "give a file name")


def _check_encrypted(path: str, command: str) -> str:
    from ..convert import FORMATS, detect_format, url_format  # imported when needed: start-up time

    if is_url(path):
        fmt: str | None = url_format(path)
    else:
        refuse_directory(path)
        fmt = detect_format(path)
    if fmt not in ("enctensor", "enctensor-index"):
        if fmt in FORMATS:
            raise CliError(
                EXIT_FORMAT,
                path,
                f"is not encrypted (it looks like {_describe(fmt)})",
                "use `enctensor encrypt` to encrypt it",
            )
        raise CliError(
            EXIT_FORMAT, path, "not an enctensor file", f"{command} takes files made by `enctensor encrypt`"
        )
    return fmt


def _describe(fmt: str | None) -> str:
    return {
        "safetensors": "a safetensors file",
        "params": "a TVM .params file",
        "index": "a sharded checkpoint index",
    }.get(fmt or "", "something else")


_OPENS_WITH = {
    "key": "--key-file",
    "scrypt": "--passphrase",
    "x25519": "--identity",
    "rsa-oaep": "--identity",
}


def stanza_summary(details: list[dict[str, Any]]) -> str:
    """``2 x25519, rsa-oaep 4096-bit, key``: a file's stanzas, grouped, in order."""
    counts: dict[str, int] = {}
    for st in details:
        label = str(st.get("type"))
        body = st.get("body")
        if label == "rsa-oaep" and isinstance(body, str):
            label += f" {len(body) * 4}-bit"
        elif label == "scrypt" and "log_n" in st:
            label += f" log_n={st['log_n']}"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(label if n == 1 else f"{n} {label}" for label, n in counts.items())


def _opens_with(details: list[dict[str, Any]]) -> str:
    options = dict.fromkeys(_OPENS_WITH[t] for t in (s.get("type") for s in details) if t in _OPENS_WITH)
    return " or ".join(options)


# --- Argument parsing ---------------------------------------------------------------------


def _log_n(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 10 <= n <= 20:
        raise argparse.ArgumentTypeError("must be between 10 and 20")
    return n


def _metadata_pin(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


class _Formatter(argparse.HelpFormatter):
    """Wraps one-line paragraphs of descriptions and epilogs to the terminal; keeps paragraphs
    that are laid out by hand (several lines: examples, lists) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        return "\n\n".join(
            textwrap.fill(
                p,
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
            if "\n" not in p
            else "\n".join(indent + line for line in p.splitlines())
            for p in paragraphs
        )


#: What ``add_subparsers`` returns: each command module's ``add_parser`` adds its commands to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _Parser(argparse.ArgumentParser):
    """argparse, with its one-line error in the same style as the rest (exit status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # argparse quotes arguments it did not expect: a key pasted onto the command line must
        # not be echoed back.
        message = re.sub(
            r"(?:x25519:|ed25519:)?[0-9a-fA-F]{32,}|[A-Za-z0-9+/=_-]{40,}", "<not shown>", message
        )
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"enctensor: error: {message} — see `{self.prog} --help`\n")


def _add_open_options(p: argparse.ArgumentParser, verify: bool = True) -> None:
    """How to open an existing file: key files and identities (tried in turn), or a passphrase."""
    g = p.add_argument_group("opening the file (give key files and identities, or --passphrase)")
    g.add_argument(
        "-k",
        "--key-file",
        action="append",
        metavar="FILE",
        help="a key file (32 raw bytes or 64 hex characters, as `keygen FILE` writes); repeat to try each",
    )
    g.add_argument(
        "-i",
        "--identity",
        action="append",
        metavar="PRIVATE_KEY",
        help="an X25519 or RSA private key file (PEM, as `keygen --x25519/--rsa` writes; if it is"
        f" password-protected, its passphrase comes from ${IDENTITY_PASSPHRASE_ENV} or is asked for), or an"
        " age identity file (AGE-SECRET-KEY-1…); repeat to try each",
    )
    g.add_argument(
        "-p",
        "--passphrase",
        action="store_true",
        help=f"use a passphrase: from ${PASSPHRASE_ENV} if set, else asked on the terminal",
    )
    p.add_argument(
        "--max-scrypt-log-n",
        type=_log_n,
        default=DEFAULT_MAX_SCRYPT_LOG_N,
        metavar="N",
        help=f"open a passphrase-protected file only if its scrypt work factor is at most 2^N, 10..20"
        f" (default {DEFAULT_MAX_SCRYPT_LOG_N}: 256 MiB, about a second a try; 20 is 1 GiB and several"
        " seconds): a costlier file is refused before scrypt runs",
    )
    if verify:
        p.add_argument(
            "--expect-metadata",
            action="append",
            type=_metadata_pin,
            metavar="KEY=VALUE",
            help="require this metadata entry with exactly this value in every file read (checked after"
            " the MAC and signature; exit status 4 otherwise): pins a release, e.g. version=3; repeatable",
        )
        p.add_argument(
            "--expect-checkpoint",
            metavar="ID",
            help="for a sharded checkpoint: require its checkpoint id (the 32 hex digits `inspect` shows in"
            " a shard's enctensor.shard entry), so a whole set rolled back to another release is refused",
        )
        g.add_argument(
            "--verify-with",
            metavar="PUBLISHER_KEY",
            help="require a valid publisher signature by this Ed25519 key: ed25519:<hex> as `keygen"
            " --ed25519` prints it, or a file holding that or a PEM public key (exit status 4 if the"
            " file is unsigned or signed by another key)",
        )


def _scrypt_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--scrypt-log-n",
        type=_log_n,
        default=None,
        metavar="N",
        help=f"{what} work factor 2^N, 10..20 (default {DEFAULT_SCRYPT_LOG_N}; lower is faster to open and"
        f" to guess; only with --{what.replace(' ', '-')})",
    )


# --- Errors -------------------------------------------------------------------------------


def _strip_path(msg: str, path: str | None) -> str:
    """Rust messages start with the file name (``<path>: ...`` or ``not a valid enctensor
    file: <path>: ...``); the CLI puts it first itself."""
    if path:
        for prefix in ("not a valid enctensor file: ", ""):
            if msg.startswith(f"{prefix}{path}: "):
                return prefix + msg[len(prefix) + len(path) + 2 :]
    return msg


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check the permissions of the file and its directory",
    errno.EPERM: "check the permissions of the file and its directory",
    errno.EROFS: "write somewhere else",
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "give a file name",
    errno.EEXIST: "use --force to overwrite it",
}


#: The hidden temporary name an output is written to before it is renamed (``convert._common``).
_TEMP_NAME = re.compile(r"\.(?P<final>[^/]+)\.[0-9]+-[0-9a-f]{8}\.partial")


def _real_target(text: str) -> str:
    """``dir/.x.enct.1a2b3c4d.partial`` -> ``dir/x.enct``: errors name what the user asked for."""
    return _TEMP_NAME.sub(lambda m: m.group("final"), text)


#: Temporary files that stand for what the user gave (a copy of standard input, a file written
#: before it is copied to standard output): messages name them as the user did.
_SHOWN_AS: dict[str, str] = {}


def show_as(real: str, shown: str) -> None:
    """Names the temporary file ``real`` as ``shown`` in error messages."""
    _SHOWN_AS[real] = shown


def _as_shown(text: str) -> str:
    for real, shown in _SHOWN_AS.items():
        text = text.replace(real, shown)
    return text


def _stanza_hint(path: str | None) -> str:
    """`` (its stanzas: 2 x25519, key; open it with --identity or --key-file)``, from the
    unauthenticated header, or nothing if it cannot be read."""
    if not path:
        return ""
    try:
        details = api.inspect(path)["stanza_details"]
    except (OSError, ValueError):
        return ""
    opens = _opens_with(details)
    return f" (its stanzas: {stanza_summary(details)}" + (f"; open it with {opens})" if opens else ")")


def _integrity_hint(e: IntegrityError) -> str:
    msg = str(e)
    if "signature" in msg or "not signed" in msg:
        return "check that --verify-with is this publisher's key; otherwise do not use the file"
    return "do not use it; get an intact copy"


def classify(e: BaseException, default_file: str | None) -> CliError:
    """The one-line report and exit status for an exception."""
    if isinstance(e, CliError):
        return e
    path = getattr(e, "enctensor_path", None) or default_file
    failure = _classify(e, path)
    failure.what = _as_shown(failure.what)
    failure.file = _as_shown(failure.file) if failure.file else failure.file
    rekeyed = getattr(e, "rekeyed", None)
    if rekeyed:
        failure.hint = (
            f"{len(rekeyed)} file(s) listed above were already re-keyed and now open with the new"
            " credentials only; the others were not changed"
        )
    return failure


def _classify(e: BaseException, path: str | None) -> CliError:
    if isinstance(e, WrongKeyError):
        return CliError(
            EXIT_WRONG_KEY,
            path,
            _strip_path(str(e), path),
            "check that the key file, identity or passphrase is one this file was encrypted to"
            + _stanza_hint(path),
        )
    if isinstance(e, IntegrityError):
        return CliError(EXIT_INTEGRITY, path, _strip_path(str(e), path), _integrity_hint(e))
    if isinstance(e, FormatError):  # and InputFormatError, a subclass
        return CliError(EXIT_FORMAT, path, _strip_path(str(e), path), "check that it is the file you meant")
    if isinstance(e, OSError):
        if e.filename is not None:
            what = e.strerror or str(e)
            path = os.fsdecode(e.filename)
        else:
            # From Rust: OSError(errno, "<what>: <strerror> (os error N)").
            what = e.strerror if e.strerror else str(e)
            what = _strip_path(re.sub(r" \(os error \d+\)$", "", what), path)
        what = _real_target(what)
        path = _real_target(path) if path else path
        hint = _OS_HINTS.get(e.errno or -1)
        if isinstance(e, FileExistsError) and e.strerror == "already exists":
            hint = "use --force to overwrite it"
        return CliError(EXIT_IO, path, what[:1].lower() + what[1:] if what else str(e), hint)
    if isinstance(e, ValueError):
        return CliError(EXIT_USAGE, None, str(e), "see `enctensor --help`")
    return CliError(
        EXIT_IO,
        path,
        f"internal error: {type(e).__name__}: {e}",
        f"please report this (set {DEBUG_ENV}=1 to see the traceback)",
    )
