"""Whole images for evaluation: every decodable sample in shard order, resized, center-cropped
and ImageNet-normalized (no augmentation), batch by batch or all at once."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD
from data_pipeline.decode import SkipSample, decode_image, decode_label
from data_pipeline.shards import resolve_shards
from data_pipeline.torch_reader.stream import ShardSampleStream, short_list
from equirecon.errors import DataError

logger = logging.getLogger(__name__)


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def iter_images(
    path: str,
    subset: str,
    split: str,
    size: int,
    with_labels: bool,
    max_images: int | None = None,
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every decodable sample in shard order, resized and normalized, in batches.

    Only one batch of pixels is in memory at a time, so features of datasets far larger than
    memory (ImageNet) can be extracted (`evals.run`).

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        subset: subset of a dataset root.
        split: split of a dataset root.
        size: output side; shorter side resized to ``size`` (bicubic), then center-cropped.
        with_labels: also yield ``cls`` labels (samples without one are skipped).
        max_images: stop after this many images.
        batch_size: images per yielded batch (the last may hold fewer).

    Yields:
        images (B, 3, size, size) float32 ImageNet-normalized, labels (B,) int64 or None.

    Raises:
        RuntimeError: no decodable image at all.
    """
    shards = resolve_shards(path, subset=subset, split=split)
    stream = ShardSampleStream(shards, num_workers=1, shuffle=False)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images: list[torch.Tensor] = []
    labels: list[int] = []
    total = 0

    def batch() -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = torch.stack(images).float().div_(255.0).sub_(mean).div_(std)
        return pixels, (torch.tensor(labels, dtype=torch.int64) if with_labels else None)

    for sample in stream.iter_raw(0, 0):
        if max_images is not None and total >= max_images:
            break
        try:
            image = decode_image(sample)
            label = decode_label(sample) if with_labels else -1
        except SkipSample as skip:
            stream.count_skip(skip.args[0])
            continue
        pixels = np.asarray(_resize_center_crop(image, size), dtype=np.uint8)
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
        labels.append(label)
        total += 1
        if len(images) == batch_size:
            yield batch()
            images, labels = [], []
    if images:
        yield batch()
    if stream.skipped:
        logger.warning("iter_images(%s): skipped %s", path, dict(stream.skipped_by_reason))
    if not total:
        raise DataError(f"no decodable image in shards {short_list(shards)}")


def load_images(
    path: str,
    subset: str,
    split: str,
    size: int,
    with_labels: bool,
    max_images: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every decodable sample in shard order, resized and normalized (no augmentation).

    Args: as :func:`iter_images`.

    Returns:
        images (N, 3, size, size) float32 ImageNet-normalized, labels (N,) int64 or None.
    """
    batches = list(iter_images(path, subset, split, size, with_labels, max_images))
    images = torch.cat([b[0] for b in batches])
    return images, (torch.cat([b[1] for b in batches]) if with_labels else None)


__all__ = ["iter_images", "load_images"]
