"""DINOv2's multi-crop augmentation on the CPU (torchvision.transforms.v2).

Every random draw comes from torch's global RNG, so ``torch.manual_seed`` makes the crops
reproducible. Crop + resize run on the PIL/uint8 image first; colour, blur and solarize then run
on the small float32 crops.

Two modes (``data.augmentations``), the "augmentation" axis of the paper's naming
Ours(SSL loss, augmentation, reconstruction target):

- ``all``: the base method's full augmentation pipeline (below);
- ``rot``: rotation is the only augmentation: each crop is the whole image (resized, centre
  crop) turned by a random angle, without random crops, flips, colour, blur or solarization.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from data_pipeline.batch import IMAGENET_MEAN, IMAGENET_STD

AUGMENTATION_MODES = ("all", "rot")
ROTATION_RANGE_DEG = 45.0  # "rot": angles ~ U[-45°, 45°], the range of g = rotation (Table 2)
BLUR_SIGMA = (0.1, 2.0)  # pixels
BLUR_KERNEL_FRACTION = 0.1  # kernel side ~ 10% of the crop side (odd, >= 3)


def blur_kernel_size(crop_px: int) -> int:
    """Odd gaussian kernel side proportional to the crop side (pixels)."""
    return max(3, int(round(BLUR_KERNEL_FRACTION * crop_px)) | 1)


def _random_blur(crop_px: int, p: float) -> v2.Transform:
    return v2.RandomApply([v2.GaussianBlur(blur_kernel_size(crop_px), sigma=BLUR_SIGMA)], p=p)


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
                    v2.ToImage(),
                    v2.ToDtype(torch.float32, scale=True),
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
        self.global1_extra = _random_blur(global_size, p=1.0)
        self.global2_extra = v2.Compose(
            [_random_blur(global_size, p=0.1), v2.RandomSolarize(threshold=128 / 255, p=0.2)]
        )
        self.local_extra = _random_blur(local_size, p=0.5)
        self.normalize = v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))

    def __repr__(self) -> str:
        return (
            f"MultiCropAugmentation(global_size={self.global_size}, local_size={self.local_size}, "
            f"n_local={self.n_local}, augmentations={self.augmentations!r})"
        )

    def _finish(self, crop: torch.Tensor, extra: v2.Transform) -> torch.Tensor:
        out = self.normalize(extra(self.color(crop)))
        return out.as_subclass(torch.Tensor).contiguous()

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
            self._finish(self.global_geometric(img), self.global1_extra),
            self._finish(self.global_geometric(img), self.global2_extra),
        ]
        local_crops = [
            self._finish(self.local_geometric(img), self.local_extra) for _ in range(self.n_local)
        ]
        return global_crops, local_crops
