"""Tests of the eval dispatcher's settings (evals/run.py) and the `eval` CLI routing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from torch import Tensor

from equirecon.cli import build_parser, main
from equirecon.config import EvalConfig, load_config, save_config
from equirecon.eval_tasks import task_names, task_probes
from evals.providers import PixelFeatures
from evals.run import _apply_eval_settings, checkpoint_config, parse_tasks, run_tasks

REPO = Path(__file__).resolve().parents[2]


def test_parse_tasks() -> None:
    assert parse_tasks("", "knn,linear") == ["knn", "linear"]
    assert (
        parse_tasks("all", "knn")
        == task_names()
        == [
            "equivariance",
            "knn",
            "linear",
            "homography",
            "segmentation",
            "depth",
        ]
    )
    assert parse_tasks(["homography"], "knn") == ["homography"]
    with pytest.raises(ValueError, match="unknown eval task.*kitti.*depth"):
        parse_tasks("knn,kitti", "")


def test_demo_config_runs_all_six_families() -> None:
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml")
    assert parse_tasks(None, cfg.eval.tasks) == task_names()
    assert cfg.eval.equivariance.transforms.split(",") == [
        "rotation",
        "translation",
        "se2",
        "color",
        "blur",
    ]
    # Its probe reads images whose content tells the rotation (issue #25), in its own files.
    assert cfg.eval.equivariance.subset == "segmentation"
    assert task_probes(["equivariance"], cfg.eval) == {
        "equivariance": "context/global/segmentation"
    }


def test_legacy_checkpoint_config_gets_todays_protocol(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    # A config written before the harness: its eval section has no `seed` and old defaults,
    # except one value the user had chosen (r2_epochs 7 was never a default).
    old_eval = {
        "data": "",
        "tasks": "equivariance,knn",
        "equivariance_transforms": "rotation",
        "img_size": None,
        "max_train_images": 2000,
        "max_test_images": 800,
        "r2_epochs": 7,
        "knn_k": 20,
    }
    (ckpt / "config.yaml").write_text(yaml.safe_dump({"eval": old_eval}))
    e = checkpoint_config(ckpt).eval
    today = EvalConfig()
    assert (e.tasks, e.equivariance.transforms) == (today.tasks, today.equivariance.transforms)
    assert (e.equivariance.train_images, e.equivariance.epochs) == (
        today.equivariance.train_images,
        7,
    )
    # A config written today keeps what it says, old default values included.
    cfg = load_config(None, ["eval.tasks=equivariance,knn"])
    save_config(cfg, ckpt / "config.yaml")
    assert checkpoint_config(ckpt).eval.tasks == "equivariance,knn"


def test_eval_settings_precedence(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("eval:\n  knn:\n    k: 5\n  linear:\n    epochs: 3\n")
    e = _apply_eval_settings(EvalConfig(), settings, ["eval.knn.k=7"])
    assert (e.knn.k, e.linear.epochs) == (7, 3)
    with pytest.raises(ValueError, match="only eval"):
        _apply_eval_settings(EvalConfig(), None, ["model.depth=2"])


def test_cli_routes_eval_watch_and_needs_data_for_exports(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["eval-watch", "RUN", "--executor", "slurm", "--once"])
    assert (args.run_dir, args.executor, args.once) == ("RUN", "slurm", True)
    args = parser.parse_args(["eval", "--checkpoint", "C", "--floor", "pixels", "eval.knn.k=3"])
    assert (args.floor, args.overrides) == ("pixels", ["eval.knn.k=3"])
    assert main(["eval", "--export", str(tmp_path)]) == 2  # a user error: needs --data
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--checkpoint", "C", "--export", "E"])
    # `eval watch` on an empty run: nothing to do, exit code 0.
    assert main(["eval", "watch", str(tmp_path / "run"), "--once", "--poll-seconds", "0.1"]) == 0


class _SpyPixels(PixelFeatures):
    """Raw pixels that record the widths of the features the equivariance task asked for."""

    def __init__(self) -> None:
        super().__init__(patch_size=4)
        self.widths: list[int] = []

    def global_features(self, images: Tensor) -> Tensor:
        out = super().global_features(images)
        self.widths.append(out.shape[1])
        return out

    def grid_features(self, images: Tensor, grid: int) -> Tensor:
        out = super().grid_features(images, grid)
        self.widths.append(out.shape[1])
        return out


@pytest.mark.parametrize(
    ("features", "grid", "width"),
    [("grid", 2, 48 * 2 * 2), ("grid", 0, 48 * 8 * 8), ("global", 2, 3 * 32 * 32)],
)
def test_equivariance_task_reads_the_configured_features(
    demo_data: Path, features: str, grid: int, width: int
) -> None:
    defaults = EvalConfig()
    assert (defaults.equivariance.features, defaults.equivariance.grid) == ("global", 2)
    assert defaults.equivariance.view == "context"
    e = _apply_eval_settings(
        EvalConfig(),
        None,
        [
            "eval.equivariance.transforms=rotation",
            f"eval.equivariance.features={features}",
            f"eval.equivariance.grid={grid}",
            "eval.equivariance.train_images=16",
            "eval.equivariance.test_images=8",
            "eval.equivariance.views_per_image=1",
            "eval.equivariance.epochs=1",
            "eval.equivariance.hidden=8",
        ],
    )
    spy = _SpyPixels()
    out = run_tasks(spy, e, ["equivariance"], str(demo_data), 32)
    assert set(spy.widths) == {width}
    details = out["details"]["equivariance"]["rotation"]
    assert details["features"] == features
    assert details["grid"] == (grid if features == "grid" else None)


@pytest.mark.parametrize("recon", [True, False])
def test_equi_features_read_the_checkpoints_split_head(
    tmp_path: Path, demo_data: Path, tracking_uri: str, recon: bool
) -> None:
    """`eval.equivariance.features=equi` reads z_equi of the teacher's split head (recon on) and
    refuses clearly without one; the random floor gets a fresh split head of the same shape."""
    import torch

    from evals.providers import build_provider
    from evals.run import load_teacher_encoder
    from launch.entry import pretrain
    from tests.test_end_to_end import make_cfg

    run_dir = tmp_path / "run"
    cfg = make_cfg(
        run_dir, demo_data, tracking_uri, "train.max_steps=2", f"recon.enabled={str(recon).lower()}"
    )
    pretrain(cfg)
    ckpt = run_dir / "checkpoints" / "step_00000002"
    backbone, head, _ = load_teacher_encoder(ckpt)
    images = torch.randn(3, 3, 16, 16)
    provider = build_provider(backbone, split_head=head)
    if not recon:
        assert head is None
        with pytest.raises(ValueError, match="needs a split head"):
            provider.equivariance_fn("equi")(images)
        return
    assert head is not None and (head.d_patch, head.d_equi) == (48, 16)
    with torch.no_grad():
        z_equi = head(backbone(images))[1]  # (3, 1 + 16, 16)
        feats = provider.equivariance_fn("equi")(images)
        floor = build_provider(backbone, "random", split_head=head).equivariance_fn("equi")(images)
    expected = torch.cat([z_equi[:, 0], z_equi[:, 1:].mean(1)], dim=1)
    torch.testing.assert_close(feats, expected)
    assert floor.shape == feats.shape and not torch.allclose(floor, feats)
    # Trained, not freshly initialized: the checkpoint's values were loaded.
    from pretrain.models.heads import SplitHead

    torch.manual_seed(0)
    fresh = SplitHead(backbone.embed_dim, 48, 16)
    assert not torch.equal(fresh.proj.bias, head.proj.bias)  # init is zero; 2 steps moved it
