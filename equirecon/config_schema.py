"""The config schema: the sections of a run's config as typed dataclasses (`Config` and its
sections; `EvalConfig` is built from the registered eval tasks), the constants of their choices,
and the config-key view of a config (`to_dict`, `flat_dict`; key aliases like `recon.lambda`).

Reading files and overrides is in `equirecon.config_files`, the value checks are in
`equirecon.config_checks`, loading is in `equirecon.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from equirecon.config_files import flatten
from equirecon.eval_tasks import task_names, task_specs
from equirecon.methods import get_spec

# data.augmentations: the base augmentations ("all") or only random rotations ("rot").
AUGMENTATION_MODES = ("all", "rot")

CENTERINGS = ("sinkhorn_knopp", "centering")  # method.centering (DINOv2 teacher targets)

# model.init_format: the file formats of pretrain/init_weights.py (FORMATS; tests keep the two
# in step), or auto (the first format that claims the path). dinov3 is recognized and refused
# (RoPE: our backbone has absolute position embeddings).
INIT_FORMATS = ("auto", "equirecon", "dinov3", "ibot", "dinov2", "timm")

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
    # Continued pretraining: a backbone file loaded into the student and teacher backbones at the
    # start of a fresh run (never on resume). "": random init. pretrain/init_weights.py
    init: str = ""
    init_format: str = "auto"  # auto | equirecon | ibot | dinov2 | timm


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
    # The method-effect study's positive control (issue #25), not part of the method: weight of
    # a head that regresses θ (normalized to [-1, 1]) from the backbone's global vectors
    # [CLS; mean patch] of u and g_θ(u) (an extra backbone pass over u), added to the loss, so
    # that training must put θ into the global vector. 0: off. VICReg/SimCLR only.
    theta_head_weight: float = 0.0
    # What the zero fill of a geometric g shows in training (issue #25 point 4): "zero" (the
    # paper: black corners that tell θ from v2 alone); "disk": v1, v2, u and the targets u_k
    # are masked to the inscribed disk, so θ can be told only from the content.
    # data_pipeline/transforms/fill.py
    fill: str = "zero"


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
    # Continued pretraining (model.init; issue #26): the student backbone's lr is 0 for the first
    # `freeze_backbone_steps` steps (fresh heads learn first; the backbone and the teacher's copy
    # stay bit-identical), then backbone_lr_scale × the scheduled lr, ramped linearly over
    # `backbone_warmup_steps` from the unfreeze step; layer-wise decay applies on top. Heads keep
    # the full lr. pretrain/schedules.py
    freeze_backbone_steps: int = 0
    backbone_lr_scale: float = 1.0
    backbone_warmup_steps: int = 0
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


ALIASES = {"lambda": "lam"}  # config key -> attribute
REVERSE_ALIASES = {v: k for k, v in ALIASES.items()}


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict with config-key names (`recon.lambda`, lists for tuples)."""
    return _section_dict(cfg)


def _section_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        if dataclasses.is_dataclass(v):  # a section (Config's, eval's task sections)
            v = _section_dict(v)
        out[REVERSE_ALIASES.get(f.name, f.name)] = list(v) if isinstance(v, tuple) else v
    return out


def flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))
