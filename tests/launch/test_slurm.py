"""`equirecon launch slurm` on a real local Slurm: 2-rank training, preemption + requeue, the eval
watcher's Slurm executor; plus the option/config logic without Slurm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch.slurm import (
    PretrainJob,
    SlurmOptions,
    StopFlag,
    _master_port,
    build_executor,
    prepare_config,
    slurm_state,
    wait_for_job,
)
from pretrain.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from tests.conftest import REPO, TINY_OVERRIDES

CONFIG = REPO / "configs" / "demo_cpu.yaml"
STEPS = ["train.max_steps=6", "checkpoint.every_steps=100", "checkpoint.keep=5"]
SLURM_ARGS = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1"]
SLURM_ARGS += ["--mem-gb", "4", "--time", "10", "--partition", "debug"]


# --- without Slurm ----------------------------------------------------------------------------


def test_options_one_task_per_gpu_and_actionable_errors() -> None:
    assert SlurmOptions(nodes=2, gpus_per_node=8).world_size == 16
    assert SlurmOptions(gpus_per_node=0, tasks_per_node=3).world_size == 3
    assert SlurmOptions(gpus_per_node=0).world_size == 1
    for bad, match in [
        (SlurmOptions(nodes=0), "--nodes"),
        (SlurmOptions(gpus_per_node=4, tasks_per_node=2), "one task per GPU"),
        (SlurmOptions(time_min=2, signal_delay_s=120), "signal-delay"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad.check()


def test_prepare_config_defaults_ddp_and_absolute_paths(tmp_path: Path) -> None:
    cfg = prepare_config(CONFIG, ["run.dir=runs/x", "data.path=data/demo"], world_size=2)
    assert cfg.train.strategy == "ddp"
    assert Path(cfg.run.dir).is_absolute() and Path(cfg.data.path).is_absolute()
    assert prepare_config(CONFIG, [], world_size=1).train.strategy == "single"
    fsdp = prepare_config(CONFIG, ["train.strategy=fsdp2"], world_size=4)
    assert fsdp.train.strategy == "fsdp2"  # an explicit strategy is kept


def test_stop_flag_only_records_and_keeps_previous_handler() -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    flag = StopFlag((signal.SIGUSR2,)).install()
    try:
        assert not flag()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag() and flag.received == signal.SIGUSR2
        assert flag.previous[signal.SIGUSR2] == previous
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_checkpoint_returns_the_same_job_and_ports_change_per_restart() -> None:
    job = PretrainJob(cfg={"any": "config"})
    delayed = job.checkpoint()
    assert isinstance(delayed.function, PretrainJob) and delayed.function.cfg == job.cfg
    assert _master_port("123", 0) != _master_port("123", 1)
    assert 20000 <= _master_port("123", 0) < 60000


def test_sbatch_script_has_requeue_signal_and_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not shutil.which("srun"):  # submitit wants srun on PATH to build a Slurm executor
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
        (fake_bin / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu", time_min=600)
    options.extra = {"constraint": "a100", "exclusive": True}
    executor = build_executor(options, tmp_path / "jobs")
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--time=600",
        "--signal=USR2@120",
        "--requeue",
        "--constraint=a100",
        "--exclusive",
    ):
        assert f"#SBATCH {line}" in script, script


def test_cli_rejects_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "equirecon", "launch", "slurm", "--config", str(CONFIG)]
        + ["--gpus-per-node", "2", "--tasks-per-node", "3"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0 and "one task per GPU" in proc.stderr


def test_sigterm_checkpoints_at_a_step_boundary_and_returns(
    tmp_path: Path, demo_data: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's handler only sets a flag; the trainer saves at the next step boundary and
    returns (SIGTERM: no requeue; SIGUSR2 on Slurm is the real-Slurm test below)."""
    signum = signal.SIGTERM
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    cfg = prepare_config(
        CONFIG,
        TINY_OVERRIDES
        + [f"run.dir={run_dir}", f"data.path={demo_data}", f"tracking.uri={tracking_uri}"]
        + ["train.max_steps=40", "checkpoint.every_steps=100", "tracking.enabled=false"],
        world_size=1,
    )
    metrics = run_dir / "metrics.jsonl"

    def signal_after_step_2() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if metrics.is_file() and metrics.read_text().count("\n") >= 2:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.02)

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    sender = threading.Thread(target=signal_after_step_2, daemon=True)
    sender.start()
    try:
        result = PretrainJob(cfg)()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    sender.join(timeout=5)
    assert result["preempted"] and result["signal"] == signal.Signals(signum).name, result
    assert 2 <= result["step"] < 40
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{result['step']:08d}"
    assert sorted(losses(run_dir)) == list(range(1, result["step"] + 1))


# --- on a real Slurm --------------------------------------------------------------------------


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss_total"] for r in rows}


def launch_cmd(run_dir: Path, data: Path, uri: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "equirecon", "launch", "slurm", "--config", str(CONFIG),
        *SLURM_ARGS, *extra, *TINY_OVERRIDES, *STEPS,
        f"run.dir={run_dir}", f"data.path={data}", f"tracking.uri={uri}",
    ]  # fmt: skip


def job_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def slurm_run(
    slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory, demo_data: Path
) -> tuple[Path, str, dict]:
    """An uninterrupted 2-rank CPU training through `equirecon launch slurm --wait`."""
    root = tmp_path_factory.mktemp("slurm")
    run_dir, uri = root / "ref", f"sqlite:///{root / 'mlflow.db'}"
    started = time.monotonic()
    proc = subprocess.run(
        launch_cmd(run_dir, demo_data, uri, "--wait"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=job_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    info = {"submit": lines[0], "results": lines[1:], "seconds": time.monotonic() - started}
    return run_dir, uri, info


@pytest.mark.slurm
def test_launch_slurm_trains_two_ranks(slurm_run: tuple[Path, str, dict]) -> None:
    run_dir, _, info = slurm_run
    assert info["submit"]["world_size"] == 2 and info["submit"]["strategy"] == "ddp"
    assert sorted(r["rank"] for r in info["results"]) == [0, 1]
    assert all(r["step"] == 6 and not r["preempted"] for r in info["results"])
    final = latest_checkpoint(run_dir / "checkpoints")
    assert final.name == "step_00000006"
    meta = read_meta(final)
    assert meta["world_size"] == 2 and meta["strategy"] == "ddp"
    assert meta["mlflow_run_id"] == (run_dir / "mlflow_run_id").read_text().strip()
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    job_dir = run_dir / "slurm" / info["submit"]["job_id"]
    assert (job_dir / f"{info['submit']['job_id']}_1_log.err").is_file()  # a second Slurm task


@pytest.mark.slurm
def test_eval_watcher_runs_its_job_on_slurm(slurm_run: tuple[Path, str, dict]) -> None:
    run_dir, uri, _ = slurm_run
    cmd = [
        # (overrides right after RUN_DIR: argparse cannot take them after the options here)
        sys.executable, "-m", "equirecon", "eval", "watch", str(run_dir), "eval.tasks=knn",
        "--executor", "slurm",
        "--once", "--poll-seconds", "1", "--partition", "debug", "--cpus-per-task", "2",
        "--mem-gb", "4", "--timeout-min", "10", "--max-attempts", "1",
    ]  # fmt: skip
    env = {**job_env(), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = json.loads((run_dir / "evals" / "watch_state.json").read_text())
    entry = state["checkpoints"]["step_00000006"]
    assert entry["state"] == "done" and entry["executor"] == "slurm", entry
    assert 0.0 <= entry["metrics"]["eval/knn/top1"] <= 100.0  # percent
    # A real Slurm job: its sbatch script and logs are in the job's submitit folder.
    assert (
        run_dir / "evals" / "submitit" / entry["job_id"] / f"{entry['job_id']}_submission.sh"
    ).is_file()
    result = json.loads((run_dir / "evals" / "step_00000006.json").read_text())
    assert "eval/knn/top1" in result["metrics"]
    # ... and the number landed in the training's MLflow run, at the checkpoint's step.
    history = mlflow_history(uri, run_dir, "eval/knn/top1")
    assert history == [(6, result["metrics"]["eval/knn/top1"])]


def mlflow_history(uri: str, run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every record of `metric` in the run's MLflow run (duplicates kept)."""
    from mlflow.tracking import MlflowClient

    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, metric))


def release_requeued(job_id: str, timeout_s: float = 180.0) -> None:
    """Wait for the requeued job to be pending, then start it now (Slurm holds a requeued job
    for about 2 minutes: its BeginTime)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True
        ).stdout.split()
        if out[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} was not requeued within {timeout_s}s")


@pytest.mark.slurm
def test_usr2_checkpoints_requeues_and_ends_like_an_uninterrupted_run(
    slurm_run: tuple[Path, str, dict], tmp_path: Path, demo_data: Path
) -> None:
    import submitit

    ref_dir, uri, _ = slurm_run
    run_dir = tmp_path / "preempted"
    proc = subprocess.run(
        launch_cmd(run_dir, demo_data, uri), capture_output=True, text=True, cwd=REPO, env=job_env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    job_id = json.loads(proc.stdout.splitlines()[0])["job_id"]
    # Signal once step 2 is logged (as Slurm does `--signal-delay-s` before the time limit).
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").is_file() or len(losses(run_dir)) < 2:
        assert time.monotonic() < deadline, "the job did not reach step 2"
        assert slurm_state(job_id) in ("PENDING", "RUNNING", "CONFIGURING"), slurm_state(job_id)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    release_requeued(job_id)
    job = submitit.SlurmJob(folder=run_dir / "slurm" / "%j", job_id=job_id, tasks=(0, 1))
    results = wait_for_job(job, poll_s=1.0, timeout_s=400)
    assert all(r["step"] == 6 and not r["preempted"] for r in results)

    # The first attempt stopped early at a step boundary and saved there ...
    log0 = (run_dir / "slurm" / job_id / f"{job_id}_0_log.err").read_text()
    assert "Requeued job" in log0 and "resumed from" in log0, log0[-3000:]
    steps = [s for s, _ in list_checkpoints(run_dir / "checkpoints")]
    assert steps[0] < 6 and steps[-1] == 6, steps
    # ... the requeued job continued the same MLflow run and ended exactly where an
    # uninterrupted run ends (same losses at every step, same final weights).
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert all(
        read_meta(p)["mlflow_run_id"] == run_id
        for _, p in list_checkpoints(run_dir / "checkpoints")
    )
    assert losses(run_dir) == losses(ref_dir)
    # One MLflow run across both jobs, each step recorded once.
    assert mlflow_history(uri, run_dir, "train/loss_total") == sorted(losses(run_dir).items())
    _assert_same_weights(
        latest_checkpoint(run_dir / "checkpoints"), latest_checkpoint(ref_dir / "checkpoints")
    )


def _assert_same_weights(a: Path, b: Path) -> None:
    import torch

    from evals.run import load_teacher_backbone

    wa, _ = load_teacher_backbone(a)
    wb, _ = load_teacher_backbone(b)
    sa, sb = wa.state_dict(), wb.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
