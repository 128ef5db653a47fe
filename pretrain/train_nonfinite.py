"""Non-finite steps: a step whose loss or gradient is not finite is skipped (no update, on every
rank); after `train.max_nonfinite_steps` in a row the run stops with a diagnostic file and a
checkpoint of the last good state."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from equirecon.errors import DivergedError
from pretrain.methods.base import StepOutput

log = logging.getLogger("equirecon.pretrain")


def loss_terms(out: StepOutput) -> dict[str, float]:
    """Every loss term of a step as floats (what a skipped step reports)."""
    terms = {"loss_total": out.loss_total, "loss_ssl": out.loss_ssl, **out.terms}
    if out.loss_recon is not None:
        terms["loss_recon"] = out.loss_recon
    return {k: float(v.detach()) for k, v in terms.items()}


def batch_statistics(batch) -> dict[str, Any]:  # noqa: ANN001 - Batch
    """Min/max/mean/std of every tensor of a batch, and masked-patch counts (for diagnostics)."""
    stats: dict[str, Any] = {}
    for name in ("global_crops", "local_crops"):
        t = getattr(batch, name).detach().float()
        if t.numel():
            stats[name] = {
                "shape": list(t.shape),
                "min": float(t.min()),
                "max": float(t.max()),
                "mean": float(t.mean()),
                "std": float(t.std()),
                "finite": bool(torch.isfinite(t).all()),
            }
    stats["masked_patches"] = int(batch.masks.sum())
    return stats


class NonFiniteMixin:
    """Skipped-step accounting of a `pretrain.train.Trainer`: it provides `cfg`, `dist`,
    `run_dir`, `step`, `last_skip`, `consecutive_skips`, `skipped_steps`, `metrics_file`,
    `tracker` and `save_checkpoint`."""

    def _handle_nonfinite(self, batch) -> None:  # noqa: ANN001 - Batch
        """Count a skipped step; after `train.max_nonfinite_steps` in a row, stop with a diagnostic."""
        self.consecutive_skips += 1
        self.skipped_steps += 1
        info = {"step": self.step + 1, "consecutive": self.consecutive_skips, **self.last_skip}
        log.warning("step %d skipped: %s", self.step + 1, json.dumps(info))
        if self.dist.is_main:
            skipped = {"train/nonfinite_skipped": float(self.skipped_steps)}
            self.metrics_file.append(self.step + 1, skipped)
            if self.tracker is not None:
                self.tracker.log_metrics(skipped, self.step + 1)
        if self.consecutive_skips < self.cfg.train.max_nonfinite_steps:
            return
        # No update was applied by the skipped steps: the current state is the last good one.
        path = self.save_checkpoint()
        diag = {
            **info,
            "batch": batch_statistics(batch),
            "checkpoint": str(path),
            "rank": self.dist.rank,
        }
        diag_path = self.run_dir / f"nonfinite_step_{self.step + 1:08d}_rank{self.dist.rank}.json"
        diag_path.write_text(json.dumps(diag, indent=1))
        if self.tracker is not None:
            self.tracker.finish("FAILED")
        raise DivergedError(
            f"{self.consecutive_skips} consecutive non-finite steps (last: step {self.step + 1}, "
            f"{self.last_skip['reason']}; terms {self.last_skip}). Diagnostic: {diag_path}; "
            f"last good state saved in {path}"
        )
