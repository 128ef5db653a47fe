"""DINO cross-entropy between the student's CLS logits and the teacher's centered probabilities."""

from __future__ import annotations

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
        student_logits: list[Tensor],
        teacher_probs: list[Tensor],
        student_temp: float = 0.1,
    ) -> Tensor:
        """Average cross-entropy over the valid crop pairs.

        Args:
            student_logits: [global_1, …, global_G, local_1, …, local_L], each (B, K) raw head
                outputs.
            teacher_probs: [for global_1, …, for global_G], each (B, K) centered probabilities
                (e.g. from ``sinkhorn_knopp``); treated as constants.
            student_temp: student softmax temperature.

        Returns:
            Scalar fp32 loss.
        """
        n_global = len(teacher_probs)
        if n_global == 0 or len(student_logits) < n_global:
            raise ValueError(
                "DINOClsLoss expects at least one teacher crop and at least as many student crops "
                f"(globals first); got {len(student_logits)} student and {n_global} teacher crops"
            )
        n_pairs = len(student_logits) * n_global - n_global
        if n_pairs == 0:
            raise ValueError("DINOClsLoss has no (student, teacher) pair of different views")
        expected = teacher_probs[0].shape
        for name, tensors in (("student_logits", student_logits), ("teacher_probs", teacher_probs)):
            for i, x in enumerate(tensors):
                if x.ndim != 2 or x.shape != expected:
                    raise ValueError(
                        f"DINOClsLoss: {name}[{i}] has shape {tuple(x.shape)}, "
                        f"expected {tuple(expected)} like teacher_probs[0]"
                    )

        teachers = [t.detach().float() for t in teacher_probs]
        total = torch.zeros((), dtype=torch.float32, device=teachers[0].device)
        for i, logits in enumerate(student_logits):
            log_probs = F.log_softmax(logits.float() / student_temp, dim=-1)
            for j, t in enumerate(teachers):
                if i == j:
                    continue
                total = total - (t * log_probs).sum(dim=-1).mean()
        return total / n_pairs
