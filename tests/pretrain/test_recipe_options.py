"""The recipe options (issue 18): lr scaling rule, parameter-group multipliers (layer-wise decay,
patch-embedding lr, token weight decay), last-layer freeze, LayerScale, per-depth vs uniform
drop path, the trained prototype gain; and that the demo/repro configs train as before."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from equirecon.config import ConfigError, load_config, save_config
from pretrain.methods import build_method
from pretrain.models.backbone import build_backbone
from pretrain.models.heads import DINOHead, prototype_logits
from pretrain.param_groups import GroupRule, param_groups, param_multipliers
from pretrain.schedules import apply_schedules, build_schedules, cosine, peak_lr
from tests.conftest import REPO, TINY_OVERRIDES

NEW_KEYS = (
    "train.lr_scaling",
    "train.layerwise_decay",
    "train.patch_embed_lr_mult",
    "train.freeze_last_layer_steps",
    "train.weight_decay_tokens",
    "model.layerscale",
    "model.drop_path_uniform",
    "method.norm_last_layer",
)


def _tiny(*extra: str):  # noqa: ANN202
    return load_config(None, [*TINY_OVERRIDES, *extra])


# ---- lr scaling ------------------------------------------------------------------------------


def test_peak_lr_rules() -> None:
    assert peak_lr(4e-3, 2048, "sqrt_1024") == pytest.approx(4e-3 * math.sqrt(2))  # 5.657e-3
    assert peak_lr(4e-3, 2048, "linear") == pytest.approx(0.032)
    assert peak_lr(5e-4, 1024, "linear") == pytest.approx(2e-3)
    assert peak_lr(1e-4, 2048, "none") == 1e-4


@pytest.mark.parametrize(
    ("method", "rule"),
    [("dinov2", "sqrt_1024"), ("ibot", "linear"), ("vicreg", "linear"), ("simclr", "linear")],
)
def test_lr_scaling_default_per_method(method: str, rule: str) -> None:
    cfg = _tiny(f"method.name={method}")
    assert cfg.train.lr_scaling == rule
    assert build_schedules(cfg, world_size=4).lr == pytest.approx(peak_lr(4e-3, 32, rule))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr_scaling=sqrt", "train.lr_scaling"),
        ("train.layerwise_decay=0", "train.layerwise_decay"),
        ("train.layerwise_decay=1.5", "train.layerwise_decay"),
        ("train.patch_embed_lr_mult=-1", "train.patch_embed_lr_mult"),
        ("train.freeze_last_layer_steps=-2", "train.freeze_last_layer_steps"),
        ("model.layerscale=-0.1", "model.layerscale"),
        ("method.norm_last_layer=1", "method.norm_last_layer"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _tiny(override)


# ---- parameter groups ------------------------------------------------------------------------


def _hand_table(decay: float, patch_mult: float, n_blocks: int) -> dict[str, tuple[float, float]]:
    """{name: (lr_mult, wd_mult)} of the tiny DINOv2 student (recon off, LayerScale, trained
    prototype gain, token decay), written out from DINOv2's rule."""
    bb = "encoder.backbone."
    emb = decay ** (n_blocks + 1)
    table = {
        bb + "mask_token": (emb, 1.0),
        bb + "vit.cls_token": (emb, 1.0),
        bb + "vit.pos_embed": (emb, 1.0),
        bb + "vit.patch_embed.proj.weight": (emb * patch_mult, 1.0),
        bb + "vit.patch_embed.proj.bias": (emb * patch_mult, 0.0),
        bb + "vit.norm.weight": (1.0, 0.0),
        bb + "vit.norm.bias": (1.0, 0.0),
        "head.prototypes": (1.0, 1.0),
        "head.prototype_gain": (1.0, 1.0),
    }
    for i in range(n_blocks):
        lr = decay ** (n_blocks - i)
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            table[f"{bb}vit.blocks.{i}.{part}.bias"] = (lr, 0.0)
            table[f"{bb}vit.blocks.{i}.{part}.weight"] = (lr, 0.0 if "norm" in part else 1.0)
        table[f"{bb}vit.blocks.{i}.ls1.gamma"] = (lr, 0.0)
        table[f"{bb}vit.blocks.{i}.ls2.gamma"] = (lr, 0.0)
    for j in (0, 2, 4):
        table[f"head.mlp.{j}.weight"] = (1.0, 1.0)
        table[f"head.mlp.{j}.bias"] = (1.0, 0.0)
    return table


def test_param_multipliers_of_a_small_vit_by_hand() -> None:
    """DINOv2's recipe on a 2-block ViT: block 0 ×0.81, block 1 ×0.9, embeddings ×0.729, patch
    embedding ×0.1458, final norm and heads ×1; no decay on biases, norms, LayerScale."""
    cfg = _tiny("recon.enabled=false", "model.layerscale=1e-5")
    assert (cfg.train.layerwise_decay, cfg.train.patch_embed_lr_mult) == (0.9, 0.2)
    method = build_method(cfg)
    mults = param_multipliers(method.student, GroupRule.from_config(cfg))
    expected = _hand_table(0.9, 0.2, n_blocks=2)
    assert sorted(mults) == sorted(expected)
    for name, (lr, wd) in expected.items():
        got = mults[name]
        assert got.lr_mult == pytest.approx(lr, rel=1e-12), name
        assert got.wd_mult == wd, name
        assert got.last_layer == (name in ("head.prototypes", "head.prototype_gain")), name
    assert mults["encoder.backbone.vit.patch_embed.proj.weight"].lr_mult == pytest.approx(0.1458)


def test_groups_fuse_equal_multipliers_and_schedules_apply_them() -> None:
    cfg = _tiny("recon.enabled=false", "train.freeze_last_layer_steps=3")
    method = build_method(cfg)
    rule = GroupRule.from_config(cfg)
    groups = param_groups(method.student, rule)
    mults = param_multipliers(method.student, rule)
    names = {id(p): n for n, p in method.student.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(mults)
    seen_zero = False
    for g in groups:
        assert not (seen_zero and g["wd_mult"] > 0), "decayed groups come first"
        seen_zero |= g["wd_mult"] == 0
        for p in g["params"]:
            m = mults[names[id(p)]]
            assert (m.lr_mult, m.wd_mult, m.last_layer) == (
                g["lr_mult"],
                g["wd_mult"],
                g["last_layer"],
            )
    schedules = build_schedules(cfg, 1)
    for step in (0, 2, 3, 5):
        values = schedules.at(step)
        apply_schedules(groups, values)
        for g in groups:
            base = 0.0 if (g["last_layer"] and step < 3) else values["lr"]
            assert g["lr"] == pytest.approx(base * g["lr_mult"])
            assert g["weight_decay"] == pytest.approx(values["weight_decay"] * g["wd_mult"])


# ---- the demo and repro configs train as before ------------------------------------------------


def _old_no_decay(name: str, p: torch.Tensor) -> bool:
    """The weight-decay rule before the recipe options (pretrain/parallel.py until 2026-12)."""
    return p.ndim <= 1 or name.endswith(("token", "pos_embed"))


@pytest.mark.parametrize("config", ["demo_cpu.yaml", "repro/baseline.yaml", "repro/recon.yaml"])
def test_demo_and_repro_optimizer_unchanged(config: str) -> None:
    """Peak lr base_lr·B/256 = 2e-3·32/256 = 2.5e-4 (one process), the same schedule values, and
    the two groups [decay, no decay] with the old membership and order, multipliers 1."""
    cfg = load_config(REPO / "configs" / config)
    schedules = build_schedules(cfg, world_size=1)
    assert schedules.lr == pytest.approx(2.5e-4, rel=1e-12)
    assert build_schedules(cfg, world_size=4).lr == pytest.approx(1e-3, rel=1e-12)
    for step in (0, 15, 30, 100, 199):
        v = schedules.at(step)
        assert v["lr"] == v["last_layer_lr"] == cosine(step, 200, 2.5e-4, 1e-6, 30)
        assert v["weight_decay"] == cosine(step, 200, 0.04, 0.2)
        assert v["momentum"] == cosine(step, 200, 0.992, 1.0)
    method = build_method(cfg)
    groups = param_groups(method.student, GroupRule.from_config(cfg))
    params = [(n, p) for n, p in method.student.named_parameters() if p.requires_grad]
    assert len(groups) == 2
    assert [id(p) for p in groups[0]["params"]] == [
        id(p) for n, p in params if not _old_no_decay(n, p)
    ]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for n, p in params if _old_no_decay(n, p)]
    assert [(g["lr_mult"], g["wd_mult"], g["last_layer"]) for g in groups] == [
        (1.0, 1.0, False),
        (1.0, 0.0, False),
    ]
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]
    names = [n for n, _ in params]
    assert not any("ls1" in n or "prototype_gain" in n for n in names)
    backbone = method.student.encoder.backbone
    assert cfg.model.drop_path_uniform is False and backbone.vit.blocks[
        0
    ].ls1.__class__.__name__ == ("Identity")


def test_saved_run_config_of_before_resolves_to_the_old_behaviour(tmp_path: Path) -> None:
    """A RUN_DIR/config.yaml written before the recipe keys existed (a DINOv2 run): the keys it
    lacks mean what they meant then, so the run resumes and evaluates as it was trained."""
    cfg = _tiny("train.lr_scaling=linear")
    save_config(cfg, tmp_path / "config.yaml")
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for dotted in NEW_KEYS:
        if dotted != "model.drop_path_uniform":  # an older key: saved configs have it
            section, key = dotted.split(".")
            del tree[section][key]
    tree["split"]["mode"] = "separate"  # removed key, still in old saved configs
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(tree))
    with pytest.warns(FutureWarning, match="split.mode"):
        old = load_config(tmp_path / "old.yaml")
    assert old.method.name == "dinov2"
    assert (old.train.lr_scaling, old.train.layerwise_decay, old.train.patch_embed_lr_mult) == (
        "linear",
        1.0,
        1.0,
    )
    assert (old.train.freeze_last_layer_steps, old.train.weight_decay_tokens) == (0, False)
    assert (old.model.layerscale, old.method.norm_last_layer) == (0.0, True)
    # A config file a user writes (not a saved one) gets the method's recipe.
    assert load_config(None, TINY_OVERRIDES).train.layerwise_decay == 0.9


def test_split_mode_removed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FutureWarning, match="split.mode"):
            _tiny("split.mode=separate")
    with pytest.raises(ConfigError, match="split.mode.*removed"):
        _tiny("split.mode=head_hidden")


# ---- model options -------------------------------------------------------------------------


def test_layerscale_and_drop_path_per_depth_or_uniform() -> None:
    kw = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    ls = build_backbone(**kw, layerscale=1e-5, drop_path=0.3, drop_path_uniform=True)
    for blk in ls.blocks:
        torch.testing.assert_close(blk.ls1.gamma, torch.full((32,), 1e-5))
        torch.testing.assert_close(blk.ls2.gamma, torch.full((32,), 1e-5))
        assert blk.drop_path1.drop_prob == blk.drop_path2.drop_prob == 0.3
    plain = build_backbone(**kw, layerscale=0.0, drop_path=0.3, drop_path_uniform=False)
    assert not any("gamma" in n for n, _ in plain.named_parameters())
    rates = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in plain.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # model.layerscale unset: DINOv2's recipe 1e-5; iBOT: the arch's own (none for vit_tiny).
    cfg = _tiny()
    assert cfg.model.layerscale == 1e-5 and cfg.model.drop_path_uniform is True
    assert _tiny("method.name=ibot").model.layerscale == 0.0
    assert load_config(None, ["model.arch=vit_giant_patch14"]).model.layerscale == 0.0 + 1e-5


def test_giant_arch_layerscale_table_matches_timm() -> None:
    """ARCH_LAYERSCALE (config side, no timm import) says what timm's giant builds by default."""
    giant = build_backbone(
        "vit_giant_patch14", img_size=28, patch_size=14, embed_dim=48, depth=1, num_heads=2
    )
    torch.testing.assert_close(giant.blocks[0].ls1.gamma, torch.full((48,), 1e-5))
    tiny = build_backbone("vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    assert not any("gamma" in n for n, _ in tiny.named_parameters())


# ---- the prototype layer: normalized, or with a trained gain ------------------------------------


@pytest.mark.parametrize("rows", [7, 20])
def test_prototype_logits_with_gain_equal_weight_norm(rows: int) -> None:
    """g_k · h @ v_k/‖v_k‖: values and gradients (h, v, g) equal the explicit weight norm."""
    torch.manual_seed(0)
    v = (0.02 * torch.randn(300, 12)).requires_grad_(True)
    g = (1 + 0.3 * torch.randn(300)).requires_grad_(True)
    h = F.normalize(torch.randn(rows, 12), dim=-1).requires_grad_(True)
    refs = [t.detach().clone().requires_grad_(True) for t in (h, v, g)]
    out = prototype_logits(h, v, scale=2.5, gain=g)
    ref = 2.5 * refs[0] @ (refs[2].unsqueeze(1) * F.normalize(refs[1], dim=-1, eps=1e-6)).t()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(rows, 300)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for mine, theirs in zip((h, v, g), refs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4)
    small = (h.detach(), v.detach()[:40], g.detach()[:40])  # 40 prototypes: a quick gradcheck
    assert torch.autograd.gradcheck(
        lambda a, b, c: prototype_logits(a, b, scale=2.5, gain=c),
        tuple(t.double().requires_grad_() for t in small),
    )


def test_norm_last_layer_false_trains_the_gain() -> None:
    head_fixed = DINOHead(8, out_dim=64, hidden_dim=16, bottleneck_dim=12)
    head_gain = DINOHead(8, out_dim=64, hidden_dim=16, bottleneck_dim=12, norm_last_layer=False)
    assert head_fixed.prototype_gain is None
    head_gain.load_state_dict({**head_fixed.state_dict(), "prototype_gain": torch.ones(64)})
    x = torch.randn(5, 8)
    torch.testing.assert_close(head_gain(x), head_fixed(x))  # g = 1 at init: the same logits
    head_gain(x).pow(2).sum().backward()
    assert head_gain.prototype_gain.grad.abs().sum() > 0
    cfg = _tiny()  # DINOv2's recipe: trained gain, in student and (EMA) teacher
    method = build_method(cfg)
    assert method.student.head.prototype_gain is not None
    assert method.teacher.head.prototype_gain is not None
    assert _tiny("method.norm_last_layer=true").method.norm_last_layer is True


def test_last_layer_frozen_for_n_steps(tmp_path: Path) -> None:
    """With train.freeze_last_layer_steps=2 the prototype layer (directions and gain) keeps its
    initial values for steps 0 and 1 and moves at step 2; everything else moves from step 0."""
    from pretrain.train import Trainer

    cfg = _tiny(
        f"run.dir={tmp_path}",
        "data.backend=synthetic",
        "tracking.enabled=false",
        "train.warmup_steps=0",
        "train.max_steps=10",
        "train.freeze_last_layer_steps=2",
    )
    trainer = Trainer(cfg)
    head = trainer.method.student.head
    watched = {
        "prototypes": head.prototypes,
        "prototype_gain": head.prototype_gain,
        "mlp": head.mlp[0].weight,
        "block": trainer.method.backbone.blocks[0].attn.qkv.weight,
    }
    it = iter(trainer.loader)
    for step in range(3):
        before = {k: p.detach().clone() for k, p in watched.items()}
        trainer.train_step(next(it), trainer.schedules.at(step))
        assert trainer.last_skip is None
        moved = {k: not torch.equal(before[k], p) for k, p in watched.items()}
        frozen = step < 2
        assert moved == {
            "prototypes": not frozen,
            "prototype_gain": not frozen,
            "mlp": True,
            "block": True,
        }, step


def test_dinov2_centering_softmax_around_running_centers() -> None:
    """method.centering=centering: teacher targets softmax((logits − c) / T) with c the running
    mean of the teacher's CLS (resp. masked-patch) logits, momentum 0.9, starting at 0."""
    from data_pipeline.batch import Batch
    from pretrain.methods.dinov2 import head_rows

    torch.manual_seed(0)
    method = build_method(_tiny("method.centering=centering", "recon.enabled=false"))
    teacher = method.teacher
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(2, 4, 16, generator=gen) < 0.4
    batch = Batch(
        global_crops=torch.randn(2, 4, 3, 16, 16, generator=gen),
        local_crops=torch.randn(2, 4, 3, 8, 8, generator=gen),
        masks=masks,
    )
    crops, idx = batch.global_crops.flatten(0, 1), batch.masked_positions()
    rows = head_rows(teacher.encoder.backbone, crops, idx)
    with torch.no_grad():
        logits = teacher.head(teacher.encoder(crops, rows=rows)[0])
    cls_logits, patch_logits = logits[:8], logits[8:]
    for _ in range(2):  # the second call uses the centers the first one updated
        c_cls, c_patch = teacher.cls_center.center.clone(), teacher.patch_center.center.clone()
        cls_probs, patch_probs = method._teacher_targets(crops, masks.flatten(0, 1), idx, 0.05)
        torch.testing.assert_close(
            cls_probs.flatten(0, 1), F.softmax((cls_logits - c_cls) / 0.05, -1)
        )
        torch.testing.assert_close(patch_probs, F.softmax((patch_logits - c_patch) / 0.05, -1))
        torch.testing.assert_close(
            teacher.cls_center.center, 0.9 * c_cls + 0.1 * cls_logits.mean(0, keepdim=True)
        )
        torch.testing.assert_close(
            teacher.patch_center.center, 0.9 * c_patch + 0.1 * patch_logits.mean(0, keepdim=True)
        )
    assert "cls_center.center" in teacher.state_dict()  # checkpoints carry the centers
    assert not hasattr(build_method(_tiny("recon.enabled=false")).teacher, "cls_center")
    with pytest.raises(ConfigError, match="method.centering"):
        _tiny("method.centering=mean")


def test_peak_lr_printed_and_logged_to_mlflow(
    tmp_path: Path, tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The resolved peak lr (DINOv2: 4e-3·sqrt(8/1024)) is logged at start and is an MLflow
    param of the run, next to the config keys."""
    import logging

    import mlflow

    from equirecon.tracking import RUN_ID_FILE
    from pretrain.train import Trainer

    cfg = _tiny(
        f"run.dir={tmp_path}",
        f"tracking.uri={tracking_uri}",
        "data.backend=synthetic",
        "train.max_steps=1",
    )
    with caplog.at_level(logging.INFO, logger="equirecon.pretrain"):
        trainer = Trainer(cfg)
    peak = 4e-3 * math.sqrt(8 / 1024)
    assert trainer.schedules.lr == pytest.approx(peak, rel=1e-12)
    assert "peak lr 0.000353553 = train.base_lr 0.004·sqrt(8/1024)" in caplog.text
    trainer.fit()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    params = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.params
    assert float(params["resolved.peak_lr"]) == pytest.approx(peak, rel=1e-12)
    assert (params["resolved.lr_scaling"], params["resolved.global_batch"]) == ("sqrt_1024", "8")
    assert params["train.layerwise_decay"] == "0.9"


@pytest.mark.parametrize(
    ("arch", "layerscale"), [("vit_tiny", 1e-5), ("vit_tiny", 0.0), ("vit_giant_patch14", 0.0)]
)
def test_export_model_args_rebuild_layerscale(arch: str, layerscale: float) -> None:
    """An exported backbone's timm kwargs rebuild the same parameters, LayerScale or not (also
    for an arch whose timm default has LayerScale, trained without it)."""
    import timm

    from pretrain.export import timm_model_args
    from pretrain.models.backbone import ARCHS

    patch = 14 if "giant" in arch else 4
    backbone = build_backbone(
        arch,
        img_size=2 * patch,
        patch_size=patch,
        embed_dim=48,
        depth=2,
        num_heads=2,
        layerscale=layerscale,
    )
    args = timm_model_args(backbone, 2 * patch)
    rebuilt = timm.create_model(ARCHS[arch].timm_name, pretrained=False, **args)
    assert sorted(rebuilt.state_dict()) == sorted(backbone.vit.state_dict())


def test_prototype_gain_under_bf16_autocast() -> None:
    """The trained-gain path under autocast: bf16 logits, fp32 gradients of v and g, values
    within bf16 rounding of fp32."""
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=64, hidden_dim=16, bottleneck_dim=12, norm_last_layer=False)
    with torch.no_grad():
        head.prototype_gain.uniform_(0.5, 1.5)
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, scale=10.0)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for p in (head.prototypes, head.prototype_gain):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    torch.testing.assert_close(out.float(), head(x, scale=10.0).detach(), atol=0.2, rtol=2e-2)
