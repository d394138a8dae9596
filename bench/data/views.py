"""Seeded random views of one RGBA artwork: scale, shift, rotation and mild colour jitter.

Every view draws its parameters from its own ``numpy.random.default_rng`` seeded with a tuple of
small ints (seed option, class, vendor, view), so a view never depends on which other classes,
vendors or views are built, and two builds are byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SCALE_RANGE = (0.75, 1.0)  # times the base size (the artwork already fills FILL of the canvas)
ROTATION_DEGREES = 20.0
SHIFT_FRACTION = 0.08  # of the canvas side, each axis
BRIGHTNESS_RANGE = (0.85, 1.15)
SATURATION_RANGE = (0.8, 1.2)
FILL = 0.8  # longest side of the artwork / canvas side in the base image
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ViewParams:
    """One view's geometry (scale, rotation in degrees, shift in canvas fractions) and colour."""

    scale: float
    rotation: float
    shift_x: float
    shift_y: float
    brightness: float
    saturation: float


def view_rng(*keys: int) -> np.random.Generator:
    """A generator owned by one view; keys are non-negative ints such as (seed, cp, vendor, v)."""
    return np.random.default_rng([int(k) for k in keys])


def sample_view(rng: np.random.Generator) -> ViewParams:
    """Draw one view's parameters (always in the same order, so streams stay stable)."""
    u = rng.random(6)
    return ViewParams(
        scale=_lerp(SCALE_RANGE, u[0]),
        rotation=ROTATION_DEGREES * (2 * u[1] - 1),
        shift_x=SHIFT_FRACTION * (2 * u[2] - 1),
        shift_y=SHIFT_FRACTION * (2 * u[3] - 1),
        brightness=_lerp(BRIGHTNESS_RANGE, u[4]),
        saturation=_lerp(SATURATION_RANGE, u[5]),
    )


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * u)


def base_canvas(art: Image.Image, canvas: int) -> Image.Image:
    """``art`` (RGBA, cropped to its ink) centred on a transparent square, longest side FILL.

    Returned premultiplied (mode ``RGBa``) so later resampling never bleeds the colour of
    transparent pixels into edges, and so the linear colour jitter can run after downsampling.
    """
    side = max(1, round(FILL * canvas))
    scale = side / max(art.size)
    size = (max(1, round(art.width * scale)), max(1, round(art.height * scale)))
    resized = art.resize(size, Image.Resampling.LANCZOS)
    base = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    base.alpha_composite(resized, ((canvas - size[0]) // 2, (canvas - size[1]) // 2))
    return base.convert("RGBa")


def transform(image: Image.Image, params: ViewParams) -> Image.Image:
    """Scale and rotate about the centre, then shift; uncovered pixels become transparent."""
    size = image.width
    centre = size / 2
    angle = math.radians(params.rotation)
    cos, sin = math.cos(angle) / params.scale, math.sin(angle) / params.scale
    tx, ty = centre + params.shift_x * size, centre + params.shift_y * size
    # Pillow wants the inverse map: output (x, y) -> input (a x + b y + c, d x + e y + f).
    a, b, d, e = cos, sin, -sin, cos
    c = centre - a * tx - b * ty
    f = centre - d * tx - e * ty
    return image.transform(
        image.size,
        Image.Transform.AFFINE,
        (a, b, c, d, e, f),
        resample=Image.Resampling.BILINEAR,  # the 2x canvas + box downsample does the smoothing
        fillcolor=(0, 0, 0, 0),
    )


def jitter_on_white(premultiplied: np.ndarray, params: ViewParams) -> np.ndarray:
    """Colour-jitter the artwork (premultiplied RGBa, uint8), then composite it onto white.

    Saturation and brightness are linear per pixel, so they act on premultiplied colour directly
    (clipped to [0, alpha]); the white background is untouched.
    """
    rgba = premultiplied.astype(np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    grey = (rgb @ LUMA)[..., None]
    rgb = (grey + params.saturation * (rgb - grey)) * params.brightness
    rgb = np.clip(rgb, 0.0, alpha)
    return np.round((rgb + (1.0 - alpha)) * 255.0).astype(np.uint8)


def render_view(base: Image.Image, params: ViewParams, out_size: int) -> np.ndarray:
    """One view as RGB uint8 ``(out_size, out_size, 3)`` from a square ``RGBa`` base canvas."""
    image = transform(base, params)
    if image.width == 2 * out_size:
        image = image.reduce(2)
    elif image.width != out_size:
        image = image.resize((out_size, out_size), Image.Resampling.BOX)
    return jitter_on_white(np.asarray(image), params)
