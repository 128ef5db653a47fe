"""Codecs of dense annotations stored next to an image in a shard (`data build`).

Each codec takes the bytes of an annotation file as a dataset ships it and returns the bytes we
store, plus the annotation's (width, height); it raises ``ValueError`` with the reason when the
file is not what it should be. Stored forms (what `evals.segmentation` / `evals.depth` read):

- ``seg.png``: 8-bit grey PNG of class ids, 255 = ignored;
- ``depth.png``: 16-bit grey PNG of depth in millimetres, 0 = no measurement.

Codecs (``ANNOTATION_CODECS``):

- ``mask``: an 8-bit mask whose values are already our class ids (Pascal VOC's palette PNGs:
  0 background, 1-20 classes, 255 borders/difficult);
- ``mask_zero_ignored``: ADE20K's masks, 0 = "other"/unlabelled, 1-150 the classes: stored as
  value - 1, with 0 -> 255 (ignored), as mmsegmentation's ``reduce_zero_label``;
- ``depth_mm``: a 16-bit PNG of millimetres (NYU Depth v2 as the BTS/DINOv2 toolchains
  export it: ``sync_depth_XXXXX.png``), stored as is.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types on bad or truncated files
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
    return image


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_values(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    image = _open(data)
    if image.mode not in ("P", "L"):
        raise ValueError(f"expected an 8-bit mask (PIL mode P or L), found mode {image.mode}")
    return np.asarray(image, dtype=np.uint8), image.size


def encode_mask(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """Class ids as they are (palette indices of a P image, grey values of an L image)."""
    values, size = _mask_values(data)
    return _png(values), size


def encode_mask_zero_ignored(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """ADE20K: 0 -> 255 (ignored), v -> v - 1."""
    values, size = _mask_values(data)
    shifted = np.where(values == 0, IGNORE_INDEX, values.astype(np.int16) - 1).astype(np.uint8)
    return _png(shifted), size


def encode_depth_mm(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """A 16-bit PNG of millimetres, re-encoded as a 16-bit grey PNG."""
    image = _open(data)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(
            f"expected a 16-bit depth PNG in millimetres, found PIL mode {image.mode} "
            "(an 8-bit image is a visualization, not a depth map)"
        )
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 65535:
        raise ValueError(f"depth values {values.min()}..{values.max()} outside 0..65535")
    return _png(values.astype(np.uint16)), image.size


def mask_classes(stored: bytes) -> list[int]:
    """The class ids present in a stored ``seg.png`` (255 left out), ascending."""
    values = np.unique(np.asarray(Image.open(io.BytesIO(stored))))
    return [int(v) for v in values if v != IGNORE_INDEX]


ANNOTATION_CODECS: dict[str, Callable[[bytes], tuple[bytes, tuple[int, int]]]] = {
    "mask": encode_mask,
    "mask_zero_ignored": encode_mask_zero_ignored,
    "depth_mm": encode_depth_mm,
}
