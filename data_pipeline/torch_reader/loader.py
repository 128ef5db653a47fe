"""`TrainLoader`: the torch reader's infinite, exactly resumable iterable of ``Batch``es.

See `data_pipeline.torch_reader` for data order, randomness and resume.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_pipeline.augment import MultiCropAugmentation
from data_pipeline.batch import Batch
from data_pipeline.masking import GlobalCropMasks
from data_pipeline.multicrop import MultiCrop
from data_pipeline.seeds import derive_seed
from data_pipeline.shards import resolve_shards
from data_pipeline.torch_reader.batches import EpochJob, MultiCropBatches
from data_pipeline.torch_reader.stream import ShardSampleStream, short_list

logger = logging.getLogger(__name__)


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
        self.masks = GlobalCropMasks(augment.global_size, patch_size, mask_prob, mask_ratio)
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
            job = EpochJob(
                epoch=epoch,
                batches_per_worker=per_worker,
                rotation=self._batches_in_epoch % self.stream.num_workers,
                resume=dict(self._workers),
            )
            loader = DataLoader(
                MultiCropBatches(self, job),
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
                        f"{short_list(self.stream.all_shards)} (stats: {self.stats})"
                    )
                logger.warning("epoch %d ended after %d batches, not %d", epoch, yielded, total)
                self._epoch, self._batches_in_epoch, self._workers = epoch + 1, 0, {}


def build_train_loader(
    path: str,
    *,
    num_workers: int,
    subset: str = "natural",
    split: str = "train",
    with_labels: bool = False,
    pin_memory: bool = False,
    shuffle_buffer: int = 1000,
    augmentations: str = "all",
    **crops: Any,
) -> TrainLoader:
    """The training reader of one rank.

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        num_workers: DataLoader worker processes (0 = in-process).
        subset: subset of a dataset root (``natural``, ``labelled``).
        split: split of a dataset root (``train``, ``val``).
        with_labels: read ``cls`` labels (samples without one are skipped).
        pin_memory: pin batches (only when CUDA is available).
        shuffle_buffer: samples in each worker's shuffle buffer.
        augmentations: ``"all"`` (the base method's) or ``"rot"`` (random rotations only), see
            :class:`~data_pipeline.augment.MultiCropAugmentation`.
        crops: the fields of :class:`~data_pipeline.multicrop.MultiCrop` (``batch_size``,
            ``seed`` of order, augmentations and masks, ``rank``, ``world_size``, crop sizes
            and scales, ``patch_size``, ``mask_prob``, ``mask_ratio``).

    Returns:
        An infinite, exactly resumable iterable of :class:`Batch` with global crops
        (2, B, 3, G, G), local crops (L, B, 3, l, l), masks (2, B, N) and labels (B,) or None.
    """
    spec = MultiCrop(**crops)
    shards = resolve_shards(path, subset=subset, split=split)
    stream = ShardSampleStream(
        shards,
        seed=spec.seed,
        rank=spec.rank,
        world_size=spec.world_size,
        num_workers=num_workers,
        shuffle_buffer=shuffle_buffer,
    )
    augment = MultiCropAugmentation(
        spec.global_size,
        spec.local_size,
        spec.n_local,
        spec.global_scale,
        spec.local_scale,
        augmentations=augmentations,
    )
    return TrainLoader(
        stream,
        augment,
        batch_size=spec.batch_size,
        num_workers=num_workers,
        seed=spec.seed,
        patch_size=spec.patch_size,
        mask_prob=spec.mask_prob,
        mask_ratio=spec.mask_ratio,
        with_labels=with_labels,
        pin_memory=pin_memory,
    )


__all__ = ["TrainLoader", "build_train_loader"]
