"""Tests of `equirecon report` (evals/report.py): table numbers, plots, MLflow report run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from equirecon.cli import main
from evals.report import build_report

KNN = "eval/knn/top1"
R2 = "eval/equivariance/rotation_r2"  # the interface name in the results files
R2_COLUMN = "eval/equivariance/rotation_r2 (context, global)"  # the report labels the probe
PROBE = {"equivariance": {"view": "context", "features": "global", "grid": 2}}


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
        result = {"step": step, "metrics": metrics, "eval": PROBE}
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
    assert float(rows["dino_base"][R2_COLUMN]) == 0.25 and float(rows["dino_base"][KNN]) == 45.5
    assert float(rows["dino_recon"][R2_COLUMN]) == 0.75 and rows["dino_recon"]["step"] == "200"
    assert float(rows["dino_recon [pixels floor]"][KNN]) == 30.0
    markdown = (out / "table.md").read_text()
    assert "| dino_recon | dinov2 | on | se2 | 1.0 | 200 | 0.7500 | 47.0000 |" in markdown

    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["eval_equivariance_context_global_rotation_r2.png", "eval_knn_top1.png"]
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


def test_report_labels_every_probe_and_never_mixes_them(tmp_path: Path) -> None:
    """One checkpoint probed in two views and two feature sets, a floor in two views, and a
    result that records no probe: one labelled column per probe, nothing mixed or lost."""
    run = fake_run(tmp_path, "vicreg", "vicreg", True, {100: {R2: 0.2, KNN: 40.0}})
    evals = run / "evals"
    others = {
        "full-global": ({"view": "full", "features": "global"}, 0.9),
        "context-grid2": ({"view": "context", "features": "grid", "grid": 2}, 0.4),
    }
    for tag, (probe, r2) in others.items():
        result = {"step": 100, "metrics": {R2: r2}, "eval": {"equivariance": probe}}
        (evals / f"step_00000100.{tag}.json").write_text(json.dumps(result))
    for tag, view, r2 in (("", "context", 0.05), (".full-global", "full", 0.8)):
        floor = {"metrics": {R2: r2}, "eval": {"equivariance": {"view": view}}}
        (evals / f"floor_pixels{tag}.json").write_text(json.dumps(floor))
    legacy = tmp_path / "legacy"  # written before results recorded their probe
    (legacy / "evals").mkdir(parents=True)
    (legacy / "evals" / "step_00000050.json").write_text(json.dumps({"metrics": {R2: 0.3}}))

    report = build_report([run, legacy], out=tmp_path / "r", log_mlflow=False)
    rows = {r["run"]: r for r in report["rows"]}
    assert rows["vicreg"][R2_COLUMN] == 0.2 and rows["vicreg"][KNN] == 40.0
    assert rows["vicreg"]["eval/equivariance/rotation_r2 (full, global)"] == 0.9
    assert rows["vicreg"]["eval/equivariance/rotation_r2 (context, grid2)"] == 0.4
    assert rows["vicreg [pixels floor]"][R2_COLUMN] == 0.05
    assert rows["vicreg [pixels floor]"]["eval/equivariance/rotation_r2 (full, global)"] == 0.8
    assert rows["legacy"]["eval/equivariance/rotation_r2 (?)"] == 0.3
    assert R2 not in report["columns"]  # no equivariance number without its probe
    assert [c for c in report["columns"] if "equivariance" in c] == [
        "eval/equivariance/rotation_r2 (?)",
        "eval/equivariance/rotation_r2 (context, global)",
        "eval/equivariance/rotation_r2 (context, grid2)",
        "eval/equivariance/rotation_r2 (full, global)",
    ]
    assert "| eval/equivariance/rotation_r2 (full, global) |" in report["markdown"]
    plots = sorted(Path(p).name for p in report["plots"])
    assert "eval_equivariance_full_global_rotation_r2.png" in plots
    assert "eval_equivariance_context_global_rotation_r2.png" in plots
