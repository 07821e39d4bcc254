"""Writes the spec vectors (spec/vectors/*.json) as a line-based manifest that the C test
(tests/c/test_capi.c) reads without a JSON parser.

For every success vector it also writes what a platform keystore would know: the file key,
unwrapped by the reference reader (spec/reference, written from the spec alone), and the
stanzas as the reference parser sees them, so that the C test can open the file through a key
provider callback and check every stanza field the callback receives.

Every string is written as ``x`` followed by its hex (so that none is empty or has spaces):

    vector <name> <success|format|nomatch|header|payload>
    cred <key|passphrase|x25519|rsa|none> x<hex>       (rsa: PKCS #8 DER)
    verify x<hex>                                        (optional)
    cap <max_scrypt_log_n>                               (optional)
    tensor x<name> <dtype> <encrypted 0|1> <ndim> <dims...> <sha256 hex>   (success)
    meta x<key> x<value>                                 (success)
    filekey x<hex>                                       (success)
    stanza x<type> x<salt> <log_n> x<share> x<body>      (success, in file order)
    end
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "spec" / "reference"))

import enctensor_ref as ref

EXPECT = {
    "success": "success",
    "format failure": "format",
    "no match": "nomatch",
    "header failure": "header",
    "payload failure": "payload",
}


def x(data: bytes | str) -> str:
    return "x" + (data.encode("utf-8") if isinstance(data, str) else data).hex()


def pem_der(pem: str) -> bytes:
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def credential(spec: dict[str, Any]) -> tuple[str, bytes]:
    if "key" in spec:
        return "key", bytes.fromhex(spec["key"])
    if "passphrase" in spec:
        return "passphrase", spec["passphrase"].encode("utf-8")
    if "identity" in spec:
        identity = spec["identity"]
        if identity["type"] == "x25519":
            return "x25519", bytes.fromhex(identity["private"])
        return "rsa", pem_der(identity["private_pem"])
    return "none", b""


def file_key(spec: dict[str, Any], data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """The file key, as a keystore holding the vector's credential unwraps it, and the stanzas."""
    parsed = ref._parse(data)
    kind, secret = credential(spec)
    identity: X25519PrivateKey | RSAPrivateKey | None = None
    if kind == "x25519":
        identity = X25519PrivateKey.from_private_bytes(secret)
    elif kind == "rsa":
        loaded = load_pem_private_key(spec["identity"]["private_pem"].encode("ascii"), password=None)
        assert isinstance(loaded, RSAPrivateKey)
        identity = loaded
    key = secret if kind == "key" else None
    passphrase = spec["passphrase"] if kind == "passphrase" else None
    return ref._open_file_key(parsed.stanzas, key, passphrase, identity), parsed.stanzas


#: The public fields of each known stanza type (a stanza of another type shows none).
STANZA_FIELDS = {
    "key": ("salt", "body"),
    "scrypt": ("salt", "body"),
    "x25519": ("share", "body"),
    "rsa-oaep": ("body",),
}


def stanza_line(stanza: dict[str, Any]) -> str:
    fields = STANZA_FIELDS.get(stanza["type"], ())

    def field(name: str) -> str:
        return x(bytes.fromhex(stanza[name])) if name in fields else "x"

    log_n = stanza["log_n"] if stanza["type"] == "scrypt" else 0
    return f"stanza {x(stanza['type'])} {field('salt')} {log_n} {field('share')} {field('body')}"


def vector_lines(json_path: Path) -> list[str]:
    spec = json.loads(json_path.read_text(encoding="utf-8"))
    name = json_path.stem
    lines = [f"vector {name} {EXPECT[spec['expect']]}"]
    kind, secret = credential(spec)
    lines.append(f"cred {kind} {x(secret)}")
    if "verify_key" in spec:
        lines.append(f"verify {x(bytes.fromhex(spec['verify_key']))}")
    if "max_scrypt_log_n" in spec:
        lines.append(f"cap {int(spec['max_scrypt_log_n'])}")
    if spec["expect"] == "success":
        for t in spec["tensors"]:
            fields = [x(t["name"]), t["dtype"], str(int(t["encrypted"])), str(len(t["shape"]))]
            fields += [str(int(d)) for d in t["shape"]] + [t["sha256"]]
            lines.append("tensor " + " ".join(fields))
        for k, v in spec["metadata"].items():
            lines.append(f"meta {x(k)} {x(v)}")
        key, stanzas = file_key(spec, json_path.with_suffix(".enct").read_bytes())
        lines.append(f"filekey {x(key)}")
        lines.extend(stanza_line(s) for s in stanzas)
    lines.append("end")
    return lines


def main() -> None:
    vectors = ROOT / "spec" / "vectors"
    out: list[str] = []
    for json_path in sorted(vectors.glob("*.json")):
        out.extend(vector_lines(json_path))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
