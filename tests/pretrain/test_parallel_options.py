"""Engine options in one process: activation checkpointing and torch.compile change how the
blocks run, never what they compute; bf16 autocast trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equirecon.config import load_config
from pretrain.parallel import build_engine
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES

BASE = [*TINY_OVERRIDES, "data.backend=synthetic", "tracking.enabled=false", "train.max_steps=3"]


def _run(run_dir: Path, *extra: str) -> list[float]:
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", [*BASE, f"run.dir={run_dir}", *extra])
    Trainer(cfg).fit()
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss_total"] for r in rows]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _run(tmp_path_factory.mktemp("plain") / "run")


def test_activation_checkpointing_computes_the_same(tmp_path: Path, plain: list[float]) -> None:
    assert _run(tmp_path / "ac", "train.activation_checkpointing=true") == pytest.approx(
        plain, abs=1e-6
    )


def test_compiled_blocks_compute_the_same(tmp_path: Path, plain: list[float]) -> None:
    """Dynamo + AOT autograd on every block (backend aot_eager: the inductor code generation
    that GPUs use is too slow to build on 2 CPU cores, about 3 minutes)."""
    losses = _run(tmp_path / "compiled", "train.compile=true", "train.compile_backend=aot_eager")
    assert losses == pytest.approx(plain, abs=1e-5)


def test_options_keep_parameter_names() -> None:
    """Checkpoints of any option set load into any other (DCP keys are parameter names)."""
    from pretrain.methods import build_method

    names = {}
    for extra in ([], ["train.activation_checkpointing=true", "train.compile=true"]):
        cfg = load_config(REPO / "configs" / "demo_cpu.yaml", [*BASE, *extra])
        method = build_method(cfg)
        build_engine(method, cfg, torch.device("cpu"))
        names[bool(extra)] = sorted(method.student.state_dict())
    assert names[True] == names[False]


def test_bf16_autocast_trains(tmp_path: Path, plain: list[float]) -> None:
    losses = _run(tmp_path / "bf16", "train.precision=bf16")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses == pytest.approx(plain, rel=0.05)  # bf16 rounding, same trajectory
