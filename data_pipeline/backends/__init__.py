"""Data backends: the name in ``data.backend`` -> the factory of a run's training loader.

A backend is one module in this package that calls
:func:`~data_pipeline.backends.base.register_backend` when imported; importing this package
imports every module in it, so adding a backend is one new file here (plus its tests). The
trainer (`pretrain.train.build_loader`), the config check of ``data.backend`` and the CLI help
read the names from here. Backend modules import their reader (torch, DALI) inside the factory,
so reading the names stays cheap.
"""

from __future__ import annotations

from data_pipeline.backends.base import (
    DataBackend,
    LoaderFactory,
    backend_names,
    get_backend,
    register_backend,
)
from equirecon.registry import import_submodules

import_submodules(__name__, __path__)  # every backend module registers itself

__all__ = ["DataBackend", "LoaderFactory", "backend_names", "get_backend", "register_backend"]
