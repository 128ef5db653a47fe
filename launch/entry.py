"""The one pretraining entry point: `equirecon pretrain` (one process, or a rank under torchrun)
and every Slurm task (`launch.slurm.PretrainJob`) run `run_pretraining`.

It owns what surrounds the training loop (`pretrain.train.Trainer`): the stop signals
(`launch.signals.StopFlag`: checkpoint at the next step boundary and return) and, with
`eval.watch`, the background eval watcher (`evals.watch`) that evaluates checkpoints as they land.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from equirecon.config import Config
from equirecon.errors import PeerLostError
from equirecon.rundir import CHECKPOINTS_DIR
from equirecon.storage import as_storage_error
from evals.watch import background_watcher
from launch.signals import StopFlag
from pretrain.checkpoint import describe_resume_point, note_resume_point
from pretrain.distributed import DistInfo, destroy, peer_lost_reason
from pretrain.train import Trainer

log = logging.getLogger("equirecon.pretrain")


def setup_logging() -> None:
    """INFO logs with time and logger name (a no-op once logging is configured)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@dataclass
class PretrainOutcome:
    trainer: Trainer  # its `step`, `preempted`, `run_dir`, `dist`
    metrics: dict[str, float]  # the last logged metrics
    stop: StopFlag | None  # the flag the trainer polled (its `received` signal)


def run_pretraining(
    cfg: Config,
    dist_info: DistInfo | None = None,
    stop: StopFlag | None = None,
    leave_watcher_on_stop: bool = False,
) -> PretrainOutcome:
    """Run (or resume) the pretraining described by `cfg`.

    Args:
        cfg: the resolved config.
        dist_info: the initialized process group; None: `Trainer` initializes it from the
            environment (torchrun's variables, or a single process).
        stop: the flag polled at every step boundary; None: one is installed here for SIGUSR2
            (the time-limit warning, forwarded by torchrun and containers) and SIGTERM
            (preemption, `docker stop`), in the main thread only (where handlers can be set).
        leave_watcher_on_stop: after a stop signal, do not wait for the eval watcher's final
            pass (a Slurm job that requeues itself).

    Raises:
        StorageError: a write failed (disk full, read-only, no permission); its message names
            the intact checkpoint that rerunning the same command resumes from.
    """
    setup_logging()
    installed: StopFlag | None = None
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, dist_info)
        if stop is None and threading.current_thread() is threading.main_thread():
            stop = installed = StopFlag().install()
        leave_running = (lambda: trainer.preempted) if leave_watcher_on_stop else None
        with background_watcher(cfg, trainer.dist.is_main, leave_running):
            metrics = trainer.fit(should_stop=stop)
    except OSError as err:  # disk full, read-only, no permission: name the checkpoint to resume
        fault = as_storage_error(err)
        if fault is None:
            raise
        note_resume_point(fault, Path(cfg.run.dir) / CHECKPOINTS_DIR)
        if fault is err:
            raise
        raise fault from err
    except RuntimeError as err:  # another rank died: its peers' collectives fail here
        reason = peer_lost_reason(err)
        if reason is None:
            raise
        # Tear the broken process group down now: left to interpreter exit, gloo's threads
        # can abort the process (SIGABRT, "terminate called without an active exception").
        destroy()
        raise _peer_lost(reason, trainer, Path(cfg.run.dir) / CHECKPOINTS_DIR) from err
    finally:
        if installed is not None:  # a process that goes on must not keep record-only handlers
            installed.uninstall()
    return PretrainOutcome(trainer, metrics, stop)


def _peer_lost(reason: str, trainer: Trainer | None, ckpt_root: Path) -> PeerLostError:
    """One line: this rank, the step, the backend's reason and the checkpoint to resume from."""
    where = "" if trainer is None else f"rank {trainer.dist.rank} at step {trainer.step + 1}: "
    return PeerLostError(
        f"{where}another rank of the run is gone, a collective failed ({reason}); "
        f"intact checkpoint: {describe_resume_point(ckpt_root)}"
    )


def pretrain(cfg: Config) -> dict[str, float]:
    """Run (or resume) the pretraining described by `cfg`; returns the last logged metrics."""
    outcome = run_pretraining(cfg)
    trainer, stop = outcome.trainer, outcome.stop
    if trainer.preempted and trainer.dist.is_main:
        log.warning(
            "stopped by signal %s: checkpoint of step %d saved in %s; run the same command to "
            "resume",
            stop.received if stop is not None else "?",
            trainer.step,
            trainer.run_dir / "checkpoints",
        )
    return outcome.metrics
