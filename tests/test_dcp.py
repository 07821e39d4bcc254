"""enctensor.torch.dcp: torch.distributed.checkpoint saves and loads through EncWriter and
EncReader, in real multi-process jobs (gloo on 127.0.0.1, DTensor on a CPU device mesh).

One 2-rank job writes every checkpoint the tests use (and loads one with a different identity
on each rank); one 3-rank job loads them resharded and tries every way a set can be broken.
Each job starts its ranks from a fork server that has torch imported already (a fresh
interpreter per rank would import torch for several seconds each). The single-process loads and
the follower's own checks run in the test process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import multiprocessing
import os
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as torch_mp
from conftest import KEY, OTHER_KEY
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor

import enctensor
from enctensor import FormatError, IntegrityError, SignatureError, WrongKeyError
from enctensor._sharded import SHARD_KEY
from enctensor.torch.dcp import METADATA_FILE, EncReader, EncWriter

# A 2-rank save of ROWS as Shard(0) puts 48 rows (3 chunks of 4 KiB) in each rank's file; a
# 3-rank load as Shard(0) then needs only some chunks of each (see test_tampered_chunk...).
ROWS = (96, 64)
COLS = (48, 40)
CHUNK = 4096
PASSPHRASE = "correct horse battery staple"
JOB_TIMEOUT = 240.0

# DCP without a process group (the loads in this process) warns that it assumes one rank.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


# -- state dicts ------------------------------------------------------------------------------


def full_state(seed: int) -> dict[str, Any]:
    """Every kind of item: two sharded matrices, replicated bf16 and complex tensors (the
    format has no complex dtype), a 0-d and an empty tensor, an int and a dict."""
    g = torch.Generator().manual_seed(seed)
    return {
        "rows": torch.randn(ROWS, generator=g),
        "cols": torch.randn(COLS, generator=g),
        "bias": torch.randn(33, generator=g).to(torch.bfloat16),
        "phase": torch.randn(5, dtype=torch.complex64, generator=g),
        "scale": torch.tensor(seed + 0.5),
        "empty": torch.zeros(0, 3),
        "step": 100 + seed,
        "cfg": {"lr": seed / 8, "name": f"run{seed}"},
    }


def blank_state() -> dict[str, Any]:
    return {
        "rows": torch.zeros(ROWS),
        "cols": torch.zeros(COLS),
        "bias": torch.zeros(33, dtype=torch.bfloat16),
        "phase": torch.zeros(5, dtype=torch.complex64),
        "scale": torch.tensor(0.0),
        "empty": torch.ones(0, 3),
        "step": 0,
        "cfg": {"lr": 0.0, "name": ""},
    }


def sharded(state: dict[str, Any], mesh: Any, placements: dict[str, Placement]) -> dict[str, Any]:
    out = dict(state, cfg=dict(state["cfg"]))
    for name, placement in placements.items():
        out[name] = distribute_tensor(state[name], mesh, [placement])
    return out


def gathered(state: dict[str, Any]) -> dict[str, Any]:
    """The state with every DTensor gathered whole (a collective: every rank calls it)."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def assert_same(loaded: dict[str, Any], expected: dict[str, Any]) -> None:
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert loaded[name].dtype == value.dtype, name
            assert torch.equal(loaded[name], value), name
        else:
            assert loaded[name] == value, name


# -- jobs -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _group(rank: int, world: int, port: int) -> Iterator[Any]:
    """A gloo process group over 127.0.0.1 and a CPU device mesh over it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=90))
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def _launch(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Runs ``fn(rank, world, port, *args)`` in ``world`` processes and waits for all of them."""
    context = torch_mp.start_processes(
        fn, args=(world, _free_port(), *args), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + JOB_TIMEOUT
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} did not finish within {JOB_TIMEOUT} s")


def _failures(e: CheckpointException) -> dict[int, tuple[str, str]]:
    """rank -> (exception class, message), as DCP reports the ranks' failures."""
    return {rank: (type(exc).__name__, str(exc)) for rank, (exc, _) in e.failures.items()}


def _save_worker(rank: int, world: int, port: int, root: Path, creds: dict[str, Path]) -> None:
    """Writes every checkpoint the tests use, from a 2-rank job: ``rows`` as Shard(0) and
    ``cols`` as Shard(1) DTensors, the rest replicated."""
    placements = {"rows": Shard(0), "cols": Shard(1)}
    ids: dict[str, str | None] = {}
    with _group(rank, world, port) as mesh:

        def save(name: str, seed: int, **options: Any) -> None:
            writer = EncWriter(root / name, chunk_size=CHUNK, **options)
            dcp.save(sharded(full_state(seed), mesh, placements), storage_writer=writer)
            ids[name] = writer.checkpoint

        save("plain", 1, key=KEY)
        save("rolled", 2, key=KEY)
        dist.barrier()
        if rank == 0:  # keep the files of this save, then save again over it
            shutil.copytree(root / "rolled", root / "rolled-old")
        dist.barrier()
        save("rolled", 3, key=KEY)
        save("signed", 4, key=creds["key_file"], sign_with=creds["publisher"])
        save("forged", 4, key=KEY, sign_with=creds["impostor"])
        save("recipients", 5, recipients=[creds["x25519_pub"], creds["rsa_pub"]])
        save("passphrase", 6, passphrase=PASSPHRASE, scrypt_log_n=10)

        # Each rank opens with its own identity; then rank 1 with one that is no recipient.
        outcome: dict[str, Any] = {}
        for name, identity in (("own", ("x25519", "rsa")), ("stranger", ("x25519", "stranger"))):
            target = sharded(blank_state(), mesh, placements)
            reader = EncReader(root / "recipients", key=creds[identity[rank]])
            try:
                dcp.load(target, storage_reader=reader)
                outcome[name] = gathered(target)
            except CheckpointException as e:
                outcome[name] = _failures(e)
        if rank == 0:
            torch.save(outcome, root / "loaded-on-2.pt")
            (root / "ids.json").write_text(json.dumps(ids))


def _load_worker(rank: int, world: int, port: int, out: Path, scenarios: list[dict[str, Any]]) -> None:
    """Loads each scenario's checkpoint on 3 ranks into DTensors placed as it says, and
    records the gathered values or the ranks' failures."""
    outcome: dict[str, Any] = {}
    with _group(rank, world, port) as mesh:
        for s in scenarios:
            target = sharded(blank_state(), mesh, s["placements"])
            options = dict(s["options"])
            if isinstance(options.get("key"), list):  # one identity per rank
                options["key"] = options["key"][rank]
            try:
                dcp.load(target, storage_reader=EncReader(s["dir"], **options))
                outcome[s["name"]] = gathered(target)
            except CheckpointException as e:
                outcome[s["name"]] = _failures(e)
    if rank == 0:
        torch.save(outcome, out)


# -- fixtures ---------------------------------------------------------------------------------


def _write_pem(path: Path, key: Any) -> Path:
    if isinstance(key, ed25519.Ed25519PublicKey | x25519.X25519PublicKey | rsa.RSAPublicKey):
        data = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    return path


def _shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory that ``build`` fills once per test session: pytest-xdist workers share it
    (each would otherwise run the same multi-process job) under a lock."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, above each worker's
    d = base / name
    with open(f"{d}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / ".done").exists():
            shutil.rmtree(d, ignore_errors=True)  # what a failed attempt left
            d.mkdir()
            build(d)
            (d / ".done").touch()
    return d


_IDENTITIES = ("x25519", "rsa", "stranger", "publisher", "impostor")


def _write_creds(d: Path) -> None:
    (d / "key.key").write_bytes(KEY)
    publisher = ed25519.Ed25519PrivateKey.generate()
    me = x25519.X25519PrivateKey.generate()
    kms = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [me, kms, x25519.X25519PrivateKey.generate(), publisher, ed25519.Ed25519PrivateKey.generate()]
    for name, key in zip(_IDENTITIES, keys, strict=True):
        _write_pem(d / f"{name}.pem", key)
    _write_pem(d / "x25519.pub.pem", me.public_key())
    _write_pem(d / "rsa.pub.pem", kms.public_key())
    _write_pem(d / "publisher.pub.pem", publisher.public_key())


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key files: a raw key, an X25519 and an RSA identity with their public keys, a stranger's
    identity, the publisher's Ed25519 key and an impostor's."""
    d = _shared(tmp_path_factory, "dcp-creds", _write_creds)
    out = {"key_file": d / "key.key"}
    out.update({name: d / f"{name}.pem" for name in _IDENTITIES})
    out.update({f"{name}_pub": d / f"{name}.pub.pem" for name in ("x25519", "rsa", "publisher")})
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, creds: dict[str, Path]) -> Path:
    """The checkpoints written by the 2-rank job. Tests change copies of them only."""
    # The fork server imports these once; each rank is then a fork of it. (DTensor's first
    # operation imports torch._dynamo: 1.5-3 s per rank here.)
    modules = ["torch", "torch._dynamo", "torch.distributed.checkpoint", "torch.distributed.tensor"]
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        [*modules, "enctensor.torch.dcp", __name__]
    )
    return _shared(tmp_path_factory, "dcp-saved", lambda d: _launch(_save_worker, 2, d, creds))


def ids(root: Path) -> dict[str, str]:
    return json.loads((root / "ids.json").read_text())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _swapped(src: Path, dst: Path) -> Path:
    """A copy of checkpoint ``src`` with the two rank files exchanged."""
    d = _copy(src, dst)
    os.rename(d / "__0_0.enct", d / "tmp")
    os.rename(d / "__1_0.enct", d / "__0_0.enct")
    os.rename(d / "tmp", d / "__1_0.enct")
    return d


def tensor_span(path: Path, name: str) -> tuple[int, int]:
    """File offsets of a tensor's stored bytes (spec/FORMAT.md: preamble, stanza area, header)."""
    data = path.read_bytes()
    area_len, header_len, _, data_offset = struct.unpack_from("<IIIQ", data, 12)
    header = json.loads(data[32 + area_len : 32 + area_len + header_len])
    begin, end = next(t["offsets"] for t in header["tensors"] if t["name"] == name)
    return data_offset + begin, data_offset + end


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


# -- layout -----------------------------------------------------------------------------------


def test_each_rank_writes_its_own_encrypted_file_bound_to_the_metadata(saved: Path) -> None:
    d = saved / "plain"
    assert sorted(p.name for p in d.iterdir()) == [METADATA_FILE, "__0_0.enct", "__1_0.enct"]
    checkpoint = ids(saved)["plain"]
    files = ["__0_0.enct", "__1_0.enct", METADATA_FILE]
    for i, name in enumerate(files):
        info = enctensor.inspect(d / name)
        assert all(t["encrypted"] for t in info["tensors"])
        entry = json.loads(info["metadata"][SHARD_KEY])
        assert entry == {"checkpoint": checkpoint, "index": i, "count": 3, "files": files}
    # Rank 1 holds the second half of the rows and of the columns; names and shapes stay
    # inspectable, the bytes do not.
    rank1 = {t["name"]: t for t in enctensor.inspect(d / "__1_0.enct")["tensors"]}
    assert rank1["rows@48,0"]["shape"] == [48, 64]
    assert rank1["cols@0,20"]["shape"] == [48, 20]
    rows = full_state(1)["rows"]
    data = (d / "__1_0.enct").read_bytes()
    assert rows[48:52].numpy().tobytes() not in data
    assert rows[48:52].numpy().tobytes() in rows.numpy().tobytes()
    # The metadata is an encrypted tensor too: the fqns appear nowhere in clear.
    assert b"rows" not in (d / METADATA_FILE).read_bytes()


# -- loads in the test process (DCP without a process group: one rank) ------------------------


@pytest.mark.parametrize(
    ("name", "seed", "options"),
    [
        ("plain", 1, {"key": KEY}),
        ("rolled", 3, {"key": KEY}),
        ("passphrase", 6, {"passphrase": PASSPHRASE}),
    ],
)
def test_saved_on_two_loads_on_one(saved: Path, name: str, seed: int, options: dict[str, Any]) -> None:
    target = blank_state()
    dcp.load(target, storage_reader=EncReader(saved / name, **options))
    assert_same(target, full_state(seed))


def test_destinations_of_another_dtype_or_layout_are_filled(saved: Path) -> None:
    """What cannot be decrypted straight into its destination (another dtype, a strided
    view) goes through a staging buffer and is converted as DCP's own reader does."""
    target = blank_state()
    target["rows"] = torch.zeros(ROWS, dtype=torch.float64)
    target["cols"] = torch.zeros(COLS[::-1]).t()  # not contiguous
    target["scale"] = torch.tensor(0, dtype=torch.float64)
    dcp.load(target, storage_reader=EncReader(saved / "plain", key=KEY))
    expected = full_state(1)
    assert torch.equal(target["rows"], expected["rows"].double())
    assert not target["cols"].is_contiguous()
    assert torch.equal(target["cols"], expected["cols"])
    assert target["scale"].item() == 1.5


def test_names_the_format_cannot_hold_are_replaced(tmp_path: Path) -> None:
    """Tensor names are 1 to 4096 bytes and unique in a file: other fqns get ``#<n>`` names
    (the metadata maps each item to its name)."""
    state = {
        "": torch.ones(3),
        "a" * 5000: torch.arange(4.0),
        "#1": torch.full((2,), 7.0),
        "\ud800": torch.ones(1),
    }
    dcp.save(state, storage_writer=EncWriter(tmp_path, key=KEY))
    names = [t["name"] for t in enctensor.inspect(tmp_path / "__0_0.enct")["tensors"]]
    assert names == ["#0", "#1", "#2", "#3"]
    target = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(target, storage_reader=EncReader(tmp_path, key=KEY))
    assert_same(target, state)


def test_identities_and_signatures_on_one(saved: Path, creds: dict[str, Path]) -> None:
    for identity in ("x25519", "rsa"):
        target = blank_state()
        dcp.load(target, storage_reader=EncReader(saved / "recipients", key=creds[identity]))
        assert_same(target, full_state(5))
    target = blank_state()
    reader = EncReader(saved / "signed", key=KEY, verify_with=creds["publisher_pub"])
    dcp.load(target, storage_reader=reader)
    assert_same(target, full_state(4))


def test_errors_reach_the_caller_typed(saved: Path, creds: dict[str, Path]) -> None:
    """torch swallows read_metadata's exception and retries for rank-local metadata: the typed
    error still reaches the caller (not "AssertionError: metadata is None")."""
    cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
        ("plain", {"key": OTHER_KEY}, WrongKeyError, "no key opens"),
        ("plain", {"key": KEY, "verify_with": creds["publisher_pub"]}, SignatureError, "not signed"),
        ("forged", {"key": KEY, "verify_with": creds["publisher_pub"]}, SignatureError, "signature"),
        ("no-such-checkpoint", {"key": KEY}, FileNotFoundError, METADATA_FILE),
    ]
    for name, options, error, words in cases:
        with pytest.raises(CheckpointException) as e:
            dcp.load(blank_state(), storage_reader=EncReader(saved / name, **options))
        ((rank, (kind, message)),) = _failures(e.value).items()
        assert (rank, kind) == (0, error.__name__), message
        assert words in message
        assert isinstance(e.value.failures[0][0], error)


class _Payload:
    """Pickled, it makes the unpickler call os.mkdir(path)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (os.fspath(self.path),))


def _with_metadata(src: Path, dst: Path, obj: object) -> Path:
    """A copy of checkpoint ``src`` whose metadata file, written with the key and the set's
    entry, holds ``obj`` (torch.save format) instead of DCP's metadata."""
    d = _copy(src, dst)
    entries = enctensor.inspect(d / METADATA_FILE)["metadata"]
    buf = io.BytesIO()
    torch.save(obj, buf)
    blob = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    enctensor.save({"dcp.metadata": blob}, d / METADATA_FILE, key=KEY, metadata=entries)
    return d


def test_metadata_is_unpickled_without_running_code(saved: Path, tmp_path: Path) -> None:
    """Anyone who knows a recipient's public key can write a file that opens: the metadata
    goes through torch's weights-only unpickler, so a payload in it is refused, not run."""
    marker = tmp_path / "payload-ran"
    d = _with_metadata(saved / "plain", tmp_path / "payload", _Payload(marker))
    with pytest.raises(CheckpointException) as e:
        dcp.load(blank_state(), storage_reader=EncReader(d, key=KEY))
    kind, message = _failures(e.value)[0]
    assert kind == "FormatError", message
    assert "mkdir" in message and "safe_globals" in message
    assert not marker.exists()


def test_malformed_metadata_is_a_format_error(saved: Path, tmp_path: Path) -> None:
    d = _with_metadata(
        saved / "plain", tmp_path / "malformed", Metadata(state_dict_metadata=[1, 2], storage_data={})
    )  # type: ignore[arg-type]
    with pytest.raises(CheckpointException) as e:
        dcp.load(blank_state(), storage_reader=EncReader(d, key=KEY))
    kind, message = _failures(e.value)[0]
    assert kind == "FormatError", message
    assert "malformed DCP metadata" in message


@dataclasses.dataclass
class RunNote:
    text: str


class _NotingPlanner(DefaultSavePlanner):
    """Stores an object of its own class in the checkpoint's metadata, as custom planners may."""

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        plans, metadata = super().create_global_plan(all_plans)
        noted = {**metadata.planner_data, "note": RunNote("warm-up done")}
        return plans, dataclasses.replace(metadata, planner_data=noted)


def test_classes_of_a_custom_planner_are_allowed_by_name(tmp_path: Path) -> None:
    dcp.save(full_state(7), storage_writer=EncWriter(tmp_path, key=KEY), planner=_NotingPlanner())
    with pytest.raises(FormatError, match=r"holds a test_dcp\.RunNote, .* safe_globals="):
        EncReader(tmp_path, key=KEY).read_metadata()
    reader = EncReader(tmp_path, key=KEY, safe_globals=[RunNote])
    assert reader.read_metadata().planner_data["note"] == RunNote("warm-up done")
    target = blank_state()
    dcp.load(target, storage_reader=reader)
    assert_same(target, full_state(7))


def test_a_renamed_rank_file_is_not_taken_for_the_metadata(saved: Path, tmp_path: Path) -> None:
    d = _copy(saved / "plain", tmp_path / "renamed")
    shutil.copy(d / "__0_0.enct", d / METADATA_FILE)
    with pytest.raises(CheckpointException) as e:
        dcp.load(blank_state(), storage_reader=EncReader(d, key=KEY))
    kind, message = _failures(e.value)[0]
    assert kind == "IntegrityError", message
    assert "files were renamed" in message


def test_saving_without_collectives_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use_collectives=True"):
        dcp.save(full_state(1), storage_writer=EncWriter(tmp_path, key=KEY), use_collectives=False)
    assert not list(tmp_path.iterdir())


def test_a_follower_checks_every_file_it_opens(saved: Path, tmp_path: Path) -> None:
    """The coordinator checks the whole set before any rank reads; a follower (rank != 0)
    opens the files its plan needs itself, and checks each one again, since a file may have
    been replaced since. Driven through DCP's own planner, as a follower's dcp.load does."""
    swapped = _swapped(saved / "plain", tmp_path / "swapped")
    rolled = _copy(saved / "rolled", tmp_path / "rolled")
    shutil.copy(saved / "rolled-old" / "__0_0.enct", rolled / "__0_0.enct")
    missing = _copy(saved / "plain", tmp_path / "missing")
    (missing / "__1_0.enct").unlink()
    cases = [
        (swapped, "files were swapped or renamed"),
        (rolled, "belongs to another checkpoint"),
        (missing, "file 2 of 3 of this checkpoint is missing"),
    ]
    for directory, words in cases:
        reader = EncReader(directory, key=KEY)
        metadata = reader.read_metadata()
        planner = DefaultLoadPlanner()
        planner.set_up_planner(blank_state(), metadata, is_coordinator=False)
        reader.set_up_storage_reader(metadata, is_coordinator=False)
        plan = reader.prepare_local_plan(planner.create_local_plan())
        with pytest.raises(IntegrityError, match=words):
            reader.read_data(planner.finish_plan(plan), planner).wait()
    # The same follower steps on the intact checkpoint fill the state dict.
    reader = EncReader(saved / "plain", key=KEY)
    metadata = reader.read_metadata()
    planner = DefaultLoadPlanner()
    target = blank_state()
    planner.set_up_planner(target, metadata, is_coordinator=False)
    reader.set_up_storage_reader(metadata, is_coordinator=False)
    reader.read_data(planner.finish_plan(planner.create_local_plan()), planner).wait()
    assert_same(target, full_state(1))


def test_overwrite_false_refuses_an_existing_checkpoint(saved: Path, tmp_path: Path) -> None:
    d = _copy(saved / "plain", tmp_path / "no-overwrite")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(CheckpointException) as e:
        dcp.save(full_state(9), storage_writer=EncWriter(d, key=KEY, overwrite=False))
    assert _failures(e.value)[0][0] == "FileExistsError"
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_credentials_are_checked_early_and_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give a key"):
        EncWriter(tmp_path)
    with pytest.raises(ValueError, match="either a key or a passphrase"):
        EncReader(tmp_path)
    with pytest.raises(ValueError, match="either a key or a passphrase"):
        EncReader(tmp_path, key=KEY, passphrase=PASSPHRASE)
    secret = KEY.hex()
    with pytest.raises(TypeError) as e:
        EncWriter(tmp_path, key=secret)  # type: ignore[arg-type]
    assert secret not in str(e.value)
    for obj in (EncWriter(tmp_path, key=KEY, passphrase=None), EncReader(tmp_path, passphrase=PASSPHRASE)):
        shown = repr(obj)
        assert str(tmp_path) in shown
        assert secret not in shown and repr(KEY) not in shown and PASSPHRASE not in shown


# -- the 2-rank job: a different identity on each rank ----------------------------------------


def test_each_rank_opens_with_its_own_identity(saved: Path) -> None:
    outcome = torch.load(saved / "loaded-on-2.pt", weights_only=False)
    assert_same(outcome["own"], full_state(5))
    assert outcome["stranger"].keys() == {1}  # rank 0's identity opened every file it needed
    kind, message = outcome["stranger"][1]
    assert kind == "WrongKeyError", message


# -- the 3-rank job: resharding, and every way of breaking a set ------------------------------


def _broken_sets(saved: Path, d: Path) -> None:
    """Copies of saved checkpoints, each broken in one way, in ``d``."""
    tampered = _copy(saved / "plain", d / "tampered")
    # Chunk 2 of rank 1's rows (global rows 80-95): only rank 2's third of the rows needs it.
    begin, _ = tensor_span(tampered / "__1_0.enct", "rows@48,0")
    flip(tampered / "__1_0.enct", begin + 2 * CHUNK + 100)
    meta_tampered = _copy(saved / "plain", d / "metadata-tampered")
    begin, _ = tensor_span(meta_tampered / METADATA_FILE, "dcp.metadata")
    flip(meta_tampered / METADATA_FILE, begin + 10)
    (_copy(saved / "plain", d / "dropped") / "__1_0.enct").unlink()
    _swapped(saved / "plain", d / "swapped")
    rolled = _copy(saved / "rolled", d / "rank-file-rolled-back")
    shutil.copy(saved / "rolled-old" / "__1_0.enct", rolled / "__1_0.enct")
    meta_rolled = _copy(saved / "rolled", d / "metadata-rolled-back")
    shutil.copy(saved / "rolled-old" / METADATA_FILE, meta_rolled / METADATA_FILE)
    foreign = _copy(saved / "plain", d / "foreign")
    shutil.copy(saved / "rolled" / "__0_0.enct", foreign / "__0_0.enct")


@pytest.fixture(scope="module")
def loaded_on_3(
    tmp_path_factory: pytest.TempPathFactory, saved: Path, creds: dict[str, Path]
) -> dict[str, Any]:
    """What the 3-rank job loaded, or how each rank failed, per scenario."""
    rows_only = {"rows": Shard(0), "cols": Shard(0)}
    other = {"rows": Shard(1), "cols": Shard(1), "bias": Replicate()}
    pinned = ids(saved)["rolled"]

    def build(d: Path) -> None:
        _broken_sets(saved, d)

        def scenario(name: str, at: Path, placements: dict[str, Placement], **options: Any) -> dict[str, Any]:
            return {"name": name, "dir": at, "placements": placements, "options": options}

        identities = [creds["x25519"], creds["rsa"], creds["x25519"]]
        verify = creds["publisher_pub"]
        scenarios = [
            scenario("rows", saved / "plain", rows_only, key=KEY),
            scenario("columns", saved / "plain", other, key=KEY),
            scenario("signed", saved / "signed", rows_only, key=KEY, verify_with=verify),
            scenario("passphrase", saved / "passphrase", other, passphrase=PASSPHRASE),
            scenario("identities", saved / "recipients", rows_only, key=identities),
            scenario("pinned", saved / "rolled", rows_only, key=KEY, expect_checkpoint=pinned),
            scenario("tampered", d / "tampered", rows_only, key=KEY),
            scenario("metadata tampered", d / "metadata-tampered", rows_only, key=KEY),
            scenario("dropped", d / "dropped", rows_only, key=KEY),
            scenario("swapped", d / "swapped", rows_only, key=KEY),
            scenario("rank file rolled back", d / "rank-file-rolled-back", rows_only, key=KEY),
            scenario("metadata rolled back", d / "metadata-rolled-back", rows_only, key=KEY),
            scenario("foreign file", d / "foreign", rows_only, key=KEY),
            scenario(
                "whole set rolled back", saved / "rolled-old", rows_only, key=KEY, expect_checkpoint=pinned
            ),
            scenario("wrong key", saved / "plain", rows_only, key=OTHER_KEY),
            scenario("unsigned", saved / "plain", rows_only, key=KEY, verify_with=verify),
            scenario("forged", saved / "forged", rows_only, key=KEY, verify_with=verify),
        ]
        _launch(_load_worker, 3, d / "loaded-on-3.pt", scenarios)

    d = _shared(tmp_path_factory, "dcp-loaded-on-3", build)
    return torch.load(d / "loaded-on-3.pt", weights_only=False)


@pytest.mark.parametrize(
    ("scenario", "seed"),
    [("rows", 1), ("columns", 1), ("signed", 4), ("passphrase", 6), ("identities", 5), ("pinned", 3)],
)
def test_saved_on_two_loads_on_three(loaded_on_3: dict[str, Any], scenario: str, seed: int) -> None:
    assert_same(loaded_on_3[scenario], full_state(seed))


def test_tampered_chunk_fails_only_the_rank_that_reads_it(loaded_on_3: dict[str, Any]) -> None:
    """Ranks decrypt only the chunks under their read items: ranks 0 and 1 never touch the
    flipped chunk, rank 2 does and gets IntegrityError."""
    failures = loaded_on_3["tampered"]
    assert failures.keys() == {2}
    kind, message = failures[2]
    assert kind == "IntegrityError", message
    assert "rows@48,0" in message


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("dropped", "shard 2 of 3 of this checkpoint is missing"),
        ("swapped", "shards were swapped or renamed"),
        ("rank file rolled back", "belongs to another checkpoint"),
        ("metadata rolled back", "belongs to another checkpoint"),
        ("foreign file", "belongs to another checkpoint"),
    ],
)
def test_a_broken_set_is_refused_before_any_rank_reads(
    loaded_on_3: dict[str, Any], scenario: str, words: str
) -> None:
    """The coordinator's check of the whole set fails, so DCP reports it from rank 0 alone and
    no rank reads any tensor."""
    failures = loaded_on_3[scenario]
    assert failures.keys() == {0}, failures
    kind, message = failures[0]
    assert kind == "IntegrityError", message
    assert words in message


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("metadata tampered", IntegrityError),
        ("whole set rolled back", IntegrityError),
        ("wrong key", WrongKeyError),
        ("unsigned", SignatureError),
        ("forged", SignatureError),
    ],
)
def test_every_rank_refuses_metadata_it_cannot_trust(
    loaded_on_3: dict[str, Any], scenario: str, error: type[Exception]
) -> None:
    failures = loaded_on_3[scenario]
    assert failures.keys() == {0, 1, 2}
    assert {kind for kind, _ in failures.values()} == {error.__name__}, failures
