"""Config on resume: changes to what a checkpoint holds refuse with a table and the ways out;
the allowed keys are accepted and reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from equirecon.config import load_config, save_config
from equirecon.errors import ResumeConfigError
from equirecon.resume_config import (
    ALLOWED_ON_RESUME,
    check_resume_config,
    config_changes,
    is_allowed_on_resume,
    load_saved_config,
)
from tests.conftest import REPO

DEMO = REPO / "configs" / "demo_cpu.yaml"


@pytest.fixture()
def saved(tmp_path: Path) -> dict:
    path = tmp_path / "config.yaml"
    save_config(load_config(DEMO, ["train.max_steps=10"]), path)
    return load_saved_config(path)


@pytest.mark.parametrize(
    "override",
    [
        "model.embed_dim=96",
        "method.name=ibot",
        "model.depth=3",
        "recon.enabled=false",
        "recon.transform=rotation",
        "split.d_patch=96",
        "train.seed=1",
        "train.base_lr=0.1",
        "data.global_size=64",
        "data.backend=synthetic",
        "method.head_out_dim=128",
    ],
)
def test_changes_to_what_the_checkpoint_holds_refuse(saved: dict, override: str) -> None:
    new = load_config(DEMO, ["train.max_steps=10", override])
    key = override.split("=")[0]
    with pytest.raises(ResumeConfigError) as info:
        check_resume_config(saved, new, "runs/x", 1, 1)
    message = str(info.value)
    table = message.split("\n")[1:]
    assert table[0].split() == ["key", "saved", "now"]
    assert any(row.split()[0] == key for row in table[1:]), message
    assert "run.dir=" in info.value.hint and "drop these overrides" in info.value.hint
    assert f"{key}=" in info.value.hint  # the saved value, ready to pass
    if key in ("model.embed_dim", "method.name", "recon.enabled"):
        spelled = {"model.embed_dim": "128", "method.name": "dinov2", "recon.enabled": "true"}
        assert f"{key}={spelled[key]}" in info.value.hint


@pytest.mark.parametrize(
    "override",
    [
        "train.max_steps=20",
        "train.log_every=5",
        "checkpoint.every_steps=7",
        "checkpoint.keep=9",
        "eval.tasks=knn",
        "tracking.experiment=other",
        "run.name=again",
        "train.strategy=ddp",
        "data.path=/elsewhere/demo",
    ],
)
def test_allowed_changes_are_accepted_and_reported(saved: dict, override: str) -> None:
    key, value = override.split("=")
    new = load_config(DEMO, [override])
    changes = check_resume_config(saved, new, "runs/x", 1, 1)
    assert key in changes and str(changes[key][1]) == value


def test_per_rank_batch_may_follow_the_world_size(saved: dict) -> None:
    half = load_config(DEMO, ["train.max_steps=10", "train.batch_size=16"])  # demo: 32 per rank
    assert saved["train.batch_size"] == 32
    assert "train.batch_size" in check_resume_config(saved, half, "r", 1, 2)
    refused, _ = config_changes(saved, half, 1, 1)
    assert list(refused) == ["train.batch_size x ranks (global batch)"]


def test_allowed_set_is_explicit() -> None:
    assert is_allowed_on_resume("eval.knn.k") and is_allowed_on_resume("train.max_steps")
    assert not is_allowed_on_resume("train.max_steps_extra")
    assert not is_allowed_on_resume("train.weight_decay") and not is_allowed_on_resume("model.arch")
    assert all(a.endswith(".") or a.count(".") == 1 for a in ALLOWED_ON_RESUME)
