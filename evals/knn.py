"""Weighted k-nearest-neighbour classification on frozen features (as in DINO)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_classify(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Accuracy of the temperature-weighted k-NN vote (see `knn_scores`) on the test set.

    Args:
        train_feats: (N, D) train features.
        train_labels: (N,) int train labels in [0, num_classes).
        test_feats: (M, D) test features.
        test_labels: (M,) int test labels.
        k: neighbours per test sample (clipped to N).
        temperature: T of the vote weights exp(s / T).
        num_classes: number of classes; None infers max label + 1 over train and test.
        chunk: test rows per (chunk, N) similarity matrix.

    Returns:
        {"top1": accuracy in percent} plus "top5" (percent) when num_classes >= 5.
    """
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(
            f"test_labels must be (M,) = ({test_feats.shape[0]},), got {tuple(test_labels.shape)}"
        )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    top_n = min(5, num_classes)
    correct1, correct5 = 0, 0
    for start, scores in _chunk_scores(
        train_feats, train_labels, test_feats, k, temperature, num_classes, chunk
    ):
        labels = test_labels[start : start + scores.shape[0]].to(scores.device).long()
        ranked = scores.topk(top_n, dim=1).indices  # (c, top_n), best first
        hits = ranked == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    total = test_feats.shape[0]
    result = {"top1": 100.0 * correct1 / total}
    if num_classes >= 5:
        result["top5"] = 100.0 * correct5 / total
    return result


def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Class scores of DINO's weighted k-NN vote; the prediction is their argmax.

    Features are L2-normalized and compared by cosine similarity s; each of the k nearest train
    samples votes for its class with weight exp(s / T), and a class's score is the sum of its
    votes. Scores are divided per row by exp(s_max / T) (the nearest neighbour weighs 1), which
    changes no ranking and cannot overflow for small T.

    Args:
        train_feats: (N, D) train features.
        train_labels: (N,) int train labels in [0, num_classes).
        test_feats: (M, D) test features.
        k: neighbours per test sample (clipped to N).
        temperature: T of the vote weights.
        num_classes: number of classes C; None infers max train label + 1.
        chunk: test rows per (chunk, N) similarity matrix.

    Returns:
        (M, C) float32 scores on the train features' device.
    """
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    parts = _chunk_scores(train_feats, train_labels, test_feats, k, temperature, num_classes, chunk)
    return torch.cat([scores for _, scores in parts])


def _chunk_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int,
) -> Iterator[tuple[int, Tensor]]:
    """Yield (first test row, (c, C) scores) for successive chunks of at most `chunk` test rows."""
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"expected train (N, D) and test (M, D) features, got {tuple(train_feats.shape)} "
            f"and {tuple(test_feats.shape)}"
        )
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(
            f"train_labels must be (N,) = ({train_feats.shape[0]},), got {tuple(train_labels.shape)}"
        )
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError("k-NN needs at least one train and one test sample")
    if k < 1 or temperature <= 0 or chunk < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0, chunk >= 1; got {k}, {temperature}, {chunk}"
        )
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(f"train labels must lie in [0, {num_classes}) (num_classes)")
    k = min(k, train_feats.shape[0])
    device = train_feats.device
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float().to(device), dim=1)
    labels = train_labels.long().to(device)
    for start in range(0, test.shape[0], chunk):
        sims = test[start : start + chunk] @ train.T  # (c, N)
        top_sims, top_idx = sims.topk(k, dim=1)  # (c, k), most similar first
        weights = ((top_sims - top_sims[:, :1]) / temperature).exp()
        scores = torch.zeros(sims.shape[0], num_classes, device=device)
        yield start, scores.scatter_add_(1, labels[top_idx], weights)
