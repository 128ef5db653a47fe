"""Base SSL methods as torch-free specs: what the config knows of each `method.name`.

Every base method is declared twice under one name, in two files and nowhere else:

- ``equirecon/methods/<name>.py`` (this package, torch-free): a `MethodSpec` passed to
  `register_spec`: its split-head dims, its recipe (the values of the recipe keys a config leaves
  unset), its minimum per-rank batch and any checks of its own. `equirecon.config` reads it to
  resolve and validate a config, and the CLI to list the choices of ``method.name``;
- ``pretrain/methods/<name>.py``: the torch implementation, ``@register_method(<name>)``.

Both packages import each of their modules on import, so adding a method is adding these two
files (and their tests); `tests/equirecon/test_method_specs.py` checks the two registries agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from equirecon.registry import import_submodules

# Marker of a recipe value resolved through `equirecon.config.ARCH_LAYERSCALE` (the arch's own
# LayerScale): `model.layerscale` of a recipe without LayerScale of its own.
ARCH_OWN = "<arch's own>"

# What the recipe keys meant before they existed (2026-12): a saved run config
# (`RUN_DIR/config.yaml`) without them resolves to this, so older runs resume and evaluate as
# they were trained.
LEGACY_DEFAULTS: dict[str, Any] = {
    "train.lr_scaling": "linear",
    "train.layerwise_decay": 1.0,
    "train.patch_embed_lr_mult": 1.0,
    "train.freeze_last_layer_steps": 0,
    "train.weight_decay_tokens": False,
    "model.layerscale": ARCH_OWN,
    "method.norm_last_layer": True,
}

# The recipe of a method without one of its own (no prototype layer, no recipe options): the
# behaviour before the keys existed, stochastic depth rising over depth. A spec's `recipe`
# overrides some or all of these keys.
NO_RECIPE: Mapping[str, Any] = MappingProxyType(
    {**LEGACY_DEFAULTS, "model.drop_path_uniform": False}
)
RECIPE_KEYS = tuple(NO_RECIPE)  # the keys a recipe may set (null/"" in a config: the recipe's)


@dataclass(frozen=True)
class MethodSpec:
    """What the config system knows of one base method (no torch).

    Attributes:
        name: the `method.name` (the torch implementation registers under the same name).
        d_patch: default `split.d_patch` (the split head's width, DESIGN §1.5).
        d_equi: default `recon.d_equi` (its equivariant slice).
        recipe: values of the recipe keys (`RECIPE_KEYS`) that a config leaves unset, over
            `NO_RECIPE`; `ARCH_OWN` for `model.layerscale` is the arch's own.
        min_batch_size: smallest `train.batch_size` (per rank) the method trains with (2 for
            methods with batch statistics).
        checks: extra checks of a resolved config, each raising `ConfigError` naming the key.
        summary: one line for the CLI help.
        teacher_free: one shared encoder sees both views, no EMA teacher (VICReg, SimCLR); the
            torch class's `has_teacher` is its negation.
    """

    name: str
    d_patch: int
    d_equi: int
    recipe: Mapping[str, Any] = field(default_factory=dict)
    min_batch_size: int = 1
    checks: tuple[Callable[[Any], None], ...] = ()
    summary: str = ""
    teacher_free: bool = False

    def resolved_recipe(self) -> dict[str, Any]:
        """Every recipe key's value for this method (`NO_RECIPE` overridden by `recipe`)."""
        return {**NO_RECIPE, **self.recipe}


_SPECS: dict[str, MethodSpec] = {}


def register_spec(spec: MethodSpec) -> MethodSpec:
    """Add a method's spec under `spec.name` (once); returns it."""
    if not spec.name or not spec.name.isidentifier():
        raise ValueError(f"method spec name {spec.name!r}: must be a Python identifier")
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"method spec {spec.name!r} registered twice")
    unknown = sorted(set(spec.recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"method spec {spec.name!r}: {unknown} are not recipe keys {RECIPE_KEYS}")
    if not 0 < spec.d_equi < spec.d_patch:
        raise ValueError(f"method spec {spec.name!r}: need 0 < d_equi < d_patch")
    _SPECS[spec.name] = spec
    return spec


def method_names() -> list[str]:
    """The registered `method.name` choices, sorted."""
    return sorted(_SPECS)


def get_spec(name: str) -> MethodSpec:
    """The spec of `method.name` `name`; KeyError naming the valid choices if there is none."""
    if name not in _SPECS:
        raise KeyError(f"unknown method.name {name!r}; available: {method_names()}")
    return _SPECS[name]


import_submodules(__name__, __path__)  # every spec module registers itself

__all__ = [
    "ARCH_OWN",
    "LEGACY_DEFAULTS",
    "NO_RECIPE",
    "RECIPE_KEYS",
    "MethodSpec",
    "get_spec",
    "method_names",
    "register_spec",
]
