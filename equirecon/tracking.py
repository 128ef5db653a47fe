"""Experiment tracking: `metrics.jsonl` in the run directory and an MLflow run (rank 0 only).

The MLflow run id is stored in `RUN_DIR/mlflow_run_id`, so a resumed or requeued job and the
evaluations of its checkpoints all log into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID_FILE = "mlflow_run_id"


def resolve_tracking_uri(uri: str = "") -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<repo root>/mlflow.db`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def _client(uri: str):  # noqa: ANN202 - mlflow.MlflowClient
    try:
        import mlflow
    except ImportError as e:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("MLflow is required for tracking: pip install 'mlflow==3.17.2'") from e
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=uri)


class MetricsFile:
    """Append-only `metrics.jsonl`: one `{"step": s, "<metric>": v, ...}` object per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run re-logs them)."""
        if not self.path.is_file():
            return
        kept = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, self.path)

    def append(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln]


class Tracker:
    """MLflow run of one run directory. Create on rank 0 only; `enabled=False` makes it a no-op."""

    def __init__(
        self,
        run_dir: str | Path,
        uri: str = "",
        experiment: str = "equirecon",
        run_name: str = "",
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.uri = resolve_tracking_uri(uri)
        self.run_id: str | None = None
        if not enabled:
            return
        self.client = _client(self.uri)
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("continuing MLflow run %s", self.run_id)
        else:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_name or self.run_dir.name)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status=status)


def log_to_existing_run(
    run_dir: str | Path, metrics: dict[str, float], step: int, uri: str = ""
) -> str | None:
    """Log `metrics` at `step` into the MLflow run of `run_dir` (used by evaluations)."""
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.is_file():
        log.warning("%s has no %s: eval metrics are only written to files", run_dir, RUN_ID_FILE)
        return None
    run_id = id_file.read_text().strip()
    client = _client(resolve_tracking_uri(uri))
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
    return run_id
