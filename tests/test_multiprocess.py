"""Real multi-process runs on CPU (gloo): 2-process DDP and 2 nodes x 1 process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("ddp_job.py")
ROOT = JOB.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _check(out: Path) -> None:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Every rank took the same decisions from the reduced statistics: no straggler.
    assert ranks[0]["ratios"] == ranks[1]["ratios"] and len(ranks[0]["ratios"]) > 2
    assert ranks[0]["kinds"] == ranks[1]["kinds"]
    for epoch in ("0", "1"):
        a, b = (set(r["indices"][epoch]) for r in ranks)
        assert not a & b, f"epoch {epoch}: the shards overlap"
        assert a | b == set(range(64)), f"epoch {epoch}: the shards do not cover the epoch"
    # Reshuffled across epochs (Lightning's DistributedSampler gets set_epoch).
    assert ranks[0]["indices"]["0"] != ranks[0]["indices"]["1"]


@pytest.mark.slow
def test_ddp_two_processes_take_identical_decisions_on_disjoint_shards(tmp_path: Path) -> None:
    env = _env()
    env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(_free_port())
    subprocess.run(
        [sys.executable, str(JOB), str(tmp_path), "--devices", "2"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    _check(tmp_path)


@pytest.mark.slow
def test_two_nodes_on_loopback_with_torchrun(tmp_path: Path) -> None:
    port = str(_free_port())
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(JOB),
            str(tmp_path),
            "--num-nodes",
            "2",
        ]
        procs.append(subprocess.Popen(cmd, env=_env(), cwd=ROOT))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    _check(tmp_path)
