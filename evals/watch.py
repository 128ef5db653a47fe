"""Watch a run's checkpoints and evaluate every new complete one exactly once, through submitit.

`equirecon eval watch RUN_DIR` polls `RUN_DIR/checkpoints` for complete checkpoints (a
`step_XXXXXXXX` directory holding DCP's `.metadata`; `.tmp_*` directories and directories
without `.metadata` are saves in progress or interrupted) and submits one eval job per
checkpoint: `submitit.LocalExecutor` (`--executor local`) or `submitit.AutoExecutor` on Slurm.

What it guarantees:
- never twice: `RUN_DIR/evals/watch_state.json` (written atomically) records every checkpoint's
  state (queued, running, done, failed, skipped), so a restarted watcher goes on where the last
  one stopped; a job still running from a previous watcher is re-attached, not resubmitted; a
  lock file keeps a second watcher off the same run;
- a failing eval (an exception, a crashed or timed-out job, a task that failed) is retried
  once, then marked `failed` with its error; it never blocks the other checkpoints. A user
  error (`equirecon.errors.UserError`: no task has its data, a bad setting) fails at once, as a
  retry would fail the same way;
- tasks skipped for want of their data (`evals.dispatch.plan_tasks`) are recorded in the
  checkpoint's entry (`skipped`: {task: why}); such an eval is `done`, not retried;
- `--once` processes what is there, waits for the submitted jobs (and retries), then exits.

A `model.init` run's first checkpoint is step 0, its starting model (the loaded backbone, saved
before the first update): evaluated like every checkpoint, its entry names the file
(`starting_model`).

No torch at import time: the watcher and its job wrapper start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from equirecon.errors import UserError
from equirecon.executors import require_submitit, slurm_executor
from equirecon.rundir import CHECKPOINTS_DIR, EVALS_DIR, list_checkpoints, write_json_atomic
from evals.results import starting_model

log = logging.getLogger("equirecon.watch")

STATE_FILE = "watch_state.json"
LOCK_FILE = ".watch.lock"
LOG_FILE = "watch.log"
EXECUTORS = ("local", "slurm", "debug")
FINAL_STATES = ("done", "failed", "skipped")

EvalFn = Callable[[str], Any]
"""Evaluates one checkpoint directory (path as str); returns a result dict with "metrics"."""


def default_eval(
    checkpoint: str, overrides: list[str] | None = None, config: str | None = None
) -> dict[str, Any]:
    """The real evaluation (`evals.run.evaluate_checkpoint`): JSON file + MLflow.

    `config`: a YAML file whose eval section replaces the run's (e.g. configs/eval/*.yaml).
    """
    from evals.run import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, overrides=overrides, config=config)


def load_eval_fn(spec: str) -> EvalFn:
    """`package.module:function` -> the function (a custom eval callable for the watcher)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"eval function must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def run_eval_job(eval_fn: EvalFn, checkpoint: str) -> dict[str, Any]:
    """The body of one submitted job: never raises.

    Returns:
        {"ok", "metrics", "skipped"} or, when the eval raised or a task failed, {"ok": False,
        "error", ...}, with "retry": False for a user error (it would fail again).
    """
    started = time.time()
    try:
        result = eval_fn(checkpoint)
    except Exception as err:  # reported through the state file, retried by the watcher
        return {
            "ok": False,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "seconds": round(time.time() - started, 2),
            "retry": not isinstance(err, UserError),
        }
    result = result if isinstance(result, dict) else {}
    outcome = {
        "ok": True,
        "metrics": result.get("metrics", {}),
        "seconds": round(time.time() - started, 2),
    }
    if result.get("skipped"):
        outcome["skipped"] = result["skipped"]
    if (start := starting_model(result)) is not None:
        outcome["starting_model"] = start
    if result.get("failed"):  # the other tasks' results are written; the eval is retried
        failed = "; ".join(f"{task}: {err}" for task, err in result["failed"].items())
        outcome.update(ok=False, error=f"eval task(s) failed: {failed}")
    return outcome


def build_executor(
    kind: str,
    folder: str | Path,
    timeout_min: int = 240,
    partition: str | None = None,
    cpus_per_task: int | None = None,
    gpus_per_node: int | None = None,
    mem_gb: float | None = None,
    account: str | None = None,
    job_name: str = "equirecon-eval",
):  # noqa: ANN201 - a submitit.Executor
    """A submitit executor writing its logs under `folder` (one sub-folder per job id)."""
    submitit = require_submitit("eval watch")
    if kind == "slurm":
        parameters: dict[str, Any] = {
            "timeout_min": timeout_min,
            "name": job_name,
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_partition": partition,
            "cpus_per_task": cpus_per_task,
            "gpus_per_node": gpus_per_node,
            "mem_gb": mem_gb,
            "slurm_account": account,
        }
        return slurm_executor(folder, "eval watch", parameters)
    folder = str(Path(folder) / "%j")
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min)
    elif kind == "debug":
        executor = submitit.DebugExecutor(folder=folder)
    else:
        raise ValueError(f"unknown executor {kind!r}; choose one of {list(EXECUTORS)}")
    return executor


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointWatcher:
    """Submits one eval job per new complete checkpoint of `run_dir` and tracks it to the end.

    Args:
        run_dir: the run directory (holds `checkpoints/`).
        executor: "local", "slurm", "debug" (in-process, for tests) or a submitit Executor.
        eval_fn: the evaluation of one checkpoint; None: `default_eval` with `overrides`.
        overrides: `eval.*=value` overrides for the default evaluation.
        config: a YAML config whose eval section the default evaluation uses instead of the
            run's (an eval protocol such as configs/eval/imagenet_linear.yaml).
        max_attempts: tries per checkpoint (2 = one retry).
        max_parallel: jobs running at once; None: 1 for local/debug, 8 for Slurm.
        poll_seconds: seconds between scans of the checkpoint folder.
        executor_options: `build_executor` keyword arguments (timeout_min, partition, ...).
        parent_pid: finish gracefully (as on SIGTERM) once this process is no longer our
            parent (the background watcher of a pretraining that was killed).
    """

    def __init__(
        self,
        run_dir: str | Path,
        executor: Any = "local",
        eval_fn: EvalFn | None = None,
        overrides: list[str] | None = None,
        config: str | Path | None = None,
        max_attempts: int = 2,
        max_parallel: int | None = None,
        poll_seconds: float = 30.0,
        executor_options: dict[str, Any] | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.parent_pid = parent_pid
        self.evals_dir = self.run_dir / EVALS_DIR
        self.evals_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.evals_dir / STATE_FILE
        self.jobs_dir = self.evals_dir / "submitit"
        if isinstance(executor, str):
            self.executor_kind = executor
            self.executor = build_executor(executor, self.jobs_dir, **(executor_options or {}))
        else:
            self.executor_kind = type(executor).__name__
            self.executor = executor
        if config is not None:
            config = str(Path(config).absolute())  # jobs may run elsewhere (Slurm)
        self.eval_fn = eval_fn or functools.partial(
            default_eval, overrides=overrides, config=config
        )
        self.max_attempts = max(1, max_attempts)
        self.max_parallel = max_parallel or (8 if self.executor_kind == "slurm" else 1)
        self.poll_seconds = poll_seconds
        self.jobs: dict[str, tuple[Any, bool]] = {}  # name -> (job, re-attached local job)
        self.stop_requested = False
        self.state = self._load_state()
        self.newly: dict[str, list[str]] = {"done": [], "failed": []}

    # --- state --------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {"run_dir": str(self.run_dir.resolve()), "checkpoints": {}}
        try:
            state = json.loads(self.state_path.read_text())
        except ValueError as err:
            raise ValueError(
                f"{self.state_path} is not valid JSON ({err}); fix or delete it (deleting it "
                "re-evaluates every checkpoint)"
            ) from None
        state.setdefault("checkpoints", {})
        return state

    def _save(self) -> None:
        self.state["updated_at"] = time.time()
        write_json_atomic(self.state_path, self.state)

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self.state["checkpoints"]

    # --- one pass -----------------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Queue the complete checkpoints not seen before; returns their names."""
        new = []
        for step, path in list_checkpoints(self.run_dir / CHECKPOINTS_DIR):
            if path.name not in self.entries:
                self.entries[path.name] = {"step": step, "state": "queued", "attempts": 0}
                new.append(path.name)
        if new:
            log.info("new checkpoints: %s", ", ".join(new))
            self._save()
        return new

    def collect(self) -> None:
        """Record the outcome of finished jobs (re-attaching jobs of a previous watcher)."""
        changed = False
        for name, entry in sorted(self.entries.items()):
            if entry["state"] != "running":
                continue
            if name not in self.jobs:
                self.jobs[name] = self._reattach(entry)
            outcome = self._poll(*self.jobs[name])
            if outcome is None:
                continue
            del self.jobs[name]
            self._record(name, entry, outcome)
            changed = True
        if changed:
            self._save()

    def submit(self) -> None:
        """Submit queued checkpoints, oldest first, up to `max_parallel` running jobs."""
        running = sum(e["state"] == "running" for e in self.entries.values())
        queued = sorted((e["step"], n) for n, e in self.entries.items() if e["state"] == "queued")
        for _, name in queued:
            if running >= self.max_parallel:
                break
            entry = self.entries[name]
            ckpt = self.run_dir / CHECKPOINTS_DIR / name
            if not (ckpt / ".metadata").is_file():  # removed by the retention policy meanwhile
                entry.update(state="skipped", error=f"{ckpt} disappeared before evaluation")
                log.warning("skipping %s: it was deleted before it could be evaluated", name)
                self._save()
                continue
            job = self.executor.submit(run_eval_job, self.eval_fn, str(ckpt))
            entry.update(
                state="running",
                attempts=entry["attempts"] + 1,
                job_id=str(job.job_id),
                executor=self.executor_kind,
                submitted_at=time.time(),
            )
            self.jobs[name] = (job, False)
            running += 1
            log.info(
                "submitted eval of %s (attempt %d, job %s)", name, entry["attempts"], job.job_id
            )
            self._save()

    def poll(self, rescan: bool = True) -> None:
        """One pass: collect finished jobs, scan for checkpoints, submit."""
        self.collect()
        if rescan:
            self.scan()
        self.submit()

    # --- jobs ---------------------------------------------------------------------------------

    def _reattach(self, entry: dict[str, Any]) -> tuple[Any, bool]:
        """A handle on a job submitted by an earlier watcher (None if it cannot be followed)."""
        job_id, kind = entry.get("job_id"), entry.get("executor")
        folder = self.jobs_dir / "%j"
        try:
            if kind == "local" and job_id:
                from submitit.local.local import LocalJob

                return LocalJob(folder=folder, job_id=job_id), True
            if kind == "slurm" and job_id:
                from submitit import SlurmJob

                return SlurmJob(folder=folder, job_id=job_id), False
        except Exception as err:  # noqa: BLE001 - anything: treat the attempt as lost
            log.warning("cannot re-attach job %s: %s", job_id, err)
        return None, False

    @staticmethod
    def _poll(job: Any, reattached_local: bool) -> dict[str, Any] | None:
        """The job's outcome, or None while it runs."""
        if job is None:
            return {"ok": False, "error": "eval job lost: submitted by an earlier watcher"}
        try:
            if reattached_local:
                if not job.paths.result_pickle.exists():
                    if _pid_alive(int(job.job_id)):
                        return None
                    return {
                        "ok": False,
                        "error": f"eval job {job.job_id} ended without a result "
                        "(its process died with an earlier watcher?)",
                    }
            elif not job.done():
                return None
            result = job.result()
        except Exception as err:  # noqa: BLE001 - crashed, killed, timed out: all reported
            first = str(err).strip().splitlines()
            return {"ok": False, "error": f"{type(err).__name__}: {first[0] if first else ''}"}
        if isinstance(result, dict) and "ok" in result:
            return result
        return {"ok": False, "error": f"eval job returned {type(result).__name__}, not a dict"}

    def _record(self, name: str, entry: dict[str, Any], outcome: dict[str, Any]) -> None:
        entry["finished_at"] = time.time()
        for key in ("skipped", "starting_model"):
            if key in outcome:
                entry[key] = outcome[key]
        if outcome.get("ok"):
            entry.update(state="done", metrics=outcome.get("metrics", {}), error=None)
            self.newly["done"].append(name)
            log.info("eval of %s done: %s", name, entry["metrics"])
            return
        if outcome.get("metrics"):  # a task failed: the others' results
            entry["metrics"] = outcome["metrics"]
        error = outcome.get("error", "unknown error")
        entry.setdefault("errors", []).append(error)
        if entry["attempts"] < self.max_attempts and outcome.get("retry", True):
            entry["state"] = "queued"
            log.warning("eval of %s failed (%s); retrying", name, error)
        else:
            entry.update(state="failed", error=error)
            self.newly["failed"].append(name)
            if not outcome.get("retry", True):
                log.error("eval of %s failed; a retry would fail alike: %s", name, error)
            else:
                log.error(
                    "eval of %s failed %d times; giving up: %s", name, entry["attempts"], error
                )

    # --- loops --------------------------------------------------------------------------------

    def pending(self) -> int:
        """Checkpoints queued or running."""
        return sum(e["state"] in ("queued", "running") for e in self.entries.values())

    def request_stop(self, *_: Any) -> None:
        """Finish gracefully: one last scan, wait for the jobs, exit (signal-handler safe)."""
        self.stop_requested = True

    def run(self, once: bool = False, tick_seconds: float = 1.0) -> dict[str, Any]:
        """Watch until stopped (or, with `once`, until what is there now is evaluated).

        Returns:
            The state file's content.
        """
        tick = max(0.05, min(tick_seconds, self.poll_seconds))
        last_scan = -float("inf")
        final = once
        with self._lock():
            while True:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    self.stop_requested = True
                if self.stop_requested and not final:
                    final, last_scan = True, -float("inf")  # a last scan for the last checkpoint
                rescan = time.monotonic() - last_scan >= self.poll_seconds and (
                    not final or last_scan == -float("inf")
                )
                self.poll(rescan=rescan)
                if rescan:
                    last_scan = time.monotonic()
                if final and not self.pending():
                    break
                time.sleep(tick)
        return self.state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = self.evals_dir / LOCK_FILE
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise RuntimeError(
                    f"another eval watcher holds {path} (pid {handle.read().strip() or '?'}); "
                    "stop it first"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def watch(
    run_dir: str | Path,
    executor: Any = "local",
    poll_seconds: float = 30.0,
    once: bool = False,
    eval_fn: EvalFn | None = None,
    handle_signals: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run a `CheckpointWatcher` (see there for `kwargs`); returns the final state.

    With `handle_signals`, SIGTERM/SIGINT make it finish gracefully (last scan, wait for jobs).
    """
    watcher = CheckpointWatcher(
        run_dir, executor, eval_fn=eval_fn, poll_seconds=poll_seconds, **kwargs
    )
    previous = {}
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, watcher.request_stop)
    try:
        return watcher.run(once=once)
    finally:  # a process that goes on (tests, a notebook) must not keep the stop handlers:
        for signum, handler in previous.items():  # a later fork's Pool.terminate would hang
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def format_state(state: dict[str, Any]) -> str:
    """A small text table of the checkpoints' eval states."""
    lines = [f"{'checkpoint':<16} {'state':<8} {'tries':>5}  detail"]
    for name, entry in sorted(state.get("checkpoints", {}).items()):
        detail = entry.get("error") or ""
        if entry["state"] == "done":
            detail = ", ".join(f"{k}={v:.4g}" for k, v in sorted(entry.get("metrics", {}).items()))
        if entry.get("skipped"):
            detail += f" (skipped for want of data: {', '.join(entry['skipped'])})"
        if entry.get("starting_model"):
            detail += f" [starting model: {entry['starting_model']}]"
        lines.append(f"{name:<16} {entry['state']:<8} {entry.get('attempts', 0):>5}  {detail}")
    return "\n".join(lines)


# --- the background watcher of a pretraining run ----------------------------------------------


def start_watcher(
    run_dir: str | Path,
    poll_seconds: float = 30.0,
    timeout_min: int = 240,
    eval_fn: str | None = None,
) -> subprocess.Popen:
    """Start `equirecon eval watch RUN_DIR --executor local` as a background process (its
    output goes to `RUN_DIR/evals/watch.log`)."""
    evals_dir = Path(run_dir) / EVALS_DIR
    evals_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "equirecon", "eval", "watch", str(run_dir),
        "--executor", "local", "--poll-seconds", str(poll_seconds),
        "--timeout-min", str(timeout_min), "--stop-with-parent", str(os.getpid()),
    ]  # fmt: skip
    if eval_fn:
        cmd += ["--eval-fn", eval_fn]
    with (evals_dir / LOG_FILE).open("ab") as out:
        # A session of its own: a Ctrl-C meant for the training does not hit the eval jobs;
        # the training stops the watcher itself (or the watcher notices it is orphaned).
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    log.info("started the eval watcher (pid %d) on %s", proc.pid, run_dir)
    return proc


def stop_watcher(proc: subprocess.Popen, timeout: float | None = None) -> int | None:
    """Ask the watcher to finish (SIGTERM: a last scan, wait for its jobs) and wait for it;
    kill it if `timeout` seconds pass. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("eval watcher (pid %d) did not finish in %ss; killing it", proc.pid, timeout)
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def background_watcher(
    cfg: Any, is_main: bool = True, leave_running: Callable[[], bool] | None = None
) -> Iterator[subprocess.Popen | None]:
    """With `eval.watch` on rank 0: watch `run.dir` while the block runs, then a final pass.

    `leave_running`: asked when the block ends; True leaves the watcher running, not waited for
    (after a stop signal the time left goes to the checkpoint and the requeue; the watcher ends
    by itself once its parent is gone, and the requeued job's watcher retries the evals that
    were cut short).
    """
    if not (cfg.eval.watch and is_main):
        yield None
        return
    proc = start_watcher(cfg.run.dir, cfg.eval.watch_poll_seconds, cfg.eval.watch_timeout_min)
    try:
        yield proc
    finally:
        if leave_running is None or not leave_running():
            log.info("pretraining ended: the eval watcher does its final pass (pid %d)", proc.pid)
            stop_watcher(proc)
