"""Batch-subset stochastic depth (`pretrain.models.backbone.set_drop_path_mode`)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pretrain.models.backbone import build_backbone, set_drop_path_mode
from pretrain.models.blocks import _residual, _stochastic_round


def _tiny(drop_path: float, mode: str = "subset") -> nn.Module:
    return build_backbone(
        "vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
        drop_path=drop_path, drop_path_mode=mode,
    )  # fmt: skip


def test_residual_runs_the_branch_on_kept_rows_only_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.randn(10, 5, 4, requires_grad=True)
    seen: list[int] = []

    def branch(y: torch.Tensor) -> torch.Tensor:
        seen.append(y.shape[0])
        return 2 * y + 1

    drop = nn.Identity()
    drop.drop_prob = 0.3
    out = _residual(x, branch, drop, training=True)
    assert seen == [7]  # 10 * 0.3 = 3 rows dropped (an integer: no rounding draw)
    full = x + (10 / 7) * (2 * x + 1)
    kept = torch.isclose(out, full).flatten(1).all(1)
    dropped = torch.isclose(out, x).flatten(1).all(1)
    assert int(kept.sum()) == 7 and int(dropped.sum()) == 3
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_residual_is_the_plain_residual_in_eval() -> None:
    x = torch.randn(4, 3)
    drop = nn.Identity()
    drop.drop_prob = 0.5
    assert torch.equal(_residual(x, lambda y: y * 3, drop, training=False), x + x * 3)


def test_residual_drops_each_sample_with_probability_p_for_any_batch() -> None:
    """b·p = 0.4: one of 4 samples is dropped in 40 % of the calls (stochastic rounding), so
    each sample is dropped with probability p = 0.1, as a Bernoulli(p) mask would."""
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    drop = nn.Identity()
    drop.drop_prob = 0.1
    dropped = torch.zeros(4)
    calls = 3000
    for _ in range(calls):
        out = _residual(x, lambda y: y * 3, drop, training=True)
        dropped += torch.isclose(out, x).all(dim=1).float()
    rate = dropped / calls
    assert torch.allclose(rate, torch.full((4,), 0.1), atol=0.02), rate  # 4 sigma ~ 0.022
    assert _stochastic_round(3.0) == 3 and _stochastic_round(0.0) == 0
    draws = [_stochastic_round(2.25) for _ in range(4000)]
    assert set(draws) == {2, 3} and abs(sum(draws) / len(draws) - 2.25) < 0.03


def test_subset_mode_matches_timm_without_dropping() -> None:
    torch.manual_seed(0)
    subset, mask = _tiny(0.2, "subset"), _tiny(0.2, "mask")
    mask.load_state_dict(subset.state_dict())
    assert all(blk.subset_drop_path for blk in list(subset.blocks)[1:])
    assert not any(blk.subset_drop_path for blk in mask.blocks)
    images = torch.randn(3, 3, 16, 16)
    subset.eval(), mask.eval()
    torch.testing.assert_close(subset(images), mask(images))


def test_subset_mode_trains_and_survives_deepcopy() -> None:
    torch.manual_seed(0)
    bb = _tiny(0.5)
    teacher = copy.deepcopy(bb)
    for blk in teacher.blocks:
        if "forward" in blk.__dict__:
            assert blk.forward.__self__ is blk  # rebound to the copy, not the original
    bb.train()
    out = bb(torch.randn(8, 3, 16, 16))
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in bb.blocks.parameters())


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="drop-path mode"):
        set_drop_path_mode(_tiny(0.1), "fast")


@pytest.mark.parametrize("uniform", [False, True])
def test_drop_path_schedule_linear_or_uniform(uniform: bool) -> None:
    bb = build_backbone(
        "vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2,
        drop_path=0.3, drop_path_uniform=uniform,
    )  # fmt: skip
    rates = [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in bb.blocks]
    rates2 = [getattr(blk.drop_path2, "drop_prob", 0.0) for blk in bb.blocks]
    expected = [0.3] * 4 if uniform else [0.0, 0.1, 0.2, 0.3]
    assert rates == pytest.approx(expected, abs=1e-6) and rates2 == pytest.approx(
        expected, abs=1e-6
    )
    # the first block drops too under the uniform rule, so it takes the subset path
    assert bb.blocks[0].subset_drop_path is uniform
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    bb.train()
    out = bb(x)
    assert out.shape == (8, 17, 32) and torch.isfinite(out).all()
