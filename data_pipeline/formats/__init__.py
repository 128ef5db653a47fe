"""Converters of standard dataset layouts to our shards (``equirecon data build --format``).

One module per layout, each with ``find(root) -> list[SplitSources]`` and a ``LAYOUT`` note:

| format | reads | writes |
|---|---|---|
| ``imagefolder`` | ImageNet ``train/<class>/``, ``val/<class>/`` | ``labelled/{train,val}`` |
| ``ade20k`` | ``ADEChallengeData2016/{images,annotations}/{training,validation}`` | ``segmentation/{train,val}`` |
| ``voc`` | VOC2012 ``JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation`` | ``segmentation/{train,val}`` |
| ``nyu-depth`` | NYU Depth v2 ``sync/``, ``official_splits/test/`` (rgb + sync_depth) | ``depth/{train,val}`` |
| ``images`` | plain folders, COCO ``train2017/``, ``val2017/`` | ``natural/{train,val}`` |
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_pipeline.builder.dataset import DEFAULT_SHARD_SIZE_MB, write_split
from data_pipeline.formats import ade20k, imagefolder, images, nyu_depth, voc
from data_pipeline.formats.base import LayoutError, SplitSources

FORMATS: dict[str, Callable[[Path], list[SplitSources]]] = {
    "imagefolder": imagefolder.find,
    "ade20k": ade20k.find,
    "voc": voc.find,
    "nyu-depth": nyu_depth.find,
    "images": images.find,
}


def convert(
    fmt: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Converts the dataset at ``src`` (layout ``fmt``) into shards under ``out``.

    Every split the layout has is built (resumable, ``workers`` processes); the manifest gains
    one build per ``<subset>/<split>``.

    Returns:
        ``{"<subset>/<split>": manifest entry}``.

    Raises:
        ValueError: unknown ``fmt``; `LayoutError`: ``src`` lacks the layout (names the path).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder (the root of a {fmt} dataset)")
    entries = {}
    for sources in FORMATS[fmt](root):
        entries[f"{sources.subset}/{sources.split}"] = write_split(
            out,
            sources.root,
            sources.files,
            subset=sources.subset,
            split=sources.split,
            src=str(src),
            labels=sources.labels,
            classes=sources.classes,
            ignored=sources.ignored,
            unpaired=sources.unpaired,
            subset_info=sources.subset_info,
            source_format=fmt,
            shard_size_mb=shard_size_mb,
            workers=workers,
            seed=seed,
            progress=progress,
            start=time.perf_counter(),
        )
    return entries


# The command that writes each subset of a dataset root (the table above; `{root}`, `{split}`).
MAKE_SUBSET = {
    "natural": "equirecon data build --src IMAGES --out {root} --split {split}",
    "labelled": "equirecon data build --format imagefolder --src IMAGENET --out {root}",
    "segmentation": "equirecon data build --format ade20k|voc --src ROOT --out {root}",
    "depth": "equirecon data build --format nyu-depth --src NYU --out {root}",
}


def how_to_make(subset: str, root: str, split: str = "train") -> str:
    """The command that writes ``subset`` (its ``split``) into the dataset root ``root``."""
    template = MAKE_SUBSET.get(subset, "equirecon data build --subset {subset} --out {root}")
    return template.format(subset=subset, root=root, split=split)


__all__ = ["FORMATS", "MAKE_SUBSET", "LayoutError", "SplitSources", "convert", "how_to_make"]
