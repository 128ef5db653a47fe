"""Pretraining on Slurm through submitit: `equirecon launch slurm --config FILE --nodes N …`.

One Slurm task per GPU (`--gpus-per-node G` gives G tasks per node; on CPU-only clusters
`--gpus-per-node 0 --tasks-per-node T`). Every task runs `PretrainJob`, which

1. exports the torch.distributed variables from the Slurm environment
   (`submitit.helpers.TorchDistributedEnvironment`: MASTER_ADDR = first node of the job,
   RANK = SLURM_PROCID, …) and initializes the process group (`pretrain.distributed`: NCCL on
   GPUs, gloo on CPU);
2. trains through `launch.entry.run_pretraining` (the entry point of `equirecon pretrain` too)
   in the run directory of the config. Every rank uses the same `run.dir` (it must be on a
   filesystem all nodes share); rank 0 keeps the MLflow run id in `RUN_DIR/mlflow_run_id`, so a
   requeued job continues the same MLflow run and resumes from `RUN_DIR/checkpoints/latest`;
3. on SIGUSR2 (Slurm sends it `--signal-delay-s` seconds before the time limit, and
   `scancel --signal=USR2 JOBID` sends it by hand) or SIGTERM (preemption, scancel) a handler
   only sets a flag. The trainer polls it at every step boundary (`Trainer.fit(should_stop=…)`),
   all ranks save a checkpoint of that step and `fit` returns. After SIGUSR2, rank 0 then hands
   over to submitit's own handler: it calls `PretrainJob.checkpoint()` (a fresh job with the same
   config), writes it as the job's new pickle and runs `scontrol requeue`; the requeued job (same
   job id) resumes from the checkpoint. After SIGTERM the job only exits: a preempted job is
   requeued by Slurm itself (PreemptMode=REQUEUE), a cancelled one is not. submitit stops
   requeueing after `--max-timeouts` time limits (preemptions are not counted).

With `eval.watch=true`, rank 0 also runs the background eval watcher (`evals.watch`, local eval
jobs inside the allocation); after a stop signal it is not waited for (the requeued job's watcher
retries the evals that were cut short). `equirecon eval watch RUN_DIR --executor slurm` instead
runs each eval as its own Slurm job.

Nothing here imports torch at module import time: the submitting side only needs submitit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from equirecon.executors import require_submitit, slurm_executor
from launch.signals import REQUEUE_SIGNAL, StopFlag

log = logging.getLogger("equirecon.launch")


@dataclass
class SlurmOptions:
    """What `sbatch` is asked for. `tasks_per_node` None: one task per GPU (1 without GPUs)."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    job_name: str = "equirecon-pretrain"
    signal_delay_s: int = 120
    max_timeouts: int = 3
    extra: dict[str, Any] = field(default_factory=dict)  # other sbatch options, e.g. constraint

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def check(self) -> None:
        """Reject option sets that Slurm would reject later, or that train wrongly."""
        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1 (got {self.nodes})")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node must be >= 0 (got {self.gpus_per_node})")
        if self.ntasks_per_node < 1:
            raise ValueError(f"--tasks-per-node must be >= 1 (got {self.ntasks_per_node})")
        if self.gpus_per_node > 0 and self.ntasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"--tasks-per-node {self.ntasks_per_node} with --gpus-per-node "
                f"{self.gpus_per_node}: training runs one task per GPU; leave --tasks-per-node "
                "out (it defaults to --gpus-per-node)"
            )
        if self.time_min < 1:
            raise ValueError(f"--time must be >= 1 minute (got {self.time_min})")
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"--signal-delay-s {self.signal_delay_s} is not shorter than --time "
                f"{self.time_min} min: the job would be signalled at once"
            )


def prepare_config(config: str | Path | None, overrides: list[str], world_size: int):  # noqa: ANN201 - Config
    """The config a Slurm job trains with: `load_config(config, overrides)` with `run.dir` and
    `data.path` made absolute (the job may start elsewhere), and `train.strategy` replaced by
    the strategy's `several_ranks` when the world has several ranks (single: ddp)."""
    from equirecon.config import load_config
    from pretrain.strategies import get_strategy  # torch-free; also hands its names to validate

    cfg = load_config(config, overrides)
    cfg.run.dir = str(Path(cfg.run.dir).expanduser().resolve())
    if "://" not in cfg.data.path:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    several_ranks = get_strategy(cfg.train.strategy).several_ranks
    if world_size > 1 and several_ranks:
        cfg.train.strategy = several_ranks
    return cfg


def _master_port(job_id: str, restart_count: int) -> int:
    """A port all tasks agree on, different after each requeue (the old one may linger)."""
    return 20000 + zlib.crc32(f"{job_id}/{restart_count}".encode()) % 40000


def export_slurm_dist_env() -> dict[str, str]:
    """Set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the Slurm job (inside a task)."""
    submitit = require_submitit("launch slurm")
    if "MASTER_PORT" not in os.environ:
        job_id = os.environ.get("SLURM_JOB_ID", "0")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        os.environ["MASTER_PORT"] = str(_master_port(job_id, restarts))
    env = submitit.helpers.TorchDistributedEnvironment()
    # All GPUs of the node stay visible; pretrain.distributed picks cuda:LOCAL_RANK.
    env.export(set_cuda_visible_devices=False, overwrite=True)
    return {
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
    }


def _limit_threads() -> None:
    """CPU threads per rank = the task's CPUs (unless OMP_NUM_THREADS says otherwise)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))


class PretrainJob:
    """The callable each Slurm task runs; submitit pickles it (it holds only the config).

    Returns a summary dict per rank: rank, world_size, step, preempted, last metrics, run_dir.
    """

    def __init__(self, cfg: Any, requeue_wait_s: float = 120.0) -> None:
        self.cfg = cfg
        self.requeue_wait_s = requeue_wait_s

    def __call__(self) -> dict[str, Any]:
        from launch.entry import run_pretraining, setup_logging
        from pretrain.distributed import destroy, init_distributed

        setup_logging()
        stop = StopFlag().install()
        if os.environ.get("SLURM_JOB_ID"):
            export_slurm_dist_env()
            _limit_threads()
        info = init_distributed()
        log.info(
            "rank %d/%d on %s (%s), run dir %s, restart %s",
            info.rank,
            info.world_size,
            os.uname().nodename,
            info.device,
            self.cfg.run.dir,
            os.environ.get("SLURM_RESTART_COUNT", "0"),
        )
        # Not after a stop signal: the time left goes to the checkpoint and the requeue; the
        # requeued job's watcher retries the evals that were cut short.
        outcome = run_pretraining(self.cfg, info, stop, leave_watcher_on_stop=True)
        trainer, last = outcome.trainer, outcome.metrics
        result = {
            "rank": info.rank,
            "world_size": info.world_size,
            "step": trainer.step,
            "preempted": trainer.preempted,
            "signal": signal.Signals(stop.received).name if stop.received else None,
            "metrics": last,
            "run_dir": self.cfg.run.dir,
        }
        destroy()
        if trainer.preempted and stop.received == REQUEUE_SIGNAL:
            self._requeue(info.rank, stop)
        return result

    def _requeue(self, rank: int, stop: StopFlag) -> None:
        """After the checkpoint: rank 0 runs submitit's handler (checkpoint() + scontrol requeue
        + exit); the other ranks wait for the requeue to end them."""
        submitit_handler = stop.previous.get(REQUEUE_SIGNAL)
        if not callable(submitit_handler):
            log.warning("stopped by SIGUSR2 outside a submitit job: checkpoint saved, not requeued")
            return
        if rank == 0:
            log.info("checkpoint saved; requeueing through submitit")
            submitit_handler(REQUEUE_SIGNAL, None)  # exits the process once requeued
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the requeue's SIGTERM ends us at once
        time.sleep(self.requeue_wait_s)
        raise RuntimeError(
            f"rank {rank}: checkpoint saved after SIGUSR2, but the job was not requeued within "
            f"{self.requeue_wait_s:.0f}s (see rank 0's log)"
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: the same job again (it resumes from checkpoints/latest)."""
        submitit = require_submitit("launch slurm")
        return submitit.helpers.DelayedSubmission(PretrainJob(self.cfg, self.requeue_wait_s))


def build_executor(options: SlurmOptions, folder: str | Path):  # noqa: ANN201 - submitit.AutoExecutor
    """A submitit Slurm executor for `options` (logs under `folder/<job id>/`)."""
    options.check()
    parameters: dict[str, Any] = {
        "name": options.job_name,
        "nodes": options.nodes,
        "tasks_per_node": options.ntasks_per_node,
        "timeout_min": options.time_min,
        "slurm_signal_delay_s": options.signal_delay_s,
        # requeue-able even where the cluster's JobRequeue=0
        "slurm_additional_parameters": {"requeue": True, **options.extra},
        "gpus_per_node": options.gpus_per_node if options.gpus_per_node > 0 else None,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
    }
    return slurm_executor(
        folder, "launch slurm", parameters, slurm_max_num_timeout=options.max_timeouts
    )


def submit_pretraining(
    config: str | Path | None,
    overrides: list[str],
    options: SlurmOptions,
    folder: str | Path | None = None,
) -> tuple[Any, Any]:
    """Submit one pretraining job; returns (submitit Job, resolved Config). Its submitit logs
    go to `folder` (default RUN_DIR/slurm/<job id>/)."""
    options.check()
    cfg = prepare_config(config, overrides, options.world_size)
    folder = Path(folder) if folder else Path(cfg.run.dir) / "slurm"
    executor = build_executor(options, folder)
    try:
        job = executor.submit(PretrainJob(cfg))
    except Exception as err:  # sbatch missing or refusing: say what to check
        raise RuntimeError(
            f"sbatch refused the job ({type(err).__name__}: {str(err).strip()[:500]}); check "
            "--partition/--time/--gpus-per-node against `sinfo`, and that Slurm is reachable"
        ) from err
    log.info("submitted Slurm job %s: %s, logs in %s", job.job_id, cfg.run.dir, folder)
    return job, cfg


def slurm_state(job_id: str) -> str | None:
    """The job's state from `squeue` (no accounting needed; finished jobs stay visible for
    MinJobAge), else `sacct`; None when Slurm no longer knows the job."""
    for cmd in (
        ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"],
        ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = out.stdout.split()
        if out.returncode == 0 and lines:
            return lines[0].split()[0]
    return None


# Final states (not PREEMPTED: a preempted job may come back, PreemptMode=REQUEUE).
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
FINISHED |= {"BOOT_FAIL", "DEADLINE"}


def wait_for_job(job: Any, poll_s: float = 2.0, timeout_s: float | None = None) -> list[Any]:
    """Wait for every task's result through requeues; returns them (one per rank).

    Raises RuntimeError (with the stderr tail) when the job ends without results.
    """
    start = time.monotonic()
    tasks = job._sub_jobs or [job]  # noqa: SLF001 - one Job per task in submitit
    gone_since: float | None = None
    while True:
        if all(t.paths.result_pickle.exists() for t in tasks):
            return job.results()
        state = slurm_state(job.job_id)
        if state is None or state in FINISHED:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 15:  # results are written before the job ends
                tail = ""
                with_err = job.paths.stderr
                if with_err.exists():
                    tail = "\n".join(with_err.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(
                    f"Slurm job {job.job_id} ended ({state or 'unknown to Slurm'}) without a "
                    f"result; stderr of rank 0 ({with_err}):\n{tail}"
                )
        else:
            gone_since = None
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"Slurm job {job.job_id} still {state} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def describe(job: Any, cfg: Any, options: SlurmOptions) -> dict[str, Any]:
    """What the CLI prints after a submission (one JSON line)."""
    return {
        "job_id": str(job.job_id),
        "run_dir": cfg.run.dir,
        "world_size": options.world_size,
        "strategy": cfg.train.strategy,
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
    }


def format_results(results: list[dict[str, Any]]) -> str:
    """One JSON line per rank."""
    return "\n".join(json.dumps(r, default=str) for r in results)
