"""Backbone registry: paper sizes on the meta device, attention backends agree, masks, registers."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.backbone import ARCHS, build_backbone, list_archs, set_attention_backend

# Published parameter counts of the backbones (no head): ViT-S/16 22M, B/16 86M, L 304M, g/14 1.1B.
PAPER_SIZES = {
    "vit_small_patch16": (21.5e6, 22.5e6),
    "vit_base_patch16": (85.5e6, 86.8e6),
    "vit_large_patch16": (302e6, 305e6),
    "vit_large_patch14": (302e6, 305e6),
    "vit_giant_patch14": (1.10e9, 1.15e9),
}


@pytest.mark.parametrize("arch", sorted(PAPER_SIZES))
def test_paper_backbones_build_on_meta_with_published_size(arch: str) -> None:
    with torch.device("meta"):
        bb = build_backbone(arch, img_size=224)
    n = sum(p.numel() for name, p in bb.named_parameters() if name != "mask_token")
    lo, hi = PAPER_SIZES[arch]
    assert lo <= n <= hi, f"{arch}: {n / 1e6:.1f}M parameters"
    assert next(bb.parameters()).is_meta  # nothing was allocated
    assert bb.patch_size == (14 if arch.endswith("14") else 16)


def test_registry_lists_required_archs_and_rejects_unknown() -> None:
    assert set(PAPER_SIZES) | {"vit_tiny"} <= set(list_archs()) == set(ARCHS)
    with pytest.raises(KeyError, match="unknown model.arch"):
        build_backbone("resnet50")


def _tiny(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(
        "vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, **kw
    ).eval()


def test_sdpa_and_math_attention_give_the_same_outputs() -> None:
    bb = _tiny()
    x = torch.randn(3, 3, 16, 16)
    masks = torch.zeros(3, 16, dtype=torch.bool)
    masks[1, 2:7] = True
    with torch.no_grad():
        set_attention_backend(bb, "sdpa")
        a = bb(x, masks)
        set_attention_backend(bb, "math")
        b = bb(x, masks)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not bb.blocks[0].attn.fused_attn


def test_xformers_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the xformers path is exercised by benchmarks/gpu_suite")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        _tiny(attention="xformers")
    with pytest.raises(ValueError, match="choose one of"):
        _tiny(attention="flash")


def test_registers_drop_path_and_dynamic_sizes() -> None:
    bb = _tiny(num_registers=4, drop_path=0.1)
    assert bb.num_prefix_tokens == 5
    assert bb(torch.randn(2, 3, 16, 16)).shape == (2, 5 + 16, 32)
    assert bb(torch.randn(2, 3, 8, 8)).shape == (2, 5 + 4, 32)  # local crops: fewer patches
    dpr = [blk.drop_path1.drop_prob for blk in bb.blocks if hasattr(blk.drop_path1, "drop_prob")]
    assert dpr and max(dpr) == pytest.approx(0.1)
