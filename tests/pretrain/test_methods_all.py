"""Every base method of the registry, with reconstruction on and off: steps, gradients, λ = 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_pipeline.augment import MultiCropAugmentation
from data_pipeline.batch import Batch
from equirecon.config import ConfigError, load_config
from pretrain.methods import build_method, list_methods
from pretrain.methods.base import SSLMethod
from pretrain.optimizer import build_optimizer
from pretrain.train import Trainer, transform_generator
from tests.conftest import TINY_OVERRIDES

METHODS = ["dinov2", "ibot", "vicreg", "simclr"]
TRANSFORMS = ["rotation", "translation", "se2", "color", "blur"]
# Small projector/expander widths for the teacher-free methods.
TINY_METHOD = [
    "method.expander_dim=32",
    "method.projector_hidden_dim=32",
    "method.projector_dim=16",
]


def tiny_cfg(*extra: str):  # noqa: ANN201 - Config
    return load_config(None, TINY_OVERRIDES + TINY_METHOD + list(extra))


def random_batch(b: int = 4, g: int = 16, loc: int = 8, n_local: int = 2, patch: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(0)
    n = (g // patch) ** 2
    masks = torch.zeros(2, b, n, dtype=torch.bool)
    masks[0, 0, :5] = True
    masks[1, 1, 3:9] = True
    masks[1, 2, 0] = True
    return Batch(
        global_crops=torch.randn(2, b, 3, g, g, generator=gen),
        local_crops=torch.randn(n_local, b, 3, loc, loc, generator=gen),
        masks=masks,
    )


def build(name: str, *extra: str, seed: int = 0) -> SSLMethod:
    torch.manual_seed(seed)
    return build_method(tiny_cfg(f"method.name={name}", *extra))


def grads_of(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_registry_has_every_method_of_the_paper() -> None:
    assert set(METHODS) <= set(list_methods())
    for name in METHODS:
        method = build(name, "recon.enabled=false")
        assert method.name == name
        assert method.has_teacher == (name in ("dinov2", "ibot"))
        assert (method.teacher is not None) == method.has_teacher


@pytest.mark.parametrize("transform", ["se2", "color"])
@pytest.mark.parametrize("recon", [True, False])
@pytest.mark.parametrize("name", METHODS)
def test_three_steps_finite_and_gradients_reach_student_only(
    name: str, recon: bool, transform: str
) -> None:
    method = build(name, f"recon.enabled={str(recon).lower()}", f"recon.transform={transform}")
    optimizer = build_optimizer(method.student)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    batch = random_batch()
    student = method.student
    assert (student.encoder.split_head is not None) == recon
    assert (student.decoders is not None) == recon
    assert (method.transform is not None) == recon
    for step in range(3):
        out = method.compute_losses(student, batch, 0.04, transform_generator(0, step))
        assert torch.isfinite(out.loss_total) and torch.isfinite(out.loss_ssl), step
        assert (out.loss_recon is not None) == recon
        optimizer.zero_grad(set_to_none=True)
        out.loss_total.backward()
        parts = {"backbone": student.encoder.backbone.vit.blocks}
        if recon:
            parts |= {"split_head": student.encoder.split_head, "decoders": student.decoders}
            assert len(out.recon_preds) == len(out.recon_targets) == 2
        for part, module in parts.items():
            grads = grads_of(module)
            assert grads and all(g is not None for g in grads), part
            assert all(torch.isfinite(g).all() for g in grads), part
            assert any(g.abs().sum() > 0 for g in grads), part
        optimizer.step()
        method.update_teacher(0.99)
    if method.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
        assert method.teacher.decoders is None


@pytest.mark.parametrize("name", METHODS)
def test_lambda_zero_equals_method_without_decoders(name: str) -> None:
    """λ = 0: same total loss and the same gradient on every shared student parameter."""
    # LayerScale off: at its DINOv2 init (1e-5) every image's tokens agree to 1e-5, and fp32
    # gradients of the two (equal in exact arithmetic) formulations agree only to ~1e-3.
    with_decoders = build(name, "recon.lambda=0", "model.layerscale=0")
    without = build(name, "recon.lambda=0", "model.layerscale=0")
    without.student.decoders = None  # the same method with the decoders removed
    shared = dict(without.student.named_parameters())
    for key, p in with_decoders.student.named_parameters():
        if not key.startswith("decoders."):
            assert torch.equal(p, shared[key]), key  # same seed, same initialization

    batch = random_batch()
    a = with_decoders.compute_losses(with_decoders.student, batch, 0.04, transform_generator(0, 0))
    b = without.compute_losses(without.student, batch, 0.04, transform_generator(0, 0))
    assert a.loss_recon is not None and a.loss_recon > 0 and b.loss_recon is None
    assert torch.equal(b.loss_total, b.loss_ssl)
    torch.testing.assert_close(a.loss_total, b.loss_total, rtol=1e-6, atol=1e-7)
    a.loss_total.backward()
    b.loss_total.backward()
    for key, p in with_decoders.student.named_parameters():
        if key.startswith("decoders."):
            assert p.grad is None or p.grad.abs().sum() == 0, key
            continue
        other = shared[key].grad
        if p.grad is None or other is None:
            assert p.grad is None and other is None, key
            continue
        # Float rounding only: without decoders the last block computes just the head rows.
        scale = float(other.abs().max())
        torch.testing.assert_close(p.grad, other, rtol=1e-5, atol=1e-6 * scale, msg=key)


def test_lambda_scales_recon_into_total() -> None:
    out = {}
    for lam in (0.5, 2.0):
        method = build("vicreg", f"recon.lambda={lam}")
        out[lam] = method.compute_losses(
            method.student, random_batch(), 0.04, transform_generator(0, 0)
        )
        torch.testing.assert_close(
            out[lam].loss_total, out[lam].loss_ssl + lam * out[lam].loss_recon
        )
    torch.testing.assert_close(out[0.5].loss_ssl, out[2.0].loss_ssl)


def test_ibot_center_updates_and_is_in_the_teacher_state() -> None:
    method = build("ibot", "method.center_momentum=0.8")
    teacher = method.teacher
    keys = set(teacher.state_dict())
    assert {"cls_center.center", "patch_center.center"} <= keys
    assert all(
        not k.startswith(("cls_center", "patch_center")) for k in method.student.state_dict()
    )
    assert torch.equal(teacher.cls_center.center, torch.zeros(1, 64))

    batch = random_batch()
    global_crops = method.recon.views(batch, transform_generator(0, 0)).global_crops
    with torch.no_grad():
        z_inv, _ = teacher.encoder(global_crops)
        cls_mean = teacher.head(z_inv[:, 0]).mean(0, keepdim=True)
        patch_mean = teacher.head(z_inv[:, 1:]).flatten(0, 1).mean(0, keepdim=True)
    method.compute_losses(method.student, batch, 0.04, transform_generator(0, 0))
    torch.testing.assert_close(teacher.cls_center.center, 0.2 * cls_mean)
    torch.testing.assert_close(teacher.patch_center.center, 0.2 * patch_mean)

    # The center travels with the teacher's state dict (what checkpoints save and load).
    fresh = build("ibot")
    fresh.teacher.load_state_dict(teacher.state_dict())
    assert torch.equal(fresh.teacher.cls_center.center, teacher.cls_center.center)
    assert (
        "cls" in method.compute_losses(method.student, batch, 0.04, transform_generator(0, 1)).terms
    )


@pytest.mark.parametrize("name", ["vicreg", "simclr"])
def test_teacher_free_methods_skip_local_crops_and_masks(name: str) -> None:
    method = build(name)
    assert method.teacher is None and method.has_teacher is False
    method.update_teacher(0.9)  # a no-op
    assert not method.backbone.mask_token.requires_grad  # no masks are fed
    seen: list[tuple[int, ...]] = []
    handle = method.backbone.register_forward_pre_hook(
        lambda _m, args: seen.append(tuple(args[0].shape))
    )
    batch = random_batch()
    method.compute_losses(method.student, batch, 0.04, transform_generator(0, 0))
    handle.remove()
    assert seen == [(8, 3, 16, 16)]  # one pass over [v1; v2], no local crops


def test_method_config_keys() -> None:
    cfg = load_config(None, [])
    m = cfg.method
    assert (m.center_momentum, m.expander_dim, m.projector_dim, m.simclr_temperature) == (
        0.9,
        2048,
        256,
        0.1,
    )
    assert (m.vicreg_sim_weight, m.vicreg_var_weight, m.vicreg_cov_weight) == (25.0, 25.0, 1.0)
    assert cfg.data.augmentations == "all"
    assert load_config(None, ["method.name=ibot"]).d_patch == 8192
    assert load_config(None, ["method.name=vicreg"]).d_equi == 256
    with pytest.raises(ConfigError, match="method.vicreg_weight"):
        load_config(None, ["method.vicreg_weight=1.0"])
    with pytest.raises(ConfigError, match="data.augmentations"):
        load_config(None, ["data.augmentations=crop"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, ["method.name=simclr", "train.batch_size=1"])


def test_rot_augmentations_change_nothing_but_the_angle() -> None:
    """`rot`: crops of a rotation-symmetric image agree inside the disc; `all` crops do not."""
    side = 64
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    r = torch.sqrt((xx - (side - 1) / 2) ** 2 + (yy - (side - 1) / 2) ** 2)
    rings = (127 + 120 * torch.cos(r / 3)).to(torch.uint8)
    img = Image.fromarray(torch.stack([rings, rings.flip(0), 255 - rings], -1).numpy())
    disc = (r < side / 2 - 8).float()[::4, ::4][None]  # on the 16 px crop grid
    torch.manual_seed(0)
    rot = MultiCropAugmentation(16, 8, 1, augmentations="rot")
    full = MultiCropAugmentation(16, 8, 1, augmentations="all")
    corners_zero = 0
    for _ in range(4):
        (g1, g2), (local,) = rot(img)
        assert g1.shape == (3, 16, 16) and local.shape == (3, 8, 8)
        assert ((g1 - g2).abs() * disc).max() < 0.6
        corners_zero += int(g1[:, 0, 0].abs().max() == 0) + int(g2[:, 0, 0].abs().max() == 0)
    assert corners_zero >= 6  # rotated: the corners are filled with 0 (the mean colour)
    diffs = [((a - b).abs() * disc).max() for a, b in (full(img)[0] for _ in range(4))]
    assert max(diffs) > 1.0
    with pytest.raises(ValueError, match="augmentations"):
        MultiCropAugmentation(16, 8, 1, augmentations="none")


# ---- the trainer, in process, on the demo shards ------------------------------------------------

FIT_CASES = [(name, "se2", "all") for name in METHODS]
FIT_CASES += [("dinov2", t, "all") for t in TRANSFORMS if t != "se2"]
FIT_CASES += [("vicreg", "rotation", "rot")]


@pytest.mark.parametrize(("name", "transform", "augmentations"), FIT_CASES)
def test_trainer_fit_every_method_and_transform(
    name: str, transform: str, augmentations: str, demo_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_cfg(
        f"method.name={name}",
        f"recon.transform={transform}",
        f"data.augmentations={augmentations}",
        f"data.path={demo_data}",
        f"run.dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "tracking.enabled=false",
    )
    last = Trainer(cfg).fit()
    assert math.isfinite(last["train/loss_total"]) and "train/loss_recon" in last
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
