"""``--format images``: plain image folders (COCO's ``train2017``/``val2017``), no labels.

Layout::

    ROOT/train2017/000000000009.jpg     (or ROOT/train/...)
    ROOT/val2017/000000000139.jpg       (or ROOT/val/...)

Writes ``natural/{train,val}``: what pretraining and the homography and equivariance tasks
read. Without train/val folders, every image under ROOT goes to ``natural/train``.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.builder.sources import find_sources
from data_pipeline.formats.base import SplitSources

SPLIT_DIRS = {"train": ("train2017", "train2014", "train"), "val": ("val2017", "val2014", "val")}


def find(root: Path) -> list[SplitSources]:
    builds = []
    for split, candidates in SPLIT_DIRS.items():
        folder = next((root / c for c in candidates if (root / c).is_dir()), None)
        if folder is not None:
            _, files, _, ignored = find_sources(str(folder), "none")
            builds.append(SplitSources("natural", split, folder, files, ignored=ignored))
    if not builds:
        _, files, _, ignored = find_sources(str(root), "none")
        builds.append(SplitSources("natural", "train", root, files, ignored=ignored))
    return builds
