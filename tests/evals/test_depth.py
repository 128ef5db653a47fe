"""Tests of the linear depth evaluation (evals/depth.py): metrics on hand-computed cases, the
head on oracle and constant features, and the demo's rendered depth subset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evals.depth import depth_linear, depth_metrics, depth_settings, load_depth
from evals.providers import FeatureProvider


def test_metrics_match_hand_computed_values() -> None:
    # One image, three valid pixels (gt 1, 2, 4 m; predicted 1.1, 2, 5 m) and one invalid (0).
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = torch.tensor([[[1.1, 2.0], [5.0, 9.0]]])
    m = depth_metrics(pred, gt)
    # rmse = sqrt((0.1² + 0² + 1²) / 3); abs_rel = (0.1/1 + 0/2 + 1/4) / 3;
    # ratios 1.1, 1.0, 1.25: 1.25 is not < 1.25, so delta1 = 2/3; 1.25 < 1.5625: delta2 = 1.
    assert m["rmse"] == pytest.approx(math.sqrt(1.01 / 3))
    assert m["abs_rel"] == pytest.approx(0.35 / 3)
    assert m["delta1"] == pytest.approx(2 / 3)
    assert m["delta2"] == 1.0
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(1.25) ** 2) / 3))


def test_metrics_are_averaged_per_image_and_predictions_clamped() -> None:
    # Image A: a single pixel, gt 2, pred 1 -> rmse 1, abs_rel 0.5, delta1 0.
    # Image B: four pixels, all exact -> 0, 0, 1. Image C: no valid pixel (left out).
    gt = torch.zeros(3, 2, 2)
    pred = torch.ones(3, 2, 2)
    gt[0, 0, 0] = 2.0
    gt[1] = 3.0
    pred[1] = 3.0
    gt[2] = 20.0  # beyond max_depth_m = 10: not scored
    m = depth_metrics(pred, gt)
    assert m["rmse"] == pytest.approx(0.5)  # mean over images (1 + 0) / 2, not over pixels
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["delta1"] == pytest.approx(0.5)
    # A prediction of 50 m is clamped to max_depth_m (10) before scoring: |10 - 5| / 5 = 1.
    one = depth_metrics(torch.full((1, 1, 1), 50.0), torch.full((1, 1, 1), 5.0))
    assert one["abs_rel"] == pytest.approx(1.0) and one["rmse"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="no valid depth pixel"):
        depth_metrics(pred[2:], gt[2:])


SIZE = 16


def ramps(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channel 0 holds log depth, and depth maps: a random plane in log depth."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    coeff = torch.rand(n, 3, generator=g)
    log_depth = 0.2 + coeff[:, :1, None] * xs + coeff[:, 1:2, None] * ys + coeff[:, 2:, None]
    images = torch.zeros(n, 3, SIZE, SIZE)
    images[:, 0] = log_depth
    return images, log_depth.exp()


class LogDepthOracle(FeatureProvider):
    """Per 4x4 patch, its mean log depth (read off channel 0)."""

    name, patch_size = "oracle", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images[:, :1], self.patch_size)


class Constant(FeatureProvider):
    name, patch_size = "constant", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 4, SIZE // 4, SIZE // 4)


def test_linear_head_reads_oracle_features_and_nothing_from_constant_ones() -> None:
    train, train_y = ramps(64, 0)
    test, test_y = ramps(32, 1)
    kwargs = {"epochs": 40, "lr": 0.05, "batch_size": 16}
    oracle = depth_linear(LogDepthOracle(), train, train_y, test, test_y, **kwargs)
    null = depth_linear(Constant(), train, train_y, test, test_y, **kwargs)
    assert oracle["delta1"] > 0.95 and oracle["abs_rel"] < 0.08, oracle
    assert null["delta1"] < 0.8 and null["abs_rel"] > 2 * oracle["abs_rel"], null
    assert oracle["n_test"] == oracle["n_scored"] == 32


def test_demo_builds_the_rendered_depth_subset(demo_data: Path) -> None:
    manifest = json.loads((demo_data / "manifest.json").read_text())
    entry = manifest["depth"]
    labelled = manifest["counts"]["labelled"]
    assert entry["counts"] == {"train": labelled["train"] // 20, "val": labelled["val"] // 10}
    assert depth_settings(demo_data) == {"scale": 1000.0, "min_depth_m": 1e-3, "max_depth_m": 10.0}
    images, depth = load_depth(demo_data, "val", manifest["crop_px"])
    assert images.shape == (entry["counts"]["val"], 3, 32, 32) and depth.shape == (
        len(images),
        32,
        32,
    )
    # Every pixel hits a surface of the room: depth is defined everywhere, 1 mm steps, < 10 m.
    assert float(depth.min()) > 0.5 and float(depth.max()) < 10.0
    assert torch.allclose(depth * 1000, (depth * 1000).round())
    small, small_depth = load_depth(demo_data, "train", 16, max_images=3)
    assert small.shape == (3, 3, 16, 16) and small_depth.shape == (3, 16, 16)


def test_missing_subset_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "natural").mkdir()
    with pytest.raises(FileNotFoundError, match="nyu-depth"):
        load_depth(tmp_path, "train", 16)
