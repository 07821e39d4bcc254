"""The README's examples of remote files and distributed checkpoints run as written, with only
the endpoints pointed at the loopback servers (tests/remote_servers.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from remote_servers import RangeServer, S3Server

README = Path(__file__).resolve().parents[1] / "README.md"


def example(section: str) -> str:
    """The first python block under the README heading ``## <section>``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    block = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, section
    return block.group(1)


def test_the_remote_files_example_runs(
    s3_bucket: tuple[S3Server, str], http_server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_bucket
    code = example("Remote files")
    opts_line = next(line for line in code.splitlines() if line.startswith("opts = "))
    code = code.replace(opts_line, f"opts = {server.storage_options()!r}")
    code = code.replace('"s3://models/', f'"s3://{bucket}/')
    # The "CDN": the object the example uploaded, served over plain HTTP.
    code = code.replace('"https://cdn.example.com/', f'"{http_server.url("")}')
    code = code.replace(
        "state = enctensor.load(",
        "server.filesystem().get_file(f'{bucket}/llm.enct', str(root / 'llm.enct'))\nstate = enctensor.load(",
    )
    scope: dict[str, object] = {"server": server, "bucket": bucket, "root": http_server.root}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 (the README's own code)
    weights = scope["weights"]
    assert isinstance(weights, dict)
    assert np.array_equal(scope["rows"], weights["embed.weight"][1000:2000])  # type: ignore[call-overload]
    assert np.array_equal(scope["state"]["embed.weight"], weights["embed.weight"])  # type: ignore[index]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_the_distributed_checkpoints_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(example("Distributed checkpoints"), str(README), "exec"), scope)  # noqa: S102
    assert (tmp_path / "ckpt" / ".metadata.enct").is_file()
    state = scope["state"]
    assert isinstance(state, dict) and state["step"] == 100
    assert isinstance(state["model"]["weight"], torch.Tensor)
