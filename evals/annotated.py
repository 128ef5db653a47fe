"""Images with a per-pixel annotation (segmentation masks, depth maps) from shards, for the
dense evaluation tasks: decoded, checked for matching sizes and resized together."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD
from data_pipeline.reader import SkipSample, decode_image
from data_pipeline.shards import iter_shard_samples


def load_annotated(
    shards: Sequence[str],
    key: str,
    size: int,
    max_images: int | None,
    what: str,
    to_array: Callable[[Image.Image], np.ndarray],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `max_images` samples of `shards` with annotation member `key`.

    The image is resized bicubic and the annotation nearest to size x size; `to_array` turns the
    annotation into its array (e.g. class ids, metres). `what` names the samples in errors.

    Returns:
        images (N, 3, size, size) float32 ImageNet-normalized, annotations (N, size, size).

    Raises:
        ValueError: a sample lacks `key`, has no readable image, or the sizes differ.
        RuntimeError: no sample at all.
    """
    images, targets = [], []
    samples = (sample for shard in shards for sample in iter_shard_samples(shard))
    for sample in itertools.islice(samples, max_images):
        where = f"{what} sample {sample.get('__key__')} in {sample.get('__shard__')}"
        found = sorted(k for k in sample if not k.startswith("__"))
        if key not in sample:
            raise ValueError(f"{where} lacks {key} (found {found})")
        try:
            image = decode_image(sample)
        except SkipSample as err:
            raise ValueError(f"{where}: no readable image ({err.args[0]}; found {found})") from None
        target = Image.open(io.BytesIO(sample[key]))
        if target.size != image.size:
            raise ValueError(f"{where}: {key} {target.size} and image {image.size} differ in size")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
            target = target.resize((size, size), Image.Resampling.NEAREST)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()))
        targets.append(torch.from_numpy(to_array(target)))
    if not images:
        raise RuntimeError(f"no {what} samples in {shards}")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batch = torch.stack(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (batch - mean) / std, torch.stack(targets)
