"""Remote files on S3 (issue 14, §1-§3): moto's real S3 API served on 127.0.0.1
(tests/remote_servers.py), read and written through s3fs.

Counted on the server: a slice of 1 % of a 256 MiB object fetches about 1 % of it; saves are
whole uploads; a flaky server is retried; an object replaced mid-read is ObjectChangedError; a
DCP checkpoint in a bucket loads on 1 and on 3 ranks, and a missing rank file is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_dcp
import torch
import torch.distributed.checkpoint as dcp
from conftest import KEY
from remote_servers import S3Server
from safetensors.numpy import load_file
from test_dcp import _group, _launch, _load_worker, assert_same, blank_state, full_state, sharded
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import Shard

import enctensor
from enctensor import _remote
from enctensor.errors import ObjectChangedError
from enctensor.torch.dcp import EncReader, EncWriter

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

ROWS, COLS = 65_536, 1_024  # float32: 256 MiB


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_remote, "BACKOFF_SECONDS", 0.01)


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_dcp's checkpoints written by its 2-rank job (the same shared directory, built once
    per session by whichever module asks first)."""
    credentials = test_dcp._shared(tmp_path_factory, "dcp-creds", test_dcp._write_creds)
    files = {"key_file": credentials / "key.key"}
    files.update({name: credentials / f"{name}.pem" for name in test_dcp._IDENTITIES})
    files.update({f"{n}_pub": credentials / f"{n}.pub.pem" for n in ("x25519", "rsa", "publisher")})
    return test_dcp._shared(
        tmp_path_factory, "dcp-saved", lambda d: _launch(test_dcp._save_worker, 2, d, files)
    )


def upload_dir(server: S3Server, local: Path, url: str) -> None:
    fs = server.filesystem()
    for path in sorted(local.iterdir()):
        if path.is_file():
            fs.put_file(str(path), f"{url.removeprefix('s3://')}/{path.name}")


def test_save_uploads_whole_and_a_one_percent_slice_fetches_about_one_percent(
    s3_bucket: tuple[S3Server, str],
) -> None:
    server, bucket = s3_bucket
    options = server.storage_options()
    url = f"s3://{bucket}/big.enct"
    big = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)
    enctensor.save({"w": big}, url, key=KEY, storage_options=options)
    # Uploaded whole, in parts (S3 multipart: initiated, parts, completed).
    assert any(r.method == "POST" and "uploads" in r.query for r in server.requests)
    assert sum(r.method == "PUT" and "partNumber" in r.query for r in server.requests) >= 2
    size = server.filesystem().size(f"{bucket}/big.enct")
    assert size > ROWS * COLS * 4
    with pytest.raises(FileExistsError):
        enctensor.save({"w": big[:1]}, url, key=KEY, storage_options=options, overwrite=False)
    server.reset()
    with enctensor.safe_open(url, key=KEY, storage_options=options) as f:
        opened = server.gets()
        assert 1 <= len(opened) <= 2
        header_area = sum(r.body_bytes for r in opened)
        server.reset()
        rows = ROWS // 100
        got = f.get_slice("w")[50_000 : 50_000 + rows]
    assert np.array_equal(got, big[50_000 : 50_000 + rows])
    gets = server.gets()
    fetched = sum(r.body_bytes for r in gets)
    assert rows * COLS * 4 <= fetched <= 0.02 * size + header_area, (fetched, size)
    assert len(gets) == 1


def test_load_torch_and_verify_from_a_bucket(s3_bucket: tuple[S3Server, str]) -> None:
    import enctensor.torch as et

    server, bucket = s3_bucket
    options = server.storage_options()
    state = {"a": torch.randn(300, 70), "b": torch.arange(5, dtype=torch.int16), "e": torch.zeros(0)}
    url = f"s3://{bucket}/dir/pt.enct"
    et.save_file(state, url, key=KEY, storage_options=options)
    out = et.load_file(url, key=KEY, storage_options=options)
    assert all(torch.equal(out[k], state[k]) for k in state)
    enctensor.verify(url, key=KEY, storage_options=options)
    with enctensor.safe_open(url, key=KEY, framework="pt", storage_options=options) as f:
        assert torch.equal(f.get_slice("a")[:, 3:9], state["a"][:, 3:9])


def test_server_errors_are_retried(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    options = server.storage_options(config_kwargs={"retries": {"total_max_attempts": 1}})
    t = {"x": np.arange(10_000, dtype=np.int32)}
    url = f"s3://{bucket}/r.enct"
    enctensor.save(t, url, key=KEY, storage_options=options)
    with enctensor.safe_open(url, key=KEY, storage_options=options) as f:
        server.reset()
        server.fail_next(2, 500)
        assert np.array_equal(f.get_tensor("x"), t["x"])
        assert [r.status for r in server.gets()] == [500, 500, 206]


def test_an_object_replaced_mid_read_is_object_changed(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    options = server.storage_options()
    t = {f"t{i}": np.full((1 << 20,), i, np.float32) for i in range(4)}  # 16 MiB: two parts
    url = f"s3://{bucket}/c.enct"
    enctensor.save(t, url, key=KEY, storage_options=options)
    enctensor.save(
        {k: v + 1 for k, v in t.items()}, f"s3://{bucket}/c2.enct", key=KEY, storage_options=options
    )
    other = server.filesystem().cat_file(f"{bucket}/c2.enct")
    with enctensor.safe_open(url, key=KEY, storage_options=options) as f:
        # Replaced after the first part of the load arrived: the second part is the new file's.
        server.after_gets(1, lambda: server.client().put_object(Bucket=bucket, Key="c.enct", Body=other))
        reader = f._reader_or_raise()
        dst = [np.full(1 << 22, 0xFF, np.uint8) for _ in t]
        with pytest.raises(ObjectChangedError):
            reader.read_many_into(list(enumerate(dst)))
        assert all(not d.any() for d in dst)  # nothing half-filled is left behind


def test_a_missing_object_is_file_not_found(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    with pytest.raises(FileNotFoundError):
        enctensor.load(f"s3://{bucket}/absent.enct", key=KEY, storage_options=server.storage_options())


def test_dcp_save_and_load_in_a_bucket_and_a_missing_rank_file(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    options = server.storage_options()
    url = f"s3://{bucket}/ckpt"
    dcp.save(full_state(7), storage_writer=EncWriter(url, key=KEY, storage_options=options))
    target = blank_state()
    dcp.load(target, storage_reader=EncReader(url, key=KEY, storage_options=options))
    assert_same(target, full_state(7))
    fs = server.filesystem()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{bucket}/ckpt")) == [".metadata.enct", "__0_0.enct"]
    with pytest.raises(CheckpointException, match=r"FileExistsError: .* already holds a checkpoint"):
        dcp.save(
            full_state(8), storage_writer=EncWriter(url, key=KEY, storage_options=options, overwrite=False)
        )
    fs.rm_file(f"{bucket}/ckpt/__0_0.enct")
    with pytest.raises(
        CheckpointException, match=r"IntegrityError: .*shard 1 of 2 of this checkpoint is missing"
    ):
        dcp.load(blank_state(), storage_reader=EncReader(url, key=KEY, storage_options=options))


def test_a_two_rank_checkpoint_in_a_bucket_loads_on_one_and_on_three_ranks(
    s3_bucket: tuple[S3Server, str], saved_on_two: Path, tmp_path: Path
) -> None:
    saved = saved_on_two
    server, bucket = s3_bucket
    options = server.storage_options()
    url = f"s3://{bucket}/plain"
    upload_dir(server, saved / "plain", url)
    target = blank_state()
    server.reset()
    dcp.load(target, storage_reader=EncReader(url, key=KEY, storage_options=options))
    assert_same(target, full_state(1))

    dropped = tmp_path / "dropped"
    shutil.copytree(saved / "plain", dropped)
    (dropped / "__1_0.enct").unlink()
    upload_dir(server, dropped, f"s3://{bucket}/dropped")
    placements: dict[str, Any] = {"rows": Shard(0), "cols": Shard(1)}
    scenarios = [
        {
            "name": name,
            "dir": f"s3://{bucket}/{name}",
            "placements": placements,
            "options": {"key": KEY, "storage_options": options},
        }
        for name in ("plain", "dropped")
    ]
    out = tmp_path / "loaded.pt"
    _launch(_load_worker, 3, out, scenarios)
    loaded = torch.load(out, weights_only=False)
    assert_same(loaded["plain"], full_state(1))
    failures = loaded["dropped"]
    assert failures.keys() == {0}, failures
    kind, message = failures[0]
    assert kind == "IntegrityError" and "missing" in message, message


def _save_to_bucket_worker(rank: int, world: int, port: int, url: str, options: dict[str, Any]) -> None:
    """Saves a state sharded over 2 ranks straight into the bucket: each rank uploads its own
    file, the coordinator the metadata."""
    with _group(rank, world, port) as mesh:
        state = sharded(full_state(9), mesh, {"rows": Shard(0), "cols": Shard(1)})
        dcp.save(state, storage_writer=EncWriter(url, key=KEY, storage_options=options))


def test_two_ranks_save_into_a_bucket(s3_bucket: tuple[S3Server, str]) -> None:
    server, bucket = s3_bucket
    options = server.storage_options()
    url = f"s3://{bucket}/ranks"
    _launch(_save_to_bucket_worker, 2, url, options)
    names = sorted(p.rsplit("/", 1)[1] for p in server.filesystem().ls(f"{bucket}/ranks"))
    assert names == [".metadata.enct", "__0_0.enct", "__1_0.enct"]
    target = blank_state()
    dcp.load(target, storage_reader=EncReader(url, key=KEY, storage_options=options))
    assert_same(target, full_state(9))


def test_the_cli_takes_its_storage_options_from_fsspec_configuration(
    s3_bucket: tuple[S3Server, str], tmp_path: Path
) -> None:
    import json

    from cli_support import cli, ok

    server, bucket = s3_bucket
    options = server.storage_options()
    url = f"s3://{bucket}/cli.enct"
    enctensor.save({"x": np.arange(1000, dtype=np.int16)}, url, key=KEY, storage_options=options)
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    config = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    env = {"FSSPEC_S3": json.dumps(config), "AWS_EC2_METADATA_DISABLED": "true"}
    out = ok(cli("verify", url, "-k", key_file, cwd=tmp_path, env=env)).stdout.decode()
    assert f"{url}: OK (1 tensors" in out
    shown = json.loads(ok(cli("inspect", "--json", url, cwd=tmp_path, env=env)).stdout)
    assert [t["name"] for t in shown["tensors"]] == ["x"]
    ok(cli("decrypt", url, tmp_path / "x.safetensors", "-k", key_file, cwd=tmp_path, env=env))
    assert np.array_equal(load_file(tmp_path / "x.safetensors")["x"], np.arange(1000, dtype=np.int16))


def test_decrypt_file_takes_a_url_and_its_storage_options(
    s3_bucket: tuple[S3Server, str], tmp_path: Path
) -> None:
    from enctensor.convert import decrypt_file

    server, bucket = s3_bucket
    options = server.storage_options()
    t = {"x": np.arange(5000, dtype=np.float32).reshape(50, 100), "y": np.ones(3, np.int64)}
    url = f"s3://{bucket}/d.enct"
    enctensor.save(t, url, key=KEY, metadata={"note": "kept"}, storage_options=options)
    out = tmp_path / "d.safetensors"
    done = decrypt_file(url, out, key=[bytes(32), KEY], storage_options=options)
    assert (done.source_format, done.output_format, done.tensors) == ("enctensor", "safetensors", 2)
    got = load_file(out)
    assert all(np.array_equal(got[k], t[k]) for k in t)


def test_encrypting_to_a_url_uploads_one_file(s3_bucket: tuple[S3Server, str], tmp_path: Path) -> None:
    """``enctensor encrypt IN s3://...`` and ``encrypt_file(src, url, storage_options=)`` upload
    the encrypted file whole; an existing object needs --force / overwrite=True; a sharded
    checkpoint is refused (a URL takes one file)."""
    import json

    from cli_support import cli, failed, ok
    from safetensors.numpy import save_file
    from test_sharded_access import PLAIN_INDEX, reference_state, write_set

    from enctensor.convert import encrypt_file

    server, bucket = s3_bucket
    options = server.storage_options()
    t = {"w": np.arange(6000, dtype=np.float32).reshape(60, 100), "n": np.arange(5, dtype=np.int64)}
    src = tmp_path / "m.safetensors"
    save_file(t, src, metadata={"format": "np"})
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    config = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    env = {"FSSPEC_S3": json.dumps(config), "AWS_EC2_METADATA_DISABLED": "true"}

    url = f"s3://{bucket}/cli/m.enct"
    report = json.loads(ok(cli("encrypt", src, url, "-k", key_file, "--json", cwd=tmp_path, env=env)).stdout)
    assert report["files"] == [url] and report["stanzas"] == ["key"]
    size = server.filesystem().info(f"{bucket}/cli/m.enct")["size"]
    assert report["output_bytes"] == size
    got = enctensor.load(url, key=KEY, storage_options=options)
    assert all(np.array_equal(got[k], t[k]) for k in t)
    failed(cli("encrypt", src, url, "-k", key_file, cwd=tmp_path, env=env), 1, "already exists", "--force")
    ok(cli("encrypt", src, url, "-k", key_file, "--force", cwd=tmp_path, env=env))

    api_url = f"s3://{bucket}/api/m.enct"
    done = encrypt_file(src, api_url, key=KEY, storage_options=options)
    assert [str(p) for p in done.outputs] == [api_url] and done.tensors == 2
    assert enctensor.load(api_url, key=KEY, storage_options=options)["n"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(FileExistsError):
        encrypt_file(src, api_url, key=KEY, storage_options=options)

    write_set(tmp_path / "set", reference_state(2))
    failed(
        cli(
            "encrypt",
            tmp_path / "set" / "plain" / PLAIN_INDEX,
            f"s3://{bucket}/set/i.json",
            "-k",
            key_file,
            cwd=tmp_path,
            env=env,
        ),
        2,
        "takes one encrypted file",
    )
