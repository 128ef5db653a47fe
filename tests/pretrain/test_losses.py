"""Tests of pretrain.losses against independent numpy / python-loop references."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.losses import DINOClsLoss, IBOTPatchLoss, koleo_loss, recon_loss, sinkhorn_knopp

# ---------------------------------------------------------------------------------------------
# Independent references (float64 numpy, linear domain, explicit loops)
# ---------------------------------------------------------------------------------------------


def ref_sinkhorn(logits: np.ndarray, temperature: float, n_iterations: int) -> np.ndarray:
    """DINOv2's algorithm written with explicit loops over prototypes and samples, float64."""
    n, k = logits.shape
    q = np.exp(logits.astype(np.float64) / temperature).T.copy()  # (K, N)
    q /= q.sum()
    for _ in range(n_iterations):
        for p in range(k):
            q[p, :] /= q[p, :].sum() * k
        for j in range(n):
            q[:, j] /= q[:, j].sum() * n
    return (q * n).T


def ref_log_softmax(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    for r in range(x.shape[0]):
        row = x[r].astype(np.float64)
        m = row.max()
        out[r] = row - m - math.log(sum(math.exp(v - m) for v in row))
    return out


def ref_cross_entropy_rows(t: np.ndarray, s: np.ndarray, temp: float) -> np.ndarray:
    """−Σ_k t_k log softmax(s/temp)_k per row."""
    lsm = ref_log_softmax(s / temp)
    return np.array([-sum(t[r, c] * lsm[r, c] for c in range(t.shape[1])) for r in range(len(t))])


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ---------------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_iterations", [1, 3])
def test_sinkhorn_matches_reference(n_iterations: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 7, generator=g)
    out = sinkhorn_knopp(logits, temperature=0.1, n_iterations=n_iterations)
    expected = ref_sinkhorn(logits.numpy(), 0.1, n_iterations)
    assert out.dtype == torch.float32 and out.shape == (12, 7)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_columns_balance() -> None:
    g = torch.Generator().manual_seed(1)
    n, k = 64, 8
    logits = torch.randn(n, k, generator=g) * 2.0
    logits[:, 0] += 3.0  # a dominant prototype that Sinkhorn must spread out
    out = sinkhorn_knopp(logits, temperature=0.5, n_iterations=200)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(n), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.sum(dim=0), torch.full((k,), n / k), rtol=1e-3, atol=1e-3)
    # Without balancing, prototype 0 would take most of the mass.
    assert torch.softmax(logits / 0.5, dim=1).sum(dim=0)[0] > 2 * n / k


def test_sinkhorn_is_stable_for_extreme_logits_and_bf16() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 5, generator=g) * 6.0  # logits / 0.04 reach ~±500: exp overflows fp32
    out = sinkhorn_knopp(logits.bfloat16(), temperature=0.04, n_iterations=3)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(16), rtol=0, atol=1e-5)
    expected = ref_sinkhorn(logits.bfloat16().float().numpy(), 0.04, 3)
    assert np.isfinite(expected).all()  # float64 still handles exp(±500)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-3, atol=1e-5)


SPLITS = {"halves": (4, 4), "uneven": (3, 5), "empty_rank": (0, 8)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sinkhorn_worker(rank: int, world_size: int, port: int, logits: torch.Tensor, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        results = {}
        for name, sizes in SPLITS.items():
            start = sum(sizes[:rank])
            local = logits[start : start + sizes[rank]]
            results[name] = sinkhorn_knopp(local, temperature=0.1, n_iterations=3)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sinkhorn_two_process_gloo_equals_single_process(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 6, generator=g)
    mp.spawn(_sinkhorn_worker, args=(2, _free_port(), logits, str(tmp_path)), nprocs=2, join=True)
    single = sinkhorn_knopp(logits, temperature=0.1, n_iterations=3)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in SPLITS:
        gathered = torch.cat([per_rank[0][name], per_rank[1][name]])
        torch.testing.assert_close(gathered, single, rtol=1e-5, atol=1e-6, msg=name)
    # And the global result is DINOv2's, not a per-rank Sinkhorn.
    per_half = torch.cat([sinkhorn_knopp(logits[:4], 0.1), sinkhorn_knopp(logits[4:], 0.1)])
    assert not torch.allclose(per_half, single, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# DINO CLS loss
# ---------------------------------------------------------------------------------------------


def _dino_inputs(seed: int, n_local: int = 3, b: int = 5, k: int = 9):
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(b, k, generator=g) for _ in range(2 + n_local)]
    teachers = [torch.softmax(torch.randn(b, k, generator=g) / 0.3, dim=-1) for _ in range(2)]
    return students, teachers


def test_dino_loss_matches_reference() -> None:
    students, teachers = _dino_inputs(0)
    loss = DINOClsLoss()(students, teachers, student_temp=0.1)
    pairs = [(si, ti) for si in range(len(students)) for ti in range(2) if si != ti]
    assert len(pairs) == 2 + 2 * 3
    terms = [
        ref_cross_entropy_rows(np64(teachers[ti]), np64(students[si]), 0.1).mean()
        for si, ti in pairs
    ]
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dino_loss_excludes_same_index_global_pairs() -> None:
    students, teachers = _dino_inputs(1)
    loss_fn = DINOClsLoss()

    def grads(teacher_list: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [s.clone().requires_grad_(True) for s in students]
        loss = loss_fn(leaves, teacher_list)
        loss.backward()
        return loss.detach(), [leaf.grad for leaf in leaves]

    base_loss, base_grads = grads(teachers)
    new_t0 = torch.softmax(torch.randn(5, 9, generator=torch.Generator().manual_seed(9)), -1)
    new_loss, new_grads = grads([new_t0, teachers[1]])
    # Teacher 0 never meets student global_1 (index 0): that gradient is unchanged...
    torch.testing.assert_close(new_grads[0], base_grads[0], rtol=0, atol=0)
    # ...while every other student crop (global_2 and all locals) is paired with teacher 0.
    for i in range(1, len(students)):
        assert not torch.allclose(new_grads[i], base_grads[i])
    # The loss changes by exactly the teacher-0 terms of students 1.. over the 8 pairs.
    delta = sum(
        ref_cross_entropy_rows(np64(new_t0), np64(s), 0.1).mean()
        - ref_cross_entropy_rows(np64(teachers[0]), np64(s), 0.1).mean()
        for s in students[1:]
    )
    assert (new_loss - base_loss).item() == pytest.approx(delta / 8, rel=1e-4, abs=1e-5)
    # Symmetric for teacher 1 and student global_2.
    _, grads_t1 = grads([teachers[0], new_t0])
    torch.testing.assert_close(grads_t1[1], base_grads[1], rtol=0, atol=0)
    assert not torch.allclose(grads_t1[0], base_grads[0])


def test_dino_loss_is_minimal_when_student_matches_sharpened_teacher() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.softmax(torch.randn(6, 10, generator=g) / 0.2, dim=-1)
    teachers = [target, target]
    student_temp = 0.1
    matched = [student_temp * torch.log(target) for _ in range(4)]  # softmax(s/τ) == target
    loss_fn = DINOClsLoss()
    best = loss_fn(matched, teachers, student_temp).item()
    entropy = -(target * torch.log(target)).sum(-1).mean().item()
    assert best == pytest.approx(entropy, rel=1e-4)
    for _ in range(5):
        perturbed = [s + 0.05 * torch.randn(s.shape, generator=g) for s in matched]
        assert loss_fn(perturbed, teachers, student_temp).item() > best


def test_dino_loss_bf16_inputs_give_fp32() -> None:
    students, teachers = _dino_inputs(3)
    loss_bf16 = DINOClsLoss()([s.bfloat16() for s in students], [t.bfloat16() for t in teachers])
    loss_ref = DINOClsLoss()(
        [s.bfloat16().float() for s in students], [t.bfloat16().float() for t in teachers]
    )
    assert loss_bf16.dtype == torch.float32
    assert loss_bf16.item() == loss_ref.item()


def test_dino_loss_rejects_bad_inputs() -> None:
    students, teachers = _dino_inputs(4)
    with pytest.raises(ValueError, match="shape"):
        DINOClsLoss()([students[0][:, :4]] + students[1:], teachers)
    with pytest.raises(ValueError, match="pair"):
        DINOClsLoss()(students[:1], teachers[:1])


# ---------------------------------------------------------------------------------------------
# iBOT patch loss
# ---------------------------------------------------------------------------------------------


def _ibot_inputs(masks: torch.Tensor, seed: int, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    m = int(masks.sum())
    student = torch.randn(m, k, generator=g)
    teacher = torch.softmax(torch.randn(m, k, generator=g) / 0.3, dim=-1)
    return student, teacher


def ref_ibot(student, teacher, masks, temp, average_over="masked_images") -> float:
    ce = ref_cross_entropy_rows(np64(teacher), np64(student), temp)
    row = 0
    per_image = []
    for b in range(masks.shape[0]):
        patch_losses = []
        for p in range(masks.shape[1]):
            if masks[b, p]:
                patch_losses.append(ce[row])
                row += 1
        if patch_losses:
            per_image.append(sum(patch_losses) / len(patch_losses))
    n = len(per_image) if average_over == "masked_images" else masks.shape[0]
    return sum(per_image) / n


@pytest.mark.parametrize("average_over", ["masked_images", "all_images"])
def test_ibot_loss_matches_reference(average_over: str) -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 12, generator=g) < 0.4
    masks[2] = False  # one image without masked patches
    student, teacher = _ibot_inputs(masks, 1)
    loss = IBOTPatchLoss(average_over)(student, teacher, masks, student_temp=0.1)
    assert loss.dtype == torch.float32
    expected = ref_ibot(student, teacher, masks, 0.1, average_over)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_image_with_one_patch_weighs_as_much_as_image_with_ten() -> None:
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, 3] = True
    masks[1, :10] = True
    k = 4
    # Every patch of an image gets the same teacher/student, so its patch losses are equal.
    teacher_a = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    teacher_b = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    student_a = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    student_b = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    student = torch.cat([student_a, student_b.expand(10, k)])
    teacher = torch.cat([teacher_a, teacher_b.expand(10, k)])
    loss = IBOTPatchLoss()(student, teacher, masks, student_temp=1.0)
    ce_a = -(teacher_a * torch.log_softmax(student_a, -1)).sum().item()
    ce_b = -(teacher_b * torch.log_softmax(student_b, -1)).sum().item()
    assert ce_a != pytest.approx(ce_b)
    assert loss.item() == pytest.approx(0.5 * (ce_a + ce_b), rel=1e-6)
    assert loss.item() != pytest.approx((ce_a + 10 * ce_b) / 11, rel=1e-3)  # not per-patch mean


def test_ibot_no_masked_patch_gives_connected_zero() -> None:
    masks = torch.zeros(3, 8, dtype=torch.bool)
    student = torch.zeros(0, 5, requires_grad=True)
    loss = IBOTPatchLoss()(student, torch.zeros(0, 5), masks)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 5)


def test_ibot_rejects_row_count_mismatch() -> None:
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, :2] = True
    with pytest.raises(ValueError, match="M = masks.sum"):
        IBOTPatchLoss()(torch.randn(3, 5), torch.rand(3, 5), masks)
    with pytest.raises(ValueError, match="average_over"):
        IBOTPatchLoss("mean")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# KoLeo
# ---------------------------------------------------------------------------------------------


def ref_koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    rows = [r / max(np.sqrt((r * r).sum()), eps) for r in x.astype(np.float64)]
    total = 0.0
    for i, xi in enumerate(rows):
        best = min(np.sqrt(((xi - xj) ** 2).sum()) for j, xj in enumerate(rows) if j != i)
        total += -math.log(best + eps)
    return total / len(rows)


def test_koleo_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g) * 3.0
    loss = koleo_loss(x)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_koleo(x.numpy()), rel=1e-5)
    assert koleo_loss(x.bfloat16()).dtype == torch.float32


def test_koleo_duplicates_give_finite_loss_and_grads() -> None:
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 6, generator=g)
    x = torch.cat([row, row]).requires_grad_(True)
    loss = koleo_loss(x)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(-math.log(2e-8), rel=1e-3)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # A duplicate inside a larger batch, too.
    y = torch.cat([torch.randn(4, 6, generator=g), row, row]).requires_grad_(True)
    koleo_loss(y).backward()
    assert torch.isfinite(y.grad).all()


def test_koleo_single_row_is_connected_zero() -> None:
    x = torch.randn(1, 4, requires_grad=True)
    loss = koleo_loss(x)
    assert loss.item() == 0.0
    loss.backward()
    torch.testing.assert_close(x.grad, torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------


def test_recon_loss_hand_value_and_k_average() -> None:
    shape = (2, 3, 4, 4)
    preds = [torch.ones(shape), torch.full(shape, 2.0)]
    targets = [torch.zeros(shape), torch.zeros(shape)]
    assert recon_loss(preds, targets).item() == pytest.approx((1.0 + 4.0) / 2)
    assert recon_loss(preds[:1], targets[:1]).item() == pytest.approx(1.0)
    # One pixel off by 3 out of 2*3*4*4 = 96 values.
    pred = torch.zeros(shape)
    pred[1, 2, 3, 0] = 3.0
    assert recon_loss([pred], [torch.zeros(shape)]).item() == pytest.approx(9.0 / 96)


def test_recon_loss_matches_reference_fp32_and_detaches_targets() -> None:
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(2, 3, 5, 5, generator=g).bfloat16().requires_grad_(True) for _ in range(3)]
    targets = [
        torch.randn(2, 3, 5, 5, generator=g).bfloat16().requires_grad_(True) for _ in range(3)
    ]
    loss = recon_loss(preds, targets)
    assert loss.dtype == torch.float32
    expected = np.mean([((np64(p) - np64(t)) ** 2).mean() for p, t in zip(preds, targets)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in preds)
    assert all(t.grad is None for t in targets)


def test_recon_loss_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\).*\(2, 3, 4, 4\)"):
        recon_loss([torch.zeros(2, 3, 8, 8)], [torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="as many"):
        recon_loss([torch.zeros(1, 3, 4, 4)], [])
