"""A failed DALI pipeline as a message that names the shard and sample: DALI cannot skip an
undecodable image, so its decoder error is traced back to the first one PIL cannot decode."""

from __future__ import annotations

from data_pipeline.dali_reader.pipeline import PipelineSettings, epoch_shards
from data_pipeline.decode import IMAGE_EXTENSIONS
from data_pipeline.shards import BadShardError


def locate_bad_image(
    loader: PipelineSettings, epoch: int, batch_index: int
) -> tuple[str, str, str] | None:
    """The first sample PIL cannot decode among those DALI may have read by ``batch_index``.

    Scans this rank's part of epoch ``epoch`` up to the read-ahead bound (batches so far
    plus prefetch plus the shuffle buffer). Returns (shard, key, reason) or None.
    """
    from data_pipeline.builder.images import BadImage, inspect_image
    from data_pipeline.shards import iter_shard_samples

    paths, _ = epoch_shards(loader, epoch)
    count_of = dict(zip(loader.shards.paths, loader.shards.counts))
    total = loader.shards.total
    start = total * loader.crops.rank // loader.crops.world_size
    end = total * (loader.crops.rank + 1) // loader.crops.world_size
    stop = min(end, start + (batch_index + 4) * loader.crops.batch_size + loader.shuffle_buffer)
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


def pipeline_failure(
    loader: PipelineSettings, err: Exception, epoch: int, batch_index: int
) -> RuntimeError:
    """The error to raise for DALI's ``err`` in ``epoch`` at batch ``batch_index``."""
    text = str(err)
    where = f"one of the shards {loader.shards.paths[:8]}"
    if "decoders.image" in text:
        try:
            found = locate_bad_image(loader, epoch, batch_index)
        except (BadShardError, OSError) as scan_err:
            found, where = None, f"{where} (scan failed: {scan_err})"
        if found is not None:
            where = f"shard {found[0]}, sample {found[1]!r} ({found[2]})"
        return RuntimeError(
            f"DALI could not decode an image in epoch {epoch} on rank {loader.crops.rank}: "
            f"{where}. "
            "DALI cannot skip undecodable images; rebuild the shards with `equirecon data "
            "build` (it leaves bad files out) or use data.backend=torch (it skips them). "
            "DALI's message:\n" + text
        )
    return RuntimeError(f"DALI pipeline failed in epoch {epoch} reading {where}:\n{text}")


__all__ = ["locate_bad_image", "pipeline_failure"]
