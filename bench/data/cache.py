"""On-disk cache of built datasets, keyed by a content hash of everything that shapes the pixels.

Layout: ``$BENCH_CACHE`` (else ``~/.cache/bench``) / ``datasets`` / ``<name>-<sha256[:16]>.npz``.
Files are plain ``np.savez`` archives (no pickle): the arrays, the name lists as unicode arrays and
``meta`` as a JSON string. They are written to a temporary file and moved into place with
``os.replace`` so a crashed or concurrent build never leaves a half-written archive behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from bench.data.records import ImageDataset

_ARRAYS = ("images", "labels", "domains", "cameras")
_NAMES = ("class_names", "domain_names", "camera_names")
_DIGESTS: dict[tuple[str, int, int], str] = {}


def cache_root() -> Path:
    """``$BENCH_CACHE`` if set (tests point it at a tmp dir), else ``~/.cache/bench``."""
    env = os.environ.get("BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench"


def dataset_path(name: str, key: str) -> Path:
    """Where the archive for dataset ``name`` with content hash ``key`` lives."""
    return cache_root() / "datasets" / f"{name}-{key[:16]}.npz"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) so repeated loads stay cheap."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def text_sha256(text: str) -> str:
    """sha256 of a string (used for listings that stand in for many small files)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_key(
    name: str, version: str, options: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    """Hash of the builder version, the options, the source digests and the rendering stack.

    Pillow (its bundled FreeType rasterises every glyph), numpy (the view RNG streams) and the
    Unicode database (class names) are part of the key, so upgrading any of them rebuilds.
    """
    payload = {
        "dataset": name,
        "version": version,
        "options": dict(options),
        "sources": dict(sorted(sources.items())),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "unicode": unicodedata.unidata_version,
    }
    return text_sha256(json.dumps(payload, sort_keys=True, default=list))


def write_dataset(ds: ImageDataset, path: Path) -> None:
    """Store ``ds`` atomically: temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {k: np.ascontiguousarray(getattr(ds, k)) for k in _ARRAYS}
    for key in _NAMES:
        arrays[key] = np.array(getattr(ds, key), dtype=np.str_)
    arrays["name"] = np.array(ds.name, dtype=np.str_)
    arrays["meta"] = np.array(json.dumps(ds.meta, sort_keys=True, default=list), dtype=np.str_)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_dataset(path: Path) -> ImageDataset | None:
    """Load an archive written by :func:`write_dataset`; ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in _ARRAYS}
            names = {k: [str(s) for s in archive[k].tolist()] for k in _NAMES}
            name = str(archive["name"])
            meta = json.loads(str(archive["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # a damaged archive is rebuilt and overwritten
    return ImageDataset(name=name, meta=meta, **arrays, **names)
