"""Export a checkpoint's backbone as safetensors + config, loadable by plain timm.

`OUT/model.safetensors` holds the timm VisionTransformer state dict of the teacher backbone
(the student's for teacher-less methods); `OUT/config.json` holds the timm model name and the
kwargs to build it, plus where it came from. Loading needs no equirecon code:

    cfg = json.load(open(OUT / "config.json"))
    model = timm.create_model(cfg["architecture"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(OUT / "model.safetensors")),
                              **cfg["model_args"])
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from equirecon.rundir import checkpoint_step
from equirecon.storage import guard_write
from pretrain.models.backbone import ARCHS, Backbone, set_attention_backend
from pretrain.restore import load_teacher_backbone

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def timm_model_args(backbone: Backbone, img_size: int) -> dict[str, Any]:
    """kwargs that make `timm.create_model(name, **kwargs)` build this backbone's exact shape."""
    vit = backbone.vit
    reg = getattr(vit, "num_reg_tokens", 0)
    args: dict[str, Any] = {
        "img_size": img_size,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": backbone.num_heads,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    if reg:
        args["reg_tokens"] = reg
    # LayerScale (`model.layerscale`, or the arch's own): timm needs to know that the blocks have
    # the gains (their trained values are in the weights); None removes an arch's default ones.
    gamma = getattr(getattr(vit.blocks[0], "ls1", None), "gamma", None)
    args["init_values"] = 1e-5 if gamma is not None else None
    return args


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `out/model.safetensors` and `out/config.json` for the checkpoint's backbone.

    Raises:
        StorageError: the disk is full, read-only or not writable; the partial `.OUT.tmp`
            folder is removed and an existing `out` is left as it was.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    backbone, cfg = load_teacher_backbone(checkpoint)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.vit.state_dict().items()}
    meta = {
        "architecture": ARCHS[cfg.model.arch].timm_name,
        "model_args": timm_model_args(backbone, cfg.data.global_size),
        "num_prefix_tokens": backbone.num_prefix_tokens,
        "equirecon": {
            "arch": cfg.model.arch,
            "method": cfg.method.name,
            "recon_enabled": cfg.recon.enabled,
            "recon_transform": cfg.recon.transform,
            "checkpoint": str(checkpoint.resolve()),
            "step": checkpoint_step(checkpoint),
            "weights": "teacher backbone (student for teacher-less methods), before the split head",
        },
    }
    tmp = out.with_name(f".{out.name}.tmp")
    needed = sum(v.numel() * v.element_size() for v in state.values()) + (1 << 16)
    with guard_write(f"the export of {checkpoint.name}", tmp, needed=needed, partial=[tmp]):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out


def load_exported_backbone(export_dir: str | Path) -> Backbone:
    """Build the exported backbone with timm from its files alone (no training config)."""
    import timm

    export_dir = Path(export_dir)
    cfg_path = export_dir / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{export_dir} has no {CONFIG}: not an `equirecon export` directory"
        )
    meta = json.loads(cfg_path.read_text())
    vit = timm.create_model(
        meta["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(export_dir / WEIGHTS)},
        **meta["model_args"],
    )
    backbone = Backbone(vit)
    # The kernels training and checkpoint evaluation use (our attention dispatch), so an
    # export evaluates to the same numbers as its checkpoint; the files stay plain timm.
    set_attention_backend(backbone, "sdpa")
    return backbone.eval()
