"""One config system: typed defaults (dataclasses) + a YAML delta + `key=value` overrides.

Unknown keys are errors that name the key and the valid choices; the resolved config is written
next to every run (`RUN_DIR/config.yaml`) and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# data.augmentations: the base augmentations ("all") or only random rotations ("rot").
AUGMENTATION_MODES = ("all", "rot")

# Per-method defaults of the split head (DESIGN §1.5).
SPLIT_DEFAULTS = {
    "dinov2": (2048, 512),
    "ibot": (8192, 2048),
    "vicreg": (512, 256),
    "simclr": (512, 256),
}


@dataclass
class RunConfig:
    dir: str = "runs/default"
    name: str = ""  # MLflow run name; defaults to the run directory's name


@dataclass
class DataConfig:
    path: str = "data/demo"
    backend: str = (
        "torch"  # torch | dali | synthetic (seeded random crops: engine tests, benchmarks)
    )
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
    drop_path_uniform: bool = False
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
    # iBOT: momentum of the running centers of the teacher's CLS and patch logits.
    center_momentum: float = 0.9
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
    log_images_every: int = 0  # 0: only at the end of training


@dataclass
class SplitConfig:
    d_patch: int | None = None  # None: the method's default
    mode: str = "separate"  # separate: a linear split head on the backbone tokens


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 64  # per rank
    strategy: str = "single"  # single | ddp | fsdp2 | deepspeed (pretrain/parallel.py)
    zero_stage: int = 2  # DeepSpeed ZeRO stage 1 | 2 | 3
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile each transformer block
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no codegen, for tests)
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    base_lr: float = 4e-3  # lr = base_lr * global_batch / 256 (DESIGN §1.9)
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
    uri: str = ""  # "" -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the repository root
    experiment: str = "equirecon"
    enabled: bool = True


@dataclass
class EvalConfig:
    """The frozen-backbone evaluations (evals/): which tasks, on what data, at what size.

    The defaults are a quick pass sized for every checkpoint (about 2 minutes for all five task
    families on the CPU demo model); raise the image counts and epochs for final numbers.
    """

    data: str = ""  # "" -> data.path
    tasks: str = "equivariance,knn,linear,homography,segmentation"  # or "all"
    img_size: int | None = None  # None: data.global_size
    seed: int = 0  # θ draws, splits, head initializations, batch order
    pooling: str = "cls+mean"  # global feature: cls | cls+mean | mean
    batch_size: int = 256  # images per feature-extraction batch
    # Equivariance R² (natural subset): transforms, images, views, the MLP h.
    equivariance_transforms: str = "rotation,translation,se2,color,blur"
    # What h reads of f(I) and f(g(I)): "global" = the eval.pooling vector ([CLS; mean patch]),
    # the paper's / SIE's protocol; "grid" = [CLS; patch tokens average-pooled to an
    # equivariance_grid² grid, flattened] (0: the full patch grid); "equi" = the split head's
    # z_equi slice, pooled as eval.pooling (runs with recon on).
    equivariance_features: str = "global"
    equivariance_grid: int = 2
    # How I and g(I) are made: "context" = g applied to a larger image, centre crop (no fill,
    # nothing but content tells θ); "disk" = both masked to the inscribed disk; "full" = g on
    # the image with its zero fill visible (the fill's shape alone gives θ away).
    equivariance_view: str = "context"
    r2_repeats: int = 1  # fits of h per transform (R² = their mean; std logged as *_r2_std)
    max_train_images: int = 768
    max_test_images: int = 256
    r2_views: int = 2
    r2_epochs: int = 20
    r2_hidden: int = 1024
    # kNN and linear probe (labelled subset; val used as test). 0: every image.
    labelled_train_images: int = 2000
    labelled_test_images: int = 1000
    knn_k: int = 20
    linear_lrs: str = "0.001,0.01,0.1,1.0"
    linear_epochs: int = 50
    linear_val_fraction: float = 0.1
    # Homography (natural subset; val photos held out); rho: corner offset / image side.
    homography_train_images: int = 400
    homography_test_images: int = 200
    homography_views: int = 4
    homography_rho: float = 0.25
    homography_epochs: int = 15
    homography_channels: int = 32
    homography_lr: float = 0.001
    # Linear segmentation (segmentation subset). 0: every scene.
    segmentation_train_images: int = 1200
    segmentation_test_images: int = 400
    segmentation_epochs: int = 20
    segmentation_lr: float = 0.01
    # Watch RUN_DIR/checkpoints while pretraining (rank 0 starts `equirecon eval watch`).
    watch: bool = False
    watch_poll_seconds: float = 30.0
    watch_timeout_min: int = 240  # per eval job


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
        return self.split.d_patch or SPLIT_DEFAULTS[self.method.name][0]

    @property
    def d_equi(self) -> int:
        return self.recon.d_equi or SPLIT_DEFAULTS[self.method.name][1]


_ALIASES = {"lambda": "lam"}  # config key -> attribute
_REVERSE_ALIASES = {v: k for k, v in _ALIASES.items()}


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


def _convert(value: Any, current: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the type of the default `current`."""
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
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str):
        return "" if value is None else str(value)
    if current is None:  # Optional fields: int | None
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected an integer or null, got {value!r}")
    raise ConfigError(f"{key}: expected {type(current).__name__}, got {value!r}")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {dotted!r} must be 'section.key'")
    section_name, key = parts
    section_fields = {f.name for f in dataclasses.fields(cfg)}
    if section_name not in section_fields:
        raise ConfigError(
            f"unknown config section {section_name!r} in {dotted!r}; sections: {sorted(section_fields)}"
        )
    section = getattr(cfg, section_name)
    attr = _ALIASES.get(key, key)
    names = {f.name for f in dataclasses.fields(section)}
    if attr not in names:
        valid = sorted(_REVERSE_ALIASES.get(n, n) for n in names)
        raise ConfigError(f"unknown config key {dotted!r}; valid keys in {section_name!r}: {valid}")
    setattr(section, attr, _convert(value, getattr(section, attr), dotted))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for key, value in _flatten(tree).items():
            try:
                _set(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    for key, value in parse_overrides(overrides or []).items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks with actionable messages."""
    if cfg.method.name not in SPLIT_DEFAULTS:
        raise ConfigError(
            f"method.name={cfg.method.name!r}; choose one of {sorted(SPLIT_DEFAULTS)}"
        )
    if cfg.data.augmentations not in AUGMENTATION_MODES:
        raise ConfigError(
            f"data.augmentations={cfg.data.augmentations!r}; choose one of {AUGMENTATION_MODES}"
        )
    m = cfg.method
    if not 0.0 <= m.center_momentum < 1.0:
        raise ConfigError(f"method.center_momentum must be in [0, 1), got {m.center_momentum}")
    if m.simclr_temperature <= 0:
        raise ConfigError(f"method.simclr_temperature must be > 0, got {m.simclr_temperature}")
    if min(m.expander_dim, m.projector_dim, m.projector_hidden_dim) < 1:
        raise ConfigError(
            "method.expander_dim, method.projector_dim and method.projector_hidden_dim must be >= 1"
        )
    if m.name in ("vicreg", "simclr") and cfg.train.batch_size < 2:
        raise ConfigError(
            f"method.name={m.name} needs train.batch_size >= 2 (batch statistics), "
            f"got {cfg.train.batch_size}"
        )
    if cfg.data.backend not in ("torch", "dali", "synthetic"):
        raise ConfigError(f"data.backend={cfg.data.backend!r}; choose torch, dali or synthetic")
    if cfg.train.zero_stage not in (1, 2, 3):
        raise ConfigError(f"train.zero_stage={cfg.train.zero_stage}; choose 1, 2 or 3")
    if cfg.checkpoint.keep < 1 or cfg.checkpoint.keep_every < 0:
        raise ConfigError("checkpoint.keep must be >= 1 and checkpoint.keep_every >= 0")
    if cfg.train.strategy not in ("single", "ddp", "fsdp2", "deepspeed"):
        raise ConfigError(
            f"train.strategy={cfg.train.strategy!r}; choose single, ddp, fsdp2 or deepspeed"
        )
    if cfg.train.precision not in ("fp32", "bf16"):
        raise ConfigError(f"train.precision={cfg.train.precision!r}; choose fp32 or bf16")
    if cfg.recon.k < 1:
        raise ConfigError(f"recon.k must be >= 1, got {cfg.recon.k}")
    if cfg.recon.decoder_resize not in ("after_conv", "before_conv"):
        raise ConfigError(
            f"recon.decoder_resize={cfg.recon.decoder_resize!r}; choose after_conv or before_conv"
        )
    if cfg.recon.enabled and not 0 < cfg.d_equi < cfg.d_patch:
        raise ConfigError(f"need 0 < recon.d_equi ({cfg.d_equi}) < split.d_patch ({cfg.d_patch})")
    if cfg.recon.lam > 5:
        import warnings

        warnings.warn(
            f"recon.lambda={cfg.recon.lam} > 5 is reported unstable (paper)", stacklevel=2
        )
    if cfg.train.max_steps < 1 or cfg.train.batch_size < 1:
        raise ConfigError("train.max_steps and train.batch_size must be >= 1")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict with config-key names (`recon.lambda`, lists for tuples)."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        values = {}
        for f in dataclasses.fields(getattr(cfg, section.name)):
            v = getattr(getattr(cfg, section.name), f.name)
            values[_REVERSE_ALIASES.get(f.name, f.name)] = list(v) if isinstance(v, tuple) else v
        out[section.name] = values
    return out


def flat_dict(cfg: Config) -> dict[str, Any]:
    return _flatten(to_dict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
