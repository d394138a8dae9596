"""``glyph_cameras``: glyphs photographed by five cameras, each a known imaging condition.

Why: a UDA setting where "this image as camera c sees it" exists without labels (ECN's CamStyle
views) and the domain gap is a real imaging gap. Each class (a Unicode code point) is rendered
once per font in four fonts (DejaVu Sans / Serif / Sans Mono, STIX: the "pictures"); every
picture is then imaged by every camera. A camera is an ink / paper colour pair (contrast and
tint): ``x = ink + (paper - ink) * p / 255`` per channel, p = the grey picture (0 = ink,
255 = paper), i.e. the per-channel affine map ``x = gain * p + offset`` recorded in
``meta["camera_conditions"]``, from which a view of a row under another camera is re-imaged
exactly from that row's own image (:class:`bench.data.camera_style.ImagingConditions`).

Domains: ``paper`` (cameras ``paper/plain`` black on white, ``paper/grey`` dark grey on light
grey) and ``night`` (``night/amber`` light amber ink on dark blue: inverted polarity,
``night/green`` light green on dark green, ``night/rose`` dark red on pink: low contrast).
Per class: 4 fonts x 5 cameras = 20 images (8 paper, 12 night).
"""

from __future__ import annotations

import numpy as np
from PIL import ImageFont

from bench.data import glyphs
from bench.data.records import ImageDataset
from bench.data.registry import Option, int_in, optional_positive_int, register_dataset

#: the pictures: one regular font per glyphs family (indices into ``glyphs.FONTS``)
FONT_INDEX: tuple[int, ...] = (0, 4, 8, 12)
DOMAINS: tuple[str, ...] = ("paper", "night")
#: (camera name, domain, ink RGB, paper RGB); every channel differs by >= 16 so each
#: condition is invertible
CAMERAS: tuple[tuple[str, str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("paper/plain", "paper", (0, 0, 0), (255, 255, 255)),
    ("paper/grey", "paper", (40, 40, 40), (200, 200, 200)),
    ("night/amber", "night", (250, 200, 40), (20, 30, 110)),
    ("night/green", "night", (120, 230, 120), (10, 60, 30)),
    ("night/rose", "night", (140, 40, 70), (235, 170, 190)),
)


def conditions() -> list[dict[str, list[float]]]:
    """Per camera: ``x = gain * p + offset`` per channel (p, x in 0..255)."""
    return [{"gain": [(paper[i] - ink[i]) / 255.0 for i in range(3)],
             "offset": [float(v) for v in ink]} for _n, _d, ink, paper in CAMERAS]


def image(picture: np.ndarray, camera: int) -> np.ndarray:
    """The grey ``picture`` (H, W) as camera ``camera`` takes it: uint8 (H, W, 3)."""
    cond = conditions()[camera]
    gain = np.asarray(cond["gain"], dtype=np.float64)
    offset = np.asarray(cond["offset"], dtype=np.float64)
    out = picture.astype(np.float64)[..., None] * gain + offset
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@register_dataset(
    "glyph_cameras",
    description="glyphs in 4 fonts imaged by 5 cameras (ink/paper colour conditions; "
    "domain = paper or night cameras, camera = condition)",
    options={
        "image_size": Option(32, int_in(16, 512), "side of the square RGB images in px"),
        "max_classes": Option(None, optional_positive_int, "keep only the first N code points"),
    },
    available=glyphs.available,
    where=glyphs.where,
    sources=glyphs.sources,
    version="glyph-cameras-1",
)
def build_glyph_cameras(*, image_size: int = 32, max_classes: int | None = None) -> ImageDataset:
    """Render each kept code point in the 4 fonts, then image every picture by every camera."""
    em = max(1, round(glyphs.EM_FRACTION * image_size))
    paths = glyphs.font_paths()
    fonts = [ImageFont.truetype(str(paths[i]), em) for i in FONT_INDEX]
    kept: list[int] = []
    images: list[np.ndarray] = []
    for cp in glyphs.candidate_codepoints():
        if max_classes is not None and len(kept) >= max_classes:
            break
        block = glyphs.render_class(cp, fonts, image_size)
        if block is None:
            continue
        kept.append(cp)
        images.extend(image(picture, c) for picture in block for c in range(len(CAMERAS)))
    per_class = len(FONT_INDEX) * len(CAMERAS)
    camera_domain = np.array([DOMAINS.index(d) for _n, d, _i, _p in CAMERAS], dtype=np.int64)
    return ImageDataset(
        name="glyph_cameras",
        images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        labels=np.repeat(np.arange(len(kept), dtype=np.int64), per_class),
        domains=np.tile(camera_domain, len(kept) * len(FONT_INDEX)),
        cameras=np.tile(np.arange(len(CAMERAS), dtype=np.int64), len(kept) * len(FONT_INDEX)),
        class_names=[glyphs.class_name(cp) for cp in kept],
        domain_names=list(DOMAINS),
        camera_names=[name for name, _d, _i, _p in CAMERAS],
        meta={"camera_views": "imaging_conditions", "camera_conditions": conditions(),
              "fonts": [glyphs.FONTS[i][2] for i in FONT_INDEX]},
    )
