"""The DALI reader (``data.backend=dali``): WebDataset shards -> multi-crop ``Batch``es.

One DALI pipeline per rank reads the shards with ``fn.readers.webdataset`` (index files next to
the shards, ``<name>.idx``, as ``equirecon data build`` writes them; for shards without one an
index is generated into a temporary folder, so DALI never has to infer it), decodes each image
once (``device="mixed"``, i.e. nvJPEG on the GPU, when CUDA is available; ``"cpu"`` otherwise)
and makes DINOv2's views from it: two global and ``n_local`` local random-resized crops
(bicubic, antialiased), horizontal flips, colour jitter (p 0.8; brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, in that fixed order; the contrast pivot is each crop's mean grey, as in
torchvision; hue and saturation act in YIQ space, DALI's ``fn.hsv``), grayscale (p 0.2),
gaussian blur (global 1 p 1.0, global 2 p 0.1, locals p 0.5; sigma 0.1-2 px; separable
per-sample kernels, ``fn.filter``, the torch path's kernel size cut at 3 sigma), solarization of
global 2 (p 0.2), ImageNet normalization, CHW float32. The colour ops run on uint8 crops.
Random choices are gated arithmetically (``coin * (x - 1) + 1``); a crop that is not blurred
gets a 1-tap kernel. Masks come from :func:`make_batch_masks`, seeded as in
the torch reader, so both backends draw the same masks for the same batch.

Order and ranks. Epoch ``e`` permutes the shard list with ``(seed, e)`` (the same on all ranks);
DALI gives rank ``r`` the contiguous ``r``-th of ``world_size`` equal parts of the samples
(``shard_id=rank, num_shards=world_size``), with ``stick_to_shard=True`` (a rank never strays
into another's part) and ``pad_last_batch=False``: every rank stops after
``floor(total / world_size) // batch_size`` batches, so all ranks agree on the epoch length and
no padded duplicate is ever yielded. Samples are shuffled inside a ``shuffle_buffer``-sample
buffer seeded by ``(seed, e, rank)``; augmentations by DALI's pipeline seed ``(seed, e, rank)``.
A new pipeline is built for each epoch.

Resume. DALI cannot restore a reader position. :meth:`DaliTrainLoader.state_dict` records
``(epoch, batches in epoch)``; :meth:`~DaliTrainLoader.load_state_dict` rebuilds that epoch's
pipeline from its seeds and runs (and drops) the batches already seen. That restores the data
order and masks; that the augmentations match too relies on DALI's random operators being
deterministic for a given seed, batch size and thread count (true for the CPU pipeline in our
tests, not promised by DALI, e.g. for the mixed decoder). Exact resume is guaranteed only by the
torch backend.

Bad data. Unreadable or truncated shards (and shards without images) are left out when the
loader is built and counted under ``bad_shard``. DALI cannot skip an undecodable image: its
decoder error stops the pipeline. We turn that into a ``RuntimeError`` naming the shard and the
member; shards written by ``equirecon data build`` never hold such images (the builder decodes
every image and leaves bad ones out), and the torch backend skips them.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.augment import BLUR_SIGMA, blur_kernel_size
from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD, Batch
from data_pipeline.build import dali_index_entries, read_dali_index, write_dali_index
from data_pipeline.masking import BlockMaskGenerator, make_batch_masks
from data_pipeline.reader import _TAG_MASKS, IMAGE_EXTENSIONS, derive_seed
from data_pipeline.shards import BadShardError, resolve_shards, scan_shard

logger = logging.getLogger(__name__)

DALI_MISSING = (
    "data.backend=dali needs NVIDIA DALI, which is not installed: "
    "pip install nvidia-dali-cuda130 (CUDA 13; nvidia-dali-cuda120 for CUDA 12 drivers), "
    "or use data.backend=torch"
)
READER_NAME = "Reader"
ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
HUE_DEG = 0.1 * 360.0  # torchvision hue 0.1 (turns) -> DALI degrees
# Domain tags of the DALI seeds (kept apart from each other and from the torch reader's tags).
_TAG_SHARD_ORDER = 11
_TAG_SHUFFLE = 12
_TAG_AUGMENT = 13


def import_dali() -> Any:
    """``nvidia.dali``, or an ImportError that names the package to install."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as err:
        raise ImportError(DALI_MISSING) from err
    return dali


class _Stats(dict):
    """A stats dict that can also be called (``loader.stats`` and ``loader.stats()`` agree)."""

    def __call__(self) -> _Stats:
        return self


@dataclass(frozen=True)
class DaliShards:
    """Readable shards with their DALI index files and image-sample counts."""

    paths: list[str]
    index_paths: list[str]
    counts: list[int]
    bad_shards: list[str]
    lost_samples: int = 0  # samples after the damage of salvaged shards (in bad_shards too)

    @property
    def total(self) -> int:
        return sum(self.counts)


def prepare_shards(paths: Sequence[str], index_dir: str | Path) -> DaliShards:
    """Finds or writes the DALI index of every shard; leaves out unreadable ones.

    A shard's index is ``<shard without .tar>.idx`` next to it when that file exists and is
    not older than the shard; otherwise one is generated into ``index_dir``. A damaged shard
    (truncated, a broken header) is indexed up to its damage, as the torch reader reads it: its
    complete samples are used, the rest counted in ``lost_samples``, and it is listed in
    ``bad_shards``.
    """
    image_exts = set(IMAGE_EXTENSIONS)
    kept, indexes, counts, bad = [], [], [], []
    lost = 0
    for number, path in enumerate(paths):
        shard = Path(path)
        beside = shard.with_suffix(".idx")
        try:
            if beside.is_file() and beside.stat().st_mtime_ns >= shard.stat().st_mtime_ns:
                index = beside
            else:
                index = Path(index_dir) / f"{number:06d}-{shard.stem}.idx"
                try:
                    write_dali_index(shard, index)
                except BadShardError:
                    scan = scan_shard(str(shard))
                    if scan.samples == 0:
                        raise
                    entries = dali_index_entries(shard, salvage=True)[: scan.samples]
                    write_dali_index(shard, index, entries)
                    known = "" if scan.expected is not None else "at least "
                    logger.warning(
                        "data.backend=dali: %s; using its %d readable samples, %s%d lost",
                        scan.damage,
                        scan.samples,
                        known,
                        scan.lost,
                    )
                    bad.append(str(path))
                    lost += scan.lost
            samples = read_dali_index(index)
        except (BadShardError, OSError, ValueError) as err:
            logger.warning("data.backend=dali: skipping shard %s: %s", path, err)
            bad.append(str(path))
            continue
        count = sum(1 for exts in samples if image_exts & {e.lower() for e in exts})
        if count == 0:
            logger.warning("data.backend=dali: skipping shard %s: no jpg/png/webp sample", path)
            bad.append(str(path))
            continue
        kept.append(str(path))
        indexes.append(str(index))
        counts.append(count)
    return DaliShards(kept, indexes, counts, bad, lost)


def _uniform(fn: Any, low: float, high: float) -> Any:
    return fn.random.uniform(range=[low, high])


def _coin(fn: Any, types: Any, probability: float) -> Any:
    """A per-sample 0.0/1.0 float with P(1) = probability."""
    return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)


def blur_kernels(size: int, blur_p: float) -> tuple[Any, Any]:
    """Per-sample separable gaussian kernels ((1, w) and (w, 1), float32, CPU nodes).

    sigma ~ U(0.1, 2) px; the window is the torch path's kernel (``blur_kernel_size(size)``)
    cut to ``2 * ceil(3 sigma) + 1`` taps (the taps dropped hold < 0.3% of the weight); a sample
    that is not blurred (probability ``1 - blur_p``) gets the 1-tap identity kernel.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    kernel = blur_kernel_size(size)
    sigma = _uniform(fn, *BLUR_SIGMA)
    window = dmath.min(2.0 * dmath.ceil(3.0 * sigma) + 1.0, float(kernel))
    if blur_p < 1:
        window = (window - 1.0) * _coin(fn, types, blur_p) + 1.0
    offsets = np.arange(kernel, dtype=np.float32)[None, :] - kernel // 2
    weights = dmath.exp(types.Constant(offsets * offsets) * (-0.5 / (sigma * sigma)))
    start = fn.cast((float(kernel) - window) * 0.5, dtype=types.INT32)
    weights = fn.slice(weights, start=start, shape=fn.cast(window, dtype=types.INT32), axes=[1])
    row = weights / fn.reductions.sum(weights)
    return row, fn.transpose(row, perm=[1, 0])


def multicrop_view(
    images: Any,
    size: int,
    scale: tuple[float, float],
    *,
    blur_p: float,
    solarize_p: float = 0.0,
    arithmetic_contrast: bool | None = None,
) -> Any:
    """One DINOv2 view of decoded HWC uint8 ``images`` (a DALI node) -> (3, size, size) float32.

    Works on CPU and GPU nodes. The colour ops run on uint8. ``arithmetic_contrast`` (default:
    on GPU nodes) computes brightness/contrast as an arithmetic expression instead of
    ``fn.brightness_contrast``, whose per-sample ``contrast_center`` must live on the CPU.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    on_gpu = images.device == "gpu"
    if arithmetic_contrast is None:
        arithmetic_contrast = on_gpu
    crop = fn.random_resized_crop(
        images,
        size=[size, size],
        random_area=list(scale),
        random_aspect_ratio=list(ASPECT_RATIO),
        interp_type=types.INTERP_CUBIC,
        antialias=True,
    )
    # Colour jitter (p 0.8): brightness b and contrast c around the crop's mean grey m,
    # b * (m + c (x - m)) (torchvision's order and pivot), then saturation and hue (YIQ);
    # grayscale (p 0.2) zeroes the saturation.
    jitter = _coin(fn, types, 0.8)
    brightness = 1.0 + jitter * _uniform(fn, -0.4, 0.4)
    contrast = 1.0 + jitter * _uniform(fn, -0.4, 0.4)
    luma = types.Constant(np.float32(GRAY_WEIGHTS))
    if arithmetic_contrast:
        channel_mean = fn.reductions.mean(crop, axes=[0, 1], keep_dims=True)
        gray_mean = fn.reductions.sum(channel_mean * luma, axes=[2], keep_dims=True)
        mixed = crop * (brightness * contrast) + gray_mean * (brightness * (1.0 - contrast))
        crop = fn.cast(dmath.clamp(mixed, 0.0, 255.0), dtype=types.UINT8)
    else:
        gray_mean = fn.reductions.sum(fn.reductions.mean(crop, axes=[0, 1]) * luma)
        crop = fn.brightness_contrast(
            crop, brightness=brightness, contrast=contrast, contrast_center=gray_mean
        )
    saturation = (1.0 + jitter * _uniform(fn, -0.2, 0.2)) * (1.0 - _coin(fn, types, 0.2))
    crop = fn.hsv(crop, hue=jitter * _uniform(fn, -HUE_DEG, HUE_DEG), saturation=saturation)
    if blur_p > 0:
        row, column = blur_kernels(size, blur_p)
        if on_gpu:
            row, column = row.gpu(), column.gpu()
        crop = fn.filter(fn.filter(crop, row), column)  # reflect-101 borders, as torchvision
    if solarize_p > 0:  # uint8: 255 - x == x ^ 255
        solarize = fn.cast(fn.random.coin_flip(probability=solarize_p), dtype=types.UINT8)
        threshold = types.Constant(128, dtype=types.UINT8)
        crop = crop ^ ((crop >= threshold) * solarize * types.Constant(255, dtype=types.UINT8))
    return fn.crop_mirror_normalize(
        crop,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in IMAGENET_MEAN],
        std=[255.0 * s for s in IMAGENET_STD],
        mirror=fn.random.coin_flip(probability=0.5),
    )


class DaliTrainLoader:
    """Infinite iterable over multi-crop :class:`Batch`es made by DALI, epoch after epoch.

    The same interface as :class:`data_pipeline.reader.TrainLoader`; see the module docstring
    for order, resume (best effort) and bad-data handling. Build it with
    :func:`build_dali_loader` or :func:`make_dali_loader`.
    """

    def __init__(
        self,
        shards: DaliShards,
        *,
        batch_size: int,
        num_threads: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        global_size: int,
        local_size: int,
        n_local: int,
        patch_size: int,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        mask_prob: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        device_id: int | None = None,
        shuffle_buffer: int = 1024,
        arithmetic_contrast: bool | None = None,
        index_dir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if not 1 <= patch_size <= global_size:
            raise ValueError(f"patch_size {patch_size} must be in [1, {global_size}]")
        if not shards.paths:
            raise RuntimeError(f"no readable shard for DALI (unreadable: {shards.bad_shards})")
        self.shards = shards
        self.batch_size = batch_size
        self.num_threads = max(1, num_threads)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_size = global_size
        self.local_size = local_size
        self.n_local = n_local
        self.global_scale = (float(global_scale[0]), float(global_scale[1]))
        self.local_scale = (float(local_scale[0]), float(local_scale[1]))
        self.mask_prob = mask_prob
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        grid = global_size // patch_size
        self.mask_generator = BlockMaskGenerator((grid, grid), ratio=self.mask_ratio)
        self.device_id = device_id
        self.decode_device = "mixed" if device_id is not None else "cpu"
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.arithmetic_contrast = arithmetic_contrast
        self._index_dir = index_dir  # keeps generated index files alive with the loader
        self._epoch = 0
        self._batches_in_epoch = 0
        self._skipped: Counter[str] = Counter(
            {"bad_shard": len(shards.bad_shards), "damaged_shard_samples": shards.lost_samples}
        )

    def __repr__(self) -> str:
        return (
            f"DaliTrainLoader(shards={len(self.shards.paths)}, samples={self.shards.total}, "
            f"batch_size={self.batch_size}, decode={self.decode_device}, rank={self.rank}/"
            f"{self.world_size})"
        )

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._epoch

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches every rank yields per epoch: ``floor(total / world_size) // batch_size``."""
        return (self.shards.total // self.world_size) // self.batch_size

    @property
    def stats(self) -> _Stats:
        """``{"skipped": int, "by_reason": {...}, "bad_shards": [...]}`` (callable too)."""
        by_reason = {k: v for k, v in sorted(self._skipped.items()) if v > 0}
        return _Stats(
            skipped=sum(by_reason.values()),
            skipped_samples=sum(v for k, v in by_reason.items() if k != "bad_shard"),
            skipped_shards=len(self.shards.bad_shards),
            by_reason=by_reason,
            bad_shards=list(self.shards.bad_shards),
        )

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded batch (JSON-serializable)."""
        return {
            "backend": "dali",
            "epoch": self._epoch,
            "batches_in_epoch": self._batches_in_epoch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from ``state`` (call before iterating); see the module docstring.

        With another seed, batch size or world size it warns and starts the next epoch.
        """
        epoch, done = int(state["epoch"]), int(state.get("batches_in_epoch", 0))
        same = all(
            state.get(key, current) == current
            for key, current in (
                ("seed", self.seed),
                ("batch_size", self.batch_size),
                ("world_size", self.world_size),
            )
        )
        if not same or done >= max(1, self.batches_per_epoch()):
            if not same:
                warnings.warn(
                    "data loader state was saved with another seed/batch size/world size; "
                    f"resuming at the start of epoch {epoch + (done > 0)}",
                    stacklevel=2,
                )
            self._epoch, self._batches_in_epoch = epoch + (done > 0), 0
            return
        self._epoch, self._batches_in_epoch = epoch, done

    def _epoch_shards(self, epoch: int) -> tuple[list[str], list[str]]:
        rng = np.random.default_rng(derive_seed(_TAG_SHARD_ORDER, self.seed, epoch))
        order = rng.permutation(len(self.shards.paths)).tolist()
        return (
            [self.shards.paths[i] for i in order],
            [self.shards.index_paths[i] for i in order],
        )

    def build_pipeline(self, epoch: int) -> Any:
        """The (built) DALI pipeline of ``epoch`` on this rank."""
        dali = import_dali()
        fn, types = dali.fn, dali.types
        paths, index_paths = self._epoch_shards(epoch)
        pipe = dali.Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            seed=derive_seed(_TAG_AUGMENT, self.seed, epoch, self.rank) % (1 << 31),
            prefetch_queue_depth=2,
        )
        with pipe:
            encoded = fn.readers.webdataset(
                paths=paths,
                index_paths=index_paths,
                ext=[";".join(IMAGE_EXTENSIONS)],
                case_sensitive_extensions=False,
                missing_component_behavior="skip",
                shard_id=self.rank,
                num_shards=self.world_size,
                stick_to_shard=True,
                pad_last_batch=False,
                random_shuffle=True,
                initial_fill=self.shuffle_buffer,
                seed=derive_seed(_TAG_SHUFFLE, self.seed, epoch, self.rank) % (1 << 31),
                name=READER_NAME,
            )
            images = fn.decoders.image(encoded, device=self.decode_device, output_type=types.RGB)
            option = {"arithmetic_contrast": self.arithmetic_contrast}
            global_size, global_scale = self.global_size, self.global_scale
            views = [
                multicrop_view(images, global_size, global_scale, blur_p=1.0, **option),
                multicrop_view(
                    images, global_size, global_scale, blur_p=0.1, solarize_p=0.2, **option
                ),
            ]
            views += [
                multicrop_view(images, self.local_size, self.local_scale, blur_p=0.5, **option)
                for _ in range(self.n_local)
            ]
            pipe.set_outputs(*views)
        pipe.build()
        return pipe

    def _output_names(self) -> list[str]:
        return ["global_0", "global_1"] + [f"local_{i}" for i in range(self.n_local)]

    def locate_bad_image(self, epoch: int, batch_index: int) -> tuple[str, str, str] | None:
        """The first sample PIL cannot decode among those DALI may have read by ``batch_index``.

        Scans this rank's part of epoch ``epoch`` up to the read-ahead bound (batches so far
        plus prefetch plus the shuffle buffer). Returns (shard, key, reason) or None.
        """
        from data_pipeline.build import BadImage, inspect_image
        from data_pipeline.shards import iter_shard_samples

        paths, _ = self._epoch_shards(epoch)
        count_of = dict(zip(self.shards.paths, self.shards.counts))
        total = self.shards.total
        start = total * self.rank // self.world_size
        end = total * (self.rank + 1) // self.world_size
        stop = min(end, start + (batch_index + 4) * self.batch_size + self.shuffle_buffer)
        position = 0
        for path in paths:
            if position >= stop:
                break
            if position + count_of[path] <= start:
                position += count_of[path]
                continue
            for sample in iter_shard_samples(path):
                data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
                if data is None:
                    continue
                if start <= position < stop:
                    try:
                        inspect_image(data)
                    except BadImage as bad:
                        return path, sample["__key__"], str(bad)
                position += 1
        return None

    def _failure(self, err: Exception, epoch: int, batch_index: int) -> RuntimeError:
        text = str(err)
        where = f"one of the shards {self.shards.paths[:8]}"
        if "decoders.image" in text:
            try:
                found = self.locate_bad_image(epoch, batch_index)
            except (BadShardError, OSError) as scan_err:
                found, where = None, f"{where} (scan failed: {scan_err})"
            if found is not None:
                where = f"shard {found[0]}, sample {found[1]!r} ({found[2]})"
            return RuntimeError(
                f"DALI could not decode an image in epoch {epoch} on rank {self.rank}: {where}. "
                "DALI cannot skip undecodable images; rebuild the shards with `equirecon data "
                "build` (it leaves bad files out) or use data.backend=torch (it skips them). "
                "DALI's message:\n" + text
            )
        return RuntimeError(f"DALI pipeline failed in epoch {epoch} reading {where}:\n{text}")

    def _make_batch(self, outputs: dict[str, torch.Tensor], epoch: int, index: int) -> Batch:
        batch_size = self.batch_size
        global_crops = torch.stack([outputs["global_0"], outputs["global_1"]])
        if self.n_local:
            local_crops = torch.stack([outputs[f"local_{i}"] for i in range(self.n_local)])
        else:
            local_crops = torch.empty(
                0, batch_size, 3, self.local_size, self.local_size, device=global_crops.device
            )
        generator = torch.Generator().manual_seed(
            derive_seed(_TAG_MASKS, self.seed, epoch, self.rank, index)
        )
        masks = make_batch_masks(
            2 * batch_size,
            (self.mask_generator.height, self.mask_generator.width),
            mask_prob=self.mask_prob,
            ratio=self.mask_ratio,
            generator=generator,
            mask_generator=self.mask_generator,
        ).view(2, batch_size, -1)
        return Batch(global_crops=global_crops, local_crops=local_crops, masks=masks, labels=None)

    def __iter__(self) -> Iterator[Batch]:
        import_dali()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        while True:
            epoch = self._epoch
            total = self.batches_per_epoch()
            if total == 0:
                raise ValueError(
                    f"batch_size {self.batch_size} x world_size {self.world_size} is larger than "
                    f"the {self.shards.total} samples of {len(self.shards.paths)} shards; use a "
                    "smaller batch"
                )
            try:
                pipe = self.build_pipeline(epoch)
                batches = DALIGenericIterator(
                    pipe,
                    self._output_names(),
                    reader_name=READER_NAME,
                    last_batch_policy=LastBatchPolicy.DROP,
                    auto_reset=False,
                )
            except RuntimeError as err:
                raise self._failure(err, epoch, 0) from err
            for index in range(total):
                try:
                    outputs = next(batches)[0]
                except StopIteration:
                    raise RuntimeError(
                        f"DALI ended epoch {epoch} after {index} of {total} batches"
                    ) from None
                except RuntimeError as err:
                    raise self._failure(err, epoch, index) from err
                if index < self._batches_in_epoch:
                    continue  # resuming: replay the batches already yielded
                self._batches_in_epoch = index + 1
                if self._batches_in_epoch >= total:
                    self._epoch, self._batches_in_epoch = epoch + 1, 0
                yield self._make_batch(outputs, epoch, index)
            del batches, pipe


def make_dali_loader(
    path: str,
    *,
    batch_size: int,
    num_threads: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    global_size: int,
    local_size: int,
    n_local: int,
    patch_size: int,
    global_scale: tuple[float, float] = (0.32, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.32),
    mask_prob: float = 0.5,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    device_id: int | None = None,
    subset: str = "natural",
    split: str = "train",
    shuffle_buffer: int = 1024,
    arithmetic_contrast: bool | None = None,
) -> DaliTrainLoader:
    """The DALI training reader of one rank (the arguments of ``build_train_loader``).

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        num_threads: DALI CPU threads.
        device_id: CUDA device for ``mixed`` decoding and GPU augmentation; None = CPU only.
        shuffle_buffer: samples in DALI's shuffle buffer (``initial_fill``).
        arithmetic_contrast: see :func:`multicrop_view` (default: on GPU only).

    Raises:
        ImportError: DALI is missing (the message names the pip package).
    """
    import_dali()
    shards = resolve_shards(path, subset=subset, split=split)
    index_dir = tempfile.TemporaryDirectory(prefix="equirecon-dali-idx-")
    prepared = prepare_shards(shards, index_dir.name)
    return DaliTrainLoader(
        prepared,
        batch_size=batch_size,
        num_threads=num_threads,
        seed=seed,
        rank=rank,
        world_size=world_size,
        global_size=global_size,
        local_size=local_size,
        n_local=n_local,
        patch_size=patch_size,
        global_scale=global_scale,
        local_scale=local_scale,
        mask_prob=mask_prob,
        mask_ratio=mask_ratio,
        device_id=device_id,
        shuffle_buffer=shuffle_buffer,
        arithmetic_contrast=arithmetic_contrast,
        index_dir=index_dir,
    )


def build_dali_loader(cfg: Any, dist_info: Any, patch_size: int) -> DaliTrainLoader:
    """The DALI reader for a run (``cfg``: :class:`equirecon.config.Config`).

    ``data.num_workers`` sets the DALI threads (at least 1). Decoding is ``mixed`` on this
    rank's GPU when CUDA is available, else on the CPU (``device_id=None``).
    """
    data = cfg.data
    if getattr(data, "augmentations", "all") != "all":
        raise ValueError(
            f"data.augmentations={data.augmentations!r} is only implemented by "
            "data.backend=torch; use it, or data.augmentations=all"
        )
    device_id = None
    if torch.cuda.is_available():
        device = getattr(dist_info, "device", None)
        if device is not None and device.type == "cuda" and device.index is not None:
            device_id = device.index
        else:
            device_id = torch.cuda.current_device()
    from data_pipeline.reader import multicrop_kwargs

    return make_dali_loader(
        data.path,
        num_threads=data.num_workers,
        device_id=device_id,
        **multicrop_kwargs(cfg, dist_info.rank, dist_info.world_size, patch_size),
    )


__all__ = [
    "DALI_MISSING",
    "DaliShards",
    "DaliTrainLoader",
    "build_dali_loader",
    "import_dali",
    "make_dali_loader",
    "multicrop_view",
    "prepare_shards",
]
