"""VICReg, NT-Xent and running centering against independent references, also across 2 ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.losses import RunningCenter, gather_with_grad, nt_xent_loss, vicreg_loss

# ---- independent references (loops and textbook formulas, no shared code) -------------------


def reference_vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Bardes et al. 2022, eq. (1)-(6), with the official ½ on the variance term."""
    n, d = z1.shape
    invariance = sum(((z1[i] - z2[i]) ** 2).sum() for i in range(n)) / (n * d)

    def var_cov(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        std = torch.sqrt(torch.var(z, dim=0, unbiased=True) + 1e-4)
        v = torch.clamp(1.0 - std, min=0.0).mean()
        cov = torch.cov(z.t())  # (d, d), unbiased
        c = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return 25.0 * invariance + 25.0 * (v1 + v2) / 2 + 1.0 * (c1 + c2)


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Chen et al. 2020, eq. (1), averaged over all 2N anchors."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = z.new_zeros(())
    for i in range(n2):
        positive = (i + n) % n2
        sims = [
            torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) / tau for j in range(n2) if j != i
        ]
        pos = torch.dot(z[i], z[positive]) / (z[i].norm() * z[positive].norm()) / tau
        total = total - (pos - torch.logsumexp(torch.stack(sims), dim=0))
    return total / n2


def _pair(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z1, z2


# ---- single process ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.1, 3.0])  # std below and above the hinge γ = 1
def test_vicreg_matches_reference_value_and_gradient(scale: float) -> None:
    z1, z2 = _pair(6, 5)
    z1, z2 = (scale * z1).requires_grad_(), (scale * z2).requires_grad_()
    terms = vicreg_loss(z1, z2)
    expected = reference_vicreg(z1, z2)
    assert terms.loss.dtype == torch.float32
    torch.testing.assert_close(terms.loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        terms.loss, 25 * terms.invariance + 25 * terms.variance + terms.covariance
    )
    g_ours = torch.autograd.grad(terms.loss, (z1, z2))
    g_ref = torch.autograd.grad(expected, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_reference_value_and_gradient(tau: float) -> None:
    z1, z2 = _pair(5, 4, seed=1)
    z1.requires_grad_()
    z2.requires_grad_()
    loss = nt_xent_loss(z1, z2, tau)
    expected = reference_nt_xent(z1, z2, tau)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(loss, (z1, z2))
    g_ref = torch.autograd.grad(expected, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tiny_and_degenerate_batches_stay_finite() -> None:
    one = torch.randn(1, 8, requires_grad=True)
    other = torch.randn(1, 8, requires_grad=True)
    duplicates = torch.ones(4, 8, requires_grad=True)  # collapsed: zero variance
    for z1, z2 in [(one, other), (duplicates, duplicates)]:
        for loss in (vicreg_loss(z1, z2).loss, nt_xent_loss(z1, z2)):
            (g1, g2) = torch.autograd.grad(loss, (z1, z2), allow_unused=False)
            assert torch.isfinite(loss) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    # A collapsed batch pays the full variance hinge (std ≈ 0 -> 1 - 0.01 per feature).
    assert vicreg_loss(duplicates, duplicates).variance.item() == pytest.approx(0.99, abs=1e-6)
    assert nt_xent_loss(one, other).item() == 0.0  # no negatives


def test_losses_run_in_fp32_inside_bf16_autocast() -> None:
    z1, z2 = (z.float() for z in _pair(8, 16, seed=2))
    plain = (vicreg_loss(z1, z2).loss, nt_xent_loss(z1, z2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (vicreg_loss(z1, z2).loss, nt_xent_loss(z1, z2))
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_losses_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def test_running_center_update_and_probs() -> None:
    center = RunningCenter(3, momentum=0.9)
    assert "center" in center.state_dict() and torch.equal(center.center, torch.zeros(1, 3))
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    probs = center.probs(logits, 0.5)
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))
    center.update(logits)
    torch.testing.assert_close(center.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))
    center.update(torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 0.0, 4.0]]]))  # (..., K) is flattened
    torch.testing.assert_close(center.center, 0.9 * 0.2 + 0.1 * torch.tensor([[2.0, 0.0, 2.0]]))
    centered = center.probs(logits, 1.0)
    torch.testing.assert_close(centered, torch.softmax(logits - center.center, dim=-1))
    before = center.center.clone()
    center.update(torch.empty(0, 3))  # nothing seen: unchanged
    assert torch.equal(center.center, before)


# ---- two gloo ranks vs one process on the full batch -------------------------------------------

WORLD = 2
PER_RANK = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        full1, full2 = _pair(WORLD * PER_RANK, 4, seed=3)
        full1, full2 = full1.float(), full2.float()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

        losses = {
            "vicreg": lambda a, b, gather: vicreg_loss(a, b, gather=gather).loss,
            "nt_xent": lambda a, b, gather: nt_xent_loss(a, b, 0.2, gather=gather),
        }
        for name, fn in losses.items():
            # Single process on the full batch (no gathering), the reference.
            f1, f2 = full1.clone().requires_grad_(), full2.clone().requires_grad_()
            expected = fn(f1, f2, False)
            expected.backward()
            # This rank's share, gathered across ranks; DDP would average gradients over ranks.
            z1 = full1[rows].clone().requires_grad_()
            z2 = full2[rows].clone().requires_grad_()
            loss = fn(z1, z2, True)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= WORLD
            torch.testing.assert_close(mean_loss, expected.detach(), msg=name)
            torch.testing.assert_close(z1.grad / WORLD, f1.grad[rows], msg=name)
            torch.testing.assert_close(z2.grad / WORLD, f2.grad[rows], msg=name)

        gathered = gather_with_grad(full1[rows])
        torch.testing.assert_close(gathered, full1)

        center = RunningCenter(4, momentum=0.5)
        center.update(full1[rows] if rank == 0 else full1[rows][:1])  # unequal counts
        everything = torch.cat([full1[:PER_RANK], full1[PER_RANK : PER_RANK + 1]])
        torch.testing.assert_close(center.center, 0.5 * everything.mean(0, keepdim=True))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_gathered_losses_equal_full_batch_on_two_gloo_ranks() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_distributed_worker, args=(_free_port(),), nprocs=WORLD, join=True)
