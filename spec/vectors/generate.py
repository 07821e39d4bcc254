"""Deterministic generator of the enctensor v1 test vectors (see README.md in this directory).

    python spec/vectors/generate.py            # rewrites spec/vectors/*.enct and *.json
    python spec/vectors/generate.py OUT_DIR    # writes them elsewhere
    python spec/vectors/generate.py --print-missing-rsa-bodies

Every vector is one function below, registered with ``@vector``; the function name is the
vector name (``<area>_<defect>``). All randomness (file keys, salts, X25519 ephemeral secrets,
tensor contents) comes from SHA-256 in counter mode over the fixed seed "enctensor test
randomness" and a label, so running the generator twice gives byte-identical files. Each
vector is checked against the reference reader before it is written.

Some vectors are forgeries built from the spec's own equations: chunks whose GCM tag under a
chosen key equals a given tag (GHASH is linear over GF(2^128) in each 16-byte block, so one
block of a chunk can be solved for), stanza bodies whose AES-GCM part opens under two keys,
and Ed25519 signatures that only a lax verifier accepts. The GF(2^128) and Ed25519
arithmetic below is an attack tool for building those vectors, not a primitive that protects
anything.

RSA-OAEP encryption is randomized in ``cryptography`` and cannot take a seed, so RSA-OAEP
bodies are fixed constants (``RSA_OAEP_BODIES``), each checked by decrypting it with the
fixed test key. A new RSA vector needs new constants: ``--print-missing-rsa-bodies`` runs
every vector with fresh random bodies for the missing ones and prints entries to paste in.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))

import enctensor_ref as ref

HERE = Path(__file__).resolve().parent
SEED = b"enctensor test randomness"

KEY_A = bytes(range(32))  # 000102...1f
KEY_B = bytes(range(32, 64))  # 202122...3f
KEY_WRONG = bytes(range(64, 96))  # 404142...5f
PASSPHRASE = "correct horse battery staple"
PASSPHRASE_WRONG = "correct horse battery stapler"
LOG_N = 10  # small scrypt cost so that the vectors are fast to read
DEFAULT_MAX_SCRYPT_LOG_N = ref.DEFAULT_MAX_SCRYPT_LOG_N
CHUNK = 4096  # the smallest chunk size, so that small tensors span several chunks

# X25519 identities (recipients) and Ed25519 publisher keys, from fixed 32-byte seeds.
X25519_A = X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))  # 606162...7f
X25519_B = X25519PrivateKey.from_private_bytes(bytes(range(128, 160)))  # 808182...9f
X25519_WRONG = X25519PrivateKey.from_private_bytes(bytes(range(160, 192)))  # a0a1a2...bf
PUBLISHER_A = Ed25519PrivateKey.from_private_bytes(bytes(range(192, 224)))  # c0c1c2...df
PUBLISHER_B = Ed25519PrivateKey.from_private_bytes(bytes(range(224, 256)))  # e0e1e2...ff

# Fixed RSA-2048 test keys (generated once with cryptography; test material, not secrets).
RSA_A_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCx7OLys/fUgulk
aSmygPxYJZOAceetFnyfJ9lUz4bCIJvEID+fLmcXWkMJ+6kz0Z9E+K5BTmuCnc+Z
wZ+HqEXLP66AZJMraWnP42pcGNeS5prTHv0XAgRzOZ4iQDkJJCUBChDs38yHmAEb
RsekPbElF8wy+06ObdCr1hQUnr4lxcUc3bM6RT7XsdJct9jnFywm79HYEtKLPzQc
mBEN4IoddDzlXB5tbXizLkv3apsNl83GC/M+dhCUQnaNLxkJW4wp/y7EcxRQNz5N
iVSQ/tfW2KcRmHBgS8UKrOKelnMxS/TylLRFe81VM88MpBNLRUsYZBN3BXlaLYFO
nihdfm/jAgMBAAECggEAALjGAA5VacDaMvSBr4KxA16HFRUFx7eLNQTvFA0kCYVH
fHwMbypymFPMshs+Pp3/gULWI0VlvWUxEEJ4Y+qiHv2q//sxm+2d+PvHC610aCJL
EH4vi8rGu0YStJQB1PBgKzIyQfO8v/QQnjojIp63KWSlLY8x/tB9OqU5P1gqp01s
fOLdcX2Ieq1ewck5ir/8/O/1Qu73w7stFDV/RcvlwP+smspEuaraj+0u893114xq
JiL3c0G4tlYi1CUZ6FVaw+vyyeaC2oSFytNM2TZWktuM0798kVt5vDsIB+BSqPyf
LBmNwmNwxi5+bgorGPsZ5vtZqT3S44bajJwvudELYQKBgQDn+y/mpr81yPQH9pFN
MLsOTUMhVM7jHweiGX4rFbRaaqeMgIsk2WeKAcOhqegh0YDz09Fey8lrwum519M8
ZN6/6toNQEOEVu4/bmvr/OIW4renK8DyAfoEae8U1p8HhbUXxkNmsou4Bi3vqwnx
HtgY7NgAbZtbTCdV1PCzYQt8swKBgQDEWOne8TmUwQb3pMIV/CSE9GnIAKMkiSly
akRaebpxsJlZJWK0laqlcoV36DYh8bJyy5nBw/Hd2XihM26FAr039zOUHLoMKcHA
FX/w0fjrRXINF3lfkVADNwtpUDk1T5Coev2qEf0h6liCA59duykUGhvkzAIiQbg8
xiP8V7w4EQKBgGVCmOsmeCqDGDptn4lBLzWT9iyTd2degRd55z/pTnt1OMO0zIf+
OhrcoEduAfzZFV/ZYvftHnPideGAWx1urmi5nArStWYMCB06FvPAw/PXbPEUwTki
Mb9BenHvKSXAcIb7LSqj3ycp011dnI5at1tR7wtozLqyaC0oMRUr1DbPAoGAdLz8
h83aU2QUtWZi8tlQCTCcOAqQ9OcMGneuHjDjtjauZf9BWWbm56lYS3tnu/TNCU2e
JENQ6XskKou+uRxwzfaO1w/hWdv10zO1NsRQf+lxLvF2+2gVL2Qpx7qn2NduhY1i
hhxd6S1A5EQtG3hsqwP+86CL4Dw8wv13Zc/wG1ECgYAhVp97dYpvoS3KaXuZ1cWv
YSjQkYM+9OZ1dCFv7Tu8OUdaTHpkLCZAKLOWL1sR3Vv7hhKzrSMS6kyQYtlxOQif
VyZ2IffRWpxgaEOSEhgAc5Sb2eu49TFOzczkaICoO/fsHdgqZHKh61f4UIW7Yvgn
l++P8H0h1S06PoWt213Law==
-----END PRIVATE KEY-----
"""
RSA_B_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC8bWHBan/4a+kf
dFRA6V6bF8CqWgAYsddCZRRVpAeo8LyDyOkslSla76RMycXViNru4/9M45EGpiOH
CeznvlSy1VeJOF4ZeQWL2pM+z16tPxxhcXw4YH46lE3aFTwsKR2q5heHFcmi4TNx
rPt2toXkO88bw16Jbf94wrNkLwW+DwGcYSyAGTo2+qh+M8+aXaBUadQkRhtF/PVy
N4cuP+ZM/owb3yEkwam/F66XjV1z+OgregzYmGb+u3UiKCAIaCPjT/1539uMuYwh
cHdL0WU9zGa5NtNKkJBSlNzylAhxXKAqobAuSbi8n1ZatqCjyKw+Q3mwh1FQtNu7
Odo8ZSM1AgMBAAECggEAJfFsxvL4NAEe34ugT7XurBJ7ZJJdBJwDOcZ68sfmFvnr
LCpv8d9ThZFOJ3xWDyrQ01wsE8KbeJhJ/S5de0kTazOUvfgQ0tZQ7JmmHvbJHN/h
iim9FukvYgJtLuYpyMa6x6gvwq77fIYWwuRPetdEXPJCQVf1GH2C/UFPuHPTlzK7
7V7f9NvoYkZXC+b3TT6cDD9p6q2V4xQgvIZveSWSHS+SgY2BgUWtWyzEpQSZ+/aY
9Sci6nggn0Dw1+xA4O3bN1vw7lbMoCSoVGIrfkVdzLeh1LBRCICLJiB9SMmBpjxV
xG5eukyWTsk8+ZylknVnChSG8Wd+pCUl6Yf18ozAvQKBgQDeXIkCNr++UNlx/yGR
vo1TSFJMnUlQEBfFxeT1+tMwJtbl+cRF/6XMUKiPITflxofs7aiV+SI8PEy+P+Br
6KkO9asK3ltO/LVgQpBmCeE8BBi6pddnTbJVDdqvUEXYPMUxogfB1vfdAGrtuJ/d
kP8hP6Cz9E4PHH3/hWo73uvuDwKBgQDY7qqIrx2sldNwTHrpQiRFT2A2Oh8ZN8HY
lM7zDeNTzdwUN2dwiTNnAeDl0IMSrcKDotfOZ+iiiXLYJ5uf7UH1p2tUNuxUt0Dv
7c1jokDvNAxtqjsYF+rnyMxYtl4MNQTCxAkAvLV1A4ChJLmHrHEsfvbdIYhiMuY4
W8uh9pweewKBgDFTgakWEA7dzH63Q/Eavir9XhRUx9CU4VEkBxhx3atO0lkNwPZu
MY9TTTEDA21bTwfF6KHsNCX8kmGZteT6JZaF9L1iegrZkDqcSX/5LRetKPculsv5
tlebzSkau4OuZ2gNM39SeoVx9EZrsDrsUUxE2xdQWIiNn32xUNGbL+cNAoGAImvk
dWHMBJmVfkk0a5TKKpFIw/H/A0JcqOAb4mc+vgp5NGACMtIibOLYa77lPW6C4d5R
/fdw63GB3piSUhMUl0Uke61nXJ3jWO7T205gnVQV8MTFMbKB3Jt5CU6Op8M16S2v
/AT1igavP2KTadrL7nKK+1WZzXMkIqc2LZHy/ccCgYBlGKwmO4VkapcrQcuwwm7j
q2X+EFYEhgZR5t9gv6lEGxi3he/RLOhFk8Sou0TDOj2PCLx0lY/AxzWGjmkgFaJh
+fTST4n+YUQdWi7g6yZw9usJHjF17Pw7Q9WKlpPTaE0zvqux/ZsAWpzv8L7YUbPq
ACxPV9VLn6WT+BB807HJEg==
-----END PRIVATE KEY-----
"""


def _load_rsa(pem: str) -> RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    assert isinstance(key, RSAPrivateKey) and key.key_size == 2048
    return key


RSA_A = _load_rsa(RSA_A_PEM)
RSA_B = _load_rsa(RSA_B_PEM)
RSA_KEYS: dict[str, tuple[RSAPrivateKey, str]] = {"rsa_a": (RSA_A, RSA_A_PEM), "rsa_b": (RSA_B, RSA_B_PEM)}

# Precomputed RSA-OAEP bodies: (RSA key name, plaintext hex) -> body hex. Each is decrypted
# with the key before use; see --print-missing-rsa-bodies.
RSA_OAEP_BODIES: dict[tuple[str, str], str] = {
    ("rsa_a", "7a5a1a44985c692ec8b5d45a0f98924e1724c7fbd42979fde6f8fe6d04bb3079"): (
        "3b6d60509bb0a8d5bef63ebe087b8d5836561091959a0af8144f6b7e56207d79d5dfc7dfcc90e1030fa831bdd3e5457b"
        "0e437ff1e0e78958c8aa40d576a3c4eeb58eeec03a46fa6d33b2d95a37fb996121f546ec2d5ad450dc21f7cd9d1afa1e"
        "1aa6ce004386e2a6b2581e5b73625bd8d7cef70b5f16801cb35c7e8d20878049d4be31e2f663a3f5917fcebe7214f07d"
        "011787b9e123acaaf016b75dd1c0a67855ddbc258e33960770fcacdf44ee2f2e7d66ec1d2cc41cd42144afae07e8f5c6"
        "20df5b1fc1670a825701083e7741f1d9c74a1776604037afca88409cfac15b7450e5244bb2da419694334c6926f97141"
        "842f5d1888829f5ed3b565e9a6ca6199"
    ),
    ("rsa_a", "8dffeb785b999cde164e0ed825f29672d1a608e26abbb622e1546557b872b479"): (
        "15efd263c85ab061ebb3eb3e51e7876ca9cf5ad3143fb6e415c9535cd9ef8d6f720706621f9e57336d93314f855105a6"
        "763f5c9e0f8b61513f181d71044996b0bb098cfd3e56f6ef46be6c210b8d5f9e3918d1a3780ff031ce818245f45393ac"
        "a687aeffc86e4d9e7b6b7aafa33345e6a7da5b7094dcfb61505e2e89816caae931d677d4152dd4e5c72c0f722499a2bf"
        "4dc520cf59f4930d0335978a38b2bbbd09ece034a800ffd7ee3f9f721f5c3604028dc57ff000631c22f2453e42789ed6"
        "da78923bef6b2a00e9840f5b213df8d915dae0ce8dbedf5983ac2ebce32eebf807a2972f67aa8ebb89ef5395f1a92e70"
        "0ed8ad05ad5d80444c983b870436b623"
    ),
    ("rsa_a", "5dd0e8c9b040711b391fba89658630b8"): (
        "5792e830c2e41abb4600d37a018dde60be59939f49ca3725d801aa5104f67331431d6b531936e5ef53d8170ebf913489"
        "5d9f6ee805f7b27f6202501ec59b01389458d81dd9fc4f656708910f0b9a0edb75d48c53a0d1fe056773843caee03463"
        "645cac6db04a0fb1c1148611864d087ebc7254220bc8dd9fa9a72e2407c1e2247e2484731799e8b1a1a5bb7e8d9ee020"
        "2179a137cbb222ca166f5ad9bb077672e6bfa68971623ffd4651cd6a779ec05f875d9959ffb4ef0edf1c71898aead63c"
        "41f4f95d90987edf84f3046e23a32cc646e40e87c39da25cf08e52ad47f1799fe181a9e10475927128ddaac09cc18f4d"
        "866aea47224cd9648919be77fa9839f4"
    ),
    ("rsa_a", "89b48576011f14f09665a2849c39aac14e7bb9962c2f43f1bb1112416ad417ea"): (
        "18472acf1fb7b7c705b720202d1c82d8405164041bdaa8df745e0867d08d5fe4a1073d461482f3dcbe178a9d41afb3ba"
        "95eaf26066b6704aa296b176c4c9c032817195b5e40647eafd4a6d8ff307c43590d237bc78925589cb7fd76b9a035691"
        "7f91328c9709a0777cb8f77b361f8607c551caff9415b2be0c9de8c2d09fe05516bc4a607981de614f5f50180052d15b"
        "78cf7dd3f479d4c3b32e5c0251d09f7b1e7186d7d0f565f1c6ca183224f9feb44e73c170fcb9afa5e9d90a4175fa795a"
        "3b39dc654179f26344394e2c007afb3a4dbc22fc33cbe0e961805f6a49cabd19908a124b3b8d69f0ee46694d971efa46"
        "0c137711670d78cc3f27dadce71f081b"
    ),
    ("rsa_a", "9443df283931e441e7b4262037770bf7929968efc44080bc1c7380836c750937"): (
        "a10a94bf4a8c6f602b21c4558e1609905119dc2183ca683fa48b32f6c951b5ec9e367eacb3204b196aa30c6c2483e2e9"
        "625a4ae5abd2595919e4177963affeebf3d4bf219ca3f6358e92634c597ee6d48e8e75a98f9af16aa5a5cf1ea05df6b2"
        "65d62bdea69295fa65befad61edf235af2f47b071e1c701ca7015a89617332bbb6798be638ffc874eacb5fd1e73d8d1b"
        "8f29cabcc203a40ebe9e18012af1faf0bb1395b6474ad289d6e4ada661038e9c0b6e78e61e4f2d011dcac58c3caa4611"
        "9a90492f5d359bc9936566c96c95e01ec4ceccd8379ac9985210477cb9f8b982bcd9b9757c349f003f0cf1e79fb4a954"
        "92a4cb59924fcf7ae831431531f7096a"
    ),
    ("rsa_a", "9e600b5b2311221a7e4d7dc50de975def98bf61e9df825263221b4af1e54f4ba"): (
        "195e27674c3826697ee60c617fad3c46eb47dd8c7d297c4b6410ed222f304acbdf6403163fe8920c1c570c5f36ee4e68"
        "4317673e52b57814f8b215f216355d2c10058025f31c87c52074783989cc8d8906fb7ba0ba9592ada4a1f5e224bed01c"
        "867020f624bb88ef734378dc6f362f136c6010f1728df2d80dd98b0a947d3f4f3e61125d3264840499d59bd47abffd31"
        "be7e1c9b01681ce3dad28f47002dc59da61e44ba0369592c3367d5aea96c00860c5de6e71844671e6eb63d55dfe73d14"
        "feb4e2c4bc5aa2e4860a41c5a35400984ae695fd049c0cc11e98267e57b079212647232daf6ac6b1f05821e923d8a379"
        "33b4d0c18b5033883bc9f618c18ca648"
    ),
}

EXPECT_CLASSES = {
    ref.FormatFailure: "format failure",
    ref.NoMatch: "no match",
    ref.HeaderFailure: "header failure",
    ref.PayloadFailure: "payload failure",
    ref.SetFailure: "set failure",  # sharded sets only (read_sharded)
}


def expect_class(exc: ref.RefError) -> str:
    """The class name of a reference failure."""
    for cls, name in EXPECT_CLASSES.items():
        if isinstance(exc, cls):
            return name
    raise TypeError(type(exc))


# --- Deterministic randomness ---------------------------------------------------------------


class CounterRandom:
    """SHA-256 in counter mode: block i = SHA-256(seed || 0x00 || label || 0x00 || u64be(i)).

    Calling the object returns the next n bytes of the stream.
    """

    def __init__(self, label: str) -> None:
        self._prefix = SEED + b"\x00" + label.encode("utf-8") + b"\x00"
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._prefix + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def fill(label: str, n: int) -> bytes:
    """n pseudo-random bytes, a function of the label only."""
    return CounterRandom("data/" + label)(n)


# --- Fixed RSA-OAEP bodies ------------------------------------------------------------------


def _rsa_name(key: RSAPublicKey) -> str:
    for name, (private, _) in RSA_KEYS.items():
        if private.public_key().public_numbers() == key.public_numbers():
            return name
    raise KeyError("not a test RSA key")


# When not None, missing bodies are made with fresh randomness and collected here.
_MISSING_RSA_BODIES: dict[tuple[str, str], str] | None = None


def precomputed_oaep(recipient: RSAPublicKey, plaintext: bytes) -> bytes:
    """ref.OaepEncrypt from RSA_OAEP_BODIES, checked by decrypting with the test key."""
    name = _rsa_name(recipient)
    entry = (name, plaintext.hex())
    if entry in RSA_OAEP_BODIES:
        body = bytes.fromhex(RSA_OAEP_BODIES[entry])
    elif _MISSING_RSA_BODIES is not None:
        body = ref.oaep_encrypt_randomized(recipient, plaintext)
        _MISSING_RSA_BODIES[entry] = body.hex()
    else:
        raise KeyError(f"no RSA-OAEP body for {entry}: run generate.py --print-missing-rsa-bodies")
    assert RSA_KEYS[name][0].decrypt(body, ref.oaep_padding()) == plaintext, entry
    return body


# --- Attack tools: GHASH over GF(2^128) (NIST SP 800-38D) -----------------------------------
#
# A GCM tag is E_K(J0) xor GHASH_H(A, C) with H = E_K(0^128), J0 = nonce || 0^31 || 1 for a
# 12-byte nonce, and GHASH_H(A, C) = sum of b_i * H^(N - i + 1) over the N blocks b_1..b_N of
# pad(A) || pad(C) || u64be(8 len(A)) || u64be(8 len(C)). The sum is linear in each block, so
# whoever knows K can set one full block so that the tag takes any value: b_i = (tag xor
# E_K(J0) xor the sum without b_i) * H^-(N - i + 1).

GF_R = 0xE1 << 120  # x^128 = x^7 + x^2 + x + 1, in GCM's reflected bit order


def gf_mul(x: int, y: int) -> int:
    """Product in GF(2^128), blocks as big-endian integers (SP 800-38D, Algorithm 1)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ GF_R if v & 1 else v >> 1
    return z


GF_ONE = 1 << 127  # the polynomial 1 in GCM's bit order


def gf_pow(x: int, n: int) -> int:
    result = GF_ONE
    while n:
        if n & 1:
            result = gf_mul(result, x)
        x = gf_mul(x, x)
        n >>= 1
    return result


def gf_inv(x: int) -> int:
    assert x != 0
    return gf_pow(x, 2**128 - 2)


def aes_block(key: bytes, block: bytes) -> bytes:
    """AES-256 of one block (E_K)."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def _blocks(data: bytes) -> list[int]:
    padded = data + bytes(-len(data) % 16)
    return [int.from_bytes(padded[i : i + 16], "big") for i in range(0, len(padded), 16)]


def ghash_blocks(aad: bytes, ct: bytes) -> list[int]:
    return _blocks(aad) + _blocks(ct) + [((8 * len(aad)) << 64) | (8 * len(ct))]


def gcm_parts(key: bytes, nonce: bytes) -> tuple[int, int]:
    """(H, E_K(J0)) for a 12-byte nonce."""
    h = int.from_bytes(aes_block(key, bytes(16)), "big")
    ej0 = int.from_bytes(aes_block(key, nonce + b"\x00\x00\x00\x01"), "big")
    return h, ej0


def ghash(h: int, blocks: list[int]) -> int:
    acc = 0
    for b in blocks:
        acc = gf_mul(acc ^ b, h)
    return acc


def gcm_tag(key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    h, ej0 = gcm_parts(key, nonce)
    return (ej0 ^ ghash(h, ghash_blocks(aad, ct))).to_bytes(16, "big")


def gcm_ctr(key: bytes, nonce: bytes, data: bytes) -> bytes:
    """GCM's encryption (CTR from J0 + 1): the same operation encrypts and decrypts."""
    counter = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).encryptor()
    return counter.update(data) + counter.finalize()


def solve_block(
    key: bytes, nonce: bytes, aad: bytes, ct: bytes, target: bytes, in_aad: bool, index: int
) -> bytes:
    """Return aad (in_aad) or ct with its full 16-byte block ``index`` replaced so that the GCM
    tag of (aad, ct) under key and nonce equals ``target``."""
    part = aad if in_aad else ct
    assert 16 * (index + 1) <= len(part), "the unknown must be a full block"
    h, ej0 = gcm_parts(key, nonce)
    zeroed = part[: 16 * index] + bytes(16) + part[16 * (index + 1) :]
    blocks = ghash_blocks(zeroed, ct) if in_aad else ghash_blocks(aad, zeroed)
    position = index if in_aad else len(_blocks(aad)) + index  # 0-based among the N blocks
    power = len(blocks) - position  # b_position is multiplied by H^power
    rest = ghash(h, blocks)
    value = gf_mul(int.from_bytes(target, "big") ^ ej0 ^ rest, gf_pow(gf_inv(h), power))
    solved = part[: 16 * index] + value.to_bytes(16, "big") + part[16 * (index + 1) :]
    check_aad, check_ct = (solved, ct) if in_aad else (aad, solved)
    assert gcm_tag(key, nonce, check_aad, check_ct) == target
    return solved


def _check_gcm_tools() -> None:
    """The GHASH code above agrees with AES-GCM as cryptography computes it."""
    key, nonce = fill("gcm_check/key", 32), fill("gcm_check/nonce", 12)
    aad, plain = fill("gcm_check/aad", 37), fill("gcm_check/plain", 70)
    sealed = AESGCM(key).encrypt(nonce, plain, aad)
    assert gcm_ctr(key, nonce, plain) == sealed[:-16]
    assert gcm_tag(key, nonce, aad, sealed[:-16]) == sealed[-16:]
    h = fill("gcm_check/h", 16)
    assert gf_mul(int.from_bytes(h, "big"), gf_inv(int.from_bytes(h, "big"))) == GF_ONE


_check_gcm_tools()


def two_key_gcm_body(key_a: bytes, key_b: bytes, first_block: bytes) -> bytes:
    """32 bytes of ciphertext and a tag (48 bytes) that AES-GCM-Open accepts under both keys
    (12 zero bytes of nonce, no aad): the multi-key collision that makes AES-GCM alone not
    key-committing. With blocks c1 (given) and c2, tag_k = E_k(J0) + c1 H_k^3 + c2 H_k^2 +
    L H_k; equating the two tags gives c2."""
    (ha, ea), (hb, eb) = gcm_parts(key_a, ref.WRAP_NONCE), gcm_parts(key_b, ref.WRAP_NONCE)
    c1 = int.from_bytes(first_block, "big")
    length = 256  # 0 bits of aad, 256 bits of ciphertext
    rhs = ea ^ eb ^ gf_mul(c1, gf_pow(ha, 3) ^ gf_pow(hb, 3)) ^ gf_mul(length, ha ^ hb)
    c2 = gf_mul(rhs, gf_inv(gf_mul(ha, ha) ^ gf_mul(hb, hb)))
    ct = first_block + c2.to_bytes(16, "big")
    tag = gcm_tag(key_a, ref.WRAP_NONCE, b"", ct)
    assert tag == gcm_tag(key_b, ref.WRAP_NONCE, b"", ct)
    for key in (key_a, key_b):
        AESGCM(key).decrypt(ref.WRAP_NONCE, ct + tag, b"")  # opens under both
    return ct + tag


FLOATS = [0.0, -0.0, 1.0, -2.5, 0.1, 3.140625, 1e-3, float("inf"), float("nan"), -7.75]


def tensor_bytes(dtype: str, shape: tuple[int, ...], label: str) -> bytes:
    """Plaintext for a tensor: readable values for float types, random bytes otherwise."""
    count = math.prod(shape)
    values = [FLOATS[i % len(FLOATS)] + (i // len(FLOATS)) * 0.25 for i in range(count)]
    if dtype == "BOOL":
        return bytes(b & 1 for b in fill(label, count))
    if dtype == "F16":
        return b"".join(struct.pack("<e", v) for v in values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)  # upper half of the F32
    if dtype == "F32":
        return b"".join(struct.pack("<f", v) for v in values)
    if dtype == "F64":
        return b"".join(struct.pack("<d", v) for v in values)
    return fill(label, count * ref.DTYPE_SIZES[dtype])


def t(
    name: str, dtype: str, shape: tuple[int, ...], encrypted: bool = True, label: str = ""
) -> ref.TensorSpec:
    """A tensor spec with generated contents."""
    return (name, dtype, shape, tensor_bytes(dtype, shape, label or name), encrypted)


# --- Vectors --------------------------------------------------------------------------------


@dataclass
class Vector:
    expect: str
    comment: str
    file: bytes
    key: bytes | None = KEY_A
    passphrase: str | None = None
    identity: ref.Identity | None = None
    verify_key: Ed25519PublicKey | None = None
    max_scrypt_log_n: int | None = None  # None: the reader's default policy (18)
    tensors: list[ref.TensorSpec] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The package API takes a raw key or an identity in the same argument.
        if self.identity is not None:
            self.key = None


VECTORS: dict[str, Callable[[], Vector]] = {}


def vector(fn: Callable[[], Vector]) -> Callable[[], Vector]:
    assert fn.__name__ not in VECTORS
    # Test ids select the implementation under test with -k "rust": keep it out of names.
    assert "rust" not in fn.__name__
    VECTORS[fn.__name__] = fn
    return fn


def make(
    label: str,
    tensors: list[ref.TensorSpec],
    metadata: dict[str, str] | None = None,
    *,
    keys: tuple[bytes, ...] = (KEY_A,),
    passphrase: str | None = None,
    recipients: tuple[ref.Recipient, ...] = (),
    chunk_size: int = CHUNK,
    chunk_digest: bool = False,
    log_n: int = LOG_N,
) -> ref.Draft:
    """A canonical draft whose randomness is a function of the label. ``chunk_digest``: the
    header has "chunk_digest": "BLAKE3" and the draft a digest table (needed to sign)."""
    return ref.draft(
        tensors,
        metadata={} if metadata is None else metadata,
        chunk_size=chunk_size,
        chunk_digest=chunk_digest,
        keys=() if passphrase is not None else keys,
        passphrase=passphrase,
        recipients=recipients,
        log_n=log_n,
        rng=CounterRandom(label),
        oaep_encrypt=precomputed_oaep,
    )


def finish(d: ref.Draft, **kwargs: Any) -> bytes:
    """ref.finish: canonical stanza area length and data_offset unless overridden."""
    return ref.finish(d, **kwargs)


def header_text(d: ref.Draft) -> str:
    return ref.canonical_header_bytes(d.header).decode("utf-8")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)


def with_header(d: ref.Draft, old: str, new: str, **kwargs: Any) -> bytes:
    """The file with one edit of the canonical header text; the MAC covers the edited text."""
    edited = replace_once(header_text(d), old, new)
    return finish(d, header_bytes=edited.encode("utf-8"), **kwargs)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@dataclass(frozen=True)
class Layout:
    """Positions in a finished file, read from its preamble."""

    stanza_area_len: int
    header_len: int
    data_offset: int

    @property
    def header_start(self) -> int:
        return ref.PREAMBLE_LEN + self.stanza_area_len

    @property
    def mac_start(self) -> int:
        return self.header_start + self.header_len

    @property
    def tags_start(self) -> int:
        return self.mac_start + ref.MAC_LEN


def layout(data: bytes) -> Layout:
    stanza_area_len, header_len, _reserved, data_offset = struct.unpack_from("<IIIQ", data, 12)
    return Layout(stanza_area_len, header_len, data_offset)


def area_len_of(d: ref.Draft, signed: bool = False) -> int:
    """The canonical stanza_area_len of the file finish(d) would write."""
    content = len(ref.stanza_area_json(d.stanzas, bytes(ref.SIGNATURE_LEN) if signed else None))
    return ref.canonical_stanza_area_len(content)


def tables_end_of(d: ref.Draft, header: bytes, signed: bool = False) -> int:
    """tables_end (the end of the tag table, or of the digest table if there is one) of the
    file finish(d, header_bytes=header) would write."""
    return (
        ref.PREAMBLE_LEN
        + area_len_of(d, signed)
        + len(header)
        + ref.MAC_LEN
        + len(d.tag_table)
        + len(d.digest_table)
    )


# --- Editing the stanza area of a finished file (it is covered by neither MAC nor signature) --


def area_of(data: bytes) -> bytes:
    lay = layout(data)
    return data[ref.PREAMBLE_LEN : lay.header_start]


def with_area(data: bytes, area: bytes) -> bytes:
    """The file with its stanza area replaced by ``area`` of the same length."""
    lay = layout(data)
    assert len(area) == lay.stanza_area_len, (len(area), lay.stanza_area_len)
    return data[: ref.PREAMBLE_LEN] + area + data[lay.header_start :]


def edit_area(data: bytes, edit: Callable[[str], str]) -> bytes:
    """The file with its stanza area JSON text edited and re-padded with spaces in place."""
    area = area_of(data)
    text = edit(area.decode("utf-8").rstrip(" ")).encode("utf-8")
    assert len(text) <= len(area), "edit does not fit in the stanza area: give more room"
    return with_area(data, text.ljust(len(area), b" "))


def replace_in_area(data: bytes, old: str, new: str) -> bytes:
    return edit_area(data, lambda text: replace_once(text, old, new))


def rebuild_with_area(data: bytes, text: bytes, area_len: int | None = None) -> bytes:
    """The file with its stanza area replaced by ``text`` padded to ``area_len`` (by default
    the canonical length for ``text``), everything after it moved as re-keying does: header,
    MAC and tables copied, data at align(tables_end, 4096)."""
    lay = layout(data)
    area_len = ref.canonical_stanza_area_len(len(text)) if area_len is None else area_len
    assert len(text) <= area_len
    tables = data[lay.header_start : tables_end_in(data)]
    tables_end = ref.PREAMBLE_LEN + area_len + len(tables)
    data_offset = ref.align(tables_end, ref.PAGE_SIZE)
    preamble = data[:12] + ref.u32le(area_len) + data[16:24] + ref.u64le(data_offset)
    return (
        preamble
        + text.ljust(area_len, b" ")
        + tables
        + bytes(data_offset - tables_end)
        + data[lay.data_offset :]
    )


def tables_end_in(data: bytes) -> int:
    """tables_end of a well-formed file: the end of its tag table or digest table."""
    p = ref._parse(data)
    return layout(data).tags_start + len(p.tag_table) + len(p.digest_table)


def area_json(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(area_of(data))
    return value


def stored(d: ref.Draft, i: int) -> bytes:
    """The stored (encrypted or clear) bytes of tensor i of a canonical draft."""
    begin, end = d.header["tensors"][i]["offsets"]
    return bytes(d.data[begin:end])


def small() -> list[ref.TensorSpec]:
    """The small file most failure vectors start from."""
    return [
        t("w", "F32", (2, 3)),
        t("b", "F32", (3,)),
        t("ids", "I64", (4,), encrypted=False),
    ]


SMALL_META = {"format": "pt", "epoch": "7"}


def ok(
    comment: str,
    d_or_file: ref.Draft | bytes,
    tensors: list[ref.TensorSpec],
    metadata: dict[str, str],
    **kwargs: Any,
) -> Vector:
    file = finish(d_or_file) if isinstance(d_or_file, ref.Draft) else d_or_file
    return Vector("success", comment, file, tensors=tensors, metadata=metadata, **kwargs)


def fail(expect: str, comment: str, file: bytes, **kwargs: Any) -> Vector:
    return Vector(expect, comment, file, **kwargs)


def small_fail(label: str, expect: str, comment: str, edit: Callable[[ref.Draft], bytes]) -> Vector:
    """A failure vector made by editing the small file."""
    return fail(expect, comment, edit(make(label, small(), SMALL_META)))


# ---- success: dtypes ----

ALL_DTYPE_SHAPES: dict[str, tuple[int, ...]] = {
    "BOOL": (7,),
    "U8": (3, 5),
    "I8": (9,),
    "F8_E4M3": (2, 8),
    "F8_E5M2": (16,),
    "I16": (5,),
    "U16": (2, 3),
    "F16": (11,),
    "BF16": (3, 4),
    "I32": (6,),
    "U32": (1, 7),
    "F32": (2, 2, 2),
    "I64": (3,),
    "U64": (2, 2),
    "F64": (5,),
}


@vector
def dtype_all() -> Vector:
    tensors = [t(f"t_{dt.lower()}", dt, shape) for dt, shape in ALL_DTYPE_SHAPES.items()]
    meta = {"format": "pt", "note": "one tensor of each of the 15 dtypes"}
    d = make("dtype_all", tensors, meta)
    return ok(
        "One tensor of every dtype, encrypted, key stanza.",
        finish(d),
        tensors,
        meta,
    )


def _single(name: str, dtype: str, shape: tuple[int, ...], comment: str) -> Vector:
    tensors = [t("x", dtype, shape, label=name)]
    return ok(comment, make(name, tensors), tensors, {})


@vector
def dtype_bf16_matrix() -> Vector:
    return _single("dtype_bf16_matrix", "BF16", (4, 3), "A single BF16 matrix.")


@vector
def dtype_f8_e4m3_vector() -> Vector:
    return _single("dtype_f8_e4m3_vector", "F8_E4M3", (32,), "A single F8_E4M3 vector.")


@vector
def dtype_f8_e5m2_vector() -> Vector:
    return _single("dtype_f8_e5m2_vector", "F8_E5M2", (32,), "A single F8_E5M2 vector.")


@vector
def dtype_f64_plaintext() -> Vector:
    tensors = [t("x", "F64", (3, 3), encrypted=False, label="dtype_f64_plaintext")]
    return ok("A single unencrypted F64 matrix.", make("dtype_f64_plaintext", tensors), tensors, {})


@vector
def dtype_bool_noncanonical() -> Vector:
    tensors: list[ref.TensorSpec] = [("flags", "BOOL", (6,), b"\x00\x01\x02\x7f\x80\xff", True)]
    return ok(
        "BOOL bytes other than 0x00/0x01 are not checked: a reader returns them unchanged.",
        make("dtype_bool_noncanonical", tensors),
        tensors,
        {},
    )


# ---- success: shapes ----


@vector
def shape_scalars() -> Vector:
    tensors = [
        t("s_f32", "F32", ()),
        t("s_i64", "I64", (), encrypted=False),
        t("s_bool", "BOOL", ()),
        t("s_bf16", "BF16", ()),
        t("s_u8", "U8", ()),
    ]
    meta = {"kind": "scalars"}
    return ok(
        "0-d scalars (shape []), one element each.", make("shape_scalars", tensors, meta), tensors, meta
    )


@vector
def shape_empty_tensors() -> Vector:
    tensors = [
        t("empty0", "F32", (0,)),
        t("a", "U8", (5,)),
        t("empty1", "I64", (3, 0)),
        t("empty2", "F16", (0, 7), encrypted=False),
        t("b", "F64", (2,)),
        t("empty3", "BF16", (2, 0, 4)),
    ]
    return ok(
        "Zero-element tensors (one empty chunk each, encrypted and not) between others.",
        make("shape_empty_tensors", tensors),
        tensors,
        {},
    )


@vector
def shape_64_dims() -> Vector:
    shape = (1,) * 62 + (2, 3)
    tensors = [t("deep", "F32", shape)]
    return ok("A tensor with the maximum of 64 dimensions.", make("shape_64_dims", tensors), tensors, {})


@vector
def file_no_tensors() -> Vector:
    meta = {"note": "no tensors"}
    d = make("file_no_tensors", [], meta)
    return ok("Zero tensors: the file ends at data_offset.", d, [], meta)


@vector
def file_no_tensors_no_metadata() -> Vector:
    d = make("file_no_tensors_no_metadata", [], {})
    return ok("Zero tensors and empty metadata.", finish(d), [], {})


# ---- success: chunks ----


@vector
def chunks_partial_last() -> Vector:
    tensors = [t("x", "U8", (10000,))]
    return ok(
        "chunk_size 4096, 10000 bytes: chunks of 4096, 4096 and 1808 bytes.",
        make("chunks_partial_last", tensors),
        tensors,
        {},
    )


@vector
def chunks_exact_multiple() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "I32", (2, 1024), fill("chunks_exact_multiple", 8192), True)]
    return ok(
        "chunk_size 4096, 8192 bytes: exactly two full chunks, the second one last.",
        make("chunks_exact_multiple", tensors),
        tensors,
        {},
    )


@vector
def chunks_exactly_one() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "U8", (4096,), fill("chunks_exactly_one", 4096), True)]
    return ok(
        "Exactly one full chunk (it carries the last-chunk flag).",
        make("chunks_exactly_one", tensors),
        tensors,
        {},
    )


@vector
def chunks_several_tensors() -> Vector:
    tensors: list[ref.TensorSpec] = [
        ("a", "U8", (9000,), fill("cst/a", 9000), True),
        ("b", "U16", (4096,), fill("cst/b", 8192), False),
        ("c", "U8", (1,), fill("cst/c", 1), True),
        ("d", "I32", (3000,), fill("cst/d", 12000), False),
        ("e", "U64", (1100,), fill("cst/e", 8800), True),
    ]
    return ok(
        "Several multi-chunk tensors, encrypted and not: tag table indexes run across tensors.",
        finish(make("chunks_several_tensors", tensors)),
        tensors,
        {},
    )


@vector
def chunks_size_16k() -> Vector:
    tensors: list[ref.TensorSpec] = [("x", "U8", (40000,), fill("chunks_size_16k", 40000), True)]
    return ok(
        "chunk_size 16384 (a larger power of two): chunks of 16384, 16384, 7232.",
        make("chunks_size_16k", tensors, chunk_size=16384),
        tensors,
        {},
    )


# ---- success: selective encryption ----


@vector
def selective_mixed() -> Vector:
    tensors: list[ref.TensorSpec] = [
        t("enc0", "F32", (4, 4)),
        t("clear0", "F32", (4, 4), encrypted=False),
        ("clear_big", "U8", (9000,), fill("selective_mixed/big", 9000), False),
        t("enc1", "I16", (10,)),
    ]
    return ok(
        "encrypted:false tensors are stored in the clear and authenticated with GMAC.",
        make("selective_mixed", tensors, {"policy": "partial"}),
        tensors,
        {"policy": "partial"},
    )


@vector
def selective_all_plaintext() -> Vector:
    tensors = [t("a", "F32", (3,), encrypted=False), t("b", "U8", (0,), encrypted=False)]
    return ok(
        "Every tensor unencrypted (including an empty one).",
        make("selective_all_plaintext", tensors),
        tensors,
        {},
    )


# ---- success: stanzas ----


@vector
def stanza_second_key_opens() -> Vector:
    tensors = small()
    d = make("stanza_second_key_opens", tensors, SMALL_META, keys=(KEY_B, KEY_A))
    return ok("Two key stanzas; the reader's key opens the second one.", d, tensors, SMALL_META)


@vector
def stanza_third_of_three() -> Vector:
    tensors = small()
    d = make("stanza_third_of_three", tensors, SMALL_META, keys=(KEY_WRONG, KEY_B, KEY_A))
    return ok("Three key stanzas; the reader's key opens the last one.", d, tensors, SMALL_META)


@vector
def stanza_unknown_type_ignored() -> Vector:
    tensors = small()
    d = make("stanza_unknown_type_ignored", tensors, SMALL_META)
    unknown = {
        "type": "future-kem",
        "share": fill("x25519", 32).hex(),
        "body": fill("x25519body", 48).hex(),
        "epoch": 2**53 - 1,
    }
    d.stanzas.insert(0, unknown)
    return ok(
        "An unknown stanza type (before the key stanza) is ignored; its integer member is "
        "2^53 - 1, the largest allowed.",
        d,
        tensors,
        SMALL_META,
    )


@vector
def stanza_unknown_at_limits() -> Vector:
    tensors = small()
    d = make("stanza_unknown_at_limits", tensors, SMALL_META)
    unknown: dict[str, Any] = {"type": "future"}
    for i in range(14):
        unknown[f"m{i:02d}"] = i
    unknown["long"] = "a" * (16384 - 56)
    assert len(unknown) == 16 and unknown_string_bytes(unknown) == 16384
    d.stanzas.append(unknown)
    return ok(
        "An unknown stanza with exactly 16 members (type included) whose strings (member names "
        "and string values, type included) total exactly 16,384 bytes: the budget for unknown "
        "stanzas, reached but not exceeded.",
        d,
        tensors,
        SMALL_META,
    )


def unknown_string_bytes(*stanzas: dict[str, Any]) -> int:
    """What an unknown stanza costs of the 16,384-byte budget: UTF-8 bytes of member names and
    string values (after unescaping), type included."""
    return sum(
        len(m.encode()) + (len(v.encode()) if isinstance(v, str) else 0)
        for s in stanzas
        for m, v in s.items()
    )


@vector
def stanza_unknown_budget_exceeded() -> Vector:
    d = make("stanza_unknown_budget_exceeded", small(), SMALL_META)
    first = {"type": "future", "a": "x" * 8000}
    second = {"type": "future", "b": "y" * 8363}
    assert unknown_string_bytes(first, second) == 16385
    d.stanzas += [first, second]
    return fail(
        "format failure",
        "Two unknown stanzas, each within the per-string and per-stanza limits, whose strings "
        "total 16,385 bytes: one more than the budget for all unknown stanzas together.",
        finish(d),
    )


@vector
def stanza_unknown_budget_escaped_at_limit() -> Vector:
    tensors = small()
    d = make("stanza_unknown_budget_escaped_at_limit", tensors, SMALL_META)
    unknown = {"type": "future", "note": "\u00e9" * 8185}
    assert unknown_string_bytes(unknown) == 16384
    d.stanzas.append(unknown)
    text = json.dumps({"stanzas": d.stanzas}, separators=(",", ":"), ensure_ascii=True).encode()
    assert text.count(b"\\u00e9") == 8185 and len(text) > 3 * 16384
    return ok(
        "An unknown stanza whose string value is written with \\u00e9 escapes: 49,110 bytes of "
        "JSON text but 16,370 UTF-8 bytes after unescaping, so its strings total exactly 16,384 "
        "bytes, within the budget (limits count unescaped UTF-8 bytes). The stanza area spans "
        "several pages.",
        rebuild_with_area(finish(d), text),
        tensors,
        SMALL_META,
    )


@vector
def stanza_unknown_budget_utf8_over() -> Vector:
    d = make("stanza_unknown_budget_utf8_over", small(), SMALL_META)
    unknown = {"type": "future", "note": "\u00e9" * 8186}
    assert unknown_string_bytes(unknown) == 16386 and len(unknown["type"] + unknown["note"]) + 8 < 16384
    d.stanzas.append(unknown)
    return fail(
        "format failure",
        "An unknown stanza with 8,186 characters 'é' written as raw UTF-8: 16,372 bytes, so its "
        "strings total 16,386 bytes, over the budget (a reader counting characters instead of "
        "UTF-8 bytes would accept it).",
        finish(d),
    )


@vector
def passphrase_success() -> Vector:
    tensors = small()
    d = make("passphrase_success", tensors, SMALL_META, passphrase=PASSPHRASE)
    return ok("A single scrypt stanza (log_n 10).", d, tensors, SMALL_META, key=None, passphrase=PASSPHRASE)


@vector
def passphrase_unicode() -> Vector:
    passphrase = "pässwörd \U0001f511 ключ"
    tensors = small()
    d = make("passphrase_unicode", tensors, SMALL_META, passphrase=passphrase)
    return ok(
        "A non-ASCII passphrase: scrypt takes its UTF-8 bytes.",
        d,
        tensors,
        SMALL_META,
        key=None,
        passphrase=passphrase,
    )


# ---- success: header text ----


UNICODE_META = {"描述": "模型权重", "emoji": "\U0001f9ea", "empty": "", "": "empty name"}


def _unicode_tensors() -> list[ref.TensorSpec]:
    return [t("層.0.weight", "F32", (2, 2)), t("ε", "F16", (3,)), t("\U0001f600", "U8", (1,))]


@vector
def header_unicode() -> Vector:
    tensors = _unicode_tensors()
    d = make("header_unicode", tensors, UNICODE_META)
    return ok("Non-ASCII tensor names and metadata, written as raw UTF-8.", d, tensors, UNICODE_META)


@vector
def header_unicode_escapes() -> Vector:
    tensors = _unicode_tensors()
    d = make("header_unicode_escapes", tensors, UNICODE_META)
    text = json.dumps(d.header, separators=(",", ":"), ensure_ascii=True)
    assert "\\ud83d\\ude00" in text  # a surrogate pair escape for U+1F600
    return ok(
        "Same names as header_unicode written with \\u escapes (surrogate pairs included): "
        "tensor keys use the decoded name.",
        finish(d, header_bytes=text.encode()),
        tensors,
        UNICODE_META,
    )


@vector
def header_whitespace() -> Vector:
    tensors = small()
    d = make("header_whitespace", tensors, SMALL_META)
    text = json.dumps(d.header, indent="\t", separators=(" ,\r\n", " : "))
    return ok(
        "JSON whitespace (tab, CR, LF, space) between tokens is allowed.",
        finish(d, header_bytes=text.encode()),
        tensors,
        SMALL_META,
    )


@vector
def header_trailing_spaces() -> Vector:
    tensors = small()
    d = make("header_trailing_spaces", tensors, SMALL_META)
    text = header_text(d) + " " * 100
    return ok(
        "ASCII spaces after the header object are allowed.",
        finish(d, header_bytes=text.encode()),
        tensors,
        SMALL_META,
    )


@vector
def name_max_length() -> Vector:
    name = "n" * 4093 + "é" + "x"  # 4096 UTF-8 bytes
    tensors = [t(name, "F32", (2,))]
    return ok("A tensor name of exactly 4096 UTF-8 bytes.", make("name_max_length", tensors), tensors, {})


# ---- success: layout ----


def _spaces_to_align_tables_end(d: ref.Draft, extra: int = 0, signed: bool = False) -> bytes:
    """The header padded with spaces so that tables_end is a multiple of 4096 plus ``extra``."""
    text = header_text(d).encode()
    fixed = tables_end_of(d, b"", signed)
    return text + b" " * ((extra - (fixed + len(text))) % ref.PAGE_SIZE)


@vector
def layout_data_offset_minimal() -> Vector:
    tensors = small()
    d = make("layout_data_offset_minimal", tensors, SMALL_META)
    header = _spaces_to_align_tables_end(d)
    tables_end = tables_end_of(d, header)
    assert tables_end % ref.PAGE_SIZE == 0
    return ok(
        "The header padded with trailing spaces so that tables_end is a multiple of 4096: "
        "data_offset = align(tables_end, 4096) = tables_end (no padding before the data).",
        finish(d, header_bytes=header),
        tensors,
        SMALL_META,
    )


@vector
def layout_data_offset_slack() -> Vector:
    d = make("layout_data_offset_slack", small(), SMALL_META)
    tables_end = tables_end_of(d, header_text(d).encode())
    data_offset = ref.align(tables_end, ref.PAGE_SIZE) + ref.PAGE_SIZE
    return fail(
        "format failure",
        "data_offset a multiple of 4096 but one page after align(tables_end, 4096), with zero "
        "padding up to it (MAC valid): data_offset must be exactly align(tables_end, 4096).",
        finish(d, data_offset=data_offset),
    )


# ---- no match ----


@vector
def key_wrong() -> Vector:
    d = make("key_wrong", small(), SMALL_META)
    return fail("no match", "The reader's key opens no stanza.", finish(d), key=KEY_WRONG)


@vector
def passphrase_wrong() -> Vector:
    d = make("passphrase_wrong", small(), SMALL_META, passphrase=PASSPHRASE)
    return fail("no match", "Wrong passphrase.", finish(d), key=None, passphrase=PASSPHRASE_WRONG)


@vector
def key_for_passphrase_file() -> Vector:
    d = make("key_for_passphrase_file", small(), SMALL_META, passphrase=PASSPHRASE)
    return fail("no match", "A key is given but the file has only an scrypt stanza.", finish(d), key=KEY_A)


@vector
def passphrase_for_key_file() -> Vector:
    d = make("passphrase_for_key_file", small(), SMALL_META)
    return fail(
        "no match",
        "A passphrase is given but the file has only key stanzas.",
        finish(d),
        key=None,
        passphrase=PASSPHRASE,
    )


@vector
def key_only_unknown_stanzas() -> Vector:
    d = make("key_only_unknown_stanzas", small(), SMALL_META)
    d.stanzas = [{"type": "future-kem", "share": fill("share", 32).hex()}]
    return fail("no match", "The only stanza is of an unknown type.", finish(d))


@vector
def stanza_body_tampered() -> Vector:
    d = make("stanza_body_tampered", small(), SMALL_META)
    data = finish(d)
    body = d.stanzas[0]["body"]
    flipped = ("1" if body[0] == "0" else "0") + body[1:]
    return fail(
        "no match",
        "One bit of the key stanza body's commitment (its first byte) flipped in the stored "
        "stanza area: the commitment no longer matches, so the stanza does not open, which is "
        "reported before any MAC check.",
        replace_in_area(data, body, flipped),
    )


@vector
def stanza_body_seal_tampered() -> Vector:
    d = make("stanza_body_seal_tampered", small(), SMALL_META)
    data = finish(d)
    body = d.stanzas[0]["body"]
    i = 2 * ref.COMMITMENT_LEN + 5  # a hex digit of the AES-GCM ciphertext, after the commitment
    flipped = body[:i] + ("1" if body[i] == "0" else "0") + body[i + 1 :]
    return fail(
        "no match",
        "One bit of the AES-GCM part of the key stanza body (after the 32-byte commitment) "
        "flipped: the commitment matches but AES-GCM-Open fails, so the stanza does not open.",
        replace_in_area(data, body, flipped),
    )


@vector
def stanza_body_48_bytes() -> Vector:
    d = make("stanza_body_48_bytes", small(), SMALL_META)
    salt = bytes.fromhex(d.stanzas[0]["salt"])
    wrap_key = ref.hkdf(KEY_A, salt, ref.KEY_INFO)
    d.stanzas[0]["body"] = AESGCM(wrap_key).encrypt(ref.WRAP_NONCE, d.file_key, b"").hex()
    return fail(
        "format failure",
        "A key stanza whose body is a 48-byte AES-GCM wrap of the file key under the wrap key "
        "itself, without a commitment (an earlier draft of the format): a body is exactly 80 bytes.",
        finish(d),
    )


@vector
def stanza_commitment_other_key() -> Vector:
    d = make("stanza_commitment_other_key", small(), SMALL_META)
    salt = bytes.fromhex(d.stanzas[0]["salt"])
    wrap_a, wrap_b = ref.hkdf(KEY_A, salt, ref.KEY_INFO), ref.hkdf(KEY_B, salt, ref.KEY_INFO)
    sealed_for_b = AESGCM(ref.stanza_seal_key(wrap_b)).encrypt(ref.WRAP_NONCE, d.file_key, b"")
    d.stanzas[0]["body"] = (ref.stanza_commitment(wrap_a) + sealed_for_b).hex()
    return fail(
        "no match",
        "The key stanza's commitment is that of key A's wrap key, but its AES-GCM part wraps the "
        "real file key under key B's seal key; read with key B. The commitment does not match, "
        "so the stanza does not open: a reader that skips the commitment check gets success.",
        finish(d),
        key=KEY_B,
    )


def _multi_key_file() -> tuple[ref.Draft, bytes]:
    """A file whose first stanza's AES-GCM part opens under the seal keys of both key A and
    key B (for that stanza's salt), with the commitment of a third key; the second stanza is
    a genuine key stanza for key A."""
    d = make("stanza_multi_key_body", small(), SMALL_META)
    rng = CounterRandom("stanza_multi_key_body/crafted")
    salt = rng(16)
    seal_a = ref.stanza_seal_key(ref.hkdf(KEY_A, salt, ref.KEY_INFO))
    seal_b = ref.stanza_seal_key(ref.hkdf(KEY_B, salt, ref.KEY_INFO))
    commitment = ref.stanza_commitment(ref.hkdf(KEY_WRONG, salt, ref.KEY_INFO))
    body = commitment + two_key_gcm_body(seal_a, seal_b, rng(16))
    d.stanzas.insert(0, {"type": "key", "salt": salt.hex(), "body": body.hex()})
    return d, finish(d)


MULTI_KEY_COMMENT = (
    "The first key stanza's AES-GCM part (ciphertext and tag) was solved over GF(2^128) so that "
    "it opens under the seal keys of both key A and key B; its commitment is that of a third "
    "key. The second stanza is a genuine key stanza for key A. "
)


@vector
def stanza_multi_key_body_second_key() -> Vector:
    _, data = _multi_key_file()
    return fail(
        "no match",
        MULTI_KEY_COMMENT + "Read with key B: the crafted stanza's commitment does not match and "
        "the genuine stanza is not B's, so nothing opens (a reader without the commitment check "
        "opens the crafted stanza to a wrong file key: header failure, a partitioning oracle).",
        data,
        key=KEY_B,
    )


@vector
def stanza_multi_key_body_real_key() -> Vector:
    _, data = _multi_key_file()
    return ok(
        MULTI_KEY_COMMENT + "Read with key A: the crafted stanza does not open (commitment), the "
        "genuine one does (a reader without the commitment check stops at the crafted stanza: "
        "header failure).",
        data,
        small(),
        SMALL_META,
        key=KEY_A,
    )


@vector
def order_no_match_before_header() -> Vector:
    d = make("order_no_match_before_header", small(), SMALL_META)
    data = finish(d)
    return fail(
        "no match",
        "Wrong key and a flipped MAC byte: no match comes first.",
        flip(data, layout(data).mac_start),
        key=KEY_WRONG,
    )


# ---- header failure ----


@vector
def mac_flipped() -> Vector:
    d = make("mac_flipped", small(), SMALL_META)
    data = finish(d)
    return fail(
        "header failure", "One bit of the header MAC flipped.", flip(data, layout(data).mac_start + 31, 0x80)
    )


@vector
def header_metadata_tampered() -> Vector:
    d = make("header_metadata_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"epoch":"7"'
    assert data.count(old) == 1
    return fail(
        "header failure",
        "A metadata value changed after the MAC (still valid JSON).",
        data.replace(old, b'"epoch":"8"'),
    )


@vector
def header_dtype_tampered() -> Vector:
    d = make("header_dtype_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"dtype":"I64"'
    assert data.count(old) == 1
    return fail(
        "header failure",
        "dtype I64 changed to U64 after the MAC (same size).",
        data.replace(old, b'"dtype":"U64"'),
    )


@vector
def header_shape_tampered() -> Vector:
    d = make("header_shape_tampered", small(), SMALL_META)
    data = finish(d)
    old = b'"shape":[2,3]'
    assert data.count(old) == 1
    return fail(
        "header failure", "shape [2,3] changed to [3,2] after the MAC.", data.replace(old, b'"shape":[3,2]')
    )


@vector
def header_space_appended() -> Vector:
    d = make("header_space_appended", small(), SMALL_META)
    original = finish(d)
    mac_start = layout(original).mac_start
    original_mac = original[mac_start : mac_start + ref.MAC_LEN]
    text = header_text(d) + " "
    return fail(
        "header failure",
        "A trailing space appended to the header (header_len + 1) with the old MAC.",
        finish(d, header_bytes=text.encode(), mac=original_mac),
    )


@vector
def preamble_data_offset_shifted() -> Vector:
    d = make("preamble_data_offset_shifted", small(), SMALL_META)
    data = finish(d)
    lay = layout(data)
    shifted = (
        data[:24]
        + struct.pack("<Q", lay.data_offset + ref.PAGE_SIZE)
        + data[32 : lay.data_offset]
        + bytes(ref.PAGE_SIZE)
        + data[lay.data_offset :]
    )
    return fail(
        "format failure",
        "data_offset moved by 4096 with 4096 more zero bytes in the stored file: every chunk "
        "would still verify (the preamble is not under the MAC), but data_offset must be exactly "
        "align(tables_end, 4096), so there is no room to move the data.",
        shifted,
    )


@vector
def tag_table_flipped() -> Vector:
    d = make("tag_table_flipped", small(), SMALL_META)
    data = finish(d)
    return fail(
        "header failure",
        "A tag byte flipped after the MAC: the MAC covers the tag table.",
        flip(data, layout(data).tags_start + 20),
    )


@vector
def tensors_swapped_with_tags() -> Vector:
    tensors = [t("p", "F32", (8,)), t("q", "F32", (8,))]
    d = make("tensors_swapped_with_tags", tensors)
    data = bytearray(finish(d))
    lay = layout(bytes(data))
    ts, do = lay.tags_start, lay.data_offset
    data[ts : ts + 16], data[ts + 16 : ts + 32] = data[ts + 16 : ts + 32], data[ts : ts + 16]
    data[do : do + 32], data[do + 64 : do + 96] = data[do + 64 : do + 96], data[do : do + 32]
    return fail(
        "header failure",
        "Two equal-size tensors: data and tag-table entries swapped after the MAC.",
        bytes(data),
    )


@vector
def stanza_transplanted() -> Vector:
    d = make("stanza_transplanted", small(), SMALL_META)
    rng = CounterRandom("stanza_transplanted/other")
    other_file_key = rng(32)
    d.stanzas = [ref.key_stanza(other_file_key, KEY_A, rng(16))]
    return fail(
        "header failure",
        "The stanza opens with the key but wraps another file key: the MAC, "
        "computed under the real file key, does not verify.",
        finish(d),
    )


@vector
def stanza_first_opening_wraps_other_key() -> Vector:
    d = make("stanza_first_opening_wraps_other_key", small(), SMALL_META)
    rng = CounterRandom("stanza_first_opening_wraps_other_key/other")
    decoy = ref.key_stanza(rng(32), KEY_A, rng(16))
    d.stanzas.insert(0, decoy)
    return fail(
        "header failure",
        "Two stanzas open with the key; the first wraps another file key, the second the real "
        "one. The first stanza that opens fixes the file key, so the MAC fails (stricter "
        "reading: a reader does not go on to try other stanzas after a MAC failure).",
        finish(d),
    )


@vector
def order_header_before_payload() -> Vector:
    d = make("order_header_before_payload", small(), SMALL_META)
    data = finish(d)
    lay = layout(data)
    return fail(
        "header failure",
        "A flipped MAC byte and a flipped ciphertext byte: header failure comes first.",
        flip(flip(data, lay.mac_start), lay.data_offset),
    )


# ---- payload failure ----


@vector
def chunk_ciphertext_flipped() -> Vector:
    d = make("chunk_ciphertext_flipped", [("x", "U8", (10000,), fill("ccf", 10000), True)])
    data = finish(d)
    return fail(
        "payload failure",
        "One ciphertext byte of the middle chunk flipped.",
        flip(data, layout(data).data_offset + 5000),
    )


@vector
def chunk_last_byte_flipped() -> Vector:
    d = make("chunk_last_byte_flipped", small(), SMALL_META)
    return fail(
        "payload failure",
        "The last byte of the file (last tensor, unencrypted) flipped.",
        flip(finish(d), -1),
    )


@vector
def chunk_tag_flipped_before_mac() -> Vector:
    d = make("chunk_tag_flipped_before_mac", small(), SMALL_META)
    d.tag_table[16 + 3] ^= 0x01  # tag of tensor "b"
    return fail(
        "payload failure",
        "A tag byte flipped before the MAC was computed: the MAC verifies, the chunk does not.",
        finish(d),
    )


@vector
def chunk_plaintext_flipped() -> Vector:
    d = make("chunk_plaintext_flipped", small(), SMALL_META)
    data = finish(d)
    ids_begin = d.header["tensors"][2]["offsets"][0]
    return fail(
        "payload failure",
        "A byte of an encrypted:false tensor flipped.",
        flip(data, layout(data).data_offset + ids_begin + 3),
    )


@vector
def chunk_empty_tag_flipped_before_mac() -> Vector:
    tensors = [t("a", "F32", (2,)), t("empty", "F32", (0,)), t("b", "F32", (2,))]
    d = make("chunk_empty_tag_flipped_before_mac", tensors)
    d.tag_table[16] ^= 0x01
    return fail(
        "payload failure",
        "The tag of a zero-byte tensor's empty chunk is wrong (MAC valid): empty chunks are verified too.",
        finish(d),
    )


def _swap_chunks(d: ref.Draft, tensor_index: int, j: int, k: int, chunk: int) -> None:
    """Swap chunks j and k (stored bytes and tags) of a single-tensor draft, in place."""
    assert tensor_index == 0
    dj, dk = d.data[j * chunk : (j + 1) * chunk], d.data[k * chunk : (k + 1) * chunk]
    d.data[j * chunk : (j + 1) * chunk], d.data[k * chunk : (k + 1) * chunk] = dk, dj
    tj, tk = d.tag_table[16 * j : 16 * j + 16], d.tag_table[16 * k : 16 * k + 16]
    d.tag_table[16 * j : 16 * j + 16], d.tag_table[16 * k : 16 * k + 16] = tk, tj


@vector
def chunks_swapped_within_tensor() -> Vector:
    d = make("chunks_swapped_within_tensor", [("x", "U8", (10000,), fill("cswt", 10000), True)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Chunks 0 and 1 swapped with their tags, MAC recomputed: only the nonce (chunk counter) catches it.",
        finish(d),
    )


@vector
def chunks_swapped_last() -> Vector:
    d = make("chunks_swapped_last", [("x", "U8", (8192,), fill("csl", 8192), True)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Two full chunks swapped with their tags (MAC recomputed); the last one moves.",
        finish(d),
    )


@vector
def chunks_swapped_plaintext() -> Vector:
    d = make("chunks_swapped_plaintext", [("x", "U8", (8192,), fill("csp", 8192), False)])
    _swap_chunks(d, 0, 0, 1, CHUNK)
    return fail(
        "payload failure",
        "Two chunks of an encrypted:false tensor swapped with their tags (MAC "
        "recomputed): the GMAC nonce catches it.",
        finish(d),
    )


@vector
def chunk_duplicated() -> Vector:
    d = make("chunk_duplicated", [("x", "U8", (8192,), fill("cd", 8192), True)])
    d.data[CHUNK : 2 * CHUNK] = d.data[:CHUNK]
    d.tag_table[16:32] = d.tag_table[0:16]
    return fail("payload failure", "Chunk 0 (bytes and tag) copied over chunk 1, MAC recomputed.", finish(d))


def _equal_pair() -> list[ref.TensorSpec]:
    return [t("p", "F32", (8,)), t("q", "F32", (8,))]


@vector
def tensors_swapped_data() -> Vector:
    d = make("tensors_swapped_data", _equal_pair())
    data = bytearray(finish(d))
    do = layout(bytes(data)).data_offset
    data[do : do + 32], data[do + 64 : do + 96] = data[do + 64 : do + 96], data[do : do + 32]
    return fail(
        "payload failure",
        "Two equal-size tensors: only their data swapped (tag table untouched).",
        bytes(data),
    )


@vector
def tensors_swapped_with_tags_before_mac() -> Vector:
    d = make("tensors_swapped_with_tags_before_mac", _equal_pair())
    d.data[0:32], d.data[64:96] = d.data[64:96], d.data[0:32]
    d.tag_table[0:16], d.tag_table[16:32] = d.tag_table[16:32], d.tag_table[0:16]
    return fail(
        "payload failure",
        "Two equal-size tensors: data and tags swapped, MAC recomputed; the "
        "per-tensor key (derived from the name) catches it.",
        finish(d),
    )


@vector
def tensor_renamed_before_mac() -> Vector:
    d = make("tensor_renamed_before_mac", small(), SMALL_META)
    d.header["tensors"][1]["name"] = "c"
    return fail(
        "payload failure", "Tensor 'b' renamed 'c' in the header, MAC recomputed: its key changes.", finish(d)
    )


@vector
def tensor_encryption_cleared_before_mac() -> Vector:
    d = make("tensor_encryption_cleared_before_mac", small(), SMALL_META)
    d.header["tensors"][0]["encrypted"] = False
    return fail(
        "payload failure",
        "An encrypted tensor marked encrypted:false, MAC recomputed: the ciphertext "
        "does not verify as GMAC-authenticated plaintext.",
        finish(d),
    )


@vector
def tensor_encryption_set_before_mac() -> Vector:
    d = make("tensor_encryption_set_before_mac", small(), SMALL_META)
    d.header["tensors"][2]["encrypted"] = True
    return fail(
        "payload failure", "An encrypted:false tensor marked encrypted:true, MAC recomputed.", finish(d)
    )


# ---- format failure: preamble ----


@vector
def preamble_empty_file() -> Vector:
    return fail("format failure", "A zero-byte file.", b"")


@vector
def preamble_truncated() -> Vector:
    d = make("preamble_truncated", small(), SMALL_META)
    return fail("format failure", "Only the first 31 bytes of a file.", finish(d)[:31])


@vector
def preamble_bad_magic() -> Vector:
    d = make("preamble_bad_magic", small(), SMALL_META)
    return fail(
        "format failure",
        "Magic byte 0 is 0x88 instead of 0x89 (MAC valid).",
        finish(d, magic=b"\x88" + ref.MAGIC[1:]),
    )


@vector
def preamble_magic_text_mode() -> Vector:
    d = make("preamble_magic_text_mode", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "CR LF in the magic turned into LF (text-mode transfer).",
        data[:4] + b"\n" + data[6:],
    )


@vector
def preamble_bad_version() -> Vector:
    d = make("preamble_bad_version", small(), SMALL_META)
    return fail("format failure", "version 2 (MAC valid).", finish(d, version=2))


@vector
def preamble_version_zero() -> Vector:
    d = make("preamble_version_zero", small(), SMALL_META)
    return fail("format failure", "version 0 (MAC valid).", finish(d, version=0))


@vector
def preamble_header_len_too_large() -> Vector:
    d = make("preamble_header_len_too_large", small(), SMALL_META)
    return fail(
        "format failure",
        "header_len 16,777,217 (16 MiB + 1); must be rejected before reading.",
        finish(d, header_len=16_777_217),
    )


@vector
def preamble_header_len_too_small() -> Vector:
    d = make("preamble_header_len_too_small", small(), SMALL_META)
    return fail("format failure", "header_len 1 (minimum is 2).", finish(d, header_len=1))


@vector
def preamble_header_len_huge() -> Vector:
    d = make("preamble_header_len_huge", small(), SMALL_META)
    return fail("format failure", "header_len 0xFFFFFFFF.", finish(d, header_len=0xFFFFFFFF))


@vector
def preamble_header_len_past_end() -> Vector:
    d = make("preamble_header_len_past_end", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "header_len within bounds but larger than the rest of the file.",
        finish(d, header_len=len(data) - layout(data).header_start + 1),
    )


@vector
def preamble_data_offset_unaligned() -> Vector:
    d = make("preamble_data_offset_unaligned", small(), SMALL_META)
    tables_end = tables_end_of(d, header_text(d).encode())
    return fail(
        "format failure",
        "data_offset is align(tables_end, 4096) + 64, not a multiple of 4096 (zero padding up to "
        "it, layout otherwise consistent, MAC valid).",
        finish(d, data_offset=ref.align(tables_end, ref.PAGE_SIZE) + 64),
    )


# ---- format failure: JSON ----


def _json_fail(label: str, comment: str, old: str, new: str, **kwargs: Any) -> Vector:
    d = make(label, small(), SMALL_META)
    return fail("format failure", comment + " (MAC valid)", with_header(d, old, new, **kwargs))


def _raw_header_fail(label: str, comment: str, edit: Callable[[bytes], bytes]) -> Vector:
    d = make(label, small(), SMALL_META)
    header = edit(header_text(d).encode("utf-8"))
    return fail("format failure", comment + " (MAC valid)", finish(d, header_bytes=header))


@vector
def json_invalid() -> Vector:
    return _raw_header_fail(
        "json_invalid", "The closing brace of the header replaced by a space", lambda h: h[:-1] + b" "
    )


@vector
def json_invalid_utf8() -> Vector:
    return _raw_header_fail(
        "json_invalid_utf8", "Byte 0xFF inside a metadata string", lambda h: h.replace(b'"pt"', b'"p\xff"')
    )


@vector
def json_overlong_utf8() -> Vector:
    return _raw_header_fail(
        "json_overlong_utf8",
        "Overlong UTF-8 (0xC0 0xAF for '/') inside a metadata string",
        lambda h: h.replace(b'"pt"', b'"\xc0\xaf"'),
    )


@vector
def json_bom() -> Vector:
    return _raw_header_fail(
        "json_bom", "The header starts with a UTF-8 byte order mark", lambda h: b"\xef\xbb\xbf" + h
    )


@vector
def json_leading_space() -> Vector:
    return _raw_header_fail(
        "json_leading_space",
        "A space before the header object (stricter reading: only trailing spaces are allowed)",
        lambda h: b" " + h,
    )


@vector
def json_trailing_newline() -> Vector:
    return _raw_header_fail("json_trailing_newline", "A LF after the header object", lambda h: h + b"\n")


@vector
def json_trailing_nul() -> Vector:
    return _raw_header_fail("json_trailing_nul", "A NUL byte after the header object", lambda h: h + b"\x00")


@vector
def json_trailing_object() -> Vector:
    return _raw_header_fail(
        "json_trailing_object", "A second object after the header object", lambda h: h + b" {}"
    )


@vector
def json_not_object() -> Vector:
    return _raw_header_fail("json_not_object", "The header is a JSON array", lambda h: b"[" + h + b"]")


@vector
def json_duplicate_key_top() -> Vector:
    return _json_fail(
        "json_duplicate_key_top",
        "Member 'cipher' appears twice",
        '{"cipher":"AES-256-GCM",',
        '{"cipher":"AES-256-GCM","cipher":"AES-256-GCM",',
    )


@vector
def json_duplicate_key_metadata() -> Vector:
    return _json_fail(
        "json_duplicate_key_metadata",
        "Metadata key 'epoch' appears twice",
        '"epoch":"7"',
        '"epoch":"7","epoch":"7"',
    )


@vector
def json_duplicate_key_tensor() -> Vector:
    return _json_fail(
        "json_duplicate_key_tensor",
        "Member 'dtype' twice in a tensor entry",
        '"name":"b","dtype":"F32"',
        '"name":"b","dtype":"F32","dtype":"F32"',
    )


@vector
def json_duplicate_key_stanza() -> Vector:
    d = make("json_duplicate_key_stanza", small(), SMALL_META)
    return fail(
        "format failure",
        "Member 'type' twice in a stanza (the stanza area follows the header's JSON rules)",
        replace_in_area(finish(d), '{"type":"key"', '{"type":"key","type":"key"'),
    )


@vector
def json_float_number() -> Vector:
    return _json_fail("json_float_number", "Shape dimension written 2.0", '"shape":[2,3]', '"shape":[2.0,3]')


@vector
def json_exponent_number() -> Vector:
    return _json_fail(
        "json_exponent_number", "chunk_size written 4096e0", '"chunk_size":4096', '"chunk_size":4096e0'
    )


@vector
def json_negative_number() -> Vector:
    return _json_fail("json_negative_number", "A negative shape dimension", '"shape":[2,3]', '"shape":[-2,3]')


@vector
def json_negative_zero() -> Vector:
    return _json_fail(
        "json_negative_zero",
        "Offset written -0 (a sign is not allowed)",
        '"offsets":[0,24]',
        '"offsets":[-0,24]',
    )


@vector
def json_leading_zero() -> Vector:
    return _json_fail("json_leading_zero", "Shape dimension written 03", '"shape":[3]', '"shape":[03]')


@vector
def json_integer_too_large() -> Vector:
    d = make("json_integer_too_large", small(), SMALL_META)
    d.stanzas.append({"type": "future", "n": 2**53})
    return fail(
        "format failure",
        "2^53 as a member of an unknown stanza: integer limits apply in the stanza area too",
        finish(d),
    )


@vector
def json_nan() -> Vector:
    return _json_fail("json_nan", "chunk_size written NaN", '"chunk_size":4096', '"chunk_size":NaN')


@vector
def json_null() -> Vector:
    return _json_fail("json_null", "A metadata value is null", '"epoch":"7"', '"epoch":null')


@vector
def json_bool_as_integer() -> Vector:
    return _json_fail(
        "json_bool_as_integer", "A shape dimension written true", '"shape":[3]', '"shape":[true]'
    )


@vector
def json_control_character() -> Vector:
    return _json_fail("json_control_character", "A raw TAB inside a metadata string", '"pt"', '"p\t"')


@vector
def json_invalid_escape() -> Vector:
    return _json_fail(
        "json_invalid_escape", "Invalid escape \\x inside a metadata string", '"pt"', '"p\\x41"'
    )


@vector
def json_lone_surrogate() -> Vector:
    return _json_fail(
        "json_lone_surrogate",
        "A lone surrogate escape \\ud800 in a metadata string (not Unicode; stricter reading)",
        '"pt"',
        '"p\\ud800"',
    )


@vector
def json_deep_nesting() -> Vector:
    depth = 10000
    return _json_fail(
        "json_deep_nesting",
        f"A metadata value nested {depth} arrays deep",
        '"epoch":"7"',
        '"epoch":' + "[" * depth + "]" * depth,
    )


# ---- format failure: header schema ----


@vector
def header_unknown_member() -> Vector:
    return _json_fail(
        "header_unknown_member",
        "An extra top-level member 'version'",
        '"cipher":"AES-256-GCM",',
        '"cipher":"AES-256-GCM","version":1,',
    )


@vector
def header_missing_member() -> Vector:
    d = make("header_missing_member", small(), SMALL_META)
    del d.header["metadata"]
    return fail("format failure", "No 'metadata' member (MAC valid)", finish(d))


@vector
def header_bad_cipher() -> Vector:
    return _json_fail("header_bad_cipher", "cipher 'AES-128-GCM'", '"AES-256-GCM"', '"AES-128-GCM"')


@vector
def header_chunk_size_not_power_of_two() -> Vector:
    return _json_fail(
        "header_chunk_size_not_power_of_two", "chunk_size 6144", '"chunk_size":4096', '"chunk_size":6144'
    )


@vector
def header_chunk_size_too_small() -> Vector:
    return _json_fail(
        "header_chunk_size_too_small", "chunk_size 2048", '"chunk_size":4096', '"chunk_size":2048'
    )


@vector
def header_chunk_size_too_large() -> Vector:
    return _json_fail(
        "header_chunk_size_too_large",
        "chunk_size 134217728 (2^27)",
        '"chunk_size":4096',
        '"chunk_size":134217728',
    )


@vector
def header_stanzas_member() -> Vector:
    d = make("header_stanzas_member", small(), SMALL_META)
    d.header = {"cipher": "AES-256-GCM", "chunk_size": CHUNK, "stanzas": d.stanzas, **d.header}
    return fail(
        "format failure",
        "The header also has a 'stanzas' member (the stanzas live in the stanza area only; MAC valid)",
        finish(d),
    )


@vector
def header_metadata_not_string() -> Vector:
    return _json_fail(
        "header_metadata_not_string", "A metadata value is the integer 7", '"epoch":"7"', '"epoch":7'
    )


@vector
def header_metadata_nested() -> Vector:
    return _json_fail(
        "header_metadata_nested", "A metadata value is an object", '"epoch":"7"', '"epoch":{"a":"b"}'
    )


# ---- format failure: tensor entries ----


@vector
def tensor_unknown_dtype() -> Vector:
    return _json_fail("tensor_unknown_dtype", "dtype 'F128'", '"dtype":"I64"', '"dtype":"F128"')


@vector
def tensor_lowercase_dtype() -> Vector:
    return _json_fail(
        "tensor_lowercase_dtype", "dtype 'i64' (names are case-sensitive)", '"dtype":"I64"', '"dtype":"i64"'
    )


@vector
def tensor_unknown_member() -> Vector:
    return _json_fail(
        "tensor_unknown_member",
        "A tensor entry with an extra member 'layout'",
        '"name":"b",',
        '"name":"b","layout":"C",',
    )


@vector
def tensor_missing_member() -> Vector:
    d = make("tensor_missing_member", small(), SMALL_META)
    del d.header["tensors"][1]["encrypted"]
    return fail("format failure", "A tensor entry without 'encrypted' (MAC valid)", finish(d))


@vector
def tensor_duplicate_name() -> Vector:
    tensors = [t("x", "F32", (4,), label="a"), t("x", "F32", (4,), label="b")]
    d = make("tensor_duplicate_name", tensors)
    return fail("format failure", "Two tensors named 'x' (each sealed correctly, MAC valid)", finish(d))


@vector
def tensor_empty_name() -> Vector:
    d = make("tensor_empty_name", [t("", "F32", (2,), label="tensor_empty_name")])
    return fail("format failure", "A tensor with an empty name (MAC valid)", finish(d))


@vector
def tensor_name_too_long() -> Vector:
    name = "n" * 4095 + "é"  # 4096 characters, 4097 UTF-8 bytes
    d = make("tensor_name_too_long", [t(name, "F32", (2,), label="tensor_name_too_long")])
    return fail(
        "format failure", "A tensor name of 4096 characters but 4097 UTF-8 bytes (MAC valid)", finish(d)
    )


@vector
def tensor_shape_too_many_dims() -> Vector:
    shape = (1,) * 65
    d = make("tensor_shape_too_many_dims", [t("x", "F32", shape)])
    return fail("format failure", "A shape with 65 dimensions (MAC valid)", finish(d))


@vector
def tensor_shape_not_array() -> Vector:
    return _json_fail("tensor_shape_not_array", "shape is the integer 3", '"shape":[3]', '"shape":3')


def _overflow_shape(label: str, dtype: str, shape: list[int], comment: str) -> Vector:
    d = make(label, [t("x", "U8", (1,), label=label)])
    d.header["tensors"][0]["dtype"] = dtype
    d.header["tensors"][0]["shape"] = shape
    return fail("format failure", comment + " (MAC valid)", finish(d))


@vector
def tensor_shape_element_count_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_element_count_overflow", "U8", [2**32, 2**32], "shape [2^32, 2^32] of U8: 2^64 elements"
    )


@vector
def tensor_shape_byte_count_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_byte_count_overflow",
        "F64",
        [2**31, 2**30],
        "shape [2^31, 2^30] of F64: 2^61 elements fit, 2^64 bytes do not",
    )


@vector
def tensor_shape_zero_last_with_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_zero_last_with_overflow",
        "U8",
        [2**32, 2**32, 0],
        "shape [2^32, 2^32, 0]: zero bytes, but the other dimensions overflow 64 bits "
        "(stricter reading: rejected whatever the order of multiplication)",
    )


@vector
def tensor_shape_zero_first_with_overflow() -> Vector:
    return _overflow_shape(
        "tensor_shape_zero_first_with_overflow",
        "U8",
        [0, 2**32, 2**32],
        "shape [0, 2^32, 2^32]: zero bytes, but the other dimensions overflow 64 bits "
        "(stricter reading: rejected whatever the order of multiplication)",
    )


@vector
def tensor_encrypted_not_bool() -> Vector:
    return _json_fail(
        "tensor_encrypted_not_bool",
        "encrypted written 1",
        '"offsets":[0,24],"encrypted":true',
        '"offsets":[0,24],"encrypted":1',
    )


@vector
def tensor_offsets_three_elements() -> Vector:
    return _json_fail(
        "tensor_offsets_three_elements", "offsets [0,24,24]", '"offsets":[0,24]', '"offsets":[0,24,24]'
    )


# ---- format failure: layout ----


def _placed(label: str, begins: list[int], comment: str) -> Vector:
    """The small file with tensors placed at the given begin offsets (header agrees, tags
    valid, file length agrees, MAC valid): only the canonical-offset rule is broken."""
    d = make(label, small(), SMALL_META)
    pieces = [stored(d, i) for i in range(3)]
    section = bytearray()
    for i, (begin, piece) in enumerate(zip(begins, pieces, strict=True)):
        section += bytes(begin - len(section)) + piece
        d.header["tensors"][i]["offsets"] = [begin, begin + len(piece)]
    d.data = section
    return fail("format failure", comment, finish(d))


@vector
def layout_offsets_not_canonical() -> Vector:
    return _placed(
        "layout_offsets_not_canonical",
        [0, 128, 192],
        "Tensor 'b' begins at 128 instead of 64 (data placed there, tags and MAC "
        "valid, file length matches the stated offsets)",
    )


@vector
def layout_offsets_unpadded() -> Vector:
    return _placed(
        "layout_offsets_unpadded",
        [0, 24, 64],
        "Tensor 'b' begins at 24, right after 'w', without 64-byte alignment "
        "(data placed there, tags and MAC valid)",
    )


@vector
def layout_padding_between_tensors_nonzero() -> Vector:
    d = make("layout_padding_between_tensors_nonzero", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "A non-zero byte in the padding between tensors 'w' and 'b'",
        flip(data, layout(data).data_offset + 40),
    )


@vector
def layout_padding_before_data_nonzero() -> Vector:
    d = make("layout_padding_before_data_nonzero", small(), SMALL_META)
    data = finish(d)
    assert tables_end_of(d, header_text(d).encode()) < layout(data).data_offset
    return fail(
        "format failure",
        "A non-zero byte in the padding between tag table and data",
        flip(data, layout(data).data_offset - 1),
    )


@vector
def layout_truncated() -> Vector:
    d = make("layout_truncated", small(), SMALL_META)
    return fail("format failure", "The last byte of the file removed", finish(d)[:-1])


@vector
def layout_truncated_at_data_offset() -> Vector:
    d = make("layout_truncated_at_data_offset", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "The file cut at data_offset (all tensor data missing)",
        data[: layout(data).data_offset],
    )


@vector
def layout_truncated_in_tag_table() -> Vector:
    d = make("layout_truncated_in_tag_table", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure", "The file cut in the middle of the tag table", data[: layout(data).tags_start + 24]
    )


@vector
def layout_trailing_bytes() -> Vector:
    d = make("layout_trailing_bytes", small(), SMALL_META)
    return fail("format failure", "One zero byte appended", finish(d) + b"\x00")


@vector
def layout_trailing_alignment_padding() -> Vector:
    d = make("layout_trailing_alignment_padding", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "The last tensor padded with zeros to a multiple of 64",
        data + bytes(-len(data) % 64),
    )


@vector
def layout_no_tensors_trailing_bytes() -> Vector:
    d = make("layout_no_tensors_trailing_bytes", [], {})
    return fail("format failure", "Zero tensors, but bytes after data_offset", finish(d) + bytes(64))


@vector
def layout_data_offset_before_tags_end() -> Vector:
    d = make("layout_data_offset_before_tags_end", small(), SMALL_META)
    header = _spaces_to_align_tables_end(d, extra=64)
    tables_end = tables_end_of(d, header)
    data = finish(d, header_bytes=header, data_offset=tables_end - 64)
    return fail(
        "format failure",
        "data_offset a multiple of 4096 but 64 bytes before tags_end (the data stored at "
        "tags_end, MAC valid)",
        data,
    )


@vector
def order_format_before_no_match() -> Vector:
    d = make("order_format_before_no_match", small(), SMALL_META)
    return fail(
        "format failure",
        "Trailing bytes and a wrong key: format failure comes first",
        finish(d) + b"\x00",
        key=KEY_WRONG,
    )


# ---- format failure: stanzas ----


def _stanza_fail(
    label: str, comment: str, edit: Callable[[list[dict[str, Any]]], None], passphrase: str | None = None
) -> Vector:
    d = make(label, small(), SMALL_META, passphrase=passphrase)
    edit(d.stanzas)
    key = None if passphrase else KEY_A
    return fail("format failure", comment, finish(d), key=key, passphrase=passphrase)


def _set(member: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0][member] = value

    return edit


@vector
def stanza_log_n_too_large() -> Vector:
    return _stanza_fail("stanza_log_n_too_large", "scrypt log_n 21", _set("log_n", 21), PASSPHRASE)


@vector
def stanza_log_n_too_small() -> Vector:
    return _stanza_fail("stanza_log_n_too_small", "scrypt log_n 9", _set("log_n", 9), PASSPHRASE)


@vector
def stanza_log_n_huge() -> Vector:
    return _stanza_fail(
        "stanza_log_n_huge", "scrypt log_n 64: must not run scrypt", _set("log_n", 64), PASSPHRASE
    )


@vector
def stanza_log_n_string() -> Vector:
    return _stanza_fail(
        "stanza_log_n_string", 'scrypt log_n written as the string "10"', _set("log_n", "10"), PASSPHRASE
    )


def _append(stanza: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.append(stanza)

    return edit


@vector
def stanza_scrypt_beside_key() -> Vector:
    extra = ref.key_stanza(CounterRandom("sbk/fk")(32), KEY_A, CounterRandom("sbk/s")(16))
    return _stanza_fail(
        "stanza_scrypt_beside_key", "An scrypt stanza and a key stanza", _append(extra), PASSPHRASE
    )


@vector
def stanza_scrypt_beside_unknown() -> Vector:
    return _stanza_fail(
        "stanza_scrypt_beside_unknown",
        "An scrypt stanza and a stanza of unknown type",
        _append({"type": "future-kem", "share": "00" * 32}),
        PASSPHRASE,
    )


@vector
def stanza_two_scrypt() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.append(dict(stanzas[0]))

    return _stanza_fail("stanza_two_scrypt", "Two scrypt stanzas", edit, PASSPHRASE)


@vector
def stanza_uppercase_hex() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["salt"] = stanzas[0]["salt"].upper()

    return _stanza_fail("stanza_uppercase_hex", "Key stanza salt in uppercase hex", edit)


@vector
def stanza_salt_short() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["salt"] = stanzas[0]["salt"][:30]

    return _stanza_fail("stanza_salt_short", "Key stanza salt of 15 bytes", edit)


@vector
def stanza_body_odd_length() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas[0]["body"] = stanzas[0]["body"][:159]

    return _stanza_fail("stanza_body_odd_length", "Key stanza body of 159 hex digits", edit)


@vector
def stanza_known_extra_member() -> Vector:
    return _stanza_fail(
        "stanza_known_extra_member", "A key stanza with an extra member 'note'", _set("note", "x")
    )


@vector
def stanza_known_missing_member() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        del stanzas[0]["salt"]

    return _stanza_fail("stanza_known_missing_member", "A key stanza without 'salt'", edit)


@vector
def stanza_missing_type() -> Vector:
    return _stanza_fail("stanza_missing_type", "A stanza without 'type'", _append({"share": "00"}))


@vector
def stanza_type_not_string() -> Vector:
    return _stanza_fail(
        "stanza_type_not_string", "A stanza whose 'type' is the integer 1", _append({"type": 1})
    )


@vector
def stanza_unknown_too_many_members() -> Vector:
    unknown: dict[str, Any] = {"type": "future"}
    for i in range(16):
        unknown[f"m{i:02d}"] = i
    return _stanza_fail(
        "stanza_unknown_too_many_members", "An unknown stanza with 17 members", _append(unknown)
    )


@vector
def stanza_unknown_string_too_long() -> Vector:
    return _stanza_fail(
        "stanza_unknown_string_too_long",
        "An unknown stanza with a 16,385-byte string",
        _append({"type": "future", "blob": "a" * 16385}),
    )


@vector
def stanza_unknown_member_name_too_long() -> Vector:
    return _stanza_fail(
        "stanza_unknown_member_name_too_long",
        "An unknown stanza with a 16,385-byte member name (stricter reading: member names "
        "are strings of the stanza too)",
        _append({"type": "future", "b" * 16385: "x"}),
    )


@vector
def stanza_unknown_bool_member() -> Vector:
    return _stanza_fail(
        "stanza_unknown_bool_member",
        "An unknown stanza with a boolean member",
        _append({"type": "future", "flag": True}),
    )


@vector
def stanza_unknown_array_member() -> Vector:
    return _stanza_fail(
        "stanza_unknown_array_member",
        "An unknown stanza with an array member",
        _append({"type": "future", "list": ["a"]}),
    )


@vector
def stanza_too_many() -> Vector:
    def edit(stanzas: list[dict[str, Any]]) -> None:
        stanzas.extend({"type": "future", "i": i} for i in range(256))

    return _stanza_fail("stanza_too_many", "257 stanzas: a key stanza and 256 unknown ones", edit)


def _many_keys(label: str, count: int) -> ref.Draft:
    """The small file with ``count`` key stanzas, the last one for key A (the others for
    derived keys that the vectors never read with)."""
    rng = CounterRandom(f"{label}/keys")
    others = [rng(32) for _ in range(count - 1)]
    d = make(label, small(), SMALL_META, keys=(*others[:255], KEY_A))
    if count > 256:  # beyond what the writer accepts: added by hand
        extra = [ref.key_stanza(d.file_key, k, rng(16)) for k in others[255:]]
        d.stanzas[255:255] = extra
    assert len(d.stanzas) == count and all(s["type"] == "key" for s in d.stanzas)
    return d


@vector
def stanza_256_keys() -> Vector:
    d = _many_keys("stanza_256_keys", 256)
    return ok(
        "256 key stanzas (the maximum), the reader's key opening the last one; the stanza area "
        "spans several pages.",
        d,
        small(),
        SMALL_META,
    )


@vector
def stanza_257_keys() -> Vector:
    d = _many_keys("stanza_257_keys", 257)
    return fail(
        "format failure",
        "257 key stanzas, all well formed, the reader's key opening the last one: more than 256 "
        "stanzas is a format failure (writers must refuse to write this).",
        finish(d),
    )


# ---- stanza area ----


@vector
def stanza_area_default_page() -> Vector:
    tensors = small()
    data = ref.write(
        tensors, metadata=SMALL_META, chunk_size=CHUNK, keys=[KEY_A], rng=CounterRandom("stanza_area_default")
    )
    lay = layout(data)
    assert lay.stanza_area_len == 4096 - 32 and lay.data_offset % 4096 == 0
    return ok(
        "The writer's defaults: stanza_area_len 4064, so that the preamble and the stanza area fill "
        "the first 4096-byte page, and data_offset a multiple of 4096.",
        data,
        tensors,
        SMALL_META,
    )


@vector
def stanza_area_exact_fit() -> Vector:
    tensors = small()
    d = make("stanza_area_exact_fit", tensors, SMALL_META, keys=(KEY_B, KEY_A))
    pad: dict[str, Any] = {"type": "pad", "fill": ""}
    pad["fill"] = "f" * (ref.MIN_STANZA_AREA_LEN - len(ref.stanza_area_json([*d.stanzas, pad], None)))
    d.stanzas.append(pad)
    assert len(ref.stanza_area_json(d.stanzas, None)) == ref.MIN_STANZA_AREA_LEN
    return ok(
        "The stanza area JSON (two key stanzas and an unknown one whose string fills the rest) is "
        "exactly 4064 bytes: no padding spaces, and still the canonical one-page area.",
        finish(d),
        tensors,
        SMALL_META,
    )


@vector
def stanza_area_whitespace() -> Vector:
    tensors = small()
    d = make("stanza_area_whitespace", tensors, SMALL_META)
    data = finish(d)
    text = json.dumps({"stanzas": d.stanzas}, indent="\t", separators=(" ,\r\n", " : "))
    return ok(
        "The stanza area rewritten after the MAC with JSON whitespace (tab, CR, LF, space) between "
        "tokens: allowed, and the stanza area is not covered by the MAC.",
        edit_area(data, lambda _: text),
        tensors,
        SMALL_META,
    )


def _area_fail(label: str, comment: str, edit: Callable[[bytes], bytes], **kwargs: Any) -> Vector:
    """The small file with its stanza area bytes edited (same length)."""
    d = make(label, small(), SMALL_META)
    data = finish(d)
    return fail("format failure", comment, with_area(data, edit(area_of(data))), **kwargs)


def _repad(edit: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """An edit of the area's JSON text (without its padding), re-padded with spaces."""

    def apply(area: bytes) -> bytes:
        text = edit(area.rstrip(b" "))
        assert len(text) <= len(area)
        return text.ljust(len(area), b" ")

    return apply


@vector
def stanza_area_zero_padded() -> Vector:
    return _area_fail(
        "stanza_area_zero_padded",
        "The stanza area padded with NUL bytes instead of spaces",
        lambda area: area.rstrip(b" ").ljust(len(area), b"\x00"),
    )


@vector
def stanza_area_trailing_newline() -> Vector:
    return _area_fail(
        "stanza_area_trailing_newline",
        "A LF after the stanza area object, then spaces",
        _repad(lambda text: text + b"\n"),
    )


@vector
def stanza_area_trailing_garbage() -> Vector:
    return _area_fail(
        "stanza_area_trailing_garbage",
        "The last byte of the stanza area is 'x' (the rest of the padding is spaces)",
        lambda area: area[:-1] + b"x",
    )


@vector
def stanza_area_trailing_object() -> Vector:
    return _area_fail(
        "stanza_area_trailing_object",
        "A second object after the stanza area object",
        _repad(lambda text: text + b" {}"),
    )


@vector
def stanza_area_leading_space() -> Vector:
    return _area_fail(
        "stanza_area_leading_space",
        "A space before the stanza area object (its first byte must be '{')",
        _repad(lambda text: b" " + text),
    )


@vector
def stanza_area_bom() -> Vector:
    return _area_fail(
        "stanza_area_bom",
        "The stanza area starts with a UTF-8 byte order mark",
        _repad(lambda text: b"\xef\xbb\xbf" + text),
    )


@vector
def stanza_area_blank() -> Vector:
    return _area_fail("stanza_area_blank", "The stanza area is all spaces", lambda area: b" " * len(area))


@vector
def stanza_area_unterminated() -> Vector:
    return _area_fail(
        "stanza_area_unterminated",
        "The closing brace of the stanza area object replaced by a space",
        _repad(lambda text: text[:-1]),
    )


@vector
def stanza_area_not_object() -> Vector:
    return _area_fail(
        "stanza_area_not_object", "The stanza area is a JSON array", _repad(lambda text: b"[" + text + b"]")
    )


@vector
def stanza_area_unknown_member() -> Vector:
    return _area_fail(
        "stanza_area_unknown_member",
        "The stanza area object has an extra member 'version'",
        _repad(lambda text: text[:-1] + b',"version":1}'),
    )


@vector
def stanza_area_missing_stanzas() -> Vector:
    return _area_fail(
        "stanza_area_missing_stanzas",
        "The stanza array is named 'recipients' instead of 'stanzas'",
        _repad(lambda text: text.replace(b'{"stanzas":', b'{"recipients":')),
    )


@vector
def stanza_area_stanzas_empty() -> Vector:
    return _area_fail(
        "stanza_area_stanzas_empty", "An empty stanzas array", _repad(lambda _: b'{"stanzas":[]}')
    )


@vector
def stanza_area_stanzas_not_array() -> Vector:
    return _area_fail(
        "stanza_area_stanzas_not_array",
        "stanzas is a single stanza object, not an array",
        _repad(lambda text: text.replace(b'{"stanzas":[', b'{"stanzas":').replace(b"}]}", b"}}")),
    )


@vector
def stanza_area_invalid_utf8() -> Vector:
    return _area_fail(
        "stanza_area_invalid_utf8",
        "Byte 0xFF inside a string of an unknown stanza",
        _repad(lambda text: text[:-2] + b',{"type":"future","note":"p\xff"}]}'),
    )


@vector
def stanza_area_lone_surrogate() -> Vector:
    return _area_fail(
        "stanza_area_lone_surrogate",
        "A lone surrogate escape \\ud800 in a string of an unknown stanza",
        _repad(lambda text: text[:-2] + b',{"type":"future","note":"p\\ud800"}]}'),
    )


@vector
def stanza_area_float_number() -> Vector:
    return _area_fail(
        "stanza_area_float_number",
        "An unknown stanza with the number 1.5",
        _repad(lambda text: text[:-2] + b',{"type":"future","n":1.5}]}'),
    )


@vector
def stanza_area_negative_number() -> Vector:
    return _area_fail(
        "stanza_area_negative_number",
        "An unknown stanza with the integer -1",
        _repad(lambda text: text[:-2] + b',{"type":"future","n":-1}]}'),
    )


def _grown() -> tuple[bytes, bytes]:
    """A signed file and the same file re-keyed for key A and 20 + 1 x25519 recipients, which
    do not fit in the first page: the re-key rewrote the file with a two-page stanza area."""
    d = make("stanza_area_grown", small(), SMALL_META, chunk_digest=True)
    data = finish(d, sign_with=PUBLISHER_A)
    recipients = [X25519PrivateKey.from_private_bytes(fill(f"grown/{i}", 32)).public_key() for i in range(20)]
    grown = ref.rekey(
        data,
        key=KEY_A,
        new_keys=[KEY_A],
        new_recipients=[*recipients, X25519_A.public_key()],
        rng=CounterRandom("stanza_area_grown/new"),
    )
    old, new = layout(data), layout(grown)
    assert old.stanza_area_len == 4064 and new.stanza_area_len == 8160
    assert grown[new.header_start : new.data_offset].rstrip(b"\x00") == data[
        old.header_start : old.data_offset
    ].rstrip(b"\x00")
    assert grown[new.data_offset :] == data[old.data_offset :]
    return data, grown


@vector
def stanza_area_grown() -> Vector:
    _, grown = _grown()
    return ok(
        "A signed file re-keyed for 22 stanzas, which do not fit in the first page: the re-key "
        "rewrote it with a two-page stanza area (canonical stanza_area_len 8160 and data_offset), "
        "the header, MAC, tag table, digest table and data copied unchanged. The MAC and the "
        "signature cover neither the preamble nor the stanza area, so both still verify.",
        grown,
        small(),
        SMALL_META,
        identity=X25519_A,
        verify_key=VERIFY_A,
    )


@vector
def rekey_shrinks_area() -> Vector:
    _, grown = _grown()
    shrunk = ref.rekey(grown, identity=X25519_A, new_keys=[KEY_B], rng=CounterRandom("rekey_shrinks_area"))
    assert layout(shrunk).stanza_area_len == 4064
    return ok(
        "The file of stanza_area_grown re-keyed back to one key stanza: the stanza area shrinks to "
        "the canonical one page (the file is rewritten again), and the signature still verifies.",
        shrunk,
        small(),
        SMALL_META,
        key=KEY_B,
        verify_key=VERIFY_A,
    )


@vector
def stanza_area_len_not_canonical() -> Vector:
    d = make("stanza_area_len_not_canonical", small(), SMALL_META)
    data = finish(d)
    grown = rebuild_with_area(data, area_of(data).rstrip(b" "), area_len=2 * ref.PAGE_SIZE - ref.PREAMBLE_LEN)
    return fail(
        "format failure",
        "The stanza area of a small file grown to two pages (stanza_area_len 8160, data_offset "
        "moved accordingly, MAC valid) though its stanzas fit in one: only the smallest allowed "
        "length that holds the stanzas, 4064 here, is canonical.",
        grown,
    )


@vector
def stanza_type_renamed() -> Vector:
    d = make("stanza_type_renamed", small(), SMALL_META)
    return fail(
        "no match",
        "The only stanza's type renamed 'key' -> 'kez' in the stored stanza area: an unknown "
        "type, ignored, so nothing opens.",
        replace_in_area(finish(d), '"type":"key"', '"type":"kez"'),
    )


# ---- format failure: preamble (stanza area and reserved fields) ----


@vector
def preamble_reserved_nonzero() -> Vector:
    d = make("preamble_reserved_nonzero", small(), SMALL_META)
    return fail("format failure", "reserved field 1 (MAC valid).", finish(d, reserved=1))


@vector
def preamble_reserved_high_byte() -> Vector:
    d = make("preamble_reserved_high_byte", small(), SMALL_META)
    return fail("format failure", "reserved field 0x80000000 (MAC valid).", finish(d, reserved=0x80000000))


@vector
def preamble_stanza_area_len_zero() -> Vector:
    d = make("preamble_stanza_area_len_zero", small(), SMALL_META)
    return fail("format failure", "stanza_area_len 0.", finish(d, stanza_area_len_field=0))


@vector
def preamble_stanza_area_len_too_small() -> Vector:
    d = make("preamble_stanza_area_len_too_small", small(), SMALL_META)
    return fail(
        "format failure", "stanza_area_len 15 (minimum is 4064).", finish(d, stanza_area_len_field=15)
    )


@vector
def preamble_stanza_area_len_not_page_form() -> Vector:
    d = make("preamble_stanza_area_len_not_page_form", small(), SMALL_META)
    return fail(
        "format failure",
        "A consistent file whose stanza area is 4000 bytes (header at offset 4032, data_offset "
        "canonical, MAC valid): stanza_area_len must be 4096 * k - 32, so that the header starts "
        "on a page boundary.",
        finish(d, stanza_area_len=4000),
    )


@vector
def preamble_stanza_area_len_too_large() -> Vector:
    d = make("preamble_stanza_area_len_too_large", small(), SMALL_META)
    return fail(
        "format failure",
        "stanza_area_len 1,048,577 (1 MiB + 1); must be rejected before reading.",
        finish(d, stanza_area_len_field=1_048_577),
    )


@vector
def preamble_stanza_area_len_above_max() -> Vector:
    d = make("preamble_stanza_area_len_above_max", small(), SMALL_META)
    return fail(
        "format failure",
        "stanza_area_len 1,052,640 = 4096 * 257 - 32: of the allowed form but above the maximum "
        "of 1,048,544; must be rejected before reading.",
        finish(d, stanza_area_len_field=4096 * 257 - 32),
    )


@vector
def preamble_stanza_area_len_huge() -> Vector:
    d = make("preamble_stanza_area_len_huge", small(), SMALL_META)
    return fail("format failure", "stanza_area_len 0xFFFFFFFF.", finish(d, stanza_area_len_field=0xFFFFFFFF))


@vector
def preamble_stanza_area_len_past_end() -> Vector:
    d = make("preamble_stanza_area_len_past_end", small(), SMALL_META)
    data = finish(d)
    return fail(
        "format failure",
        "stanza_area_len of the allowed form and within bounds but larger than the rest of the file.",
        finish(d, stanza_area_len_field=ref.align(len(data) + 32, 4096) + 4096 - 32),
    )


@vector
def preamble_truncated_in_stanza_area() -> Vector:
    d = make("preamble_truncated_in_stanza_area", small(), SMALL_META)
    return fail("format failure", "The file cut inside the stanza area.", finish(d)[:100])


# ---- re-keying ----


def _rekeyed() -> bytes:
    d = make("rekey", small(), SMALL_META)
    data = finish(d)
    new = ref.rekey(data, key=KEY_A, new_keys=[KEY_B], rng=CounterRandom("rekey/new"))
    lay = layout(data)
    assert len(new) == len(data) and new[: ref.PREAMBLE_LEN] == data[: ref.PREAMBLE_LEN]
    assert new[lay.header_start :] == data[lay.header_start :] and new != data
    return new


@vector
def rekey_new_key() -> Vector:
    return ok(
        "A file re-keyed in place: its stanza area replaced by one key stanza for the new key, "
        "wrapping the same file key, padded to the same stanza_area_len; nothing else changed. "
        "It opens with the new key.",
        _rekeyed(),
        small(),
        SMALL_META,
        key=KEY_B,
    )


@vector
def rekey_old_key() -> Vector:
    return fail(
        "no match",
        "The re-keyed file of rekey_new_key read with the old key: its stanza is gone.",
        _rekeyed(),
        key=KEY_A,
    )


@vector
def rekey_signed_to_x25519() -> Vector:
    d = make("rekey_signed_to_x25519", small(), SMALL_META, chunk_digest=True)
    data = finish(d, sign_with=PUBLISHER_A)
    new = ref.rekey(
        data, key=KEY_A, new_recipients=[X25519_A.public_key()], rng=CounterRandom("rekey_signed/new")
    )
    assert area_json(new)["signature"] == area_json(data)["signature"]
    return ok(
        "A signed file re-keyed in place from a key stanza to an x25519 recipient, the signature "
        "member kept: it opens with the identity and the signature still verifies.",
        new,
        small(),
        SMALL_META,
        identity=X25519_A,
        verify_key=PUBLISHER_A.public_key(),
    )


# ---- x25519 ----


def _x25519_draft(label: str, *recipients: X25519PrivateKey) -> ref.Draft:
    return make(label, small(), SMALL_META, keys=(), recipients=tuple(r.public_key() for r in recipients))


def _low_order_stanza(file_key: bytes, share: bytes, identity: X25519PrivateKey) -> dict[str, Any]:
    """An x25519 stanza with a low-order share whose body opens if a reader skips the all-zero
    check: wrap key = HKDF(32 zero bytes, share || R, info)."""
    recipient = identity.public_key().public_bytes_raw()
    wrap_key = ref.hkdf(bytes(32), share + recipient, ref.X25519_INFO)
    return {"type": "x25519", "share": share.hex(), "body": ref.seal_file_key(wrap_key, file_key).hex()}


# A point of order 8 on Curve25519: X25519 of it with any scalar is 32 zero bytes.
ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


@vector
def x25519_second_of_two() -> Vector:
    d = _x25519_draft("x25519_second_of_two", X25519_B, X25519_A)
    return ok(
        "Two x25519 stanzas; the reader's identity is the second recipient.",
        d,
        small(),
        SMALL_META,
        identity=X25519_A,
    )


@vector
def x25519_wrong_identity() -> Vector:
    d = _x25519_draft("x25519_wrong_identity", X25519_B, X25519_A)
    return fail("no match", "The reader's identity is neither recipient.", finish(d), identity=X25519_WRONG)


@vector
def x25519_low_order_share_zero() -> Vector:
    d = _x25519_draft("x25519_low_order_share_zero", X25519_A)
    d.stanzas = [_low_order_stanza(d.file_key, bytes(32), X25519_A)]
    return fail(
        "no match",
        "share is 32 zero bytes, so the shared secret is all zero; the body wraps the real file key "
        "under HKDF(zero secret, share || R): a reader must not open it.",
        finish(d),
        identity=X25519_A,
    )


@vector
def x25519_low_order_share_order_8() -> Vector:
    d = _x25519_draft("x25519_low_order_share_order_8", X25519_A)
    d.stanzas = [_low_order_stanza(d.file_key, ORDER_8_POINT, X25519_A)]
    return fail(
        "no match",
        "share is a point of order 8, so the shared secret is all zero; the body wraps the real "
        "file key under HKDF(zero secret, share || R): a reader must not open it.",
        finish(d),
        identity=X25519_A,
    )


@vector
def x25519_low_order_then_valid() -> Vector:
    d = _x25519_draft("x25519_low_order_then_valid", X25519_A)
    other_file_key = CounterRandom("x25519_low_order_then_valid/other")(32)
    d.stanzas.insert(0, _low_order_stanza(other_file_key, bytes(32), X25519_A))
    return ok(
        "A low-order stanza (wrapping another file key under the zero secret) before a valid one: "
        "the low-order stanza is treated as not opening (neither an error nor the file key), and "
        "the next stanza opens.",
        d,
        small(),
        SMALL_META,
        identity=X25519_A,
    )


@vector
def x25519_share_tampered() -> Vector:
    d = _x25519_draft("x25519_share_tampered", X25519_A)
    share = d.stanzas[0]["share"]
    tampered = ("1" if share[0] == "0" else "0") + share[1:]
    return fail(
        "no match",
        "The lowest bit of the share flipped in the stored stanza area: another point, another secret.",
        replace_in_area(finish(d), share, tampered),
        identity=X25519_A,
    )


@vector
def x25519_share_high_bit_set() -> Vector:
    d = _x25519_draft("x25519_share_high_bit_set", X25519_A)
    share = bytes.fromhex(d.stanzas[0]["share"])
    assert share[31] < 0x80
    tampered = (share[:31] + bytes([share[31] | 0x80])).hex()
    return fail(
        "no match",
        "The most significant bit of the share set: X25519 ignores that bit (RFC 7748), so the "
        "shared secret is unchanged, but the HKDF salt is the share as stored, so the wrap key "
        "differs and the stanza does not open.",
        replace_in_area(finish(d), d.stanzas[0]["share"], tampered),
        identity=X25519_A,
    )


@vector
def x25519_wraps_other_key() -> Vector:
    d = _x25519_draft("x25519_wraps_other_key", X25519_A)
    rng = CounterRandom("x25519_wraps_other_key/other")
    d.stanzas = [ref.x25519_stanza(rng(32), X25519_A.public_key(), rng(32))]
    return fail(
        "header failure",
        "The x25519 stanza opens with the identity but wraps another file key: the MAC fails.",
        finish(d),
        identity=X25519_A,
    )


@vector
def x25519_identity_for_key_file() -> Vector:
    d = make("x25519_identity_for_key_file", small(), SMALL_META)
    return fail(
        "no match",
        "An X25519 identity is given but the file has only a key stanza.",
        finish(d),
        identity=X25519_A,
    )


@vector
def key_for_x25519_file() -> Vector:
    d = _x25519_draft("key_for_x25519_file", X25519_A)
    return fail("no match", "A key is given but the file has only an x25519 stanza.", finish(d), key=KEY_A)


def _x25519_fail(label: str, comment: str, edit: Callable[[list[dict[str, Any]]], None]) -> Vector:
    d = _x25519_draft(label, X25519_A)
    edit(d.stanzas)
    return fail("format failure", comment, finish(d), identity=X25519_A)


@vector
def x25519_share_short() -> Vector:
    return _x25519_fail(
        "x25519_share_short", "An x25519 share of 31 bytes", lambda s: s[0].update(share=s[0]["share"][:62])
    )


@vector
def x25519_share_uppercase() -> Vector:
    return _x25519_fail(
        "x25519_share_uppercase",
        "An x25519 share in uppercase hex",
        lambda s: s[0].update(share=s[0]["share"].upper()),
    )


@vector
def x25519_body_long() -> Vector:
    return _x25519_fail(
        "x25519_body_long", "An x25519 body of 81 bytes", lambda s: s[0].update(body=s[0]["body"] + "00")
    )


@vector
def x25519_extra_member() -> Vector:
    return _x25519_fail(
        "x25519_extra_member",
        "An x25519 stanza with an extra member 'salt'",
        lambda s: s[0].update(salt="00" * 16),
    )


@vector
def x25519_missing_share() -> Vector:
    return _x25519_fail(
        "x25519_missing_share", "An x25519 stanza without 'share'", lambda s: s[0].pop("share")
    )


# ---- rsa-oaep ----


def _rsa_draft(label: str) -> ref.Draft:
    return make(label, small(), SMALL_META, keys=(), recipients=(RSA_A.public_key(),))


@vector
def rsa_oaep_success() -> Vector:
    return ok(
        "One rsa-oaep stanza (RSA-2048, OAEP with SHA-256, MGF1-SHA-256, label "
        "'enctensor.v1 rsa-oaep'); the identity is the RSA private key.",
        _rsa_draft("rsa_oaep"),
        small(),
        SMALL_META,
        identity=RSA_A,
    )


@vector
def rsa_oaep_wrong_key() -> Vector:
    return fail(
        "no match",
        "The file of rsa_oaep_success read with another RSA-2048 key.",
        finish(_rsa_draft("rsa_oaep")),
        identity=RSA_B,
    )


@vector
def rsa_oaep_body_flipped() -> Vector:
    data = finish(_rsa_draft("rsa_oaep"))
    body = area_json(data)["stanzas"][0]["body"]
    flipped = body[:300] + ("1" if body[300] == "0" else "0") + body[301:]
    return fail(
        "no match",
        "The file of rsa_oaep_success with one bit of the body flipped: OAEP decoding fails.",
        replace_in_area(data, body, flipped),
        identity=RSA_A,
    )


@vector
def rsa_oaep_body_exceeds_modulus() -> Vector:
    d = _rsa_draft("rsa_oaep")
    d.stanzas[0]["body"] = "ff" * 256
    return fail(
        "no match",
        "An rsa-oaep body of the modulus length whose value is larger than the modulus: it does not open.",
        finish(d),
        identity=RSA_A,
    )


@vector
def rsa_oaep_body_257_bytes() -> Vector:
    d = _rsa_draft("rsa_oaep")
    d.stanzas[0]["body"] = fill("rsa_oaep_body_257_bytes", 257).hex()
    return fail(
        "no match",
        "An rsa-oaep body of 257 bytes (valid for a 2049- to 2056-bit modulus): a reader with a "
        "2048-bit key does not try it.",
        finish(d),
        identity=RSA_A,
    )


@vector
def rsa_oaep_plaintext_16_bytes() -> Vector:
    d = _rsa_draft("rsa_oaep_plaintext_16_bytes")
    short = {"type": "rsa-oaep", "body": precomputed_oaep(RSA_A.public_key(), fill("rsa16", 16)).hex()}
    d.stanzas.insert(0, short)
    return ok(
        "The first rsa-oaep stanza decrypts (valid OAEP) to 16 bytes, not a 32-byte file key, so "
        "it does not open; the second wraps the real file key and opens.",
        finish(d),
        small(),
        SMALL_META,
        identity=RSA_A,
    )


@vector
def rsa_oaep_wraps_other_key() -> Vector:
    d = _rsa_draft("rsa_oaep_wraps_other_key")
    other = fill("rsa_other_file_key", 32)
    d.stanzas = [{"type": "rsa-oaep", "body": precomputed_oaep(RSA_A.public_key(), other).hex()}]
    return fail(
        "header failure",
        "The rsa-oaep stanza opens with the identity but wraps another 32-byte file key: the MAC fails.",
        finish(d),
        identity=RSA_A,
    )


@vector
def rsa_identity_for_key_file() -> Vector:
    d = make("rsa_identity_for_key_file", small(), SMALL_META)
    return fail(
        "no match",
        "An RSA private key is given but the file has only a key stanza.",
        finish(d),
        identity=RSA_A,
    )


def _rsa_fail(label: str, comment: str, edit: Callable[[list[dict[str, Any]]], None]) -> Vector:
    d = _rsa_draft("rsa_oaep")
    edit(d.stanzas)
    return fail("format failure", comment, finish(d), identity=RSA_A)


@vector
def rsa_oaep_body_255_bytes() -> Vector:
    return _rsa_fail(
        "rsa_oaep_body_255_bytes",
        "An rsa-oaep body of 255 bytes (below a 2048-bit modulus)",
        lambda s: s[0].update(body=s[0]["body"][:510]),
    )


@vector
def rsa_oaep_body_513_bytes() -> Vector:
    return _rsa_fail(
        "rsa_oaep_body_513_bytes",
        "An rsa-oaep body of 513 bytes (above a 4096-bit modulus)",
        lambda s: s[0].update(body=fill("rsa_oaep_body_513_bytes", 513).hex()),
    )


@vector
def rsa_oaep_body_odd_hex() -> Vector:
    return _rsa_fail(
        "rsa_oaep_body_odd_hex",
        "An rsa-oaep body of 513 hex digits",
        lambda s: s[0].update(body=s[0]["body"] + "0"),
    )


@vector
def rsa_oaep_body_uppercase() -> Vector:
    return _rsa_fail(
        "rsa_oaep_body_uppercase",
        "An rsa-oaep body in uppercase hex",
        lambda s: s[0].update(body=s[0]["body"].upper()),
    )


@vector
def rsa_oaep_extra_member() -> Vector:
    return _rsa_fail(
        "rsa_oaep_extra_member",
        "An rsa-oaep stanza with an extra member 'label'",
        lambda s: s[0].update(label="enctensor.v1 rsa-oaep"),
    )


@vector
def rsa_oaep_missing_body() -> Vector:
    return _rsa_fail("rsa_oaep_missing_body", "An rsa-oaep stanza without 'body'", lambda s: s[0].pop("body"))


# ---- recipient fingerprints (an optional stanza member, checked but ignored when opening) ----

FingerprintOf = bytes | ref.Recipient | None


def with_fingerprints(d: ref.Draft, *whose: FingerprintOf) -> ref.Draft:
    """``d`` with, on stanza i, the fingerprint of whose[i] (a raw key or a public key; None
    for no fingerprint). The stanza area is covered by no MAC: this is what a writer that
    asks for fingerprints writes."""
    assert len(whose) == len(d.stanzas)
    for stanza, w in zip(d.stanzas, whose, strict=True):
        if w is not None:
            stanza[ref.FINGERPRINT_MEMBER] = ref.recipient_fingerprint(w).hex()
    return d


@vector
def fingerprint_key_stanzas() -> Vector:
    tensors = small()
    d = make("fingerprint_key_stanzas", tensors, SMALL_META, keys=(KEY_B, KEY_A))
    return ok(
        "Two key stanzas, each with the fingerprint of its key (the first 16 bytes of HKDF(key, "
        "'', 'enctensor.v1 fingerprint key')); the reader's key opens the second.",
        with_fingerprints(d, KEY_B, KEY_A),
        tensors,
        SMALL_META,
    )


@vector
def fingerprint_x25519() -> Vector:
    d = _x25519_draft("fingerprint_x25519", X25519_B, X25519_A)
    return ok(
        "Two x25519 stanzas with the fingerprints of their recipients (the first 16 bytes of "
        "HKDF(public key, '', 'enctensor.v1 fingerprint x25519')); the identity is the second.",
        with_fingerprints(d, X25519_B.public_key(), X25519_A.public_key()),
        small(),
        SMALL_META,
        identity=X25519_A,
    )


@vector
def fingerprint_rsa_oaep() -> Vector:
    return ok(
        "The file of rsa_oaep_success with the recipient's fingerprint on its stanza (the first "
        "16 bytes of HKDF(DER SubjectPublicKeyInfo, '', 'enctensor.v1 fingerprint rsa-oaep')).",
        with_fingerprints(_rsa_draft("rsa_oaep"), RSA_A.public_key()),
        small(),
        SMALL_META,
        identity=RSA_A,
    )


@vector
def fingerprint_mislabelled() -> Vector:
    tensors = small()
    d = make("fingerprint_mislabelled", tensors, SMALL_META, keys=(KEY_B, KEY_A))
    return ok(
        "Two key stanzas whose fingerprints are swapped: the first (B's) carries A's fingerprint. "
        "A reader MUST ignore fingerprints when opening: with A it tries both and the second opens "
        "(a reader that tried only the stanza labelled with its key's fingerprint would fail).",
        with_fingerprints(d, KEY_A, KEY_B),
        tensors,
        SMALL_META,
    )


@vector
def fingerprint_label_does_not_open() -> Vector:
    d = make("fingerprint_label_does_not_open", small(), SMALL_META)
    return fail(
        "no match",
        "A's key stanza labelled with the fingerprint of the reader's (wrong) key: a label opens nothing.",
        finish(with_fingerprints(d, KEY_WRONG)),
        key=KEY_WRONG,
    )


@vector
def fingerprint_on_unknown_type_ignored() -> Vector:
    tensors = small()
    d = make("fingerprint_on_unknown_type_ignored", tensors, SMALL_META)
    d.stanzas.append({"type": "future-kem", "fingerprint": "not hex, and not 16 bytes"})
    return ok(
        "A stanza of an unknown type with a member named fingerprint that is no fingerprint: the "
        "member's rules apply to key, x25519 and rsa-oaep stanzas only.",
        d,
        tensors,
        SMALL_META,
    )


def _bad_fingerprint(label: str, value: object, comment: str) -> Vector:
    d = make(label, small(), SMALL_META)
    d.stanzas[0][ref.FINGERPRINT_MEMBER] = value
    return fail("format failure", comment, finish(d))


@vector
def fingerprint_short() -> Vector:
    return _bad_fingerprint(
        "fingerprint_short",
        fill("fingerprint_short", 15).hex(),
        "A key stanza's fingerprint is 15 bytes (30 hex digits), not 16.",
    )


@vector
def fingerprint_long() -> Vector:
    d = _x25519_draft("fingerprint_long", X25519_A)
    d.stanzas[0][ref.FINGERPRINT_MEMBER] = fill("fingerprint_long", 17).hex()
    return fail(
        "format failure",
        "An x25519 stanza's fingerprint is 17 bytes (34 hex digits), not 16.",
        finish(d),
        identity=X25519_A,
    )


@vector
def fingerprint_uppercase() -> Vector:
    d = with_fingerprints(_rsa_draft("rsa_oaep"), RSA_A.public_key())
    d.stanzas[0][ref.FINGERPRINT_MEMBER] = d.stanzas[0][ref.FINGERPRINT_MEMBER].upper()
    assert d.stanzas[0][ref.FINGERPRINT_MEMBER] != d.stanzas[0][ref.FINGERPRINT_MEMBER].lower()
    return fail(
        "format failure",
        "The rsa-oaep stanza of fingerprint_rsa_oaep with its fingerprint in uppercase hex.",
        finish(d),
        identity=RSA_A,
    )


@vector
def fingerprint_not_hex() -> Vector:
    return _bad_fingerprint(
        "fingerprint_not_hex", "zz" * 16, "A key stanza's fingerprint is 32 characters that are not hex."
    )


@vector
def fingerprint_empty() -> Vector:
    return _bad_fingerprint("fingerprint_empty", "", "A key stanza's fingerprint is the empty string.")


@vector
def fingerprint_integer() -> Vector:
    return _bad_fingerprint(
        "fingerprint_integer", 12345, "A key stanza's fingerprint is an integer, not a hex string."
    )


@vector
def fingerprint_huge() -> Vector:
    return _bad_fingerprint(
        "fingerprint_huge",
        "ab" * 8192,
        "A key stanza's fingerprint is 16,384 hex digits: within the 16,384-byte string limit of "
        "every stanza (the stanza area spans several pages), refused for its length.",
    )


@vector
def fingerprint_on_scrypt() -> Vector:
    d = make("fingerprint_on_scrypt", small(), SMALL_META, passphrase=PASSPHRASE)
    d.stanzas[0][ref.FINGERPRINT_MEMBER] = fill("fingerprint_on_scrypt", 16).hex()
    return fail(
        "format failure",
        "An scrypt stanza with a well-formed fingerprint: a passphrase stanza has none (one derived "
        "from the passphrase would test guesses without scrypt), refused before scrypt runs.",
        finish(d),
        key=None,
        passphrase=PASSPHRASE,
    )


# ---- mixed stanzas ----


def _mixed() -> bytes:
    d = make(
        "stanza_mixed",
        small(),
        SMALL_META,
        keys=(KEY_A,),
        recipients=(X25519_A.public_key(), RSA_A.public_key()),
    )
    d.stanzas.insert(1, {"type": "future-kem", "share": fill("mixed/share", 32).hex(), "epoch": 3})
    assert [s["type"] for s in d.stanzas] == ["key", "future-kem", "x25519", "rsa-oaep"]
    return finish(d)


MIXED_COMMENT = "Stanzas key, future-kem (unknown), x25519 and rsa-oaep, one file key: "


@vector
def stanza_mixed_key() -> Vector:
    return ok(MIXED_COMMENT + "opens with the raw key.", _mixed(), small(), SMALL_META, key=KEY_A)


@vector
def stanza_mixed_x25519() -> Vector:
    return ok(
        MIXED_COMMENT + "opens with the X25519 identity.", _mixed(), small(), SMALL_META, identity=X25519_A
    )


@vector
def stanza_mixed_rsa_oaep() -> Vector:
    return ok(
        MIXED_COMMENT + "opens with the RSA private key.", _mixed(), small(), SMALL_META, identity=RSA_A
    )


@vector
def stanza_mixed_wrong_identity() -> Vector:
    return fail(
        "no match", MIXED_COMMENT + "another X25519 identity opens none.", _mixed(), identity=X25519_B
    )


@vector
def stanza_scrypt_beside_x25519() -> Vector:
    extra = ref.x25519_stanza(CounterRandom("sbx/fk")(32), X25519_A.public_key(), CounterRandom("sbx/e")(32))
    return _stanza_fail(
        "stanza_scrypt_beside_x25519", "An scrypt stanza and an x25519 stanza", _append(extra), PASSPHRASE
    )


# ---- signature ----

VERIFY_A = PUBLISHER_A.public_key()
VERIFY_B = PUBLISHER_B.public_key()


def _signed(label: str, tensors: list[ref.TensorSpec] | None = None) -> tuple[ref.Draft, bytes]:
    """A file with chunk_digest, signed by publisher A (the small file by default)."""
    d = make(label, small() if tensors is None else tensors, SMALL_META, chunk_digest=True)
    return d, finish(d, sign_with=PUBLISHER_A)


def _sig_hex(data: bytes) -> str:
    value: str = area_json(data)["signature"]["sig"]
    return value


def _with_sig_hex(data: bytes, sig: str) -> bytes:
    return replace_in_area(data, f'"sig":"{_sig_hex(data)}"', f'"sig":"{sig}"')


def _message(data: bytes) -> bytes:
    """The message a signature of this (well-formed) file signs (Spec, Signature)."""
    p = ref._parse(data)
    return ref.signature_message(p.header_bytes, p.mac, p.tag_table, p.digest_table)


@vector
def signature_verified() -> Vector:
    _, data = _signed("signature_verified")
    return ok(
        "A file signed with Ed25519 (type ed25519-blake3, header with chunk_digest BLAKE3 and a "
        "digest table); the reader is given the publisher's key: the signature verifies and "
        "every chunk matches its digest.",
        data,
        small(),
        SMALL_META,
        verify_key=VERIFY_A,
    )


def _multi_chunk_tensors() -> list[ref.TensorSpec]:
    return [
        ("a", "U8", (9000,), fill("smc/a", 9000), True),
        ("b", "U16", (4096,), fill("smc/b", 8192), False),
        ("empty", "F32", (0, 3), b"", True),
        ("c", "U8", (1,), fill("smc/c", 1), True),
        ("d", "I32", (3000,), fill("smc/d", 12000), False),
        ("s", "F64", (), struct.pack("<d", 2.5), True),
    ]


@vector
def signature_verified_multi_chunk() -> Vector:
    tensors = _multi_chunk_tensors()
    _, data = _signed("signature_verified_multi_chunk", tensors)
    return ok(
        "A signed file of multi-chunk tensors, encrypted and not (selective encryption), an empty "
        "tensor and a scalar: 12 chunks, 12 tags and 12 digests (digests of the ciphertext of "
        "encrypted chunks and of the clear bytes of the others); read with the publisher's key.",
        data,
        tensors,
        {"format": "pt", "epoch": "7"},
        verify_key=VERIFY_A,
    )


@vector
def signature_ignored_without_verify_key() -> Vector:
    _, data = _signed("signature_ignored_without_verify_key")
    return ok(
        "A signed file read without a verification key: the signature and the digests are "
        "ignored (their structure is checked, and the MAC covers the digest table).",
        data,
        small(),
        SMALL_META,
    )


@vector
def signature_other_publisher() -> Vector:
    _, data = _signed("signature_other_publisher")
    return fail(
        "header failure",
        "A file signed by publisher A, verified with publisher B's key.",
        data,
        verify_key=VERIFY_B,
    )


@vector
def signature_missing_with_verify_key() -> Vector:
    d = make("signature_missing_with_verify_key", small(), SMALL_META)
    return fail(
        "header failure",
        "An unsigned file (no chunk_digest) read with a verification key: a missing signature is "
        "a header failure.",
        finish(d),
        verify_key=VERIFY_A,
    )


def _tampered_sig(data: bytes) -> bytes:
    sig = _sig_hex(data)
    return _with_sig_hex(data, sig[:10] + ("1" if sig[10] == "0" else "0") + sig[11:])


@vector
def signature_tampered() -> Vector:
    _, data = _signed("signature_tampered")
    return fail(
        "header failure",
        "One bit of the signature flipped (in R), verified with the publisher's key.",
        _tampered_sig(data),
        verify_key=VERIFY_A,
    )


@vector
def signature_tampered_ignored_without_verify_key() -> Vector:
    _, data = _signed("signature_tampered_ignored_without_verify_key")
    return ok(
        "One bit of the signature flipped, read without a verification key: the signature is "
        "well formed and ignored.",
        _tampered_sig(data),
        small(),
        SMALL_META,
    )


# The order of the Ed25519 base point.
ED25519_L = ref.ED25519_L


@vector
def signature_malleated_s_plus_l() -> Vector:
    _, data = _signed("signature_malleated_s_plus_l")
    sig = bytes.fromhex(_sig_hex(data))
    s = int.from_bytes(sig[32:], "little") + ED25519_L
    malleated = sig[:32] + s.to_bytes(32, "little")
    return fail(
        "header failure",
        "The signature's S replaced by S + L (the group order): the same curve equation holds, but "
        "RFC 8032 requires S < L, so the signature does not verify.",
        _with_sig_hex(data, malleated.hex()),
        verify_key=VERIFY_A,
    )


@vector
def signature_transplanted() -> Vector:
    _, donor = _signed("signature_transplanted/donor")
    _, data = _signed("signature_transplanted")
    return fail(
        "header failure",
        "The signature of another file by the same publisher copied into this one.",
        _with_sig_hex(data, _sig_hex(donor)),
        verify_key=VERIFY_A,
    )


@vector
def signature_valid_payload_tampered_before_mac() -> Vector:
    d = make("signature_valid_payload_tampered_before_mac", small(), SMALL_META, chunk_digest=True)
    d.tag_table[16 + 3] ^= 0x01
    data = finish(d, sign_with=PUBLISHER_A)
    return fail(
        "payload failure",
        "A tag byte flipped before the MAC and the signature were computed: both verify, and the "
        "chunk's digest matches (its stored bytes are unchanged), but its tag does not verify.",
        data,
        verify_key=VERIFY_A,
    )


@vector
def signature_over_old_message() -> Vector:
    _, data = _signed("signature_over_old_message")
    p = ref._parse(data)
    old_message = b"enctensor.v1 signature\x00" + p.header_bytes + p.tag_table
    return fail(
        "header failure",
        "A signature by the publisher over the message of an earlier draft ('enctensor.v1 "
        "signature' || 0x00 || header || tag table, which binds neither the file key nor the "
        "stored bytes), in a signature member of type ed25519-blake3: it does not verify.",
        _with_sig_hex(data, PUBLISHER_A.sign(old_message).hex()),
        verify_key=VERIFY_A,
    )


@vector
def signature_without_chunk_digest() -> Vector:
    d = make("signature_without_chunk_digest", small(), SMALL_META)
    assert "chunk_digest" not in d.header and not d.digest_table
    return fail(
        "format failure",
        "A file with a signature (made over an empty digest table) but no chunk_digest in its "
        "header and so no digest table: a signed file must have one. No verification key is "
        "given: the structure is checked anyway.",
        finish(d, sign_with=PUBLISHER_A),
    )


# ---- chunk digests ----


@vector
def chunk_digest_unsigned() -> Vector:
    tensors = small()
    d = make("chunk_digest_unsigned", tensors, SMALL_META, chunk_digest=True)
    return ok(
        "A file with chunk_digest and a digest table but no signature, read without a "
        "verification key: valid (writers add the table only when they sign, but a reader does "
        "not require a signature for it).",
        d,
        tensors,
        SMALL_META,
    )


@vector
def chunk_digest_unsigned_with_verify_key() -> Vector:
    d = make("chunk_digest_unsigned_with_verify_key", small(), SMALL_META, chunk_digest=True)
    return fail(
        "header failure",
        "The file of chunk_digest_unsigned read with a verification key: the signature is missing.",
        finish(d),
        verify_key=VERIFY_A,
    )


def _digest_mismatch() -> bytes:
    d = make("chunk_digest_mismatch_before_mac", small(), SMALL_META, chunk_digest=True)
    d.digest_table[2 * ref.DIGEST_LEN + 7] ^= 0x01  # the digest of tensor "ids" (clear bytes)
    return finish(d, sign_with=PUBLISHER_A)


@vector
def chunk_digest_mismatch_before_mac() -> Vector:
    return fail(
        "payload failure",
        "The digest table entry of the third chunk (tensor 'ids', unencrypted) has a bit flipped "
        "before the MAC and the signature were computed: both verify and the chunk's tag "
        "verifies, but with a verification key every chunk is checked against its digest.",
        _digest_mismatch(),
        verify_key=VERIFY_A,
    )


@vector
def chunk_digest_mismatch_before_mac_without_verify_key() -> Vector:
    return ok(
        "The file of chunk_digest_mismatch_before_mac read without a verification key: digests "
        "are not checked (the MAC covers the table as stored), so it reads successfully.",
        _digest_mismatch(),
        small(),
        SMALL_META,
    )


@vector
def digest_table_flipped() -> Vector:
    _, data = _signed("digest_table_flipped")
    p = ref._parse(data)
    offset = layout(data).tags_start + len(p.tag_table) + 40
    return fail(
        "header failure",
        "A digest table byte flipped in the stored file (no verification key): the header MAC "
        "covers the digest table.",
        flip(data, offset),
    )


@vector
def header_chunk_digest_sha256() -> Vector:
    d = make("header_chunk_digest_sha256", small(), SMALL_META, chunk_digest=True)
    d.header["chunk_digest"] = "SHA-256"
    return fail(
        "format failure",
        "chunk_digest 'SHA-256' (a digest table of 32-byte entries present, MAC valid): BLAKE3 is "
        "the only value of version 1.",
        finish(d),
    )


@vector
def header_chunk_digest_lowercase() -> Vector:
    d = make("header_chunk_digest_lowercase", small(), SMALL_META, chunk_digest=True)
    d.header["chunk_digest"] = "blake3"
    return fail("format failure", "chunk_digest 'blake3' (values are case-sensitive; MAC valid).", finish(d))


@vector
def layout_truncated_in_digest_table() -> Vector:
    _, data = _signed("layout_truncated_in_digest_table")
    p = ref._parse(data)
    return fail(
        "format failure",
        "A signed file cut in the middle of its digest table.",
        data[: layout(data).tags_start + len(p.tag_table) + 50],
    )


@vector
def layout_digest_table_without_chunk_digest() -> Vector:
    d = make("layout_digest_table_without_chunk_digest", small(), SMALL_META)
    d.digest_table = bytearray(ref.chunk_digest_table(d.header, bytes(d.data)))
    return fail(
        "format failure",
        "A digest table written after the tag table (and under the MAC) although the header has "
        "no chunk_digest: for the reader those bytes are padding before data_offset, which must "
        "be zero.",
        finish(d),
    )


# ---- forgeries against signatures ----


def _forgery_tensors() -> list[ref.TensorSpec]:
    """Tensors whose every chunk holds at least one full 16-byte block (a chunk shorter than a
    block cannot be solved for a chosen tag)."""
    return [
        t("embed", "F32", (24, 64)),  # 6144 bytes: chunks of 4096 and 2048
        ("proj", "U8", (9000,), fill("forgery/proj", 9000), True),  # 4096, 4096, 808
        t("norm", "F32", (64,), encrypted=False),  # 256 clear bytes, GMAC
    ]


def _outsider_forgery() -> tuple[bytes, list[ref.TensorSpec]]:
    """A genuine file signed by publisher A for recipient X25519_A, and a forgery built by
    someone who knows only the file and X25519_A's public key: same header, tag table and
    signature; a new file key; each chunk chosen so that its tag under the new key equals the
    signed tag; a new digest table and MAC; a stanza wrapping the new key for X25519_A."""
    tensors = _forgery_tensors()
    d = make(
        "signature_outsider_forged",
        tensors,
        SMALL_META,
        keys=(),
        recipients=(X25519_A.public_key(),),
        chunk_digest=True,
    )
    genuine = finish(d, sign_with=PUBLISHER_A)
    p = ref._parse(genuine)  # everything below uses only public parts of the genuine file
    rng = CounterRandom("signature_outsider_forged/attacker")
    new_key = rng(32)
    section = bytearray(genuine[p.data_offset :])
    forged_tensors: list[ref.TensorSpec] = []
    k = 0
    for entry in p.header["tensors"]:
        name, (begin, end) = entry["name"], entry["offsets"]
        key = ref.tensor_key(new_key, name)
        m = max(1, -(-(end - begin) // CHUNK))
        plain = bytearray()
        for j in range(m):
            lo, hi = begin + j * CHUNK, min(begin + (j + 1) * CHUNK, end)
            target, nonce = p.tag_table[16 * k : 16 * k + 16], ref.chunk_nonce(j, m)
            wanted = (b"FORGED. " * (CHUNK // 8))[: hi - lo]  # what the attacker wants loaded
            if entry["encrypted"]:
                ct = solve_block(key, nonce, b"", gcm_ctr(key, nonce, wanted), target, in_aad=False, index=0)
                section[lo:hi] = ct
                plain += gcm_ctr(key, nonce, ct)
            else:
                clear = solve_block(key, nonce, wanted, b"", target, in_aad=True, index=0)
                section[lo:hi] = clear
                plain += clear
            k += 1
        forged_tensors.append((name, entry["dtype"], tuple(entry["shape"]), bytes(plain), entry["encrypted"]))
    forged_draft = ref.Draft(
        file_key=new_key,
        stanzas=[ref.x25519_stanza(new_key, X25519_A.public_key(), rng(32))],
        header=p.header,
        tag_table=bytearray(p.tag_table),
        digest_table=bytearray(ref.chunk_digest_table(p.header, bytes(section))),
        data=section,
    )
    forged = finish(forged_draft, header_bytes=p.header_bytes, signature=p.signature)
    q = ref._parse(forged)
    # The earlier draft's message (label || header || tag table) is unchanged: that signature
    # would still have verified. The new one covers the MAC, which only the file key makes.
    assert (q.header_bytes, q.tag_table, q.signature) == (p.header_bytes, p.tag_table, p.signature)
    assert q.mac != p.mac and q.digest_table != p.digest_table
    return forged, forged_tensors


@vector
def signature_outsider_forged() -> Vector:
    forged, _ = _outsider_forgery()
    return fail(
        "header failure",
        "Outsider forgery of a signed file: someone who knows only the genuine file and the "
        "recipient's X25519 public key kept its header, tag table and signature, picked a new "
        "file key, solved one 16-byte block of every chunk over GF(2^128) so that its GCM tag "
        "(GMAC tag for the clear tensor) under the new key equals the signed tag, wrote a new "
        "digest table and MAC and an x25519 stanza wrapping the new key for the recipient. The "
        "signature covers the MAC, so it does not verify.",
        forged,
        identity=X25519_A,
        verify_key=VERIFY_A,
    )


@vector
def signature_outsider_forged_without_verify_key() -> Vector:
    forged, forged_tensors = _outsider_forgery()
    return ok(
        "The forgery of signature_outsider_forged read without a verification key: it is a valid "
        "file for the recipient (anyone who knows a recipient's public key can write one), with "
        "the attacker's tensors. Only a verification key tells it from the publisher's file.",
        forged,
        forged_tensors,
        SMALL_META,
        identity=X25519_A,
    )


def _keyholder_edit() -> tuple[bytes, list[ref.TensorSpec]]:
    """A genuine signed file and the same file edited by a holder of its file key: in the
    second chunk of the encrypted tensor, block 2 set to chosen plaintext and block 5 solved
    so that the tag is unchanged; in the clear tensor, block 0 set and block 15 solved. The
    header, MAC, tag table, digest table and signature are byte-identical."""
    tensors = _forgery_tensors()
    d = make("signature_keyholder_edited_chunk", tensors, SMALL_META, chunk_digest=True)
    data = bytearray(finish(d, sign_with=PUBLISHER_A))
    p = ref._parse(bytes(data))
    edited = [list(x) for x in tensors]
    chosen = struct.pack("<4f", 1000.0, -1000.0, 1000.0, -1000.0)

    # Encrypted tensor "embed", chunk 1 (tag index 1), bytes [4096, 6144) of the tensor.
    key, nonce = ref.tensor_key(d.file_key, "embed"), ref.chunk_nonce(1, 2)
    lo = p.data_offset + CHUNK
    ct = bytes(data[lo : lo + 2048])
    plain = bytearray(gcm_ctr(key, nonce, ct))
    plain[32:48] = chosen
    ct = solve_block(
        key, nonce, b"", gcm_ctr(key, nonce, bytes(plain)), p.tag_table[16:32], in_aad=False, index=5
    )
    data[lo : lo + 2048] = ct
    edited[0][3] = tensors[0][3][:CHUNK] + gcm_ctr(key, nonce, ct)

    # Clear tensor "norm" (one chunk, tag index 5), 256 bytes.
    begin, end = d.header["tensors"][2]["offsets"]
    key, nonce = ref.tensor_key(d.file_key, "norm"), ref.chunk_nonce(0, 1)
    clear = chosen + tensors[2][3][16:]
    clear = solve_block(key, nonce, clear, b"", p.tag_table[80:96], in_aad=True, index=15)
    data[p.data_offset + begin : p.data_offset + end] = clear
    edited[2][3] = clear

    q = ref._parse(bytes(data))
    assert (q.header_bytes, q.mac, q.tag_table, q.digest_table, q.signature) == (
        p.header_bytes,
        p.mac,
        p.tag_table,
        p.digest_table,
        p.signature,
    )
    return bytes(data), [tuple(x) for x in edited]  # type: ignore[misc]


KEYHOLDER_COMMENT = (
    "A holder of the file key edited a signed file: in the second chunk of tensor 'embed' it "
    "set one 16-byte block of plaintext to chosen values and solved another block over "
    "GF(2^128) so that the chunk's GCM tag is unchanged; in the clear tensor 'norm' it did the "
    "same with the GMAC tag. Header, MAC, tag table, digest table and signature are "
    "byte-identical to the publisher's. "
)


@vector
def signature_keyholder_edited_chunk() -> Vector:
    data, _ = _keyholder_edit()
    return fail(
        "payload failure",
        KEYHOLDER_COMMENT + "With the publisher's key the signature verifies, but the edited "
        "chunks' BLAKE3 digests differ from the signed digest table.",
        data,
        verify_key=VERIFY_A,
    )


@vector
def signature_keyholder_edited_chunk_without_verify_key() -> Vector:
    data, edited = _keyholder_edit()
    return ok(
        KEYHOLDER_COMMENT + "Read without a verification key, every tag and the MAC verify: the "
        "edited tensors are released (a MAC and tags prove only that a key holder wrote the file).",
        data,
        edited,
        SMALL_META,
    )


# ---- strict Ed25519 ----
#
# RFC 8032 signing by hand, with the secret scalar of a seed, to build signatures that only a
# lax verifier accepts. OpenSSL (cryptography's Ed25519PublicKey.verify) accepts every one of
# them but the non-canonical R: the reference reader refuses them with explicit checks.


def _ed_point(encoding: str) -> ref.EdPoint:
    point = ref.ed_decode(bytes.fromhex(encoding))
    assert point is not None
    return point


ED_BASE = _ed_point("5866666666666666666666666666666666666666666666666666666666666666")
ED_IDENTITY_ENCODING = bytes([1]) + bytes(31)
ED_ORDER_8_ENCODING = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def _ed_scalar(seed: bytes) -> int:
    """The secret scalar a of an RFC 8032 private key (seed): SHA-512, first half clamped."""
    a = int.from_bytes(hashlib.sha512(seed).digest()[:32], "little")
    return (a & ((1 << 254) - 8)) | (1 << 254)


def _ed_challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % ED25519_L


def _openssl_accepts(public: bytes, sig: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, message)
    except InvalidSignature:
        return False
    return True


def _sig_r_is(label: str, r_encoding: bytes) -> tuple[bytes, bytes]:
    """A signed file whose signature has the given R encoding (of the identity point) and
    S = k * a, which satisfies S B = R + k A when R decodes to the identity."""
    _, data = _signed(label)
    message = _message(data)
    a_enc = VERIFY_A.public_bytes_raw()
    k = _ed_challenge(r_encoding, a_enc, message)
    s = k * _ed_scalar(bytes(range(192, 224))) % ED25519_L
    sig = r_encoding + s.to_bytes(32, "little")
    a_point = ref.ed_decode(a_enc)
    assert a_point is not None
    assert ref.ed_equal(ref.ed_mul(s, ED_BASE), ref.ed_mul(k, a_point))
    assert not ref.ed25519_verify_strict(a_enc, sig, message)
    return _with_sig_hex(data, sig.hex()), sig


@vector
def signature_small_order_r() -> Vector:
    data, sig = _sig_r_is("signature_small_order_r", ED_IDENTITY_ENCODING)
    assert _openssl_accepts(VERIFY_A.public_bytes_raw(), sig, _message(data))
    return fail(
        "header failure",
        "A signature by publisher A's key with R = the identity (a small-order point) and "
        "S = k * a: it satisfies the cofactorless equation S B = R + k A (OpenSSL accepts it), "
        "but strict verification rejects a small-order R.",
        data,
        verify_key=VERIFY_A,
    )


@vector
def signature_r_noncanonical() -> Vector:
    r_encoding = (ref.ED25519_P + 1).to_bytes(32, "little")  # y = p + 1, that is 1 once reduced
    data, _ = _sig_r_is("signature_r_noncanonical", r_encoding)
    return fail(
        "header failure",
        "A signature by publisher A's key whose R is the non-canonical encoding y = p + 1 of the "
        "identity, with S = k * a (k hashed over those R bytes): a verifier that reduces y "
        "modulo p and compares points accepts it; strict verification rejects a non-canonical R.",
        data,
        verify_key=VERIFY_A,
    )


@vector
def signature_verify_key_small_order() -> Vector:
    _, data = _signed("signature_verify_key_small_order")
    sig = ED_IDENTITY_ENCODING + bytes(32)  # R = identity, S = 0
    assert _openssl_accepts(ED_IDENTITY_ENCODING, sig, _message(data))
    return fail(
        "header failure",
        "The verification key is the identity point (01 00 ... 00), a small-order point, and the "
        "file's signature is R = identity, S = 0, which verifies under that key for every "
        "message (OpenSSL accepts it): a reader must refuse the key as unusable.",
        _with_sig_hex(data, sig.hex()),
        verify_key=Ed25519PublicKey.from_public_bytes(ED_IDENTITY_ENCODING),
    )


@vector
def signature_verify_key_mixed_order() -> Vector:
    _, data = _signed("signature_verify_key_mixed_order")
    message = _message(data)
    a = _ed_scalar(bytes(range(192, 224)))
    torsion = ref.ed_decode(ED_ORDER_8_ENCODING)
    assert torsion is not None
    public = ref.ed_encode(ref.ed_add(ref.ed_mul(a, ED_BASE), torsion))  # a B + T, T of order 8
    rng = CounterRandom("signature_verify_key_mixed_order/nonce")
    while True:  # a nonce for which 8 divides k, so that k T vanishes
        r = int.from_bytes(rng(64), "little") % ED25519_L
        r_enc = ref.ed_encode(ref.ed_mul(r, ED_BASE))
        k = _ed_challenge(r_enc, public, message)
        if k % 8 == 0:
            break
    sig = r_enc + ((r + k * a) % ED25519_L).to_bytes(32, "little")
    assert _openssl_accepts(public, sig, message)
    return fail(
        "header failure",
        "The verification key is a B + T with T of order 8 (a mixed-order point: not of small "
        "order, not in the prime-order subgroup) and the signature was made with a nonce for "
        "which 8 divides k, so the cofactorless equation holds (OpenSSL accepts it). The key "
        "must be a point of the prime-order subgroup (FORMAT.md, Signature, step 1): refused. "
        "(ed25519-dalek's verify_strict checks only that the key is not of small order and "
        "would accept this signature.)",
        _with_sig_hex(data, sig.hex()),
        verify_key=Ed25519PublicKey.from_public_bytes(public),
    )


def _sig_fail(label: str, comment: str, old: str, new: Callable[[str], str], **kwargs: Any) -> Vector:
    """A signed file with the signature member edited: ``old`` is replaced by new(sig hex)."""
    _, data = _signed(label)
    sig = _sig_hex(data)
    return fail("format failure", comment, replace_in_area(data, old.format(sig=sig), new(sig)), **kwargs)


SIG_MEMBER = '"signature":{{"type":"ed25519-blake3","sig":"{sig}"}}'


@vector
def signature_type_not_ed25519() -> Vector:
    return _sig_fail(
        "signature_type_not_ed25519",
        "Signature type 'ed448' (no verification key given: the structure is checked anyway)",
        '"type":"ed25519-blake3"',
        lambda _: '"type":"ed448"',
    )


@vector
def signature_type_ed25519() -> Vector:
    return _sig_fail(
        "signature_type_ed25519",
        "Signature type 'ed25519', the type of an earlier draft whose signature bound neither "
        "the file key nor the stored bytes: any type but 'ed25519-blake3' is a format failure "
        "(verification key given)",
        '"type":"ed25519-blake3"',
        lambda _: '"type":"ed25519"',
        verify_key=VERIFY_A,
    )


@vector
def signature_type_uppercase() -> Vector:
    return _sig_fail(
        "signature_type_uppercase",
        "Signature type 'Ed25519-BLAKE3' (type names are case-sensitive; verification key given)",
        '"type":"ed25519-blake3"',
        lambda _: '"type":"Ed25519-BLAKE3"',
        verify_key=VERIFY_A,
    )


@vector
def signature_sig_short() -> Vector:
    return _sig_fail(
        "signature_sig_short",
        "A 63-byte sig (no verification key given)",
        '"{sig}"',
        lambda s: f'"{s[:126]}"',
    )


@vector
def signature_sig_long() -> Vector:
    return _sig_fail(
        "signature_sig_long",
        "A 65-byte sig (verification key given)",
        '"{sig}"',
        lambda s: f'"{s}00"',
        verify_key=VERIFY_A,
    )


@vector
def signature_sig_uppercase() -> Vector:
    return _sig_fail("signature_sig_uppercase", "sig in uppercase hex", '"{sig}"', lambda s: f'"{s.upper()}"')


@vector
def signature_extra_member() -> Vector:
    key = VERIFY_A.public_bytes_raw().hex()
    return _sig_fail(
        "signature_extra_member",
        "The signature object also carries the publisher's public key as 'key' (a reader must "
        "not trust a key found in the file, and extra members are rejected)",
        '"sig":"{sig}"',
        lambda s: f'"sig":"{s}","key":"{key}"',
    )


@vector
def signature_missing_sig() -> Vector:
    return _sig_fail(
        "signature_missing_sig",
        "A signature object without 'sig'",
        SIG_MEMBER,
        lambda _: '"signature":{"type":"ed25519-blake3"}',
    )


@vector
def signature_not_object() -> Vector:
    return _sig_fail(
        "signature_not_object",
        "signature is the hex string of the signature, not an object",
        SIG_MEMBER,
        lambda s: f'"signature":"{s}"',
    )


@vector
def signature_null() -> Vector:
    return _sig_fail(
        "signature_null",
        "signature is null (null is not used anywhere)",
        SIG_MEMBER,
        lambda _: '"signature":null',
    )


# ---- order of the checks with signatures ----


@vector
def order_no_match_before_signature() -> Vector:
    d = make("order_no_match_before_signature", small(), SMALL_META)
    return fail(
        "no match",
        "An unsigned file, a verification key and a wrong key: no match comes before the missing signature.",
        finish(d),
        key=KEY_WRONG,
        verify_key=VERIFY_A,
    )


@vector
def order_no_match_before_verify_key_check() -> Vector:
    _, data = _signed("order_no_match_before_verify_key_check")
    return fail(
        "no match",
        "A signed file, a wrong key and the small-order identity point as verification key: the "
        "unusable key is a header failure, class 3, so no match (class 2) comes first.",
        data,
        key=KEY_WRONG,
        verify_key=Ed25519PublicKey.from_public_bytes(ED_IDENTITY_ENCODING),
    )


@vector
def order_signature_structure_before_no_match() -> Vector:
    _, data = _signed("order_signature_structure_before_no_match")
    return fail(
        "format failure",
        "A malformed signature type and a wrong key: the format failure comes first.",
        replace_in_area(data, '"type":"ed25519-blake3"', '"type":"ed448"'),
        key=KEY_WRONG,
    )


@vector
def order_signature_before_payload() -> Vector:
    _, data = _signed("order_signature_before_payload")
    return fail(
        "header failure",
        "A flipped signature bit and a flipped ciphertext byte, verification key given: the "
        "header failure (signature) comes first.",
        flip(_tampered_sig(data), layout(data).data_offset),
        verify_key=VERIFY_A,
    )


# ---- scrypt cost policy ----


@vector
def passphrase_log_n_19_default_policy() -> Vector:
    d = make("passphrase_log_n_19_default_policy", small(), SMALL_META, passphrase=PASSPHRASE)
    # The stanza for log_n 19, built from one scrypt run whose wrap key also checks it (a
    # second run through ref.read with max_scrypt_log_n=19 would cost as much again).
    salt = bytes.fromhex(d.stanzas[0]["salt"])
    wrap_key = ref.scrypt(PASSPHRASE.encode(), ref.SCRYPT_SALT_PREFIX + salt, 19)
    body = ref.seal_file_key(wrap_key, d.file_key)
    d.stanzas = [{"type": "scrypt", "salt": salt.hex(), "log_n": 19, "body": body.hex()}]
    data = finish(d)
    assert ref.open_file_key(wrap_key, body) == d.file_key
    ref._verify_mac(ref._parse(data), d.file_key)  # with max_scrypt_log_n >= 19: success
    return fail(
        "format failure",
        "An scrypt stanza with log_n 19 (512 MiB per attempt), read with the right passphrase "
        "under the default policy: refused before running scrypt (max_scrypt_log_n 18; the "
        "refusal names the policy). A reader given max_scrypt_log_n >= 19 opens it.",
        data,
        key=None,
        passphrase=PASSPHRASE,
    )


def _log_n_11(label: str) -> ref.Draft:
    return make(label, small(), SMALL_META, passphrase=PASSPHRASE, log_n=11)


@vector
def passphrase_log_n_11_policy_10() -> Vector:
    return fail(
        "format failure",
        "An scrypt stanza with log_n 11 read with the right passphrase and max_scrypt_log_n 10: "
        "the caller's policy refuses it before running scrypt.",
        finish(_log_n_11("passphrase_log_n_11_policy_10")),
        key=None,
        passphrase=PASSPHRASE,
        max_scrypt_log_n=10,
    )


@vector
def passphrase_log_n_11_policy_11() -> Vector:
    return ok(
        "An scrypt stanza with log_n 11 read with the right passphrase and max_scrypt_log_n 11: "
        "allowed (the cap is inclusive).",
        finish(_log_n_11("passphrase_log_n_11_policy_11")),
        small(),
        SMALL_META,
        key=None,
        passphrase=PASSPHRASE,
        max_scrypt_log_n=11,
    )


# --- Sharded sets (spec/vectors/sharded/<name>/) --------------------------------------------
#
# A set vector is a directory: the index SET_INDEX, the shard files, and expect.json. The
# shards are written as the library's converter writes them: every shard carries the metadata
# entry "enctensor.shard" (compact JSON, sorted keys) of its set, and the index maps every
# tensor to its shard (Hugging Face's layout, json.dumps(indent=2) and a newline).

SET_INDEX = "model.enct.index.json"
SET_META = {"format": "pt"}


def set_files(count: int) -> list[str]:
    """The shard file names of a set of ``count`` shards, in set order."""
    return [f"model-{i + 1:05d}-of-{count:05d}.enct" for i in range(count)]


def set_checkpoint(release: str) -> str:
    """The fixed checkpoint id of a release (16 bytes, lowercase hex)."""
    return CounterRandom("sharded/checkpoint/" + release)(ref.CHECKPOINT_LEN).hex()


def shard_entry(release: str, index: int, files: list[str]) -> str:
    """The value of "enctensor.shard" as the library writes it."""
    obj = {"checkpoint": set_checkpoint(release), "index": index, "count": len(files), "files": files}
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def model_shards(release: str) -> list[list[ref.TensorSpec]]:
    """The tensors of the three shards of a small checkpoint. Float tensors are the same in
    every release, the integer ones depend on it. embed.weight spans 1.5 chunks."""
    return [
        [t("embed.weight", "BF16", (64, 48)), t("layers.0.q", "I8", (16, 16), label=f"{release}/layers.0.q")],
        [
            t("layers.0.scale", "F32", (16,)),
            t("layers.1.q", "I8", (16, 16), label=f"{release}/layers.1.q"),
            t("layers.1.scale", "F32", (16,)),
        ],
        [
            t("lm_head.weight", "F16", (16, 16)),
            t("step", "I64", (1,), encrypted=False, label=f"{release}/step"),
        ],
    ]


@dataclass(frozen=True)
class SetShard:
    """A shard file: its name, its tensors and metadata as written, and its bytes."""

    file: str
    tensors: list[ref.TensorSpec]
    metadata: dict[str, str]
    data: bytes


def write_shard(
    label: str,
    file: str,
    tensors: list[ref.TensorSpec],
    metadata: dict[str, str],
    sign_with: Ed25519PrivateKey | None = None,
) -> SetShard:
    d = make(label, tensors, metadata, chunk_digest=sign_with is not None)
    return SetShard(file, tensors, metadata, finish(d, sign_with=sign_with))


def release_set(release: str, sign_with: Ed25519PrivateKey | None = None) -> list[SetShard]:
    """The three shards of a release, in set order, as the library writes them."""
    files = set_files(3)
    return [
        write_shard(
            f"sharded/{release}/{file}",
            file,
            tensors,
            {**SET_META, ref.SHARD_METADATA_KEY: shard_entry(release, i, files)},
            sign_with,
        )
        for i, (file, tensors) in enumerate(zip(files, model_shards(release), strict=True))
    ]


def weight_map_of(shards: list[SetShard]) -> dict[str, str]:
    """Every tensor of the shards mapped to its file, sorted by tensor name."""
    return dict(sorted((spec[0], s.file) for s in shards for spec in s.tensors))


def index_bytes(shards: list[SetShard], weight_map: dict[str, str] | None = None) -> bytes:
    """The index of ``shards`` (or with the given weight_map), as the library writes it."""
    total = sum(len(spec[3]) for s in shards for spec in s.tensors)
    wm = weight_map_of(shards) if weight_map is None else weight_map
    return (json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2) + "\n").encode(
        "utf-8"
    )


@dataclass
class SetVector:
    expect: str
    comment: str
    shards: list[SetShard]  # the shard files of the directory (for success: in set order)
    index: bytes
    key: bytes | None = KEY_A
    verify_key: Ed25519PublicKey | None = None

    @property
    def files(self) -> dict[str, bytes]:
        files = {s.file: s.data for s in self.shards}
        assert SET_INDEX not in files and len(files) == len(self.shards)
        return {**files, SET_INDEX: self.index}


SET_VECTORS: dict[str, Callable[[], SetVector]] = {}


def set_vector(fn: Callable[[], SetVector]) -> Callable[[], SetVector]:
    """Registers a set vector; its directory is the function name without ``set_``."""
    name = fn.__name__.removeprefix("set_")
    assert name not in SET_VECTORS and "rust" not in name
    SET_VECTORS[name] = fn
    return fn


def set_fail(comment: str, shards: list[SetShard], index: bytes | None = None) -> SetVector:
    return SetVector("set failure", comment, shards, index_bytes(shards) if index is None else index)


@set_vector
def set_good() -> SetVector:
    shards = release_set("a")
    return SetVector(
        "success",
        "A set of three shards as the library writes it: each shard has the enctensor.shard entry "
        "of one checkpoint, and the index maps every tensor to the shard that holds it.",
        shards,
        index_bytes(shards),
    )


@set_vector
def set_signed() -> SetVector:
    shards = release_set("s", sign_with=PUBLISHER_A)
    return SetVector(
        "success",
        "A set of three shards, each signed by publisher A, read with A's verification key: "
        "every signature and every chunk digest verifies and the set is whole.",
        shards,
        index_bytes(shards),
        verify_key=VERIFY_A,
    )


@set_vector
def set_missing_shard() -> SetVector:
    shards = release_set("a")[:2]
    return set_fail(
        "The last shard was deleted and its tensors removed from the index: the index and the two "
        "shards agree, but the shards' entries name three files and the third is missing.",
        shards,
    )


@set_vector
def set_extra_shard() -> SetVector:
    files = set_files(4)
    tensors = [t("layers.2.q", "I8", (16, 16), label="c/layers.2.q"), t("layers.2.scale", "F32", (16,))]
    meta = {**SET_META, ref.SHARD_METADATA_KEY: shard_entry("c", 3, files)}
    extra = write_shard(f"sharded/c/{files[3]}", files[3], tensors, meta)
    return set_fail(
        f"The three shards of the set plus {files[3]}, the fourth shard of another set (a four-shard "
        "release with the same key), its tensors added to the index: a file outside the set's files.",
        [*release_set("a"), extra],
    )


@set_vector
def set_swapped_names() -> SetVector:
    shards = release_set("a")
    first, second = shards[0], shards[1]
    swapped = [
        SetShard(second.file, first.tensors, first.metadata, first.data),
        SetShard(first.file, second.tensors, second.metadata, second.data),
        shards[2],
    ]
    return set_fail(
        f"The files of shards 1 and 2 exchanged names ({first.file} holds shard 2 and {second.file} "
        "shard 1) and the index was changed to match: each entry's index differs from the position "
        "of the file's name in files.",
        swapped,
    )


@set_vector
def set_mixed_release() -> SetVector:
    shards = release_set("a")
    other = release_set("b")[1]  # another release: same names, same tensors, same key
    mixed = [shards[0], other, shards[2]]
    return set_fail(
        f"{other.file} was replaced by the file of the same name of another release of the same "
        "checkpoint (same key, same tensor names, other values): every shard is authentic and the "
        "index matches, but its checkpoint differs from the others'.",
        mixed,
    )


@set_vector
def set_index_wrong_shard() -> SetVector:
    shards = release_set("a")
    weight_map = weight_map_of(shards)
    assert weight_map["layers.0.scale"] == shards[1].file
    weight_map["layers.0.scale"] = shards[0].file
    return set_fail(
        f"The index maps layers.0.scale to {shards[0].file}, which does not hold it ({shards[1].file} does).",
        shards,
        index_bytes(shards, weight_map),
    )


@set_vector
def set_index_omits_tensor() -> SetVector:
    shards = release_set("a")
    weight_map = weight_map_of(shards)
    del weight_map["layers.1.scale"]
    return set_fail(
        f"The index does not list layers.1.scale, which {shards[1].file} holds (its other tensors "
        "are listed).",
        shards,
        index_bytes(shards, weight_map),
    )


@set_vector
def set_no_shard_entry() -> SetVector:
    shards = release_set("a")
    plain = shards[1]
    bare = write_shard(f"sharded/a/{plain.file}/no-entry", plain.file, plain.tensors, dict(SET_META))
    return set_fail(
        f"{plain.file} was replaced by a file with the same tensors and key but without the "
        "enctensor.shard entry (encrypted on its own, not as a shard): authentic, but not a shard.",
        [shards[0], bare, shards[2]],
    )


@set_vector
def set_renamed_shard() -> SetVector:
    shards = release_set("a")
    last = shards[2]
    renamed = SetShard("model-final.enct", last.tensors, last.metadata, last.data)
    return set_fail(
        f"{last.file} was renamed model-final.enct and the index changed to match: the set's files "
        "do not include that name (and the file they name is missing).",
        [shards[0], shards[1], renamed],
    )


@set_vector
def set_wrong_key() -> SetVector:
    shards = release_set("a")
    v = SetVector(
        "no match",
        "The whole set read with a key that opens no shard: a shard's own failure keeps its class.",
        shards,
        index_bytes(shards),
    )
    v.key = KEY_WRONG
    return v


@set_vector
def set_signed_other_publisher() -> SetVector:
    shards = release_set("s", sign_with=PUBLISHER_A)
    middle = shards[1]
    resigned = write_shard(
        f"sharded/s/{middle.file}/publisher-b", middle.file, middle.tensors, middle.metadata, PUBLISHER_B
    )
    return SetVector(
        "header failure",
        f"The signed set with {middle.file} replaced by a shard with the same entry, tensors and key "
        "but signed by publisher B, read with A's verification key: that shard's signature does "
        "not verify (the set itself is consistent).",
        [shards[0], resigned, shards[2]],
        index_bytes(shards),
        verify_key=VERIFY_A,
    )


def _set_json(v: SetVector) -> dict[str, Any]:
    out: dict[str, Any] = {"expect": v.expect, "comment": v.comment, "index": SET_INDEX}
    if v.key is not None:
        out["key"] = v.key.hex()
    if v.verify_key is not None:
        out["verify_key"] = v.verify_key.public_bytes_raw().hex()
    if v.expect == "success":
        out["tensors"] = [
            {
                "shard": s.file,
                "name": name,
                "dtype": dtype,
                "shape": list(shape),
                "encrypted": encrypted,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            for s in v.shards
            for name, dtype, shape, raw, encrypted in s.tensors
        ]
        out["metadata"] = {s.file: s.metadata for s in v.shards}
    return out


def dump_set_json(obj: dict[str, Any]) -> str:
    """As dump_vector_json, with one shard's metadata per line."""
    text = dump_vector_json({k: v for k, v in obj.items() if k != "metadata"})
    if "metadata" not in obj:
        return text
    items = ",\n".join(
        f"    {json.dumps(file, ensure_ascii=False)}: {json.dumps(meta, ensure_ascii=False)}"
        for file, meta in obj["metadata"].items()
    )
    return text.removesuffix("\n}\n") + f',\n  "metadata": {{\n{items}\n  }}\n}}\n'


def _check_set(name: str, v: SetVector, directory: Path) -> None:
    """The reference reader must agree with what the set vector states."""
    try:
        shards = ref.read_sharded(directory / SET_INDEX, key=v.key, verify_key=v.verify_key)
    except ref.RefError as exc:
        assert expect_class(exc) == v.expect, (name, exc, v.expect)
        return
    assert v.expect == "success", (name, "success", v.expect)
    want = [
        (s.file, [(n, dt, tuple(sh), raw, enc) for n, dt, sh, raw, enc in s.tensors], s.metadata)
        for s in v.shards
    ]
    got = [
        (s.file, [(x.name, x.dtype, x.shape, x.data, x.encrypted) for x in s.tensors], s.metadata)
        for s in shards
    ]
    assert got == want, name


def write_set_vectors(out: Path) -> list[str]:
    """Writes every set vector into out/<name>/ and checks it; removes the .enct/.json files of
    sets (and in sets) that no longer exist."""
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in SET_VECTORS.items():
        v = fn()
        directory = out / name
        directory.mkdir(exist_ok=True)
        files = {**v.files, "expect.json": dump_set_json(_set_json(v)).encode("utf-8")}
        for path in sorted(directory.iterdir()):
            if path.suffix in (".enct", ".json") and path.name not in files:
                path.unlink()
        for file, data in files.items():
            (directory / file).write_bytes(data)
        _check_set(name, v, directory)
    for directory in sorted(out.iterdir()):
        if directory.is_dir() and directory.name not in SET_VECTORS:
            for path in directory.iterdir():
                if path.suffix in (".enct", ".json"):
                    path.unlink()
            if not any(directory.iterdir()):
                directory.rmdir()
    return list(SET_VECTORS)


# --- Output ---------------------------------------------------------------------------------


def _classify(v: Vector) -> tuple[str, list[ref.Tensor], dict[str, str]]:
    policy = DEFAULT_MAX_SCRYPT_LOG_N if v.max_scrypt_log_n is None else v.max_scrypt_log_n
    try:
        tensors, metadata = ref.read(
            v.file,
            key=v.key,
            passphrase=v.passphrase,
            identity=v.identity,
            verify_key=v.verify_key,
            max_scrypt_log_n=policy,
        )
    except ref.RefError as exc:
        return expect_class(exc), [], {}
    return "success", tensors, metadata


def _check(name: str, v: Vector) -> None:
    """The reference reader must agree with what the vector states."""
    got, tensors, metadata = _classify(v)
    assert got == v.expect, (name, got, v.expect)
    if v.expect == "success":
        want = [(n, dt, tuple(sh), raw, enc) for n, dt, sh, raw, enc in v.tensors]
        assert [(x.name, x.dtype, x.shape, x.data, x.encrypted) for x in tensors] == want, name
        assert metadata == v.metadata, name


def _identity_json(identity: ref.Identity) -> dict[str, str]:
    if isinstance(identity, X25519PrivateKey):
        return {"type": "x25519", "private": identity.private_bytes_raw().hex()}
    for private, pem in RSA_KEYS.values():
        if private.private_numbers() == identity.private_numbers():
            return {"type": "rsa", "private_pem": pem}
    raise KeyError("not a test RSA key")


def _vector_json(v: Vector) -> dict[str, Any]:
    out: dict[str, Any] = {"expect": v.expect, "comment": v.comment}
    assert v.key is None or v.identity is None
    if v.key is not None:
        out["key"] = v.key.hex()
    if v.passphrase is not None:
        out["passphrase"] = v.passphrase
    if v.identity is not None:
        out["identity"] = _identity_json(v.identity)
    if v.verify_key is not None:
        out["verify_key"] = v.verify_key.public_bytes_raw().hex()
    if v.max_scrypt_log_n is not None:
        out["max_scrypt_log_n"] = v.max_scrypt_log_n
    if v.expect == "success":
        out["tensors"] = [
            {
                "name": name,
                "dtype": dtype,
                "shape": list(shape),
                "encrypted": encrypted,
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            for name, dtype, shape, raw, encrypted in v.tensors
        ]
        out["metadata"] = v.metadata
    return out


def dump_vector_json(obj: dict[str, Any]) -> str:
    """JSON with one member per line and one tensor per line (diff-friendly, still JSON)."""

    def one_line(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = []
    for member, value in obj.items():
        if member == "tensors" and value:
            items = ",\n".join("    " + one_line(item) for item in value)
            lines.append(f'  "tensors": [\n{items}\n  ]')
        else:
            lines.append(f"  {one_line(member)}: {one_line(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(out_dir: Path | str | None = None) -> list[str]:
    """Write every vector into out_dir (default: this directory), and every set vector into
    out_dir/sharded/<name>/; return the names (set vectors as ``sharded/<name>``).

    Stale ``*.enct`` / ``*.json`` files of vectors that no longer exist are removed.
    """
    out = HERE if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    for name, fn in VECTORS.items():
        v = fn()
        _check(name, v)
        (out / f"{name}.enct").write_bytes(v.file)
        text = dump_vector_json(_vector_json(v))
        (out / f"{name}.json").write_bytes(text.encode("utf-8"))
        written |= {f"{name}.enct", f"{name}.json"}
    for path in sorted(out.iterdir()):
        if path.suffix in (".enct", ".json") and path.name not in written:
            path.unlink()
    sets = write_set_vectors(out / "sharded")
    return list(VECTORS) + [f"sharded/{name}" for name in sets]


def print_missing_rsa_bodies() -> None:
    """Run every vector with fresh RSA-OAEP bodies where constants are missing; print them."""
    global _MISSING_RSA_BODIES
    _MISSING_RSA_BODIES = {}
    for name, fn in VECTORS.items():
        _check(name, fn())
    for (key_name, plaintext), body in sorted(_MISSING_RSA_BODIES.items()):
        print(f'    ("{key_name}", "{plaintext}"): (')
        for i in range(0, len(body), 96):
            print(f'        "{body[i : i + 96]}"')
        print("    ),")
    print(f"# {len(_MISSING_RSA_BODIES)} missing", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-missing-rsa-bodies"]:
        print_missing_rsa_bodies()
    else:
        names = main(sys.argv[1] if len(sys.argv) > 1 else None)
        print(f"wrote {len(names)} vectors")
