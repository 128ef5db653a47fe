"""The value checks of a config: one rule per key (`VALUE_CHECKS`; `value_checks()` adds the eval
tasks' own), the keys whose valid names a higher layer's registry hands in (`register_choices`),
and `validate` (those rules, then the cross-field checks).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from equirecon.checks import (
    FILLS,
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
from equirecon.config_schema import (
    AUGMENTATION_MODES,
    CENTERINGS,
    INIT_FORMATS,
    LR_SCALING_RULES,
    Config,
    flat_dict,
)
from equirecon.errors import ConfigError
from equirecon.eval_tasks import task_names, task_specs
from equirecon.methods import get_spec, method_names

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
    ("model.init_format", one_of(INIT_FORMATS)),
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
    ("recon.theta_head_weight", NON_NEGATIVE),
    ("recon.fill", one_of(FILLS)),
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
    ("train.freeze_backbone_steps", NON_NEGATIVE),
    ("train.backbone_lr_scale", UNIT),
    ("train.backbone_warmup_steps", NON_NEGATIVE),
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


def _check_backbone_schedule(cfg: Config) -> None:
    """The backbone must train for at least one step, and its warm-up end by the last step."""
    tr = cfg.train
    freeze, warmup, total = tr.freeze_backbone_steps, tr.backbone_warmup_steps, tr.max_steps
    if freeze >= total:
        raise ConfigError(
            f"train.freeze_backbone_steps={freeze}: must be < train.max_steps ({total}), or the "
            "backbone never trains"
        )
    if freeze + warmup > total:
        raise ConfigError(
            f"train.backbone_warmup_steps={warmup}: the backbone's warm-up from step {freeze} "
            f"(train.freeze_backbone_steps) must end by train.max_steps ({total})"
        )


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
    if cfg.recon.theta_head_weight > 0 and (
        not cfg.recon.enabled or not get_spec(cfg.method.name).teacher_free
    ):
        raise ConfigError(
            f"recon.theta_head_weight={cfg.recon.theta_head_weight}: the θ-regression control "
            f"needs recon.enabled=true (g_θ) and a teacher-free method (vicreg, simclr), "
            f"got recon.enabled={cfg.recon.enabled}, method.name={cfg.method.name}"
        )
    if cfg.recon.fill != "zero" and not cfg.recon.enabled:
        raise ConfigError(
            f"recon.fill={cfg.recon.fill}: hiding g_θ's fill needs g (recon.enabled=true); "
            "without g no view has a fill (leave recon.fill=zero)"
        )
    _check_backbone_schedule(cfg)
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
