"""``glyphs``: the quick default dataset, rendered from the TTFs that ship inside matplotlib.

Classes are Unicode code points; each class is drawn once in each of 16 fonts (4 families x 4
styles). domain = family (sans, serif, mono, stix); camera = the font (``family/style``), so
"train on some fonts, test on others" is a real domain shift with zero downloads.

Measured with matplotlib 3.11's fonts and Python 3.11's Unicode 14 database: the 16 character maps
share 730 code points; 674 of them are letters, numbers or symbols (categories L*, N*, S*; the 56
others are punctuation, spaces and one format character). No kept glyph renders blank at 16..512
px, so the dataset has 674 classes and 674 x 16 = 10,784 images. A glyph that did render blank in
any font would drop its whole class (see ``render_class``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from bench.data.records import ImageDataset
from bench.data.registry import Option, int_in, optional_positive_int, register_dataset

# (family, style, file name in matplotlib/mpl-data/fonts/ttf)
FONTS: tuple[tuple[str, str, str], ...] = (
    ("sans", "regular", "DejaVuSans.ttf"),
    ("sans", "bold", "DejaVuSans-Bold.ttf"),
    ("sans", "oblique", "DejaVuSans-Oblique.ttf"),
    ("sans", "bold-oblique", "DejaVuSans-BoldOblique.ttf"),
    ("serif", "regular", "DejaVuSerif.ttf"),
    ("serif", "bold", "DejaVuSerif-Bold.ttf"),
    ("serif", "italic", "DejaVuSerif-Italic.ttf"),
    ("serif", "bold-italic", "DejaVuSerif-BoldItalic.ttf"),
    ("mono", "regular", "DejaVuSansMono.ttf"),
    ("mono", "bold", "DejaVuSansMono-Bold.ttf"),
    ("mono", "oblique", "DejaVuSansMono-Oblique.ttf"),
    ("mono", "bold-oblique", "DejaVuSansMono-BoldOblique.ttf"),
    ("stix", "regular", "STIXGeneral.ttf"),
    ("stix", "bold", "STIXGeneralBol.ttf"),
    ("stix", "italic", "STIXGeneralItalic.ttf"),
    ("stix", "bold-italic", "STIXGeneralBolIta.ttf"),
)
FAMILIES: tuple[str, ...] = ("sans", "serif", "mono", "stix")
KEPT_CATEGORIES = ("L", "N", "S")
EM_FRACTION = 0.625  # font size / image size: the widest (1.4 em) and tallest (1.22 em) fit
INK_LEVEL = 192  # a render whose darkest pixel is not below this is blank (<25% coverage)


def font_dir() -> Path:
    """matplotlib's bundled TTF folder (located without importing pyplot)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_paths() -> list[Path]:
    return [font_dir() / file for _family, _style, file in FONTS]


def available() -> bool:
    return all(path.is_file() for path in font_paths())


def where() -> str:
    missing = [path.name for path in font_paths() if not path.is_file()]
    if missing:
        return f"needs matplotlib's DejaVu/STIX TTFs in {font_dir()}; missing: {', '.join(missing)}"
    return f"16 DejaVu/STIX TTFs bundled with matplotlib in {font_dir()}"


def sources(_options: Mapping[str, Any]) -> dict[str, str]:
    from bench.data.cache import file_sha256

    return {f"font:{path.name}": file_sha256(path) for path in font_paths()}


@cache
def shared_codepoints() -> tuple[int, ...]:
    """Code points in the character map of all 16 fonts, before the category filter."""
    from matplotlib.ft2font import FT2Font

    maps = [set(FT2Font(str(path)).get_charmap()) for path in font_paths()]
    return tuple(sorted(set.intersection(*maps)))


def candidate_codepoints() -> list[int]:
    """Shared code points whose Unicode category is a letter, number or symbol."""
    return [
        cp
        for cp in shared_codepoints()
        if unicodedata.category(chr(cp)).startswith(KEPT_CATEGORIES)
    ]


def class_name(cp: int) -> str:
    """``U+0041 A``: the code point and the character itself."""
    return f"U+{cp:04X} {chr(cp)}"


def _render(char: str, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    """Black glyph centred by its ink box on a white ``size`` x ``size`` grey image.

    Drawn at an integer origin on a scratch canvas and cropped to the ink, because Pillow's
    ``getbbox`` pads the vertical extent and fractional origins can drop thin strokes.
    """
    scratch = Image.new("L", (2 * size, 2 * size), 255)
    ImageDraw.Draw(scratch).text((size // 2, size // 2), char, font=font, fill=0)
    box = ImageOps.invert(scratch).getbbox()
    out = Image.new("L", (size, size), 255)
    if box is None:
        return np.asarray(out)
    ink = scratch.crop(box)
    if max(ink.size) > size:  # never seen with EM_FRACTION; keeps odd fonts in the frame
        ink = ink.resize(_fit(ink.size, size), Image.Resampling.LANCZOS)
    out.paste(ink, ((size - ink.width) // 2, (size - ink.height) // 2))
    return np.asarray(out)


def _fit(shape: tuple[int, int], size: int) -> tuple[int, int]:
    scale = size / max(shape)
    return max(1, int(shape[0] * scale)), max(1, int(shape[1] * scale))


def render_class(cp: int, fonts: list[ImageFont.FreeTypeFont], size: int) -> np.ndarray | None:
    """One grey image per font, or None when any font's render is blank (drops the class)."""
    renders = [_render(chr(cp), font, size) for font in fonts]
    if any(int(render.min()) >= INK_LEVEL for render in renders):
        return None
    return np.stack(renders)


@register_dataset(
    "glyphs",
    description="674 Unicode letters/numbers/symbols in 16 matplotlib fonts "
    "(domain = font family, camera = font)",
    options={
        "image_size": Option(64, int_in(16, 512), "side of the square RGB images in px"),
        "max_classes": Option(None, optional_positive_int, "keep only the first N code points"),
    },
    available=available,
    where=where,
    sources=sources,
    version="glyphs-3",
)
def build_glyphs(*, image_size: int = 64, max_classes: int | None = None) -> ImageDataset:
    """Render every kept code point in every font; deterministic for a given Pillow/FreeType."""
    em = max(1, round(EM_FRACTION * image_size))
    fonts = [ImageFont.truetype(str(path), em) for path in font_paths()]
    kept: list[int] = []
    blocks: list[np.ndarray] = []
    dropped: list[str] = []
    for cp in candidate_codepoints():
        if max_classes is not None and len(kept) >= max_classes:
            break
        block = render_class(cp, fonts, image_size)
        if block is None:
            dropped.append(f"U+{cp:04X}")
            continue
        kept.append(cp)
        blocks.append(block)
    grey = np.concatenate(blocks) if blocks else np.zeros((0, image_size, image_size), np.uint8)
    n_fonts = len(FONTS)
    font_family = np.array([FAMILIES.index(family) for family, _s, _f in FONTS], dtype=np.int64)
    return ImageDataset(
        name="glyphs",
        images=np.repeat(grey[..., None], 3, axis=-1),
        labels=np.repeat(np.arange(len(kept), dtype=np.int64), n_fonts),
        domains=np.tile(font_family, len(kept)),
        cameras=np.tile(np.arange(n_fonts, dtype=np.int64), len(kept)),
        class_names=[class_name(cp) for cp in kept],
        domain_names=list(FAMILIES),
        camera_names=[f"{family}/{style}" for family, style, _file in FONTS],
        meta={"shared_codepoints": len(shared_codepoints()), "dropped_blank": dropped},
    )
