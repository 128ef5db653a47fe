"""iBOT masked-patch cross-entropy between student and teacher patch outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ImageAverage = Literal["masked_images", "all_images"]


class IBOTPatchLoss(nn.Module):
    """Cross-entropy on masked patches, each image weighted equally.

    For image b with n_b ≥ 1 masked patches, its term is the mean over its masked patches of
    −Σ_k t_k · log softmax(s / student_temp)_k (every patch weighs 1 / n_b). The loss is the sum
    of these terms divided by:

    - ``"masked_images"`` (default): the number of images with at least one masked patch, i.e.
      the plain mean over masked images;
    - ``"all_images"``: the number of images ``masks.shape[0]``, including those without masks.
      This is DINOv2's ``iBOTPatchLoss.forward_masked`` exactly; with DINOv2's mask probability
      0.5 it is about half the ``"masked_images"`` value.

    Computed in fp32.

    Args:
        average_over: the denominator, see above.
    """

    def __init__(self, average_over: ImageAverage = "masked_images") -> None:
        super().__init__()
        if average_over not in ("masked_images", "all_images"):
            raise ValueError(
                f"IBOTPatchLoss average_over must be 'masked_images' or 'all_images', "
                f"got {average_over!r}"
            )
        self.average_over = average_over

    def forward(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks: Tensor,
        student_temp: float = 0.1,
        mask_indices: Tensor | None = None,
    ) -> Tensor:
        """Weighted masked-patch cross-entropy.

        Args:
            student_patch_logits: (M, K) raw student head outputs of the masked patches, in
                ``masks[masks]`` order (image-major, then patch index).
            teacher_patch_probs: (M, K) teacher probabilities of the same patches; constants.
            masks: (n_images, N) bool, True where a patch is masked; M == masks.sum().
            student_temp: student softmax temperature.
            mask_indices: (M,) int64 positions of the masked patches in ``masks.view(-1)``
                (`data_pipeline.batch.Batch.masked_positions`). Given, the loss runs without
                a host synchronization; None: computed here (a sync on accelerators).

        Returns:
            Scalar fp32 loss; a graph-connected zero when M == 0.
        """
        if masks.ndim != 2 or masks.dtype != torch.bool:
            raise ValueError(
                f"IBOTPatchLoss expects masks as a (n_images, N) bool tensor, "
                f"got {masks.dtype} of shape {tuple(masks.shape)}"
            )
        if mask_indices is None:
            mask_indices = masks.reshape(-1).nonzero().squeeze(1)
        n_masked = mask_indices.numel()  # a shape: known on the host
        if student_patch_logits.shape != teacher_patch_probs.shape or (
            student_patch_logits.ndim != 2 or student_patch_logits.shape[0] != n_masked
        ):
            raise ValueError(
                f"IBOTPatchLoss expects student and teacher of shape (M, K) with M = masks.sum() "
                f"= {n_masked}; got student {tuple(student_patch_logits.shape)} and teacher "
                f"{tuple(teacher_patch_probs.shape)}"
            )
        if n_masked == 0:
            return student_patch_logits.float().sum() * 0.0

        n_masked_per_image = masks.sum(dim=-1)  # (n_images,)
        logits = student_patch_logits.float()
        log_probs = F.log_softmax(logits if student_temp == 1.0 else logits / student_temp, -1)
        per_image_weight = 1.0 / n_masked_per_image.clamp(min=1).float()  # (n_images,)
        weights = per_image_weight[mask_indices // masks.shape[1]]  # (M,): 1 / n_b of its image
        # Σ_m w_m Σ_k t_mk log p_mk as one dot product (the weighted targets are constants)
        weighted = teacher_patch_probs.detach().float() * weights.unsqueeze(1)
        total = -torch.vdot(log_probs.flatten(), weighted.flatten())
        if self.average_over == "masked_images":
            return total / (n_masked_per_image > 0).sum().float()
        return total / masks.shape[0]
