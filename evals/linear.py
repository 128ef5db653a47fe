"""Linear probe on frozen features, with the learning rate chosen on a held-out validation split.

As in DINOv2's linear evaluation: several linear classifiers, one per learning rate of a small
grid, train side by side on the same features; the one with the best accuracy on a validation
split carved from the train set is reported on the test set. Our choices: features standardized
with the fit split's mean/std, SGD with momentum 0.9 and a cosine schedule, no weight decay by
default, a class-stratified validation split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def stratified_split(labels: Tensor, val_fraction: float, generator: torch.Generator) -> Tensor:
    """Boolean mask (N,) of validation rows: `val_fraction` of every class (at least one row of
    each class with two or more rows)."""
    val = torch.zeros(labels.shape[0], dtype=torch.bool)
    for cls in labels.unique():
        rows = torch.nonzero(labels == cls).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        n_val = int(round(rows.numel() * val_fraction))
        if rows.numel() >= 2:
            n_val = min(max(n_val, 1), rows.numel() - 1)
        else:
            n_val = 0
        val[rows[:n_val]] = True
    return val


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    lrs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0),
    epochs: int = 100,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Fit one linear classifier per learning rate; report the val-selected one on the test set.

    Args:
        train_feats: (N, D) frozen train features.
        train_labels: (N,) int labels in [0, num_classes).
        test_feats: (M, D) frozen test features.
        test_labels: (M,) int labels.
        lrs: the learning-rate grid (SGD, momentum 0.9, cosine decay to 0).
        epochs: passes over the fit split.
        batch_size: rows per SGD step.
        val_fraction: share of each class held out of the train set for choosing the lr.
        weight_decay: L2 penalty on the weights.
        num_classes: C; None infers max label + 1 over train and test.
        seed: seed of the split, the initialization and the batch order.
        device: where the classifiers train.

    Returns:
        {"top1": test accuracy (percent) of the chosen classifier, "best_lr", "val_top1": its
        validation accuracy (percent), "val_top1_per_lr": {lr: percent}, "n_fit", "n_val"}.
    """
    if train_feats.ndim != 2 or test_feats.shape[1:] != train_feats.shape[1:]:
        raise ValueError(
            f"expected train (N, D) and test (M, D) features, got {tuple(train_feats.shape)} "
            f"and {tuple(test_feats.shape)}"
        )
    if not lrs or epochs < 1 or batch_size < 1:
        raise ValueError("need a non-empty lrs grid, epochs >= 1 and batch_size >= 1")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    val_rows = stratified_split(train_labels, val_fraction, generator)
    if not val_rows.any():
        raise ValueError("the validation split is empty: use more train rows or val_fraction")
    x_fit, y_fit = train_feats[~val_rows].float(), train_labels[~val_rows].long()
    x_val, y_val = train_feats[val_rows].float(), train_labels[val_rows].long()
    mean, std = x_fit.mean(0), x_fit.std(0, correction=0).clamp_min(1e-6)

    def prep(x: Tensor) -> Tensor:
        return ((x.float() - mean) / std).to(device)

    x_fit, x_val, x_test = prep(x_fit), prep(x_val), prep(test_feats)
    y_fit, y_val, y_test = y_fit.to(device), y_val.to(device), test_labels.long().to(device)
    weight, bias = _train(
        x_fit, y_fit, num_classes, lrs, epochs, batch_size, weight_decay, generator
    )
    val_acc = _accuracy(x_val, y_val, weight, bias)  # (L,)
    best = int(val_acc.argmax())  # the first (smallest-index) lr among ties
    test_acc = _accuracy(x_test, y_test, weight[best : best + 1], bias[best : best + 1])
    return {
        "top1": float(test_acc[0]),
        "best_lr": float(lrs[best]),
        "val_top1": float(val_acc[best]),
        "val_top1_per_lr": {float(lr): float(a) for lr, a in zip(lrs, val_acc)},
        "n_fit": int(x_fit.shape[0]),
        "n_val": int(x_val.shape[0]),
    }


def _train(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    lrs: tuple[float, ...],
    epochs: int,
    batch_size: int,
    weight_decay: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """SGD (momentum 0.9, cosine lr) on L stacked classifiers at once -> weight (L, D, C), bias
    (L, C). Each classifier's loss depends only on its own weights, so one backward pass gives
    every classifier its own gradient; the update scales it by that classifier's lr."""
    n, dim = x.shape
    n_lr = len(lrs)
    weight = (torch.randn(n_lr, dim, num_classes, generator=generator) * 0.01).to(x.device)
    bias = torch.zeros(n_lr, num_classes, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    base_lr = torch.tensor(lrs, dtype=torch.float32, device=x.device)
    momentum = [torch.zeros_like(weight), torch.zeros_like(bias)]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for idx in order.split(batch_size):
            logits = torch.einsum("bd,ldc->lbc", x[idx], weight) + bias[:, None]
            target = y[idx].repeat(n_lr)
            # Sum over classifiers of each one's mean loss: independent gradients.
            loss = F.cross_entropy(logits.reshape(-1, num_classes), target) * n_lr
            grads = torch.autograd.grad(loss, [weight, bias])
            lr = base_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                for param, grad, buf, decay in zip(
                    (weight, bias), grads, momentum, (weight_decay, 0.0)
                ):
                    buf.mul_(0.9).add_(grad + decay * param)
                    param.sub_(lr.view(-1, *[1] * (param.ndim - 1)) * buf)
            step += 1
    return weight.detach(), bias.detach()


def _accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Top-1 accuracy in percent of each of the L classifiers -> (L,). NaN logits count wrong."""
    correct = torch.zeros(weight.shape[0], device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], 4096):
            xb, yb = x[start : start + 4096], y[start : start + 4096]
            logits = torch.einsum("bd,ldc->lbc", xb, weight) + bias[:, None]
            finite = torch.isfinite(logits).all(-1)
            correct += ((logits.argmax(-1) == yb) & finite).sum(-1)
    return (100.0 * correct / x.shape[0]).cpu()
