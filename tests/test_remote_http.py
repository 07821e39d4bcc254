"""Remote files over plain HTTP (issue 14, §2 and §3): a real HTTP server with Range support on
127.0.0.1 (tests/remote_servers.py) read through fsspec's HTTP filesystem.

Counted on the server: an open is one HEAD and at most two ranged GETs; a slice fetches only
the chunks under it; a failing, slow, cut, short or replaced response is retried, then refused
with a typed error, and a destination is never left partly filled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import KEY, OTHER_KEY
from remote_servers import RangeServer

import enctensor
from enctensor import _api, _remote
from enctensor.errors import FormatError, IntegrityError, ObjectChangedError, RemoteReadError

ROWS, COLS = 65_536, 1_024  # float32: 256 MiB


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_remote, "BACKOFF_SECONDS", 0.01)


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "w": rng.standard_normal((300, 257), dtype=np.float32),
        "b": np.arange(7, dtype=np.int8),
        "empty": np.zeros((0, 4), np.float16),
        "z": rng.integers(0, 1 << 30, (513,), dtype=np.int64),
    }


def write(server: RangeServer, name: str, tensors: dict[str, np.ndarray], **kw: object) -> str:
    enctensor.save(tensors, server.root / name, key=KEY, **kw)  # type: ignore[arg-type]
    return server.url(name)


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_load_safe_open_verify_and_inspect_by_url(http_server: RangeServer) -> None:
    t = sample()
    url = write(http_server, "m.enct", t, chunk_size=4096)
    out = enctensor.load(url, key=KEY)
    assert list(out) == list(t)
    for name in t:
        assert out[name].dtype == t[name].dtype and out[name].tobytes() == t[name].tobytes()
    with enctensor.safe_open(url, key=KEY) as f:
        assert f.keys() == list(t)
        assert np.array_equal(f.get_slice("w")[17:203, 5:250:3], t["w"][17:203, 5:250:3])
        assert np.array_equal(f.get_tensor("z"), t["z"])
    enctensor.verify(url, key=KEY)
    info = enctensor.inspect(url)
    assert [row["name"] for row in info["tensors"]] == list(t)
    with pytest.raises(enctensor.WrongKeyError):
        enctensor.load(url, key=OTHER_KEY)


def test_open_is_one_head_and_at_most_two_gets_then_a_slice_fetches_about_its_size(
    http_server: RangeServer,
) -> None:
    big = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)
    url = write(http_server, "big.enct", {"w": big})
    size = (http_server.root / "big.enct").stat().st_size
    del big
    http_server.reset()
    with enctensor.safe_open(url, key=KEY) as f:
        opened = http_server.requests
        assert [r.method for r in opened].count("HEAD") <= 1
        gets = [r for r in opened if r.method == "GET"]
        assert 1 <= len(gets) <= 2
        header_area = sum(r.body_bytes for r in gets)
        assert header_area <= 64 << 10
        http_server.reset()
        rows = ROWS // 100  # 1 % of the file
        got = f.get_slice("w")[30_000 : 30_000 + rows]
    expect = np.arange(ROWS * COLS, dtype=np.float32)[30_000 * COLS : (30_000 + rows) * COLS]
    assert np.array_equal(got, expect.reshape(rows, COLS))
    gets = http_server.gets()
    fetched = sum(r.body_bytes for r in gets)
    assert fetched <= 0.02 * size + header_area, (fetched, size)
    assert fetched >= rows * COLS * 4
    # 2.6 MiB in parts of at most 8 MiB: one request (coalesced chunks).
    assert len(gets) == 1, [r.range for r in gets]
    assert all(r.status == 206 for r in gets)


def test_a_whole_load_fetches_the_file_once_in_parallel_parts(http_server: RangeServer) -> None:
    rng = np.random.default_rng(1)
    t = {f"t{i}": rng.standard_normal((1 << 20,), dtype=np.float32) for i in range(6)}  # 24 MiB
    url = write(http_server, "p.enct", t)
    size = (http_server.root / "p.enct").stat().st_size
    http_server.reset()
    out = enctensor.load(url, key=KEY)
    assert all(out[k].tobytes() == t[k].tobytes() for k in t)
    gets = http_server.gets()
    data = gets[1:] if len(gets) > 1 else gets
    assert sum(r.body_bytes for r in gets) <= size + (64 << 10)
    # Adjacent tensors are coalesced into parts of at most 8 MiB: 24 MiB in 3 (or 4) GETs.
    assert 3 <= len(data) <= 5, [r.range for r in gets]


def test_a_tampered_chunk_is_refused_and_the_destination_zeroed(http_server: RangeServer) -> None:
    t = sample()
    url = write(http_server, "t.enct", t, chunk_size=4096)
    path = http_server.root / "t.enct"
    raw = bytearray(path.read_bytes())
    raw[-2000] ^= 1  # inside the last tensor's data
    replace(path, bytes(raw))
    reader = _api._open(url, KEY, None)
    index = [row[0] for row in reader.tensors()].index("z")
    dst = bytearray(b"\xff" * t["z"].nbytes)
    with pytest.raises(IntegrityError, match="failed authentication"):
        reader.read_into(index, dst)
    assert dst == bytes(len(dst))
    with pytest.raises(IntegrityError):
        enctensor.load(url, key=KEY)
    # The other tensors still read (random access): only the chunks read are checked.
    with enctensor.safe_open(url, key=KEY) as f:
        assert np.array_equal(f.get_tensor("w"), t["w"])


def test_non_zero_padding_between_tensors_is_a_format_error(http_server: RangeServer) -> None:
    t = {"a": np.ones(5, np.int8), "b": np.ones(9, np.int8)}
    url = write(http_server, "g.enct", t)
    path = http_server.root / "g.enct"
    info = enctensor.inspect(path)
    raw = bytearray(path.read_bytes())
    # "a" is 5 bytes at the data offset; "b" starts 64 bytes later: byte 10 is padding.
    data_offset = len(raw) - 64 - 9
    assert info["tensors"][1]["nbytes"] == 9
    raw[data_offset + 10] = 7
    replace(path, bytes(raw))
    with pytest.raises(FormatError, match="padding before tensor"):
        enctensor.load(url, key=KEY)
    with pytest.raises(FormatError, match="padding before tensor"):
        enctensor.verify(url, key=KEY)


def test_server_errors_are_retried_then_named(http_server: RangeServer) -> None:
    t = sample()
    url = write(http_server, "r.enct", t)
    http_server.fail_next(2, 503)
    out = enctensor.load(url, key=KEY)
    assert out["w"].tobytes() == t["w"].tobytes()
    assert [r.status for r in http_server.gets()][:2] == [503, 503]
    with enctensor.safe_open(url, key=KEY) as f:
        http_server.fail_next(_remote.ATTEMPTS, 500)
        with pytest.raises(RemoteReadError, match=r"r\.enct: reading bytes .* failed 4 times") as e:
            f.get_tensor("w")
        assert isinstance(e.value, OSError)
        assert url in str(e.value)
        # The server recovered: the same handle reads again.
        assert f.get_tensor("w").tobytes() == t["w"].tobytes()


def test_timeouts_cut_and_short_responses_are_retried(http_server: RangeServer) -> None:
    import aiohttp

    t = sample()
    url = write(http_server, "s.enct", t)
    options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=0.5)}}
    with enctensor.safe_open(url, key=KEY, storage_options=options) as f:
        for inject in (
            lambda: http_server.hang_next(1, 2.0),
            lambda: http_server.cut_next(1, 100),
            lambda: http_server.short_next(1, 100),
        ):
            inject()
            assert f.get_tensor("w").tobytes() == t["w"].tobytes()
        http_server.short_next(_remote.ATTEMPTS, 100)
        with pytest.raises(RemoteReadError, match="the server sent 100 bytes of the"):
            f.get_tensor("w")
        http_server.hang_next(_remote.ATTEMPTS, 2.0)
        with pytest.raises(RemoteReadError, match="Timeout"):
            f.get_tensor("w")


def test_an_object_replaced_between_reads_is_object_changed(http_server: RangeServer) -> None:
    t = sample()
    url = write(http_server, "c.enct", t)
    other = dict(t, w=t["w"] + 1)
    enctensor.save(other, http_server.root / "other.enct", key=KEY)
    with enctensor.safe_open(url, key=KEY) as f:
        replace(http_server.root / "c.enct", (http_server.root / "other.enct").read_bytes())
        with pytest.raises(ObjectChangedError, match="replaced or removed while it was being read"):
            f.get_tensor("w")
        (http_server.root / "c.enct").unlink()
        with pytest.raises(ObjectChangedError):
            f.get_tensor("w")


def test_an_object_replaced_between_the_two_requests_of_an_open(http_server: RangeServer) -> None:
    # 4 KiB chunks of 16 MiB: a 64 KiB tag table, so the open needs its second request.
    big = {"w": np.arange(4 << 20, dtype=np.float32)}
    url = write(http_server, "h.enct", big, chunk_size=4096)
    enctensor.save({"w": big["w"][::-1].copy()}, http_server.root / "h2.enct", key=KEY, chunk_size=4096)
    http_server.after_gets(
        1, lambda: replace(http_server.root / "h.enct", (http_server.root / "h2.enct").read_bytes())
    )
    http_server.reset()
    with pytest.raises(ObjectChangedError):
        enctensor.safe_open(url, key=KEY)
    assert len(http_server.gets()) == 2


def test_a_missing_file_is_file_not_found(http_server: RangeServer) -> None:
    with pytest.raises(FileNotFoundError):
        enctensor.load(http_server.url("absent.enct"), key=KEY)


def test_a_sharded_set_by_url_and_a_missing_shard(http_server: RangeServer) -> None:
    import torch
    from test_sharded_access import INDEX, reference_state, write_set

    state = reference_state(3)
    write_set(http_server.root, state)
    url = http_server.url(INDEX)
    http_server.reset()
    out = enctensor.load(url, key=KEY)
    assert set(out) == set(state)
    # The index is fetched once (telling it from a file, then opening the set, share it).
    assert [r.path for r in http_server.gets()].count("/" + INDEX) == 1
    for name, value in state.items():
        assert torch.equal(torch.from_numpy(out[name]), value)
    http_server.reset()
    with enctensor.safe_open(url, key=KEY, framework="pt") as f:
        assert torch.equal(f.get_slice("embed.weight")[10:20], state["embed.weight"][10:20])
    assert [r.path for r in http_server.gets()].count("/" + INDEX) == 1
    (http_server.root / "model-00002-of-00003.enct").unlink()
    with pytest.raises(IntegrityError, match="shard 2 of 3 of this checkpoint is missing"):
        enctensor.load(url, key=KEY)


def test_torch_and_tvm_adapters_take_urls(http_server: RangeServer) -> None:
    import torch

    import enctensor.torch as et

    state = {"a": torch.randn(64, 33), "b": torch.arange(10)}
    et.save_file(state, http_server.root / "pt.enct", key=KEY)
    url = http_server.url("pt.enct")
    out = et.load_file(url, key=KEY)
    assert all(torch.equal(out[k], state[k]) for k in state)
    model = torch.nn.Linear(33, 64)
    et.save_model(model, http_server.root / "lin.enct", key=KEY)
    fresh = torch.nn.Linear(33, 64)
    et.load_model(fresh, http_server.url("lin.enct"), key=KEY)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)

    import tvm

    import enctensor.tvm as etvm

    loaded = etvm.load(url, key=KEY)
    assert isinstance(loaded["a"], tvm.runtime.Tensor)
    assert np.array_equal(loaded["a"].numpy(), state["a"].numpy())


def test_the_cli_inspects_and_verifies_urls(http_server: RangeServer, tmp_path: Path) -> None:
    import json

    from cli_support import cli, failed, ok

    t = sample()
    url = write(http_server, "cli.enct", t)
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    shown = json.loads(ok(cli("inspect", "--json", url, cwd=tmp_path)).stdout)
    assert [row["name"] for row in shown["tensors"]] == list(t)
    out = ok(cli("verify", url, "--key", key_file, cwd=tmp_path)).stdout.decode()
    assert f"{url}: OK (4 tensors" in out and "every chunk verified" in out
    path = http_server.root / "cli.enct"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 1
    replace(path, bytes(raw))
    failed(cli("verify", url, "--key", key_file, cwd=tmp_path), 4, "failed authentication")
    shown = json.loads(ok(cli("inspect", "--json", url, "-k", key_file, cwd=tmp_path)).stdout)
    assert list(shown["stanzas_opened_by"].values()) == [[0]]
    failed(cli("verify", http_server.url("nothing.enct"), "--key", key_file, cwd=tmp_path), 1, "nothing.enct")


def test_the_cli_decrypts_urls(http_server: RangeServer, tmp_path: Path) -> None:
    """``enctensor decrypt URL OUT`` writes what decrypting the same file locally writes: a
    single file (to a file and to standard output) and an encrypted sharded checkpoint; the
    front of a file is fetched once however many keys are tried; a tampered object leaves no
    output, a plaintext index is refused as not encrypted."""
    from cli_support import cli, failed, ok
    from test_sharded_access import INDEX, PLAIN_INDEX, reference_state, write_set

    t = sample()
    url = write(http_server, "cli.enct", t)
    key_file, other_file = tmp_path / "k.key", tmp_path / "other.key"
    key_file.write_bytes(KEY)
    other_file.write_bytes(OTHER_KEY)
    local = tmp_path / "local.safetensors"
    ok(cli("decrypt", http_server.root / "cli.enct", local, "-k", key_file, cwd=tmp_path))
    http_server.reset()
    ok(cli("decrypt", url, tmp_path / "remote.safetensors", "-k", other_file, "-k", key_file, cwd=tmp_path))
    assert (tmp_path / "remote.safetensors").read_bytes() == local.read_bytes()
    # One HEAD and one GET of the front open the file for both keys; then come the tensors.
    sent = [(r.method, r.range) for r in http_server.requests]
    assert sent[:2] == [("HEAD", None), ("GET", f"bytes=0-{_remote.HEAD_BYTES - 1}")]
    assert sent[2][0] == "GET" and not str(sent[2][1]).startswith("bytes=0-")
    streamed = ok(cli("decrypt", url, "-", "-k", key_file, cwd=tmp_path)).stdout
    assert streamed == local.read_bytes()

    state = reference_state(3)
    d = tmp_path / "set"
    d.mkdir()
    write_set(d, state)
    write_set(http_server.root, state)
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    ok(cli("decrypt", d / INDEX, tmp_path / "local" / PLAIN_INDEX, "-k", key_file, cwd=tmp_path))
    ok(
        cli(
            "decrypt", http_server.url(INDEX), tmp_path / "remote" / PLAIN_INDEX, "-k", key_file, cwd=tmp_path
        )
    )
    made = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert made == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(made) == 4
    for name in made:
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()

    path = http_server.root / "cli.enct"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 1
    replace(path, bytes(raw))
    failed(
        cli("decrypt", url, tmp_path / "bad.safetensors", "-k", key_file, cwd=tmp_path), 4, "authentication"
    )
    assert not (tmp_path / "bad.safetensors").exists()
    (http_server.root / PLAIN_INDEX).write_text('{"weight_map": {"w": "model.safetensors"}}')
    failed(
        cli("decrypt", http_server.url(PLAIN_INDEX), tmp_path / "p.json", "-k", key_file, cwd=tmp_path),
        5,
        "is not encrypted",
    )
    # Re-keying rewrites a file in place, which a URL is not.
    failed(
        cli("rekey", url, "-k", key_file, "--add-key", other_file, cwd=tmp_path),
        2,
        "rekey rewrites a local file",
    )
