"""Tests of `equirecon report` (evals/report.py): table numbers, plots, MLflow report run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from equirecon.cli import main
from evals.report import build_report

R2, KNN = "eval/equivariance/rotation_r2", "eval/knn/top1"


def fake_run(root: Path, name: str, method: str, recon: bool, evals: dict[int, dict]) -> Path:
    run = root / name
    (run / "evals").mkdir(parents=True)
    config = {
        "method": {"name": method},
        "recon": {"enabled": recon, "transform": "se2", "lambda": 1.0},
        "tracking": {"uri": "", "experiment": "report-test", "enabled": True},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for step, metrics in evals.items():
        result = {"step": step, "metrics": metrics}
        (run / "evals" / f"step_{step:08d}.json").write_text(json.dumps(result))
    return run


def test_report_table_plots_and_mlflow(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    base = fake_run(
        tmp_path,
        "dino_base",
        "dinov2",
        False,
        {100: {R2: 0.2, KNN: 40.0}, 200: {R2: 0.25, KNN: 45.5}},
    )
    recon = fake_run(
        tmp_path, "dino_recon", "dinov2", True, {100: {R2: 0.5}, 200: {R2: 0.75, KNN: 47.0}}
    )
    (recon / "evals" / "floor_pixels.json").write_text(json.dumps({"metrics": {KNN: 30.0}}))
    (recon / "evals" / "watch_state.json").write_text("{}")  # not an eval result
    out = tmp_path / "report"
    assert main(["report", str(base), str(recon), "--out", str(out)]) == 0

    with (out / "table.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"dino_base", "dino_recon", "dino_recon [pixels floor]"}
    assert rows["dino_base"]["method"] == "dinov2" and rows["dino_base"]["recon"] == "off"
    assert rows["dino_recon"]["recon"] == "on" and rows["dino_recon"]["transform"] == "se2"
    assert float(rows["dino_base"][R2]) == 0.25 and float(rows["dino_base"][KNN]) == 45.5
    assert float(rows["dino_recon"][R2]) == 0.75 and rows["dino_recon"]["step"] == "200"
    assert float(rows["dino_recon [pixels floor]"][KNN]) == 30.0
    markdown = (out / "table.md").read_text()
    assert "| dino_recon | dinov2 | on | se2 | 1.0 | 200 | 0.7500 | 47.0000 |" in markdown

    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["eval_equivariance_rotation_r2.png", "eval_knn_top1.png"]
    assert all((out / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("report-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "report"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"table.md", "table.csv", "plots"} <= artifacts


def test_report_of_a_run_without_evals(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "fresh", "vicreg", True, {})
    report = build_report([run], out=tmp_path / "r", log_mlflow=False)
    assert report["rows"] == [
        {"run": "fresh", "method": "vicreg", "recon": "on", "transform": "se2", "lambda": "1.0",
         "step": None}
    ]  # fmt: skip
    assert report["plots"] == [] and report["mlflow_run_id"] is None
