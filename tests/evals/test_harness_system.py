"""System test of the eval harness: a tiny pretraining with `eval.watch=true` (the background
watcher evaluates the final checkpoint in a LocalExecutor job), then every task family on the
checkpoint, on its export and on both floors; the export must give the checkpoint's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from equirecon.cli import main
from evals.run import evaluate_checkpoint, evaluate_export
from launch.entry import pretrain
from pretrain.export import export_checkpoint
from tests.test_end_to_end import make_cfg

pytestmark = pytest.mark.slow

TRANSFORMS = ("rotation", "translation", "se2", "color", "blur")
# The interface names, and the same numbers under their probe's (the default: context, global).
METRICS = {f"eval/equivariance/{p}{t}_r2" for t in TRANSFORMS for p in ("", "context/global/")} | {
    "eval/knn/top1",
    "eval/linear/top1",
    "eval/homography/mce",
    "eval/segmentation/miou",
    "eval/depth/rmse",
    "eval/depth/abs_rel",
    "eval/depth/delta1",
}
TINY_EVAL = [
    "eval.tasks=all",
    "eval.equivariance.transforms=" + ",".join(TRANSFORMS),
    "eval.equivariance.train_images=32",
    "eval.equivariance.test_images=16",
    "eval.equivariance.epochs=2",
    "eval.equivariance.hidden=32",
    "eval.labelled_train_images=100",
    "eval.labelled_test_images=50",
    "eval.linear.epochs=5",
    "eval.homography.train_images=24",
    "eval.homography.test_images=12",
    "eval.homography.views=2",
    "eval.homography.epochs=2",
    "eval.homography.channels=8",
    "eval.segmentation.train_images=20",
    "eval.segmentation.test_images=10",
    "eval.segmentation.epochs=2",
    "eval.depth.train_images=12",
    "eval.depth.test_images=8",
    "eval.depth.epochs=2",
    "eval.batch_size=64",
]


def check_metrics(metrics: dict[str, float]) -> None:
    assert set(metrics) == METRICS, sorted(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert 0 <= metrics["eval/knn/top1"] <= 100 and 0 <= metrics["eval/linear/top1"] <= 100
    assert 0 <= metrics["eval/segmentation/miou"] <= 1 and metrics["eval/homography/mce"] > 0
    assert metrics["eval/depth/rmse"] > 0 and 0 <= metrics["eval/depth/delta1"] <= 1


def test_watch_then_checkpoint_export_and_floors(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    import mlflow

    run_dir = tmp_path / "run"
    watch = ["eval.watch=true", "eval.watch_poll_seconds=0.5", "eval.watch_timeout_min=10"]
    cfg = make_cfg(run_dir, demo_data, tracking_uri, "train.max_steps=2", *watch, *TINY_EVAL)
    pretrain(cfg)

    # The background watcher's final pass evaluated the final checkpoint (a LocalExecutor job).
    log = (run_dir / "evals" / "watch.log").read_text()
    state = json.loads((run_dir / "evals" / "watch_state.json").read_text())["checkpoints"]
    assert state["step_00000002"]["state"] == "done", log[-3000:]
    watched = json.loads((run_dir / "evals" / "step_00000002.json").read_text())
    check_metrics(watched["metrics"])
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, "eval/linear/top1")
    assert [m.step for m in history] == [2]

    ckpt = run_dir / "checkpoints" / "step_00000002"
    on_ckpt = evaluate_checkpoint(ckpt, out=tmp_path / "ckpt.json", log_mlflow=False)
    check_metrics(on_ckpt["metrics"])
    assert (
        on_ckpt["eval"]["equivariance"]["train_images"] == 32
    )  # the run's eval settings were used

    export = export_checkpoint(ckpt, tmp_path / "export")
    settings = run_dir / "config.yaml"  # an export has no training config: pass the settings
    on_export = evaluate_export(export, data=str(demo_data), config=settings)
    assert on_export["metrics"] == on_ckpt["metrics"]

    floors = {}
    for floor in ("pixels", "random"):
        on_floor = evaluate_checkpoint(ckpt, floor=floor)
        check_metrics(on_floor["metrics"])
        assert Path(on_floor["path"]) == run_dir / "evals" / f"floor_{floor}.json"
        floors[floor] = on_floor["metrics"]
    assert floors["pixels"] != floors["random"] != on_ckpt["metrics"]

    # The CLI on the export with a floor: the same numbers as the checkpoint's floor.
    out = tmp_path / "export_random.json"
    argv = ["eval", "--export", str(export), "--data", str(demo_data), "--floor", "random"]
    assert main([*argv, "--config", str(settings), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == floors["random"]
    # The floors never went to MLflow, and the watcher's result file was not overwritten.
    assert [m.step for m in mlflow.MlflowClient(tracking_uri).get_metric_history(
        run_id, "eval/linear/top1"
    )] == [2]  # fmt: skip
    assert json.loads((run_dir / "evals" / "step_00000002.json").read_text()) == watched
