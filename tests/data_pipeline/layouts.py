"""Tiny generated instances of the standard dataset layouts (real file and folder names, a few
generated images, masks and depth maps), for the converter and system tests. Nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark


def _photo(rng: np.random.Generator, width: int, height: int, tint: int = 0) -> Image.Image:
    """A smooth random RGB image (a low-resolution noise upsampled), class-tinted channel."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    small[..., tint % 3] = 230
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def make_imagenet(root: Path, per_class: int = 4, seed: int = 0) -> dict[str, int]:
    """``train/<wnid>/<wnid>_<n>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` (classes tinted),
    ``LOC_synset_mapping.txt``, one corrupt train file; returns the expected counts."""
    rng = np.random.default_rng(seed)
    number = 0
    for label, wnid in enumerate(WNIDS):
        for i in range(per_class):
            _save(_photo(rng, 40, 30, label), root / "train" / wnid / f"{wnid}_{1000 + i}.JPEG")
        for _ in range(2):
            number += 1
            name = f"ILSVRC2012_val_{number:08d}.JPEG"
            _save(_photo(rng, 36, 44, label), root / "val" / wnid / name)
    (root / "train" / WNIDS[0] / f"{WNIDS[0]}_9999.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    names = ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, names))
    )
    return {"train": per_class * len(WNIDS), "val": 2 * len(WNIDS), "bad": 1}


def _scene(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """An image and its class map: left half class a, right half class b, a 0 band in the
    middle; the image's brightness encodes the class."""
    classes = np.zeros((height, width), dtype=np.uint8)
    a, b = rng.integers(1, 5, size=2)
    classes[:, : width // 2 - 1] = a
    classes[:, width // 2 + 1 :] = b
    pixels = np.stack([classes * 50, classes * 30, 255 - classes * 40], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels), classes


def make_ade20k(parent: Path, per_split: int = 4, seed: int = 0) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}`` with
    ``ADE_train_<8 digits>.jpg`` / ``.png`` masks (0 = other, 1-4 used), ``objectInfo150.txt``,
    one training image without its mask; returns the ADEChallengeData2016 folder."""
    rng = np.random.default_rng(seed)
    base = parent / "ADEChallengeData2016"
    for folder, stem in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in range(1, per_split + 1):
            image, classes = _scene(rng, 48, 32)
            _save(image, base / "images" / folder / f"{stem}_{i:08d}.jpg", quality=95)
            _save(
                Image.fromarray(classes, "L"), base / "annotations" / folder / f"{stem}_{i:08d}.png"
            )
    _save(_photo(rng, 48, 32), base / "images" / "training" / "ADE_train_00000099.jpg")
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    rows += [f"{i}\t0.01\t100\t10\tname{i};alias{i}" for i in range(1, 151)]
    rows[1] = "1\t0.1517\t11664\t1172\twall"
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return base


def make_voc(parent: Path, per_split: int = 4, seed: int = 0) -> Path:
    """``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}`` with
    palette masks (0 background, classes 1-4, a 255 border), and one listed id whose mask is
    missing; returns the VOCdevkit folder."""
    rng = np.random.default_rng(seed)
    base = parent / "VOCdevkit" / "VOC2012"
    palette = [0] * 768
    for value, colour in ((1, (128, 0, 0)), (2, (0, 128, 0)), (3, (128, 128, 0)), (4, (0, 0, 128))):
        palette[3 * value : 3 * value + 3] = colour
    palette[765:768] = (224, 224, 192)
    for split, year in (("train", 2007), ("val", 2008)):
        ids = [f"{year}_{i:06d}" for i in range(per_split)]
        for image_id in ids:
            image, classes = _scene(rng, 40, 30)
            classes[:, 19:21] = 255  # VOC's object border
            mask = Image.fromarray(classes, "P")
            mask.putpalette(palette)
            _save(image, base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            _save(mask, base / "SegmentationClass" / f"{image_id}.png")
        if split == "train":
            ids.append(f"{year}_999999")
            _save(_photo(rng, 40, 30), base / "JPEGImages" / f"{year}_999999.jpg")
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(ids) + "\n")
    return parent / "VOCdevkit"


def make_nyu(root: Path, per_scene: int = 3, seed: int = 0) -> Path:
    """BTS's ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` (16-bit mm) and
    ``official_splits/test/<scene>/...``; brightness encodes depth; one train image has no
    depth map; returns ``root``."""
    rng = np.random.default_rng(seed)
    layout = {
        "sync": ("basement_0001a", "bedroom_0004"),
        "official_splits/test": ("bathroom", "kitchen"),
    }
    for folder, scenes in layout.items():
        for scene in scenes:
            for i in range(per_scene):
                number = f"{i * 7:05d}"
                ys = np.linspace(0, 1, 24)[:, None] * np.ones((1, 32))
                depth_m = 1.0 + 4.0 * ys * rng.uniform(0.5, 1.0)  # floor-like: farther at top
                depth_mm = np.round(depth_m * 1000).astype(np.uint16)
                depth_mm[0, 0] = 0  # a missing measurement
                grey = (255 * (1 - (depth_m - 1) / 4)).astype(np.uint8)
                image = Image.fromarray(np.stack([grey] * 3, axis=-1))
                _save(image, root / folder / scene / f"rgb_{number}.jpg", quality=95)
                _save(Image.fromarray(depth_mm), root / folder / scene / f"sync_depth_{number}.png")
    _save(_photo(rng, 32, 24), root / "sync" / "basement_0001a" / "rgb_00500.jpg")
    return root


def make_coco(root: Path, per_split: int = 4, seed: int = 0) -> Path:
    """``train2017/<12 digits>.jpg`` and ``val2017/<12 digits>.jpg`` (plus an annotation-free
    text file that is ignored); returns ``root``."""
    rng = np.random.default_rng(seed)
    for folder, start in (("train2017", 9), ("val2017", 139)):
        for i in range(per_split):
            _save(_photo(rng, 64, 48, i), root / folder / f"{start + i:012d}.jpg", quality=95)
    (root / "train2017" / "README.txt").write_text("not an image\n")
    return root
