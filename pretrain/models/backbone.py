"""ViT backbones over timm, with a mask token for iBOT-style masked inputs."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import DropPath
from torch import nn

from pretrain.models.blocks import (  # noqa: F401  (set_drop_path_mode: public, re-exported)
    DROP_PATH_MODES,
    attention_forward,
    set_drop_path_mode,
)


@dataclass(frozen=True)
class ArchSpec:
    """A backbone of the registry: the timm model it builds and its default kwargs."""

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


# Names users put in `model.arch`. Patch size and resolution can be overridden from the config.
ARCHS: dict[str, ArchSpec] = {
    "vit_tiny": ArchSpec("vit_tiny_patch16_224"),
    "vit_small_patch16": ArchSpec("vit_small_patch16_224"),
    "vit_base_patch16": ArchSpec("vit_base_patch16_224"),
    "vit_large_patch16": ArchSpec("vit_large_patch16_224"),
    "vit_large_patch14": ArchSpec("vit_large_patch14_224"),
    # DINOv2's g/14: width 1536, depth 40, 24 heads, SwiGLU FFN (hidden 4096), LayerScale (≈1.1B).
    "vit_giant_patch14": ArchSpec("vit_giant_patch14_dinov2"),
}

ATTENTION_BACKENDS = ("sdpa", "math", "xformers")


def list_archs() -> list[str]:
    return sorted(ARCHS)


class Backbone(nn.Module):
    """A timm VisionTransformer that accepts per-patch masks and any crop size.

    `forward(images (B, 3, H, W), masks (B, N) bool | None) -> tokens (B, P + N, D)` after the
    final norm, where P = `num_prefix_tokens` (CLS + registers) and N = (H/p)·(W/p). Masked
    patches have their embedding replaced by a learned mask token before the position embedding.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim: int = vit.embed_dim
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.num_heads: int = vit.blocks[0].attn.num_heads
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    def num_tokens(self, images: torch.Tensor) -> int:
        """L = P + N, the tokens per image of `images` (B, 3, H, W)."""
        h, w = images.shape[-2:]
        return self.num_prefix_tokens + (h // self.patch_size) * (w // self.patch_size)

    def cls_rows(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) positions of each image's CLS token in the (B·L) flattened tokens."""
        return torch.arange(images.shape[0], device=images.device) * self.num_tokens(images)

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (B, P + N, D) after the final norm; only `rows` (R, D) when given.

        Args:
            images: (B, 3, H, W).
            masks: (B, N) bool, True = replace the patch by the mask token; or None.
            rows: (R,) positions in the (B·(P + N)) flattened output: the last block then
                computes its projection, MLP and residuals for these tokens only (its attention
                still reads all of them); same values as `forward(images, masks)` flattened
                and indexed (`pretrain.models.blocks`).
        """
        vit = self.vit
        x = vit.patch_embed(images)  # (B, h, w, D): dynamic_img_size keeps the grid
        if masks is not None:
            b, h, w, _ = x.shape
            x = torch.where(masks.view(b, h, w, 1), self.mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        if rows is None:
            x = vit.blocks(x)
        else:
            *first, last = vit.blocks
            for block in first:
                x = block(x)
            x = last(x, rows=rows)
        return vit.norm(x)

    def last_layers(self, images: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Tokens (B, P + N, D) of each of the last `n` blocks, each after the final norm
        (DINOv2's `get_intermediate_layers(..., norm=True)`), oldest first."""
        depth = len(self.vit.blocks)
        if not 1 <= n <= depth:
            raise ValueError(f"eval.feature_layers={n}: the backbone has {depth} blocks")
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        outputs = []
        for index, block in enumerate(vit.blocks):
            x = block(x)
            if index >= depth - n:
                outputs.append(vit.norm(x))
        return outputs


def check_xformers() -> None:
    """Raise a clear error unless xformers can run here (CUDA + an importable xformers)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "model.attention=xformers needs a CUDA GPU (xformers has no CPU kernels); "
            "use model.attention=sdpa, which picks flash/efficient/cudnn kernels on GPU"
        )
    try:
        import xformers.ops  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "model.attention=xformers needs the `gpu` extra: pip install 'equirecon[gpu]'"
        ) from e


def set_attention_backend(backbone: Backbone, backend: str) -> None:
    """`sdpa`: torch scaled_dot_product_attention (flash/efficient/cudnn kernels on GPU; on a
    CPU, sequences of <= 128 tokens use the explicit product, faster there); `math`: the
    explicit softmax(QKᵀ)V (reference); `xformers`: xformers' memory_efficient_attention
    (CUDA only, the `gpu` extra). All through `pretrain.models.blocks.attention_forward`."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention={backend!r}; choose one of {ATTENTION_BACKENDS}")
    if backend == "xformers":
        check_xformers()
    for blk in backbone.blocks:
        attn = blk.attn
        attn.fused_attn = backend == "sdpa"
        attn.xformers = backend == "xformers"
        attn.forward = types.MethodType(attention_forward, attn)


def build_backbone(
    arch: str,
    img_size: int = 224,
    patch_size: int | None = None,
    drop_path: float = 0.0,
    num_registers: int = 0,
    attention: str = "sdpa",
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    drop_path_mode: str = "subset",
    drop_path_uniform: bool = False,
    layerscale: float | None = None,
    **overrides: Any,
) -> Backbone:
    """Create the backbone `arch` (random init; nothing is downloaded).

    `layerscale`: LayerScale init value of every block's two residual branches (timm's
    `init_values`, a trained per-channel gain); 0: none; None: the arch's own.

    `drop_path_mode`: how stochastic depth is computed (`set_drop_path_mode`).
    `drop_path_uniform`: every block drops with rate `drop_path` (DINOv2); otherwise the rate
    rises linearly from 0 in the first block to `drop_path` in the last (timm's rule).
    """
    if arch not in ARCHS:
        raise KeyError(f"unknown model.arch {arch!r}; choose one of {list_archs()}")
    spec = ARCHS[arch]
    kwargs: dict[str, Any] = dict(spec.kwargs)
    kwargs.update(
        img_size=img_size,
        drop_path_rate=drop_path,
        num_classes=0,
        dynamic_img_size=True,
        pretrained=False,
    )
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    for key, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if value is not None:
            kwargs[key] = value
    if num_registers:
        kwargs.update(reg_tokens=num_registers)
    if layerscale is not None:
        kwargs["init_values"] = layerscale if layerscale > 0 else None
    kwargs.update(overrides)
    vit = timm.create_model(spec.timm_name, **kwargs)
    if drop_path_uniform and drop_path > 0:
        for blk in vit.blocks:
            blk.drop_path1, blk.drop_path2 = DropPath(drop_path), DropPath(drop_path)
    backbone = Backbone(vit)
    set_attention_backend(backbone, attention)
    set_drop_path_mode(backbone, drop_path_mode)
    return backbone


def backbone_kwargs(model_cfg: Any, img_size: int) -> dict[str, Any]:
    """`build_backbone` arguments from a `model.*` config section."""
    return dict(
        arch=model_cfg.arch,
        img_size=img_size,
        patch_size=model_cfg.patch_size,
        drop_path=model_cfg.drop_path,
        drop_path_uniform=bool(model_cfg.drop_path_uniform),
        layerscale=model_cfg.layerscale,
        num_registers=model_cfg.num_registers,
        attention=model_cfg.attention,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
    )
