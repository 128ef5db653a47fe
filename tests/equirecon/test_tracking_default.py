"""The default MLflow store follows the user: ./mlflow.db of the current directory, printed
with the `mlflow ui` command; concurrent creation of a new sqlite store is serialized."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from equirecon.tracking import describe_tracking, resolve_tracking_uri
from tests.conftest import REPO, TINY_OVERRIDES


def test_default_store_is_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri() == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_pretrain_prints_the_store_and_the_ui_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow

    import equirecon.cli as cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="equirecon.pretrain")
    argv = ["pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"), *TINY_OVERRIDES]
    argv += ["data.backend=synthetic", "train.max_steps=1", f"run.dir={tmp_path / 'run'}"]
    assert cli.main(argv) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in caplog.text
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert mlflow.MlflowClient(uri).get_run(run_id).data.metrics["train/loss_total"] > 0


def test_describe_tracking_of_a_server() -> None:
    assert "browser" in describe_tracking("http://mlflow:5000")


CREATE = """
import sys, time
from equirecon.tracking import mlflow_client
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
print(len(mlflow_client(sys.argv[1]).search_experiments()))  # the Default experiment
"""


def test_two_processes_create_one_new_store(tmp_path: Path) -> None:
    import time

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = str(time.time() + 8.0)  # after both interpreters have imported mlflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, uri, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    assert [json.loads(out) for out, _ in results] == [1, 1]


def test_a_run_keeps_its_store_when_used_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluations and resumes started elsewhere log into the store the run was created in."""
    import mlflow

    from equirecon.tracking import Tracker, log_to_existing_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(tmp_path / "a")
    tracker = Tracker(run_dir)
    tracker.log_metrics({"train/loss_total": 2.0}, 1)
    tracker.finish()
    monkeypatch.chdir(tmp_path / "b")
    assert Tracker(run_dir, enabled=False).uri == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    run_id = log_to_existing_run(run_dir, {"eval/knn/top1": 50.0}, 1)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    assert client.get_run(run_id).data.metrics == {"train/loss_total": 2.0, "eval/knn/top1": 50.0}
    assert not (tmp_path / "b" / "mlflow.db").exists()
