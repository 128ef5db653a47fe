"""Tests of the linear probe (evals/linear.py): it reaches what a linear classifier can reach,
no more (a Bayes-limited case), finds a direction kNN cannot see, and picks lr on validation."""

from __future__ import annotations

import math

import pytest
import torch

from evals.knn import knn_classify
from evals.linear import linear_probe, stratified_split

FAST = {"epochs": 30, "lrs": (0.01, 0.1)}


def _clusters(n: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated gaussian clusters in 32-d -> (n, 32), (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 32, generator=torch.Generator().manual_seed(99)) * 6
    labels = torch.arange(n) % classes
    return centres[labels] + torch.randn(n, 32, generator=g), labels


def test_separable_clusters_give_100_percent() -> None:
    train, train_y = _clusters(400, 0)
    test, test_y = _clusters(200, 1)
    result = linear_probe(train, train_y, test, test_y, **FAST)
    assert result["top1"] == 100.0, result
    assert result["n_fit"] + result["n_val"] == 400


def test_hidden_direction_in_noise_linear_finds_it_knn_does_not() -> None:
    # The class is the sign of feature 0 (|x0| in [1, 2]); 63 other features are large noise.
    # Cosine kNN is dominated by the noise (near chance); a linear classifier is not.
    def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 64, generator=g) * 3
        x[:, 0] = (1 + torch.rand(n, generator=g)) * (labels * 2 - 1)
        return x, labels

    train, train_y = data(1000, 0)
    test, test_y = data(500, 1)
    linear = linear_probe(train, train_y, test, test_y, **FAST)
    knn = knn_classify(train, train_y, test, test_y)
    assert linear["top1"] > 97.0, linear
    assert knn["top1"] < 65.0, knn


def test_overlapping_classes_reach_the_bayes_rate_not_more() -> None:
    # Two unit-variance gaussians 2 apart along one axis (plus 15 noise dims): the best possible
    # accuracy is Φ(1) = 84.1 %. A probe reporting much more would be leaking test labels.
    def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        x = torch.randn(n, 16, generator=g)
        x[:, 0] += labels * 2.0 - 1.0
        return x, labels

    bayes = 100 * 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    train, train_y = data(2000, 0)
    test, test_y = data(4000, 1)
    result = linear_probe(train, train_y, test, test_y, **FAST)
    assert abs(result["top1"] - bayes) < 2.5, (result["top1"], bayes)


def test_random_labels_give_chance_and_lr_is_chosen_on_validation() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(600, 16, generator=g), torch.randn(1000, 16, generator=g)
    train_y, test_y = (
        torch.randint(0, 5, (600,), generator=g),
        torch.randint(0, 5, (1000,), generator=g),
    )
    # 1e3 diverges (non-finite logits count as wrong): validation must not pick it.
    result = linear_probe(train, train_y, test, test_y, lrs=(0.01, 1e3), epochs=10)
    assert 14.0 < result["top1"] < 26.0  # chance 20 %
    assert set(result["val_top1_per_lr"]) == {0.01, 1e3}
    best = max(result["val_top1_per_lr"].items(), key=lambda kv: kv[1])[0]
    assert result["best_lr"] == best


def test_probe_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    train, train_y = _clusters(120, 0)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    first = linear_probe(train, train_y, train, train_y, lrs=(0.1,), epochs=3, seed=3)
    assert torch.equal(torch.rand(2), expected)
    assert linear_probe(train, train_y, train, train_y, lrs=(0.1,), epochs=3, seed=3) == first


def test_stratified_split_and_errors() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    val = stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert [int(val[labels == c].sum()) for c in range(3)] == [2, 1, 0]
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        linear_probe(torch.zeros(4, 3), labels[:4], torch.zeros(4, 2), labels[:4])
