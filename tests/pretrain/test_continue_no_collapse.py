"""Continued pretraining does not collapse (issue #26, point 3), end to end on the demo data: a
tiny plain-DINOv2 baseline is pretrained, exported (`equirecon export`) and continued from the
export with SE(2) reconstruction on and the `configs/continue/` recipe (backbone frozen, then at
a fraction of the heads' lr with its own warm-up). The continued model's kNN top-1 must stay
within `KNN_TOLERANCE` points of its starting model's, both measured by `equirecon eval`'s kNN
task (`evals.run.evaluate_checkpoint`) on the same images; the starting model is the continued
run's step 0 (the loaded backbone, `pretrain.train`).

The sibling test shows that the check catches a torn-apart backbone: the same continuation with
no freeze, the backbone at the heads' lr and that lr 500 × larger drops kNN by far more than the
tolerance. At this scale the damage is not always a collapse of the features' spread (some
seeds scatter them instead, the spread growing up to 10 ×), so the test asserts the kNN drop,
which every such run shows (seeds 0-4: 6 to 28 points; this recipe's continuations: 0 to 2).

Numbers: kNN on the fixture's 100 labelled val images (1 image = 1 point) with its 300 train
images as the memory; single process on the CPU, so each run is bitwise reproducible.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.export import export_checkpoint
from pretrain.restore import resolve_checkpoint
from pretrain.train import Trainer
from tests.test_end_to_end import make_cfg

pytestmark = pytest.mark.slow

KNN = "eval/knn/top1"
KNN_TOLERANCE = 2.0  # points: the bound on what a continuation may cost
# The baseline's and the continuation heads' lr (not scaled by the batch: at the demo's
# base_lr·B/256 and B = 8 nothing would move in these few steps).
LR = ["train.lr_scaling=none", "train.base_lr=1e-3"]
BASELINE_STEPS, CONTINUE_STEPS = 100, 40
# The recipe of configs/continue/dinov2_vitl14_se2.yaml (backbone at 0.1 × the heads' lr), its
# frozen window and warm-up each a quarter of this short continuation. (The ViT-S preset's 0.2
# moved kNN by 0-2 points over seeds 0-4, on the bound at one: a float difference between CPU
# families could cross it, so the test uses the gentler of the two presets' scales.)
RECIPE = [
    "train.freeze_backbone_steps=10",
    "train.backbone_warmup_steps=10",
    "train.backbone_lr_scale=0.1",
]
# What the recipe guards against, made unmistakable: no freeze, no warm-up, the backbone at the
# heads' lr, and that lr 500 × the recipe's.
DESTRUCTIVE = ["train.warmup_steps=0", "train.base_lr=0.5"]


def _cfg(run_dir: Path, demo_data: Path, tracking_uri: str, *extra: str):  # noqa: ANN202
    return make_cfg(run_dir, demo_data, tracking_uri, "tracking.enabled=false", *LR, *extra)


def _knn(checkpoint: Path) -> float:
    """`equirecon eval --checkpoint CKPT --tasks knn` (results in the run's evals/)."""
    from evals.run import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, tasks="knn", log_mlflow=False, device="cpu")
    return result["metrics"][KNN]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> tuple[Path, float]:
    """The exported tiny baseline (plain DINOv2) and its kNN top-1."""
    root = tmp_path_factory.mktemp("baseline")
    cfg = _cfg(
        root / "run", demo_data, "", "recon.enabled=false",
        f"train.max_steps={BASELINE_STEPS}", f"checkpoint.every_steps={BASELINE_STEPS}",
    )  # fmt: skip
    Trainer(cfg).fit()
    final = resolve_checkpoint(root / "run" / "checkpoints" / "latest")
    export_checkpoint(final, root / "export")
    return root / "export", _knn(final)


def _continue(
    baseline: tuple[Path, float], run_dir: Path, demo_data: Path, *extra: str
) -> tuple[float, float]:
    """(kNN of the starting model (step 0), kNN of the continued model) of a continuation of
    the baseline's export with reconstruction on (the demo config's SE(2))."""
    export, baseline_knn = baseline
    cfg = _cfg(
        run_dir, demo_data, "", f"model.init={export}", "recon.enabled=true",
        f"train.max_steps={CONTINUE_STEPS}", f"checkpoint.every_steps={CONTINUE_STEPS}", *extra,
    )  # fmt: skip
    Trainer(cfg).fit()
    start = _knn(run_dir / "checkpoints" / "step_00000000")
    # The export carries the baseline's teacher backbone exactly: the same features, same kNN.
    assert start == baseline_knn
    return start, _knn(run_dir / "checkpoints" / f"step_{CONTINUE_STEPS:08d}")


def test_recipe_keeps_knn_of_the_starting_model(
    baseline: tuple[Path, float], tmp_path: Path, demo_data: Path
) -> None:
    start, continued = _continue(baseline, tmp_path / "recipe", demo_data, *RECIPE)
    assert abs(continued - start) <= KNN_TOLERANCE, (start, continued)


def test_destructive_continuation_is_caught(
    baseline: tuple[Path, float], tmp_path: Path, demo_data: Path
) -> None:
    """The check above fails on a torn-apart backbone: kNN drops by more than the tolerance."""
    start, continued = _continue(baseline, tmp_path / "destructive", demo_data, *DESTRUCTIVE)
    assert start - continued > KNN_TOLERANCE, (start, continued)
