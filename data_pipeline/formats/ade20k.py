"""``--format ade20k``: ADE20K SceneParsing (ADEChallengeData2016), 150 classes.

Layout (the official ``ADEChallengeData2016.zip``; ROOT may be that folder or its parent)::

    ROOT/ADEChallengeData2016/images/training/ADE_train_00000001.jpg
    ROOT/ADEChallengeData2016/annotations/training/ADE_train_00000001.png   8-bit, 0 = other
    ROOT/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
    ROOT/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png
    ROOT/ADEChallengeData2016/objectInfo150.txt                             class names

Writes ``segmentation/{train,val}`` (training -> train, validation -> val): the image and its
mask as ``seg.png`` with 0 ("other") ignored (255) and classes 1-150 stored as 0-149, as
DINOv2/mmsegmentation evaluate ADE20K (``reduce_zero_label``). An image without its mask is
left out and listed. Class names come from ``objectInfo150.txt`` (first name of each row).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.annotations import IGNORE_INDEX
from data_pipeline.formats.base import (
    LayoutError,
    SplitSources,
    image_files,
    require_dir,
    source_file,
)

LAYOUT = (
    "ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png} "
    "(ROOT may be ADEChallengeData2016 itself)"
)
FOLDER = "ADEChallengeData2016"
SPLITS = {"training": "train", "validation": "val"}
NUM_CLASSES = 150


def class_names(base: Path) -> list[str]:
    """The 150 names of ``objectInfo150.txt`` (tab-separated, name last), else class_1..150."""
    path = base / "objectInfo150.txt"
    if not path.is_file():
        return [f"class_{i}" for i in range(1, NUM_CLASSES + 1)]
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    names = [row[-1].split(";")[0].strip() for row in rows]
    if len(names) != NUM_CLASSES:
        raise LayoutError(f"{path}: expected {NUM_CLASSES} class rows, found {len(names)}")
    return names


def find(root: Path) -> list[SplitSources]:
    base = root if (root / "images").is_dir() else root / FOLDER
    require_dir(base / "images", LAYOUT)
    require_dir(base / "annotations", LAYOUT)
    names = class_names(base)
    info = {
        "classes": names,
        "ignore_index": IGNORE_INDEX,
        "note": "ADE20K mask value v stored as v - 1; 0 (other) -> 255, ignored",
    }
    builds = []
    for folder, split in SPLITS.items():
        image_dir = base / "images" / folder
        if not image_dir.is_dir():
            continue
        files, unpaired = [], []
        for image in image_files(image_dir):
            mask = base / "annotations" / folder / image.relative_to(image_dir).with_suffix(".png")
            if not mask.is_file():
                rel = image.relative_to(base).as_posix()
                unpaired.append({"path": rel, "reason": f"no mask {mask.relative_to(base)}"})
                continue
            files.append(source_file(image, base, None, (("seg.png", mask, "mask_zero_ignored"),)))
        builds.append(
            SplitSources(
                "segmentation", split, base, files, classes=names, unpaired=unpaired,
                subset_info=info,
            )
        )  # fmt: skip
    if not builds:
        raise LayoutError(
            f"{base / 'images'} has neither training/ nor validation/; expected {LAYOUT}"
        )
    return builds
