"""Checkpointer: atomic publication, `latest`, retention (keep + keep_every), round trip."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pretrain.checkpoint import Checkpointer, latest_checkpoint, list_checkpoints, read_meta


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3, 2), value)}, "trainer": {"step": torch.tensor(0)}}


def test_retention_keeps_newest_and_every_nth(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=2, keep_every=4)
    for step in range(1, 11):
        ckpt.save(step, _state(float(step)), "a: 1\n", {"world_size": 1})
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 8, 9, 10]
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000010"
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))


def test_round_trip_config_and_meta(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=1)
    path = ckpt.save(7, _state(3.5), "train:\n  seed: 1\n", {"world_size": 2, "strategy": "ddp"})
    target = _state(0.0)
    ckpt.load(path, target)
    assert torch.equal(target["model"]["w"], torch.full((3, 2), 3.5))
    assert (path / "config.yaml").read_text() == "train:\n  seed: 1\n"
    meta = read_meta(path)
    assert (meta["step"], meta["world_size"], meta["strategy"]) == (7, 2, "ddp")
    assert json.loads((path / "meta.json").read_text())["step"] == 7


def test_incomplete_directory_is_never_latest(tmp_path: Path) -> None:
    """A directory without DCP metadata (a crash before the write finished) is ignored, even
    when `latest` names it."""
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, _state(1.0), "", {})
    broken = tmp_path / "checkpoints" / "step_00000002"
    broken.mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002\n")
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000001"
