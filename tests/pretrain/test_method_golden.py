"""Every base method, recon on and off, is the same module and the same step as when this test
was written (issue #15, the restructuring of `pretrain/methods` and the recon branch).

`method_golden.json` was captured from the code before the restructuring
(`python -m tests.pretrain.test_method_golden --capture`): the names, order and shapes of the
method's state dict (the checkpoint keys of `student.*` / `teacher.*`), the order of the
student's parameters (the optimizer's), a checksum of the initial weights and of the next
torch draw after a step (the same random draws), and one step's losses and gradient norm for
a fixed seed, batch and θ draw. A refactor must reproduce all of them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from data_pipeline.batch import Batch
from equirecon.config import load_config
from pretrain.methods import build_method
from pretrain.train import transform_generator
from tests.conftest import TINY_OVERRIDES

GOLDEN = Path(__file__).with_name("method_golden.json")
CASES = [(name, recon) for name in ("dinov2", "ibot", "vicreg", "simclr") for recon in (1, 0)]
TINY_METHOD = [
    "method.expander_dim=32",
    "method.projector_hidden_dim=32",
    "method.projector_dim=16",
    "model.drop_path=0.2",  # stochastic depth: the step's torch draws are part of the record
]


def _batch() -> Batch:
    gen = torch.Generator().manual_seed(7)
    masks = torch.rand(2, 4, 16, generator=gen) < 0.4
    return Batch(
        global_crops=torch.randn(2, 4, 3, 16, 16, generator=gen),
        local_crops=torch.randn(2, 4, 3, 8, 8, generator=gen),
        masks=masks,
    )


def record(name: str, recon: int) -> dict[str, Any]:
    """What the golden file holds for one method: structure, draws, one step's losses."""
    cfg = load_config(
        None,
        [
            *TINY_OVERRIDES,
            *TINY_METHOD,
            f"method.name={name}",
            f"recon.enabled={'true' if recon else 'false'}",
        ],
    )
    torch.manual_seed(123)
    method = build_method(cfg)
    method.train()
    state = [[k, list(v.shape)] for k, v in method.state_dict().items()]
    student_params = [k for k, _ in method.student.named_parameters()]
    with torch.no_grad():
        weights = float(sum(p.double().sum() for p in method.parameters()))
    torch.manual_seed(5)
    out = method.compute_losses(method.student, _batch(), 0.05, transform_generator(3, 2))
    out.loss_total.backward()
    grad_sq = float(
        sum(p.grad.double().pow(2).sum() for p in method.student.parameters() if p.grad is not None)
    )
    method.update_teacher(0.9)
    teacher = (
        float(sum(p.double().sum() for p in method.teacher.parameters()))
        if method.teacher is not None
        else None
    )
    return {
        "state_dict": state,
        "student_parameters": student_params,
        "weights_sum": weights,
        "loss_total": float(out.loss_total.detach()),
        "loss_ssl": float(out.loss_ssl.detach()),
        "loss_recon": None if out.loss_recon is None else float(out.loss_recon.detach()),
        "terms": {k: float(v) for k, v in out.terms.items()},
        "grad_sq": grad_sq,
        "teacher_sum_after_ema": teacher,
        "next_draw": float(torch.rand(())),
        "logged": {
            "recon_inputs": None if out.recon_inputs is None else list(out.recon_inputs.shape),
            "transformed": None if out.transformed is None else list(out.transformed.shape),
            "recon_targets": [list(t.shape) for t in out.recon_targets],
            "recon_preds": [list(t.shape) for t in out.recon_preds],
        },
    }


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The golden numbers were captured on one thread: CPU reductions (BatchNorm, matmul) sum in
    a thread-count dependent order, which moves a squared gradient norm by ~1e-6 relative."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _close(got: Any, want: Any, what: str) -> None:
    if want is None or got is None:
        assert got is want is None or got == want, what
        return
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7), what


@pytest.mark.parametrize(("name", "recon"), CASES)
def test_method_matches_the_code_before_the_restructuring(name: str, recon: int) -> None:
    want = json.loads(GOLDEN.read_text())[f"{name}/{recon}"]
    with _one_thread():
        got = record(name, recon)
    assert got["state_dict"] == want["state_dict"]  # keys, order and shapes of checkpoints
    assert got["student_parameters"] == want["student_parameters"]  # optimizer order
    assert got["logged"] == want["logged"]
    assert set(got["terms"]) == set(want["terms"])
    for key in (
        "weights_sum",
        "loss_total",
        "loss_ssl",
        "loss_recon",
        "grad_sq",
        "teacher_sum_after_ema",
        "next_draw",
    ):
        _close(got[key], want[key], key)
    for key, value in want["terms"].items():
        _close(got["terms"][key], value, f"terms.{key}")


if __name__ == "__main__" and "--capture" in sys.argv:
    with _one_thread():
        records = {f"{n}/{r}": record(n, r) for n, r in CASES}
    GOLDEN.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
