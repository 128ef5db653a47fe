"""Every shipped config loads strictly and the paper configs match DESIGN §1.9 and the public
recipes they follow (DINOv2, iBOT, SIE; configs/README.md "Recipes")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from equirecon.config import load_config

REPO = Path(__file__).resolve().parents[2]
IMAGENET = 1_281_167

# (method, arch, epochs, global batch, base lr, d_patch, d_equi)
PAPER = {
    "dinov2_vitl16_100ep": ("dinov2", "vit_large_patch16", 100, 2048, 4e-3, 2048, 512),
    "ibot_vitl16_250ep": ("ibot", "vit_large_patch16", 250, 1024, 5e-4, 8192, 2048),
    "ibot_vits16_800ep": ("ibot", "vit_small_patch16", 800, 1024, 5e-4, 8192, 2048),
    "vicreg_vits16_800ep": ("vicreg", "vit_small_patch16", 800, 2048, 1e-4, 512, 256),
}


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/**/*.yaml")), ids=lambda p: p.name)
def test_config_files_load(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name: str) -> None:
    cfg = load_config(REPO / "configs" / "paper" / f"{name}.yaml")
    method, arch, epochs, batch, lr, d_patch, d_equi = PAPER[name]
    assert (cfg.method.name, cfg.model.arch, cfg.train.base_lr) == (method, arch, lr)
    assert (cfg.d_patch, cfg.d_equi) == (d_patch, d_equi)
    assert cfg.recon.enabled and cfg.recon.transform == "se2" and cfg.recon.k == 2
    # The comment's world size: per-rank batch × ranks = the paper's global batch.
    text = (REPO / "configs" / "paper" / f"{name}.yaml").read_text()
    assert f"{cfg.train.batch_size} × " in text and f"= {batch}" in text
    assert cfg.train.max_steps == epochs * RECIPES[name]["epoch"]


# The recipes, from the public repositories (sources in each config's comments):
# epoch = steps per "epoch" (DINOv2: OFFICIAL_EPOCH_LENGTH 1250; iBOT/VICReg: one pass over
# ImageNet-1k at the global batch, drop_last); peak lr at the paper's global batch; warm-ups in
# epochs; (start, end) of teacher temperature, momentum and weight decay; crop scales and local
# crops; loss weights; the optimizer/model recipe options.
RECIPES: dict[str, dict] = {
    "dinov2_vitl16_100ep": dict(
        epoch=1250,
        peak_lr=4e-3 * math.sqrt(2048 / 1024),  # sqrt_wrt_1024: 5.657e-3
        warmup_epochs=10,
        teacher_temp=(0.04, 0.07, 30),
        momentum=(0.992, 1.0),
        weight_decay=(0.04, 0.4),
        min_lr=1e-6,
        clip_grad=3.0,
        crops=((0.32, 1.0), (0.05, 0.32), 8),
        losses=dict(dino_weight=1.0, ibot_weight=1.0, koleo_weight=0.1),
        mask=(0.5, (0.1, 0.5)),
        centering=("centering", 0.9),
        options=dict(
            lr_scaling="sqrt_1024",
            layerwise_decay=0.9,
            patch_embed_lr_mult=0.2,
            freeze_last_layer_epochs=1,
            weight_decay_tokens=True,
            layerscale=1e-5,
            drop_path=(0.3, True),
            norm_last_layer=False,
            head=(65536, 2048, 256),
        ),
    ),
    **{
        name: dict(
            epoch=1251,  # 1,281,167 // 1024
            peak_lr=5e-4 * 1024 / 256,  # linear: 2e-3
            warmup_epochs=10,
            teacher_temp=(0.04, 0.07, 30),
            momentum=(0.996, 1.0),
            weight_decay=(0.04, 0.4),
            min_lr=1e-6,
            clip_grad=3.0,
            crops=((0.25, 1.0), (0.05, 0.25), 10),
            losses=dict(dino_weight=1.0, ibot_weight=1.0, koleo_weight=0.0),
            mask=(0.5, (0.1, 0.5)),
            centering=("sinkhorn_knopp", 0.9),  # iBOT always centers (the key is DINOv2's)
            options=dict(
                lr_scaling="linear",
                layerwise_decay=1.0,
                patch_embed_lr_mult=1.0,
                freeze_last_layer_epochs=1,
                weight_decay_tokens=True,
                layerscale=0.0,
                drop_path=(drop_path, False),
                norm_last_layer=False,
                head=(8192, 2048, 256),
            ),
        )
        for name, drop_path in (("ibot_vits16_800ep", 0.1), ("ibot_vitl16_250ep", 0.4))
    },
    "vicreg_vits16_800ep": dict(
        epoch=625,  # 1,281,167 // 2048
        peak_lr=1e-4 * 2048 / 256,  # linear: 8e-4
        warmup_epochs=10,
        teacher_temp=None,
        momentum=None,
        weight_decay=(1e-6, 1e-6),  # SIE main.py --wd
        min_lr=1e-6,
        clip_grad=0.0,
        crops=((0.32, 1.0), None, 0),
        losses=dict(vicreg_sim_weight=10.0, vicreg_var_weight=10.0, vicreg_cov_weight=1.0),
        mask=None,
        options=dict(
            lr_scaling="linear",
            layerwise_decay=1.0,
            patch_embed_lr_mult=1.0,
            freeze_last_layer_epochs=0,
            weight_decay_tokens=False,
            layerscale=0.0,
            drop_path=(0.0, False),
            norm_last_layer=None,
            head=None,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_resolve_to_the_recipes(name: str) -> None:
    from pretrain.schedules import build_schedules

    cfg = load_config(REPO / "configs" / "paper" / f"{name}.yaml")
    r, o = RECIPES[name], RECIPES[name]["options"]
    world = PAPER[name][3] // cfg.train.batch_size
    sched = build_schedules(cfg, world)
    epoch = r["epoch"]
    if cfg.method.name != "dinov2":  # one pass over the data; DINOv2's is a fixed 1250 steps
        assert epoch == IMAGENET // PAPER[name][3]
    tr, m, d = cfg.train, cfg.method, cfg.data
    assert sched.lr == pytest.approx(r["peak_lr"], rel=1e-12)
    assert (sched.total_steps, sched.warmup_steps) == (
        PAPER[name][2] * epoch,
        r["warmup_epochs"] * epoch,
    )
    assert sched.min_lr == r["min_lr"] and tr.clip_grad == r["clip_grad"]
    first, last = sched.at(0), sched.at(sched.total_steps)
    assert (first["lr"], sched.at(sched.warmup_steps)["lr"]) == (0.0, pytest.approx(r["peak_lr"]))
    assert last["lr"] == pytest.approx(r["min_lr"])
    assert (first["weight_decay"], last["weight_decay"]) == pytest.approx(r["weight_decay"])
    if r["momentum"] is not None:
        assert (first["momentum"], last["momentum"]) == pytest.approx(r["momentum"])
    if r["teacher_temp"] is not None:
        start, end, epochs = r["teacher_temp"]
        assert first["teacher_temp"] == pytest.approx(start)
        assert sched.at(epochs * epoch)["teacher_temp"] == pytest.approx(end)
        assert sched.at(epochs * epoch // 2)["teacher_temp"] == pytest.approx((start + end) / 2)
    freeze = o["freeze_last_layer_epochs"] * epoch
    assert sched.freeze_last_layer_steps == freeze
    if freeze:
        assert sched.at(freeze - 1)["last_layer_lr"] == 0.0
        assert sched.at(freeze)["last_layer_lr"] == sched.at(freeze)["lr"] > 0
    global_scale, local_scale, n_local = r["crops"]
    assert (d.global_scale, d.n_local) == (global_scale, n_local)
    if local_scale is not None:
        assert d.local_scale == local_scale
    for key, value in r["losses"].items():
        assert getattr(m, key) == value, key
    if r["mask"] is not None:
        assert (m.mask_prob, m.mask_ratio) == r["mask"]
        assert (m.centering, m.center_momentum) == r["centering"]
    assert (tr.lr_scaling, tr.layerwise_decay, tr.patch_embed_lr_mult) == (
        o["lr_scaling"],
        o["layerwise_decay"],
        o["patch_embed_lr_mult"],
    )
    assert (tr.weight_decay_tokens, cfg.model.layerscale) == (
        o["weight_decay_tokens"],
        o["layerscale"],
    )
    assert (cfg.model.drop_path, cfg.model.drop_path_uniform) == o["drop_path"]
    if o["head"] is not None:
        assert m.norm_last_layer == o["norm_last_layer"]
        assert (m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim) == o["head"]


STUDY = sorted({p.name.rsplit("_", 1)[0] for p in (REPO / "configs" / "study").glob("*.yaml")})


@pytest.mark.parametrize("setting", STUDY)
def test_study_pairs_are_one_flag_apart(setting: str) -> None:
    """The method-effect study compares configs that differ in recon.enabled (and run.dir) only:
    the same data, model, optimizer, seed and probe (docs/results/study.md)."""
    from equirecon.config import flat_dict

    base, recon = (
        flat_dict(load_config(REPO / "configs" / "study" / f"{setting}_{v}.yaml"))
        for v in ("baseline", "recon")
    )
    assert base.keys() == recon.keys()
    differ = {k for k in base if base[k] != recon[k]}
    assert differ == {"recon.enabled", "run.dir"}
    assert (base["recon.enabled"], recon["recon.enabled"]) == (False, True)
