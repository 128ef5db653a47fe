"""Continued pretraining that does not collapse (issue #26): the student backbone frozen for
`train.freeze_backbone_steps` (bit-identical, the EMA teacher too) while the fresh heads learn,
then trained at `train.backbone_lr_scale` × the lr with a warm-up from the unfreeze step
(`pretrain.schedules`); exact resume across the unfreeze; the config checks; the presets in
`configs/continue/`.

Tiny ViTs on the synthetic reader (each batch a pure function of the step, as the demo shards'),
loaded from a DINOv2-layout file written here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from equirecon.config import ConfigError, flat_dict, load_config
from equirecon.resume_config import config_changes
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone
from pretrain.param_groups import BACKBONE_PREFIX, GroupRule, param_groups
from pretrain.schedules import build_schedules, cosine
from tests.conftest import REPO, TINY_OVERRIDES
from tests.pretrain.released import save_hub_file

RUN = [*TINY_OVERRIDES, "data.backend=synthetic", "tracking.enabled=false"]
FREEZE, WARMUP, SCALE = 3, 2, 0.5
# train.backbone_* of these tests; heads at the full lr from step 0 (no warm-up)
RECIPE = [
    f"train.freeze_backbone_steps={FREEZE}",
    f"train.backbone_warmup_steps={WARMUP}",
    f"train.backbone_lr_scale={SCALE}",
    "train.warmup_steps=0",
    "train.freeze_last_layer_steps=0",
]
# ramp(s) of the module doc for F = 3, W = 2: 0 while frozen, then 1/2, 1
RAMP = [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def _cfg(*extra: str):  # noqa: ANN202
    return load_config(None, [*RUN, *extra])


@pytest.fixture(scope="module")
def init_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A released backbone of the tiny model (DINOv2 hub layout: timm keys + mask token)."""
    path = tmp_path_factory.mktemp("released") / "dinov2_tiny_pretrain.pth"
    return save_hub_file(_cfg(), path, seed=7)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


def _teacher_backbone(trainer) -> Backbone:  # noqa: ANN001
    return trainer.method.teacher.encoder.backbone


# ---- the schedule ------------------------------------------------------------------------------


def test_backbone_lr_is_scale_times_schedule_times_ramp() -> None:
    """Every group's lr at every step, against the documented formula written out here."""
    from pretrain.methods import build_method
    from pretrain.schedules import apply_schedules

    total = 8
    cfg = _cfg(*RECIPE, f"train.max_steps={total}", "train.warmup_steps=2")
    schedules = build_schedules(cfg, world_size=1)
    groups = param_groups(build_method(cfg).student, GroupRule.from_config(cfg))
    assert {g["backbone"] for g in groups} == {True, False}
    for step in range(total):
        lr = cosine(step, total, schedules.lr, cfg.train.min_lr, 2)  # the run's schedule
        values = schedules.at(step)
        assert values["lr"] == lr
        assert values["backbone_lr"] == pytest.approx(SCALE * lr * RAMP[step], rel=1e-12)
        apply_schedules(groups, values)
        for g in groups:
            base = SCALE * lr * RAMP[step] if g["backbone"] else lr
            assert g["lr"] == pytest.approx(base * g["lr_mult"], rel=1e-12, abs=0), step
        assert all(g["lr"] == 0.0 for g in groups if g["backbone"]) == (step < FREEZE)


def test_groups_marked_only_with_a_backbone_schedule() -> None:
    """Defaults: the groups (and so the checkpoints' optimizer state) of before, no `backbone`
    key. With a backbone schedule: each backbone parameter (mask token too) in a `backbone`
    group, nothing else; layer-wise multipliers unchanged."""
    from pretrain.methods import build_method

    plain_cfg = _cfg()
    plain = param_groups(build_method(plain_cfg).student, GroupRule.from_config(plain_cfg))
    assert not any("backbone" in g for g in plain)
    values = build_schedules(plain_cfg, 1).at(5)
    assert values["backbone_lr"] == values["lr"]
    for extra in RECIPE[:3]:
        cfg = _cfg(extra)
        method = build_method(cfg)
        groups = param_groups(method.student, GroupRule.from_config(cfg))
        names = {id(p): n for n, p in method.student.named_parameters()}
        marked = {names[id(p)] for g in groups if g["backbone"] for p in g["params"]}
        assert marked == {n for n in names.values() if n.startswith(BACKBONE_PREFIX)}, extra
        assert "encoder.backbone.mask_token" in marked
        before = sorted((g["lr_mult"], g["wd_mult"]) for g in plain)
        assert sorted({(g["lr_mult"], g["wd_mult"]) for g in groups}) == sorted(set(before))


# ---- training: frozen, then moving ------------------------------------------------------------


def test_backbone_frozen_bit_identical_then_moves(init_file: Path, tmp_path: Path) -> None:
    """The teacher starts as a copy of the loaded backbone; for steps 0..F-1 student and teacher
    backbones stay bit-identical to the file (no weight-decay shrink, no EMA drift) while the
    heads, split head and decoders move; from step F both backbones move."""
    from pretrain.init_weights import load_backbone_init
    from pretrain.train import Trainer

    cfg = _cfg(*RECIPE, "train.max_steps=8", f"run.dir={tmp_path}", f"model.init={init_file}")
    trainer = Trainer(cfg)
    student, teacher = trainer.method.backbone, _teacher_backbone(trainer)
    loaded = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    load_backbone_init(loaded, init_file)
    released = _state(loaded)
    assert _bitwise_equal(_state(student), released)
    assert _bitwise_equal(_state(teacher), released)  # the teacher: a copy of the loaded one
    s = trainer.method.student
    heads = {
        "dino_head": s.head.mlp[0].weight,
        "prototypes": s.head.prototypes,
        "split_head": next(s.encoder.split_head.parameters()),
        "decoder": next(s.decoders.parameters()),
    }
    it = iter(trainer.loader)
    for step in range(FREEZE + 1):
        before = {k: p.detach().clone() for k, p in heads.items()}
        values = trainer.schedules.at(step)
        trainer.train_step(next(it), values)
        assert trainer.last_skip is None and values["weight_decay"] > 0
        trainer.step += 1
        assert all(not torch.equal(before[k], p) for k, p in heads.items()), step
        frozen = step < FREEZE
        assert _bitwise_equal(_state(student), released) == frozen, step
        assert _bitwise_equal(_state(teacher), released) == frozen, step
        lrs = [g["lr"] for g in trainer.optimizer.param_groups if g["backbone"]]
        assert (max(lrs) == 0.0) == frozen and lrs, step
    # the teacher follows the student by its EMA, not by a copy
    assert not _bitwise_equal(_state(teacher), _state(student))


# ---- exact resume across the unfreeze ---------------------------------------------------------


def _metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("train/loss_total", "train/lr", "train/backbone_lr", "train/grad_norm")
    return {r["step"]: {k: r[k] for k in keys} for r in rows}


def _run(run_dir: Path, init_file: Path, stops: tuple[int, ...] = ()):  # noqa: ANN202
    from pretrain.train import Trainer

    cfg = _cfg(
        *RECIPE,
        "train.max_steps=6",
        "checkpoint.every_steps=100",
        f"run.dir={run_dir}",
        f"model.init={init_file}",
    )
    for stop in stops:
        Trainer(cfg).fit(stop_after=stop)
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


def test_resume_inside_and_after_the_frozen_window_is_exact(
    init_file: Path, tmp_path: Path
) -> None:
    """Stopped at step 2 (frozen) and at 4 (inside the backbone's warm-up), resumed by new
    Trainers: the same losses, lrs and gradient norms bitwise, and the same final weights and
    optimizer state as the uninterrupted run."""
    ref = _run(tmp_path / "ref", init_file)
    cut = _run(tmp_path / "cut", init_file, stops=(2, 4))
    assert cut.init_source is None  # resumed: the file is not read again
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "ref")
    backbone_lrs = [_metrics(tmp_path / "ref")[s]["train/backbone_lr"] for s in range(1, 7)]
    ramp = RAMP[:6]
    assert [lr == 0.0 for lr in backbone_lrs] == [r == 0.0 for r in ramp]
    assert _bitwise_equal(_state(cut.method), _state(ref.method))
    ref_opt, cut_opt = ref.optimizer.state_dict(), cut.optimizer.state_dict()
    for i, state in ref_opt["state"].items():
        assert _bitwise_equal(state, cut_opt["state"][i]), i


# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.freeze_backbone_steps=-1"], "train.freeze_backbone_steps"),
        (["train.freeze_backbone_steps=10", "train.max_steps=10"], "train.freeze_backbone_steps"),
        (["train.freeze_backbone_steps=1.5"], "train.freeze_backbone_steps"),
        (["train.backbone_lr_scale=0"], "train.backbone_lr_scale"),
        (["train.backbone_lr_scale=2"], "train.backbone_lr_scale"),
        (["train.backbone_warmup_steps=-5"], "train.backbone_warmup_steps"),
        (
            [
                "train.freeze_backbone_steps=5",
                "train.backbone_warmup_steps=6",
                "train.max_steps=10",
            ],
            "train.backbone_warmup_steps",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(*overrides)
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message, message


def test_limits_and_resume_refusal() -> None:
    """The edges are accepted; a resume may not change the backbone's schedule (it changes the
    optimizer's groups and what the checkpoint's steps were trained with)."""
    edge = _cfg(
        "train.max_steps=10",
        "train.freeze_backbone_steps=5",
        "train.backbone_warmup_steps=5",
        "train.backbone_lr_scale=1",
    )
    assert (edge.train.freeze_backbone_steps, edge.train.backbone_warmup_steps) == (5, 5)
    saved = flat_dict(_cfg())
    refused, _ = config_changes(saved, _cfg("train.freeze_backbone_steps=3"))
    assert "train.freeze_backbone_steps" in refused


# ---- the presets ------------------------------------------------------------------------------

PRESETS = sorted((REPO / "configs" / "continue").glob("*.yaml"))


def test_presets_exist_and_describe_dinov2_backbones() -> None:
    assert [p.name for p in PRESETS] == ["dinov2_vitl14_se2.yaml", "dinov2_vits14_se2.yaml"]
    for path in PRESETS:
        cfg = load_config(path)
        tr = cfg.train
        assert cfg.method.name == "dinov2" and cfg.recon.enabled and cfg.recon.transform == "se2"
        assert cfg.model.init.endswith("_pretrain.pth") and cfg.model.init_format == "dinov2"
        assert (cfg.model.layerscale, cfg.model.num_registers) == (1e-5, 0)
        assert cfg.data.global_size % 14 == 0 and cfg.data.local_size % 14 == 0
        assert 0 < tr.freeze_backbone_steps and 0.1 <= tr.backbone_lr_scale <= 0.2
        assert 0 < tr.backbone_warmup_steps and tr.layerwise_decay < 1
        assert tr.warmup_steps <= tr.freeze_backbone_steps  # heads warm up while it is frozen
        assert tr.freeze_last_layer_steps < tr.freeze_backbone_steps
    small = load_config(REPO / "configs" / "continue" / "dinov2_vits14_se2.yaml")
    assert (small.model.arch, small.model.patch_size) == ("vit_small_patch16", 14)
    large = load_config(REPO / "configs" / "continue" / "dinov2_vitl14_se2.yaml")
    assert (large.model.arch, large.model.patch_size) == ("vit_large_patch14", None)


def test_vits14_preset_loads_a_dinov2_hub_file(tmp_path: Path) -> None:
    """The ViT-S/14 preset's model.* fit DINOv2's hub file of ViT-S/14 (timm's model of it,
    random weights, 518 px position embedding resampled to the preset's 224)."""
    import timm

    from pretrain.init_weights import load_backbone_init

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    hub = {**ref.state_dict(), "mask_token": torch.randn(1, ref.embed_dim)}
    torch.save(hub, tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = load_config(REPO / "configs" / "continue" / "dinov2_vits14_se2.yaml")
    ours = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    source = load_backbone_init(ours, tmp_path / "dinov2_vits14_pretrain.pth")
    assert source.format == "dinov2" and source.kept_random == ()
    grid = cfg.data.global_size // 14
    assert ours.vit.pos_embed.shape[1] == 1 + grid * grid
    assert math.isclose(float(ours.vit.blocks[0].ls1.gamma[0]), float(ref.blocks[0].ls1.gamma[0]))
