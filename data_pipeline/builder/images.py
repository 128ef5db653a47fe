"""One source image decoded fully (kept as it is, or re-encoded as PNG) and its annotation files
converted by their codecs; what cannot be used raises `BadImage` with the reason."""

from __future__ import annotations

import io
from pathlib import Path

from data_pipeline.annotations import ANNOTATION_CODECS
from data_pipeline.builder.sources import Annotation

STORED_AS_IS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class BadImage(Exception):
    """A source file that cannot be used; ``args[0]`` is the reason written to the manifest."""


def inspect_image(data: bytes) -> tuple[str, bytes, tuple[int, int], str]:
    """Decodes ``data`` fully; returns (stored extension, stored bytes, (width, height), format).

    JPEG, PNG and WebP keep their bytes; other formats are re-encoded as PNG.

    Raises:
        BadImage: not an image, truncated/corrupt data, or too many pixels (PIL's bomb limit).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unknown format)") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too many pixels: {err}") from None
    except Exception as err:  # PIL raises many types on bad headers
        raise BadImage(f"bad image header: {type(err).__name__}: {err}") from None
    with image:
        fmt = image.format or "?"
        try:
            image.load()
        except Exception as err:  # truncated, corrupt, unsupported variant
            raise BadImage(f"truncated or corrupt {fmt}: {err}") from None
        if fmt in STORED_AS_IS:
            return STORED_AS_IS[fmt], data, image.size, fmt
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "png", buffer.getvalue(), image.size, fmt


def convert_annotation(annotation: Annotation, image_size: tuple[int, int]) -> bytes:
    """The stored bytes of an annotation file.

    Raises:
        BadImage: unreadable, not what its codec expects, or not of the image's size.
    """
    try:
        data = Path(annotation.path).read_bytes()
    except OSError as err:
        raise BadImage(f"{annotation.rel}: unreadable: {err.strerror or err}") from None
    try:
        payload, size = ANNOTATION_CODECS[annotation.codec](data)
    except ValueError as err:
        raise BadImage(f"{annotation.rel}: {err}") from None
    if size != image_size:
        raise BadImage(f"{annotation.rel}: size {size} differs from the image's {image_size}")
    return payload


__all__ = ["BadImage", "convert_annotation", "inspect_image"]
