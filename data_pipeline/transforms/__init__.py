"""Device-side equivariance transformations g_θ (imports only torch)."""

from data_pipeline.transforms import geometric, photometric  # noqa: F401  (registration)
from data_pipeline.transforms.base import (
    EquiTransform,
    build_transform,
    list_transforms,
    register_transform,
)

__all__ = ["EquiTransform", "build_transform", "list_transforms", "register_transform"]
