"""The method-effect study's positive control (issue #25): `recon.theta_head_weight` adds a head
that regresses θ from the global vectors of f(u) and f(g_θ u), so training must put θ there."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.batch import Batch
from equirecon.config import load_config
from equirecon.errors import ConfigError
from pretrain.methods import build_method
from pretrain.train import transform_generator
from tests.conftest import TINY_OVERRIDES

VICREG = [
    *TINY_OVERRIDES,
    "method.name=vicreg",
    "method.expander_dim=32",
    "recon.transform=rotation",
]


def _batch() -> Batch:
    gen = torch.Generator().manual_seed(3)
    return Batch(
        global_crops=torch.randn(2, 4, 3, 16, 16, generator=gen),
        local_crops=torch.randn(2, 4, 3, 8, 8, generator=gen),
        masks=torch.zeros(2, 4, 16, dtype=torch.bool),
    )


def test_the_control_adds_its_weighted_loss_and_reaches_the_backbone() -> None:
    torch.manual_seed(0)
    method = build_method(load_config(None, [*VICREG, "recon.theta_head_weight=2.0"]))
    assert "theta_head.0.weight" in dict(method.student.named_parameters())
    out = method.compute_losses(method.student, _batch(), 0.0, transform_generator(1, 0))
    theta = out.terms["theta_control"]
    expected = out.loss_ssl + 1.0 * out.loss_recon + 2.0 * theta
    torch.testing.assert_close(out.loss_total.detach(), expected.detach(), rtol=1e-6, atol=0)

    # The control's own gradient reaches the backbone (the point of the control).
    method.zero_grad()
    views = method.recon.views(_batch(), transform_generator(1, 0))
    pred = method.student(views.global_crops, views.source)["theta_pred"]
    method.recon.theta_loss(pred, views).backward()
    block = method.student.encoder.backbone.vit.blocks[0].attn.qkv.weight
    assert block.grad is not None and block.grad.abs().sum() > 0


def test_off_by_default_adds_nothing() -> None:
    torch.manual_seed(0)
    method = build_method(load_config(None, VICREG))
    assert not any("theta_head" in k for k in method.state_dict())
    out = method.compute_losses(method.student, _batch(), 0.0, transform_generator(1, 0))
    assert "theta_control" not in out.terms


@pytest.mark.parametrize(
    "overrides",
    [["method.name=dinov2"], ["recon.enabled=false"]],
    ids=["teacher-method", "recon-off"],
)
def test_the_control_needs_g_and_a_teacher_free_method(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="recon.theta_head_weight"):
        load_config(None, [*VICREG, "recon.theta_head_weight=1", *overrides])
