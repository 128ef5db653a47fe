"""What one DataLoader worker makes of its raw stream: decoded, augmented, masked batches.

Batching happens inside the worker; each batch is a pure function of its seeds (see
`data_pipeline.torch_reader`), so a restored worker makes exactly the batches it would have.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.augment import MultiCropAugmentation
from data_pipeline.decode import SkipSample, decode_image, decode_label
from data_pipeline.masking import GlobalCropMasks
from data_pipeline.seeds import TAG_AUGMENT, derive_seed, mask_seed
from data_pipeline.shards import Sample
from data_pipeline.torch_reader.stream import ShardSampleStream, short_list


class WorkerSettings(Protocol):
    """What a worker's batches read of their loader (`torch_reader.loader.TrainLoader`)."""

    stream: ShardSampleStream
    augment: MultiCropAugmentation
    masks: GlobalCropMasks
    batch_size: int
    seed: int
    with_labels: bool


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
class EpochJob:
    """What one epoch's workers must produce (pickled into each worker)."""

    epoch: int
    batches_per_worker: int
    rotation: int  # DataLoader worker w plays logical worker (w + rotation) % num_workers
    resume: dict[int, tuple[int, int]]  # logical worker -> (batches done, raw position)


class MultiCropBatches(IterableDataset):
    """Yields ``(tensors, meta)`` per batch; batching happens inside the worker."""

    def __init__(self, loader: WorkerSettings, job: EpochJob) -> None:
        super().__init__()
        self.stream = loader.stream
        self.augment = loader.augment
        self.masks = loader.masks
        self.batch_size = loader.batch_size
        self.with_labels = loader.with_labels
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
                    f"epoch {epoch}: no sample could be read from shards {short_list(shards)} "
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
                            f"epoch {epoch}: no usable sample in shards {short_list(shards)} "
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
            torch.manual_seed(derive_seed(TAG_AUGMENT, self.seed, epoch, rank, worker, j))
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
                mask_seed(self.seed, epoch, rank, batch_index)
            )
            masks = self.masks(batch_size, generator)
        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": masks,
            "labels": torch.tensor(labels, dtype=torch.int64) if self.with_labels else None,
        }


__all__ = ["EpochJob", "MultiCropBatches"]
