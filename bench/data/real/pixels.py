"""Decoded images to 8-bit RGB the way a viewer shows them.

Pillow's ``convert("RGB")`` alone gets three cases wrong: transparent pixels become black (their
stored colour) although viewers and the datasets' own renderings show them on white; 16-bit
greyscale (``I;16``/``I``) is clipped at 255 instead of scaled, so most of the range saturates to
white; and the EXIF orientation of camera photos is ignored, so portrait shots lie sideways.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: EXIF orientation applied, transparency composited onto white, 16-bit
    greyscale scaled to 0..255 (65535 -> 255)."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L"
                               ).convert("RGB")
    transparent = image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)
    if transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
