"""Base SSL methods as a registry (`method.name`): dinov2, ibot, vicreg, simclr."""

from pretrain.methods import dinov2, ibot, simclr, vicreg  # noqa: F401  (registration)
from pretrain.methods.base import SSLMethod, StepOutput, get_method, list_methods, register_method

__all__ = [
    "SSLMethod",
    "StepOutput",
    "build_method",
    "get_method",
    "list_methods",
    "register_method",
]


def build_method(cfg):  # noqa: ANN001, ANN201 - Config -> SSLMethod
    """Instantiate the method named by `cfg.method.name`."""
    return get_method(cfg.method.name)(cfg)
