"""Several datasets as one pool (e.g. DukeMTMC-reID + Market-1501 for domain adaptation).

Identities of different datasets are different people, so class indices are offset per dataset;
domain and camera names are prefixed with the dataset name so they stay distinct.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from bench.data.records import ImageDataset, is_lazy
from bench.errors import BenchError


class ConcatImages:
    """Lazy or in-memory image sources one after another, indexed as one (decodes on demand)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise BenchError(f"datasets have different image shapes {sorted(shapes)}; give them "
                             f"the same `image_size` option", field="datasets")
        self._item_shape = shapes.pop()

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.offsets[-1]), *self._item_shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        return part, rows - self.offsets[part]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            part, row = self._locate(np.array([int(index) % len(self)]))
            return np.asarray(self.parts[int(part[0])][int(row[0])])
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        part, local = self._locate(rows)
        out = np.empty((len(rows), *self._item_shape), dtype=np.uint8)
        for p in np.unique(part):
            take = part == p
            out[take] = self.parts[int(p)][local[take]]
        return out

    def select(self, index: np.ndarray) -> ConcatImages:
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        part, local = self._locate(rows)
        if np.any(np.diff(part) < 0):
            raise ValueError("ConcatImages.select needs rows in dataset order")
        pieces = []
        for p in np.unique(part):
            source = self.parts[int(p)]
            chosen = local[part == p]
            pieces.append(source.select(chosen) if is_lazy(source) else source[chosen])
        return ConcatImages(pieces)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for p in self.parts:
            if is_lazy(p):
                digest.update(p.fingerprint().encode())
            else:
                digest.update(np.ascontiguousarray(p).data)
        return digest.hexdigest()[:16]


def junk_classes(ds: ImageDataset) -> list[int]:
    """Class indices of junk images (Market-1501's identity -1): dropped from re-ID ranking."""
    if "junk_labels" in ds.meta:
        return list(ds.meta["junk_labels"])
    label = ds.meta.get("junk_label")
    return [] if label is None else [int(label)]


def _roles_or_halves(ds: ImageDataset) -> np.ndarray:
    """A dataset's roles, or train/test by the class-half rule when it has none."""
    if ds.roles is not None:
        return np.asarray(ds.roles)
    half = ds.num_classes // 2
    return np.where(ds.labels < half, "train", "test")


def merge_datasets(parts: list[ImageDataset]) -> ImageDataset:
    """One pool of ``parts``; a single dataset is returned unchanged."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p.images, np.ndarray) for p in parts):
        shapes = {p.images.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise BenchError(f"datasets have different image shapes {sorted(shapes)}; give them "
                             f"the same `image_size` option", field="datasets")
        images: Any = np.concatenate([p.images for p in parts])
    else:
        images = ConcatImages([p.images for p in parts])
    labels, domains, cameras, junk = [], [], [], []
    class_names, domain_names, camera_names = [], [], []
    for p in parts:
        junk += [len(class_names) + int(j) for j in junk_classes(p)]
        labels.append(p.labels + len(class_names))
        domains.append(p.domains + len(domain_names))
        cameras.append(p.cameras + len(camera_names))
        class_names += [f"{p.name}/{c}" for c in p.class_names]
        domain_names += [d if d == p.name else f"{p.name}/{d}" for d in p.domain_names]
        camera_names += [f"{p.name}/{c}" for c in p.camera_names]
    meta = {"merged": [p.name for p in parts], "junk_labels": junk}
    if any(p.meta.get("camera_views", "colour_statistics") is False for p in parts):
        meta["camera_views"] = False  # a part that declares no camera views
    # otherwise the pool's views are the label-free colour-statistics transfer (the parts'
    # imaging-condition tables, if any, do not combine into one camera numbering)
    return ImageDataset(
        name="+".join(p.name for p in parts), images=images,
        labels=np.concatenate(labels), domains=np.concatenate(domains),
        cameras=np.concatenate(cameras), class_names=class_names, domain_names=domain_names,
        camera_names=camera_names, meta=meta,
        roles=np.concatenate([_roles_or_halves(p) for p in parts]))
