"""``--format voc``: Pascal VOC 2012 semantic segmentation, 21 classes.

Layout (``VOCtrainval_11-May-2012.tar``; ROOT may be ``VOCdevkit``, ``VOCdevkit/VOC2012`` or
the folder holding ``VOCdevkit``)::

    VOC2012/JPEGImages/2007_000032.jpg
    VOC2012/SegmentationClass/2007_000032.png         palette PNG: 0 background, 1-20, 255 border
    VOC2012/ImageSets/Segmentation/train.txt          one image id per line (1464)
    VOC2012/ImageSets/Segmentation/val.txt            (1449)

Writes ``segmentation/{train,val}`` from the two lists: the image and its mask (palette indices
= class ids, 255 ignored) as ``seg.png``. Listed ids without an image or a mask are left out and
listed.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.annotations import IGNORE_INDEX
from data_pipeline.formats.base import LayoutError, SplitSources, source_file

LAYOUT = (
    "VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}"
)
CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
SPLITS = ("train", "val")


def _base(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise LayoutError(f"{root}: no JPEGImages/ and SegmentationClass/ found; expected {LAYOUT}")


def find(root: Path) -> list[SplitSources]:
    base = _base(root)
    info = {"classes": list(CLASSES), "ignore_index": IGNORE_INDEX}
    builds = []
    for split in SPLITS:
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise LayoutError(f"{listing} is missing; expected {LAYOUT}")
        files, unpaired = [], []
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        for image_id in ids:
            image = base / "JPEGImages" / f"{image_id}.jpg"
            mask = base / "SegmentationClass" / f"{image_id}.png"
            missing = [p for p in (image, mask) if not p.is_file()]
            if missing:
                names = ", ".join(p.relative_to(base).as_posix() for p in missing)
                unpaired.append({"path": f"JPEGImages/{image_id}.jpg", "reason": f"no {names}"})
                continue
            files.append(source_file(image, base, None, (("seg.png", mask, "mask"),)))
        builds.append(
            SplitSources(
                "segmentation", split, base, files, classes=list(CLASSES), unpaired=unpaired,
                subset_info=info,
            )
        )  # fmt: skip
    return builds
