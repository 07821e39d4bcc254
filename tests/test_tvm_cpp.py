"""TVM's C++ runtime loading encrypted parameters without Python (examples/tvm_cpp): the example
host and ``libenctensor_tvm.so`` are built with the system C++ compiler against the apache-tvm
wheel, run in subprocesses, and must give the Python run's output bit for bit; the registered
global function ``enctensor.load_params`` is also called from a Python TVM host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tvm
from conftest import ALL_DTYPES, KEY, OTHER_KEY, sample_array
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from test_tvm import mlp
from tvm import relax

import enctensor
import enctensor.tvm as ev

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built by its own script (which builds the enctensor C library first)."""
    out = tmp_path_factory.mktemp("tvm_cpp")
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "tvm_cpp" / "build.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The compiled module, its encrypted parameters and input, and the Python VM's output."""
    d = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(3)
    shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,)}
    params = {n: rng.standard_normal(s).astype("float32") for n, s in shapes.items()}
    x = rng.standard_normal((4, 16)).astype("float32")
    ex = tvm.compile(mlp(), target="llvm")
    ex.export_library(str(d / "mlp.so"))
    ev.save(params, d / "params.enct", key=KEY)
    ev.save({"x": x}, d / "inputs.enct", key=KEY)
    (d / "key.hex").write_text(KEY.hex() + "\n")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    expected = vm["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(params[n]) for n in shapes)).numpy()
    return d, expected


def run_example(
    built: Path, d: Path, params: str = "params.enct", key: str = "key.hex"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(built / "tvm_cpp_example"),
            str(d / "mlp.so"),
            str(d / params),
            str(d / "inputs.enct"),
            str(d / key),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cpp_host_runs_main_on_decrypted_params_bit_for_bit(
    built: Path, model: tuple[Path, np.ndarray]
) -> None:
    d, expected = model
    done = run_example(built, d)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "shape 4 8"
    got = np.array([np.float32(v) for v in lines[1:]], dtype=np.float32).reshape(4, 8)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert np.abs(expected).sum() > 0


def test_cpp_host_refuses_tampered_params_and_wrong_key(built: Path, model: tuple[Path, np.ndarray]) -> None:
    d, _ = model
    data = bytearray((d / "params.enct").read_bytes())
    data[-5] ^= 1  # a byte of the last tensor's ciphertext
    (d / "tampered.enct").write_bytes(bytes(data))
    done = run_example(built, d, params="tampered.enct")
    assert done.returncode == 1 and done.stdout == ""
    assert "ENCT_ERR_INTEGRITY" in done.stderr and "failed authentication" in done.stderr
    (d / "other.hex").write_text(OTHER_KEY.hex())
    done = run_example(built, d, key="other.hex")
    assert done.returncode == 1 and done.stdout == ""
    assert "ENCT_ERR_WRONG_KEY" in done.stderr and OTHER_KEY.hex() not in done.stderr


# The Python host runs in its own process: it loads libenctensor_tvm.so, which links its own
# copy of the enctensor core, so this process's enctensor._core stays out of it.
HOST = textwrap.dedent(
    """
    import ctypes, json, sys
    import tvm
    ctypes.CDLL(sys.argv[1])  # registers enctensor.load_params
    load = tvm.get_global_func("enctensor.load_params")
    results = {}
    for case in json.loads(sys.argv[2]):
        args = [case["path"], case["kind"], bytes.fromhex(case["secret"])]
        args.append(bytes.fromhex(case["verify"]) if case["verify"] else None)
        try:
            params = load(*args)
            results[case["name"]] = {
                name: [str(t.dtype), list(t.shape), t.numpy().tobytes().hex()] for name, t in params.items()
            }
        except Exception as e:
            results[case["name"]] = [type(e).__name__, str(e)]
    print(json.dumps(results))
    """
)


def test_load_params_from_a_python_tvm_host(built: Path, tmp_path: Path) -> None:
    arrays = {f"t{i}": sample_array(dt, (3, 5), seed=i) for i, dt in enumerate(ALL_DTYPES)}
    publisher = ed25519.Ed25519PrivateKey.generate()
    identity = x25519.X25519PrivateKey.generate()
    enctensor.save(
        arrays, tmp_path / "all.enct", key=KEY, sign_with=publisher, recipients=identity.public_key()
    )
    enctensor.save(arrays, tmp_path / "pass.enct", passphrase=PASSPHRASE, scrypt_log_n=10)
    signer_pub = publisher.public_key().public_bytes_raw().hex()
    stranger_pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()

    def case(name: str, path: str, kind: str, secret: bytes, verify: str = "") -> dict[str, str]:
        return {
            "name": name,
            "path": str(tmp_path / path),
            "kind": kind,
            "secret": secret.hex(),
            "verify": verify,
        }

    cases = [
        case("key", "all.enct", "key", KEY),
        case("signed", "all.enct", "key", KEY, signer_pub),
        case("x25519", "all.enct", "x25519", identity.private_bytes_raw()),
        case("passphrase", "pass.enct", "passphrase", PASSPHRASE.encode()),
        case("wrong_key", "all.enct", "key", OTHER_KEY),
        case("stranger", "all.enct", "key", KEY, stranger_pub),
        case("missing", "missing.enct", "key", KEY),
        case("bad_kind", "all.enct", "rsa", KEY),
    ]
    done = subprocess.run(
        [sys.executable, "-c", HOST, str(built / "libenctensor_tvm.so"), json.dumps(cases)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    # What the Python adapter gives for the same file: same names, dtypes, shapes and bytes.
    want = {
        name: [str(t.dtype), list(t.shape), t.numpy().tobytes().hex()]
        for name, t in ev.load(tmp_path / "all.enct", key=KEY).items()
    }
    assert want["t0"][0] == "bool" and want["t8"][0] == "bfloat16" and len(want) == len(ALL_DTYPES)
    for name in ("key", "signed", "x25519", "passphrase"):
        assert results[name] == want, name
    assert results["wrong_key"][0] == "ValueError" and "ENCT_ERR_WRONG_KEY" in results["wrong_key"][1]
    assert results["stranger"][0] == "ValueError" and "ENCT_ERR_SIGNATURE" in results["stranger"][1]
    assert results["missing"][0] == "RuntimeError" and "ENCT_ERR_IO" in results["missing"][1]
    assert results["bad_kind"][0] == "ValueError" and "kind must be" in results["bad_kind"][1]
