"""Linear semantic segmentation on frozen patch features, and the demo's segmentation shards.

Protocol: a 1×1 convolution (a linear map per patch) turns the frozen patch features
(B, D, h, w) into class logits (B, C, h, w), which are bilinearly upsampled to the pixels and
trained with per-pixel cross-entropy. Metric: mean IoU over the classes, background included;
a class that is absent from both the predictions and the targets of the whole test set is left
out of the mean (its IoU is undefined). Pixels labelled `IGNORE_INDEX` (255: VOC's object
borders, ADE20K's unlabelled pixels) are neither trained on nor scored. Features are
standardized per channel with train statistics; Adam with a cosine schedule.

Data: `<root>/segmentation/{train,val}-*.tar` shards (see `data_pipeline.demo`, or
`equirecon data build --format ade20k|voc`), each sample an RGB image (`png` or `jpg`) and its
per-pixel class ids (`seg.png`, 8-bit). Images and masks are resized to a square side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipeline.annotations import IGNORE_INDEX
from data_pipeline.shards import resolve_shards
from evals.annotated import load_annotated
from evals.providers import FeatureProvider, extract_patch_features

SUBSET = "segmentation"
MASK_KEY = "seg.png"


def segmentation_classes(path: str | Path) -> list[str] | None:
    """Class names (index = class id) from the dataset root's manifest, or None."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return None
    classes = json.loads(manifest.read_text()).get(SUBSET, {}).get("classes")
    return list(classes) if classes else None


def load_segmentation(
    path: str | Path, split: str, size: int, max_images: int | None = None
) -> tuple[Tensor, Tensor]:
    """Scenes and masks of a dataset root's segmentation subset, in shard order.

    Args:
        path: dataset root holding `segmentation/<split>-*.tar`.
        split: "train" or "val".
        size: output side; images are resized bicubic, masks nearest.
        max_images: stop after this many scenes.

    Returns:
        images (N, 3, size, size) float32 ImageNet-normalized, masks (N, size, size) int64.
    """
    try:
        shards = resolve_shards(str(path), subset=SUBSET, split=split)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}. The segmentation task needs a segmentation subset: rebuild the demo with "
            f"`equirecon data build-demo --out {path}` or convert ADE20K / Pascal VOC with "
            f"`equirecon data build --format ade20k|voc --src ROOT --out {path}`"
        ) from None
    return load_annotated(
        shards,
        MASK_KEY,
        size,
        max_images,
        "segmentation",
        lambda mask: np.asarray(mask, dtype=np.int64).copy(),
    )


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts, rows = target class, columns = predicted class; target pixels of
    `IGNORE_INDEX` are left out."""
    target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = target != IGNORE_INDEX
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def iou_from_confusion(confusion: Tensor) -> tuple[float, list[float | None]]:
    """mIoU over classes with a non-empty union, and the per-class IoU (None where undefined)."""
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    defined = [v for v in per_class if v is not None]
    return (sum(defined) / len(defined) if defined else float("nan")), per_class


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """mIoU of integer predictions vs targets (any equal shapes), classes incl. background."""
    return iou_from_confusion(confusion_matrix(pred, target, num_classes))[0]


def segmentation_miou(
    provider: FeatureProvider,
    train_images: Tensor,
    train_masks: Tensor,
    test_images: Tensor,
    test_masks: Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Train a 1×1-conv head on frozen patch features; mIoU on the test scenes.

    Args:
        provider: frozen features, patch grid (B, D, h, w) of (B, 3, H, W) images.
        train_images: (N, 3, H, W) normalized scenes; train_masks (N, H, W) class ids.
        test_images: (M, 3, H, W); test_masks (M, H, W).
        num_classes: C incl. background; None: max id + 1 over both sets (255 = ignored).
        epochs: passes of Adam over the train scenes.
        lr: Adam learning rate (cosine decay).
        batch_size: scenes per step.
        seed: seed of the head's initialization and the batch order.
        device: where features are extracted and the head trains.

    Returns:
        {"miou": in [0, 1], "iou_per_class": list (None = undefined), "pixel_acc": in [0, 1],
        "n_train", "n_test"}.
    """
    if num_classes is None:
        labelled = [m[m != IGNORE_INDEX] for m in (train_masks, test_masks)]
        num_classes = int(max(int(m.max()) if m.numel() else 0 for m in labelled)) + 1
    generator = torch.Generator().manual_seed(seed)
    x_train = extract_patch_features(provider, train_images, batch_size * 4, device)
    x_test = extract_patch_features(provider, test_images, batch_size * 4, device)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    size = tuple(train_masks.shape[-2:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Conv2d(x_train.shape[1], num_classes, kernel_size=1).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * math.ceil(x_train.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for _ in range(epochs):
        for idx in torch.randperm(x_train.shape[0], generator=generator).split(batch_size):
            target = train_masks[idx].to(device)
            if bool((target == IGNORE_INDEX).all()):
                continue
            logits = _upsample(head(x_train[idx].to(device)), size)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for x, y in zip(x_test.split(batch_size), test_masks.split(batch_size)):
            pred = _upsample(head(x.to(device)), tuple(y.shape[-2:])).argmax(1).cpu()
            confusion += confusion_matrix(pred, y, num_classes)
    miou, per_class = iou_from_confusion(confusion)
    return {
        "miou": miou,
        "iou_per_class": per_class,
        "pixel_acc": float(confusion.diag().sum() / confusion.sum()),
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
    }


def _upsample(logits: Tensor, size: tuple[int, ...]) -> Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
