"""The DALI backend in CPU mode: our index files, batches, crop statistics against the torch path,
resume, bad data, the missing-DALI message, and both backends under the Trainer."""

from __future__ import annotations

import io
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.batch import IMAGENET_STD
from data_pipeline.builder.dataset import build_shards
from data_pipeline.shards import iter_shard_samples, write_shards
from data_pipeline.torch_reader.loader import TrainLoader, build_train_loader
from equirecon.config import load_config
from tests.conftest import TINY_OVERRIDES
from tests.data_pipeline.test_build import _make_tree

pytest.importorskip("nvidia.dali")

from data_pipeline.dali_reader.loader import (  # noqa: E402  (after the importorskip)
    DaliTrainLoader,
    make_dali_loader,
)
from data_pipeline.dali_reader.shards import DALI_MISSING, import_dali  # noqa: E402

TINY = {"global_size": 16, "local_size": 8, "n_local": 2, "patch_size": 4}
# Per-channel mean/std of the global crops, DALI vs torch path on the same shards, in
# normalized units (1.0 = one ImageNet std, ~57 grey levels).
MEAN_TOL = 0.10
STD_TOL = 0.08


def _dali(path: Path, batch_size: int = 8, **kwargs) -> DaliTrainLoader:
    args = {"batch_size": batch_size, "num_threads": 1, "seed": 0, **TINY, **kwargs}
    return make_dali_loader(str(path), **args)


def test_dali_reads_through_our_index_files(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from nvidia.dali import fn, pipeline_def

    _make_tree(tmp_path / "src")
    out = tmp_path / "out"
    entry = build_shards(
        str(tmp_path / "src"), out, labels="folder", shard_size_mb=0.004, progress=False
    )
    tars = [str(out / s["tar"]) for s in entry["shards"]]
    indexes = [str(out / s["index"]) for s in entry["shards"]]
    expected = {}
    for tar in tars:
        for sample in iter_shard_samples(tar):
            image = next(sample[e] for e in ("jpg", "png", "webp") if e in sample)
            expected[json.loads(sample["json"])["path"]] = (image, int(sample["cls"]))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read_all():
        image, label, meta = fn.readers.webdataset(
            paths=tars, index_paths=indexes, ext=["jpg;png;webp", "cls", "json"], name="Reader"
        )
        return image, label, meta

    pipe = read_all()
    pipe.build()
    assert pipe.epoch_size("Reader") == entry["num_samples"] == len(expected)
    seen = {}
    for _ in range(entry["num_samples"]):
        image, label, meta = (np.array(out[0]).tobytes() for out in pipe.run())
        seen[json.loads(meta)["path"]] = (image, int(label.decode()))
    assert seen == expected
    assert "Index file not provided" not in capfd.readouterr().err


def test_dali_batches_shapes_dtypes_and_stats(demo_data: Path) -> None:
    loader = _dali(demo_data)
    assert loader.decode_device == "cpu" and loader.batches_per_epoch() == 240 // 8
    batches = iter(loader)
    batch = next(batches)
    assert batch.global_crops.shape == (2, 8, 3, 16, 16)
    assert batch.local_crops.shape == (2, 8, 3, 8, 8)
    assert batch.masks.shape == (2, 8, 16) and batch.masks.dtype == torch.bool
    assert batch.global_crops.dtype == batch.local_crops.dtype == torch.float32
    assert batch.labels is None and torch.isfinite(batch.global_crops).all()
    assert batch.masks.any() and not batch.masks.all()
    assert loader.stats()["skipped"] == 0 and loader.stats["skipped"] == 0
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["batches_in_epoch"] == 1
    no_local = next(iter(_dali(demo_data, n_local=0)))
    assert no_local.local_crops.shape == (0, 8, 3, 8, 8)


def test_crop_statistics_match_the_torch_path(demo_data: Path) -> None:
    """Every train image once (240 = 15 x 16), 32 px global crops; tolerances above."""
    sizes = {"global_size": 32, "local_size": 16, "n_local": 0, "patch_size": 4}

    def channel_stats(loader) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        batches = iter(loader)
        crops = torch.cat([next(batches).global_crops for _ in range(15)], dim=1)
        return crops.mean(dim=(1, 3, 4)), crops.std(dim=(1, 3, 4))  # (2 views, 3 channels)

    torch_mean, torch_std = channel_stats(
        build_train_loader(str(demo_data), batch_size=16, num_workers=0, seed=0, **sizes)
    )
    dali_mean, dali_std = channel_stats(_dali(demo_data, batch_size=16, **sizes))
    assert (dali_mean - torch_mean).abs().max() < MEAN_TOL, (dali_mean, torch_mean)
    assert (dali_std - torch_std).abs().max() < STD_TOL, (dali_std, torch_std)
    # Solarization (p 0.2) makes global crop 2 darker than crop 1 in both paths.
    assert (dali_mean[1] < dali_mean[0]).all() and (torch_mean[1] < torch_mean[0]).all()


@pytest.mark.parametrize(("size", "blur_p"), [(224, 1.0), (96, 0.5)])
def test_blur_kernels_are_truncated_gaussians(size: int, blur_p: float) -> None:
    from nvidia.dali import pipeline_def

    from data_pipeline.augment import blur_kernel_size
    from data_pipeline.dali_reader.views import blur_kernels

    @pipeline_def(batch_size=256, num_threads=1, device_id=None, seed=3)
    def kernels():
        return blur_kernels(size, blur_p)

    pipe = kernels()
    pipe.build()
    rows, columns = pipe.run()
    widths = []
    for row, column in zip(rows, columns):
        row, column = np.array(row), np.array(column)
        assert row.shape[0] == 1 and column.shape == row.shape[::-1]
        weights = row[0]
        width = len(weights)
        widths.append(width)
        assert width % 2 == 1 and width <= blur_kernel_size(size)
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(weights, weights[::-1], rtol=1e-5)
        if width > 1:  # a sampled gaussian with 0.1 <= sigma <= 2, cut at 3 sigma
            centre = width // 2
            sigma = (-0.5 / np.log(weights[centre + 1] / weights[centre])) ** 0.5
            assert 0.1 - 1e-3 <= sigma <= 2.0 + 1e-3
            assert width == min(blur_kernel_size(size), 2 * int(np.ceil(3 * sigma - 1e-4)) + 1)
            taps = np.arange(width) - centre
            expected = np.exp(-(taps**2) / (2 * sigma**2))
            np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-3, atol=1e-6)
    identity = np.mean([w == 1 for w in widths])
    if blur_p == 1.0:
        assert identity < 0.2  # only sigma < 1/3 px gives a 1-tap gaussian
    else:
        assert 0.45 < identity < 0.65  # 1 - blur_p, plus the tiny sigmas


def test_arithmetic_contrast_matches_the_operator(demo_data: Path) -> None:
    """The GPU formulation of brightness/contrast (arithmetic), checked on the CPU."""
    reference = next(iter(_dali(demo_data)))
    arithmetic = next(iter(_dali(demo_data, arithmetic_contrast=True)))
    one_grey_level = 1.0 / (255 * min(IMAGENET_STD))
    difference = (reference.global_crops - arithmetic.global_crops).abs().max()
    assert difference <= one_grey_level + 1e-6


def test_resume_replays_the_epoch_and_crosses_epochs(demo_data: Path) -> None:
    reference = _dali(demo_data, batch_size=48, n_local=1)  # 240 // 48 = 5 batches per epoch
    batches = iter(reference)
    taken = [next(batches) for _ in range(7)]
    assert reference.state_dict()["epoch"] == 1 and reference.state_dict()["batches_in_epoch"] == 2

    resumed = _dali(demo_data, batch_size=48, n_local=1)
    resumed.load_state_dict({"epoch": 0, "batches_in_epoch": 3, "seed": 0, "batch_size": 48})
    again = iter(resumed)
    for expected in taken[3:]:
        batch = next(again)
        for name in ("global_crops", "local_crops", "masks"):
            assert torch.equal(getattr(batch, name), getattr(expected, name)), name
    assert not torch.equal(taken[0].global_crops, taken[5].global_crops)  # a new epoch order

    with pytest.warns(UserWarning, match="another seed"):
        resumed.load_state_dict({"epoch": 2, "batches_in_epoch": 1, "seed": 1, "batch_size": 48})
    assert resumed.state_dict()["epoch"] == 3


def test_two_ranks_have_equal_epochs_and_different_data(demo_data: Path) -> None:
    ranks = [_dali(demo_data, rank=r, world_size=2, n_local=0) for r in (0, 1)]
    assert [r.batches_per_epoch() for r in ranks] == [240 // 2 // 8] * 2
    first = [next(iter(r)).global_crops for r in ranks]
    assert not torch.equal(first[0], first[1])


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_data_messages(tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i:03d}", "jpg": _jpeg(i)} for i in range(16)]
    samples[5]["jpg"] = samples[5]["jpg"][:200]  # truncated inside the entropy-coded data
    shards = write_shards(samples, tmp_path / "bad" / "train-%06d.tar", max_samples=16)
    loader = _dali(tmp_path / "bad", batch_size=4, n_local=0)
    with pytest.raises(RuntimeError, match=rf"shard {shards[0]}, sample 'k005'.*data build"):
        for _ in iter(loader):
            pass

    # An unreadable shard is left out and counted; the good one is read.
    write_shards(samples[6:], tmp_path / "mixed" / "train-%06d.tar", max_samples=16)
    cut = tmp_path / "mixed" / "train-000001.tar"
    cut.write_bytes((tmp_path / "mixed" / "train-000000.tar").read_bytes()[:3000])
    loader = _dali(tmp_path / "mixed", batch_size=4, n_local=0)
    assert loader.stats()["by_reason"] == {"bad_shard": 1}
    assert loader.stats()["bad_shards"] == [str(cut)]
    assert next(iter(loader)).global_crops.shape == (2, 4, 3, 16, 16)


def test_damaged_shard_is_read_up_to_its_damage(tmp_path: Path) -> None:
    """As the torch reader: the complete samples before the damage are used, the rest counted."""
    from data_pipeline.dali_index import write_dali_index
    from data_pipeline.shards import scan_shard

    samples = [{"__key__": f"k{i:03d}", "jpg": _jpeg(i)} for i in range(16)]
    intact, cut = write_shards(samples, tmp_path / "d" / "train-%06d.tar", max_samples=8)
    write_dali_index(cut, Path(cut).with_suffix(".idx"))  # the build's index: exact losses
    data = Path(cut).read_bytes()
    Path(cut).write_bytes(data[: len(data) // 2])
    scan = scan_shard(cut)
    assert 0 < scan.samples < 8 and scan.lost == 8 - scan.samples
    loader = _dali(tmp_path / "d", batch_size=1, n_local=0)
    assert loader.shards.counts == [8, scan.samples]
    assert loader.batches_per_epoch() == 8 + scan.samples
    epoch = list(itertools.islice(iter(loader), 8 + scan.samples))  # DALI reads them all
    assert all(b.global_crops.shape == (2, 1, 3, 16, 16) for b in epoch)
    stats = loader.stats()
    assert stats["by_reason"] == {"bad_shard": 1, "damaged_shard_samples": 8 - scan.samples}
    assert (stats["skipped_samples"], stats["skipped_shards"]) == (8 - scan.samples, 1)
    assert stats["bad_shards"] == [cut] and intact not in stats["bad_shards"]


def test_missing_dali_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="pip install nvidia-dali-cuda130"):
        import_dali()
    assert "nvidia-dali-cuda130" in DALI_MISSING


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_trainer_runs_two_steps(backend: str, tmp_path: Path, demo_data: Path) -> None:
    from pretrain.train import Trainer

    cfg = load_config(
        None,
        TINY_OVERRIDES
        + [
            f"data.backend={backend}",
            f"data.path={demo_data}",
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=2",
            "tracking.enabled=false",
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.loader, DaliTrainLoader if backend == "dali" else TrainLoader)
    last = trainer.fit()
    assert math.isfinite(last["train/loss_total"]) and last["data/skipped"] == 0.0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]


def test_trainer_resumes_the_dali_position_from_a_checkpoint(
    tmp_path: Path, demo_data: Path
) -> None:
    from pretrain.train import Trainer

    def cfg(run: str):  # noqa: ANN202
        return load_config(
            None,
            TINY_OVERRIDES
            + [
                "data.backend=dali",
                f"data.path={demo_data}",
                f"run.dir={tmp_path / run}",
                "train.max_steps=3",
                "tracking.enabled=false",
            ],
        )

    def losses(run: str) -> list[float]:
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["train/loss_total"] for r in rows]

    Trainer(cfg("ref")).fit()
    Trainer(cfg("cut")).fit(stop_after=1)  # checkpoint with the DALI state after batch 1
    Trainer(cfg("cut")).fit()
    assert losses("cut") == pytest.approx(losses("ref"), rel=1e-5)
