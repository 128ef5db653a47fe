"""Tests of the weighted k-NN classifier (evals/knn.py)."""

from __future__ import annotations

import math

import pytest
import torch

from evals.knn import knn_classify, knn_scores


def _clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated gaussian clusters in 16-d -> features (2n, 16), labels (2n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(2, 16)
    centres[0, 0], centres[1, 1] = 10.0, 10.0
    labels = torch.arange(2).repeat_interleave(n_per_class)
    feats = centres[labels] + torch.randn(2 * n_per_class, 16, generator=g)
    return feats, labels


def _brute_force_scores(
    train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int, t: float, c: int
) -> torch.Tensor:
    """The weighted vote written with python loops and math only -> (M, C) float64 scores."""
    rows = []
    for q in test.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for x, y in zip(train.tolist(), labels.tolist()):
            xn = math.sqrt(sum(v * v for v in x))
            sims.append((sum(a * b for a, b in zip(q, x)) / (qn * xn), y))
        sims.sort(key=lambda s: -s[0])
        score = [0.0] * c
        for s, y in sims[:k]:
            score[y] += math.exp(s / t)
        rows.append(score)
    return torch.tensor(rows, dtype=torch.float64)


def test_separated_clusters_are_classified_perfectly() -> None:
    train, train_labels = _clusters(100, seed=0)
    test, test_labels = _clusters(50, seed=1)
    result = knn_classify(train, train_labels, test, test_labels)
    assert result == {"top1": 100.0}  # 2 classes: no top5


def test_random_labels_give_chance_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_labels = torch.randint(0, 10, (2000,), generator=g)
    test_labels = torch.randint(0, 10, (1000,), generator=g)
    result = knn_classify(train, train_labels, test, test_labels, num_classes=10)
    # Chance is 10 % / 50 %; the binomial std over 1000 samples is about 1 % / 1.6 %.
    assert 5.0 < result["top1"] < 15.0
    assert 40.0 < result["top5"] < 60.0


@pytest.mark.parametrize("k", [1, 5, 30])
def test_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(24, 6, generator=g), torch.randn(15, 6, generator=g)
    train_labels = torch.randint(0, 6, (24,), generator=g)
    test_labels = torch.randint(0, 6, (15,), generator=g)
    expected = _brute_force_scores(train, train_labels, test, min(k, 24), 0.1, 6)
    scores = knn_scores(train, train_labels, test, k=k, temperature=0.1, num_classes=6, chunk=4)
    # Our scores are scaled per row (nearest neighbour weighs 1): compare row-normalized.
    torch.testing.assert_close(
        scores.double() / scores.double().sum(1, keepdim=True),
        expected / expected.sum(1, keepdim=True),
        rtol=1e-5,
        atol=1e-6,
    )
    assert torch.equal(scores.argmax(1), expected.argmax(1))
    top1 = (expected.argmax(1) == test_labels).double().mean().item() * 100
    top5 = (expected.topk(5, dim=1).indices == test_labels[:, None]).any(1).double().mean() * 100
    result = knn_classify(train, train_labels, test, test_labels, k=k, temperature=0.1, chunk=4)
    assert result["top1"] == pytest.approx(top1)
    assert result["top5"] == pytest.approx(top5.item())


def test_chunking_does_not_change_the_result() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=g), torch.randn(101, 8, generator=g)
    train_labels = torch.randint(0, 7, (300,), generator=g)
    full = knn_scores(train, train_labels, test, chunk=1024)
    torch.testing.assert_close(knn_scores(train, train_labels, test, chunk=7), full)


def test_temperature_weighting_can_overrule_the_majority() -> None:
    # One neighbour of class 0 almost identical to the query, three of class 1 far less similar.
    test = torch.tensor([[1.0, 0.0]])
    angles = torch.tensor([0.05, 1.2, 1.25, 1.3])  # radians from the query
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    train_labels = torch.tensor([0, 1, 1, 1])
    sharp = knn_classify(train, train_labels, test, torch.tensor([0]), k=4, temperature=0.07)
    flat = knn_classify(train, train_labels, test, torch.tensor([0]), k=4, temperature=100.0)
    assert sharp["top1"] == 100.0  # weighted vote: the close neighbour wins
    assert flat["top1"] == 0.0  # nearly uniform weights: the majority (class 1) wins


def test_small_temperature_does_not_overflow() -> None:
    train, train_labels = _clusters(20, seed=0)
    scores = knn_scores(train, train_labels, train * 3, k=10, temperature=1e-4)
    assert torch.isfinite(scores).all()
    assert torch.equal(scores.argmax(1), train_labels)


def test_k_larger_than_train_set_and_label_checks() -> None:
    train, train_labels = _clusters(3, seed=0)
    assert knn_classify(train, train_labels, train, train_labels, k=50)["top1"] == 100.0
    with pytest.raises(ValueError, match="num_classes"):
        knn_scores(train, train_labels, train, num_classes=1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        knn_scores(train, train_labels, train[:, :3])
