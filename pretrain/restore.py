"""Reading checkpoints back: resolve `latest`, the config saved with a checkpoint, and the
teacher's backbone (and split head) loaded from it.

Used by evaluation (`evals.run`), export (`pretrain.export`) and the command line; writing
checkpoints is `pretrain.checkpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from equirecon.config import (
    Config,
    EvalConfig,
    flatten,
    get_value,
    load_config,
    rename_moved_keys,
    set_value,
)
from equirecon.errors import CheckpointError, MissingPathError
from pretrain.checkpoint import Checkpointer, latest_checkpoint, select_checkpoint
from pretrain.checkpoint_integrity import verify_checkpoint
from pretrain.models.backbone import Backbone, backbone_kwargs, build_backbone
from pretrain.models.heads import SplitHead

log = logging.getLogger("equirecon.eval")  # the logger these messages have always gone to

# eval.* values that were the defaults before the five task families existed (keys by today's
# names). A checkpoint config written then (its eval section has no `seed` key) gets today's
# default where it still holds the old one, so old runs are evaluated with today's protocol.
_LEGACY_EVAL_DEFAULTS: dict[str, Any] = {
    "eval.tasks": "equivariance,knn",
    "eval.equivariance.transforms": "rotation",
    "eval.equivariance.train_images": 2000,
    "eval.equivariance.test_images": 800,
    "eval.equivariance.epochs": 30,
}


def upgrade_legacy_eval(raw_eval: dict[str, Any], eval_cfg: EvalConfig) -> list[str]:
    """Replace pre-harness eval defaults in `eval_cfg` (see `_LEGACY_EVAL_DEFAULTS`); returns the
    keys changed (below `eval.`). `raw_eval` is the eval section as written in the config file
    (keys by their old names or today's)."""
    if "seed" in raw_eval:
        return []
    raw = rename_moved_keys(flatten({"eval": raw_eval}), None)
    today, upgraded = Config(), Config(eval=eval_cfg)
    changed = []
    for key, old in _LEGACY_EVAL_DEFAULTS.items():
        if raw.get(key) == old and get_value(today, key) != old:
            set_value(upgraded, key, get_value(today, key))
            changed.append(key.removeprefix("eval."))
    return changed


def checkpoint_config(ckpt: Path) -> Config:
    """The resolved config saved with a checkpoint (or its run directory)."""
    for candidate in (ckpt / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if candidate.is_file():
            cfg = load_config(candidate)
            raw = (yaml.safe_load(candidate.read_text()) or {}).get("eval") or {}
            changed = upgrade_legacy_eval(raw, cfg.eval)
            if changed:
                log.info(
                    "%s predates the current eval protocol: using today's defaults for eval.%s",
                    candidate,
                    ", eval.".join(changed),
                )
            return cfg
    raise MissingPathError(f"no config.yaml in {ckpt} or its run directory {ckpt.parent.parent}")


def load_teacher_backbone(ckpt: str | Path, cfg: Config | None = None) -> tuple[Backbone, Config]:
    """Build the backbone of the checkpoint's config and load the teacher's weights into it."""
    backbone, _, cfg = load_teacher_encoder(ckpt, cfg, split_head=False)
    return backbone, cfg


def load_teacher_encoder(
    ckpt: str | Path, cfg: Config | None = None, split_head: bool = True
) -> tuple[Backbone, SplitHead | None, Config]:
    """The checkpoint's representation: backbone and (recon on, `split_head`) split head.

    The teacher's where the method has an EMA teacher (DINOv2, iBOT), else the (shared) student
    encoder's (VICReg, SimCLR) (DESIGN §1.5). The split head is None when recon is off.
    """
    ckpt = Path(ckpt)
    if not (ckpt / ".metadata").is_file():
        raise MissingPathError(f"{ckpt} is not a complete DCP checkpoint (no .metadata)")
    cfg = cfg or checkpoint_config(ckpt)
    kwargs = backbone_kwargs(cfg.model, cfg.data.global_size)
    kwargs["drop_path"] = 0.0
    backbone = build_backbone(**kwargs)
    head = (
        SplitHead(backbone.embed_dim, cfg.d_patch, cfg.d_equi)
        if split_head and cfg.recon.enabled
        else None
    )
    from pretrain.methods import get_method

    key = "teacher" if getattr(get_method(cfg.method.name), "has_teacher", True) else "student"
    modules = {"encoder.backbone.": backbone}
    if head is not None:
        modules["encoder.split_head."] = head
    state = {
        key: {prefix + k: v for prefix, m in modules.items() for k, v in m.state_dict().items()}
    }
    Checkpointer(ckpt.parent.parent).load(ckpt, state, partial=True)
    for prefix, module in modules.items():
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in state[key].items() if k.startswith(prefix)}
        )
    return backbone.eval(), (head.eval() if head is not None else None), cfg


def resolve_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A checkpoint directory from `step_X`, `checkpoints/latest` or a `checkpoints` folder.

    With `verify`, its files are checked against its manifest: for `latest` (or a folder) a
    damaged newest checkpoint is passed over with a warning naming the damaged files; a damaged
    `step_X` named explicitly is an error.
    """
    path = Path(path)
    if path.name == "latest" or (path / "latest").is_file():
        root = path.parent if path.name == "latest" else path
        if verify:
            found, damaged = select_checkpoint(root)
            for state in damaged:
                log.warning(
                    "damaged checkpoint %s skipped (%s); using %s",
                    state.path,
                    state.describe(),
                    found,
                )
        else:
            found = latest_checkpoint(root)
        if found is None:
            raise MissingPathError(f"no complete checkpoint under {root}")
        return found
    if not (path / ".metadata").is_file():
        raise MissingPathError(f"{path} is not a complete checkpoint directory (no .metadata)")
    if verify:
        state = verify_checkpoint(path)
        if not state.usable:
            raise CheckpointError(f"checkpoint {path} is {state.describe()}")
    return path


__all__ = [
    "checkpoint_config",
    "load_teacher_backbone",
    "load_teacher_encoder",
    "resolve_checkpoint",
    "upgrade_legacy_eval",
]
