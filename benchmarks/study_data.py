"""The method-effect study's dataset: Open Clip Art (Debian `openclipart-png`) as shards.

About 6,900 distinct public-domain clip-art images in 22 category folders, objects drawn
upright (so orientation is a property of the content, not only of the frame). Made from files
on disk, nothing downloaded:

- `natural/{train,val}`: every distinct image (symlinks resolved, duplicates by content
  dropped), split 85 / 15 by a hash of the file's content (stable across machines);
- `labelled/{train,val}`: the same split restricted to the semantic categories with at least
  `--min-per-class` images, at most `--max-per-class` per class (the folders are very
  imbalanced: 2,158 "computer" icons vs 95 "plants"); the class is the folder;
- `segmentation`: linked from `--segmentation` (the demo's procedural scenes) when given.

Every image is stored once, composited over white and shrunk to at most `--max-side` pixels
(some source PNGs have 10^8 pixels; decoding those at every epoch would stall training).
`--max-images N` keeps N of the distinct images (chosen by a hash of their content, independent
of the split: a fixed, stable sample), e.g. for a small 224 px set that can travel to a GPU
machine (benchmarks/gpu_study.sh).

    python benchmarks/study_data.py --out data/clipart [--src /usr/share/openclipart/png]
        [--segmentation data/demo/segmentation]

Install the images as root with `apt-get install openclipart-png`. Re-running completes an
interrupted build (resized files are kept; `data build` is resumable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

NON_SEMANTIC = ("special", "unsorted", "buttons", "logos")  # folders that are not a category
LICENCE = "public domain (Open Clip Art Library; Debian package openclipart-png)"


def plan(
    src: Path, val_percent: int, min_per_class: int, max_per_class: int, max_images: int = 0
) -> dict:
    """{(subset, split): {class or "": [files]}} from the category folders under `src`; with
    `max_images` > 0 only that many distinct images, those of the smallest content hash (hex
    digits 8-16 of the SHA-1; the split uses digits 0-8)."""
    if not src.is_dir():
        raise SystemExit(
            f"{src} not found: install the images with `apt-get install openclipart-png` (root)"
        )
    seen: dict[str, Path] = {}
    by_class: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        for path in sorted(folder.rglob("*.png")):
            real = path.resolve()
            digest = hashlib.sha1(real.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen[digest] = real
            by_class[folder.name].append((digest, real))
    if 0 < max_images < len(seen):
        kept = set(sorted(seen, key=lambda d: (int(d[8:16], 16), d))[:max_images])
        by_class = defaultdict(
            list, {c: [it for it in items if it[0] in kept] for c, items in by_class.items()}
        )
    out: dict = defaultdict(lambda: defaultdict(list))
    for cls, items in by_class.items():
        labelled_kept = {"train": 0, "val": 0}
        for digest, real in items:
            split = "val" if int(digest[:8], 16) % 100 < val_percent else "train"
            out[("natural", split)][""].append(real)
            semantic = cls not in NON_SEMANTIC and len(items) >= min_per_class
            cap = max_per_class * (val_percent if split == "val" else 100 - val_percent) // 100
            if semantic and labelled_kept[split] < cap:
                out[("labelled", split)][cls].append(real)
                labelled_kept[split] += 1
    return out


def shrink(task: tuple[Path, Path, int]) -> None:
    """Write `src` as an RGB PNG over white, longest side at most `max_side`, to `dst`."""
    src, dst, max_side = task
    if dst.is_file():
        return
    from PIL import Image

    from data_pipeline.reader import to_rgb

    Image.MAX_IMAGE_PIXELS = None  # trusted local files; some clip-art is 13,000 px wide
    with Image.open(src) as image:
        image.draft("RGB", (max_side, max_side))
        rgb = to_rgb(image)
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    tmp = dst.with_suffix(".tmp.png")
    rgb.save(tmp, format="PNG")
    tmp.replace(dst)


def shrink_all(files: list[Path], folder: Path, max_side: int, workers: int) -> dict[Path, Path]:
    """Shrunk copies of `files` in `folder`, named by a hash of the source path."""
    from multiprocessing import Pool

    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    mapping = {f: folder / f"{hashlib.sha1(str(f).encode()).hexdigest()[:16]}.png" for f in files}
    tasks = [(f, d, max_side) for f, d in mapping.items()]
    with Pool(max(1, workers)) as pool:
        for _ in tqdm(
            pool.imap_unordered(shrink, tasks, chunksize=8), total=len(tasks), desc="shrink"
        ):
            pass
    return mapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="/usr/share/openclipart/png")
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-percent", type=int, default=15)
    parser.add_argument("--min-per-class", type=int, default=95)
    parser.add_argument("--max-per-class", type=int, default=300)
    parser.add_argument("--segmentation", default=None, help="a segmentation subset to link")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=128)
    parser.add_argument("--max-images", type=int, default=0, help="keep this many (0: all)")
    args = parser.parse_args(argv)

    from data_pipeline.builder import build_shards

    out = Path(args.out)
    staging = out / "_staging"  # not hidden: `data build` skips hidden paths
    layout = plan(
        Path(args.src), args.val_percent, args.min_per_class, args.max_per_class, args.max_images
    )
    resized = out / ".resized"
    files = sorted({f for classes in layout.values() for fs in classes.values() for f in fs})
    small = shrink_all(files, resized, args.max_side, args.workers)
    counts = {}
    for (subset, split), classes in sorted(layout.items()):
        root = staging / subset / split
        if root.exists():
            shutil.rmtree(root)
        for cls, files in classes.items():
            folder = root / cls if cls else root
            folder.mkdir(parents=True, exist_ok=True)
            for i, real in enumerate(files):
                os.symlink(small[real].resolve(), folder / f"{i:05d}_{real.name}")
        labels = "folder" if subset == "labelled" else "none"
        build_shards(
            str(root), str(out), labels=labels, subset=subset, split=split, workers=args.workers
        )
        counts[f"{subset}/{split}"] = {c or "all": len(f) for c, f in classes.items()}
    if args.segmentation:
        link = out / "segmentation"
        if not link.exists():
            link.symlink_to(Path(args.segmentation).resolve())
    (out / "study_data.json").write_text(
        json.dumps({"source": args.src, "licence": LICENCE, "counts": counts}, indent=1)
    )
    shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps(counts, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
