"""``--format nyu-depth``: NYU Depth v2 as image / depth pairs (the BTS and DINOv2 layout).

Layout (what BTS's ``sync`` training set and ``official_splits`` test set unpack to, used by
the DINOv2/Monocular-Depth-Estimation-Toolbox depth protocols)::

    ROOT/sync/<scene>/rgb_00000.jpg              train images (RGB, 640x480)
    ROOT/sync/<scene>/sync_depth_00000.png       their depth: 16-bit PNG, millimetres, 0 = none
    ROOT/official_splits/test/<scene>/rgb_00000.jpg            the 654 test images
    ROOT/official_splits/test/<scene>/sync_depth_00000.png

``train/`` and ``test/`` (or ``val/``) folders with the same file names are accepted in place of
``sync/`` and ``official_splits/test/``. Writes ``depth/{train,val}`` (test -> val): the image
and its depth as ``depth.png``; an image without its depth map is left out and listed. The
manifest's ``depth`` entry records millimetres (scale 1000) and NYU's evaluation range
(1e-3 m to 10 m).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.formats.base import LayoutError, SplitSources, image_files, source_file

LAYOUT = (
    "ROOT/sync/<scene>/{rgb_XXXXX.jpg, sync_depth_XXXXX.png} (train) and "
    "ROOT/official_splits/test/<scene>/{rgb_XXXXX.jpg, sync_depth_XXXXX.png} (test)"
)
SPLIT_DIRS = {
    "train": ("sync", "train"),
    "val": ("official_splits/test", "test", "val"),
}
IMAGE_PREFIX, DEPTH_PREFIX = "rgb_", "sync_depth_"
DEPTH_INFO = {
    "unit": "mm",
    "scale": 1000,
    "min_depth_m": 1e-3,
    "max_depth_m": 10.0,
    "source": "NYU Depth v2 (BTS/DINOv2 layout)",
}


def find(root: Path) -> list[SplitSources]:
    builds = []
    for split, candidates in SPLIT_DIRS.items():
        folder = next((root / c for c in candidates if (root / c).is_dir()), None)
        if folder is None:
            continue
        files, unpaired = [], []
        for image in image_files(folder):
            if not image.name.startswith(IMAGE_PREFIX):
                continue
            number = image.stem[len(IMAGE_PREFIX) :]
            depth = image.with_name(f"{DEPTH_PREFIX}{number}.png")
            if not depth.is_file():
                rel = image.relative_to(root).as_posix()
                unpaired.append({"path": rel, "reason": f"no depth map {depth.name}"})
                continue
            files.append(source_file(image, root, None, (("depth.png", depth, "depth_mm"),)))
        builds.append(
            SplitSources("depth", split, root, files, unpaired=unpaired, subset_info=DEPTH_INFO)
        )
    if not any(b.split == "train" for b in builds):
        raise LayoutError(f"{root}: no sync/ (or train/) folder; expected {LAYOUT}")
    return builds
