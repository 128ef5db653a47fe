"""Reading config files: a file's YAML tree with its `base:` files (`read_config_tree`), `key=value`
overrides (`parse_overrides`), nested <-> dotted keys (`flatten`, `unflatten`), and the keys that
were renamed (`MOVED_KEYS`: read under their new names, with a FutureWarning) or removed
(`REMOVED_KEYS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from equirecon.errors import ConfigError, MissingPathError

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
REMOVED_KEYS = {
    "split.mode": (
        "separate",
        "the split head is always a separate linear layer on the backbone tokens (DESIGN §1.5); "
        "splitting the base method's own head output was never implemented",
    ),
}


def removed_key(dotted: str, value: Any) -> None:
    """A removed key: ignored with a warning when it asks for today's behaviour, else an error."""
    import warnings

    kept, why = REMOVED_KEYS[dotted]
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
