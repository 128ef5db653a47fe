"""Stop signals of a pretraining job: handlers that only record the signal.

SIGUSR2 is the warning Slurm sends before a time limit (submitit's `--signal=USR2@N`, also
forwarded by torchrun and containers); SIGTERM is preemption, `scancel`, `docker stop`. The
trainer polls the flag at every step boundary, saves a checkpoint and returns.
"""

from __future__ import annotations

import signal
from typing import Any

REQUEUE_SIGNAL = signal.SIGUSR2
"""The signal submitit's Slurm jobs use for time limits and preemption (`--signal=USR2@N`)."""


class StopFlag:
    """Signal handlers that only record the signal; the trainer acts on it at a step boundary.

    `install()` remembers the handlers it replaces (submitit's, inside a submitit job), so the
    job can hand over to them once the checkpoint is saved.
    """

    def __init__(self, signums: tuple[int, ...] = (REQUEUE_SIGNAL, signal.SIGTERM)) -> None:
        self.signums = signums
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any = None) -> None:
        if self.received is None or signum == REQUEUE_SIGNAL:
            self.received = signum

    def install(self) -> StopFlag:
        for signum in self.signums:
            self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def uninstall(self) -> None:
        """Put back the handlers `install` replaced. A process that goes on after the run (a
        test session, a notebook) must not keep handlers that only record SIGTERM: a process it
        forks later (a multiprocessing pool) inherits them, so `Pool.terminate()` can no longer
        stop its workers and waits forever."""
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous.clear()

    def __call__(self) -> bool:
        return self.received is not None
