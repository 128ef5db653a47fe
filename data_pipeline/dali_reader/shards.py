"""The shards DALI reads: each with its DALI index file (found beside it or generated), and
their image-sample counts; unreadable shards are left out, damaged ones read up to the damage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.dali_index import (
    dali_index_entries,
    index_mismatch,
    read_dali_index,
    write_dali_index,
)
from data_pipeline.decode import IMAGE_EXTENSIONS
from data_pipeline.shards import BadShardError, scan_shard

logger = logging.getLogger(__name__)

DALI_MISSING = (
    "data.backend=dali needs NVIDIA DALI, which is not installed: "
    "pip install nvidia-dali-cuda130 (CUDA 13; nvidia-dali-cuda120 for CUDA 12 drivers), "
    "or use data.backend=torch"
)


def import_dali() -> Any:
    """``nvidia.dali``, or an ImportError that names the package to install."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as err:
        raise ImportError(DALI_MISSING) from err
    return dali


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

    A shard's index is ``<shard without .tar>.idx`` next to it when that file exists and is the
    index of this tar (`data_pipeline.dali_index.index_mismatch`: its sidecar's tar name, size
    and mtime, or the tar headers at its offsets); otherwise one is generated into ``index_dir``
    (with a warning when the index beside it does not match the tar). A damaged shard
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
            stale = index_mismatch(shard, beside) if beside.is_file() else "no index"
            if stale is None:
                index = beside
            else:
                index = Path(index_dir) / f"{number:06d}-{shard.stem}.idx"
                try:
                    write_dali_index(shard, index)
                    if beside.is_file():  # a damaged shard gets the warning below instead
                        logger.warning(
                            "data.backend=dali: %s does not fit %s (%s); indexed the shard anew",
                            beside.name,
                            shard,
                            stale,
                        )
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


__all__ = ["DALI_MISSING", "DaliShards", "import_dali", "prepare_shards"]
