"""`recon.fill=disk` (issue #25 point 4): no global view of a step shows the zero fill's shape,
so θ can only be told from the content; `recon.fill=zero` (the paper) shows it."""

from __future__ import annotations

import pytest
import torch

from data_pipeline.batch import Batch
from data_pipeline.transforms import build_transform
from data_pipeline.transforms.fill import DISK_MARGIN, disk_margin, inscribed_disk
from equirecon.config import load_config
from equirecon.errors import ConfigError
from pretrain.methods import build_method
from pretrain.train import transform_generator
from tests.conftest import TINY_OVERRIDES

SIZE = 16  # TINY_OVERRIDES' global crop


def _views(transform: str, fill: str, crops: torch.Tensor):  # noqa: ANN202
    cfg = load_config(
        None,
        [
            *TINY_OVERRIDES,
            "method.name=vicreg",
            "method.expander_dim=32",
            f"recon.transform={transform}",
            f"recon.fill={fill}",
        ],
    )
    method = build_method(cfg)
    batch = Batch(
        global_crops=crops,
        local_crops=torch.zeros(2, crops.shape[1], 3, 8, 8),
        masks=torch.zeros(2, crops.shape[1], (SIZE // 4) ** 2, dtype=torch.bool),
    )
    return method.recon.views(batch, transform_generator(1, 0)), method.recon.transform


@pytest.mark.parametrize("transform", ["rotation", "se2"])
def test_a_uniform_image_looks_the_same_under_every_theta_in_disk_mode(transform: str) -> None:
    # A uniform image has no content: whatever still varies with θ in v2 or u_k is the fill.
    crops = torch.ones(2, 8, 3, SIZE, SIZE)
    views, g = _views(transform, "disk", crops)
    v1, v2 = views.global_crops.chunk(2)
    disk = inscribed_disk(SIZE, disk_margin(g))
    assert views.theta is not None and views.theta[:, 0].abs().max() > 10  # angles that show fill
    for image in (v1, v2, views.source if views.source is not None else v2, *views.targets):
        torch.testing.assert_close(image, disk.expand_as(image), rtol=0, atol=1e-5)

    zero, _ = _views(transform, "zero", crops)  # the paper's views: the fill tells θ apart
    v2_zero = zero.global_crops.chunk(2)[1]
    assert (v2_zero - v2_zero[:1]).abs().amax() > 0.5


def test_content_inside_the_disk_is_the_papers_view() -> None:
    crops = torch.randn(2, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    disk_views, g = _views("rotation", "disk", crops)
    zero_views, _ = _views("rotation", "zero", crops)
    torch.testing.assert_close(disk_views.theta, zero_views.theta)
    disk = inscribed_disk(SIZE, disk_margin(g))
    torch.testing.assert_close(disk_views.global_crops, zero_views.global_crops * disk)
    for masked, plain in zip(disk_views.targets, zero_views.targets, strict=True):
        torch.testing.assert_close(masked, plain * disk)


def test_the_margin_covers_the_largest_shift() -> None:
    assert disk_margin(build_transform("rotation", SIZE)) == DISK_MARGIN
    se2 = build_transform("se2", 224)  # shifts up to 10 px per axis at 224 px
    assert disk_margin(se2) == pytest.approx(DISK_MARGIN + 10 * 2**0.5)


def test_an_unknown_fill_names_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"recon\.fill.*disk"):
        load_config(None, [*TINY_OVERRIDES, "recon.fill=crop"])


def test_a_fill_mode_without_g_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"recon\.fill=disk.*recon\.enabled"):
        load_config(None, [*TINY_OVERRIDES, "recon.enabled=false", "recon.fill=disk"])
