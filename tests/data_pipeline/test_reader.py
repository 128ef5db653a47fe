"""The torch reader: shard resolution, batches, deterministic order, partitioning, exact resume,
and robustness to corrupt data."""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.batch import Batch
from data_pipeline.eval_images import load_images
from data_pipeline.shards import (
    ShardWriter,
    count_samples,
    resolve_shards,
    scan_shard,
    write_shards,
)
from data_pipeline.torch_reader.loader import TrainLoader, build_train_loader
from data_pipeline.torch_reader.stream import ShardSampleStream

N_SHARDS = 4
PER_SHARD = 24


def _jpeg(rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> bytes:
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_dataset(root: Path, n_shards: int = N_SHARDS, per_shard: int = PER_SHARD) -> list[str]:
    rng = np.random.default_rng(0)
    samples = (
        {"__key__": f"s{i:05d}", "jpg": _jpeg(rng), "cls": i % 10, "json": {"i": i}}
        for i in range(n_shards * per_shard)
    )
    return write_shards(samples, root / "natural" / "train-%06d.tar", max_samples=per_shard)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    _write_dataset(root)
    (root / "manifest.json").write_text("{}")
    return root


def _loader(root: Path, **overrides: Any) -> TrainLoader:
    kwargs: dict[str, Any] = {
        "batch_size": 8,
        "num_workers": 0,
        "seed": 0,
        "global_size": 32,
        "local_size": 16,
        "n_local": 2,
        "patch_size": 8,
        "shuffle_buffer": 16,
    }
    kwargs.update(overrides)
    return build_train_loader(str(root), **kwargs)


def _take(loader: TrainLoader, n: int) -> tuple[list[Batch], list[list[str]]]:
    batches, keys = [], []
    iterator = iter(loader)
    for _ in range(n):
        batches.append(next(iterator))
        keys.append(list(loader.last_keys))
    return batches, keys


# --- shard resolution -------------------------------------------------------------------------


def test_resolve_shards_forms(dataset: Path, tmp_path: Path) -> None:
    expected = sorted(str(p) for p in (dataset / "natural").glob("train-*.tar"))
    assert len(expected) == N_SHARDS
    assert resolve_shards(str(dataset)) == expected
    assert resolve_shards(str(dataset / "natural")) == expected
    assert resolve_shards(str(dataset / "natural" / "train-00000[0-1].tar")) == expected[:2]
    assert resolve_shards(expected[0]) == expected[:1]
    with pytest.raises(FileNotFoundError, match=re.escape(str(dataset / "natural" / "val-*.tar"))):
        resolve_shards(str(dataset), split="val")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_shards(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="matched no shard"):
        resolve_shards(str(tmp_path / "*.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        resolve_shards(str(tmp_path / "empty"))


def test_shard_writer_limits_and_counts(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "x-%03d.tar", max_samples=5) as sink:
        for i in range(12):
            sink.write({"__key__": f"k{i}", "cls": i, "txt": "hello"})
    assert [Path(s).name for s in sink.shards] == ["x-000.tar", "x-001.tar", "x-002.tar"]
    assert [count_samples(s) for s in sink.shards] == [5, 5, 2]
    with pytest.raises(ValueError, match="printf"):
        ShardWriter(tmp_path / "no-field.tar")


# --- batches ------------------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_normalization(dataset: Path) -> None:
    loader = _loader(dataset, with_labels=True)
    assert loader.batches_per_epoch() == N_SHARDS * PER_SHARD // 8
    (batch,), _ = _take(loader, 1)
    assert isinstance(batch, Batch)
    assert batch.global_crops.shape == (2, 8, 3, 32, 32)
    assert batch.local_crops.shape == (2, 8, 3, 16, 16)
    assert batch.masks.shape == (2, 8, 16)
    assert batch.global_crops.dtype == torch.float32 and batch.local_crops.dtype == torch.float32
    assert batch.masks.dtype == torch.bool
    assert batch.labels is not None and batch.labels.dtype == torch.int64
    assert (
        batch.labels.shape == (8,) and 0 <= int(batch.labels.min()) <= int(batch.labels.max()) < 10
    )
    # Uniform noise images: normalized values lie in [-2.2, 2.7] with a spread near 1.
    assert -2.2 <= float(batch.global_crops.min()) and float(batch.global_crops.max()) <= 2.7
    assert 0.3 < float(batch.global_crops.std()) < 2.0
    assert abs(float(batch.global_crops.mean())) < 1.0
    assert int(batch.masks.reshape(16, 16).any(dim=1).sum()) == 8  # mask_prob 0.5 of 16 crops


def test_no_local_crops_and_no_labels(dataset: Path) -> None:
    (batch,), _ = _take(_loader(dataset, n_local=0, mask_prob=0.0), 1)
    assert batch.local_crops.shape == (0, 8, 3, 16, 16)
    assert batch.labels is None
    assert not batch.masks.any()


def test_batch_size_too_large_is_explained(dataset: Path) -> None:
    with pytest.raises(ValueError, match="batch_size 1000"):
        _take(_loader(dataset, batch_size=1000), 1)


# --- order --------------------------------------------------------------------------------------


def test_order_is_a_function_of_seed_and_epoch(dataset: Path) -> None:
    first, first_keys = _take(_loader(dataset), 3)
    second, second_keys = _take(_loader(dataset), 3)
    assert first_keys == second_keys
    for a, b in zip(first, second):
        assert torch.equal(a.global_crops, b.global_crops)
        assert torch.equal(a.local_crops, b.local_crops)
        assert torch.equal(a.masks, b.masks)
    _, other_seed_keys = _take(_loader(dataset, seed=1), 3)
    assert other_seed_keys != first_keys
    later = _loader(dataset)
    later.load_state_dict({"epoch": 1, "batches_in_epoch": 0})
    _, epoch1_keys = _take(later, 3)
    assert epoch1_keys != first_keys


def test_stream_order_differs_between_epochs(dataset: Path) -> None:
    stream = ShardSampleStream(resolve_shards(str(dataset)), seed=0, shuffle_buffer=16)
    epoch0 = [s["__key__"] for s in stream.iter_raw(0)]
    epoch1 = [s["__key__"] for s in stream.iter_raw(1)]
    assert sorted(epoch0) == sorted(epoch1)
    assert epoch0 != epoch1
    assert epoch0 == [s["__key__"] for s in stream.iter_raw(0)]
    assert [s["__key__"] for s in stream.iter_raw(0, skip=5)] == epoch0[5:]


@pytest.mark.parametrize(("n_shards", "per_shard"), [(4, 24), (2, 24), (3, 17), (1, 10)])
def test_streams_partition_every_sample_exactly_once(
    tmp_path: Path, n_shards: int, per_shard: int
) -> None:
    shards = _write_dataset(tmp_path, n_shards, per_shard)
    world_size, num_workers = 2, 2
    for epoch in (0, 1):
        keys: list[str] = []
        for rank in range(world_size):
            stream = ShardSampleStream(
                shards, seed=3, rank=rank, world_size=world_size, num_workers=num_workers
            )
            lengths = stream.stream_lengths(epoch)
            if n_shards < world_size * num_workers:  # split by sample index: no idle stream
                assert max(lengths) - min(lengths) <= 1 and min(lengths) > 0
            for worker in range(num_workers):
                stream_keys = [s["__key__"] for s in stream.iter_raw(epoch, worker)]
                assert len(stream_keys) == lengths[stream.stream_index(worker)]
                keys += stream_keys
        counts = Counter(keys)
        assert len(counts) == n_shards * per_shard
        assert set(counts.values()) == {1}


def test_ranks_get_equal_epoch_lengths_and_disjoint_batches(tmp_path: Path) -> None:
    _write_dataset(tmp_path, 3, 20)
    keys_by_rank = []
    for rank in (0, 1):
        loader = _loader(tmp_path, rank=rank, world_size=2, batch_size=4, n_local=0)
        # 2 streams over 3 shards of 20: the smaller stream (20 samples) sets the epoch length.
        assert loader.batches_per_epoch() == 20 // 4
        _, keys = _take(loader, loader.batches_per_epoch())
        keys_by_rank.append({k for batch in keys for k in batch})
    assert not keys_by_rank[0] & keys_by_rank[1]


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume(dataset: Path, num_workers: int) -> None:
    per_epoch = N_SHARDS * PER_SHARD // 8  # 12 batches
    total = per_epoch + 4  # crosses an epoch boundary
    reference, reference_keys = _take(_loader(dataset, num_workers=num_workers), total)
    for k in (5, per_epoch + 1):
        interrupted = _loader(dataset, num_workers=num_workers)
        _take(interrupted, k)
        state = json.loads(json.dumps(interrupted.state_dict()))
        assert state["epoch"] == k // per_epoch
        resumed = _loader(dataset, num_workers=num_workers)
        resumed.load_state_dict(state)
        batches, keys = _take(resumed, total - k)
        assert keys == reference_keys[k:]
        for got, want in zip(batches, reference[k:]):
            assert torch.equal(got.global_crops, want.global_crops)
            assert torch.equal(got.local_crops, want.local_crops)
            assert torch.equal(got.masks, want.masks)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_world_size_two(dataset: Path, num_workers: int) -> None:
    """Each rank of a 2-rank world resumes exactly where it stopped (across an epoch end), and
    the two ranks' resumed streams stay disjoint."""
    seen: list[set[str]] = []
    for rank in (0, 1):
        opts = {"rank": rank, "world_size": 2, "num_workers": num_workers, "batch_size": 4}
        per_epoch = _loader(dataset, **opts).batches_per_epoch()
        total = per_epoch + 3
        reference, reference_keys = _take(_loader(dataset, **opts), total)
        k = per_epoch - 1
        interrupted = _loader(dataset, **opts)
        _take(interrupted, k)
        resumed = _loader(dataset, **opts)
        resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))
        batches, keys = _take(resumed, total - k)
        assert keys == reference_keys[k:]
        for got, want in zip(batches, reference[k:]):
            assert torch.equal(got.global_crops, want.global_crops)
            assert torch.equal(got.masks, want.masks)
        seen.append({key for batch in reference_keys[:per_epoch] for key in batch})
    assert not seen[0] & seen[1]


def test_resume_with_other_worker_count_warns(dataset: Path) -> None:
    loader = _loader(dataset)
    _take(loader, 2)
    other = _loader(dataset, batch_size=4)
    with pytest.warns(UserWarning, match="resuming at the start of epoch 1"):
        other.load_state_dict(loader.state_dict())
    assert other.epoch == 1


def test_augmentation_does_not_touch_the_global_rng(dataset: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _take(_loader(dataset), 1)
    assert torch.equal(torch.rand(3), expected)


# --- corrupt data -------------------------------------------------------------------------------


def _corrupt_dataset(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(1)
    good = write_shards(
        ({"__key__": f"good{i:03d}", "jpg": _jpeg(rng), "cls": 1} for i in range(20)),
        root / "a-%06d.tar",
        max_samples=100,
    )[0]
    mixed = write_shards(
        [
            {"__key__": "bad_jpeg", "jpg": _jpeg(rng)[:200], "cls": 1},
            {"__key__": "bad_ext", "bmpx": b"not an image", "cls": 1},
            {"__key__": "no_cls", "jpg": _jpeg(rng)},
            *({"__key__": f"mixed{i:03d}", "jpg": _jpeg(rng), "cls": 2} for i in range(10)),
        ],
        root / "b-%06d.tar",
    )[0]
    truncated = write_shards(
        ({"__key__": f"trunc{i:03d}", "jpg": _jpeg(rng), "cls": 3} for i in range(10)),
        root / "c-%06d.tar",
    )[0]
    data = Path(truncated).read_bytes()
    Path(truncated).write_bytes(data[: len(data) // 2])
    garbage = root / "d-000000.tar"
    garbage.write_bytes(b"this is not a tar file" * 100)
    return {"good": good, "mixed": mixed, "truncated": truncated, "garbage": str(garbage)}


def test_corrupt_samples_and_shards_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _corrupt_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.torch_reader.stream"):
        loader = _loader(tmp_path, batch_size=2, with_labels=True, n_local=0)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert paths["truncated"] in warned and paths["garbage"] in warned
    # The truncated shard's complete samples before the cut are read (no index: 1+ lost).
    readable = scan_shard(paths["truncated"]).samples
    assert 0 < readable < 10
    assert loader.stream.shards == [paths["good"], paths["mixed"], paths["truncated"]]
    _, keys = _take(loader, loader.batches_per_epoch())
    seen = {k for batch in keys for k in batch}
    assert not seen & {"bad_jpeg", "bad_ext", "no_cls"}
    assert {k for k in seen if k.startswith("trunc")} <= {f"trunc{i:03d}" for i in range(readable)}
    stats = loader.stats
    assert stats["by_reason"]["bad_shard"] == 2
    assert stats["by_reason"]["damaged_shard_samples"] == 1
    assert stats["skipped_shards"] == 2
    assert stats["skipped_samples"] == stats["skipped"] - 2
    assert stats["by_reason"]["decode_error"] >= 1
    assert stats["by_reason"]["no_image"] >= 1
    assert stats["by_reason"]["missing_cls"] >= 1
    assert stats["skipped"] == sum(stats["by_reason"].values())
    assert set(stats["bad_shards"]) == {paths["truncated"], paths["garbage"]}

    images, labels = load_images(str(tmp_path), "natural", "train", 24, with_labels=True)
    assert images.shape == (30 + readable, 3, 24, 24) and labels is not None
    assert Counter(labels.tolist()) == {1: 20, 2: 10, 3: readable}
    unlabelled, none = load_images(str(tmp_path), "natural", "train", 24, with_labels=False)
    assert unlabelled.shape[0] == 31 + readable and none is None  # "no_cls" decodes without labels


def test_exact_resume_across_skipped_samples(tmp_path: Path) -> None:
    """Positions count raw samples, so resume stays exact when corrupt samples were skipped."""
    _corrupt_dataset(tmp_path)
    options = {"batch_size": 2, "with_labels": True, "n_local": 0, "shuffle_buffer": 4}
    reference = _loader(tmp_path, **options)
    total = reference.batches_per_epoch() + 2  # the stream wraps around to fill the epoch
    batches, keys = _take(reference, total)
    for k in (7, 15):
        interrupted = _loader(tmp_path, **options)
        _take(interrupted, k)
        resumed = _loader(tmp_path, **options)
        resumed.load_state_dict(interrupted.state_dict())
        got, got_keys = _take(resumed, total - k)
        assert got_keys == keys[k:]
        assert all(torch.equal(a.global_crops, b.global_crops) for a, b in zip(got, batches[k:]))


def test_all_corrupt_raises_with_the_paths(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    shard = write_shards(
        ({"__key__": f"bad{i}", "jpg": _jpeg(rng)[:100]} for i in range(8)), tmp_path / "x-%06d.tar"
    )[0]
    with pytest.raises(RuntimeError, match=re.escape(shard)):
        _take(_loader(tmp_path, batch_size=2), 1)
    with pytest.raises(RuntimeError, match=re.escape(shard)):
        _take(_loader(tmp_path, batch_size=2, num_workers=1), 1)

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "y.tar").write_bytes(b"garbage" * 50)
    with pytest.raises(RuntimeError, match=re.escape(str(unreadable / "y.tar"))):
        _loader(unreadable)


# --- evaluation images --------------------------------------------------------------------------


def test_load_images_in_order(dataset: Path) -> None:
    images, labels = load_images(
        str(dataset), "natural", "train", 20, with_labels=True, max_images=30
    )
    assert images.shape == (30, 3, 20, 20) and images.dtype == torch.float32
    assert labels is not None and labels.tolist() == [i % 10 for i in range(30)]
    again, _ = load_images(str(dataset), "natural", "train", 20, with_labels=False, max_images=30)
    assert torch.equal(images, again)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_decode_over_white(mode: str) -> None:
    """A transparent background is white, as viewers show it (not the stored black)."""
    from data_pipeline.decode import decode_image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # transparent black
    rgba[1:3, 1:3] = (200, 30, 30, 255)  # an opaque red square
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("RGB").quantize(colors=4)
        index = image.getpixel((0, 0))
        image.info["transparency"] = index
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = np.asarray(decode_image({"png": buffer.getvalue()}))
    assert decoded.shape == (4, 4, 3)
    assert (decoded[0, 0] == 255).all(), decoded[0, 0]  # background
    inner = decoded[1, 1]
    assert inner.min() < 255  # the object keeps its colour
    opaque = np.asarray(Image.fromarray(rgba[..., :3], "RGB").convert("RGB"))
    assert (np.asarray(decode_image({"png": _png(opaque)})) == opaque).all()  # RGB unchanged


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
