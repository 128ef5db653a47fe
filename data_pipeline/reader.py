"""The torch reader: WebDataset shards -> decoded, augmented multi-crop ``Batch``es (CPU decode).

Data order. Epoch ``e`` permutes the shard list with an RNG seeded by ``(seed, e)`` and deals
the shards round-robin to the ``world_size * num_workers`` streams, stream ``rank * num_workers +
worker`` (with fewer shards than streams the concatenated samples are cut into equal contiguous
index ranges instead, so nothing is duplicated or lost). Each stream shuffles its samples with a
bounded buffer seeded by ``(seed, e, rank, worker)``. Every worker makes the same number of
batches per epoch (the minimum over all streams of all ranks, from the shard sample counts), so
``DataLoader`` yields them strictly round-robin and every rank has the same epoch length.

Randomness. Augmentations of a worker's ``j``-th batch are seeded by ``(seed, e, rank, worker,
j)``; the iBOT masks of the epoch's ``i``-th batch by ``(seed, e, rank, i)`` (rank included so
ranks do not share masks). Hence batches are a pure function of these numbers, which is what
makes exact resume possible: :meth:`TrainLoader.state_dict` records, per worker, the batches
yielded and the raw stream position, and a restored loader skips those raw samples without
decoding them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.augment import MultiCropAugmentation
from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD, Batch
from data_pipeline.masking import BlockMaskGenerator, make_batch_masks
from data_pipeline.shards import (
    BadShardError,
    Sample,
    ShardScan,
    iter_shard_samples,
    resolve_shards,
    scan_shard,
)
from equirecon.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Domain tags keep the seeds of different random streams apart.
_TAG_SHARD_ORDER = 1
_TAG_SHUFFLE = 2
_TAG_AUGMENT = 3
_TAG_MASKS = 4


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (any sign)."""
    entropy = [int(p) % (1 << 64) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class ShardRange:
    """Samples ``[start, stop)`` of one shard."""

    path: str
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


class SkipSample(Exception):
    """A sample that cannot be used; ``args[0]`` is the reason (a stats key)."""


def decode_image(sample: Sample) -> Image.Image:
    """The sample's first image member (jpg, jpeg, png, webp) decoded to RGB.

    Raises:
        SkipSample: ``no_image`` (no image member) or ``decode_error`` (undecodable/truncated).
    """
    for ext in IMAGE_EXTENSIONS:
        data = sample.get(ext)
        if data is not None:
            break
    else:
        raise SkipSample("no_image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_rgb(image)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, bomb errors ...
        raise SkipSample("decode_error") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL image; transparency (RGBA, LA, palette with a transparent index) is
    composited over white, as a viewer shows it (a plain ``convert("RGB")`` keeps whatever
    colour the transparent pixels store, usually black)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode_label(sample: Sample) -> int:
    """The ``cls`` member as an int.

    Raises:
        SkipSample: ``missing_cls`` or ``bad_cls`` (not an integer).
    """
    data = sample.get("cls")
    if data is None:
        raise SkipSample("missing_cls")
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise SkipSample("bad_cls") from err


def _buffer_shuffle(
    samples: Iterator[Sample], buffer_size: int, rng: np.random.Generator
) -> Iterator[Sample]:
    """Shuffles a stream with a bounded buffer of ``buffer_size`` samples."""
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        j = int(rng.integers(buffer_size))
        yield buffer[j]
        buffer[j] = sample
    order = rng.permutation(len(buffer))
    for j in order:
        yield buffer[int(j)]


class ShardSampleStream:
    """Raw (undecoded) samples of a shard set, split over ranks and workers, per epoch.

    Shards are validated and counted from their tar headers once (cached). A damaged shard
    (truncated, a broken header, not a tar) is logged and counted under ``bad_shard``; its
    complete samples before the damage are still read, the rest are counted under
    ``damaged_shard_samples`` (exactly when the shard has its DALI index, else at least 1).

    Args:
        shards: shard paths.
        seed: base seed of the shard order and of the shuffle buffers.
        rank: this process's rank.
        world_size: number of ranks.
        num_workers: data workers per rank (0 counts as 1: in-process).
        shuffle_buffer: samples in each stream's shuffle buffer (0 or 1 = no shuffling).
        shuffle: permute shards and shuffle samples; False reads shards in the given order.

    Attributes:
        skipped: samples (and bad shards) skipped so far by this object.
        skipped_by_reason: the same, per reason (``bad_shard`` counts shards; the others count
            samples: ``damaged_shard_samples``, ``no_image``, ``decode_error``, ``missing_cls``,
            ``bad_cls``).
        bad_shards: paths of the damaged or unreadable shards seen.

    Raises:
        RuntimeError: no shard is readable; the message names the shards.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 1,
        shuffle_buffer: int = 1000,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer = shuffle_buffer
        self.shuffle = shuffle
        self.skipped = 0
        self.skipped_by_reason: Counter[str] = Counter()
        self.bad_shards: list[str] = []
        self.all_shards = list(shards)
        self.shards: list[str] = []
        self.counts: list[int] = []
        for path in self.all_shards:
            try:
                scan = scan_shard(path)
            except OSError as err:
                self._bad_shard(path, err)
                continue
            if scan.damage is not None:
                self._damaged_shard(path, scan)
            if scan.samples > 0:
                self.shards.append(path)
                self.counts.append(scan.samples)
        if not self.shards:
            raise DataError(
                f"no readable samples in any of the {len(self.all_shards)} shards "
                f"{_short_list(self.all_shards)} (skipped: {dict(self.skipped_by_reason)})"
            )

    @property
    def num_streams(self) -> int:
        """Streams over all ranks: ``world_size * num_workers``."""
        return self.world_size * self.num_workers

    def stream_index(self, worker: int, rank: int | None = None) -> int:
        """Global index of the stream of (rank, worker)."""
        return (self.rank if rank is None else rank) * self.num_workers + worker

    def count_skip(self, reason: str) -> None:
        """Records one skipped sample (or shard) under ``reason``."""
        self.skipped += 1
        self.skipped_by_reason[reason] += 1

    def _bad_shard(self, path: str, err: Exception) -> None:
        logger.warning("skipping unreadable shard %s: %s", path, err)
        self.bad_shards.append(path)
        self.count_skip("bad_shard")

    def _damaged_shard(self, path: str, scan: ShardScan) -> None:
        """A shard damaged part-way: its complete samples before the damage are read, the rest
        counted under ``damaged_shard_samples`` (from its index when it has one)."""
        known = "" if scan.expected is not None else "at least "
        logger.warning(
            "%s; using its %d readable samples, %s%d lost",
            scan.damage,
            scan.samples,
            known,
            scan.lost,
        )
        self.bad_shards.append(path)
        self.count_skip("bad_shard")
        if scan.lost:
            self.skipped += scan.lost
            self.skipped_by_reason["damaged_shard_samples"] += scan.lost

    def plan(self, epoch: int) -> list[list[ShardRange]]:
        """Sample ranges of every stream (all ranks) in epoch ``epoch``; index = stream index."""
        n_streams = self.num_streams
        if self.shuffle:
            rng = np.random.default_rng(derive_seed(_TAG_SHARD_ORDER, self.seed, epoch))
            order = rng.permutation(len(self.shards)).tolist()
        else:
            order = list(range(len(self.shards)))
        if len(self.shards) >= n_streams:
            return [
                [ShardRange(self.shards[i], 0, self.counts[i]) for i in order[s::n_streams]]
                for s in range(n_streams)
            ]
        # Fewer shards than streams: cut the concatenated samples into equal contiguous ranges.
        total = sum(self.counts[i] for i in order)
        bounds = [s * total // n_streams for s in range(n_streams + 1)]
        plans: list[list[ShardRange]] = [[] for _ in range(n_streams)]
        offset = 0
        for i in order:
            shard_lo, shard_hi = offset, offset + self.counts[i]
            for s in range(n_streams):
                lo, hi = max(bounds[s], shard_lo), min(bounds[s + 1], shard_hi)
                if lo < hi:
                    plans[s].append(ShardRange(self.shards[i], lo - offset, hi - offset))
            offset = shard_hi
        return plans

    def stream_lengths(self, epoch: int) -> list[int]:
        """Planned samples of every stream (all ranks) in epoch ``epoch``."""
        return [sum(r.count for r in ranges) for ranges in self.plan(epoch)]

    def _read(self, ranges: list[ShardRange]) -> Iterator[Sample]:
        for shard_range in ranges:
            read = 0
            try:
                for sample in iter_shard_samples(
                    shard_range.path, shard_range.start, shard_range.stop
                ):
                    read += 1
                    yield sample
            except BadShardError as err:  # damaged since it was scanned: the rest is lost
                self._bad_shard(shard_range.path, err)
                if shard_range.count > read:
                    self.skipped += shard_range.count - read
                    self.skipped_by_reason["damaged_shard_samples"] += shard_range.count - read

    def iter_raw(self, epoch: int, worker: int = 0, skip: int = 0) -> Iterator[Sample]:
        """Raw samples of this rank's stream ``worker`` in epoch ``epoch``, shuffled.

        Args:
            epoch: epoch number (selects shard order and shuffle).
            worker: worker index on this rank (0 when reading in-process).
            skip: drop this many samples first (their bytes are read, never decoded).
        """
        if not 0 <= worker < self.num_workers:
            raise ValueError(f"worker must be in [0, {self.num_workers}), got {worker}")
        ranges = self.plan(epoch)[self.stream_index(worker)]
        samples = self._read(ranges)
        if self.shuffle and self.shuffle_buffer > 1:
            seed = derive_seed(_TAG_SHUFFLE, self.seed, epoch, self.rank, worker)
            samples = _buffer_shuffle(samples, self.shuffle_buffer, np.random.default_rng(seed))
        for position, sample in enumerate(samples):
            if position >= skip:
                yield sample

    def stream_shards(self, epoch: int, worker: int) -> list[str]:
        """Shard paths read by this rank's stream ``worker`` in ``epoch`` (for messages)."""
        return [r.path for r in self.plan(epoch)[self.stream_index(worker)]]


def _short_list(paths: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return f"[{shown}{', ...' if len(paths) > limit else ''}]"


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Runs torch ops of small crops single-threaded (much faster than thread-pool wake-ups)."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


@dataclass
class _EpochJob:
    """What one epoch's workers must produce (pickled into each worker)."""

    epoch: int
    batches_per_worker: int
    rotation: int  # DataLoader worker w plays logical worker (w + rotation) % num_workers
    resume: dict[int, tuple[int, int]]  # logical worker -> (batches done, raw position)


class _MultiCropBatches(IterableDataset):
    """Yields ``(tensors, meta)`` per batch; batching happens inside the worker."""

    def __init__(self, loader: TrainLoader, job: _EpochJob) -> None:
        super().__init__()
        self.stream = loader.stream
        self.augment = loader.augment
        self.mask_generator = loader.mask_generator
        self.batch_size = loader.batch_size
        self.with_labels = loader.with_labels
        self.mask_prob = loader.mask_prob
        self.mask_ratio = loader.mask_ratio
        self.seed = loader.seed
        self.job = job

    def _raw_cycle(self, worker: int, position: int) -> Iterator[Sample]:
        """The worker's raw stream, repeated if it runs short, from raw ``position``."""
        epoch = self.job.epoch
        skip = position
        while True:
            seen = 0
            for sample in self.stream.iter_raw(epoch, worker, skip=0):
                seen += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield sample
            if seen == 0:
                shards = self.stream.stream_shards(epoch, worker)
                raise RuntimeError(
                    f"epoch {epoch}: no sample could be read from shards {_short_list(shards)} "
                    f"(skipped: {dict(self.stream.skipped_by_reason)})"
                )

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor | None], dict[str, Any]]]:
        info = get_worker_info()
        n_workers = self.stream.num_workers
        worker = ((info.id if info is not None else 0) + self.job.rotation) % n_workers
        epoch, rank = self.job.epoch, self.stream.rank
        first_batch, position = self.job.resume.get(worker, (0, 0))
        raw = self._raw_cycle(worker, position)
        planned = max(1, self.stream.stream_lengths(epoch)[self.stream.stream_index(worker)])
        reported = Counter(self.stream.skipped_by_reason)
        reported_bad = len(self.stream.bad_shards)
        for j in range(first_batch, self.job.batches_per_worker):
            images, labels, keys = [], [], []
            consecutive_bad = 0
            while len(images) < self.batch_size:
                sample = next(raw)
                position += 1
                try:
                    image = decode_image(sample)
                    label = decode_label(sample) if self.with_labels else -1
                except SkipSample as skip:
                    self.stream.count_skip(skip.args[0])
                    consecutive_bad += 1
                    if consecutive_bad > planned:
                        shards = self.stream.stream_shards(epoch, worker)
                        raise RuntimeError(
                            f"epoch {epoch}: no usable sample in shards {_short_list(shards)} "
                            f"(skipped: {dict(self.stream.skipped_by_reason)})"
                        ) from None
                    continue
                consecutive_bad = 0
                images.append(image)
                labels.append(label)
                keys.append(sample["__key__"])
            tensors = self._make_batch(images, labels, epoch, rank, worker, j, n_workers)
            counts = Counter(self.stream.skipped_by_reason)
            meta = {
                "epoch": epoch,
                "worker": worker,
                "batch": j,
                "position": position,
                "keys": keys,
                "skipped": dict(counts - reported),
                "bad_shards": self.stream.bad_shards[reported_bad:],
            }
            reported, reported_bad = counts, len(self.stream.bad_shards)
            yield tensors, meta

    def _make_batch(
        self,
        images: list[Image.Image],
        labels: list[int],
        epoch: int,
        rank: int,
        worker: int,
        j: int,
        n_workers: int,
    ) -> dict[str, torch.Tensor | None]:
        """Augments, stacks and masks one batch (pure function of its seeds)."""
        batch_size, aug = len(images), self.augment
        with _single_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(_TAG_AUGMENT, self.seed, epoch, rank, worker, j))
            crops = [aug(image) for image in images]
            global_crops = torch.stack([torch.stack([c[0][i] for c in crops]) for i in range(2)])
            if aug.n_local > 0:
                local_crops = torch.stack(
                    [torch.stack([c[1][i] for c in crops]) for i in range(aug.n_local)]
                )
            else:
                local_crops = torch.empty(0, batch_size, 3, aug.local_size, aug.local_size)
            batch_index = j * n_workers + worker  # position of this batch in the epoch
            generator = torch.Generator().manual_seed(
                derive_seed(_TAG_MASKS, self.seed, epoch, rank, batch_index)
            )
            masks = make_batch_masks(
                2 * batch_size,
                (self.mask_generator.height, self.mask_generator.width),
                mask_prob=self.mask_prob,
                ratio=self.mask_ratio,
                generator=generator,
                mask_generator=self.mask_generator,
            ).view(2, batch_size, -1)
        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": masks,
            "labels": torch.tensor(labels, dtype=torch.int64) if self.with_labels else None,
        }


class TrainLoader:
    """Infinite iterable over multi-crop :class:`Batch`es, epoch after epoch, exactly resumable.

    Build it with :func:`build_train_loader`. Iterate it with one iterator at a time.

    Attributes:
        last_keys: sample keys of the last yielded batch (debugging, tests).
    """

    def __init__(
        self,
        stream: ShardSampleStream,
        augment: MultiCropAugmentation,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        patch_size: int,
        mask_prob: float,
        mask_ratio: tuple[float, float],
        with_labels: bool,
        pin_memory: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 1 <= patch_size <= augment.global_size:
            raise ValueError(f"patch_size {patch_size} must be in [1, {augment.global_size}]")
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        self.stream = stream
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.with_labels = with_labels
        self.mask_prob = mask_prob
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        grid_side = augment.global_size // patch_size
        self.mask_generator = BlockMaskGenerator((grid_side, grid_side), ratio=self.mask_ratio)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.last_keys: list[str] = []
        self._epoch = 0
        self._batches_in_epoch = 0
        self._workers: dict[int, tuple[int, int]] = {}
        self._skipped: Counter[str] = Counter(stream.skipped_by_reason)
        self._bad_shards: set[str] = set(stream.bad_shards)

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._epoch

    def batches_per_worker(self, epoch: int) -> int:
        """Batches each worker makes in ``epoch`` (equal for all workers of all ranks)."""
        return min(self.stream.stream_lengths(epoch)) // self.batch_size

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches this rank yields in ``epoch`` (default: the current one)."""
        epoch = self._epoch if epoch is None else epoch
        return self.batches_per_worker(epoch) * self.stream.num_workers

    @property
    def stats(self) -> dict[str, Any]:
        """Skipped samples seen so far: ``{"skipped": int, "by_reason": {...}, "bad_shards"}``.

        Best effort: samples skipped inside worker processes are reported with the next batch
        that worker yields, so skips after a worker's last yielded batch are not counted.
        ``bad_shard`` counts shards: those found unreadable when the loader was built (left out
        for good), plus each pass that hits a shard which became unreadable later.
        """
        by_reason = {k: v for k, v in sorted(self._skipped.items()) if v > 0}
        return {
            "skipped": sum(by_reason.values()),
            "skipped_samples": sum(v for k, v in by_reason.items() if k != "bad_shard"),
            "skipped_shards": len(self._bad_shards),
            "by_reason": by_reason,
            "bad_shards": sorted(self._bad_shards),
        }

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded batch (JSON-serializable)."""
        return {
            "epoch": self._epoch,
            "batches_in_epoch": self._batches_in_epoch,
            "workers": {str(w): list(v) for w, v in sorted(self._workers.items())},
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_workers": self.stream.num_workers,
            "world_size": self.stream.world_size,
            "rank": self.stream.rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from ``state`` (call before iterating).

        With the same seed, batch size, workers and world size the loader yields exactly the
        batches an uninterrupted one would have; otherwise it warns and starts the next epoch.
        """
        same = all(
            state.get(key, current) == current
            for key, current in (
                ("seed", self.seed),
                ("batch_size", self.batch_size),
                ("num_workers", self.stream.num_workers),
                ("world_size", self.stream.world_size),
            )
        )
        epoch, done = int(state["epoch"]), int(state.get("batches_in_epoch", 0))
        if not same:
            warnings.warn(
                "data loader state was saved with another seed/batch size/worker count/world "
                f"size; resuming at the start of epoch {epoch + (done > 0)} instead of exactly",
                stacklevel=2,
            )
            self._epoch, self._batches_in_epoch, self._workers = epoch + (done > 0), 0, {}
            return
        self._epoch, self._batches_in_epoch = epoch, done
        self._workers = {
            int(w): (int(v[0]), int(v[1])) for w, v in state.get("workers", {}).items()
        }

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch = self._epoch
            per_worker = self.batches_per_worker(epoch)
            if per_worker == 0:
                smallest = min(self.stream.stream_lengths(epoch))
                raise ValueError(
                    f"batch_size {self.batch_size} is larger than the smallest of the "
                    f"{self.stream.num_streams} data streams ({smallest} samples in epoch {epoch}"
                    f" of {len(self.stream.shards)} shards); use a smaller batch or fewer workers"
                )
            total = per_worker * self.stream.num_workers
            job = _EpochJob(
                epoch=epoch,
                batches_per_worker=per_worker,
                rotation=self._batches_in_epoch % self.stream.num_workers,
                resume=dict(self._workers),
            )
            loader = DataLoader(
                _MultiCropBatches(self, job),
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=False,
                # Its own generator: the DataLoader then never draws from torch's global RNG.
                generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)),
            )
            yielded = 0
            batches = iter(loader)
            try:
                for tensors, meta in batches:
                    yielded += 1
                    self._skipped.update(meta["skipped"])
                    self._bad_shards.update(meta["bad_shards"])
                    self.last_keys = meta["keys"]
                    self._workers[meta["worker"]] = (meta["batch"] + 1, meta["position"])
                    self._batches_in_epoch += 1
                    if self._batches_in_epoch >= total:
                        self._epoch, self._batches_in_epoch, self._workers = epoch + 1, 0, {}
                    yield Batch(
                        global_crops=tensors["global_crops"],
                        local_crops=tensors["local_crops"],
                        masks=tensors["masks"],
                        labels=tensors["labels"],
                    )
            finally:
                # Stop the workers now. Left to the garbage collector (e.g. when an exception's
                # traceback holds the iterator) torch's shutdown can stall ~5 s per loader.
                shutdown = getattr(batches, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
            if self._epoch == epoch:  # the workers stopped early
                if yielded == 0 and self._batches_in_epoch == 0:
                    raise RuntimeError(
                        f"epoch {epoch} yielded no batch from shards "
                        f"{_short_list(self.stream.all_shards)} (stats: {self.stats})"
                    )
                logger.warning("epoch %d ended after %d batches, not %d", epoch, yielded, total)
                self._epoch, self._batches_in_epoch, self._workers = epoch + 1, 0, {}


def multicrop_kwargs(cfg: Any, rank: int, world_size: int, patch_size: int) -> dict[str, Any]:
    """Reader arguments shared by every backend, from a run config (`equirecon.config.Config`)."""
    d = cfg.data
    return {
        "batch_size": cfg.train.batch_size,
        "seed": cfg.train.seed,
        "rank": rank,
        "world_size": world_size,
        "global_size": d.global_size,
        "local_size": d.local_size,
        "n_local": d.n_local,
        "patch_size": patch_size,
        "global_scale": tuple(d.global_scale),
        "local_scale": tuple(d.local_scale),
        "mask_prob": cfg.method.mask_prob,
        "mask_ratio": tuple(cfg.method.mask_ratio),
    }


def build_train_loader(
    path: str,
    *,
    batch_size: int,
    num_workers: int,
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
    subset: str = "natural",
    split: str = "train",
    with_labels: bool = False,
    pin_memory: bool = False,
    shuffle_buffer: int = 1000,
    augmentations: str = "all",
) -> TrainLoader:
    """The training reader of one rank.

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        batch_size: images per batch on this rank.
        num_workers: DataLoader worker processes (0 = in-process).
        seed: base seed of order, augmentations and masks.
        rank: this process's rank.
        world_size: number of ranks.
        global_size: global crop side (pixels).
        local_size: local crop side (pixels).
        n_local: local crops per image.
        patch_size: ViT patch side (pixels); masks have ``(global_size // patch_size)**2`` cells.
        global_scale: area fraction range of global crops.
        local_scale: area fraction range of local crops.
        mask_prob: fraction of global crops that get an iBOT mask.
        mask_ratio: (min, max) masked fraction of a masked crop.
        subset: subset of a dataset root (``natural``, ``labelled``).
        split: split of a dataset root (``train``, ``val``).
        with_labels: read ``cls`` labels (samples without one are skipped).
        pin_memory: pin batches (only when CUDA is available).
        shuffle_buffer: samples in each worker's shuffle buffer.
        augmentations: ``"all"`` (the base method's) or ``"rot"`` (random rotations only), see
            :class:`~data_pipeline.augment.MultiCropAugmentation`.

    Returns:
        An infinite, exactly resumable iterable of :class:`Batch` with global crops
        (2, B, 3, G, G), local crops (L, B, 3, l, l), masks (2, B, N) and labels (B,) or None.
    """
    shards = resolve_shards(path, subset=subset, split=split)
    stream = ShardSampleStream(
        shards,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        shuffle_buffer=shuffle_buffer,
    )
    augment = MultiCropAugmentation(
        global_size, local_size, n_local, global_scale, local_scale, augmentations=augmentations
    )
    return TrainLoader(
        stream,
        augment,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        patch_size=patch_size,
        mask_prob=mask_prob,
        mask_ratio=mask_ratio,
        with_labels=with_labels,
        pin_memory=pin_memory,
    )


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def iter_images(
    path: str,
    subset: str,
    split: str,
    size: int,
    with_labels: bool,
    max_images: int | None = None,
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every decodable sample in shard order, resized and normalized, in batches.

    Only one batch of pixels is in memory at a time, so features of datasets far larger than
    memory (ImageNet) can be extracted (`evals.run`).

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        subset: subset of a dataset root.
        split: split of a dataset root.
        size: output side; shorter side resized to ``size`` (bicubic), then center-cropped.
        with_labels: also yield ``cls`` labels (samples without one are skipped).
        max_images: stop after this many images.
        batch_size: images per yielded batch (the last may hold fewer).

    Yields:
        images (B, 3, size, size) float32 ImageNet-normalized, labels (B,) int64 or None.

    Raises:
        RuntimeError: no decodable image at all.
    """
    shards = resolve_shards(path, subset=subset, split=split)
    stream = ShardSampleStream(shards, num_workers=1, shuffle=False)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images: list[torch.Tensor] = []
    labels: list[int] = []
    total = 0

    def batch() -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = torch.stack(images).float().div_(255.0).sub_(mean).div_(std)
        return pixels, (torch.tensor(labels, dtype=torch.int64) if with_labels else None)

    for sample in stream.iter_raw(0, 0):
        if max_images is not None and total >= max_images:
            break
        try:
            image = decode_image(sample)
            label = decode_label(sample) if with_labels else -1
        except SkipSample as skip:
            stream.count_skip(skip.args[0])
            continue
        pixels = np.asarray(_resize_center_crop(image, size), dtype=np.uint8)
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
        labels.append(label)
        total += 1
        if len(images) == batch_size:
            yield batch()
            images, labels = [], []
    if images:
        yield batch()
    if stream.skipped:
        logger.warning("iter_images(%s): skipped %s", path, dict(stream.skipped_by_reason))
    if not total:
        raise DataError(f"no decodable image in shards {_short_list(shards)}")


def load_images(
    path: str,
    subset: str,
    split: str,
    size: int,
    with_labels: bool,
    max_images: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every decodable sample in shard order, resized and normalized (no augmentation).

    Args: as :func:`iter_images`.

    Returns:
        images (N, 3, size, size) float32 ImageNet-normalized, labels (N,) int64 or None.
    """
    batches = list(iter_images(path, subset, split, size, with_labels, max_images))
    images = torch.cat([b[0] for b in batches])
    return images, (torch.cat([b[1] for b in batches]) if with_labels else None)


__all__ = [
    "IMAGE_EXTENSIONS",
    "ShardRange",
    "ShardSampleStream",
    "SkipSample",
    "TrainLoader",
    "build_train_loader",
    "decode_image",
    "decode_label",
    "derive_seed",
    "iter_images",
    "load_images",
]
