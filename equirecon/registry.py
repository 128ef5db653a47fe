"""Registries that fill themselves: a package whose modules each register one entry (methods,
eval tasks, data backends, parallel strategies) imports them all with `import_submodules`, so
adding an entry is adding a file. Torch-free."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_submodules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of `package` (its `__path__` is `path`) in name order, except private
    ones (`_x`); returns their names. Call it at the end of the package's `__init__`."""
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)))
    names = [n for n in names if not n.startswith("_")]
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
