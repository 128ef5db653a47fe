"""The method's modules: split head and decoder shapes, what gradients reach, recon on/off."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.batch import Batch
from equirecon.config import load_config
from pretrain.methods import build_method
from pretrain.models.backbone import build_backbone
from pretrain.models.decoder import ReconDecoder
from pretrain.models.heads import DINOHead, SplitHead, prototype_logits
from pretrain.optimizer import build_optimizer
from pretrain.train import transform_generator
from tests.conftest import TINY_OVERRIDES

TINY = [*TINY_OVERRIDES, "train.batch_size=4"]


def tiny_cfg(*extra: str):  # noqa: ANN201
    return load_config(None, TINY + list(extra))


def random_batch(b: int = 4, g: int = 16, loc: int = 8, n_local: int = 2, patch: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(0)
    n = (g // patch) ** 2
    masks = torch.zeros(2, b, n, dtype=torch.bool)
    masks[0, 0, :5] = True
    masks[1, 1, 3:9] = True
    return Batch(
        global_crops=torch.randn(2, b, 3, g, g, generator=gen),
        local_crops=torch.randn(n_local, b, 3, loc, loc, generator=gen),
        masks=masks,
    )


def test_split_head_shapes() -> None:
    head = SplitHead(32, d_patch=48, d_equi=16)
    z_inv, z_equi = head(torch.randn(3, 17, 32))
    assert z_inv.shape == (3, 17, 32) and z_equi.shape == (3, 17, 16)
    with pytest.raises(ValueError, match="d_equi"):
        SplitHead(32, d_patch=16, d_equi=16)


@pytest.mark.parametrize("resize", ["after_conv", "before_conv"])
@pytest.mark.parametrize(("size", "patch"), [(32, 4), (224, 16), (224, 14), (98, 14)])
def test_decoder_output_matches_crop(size: int, patch: int, resize: str) -> None:
    grid = size // patch
    dec = ReconDecoder(2 * 16, (size, size), (grid, grid), channels=16, resize=resize)
    seen: list[tuple[int, int]] = []
    for conv in dec.convs:
        conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    out = dec(torch.randn(2, grid * grid, 32))
    assert out.shape == (2, 3, size, size)
    assert len(dec.convs) == 4
    if resize == "before_conv":  # each convolution at the next, larger size
        assert seen == dec.sizes
    else:  # at the size it receives: the grid, then each size but the last (the output's)
        assert seen == [(grid, grid), *dec.sizes[:3]]


def test_decoder_layouts_share_parameters() -> None:
    a = ReconDecoder(8, (32, 32), (8, 8), channels=16, resize="after_conv")
    b = ReconDecoder(8, (32, 32), (8, 8), channels=16, resize="before_conv")
    b.load_state_dict(a.state_dict())  # old checkpoints load into the new layout
    with pytest.raises(ValueError, match="decoder_resize"):
        ReconDecoder(8, (32, 32), (8, 8), resize="sideways")


@pytest.mark.parametrize("kernel", [1, 3])
def test_decoder_kernel_bounds_how_far_content_moves(kernel: int) -> None:
    """A change in the top-left patch's features reaches the far quarter of the image only
    through 3x3 convolutions; with kernel 1 each pixel reads its own position's features."""
    torch.manual_seed(0)
    dec = ReconDecoder(8, (32, 32), (8, 8), channels=16, kernel=kernel)
    x = torch.randn(1, 64, 8)
    y = x.clone()
    y[:, 0] += 5.0  # patch (0, 0)
    with torch.no_grad():
        changed = (dec(x) - dec(y)).abs().amax(dim=1)[0] > 1e-6  # (32, 32)
    assert changed[0, 0]
    assert bool(changed[12:, 12:].any()) == (kernel == 3)
    with pytest.raises(ValueError, match="decoder_kernel"):
        ReconDecoder(8, (32, 32), (8, 8), kernel=2)


def test_backbone_masking_changes_only_masked_inputs() -> None:
    torch.manual_seed(0)
    bb = build_backbone(
        "vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    none = torch.zeros(1, 16, dtype=torch.bool)
    masked = none.clone()
    masked[0, 5] = True
    with torch.no_grad():
        a, b = bb(x), bb(x, none)
        c = bb(x, masked)
    assert torch.equal(a, b)  # an all-false mask is a no-op
    assert not torch.allclose(a, c)
    # With the mask, the masked patch's input embedding no longer depends on its pixels.
    x2 = x.clone()
    x2[..., 4:8, 4:8] += 5.0  # patch index 5 on a 4×4 grid
    with torch.no_grad():
        assert torch.allclose(bb(x2, masked), c, atol=1e-5)


def test_recon_disabled_is_plain_dinov2() -> None:
    method = build_method(tiny_cfg("recon.enabled=false"))
    assert method.student.encoder.split_head is None
    assert method.student.decoders is None and method.transform is None
    out = method.compute_losses(method.student, random_batch(), 0.04, transform_generator(0, 0))
    assert out.loss_recon is None and torch.equal(out.loss_total, out.loss_ssl)
    # The heads read backbone tokens directly.
    assert method.student.head.mlp[0].in_features == method.backbone.embed_dim


def test_recon_enabled_structure_and_losses() -> None:
    cfg = tiny_cfg()
    method = build_method(cfg)
    assert method.student.head.mlp[0].in_features == 48 - 16  # heads read z_inv
    assert len(method.student.decoders) == cfg.recon.k == 2
    out = method.compute_losses(method.student, random_batch(), 0.04, transform_generator(0, 0))
    assert out.loss_recon is not None and torch.isfinite(out.loss_total)
    assert torch.allclose(out.loss_total, out.loss_ssl + cfg.recon.lam * out.loss_recon)
    assert [t.shape for t in out.recon_targets] == [(4, 3, 16, 16)] * 2
    assert [p.shape for p in out.recon_preds] == [(4, 3, 16, 16)] * 2
    assert set(out.terms) == {"dino", "ibot", "koleo"}


def test_gradients_reach_student_parts_never_teacher() -> None:
    method = build_method(tiny_cfg())
    out = method.compute_losses(method.student, random_batch(), 0.04, transform_generator(0, 0))
    out.loss_total.backward()
    s = method.student
    for name, module in [
        ("backbone", s.encoder.backbone.vit.blocks),
        ("split_head", s.encoder.split_head),
        ("head", s.head),
        ("decoders", s.decoders),
    ]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert method.teacher.decoders is None


def test_recon_loss_gradient_reaches_split_head_equi_slice_only_through_decoders() -> None:
    """With λ > 0 and SSL weights 0, only z_equi (the last d_equi rows of the split head) learns."""
    cfg = tiny_cfg("method.dino_weight=0", "method.ibot_weight=0", "method.koleo_weight=0")
    method = build_method(cfg)
    out = method.compute_losses(method.student, random_batch(), 0.04, transform_generator(0, 0))
    out.loss_total.backward()
    w = method.student.encoder.split_head.proj.weight.grad
    assert w[: 48 - 16].abs().sum() == 0 and w[48 - 16 :].abs().sum() > 0


def test_ema_update_moves_teacher_toward_student() -> None:
    method = build_method(tiny_cfg())
    t_param = method.teacher.head.prototypes
    s_param = method.student.head.prototypes
    with torch.no_grad():
        s_param.add_(1.0)
    before = t_param.clone()
    method.update_teacher(0.9)
    assert torch.allclose(t_param, 0.9 * before + 0.1 * s_param)


def test_training_steps_reduce_loss_on_fixed_batch() -> None:
    """A few optimizer steps on one batch lower the total loss (the pipeline trains)."""
    torch.manual_seed(0)
    method = build_method(tiny_cfg("train.batch_size=8"))
    opt = build_optimizer(method.student)
    for group in opt.param_groups:
        group["lr"] = 1e-3
    batch = random_batch(b=8)
    losses = []
    for _ in range(8):
        out = method.compute_losses(method.student, batch, 0.04, transform_generator(0, 0))
        opt.zero_grad()
        out.loss_total.backward()
        opt.step()
        losses.append(out.loss_recon.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["dinov2", "ibot"])
def test_teacher_never_uses_stochastic_depth(name: str) -> None:
    """`method.train()` puts the student in training mode; the EMA teacher stays in eval mode,
    so its targets are deterministic even with a large drop-path rate."""
    cfg = load_config(None, TINY_OVERRIDES + [f"method.name={name}", "model.drop_path=0.9"])
    method = build_method(cfg)
    method.train()
    assert method.student.training and not method.teacher.training
    assert not any(m.training for m in method.teacher.modules())
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        first, _ = method.teacher.encoder(images)
        second, _ = method.teacher.encoder(images)
    assert torch.equal(first, second)


@pytest.mark.parametrize("rows_shape", [(7,), (2, 5), (20,)])  # 20 > d = 12: v-side correction
def test_prototype_logits_equal_normalized_matmul(rows_shape: tuple[int, ...]) -> None:
    """The folded normalization gives F.normalize's logits and gradients (h and v)."""
    torch.manual_seed(0)
    v = (0.02 * torch.randn(300, 12)).requires_grad_(True)
    h = torch.nn.functional.normalize(torch.randn(*rows_shape, 12), dim=-1).requires_grad_(True)
    v_ref, h_ref = v.detach().clone().requires_grad_(True), h.detach().clone().requires_grad_(True)
    out = prototype_logits(h, v)
    ref = h_ref @ torch.nn.functional.normalize(v_ref, dim=-1, eps=1e-6).t()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(*rows_shape, 300)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(v.grad, v_ref.grad, rtol=1e-4, atol=1e-4)  # grads ~10
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-5)
    assert torch.autograd.gradcheck(
        lambda a, b: prototype_logits(a, b, scale=2.5),  # e.g. 1 / a student temperature
        (h.detach().double().requires_grad_(), v.detach().double().requires_grad_()),
    )


def test_prototype_logits_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=64, hidden_dim=16, bottleneck_dim=12)
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert (
        head.prototypes.grad.dtype == torch.float32 and torch.isfinite(head.prototypes.grad).all()
    )
    torch.testing.assert_close(out.float(), head(x).detach(), atol=2e-2, rtol=2e-2)


def test_engine_ema_is_the_methods_ema() -> None:
    """One EMA: `Engine.update_teacher` (training) runs `SSLMethod.update_teacher` (tested above)."""
    import copy

    from pretrain.strategies.engine import Engine

    method = build_method(tiny_cfg())
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.5)
    twin = copy.deepcopy(method)
    Engine(method, method.student).update_teacher(0.8)
    twin.update_teacher(0.8)
    moved = 0
    for (name, a), (_, b) in zip(
        method.teacher.named_parameters(), twin.teacher.named_parameters()
    ):
        assert torch.equal(a, b), name
        moved += 1
    assert moved > 10
    calls: list[float] = []
    method.update_teacher = calls.append  # the engine goes through the method's EMA
    Engine(method, method.student).update_teacher(0.5)
    assert calls == [0.5]
