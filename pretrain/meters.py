"""Throughput, data-wait fraction and model FLOPs utilization (MFU)."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peak per device, FLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of `device` from the table, None when unknown (e.g. CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def vit_forward_flops(embed_dim: int, depth: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Matmul FLOPs of one ViT forward on one image of `tokens` tokens (2·MACs).

    Per block: QKV + projection 4·N·D², MLP 2·r·N·D², attention scores and mix 2·N²·D.
    """
    n, d = tokens, embed_dim
    per_block = 4 * n * d * d + 2 * mlp_ratio * n * d * d + 2 * n * n * d
    return 2.0 * depth * per_block


def ssl_step_flops(
    embed_dim: int,
    depth: int,
    patch_size: int,
    global_size: int,
    local_size: int,
    n_local: int,
    prefix_tokens: int = 1,
) -> float:
    """Backbone FLOPs per image of one step: student fwd+bwd (3×) on 2 global + L local crops,
    teacher fwd on the 2 global crops. Heads and decoders are not counted (conservative)."""
    g = vit_forward_flops(embed_dim, depth, (global_size // patch_size) ** 2 + prefix_tokens)
    loc = vit_forward_flops(embed_dim, depth, (local_size // patch_size) ** 2 + prefix_tokens)
    return 3 * (2 * g + n_local * loc) + 2 * g


def max_memory_gb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, the process's peak RSS on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
