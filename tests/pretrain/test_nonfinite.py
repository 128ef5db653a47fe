"""Non-finite losses: the step is skipped and logged; N in a row stop the run with a diagnostic
and a checkpoint of the last good state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equirecon.config import load_config
from equirecon.errors import DivergedError
from pretrain.checkpoint import latest_checkpoint
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES


def _trainer(run_dir: Path, data: Path, *extra: str) -> Trainer:
    cfg = load_config(
        REPO / "configs" / "demo_cpu.yaml",
        TINY_OVERRIDES
        + [f"run.dir={run_dir}", f"data.path={data}", "tracking.enabled=false", *extra],
    )
    return Trainer(cfg)


def _poison(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the loss NaN on the given (1-based) steps, as a diverging model would."""
    compute = trainer.method.compute_losses

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = compute(*args, **kwargs)
        if trainer.step + 1 in bad_steps:
            out.loss_total = out.loss_total * float("nan")
            out.terms["dino"] = out.terms["dino"] * float("nan")
        return out

    trainer.method.compute_losses = wrapped


def _student(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.method.student.state_dict().items()}


def test_single_nonfinite_step_is_skipped(tmp_path: Path, demo_data: Path) -> None:
    trainer = _trainer(tmp_path / "r", demo_data, "train.max_steps=3", "checkpoint.every_steps=100")
    _poison(trainer, {2})
    states = []
    original = trainer.train_step

    def spy(batch, values):  # noqa: ANN001, ANN202
        out = original(batch, values)
        states.append(_student(trainer))
        return out

    trainer.train_step = spy
    trainer.fit()
    assert trainer.step == 3 and trainer.skipped_steps == 1 and trainer.consecutive_skips == 0
    # Step 2 changed nothing; steps 1 and 3 did.
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[1][k], states[2][k]) for k in states[1])
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train/nonfinite_skipped") == 1.0 for r in rows)


def test_consecutive_nonfinite_steps_stop_with_diagnostic(tmp_path: Path, demo_data: Path) -> None:
    run_dir = tmp_path / "r"
    trainer = _trainer(
        run_dir,
        demo_data,
        "train.max_steps=10",
        "train.max_nonfinite_steps=3",
        "checkpoint.every_steps=100",
    )
    _poison(trainer, set(range(2, 11)))
    after_step_1: dict[str, torch.Tensor] = {}
    original = trainer.train_step

    def spy(batch, values):  # noqa: ANN001, ANN202
        out = original(batch, values)
        if trainer.step == 0:
            after_step_1.update(_student(trainer))
        return out

    trainer.train_step = spy
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite steps") as err:
        trainer.fit()
    assert "non-finite loss" in str(err.value) and "dino" in str(err.value)
    assert isinstance(err.value, DivergedError) and err.value.exit_code == 5  # one line, exit 5
    assert "\n" not in str(err.value)
    diag_files = list(run_dir.glob("nonfinite_step_*_rank0.json"))
    assert len(diag_files) == 1
    diag = json.loads(diag_files[0].read_text())
    assert diag["step"] == 4 and diag["reason"] == "non-finite loss"
    assert diag["batch"]["global_crops"]["finite"] is True and "loss_recon" in diag
    # The checkpoint holds the last good weights (those after step 1).
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None and Path(diag["checkpoint"]) == ckpt
    fresh = _trainer(tmp_path / "r", demo_data, "train.max_steps=10")
    assert fresh.maybe_resume()
    for k, v in fresh.method.student.state_dict().items():
        assert torch.equal(v, after_step_1[k]), k
