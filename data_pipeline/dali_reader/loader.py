"""`DaliTrainLoader`: the DALI reader's infinite iterable of ``Batch``es, one pipeline per epoch.

See `data_pipeline.dali_reader` for order, resume (best effort) and bad-data handling.
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from data_pipeline.batch import Batch
from data_pipeline.dali_reader.failures import pipeline_failure
from data_pipeline.dali_reader.pipeline import READER_NAME, build_pipeline, output_names
from data_pipeline.dali_reader.shards import DaliShards, import_dali, prepare_shards
from data_pipeline.multicrop import MultiCrop
from data_pipeline.seeds import mask_seed
from data_pipeline.shards import resolve_shards


class _Stats(dict):
    """A stats dict that can also be called (``loader.stats`` and ``loader.stats()`` agree)."""

    def __call__(self) -> _Stats:
        return self


class DaliTrainLoader:
    """Infinite iterable over multi-crop :class:`Batch`es made by DALI, epoch after epoch.

    The same interface as :class:`data_pipeline.torch_reader.loader.TrainLoader`; see
    `data_pipeline.dali_reader` for order, resume (best effort) and bad-data handling. Build it
    with :func:`make_dali_loader` (a run: ``data.backend=dali``, `data_pipeline.backends`).
    """

    def __init__(
        self,
        shards: DaliShards,
        crops: MultiCrop,
        *,
        num_threads: int,
        device_id: int | None = None,
        shuffle_buffer: int = 1024,
        arithmetic_contrast: bool | None = None,
        index_dir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        if crops.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {crops.batch_size}")
        if not 0 <= crops.rank < crops.world_size:
            raise ValueError(f"rank must be in [0, {crops.world_size}), got {crops.rank}")
        if not 1 <= crops.patch_size <= crops.global_size:
            raise ValueError(f"patch_size {crops.patch_size} must be in [1, {crops.global_size}]")
        if not shards.paths:
            raise RuntimeError(f"no readable shard for DALI (unreadable: {shards.bad_shards})")
        self.shards = shards
        self.crops = crops
        self.num_threads = max(1, num_threads)
        self.masks = crops.masks()
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
            f"batch_size={self.crops.batch_size}, decode={self.decode_device}, "
            f"rank={self.crops.rank}/{self.crops.world_size})"
        )

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._epoch

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches every rank yields per epoch: ``floor(total / world_size) // batch_size``."""
        return (self.shards.total // self.crops.world_size) // self.crops.batch_size

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
            "seed": self.crops.seed,
            "batch_size": self.crops.batch_size,
            "world_size": self.crops.world_size,
            "rank": self.crops.rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from ``state`` (call before iterating); see the module docstring.

        With another seed, batch size or world size it warns and starts the next epoch.
        """
        epoch, done = int(state["epoch"]), int(state.get("batches_in_epoch", 0))
        same = all(
            state.get(key, current) == current
            for key, current in (
                ("seed", self.crops.seed),
                ("batch_size", self.crops.batch_size),
                ("world_size", self.crops.world_size),
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

    def build_pipeline(self, epoch: int) -> Any:
        """The (built) DALI pipeline of ``epoch`` on this rank."""
        return build_pipeline(self, epoch)

    def _make_batch(self, outputs: dict[str, torch.Tensor], epoch: int, index: int) -> Batch:
        batch_size = self.crops.batch_size
        global_crops = torch.stack([outputs["global_0"], outputs["global_1"]])
        if self.crops.n_local:
            local_crops = torch.stack([outputs[f"local_{i}"] for i in range(self.crops.n_local)])
        else:
            local_crops = torch.empty(
                0,
                batch_size,
                3,
                self.crops.local_size,
                self.crops.local_size,
                device=global_crops.device,
            )
        generator = torch.Generator().manual_seed(
            mask_seed(self.crops.seed, epoch, self.crops.rank, index)
        )
        masks = self.masks(batch_size, generator)
        return Batch(global_crops=global_crops, local_crops=local_crops, masks=masks, labels=None)

    def __iter__(self) -> Iterator[Batch]:
        import_dali()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        while True:
            epoch = self._epoch
            total = self.batches_per_epoch()
            if total == 0:
                raise ValueError(
                    f"batch_size {self.crops.batch_size} x world_size {self.crops.world_size} is "
                    f"larger than the {self.shards.total} samples of {len(self.shards.paths)} shards; use a "
                    "smaller batch"
                )
            try:
                pipe = self.build_pipeline(epoch)
                batches = DALIGenericIterator(
                    pipe,
                    output_names(self.crops.n_local),
                    reader_name=READER_NAME,
                    last_batch_policy=LastBatchPolicy.DROP,
                    auto_reset=False,
                )
            except RuntimeError as err:
                raise pipeline_failure(self, err, epoch, 0) from err
            for index in range(total):
                try:
                    outputs = next(batches)[0]
                except StopIteration:
                    raise RuntimeError(
                        f"DALI ended epoch {epoch} after {index} of {total} batches"
                    ) from None
                except RuntimeError as err:
                    raise pipeline_failure(self, err, epoch, index) from err
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
    num_threads: int,
    device_id: int | None = None,
    subset: str = "natural",
    split: str = "train",
    shuffle_buffer: int = 1024,
    arithmetic_contrast: bool | None = None,
    **crops: Any,
) -> DaliTrainLoader:
    """The DALI training reader of one rank (the arguments of ``build_train_loader``).

    Args:
        path: dataset root, folder of shards or glob (see :func:`resolve_shards`).
        num_threads: DALI CPU threads.
        device_id: CUDA device for ``mixed`` decoding and GPU augmentation; None = CPU only.
        subset, split: subset and split of a dataset root.
        shuffle_buffer: samples in DALI's shuffle buffer (``initial_fill``).
        arithmetic_contrast: see :func:`multicrop_view` (default: on GPU only).
        crops: the fields of :class:`~data_pipeline.multicrop.MultiCrop`.

    Raises:
        ImportError: DALI is missing (the message names the pip package).
    """
    spec = MultiCrop(**crops)
    import_dali()
    shards = resolve_shards(path, subset=subset, split=split)
    index_dir = tempfile.TemporaryDirectory(prefix="equirecon-dali-idx-")
    prepared = prepare_shards(shards, index_dir.name)
    return DaliTrainLoader(
        prepared,
        spec,
        num_threads=num_threads,
        device_id=device_id,
        shuffle_buffer=shuffle_buffer,
        arithmetic_contrast=arithmetic_contrast,
        index_dir=index_dir,
    )


__all__ = ["DaliTrainLoader", "make_dali_loader"]
