"""The benchmark protocol configs (configs/eval/*.yaml) load and validate, hold the DINOv2-style
settings they claim, and the commands in their comments parse as real CLI commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from data_pipeline.formats import FORMATS
from equirecon.cli import build_parser
from equirecon.config import EvalConfig, load_config
from evals.run import _apply_eval_settings, parse_tasks
from evals.watch import CheckpointWatcher

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "eval"
DINOV2_LINEAR_LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]
EXPECTED = {
    "imagenet_linear": ("knn,linear", 224, "imagefolder"),
    "ade20k_linear": ("segmentation", 512, "ade20k"),
    "nyu_depth_linear": ("depth", 448, "nyu-depth"),
}


def commands(path: Path) -> list[list[str]]:
    """The `equirecon ...` commands of a config's comments (continuation lines joined)."""
    text = re.sub(r"\\\n#\s*", " ", path.read_text())
    found = []
    for line in text.splitlines():
        match = re.match(r"#\s+equirecon (.*)", line)
        if match:
            found.append(shlex.split(match.group(1)))
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protocol_config_loads_and_validates(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    tasks, img_size, fmt = EXPECTED[name]
    load_config(path)  # strict: unknown keys are errors
    e = _apply_eval_settings(EvalConfig(), path, None)  # what `eval --config` uses
    assert e.tasks == tasks and parse_tasks(None, e.tasks) == tasks.split(",")
    assert e.img_size == img_size
    assert e.feature_layers >= 1
    if name == "imagenet_linear":
        assert [float(v) for v in e.linear.lrs.split(",")] == DINOV2_LINEAR_LRS
        assert (e.linear.epochs, e.knn.k, e.feature_layers) == (10, 20, 4)
        assert e.labelled_train_images == e.labelled_test_images == 0  # the whole dataset
    if name == "ade20k_linear":
        assert e.segmentation.train_images == 0 and e.segmentation.epochs == 32
    if name == "nyu_depth_linear":
        assert e.depth.train_images == e.depth.test_images == 0 and e.depth.epochs == 25


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_commands_in_the_config_parse(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    argvs = commands(path)
    assert [a[:2] for a in argvs] == [
        ["data", "build"],
        ["eval", "--checkpoint"],
        ["eval", "watch"],
    ]
    convert, evaluate, watch = argvs
    assert convert[convert.index("--format") + 1] == EXPECTED[name][2] in FORMATS
    args = build_parser().parse_args(evaluate)
    assert Path(args.config) == path.relative_to(REPO)
    routed = ["eval-watch", *watch[2:]]  # as `equirecon.cli.main` routes `eval watch`
    args, extra = build_parser().parse_known_args(routed)
    assert args.executor == "slurm" and Path(args.config) == path.relative_to(REPO)
    assert [*args.overrides, *extra][0].startswith("eval.data=")


def test_watch_passes_the_protocol_config_to_every_eval_job(tmp_path: Path) -> None:
    path = CONFIGS / "imagenet_linear.yaml"
    watcher = CheckpointWatcher(tmp_path, "debug", overrides=["eval.data=/d"], config=path)
    assert watcher.eval_fn.keywords == {"overrides": ["eval.data=/d"], "config": str(path)}
