"""Working attacks on the authenticity of format v1 (issue 11), built from spec/FORMAT.md's own
equations, as an attacker would build them.

The forgeries are made here, not with enctensor: the file is parsed with ``struct``/``json``,
keys are derived with ``cryptography``'s HKDF, HMAC and AES-GCM, and the GHASH equations are
solved with the GF(2^128) arithmetic below (the attacker's tool). enctensor only writes the
genuine victim file and loads the forged one (in process and through the CLI).

1. Outsider forgery: knowing only a recipient's X25519 public key, keep a signed file's header,
   tag table, digest table and signature, pick a new file key, choose every chunk's plaintext
   and solve one 16-byte block per chunk so that its tag under the new key is the signed tag,
   then write a new MAC and stanza. Before issue 11 the signature covered only header and tag
   table, and ``load(..., verify_with=publisher)`` accepted this file.
2. Key-holder edit: a recipient knows the file key, so it can change a chunk and compensate
   another block so that the chunk's GCM tag stays the same; header, MAC, tags, digests and
   signature stay byte-identical. Only the per-chunk BLAKE3 digest table catches it.
3. Multi-key stanza body (partitioning oracle): one 48-byte AES-GCM ciphertext and tag that
   open under three chosen wrap keys. The key commitment in front of it lets one key at most in.
4. Small-order Ed25519 verification keys: with the identity point as key, (R = identity,
   S = 0) verifies for every message under a cofactorless, non-strict verifier; with any of
   the eight small-order points, (R = a small-order point, S = 0) verifies for one file in a few.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from blake3 import blake3
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

import enctensor
from enctensor import IntegrityError, SignatureError, WrongKeyError

CHUNK = 4096
EXIT_INTEGRITY = 4  # the CLI's exit status for integrity and signature failures
MAGIC = b"\x89ETS\r\n\x1a\n"
ZERO_NONCE = bytes(12)
# spec/FORMAT.md labels
L_TENSOR = b"enctensor.v1 tensor\x00"
L_HEADER = b"enctensor.v1 header"
L_X25519 = b"enctensor.v1 x25519"
L_KEY = b"enctensor.v1 key"
L_SCRYPT = b"enctensor.v1 scrypt"
L_COMMIT = b"enctensor.v1 stanza commitment"
L_SEAL = b"enctensor.v1 stanza seal"
NP_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32}

# ---- the attacker's tools: GF(2^128) as GCM uses it, GHASH, AES, HKDF ------------------------

_R = 0xE1 << 120
GF_ONE = 1 << 127  # blocks are big-endian integers, bit 127 is the coefficient of x^0


def gf_mul(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (NIST SP 800-38D, algorithm 1)."""
    z = 0
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= y
        y = (y >> 1) ^ _R if y & 1 else y >> 1
    return z


def gf_pow(x: int, e: int) -> int:
    r = GF_ONE
    while e:
        if e & 1:
            r = gf_mul(r, x)
        x = gf_mul(x, x)
        e >>= 1
    return r


def gf_inv(x: int) -> int:
    assert x, "0 has no inverse"
    return gf_pow(x, (1 << 128) - 2)


def gf_div(x: int, y: int) -> int:
    return gf_mul(x, gf_inv(y))


def blk(b: bytes) -> int:
    return int.from_bytes(b, "big")


def unblk(x: int) -> bytes:
    return x.to_bytes(16, "big")


def xor(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def aes_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def ghash(h: int, data: bytes) -> int:
    y = 0
    for k in range(0, len(data), 16):
        y = gf_mul(y ^ blk(data[k : k + 16]), h)
    return y


def pad16(b: bytes) -> bytes:
    return b + bytes(-len(b) % 16)


def gcm_tag(key: bytes, nonce: bytes, ct: bytes, aad: bytes = b"") -> bytes:
    """The AES-GCM tag of ``ct`` (96-bit nonce), from the definition."""
    h = blk(aes_block(key, bytes(16)))
    lens = struct.pack(">QQ", 8 * len(aad), 8 * len(ct))
    s = ghash(h, pad16(aad) + pad16(ct) + lens)
    return unblk(s ^ blk(aes_block(key, nonce + b"\x00\x00\x00\x01")))


def block_weight(key: bytes, nbytes: int, i: int) -> int:
    """The factor H^(N - i) by which 16-byte block ``i`` of an ``nbytes`` GHASH input (all
    ciphertext, or all associated data) enters the tag; N counts the length block."""
    n = -(-nbytes // 16) + 1
    return gf_pow(blk(aes_block(key, bytes(16))), n - i)


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def tensor_key(file_key: bytes, name: str) -> bytes:
    return hkdf(file_key, b"", L_TENSOR + name.encode())


def commit_and_seal(wrap: bytes, file_key: bytes) -> bytes:
    """An 80-byte stanza body: commitment || AES-GCM-Seal(seal key, 0^12, file key)."""
    seal = hkdf(wrap, b"", L_SEAL)
    return hkdf(wrap, b"", L_COMMIT) + AESGCM(seal).encrypt(ZERO_NONCE, file_key, b"")


# ---- the file, parsed per FORMAT.md -----------------------------------------------------------


@dataclass
class Chunk:
    tensor: str
    k: int  # number in the tag table
    j: int
    m: int
    offset: int  # absolute
    length: int
    encrypted: bool

    @property
    def nonce(self) -> bytes:
        return self.j.to_bytes(11, "big") + (b"\x01" if self.j == self.m - 1 else b"\x00")


@dataclass
class Parsed:
    area_len: int
    header_off: int
    header_len: int
    header: dict[str, Any]
    area: dict[str, Any]
    mac_off: int
    tags_off: int
    tables_end: int
    data_offset: int
    chunks: list[Chunk]

    def tag(self, data: bytes, k: int) -> bytes:
        return data[self.tags_off + 16 * k : self.tags_off + 16 * k + 16]

    def chunk_of(self, name: str, j: int) -> Chunk:
        return next(c for c in self.chunks if c.tensor == name and c.j == j)


def parse(data: bytes) -> Parsed:
    magic, version, area_len, header_len, reserved, data_offset = struct.unpack("<8sIIIIQ", data[:32])
    assert (magic, version, reserved) == (MAGIC, 1, 0)
    h = 32 + area_len
    area = json.loads(data[32:h])
    header = json.loads(data[h : h + header_len])
    cs = header["chunk_size"]
    chunks: list[Chunk] = []
    for t in header["tensors"]:
        begin, end = t["offsets"]
        nbytes = end - begin
        m = max(1, -(-nbytes // cs))
        for j in range(m):
            length = max(0, min(cs, nbytes - j * cs))
            chunks.append(
                Chunk(t["name"], len(chunks), j, m, data_offset + begin + j * cs, length, t["encrypted"])
            )
    mac_off = h + header_len
    tags_off = mac_off + 32
    tables_end = tags_off + 16 * len(chunks) + (32 * len(chunks) if "chunk_digest" in header else 0)
    assert data_offset >= tables_end
    return Parsed(area_len, h, header_len, header, area, mac_off, tags_off, tables_end, data_offset, chunks)


def stanza_area(obj: dict[str, Any], length: int) -> bytes:
    text = json.dumps(obj, separators=(",", ":")).encode()
    assert len(text) <= length
    return text + b" " * (length - len(text))


def write_mac(out: bytearray, p: Parsed, file_key: bytes) -> None:
    """MAC = HMAC(HKDF(file key, "", "enctensor.v1 header"), header || tag table || digest table)."""
    mac_key = hkdf(file_key, b"", L_HEADER)
    covered = bytes(out[p.header_off : p.mac_off]) + bytes(out[p.tags_off : p.tables_end])
    out[p.mac_off : p.tags_off] = hmac.new(mac_key, covered, hashlib.sha256).digest()


def unwrap_x25519(data: bytes, identity: X25519PrivateKey) -> bytes:
    """The file key, as a recipient unwraps it from its x25519 stanza."""
    recipient = identity.public_key().public_bytes_raw()
    for st in parse(data).area["stanzas"]:
        if st["type"] != "x25519":
            continue
        share, body = bytes.fromhex(st["share"]), bytes.fromhex(st["body"])
        secret = identity.exchange(X25519PublicKey.from_public_bytes(share))
        wrap = hkdf(secret, share + recipient, L_X25519)
        if hmac.compare_digest(body[:32], hkdf(wrap, b"", L_COMMIT)):
            return AESGCM(hkdf(wrap, b"", L_SEAL)).decrypt(ZERO_NONCE, body[32:], b"")
    raise AssertionError("no x25519 stanza of this file opens with this identity")


# ---- attack 1: outsider forgery ---------------------------------------------------------------


def forge_chunks(genuine: bytes, file_key: bytes) -> tuple[bytearray, dict[str, np.ndarray]]:
    """``genuine`` with every chunk replaced by the attacker's plaintext under ``file_key``,
    each with one block solved so that its tag is the genuine (signed) one, and a MAC under
    ``file_key``. Returns the bytes and the tensors they decrypt to."""
    p = parse(genuine)
    out = bytearray(genuine)
    loaded = {}
    cs = p.header["chunk_size"]
    for t in p.header["tensors"]:
        dt = NP_DTYPES[t["dtype"]]
        # The attacker's values: every element 3 (a bias, a backdoor, ...).
        plain = bytearray(np.full(t["shape"], 3, dt).tobytes())
        tk = tensor_key(file_key, t["name"])
        for c in (c for c in p.chunks if c.tensor == t["name"]):
            assert c.length >= 16, "a chunk shorter than one block has no free block to solve"
            signed_tag = p.tag(genuine, c.k)
            lo = c.j * cs
            chunk = bytes(plain[lo : lo + c.length])
            if c.encrypted:
                sealed = AESGCM(tk).encrypt(c.nonce, chunk, None)
                stored, tag = sealed[:-16], sealed[-16:]
            else:
                stored, tag = chunk, AESGCM(tk).encrypt(c.nonce, b"", chunk)
            # One equation over GF(2^128): change block i by d so that the tag becomes the
            # signed one: d * H^(N-i) = tag + signed tag.
            i = c.length // 16 - 1
            d = gf_div(blk(tag) ^ blk(signed_tag), block_weight(tk, c.length, i))
            stored = stored[: 16 * i] + xor(stored[16 * i : 16 * i + 16], unblk(d)) + stored[16 * i + 16 :]
            if c.encrypted:  # CTR: the same change lands in the plaintext
                chunk = AESGCM(tk).decrypt(c.nonce, stored + signed_tag, None)
                assert gcm_tag(tk, c.nonce, stored) == signed_tag
            else:
                assert AESGCM(tk).decrypt(c.nonce, signed_tag, stored) == b""
                assert gcm_tag(tk, c.nonce, b"", stored) == signed_tag
                chunk = stored
            plain[lo : lo + c.length] = chunk
            out[c.offset : c.offset + c.length] = stored
        loaded[t["name"]] = np.frombuffer(bytes(plain), dt).reshape(t["shape"])
    write_mac(out, p, file_key)
    return out, loaded


def x25519_wrap_key(victim_public: bytes) -> tuple[bytes, bytes]:
    """A fresh stanza's share and wrap key: share = X25519(e, basepoint), wrap key from
    X25519(e, victim) (needs only the victim's public key)."""
    e = X25519PrivateKey.generate()
    share = e.public_key().public_bytes_raw()
    secret = e.exchange(X25519PublicKey.from_public_bytes(victim_public))
    return share, hkdf(secret, share + victim_public, L_X25519)


def outsider_forgery(genuine: bytes, victim_public: bytes) -> tuple[bytes, dict[str, np.ndarray]]:
    """A file for ``victim_public`` with the genuine header, tag table, digest table and
    signature, and tensors of the attacker's choosing. Returns it and what the victim gets."""
    p = parse(genuine)
    file_key = os.urandom(32)
    out, loaded = forge_chunks(genuine, file_key)
    share, wrap = x25519_wrap_key(victim_public)
    stanza = {"type": "x25519", "share": share.hex(), "body": commit_and_seal(wrap, file_key).hex()}
    area = {"stanzas": [stanza], "signature": p.area["signature"]}
    out[32 : p.header_off] = stanza_area(area, p.area_len)
    return bytes(out), loaded


# ---- attack 2: key-holder edit ----------------------------------------------------------------


def keyholder_edit(data: bytes, file_key: bytes, name: str, j: int, new_block: bytes) -> bytes:
    """Chunk ``j`` of ``name`` with its block 2 replaced by ``new_block`` (plaintext) and
    block 5 changed to compensate, so that the chunk's tag is unchanged."""
    p = parse(data)
    c = p.chunk_of(name, j)
    tk = tensor_key(file_key, name)
    tag = p.tag(data, c.k)
    stored = bytearray(data[c.offset : c.offset + c.length])
    edit, fix = 2, 5
    if c.encrypted:
        plain = AESGCM(tk).decrypt(c.nonce, bytes(stored) + tag, None)
        d = xor(plain[16 * edit : 16 * edit + 16], new_block)  # CTR: flip ciphertext bits
    else:
        d = xor(stored[16 * edit : 16 * edit + 16], new_block)
    # d * H^(N-edit) + d' * H^(N-fix) = 0
    d2 = gf_div(gf_mul(blk(d), block_weight(tk, c.length, edit)), block_weight(tk, c.length, fix))
    stored[16 * edit : 16 * edit + 16] = xor(stored[16 * edit : 16 * edit + 16], d)
    stored[16 * fix : 16 * fix + 16] = xor(stored[16 * fix : 16 * fix + 16], unblk(d2))
    if c.encrypted:
        AESGCM(tk).decrypt(c.nonce, bytes(stored) + tag, None)  # the tag still verifies
    else:
        AESGCM(tk).decrypt(c.nonce, tag, bytes(stored))
    out = bytearray(data)
    out[c.offset : c.offset + c.length] = stored
    return bytes(out)


# ---- attack 3: one AES-GCM body that opens under several keys ---------------------------------


def multi_key_ciphertext(keys: list[bytes]) -> bytes:
    """A 48-byte ct || tag (nonce 0^12, no associated data) that AES-GCM-opens under each of
    two or three keys (Len, Grubbs, Ristenpart): the tag is C1 H^3 + C2 H^2 + L H + E_K(J0),
    linear in (C1, C2); equal tags under keys 0 and a give one equation per a >= 1."""
    assert len(keys) in (2, 3)
    hs = [blk(aes_block(k, bytes(16))) for k in keys]
    ejs = [blk(aes_block(k, ZERO_NONCE + b"\x00\x00\x00\x01")) for k in keys]
    length = blk(struct.pack(">QQ", 0, 256))
    rows = []
    for a in range(1, len(keys)):
        h0, ha = hs[0], hs[a]
        rows.append(
            (
                gf_pow(h0, 3) ^ gf_pow(ha, 3),
                gf_pow(h0, 2) ^ gf_pow(ha, 2),
                gf_mul(length, h0 ^ ha) ^ ejs[0] ^ ejs[a],
            )
        )
    if len(rows) == 1:  # one free block: choose C1, solve C2
        (a11, a12, r1) = rows[0]
        c1 = blk(os.urandom(16))
        c2 = gf_div(r1 ^ gf_mul(c1, a11), a12)
    else:  # Cramer's rule over GF(2^128)
        (a11, a12, r1), (a21, a22, r2) = rows
        det = gf_mul(a11, a22) ^ gf_mul(a12, a21)
        c1 = gf_div(gf_mul(r1, a22) ^ gf_mul(a12, r2), det)
        c2 = gf_div(gf_mul(a11, r2) ^ gf_mul(r1, a21), det)
    h0 = hs[0]
    tag = gf_mul(c1, gf_pow(h0, 3)) ^ gf_mul(c2, gf_pow(h0, 2)) ^ gf_mul(length, h0) ^ ejs[0]
    return unblk(c1) + unblk(c2) + unblk(tag)


def reencrypt(template: bytes, file_key: bytes, tensors: dict[str, np.ndarray]) -> bytearray:
    """``template`` (an unsigned file) with every chunk sealed again under ``file_key``."""
    p = parse(template)
    assert "chunk_digest" not in p.header
    out = bytearray(template)
    cs = p.header["chunk_size"]
    for c in p.chunks:
        chunk = tensors[c.tensor].tobytes()[c.j * cs : c.j * cs + c.length]
        tk = tensor_key(file_key, c.tensor)
        if c.encrypted:
            sealed = AESGCM(tk).encrypt(c.nonce, chunk, None)
            out[c.offset : c.offset + c.length], tag = sealed[:-16], sealed[-16:]
        else:
            tag = AESGCM(tk).encrypt(c.nonce, b"", chunk)
        out[p.tags_off + 16 * c.k : p.tags_off + 16 * c.k + 16] = tag
    write_mac(out, p, file_key)
    return out


# ---- attack 4: small-order Ed25519 points -----------------------------------------------------

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def ed_decode(b: bytes) -> tuple[int, int]:
    y = int.from_bytes(b, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    assert y < _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (x * x - x2) % _P == 0 and not (x == 0 and sign)
    return (_P - x if x & 1 != sign else x), y


def ed_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2
    return (x1 * y2 + x2 * y1) * pow(1 + t, -1, _P) % _P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P


ED_O = (0, 1)
ED_L = 2**252 + 27742317777372353535851937790883648493


def ed_mul(pt: tuple[int, int], n: int) -> tuple[int, int]:
    q = ED_O
    while n:
        if n & 1:
            q = ed_add(q, pt)
        pt = ed_add(pt, pt)
        n >>= 1
    return q


def ed_challenge(r: bytes, a: bytes, message: bytes) -> int:
    """k = SHA-512(R || A || M) mod L (RFC 8032)."""
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % ED_L


IDENTITY = bytes([1]) + bytes(31)
SMALL_ORDER = [
    IDENTITY,  # order 1
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # order 2: y = -1
    bytes(32),  # order 4: y = 0
    bytes(31) + b"\x80",  # order 4
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
]

# ---- the victim file --------------------------------------------------------------------------

TENSORS: dict[str, np.ndarray] = {
    "w": (np.arange(40 * 64, dtype=np.float32).reshape(40, 64) / 7),  # 3 chunks of 4 KiB
    "b": np.linspace(-1, 1, 200, dtype=np.float16),  # 1 chunk
    "pos": np.arange(1500, dtype=np.int32),  # 2 chunks, stored in the clear (GMAC)
}
CLEAR = ("pos",)


@dataclass
class Victim:
    identity: X25519PrivateKey
    identity_pem: Path
    publisher: Ed25519PrivateKey
    path: Path  # the genuine signed file
    data: bytes

    @property
    def public(self) -> bytes:
        return self.identity.public_key().public_bytes_raw()

    @property
    def verify_key(self) -> Ed25519PublicKey:
        return self.publisher.public_key()

    @property
    def verify_text(self) -> str:
        return "ed25519:" + self.verify_key.public_bytes_raw().hex()


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Victim:
    d = tmp_path_factory.mktemp("victim")
    identity = X25519PrivateKey.generate()
    pem = d / "victim.pem"
    pem.write_bytes(
        identity.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    publisher = Ed25519PrivateKey.generate()
    path = d / "model.enct"
    enctensor.save(
        TENSORS,
        path,
        recipients=[identity.public_key()],
        sign_with=publisher,
        plaintext=CLEAR,
        chunk_size=CHUNK,
    )
    return Victim(identity, pem, publisher, path, path.read_bytes())


def cli(*commands: list[Any], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Runs ``python -m enctensor`` once per command, all at once (start-up time dominates)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCTENSOR_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "enctensor", *map(str, args)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    out = []
    for args, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


# ---- tests ------------------------------------------------------------------------------------


def test_attack_tools_agree_with_aes_gcm() -> None:
    """The GF(2^128) arithmetic and GHASH used by the attacks compute AES-GCM's real tags."""
    key, nonce = os.urandom(32), os.urandom(12)
    for n in (0, 5, 16, 100):
        msg, aad = os.urandom(n), os.urandom(n // 2)
        sealed = AESGCM(key).encrypt(nonce, msg, aad)
        assert gcm_tag(key, nonce, sealed[:-16], aad) == sealed[-16:]
    x = blk(os.urandom(16)) | 1
    assert gf_mul(x, gf_inv(x)) == GF_ONE
    assert gf_mul(x, GF_ONE) == x


def test_victim_file_is_signed_and_verifies(victim: Victim) -> None:
    p = parse(victim.data)
    assert p.header.get("chunk_digest") == "BLAKE3"
    assert p.area["signature"]["type"] == "ed25519-blake3"
    assert len(p.chunks) == 6
    assert same(enctensor.load(victim.path, key=victim.identity, verify_with=victim.verify_key), TENSORS)


def test_outsider_forgery_under_a_valid_signature_is_refused(victim: Victim, tmp_path: Path) -> None:
    """Issue 11 item 1: the attacker knows only the victim's and the publisher's public keys."""
    forged, chosen = outsider_forgery(victim.data, victim.public)
    p = parse(victim.data)
    # Kept byte for byte: header, tag table, digest table, the signature object.
    assert forged[p.header_off : p.mac_off] == victim.data[p.header_off : p.mac_off]
    assert forged[p.tags_off : p.data_offset] == victim.data[p.tags_off : p.data_offset]
    assert parse(forged).area["signature"] == p.area["signature"]
    path = tmp_path / "forged.enct"
    path.write_bytes(forged)

    # The forgery is a well-formed file for the victim: without a verification key it opens,
    # with the attacker's tensors (the MAC is symmetric; only a signature names a publisher).
    got = enctensor.load(path, key=victim.identity)
    assert same(got, chosen)
    assert np.count_nonzero(got["w"] == 3) >= got["w"].size - 4 * 3  # one solved block per chunk

    # The signature covers the MAC, which only the real file key's holder can compute.
    with pytest.raises(SignatureError):
        enctensor.load(path, key=victim.identity, verify_with=victim.verify_key)
    with pytest.raises(SignatureError):
        enctensor.safe_open(path, key=victim.identity, verify_with=victim.verify_key)
    with pytest.raises(SignatureError):
        enctensor.verify(path, key=victim.identity, verify_with=victim.verify_key)

    out = tmp_path / "out.safetensors"
    opening = ["-i", victim.identity_pem, "--verify-with", victim.verify_text]
    for r in cli(["verify", path, *opening], ["decrypt", path, out, *opening], cwd=tmp_path):
        assert r.returncode == EXIT_INTEGRITY, (r.args, r.returncode, r.stdout, r.stderr)
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "j", "touching", "elsewhere"),
    [
        ("w", 1, np.s_[20:22], np.s_[0:4]),  # encrypted: chunk 1 holds rows 16..31
        ("pos", 0, np.s_[10:20], np.s_[1100:1200]),  # clear (GMAC): chunk 0 holds elements 0..1023
    ],
)
def test_keyholder_edit_under_a_valid_signature_is_refused(
    victim: Victim, tmp_path: Path, name: str, j: int, touching: Any, elsewhere: Any
) -> None:
    """Issue 11 item 2: a recipient changes a chunk and keeps its GCM tag."""
    file_key = unwrap_x25519(victim.data, victim.identity)
    dt = TENSORS[name].dtype
    new_block = np.full(16 // dt.itemsize, 12345, dt).tobytes()
    forged = keyholder_edit(victim.data, file_key, name, j, new_block)
    p = parse(victim.data)
    c = p.chunk_of(name, j)
    # Everything but two blocks of that chunk is byte-identical: header, MAC, tags, digests,
    # signature, stanzas, the other chunks.
    assert forged[: c.offset] == victim.data[: c.offset]
    assert forged[c.offset + c.length :] == victim.data[c.offset + c.length :]
    diff = np.flatnonzero(np.frombuffer(forged, np.uint8) != np.frombuffer(victim.data, np.uint8))
    assert set((diff - c.offset) // 16) == {2, 5}
    path = tmp_path / "edited.enct"
    path.write_bytes(forged)

    # The documented boundary: without a verification key, a holder of the file key can change
    # bytes (every GCM tag still verifies), and the file loads with the edit.
    got = enctensor.load(path, key=victim.identity)
    flat = got[name].reshape(-1).view(np.uint8)
    start = j * CHUNK + 32
    assert flat[start : start + 16].tobytes() == new_block, "without verify_with a key holder can edit"
    assert not same(got, TENSORS)
    enctensor.verify(path, key=victim.identity)

    # With the publisher's key: the chunk's BLAKE3 digest differs from the signed table.
    with pytest.raises(IntegrityError) as e:
        enctensor.load(path, key=victim.identity, verify_with=victim.verify_key)
    assert not isinstance(e.value, SignatureError)  # a payload failure: the signature is fine
    with enctensor.safe_open(path, key=victim.identity, verify_with=victim.verify_key) as f:
        np.testing.assert_array_equal(f.get_slice(name)[elsewhere], TENSORS[name][elsewhere])
        with pytest.raises(IntegrityError):
            f.get_slice(name)[touching]
        with pytest.raises(IntegrityError):
            f.get_tensor(name)
    with pytest.raises(IntegrityError) as e:
        enctensor.verify(path, key=victim.identity, verify_with=victim.verify_key)
    assert not isinstance(e.value, SignatureError)

    out = tmp_path / "out.safetensors"
    opening = ["-i", victim.identity_pem, "--verify-with", victim.verify_text]
    for r in cli(["verify", path, *opening], ["decrypt", path, out, *opening], cwd=tmp_path):
        assert r.returncode == EXIT_INTEGRITY, (r.args, r.returncode, r.stdout, r.stderr)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["key", "scrypt"])
def test_multi_key_stanza_body_opens_under_one_key_at_most(tmp_path: Path, kind: str) -> None:
    """Issue 11 item 4: one AES-GCM ct || tag opens under three chosen wrap keys; the
    commitment in front of it lets only the key it commits to through (no partitioning oracle)."""
    template = enctensor.save_bytes(TENSORS, key=os.urandom(32), plaintext=CLEAR, chunk_size=CHUNK)
    p = parse(template)
    salt = os.urandom(16)
    if kind == "key":
        candidates: list[Any] = [os.urandom(32) for _ in range(3)]
        wraps = [hkdf(k, salt, L_KEY) for k in candidates]
        stanza: dict[str, Any] = {"type": "key", "salt": salt.hex()}

        def load(path: Path, cand: Any) -> dict[str, np.ndarray]:
            return enctensor.load(path, key=cand)

    else:
        candidates = ["123456", "password", "correct horse battery staple"]
        wraps = [
            Scrypt(salt=L_SCRYPT + salt, length=32, n=1 << 10, r=8, p=1).derive(pw.encode())
            for pw in candidates
        ]
        stanza = {"type": "scrypt", "salt": salt.hex(), "log_n": 10}

        def load(path: Path, cand: Any) -> dict[str, np.ndarray]:
            return enctensor.load(path, passphrase=cand)

    seals = [hkdf(w, b"", L_SEAL) for w in wraps]
    ct_tag = multi_key_ciphertext(seals)
    file_keys = [AESGCM(s).decrypt(ZERO_NONCE, ct_tag, b"") for s in seals]  # opens under all three
    assert len(set(file_keys)) == 3

    outsider = os.urandom(32) if kind == "key" else "not a candidate"
    for c in range(3):
        out = reencrypt(template, file_keys[c], TENSORS)  # the real file key is candidate c's
        body = hkdf(wraps[c], b"", L_COMMIT) + ct_tag
        out[32 : p.header_off] = stanza_area({"stanzas": [{**stanza, "body": body.hex()}]}, p.area_len)
        path = tmp_path / f"{kind}{c}.enct"
        path.write_bytes(out)
        assert same(load(path, candidates[c]), TENSORS)
        for other in (*candidates[:c], *candidates[c + 1 :], outsider):
            # Before the commitment: IntegrityError (the stanza opened, the MAC failed) for the
            # other two candidates, WrongKeyError for the outsider; the difference was the oracle.
            with pytest.raises(WrongKeyError):
                load(path, other)


@pytest.mark.parametrize(
    "point",
    SMALL_ORDER,
    ids=["identity", "order2", "order4", "order4-neg", *(f"order8-{i}" for i in range(4))],
)
def test_small_order_verify_key_is_refused(point: bytes) -> None:
    """Issue 11 item 10: a small-order key A accepts a signature that anyone can make:
    R a small-order point and S = 0 verify (cofactorless, non-strict) when R + [k]A = O,
    k = SHA-512(R || A || message) mod L, which holds for one file in a few."""
    a = ed_decode(point)
    assert ed_mul(a, 8) == ED_O, "a small-order point"
    for attempt in range(64):  # the attacker varies its own file until some R works
        data = enctensor.save_bytes(
            TENSORS,
            key=(own := os.urandom(32)),
            sign_with=Ed25519PrivateKey.generate(),
            metadata={"attempt": str(attempt)},
            chunk_size=CHUNK,
        )
        p = parse(data)
        # message = label || 0x00 || u64le(header_len) || u64le(C) || BLAKE3(header || MAC || tags || digests)
        transcript = blake3(data[p.header_off : p.tables_end]).digest()
        message = (
            b"enctensor.v1 ed25519-blake3\x00" + struct.pack("<QQ", p.header_len, len(p.chunks)) + transcript
        )
        r = next(
            (
                r
                for r in SMALL_ORDER
                if ed_add(ed_decode(r), ed_mul(a, ed_challenge(r, point, message))) == ED_O
            ),
            None,
        )
        if r is not None:
            break
    assert r is not None
    out = bytearray(data)
    area = {**p.area, "signature": {"type": "ed25519-blake3", "sig": (r + bytes(32)).hex()}}
    out[32 : p.header_off] = stanza_area(area, p.area_len)
    with pytest.raises(SignatureError, match=r"(?i)small[- ]order"):
        enctensor.load_bytes(bytes(out), key=own, verify_with=Ed25519PublicKey.from_public_bytes(point))


def test_identity_verify_key_with_identity_signature_is_refused(victim: Victim, tmp_path: Path) -> None:
    """Key = identity, sig = (R = identity, S = 0): [S]B = R + [k]A holds for every message."""
    p = parse(victim.data)
    out = bytearray(victim.data)
    area = {**p.area, "signature": {"type": "ed25519-blake3", "sig": (IDENTITY + bytes(32)).hex()}}
    out[32 : p.header_off] = stanza_area(area, p.area_len)
    path = tmp_path / "identity.enct"
    path.write_bytes(out)
    identity_key = Ed25519PublicKey.from_public_bytes(IDENTITY)
    for f in (path, victim.path):
        with pytest.raises(SignatureError, match=r"(?i)small[- ]order"):
            enctensor.load(f, key=victim.identity, verify_with=identity_key)
    opening = ["-i", victim.identity_pem, "--verify-with", "ed25519:" + IDENTITY.hex()]
    for r in cli(["verify", path, *opening], ["verify", victim.path, *opening], cwd=tmp_path):
        assert r.returncode == EXIT_INTEGRITY, (r.args, r.returncode, r.stdout, r.stderr)
        assert re.search(r"(?i)small[- ]order", r.stderr), r.stderr
