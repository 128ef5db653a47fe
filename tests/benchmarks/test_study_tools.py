"""The method-effect study's tools: clip-art split, paired summary criterion, reference levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import recon_levels, repro_summary, study_data
from tests.conftest import TINY_OVERRIDES


def _png(path: Path, seed: int, size: int = 40, mode: str = "RGBA") -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGBA").convert(mode).save(path)


def test_clipart_plan_dedups_splits_by_content_and_caps_classes(tmp_path: Path) -> None:
    src = tmp_path / "png"
    for i in range(40):
        _png(src / "animals" / f"a{i}.png", i)
    for i in range(6):
        _png(src / "plants" / f"p{i}.png", 100 + i)  # below min_per_class: natural only
    for i in range(12):
        _png(src / "unsorted" / f"u{i}.png", 200 + i)  # not a category
    (src / "animals" / "link.png").symlink_to(src / "animals" / "a0.png")  # a duplicate
    _png(src / "animals" / "copy.png", 1)  # same content as a1.png
    layout = study_data.plan(src, val_percent=25, min_per_class=10, max_per_class=20)
    natural = layout[("natural", "train")][""] + layout[("natural", "val")][""]
    assert len(natural) == len(set(natural)) == 40 + 6 + 12  # duplicates dropped
    assert set(layout[("labelled", "train")]) == {"animals"}
    assert 0 < len(layout[("labelled", "train")]["animals"]) <= 20 * 75 // 100
    assert len(layout[("labelled", "val")]["animals"]) <= 20 * 25 // 100
    val = set(layout[("natural", "val")][""])
    assert 0 < len(val) < len(natural)
    assert not val & set(layout[("labelled", "train")]["animals"])  # no val image in train
    again = study_data.plan(src, val_percent=25, min_per_class=10, max_per_class=20)
    assert again[("natural", "val")][""] == layout[("natural", "val")][""]  # stable split
    with pytest.raises(SystemExit, match="openclipart-png"):
        study_data.plan(tmp_path / "missing", 15, 10, 20)


def test_clipart_build_writes_shards_with_white_backgrounds(tmp_path: Path) -> None:
    src = tmp_path / "png"
    for i in range(12):
        _png(src / "animals" / f"a{i}.png", i, size=300)
        _png(src / "food" / f"f{i}.png", 50 + i, size=20, mode="LA")
    out = tmp_path / "data"
    args = ["--src", str(src), "--out", str(out), "--min-per-class", "5", "--max-side", "64"]
    assert study_data.main([*args, "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["natural"]["train"] + counts["natural"]["val"] == 24
    assert counts["labelled"]["train"] + counts["labelled"]["val"] == 24
    from data_pipeline.eval_images import load_images

    images, labels = load_images(out, "labelled", "train", 16, with_labels=True)
    assert images.shape[1:] == (3, 16, 16) and set(labels.tolist()) <= {0, 1}
    assert max(Image.open(p).size[0] for p in (out / ".resized").iterdir()) <= 64
    assert study_data.main([*args, "--workers", "1"]) == 0  # re-run: completes, same counts
    assert json.loads((out / "manifest.json").read_text())["counts"] == counts


@pytest.mark.parametrize(
    ("deltas", "higher", "expected"),
    [
        ([0.10, 0.12, 0.11], True, "better"),
        ([0.10, -0.01, 0.11], True, "no"),  # one seed on the wrong side
        ([0.01, 0.30, 0.02], True, "no"),  # mean < 2 std
        ([-0.10, -0.12, -0.11], True, "worse"),
        ([-0.5, -0.6, -0.55], False, "better"),  # lower is better (homography error)
        ([0.2], True, "–"),  # one seed: no criterion
    ],
)
def test_the_issues_criterion(deltas: list[float], higher: bool, expected: str) -> None:
    assert repro_summary._clear(deltas, higher) == expected


def test_recon_levels_order(tmp_path: Path, demo_data: Path) -> None:
    """Knowing θ beats copying v2; every prediction beats the zero predictor."""
    out = tmp_path / "levels.json"
    overrides = [o for o in TINY_OVERRIDES if o.split("=")[0].startswith(("data.", "model."))]
    argv = ["--config", "configs/demo_cpu.yaml", "--steps", "3", "--pool", "2"]
    argv += ["--eval-batches", "2", "--out", str(out), f"data.path={demo_data}", "--encoder"]
    argv += ["random", *overrides, "recon.transform=rotation", "data.global_size=32"]
    argv += ["train.batch_size=16"]
    assert recon_levels.main(argv) == 0
    rows = {r["predictor"]: r["l_recon"] for r in json.loads(out.read_text())["rows"]}
    assert rows["inverse of v2 (θ known)"] < rows["copy v2"]
    assert rows["u_k low-passed (grid resolution floor)"] < rows["mean colour of u_k (oracle)"]
    assert rows["mean colour of u_k (oracle)"] < rows["zero (dataset mean)"]
    assert len([r for r in rows if r.startswith("decoder")]) == 4
    frozen = rows["decoder on frozen random-init ViT tokens [v1; v2]"]
    assert 0 < frozen < rows["zero (dataset mean)"]


def test_recon_levels_in_disk_mode_score_the_masked_targets(
    tmp_path: Path, demo_data: Path
) -> None:
    """recon.fill=disk: the levels are those of the training's masked views and targets."""
    overrides = [o for o in TINY_OVERRIDES if o.split("=")[0].startswith(("data.", "model."))]
    levels = {}
    for fill in ("zero", "disk"):
        out = tmp_path / f"{fill}.json"
        argv = ["--config", "configs/demo_cpu.yaml", "--pool", "1", "--eval-batches", "2"]
        argv += ["--decoders", "no decoder", "--out", str(out), f"data.path={demo_data}"]
        argv += [*overrides, "recon.transform=rotation", "data.global_size=32"]
        argv += ["train.batch_size=16", f"recon.fill={fill}"]
        assert recon_levels.main(argv) == 0
        levels[fill] = {r["predictor"]: r["l_recon"] for r in json.loads(out.read_text())["rows"]}
    # outside the disk every target is 0: predicting 0 there is free
    assert levels["disk"]["zero (dataset mean)"] < 0.9 * levels["zero"]["zero (dataset mean)"]
    assert levels["disk"]["inverse of v2 (θ known)"] < levels["disk"]["copy v2"]


def test_recon_levels_theta_probe_reads_the_fill_only_where_it_is_shown(
    tmp_path: Path, demo_data: Path
) -> None:
    """--theta-probe: the probe's h on the training views' pixels reads θ off the zero fill
    (full view) and loses most of it when recon.fill=disk hides the fill (disk view)."""
    overrides = [o for o in TINY_OVERRIDES if o.split("=")[0].startswith(("data.", "model."))]
    r2 = {}
    for fill in ("zero", "disk"):
        out = tmp_path / f"{fill}.json"
        argv = ["--config", "configs/demo_cpu.yaml", "--pool", "8", "--eval-batches", "4"]
        argv += ["--decoders", "no decoder", "--theta-probe", "--out", str(out)]
        argv += [f"data.path={demo_data}", *overrides, "recon.transform=rotation"]
        argv += ["data.global_size=32", "train.batch_size=16", f"recon.fill={fill}"]
        assert recon_levels.main(argv) == 0
        (row,) = [r for r in json.loads(out.read_text())["rows"] if r["kind"] == "theta_probe"]
        assert row["view"] == ("disk" if fill == "disk" else "full")
        assert (row["train_images"], row["test_images"]) == (128, 64)
        r2[fill] = row["r2"]
    assert r2["zero"] - r2["disk"] > 0.2, r2  # 128 images: 0.32 against -0.06 here


def test_grad_ratio_per_checkpoint(tmp_path: Path, demo_data: Path, tracking_uri: str) -> None:
    from benchmarks import grad_ratio
    from launch.entry import pretrain
    from tests.test_end_to_end import make_cfg

    run = tmp_path / "run"
    steps = ["train.max_steps=2", "checkpoint.every_steps=1", "checkpoint.keep=2"]
    pretrain(make_cfg(run, demo_data, tracking_uri, *steps))
    out = tmp_path / "ratio.json"
    grids = tmp_path / "grids"
    argv = [str(run), "--batches", "2", "--out", str(out), "--grids", str(grids)]
    assert grad_ratio.main(argv) == 0
    assert sorted(p.name for p in grids.iterdir()) == [
        "run_step_00000001.png",
        "run_step_00000002.png",
    ]
    rows = json.loads(out.read_text())["rows"]
    assert [r["checkpoint"] for r in rows] == ["step_00000001", "step_00000002"]
    for r in rows:
        assert r["grad_ssl"] > 0 and r["grad_recon"] > 0 and -1 <= r["cosine"] <= 1
        assert r["ratio"] == pytest.approx(r["grad_recon"] / r["grad_ssl"], rel=0.5)
    alone = tmp_path / "alone"  # reconstruction alone: no SSL gradient, so no ratio
    no_ssl = ["method.dino_weight=0", "method.ibot_weight=0", "method.koleo_weight=0"]
    pretrain(make_cfg(alone, demo_data, tracking_uri, "train.max_steps=1", *no_ssl))
    assert grad_ratio.main([str(alone), "--batches", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["grad_ssl"] < grad_ratio.NO_GRADIENT < row["grad_recon"]
    assert row["ratio"] is None and row["cosine"] is None
    off = tmp_path / "off"
    pretrain(make_cfg(off, demo_data, tracking_uri, "train.max_steps=1", "recon.enabled=false"))
    with pytest.raises(SystemExit, match="no L_recon"):
        grad_ratio.main([str(off)])


def test_study_report_tables(tmp_path: Path) -> None:
    from benchmarks import study_report

    runs, results = tmp_path / "runs", tmp_path / "results"
    for name, recon in (("s_baseline_s0", None), ("s_recon_s0", 0.5)):
        run = runs / name
        (run / "evals").mkdir(parents=True)
        rows = [{"step": s, "train/loss_ssl": 2.0} for s in range(1, 401)]
        if recon is not None:
            for r in rows:
                r["train/loss_recon"] = recon if r["step"] > 200 else 9.0
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        metrics = {"eval/equivariance/rotation_r2": 0.25, "eval/knn/top1": 40.0}
        (run / "evals" / "step_00000400.json").write_text(json.dumps({"metrics": metrics}))
    grid = {"metrics": {"eval/equivariance/rotation_r2": 0.5}}
    (runs / "s_recon_s0" / "evals" / "rotation_grid.json").write_text(json.dumps(grid))
    results.mkdir()
    levels = {"rows": [{"predictor": "copy v2", "l_recon": 0.44}]}
    (results / "recon_levels.json").write_text(json.dumps(levels))
    grads = {
        "run": "s_recon_s0",
        "rows": [
            {
                "checkpoint": "step_00000400",
                "grad_ssl": 2.0,
                "grad_recon": 0.5,
                "ratio": 0.25,
                "cosine": -0.1,
            }
        ],
    }
    (results / "grad_ratio_s_recon_s0.json").write_text(json.dumps(grads))
    alone = {"checkpoint": "step_00000400", "grad_ssl": 0.0, "grad_recon": 0.1}
    alone_rows = {"run": "s_alone_s0", "rows": [{**alone, "ratio": None, "cosine": None}]}
    (results / "grad_ratio_s_alone_s0.json").write_text(json.dumps(alone_rows))
    out = tmp_path / "mech.md"
    assert (
        study_report.main(["s", "--runs", str(runs), "--results", str(results), "--out", str(out)])
        == 0
    )
    text = out.read_text()
    assert "| copy v2 | 0.440 |" in text
    assert "| s_recon_s0 (step 400) | 0.500 | 2.000 |" in text  # the last 200 steps only
    assert "s_baseline_s0 (step" not in text  # no L_recon without recon
    assert "| s_recon_s0 | step_00000400 | 2.000 | 0.500 | 0.250 | -0.100 |" in text
    assert "| s_alone_s0 | step_00000400 | 0.000 | 0.100 | – | – |" in text
    assert "| s_recon_s0 | 0.250 | 0.500 | – |" in text
    assert "| s_baseline_s0 | 0.250 | – | – | 40.000 | – |" in text
