"""Guards for reading datasets placed by users: paths stay inside the root, images have limits.

* Every path read from a list file, annotation file or CSV manifest goes through
  :func:`safe_entry`: no absolute paths, no ``..``, no NUL bytes, and the resolved path (symlinks
  followed) must stay inside the folder it is relative to. Violations raise ``BenchError`` naming
  the list file, the line and the reason.
* Images are opened with :func:`open_rgb`: only plain raster formats (Pillow's EPS plugin would
  run Ghostscript, so it and other exotic formats are refused), a pixel-count limit checked from
  the header before decoding (a decompression-bomb guard), and every decoder error turned into a
  one-line ``BenchError`` naming the file.
* Nothing is executed or unpickled: list files are text, ``cars_annos.mat`` is read with
  ``scipy.io.loadmat`` (plain MATLAB arrays), numpy files are never loaded with pickles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bench.data.real.pixels import to_rgb
from bench.errors import BenchError, DataError

#: Raster formats a dataset image may have; anything else is refused before decoding.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
#: File suffixes the folder dataset treats as images.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)
#: Default pixel limit per image (Pillow's own ``MAX_IMAGE_PIXELS`` default, about 89.5 MP).
DEFAULT_MAX_PIXELS = 89_478_485


def max_pixels() -> int:
    """The pixel limit: Pillow's ``Image.MAX_IMAGE_PIXELS`` when set, else the default."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else DEFAULT_MAX_PIXELS


def inside(path: Path, base: Path) -> bool:
    """True when the fully resolved ``path`` (symlinks followed) lies in the resolved ``base``."""
    real_base = _realpath(str(base))
    text = str(path)
    if os.path.islink(text):
        real = os.path.realpath(text)
    else:  # only the folders can be links: resolve the (cached) parent and append the name
        parent, name = os.path.split(text)
        real = os.path.join(_realpath(parent), name) if name not in ("", ".", "..") else (
            os.path.realpath(text))
    return real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)


@lru_cache(maxsize=65536)
def _realpath(folder: str) -> str:
    return os.path.realpath(folder)


def clear_path_cache() -> None:
    """Forget resolved folders (after folders were moved or links changed)."""
    _realpath.cache_clear()


_DRIVE = re.compile(r"^[A-Za-z]:")


def entry_problem(entry: str) -> str | None:
    """Why a relative path from a list file is not acceptable, or None when it is."""
    if not entry:
        return "empty path"
    if "\x00" in entry:
        return "path contains a NUL byte"
    if entry.startswith(("/", "\\")) or _DRIVE.match(entry):
        return f"absolute path {entry!r} (paths must be relative to the dataset root)"
    if ".." in entry.replace("\\", "/").split("/"):
        return f"path {entry!r} contains '..' (paths must stay inside the dataset root)"
    return None


def safe_entry(base: Path, entry: str, *, source: str | os.PathLike[str], line: int | str) -> Path:
    """``base / entry`` after checking it cannot leave ``base``; BenchError names source + line."""
    where = line if isinstance(line, str) else f"line {line}"
    problem = entry_problem(entry)
    if problem is not None:
        raise BenchError(problem, source=str(source), field=where)
    path = base / entry
    if not inside(path, base):
        raise BenchError(
            f"path {entry!r} resolves outside the dataset root {base} (symlink?)",
            source=str(source),
            field=where,
        )
    return path


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) for every non-blank line of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchError("file not found", source=str(path)) from None
    except UnicodeDecodeError as error:
        raise BenchError(f"not UTF-8 text ({error.reason} at byte {error.start})",
                         source=str(path)) from None
    except OSError as error:
        raise BenchError(f"cannot read ({error.strerror or error})", source=str(path)) from None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped:
            yield number, stripped


def open_rgb(path: Path, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` to an RGB image with format and size limits; BenchError on any problem.

    ``draft`` lets the JPEG decoder scale down by a power of two while keeping both sides at
    least that (width, height): a large speed-up for big photos that are shrunk anyway.
    """
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels():
                raise DataError(
                    f"image of {width}x{height} pixels exceeds the {max_pixels():,}-pixel limit "
                    "(possible decompression bomb)",
                    source=str(path),
                )
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", draft)
            image.load()
            rgb = to_rgb(image)  # EXIF orientation, transparency on white, 16-bit scaled
            return rgb
    except FileNotFoundError:
        raise DataError("image file is missing", source=str(path)) from None
    except UnidentifiedImageError:
        raise DataError(
            f"not a readable image (accepted formats: {', '.join(IMAGE_FORMATS)})",
            source=str(path),
        ) from None
    except Image.DecompressionBombError as error:
        raise DataError(f"refused as a decompression bomb ({error})", source=str(path)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"corrupt or unreadable image ({error})", source=str(path)) from None
