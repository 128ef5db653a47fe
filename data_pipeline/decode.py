"""Members of a shard sample -> what the readers use: an RGB image, a class label.

Shared by the torch reader (`data_pipeline.torch_reader`), the DALI reader (its image
extensions) and the evaluation loaders (`data_pipeline.eval_images`, `evals.annotated`).
"""

from __future__ import annotations

import io

from PIL import Image

from data_pipeline.shards import Sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class SkipSample(Exception):
    """A sample that cannot be used; ``args[0]`` is the reason (a stats key)."""


def decode_image(sample: Sample) -> Image.Image:
    """The sample's first image member (jpg, jpeg, png, webp) decoded to RGB.

    Raises:
        SkipSample: ``no_image`` (no image member) or ``decode_error`` (undecodable/truncated).
    """
    for ext in IMAGE_EXTENSIONS:
        data = sample.get(ext)
        if data is not None:
            break
    else:
        raise SkipSample("no_image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return to_rgb(image)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, bomb errors ...
        raise SkipSample("decode_error") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL image; transparency (RGBA, LA, palette with a transparent index) is
    composited over white, as a viewer shows it (a plain ``convert("RGB")`` keeps whatever
    colour the transparent pixels store, usually black)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode_label(sample: Sample) -> int:
    """The ``cls`` member as an int.

    Raises:
        SkipSample: ``missing_cls`` or ``bad_cls`` (not an integer).
    """
    data = sample.get("cls")
    if data is None:
        raise SkipSample("missing_cls")
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise SkipSample("bad_cls") from err


__all__ = ["IMAGE_EXTENSIONS", "SkipSample", "decode_image", "decode_label", "to_rgb"]
