"""One epoch's DALI pipeline of one rank: the epoch's shard order, the webdataset reader, one
image decode and the multi-crop views (`data_pipeline.dali_reader.views`)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from data_pipeline.dali_reader.shards import DaliShards, import_dali
from data_pipeline.dali_reader.views import multicrop_view
from data_pipeline.decode import IMAGE_EXTENSIONS
from data_pipeline.multicrop import MultiCrop
from data_pipeline.seeds import (
    TAG_DALI_AUGMENT,
    TAG_DALI_SHARD_ORDER,
    TAG_DALI_SHUFFLE,
    derive_seed,
)


class PipelineSettings(Protocol):
    """What a pipeline (and its failure report) reads of its loader
    (`dali_reader.loader.DaliTrainLoader`)."""

    shards: DaliShards
    crops: MultiCrop
    num_threads: int
    device_id: int | None
    decode_device: str
    shuffle_buffer: int
    arithmetic_contrast: bool | None


READER_NAME = "Reader"


def epoch_shards(loader: PipelineSettings, epoch: int) -> tuple[list[str], list[str]]:
    """Shard and index paths of ``epoch`` in their order (seeded by (seed, epoch), all ranks)."""
    rng = np.random.default_rng(derive_seed(TAG_DALI_SHARD_ORDER, loader.crops.seed, epoch))
    order = rng.permutation(len(loader.shards.paths)).tolist()
    return (
        [loader.shards.paths[i] for i in order],
        [loader.shards.index_paths[i] for i in order],
    )


def build_pipeline(loader: PipelineSettings, epoch: int) -> Any:
    """The (built) DALI pipeline of ``epoch`` on this rank."""
    dali = import_dali()
    fn, types = dali.fn, dali.types
    crops, rank = loader.crops, loader.crops.rank
    paths, index_paths = epoch_shards(loader, epoch)
    pipe = dali.Pipeline(
        batch_size=crops.batch_size,
        num_threads=loader.num_threads,
        device_id=loader.device_id,
        seed=derive_seed(TAG_DALI_AUGMENT, crops.seed, epoch, rank) % (1 << 31),
        prefetch_queue_depth=2,
    )
    with pipe:
        encoded = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[";".join(IMAGE_EXTENSIONS)],
            case_sensitive_extensions=False,
            missing_component_behavior="skip",
            shard_id=rank,
            num_shards=crops.world_size,
            stick_to_shard=True,
            pad_last_batch=False,
            random_shuffle=True,
            initial_fill=loader.shuffle_buffer,
            seed=derive_seed(TAG_DALI_SHUFFLE, crops.seed, epoch, rank) % (1 << 31),
            name=READER_NAME,
        )
        images = fn.decoders.image(encoded, device=loader.decode_device, output_type=types.RGB)
        option = {"arithmetic_contrast": loader.arithmetic_contrast}
        global_size, global_scale = crops.global_size, _floats(crops.global_scale)
        local_size, local_scale = crops.local_size, _floats(crops.local_scale)
        views = [
            multicrop_view(images, global_size, global_scale, blur_p=1.0, **option),
            multicrop_view(images, global_size, global_scale, blur_p=0.1, solarize_p=0.2, **option),
        ]
        views += [
            multicrop_view(images, local_size, local_scale, blur_p=0.5, **option)
            for _ in range(crops.n_local)
        ]
        pipe.set_outputs(*views)
    pipe.build()
    return pipe


def _floats(pair: tuple[float, float]) -> tuple[float, float]:
    return float(pair[0]), float(pair[1])


def output_names(n_local: int) -> list[str]:
    """Names of the pipeline's outputs: the two global views, then the local ones."""
    return ["global_0", "global_1"] + [f"local_{i}" for i in range(n_local)]


__all__ = ["READER_NAME", "build_pipeline", "epoch_shards", "output_names"]
