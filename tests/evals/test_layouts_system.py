"""System test: every standard dataset layout, generated tiny, converted with `equirecon data
build --format`, then evaluated with `equirecon eval` (and the protocol configs) on a tiny
checkpoint; the depth metrics land in the results JSON and in the run's MLflow run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from equirecon.cli import main
from launch.entry import pretrain
from tests.data_pipeline.layouts import make_ade20k, make_coco, make_imagenet, make_nyu, make_voc
from tests.test_end_to_end import make_cfg

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "eval.equivariance.train_images=8",
    "eval.equivariance.test_images=4",
    "eval.equivariance.transforms=rotation",
    "eval.equivariance.epochs=1",
    "eval.equivariance.hidden=16",
    "eval.linear.epochs=3",
    "eval.homography.train_images=8",
    "eval.homography.test_images=4",
    "eval.homography.views=1",
    "eval.homography.epochs=1",
    "eval.homography.channels=4",
    "eval.segmentation.epochs=3",
    "eval.depth.epochs=3",
    "eval.batch_size=16",
]


def convert(fmt: str, src: Path, out: Path) -> None:
    assert main(["data", "build", "--format", fmt, "--src", str(src), "--out", str(out)]) == 0


def test_convert_every_layout_and_evaluate_a_checkpoint(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    import mlflow

    run_dir = tmp_path / "run"
    pretrain(make_cfg(run_dir, demo_data, tracking_uri, "train.max_steps=2"))
    ckpt = run_dir / "checkpoints" / "step_00000002"

    sources = tmp_path / "sources"
    make_imagenet(sources / "imagenet")
    make_ade20k(sources / "ade")
    make_nyu(sources / "nyu")
    make_coco(sources / "coco")
    make_voc(sources / "voc")
    data = tmp_path / "benchmarks"  # one dataset root holding four converted datasets
    convert("imagefolder", sources / "imagenet", data)
    convert("ade20k", sources / "ade" / "ADEChallengeData2016", data)
    convert("nyu-depth", sources / "nyu", data)
    convert("images", sources / "coco", data)
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    assert set(counts) == {"labelled", "segmentation", "depth", "natural"}

    # Every task family on the converted data, last two blocks' features.
    out = tmp_path / "all.json"
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--tasks", "all"]
    assert main([*argv, "--out", str(out), *TINY, "eval.feature_layers=2"]) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert {"eval/depth/rmse", "eval/depth/abs_rel", "eval/depth/delta1"} <= set(metrics)
    assert {"eval/knn/top1", "eval/linear/top1", "eval/segmentation/miou"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert result["details"]["segmentation"]["classes"][0] == "wall"
    assert len(result["details"]["segmentation"]["iou_per_class"]) == 150
    assert (
        result["details"]["depth"]["n_test"] == 6
        and result["details"]["depth"]["max_depth_m"] == 10
    )
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(tracking_uri)
    history = client.get_metric_history(run_id, "eval/depth/rmse")
    assert [(m.step, m.value) for m in history] == [(2, pytest.approx(metrics["eval/depth/rmse"]))]

    # The protocol configs, scaled down to the tiny model with overrides.
    small = ["eval.img_size=16", "eval.feature_layers=1", "--no-mlflow"]
    for name, expected in (
        ("imagenet_linear", {"eval/knn/top1", "eval/linear/top1"}),
        ("nyu_depth_linear", {"eval/depth/rmse", "eval/depth/abs_rel", "eval/depth/delta1"}),
    ):
        out = tmp_path / f"{name}.json"
        config = str(REPO / "configs" / "eval" / f"{name}.yaml")
        argv = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--config", config]
        assert main([*argv, "--out", str(out), *small, "eval.depth.epochs=2"]) == 0
        assert set(json.loads(out.read_text())["metrics"]) == expected

    # Pascal VOC in its own root, with the ADE20K protocol file: 21 classes from the manifest.
    voc = tmp_path / "voc-shards"
    convert("voc", sources / "voc" / "VOCdevkit", voc)
    out = tmp_path / "voc.json"
    config = str(REPO / "configs" / "eval" / "ade20k_linear.yaml")
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(voc), "--config", config]
    assert main([*argv, "--out", str(out), *small, "eval.segmentation.epochs=2"]) == 0
    voc_result = json.loads(out.read_text())
    assert set(voc_result["metrics"]) == {"eval/segmentation/miou"}
    assert len(voc_result["details"]["segmentation"]["iou_per_class"]) == 21
