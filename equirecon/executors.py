"""submitit executors, for pretraining jobs (`launch.slurm`) and eval jobs (`evals.watch`).

No torch, and submitit only once an executor is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def require_submitit(purpose: str):  # noqa: ANN201 - the submitit module
    """The submitit module; an ImportError naming `purpose` ("eval watch", …) without it."""
    try:
        import submitit
    except ImportError as e:  # pragma: no cover - submitit is a core dependency
        raise ImportError(f"{purpose} needs submitit: pip install 'submitit==1.5.4'") from e
    return submitit


def slurm_executor(
    folder: str | Path, purpose: str, parameters: dict[str, Any], **executor_options: Any
):  # noqa: ANN201 - a submitit.AutoExecutor
    """A submitit Slurm executor with its logs under `folder/<job id>/`.

    `parameters` go to `update_parameters` (those that are None are left out: the cluster's
    defaults); `executor_options` to `submitit.AutoExecutor` (e.g. slurm_max_num_timeout).
    """
    submitit = require_submitit(purpose)
    executor = submitit.AutoExecutor(
        folder=str(Path(folder) / "%j"), cluster="slurm", **executor_options
    )
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    return executor
