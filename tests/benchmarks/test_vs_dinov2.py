"""`benchmarks/vs_dinov2.py` (`equirecon bench vs-dinov2`): the official DINOv2 step vs ours.

The side-by-side run needs a DINOv2 checkout (never vendored): set DINOV2_REPO to a clone of
https://github.com/facebookresearch/dinov2 (and install the `bench-dinov2` extra) to run it
here; without one only the parts of ours are tested and the run is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from benchmarks.train_step import bench_config
from benchmarks.vs_dinov2 import (
    SKIP_MESSAGE,
    Setting,
    _ConcatRows,
    dinov2_inputs,
    find_checkout,
    main,
    make_batches,
    our_overrides,
)
from equirecon.cli import main as cli_main


def test_without_a_checkout_it_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DINOV2_REPO", raising=False)
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == SKIP_MESSAGE
    assert cli_main(["bench", "vs-dinov2"]) == 0  # the CLI verb reaches it


def test_a_wrong_checkout_path_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dinov2", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "ssl_meta_arch.py" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        find_checkout(str(tmp_path))


def test_dinov2_inputs_follow_its_collate_layout() -> None:
    setting = Setting(global_size=28, local_size=14, n_local=2, batch=4, patch=14)
    batch = make_batches(setting, 1)[0]
    data = dinov2_inputs(batch, setting, torch.device("cpu"))
    masks = batch.masks.flatten(0, 1)
    assert data["collated_global_crops"].shape == (8, 3, 28, 28)
    assert data["collated_local_crops"].shape == (8, 3, 14, 14)
    assert torch.equal(data["collated_masks"], masks)
    flat = torch.arange(masks.numel()).view_as(masks)
    assert torch.equal(data["mask_indices_list"], flat[masks])
    m = int(masks.sum())
    assert int(data["n_masked_patches"]) == m and data["upperbound"] >= m
    # each image's masked patches weigh 1 / (its count)
    counts = masks.sum(1).clamp(min=1).float()
    image = data["mask_indices_list"] // masks.shape[1]
    torch.testing.assert_close(data["masks_weight"], 1 / counts[image])


def test_concat_rows_round_trip() -> None:
    parts = [torch.randn(1, n, 5) for n in (3, 1, 4)]
    bias, cat = _ConcatRows.from_tensor_list(parts)
    assert cat.shape == (1, 8, 5)
    assert all(torch.equal(a, b) for a, b in zip(bias.split(cat), parts))


def test_our_side_builds_the_setting() -> None:
    setting = Setting(global_size=28, local_size=14, n_local=2, batch=2, prototypes=256)
    cfg = bench_config(None, our_overrides(setting, recon=False))
    assert cfg.method.name == "dinov2" and not cfg.recon.enabled
    assert (cfg.model.patch_size, cfg.model.drop_path, cfg.model.drop_path_uniform) == (
        14,
        0.3,
        True,
    )
    assert (cfg.data.global_size, cfg.data.local_size, cfg.data.n_local) == (28, 14, 2)
    assert cfg.method.head_out_dim == 256 and cfg.method.koleo_weight == 0.1
    assert tuple(cfg.method.mask_ratio) == (0.1, 0.5)
    assert bench_config(None, our_overrides(setting, recon=True)).recon.enabled


DINOV2 = os.environ.get("DINOV2_REPO")
MISSING = [m for m in ("omegaconf", "fvcore") if importlib.util.find_spec(m) is None]


@pytest.mark.slow
@pytest.mark.skipif(not DINOV2, reason="needs a DINOv2 checkout: set DINOV2_REPO (not vendored)")
@pytest.mark.skipif(bool(MISSING), reason=f"DINOv2's code needs {MISSING}: the bench-dinov2 extra")
def test_side_by_side_with_the_official_code(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["--dinov2", DINOV2, "--threads", "1", "--rounds", "2", "--steps", "1", "--warmup", "1",
         "--global-size", "28", "--local-size", "14", "--n-local", "2", "--batch", "2",
         "--prototypes", "1024"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"dinov2", "ours", "ours_recon"} <= set(rows)
    for name in ("ours", "ours_recon"):
        ratio = float(rows[name].split("|")[6].strip().rstrip("x"))
        assert 0.05 < ratio < 20  # a finite, measured ratio to DINOv2's step
    assert "per-round ratios" in out
