"""Raw (undecoded) samples of a shard set, split over ranks and workers, epoch by epoch.

See `data_pipeline.torch_reader` for the data order this implements.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from data_pipeline.seeds import TAG_SHARD_ORDER, TAG_SHUFFLE, derive_seed
from data_pipeline.shards import (
    BadShardError,
    Sample,
    ShardScan,
    iter_shard_samples,
    scan_shard,
)
from equirecon.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardRange:
    """Samples ``[start, stop)`` of one shard."""

    path: str
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


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
                f"{short_list(self.all_shards)} (skipped: {dict(self.skipped_by_reason)})"
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
            rng = np.random.default_rng(derive_seed(TAG_SHARD_ORDER, self.seed, epoch))
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
            seed = derive_seed(TAG_SHUFFLE, self.seed, epoch, self.rank, worker)
            samples = _buffer_shuffle(samples, self.shuffle_buffer, np.random.default_rng(seed))
        for position, sample in enumerate(samples):
            if position >= skip:
                yield sample

    def stream_shards(self, epoch: int, worker: int) -> list[str]:
        """Shard paths read by this rank's stream ``worker`` in ``epoch`` (for messages)."""
        return [r.path for r in self.plan(epoch)[self.stream_index(worker)]]


def short_list(paths: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` paths, for messages."""
    shown = ", ".join(paths[:limit])
    return f"[{shown}{', ...' if len(paths) > limit else ''}]"


__all__ = ["ShardRange", "ShardSampleStream", "short_list"]
