"""Tests of the linear segmentation evaluation (evals/segmentation.py) and its demo scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evals.providers import FeatureProvider
from evals.segmentation import (
    confusion_matrix,
    load_segmentation,
    mean_iou,
    segmentation_classes,
    segmentation_miou,
)

SIZE, CLASSES = 32, 4


def test_perfect_predictor_has_miou_one() -> None:
    target = torch.randint(0, 5, (3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert mean_iou(target, target, 5) == 1.0


def test_constant_predictor_matches_the_hand_computed_value() -> None:
    # 16 pixels: 10 background, 4 of class 1, 2 of class 2; class 3 never occurs.
    target = torch.zeros(16, dtype=torch.int64)
    target[10:14], target[14:] = 1, 2
    background = torch.zeros_like(target)
    # IoU_0 = 10 / 16, IoU_1 = IoU_2 = 0, class 3 undefined (left out): mIoU = (10/16) / 3.
    assert mean_iou(background, target.view(4, 4), 4) == pytest.approx((10 / 16) / 3)
    # Predicting class 1 everywhere: IoU_1 = 4 / 16, the others 0 -> (4/16) / 3.
    assert mean_iou(torch.ones_like(target), target, 4) == pytest.approx((4 / 16) / 3)
    cm = confusion_matrix(background, target, 4)
    assert cm[:, 0].tolist() == [10, 4, 2, 0] and int(cm.sum()) == 16


def test_ignored_pixels_are_neither_scored_nor_counted() -> None:
    # 6 pixels: classes 0, 0, 1, 1 and two 255 (VOC borders / ADE20K "other").
    target = torch.tensor([0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 1])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]  # the 255 pixels are not in the matrix
    # IoU_0 = 1 / (1 + 1 + 0) = 1/2, IoU_1 = 2 / (2 + 0 + 1) = 2/3.
    assert mean_iou(pred, target, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) images whose channel 0 holds the class id of each pixel, and the masks:
    1-3 axis-aligned squares (8-14 px) of classes 1..3 on background 0."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.int64)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            side = int(torch.randint(8, 15, (1,), generator=g))
            x, y = torch.randint(0, SIZE - side + 1, (2,), generator=g).tolist()
            masks[i, y : y + side, x : x + side] = int(torch.randint(1, CLASSES, (1,), generator=g))
    images = torch.zeros(n, 3, SIZE, SIZE)
    images[:, 0] = masks.float()
    return images, masks


class ClassOracle(FeatureProvider):
    """Per 4x4 patch, the fraction of its pixels of each class (read off channel 0)."""

    name, patch_size = "oracle", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(images[:, 0].round().long(), CLASSES).permute(0, 3, 1, 2).float()
        return F.avg_pool2d(one_hot, self.patch_size)


class Constant(FeatureProvider):
    name, patch_size = "constant", 4

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 8, SIZE // 4, SIZE // 4)


def test_linear_head_reads_oracle_features_and_learns_nothing_from_constant_ones() -> None:
    train, train_y = scenes(200, 0)
    test, test_y = scenes(100, 1)
    kwargs = {"num_classes": CLASSES, "epochs": 15, "lr": 0.05}
    oracle = segmentation_miou(ClassOracle(), train, train_y, test, test_y, **kwargs)
    assert oracle["miou"] > 0.8, oracle
    assert len(oracle["iou_per_class"]) == CLASSES and oracle["n_test"] == 100
    null = segmentation_miou(Constant(), train, train_y, test, test_y, **kwargs)
    # Constant features can only give the majority class (background) everywhere.
    assert null["miou"] == pytest.approx(mean_iou(torch.zeros_like(test_y), test_y, CLASSES))
    assert null["miou"] < 0.3


def test_demo_builds_segmentation_scenes_with_small_counts(demo_data: Path) -> None:
    manifest = json.loads((demo_data / "manifest.json").read_text())
    seg = manifest["segmentation"]
    labelled = manifest["counts"]["labelled"]
    assert seg["counts"] == {"train": labelled["train"] // 5, "val": labelled["val"] // 5}
    classes = segmentation_classes(demo_data)
    assert classes == ["background", *manifest["classes"]]
    images, masks = load_segmentation(demo_data, "train", 16, max_images=7)
    assert images.shape == (7, 3, 16, 16) and masks.shape == (7, 16, 16)
    assert masks.dtype == torch.int64 and 0 <= int(masks.min()) and int(masks.max()) < len(classes)
    full_images, full_masks = load_segmentation(demo_data, "val", manifest["crop_px"])
    assert full_images.shape[0] == seg["counts"]["val"]
    fg = full_masks > 0
    assert 0.05 < fg.float().mean() < 0.8  # several items per scene, background remains
    # Items are tinted brightly on darkened photos: item pixels are brighter on average.
    luma = full_images.mean(1)
    assert luma[fg].mean() > luma[~fg].mean()


def test_missing_subset_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "natural").mkdir()
    with pytest.raises(FileNotFoundError, match="build-demo"):
        load_segmentation(tmp_path, "train", 16)
