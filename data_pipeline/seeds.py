"""Seeds of the readers' random streams: one well-mixed seed per tuple of integers.

Every random choice a reader makes (shard order, shuffle buffer, augmentations, iBOT masks) is
drawn from a generator seeded by :func:`derive_seed` of a domain tag and the numbers that locate
the draw (seed, epoch, rank, worker, batch). The tags keep the streams apart; the torch reader
and the DALI reader use different tags for order, shuffle and augmentations, and the same one
for masks, so both backends draw the same masks for the same batch (:func:`mask_seed`).
"""

from __future__ import annotations

import numpy as np

# Domain tags of the torch reader (`data_pipeline.torch_reader`).
TAG_SHARD_ORDER = 1
TAG_SHUFFLE = 2
TAG_AUGMENT = 3
TAG_MASKS = 4  # shared by both readers
# Domain tags of the DALI reader (`data_pipeline.dali`).
TAG_DALI_SHARD_ORDER = 11
TAG_DALI_SHUFFLE = 12
TAG_DALI_AUGMENT = 13


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (any sign)."""
    entropy = [int(p) % (1 << 64) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def mask_seed(seed: int, epoch: int, rank: int, batch_index: int) -> int:
    """Seed of the iBOT masks of this rank's ``batch_index``-th batch of ``epoch`` (rank
    included so that ranks do not share masks); the same in every backend."""
    return derive_seed(TAG_MASKS, seed, epoch, rank, batch_index)


__all__ = ["derive_seed", "mask_seed"]
