"""A PNG contact sheet: a few sampled classes, one row each, across domains / cameras / views.

Meant for eyeballing a dataset before benchmarking on it (is the class the same thing in every
domain? are the views sensible?), so it is plain Pillow: no figure state, fast, deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.data.records import ImageDataset
from bench.errors import BenchError

LABEL_WIDTH = 260
FONT_PX = 13
PAD = 4
MIN_THUMB, MAX_THUMB = 48, 96


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's DejaVu Sans (covers every glyphs class name); Pillow's default otherwise."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), FONT_PX)
    except (ImportError, OSError):
        return ImageFont.load_default(FONT_PX)


def _fit_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """Truncate with an ellipsis so a row label never runs into the images."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _row_indices(ds: ImageDataset, label: int, columns: int) -> np.ndarray:
    """The class's images ordered by (domain, camera, row), thinned evenly to ``columns``."""
    rows = np.flatnonzero(ds.labels == label)
    rows = rows[np.lexsort((rows, ds.cameras[rows], ds.domains[rows]))]
    if len(rows) > columns:
        rows = rows[np.linspace(0, len(rows) - 1, columns).round().astype(int)]
    return rows


def _thumb(image: np.ndarray, side: int) -> Image.Image:
    thumb = Image.fromarray(image, "RGB")
    if thumb.width != side:
        smaller = side < thumb.width
        resample = Image.Resampling.LANCZOS if smaller else Image.Resampling.NEAREST
        thumb = thumb.resize((side, side), resample)
    return thumb


def write_contact_sheet(
    ds: ImageDataset,
    path: str | os.PathLike[str],
    classes: int = 8,
    seed: int = 0,
    max_columns: int = 16,
) -> Path:
    """Write a grid PNG of ``classes`` seeded-random classes; returns the path written."""
    present = np.unique(ds.labels)
    if len(present) == 0:
        raise BenchError(
            "has no images to draw", source=f"dataset {ds.name}", field="contact sheet"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(present, size=min(classes, len(present)), replace=False))
    side = int(np.clip(ds.images.shape[1], MIN_THUMB, MAX_THUMB))
    rows = [_row_indices(ds, int(label), max_columns) for label in chosen]
    columns = max(len(r) for r in rows)
    font = _font()
    header = FONT_PX + 2 * PAD
    sheet = Image.new(
        "RGB",
        (LABEL_WIDTH + columns * (side + PAD) + PAD, header + len(rows) * (side + PAD) + PAD),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    counts = ds.counts()
    title = f"{ds.name}: {counts['classes']} classes, {counts['images']} images, "
    title += f"{counts['domains']} domains ({', '.join(ds.domain_names)})"
    draw.text((PAD, PAD), _fit_text(title, font, sheet.width - 2 * PAD), fill="black", font=font)
    for r, (label, indices) in enumerate(zip(chosen, rows, strict=True)):
        top = header + r * (side + PAD)
        name = _fit_text(ds.class_names[int(label)], font, LABEL_WIDTH - 2 * PAD)
        draw.text((PAD, top + side // 2), name, fill="black", font=font, anchor="lm")
        for c, index in enumerate(indices):
            sheet.paste(_thumb(ds.images[index], side), (LABEL_WIDTH + c * (side + PAD), top))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
