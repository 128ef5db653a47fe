"""The equivariance R² task's settings, `eval.equivariance.*` (torch: evals/tasks/equivariance.py).

On the natural subset: for each transform g, an MLP h fitted to read θ off (f(I), f(g_θ(I)))
(evals/equivariance.py).

Its probe label (`settings_probe`, see `equirecon.eval_tasks`: "Probe settings") is
`<view>/<features>`, features `global`, `equi` or `grid<N>` (features=grid, grid=N): every R² is
also `eval/equivariance/<view>/<features>/<transform>_r2`, and an eval with another view or
features than the run config's writes `evals/step_X.<view>-<features>.json`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from equirecon.checks import NON_NEGATIVE, POSITIVE, TRANSFORMS, name_list, one_of
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec

# What h reads: evals/features.py; how the two views are made: evals/equivariance.py
# (tests/equirecon/test_value_checks.py keeps them in step).
EQUIVARIANCE_FEATURES = ("global", "grid", "equi")
EQUIVARIANCE_VIEWS = ("context", "disk", "full")


@dataclass
class EquivarianceSettings:
    transforms: str = "rotation,translation,se2,color,blur"
    # What h reads of f(I) and f(g(I)): "global" = the eval.pooling vector ([CLS; mean patch]),
    # the paper's / SIE's protocol; "grid" = [CLS; patch tokens average-pooled to a
    # grid x grid grid, flattened] (0: the full patch grid); "equi" = the split head's z_equi
    # slice, pooled as eval.pooling (runs with recon on).
    features: str = "global"
    grid: int = 2
    # How I and g(I) are made: "context" = g applied to a larger image, centre crop (no fill,
    # nothing but content tells θ); "disk" = both masked to the inscribed disk; "full" = g on
    # the image with its zero fill visible (the fill's shape alone gives θ away).
    view: str = "context"
    repeats: int = 1  # fits of h per transform (R² = their mean; std logged as *_r2_std)
    train_images: int = 768
    test_images: int = 256
    views_per_image: int = 2  # θ draws per train image
    epochs: int = 20
    hidden: int = 1024  # width of h


def settings_probe(settings: EquivarianceSettings | Mapping[str, Any]) -> str | None:
    """`<view>/<features>` of `eval.equivariance` settings, e.g. "context/global", "full/grid2"
    (grid0: the full patch grid); None for a dict (as saved) that records no view (written
    before views existed)."""
    if isinstance(settings, Mapping):
        if not settings.get("view"):
            return None
        view = settings["view"]
        features = settings.get("features") or EquivarianceSettings.features
        grid = settings.get("grid")
    else:
        view, features, grid = settings.view, settings.features, settings.grid
    if features == "grid":
        features = f"grid{int(grid if grid is not None else EquivarianceSettings.grid)}"
    return f"{view}/{features}"


SPEC = register_task_spec(
    EvalTaskSpec(
        name="equivariance",
        settings=EquivarianceSettings,
        checks={
            "transforms": name_list(TRANSFORMS),
            "features": one_of(EQUIVARIANCE_FEATURES),
            "grid": NON_NEGATIVE,
            "view": one_of(EQUIVARIANCE_VIEWS),
            "repeats": POSITIVE,
            "train_images": POSITIVE,
            "test_images": POSITIVE,
            "views_per_image": POSITIVE,
            "epochs": POSITIVE,
            "hidden": POSITIVE,
        },
        order=10,
        data=("natural",),
        summary="R² of an MLP reading each transform's θ off f(I), f(g(I)): "
        "eval/equivariance/[<view>/<features>/]*_r2",
        probe=settings_probe,
    )
)
