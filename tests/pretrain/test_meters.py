"""FLOP counting and the device table behind train/mfu."""

from __future__ import annotations

import torch

from pretrain.meters import device_peak_flops, max_memory_gb, ssl_step_flops, vit_forward_flops


def test_vit_flops_match_a_direct_count() -> None:
    """ViT-B/16 at 224: 197 tokens; the published ~17.6 G multiply-adds = ~35 GFLOPs."""
    flops = vit_forward_flops(768, 12, 197)
    assert 34.5e9 < flops < 35.5e9
    # Direct count of one block's matmuls for a small case.
    n, d = 5, 8
    direct = 2 * (n * d * 3 * d + n * d * d + n * d * 4 * d + n * 4 * d * d + 2 * n * n * d)
    assert vit_forward_flops(d, 1, n) == direct


def test_ssl_step_flops_counts_student_backward_and_teacher() -> None:
    g = vit_forward_flops(64, 2, 17)
    loc = vit_forward_flops(64, 2, 5)
    assert ssl_step_flops(64, 2, 4, 16, 8, 3) == 3 * (2 * g + 3 * loc) + 2 * g


def test_cpu_has_no_peak_and_reports_rss() -> None:
    assert device_peak_flops(torch.device("cpu")) is None
    assert 0.05 < max_memory_gb(torch.device("cpu")) < 64
