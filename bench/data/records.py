"""The sample table every dataset yields: one row per image with class, domain and camera.

``images`` is either a uint8 array held in memory (the embedded sets) or a lazy *image source*
(the real benchmark sets, see :class:`bench.data.real.lazy.LazyImages`) that decodes files on
demand. Both answer ``len(images)``, ``images.shape``, ``images[i]`` (one ``(H, W, 3)`` image),
``images[start:stop]`` and ``images[int_or_bool_array]`` (a ``(n, H, W, 3)`` uint8 batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Values ``ImageDataset.roles`` may hold. ``train``: training images; ``test``: the retrieval
#: test set where every image is both query and reference (CUB, Cars, SOP); ``query`` and
#: ``gallery``: query->gallery evaluation (In-Shop, re-ID).
ROLES: tuple[str, ...] = ("train", "test", "query", "gallery")


@runtime_checkable
class ImageSource(Protocol):
    """What a lazy ``images`` field provides (an in-memory ndarray needs none of this)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> np.ndarray: ...

    def select(self, index: np.ndarray) -> ImageSource:
        """A lazy view of some rows (int indices or a boolean mask); decodes nothing."""
        ...

    def fingerprint(self) -> str:
        """A short content hash that changes when the files or the decoding change."""
        ...


def is_lazy(images: Any) -> bool:
    """True when ``images`` is a lazy image source rather than an in-memory array."""
    return not isinstance(images, np.ndarray) and hasattr(images, "select")


@dataclass(frozen=True)
class ImageDataset:
    """Images (in memory or lazy) plus per-sample metadata.

    ``labels``, ``domains`` and ``cameras`` are int64 indices into ``class_names``,
    ``domain_names`` and ``camera_names``. Classes are indexed in their canonical order (for the
    embedded sets: sorted by code point), so "the first half of the classes" is
    ``labels < num_classes // 2``.

    ``roles`` (optional) is a str array, one of :data:`ROLES` per sample, for datasets that
    define their own split (the real benchmark sets); ``None`` when the dataset has none and the
    class-half rule applies.
    """

    name: str
    images: np.ndarray | ImageSource  # uint8, shape (N, H, W, 3)
    labels: np.ndarray  # int64, shape (N,)
    domains: np.ndarray  # int64, shape (N,)
    cameras: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    domain_names: list[str]
    camera_names: list[str]
    meta: dict = field(default_factory=dict)
    roles: np.ndarray | None = None  # str, shape (N,), values in ROLES

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("labels", "domains", "cameras"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.name}: {name} has {len(getattr(self, name))} rows, images {n}")
        if self.roles is not None:
            if len(self.roles) != n:
                raise ValueError(f"{self.name}: roles has {len(self.roles)} rows, images {n}")
            unknown = sorted(set(np.unique(self.roles).tolist()) - set(ROLES))
            if unknown:
                raise ValueError(f"{self.name}: unknown roles {unknown}; known: {list(ROLES)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def lazy(self) -> bool:
        """True when the images are decoded from files on demand."""
        return is_lazy(self.images)

    def subset(self, index: np.ndarray) -> ImageDataset:
        """A view of some rows; class/domain/camera name lists are kept whole.

        Lazy images stay lazy: the subset decodes nothing.
        """
        index = np.asarray(index)
        images = self.images.select(index) if is_lazy(self.images) else self.images[index]
        return ImageDataset(
            name=self.name,
            images=images,
            labels=self.labels[index],
            domains=self.domains[index],
            cameras=self.cameras[index],
            class_names=self.class_names,
            domain_names=self.domain_names,
            camera_names=self.camera_names,
            meta=self.meta,
            roles=None if self.roles is None else self.roles[index],
        )

    def role_mask(self, role: str) -> np.ndarray:
        """Boolean mask of the samples with ``role``; all False when the dataset has no roles."""
        if self.roles is None:
            return np.zeros(len(self), dtype=bool)
        return self.roles == role

    def counts(self) -> dict[str, int]:
        """Classes, images, domains, cameras; plus ``<role>_images`` when roles are defined."""
        counts = {
            "classes": int(len(np.unique(self.labels))),
            "images": len(self),
            "domains": int(len(np.unique(self.domains))),
            "cameras": int(len(np.unique(self.cameras))),
        }
        if self.roles is not None:
            for role in ROLES:
                n = int(np.count_nonzero(self.roles == role))
                if n:
                    counts[f"{role}_images"] = n
        return counts


def default_class_split(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's default (train, test) class indices, the one rule every part of bench uses
    (a run's standard split, the settings' identities, `bench datasets show`, FID sequences):
    its own roles where it has them (``train`` rows train, all other rows test), else the first
    half of the class indices train and the second half test."""
    present = np.unique(ds.labels)
    if ds.roles is not None:
        roles = np.asarray(ds.roles)
        return np.unique(ds.labels[roles == "train"]), np.unique(ds.labels[roles != "train"])
    half = ds.num_classes // 2
    return present[present < half], present[present >= half]
