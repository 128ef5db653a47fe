"""Tests of the checkpoint watcher (evals/watch.py).

The eval callable is injected: fake evaluations record every call in files (so calls made in
LocalExecutor subprocesses are counted too). DebugExecutor runs jobs in-process where only the
bookkeeping matters; LocalExecutor runs real subprocess jobs for crash and retry handling.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from equirecon.errors import DataError
from equirecon.rundir import list_checkpoints
from evals.watch import (
    STATE_FILE,
    CheckpointWatcher,
    background_watcher,
    format_state,
    start_watcher,
    stop_watcher,
    watch,
)

REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(run_dir: Path, step: int, complete: bool = True, name: str = "") -> Path:
    path = run_dir / "checkpoints" / (name or f"step_{step:08d}")
    path.mkdir(parents=True, exist_ok=True)
    (path / "__0_0.distcp").write_bytes(b"weights")
    if complete:
        (path / ".metadata").write_bytes(b"dcp")
    return path


def _record(log_dir: Path, checkpoint: str, outcome: str) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{Path(checkpoint).name}.{outcome}.{uuid.uuid4().hex}").write_text("")


def calls(log_dir: Path, outcome: str = "ok") -> list[str]:
    """Checkpoint names with a call of that outcome, one entry per call, sorted."""
    return sorted(p.name.split(".")[0] for p in log_dir.glob(f"*.{outcome}.*"))


def recording_eval(log_dir: str, checkpoint: str) -> dict:
    _record(Path(log_dir), checkpoint, "ok")
    return {"metrics": {"eval/fake": float(Path(checkpoint).name[-3:])}}


def flaky_eval(log_dir: str, checkpoint: str) -> dict:
    """step 1: fails on its first call only; step 2: always fails; others succeed."""
    name, log = Path(checkpoint).name, Path(log_dir)
    if name.endswith("2") or (name.endswith("1") and not list(log.glob(f"{name}.error.*"))):
        _record(log, checkpoint, "error")
        raise RuntimeError(f"boom on {name}")
    return recording_eval(log_dir, checkpoint)


def env_recording_eval(checkpoint: str) -> dict:
    """`--eval-fn tests.evals.test_watch:env_recording_eval` (log folder from the env)."""
    return recording_eval(os.environ["WATCH_TEST_LOG"], checkpoint)


def read_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "evals" / STATE_FILE).read_text())["checkpoints"]


def test_only_complete_checkpoints_count(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_checkpoint(run, 1)
    make_checkpoint(run, 2, complete=False)  # interrupted save: no .metadata
    make_checkpoint(run, 3, name=".tmp_step_00000003")  # a save in progress
    (run / "checkpoints" / "notes").mkdir()
    # No `latest` pointer at all (crash before it was written).
    assert [p.name for _, p in list_checkpoints(run / "checkpoints")] == ["step_00000001"]
    assert list_checkpoints(tmp_path / "missing") == []


def test_interrupted_checkpoints_wait_and_nothing_is_evaluated_twice(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    fn = functools.partial(recording_eval, str(log))
    make_checkpoint(run, 1)
    make_checkpoint(run, 2, complete=False)
    tmp_save = make_checkpoint(run, 3, name=".tmp_step_00000003")
    state = watch(run, executor="debug", once=True, eval_fn=fn, poll_seconds=0.05)
    assert calls(log) == ["step_00000001"]
    assert set(state["checkpoints"]) == {"step_00000001"}
    assert state["checkpoints"]["step_00000001"]["metrics"] == {"eval/fake": 1.0}

    # The saves finish; a new watcher (a restart) evaluates only those two.
    (run / "checkpoints" / "step_00000002" / ".metadata").write_bytes(b"dcp")
    tmp_save.rename(run / "checkpoints" / "step_00000003")
    watch(run, executor="debug", once=True, eval_fn=fn, poll_seconds=0.05)
    assert calls(log) == ["step_00000001", "step_00000002", "step_00000003"]

    # Nothing new: a third watcher does nothing.
    watch(run, executor="debug", once=True, eval_fn=fn, poll_seconds=0.05)
    assert len(calls(log)) == 3
    states = read_state(run)
    assert {n: (e["state"], e["attempts"]) for n, e in states.items()} == {
        f"step_{s:08d}": ("done", 1) for s in (1, 2, 3)
    }


def test_job_lost_with_a_previous_watcher_is_retried_not_duplicated(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    make_checkpoint(run, 1)
    make_checkpoint(run, 2)
    dead_pid = os.fork()
    if dead_pid == 0:  # a local job whose process is gone, without a result
        os._exit(0)
    os.waitpid(dead_pid, 0)
    (run / "evals").mkdir(parents=True)
    (run / "evals" / STATE_FILE).write_text(
        json.dumps(
            {
                "checkpoints": {
                    "step_00000001": {"step": 1, "state": "done", "attempts": 1},
                    "step_00000002": {
                        "step": 2,
                        "state": "running",
                        "attempts": 1,
                        "executor": "local",
                        "job_id": str(dead_pid),
                    },
                }
            }
        )
    )
    watch(run, executor="debug", once=True, eval_fn=functools.partial(recording_eval, str(log)))
    assert calls(log) == ["step_00000002"]
    entry = read_state(run)["step_00000002"]
    assert (entry["state"], entry["attempts"]) == ("done", 2)
    assert "without a result" in entry["errors"][0]


def test_crash_is_retried_once_then_reported_and_others_still_run(tmp_path: Path) -> None:
    import cloudpickle

    run, log = tmp_path / "run", tmp_path / "log"
    for step in (1, 2, 3):
        make_checkpoint(run, step)
    # The jobs run in fresh interpreters: ship this module's functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        state = watch(
            run,
            executor="local",
            once=True,
            eval_fn=functools.partial(flaky_eval, str(log)),
            poll_seconds=0.2,
            max_parallel=3,
            executor_options={"timeout_min": 5},
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    entries = state["checkpoints"]
    assert (entries["step_00000001"]["state"], entries["step_00000001"]["attempts"]) == ("done", 2)
    assert entries["step_00000001"]["errors"] == ["RuntimeError: boom on step_00000001"]
    assert (entries["step_00000002"]["state"], entries["step_00000002"]["attempts"]) == (
        "failed",
        2,
    )
    assert entries["step_00000002"]["error"] == "RuntimeError: boom on step_00000002"
    assert (entries["step_00000003"]["state"], entries["step_00000003"]["attempts"]) == ("done", 1)
    assert calls(log) == ["step_00000001", "step_00000003"]  # each success exactly once
    assert calls(log, "error") == ["step_00000001", "step_00000002", "step_00000002"]
    assert read_state(run) == entries  # what was returned is what is on disk


def partial_eval(log_dir: str, checkpoint: str) -> dict:
    """What `evaluate_checkpoint` returns on partial data: step 1 with tasks skipped, step 2
    with a task failed as well; step 3 has no task with its data (a user error)."""
    name = Path(checkpoint).name
    _record(Path(log_dir), checkpoint, "call")
    if name.endswith("3"):
        raise DataError("no eval task has its data in /data: ...")
    failed = {"knn": "RuntimeError: boom"} if name.endswith("2") else {}
    skipped = {"depth": "no depth/ subset in /data (make one with ...)"}
    return {"metrics": {"eval/linear/top1": 50.0}, "skipped": skipped, "failed": failed}


def test_partial_data_is_recorded_and_not_retried_forever(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    for step in (1, 2, 3):
        make_checkpoint(run, step)
    fn = functools.partial(partial_eval, str(log))
    state = watch(run, executor="debug", once=True, eval_fn=fn, poll_seconds=0.05)
    entries = state["checkpoints"]
    # Skipped tasks: done at the first try, the skips recorded.
    one = entries["step_00000001"]
    assert (one["state"], one["attempts"], list(one["skipped"])) == ("done", 1, ["depth"])
    # A task failed: retried (max_attempts), then failed; the other task's metrics are kept.
    two = entries["step_00000002"]
    assert (two["state"], two["attempts"]) == ("failed", 2)
    assert two["error"] == "eval task(s) failed: knn: RuntimeError: boom"
    assert two["metrics"] == {"eval/linear/top1": 50.0} and list(two["skipped"]) == ["depth"]
    # A user error fails alike every time: not retried.
    three = entries["step_00000003"]
    assert (three["state"], three["attempts"]) == ("failed", 1)
    assert three["error"].startswith("DataError: no eval task has its data")
    assert calls(log, "call") == [
        "step_00000001",
        "step_00000002",
        "step_00000002",
        "step_00000003",
    ]
    table = format_state(state)
    assert "(skipped for want of data: depth)" in table.splitlines()[1]
    # A restarted watcher does not evaluate any of them again.
    watch(run, executor="debug", once=True, eval_fn=fn, poll_seconds=0.05)
    assert len(calls(log, "call")) == 4


def test_a_second_watcher_on_the_same_run_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = CheckpointWatcher(run, executor="debug", eval_fn=print)
    with first._lock(), pytest.raises(RuntimeError, match="another eval watcher"):
        watch(run, executor="debug", once=True, eval_fn=print)


def test_deleted_checkpoint_is_skipped(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    path = make_checkpoint(run, 1)
    watcher = CheckpointWatcher(run, "debug", functools.partial(recording_eval, str(log)))
    watcher.scan()
    (path / ".metadata").unlink()  # retention removed it before its turn
    watcher.submit()
    assert read_state(run)["step_00000001"]["state"] == "skipped" and not calls(log)


def test_background_watcher_does_a_final_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    monkeypatch.setenv("WATCH_TEST_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    make_checkpoint(run, 1)
    proc = start_watcher(run, poll_seconds=0.2, eval_fn="tests.evals.test_watch:env_recording_eval")
    try:
        deadline = time.monotonic() + 120
        while calls(log) != ["step_00000001"] and time.monotonic() < deadline:
            assert proc.poll() is None, (run / "evals" / "watch.log").read_text()
            time.sleep(0.2)
        make_checkpoint(run, 2)  # the last checkpoint lands just before training ends
    finally:
        code = stop_watcher(proc, timeout=120)
    assert code == 0, (run / "evals" / "watch.log").read_text()
    assert calls(log) == ["step_00000001", "step_00000002"]
    assert {e["state"] for e in read_state(run).values()} == {"done"}

    off = SimpleNamespace(eval=SimpleNamespace(watch=False), run=SimpleNamespace(dir=str(run)))
    with background_watcher(off) as none:
        assert none is None
    off.eval.watch = True
    with background_watcher(off, is_main=False) as none:
        assert none is None


def test_orphaned_watcher_finishes_with_a_final_pass(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log"
    make_checkpoint(run, 5)
    fn = functools.partial(recording_eval, str(log))
    # Not `once`: only noticing that its parent (pid -1: never ours) is gone makes it stop.
    watcher = CheckpointWatcher(run, "debug", fn, poll_seconds=0.05, parent_pid=-1)
    watcher.run()
    assert calls(log) == ["step_00000005"]


def test_slurm_executor_gets_the_job_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Slurm here: a stand-in `srun` on PATH lets submitit build the executor; nothing runs.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    from evals.watch import build_executor

    options = {"partition": "gpu", "cpus_per_task": 8, "gpus_per_node": 1, "mem_gb": 32}
    executor = build_executor("slurm", tmp_path / "jobs", timeout_min=30, **options)
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--time=30", "--cpus-per-task=8", "--gpus-per-node=1"):
        assert f"#SBATCH {line}" in script
    assert str(tmp_path / "jobs") in script
    with pytest.raises(ValueError, match="executor"):
        build_executor("kubernetes", tmp_path)
