"""The core links BoringSSL statically, whose symbols carry OpenSSL's names (EVP_*, SHA256,
...), into a process that also loads OpenSSL (`ssl`, `hashlib`, `cryptography`). The
extension must export nothing but its init function, so that neither library's calls can
land in the other's code, whichever is loaded first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import enctensor
from enctensor import _core

OPENSSL_FIRST = r"""
import hashlib, ssl, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import numpy as np

# OpenSSL in use before enctensor loads.
assert hashlib.sha256(b"x").hexdigest().startswith("2d711642")
ctx = ssl.create_default_context()
box = AESGCM(bytes(32))
sealed = box.encrypt(bytes(12), b"payload", None)

import enctensor
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

path = sys.argv[1]
values = {"w": np.arange(1 << 20, dtype=np.float32)}
signer = Ed25519PrivateKey.generate()
recipient = X25519PrivateKey.generate()
enctensor.save(values, path, recipients=[recipient.public_key()], sign_with=signer)
got = enctensor.load(path, key=recipient, verify_with=signer.public_key())
assert np.array_equal(got["w"], values["w"])
enctensor.verify(path, key=recipient, verify_with=signer.public_key())

# And OpenSSL still works after enctensor ran.
assert box.decrypt(bytes(12), sealed, None) == b"payload"
assert hashlib.sha256(b"x").hexdigest().startswith("2d711642")
print("ok")
"""


def test_openssl_and_boringssl_share_a_process(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", OPENSSL_FIRST, str(tmp_path / "f.enct")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_extension_exports_only_its_init_function() -> None:
    so = Path(_core.__file__)
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True
    ).stdout
    exported = sorted(line.split()[-1] for line in listing.splitlines() if line.strip())
    assert exported == ["PyInit__core"], exported
    assert enctensor.__version__
