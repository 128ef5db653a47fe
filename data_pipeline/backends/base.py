"""The registry of data backends (see `data_pipeline.backends`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from equirecon.config import register_choices
from equirecon.errors import ConfigError

# (cfg: equirecon.config.Config, dist_info: launch.distributed.DistInfo, patch_size) -> a loader:
# an endless iterable of `data_pipeline.batch.Batch` on the CPU with state_dict() and
# load_state_dict() (and optionally a `stats` dict of skipped data).
LoaderFactory = Callable[[Any, Any, int], Any]


@dataclass(frozen=True)
class DataBackend:
    """A registered backend: its ``data.backend`` name, loader factory and one line of help."""

    name: str
    build: LoaderFactory
    help: str = ""


_BACKENDS: dict[str, DataBackend] = {}


def register_backend(name: str, build: LoaderFactory, help: str = "") -> DataBackend:
    """Adds the backend ``name`` (a ``data.backend`` value) whose loaders ``build`` makes.

    Raises:
        ValueError: ``name`` is registered already.
    """
    if name in _BACKENDS:
        raise ValueError(f"data backend {name!r} registered twice")
    backend = DataBackend(name, build, help)
    _BACKENDS[name] = backend
    return backend


def backend_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> DataBackend:
    """The backend registered as ``name``.

    Raises:
        ConfigError: no such backend; the message names ``data.backend`` and the choices.
    """
    if name not in _BACKENDS:
        raise ConfigError(f"data.backend={name!r}: must be one of {backend_names()}")
    return _BACKENDS[name]


# `validate` checks data.backend against these names (the core cannot import this layer).
register_choices("data.backend", backend_names)

__all__ = ["DataBackend", "LoaderFactory", "backend_names", "get_backend", "register_backend"]
