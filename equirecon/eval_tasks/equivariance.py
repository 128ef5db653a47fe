"""The equivariance R² task's settings, `eval.equivariance.*` (torch: evals/tasks/equivariance.py).

On the images of one subset of the dataset root (`subset`, default the natural photos): for
each transform g, an MLP h fitted to read θ off (f(I), f(g_θ(I))) (evals/equivariance.py).

Its probe label (`settings_probe`, see `equirecon.eval_tasks`: "Probe settings") is
`<view>/<features>`, features `global`, `equi` or `grid<N>` (features=grid, grid=N), followed by
`/<subset>` where the subset is not `natural` (`context/global/labelled`): every R² is also
`eval/equivariance/<label>/<transform>_r2`, and an eval with another view, features or subset
than the run config's writes `evals/step_X.<label with - for />.json`
(`step_X.full-global.json`, `step_X.full-global-labelled.json`).
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
# The subsets of a dataset root whose images the probe may read (every image subset a task reads:
# `EvalTaskSpec.data`, data_pipeline.formats.MAKE_SUBSET; tests/equirecon/test_value_checks.py).
EQUIVARIANCE_SUBSETS = ("natural", "labelled", "segmentation", "depth")


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
    # Whose images I are (train and val split): "natural" (photos); "labelled", "segmentation",
    # "depth": those subsets' images (labels unused), e.g. the segmentation scenes' upright
    # items, whose content tells the rotation where photo crops have no up or down (the demo).
    subset: str = "natural"
    repeats: int = 1  # fits of h per transform (R² = their mean; std logged as *_r2_std)
    train_images: int = 768
    test_images: int = 256
    views_per_image: int = 2  # θ draws per train image
    epochs: int = 20
    hidden: int = 1024  # width of h


def settings_probe(settings: EquivarianceSettings | Mapping[str, Any]) -> str | None:
    """`<view>/<features>[/<subset>]` of `eval.equivariance` settings, e.g. "context/global",
    "full/grid2" (grid0: the full patch grid), "context/global/labelled" (the subset only where
    it is not the default, so labels of natural-image probes stay as they were); None for a dict
    (as saved) that records no view (written before views existed)."""
    if isinstance(settings, Mapping):
        if not settings.get("view"):
            return None
        view = settings["view"]
        features = settings.get("features") or EquivarianceSettings.features
        grid = settings.get("grid")
        subset = settings.get("subset") or EquivarianceSettings.subset
    else:
        view, features, grid = settings.view, settings.features, settings.grid
        subset = settings.subset
    if features == "grid":
        features = f"grid{int(grid if grid is not None else EquivarianceSettings.grid)}"
    label = f"{view}/{features}"
    return label if subset == EquivarianceSettings.subset else f"{label}/{subset}"


def settings_data(settings: EquivarianceSettings) -> tuple[str, ...]:
    """The subset of the dataset root the probe reads (`eval.equivariance.subset`)."""
    return (settings.subset,)


SPEC = register_task_spec(
    EvalTaskSpec(
        name="equivariance",
        settings=EquivarianceSettings,
        checks={
            "transforms": name_list(TRANSFORMS),
            "features": one_of(EQUIVARIANCE_FEATURES),
            "grid": NON_NEGATIVE,
            "view": one_of(EQUIVARIANCE_VIEWS),
            "subset": one_of(EQUIVARIANCE_SUBSETS),
            "repeats": POSITIVE,
            "train_images": POSITIVE,
            "test_images": POSITIVE,
            "views_per_image": POSITIVE,
            "epochs": POSITIVE,
            "hidden": POSITIVE,
        },
        order=10,
        data=("natural",),
        data_of=settings_data,
        summary="R² of an MLP reading each transform's θ off f(I), f(g(I)): "
        "eval/equivariance/[<view>/<features>[/<subset>]/]*_r2",
        probe=settings_probe,
    )
)
