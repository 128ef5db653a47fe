"""``data.backend=dali``: the DALI reader (`data_pipeline.dali_reader`; needs the optional
``nvidia-dali`` package), ``mixed`` GPU decode where CUDA is available."""

from __future__ import annotations

from typing import Any

from data_pipeline.backends.base import register_backend


def build_dali_loader(cfg: Any, dist_info: Any, patch_size: int) -> Any:
    """The DALI reader for a run (``cfg``: :class:`equirecon.config.Config`).

    ``data.num_workers`` sets the DALI threads (at least 1). Decoding is ``mixed`` on this
    rank's GPU when CUDA is available, else on the CPU (``device_id=None``).
    """
    import torch

    from data_pipeline.dali_reader.loader import make_dali_loader  # optional: nvidia-dali
    from data_pipeline.multicrop import multicrop_kwargs

    data = cfg.data
    if getattr(data, "augmentations", "all") != "all":
        raise ValueError(
            f"data.augmentations={data.augmentations!r} is only implemented by "
            "data.backend=torch; use it, or data.augmentations=all"
        )
    device_id = None
    if torch.cuda.is_available():
        device = getattr(dist_info, "device", None)
        if device is not None and device.type == "cuda" and device.index is not None:
            device_id = device.index
        else:
            device_id = torch.cuda.current_device()
    return make_dali_loader(
        data.path,
        num_threads=data.num_workers,
        device_id=device_id,
        **multicrop_kwargs(cfg, dist_info.rank, dist_info.world_size, patch_size),
    )


register_backend("dali", build_dali_loader, "shards, DALI pipeline (optional nvidia-dali)")
