"""The equivariance transformation g_θ: sampled per image, applied batched on the training device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

_REGISTRY: dict[str, type[EquiTransform]] = {}


def register_transform(name: str) -> Callable[[type[EquiTransform]], type[EquiTransform]]:
    """Class decorator adding a transform to the registry under `name`."""

    def wrap(cls: type[EquiTransform]) -> type[EquiTransform]:
        if name in _REGISTRY:
            raise ValueError(f"transform {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def list_transforms() -> list[str]:
    return sorted(_REGISTRY)


def build_transform(name: str, image_size: int, **kwargs: object) -> EquiTransform:
    """Build the transform `name` for square crops of `image_size` pixels."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown recon.transform {name!r}; choose one of {list_transforms()}")
    return _REGISTRY[name](image_size=image_size, **kwargs)


class EquiTransform(ABC):
    """A parametrized family g_θ with identity at θ = 0 (blur: σ = 0).

    Parameters θ are a (B, P) float tensor in natural units (degrees, pixels, jitter factors, σ),
    one row per image. `apply` works on normalized (B, 3, H, W) images on any device.
    """

    name: str = ""
    param_names: tuple[str, ...] = ()

    def __init__(self, image_size: int) -> None:
        self.image_size = int(image_size)

    @property
    @abstractmethod
    def param_ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the uniform sampling range of each parameter, in natural units."""

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Draw θ ~ U(ranges) for `batch_size` images -> (B, P) float32 on `device`.

        The draw happens on the generator's device (CPU by default) so that it is reproducible
        across devices, then moves to `device` (one small copy, no sync on the image tensors).
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        unit = torch.rand(batch_size, self.num_params, generator=generator, device=gen_device)
        lo = torch.tensor([r[0] for r in self.param_ranges], device=gen_device)
        hi = torch.tensor([r[1] for r in self.param_ranges], device=gen_device)
        return (lo + unit * (hi - lo)).to(device, non_blocking=True)

    def identity_params(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Parameters of the identity element, (B, P)."""
        return torch.zeros(batch_size, self.num_params, device=device)

    def normalize_params(self, params: torch.Tensor) -> torch.Tensor:
        """Map θ to [-1, 1] per parameter using the sampling range (for regression targets)."""
        lo = params.new_tensor([r[0] for r in self.param_ranges])
        hi = params.new_tensor([r[1] for r in self.param_ranges])
        return (params - (lo + hi) / 2) / ((hi - lo) / 2)

    def interpolate(self, params: torch.Tensor, fraction: float) -> torch.Tensor:
        """θ_frac: each parameter moved linearly from its identity value toward θ."""
        ident = self.identity_params(params.shape[0], params.device)
        return ident + fraction * (params - ident)

    @abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """g_θ(images): (B, 3, H, W) normalized -> (B, 3, H, W) normalized."""

    def intermediates(
        self, images: torch.Tensor, params: torch.Tensor, k: int
    ) -> list[torch.Tensor]:
        """The K reconstruction targets u_j = g_{jθ/(K+1)}(u), j = 1..K, each straight from u."""
        return [self.apply(images, self.interpolate(params, j / (k + 1))) for j in range(1, k + 1)]
