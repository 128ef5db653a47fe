"""`model.init`: released backbones (DINOv2 hub, iBOT/DINO checkpoints, timm files, our exports and
checkpoints) loaded into the student and teacher of a fresh run (`pretrain.init_weights`).

The files are written here from tiny timm models in each format's key layout (nothing is
downloaded); a loaded backbone computes timm's features of the same model (float64, 1e-5).
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import equirecon.cli as cli
from equirecon.config import load_config
from equirecon.errors import CheckpointError, ConfigError, MissingPathError
from pretrain.init_weights import load_backbone_init
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone
from tests.conftest import REPO, TINY_OVERRIDES

WIDTH = 64  # one 64-dim head: DINO/iBOT/DINOv2's head width
GIANT_WIDTH = 96  # ViT-g's SwiGLU hidden width int(D * 16/3) must be even
IMG = 42  # a 3x3 grid of 14 px patches


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (LayerScale gains too, so each block changes the features)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def timm_dinov2(registers: int = 0, giant: bool = False, seed: int = 0) -> torch.nn.Module:
    """A tiny timm DINOv2 ViT (LayerScale; registers; ViT-g's SwiGLU MLP), random weights."""
    name = "vit_giant_patch14_dinov2" if giant else "vit_small_patch14_dinov2"
    if registers:
        name = name.replace("_dinov2", f"_reg{registers}_dinov2")
    model = timm.create_model(
        name,
        pretrained=False,
        img_size=IMG,
        embed_dim=GIANT_WIDTH if giant else WIDTH,
        depth=2,
        num_heads=1,
        num_classes=0,
        dynamic_img_size=True,
    )
    return _randomize(model, seed)


def hub_layout(
    model: torch.nn.Module, swiglu: bool = False, seed: int = 1
) -> dict[str, torch.Tensor]:
    """`model`'s weights in the DINOv2 hub layout (`dinov2_vit*14[_reg4]_pretrain.pth`): the
    inverse of timm's conversion. With registers DINOv2 adds pos_embed[:, 0] to the CLS token,
    which timm folds into `cls_token`; a random split of the two keeps the same sum."""
    gen, width = torch.Generator().manual_seed(seed), model.embed_dim
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if "reg_token" in state:
        cls_pos = torch.randn(1, 1, width, generator=gen)
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    if swiglu:  # ViT-g: DINOv2's fused SwiGLU names its layers w12, w3
        state = {
            k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v
            for k, v in state.items()
        }
    state["mask_token"] = torch.randn(1, width, generator=gen)
    return state


def our_backbone(registers: int = 0, giant: bool = False, img: int = IMG, **kw) -> Backbone:  # noqa: ANN003
    args = dict(
        img_size=img,
        patch_size=14,
        embed_dim=GIANT_WIDTH if giant else WIDTH,
        depth=2,
        num_heads=1,
        num_registers=registers,
        layerscale=1e-5,
        attention="math",
    )
    args.update(kw)
    return build_backbone("vit_giant_patch14" if giant else "vit_small_patch16", **args)


def assert_same_features(ours: Backbone, ref: torch.nn.Module, img: int = IMG) -> None:
    images = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(3))
    ours, ref = ours.double().eval(), ref.double().eval()
    with torch.no_grad():
        a, b = ours(images.double()), ref.forward_features(images.double())
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def state_of(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items()}


# ---- DINOv2 hub files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registers", "giant"), [(0, False), (4, False), (0, True)], ids=["plain", "reg4", "g-swiglu"]
)
def test_dinov2_hub_file_gives_timms_features(registers: int, giant: bool, tmp_path: Path) -> None:
    ref = timm_dinov2(registers, giant)
    hub = hub_layout(ref, swiglu=giant)
    torch.save(hub, tmp_path / "dinov2_pretrain.pth")
    ours = our_backbone(registers, giant)
    source = load_backbone_init(ours, tmp_path / "dinov2_pretrain.pth")
    assert source.format == "dinov2" and source.kept_random == ()
    assert (
        source.sha256 == hashlib.sha256((tmp_path / "dinov2_pretrain.pth").read_bytes()).hexdigest()
    )
    torch.testing.assert_close(ours.mask_token.flatten(), hub["mask_token"].flatten())
    assert_same_features(ours, ref)


@pytest.mark.parametrize("registers", [0, 4])
def test_position_embedding_is_resampled_to_the_models_grid(registers: int, tmp_path: Path) -> None:
    """A 3x3-grid file in a 4x4-grid model: timm's resampling, as timm's own model computes it
    at that size (dynamic_img_size)."""
    ref = timm_dinov2(registers)
    torch.save(hub_layout(ref), tmp_path / "w.pth")
    ours = our_backbone(registers, img=56)
    load_backbone_init(ours, tmp_path / "w.pth")
    assert_same_features(ours, ref, img=56)


# ---- iBOT / DINO training checkpoints --------------------------------------------------------


def _timm_plain(seed: int, num_classes: int = 0) -> torch.nn.Module:
    """A tiny ViT in DINO/iBOT's key layout (timm's, without LayerScale)."""
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=WIDTH,
        depth=2,
        num_heads=1,
        num_classes=num_classes,
    )
    return _randomize(model, seed)


def _plain_backbone() -> Backbone:
    return build_backbone(
        "vit_small_patch16", img_size=32, patch_size=8, embed_dim=WIDTH, depth=2, num_heads=1,
        layerscale=0, attention="math",
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["ibot", "dinov2_train"])
def test_ibot_checkpoint_teacher_prefixes_stripped_heads_dropped(
    layout: str, tmp_path: Path
) -> None:
    teacher, student = _timm_plain(seed=0), _timm_plain(seed=1)
    masked_embed = torch.randn(1, WIDTH)
    if layout == "ibot":  # iBOT main_ibot.py: DDP student, plain teacher, argparse args
        ckpt = {
            "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            "epoch": 3,
            "args": argparse.Namespace(arch="vit_small", patch_size=8),
        }
        ckpt["teacher"]["backbone.masked_embed"] = masked_embed
        ckpt["student"]["module.head.last_layer.weight_g"] = torch.ones(10, 1)
        ckpt["teacher"]["head.last_layer.weight_g"] = torch.ones(10, 1)
        ckpt["teacher"]["head.mlp.0.weight"] = torch.ones(16, WIDTH)
    else:  # DINOv2's teacher_checkpoint.pth: chunked blocks `blocks.C.I.`, dino/ibot heads
        chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): v
                   for k, v in teacher.state_dict().items()}  # fmt: skip
        ckpt = {"teacher": {f"backbone.{k}": v for k, v in chunked.items()}}
        ckpt["teacher"]["backbone.mask_token"] = masked_embed
        ckpt["teacher"]["dino_head.mlp.0.weight"] = torch.ones(16, WIDTH)
        ckpt["teacher"]["ibot_head.mlp.0.weight"] = torch.ones(16, WIDTH)
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    ours = _plain_backbone()
    source = load_backbone_init(ours, tmp_path / "checkpoint.pth")
    assert (source.format, source.entry) == ("ibot", "teacher")
    torch.testing.assert_close(ours.mask_token.flatten(), masked_embed.flatten())
    assert_same_features(ours, teacher, img=32)


# ---- timm files ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classifier", "reg4_dinov2"])
def test_timm_safetensors_folder(kind: str, tmp_path: Path) -> None:
    """A timm hub folder's model.safetensors: a classifier's head is dropped; a register ViT
    (timm's no_embed_class layout) gets zero positions for CLS and registers."""
    if kind == "classifier":
        ref, ours = _timm_plain(seed=0, num_classes=10), _plain_backbone()
    else:
        ref, ours = timm_dinov2(registers=4), our_backbone(registers=4)
    (tmp_path / "hub").mkdir()
    save_file(ref.state_dict(), str(tmp_path / "hub" / "model.safetensors"))
    source = load_backbone_init(ours, tmp_path / "hub")
    assert source.format == "timm" and source.kept_random == ("mask_token",)
    assert source.path == tmp_path / "hub" / "model.safetensors"
    ref.reset_classifier(0)
    assert_same_features(ours, ref, img=ours.vit.patch_embed.img_size[0])


# ---- DINOv3: recognized and refused (RoPE) ---------------------------------------------------

DINOV3_REFUSAL = (
    "DINOv3 (as timm's other RoPE ViTs) encodes positions with rotary position embeddings (RoPE), "
    "which equirecon's backbone (timm's VisionTransformer with absolute position embeddings, "
    "every model.arch) does not build, so its weights cannot be loaded faithfully; start from a "
    "DINOv2 (with or without registers), iBOT/DINO, timm ViT or equirecon backbone instead"
)


def dinov3_hub_state(depth: int = 2, registers: int = 4) -> dict[str, torch.Tensor]:
    """A tiny state dict in the DINOv3 hub layout (`dinov3_vit*16_pretrain_*.pth`, the keys of
    facebookresearch/dinov3's DinoVisionTransformer): RoPE periods, storage tokens (registers),
    `qkv.bias_mask`, LayerScale `ls{1,2}.gamma`, a (1, D) mask token, no `pos_embed`."""
    gen, d = torch.Generator().manual_seed(0), WIDTH

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    state = {
        "cls_token": rand(1, 1, d),
        "storage_tokens": rand(1, registers, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": rand(d, 3, 16, 16),
        "patch_embed.proj.bias": rand(d),
        "rope_embed.periods": rand(d // 4),  # head dim // 4 (one 64-dim head)
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": rand(d), b + "norm1.bias": rand(d),
            b + "attn.qkv.weight": rand(3 * d, d), b + "attn.qkv.bias": rand(3 * d),
            b + "attn.qkv.bias_mask": torch.ones(3 * d),
            b + "attn.proj.weight": rand(d, d), b + "attn.proj.bias": rand(d),
            b + "ls1.gamma": rand(d),
            b + "norm2.weight": rand(d), b + "norm2.bias": rand(d),
            b + "mlp.fc1.weight": rand(4 * d, d), b + "mlp.fc1.bias": rand(4 * d),
            b + "mlp.fc2.weight": rand(d, 4 * d), b + "mlp.fc2.bias": rand(d),
            b + "ls2.gamma": rand(d),
        }  # fmt: skip
    state |= {"norm.weight": rand(d), "norm.bias": rand(d)}
    return state


def _assert_refused(ours: Backbone, path: Path, fmt: str, evidence: str) -> None:
    before = state_of(ours)
    with pytest.raises(ConfigError) as info:
        load_backbone_init(ours, path, fmt)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2, message
    assert message == f"model.init={path}: a DINOv3 backbone ({evidence}): {DINOV3_REFUSAL}"
    assert all(torch.equal(v, before[k]) for k, v in state_of(ours).items())


@pytest.mark.parametrize("fmt", ["dinov3", "auto", "dinov2"])
def test_dinov3_hub_file_is_refused_with_its_reason(fmt: str, tmp_path: Path) -> None:
    """The DINOv3 hub layout (RoPE) is one line naming RoPE, not a key mismatch: as
    `dinov3`, found by `auto`, and read as DINOv2 (which its mask token would otherwise claim)."""
    torch.save(dinov3_hub_state(), tmp_path / "dinov3.pth")
    ours = our_backbone(registers=4, patch_size=16, img=48)
    _assert_refused(ours, tmp_path / "dinov3.pth", fmt, "rope_embed.periods in the file")
    # a training checkpoint's teacher (`backbone.` prefixes): found by auto, refused as ibot too
    teacher = {f"backbone.{k}": v for k, v in dinov3_hub_state().items()}
    torch.save({"teacher": teacher}, tmp_path / "teacher.pth")
    evidence = "rope_embed.periods in the file"
    _assert_refused(ours, tmp_path / "teacher.pth", "ibot" if fmt == "dinov2" else fmt, evidence)


@pytest.mark.parametrize("fmt", ["dinov3", "auto", "timm"])
def test_timm_dinov3_safetensors_is_refused(fmt: str, tmp_path: Path) -> None:
    """timm's own DINOv3 (an Eva: RoPE, `reg_token`, `gamma_1`, no `pos_embed`), a tiny one
    instantiated here: its hub folder's model.safetensors is refused the same way."""
    ref = timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, img_size=48, embed_dim=WIDTH, depth=2,
        num_heads=1, num_classes=0,
    )  # fmt: skip
    assert "pos_embed" not in ref.state_dict()
    (tmp_path / "hub").mkdir()
    save_file(ref.state_dict(), str(tmp_path / "hub" / "model.safetensors"))
    evidence = "blocks and no pos_embed in the file, as timm's vit_*_dinov3"
    _assert_refused(
        our_backbone(registers=4, patch_size=16, img=48), tmp_path / "hub", fmt, evidence
    )


def test_dinov3_format_refuses_another_file(tmp_path: Path) -> None:
    torch.save(hub_layout(timm_dinov2()), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"not a DINOv3 checkpoint .*check model.init_format"):
        load_backbone_init(our_backbone(), tmp_path / "w.pth", "dinov3")


# ---- our own exports and checkpoints, and the trainer ----------------------------------------

RUN = [*TINY_OVERRIDES, "data.backend=synthetic", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-step tiny run (dinov2 + recon) and the export of its checkpoint."""
    from pretrain.export import export_checkpoint
    from pretrain.restore import resolve_checkpoint
    from pretrain.train import Trainer

    root = tmp_path_factory.mktemp("init_src")
    cfg = load_config(None, [*RUN, "train.max_steps=1", f"run.dir={root / 'run'}"])
    Trainer(cfg).fit()
    export_checkpoint(resolve_checkpoint(root / "run" / "checkpoints" / "latest"), root / "export")
    return root / "run", root / "export"


def _tiny_backbone() -> Backbone:
    cfg = load_config(None, RUN)
    return build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))


def test_export_and_checkpoint_round_trip(run_and_export: tuple[Path, Path]) -> None:
    from pretrain.restore import load_teacher_backbone, resolve_checkpoint

    run, export = run_and_export
    teacher, _ = load_teacher_backbone(resolve_checkpoint(run / "checkpoints" / "latest"))
    from_export, from_run = _tiny_backbone(), _tiny_backbone()
    source = load_backbone_init(from_export, export)
    assert source.format == "equirecon" and source.kept_random == ("mask_token",)
    source = load_backbone_init(from_run, run)  # the run directory: its latest checkpoint
    assert (source.format, source.entry, source.kept_random) == ("equirecon", "teacher", ())
    assert source.path.name == "manifest.json"
    for loaded in (from_export, from_run):
        for key, value in teacher.vit.state_dict().items():
            torch.testing.assert_close(loaded.vit.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(from_run.mask_token, teacher.mask_token, rtol=0, atol=0)


def test_fresh_run_loads_student_and_teacher_resume_does_not_reload(
    run_and_export: tuple[Path, Path], tmp_path: Path
) -> None:
    from pretrain.train import Trainer

    _, export = run_and_export
    weights = tmp_path / "export"
    weights.mkdir()
    for f in export.iterdir():
        (weights / f.name).write_bytes(f.read_bytes())
    file = weights / "model.safetensors"
    expected = load_file(str(file))
    cfg = load_config(
        None,
        [*RUN, "train.max_steps=2", "checkpoint.every_steps=1", f"run.dir={tmp_path / 'run'}",
         f"model.init={weights}"],
    )  # fmt: skip
    first = Trainer(cfg)
    teacher = first.method.teacher.encoder.backbone
    for backbone in (first.method.backbone, teacher):
        for key, value in expected.items():
            torch.testing.assert_close(backbone.vit.state_dict()[key], value, rtol=0, atol=0)
    params = first.resolved_params()
    assert params["resolved.init_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert (
        params["resolved.init_file"] == str(file) and params["resolved.init_format"] == "equirecon"
    )
    first.fit(stop_after=1)
    file.write_bytes(b"not a safetensors file")  # a resume must not read it
    second = Trainer(cfg)
    assert second.init_source is None and "resolved.init_sha256" not in second.resolved_params()
    second.fit()
    assert second.step == 2
    fresh = load_config(None, [*RUN, f"model.init={weights}", f"run.dir={tmp_path / 'fresh'}"])
    with pytest.raises(CheckpointError, match=re.escape(str(file))):  # a fresh run reads it
        Trainer(fresh)


# ---- refusals: one line naming key, shapes and the setting; nothing loaded -------------------

MISMATCHES = [
    ({"embed_dim": 128, "num_heads": 2}, "patch_embed.proj.weight",
     "(64, 3, 14, 14) in the file", "the model expects (128, 3, 14, 14)", "model.embed_dim=64"),
    ({"patch_size": 7}, "patch_embed.proj.weight", "(64, 3, 14, 14) in the file",
     "the model expects (64, 3, 7, 7)", "model.patch_size=14"),
    ({"depth": 3}, "blocks.2.norm1.weight", "missing from the file", "the model expects (64,)",
     "model.depth=2"),
    ({"depth": 1}, "blocks.1.norm1.weight", "(64,) in the file", "the model has no such key",
     "model.depth=2"),
    ({"num_registers": 2}, "reg_token", "missing from the file", "the model expects (1, 2, 64)",
     "model.num_registers=0"),
    ({"layerscale": 0}, "blocks.0.ls1.gamma", "(64,) in the file", "the model has no such key",
     "model.layerscale=1e-5"),
    ({"num_heads": 2}, "blocks.0.attn.qkv.weight", "", "", "model.num_heads=1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model_kw", "key", "in_file", "expected", "fix"),
    MISMATCHES,
    ids=["width", "patch", "deeper", "shallower", "registers", "layerscale", "heads"],
)
def test_mismatch_is_one_line_and_nothing_is_loaded(
    model_kw: dict, key: str, in_file: str, expected: str, fix: str, tmp_path: Path
) -> None:
    torch.save(hub_layout(timm_dinov2()), tmp_path / "w.pth")
    ours = our_backbone(**model_kw)
    before = state_of(ours)
    with pytest.raises(ConfigError) as info:
        load_backbone_init(ours, tmp_path / "w.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"model.init={tmp_path / 'w.pth'}: ")
    assert key in message and fix in message, message
    if in_file:
        assert f"{key} is {in_file}, {expected}: set {fix}" in message, message
    for k, v in state_of(ours).items():
        assert torch.equal(v, before[k]), f"{k} was changed by a refused load"


def test_registers_in_the_file_not_in_the_model(tmp_path: Path) -> None:
    torch.save(hub_layout(timm_dinov2(registers=4)), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"register_tokens is \(1, 4, 64\) in the file, the model "
                       r"has no such key: set model.num_registers=4"):  # fmt: skip
        load_backbone_init(our_backbone(registers=0), tmp_path / "w.pth")


def test_missing_key_is_refused(tmp_path: Path) -> None:
    hub = hub_layout(timm_dinov2())
    del hub["blocks.1.mlp.fc2.bias"]
    torch.save(hub, tmp_path / "w.pth")
    ours = our_backbone()
    before = state_of(ours)
    with pytest.raises(ConfigError, match=r"blocks\.1\.mlp\.fc2\.bias is missing from the file, "
                       r"the model expects \(64,\)"):  # fmt: skip
        load_backbone_init(ours, tmp_path / "w.pth")
    assert all(torch.equal(v, before[k]) for k, v in state_of(ours).items())
    del hub["mask_token"]  # a DINOv2 hub file has its mask token
    hub["blocks.1.mlp.fc2.bias"] = torch.zeros(WIDTH)
    torch.save(hub, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="mask_token is missing from the file"):
        load_backbone_init(ours, tmp_path / "w.pth", "dinov2")


def test_unexpected_key_is_refused(tmp_path: Path) -> None:
    hub = hub_layout(timm_dinov2())
    hub["blocks.0.attn.q_norm.weight"] = torch.ones(WIDTH)
    torch.save(hub, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.q_norm\.weight is \(64,\) in the "
                       r"file, the model has no such key"):  # fmt: skip
        load_backbone_init(our_backbone(), tmp_path / "w.pth")


def test_missing_and_damaged_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match=re.escape(str(tmp_path / "none.pth"))):
        load_backbone_init(our_backbone(), tmp_path / "none.pth")
    torch.save(hub_layout(timm_dinov2()), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_backbone_init(our_backbone(), tmp_path / "w.pth")
    assert str(tmp_path / "w.pth") in str(info.value) and "\n" not in str(info.value)


def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("EQUIRECON_DEBUG", raising=False)
    torch.save(hub_layout(timm_dinov2()), tmp_path / "w.pth")
    argv = ["pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"), *RUN,
            f"run.dir={tmp_path / 'run'}", f"model.init={tmp_path / 'w.pth'}"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("equirecon: error:")]
    assert len(lines) == 1 and "model.embed_dim=64" in lines[0] and "Traceback" not in err, err
