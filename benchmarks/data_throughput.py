"""Data pipeline throughput: images/s of full view generation, our readers vs a DINOv2-style
torchvision reference, on the same shards and with the same number of workers.

Per image: 2 global + ``n_local`` local crops (DINOv2's augmentations), then on the training
device g = SE(2) on global crop 2 and the K = 2 intermediates (``data_pipeline.transforms``),
and iBOT masks. Paths:

- ``torch``: our reader (``data_pipeline.torch_reader``, ``num_workers`` processes);
- ``dali``: our DALI reader (``data_pipeline.dali_reader``, ``num_workers`` DALI threads;
  CPU decode here, ``mixed`` GPU decode where CUDA exists);
- ``reference``: DINOv2's recipe with ``torchvision.transforms`` on PIL images
  (RandomResizedCrop, flip, ColorJitter, RandomGrayscale, GaussianBlur(9), RandomSolarize,
  ToTensor, Normalize) over a ``DataLoader`` with ``num_workers`` processes reading the same
  shards, masks made in the collate function as DINOv2 does.

Run: ``python benchmarks/data_throughput.py --data data/demo [--quick]``; ``--make-data DIR``
first writes a set of 224 px JPEGs cut from the bundled photos and shards it with
``equirecon data build`` (``DIR/src`` -> ``DIR``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/data_throughput.py`: import the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD
from data_pipeline.masking import BlockMaskGenerator, make_batch_masks
from data_pipeline.shards import iter_shard_samples, resolve_shards
from data_pipeline.transforms import build_transform

PATHS = ("torch", "dali", "reference")


# ---- the DINOv2-style torchvision reference -------------------------------------------------------


class _ReferenceAugmentation:
    """DINOv2's DataAugmentationDINO, rebuilt from torchvision.transforms (v1, PIL images)."""

    def __init__(self, global_size: int, local_size: int, n_local: int) -> None:
        from torchvision import transforms as T

        bicubic = T.InterpolationMode.BICUBIC

        def blur(p: float) -> Any:
            return T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)

        self.n_local = n_local
        self.global_crop = T.Compose(
            [
                T.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        self.local_crop = T.Compose(
            [
                T.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        self.color = T.Compose(
            [
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.global1 = T.Compose([self.color, blur(1.0), normalize])
        self.global2 = T.Compose(
            [self.color, blur(0.1), T.RandomSolarize(threshold=128, p=0.2), normalize]
        )
        self.local = T.Compose([self.color, blur(0.5), normalize])

    def __call__(self, image: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        global_crops = [
            self.global1(self.global_crop(image)),
            self.global2(self.global_crop(image)),
        ]
        local_crops = [self.local(self.local_crop(image)) for _ in range(self.n_local)]
        return global_crops, local_crops


class _ReferenceDataset(torch.utils.data.IterableDataset):
    """Decoded PIL images of the shards, split over DataLoader workers, cycled forever."""

    def __init__(self, shards: list[str], augment: _ReferenceAugmentation) -> None:
        super().__init__()
        self.shards = shards
        self.augment = augment

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        from PIL import Image

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        while True:
            for index, shard in enumerate(self.shards):
                for sample in iter_shard_samples(shard):
                    if (sample["__index__"] + index) % workers != worker:
                        continue
                    data = next(sample[e] for e in ("jpg", "jpeg", "png", "webp") if e in sample)
                    with Image.open(io.BytesIO(data)) as image:
                        yield self.augment(image.convert("RGB"))


class _MaskingCollate:
    """Stacks crops and draws iBOT masks (DINOv2's collate_data_and_cast, in the workers)."""

    def __init__(self, grid: int) -> None:
        self.mask_generator = BlockMaskGenerator((grid, grid))

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        n = len(items)
        global_crops = torch.stack([torch.stack([it[0][i] for it in items]) for i in range(2)])
        n_local = len(items[0][1])
        local_crops = torch.stack([torch.stack([it[1][i] for it in items]) for i in range(n_local)])
        masks = make_batch_masks(
            2 * n, (self.mask_generator.height,) * 2, mask_generator=self.mask_generator
        ).view(2, n, -1)
        return {"global_crops": global_crops, "local_crops": local_crops, "masks": masks}


# ---- the three paths -------------------------------------------------------------------------------


def _batches(path: str, args: argparse.Namespace) -> tuple[Iterator[Any], Callable[[], None]]:
    """An iterator of batches (global crops, local crops, masks) and a function stopping it."""
    sizes = {"global_size": args.global_size, "local_size": args.local_size}
    common = {"batch_size": args.batch_size, "seed": 0, "n_local": args.n_local, **sizes}
    if path == "torch":
        from data_pipeline.torch_reader.loader import build_train_loader

        loader = build_train_loader(
            args.data, num_workers=args.workers, patch_size=args.patch_size, **common
        )
        batches = iter(loader)
        return (
            ((b.global_crops, b.local_crops, b.masks) for b in batches),
            batches.close,
        )
    if path == "dali":
        from data_pipeline.dali_reader.loader import make_dali_loader

        device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        loader = make_dali_loader(
            args.data,
            num_threads=args.workers,
            patch_size=args.patch_size,
            device_id=device_id,
            **common,
        )
        batches = iter(loader)
        return (
            ((b.global_crops, b.local_crops, b.masks) for b in batches),
            batches.close,
        )
    augment = _ReferenceAugmentation(args.global_size, args.local_size, args.n_local)
    dataset = _ReferenceDataset(resolve_shards(args.data), augment)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=_MaskingCollate(args.global_size // args.patch_size),
        persistent_workers=False,
    )
    iterator = iter(loader)

    def stop() -> None:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    return ((b["global_crops"], b["local_crops"], b["masks"]) for b in iterator), stop


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its live children (DataLoader workers)."""
    try:
        import psutil
    except ImportError:  # then only this process (DALI threads, not worker processes)
        return time.process_time()
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure(path: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of ``path`` over ``args.batches``
    batches after ``args.warmup``; CPU seconds count every process and thread of the path."""
    transform = build_transform("se2", args.global_size)
    generator = torch.Generator().manual_seed(0)
    batches, stop = _batches(path, args)
    try:
        start = time.perf_counter()
        cpu_start = cpu_seconds()
        for i in range(args.warmup + args.batches):
            if i == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), cpu_seconds()
            global_crops, local_crops, masks = next(batches)
            u = global_crops[1].to(device, non_blocking=True)
            local_crops.to(device, non_blocking=True)
            masks.to(device, non_blocking=True)
            theta = transform.sample(u.shape[0], generator, device=device)
            transform.apply(u, theta)
            transform.intermediates(u, theta, 2)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    finally:
        stop()
    images = args.batches * args.batch_size
    return images / elapsed, images / max(cpu, 1e-9)


# ---- a larger offline data set ---------------------------------------------------------------------


def make_data(out: Path, n_images: int, image_px: int, workers: int, seed: int = 0) -> None:
    """``n_images`` JPEGs (shorter side ``image_px``) cut from the bundled photos, then shards."""
    import numpy as np
    from PIL import Image

    from data_pipeline.builder.dataset import build_shards
    from data_pipeline.demo import load_photos

    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    if len(list(src.glob("*.jpg"))) < n_images:
        photos = load_photos()
        rng = np.random.default_rng(seed)
        for i in range(n_images):
            image = photos[i % len(photos)].image
            width, height = image.size
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            box_h = int(min(height, width / aspect) * rng.uniform(0.4, 1.0))
            box_w = min(width, int(box_h * aspect))
            left = int(rng.integers(0, width - box_w + 1))
            top = int(rng.integers(0, height - box_h + 1))
            short = min(box_w, box_h)
            size = (round(box_w * image_px / short), round(box_h * image_px / short))
            crop = image.resize(
                size, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h)
            )
            crop.save(src / f"img{i:06d}.jpg", quality=90)
    build_shards(str(src), out, labels="none", shard_size_mb=4.0, workers=workers)


# ---- report ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """CPU model, cores and library versions."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "nvidia.dali", "PIL", "numpy"):
        try:
            module = __import__(name, fromlist=["__version__"])
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": model,
        "cores": str(len(os.sched_getaffinity(0))),
        "gpu": gpu,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def format_table(results: dict[str, list[tuple[float, float]]]) -> str:
    """Markdown table (medians over the runs): images/s, images per CPU-second, ratios."""

    def median(path: str, i: int) -> float:
        return statistics.median(run[i] for run in results[path])

    has_reference = "reference" in results
    lines = [
        "| path | images/s | cores busy | images/s per core | per core vs reference "
        "| images/s vs reference | runs (images/s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for path, runs in results.items():
        wall, per_core = median(path, 0), median(path, 1)
        ratio_core = f"{per_core / median('reference', 1):.2f}x" if has_reference else "-"
        ratio_wall = f"{wall / median('reference', 0):.2f}x" if has_reference else "-"
        shown = ", ".join(f"{r[0]:.1f}" for r in runs)
        lines.append(
            f"| {path} | {wall:.1f} | {wall / per_core:.2f} | {per_core:.1f} | {ratio_core} "
            f"| {ratio_wall} | {shown} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset root, shard folder or glob")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma list of " + str(PATHS))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path, interleaved")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1 run of 3 batches per path")
    parser.add_argument(
        "--make-data", action="store_true", help="first write 224 px JPEGs + shards to --data"
    )
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--image-px", type=int, default=224, help="shorter side of made images")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.warmup, args.repeats = 3, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_data:
        make_data(Path(args.data), args.n_images, args.image_px, args.workers)
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown --paths {sorted(unknown)}; choose from {PATHS}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
    for repeat in range(args.repeats):
        for path in paths:
            wall, per_core = measure(path, args, device)
            results[path].append((wall, per_core))
            print(
                f"run {repeat + 1}/{args.repeats} {path}: {wall:.1f} images/s, "
                f"{per_core:.1f} images per CPU-second",
                flush=True,
            )
    info = machine_info()
    print()
    print(f"command: python {' '.join([sys.argv[0], *(argv or sys.argv[1:])])}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, GPU {info['gpu']}")
    print(f"versions: {info['versions']}")
    print(
        f"setup: {args.workers} workers, batch {args.batch_size}, 2 x {args.global_size} px + "
        f"{args.n_local} x {args.local_size} px crops, SE(2) g + 2 intermediates + masks on "
        f"{device.type}; {args.batches} timed batches after {args.warmup}, median of "
        f"{args.repeats}"
    )
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
