"""Experiment tracking: `metrics.jsonl` in the run directory and an MLflow run (rank 0 only).

The MLflow run id is stored in `RUN_DIR/mlflow_run_id`, so a resumed or requeued job and the
evaluations of its checkpoints all log into the same MLflow run.

A full disk (or a read-only or unwritable one): `metrics.jsonl` is the run's record, so a failed
append removes its partial line and raises `StorageError` (the run ends there and resumes from
its last checkpoint). The MLflow store never stops training: a store that cannot be written
(sqlite on a full disk: "database or disk is full") is reported once as a warning that says so,
its records are kept and retried, and delivered once it can be written again (or left in
`RUN_DIR/mlflow_pending.jsonl` for the next job); an artifact that cannot be staged is skipped
with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from equirecon.errors import StorageError
from equirecon.rundir import write_text_atomic
from equirecon.storage import fault_errno, guard_write, is_storage_fault, storage_error

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
STORE_FILE = "mlflow_tracking_uri"  # the store that holds the run of RUN_ID_FILE
DEFAULT_STORE = "mlflow.db"  # in the current working directory, like MLflow's own ./mlruns
_SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str = "") -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<current directory>/mlflow.db`
    (absolute, so every process of a run, and the printed `mlflow ui` command, agree)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE}{Path.cwd() / DEFAULT_STORE}"


def run_tracking_uri(run_dir: str | Path, uri: str = "") -> str:
    """The store of the MLflow run of `run_dir`: `uri` if given, else the one its run was
    created in (`RUN_DIR/mlflow_tracking_uri`, so a resume or an eval started from another
    directory finds it), else `resolve_tracking_uri()`."""
    if uri:
        return uri
    recorded = Path(run_dir) / STORE_FILE
    if recorded.is_file() and (Path(run_dir) / RUN_ID_FILE).is_file():
        return recorded.read_text().strip() or resolve_tracking_uri()
    return resolve_tracking_uri()


def describe_tracking(uri: str) -> str:
    """Where the metrics go and how to look at them (printed at the start of every run)."""
    if uri.startswith(("http://", "https://")):
        return f"MLflow tracking server {uri} (open it in a browser)"
    return f"MLflow store {uri}; view it with: mlflow ui --backend-store-uri {uri} --port 5000"


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Hold `<db>.lock` while a new sqlite store is created: two processes creating the same
    new mlflow.db would otherwise race on its schema. No-op for other stores or existing files."""
    path = _sqlite_path(uri)
    if path is None or path.is_file() or fcntl is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "w")  # closed by the `with` below
    except OSError as err:
        if not is_storage_fault(err):
            raise
        log.warning("MLflow store %s cannot be created here (%s); training goes on", uri, err)
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store (None for other stores)."""
    return Path(uri[len(_SQLITE) :]) if uri.startswith(_SQLITE) else None


def mlflow_client(uri: str):  # noqa: ANN201 - mlflow.MlflowClient
    """An MLflow client of the store `uri` (a new sqlite store's schema is created under a lock)."""
    try:
        import mlflow
    except ImportError as e:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("MLflow is required for tracking: pip install 'mlflow==3.17.2'") from e
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _creation_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        if uri.startswith(_SQLITE):
            try:  # create the schema now, under the lock
                client.search_experiments(max_results=1)
            except Exception as err:  # noqa: BLE001 - left to the delivery retries
                log.warning("MLflow store %s not usable yet: %s", uri, str(err)[:200])
    return client


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
        write_text_atomic(self.path, "".join(ln + "\n" for ln in kept))

    def append(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line; on a full disk (StorageError) the partial line is removed again."""
        line = json.dumps({"step": step, **metrics}) + "\n"
        size = self.path.stat().st_size if self.path.is_file() else None

        def undo() -> None:  # back to the lines before this one (a new file is removed)
            if size is None:
                self.path.unlink(missing_ok=True)
            else:
                os.truncate(self.path, size)

        with guard_write(f"metrics of step {step}", self.path, needed=len(line), partial=[undo]):
            with self.path.open("a") as f:
                f.write(line)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln]


class Tracker:
    """The MLflow run of one run directory, delivered from a background thread.

    Create it on rank 0 only; `enabled=False` makes it a no-op. Training never waits for the
    tracking server: every call is queued and a daemon thread delivers it in order. While the
    server is unreachable, deliveries are retried with exponential backoff (1 s … 30 s) and
    nothing is dropped; when it comes back the backlog is delivered. Whatever is still undelivered
    at `finish(timeout)` is written to `RUN_DIR/mlflow_pending.jsonl` and delivered by the next
    Tracker of the same run directory (a resumed or requeued job).
    """

    PENDING_FILE = "mlflow_pending.jsonl"

    def __init__(
        self,
        run_dir: str | Path,
        uri: str = "",
        experiment: str = "equirecon",
        run_name: str = "",
        enabled: bool = True,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.uri = run_tracking_uri(self.run_dir, uri)
        self.experiment = experiment
        self.run_name = run_name or self.run_dir.name
        self.max_backoff_s = max_backoff_s
        self.run_id: str | None = None
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
        if not enabled:
            return
        if self.uri.startswith(("http://", "https://")):
            # Fail fast inside the delivery thread; the thread does the retrying.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = mlflow_client(self.uri)
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self.outage_since: float | None = None
        self.delivered = 0
        self._artifact_dir = self.run_dir / ".mlflow_staging"
        self._push("start_run", None)
        self._load_pending()
        self._thread = threading.Thread(
            target=self._deliver_loop, name="mlflow-delivery", daemon=True
        )
        self._thread.start()

    # ---- public API (all non-blocking) -----------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            self._push("params", {k: str(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (e.g. `checkpoint.damaged` after a fallback on resume)."""
        if self.enabled:
            self._push("tags", {k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        ts = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if values:
            self._push("metrics", {"step": step, "ts": ts, "values": values})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue a copy of `path` (taken now, so later overwrites of the file don't matter)."""
        if not self.enabled:
            return
        staged_dir = self._artifact_dir / str(time.time_ns())
        staged = staged_dir / Path(path).name
        try:
            with guard_write(
                f"the MLflow artifact {Path(path).name}", staged, partial=[staged_dir]
            ):
                staged_dir.mkdir(parents=True)
                shutil.copy2(path, staged)
        except StorageError as err:
            log.warning("%s; artifact skipped, training goes on", err)
            return
        self._push("artifact", {"path": str(staged), "artifact_path": artifact_path})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        if not self.enabled:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(timeout=remaining if remaining is not None else 1.0)
        return True

    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        """Mark the run terminated, deliver the backlog (up to `timeout` s), persist the rest."""
        if not self.enabled:
            return
        self._push("terminate", status)
        delivered = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        if not delivered:
            try:
                self._save_pending()
            except StorageError as err:
                log.warning(
                    "%s; %d MLflow records not kept (metrics.jsonl has the metrics)",
                    err,
                    len(self._queue),
                )
                return
            log.warning(
                "MLflow at %s unreachable: %d records kept in %s for the next run",
                self.uri,
                len(self._queue),
                self.run_dir / self.PENDING_FILE,
            )

    # ---- delivery ----------------------------------------------------------------------------
    def _push(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._queue.append((kind, payload))
            self._cond.notify_all()

    def _deliver_loop(self) -> None:
        backoff = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                kind, payload = self._queue[0]
                self._busy = True
            try:
                self._deliver(kind, payload)
            except Exception as e:  # noqa: BLE001 - any failure: keep the record, retry later
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("%s", self._describe_failure(e))
                with self._cond:
                    if self._stop:
                        return
                    self._cond.wait(timeout=backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if self.outage_since is not None:
                log.info(
                    "MLflow reachable again after %.0f s", time.monotonic() - self.outage_since
                )
                self.outage_since = None
            backoff = 1.0
            with self._cond:
                self._queue.popleft()
                self.delivered += 1
                self._busy = False
                self._cond.notify_all()

    def _describe_failure(self, err: BaseException) -> str:
        """The warning of a failed delivery: a store that cannot be written (sqlite on a full,
        read-only or unwritable disk) is named as such, anything else as the error."""
        db = _sqlite_path(self.uri)
        code = fault_errno(err, db) if db is not None else None
        if db is None or code is None:
            return (
                f"MLflow delivery failed ({type(err).__name__}: {str(err)[:200]}); retrying, "
                "training goes on"
            )
        fault = storage_error(code, "the MLflow store", db)
        return (
            f"{fault}; training goes on: every metric is in metrics.jsonl, and the MLflow "
            "records are kept and delivered once the store can be written again (retrying)"
        )

    def _deliver(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric, Param

        if kind == "start_run":
            self._start_run()
            return
        if self.run_id is None:  # pragma: no cover - start_run is always first
            raise RuntimeError("no MLflow run yet")
        if kind == "params":
            existing = self.client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in payload.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])
        elif kind == "metrics":
            step, ts = payload["step"], payload["ts"]
            batch = [Metric(k, v, ts, step) for k, v in payload["values"].items()]
            self.client.log_batch(self.run_id, metrics=batch)
        elif kind == "artifact":
            path = Path(payload["path"])
            if not path.is_file():  # staged copy lost (e.g. run dir cleaned): nothing to send
                log.warning("MLflow artifact %s vanished before delivery; skipped", path)
                return
            self.client.log_artifact(self.run_id, str(path), payload["artifact_path"])
            shutil.rmtree(path.parent, ignore_errors=True)
        elif kind == "tags":
            for key, value in payload.items():
                self.client.set_tag(self.run_id, key, value)
        elif kind == "terminate":
            self.client.set_terminated(self.run_id, status=payload)
        else:  # pragma: no cover
            raise ValueError(kind)

    def _start_run(self) -> None:
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        run = self.client.create_run(exp_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        for name, text in ((STORE_FILE, self.uri), (RUN_ID_FILE, self.run_id)):  # id last
            write_text_atomic(self.run_dir / name, text + "\n")

    def _save_pending(self) -> None:
        path = self.run_dir / self.PENDING_FILE
        records = [{"kind": k, "payload": p} for k, p in self._queue if k != "start_run"]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))

    def _load_pending(self) -> None:
        path = self.run_dir / self.PENDING_FILE
        if not path.is_file():
            return
        records = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
        path.unlink()  # back in the queue; saved again by finish() if still undelivered
        for r in records:
            if r["kind"] != "terminate":
                self._queue.append((r["kind"], r["payload"]))
        if records:
            log.info("re-delivering %d MLflow records left by a previous job", len(records))


def log_to_existing_run(
    run_dir: str | Path, metrics: dict[str, float], step: int, uri: str = ""
) -> str | None:
    """Log `metrics` at `step` into the MLflow run of `run_dir` (used by evaluations)."""
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.is_file():
        log.warning("%s has no %s: eval metrics are only written to files", run_dir, RUN_ID_FILE)
        return None
    run_id = id_file.read_text().strip()
    client = mlflow_client(run_tracking_uri(run_dir, uri))
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
    return run_id
