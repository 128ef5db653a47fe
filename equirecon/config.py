"""One config system: typed defaults (dataclasses) + a YAML delta + `key=value` overrides.

Unknown keys are errors that name the key and the valid choices; the resolved config is written
next to every run (`RUN_DIR/config.yaml`) and logged to MLflow.

This module is the glue: setting and reading keys (`set_value`, `get_value`), `apply_overrides`,
`load_config`, the recipe defaults and `save_config`. The schema is in `equirecon.config_schema`,
reading config files in `equirecon.config_files`, the value checks in `equirecon.config_checks`;
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from equirecon.checks import TRANSFORMS
from equirecon.config_checks import (
    POOLINGS,
    VALUE_CHECKS,
    arch_patch_size,
    register_choices,
    validate,
    value_checks,
)
from equirecon.config_files import (
    BASE_KEY,
    MOVED_KEYS,
    REMOVED_KEYS,
    flatten,
    parse_overrides,
    read_config_tree,
    removed_key,
    rename_moved_keys,
    unflatten,
    warn_moved_keys,
)
from equirecon.config_schema import (
    ALIASES,
    ARCH_LAYERSCALE,
    AUGMENTATION_MODES,
    CENTERINGS,
    LR_SCALING_RULES,
    REVERSE_ALIASES,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    ReconConfig,
    RunConfig,
    SharedEvalConfig,
    SplitConfig,
    TrackingConfig,
    TrainConfig,
    flat_dict,
    to_dict,
)
from equirecon.errors import ConfigError, MissingPathError
from equirecon.methods import ARCH_OWN as _ARCH_OWN
from equirecon.methods import LEGACY_DEFAULTS, get_spec, method_names
from equirecon.rundir import write_text_atomic

# The public names of the config system before it was split in four modules, all importable from
# here as before.
__all__ = [
    "ARCH_LAYERSCALE",
    "AUGMENTATION_MODES",
    "BASE_KEY",
    "CENTERINGS",
    "LEGACY_DEFAULTS",
    "LR_SCALING_RULES",
    "MOVED_KEYS",
    "POOLINGS",
    "TRANSFORMS",
    "VALUE_CHECKS",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "MethodConfig",
    "MissingPathError",
    "ModelConfig",
    "ReconConfig",
    "RunConfig",
    "SharedEvalConfig",
    "SplitConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "arch_patch_size",
    "flat_dict",
    "flatten",
    "get_value",
    "load_config",
    "parse_overrides",
    "read_config_tree",
    "register_choices",
    "rename_moved_keys",
    "resolve_recipe_defaults",
    "save_config",
    "set_value",
    "to_dict",
    "unflatten",
    "validate",
    "value_checks",
    "warn_moved_keys",
]


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
    if dotted in REMOVED_KEYS:
        removed_key(dotted, value)
        return
    owner, owner_name = getattr(cfg, section_name), section_name
    if len(parts) == 3:  # a subsection: eval.<task>.<key>
        if parts[1] not in _subsections(owner):
            raise ConfigError(f"config key {dotted!r} must be 'section.key'")
        owner, owner_name = getattr(owner, parts[1]), f"{section_name}.{parts[1]}"
    key = parts[-1]
    attr = ALIASES.get(key, key)
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if attr not in fields:
        valid = sorted(REVERSE_ALIASES.get(n, n) for n in fields)
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
        obj = getattr(obj, ALIASES.get(part, part))
    return obj


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


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
