"""Base SSL methods as a registry (`method.name`): dinov2, ibot, vicreg, simclr, ...

Each method is one module here that registers its class with ``@register_method(<name>)``; its
config defaults are the torch-free spec of the same name in ``equirecon/methods/<name>.py``.
Every module of this package is imported here, so a new method needs no edit of this file.
"""

from equirecon.registry import import_submodules
from pretrain.methods.base import SSLMethod, StepOutput, get_method, list_methods, register_method

__all__ = [
    "SSLMethod",
    "StepOutput",
    "build_method",
    "get_method",
    "list_methods",
    "register_method",
]

import_submodules(__name__, __path__)  # every method module registers itself


def build_method(cfg):  # noqa: ANN001, ANN201 - Config -> SSLMethod
    """Instantiate the method named by `cfg.method.name`."""
    return get_method(cfg.method.name)(cfg)
