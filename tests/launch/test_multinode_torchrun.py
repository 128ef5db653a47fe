"""Two "nodes" without Slurm: two torchrun launchers (c10d rendezvous on 127.0.0.1) train one
DDP run together, as two machines of a cluster would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint import latest_checkpoint, read_meta
from tests.conftest import REPO, TINY_OVERRIDES

pytestmark = pytest.mark.distributed


def free_port() -> int:
    """A port nothing listens on now (torchrun's `--master_port=0` hangs: pick one ourselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_nodes_train_together(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    run_dir, port = tmp_path / "two_nodes", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--node_rank", str(node_rank), "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
            "--rdzv_id", "equirecon-two-nodes", "--rdzv_conf", f"is_host={int(node_rank == 0)}",
            "--max_restarts", "0",
            "-m", "equirecon", "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"),
            *TINY_OVERRIDES, f"run.dir={run_dir}", f"data.path={demo_data}",
            f"tracking.uri={tracking_uri}", "train.strategy=ddp", "train.max_steps=3",
            "checkpoint.every_steps=100",
        ]  # fmt: skip
        log = (tmp_path / f"node{node_rank}.log").open("w")
        procs.append(
            (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env), log)
        )
    try:
        codes = [p.wait(timeout=600) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = {i: (tmp_path / f"node{i}.log").read_text()[-3000:] for i in (0, 1)}
    assert codes == [0, 0], logs
    final = latest_checkpoint(run_dir / "checkpoints")
    assert final is not None and final.name == "step_00000003", logs
    assert read_meta(final)["world_size"] == 2
    assert len(list(final.glob("*.distcp"))) == 2  # one shard per rank, one rank per node
    steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
