"""``bench datasets prepare`` and ``bench datasets verify`` for the real datasets.

* :func:`prepare` checks a copy the user placed: the official files are there, the lists parse
  and stay inside the root, every listed image exists, and (for the benchmark sets) the counts
  match the documented ones. When no copy is there and the dataset has an official source that
  allows scripted download (:data:`DOWNLOADS`), it downloads the archive, checks its MD5 and
  extracts it safely; offline, or without such a source, the error says exactly what to put where.
* :func:`verify` decodes every image (or, with ``quick``, opens its header) and reports each
  missing, unreadable or corrupt one on its own line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bench.data.real.common import (
    REAL_DATASETS,
    RealDataset,
    apply_count_check,
    check_counts,
    parse_count_mode,
)
from bench.data.real.lazy import LazyImages
from bench.data.real.safety import IMAGE_FORMATS, entry_problem, max_pixels, open_rgb
from bench.data.records import ImageDataset
from bench.data.registry import get_spec, resolve_options
from bench.errors import BenchError


@dataclass(frozen=True)
class Download:
    """An official archive that may be fetched by a script, with its published MD5."""

    url: str
    md5: str
    filename: str


#: Official sources that allow scripted download. The others (Cars196, SOP, In-Shop, the re-ID
#: sets) are behind forms, agreements, dead FTP servers or were withdrawn: prepare explains
#: what to put where instead.
DOWNLOADS: dict[str, Download] = {
    "cub200": Download(
        url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        md5="97eceeb196236b17998738112f37df78",
        filename="CUB_200_2011.tgz",
    ),
}


def real_info(name: str) -> RealDataset:
    """The real dataset called ``name`` (a BenchError for unknown or embedded ones)."""
    get_spec(name)  # loads the built-in modules; BenchError listing names if unknown
    if name not in REAL_DATASETS:
        known = ", ".join(sorted(REAL_DATASETS))
        raise BenchError(f"is not read from disk (prepare/verify apply to: {known})",
                         source=f"dataset {name}")
    return REAL_DATASETS[name]


def open_dataset(name: str, root: str | os.PathLike[str] | None = None,
                 **options: Any) -> ImageDataset:
    """Build real dataset ``name`` from ``root`` (default location when None), without caching.

    Unlike ``load_dataset`` this honours an explicit ``root`` even when the default location is
    empty, and never writes the lazy dataset to the array cache.
    """
    real_info(name)
    if root is not None:
        options["root"] = root
    spec = get_spec(name)
    return spec.builder(**resolve_options(spec, options))


# --- prepare -----------------------------------------------------------------------------------


def prepare(name: str, root: str | os.PathLike[str] | None = None, *, download: bool = True,
            log: Callable[[str], None] = print, **options: Any) -> list[str]:
    """Check (and where allowed, download) a copy; returns the problems, one line each."""
    info = real_info(name)
    base = info.root(root)
    if info.locate(base) is None:
        source = DOWNLOADS.get(name)
        if source is None or not download:
            raise BenchError(info.missing_text(base), source=f"dataset {name}")
        fetch(source, base, log=log)
        if info.locate(base) is None:
            raise BenchError(f"the archive from {source.url} did not contain the expected files; "
                             + info.missing_text(base), source=f"dataset {name}")
    mode = _count_mode(options)
    ds = open_dataset(name, str(base), counts="off", **options)
    problems = check_counts(ds, info.documented) if mode != "off" else []
    missing = [f"{ds.images.path(i)}: missing" for i in range(len(ds))
               if not ds.images.path(i).is_file()]
    problems.extend(missing)
    log(f"{name}: {len(ds):,} images, {ds.counts()['classes']:,} classes in {ds.meta['root']}")
    if not problems:
        if info.documented and mode != "off":
            apply_count_check(ds, info.documented, "strict")
            log(f"{name}: documented counts match")
        log(f"{name}: ready; `bench datasets verify {name} --root {base}` decodes every image")
    return problems


def _count_mode(options: dict[str, Any]) -> str:
    """Take a ``counts`` option out of ``options`` (these commands open the copy with the count
    check off themselves), refusing a bad value with one line."""
    value = options.pop("counts", "auto")
    try:
        return parse_count_mode(value)
    except ValueError as error:
        raise BenchError(str(error), field="--option counts") from None


def fetch(source: Download, base: Path, *, log: Callable[[str], None] = print,
          opener: Callable[..., Any] = urllib.request.urlopen) -> Path:
    """Download ``source`` into ``base/.download/``, check its MD5 and extract it into ``base``."""
    target_dir = base / ".download"
    target_dir.mkdir(parents=True, exist_ok=True)
    archive = target_dir / source.filename
    if not (archive.is_file() and _md5(archive) == source.md5):
        partial = archive.with_name(archive.name + ".part")
        log(f"downloading {source.url} -> {archive}")
        try:
            with opener(source.url, timeout=60) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as error:
            partial.unlink(missing_ok=True)
            reason = getattr(error, "reason", None) or error
            raise BenchError(f"cannot download {source.url} ({reason}); download it elsewhere "
                             f"and put {source.filename} in {target_dir} or extract it in {base}",
                             source="prepare") from None
        digest = _md5(partial)
        if digest != source.md5:
            partial.unlink(missing_ok=True)
            raise BenchError(f"MD5 of {source.url} is {digest}, expected {source.md5}; the file "
                             "was not kept", source="prepare")
        os.replace(partial, archive)
    log(f"extracting {archive.name} into {base}")
    extract(archive, base)
    return archive


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract(archive: Path, base: Path) -> None:
    """Extract a .tgz/.tar/.zip into ``base``; members may not leave it or be links/devices."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                problem = entry_problem(member.filename)
                if problem is not None:
                    raise BenchError(problem, source=str(archive), field=member.filename)
            zf.extractall(base)
        return
    try:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(base, filter="data")  # refuses absolute paths, '..', outside links
                return
            members = tf.getmembers()  # Pythons without extraction filters: check by hand
            for member in members:
                problem = entry_problem(member.name)
                if problem is None and not (member.isfile() or member.isdir()):
                    problem = "links and special files are not extracted"
                if problem is not None:
                    raise BenchError(problem, source=str(archive), field=member.name)
            tf.extractall(base, members=members)  # every member was checked above
    except (tarfile.TarError, OSError) as error:
        raise BenchError(f"cannot extract ({error})", source=str(archive)) from None


# --- verify ------------------------------------------------------------------------------------


def check_image(path: Path, *, quick: bool = False) -> str | None:
    """None when ``path`` is a good image, else the one-line reason."""
    try:
        if quick:
            if not path.is_file():
                return "image file is missing"
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                width, height = image.size
            if width * height > max_pixels():
                return f"image of {width}x{height} pixels exceeds the {max_pixels():,}-pixel limit"
            return None
        open_rgb(path)
    except BenchError as error:
        return error.reason
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"unreadable image ({error})"
    return None


def verify_images(images: LazyImages, *, quick: bool = False,
                  workers: int | None = None) -> Iterable[str]:
    """``<path>: <reason>`` for each bad image, in dataset order."""
    paths = [images.path(i) for i in range(len(images))]
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, reason in zip(paths, pool.map(lambda p: check_image(p, quick=quick), paths),
                                strict=True):
            if reason is not None:
                yield f"{path}: {reason}"


def verify(name: str, root: str | os.PathLike[str] | None = None, *, quick: bool = False,
           log: Callable[[str], None] = print, **options: Any) -> list[str]:
    """Every missing, unreadable or corrupt image of ``name``, one line each (empty: all good)."""
    _count_mode(options)  # verify decodes images; it never checks counts
    ds = open_dataset(name, root, counts="off", **options)
    problems = list(verify_images(ds.images, quick=quick))
    log(f"{name}: checked {len(ds):,} images in {ds.meta['root']}"
        f" ({'headers only' if quick else 'decoded'}); {len(problems):,} bad")
    return problems
