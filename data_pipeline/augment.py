"""DINOv2's multi-crop augmentation on the CPU (torchvision.transforms.v2).

Every random draw comes from torch's global RNG, so ``torch.manual_seed`` makes the crops
reproducible. Crop + resize, colour jitter and grayscale run on the uint8 PIL crop (PIL's C
kernels, as DINOv2's torchvision pipeline); the crop is then converted to float32 and
normalized in one fused multiply-add, blurred with a separable gaussian cut at 3 sigma, and
solarized in the normalized space.

Two modes (``data.augmentations``), the "augmentation" axis of the paper's naming
Ours(SSL loss, augmentation, reconstruction target):

- ``all``: the base method's full augmentation pipeline (below);
- ``rot``: rotation is the only augmentation: each crop is the whole image (resized, centre
  crop) turned by a random angle, without random crops, flips, colour, blur or solarization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD

AUGMENTATION_MODES = ("all", "rot")
ROTATION_RANGE_DEG = 45.0  # "rot": angles ~ U[-45°, 45°], the range of g = rotation (Table 2)
BLUR_SIGMA = (0.1, 2.0)  # pixels
BLUR_KERNEL_FRACTION = 0.1  # kernel side ~ 10% of the crop side (odd, >= 3)


def blur_kernel_size(crop_px: int) -> int:
    """Odd gaussian kernel side proportional to the crop side (pixels): the largest window."""
    return max(3, int(round(BLUR_KERNEL_FRACTION * crop_px)) | 1)


def blur_window(sigma: float, max_kernel: int) -> int:
    """Taps of the gaussian of `sigma` px: 2·ceil(3 sigma) + 1, at most `max_kernel` (the taps
    beyond 3 sigma hold < 0.3 % of the weight). The same rule as the DALI path."""
    return min(2 * math.ceil(3.0 * sigma - 1e-4) + 1, max_kernel)


def gaussian_blur(image: torch.Tensor, sigma: float, max_kernel: int) -> torch.Tensor:
    """Separable gaussian blur of a float (C, H, W) image, reflect-padded (as torchvision's).

    The kernel is cut at 3 sigma (`blur_window`); two 1-D passes instead of one k x k one.
    """
    window = blur_window(sigma, max_kernel)
    if window <= 1:
        return image
    offsets = torch.arange(window, dtype=torch.float32) - window // 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = (taps / taps.sum()).to(image.dtype)
    c = image.shape[0]
    r = window // 2
    x = F.pad(image.unsqueeze(0), (r, r, r, r), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, window).expand(c, 1, 1, window), groups=c)
    x = F.conv2d(x, taps.view(1, 1, window, 1).expand(c, 1, window, 1), groups=c)
    return x.squeeze(0)


class _RandomBlur:
    """With probability `p`, `gaussian_blur` with sigma ~ U(0.1, 2) px (torch's global RNG)."""

    def __init__(self, crop_px: int, p: float) -> None:
        self.max_kernel, self.p = blur_kernel_size(crop_px), p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return image
        sigma = float(torch.empty(()).uniform_(*BLUR_SIGMA))
        return gaussian_blur(image, sigma, self.max_kernel)


class _RandomSolarize:
    """With probability `p`, invert the pixels >= 128/255 (torchvision's threshold, on [0, 1]),
    on an ImageNet-normalized image: x -> (1 - 2·mean) / std - x where x >= (128/255 - mean)
    / std, per channel."""

    def __init__(self, p: float) -> None:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.p = p
        # 1e-5 below: a uint8 128 normalized must land on the inverted side (1/255 step >> 1e-5)
        self.threshold = (128 / 255 - mean) / std - 1e-5
        self.mirror = (1 - 2 * mean) / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return image
        return torch.where(image >= self.threshold, self.mirror - image, image)


class _Normalize:
    """uint8 (C, H, W) -> float32 ImageNet-normalized, one fused multiply-add per pixel."""

    def __init__(self) -> None:
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, image.float(), self.scale)


class MultiCropAugmentation:
    """Two global and ``n_local`` local crops of one image, as in DINOv2 (or rotations only).

    ``augmentations="all"`` (default), per crop: random-resized crop (bicubic, antialiased) +
    horizontal flip; colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8; grayscale with p=0.2;
    gaussian blur (global 1: p=1, global 2: p=0.1, locals: p=0.5; sigma 0.1-2 px); solarize on
    global 2 with p=0.2; then float32 and ImageNet normalization.

    ``augmentations="rot"``, per crop: the image resized (shorter side, bicubic, antialiased)
    and centre-cropped to the crop size, normalized, then rotated about its centre by an angle
    ~ U[-45°, 45°] drawn independently per crop (bilinear, zero fill in normalized space = the
    mean colour, like the device-side g). This is our reading of the paper's augmentation
    "rot" (vs "all" = the base method's augmentations): the SSL views differ only by rotations,
    so the baseline (recon off) sees rotation-only views, and with recon on the second view is
    additionally transformed by g_θ on the device. Local crops are produced the same way at the
    local size (set ``n_local=0`` when the method should see none).

    Args:
        global_size: side of the global crops (pixels).
        local_size: side of the local crops (pixels).
        n_local: number of local crops (0 allowed).
        global_scale: area fraction range of the global crops ("all" only).
        local_scale: area fraction range of the local crops ("all" only).
        augmentations: ``"all"`` or ``"rot"``, see above.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        n_local: int,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        augmentations: str = "all",
    ) -> None:
        if augmentations not in AUGMENTATION_MODES:
            raise ValueError(f"augmentations={augmentations!r}; choose one of {AUGMENTATION_MODES}")
        self.global_size = global_size
        self.local_size = local_size
        self.n_local = n_local
        self.augmentations = augmentations
        bicubic = v2.InterpolationMode.BICUBIC

        def geometric(size: int, scale: tuple[float, float]) -> v2.Transform:
            return v2.Compose(
                [
                    v2.RandomResizedCrop(size, scale=scale, interpolation=bicubic, antialias=True),
                    v2.RandomHorizontalFlip(p=0.5),
                ]
            )

        def rotated(size: int) -> v2.Transform:
            return v2.Compose(
                [
                    v2.Resize(size, interpolation=bicubic, antialias=True),
                    v2.CenterCrop(size),
                    v2.ToImage(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
                    v2.RandomRotation(
                        ROTATION_RANGE_DEG, interpolation=v2.InterpolationMode.BILINEAR, fill=0.0
                    ),
                ]
            )

        self.global_geometric = geometric(global_size, tuple(global_scale))
        self.local_geometric = geometric(local_size, tuple(local_scale))
        self.global_rotated = rotated(global_size)
        self.local_rotated = rotated(local_size)
        self.color = v2.Compose(
            [
                v2.RandomApply(
                    [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
                ),
                v2.RandomGrayscale(p=0.2),
            ]
        )
        self.solarize = _RandomSolarize(p=0.2)
        self.global1_blur = _RandomBlur(global_size, p=1.0)
        self.global2_blur = _RandomBlur(global_size, p=0.1)
        self.local_blur = _RandomBlur(local_size, p=0.5)
        self.normalize = _Normalize()

    def __repr__(self) -> str:
        return (
            f"MultiCropAugmentation(global_size={self.global_size}, local_size={self.local_size}, "
            f"n_local={self.n_local}, augmentations={self.augmentations!r})"
        )

    def _finish(
        self, crop: Image.Image | torch.Tensor, blur: _RandomBlur, solarize: bool = False
    ) -> torch.Tensor:
        """Colour on the uint8 crop, then float + normalize, blur, solarize (global 2 only):
        DINOv2's order (blur and the normalization, both linear, commute)."""
        crop = self.color(crop)
        if isinstance(crop, Image.Image):
            crop = v2.functional.pil_to_tensor(crop)
        out = blur(self.normalize(crop.as_subclass(torch.Tensor)))
        if solarize:
            out = self.solarize(out)
        return out.contiguous()

    @staticmethod
    def _plain(crop: torch.Tensor) -> torch.Tensor:
        return crop.as_subclass(torch.Tensor).contiguous()

    def __call__(
        self, img: Image.Image | torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Augments one image.

        Args:
            img: RGB PIL image, or (3, H, W) uint8 tensor.

        Returns:
            (global crops: 2 x (3, global_size, global_size), local crops: n_local x
            (3, local_size, local_size)), float32, ImageNet-normalized.
        """
        if self.augmentations == "rot":
            global_crops = [self._plain(self.global_rotated(img)) for _ in range(2)]
            local_crops = [self._plain(self.local_rotated(img)) for _ in range(self.n_local)]
            return global_crops, local_crops
        global_crops = [
            self._finish(self.global_geometric(img), self.global1_blur),
            self._finish(self.global_geometric(img), self.global2_blur, solarize=True),
        ]
        local_crops = [
            self._finish(self.local_geometric(img), self.local_blur) for _ in range(self.n_local)
        ]
        return global_crops, local_crops
