"""The stop handlers a pretraining installs are put back when it returns.

A process that goes on after a run (a test session, a notebook, a sweep driver) must not keep
handlers that only record SIGTERM: a process it forks later inherits them, and
`multiprocessing.Pool.terminate()` then waits forever for workers that ignore SIGTERM.
"""

from __future__ import annotations

import signal
from multiprocessing import get_context
from pathlib import Path

from equirecon.cli import main
from launch.signals import REQUEUE_SIGNAL
from tests.conftest import REPO, TINY_OVERRIDES


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_pretraining_in_process_puts_the_signal_handlers_back(
    tmp_path: Path, demo_data: Path
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, REQUEUE_SIGNAL)}
    args = [
        "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"), *TINY_OVERRIDES,
        "train.max_steps=1", f"run.dir={tmp_path / 'run'}", f"data.path={demo_data}",
        f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
    ]  # fmt: skip
    assert main(args) == 0
    assert {s: signal.getsignal(s) for s in before} == before
    # What used to hang: a fork after the run, terminated while its workers are busy.
    with get_context("fork").Pool(1) as pool:
        pool.map_async(_sleep, [30])
        pool.terminate()
        pool.join()
