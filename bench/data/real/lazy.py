"""``LazyImages``: an image table that decodes files on demand, so 100k photos never sit in RAM.

It answers the same indexing as the embedded sets' ``(N, H, W, 3)`` uint8 arrays:
``images[i]`` is one ``(H, W, 3)`` image, ``images[a:b]`` / ``images[int_array]`` /
``images[bool_mask]`` a ``(n, H, W, 3)`` batch, ``len`` and ``.shape`` are known without decoding.
``select(index)`` gives a lazy subset and ``fingerprint()`` a cheap content hash.

Decoding: Pillow, converted to RGB, then

* ``image_size`` an int ``S``: the short side is resized to ``S`` (bilinear) and the centre
  ``S x S`` is cropped (the DML convention);
* ``image_size`` a pair ``(H, W)``: the image is resized to exactly ``H x W`` (the re-ID
  convention, e.g. 256 x 128 person crops).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.real.safety import open_rgb
from bench.errors import BenchError

_POOL: ThreadPoolExecutor | None = None
_PARALLEL_FROM = 4  # batches at least this large are decoded on a thread pool


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                   thread_name_prefix="bench-decode")
    return _POOL


def _forget_pool() -> None:
    """A forked child (e.g. a DataLoader worker) inherits the pool object but not its threads:
    submitting to it would wait forever, so the child starts a pool of its own."""
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def normalise_size(image_size: int | Sequence[int]) -> tuple[int, int, bool]:
    """(height, width, crop): an int means a square centre crop, a pair a plain resize."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        return int(image_size), int(image_size), True
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        height, width = (int(v) for v in image_size)
        return height, width, False
    raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")


def decode(path: Path, image_size: int | Sequence[int]) -> np.ndarray:
    """One image file as a ``(H, W, 3)`` uint8 array, sized as described in the module doc."""
    height, width, crop = normalise_size(image_size)
    image = open_rgb(path, draft=(width, height))
    if crop:
        side = height
        scale = side / min(image.size)
        size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - side) // 2, (size[1] - side) // 2
        image = image.crop((left, top, left + side, top + side))
    else:
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class LazyImages:
    """Image files under ``root`` (``relative_paths``), decoded when indexed."""

    def __init__(self, root: str | os.PathLike[str], relative_paths: Sequence[str] | np.ndarray,
                 image_size: int | Sequence[int]) -> None:
        self.root = Path(root)
        self.paths = np.asarray(relative_paths, dtype=np.str_)
        if self.paths.ndim != 1:
            raise ValueError("relative_paths must be one-dimensional")
        self.height, self.width, self.crop = normalise_size(image_size)
        self.image_size: int | tuple[int, int] = (
            self.height if self.crop else (self.height, self.width)
        )
        self._fingerprint: str | None = None

    # --- array-like interface ------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.height, self.width, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"LazyImages({str(self.root)!r}, {len(self)} files, image_size={self.image_size})"

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self._decode(str(self.paths[int(index)]))  # IndexError past the end
        if isinstance(index, slice):
            return self._decode_many(self.paths[index])
        array = np.asarray(index)
        if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
            if array.ndim != 1 and not (array.ndim == 0 and array.dtype != bool):
                raise IndexError("LazyImages takes an int, a slice or a 1-d int/bool array")
            if array.ndim == 0:
                return self._decode(str(self.paths[int(array)]))
            return self._decode_many(self.paths[array])
        raise IndexError(f"LazyImages cannot be indexed with {type(index).__name__}")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise BenchError(
            f"{len(self)} images are read lazily from {self.root} and are not turned into one "
            "array (it would hold every decoded image in memory); read them in batches with "
            "images[start:stop], and load lazy datasets with cache=False",
            source="LazyImages",
        )

    # --- lazy operations ---------------------------------------------------------------------

    def select(self, index: np.ndarray) -> LazyImages:
        """A lazy subset (int indices or a boolean mask); decodes nothing."""
        subset = LazyImages.__new__(LazyImages)
        subset.root = self.root
        subset.paths = self.paths[np.asarray(index)]
        subset.height, subset.width, subset.crop = self.height, self.width, self.crop
        subset.image_size = self.image_size
        subset._fingerprint = None
        return subset

    def path(self, index: int) -> Path:
        """Absolute path of image ``index``."""
        return self.root / str(self.paths[index])

    def fingerprint(self) -> str:
        """Hash of the decoding settings and every relative path with its file size.

        A missing file hashes as size -1, so the key changes once it is restored. Pillow's version
        is included because it decodes and resizes the pixels.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(f"lazy-v1|{Image.__version__}|{self.image_size}|{len(self)}".encode())
            for relative in self.paths.tolist():
                try:
                    size = os.stat(self.root / relative).st_size
                except OSError:
                    size = -1
                digest.update(f"\n{relative}\t{size}".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    # --- decoding ------------------------------------------------------------------------------

    def _decode(self, relative: str) -> np.ndarray:
        return decode(self.root / relative, self.image_size)

    def _decode_many(self, paths: np.ndarray) -> np.ndarray:
        out = np.empty((len(paths), self.height, self.width, 3), dtype=np.uint8)
        relatives = paths.tolist()
        if len(relatives) >= _PARALLEL_FROM:
            decoded = _pool().map(self._decode, relatives)
        else:
            decoded = map(self._decode, relatives)
        for i, image in enumerate(decoded):
            out[i] = image
        return out
