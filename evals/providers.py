"""Feature providers: what a frozen model gives the evaluation tasks, per image and per patch.

A provider maps normalized images (B, 3, H, W) to a global feature (B, D) (kNN, linear probe,
equivariance R²) and to a patch-feature grid (B, D_p, H/p, W/p) (homography, segmentation).
Four kinds exist: a trained ViT backbone, a random-init ViT of the same shape (floor), the raw
pixels (floor) and pooled patch statistics of the raw pixels (`patchstats`, a positive control:
what a global vector pooled over patches can carry). The floors say how much of a number is the
model's and how much the protocol's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evals.features import (
    EQUIVARIANCE_FEATURES,
    FeatureFn,
    backbone_feature_fn,
    pool_patch_grid,
)

FLOORS = ("pixels", "random", "patchstats")


class FeatureProvider:
    """Frozen features of one model. Subclasses implement both feature kinds."""

    name: str = ""
    patch_size: int = 1

    def global_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, D) features."""
        raise NotImplementedError

    def patch_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, D_p, H/p, W/p) features, p = `patch_size`."""
        raise NotImplementedError

    def grid_features(self, images: Tensor, grid: int) -> Tensor:
        """(B, 3, H, W) -> the patch features average-pooled to grid x grid, flattened.

        The spatial layout survives (unlike the global feature), so a rotation of the input
        shows in it; 0 keeps the full patch grid.
        """
        return pool_patch_grid(self.patch_features(images), grid)

    def equi_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> the z_equi slice of the split head, pooled like the global feature.

        Providers without a split head (raw pixels) give their global feature.
        """
        return self.global_features(images)

    def equivariance_fn(self, kind: str = "global", grid: int = 2) -> FeatureFn:
        """What the equivariance regressor reads of one image: "global" (`global_features`, the
        paper's/SIE's protocol), "grid" (`grid_features`) or "equi" (`equi_features`)."""
        if kind not in EQUIVARIANCE_FEATURES:
            raise ValueError(
                f"unknown eval.equivariance.features {kind!r}; "
                f"choose one of {list(EQUIVARIANCE_FEATURES)}"
            )
        if kind == "global":
            return self.global_features
        if kind == "equi":
            return self.equi_features
        return lambda images: self.grid_features(images, grid)

    def to(self, device: torch.device | str) -> FeatureProvider:
        return self


class BackboneFeatures(FeatureProvider):
    """A ViT backbone returning tokens (B, P + N, D) (CLS first, P prefix tokens).

    Global feature: `pooling` of `evals.features.backbone_feature_fn` ([CLS; mean patch] by
    default). Patch features: the N patch tokens on their (H/p, W/p) grid. With
    `feature_layers` n > 1 both come from the last n blocks (each normed), concatenated along
    the feature dim (DINOv2's linear protocols). With a `split_head`
    (a `pretrain.models.heads.SplitHead`, recon on), `equi_features` is its z_equi slice of the
    tokens, pooled as `pooling`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        name: str = "backbone",
        pooling: str = "cls+mean",
        split_head: nn.Module | None = None,
        feature_layers: int = 1,
    ):
        if feature_layers < 1:
            raise ValueError(f"eval.feature_layers must be >= 1, got {feature_layers}")
        self.feature_layers = int(feature_layers)
        self.backbone = backbone.eval()
        self.split_head = split_head.eval() if split_head is not None else None
        self.pooling = pooling
        self.name = name
        self.patch_size = int(backbone.patch_size)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        self._global = backbone_feature_fn(backbone, pooling, self.num_prefix_tokens)

    def global_features(self, images: Tensor) -> Tensor:
        if self.feature_layers == 1:
            return self._global(images)
        return torch.cat([self._pool(t) for t in self._last_layers(images)], 1)

    def patch_features(self, images: Tensor) -> Tensor:
        if self.feature_layers == 1:
            return self._patch_grid(self.backbone(images), images.shape)
        grids = [self._patch_grid(t, images.shape) for t in self._last_layers(images)]
        return torch.cat(grids, 1)

    def _last_layers(self, images: Tensor) -> list[Tensor]:
        if not hasattr(self.backbone, "last_layers"):
            raise ValueError(
                f"eval.feature_layers={self.feature_layers} needs a backbone with last_layers "
                f"(pretrain.models.backbone.Backbone), got {type(self.backbone).__name__}"
            )
        return self.backbone.last_layers(images, self.feature_layers)

    def _pool(self, tokens: Tensor) -> Tensor:
        """Tokens (B, P + N, D) -> the `pooling` vector of one layer."""
        cls, patch_mean = tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return {"cls": cls, "mean": patch_mean}.get(self.pooling, torch.cat([cls, patch_mean], 1))

    def equi_features(self, images: Tensor) -> Tensor:
        if self.split_head is None:
            raise ValueError(
                "eval.equivariance.features=equi needs a split head (a run with recon.enabled)"
            )
        z_equi = self.split_head(self.backbone(images))[1]  # (B, P + N, d_equi)
        cls, patch_mean = z_equi[:, 0], z_equi[:, self.num_prefix_tokens :].mean(dim=1)
        return {"cls": cls, "mean": patch_mean}.get(self.pooling, torch.cat([cls, patch_mean], 1))

    def grid_features(self, images: Tensor, grid: int) -> Tensor:
        """[CLS; patch tokens pooled to grid x grid, flattened] from one backbone forward."""
        tokens = self.backbone(images)
        return torch.cat(
            [tokens[:, 0], pool_patch_grid(self._patch_grid(tokens, images.shape), grid)], 1
        )

    def _patch_grid(self, tokens: Tensor, image_shape: torch.Size) -> Tensor:
        """Tokens (B, P + N, D) -> the N patch tokens on their grid (B, D, H/p, W/p)."""
        b, _, h, w = image_shape
        tokens = tokens[:, self.num_prefix_tokens :]  # (B, N, D)
        grid_h, grid_w = h // self.patch_size, w // self.patch_size
        if tokens.shape[1] != grid_h * grid_w:
            raise ValueError(
                f"backbone gave {tokens.shape[1]} patch tokens for {h}x{w} images with patch "
                f"{self.patch_size}; expected {grid_h * grid_w}"
            )
        return tokens.transpose(1, 2).reshape(b, -1, grid_h, grid_w)

    def to(self, device: torch.device | str) -> BackboneFeatures:
        self.backbone.to(device)
        if self.split_head is not None:
            self.split_head.to(device)
        return self


class PixelFeatures(FeatureProvider):
    """Raw pixels: the flattened image (B, 3·H·W) and each p×p patch's pixels (B, 3p², H/p, W/p).

    Images larger than `max_side` are area-averaged to `max_side`² before flattening, so the
    global feature stays at most 3·max_side² wide.
    """

    def __init__(self, patch_size: int, max_side: int = 32) -> None:
        self.name = "pixels"
        self.patch_size = int(patch_size)
        self.max_side = int(max_side)

    def global_features(self, images: Tensor) -> Tensor:
        if max(images.shape[-2:]) > self.max_side:
            images = F.adaptive_avg_pool2d(images, self.max_side)
        return images.flatten(1)

    def patch_features(self, images: Tensor) -> Tensor:
        return F.pixel_unshuffle(images, self.patch_size)


class PatchStatsFeatures(PixelFeatures):
    """Pooled local statistics of raw pixels: a positive control for pooled features.

    The global feature is what a mean over patches keeps of quadratic functions of each p×p
    patch: the mean patch (3·p² values) and the mean over patches of the outer product of each
    patch's grey values with its own mean removed (upper triangle, p²(p²+1)/2 values: the local
    autocorrelation up to p pixels apart, whose anisotropy turns with the image). A rotation
    about the centre permutes patches, which the mean cannot see, and turns the content inside
    each patch, which these second moments can. If θ is readable from this vector, a global
    vector pooled from patch tokens can carry it; if not, pooling at this patch size loses it
    whatever the encoder does. Patch features are the raw patches (as `PixelFeatures`).
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__(patch_size)
        self.name = "patchstats"
        p2 = self.patch_size**2
        self._upper = torch.triu_indices(p2, p2)

    def global_features(self, images: Tensor) -> Tensor:
        p = self.patch_size
        patches = F.pixel_unshuffle(images, p).flatten(2)  # (B, 3p², N)
        mean_patch = patches.mean(dim=2)
        grey = F.pixel_unshuffle(images.mean(dim=1, keepdim=True), p).flatten(2)  # (B, p², N)
        grey = grey - grey.mean(dim=1, keepdim=True)
        second = torch.einsum("bin,bjn->bij", grey, grey) / grey.shape[2]
        return torch.cat([mean_patch, second[:, self._upper[0], self._upper[1]]], dim=1)


def random_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of a `pretrain.models.backbone.Backbone` re-initialized with timm's ViT init.

    Same shape, weights drawn from a generator seeded by `seed` (the global RNG is left alone).
    """
    fresh = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.vit.init_weights()
        if isinstance(getattr(fresh, "mask_token", None), nn.Parameter):
            nn.init.normal_(fresh.mask_token, std=0.02)
    return fresh.eval()


def random_split_head_like(split_head: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of a `SplitHead` re-initialized as at construction (trunc-normal 0.02, zero bias)."""
    fresh = copy.deepcopy(split_head)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        nn.init.trunc_normal_(fresh.proj.weight, std=0.02)
        nn.init.zeros_(fresh.proj.bias)
    return fresh.eval()


def build_provider(
    backbone: nn.Module,
    floor: str | None = None,
    seed: int = 0,
    pooling: str = "cls+mean",
    split_head: nn.Module | None = None,
    feature_layers: int = 1,
) -> FeatureProvider:
    """The provider of a loaded backbone, or of a floor with the backbone's shape.

    Args:
        backbone: the trained backbone (its shape and patch size define the floors).
        floor: None (the backbone itself), "pixels", "random" or "patchstats".
        seed: seed of the random-init floor.
        pooling: global pooling of ViT tokens (see `backbone_feature_fn`).
        split_head: the trained split head (recon on), read by `equi_features`; the random
            floor gets a re-initialized copy.
        feature_layers: concatenate the features of this many last blocks (ViT providers).
    """
    if floor is None:
        return BackboneFeatures(backbone, "backbone", pooling, split_head, feature_layers)
    if floor == "pixels":
        return PixelFeatures(int(backbone.patch_size))
    if floor == "patchstats":
        return PatchStatsFeatures(int(backbone.patch_size))
    if floor == "random":
        head = random_split_head_like(split_head, seed) if split_head is not None else None
        return BackboneFeatures(
            random_like(backbone, seed), "random", pooling, head, feature_layers
        )
    raise ValueError(f"unknown floor {floor!r}; choose one of {list(FLOORS)}")


def extract_patch_features(
    provider: FeatureProvider,
    images: Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`provider.patch_features` over (N, 3, H, W) images in batches -> (N, D_p, h, w) on CPU."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            chunks.append(provider.patch_features(batch).float().cpu())
    if not chunks:
        raise ValueError("extract_patch_features got no images (N = 0)")
    return torch.cat(chunks)
