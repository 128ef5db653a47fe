"""Projection heads: the split head (z_inv | z_equi) and the DINO/iBOT prototype head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitHead(nn.Module):
    """One linear layer D -> d_patch on every token, split along features.

    `forward(tokens (..., D)) -> (z_inv (..., d_patch - d_equi), z_equi (..., d_equi))`.
    """

    def __init__(self, in_dim: int, d_patch: int, d_equi: int) -> None:
        super().__init__()
        if not 0 < d_equi < d_patch:
            raise ValueError(f"need 0 < recon.d_equi ({d_equi}) < split.d_patch ({d_patch})")
        self.d_patch, self.d_equi = d_patch, d_equi
        self.proj = nn.Linear(in_dim, d_patch)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    @property
    def d_inv(self) -> int:
        return self.d_patch - self.d_equi

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj(tokens)
        return z[..., : self.d_inv], z[..., self.d_inv :]

    def inv(self, tokens: torch.Tensor) -> torch.Tensor:
        """z_inv only, (..., d_inv): the rows of the projection the base method reads.

        Equal to `forward(tokens)[0]` at d_inv/d_patch of its cost; training calls it on just
        the tokens the heads read (CLS, masked patches).
        """
        d = self.d_inv
        return F.linear(tokens, self.proj.weight[:d], self.proj.bias[:d])

    def equi(self, tokens: torch.Tensor) -> torch.Tensor:
        """z_equi only, (..., d_equi): equal to `forward(tokens)[1]` (the decoders' input)."""
        d = self.d_inv
        return F.linear(tokens, self.proj.weight[d:], self.proj.bias[d:])


class DINOHead(nn.Module):
    """MLP -> L2-normalized bottleneck -> weight-normalized prototypes (DINO/iBOT head).

    `forward(x (..., in_dim)) -> logits (..., out_dim)`.

    `norm_last_layer`: true = each prototype is the unit direction v_k / ‖v_k‖ (the gain of the
    weight norm fixed at 1: cosine logits); false = g_k · v_k / ‖v_k‖ with a trained gain g
    (`prototype_gain`, (out_dim,), initialized to 1), as DINOv2's head and iBOT with
    `--norm_last_layer false`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(n_layers - 1, 0)):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Weight-normalized prototypes with a fixed unit gain (as DINO): stored as direction `v`.
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.prototype_gain = None if norm_last_layer else nn.Parameter(torch.ones(out_dim))

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Logits (..., out_dim), times `scale` (e.g. 1 / student temperature: free here,
        a pass over the (n, K) logits and their gradient in a loss)."""
        h = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return prototype_logits(h, self.prototypes, scale=scale, gain=self.prototype_gain)


class _PrototypeLogits(torch.autograd.Function):
    """s · (h @ vᵀ) · diag(1 / ‖v_k‖): cosine logits against weight-normalized prototypes.

    The normalization is folded into the (n, K) output instead of writing the normalized
    (K, d) matrix: forward reads v once for the row norms and once in the matmul; backward is
    one matmul per input plus passes over v (the (n, K) output is kept only when n <= d),
        ∂L/∂v_k = s · (Σ_n g_nk h_n) / ‖v_k‖ − (Σ_n g_nk o_nk) · v_k / ‖v_k‖²  (o: the output).
    Under autocast the matmuls run in the autocast dtype; norms and the correction in fp32.
    (A zero row is guarded by `eps` on its norm, as `F.normalize`.)

    With a trained gain g (K,) (`norm_last_layer=false`) the output is s·g_k·(h·v_k)/‖v_k‖;
    with R_k = s·(Σ_n g_nk h_n)/‖v_k‖ (g_nk: the upstream gradient),
        ∂L/∂g_k = v_k·R_k,   ∂L/∂v_k = g_k·(R_k − (v_k·R_k) v_k / ‖v_k‖²),
    computed from v (nothing of size (n, K) kept), and no division by g.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        h: torch.Tensor,
        v: torch.Tensor,
        gain: torch.Tensor | None,
        eps: float,
        scale: float,
    ) -> torch.Tensor:
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        dtype = dtype or torch.promote_types(h.dtype, v.dtype)
        with torch.autocast(device, enabled=False):
            wide = torch.promote_types(v.dtype, torch.float32)  # norms in fp32 (fp64 stays)
            inv_norm = torch.linalg.vector_norm(v.to(wide), dim=1).clamp_min_(eps).reciprocal_()
            hc, vc = h.to(dtype), v.to(dtype)
            if gain is not None:
                column = inv_norm * gain.to(wide) * scale
                logits = (hc @ vc.t()).mul_(column.to(dtype))
                ctx.save_for_backward(hc, vc, inv_norm, gain)
                ctx.scale = scale
                ctx.input_dtypes = (h.dtype, v.dtype, gain.dtype)
                return logits
            logits = (hc @ vc.t()).mul_((inv_norm * scale).to(dtype))
        # The correction term needs Σ_n g_nk o_nk: from the kept (n, K) logits when n <= d (a
        # pass over n·K), else from v (a pass over K·d, nothing of size (n, K) kept).
        ctx.keep_logits = h.shape[0] <= v.shape[1]
        ctx.save_for_backward(hc, vc, inv_norm, logits if ctx.keep_logits else None)
        ctx.scale = scale
        ctx.input_dtypes = (h.dtype, v.dtype)
        return logits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        if len(ctx.input_dtypes) == 3:
            return _PrototypeLogits._backward_with_gain(ctx, grad)
        hc, vc, inv_norm, logits = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            scaled = grad.to(hc.dtype) * (inv_norm * ctx.scale).to(hc.dtype)  # (n, K)
            grad_h = (scaled @ vc).to(ctx.input_dtypes[0])
            # G = s·(Σ_n g_nk h_n)/‖v_k‖; Σ_n g_nk o_nk = v_k·G_k, so the correction removes
            # each row's component along v_k: ∂L/∂v_k = G_k − (v_k·G_k) v_k / ‖v_k‖².
            wide = inv_norm.dtype
            grad_v = (scaled.t() @ hc).to(wide)
            v = vc.to(wide)
            if ctx.keep_logits:
                coef = (grad.to(wide) * logits.to(wide)).sum(0)
            else:
                coef = torch.linalg.vecdot(v, grad_v)
            coef.mul_(inv_norm).mul_(inv_norm)
            grad_v.addcmul_(v, coef.unsqueeze(1), value=-1.0)
        return grad_h, grad_v.to(ctx.input_dtypes[1]), None, None, None

    @staticmethod
    def _backward_with_gain(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        hc, vc, inv_norm, gain = ctx.saved_tensors
        h_dtype, v_dtype, g_dtype = ctx.input_dtypes
        with torch.autocast(grad.device.type, enabled=False):
            wide = inv_norm.dtype
            g = gain.to(wide)
            grad_c = grad.to(hc.dtype)
            grad_h = ((grad_c * (inv_norm * g * ctx.scale).to(hc.dtype)) @ vc).to(h_dtype)
            # R_k = s/‖v_k‖ · Σ_n g_nk h_n  (K, d)
            r = (grad_c.t() @ hc).to(wide).mul_((inv_norm * ctx.scale).unsqueeze(1))
            v = vc.to(wide)
            grad_gain = torch.linalg.vecdot(v, r)  # v_k·R_k
            grad_v = r.addcmul_(v, (grad_gain * inv_norm * inv_norm).unsqueeze(1), value=-1.0)
            grad_v.mul_(g.unsqueeze(1))
        return grad_h, grad_v.to(v_dtype), grad_gain.to(g_dtype), None, None


def prototype_logits(
    h: torch.Tensor,
    prototypes: torch.Tensor,
    eps: float = 1e-6,
    scale: float = 1.0,
    gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits scale · h @ (v / ‖v‖)ᵀ of features h (..., d) against prototype directions v (K, d),
    each column times `gain` (K,) when given (a weight norm with a trained gain).

    Equal to `h @ (gain[:, None] * F.normalize(v, dim=-1, eps=eps)).t()` (values and gradients)
    without materializing the normalized (K, d) matrix: on CPU the step's prototype work
    (65,536 × 256) costs about a third less than the fused weight-norm kernel and half of
    `F.normalize`.
    """
    shape = h.shape
    logits = _PrototypeLogits.apply(h.reshape(-1, shape[-1]), prototypes, gain, eps, scale)
    return logits.reshape(*shape[:-1], prototypes.shape[0])
