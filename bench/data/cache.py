"""On-disk cache of built datasets, keyed by a content hash of everything that shapes the pixels.

Layout: ``$BENCH_CACHE`` (else ``~/.cache/bench``) / ``datasets`` / ``<name>-<sha256[:16]>.npz``.
Files are plain ``np.savez`` archives (no pickle): the arrays, the name lists as unicode arrays,
``meta`` as a JSON string and the digest of all of them (``bench.digest``), verified on every
read. They are written to a temporary file and moved into place with ``os.replace`` so a crashed
or concurrent build never leaves a half-written archive behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from bench.data.records import ImageDataset
from bench.digest import load_verified, note, save_verified

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
    """Store ``ds`` atomically with the digest of its content (``bench.digest``)."""
    arrays: dict[str, np.ndarray] = {k: np.ascontiguousarray(getattr(ds, k)) for k in _ARRAYS}
    for key in _NAMES:
        arrays[key] = np.array(getattr(ds, key), dtype=np.str_)
    arrays["name"] = np.array(ds.name, dtype=np.str_)
    arrays["meta"] = np.array(json.dumps(ds.meta, sort_keys=True, default=list), dtype=np.str_)
    save_verified(path, arrays)


def read_dataset(path: Path) -> ImageDataset | None:
    """Load an archive written by :func:`write_dataset`; ``None`` if absent, or damaged or
    altered (its digest does not match; one line says it is rebuilt)."""
    arrays, damage = load_verified(path)
    try:
        if arrays is not None:
            found = {k: arrays[k] for k in _ARRAYS}
            names = {k: [str(s) for s in arrays[k].tolist()] for k in _NAMES}
            name = str(arrays["name"])
            meta = json.loads(str(arrays["meta"]))
            return ImageDataset(name=name, meta=meta, **found, **names)
    except (KeyError, ValueError, TypeError) as error:
        damage = f"not a dataset archive ({type(error).__name__}: {error})"
    if damage is not None:
        note(path, damage)
    return None
