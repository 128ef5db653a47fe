"""MLflow tracking: non-blocking delivery, backlog across a server outage, pending-file handoff."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from equirecon.tracking import RUN_ID_FILE, MetricsFile, Tracker


def test_metrics_file_truncate_after(tmp_path: Path) -> None:
    mf = MetricsFile(tmp_path / "metrics.jsonl")
    for s in range(1, 6):
        mf.append(s, {"train/loss_total": float(s)})
    mf.truncate_after(3)
    assert [r["step"] for r in mf.read()] == [1, 2, 3]


def test_sqlite_run_params_metrics_artifact(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tmp_path, uri=uri, experiment="t", run_name="r")
    tracker.log_params({"a.b": 1, "c": "x"})
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss_total": 1.0 / step, "bad": float("nan")}, step)
    art = tmp_path / "grid.png"
    art.write_bytes(b"first")
    tracker.log_artifact(art, artifact_path="recon")
    art.write_bytes(b"second")  # overwritten after logging: the logged copy is the first one
    tracker.finish()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a.b": "1", "c": "x"}
    assert [m.step for m in client.get_metric_history(run_id, "train/loss_total")] == [1, 2, 3]
    assert client.get_metric_history(run_id, "bad") == []  # non-finite values are dropped
    local = client.download_artifacts(run_id, "recon/grid.png", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"first"
    assert not list((tmp_path / ".mlflow_staging").iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend, started and stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.workdir / 'srv.db'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server on port {self.port} did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.mark.slow
def test_training_survives_tracking_server_outage(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path)
    server.start()
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        tracker = Tracker(run_dir, uri=server.uri, experiment="outage", max_backoff_s=2.0)
        tracker.log_metrics({"train/loss_total": 1.0}, 1)
        assert tracker.flush(timeout=60)
        run_id = tracker.run_id

        server.stop()
        t0 = time.monotonic()
        for step in (2, 3, 4):
            tracker.log_metrics({"train/loss_total": float(step)}, step)
        assert time.monotonic() - t0 < 0.5  # the training loop never waits for the server
        assert not tracker.flush(timeout=3)  # nothing can be delivered while it is down
        server.start()
        assert tracker.flush(timeout=90)  # the backlog arrives once it is back
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        assert [m.step for m in client.get_metric_history(run_id, "train/loss_total")] == [
            1,
            2,
            3,
            4,
        ]

        # Down at the end of the job: the backlog goes to a file, the next job delivers it.
        server.stop()
        tracker.log_metrics({"train/loss_total": 5.0}, 5)
        tracker.finish(timeout=2)
        assert (run_dir / Tracker.PENDING_FILE).is_file()
        server.start()
        resumed = Tracker(run_dir, uri=server.uri, experiment="outage")
        assert resumed.run_id == run_id
        resumed.finish(timeout=60)
        assert not (run_dir / Tracker.PENDING_FILE).exists()
        history = client.get_metric_history(run_id, "train/loss_total")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        server.stop()
