"""A rank that dies in a 2-process world (gloo, CPU): the run ends at once, loses nothing, and
the same command resumes it exactly.

Two launches, as on a cluster: under torchrun (its agent stops the survivors and names the dead
rank as the root cause) and as bare processes with the rendezvous variables set (how `srun`
starts one task per GPU): the survivor's collective fails and it ends with one line naming the
step and the intact checkpoint, exit code 4 (`PeerLostError`). In both, `checkpoints/latest`
names the last complete checkpoint and the rerun's losses equal an uninterrupted run's bitwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.checkpoint import latest_checkpoint
from pretrain.checkpoint_integrity import verify_checkpoint
from tests.conftest import REPO, TINY_OVERRIDES
from tests.launch.test_multinode_torchrun import free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = ["train.max_steps=9", "checkpoint.every_steps=3", "train.strategy=ddp"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(run_dir: Path, data: Path, uri: str) -> list[str]:
    return [
        "-m", "equirecon", "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"),
        *TINY_OVERRIDES, *STEPS, f"run.dir={run_dir}", f"data.path={data}", f"tracking.uri={uri}",
    ]  # fmt: skip


def _torchrun(args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [(r["step"], r["train/loss_total"]) for r in rows if "train/loss_total" in r]


def _rank_pid(parent_pids: list[int], rank: int) -> int | None:
    """The pid of the training process with RANK=rank among the descendants of parent_pids."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"equirecon" in cmdline and f"RANK={rank}".encode() in environ:
            if b"torch.distributed.run" not in cmdline and int(entry.name) not in parent_pids:
                return int(entry.name)
    return None


def _kill_rank1_after_step(
    procs: list[subprocess.Popen], run_dir: Path, step: int, bare: bool = False
) -> None:
    """SIGKILL rank 1 as soon as rank 0 has logged `step` (between checkpoints 6 and 9):
    `procs[1]` itself for bare ranks, else torchrun's worker with RANK=1."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= step:
            pid = procs[1].pid if bare else _rank_pid([p.pid for p in procs], 1)
            assert pid is not None, "rank 1 not found"
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError("the run ended before rank 1 could be killed")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> list[tuple[int, float]]:
    tmp = tmp_path_factory.mktemp("rank_death_ref")
    args = _args(tmp / "run", demo_data, f"sqlite:///{tmp / 'm.db'}")
    proc = subprocess.run(
        _torchrun(args), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _losses(tmp / "run")


def _resume_matches(run_dir: Path, args: list[str], reference: list[tuple[int, float]]) -> None:
    ckpts = run_dir / "checkpoints"
    assert latest_checkpoint(ckpts).name == "step_00000006"
    assert verify_checkpoint(ckpts / "step_00000006").state == "ok"
    assert not list(ckpts.glob(".tmp_*"))
    proc = subprocess.run(
        _torchrun(args), capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step 6" in proc.stderr
    assert _losses(run_dir) == reference  # bitwise, steps 1..9 once each


def test_torchrun_stops_the_survivor_and_the_rerun_resumes_exactly(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]]
) -> None:
    run_dir = tmp_path / "run"
    args = _args(run_dir, demo_data, f"sqlite:///{tmp_path / 'm.db'}")
    agent = subprocess.Popen(
        _torchrun(args),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_rank1_after_step([agent], run_dir, 7)
    killed = time.time()
    _, err = agent.communicate(timeout=120)
    assert agent.returncode != 0
    assert time.time() - killed < 60, "the survivor was not stopped"
    root_cause = err.split("Root Cause")[-1]
    assert "rank      : 1" in root_cause and "SIGKILL" in root_cause, err[-3000:]
    _resume_matches(run_dir, args, reference)


def test_bare_ranks_end_with_one_line_and_the_rerun_resumes_exactly(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]]
) -> None:
    run_dir = tmp_path / "run"
    args = _args(run_dir, demo_data, f"sqlite:///{tmp_path / 'm.db'}")
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={
                **ENV,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    _kill_rank1_after_step(ranks, run_dir, 7, bare=True)
    killed = time.time()
    _, err = ranks[0].communicate(timeout=120)
    ranks[1].wait(timeout=30)
    assert time.time() - killed < 60
    assert ranks[0].returncode == 4, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("equirecon: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "rank 0 at step" in lines[0] and "another rank of the run is gone" in lines[0]
    assert "intact checkpoint: step_00000006 (checkpoints/latest)" in lines[0]
    _resume_matches(run_dir, args, reference)
