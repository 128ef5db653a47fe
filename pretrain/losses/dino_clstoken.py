"""DINO cross-entropy between the student's CLS logits and the teacher's centered probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOClsLoss(nn.Module):
    """Multi-crop DINO loss over every (student crop, teacher crop) pair of different views.

    The student sees ``n_global`` global crops followed by any number of local crops; the teacher
    gives probabilities for the global crops only. A pair (student crop i, teacher crop j) is
    skipped when i == j < n_global (a global crop is never matched with itself). The loss is

        1 / n_pairs · Σ_pairs mean_batch( −Σ_k t_k · log softmax(s / student_temp)_k ),

    computed in fp32. With 2 global and L local crops, n_pairs = 2 + 2L, which is DINOv2's
    normalization ``1 / (n_global_terms + n_local_terms)``.
    """

    def forward(
        self,
        student_logits: Tensor | Sequence[Tensor],
        teacher_probs: Tensor | Sequence[Tensor],
        student_temp: float = 0.1,
    ) -> Tensor:
        """Average cross-entropy over the valid crop pairs.

        Args:
            student_logits: [global_1, …, global_G, local_1, …, local_L], each (B, K) raw head
                outputs, or one (G + L, B, K) tensor of them.
            teacher_probs: [for global_1, …, for global_G], each (B, K) centered probabilities
                (e.g. from ``sinkhorn_knopp``), or one (G, B, K) tensor; treated as constants.
            student_temp: student softmax temperature.

        Returns:
            Scalar fp32 loss.
        """
        students = _stacked("student_logits", student_logits)
        teachers = _stacked("teacher_probs", teacher_probs).detach().float()
        n_global, n_crops = teachers.shape[0], students.shape[0]
        if n_global == 0 or n_crops < n_global:
            raise ValueError(
                "DINOClsLoss expects at least one teacher crop and at least as many student crops "
                f"(globals first); got {n_crops} student and {n_global} teacher crops"
            )
        n_pairs = n_crops * n_global - n_global
        if n_pairs == 0:
            raise ValueError("DINOClsLoss has no (student, teacher) pair of different views")
        if students.shape[1:] != teachers.shape[1:]:
            raise ValueError(
                f"DINOClsLoss: student crops have shape {tuple(students.shape[1:])}, expected "
                f"{tuple(teachers.shape[1:])} like the teacher's"
            )
        batch = students.shape[1]
        logits = students.float()
        log_probs = F.log_softmax(logits if student_temp == 1.0 else logits / student_temp, -1)
        # Σ_b Σ_k t[j, b, k] · log p[i, b, k] for every (student i, teacher j): one matmul.
        cross = log_probs.reshape(n_crops, -1) @ teachers.reshape(n_global, -1).t()  # (S, G)
        valid = torch.ones(n_crops, n_global, dtype=cross.dtype, device=cross.device)
        valid[:n_global].fill_diagonal_(0.0)  # a global crop is never matched with itself
        return -(cross * valid).sum() / (batch * n_pairs)


def _stacked(name: str, crops: Tensor | Sequence[Tensor]) -> Tensor:
    """(n_crops, B, K) from one tensor or a list of (B, K) crops of the same shape."""
    if isinstance(crops, Tensor):
        if crops.ndim != 3:
            raise ValueError(
                f"DINOClsLoss: {name} as one tensor must be (n_crops, B, K), "
                f"got {tuple(crops.shape)}"
            )
        return crops
    crops = list(crops)
    if not crops:
        return torch.empty(0, 0, 0)
    expected = crops[0].shape
    for i, x in enumerate(crops):
        if x.ndim != 2 or x.shape != expected:
            raise ValueError(
                f"DINOClsLoss: {name}[{i}] has shape {tuple(x.shape)}, expected (B, K) "
                f"like {name}[0] {tuple(expected)}"
            )
    return torch.stack(crops)
