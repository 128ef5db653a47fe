"""Runs that die: SIGKILL at an arbitrary step, in the middle of a checkpoint save and at each
later phase of a save (complete but unpublished, published but `latest` not yet moved, in the
middle of removing an old checkpoint), and stop signals (SIGUSR2, SIGTERM).

Both are real processes (`equirecon pretrain` on the demo shards, torch reader) killed with
SIGKILL; the resumed run must give the uninterrupted run's loss sequence bitwise (CPU, one
process), in the same MLflow run.
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

from pretrain.checkpoint import latest_checkpoint, list_checkpoints
from pretrain.checkpoint_integrity import verify_checkpoint
from tests.conftest import REPO, TINY_OVERRIDES

pytestmark = pytest.mark.slow

STEPS = ["train.max_steps=12", "checkpoint.every_steps=3", "checkpoint.keep=2"]

# Runs the pretraining in-process with DCP's save wrapped: when the directory being written is
# the one of step CRASH_STEP, the real save runs, one of its files is cut in half, and the
# process SIGKILLs itself, before the directory is published (as a node dying mid-save would).
CRASH_IN_SAVE = """
import os, signal, sys
from pathlib import Path
import torch.distributed.checkpoint as dcp
import pretrain.checkpoint as ckpt
from equirecon.cli import main
crash = "step_%08d" % int(os.environ["CRASH_STEP"])
real_save = dcp.save
def save(state, checkpoint_id):
    real_save(state, checkpoint_id=checkpoint_id)
    if Path(checkpoint_id).name.endswith(crash):
        data = sorted(Path(checkpoint_id).glob("*.distcp"))[0]
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)
ckpt.dcp.save = save
sys.exit(main())
"""


# SIGKILL at one phase of the save of step CRASH_STEP, after its files are complete (`CRASH_AT`):
# before_publish: manifest written, directory still under its temporary name;
# before_latest: published as step_*, `latest` still names the previous checkpoint;
# in_retention: `latest` moved, an old checkpoint half removed by the retention policy.
CRASH_AT_PHASE = """
import os, signal, sys
from pathlib import Path
import pretrain.checkpoint as ckpt
from equirecon.cli import main
crash, phase = "step_%08d" % int(os.environ["CRASH_STEP"]), os.environ["CRASH_AT"]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_manifest, real_atomic = ckpt.write_manifest, ckpt.write_text_atomic
real_retention = ckpt.Checkpointer._apply_retention
def write_manifest(path):
    out = real_manifest(path)
    if phase == "before_publish" and Path(path).name.endswith(crash):
        die()
    return out
def write_text_atomic(path, text):
    if phase == "before_latest" and text.strip() == crash:
        die()
    return real_atomic(path, text)
def apply_retention(self):
    if phase == "in_retention" and (self.root / "latest").read_text().strip() == crash:
        old = ckpt.list_checkpoints(self.root)[0][1]
        files = sorted(f for f in old.rglob("*") if f.is_file())
        for f in files[: len(files) // 2 + 1]:
            f.unlink()
        die()
    return real_retention(self)
ckpt.write_manifest, ckpt.write_text_atomic = write_manifest, write_text_atomic
ckpt.Checkpointer._apply_retention = apply_retention
sys.exit(main())
"""


def _command(run_dir: Path, data: Path, uri: str) -> list[str]:
    return [
        "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"), *TINY_OVERRIDES, *STEPS,
        f"run.dir={run_dir}", f"data.path={data}", f"tracking.uri={uri}",
    ]  # fmt: skip


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [(r["step"], r["train/loss_total"]) for r in rows if "train/loss_total" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> list[tuple[int, float]]:
    tmp = tmp_path_factory.mktemp("faults_ref")
    run_dir = tmp / "ref"
    proc = _run(["-m", "equirecon", *_command(run_dir, demo_data, f"sqlite:///{tmp / 'm.db'}")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = _losses(run_dir)
    assert [s for s, _ in losses] == list(range(1, 13))
    return losses


def test_sigkill_at_an_arbitrary_step_then_resume_is_bitwise(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]]
) -> None:
    run_dir = tmp_path / "killed"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cmd = [sys.executable, "-m", "equirecon", *_command(run_dir, demo_data, uri)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    # Kill between checkpoints (they land at steps 3, 6, 9): as soon as step 7 is logged.
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = len(metrics.read_text().splitlines())
    assert 7 <= killed_at < 12
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000006"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    proc = _run(["-m", "equirecon", *_command(run_dir, demo_data, uri)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr and "step 6" in proc.stderr
    assert _losses(run_dir) == reference  # bitwise: same floats, steps 1..12 once each
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id

    import mlflow

    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "train/loss_total")
    assert sorted({m.step for m in history}) == list(range(1, 13))


def test_crash_during_save_leaves_previous_checkpoint_usable(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]]
) -> None:
    run_dir = tmp_path / "crash"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = _command(run_dir, demo_data, uri)
    proc = _run(["-c", CRASH_IN_SAVE, *args], env={"CRASH_STEP": "9"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    ckpts = run_dir / "checkpoints"
    # The half-written step-9 directory exists only under its temporary name ...
    assert (ckpts / ".tmp_step_00000009" / ".metadata").is_file()
    assert not (ckpts / "step_00000009").exists()
    # ... and `latest` still names the previous, complete checkpoint.
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert [s for s, _ in list_checkpoints(ckpts)] == [3, 6]

    proc = _run(["-m", "equirecon", *args])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _losses(run_dir) == reference
    assert not (ckpts / ".tmp_step_00000009").exists()  # the next save of step 9 replaced it
    assert [s for s, _ in list_checkpoints(ckpts)] == [9, 12]


# phase -> (the complete checkpoints left, the one a rerun resumes from)
PHASES = {
    "before_publish": ([3, 6], "step_00000006"),
    "before_latest": ([3, 6, 9], "step_00000006"),  # `latest` decides, a newer one is ignored
    "in_retention": ([6, 9], "step_00000009"),  # the half-removed step 3 is damaged, passed over
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_sigkill_at_each_phase_of_a_save_loses_nothing(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]], phase: str
) -> None:
    run_dir = tmp_path / "crash"
    args = _command(run_dir, demo_data, f"sqlite:///{tmp_path / 'm.db'}")
    proc = _run(["-c", CRASH_AT_PHASE, *args], env={"CRASH_STEP": "9", "CRASH_AT": phase})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    complete, resume_from = PHASES[phase]
    ckpts = run_dir / "checkpoints"
    intact = [s for s, p in list_checkpoints(ckpts) if verify_checkpoint(p).state == "ok"]
    assert intact == complete
    assert latest_checkpoint(ckpts).name == resume_from

    proc = _run(["-m", "equirecon", *args])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"step {int(resume_from[5:])}" in proc.stderr
    assert _losses(run_dir) == reference  # bitwise, steps 1..12 once each
    assert not list(ckpts.glob(".tmp_*"))
    assert [s for s, _ in list_checkpoints(ckpts)] == [9, 12]


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"])
def test_stop_signal_checkpoints_at_the_next_step_and_resumes(
    tmp_path: Path, demo_data: Path, reference: list[tuple[int, float]], signum: int
) -> None:
    """Slurm's warning signal (SIGUSR2, also what torchrun and the container forward) and
    SIGTERM (preemption, scancel, docker stop): the run saves a checkpoint of the step it is at
    (not the last periodic one), exits 0, and the same command finishes the run with the
    uninterrupted losses."""
    run_dir = tmp_path / "stop"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cmd = [sys.executable, "-m", "equirecon", *_command(run_dir, demo_data, uri)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:
            os.kill(proc.pid, signum)
            break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-4000:]
    assert "stopped by signal" in stderr
    stopped_at = len(metrics.read_text().splitlines())
    assert 4 <= stopped_at < 12
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{stopped_at:08d}"

    done = _run(["-m", "equirecon", *_command(run_dir, demo_data, uri)])
    assert done.returncode == 0, done.stderr[-4000:]
    assert _losses(run_dir) == reference
