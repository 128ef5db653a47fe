"""`Backbone.forward(..., rows=...)`: the last block computes only the requested tokens, with the
values, gradients and stochastic-depth draws of the full forward."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.backbone import build_backbone, set_attention_backend


def _tiny(drop_path: float, mode: str, registers: int = 0):  # noqa: ANN202
    return build_backbone(
        "vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
        drop_path=drop_path, drop_path_mode=mode, drop_path_uniform=True,
        num_registers=registers,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("drop_path", "mode", "attention", "registers", "training"),
    [
        (0.0, "subset", "sdpa", 0, True),
        (0.3, "subset", "sdpa", 0, True),  # subset stochastic depth, also in the last block
        (0.3, "mask", "sdpa", 0, True),  # timm's DropPath draws
        (0.3, "subset", "math", 2, True),  # explicit attention, register tokens
        (0.3, "subset", "sdpa", 0, False),
    ],
)
def test_rows_equal_full_forward_values_and_gradients(
    drop_path: float, mode: str, attention: str, registers: int, training: bool
) -> None:
    torch.manual_seed(0)
    bb = _tiny(drop_path, mode, registers)
    set_attention_backend(bb, attention)
    bb.train(training)
    images = torch.randn(6, 3, 16, 16)
    masks = torch.rand(6, 16) < 0.3
    length = bb.num_tokens(images)
    assert length == 1 + registers + 16
    # CLS of every image + a few patch tokens of images 1 and 4, in any order
    rows = torch.cat([bb.cls_rows(images), torch.tensor([1 * length + 5, 4 * length + 9])])

    torch.manual_seed(7)
    full = bb(images, masks)
    full_rows = full.reshape(-1, full.shape[-1])[rows]
    upstream = torch.randn_like(full_rows)
    (full_rows * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}
    bb.zero_grad(set_to_none=True)

    torch.manual_seed(7)
    picked = bb(images, masks, rows=rows)
    assert picked.shape == (rows.numel(), 32)
    torch.testing.assert_close(picked, full_rows, rtol=1e-5, atol=1e-6)
    (picked * upstream).sum().backward()
    for name, p in bb.named_parameters():
        if name in grads:
            scale = float(grads[name].abs().max())
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6 * scale)
        else:
            assert p.grad is None or not p.grad.any(), name
    # the same draws were consumed: the next random number agrees with a full forward's
    after_rows = torch.rand(())
    torch.manual_seed(7)
    bb(images, masks)
    assert torch.equal(torch.rand(()), after_rows)


def test_rows_skip_the_last_blocks_mlp_for_other_tokens() -> None:
    torch.manual_seed(0)
    bb = _tiny(0.0, "subset").eval()
    images = torch.randn(4, 3, 16, 16)
    seen: list[int] = []
    bb.blocks[-1].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    bb(images, rows=bb.cls_rows(images))
    assert seen == [4]  # the 4 CLS rows, not 4 x 17 tokens


@pytest.mark.parametrize("tokens", [10, 50, 197])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_attention_forward_equals_timm(tokens: int, attention: str) -> None:
    """Our attention dispatch (explicit product for short CPU sequences) = timm's forward."""
    torch.manual_seed(0)
    bb = _tiny(0.0, "subset")
    set_attention_backend(bb, attention)
    attn = bb.blocks[0].attn
    x = torch.randn(3, tokens, 32, requires_grad=True)
    ours = attn(x)
    timm_out = type(attn).forward(attn, x)
    torch.testing.assert_close(ours, timm_out, rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_timm,) = torch.autograd.grad(timm_out.sum(), x)
    torch.testing.assert_close(g_ours, g_timm, rtol=1e-5, atol=1e-6)
