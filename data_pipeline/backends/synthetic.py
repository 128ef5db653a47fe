"""``data.backend=synthetic``: seeded random crops, no shards (`data_pipeline.synthetic`; engine
tests and benchmarks)."""

from __future__ import annotations

from typing import Any

from data_pipeline.backends.base import register_backend


def build_synthetic_loader(cfg: Any, dist_info: Any, patch_size: int) -> Any:
    """The synthetic loader of this rank for a run (``cfg``: :class:`equirecon.config.Config`)."""
    from data_pipeline.multicrop import multicrop_kwargs
    from data_pipeline.synthetic import SyntheticLoader

    return SyntheticLoader(
        **multicrop_kwargs(cfg, dist_info.rank, dist_info.world_size, patch_size)
    )


register_backend("synthetic", build_synthetic_loader, "seeded random crops, no data read")
