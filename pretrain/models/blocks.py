"""How our backbones run timm's transformer blocks: stochastic depth on a batch subset, and a
last block that computes only the tokens that are read.

`set_drop_path_mode` binds `block_forward` to every block. It is timm's `Block.forward` plus:

- **batch-subset stochastic depth** (``subset`` mode): a block's residual branches run only on
  the samples that keep them (`_residual`), instead of on all samples times a 0/1 mask;
- **rows** (`block_forward(x, rows=...)`): the block returns only the token rows it is asked
  for, (R, D), from the (B·L, D) flattening of its output. Attention still reads every token's
  keys and values, but the output projection, the MLP and both residuals run on those rows
  only: for the last block of a network whose heads read the CLS token (and the masked
  patches), that is ~3/4 of the block's FLOPs saved on every other token. The values, and
  the random draws of stochastic depth, are the ones the full block gives.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DROP_PATH_MODES = ("subset", "mask")


def _stochastic_round(value: float) -> int:
    """floor(value) + 1 with probability frac(value): an integer with expectation `value`
    (a host-side draw from torch's CPU generator: no device synchronization)."""
    whole = math.floor(value)
    frac = value - whole
    return whole + int(frac > 1e-9 and float(torch.rand(())) < frac)


def _kept_samples(b: int, p: float, training: bool, device: torch.device) -> torch.Tensor | None:
    """The samples that keep a residual branch under stochastic depth of rate p, or None when
    all do. b·p is rounded stochastically, so each sample drops with probability exactly p."""
    n_drop = _stochastic_round(b * p) if training and p > 0 else 0
    if n_drop == 0:
        return None
    return torch.randperm(b, device=device)[: max(b - n_drop, 1)]


def _residual(x: torch.Tensor, branch: Any, drop: nn.Module, training: bool) -> torch.Tensor:
    """x + drop_path(branch(x)), with `branch` computed only on the samples that are kept.

    Stochastic depth drops the residual branch of a random subset of samples; instead of
    computing the branch for all of them and multiplying by a 0/1 mask (timm's `DropPath`), take
    the kept rows, run the branch on them only and add it back scaled by b/kept. The number of
    dropped samples is b·p rounded stochastically (floor(b·p), plus one with probability
    frac(b·p)), so every sample is dropped with probability exactly p, as with a Bernoulli(p)
    mask, for any batch size; the kept samples are a uniform random subset.
    """
    b = x.shape[0]
    kept = _kept_samples(b, float(getattr(drop, "drop_prob", 0.0)), training, x.device)
    if kept is None:
        return x + branch(x)
    out = branch(x[kept])
    return torch.index_add(x, 0, kept, out.to(x.dtype), alpha=b / kept.shape[0])


# ---- attention, split at the output projection ----------------------------------------------


# On a CPU, softmax(QKᵀ)V as three ops beats SDPA's fused kernel for short sequences (fwd +
# bwd, 2 threads, 6 heads of 64: 0.66x at 50 tokens, 0.62x at 10, equal at 197).
CPU_EXPLICIT_ATTENTION_MAX_TOKENS = 128


def attention_context(attn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """timm `Attention.forward` of y (B, N, C) up to its output norm/gate/projection:
    the attention-weighted values, (B, N, attn_dim). xformers' kernel when bound; SDPA when
    `attn.fused_attn`, except on a CPU for N <= `CPU_EXPLICIT_ATTENTION_MAX_TOKENS`."""
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim)
    drop = attn.attn_drop.p if attn.training else 0.0
    if getattr(attn, "xformers", False):
        from xformers.ops import memory_efficient_attention

        q, k, v = qkv.unbind(2)  # (B, N, H, Dh)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return memory_efficient_attention(q, k, v, p=drop, scale=attn.scale).reshape(b, n, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, Dh)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn and (y.device.type != "cpu" or n > CPU_EXPLICIT_ATTENTION_MAX_TOKENS):
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    else:
        weights = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = weights @ v
    return out.transpose(1, 2).reshape(b, n, -1)


def attention_output(
    attn: nn.Module, context: torch.Tensor, y: torch.Tensor | None
) -> torch.Tensor:
    """The rest of `Attention.forward`, token-wise: norm, gate (from the input y, the same
    tokens as `context`; unused without a gate), projection."""
    x = attn.norm(context)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        x = x * gate(y).sigmoid()
    return attn.proj_drop(attn.proj(x))


def attention_forward(
    self: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """timm `Attention.forward` through `attention_context` (our kernel choice); masked or
    causal attention goes to timm's own forward (xformers cannot take it)."""
    if attn_mask is not None or is_causal:
        if getattr(self, "xformers", False):
            raise NotImplementedError(
                "model.attention=xformers supports unmasked self-attention only"
            )
        return type(self).forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    return attention_output(self, attention_context(self, x), x)


# ---- the block ----------------------------------------------------------------------------


def _row_scales(
    blk: nn.Module, which: int, b: int, x: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor | None:
    """(R, 1) stochastic-depth factor of each row's branch (0 dropped, else the kept rescale),
    drawn exactly as the full block draws it; None when no sample drops."""
    drop = getattr(blk, f"drop_path{which}")
    if not blk.training or float(getattr(drop, "drop_prob", 0.0)) <= 0:
        return None
    if blk.subset_drop_path:
        kept = _kept_samples(b, float(drop.drop_prob), True, x.device)
        if kept is None:
            return None
        per_sample = x.new_zeros(b)
        per_sample[kept] = b / kept.shape[0]
    else:  # timm's DropPath: its own Bernoulli draw of shape (b, 1)
        per_sample = drop(x.new_ones(b, 1)).reshape(b)
    return per_sample[sample].unsqueeze(1)


def _block_rows(blk: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`rows` (R,) of the block's (B·L, D) output: attention over all tokens, the rest per row."""
    b, length, dim = x.shape
    sample = torch.div(rows, length, rounding_mode="floor")
    flat = x.reshape(b * length, dim)
    subset = blk.subset_drop_path
    scale = _row_scales(blk, 1, b, x, sample) if subset else None  # drawn where the block does
    y = blk.norm1(x)
    context = attention_context(blk.attn, y).reshape(b * length, -1).index_select(0, rows)
    gated = getattr(blk.attn, "gate", None) is not None
    y_rows = y.reshape(b * length, dim).index_select(0, rows) if gated else None
    branch = blk.ls1(attention_output(blk.attn, context, y_rows))
    if not subset:
        scale = _row_scales(blk, 1, b, x, sample)
    x_rows = flat.index_select(0, rows)
    x_rows = x_rows + (branch if scale is None else branch * scale)
    scale = _row_scales(blk, 2, b, x, sample) if subset else None
    branch = blk.ls2(blk.mlp(blk.norm2(x_rows)))
    if not subset:
        scale = _row_scales(blk, 2, b, x, sample)
    return x_rows + (branch if scale is None else branch * scale)


def block_forward(
    self: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm `Block.forward` (B, L, D) -> (B, L, D), or -> (R, D) for `rows` (see module doc)."""
    if attn_mask is not None or is_causal:
        if rows is not None:
            raise NotImplementedError("rows= needs unmasked, non-causal self-attention")
        return type(self).forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
    if rows is not None:
        return _block_rows(self, x, rows)
    if not self.subset_drop_path:
        return type(self).forward(self, x)
    x = _residual(x, lambda y: self.ls1(self.attn(self.norm1(y))), self.drop_path1, self.training)
    return _residual(x, lambda y: self.ls2(self.mlp(self.norm2(y))), self.drop_path2, self.training)


def set_drop_path_mode(backbone: nn.Module, mode: str) -> None:
    """`subset` (default): stochastic depth computes each block's branches only on the kept
    samples (saves ~drop-rate of the student's block FLOPs); `mask`: timm's `DropPath`
    (computes everything, multiplies by a 0/1 mask). Every block gets `block_forward`; its
    `subset_drop_path` says which path it takes."""
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"drop-path mode {mode!r}; choose one of {DROP_PATH_MODES}")
    for blk in backbone.blocks:
        probs = [getattr(blk, n, None) for n in ("drop_path1", "drop_path2")]
        drops = any(float(getattr(d, "drop_prob", 0.0)) > 0 for d in probs)
        blk.subset_drop_path = mode == "subset" and drops
        blk.forward = types.MethodType(block_forward, blk)
