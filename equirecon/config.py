"""One config system: typed defaults (dataclasses) + a YAML delta + `key=value` overrides.

Unknown keys are errors that name the key and the valid choices; the resolved config is written
next to every run (`RUN_DIR/config.yaml`) and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from equirecon.checks import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    TRANSFORMS,
    UNIT,
    Rule,
    ge,
    gt,
    one_of,
    open_pair,
    pair,
    registered,
    split_names,
    within,
)
from equirecon.errors import ConfigError, MissingPathError
from equirecon.eval_tasks import task_names, task_specs
from equirecon.methods import ARCH_OWN as _ARCH_OWN
from equirecon.methods import LEGACY_DEFAULTS, get_spec, method_names
from equirecon.rundir import write_text_atomic

# data.augmentations: the base augmentations ("all") or only random rotations ("rot").
AUGMENTATION_MODES = ("all", "rot")

CENTERINGS = ("sinkhorn_knopp", "centering")  # method.centering (DINOv2 teacher targets)

# How the peak lr follows the global batch B (`train.lr_scaling`, pretrain/schedules.py).
LR_SCALING_RULES = ("linear", "sqrt_1024", "none")

# Archs whose timm model has LayerScale by default (timm's `init_values`); every other arch in
# pretrain/models/backbone.py has none. `model.layerscale` left unset resolves to this value
# for the methods whose recipe has no LayerScale of its own.
ARCH_LAYERSCALE = {"vit_giant_patch14": 1e-5}

# Per-method knowledge (split-head dims, recipe defaults of the keys a config leaves unset, the
# minimum batch) is declared by each method's spec in equirecon/methods/<name>.py; the recipe
# keys' values before they existed (LEGACY_DEFAULTS) are there too. Sources and deviations of
# each recipe: configs/README.md ("Recipes").


@dataclass
class RunConfig:
    dir: str = "runs/default"
    name: str = ""  # MLflow run name; defaults to the run directory's name


@dataclass
class DataConfig:
    path: str = "data/demo"
    # A registered backend (data_pipeline/backends): torch | dali | synthetic (seeded random
    # crops: engine tests, benchmarks).
    backend: str = "torch"
    num_workers: int = 2
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # all: the base method's full augmentations; rot: none but a random rotation of each crop
    # (the paper's "augmentation" axis, see data_pipeline.augment.MultiCropAugmentation).
    augmentations: str = "all"


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16"
    patch_size: int | None = None  # None: the arch's own
    embed_dim: int | None = None  # None: the arch's own (small values for CPU tests/demo)
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.0
    # Stochastic-depth rate per block: false = rising linearly 0 -> drop_path over depth (timm,
    # DINO/iBOT); true = drop_path in every block (DINOv2's `drop_path_uniform`).
    # null: the method's recipe (its spec, equirecon/methods/<name>.py).
    drop_path_uniform: bool | None = None
    # LayerScale init value (timm's `init_values`; 0: no LayerScale). null: the method's recipe
    # (DINOv2 1e-5), else the arch's own (ARCH_LAYERSCALE).
    layerscale: float | None = None
    num_registers: int = 0
    attention: str = "sdpa"  # sdpa | math


@dataclass
class MethodConfig:
    name: str = "dinov2"
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0  # 0: no warm-up
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_prob: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # iBOT, and DINOv2 with centering=centering: momentum of the running centers of the
    # teacher's CLS and patch logits.
    center_momentum: float = 0.9
    # DINOv2's teacher targets: sinkhorn_knopp (DINOv2 paper; its vitl14/vitg14 configs) or
    # centering (softmax around running centers: its ssl_default_config / vitl16_short.yaml).
    centering: str = "sinkhorn_knopp"
    # VICReg: width of the 3-layer expander and the loss weights (invariance, variance, cov.).
    expander_dim: int = 2048
    vicreg_sim_weight: float = 25.0
    vicreg_var_weight: float = 25.0
    vicreg_cov_weight: float = 1.0
    # SimCLR: projector (hidden -> out) and NT-Xent temperature.
    projector_dim: int = 256
    projector_hidden_dim: int = 2048
    simclr_temperature: float = 0.1
    # VICReg/SimCLR: BatchNorm -> SyncBatchNorm in the projector with several CUDA ranks.
    sync_batchnorm: bool = True
    # DINO/iBOT prototype layer: true = weight-normalized with a fixed unit gain (cosine
    # logits); false = weight norm with a trained gain per prototype (DINOv2; iBOT's
    # `--norm_last_layer false`). null: the method's recipe.
    norm_last_layer: bool | None = None


@dataclass
class ReconConfig:
    enabled: bool = True
    # `lambda` is a Python keyword: the attribute is `lam`, the config key stays `recon.lambda`.
    lam: float = 1.0
    k: int = 2
    transform: str = "se2"
    d_equi: int | None = None  # None: the method's default (DESIGN §1.5)
    decoder_channels: int = 256
    # after_conv: each 3x3 convolution at the resolution it receives, resize after (a quarter
    # of the FLOPs); before_conv: resize first (the layout before 2026-12). models/decoder.py
    decoder_resize: str = "after_conv"
    # Convolution size of the decoders (odd); 1: a local decoder that cannot move content
    # across patches, so un-transforming is left to the encoder. models/decoder.py
    decoder_kernel: int = 3
    log_images_every: int = 0  # 0: only at the end of training


@dataclass
class SplitConfig:
    d_patch: int | None = None  # None: the method's default


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 64  # per rank
    # A registered strategy (pretrain/strategies): single | ddp | fsdp2 | deepspeed.
    strategy: str = "single"
    zero_stage: int = 2  # DeepSpeed ZeRO stage 1 | 2 | 3
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile each transformer block
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no codegen, for tests)
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    base_lr: float = 4e-3  # peak lr = base_lr scaled by `lr_scaling` (DESIGN §1.9)
    # How the peak lr follows the global batch B: linear = base_lr·B/256, sqrt_1024 =
    # base_lr·sqrt(B/1024) (DINOv2), none = base_lr. "": the method's recipe.
    lr_scaling: str = ""
    # lr multiplier of backbone block i (0-based, of n) = layerwise_decay^(n - i); embeddings
    # (patch, position, tokens) decay^(n + 1); the rest 1 (DINOv2's rule). null: the recipe.
    layerwise_decay: float | None = None
    patch_embed_lr_mult: float | None = None  # extra lr factor of the patch embedding
    # Steps during which the prototype layer of the DINO/iBOT head has lr 0. null: the recipe.
    freeze_last_layer_steps: int | None = None
    # Weight decay also on the position embedding and the cls/register/mask tokens (biases,
    # norms and LayerScale never decay). null: the recipe.
    weight_decay_tokens: bool | None = None
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    momentum_teacher: float = 0.992
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0
    log_every: int = 1
    # A step whose loss or gradient is not finite is skipped (no update); after this many
    # consecutive skips the run stops with a diagnostic and a checkpoint of the last good state.
    max_nonfinite_steps: int = 5


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 3  # the newest `keep` checkpoints are kept …
    keep_every: int = 0  # … plus every checkpoint whose step is a multiple of this (0: none)


@dataclass
class TrackingConfig:
    uri: str = ""  # "" -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory
    experiment: str = "equirecon"
    enabled: bool = True


@dataclass
class SharedEvalConfig:
    """The eval settings of every task: data, image side, seed, features, and the watcher.

    The settings of one task are its own section `eval.<task>.*`, declared by the task's spec in
    equirecon/eval_tasks/<task>.py; `EvalConfig` below holds both. The defaults
    are a quick pass sized for every checkpoint (about 2 minutes for all task families on the
    CPU demo model); raise the image counts and epochs for final numbers.
    """

    data: str = ""  # "" -> data.path
    # Comma-separated task names, or "all"; default: every registered task.
    tasks: str = field(default_factory=lambda: ",".join(task_names()))
    img_size: int | None = None  # None: data.global_size
    seed: int = 0  # θ draws, splits, head initializations, batch order
    pooling: str = "cls+mean"  # global feature: cls | cls+mean | mean
    batch_size: int = 256  # images per feature-extraction batch
    # Features of the last n transformer blocks, concatenated (DINOv2's n_last_blocks): the
    # global feature pools each of them as eval.pooling, the patch grid stacks their channels.
    feature_layers: int = 1
    # The labelled subset's images, shared by the tasks on its global features (knn, linear;
    # val used as test). 0: every image.
    labelled_train_images: int = 2000
    labelled_test_images: int = 1000
    # Watch RUN_DIR/checkpoints while pretraining (rank 0 starts `equirecon eval watch`).
    watch: bool = False
    watch_poll_seconds: float = 30.0
    watch_timeout_min: int = 240  # per eval job


def _eval_config_class() -> type:
    """`SharedEvalConfig` plus one section per registered eval task (`eval.<task>.*`, the task
    spec's settings dataclass), in `eval.tasks=all` order."""
    shared = {f.name for f in dataclasses.fields(SharedEvalConfig)}
    sections = []
    for spec in task_specs():
        if spec.name in shared:
            raise ValueError(f"eval task {spec.name!r}: the name of a shared eval key")
        sections.append((spec.name, spec.settings, field(default_factory=spec.settings)))
    cls = dataclasses.make_dataclass(
        "EvalConfig", sections, bases=(SharedEvalConfig,), namespace={"__module__": __name__}
    )
    cls.__doc__ = (
        "The frozen-backbone evaluations (evals/): the shared settings (`SharedEvalConfig`) and "
        "one section per task, `cfg.eval.<task>` (equirecon/eval_tasks/<task>.py)."
    )
    return cls


EvalConfig = _eval_config_class()


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def d_patch(self) -> int:
        return self.split.d_patch or get_spec(self.method.name).d_patch

    @property
    def d_equi(self) -> int:
        return self.recon.d_equi or get_spec(self.method.name).d_equi


_ALIASES = {"lambda": "lam"}  # config key -> attribute
_REVERSE_ALIASES = {v: k for k, v in _ALIASES.items()}


def _convert(value: Any, current: Any, key: str, annotation: str = "") -> Any:
    """Coerce a YAML/CLI value to the type of the default `current` (or, for an optional field
    whose value is None, to its declared `annotation`, e.g. "float | None")."""
    if value is None and "None" in annotation:
        return None
    if current is None:
        kinds = [k.strip() for k in annotation.split("|") if k.strip() != "None"] or ["int"]
        for kind in kinds:
            sample = {"int": 0, "float": 0.0, "bool": False, "str": ""}.get(kind)
            if sample is None:
                continue
            try:
                return _convert(value, sample, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(kinds)} or null, got {value!r}")
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"{key}: expected a list of {len(current)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if (
        isinstance(current, float)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return float(value)
    if isinstance(current, float) and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str):
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: expected {type(current).__name__}, got {value!r}")


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.key` (or `eval.<task>.key`) of `cfg` to `value` (converted to the field's
    type; unknown keys are errors naming the valid ones; a moved key (MOVED_KEYS) sets its new
    key, with a FutureWarning)."""
    if dotted in MOVED_KEYS:
        warn_moved_keys([dotted])
        dotted = MOVED_KEYS[dotted]
    parts = dotted.split(".")
    if len(parts) not in (2, 3):
        raise ConfigError(f"config key {dotted!r} must be 'section.key'")
    section_name = parts[0]
    section_fields = {f.name for f in dataclasses.fields(cfg)}
    if section_name not in section_fields:
        raise ConfigError(
            f"unknown config section {section_name!r} in {dotted!r}; sections: {sorted(section_fields)}"
        )
    if dotted in _REMOVED_KEYS:
        _removed_key(dotted, value)
        return
    owner, owner_name = getattr(cfg, section_name), section_name
    if len(parts) == 3:  # a subsection: eval.<task>.<key>
        if parts[1] not in _subsections(owner):
            raise ConfigError(f"config key {dotted!r} must be 'section.key'")
        owner, owner_name = getattr(owner, parts[1]), f"{section_name}.{parts[1]}"
    key = parts[-1]
    attr = _ALIASES.get(key, key)
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if attr not in fields:
        valid = sorted(_REVERSE_ALIASES.get(n, n) for n in fields)
        raise ConfigError(f"unknown config key {dotted!r}; valid keys in {owner_name!r}: {valid}")
    if attr in _subsections(owner):
        valid = [f.name for f in dataclasses.fields(getattr(owner, attr))]
        raise ConfigError(
            f"config key {dotted!r} is a section, not a value; its keys: "
            f"{', '.join(f'{dotted}.{k}' for k in valid)}"
        )
    annotation = str(fields[attr].type)
    setattr(owner, attr, _convert(value, getattr(owner, attr), dotted, annotation))


def _subsections(section: Any) -> set[str]:
    """The fields of a config section that are sections themselves (eval's task sections)."""
    return {
        f.name for f in dataclasses.fields(section)
        if dataclasses.is_dataclass(getattr(section, f.name))
    }  # fmt: skip


def get_value(cfg: Config, dotted: str) -> Any:
    """The value of `section.key` (or `eval.<task>.key`; a moved key reads its new key)."""
    dotted = MOVED_KEYS.get(dotted, dotted)
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, _ALIASES.get(part, part))
    return obj


# ---- moved keys -----------------------------------------------------------------------------
# Keys renamed in place: old -> new. An old key (in a file, an override, a saved run config) sets
# the new one with a FutureWarning naming it, for one release; `RUN_DIR/config.yaml` files saved
# before the rename load, resume (`equirecon.resume_config` compares new spellings) and evaluate
# unchanged. The eval tasks' settings moved into one section per task (issue #15).
MOVED_KEYS: dict[str, str] = {
    "eval.equivariance_transforms": "eval.equivariance.transforms",
    "eval.equivariance_features": "eval.equivariance.features",
    "eval.equivariance_grid": "eval.equivariance.grid",
    "eval.equivariance_view": "eval.equivariance.view",
    "eval.r2_repeats": "eval.equivariance.repeats",
    "eval.max_train_images": "eval.equivariance.train_images",
    "eval.max_test_images": "eval.equivariance.test_images",
    "eval.r2_views": "eval.equivariance.views_per_image",
    "eval.r2_epochs": "eval.equivariance.epochs",
    "eval.r2_hidden": "eval.equivariance.hidden",
    "eval.knn_k": "eval.knn.k",
    "eval.linear_lrs": "eval.linear.lrs",
    "eval.linear_epochs": "eval.linear.epochs",
    "eval.linear_val_fraction": "eval.linear.val_fraction",
    "eval.homography_train_images": "eval.homography.train_images",
    "eval.homography_test_images": "eval.homography.test_images",
    "eval.homography_views": "eval.homography.views",
    "eval.homography_rho": "eval.homography.rho",
    "eval.homography_epochs": "eval.homography.epochs",
    "eval.homography_channels": "eval.homography.channels",
    "eval.homography_lr": "eval.homography.lr",
    "eval.segmentation_train_images": "eval.segmentation.train_images",
    "eval.segmentation_test_images": "eval.segmentation.test_images",
    "eval.segmentation_epochs": "eval.segmentation.epochs",
    "eval.segmentation_lr": "eval.segmentation.lr",
    "eval.depth_train_images": "eval.depth.train_images",
    "eval.depth_test_images": "eval.depth.test_images",
    "eval.depth_epochs": "eval.depth.epochs",
    "eval.depth_lr": "eval.depth.lr",
}


def warn_moved_keys(old_keys: list[str], where: str = "") -> None:
    """One FutureWarning naming each old key's new key (`where`: the file, if any)."""
    if not old_keys:
        return
    import warnings

    moves = ", ".join(f"{old} -> {MOVED_KEYS[old]}" for old in old_keys)
    warnings.warn(
        f"{where + ': ' if where else ''}config keys renamed ({moves}); the old names are read "
        f"for one more release: use the new ones",
        FutureWarning,
        stacklevel=3,
    )


def rename_moved_keys(flat: dict[str, Any], where: str | None = "") -> dict[str, Any]:
    """`flat` (dotted key -> value) with each moved key under its new name, in place of the old
    one. Warns once for them all (`where`: the file; None: silently). Raises ConfigError when
    one mapping sets a key under both names to different values."""
    out: dict[str, Any] = {}
    old_keys = [k for k in flat if k in MOVED_KEYS]
    for key, value in flat.items():
        new = MOVED_KEYS.get(key, key)
        if new in out and out[new] != value:  # both spellings, two values
            raise ConfigError(
                f"{where + ': ' if where else ''}{_old_name(new)} and {new} are the same "
                f"setting (renamed); keep only {new}"
            )
        out[new] = value
    if where is not None:
        warn_moved_keys(old_keys, where)
    return out


def _old_name(new: str) -> str:
    return next(old for old, moved in MOVED_KEYS.items() if moved == new)


def _rename_tree(tree: dict[str, Any], where: str) -> dict[str, Any]:
    """A YAML config mapping with moved keys under their new names (warns once for the file)."""
    flat = flatten(tree)
    if not any(k in MOVED_KEYS for k in flat):
        return tree
    return unflatten(rename_moved_keys(flat, where))


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}` (the inverse of `flatten`)."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *path, key = dotted.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return tree


# Keys that no longer exist: (the value that meant today's behaviour, what to do instead).
_REMOVED_KEYS = {
    "split.mode": (
        "separate",
        "the split head is always a separate linear layer on the backbone tokens (DESIGN §1.5); "
        "splitting the base method's own head output was never implemented",
    ),
}


def _removed_key(dotted: str, value: Any) -> None:
    """A removed key: ignored with a warning when it asks for today's behaviour, else an error."""
    import warnings

    kept, why = _REMOVED_KEYS[dotted]
    if value == kept:
        warnings.warn(
            f"config key {dotted!r} was removed and is ignored ({why}); delete it from the file",
            FutureWarning,
            stacklevel=4,
        )
        return
    raise ConfigError(f"config key {dotted!r} was removed: {why}; got {dotted}={value!r}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c.d=[0.1,0.5]"]` -> {"a.b": 1, "c.d": [0.1, 0.5]} (values parsed as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return parsed


# A config file may name other files it builds on: `base: other.yaml` (or a list, applied in
# order), resolved relative to the file itself; the file's own keys win, section by section.
BASE_KEY = "base"


def read_config_tree(path: str | Path) -> dict[str, Any]:
    """The YAML mapping at `path` with its `base:` files merged under it (the key removed)."""
    return _read_tree(Path(path), ())


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `{BASE_KEY}:` files include each other ({cycle})")
    if not path.is_file():
        raise MissingPathError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    bases = tree.pop(BASE_KEY, None)
    tree = _rename_tree(tree, str(path))
    if bases is None:
        return tree
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{path}: `{BASE_KEY}:` must be a file name or a list of file names, got {bases!r}"
        )
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise MissingPathError(f"{path}: {BASE_KEY}: {base} not found (looked at {base_path})")
        merged = _merge_trees(merged, _read_tree(base_path, (*chain, resolved)))
    return _merge_trees(merged, tree)


def _merge_trees(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`under` updated by `over`, recursively for mappings (new dict; inputs untouched)."""
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Set the `key=value` overrides on `cfg` in place (no validation); returns `cfg`. Moved
    keys (MOVED_KEYS) set their new keys, with one FutureWarning for them all."""
    parsed = parse_overrides(overrides)
    old_keys = [k for k in parsed if k in MOVED_KEYS]
    warn_moved_keys(old_keys, "overrides")
    for key, value in parsed.items():
        set_value(cfg, MOVED_KEYS.get(key, key), value)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (if any, with its `base:` files), then `key=value`
    overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        tree = read_config_tree(path)
        flat = flatten(tree)
        if _predates_recipe_keys(tree):
            for key, value in LEGACY_DEFAULTS.items():
                if value == _ARCH_OWN:
                    value = ARCH_LAYERSCALE.get(str(flat.get("model.arch", cfg.model.arch)), 0.0)
                flat.setdefault(key, value)
        for key, value in flat.items():
            try:
                set_value(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    apply_overrides(cfg, overrides or [])
    resolve_recipe_defaults(cfg)
    validate(cfg)
    return cfg


def _predates_recipe_keys(tree: dict[str, Any]) -> bool:
    """True for a run config saved (resolved, every key present) before the recipe keys
    existed: its unset recipe keys take LEGACY_DEFAULTS, i.e. what the run trained with."""
    train = tree.get("train")
    saved = set(tree) >= {"run", "data", "model", "method", "train", "checkpoint", "tracking"}
    return (
        saved
        and isinstance(train, dict)
        and {"momentum_teacher_end", "max_nonfinite_steps", "log_every"} <= set(train)
        and "lr_scaling" not in train
    )


def resolve_recipe_defaults(cfg: Config) -> None:
    """Fill the recipe keys left unset (None, or "" for strings) with the method's defaults
    (its spec's `resolved_recipe()`); an unknown method is left to `validate`."""
    if cfg.method.name not in method_names():
        return
    for dotted, value in get_spec(cfg.method.name).resolved_recipe().items():
        section_name, key = dotted.split(".")
        section = getattr(cfg, section_name)
        if getattr(section, key) in (None, ""):
            if value == _ARCH_OWN:
                value = ARCH_LAYERSCALE.get(cfg.model.arch, 0.0)
            setattr(section, key, value)


# ---- value checks ---------------------------------------------------------------------------
# One row per key whose wrong value is meaningless: (key, test, what the value must be), with the
# rules of equirecon/checks.py. A value of None (the method's, arch's or data's own default) is
# not checked. The keys of the eval task sections (`eval.<task>.*`) are checked by the rules of
# their task specs (equirecon/eval_tasks/<task>.py; `value_checks()` lists both). Cross-field
# checks are in `validate` below. Choices kept in step with their registries
# (tests/equirecon checks them): recon.transform (data_pipeline/transforms), eval.pooling
# (evals/features.py).
POOLINGS = ("cls", "cls+mean", "mean")


# Keys whose valid values are the names in a registry that a higher layer owns (data backends
# in data_pipeline, parallel strategies in pretrain): the registry hands its names (and the
# config checks of each name, if any) to the core when it is imported (`register_choices`), so
# the core never imports above itself. Until then (a script that loads a config without that
# layer) the key is checked where it is used: the registry's own lookup raises the same error.
_CHOICES: dict[str, Callable[[], list[str]]] = {}
# key -> the checks of a resolved config that selects a given name (`validate` runs them)
_CHOICE_CHECKS: dict[str, Callable[[Any], Iterable[Callable[[Config], None]]]] = {}


def register_choices(
    key: str,
    names: Callable[[], list[str]],
    checks: Callable[[Any], Iterable[Callable[[Config], None]]] | None = None,
) -> None:
    """`key`'s valid values are `names()` from now on (called by the registry that owns them);
    `checks(value)`: the checks of a config whose `key` is `value` (each raises ConfigError)."""
    _CHOICES[key] = names
    if checks is not None:
        _CHOICE_CHECKS[key] = checks


def _registry_choices(key: str) -> Rule:
    def test(v: Any) -> bool:
        names = _CHOICES.get(key)
        return names is None or v in names()

    def expected() -> str:
        return f"one of {_CHOICES[key]()}" if key in _CHOICES else "a registered name"

    return test, expected


def _task_list(v: str) -> bool:
    names = split_names(v)
    return bool(names) and (names == ["all"] or set(names) <= set(task_names()))


VALUE_CHECKS: tuple[tuple[str, Rule], ...] = (
    ("method.name", registered(method_names)),
    ("data.backend", _registry_choices("data.backend")),
    ("data.num_workers", NON_NEGATIVE),
    ("data.global_size", POSITIVE),
    ("data.local_size", POSITIVE),
    ("data.n_local", NON_NEGATIVE),
    ("data.global_scale", open_pair(0, 1)),
    ("data.local_scale", open_pair(0, 1)),
    ("data.augmentations", one_of(AUGMENTATION_MODES)),
    ("model.patch_size", POSITIVE),
    ("model.embed_dim", POSITIVE),
    ("model.depth", POSITIVE),
    ("model.num_heads", POSITIVE),
    ("model.drop_path", within(0, 1, high_open=True)),
    ("model.layerscale", NON_NEGATIVE),
    ("model.num_registers", NON_NEGATIVE),
    ("model.attention", one_of(("sdpa", "math"))),
    ("method.head_out_dim", POSITIVE),
    ("method.head_hidden_dim", POSITIVE),
    ("method.head_bottleneck_dim", POSITIVE),
    ("method.student_temp", gt(0)),
    ("method.teacher_temp", gt(0)),
    ("method.warmup_teacher_temp", gt(0)),
    ("method.warmup_teacher_temp_steps", NON_NEGATIVE),
    ("method.dino_weight", NON_NEGATIVE),
    ("method.ibot_weight", NON_NEGATIVE),
    ("method.koleo_weight", NON_NEGATIVE),
    ("method.mask_prob", PROBABILITY),
    ("method.mask_ratio", pair(0, 1)),
    ("method.center_momentum", within(0, 1, high_open=True)),
    ("method.centering", one_of(CENTERINGS)),
    ("method.expander_dim", POSITIVE),
    ("method.vicreg_sim_weight", NON_NEGATIVE),
    ("method.vicreg_var_weight", NON_NEGATIVE),
    ("method.vicreg_cov_weight", NON_NEGATIVE),
    ("method.projector_dim", POSITIVE),
    ("method.projector_hidden_dim", POSITIVE),
    ("method.simclr_temperature", gt(0)),
    ("recon.lambda", NON_NEGATIVE),
    ("recon.k", POSITIVE),
    ("recon.transform", one_of(TRANSFORMS)),
    ("recon.d_equi", POSITIVE),
    ("recon.decoder_channels", POSITIVE),
    ("recon.decoder_resize", one_of(("after_conv", "before_conv"))),
    ("recon.decoder_kernel", ((lambda v: v >= 1 and v % 2 == 1), "an odd integer >= 1")),
    ("recon.log_images_every", NON_NEGATIVE),
    ("split.d_patch", ge(2)),
    ("train.max_steps", POSITIVE),
    ("train.batch_size", POSITIVE),
    ("train.strategy", _registry_choices("train.strategy")),
    ("train.zero_stage", one_of((1, 2, 3))),
    ("train.compile_backend", (lambda v: bool(v.strip()), "a torch.compile backend name")),
    ("train.precision", one_of(("fp32", "bf16"))),
    ("train.base_lr", gt(0)),
    ("train.lr_scaling", one_of(LR_SCALING_RULES)),
    ("train.layerwise_decay", UNIT),
    ("train.patch_embed_lr_mult", NON_NEGATIVE),
    ("train.freeze_last_layer_steps", NON_NEGATIVE),
    ("train.min_lr", NON_NEGATIVE),
    ("train.warmup_steps", NON_NEGATIVE),
    ("train.weight_decay", NON_NEGATIVE),
    ("train.weight_decay_end", NON_NEGATIVE),
    ("train.momentum_teacher", PROBABILITY),
    ("train.momentum_teacher_end", PROBABILITY),
    ("train.clip_grad", NON_NEGATIVE),
    ("train.log_every", POSITIVE),
    ("train.max_nonfinite_steps", POSITIVE),
    ("checkpoint.every_steps", POSITIVE),
    ("checkpoint.keep", POSITIVE),
    ("checkpoint.keep_every", NON_NEGATIVE),
    ("tracking.experiment", (lambda v: bool(v.strip()), "a non-empty experiment name")),
    ("eval.tasks", (_task_list, lambda: f"a comma-separated list of {task_names()}, or all")),
    ("eval.img_size", POSITIVE),
    ("eval.pooling", one_of(POOLINGS)),
    ("eval.batch_size", POSITIVE),
    ("eval.feature_layers", POSITIVE),
    ("eval.labelled_train_images", NON_NEGATIVE),
    ("eval.labelled_test_images", NON_NEGATIVE),
    ("eval.watch_poll_seconds", gt(0)),
    ("eval.watch_timeout_min", POSITIVE),
)


def value_checks() -> list[tuple[str, Rule]]:
    """Every (key, rule) row: VALUE_CHECKS, then each eval task's (`eval.<task>.<key>`)."""
    return [*VALUE_CHECKS, *(row for spec in task_specs() for row in spec.value_checks())]


# The patch size of an arch whose name does not say it (`model.patch_size` null).
_ARCH_PATCH = {"vit_tiny": 16}


def arch_patch_size(cfg: Config) -> int | None:
    """`model.patch_size`, else the arch's own (from its name, e.g. vit_large_patch14), else None."""
    if cfg.model.patch_size is not None:
        return cfg.model.patch_size
    if cfg.model.arch in _ARCH_PATCH:
        return _ARCH_PATCH[cfg.model.arch]
    match = re.search(r"patch(\d+)", cfg.model.arch)
    return int(match.group(1)) if match else None


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: must be {expected}")


def validate(cfg: Config) -> None:
    """Value checks (VALUE_CHECKS), then cross-field checks; errors name the key and the value."""
    values = flat_dict(cfg)
    for key, (test, expected) in value_checks():
        value = values[key]
        if value is not None and not test(value):
            raise _bad(key, value, expected() if callable(expected) else expected)
    if cfg.recon.enabled and not 0 < cfg.d_equi < cfg.d_patch:
        raise ConfigError(
            f"recon.d_equi={cfg.d_equi}: need 0 < recon.d_equi < split.d_patch ({cfg.d_patch})"
        )
    patch = arch_patch_size(cfg)
    if patch is not None:
        for key in ("data.global_size", "eval.img_size"):
            if values[key] is not None and values[key] % patch:
                raise _bad(key, values[key], f"a multiple of the patch size {patch}")
    m = cfg.model
    if m.embed_dim is not None and m.num_heads is not None and m.embed_dim % m.num_heads:
        raise _bad("model.embed_dim", m.embed_dim, f"a multiple of model.num_heads ({m.num_heads})")
    spec = get_spec(cfg.method.name)
    if cfg.train.batch_size < spec.min_batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size}: method.name={cfg.method.name} needs "
            f"train.batch_size >= {spec.min_batch_size} (batch statistics)"
        )
    for check in spec.checks:
        check(cfg)
    for key, checks_of in _CHOICE_CHECKS.items():
        for check in checks_of(values[key]):
            check(cfg)
    if cfg.recon.lam > 5:
        import warnings

        warnings.warn(
            f"recon.lambda={cfg.recon.lam} > 5 is reported unstable (paper)", stacklevel=2
        )


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict with config-key names (`recon.lambda`, lists for tuples)."""
    return _section_dict(cfg)


def _section_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        if dataclasses.is_dataclass(v):  # a section (Config's, eval's task sections)
            v = _section_dict(v)
        out[_REVERSE_ALIASES.get(f.name, f.name)] = list(v) if isinstance(v, tuple) else v
    return out


def flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
