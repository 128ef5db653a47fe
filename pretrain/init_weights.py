"""Continued pretraining: `model.init=PATH` loads a released backbone into the student and the
EMA teacher (if the method has one) at the start of a fresh run. A resumed run restores its own
checkpoint and never reads PATH.

Formats (`model.init_format`; a registry, `FORMATS`; `auto` takes the first that claims PATH):

- `equirecon`: an `equirecon export` folder (or its `model.safetensors`), or another run's
  checkpoint (run directory, `checkpoints/`, `latest`, `step_X`): the teacher backbone (the
  student's for teacher-free methods), as `pretrain.restore` reads it for evaluation;
- `ibot`: an iBOT/DINO `checkpoint.pth`, or DINOv2's `teacher_checkpoint.pth`: a dict with
  `teacher`/`student` entries whose keys carry `module.`/`backbone.` prefixes; the teacher is
  read (the student only in a file without one), heads dropped, DINOv2's block chunks
  (`blocks.C.I.`) flattened, iBOT's `masked_embed` read as the mask token;
- `dinov2`: the DINOv2 hub `.pth` (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`);
- `timm`: a timm `model.safetensors` / `pytorch_model.bin` (or the hub folder holding it); a
  classifier head is dropped;
- `dinov3`: recognized and refused. DINOv3 (the hub `.pth`: `rope_embed.periods`,
  `storage_tokens`; timm's `vit_*_dinov3`, an Eva with no `pos_embed`) encodes positions with
  rotary embeddings (RoPE) in every attention layer; our backbone is timm's VisionTransformer
  with absolute position embeddings (`Backbone.forward` adds `pos_embed` once, and its blocks
  take no RoPE), so no `model.arch` can hold those weights faithfully. Whatever format reads the
  file (`auto` asks `dinov3` before `ibot`, `dinov2` and `timm`, which would otherwise claim it),
  a DINOv3 backbone is one line saying so (ConfigError) instead of a key mismatch.

Every file is mapped to timm's VisionTransformer keys by timm's own `checkpoint_filter_fn`
(DINOv2's keys, registers and SwiGLU `w12/w3`, LayerScale `gamma_N`, the position embedding
resampled to the model's grid). timm reads a file with registers into its `no_embed_class`
layout (CLS and registers get no position); our backbone keeps a position for every token, so
those get zero positions: the same function.

Before anything is loaded the file is checked against `model.*`: width, patch size, depth,
registers, LayerScale, the number of heads where the file tells it, then every key and shape
(strict: nothing missing, nothing unexpected). A mismatch is one line (ConfigError, exit 2)
naming the key, its shape in the file, the shape expected and the `model.*` setting that fixes
it. What a backbone file legitimately lacks keeps its random init: the method's heads, split
head and decoders (never in a backbone file), and the mask token where the format has none
(`InitFormat.may_lack`). A missing or unreadable file is one line naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from equirecon.errors import CheckpointError, ConfigError, MissingPathError
from pretrain.export import CONFIG as EXPORT_CONFIG
from pretrain.export import WEIGHTS as EXPORT_WEIGHTS
from pretrain.models.backbone import Backbone

Tensors = dict[str, torch.Tensor]

MASK_TOKEN = "mask_token"
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm / Hugging Face hub folder
ENTRIES = ("teacher", "student")  # of a training checkpoint, in the order they are looked for
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
# SSL heads (DINO, iBOT, DINOv2) and a classifier's (timm: its pooled-feature norm and linear)
HEAD_PREFIXES = ("head.", "dino_head.", "ibot_head.", "fc_norm.")


@dataclass
class FileWeights:
    """A backbone read from a file: its tensors in the file's own key names (DINOv2, DINO/iBOT or
    timm), prefixes stripped and heads dropped, and what else the file says."""

    state: Tensors
    files: list[Path]  # the files read (their SHA-256 is recorded)
    num_heads: int | None = None  # attention heads of the file's model, where the file tells
    heads_from: str = ""  # where `num_heads` comes from (for the error line)
    entry: str = ""  # teacher | student of a training checkpoint
    dropped: list[str] = field(default_factory=list)  # keys dropped (heads)
    # Whether `pos_embed` has positions for CLS and registers (timm's default layout);
    # None: infer from its length.
    prefix_positions: bool | None = None


class Source:
    """`model.init`'s path and, read once on demand, the tensors of its weights file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._contents: Any = None

    def weights_file(self) -> Path:
        if self.path.is_dir():
            for name in TIMM_FILES:
                if (self.path / name).is_file():
                    return self.path / name
            raise ConfigError(
                f"model.init={self.path}: a folder with no {' or '.join(TIMM_FILES)} that is no "
                "`equirecon export` or run checkpoint either: name the weights file"
            )
        return self.path

    def contents(self) -> Any:
        if self._contents is None:
            self._contents = read_file(self.weights_file())
        return self._contents


def read_file(path: Path) -> Any:
    """A safetensors file's tensors, or what `torch.load(weights_only=True)` reads (training
    checkpoints may hold their argparse arguments too). Unreadable: one line naming the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read: a damaged or foreign file
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
        lines = [ln for ln in lines if ln] or [""]
        # torch's weights_only refusal names the offending Python object on a later line
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0])[:300]
        hint = (
            "if it holds Python objects besides tensors, load it in Python and save the state "
            "dict alone (torch.save(ckpt['teacher'], 'teacher.pth'))"
            if "weights_only" in str(err) or "Unsupported global" in str(err)
            else "check the file (download it again, compare its SHA-256 with the source's)"
        )
        raise CheckpointError(
            f"model.init={path}: cannot read the file ({type(err).__name__}: {first})", hint=hint
        ) from err


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _strip(state: Tensors, prefixes: tuple[str, ...]) -> Tensors:
    out = {}
    for key, value in state.items():
        while key.startswith(prefixes):
            key = key[len(next(p for p in prefixes if key.startswith(p))) :]
        out[key] = value
    return out


def _drop_heads(state: Tensors) -> tuple[Tensors, list[str]]:
    dropped = [k for k in state if k.startswith(HEAD_PREFIXES)]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def _heads_of_64(state: Tensors, who: str) -> tuple[int | None, str]:
    """DINO, iBOT and DINOv2 ViTs have 64-dim attention heads (S/B/L/g: 6/12/16/24 heads)."""
    width = state["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in state else 0
    if width and width % 64 == 0:
        return width // 64, f"{who} ViTs have 64-dim heads: width {width}"
    return None, ""


# ---- the formats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InitFormat:
    """A file format of `model.init`: whether it claims a path (for `auto`), its reader, and the
    backbone keys its files legitimately lack (kept at their random init)."""

    name: str
    claims: Callable[[Source], bool]
    read: Callable[[Source], FileWeights]
    may_lack: tuple[str, ...] = ()


FORMATS: dict[str, InitFormat] = {}  # in the order `auto` asks them


def register_format(
    name: str, claims: Callable[[Source], bool], may_lack: tuple[str, ...] = ()
) -> Callable[[Callable[[Source], FileWeights]], Callable[[Source], FileWeights]]:
    def wrap(read: Callable[[Source], FileWeights]) -> Callable[[Source], FileWeights]:
        FORMATS[name] = InitFormat(name, claims, read, may_lack)
        return read

    return wrap


def format_names() -> list[str]:
    return list(FORMATS)


def _export_dir(path: Path) -> Path | None:
    """The `equirecon export` folder `path` is or whose weights file it names, else None."""
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name != EXPORT_WEIGHTS:
        return None
    try:
        meta = json.loads((folder / EXPORT_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(meta, dict) and "equirecon" in meta else None


def _checkpoint_path(path: Path) -> Path | None:
    """The checkpoint path `pretrain.restore.resolve_checkpoint` takes, else None."""
    if path.name == "latest" or (path / ".metadata").is_file() or (path / "latest").is_file():
        return path
    if (path / "checkpoints").is_dir():  # a run directory
        return path / "checkpoints"
    return None


def _claims_equirecon(src: Source) -> bool:
    return _export_dir(src.path) is not None or _checkpoint_path(src.path) is not None


def _file_digest_source(ckpt: Path) -> list[Path]:
    manifest = ckpt / "manifest.json"  # the size and SHA-256 of every file of the checkpoint
    return [manifest] if manifest.is_file() else sorted(p for p in ckpt.rglob("*") if p.is_file())


@register_format("equirecon", _claims_equirecon, (MASK_TOKEN,))  # an export is timm alone
def _read_equirecon(src: Source) -> FileWeights:
    export = _export_dir(src.path)
    if export is not None:
        meta = json.loads((export / EXPORT_CONFIG).read_text())
        weights = export / EXPORT_WEIGHTS
        return FileWeights(
            read_file(weights),
            [weights],
            num_heads=meta.get("model_args", {}).get("num_heads"),
            heads_from=f"{export / EXPORT_CONFIG}",
            prefix_positions=True,
        )
    from pretrain.restore import load_teacher_backbone, resolve_checkpoint

    path = _checkpoint_path(src.path)
    if path is None:
        raise ConfigError(
            f"model.init={src.path}: model.init_format=equirecon needs an `equirecon export` "
            "folder or a run checkpoint (run directory, checkpoints/latest, step_X)"
        )
    ckpt = resolve_checkpoint(path)
    backbone, cfg = load_teacher_backbone(ckpt)
    state = {k: v.detach() for k, v in backbone.vit.state_dict().items()}
    state[MASK_TOKEN] = backbone.mask_token.detach()
    return FileWeights(
        state,
        _file_digest_source(ckpt),
        num_heads=backbone.num_heads,
        heads_from=f"the config of {ckpt}",
        entry="teacher" if _has_teacher(cfg.method.name) else "student",
        prefix_positions=True,
    )


# DINOv3 (RoPE): recognized so that it is refused with its reason, whatever format reads it
ROPE_PREFIXES = ("rope_embed.",)  # DINOv3's RopePositionEmbedding (its `periods` buffer)
DINOV3_REGISTERS = "storage_tokens"  # DINOv3's name for its registers


def _rope_evidence(state: Tensors) -> str | None:
    """What marks `state` (a backbone's tensors, any prefixes) as DINOv3 / a RoPE ViT, else
    None: DINOv3's `rope_embed.*` or `storage_tokens`, or (timm's `vit_*_dinov3`, an Eva) a ViT
    with blocks and no position embedding at all."""
    keys = set(_strip(state, (*WRAPPER_PREFIXES, "backbone.")))
    rope = sorted(k for k in keys if k.startswith(ROPE_PREFIXES))
    if rope:
        return f"{rope[0]} in the file"
    if DINOV3_REGISTERS in keys:
        return f"{DINOV3_REGISTERS} (its registers) in the file"
    blocks = any(k.startswith("blocks.") for k in keys)
    if "patch_embed.proj.weight" in keys and blocks and "pos_embed" not in keys:
        return "blocks and no pos_embed in the file, as timm's vit_*_dinov3"
    return None


def _backbone_states(obj: Any) -> list[Tensors]:
    """The tensor dicts a file may hold its backbone in: a training checkpoint's entry, a timm
    checkpoint's `state_dict`/`model`, or the file itself."""
    states = []
    found = _training_entry(obj)
    if found is not None:
        states.append(found[1])
    unwrapped = _unwrap_timm(obj)
    if _tensor_dict(unwrapped):
        states.append(unwrapped)
    return states


def refuse_rope(state: Tensors, path: Path) -> None:
    """Raise the one-line refusal if `state` is a DINOv3 (RoPE) backbone."""
    evidence = _rope_evidence(state)
    if evidence is None:
        return
    raise ConfigError(
        f"model.init={path}: a DINOv3 backbone ({evidence}): DINOv3 (as timm's other RoPE "
        "ViTs) encodes positions with rotary position embeddings (RoPE), which equirecon's "
        "backbone (timm's VisionTransformer with absolute position embeddings, every "
        "model.arch) does not build, so its weights cannot be loaded faithfully; start from a "
        "DINOv2 (with or without registers), iBOT/DINO, timm ViT or equirecon backbone instead",
        hint="e.g. model.init=dinov2_vits14_reg4_pretrain.pth (configs/README.md, "
        '"Continued pretraining")',
    )


def _claims_dinov3(src: Source) -> bool:
    return any(_rope_evidence(state) for state in _backbone_states(src.contents()))


@register_format("dinov3", _claims_dinov3)
def _read_dinov3(src: Source) -> FileWeights:
    for state in _backbone_states(src.contents()):
        refuse_rope(state, src.path)
    raise ConfigError(
        f"model.init={src.path}: not a DINOv3 checkpoint (no {ROPE_PREFIXES[0]}*, "
        f"{DINOV3_REGISTERS} or RoPE blocks; top-level keys: {_keys_of(src.contents())}); "
        "check model.init_format"
    )


def _has_teacher(method: str) -> bool:
    from pretrain.methods import get_method

    return bool(getattr(get_method(method), "has_teacher", True))


def _training_entry(obj: Any) -> tuple[str, Tensors] | None:
    """(entry, state) of a training checkpoint: `obj["teacher"]`, or the `teacher.` keys of
    `obj["model"]` (DINOv2's fvcore checkpoints); the student where there is no teacher."""
    if not isinstance(obj, dict):
        return None
    for entry in ENTRIES:
        if _tensor_dict(obj.get(entry)):
            return entry, obj[entry]
        model = obj.get("model")
        if isinstance(model, dict) and any(str(k).startswith(entry + ".") for k in model):
            n = len(entry) + 1
            return entry, {k[n:]: v for k, v in model.items() if k.startswith(entry + ".")}
    return None


@register_format("ibot", lambda src: _training_entry(src.contents()) is not None, (MASK_TOKEN,))
def _read_ibot(src: Source) -> FileWeights:
    found = _training_entry(src.contents())
    if found is None:
        raise ConfigError(
            f"model.init={src.path}: no {' or '.join(ENTRIES)} entry of tensors "
            f"(top-level keys: {_keys_of(src.contents())}); check model.init_format"
        )
    entry, state = found
    state = _strip(state, WRAPPER_PREFIXES)
    if any(k.startswith("backbone.") for k in state):  # MultiCropWrapper: backbone + head
        dropped = [k for k in state if not k.startswith("backbone.")]
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    else:
        state, dropped = _drop_heads(state)
    # DINOv2's block chunks (FSDP wrapping): `blocks.C.I.` holds block I (chunks pad with Identity)
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    if "masked_embed" in state:  # iBOT's mask token
        state[MASK_TOKEN] = state.pop("masked_embed")
    heads, why = _heads_of_64(state, "DINO/iBOT/DINOv2")
    return FileWeights(state, [src.weights_file()], heads, why, entry=entry, dropped=dropped)


def _claims_dinov2(src: Source) -> bool:
    obj = src.contents()
    return (
        _tensor_dict(obj)
        and "patch_embed.proj.weight" in obj
        and (MASK_TOKEN in obj or "register_tokens" in obj)
    )


@register_format("dinov2", _claims_dinov2)
def _read_dinov2(src: Source) -> FileWeights:
    state = src.contents()
    if not _tensor_dict(state):
        raise ConfigError(
            f"model.init={src.path}: not a DINOv2 hub state dict (top-level keys: "
            f"{_keys_of(state)}); check model.init_format"
        )
    heads, why = _heads_of_64(state, "DINOv2")
    return FileWeights(dict(state), [src.weights_file()], heads, why)


def _unwrap_timm(obj: Any) -> Any:
    """A timm training checkpoint keeps the weights under `state_dict` (or `model`)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and _tensor_dict(obj.get(key)):
            return obj[key]
    return obj


def _claims_timm(src: Source) -> bool:
    obj = _unwrap_timm(src.contents())
    return _tensor_dict(obj) and "patch_embed.proj.weight" in obj


@register_format("timm", _claims_timm, (MASK_TOKEN,))
def _read_timm(src: Source) -> FileWeights:
    state = _unwrap_timm(src.contents())
    if not _tensor_dict(state):
        raise ConfigError(
            f"model.init={src.path}: not a timm state dict (top-level keys: "
            f"{_keys_of(state)}); check model.init_format"
        )
    state, dropped = _drop_heads(_strip(state, WRAPPER_PREFIXES))
    return FileWeights(state, [src.weights_file()], dropped=dropped)


def _keys_of(obj: Any, n: int = 6) -> str:
    keys = list(obj)[:n] if isinstance(obj, dict) else []
    more = ", …" if isinstance(obj, dict) and len(obj) > n else ""
    return (", ".join(map(str, keys)) + more) if keys else type(obj).__name__


def _detect(src: Source) -> InitFormat:
    for spec in FORMATS.values():
        if spec.claims(src):
            return spec
    raise ConfigError(
        f"model.init={src.path}: not a backbone in a known format (top-level keys: "
        f"{_keys_of(src.contents())}); set model.init_format to one of {format_names()}"
    )


# ---- checks ----------------------------------------------------------------------------------


def _shape(t: torch.Tensor | None) -> str:
    return str(tuple(t.shape)) if t is not None else "none"


class _Mismatch:
    """One line: `model.init=PATH: KEY is SHAPE in the file, the model expects SHAPE: FIX`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(
        self, key: str, found: torch.Tensor | None, expected: torch.Tensor | None, fix: str
    ) -> ConfigError:
        in_file = "missing from the file" if found is None else f"{_shape(found)} in the file"
        in_model = (
            "the model has no such key"
            if expected is None
            else f"the model expects {_shape(expected)}"
        )
        return ConfigError(
            f"model.init={self.path}: {key} is {in_file}, {in_model}: {fix}",
            hint="change the model.* setting named above, or point model.init at another file",
        )


def _depth(state: Tensors) -> int:
    indices = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def _layerscale_key(state: Tensors) -> str | None:
    return next((k for k in ("blocks.0.ls1.gamma", "blocks.0.gamma_1") if k in state), None)


def check_architecture(weights: FileWeights, backbone: Backbone, path: Path) -> None:
    """Width, patch size, depth, registers, LayerScale and heads of the file (its own key
    names) against the backbone; the first mismatch raises its one line."""
    bad, state = _Mismatch(path), weights.state
    vit, own = backbone.vit, backbone.vit.state_dict()
    key = "patch_embed.proj.weight"
    found, expected = state.get(key), own[key]
    if found is None or found.ndim != 4:
        raise ConfigError(
            f"model.init={path}: {key} is {_shape(found)} in the file: not a ViT backbone of "
            f"this format (keys: {_keys_of(state)}); check model.init_format"
        )
    fixes = []
    if found.shape[0] != expected.shape[0]:
        fixes.append(f"model.embed_dim={found.shape[0]}")
    if found.shape[-2:] != expected.shape[-2:]:
        fixes.append(f"model.patch_size={found.shape[-1]}")
    if found.shape[1] != expected.shape[1]:
        fixes.append(f"a model of {expected.shape[1]} input channels (no model.* setting)")
    if fixes:
        raise bad(key, found, expected, "set " + " ".join(fixes))
    depth, model_depth = _depth(state), len(vit.blocks)
    if depth != model_depth:
        block = f"blocks.{min(depth, model_depth)}.norm1.weight"
        raise bad(block, state.get(block), own.get(block), f"set model.depth={depth}")
    reg_key = next((k for k in ("register_tokens", "reg_token") if k in state), "reg_token")
    file_reg = state[reg_key].shape[1] if reg_key in state else 0
    if file_reg != vit.num_reg_tokens:
        raise bad(
            reg_key, state.get(reg_key), own.get("reg_token"), f"set model.num_registers={file_reg}"
        )
    ls_key, model_ls = _layerscale_key(state), own.get("blocks.0.ls1.gamma")
    if (ls_key is None) != (model_ls is None):
        fix = (
            "set model.layerscale=0 (no LayerScale)"
            if ls_key is None
            else "set model.layerscale=1e-5 (any value > 0: the file's gains are loaded)"
        )
        raise bad(ls_key or "blocks.0.ls1.gamma", state.get(ls_key or ""), model_ls, fix)
    if weights.num_heads is not None and weights.num_heads != backbone.num_heads:
        raise ConfigError(
            f"model.init={path}: blocks.0.attn.qkv.weight is split into {weights.num_heads} "
            f"attention heads in the file's model ({weights.heads_from}), the model has "
            f"{backbone.num_heads}: set model.num_heads={weights.num_heads}"
        )


def _key_fix(key: str, file_state: Tensors) -> str:
    """The `model.*` setting behind a key that is missing, unexpected or of another shape."""
    if ".mlp." in key:
        swiglu = any(".mlp.w12." in k or ".mlp.w3." in k for k in file_state)
        return (
            "set model.arch=vit_giant_patch14 (DINOv2's SwiGLU MLP)"
            if swiglu
            else "set model.arch to an arch with the file's MLP width"
        )
    return "no model.* setting makes it fit (another architecture, or an incomplete file?)"


def check_keys(converted: Tensors, file_state: Tensors, vit: VisionTransformer, path: Path) -> None:
    """Strict: every key of the model in `converted` with its shape, and nothing else. Raises
    the first mismatch (model order, then the file's extra keys) and how many keys differ."""
    bad = _Mismatch(path)
    own = vit.state_dict()
    problems = [k for k, v in own.items() if k not in converted or converted[k].shape != v.shape]
    problems += [k for k in converted if k not in own]
    if problems:
        key = problems[0]
        err = bad(key, converted.get(key), own.get(key), _key_fix(key, file_state))
        if len(problems) > 1:
            more = len(problems) - 1
            differ = f"{more} more keys differ" if more > 1 else "1 more key differs"
            err.args = (f"{err.args[0]} ({differ})",)
        raise err


# ---- conversion ------------------------------------------------------------------------------


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _prefix_free(state: Tensors, prefix_positions: bool | None) -> bool:
    """Whether the file's `pos_embed` (as timm reads it) has no CLS/register positions."""
    if "register_tokens" in state:  # DINOv2 with registers: timm's converter reads it so
        return True
    if prefix_positions is not None:
        return not prefix_positions
    if "pos_embed" not in state:
        return False
    n = state["pos_embed"].shape[1]
    prefix = int("cls_token" in state) + (
        state["reg_token"].shape[1] if "reg_token" in state else 0
    )
    without, with_prefix = _is_square(n), _is_square(n - prefix)
    if prefix and without and with_prefix:  # both fit a square grid: timm's register ViTs
        return "reg_token" in state  # have no prefix positions, its other ViTs have
    return bool(prefix) and without


def to_timm(state: Tensors, vit: VisionTransformer, prefix_positions: bool | None) -> Tensors:
    """The file's tensors as `vit`'s state dict, by timm's `checkpoint_filter_fn` (which also
    resamples the position embedding to `vit`'s grid). A file whose position embedding has no
    CLS/register positions is converted for a twin of `vit` in that layout, and the prefix
    positions are set to zero (what that layout computes)."""
    state = dict(state)  # timm's converter pops keys
    if any(".mlp.w12." in k for k in state) or "register_tokens" in state:
        state.setdefault(MASK_TOKEN, torch.zeros(1))  # the key timm recognizes DINOv2's layout by
    free = _prefix_free(state, prefix_positions)
    target = vit
    if free:
        with torch.device("meta"):
            target = VisionTransformer(
                img_size=vit.patch_embed.img_size,
                patch_size=vit.patch_embed.patch_size,
                embed_dim=vit.embed_dim,
                depth=1,
                num_heads=1,
                class_token=vit.cls_token is not None,
                reg_tokens=vit.num_reg_tokens,
                no_embed_class=True,
                num_classes=0,
            )
    out = checkpoint_filter_fn(state, target, adapt_layer_scale=True)
    out.pop(MASK_TOKEN, None)
    if free and "pos_embed" in out and not vit.no_embed_class:
        pos = out["pos_embed"]
        zeros = pos.new_zeros(1, vit.num_prefix_tokens, pos.shape[-1])
        out["pos_embed"] = torch.cat([zeros, pos], dim=1)
    return out


# ---- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitSource:
    """Where a `model.init` backbone came from (logged as MLflow params)."""

    path: Path  # the file whose SHA-256 is recorded
    format: str
    sha256: str
    entry: str = ""
    kept_random: tuple[str, ...] = ()  # backbone keys the file lacks
    dropped: tuple[str, ...] = ()  # the file's head keys, not loaded
    loaded_into: tuple[str, ...] = ()  # student, teacher

    def describe(self) -> str:
        """One line for the run's log."""
        entry = f" ({self.entry})" if self.entry else ""
        into = " and ".join(self.loaded_into) or "the"
        kept = ""
        if self.kept_random:
            kept = f"; {', '.join(self.kept_random)} not in the file: kept at its random init"
        if self.dropped:
            heads = sorted({k.split(".")[0] + ".*" for k in self.dropped})
            kept += f"; {len(self.dropped)} head keys of the file not loaded ({', '.join(heads)})"
        return (
            f"{self.format}{entry} weights of {self.path} (sha256 {self.sha256[:16]}…) loaded "
            f"into the {into} backbone{'s' * (len(self.loaded_into) > 1)}{kept}"
        )

    def record(self, given: str | Path) -> dict[str, str]:
        """Where a run started (`model.init` as `given`, the file hashed, its format and
        SHA-256): kept in the meta.json of the run's checkpoints and in their eval results."""
        return {
            "file": str(given),
            "path": str(self.path),
            "format": self.format,
            "sha256": self.sha256,
        }

    def params(self) -> dict[str, str]:
        return {
            "resolved.init_file": str(self.path),
            "resolved.init_format": self.format,
            "resolved.init_sha256": self.sha256,
        }


def sha256_of(files: list[Path]) -> str:
    """SHA-256 of one file; of several, of their lines `SHA-256  name` in order."""
    digests = []
    for path in files:
        with path.open("rb") as handle:
            digests.append(hashlib.file_digest(handle, "sha256").hexdigest())
    if len(files) == 1:
        return digests[0]
    lines = "".join(f"{d}  {p.name}\n" for d, p in zip(digests, files))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_backbone_init(backbone: Backbone, path: str | Path, fmt: str = "auto") -> InitSource:
    """Load the backbone in `path` (format `fmt`, or `auto`) into `backbone`, all or nothing.

    Raises:
        MissingPathError: `path` does not exist.
        CheckpointError: the file cannot be read (damaged, or not a weights file).
        ConfigError: the file does not fit `model.*` (one line: key, shapes, the setting).
    """
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"model.init={path}: no such file or directory")
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"model.init_format={fmt!r}: must be one of {['auto', *FORMATS]}")
    src = Source(path)
    spec = _detect(src) if fmt == "auto" else FORMATS[fmt]
    weights = spec.read(src)
    state = weights.state
    refuse_rope(state, path)  # DINOv3 read as ibot/dinov2/timm: its reason, not a key mismatch
    check_architecture(weights, backbone, path)
    converted = to_timm(state, backbone.vit, weights.prefix_positions)
    check_keys(converted, state, backbone.vit, path)
    mask = state.get(MASK_TOKEN)
    if mask is not None and mask.numel() != backbone.mask_token.numel():
        raise _Mismatch(path)(MASK_TOKEN, mask, backbone.mask_token, "set model.embed_dim")
    if mask is None and MASK_TOKEN not in spec.may_lack:
        raise _Mismatch(path)(
            MASK_TOKEN, None, backbone.mask_token, "no model.* setting (an incomplete file?)"
        )
    backbone.vit.load_state_dict(converted, strict=True)
    if mask is not None:
        with torch.no_grad():
            backbone.mask_token.copy_(mask.reshape(backbone.mask_token.shape))
    return InitSource(
        path=weights.files[0] if len(weights.files) == 1 else weights.files[0].parent,
        format=spec.name,
        sha256=sha256_of(weights.files),
        entry=weights.entry,
        kept_random=() if mask is not None else (MASK_TOKEN,),
        dropped=tuple(weights.dropped),
    )


def init_method_backbones(method: Any, path: str | Path, fmt: str = "auto") -> InitSource:
    """`load_backbone_init` into `method`'s student backbone, copied into its EMA teacher's (if
    any); the method's heads, split head and decoders keep their random init."""
    student = method.backbone
    source = load_backbone_init(student, path, fmt)
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        teacher.encoder.backbone.load_state_dict(student.state_dict())
    into = ("student", "teacher") if teacher is not None else ("student",)
    return dataclasses.replace(source, loaded_into=into)


__all__ = [
    "FORMATS",
    "FileWeights",
    "InitFormat",
    "InitSource",
    "check_architecture",
    "check_keys",
    "format_names",
    "init_method_backbones",
    "load_backbone_init",
    "refuse_rope",
    "register_format",
    "sha256_of",
    "to_timm",
]
