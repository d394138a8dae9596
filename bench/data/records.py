"""The sample table every dataset yields: one row per image with class, domain and camera."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageDataset:
    """Images held in memory plus per-sample metadata.

    ``labels``, ``domains`` and ``cameras`` are int64 indices into ``class_names``,
    ``domain_names`` and ``camera_names``. Classes are indexed in their canonical order (for the
    embedded sets: sorted by code point), so "the first half of the classes" is
    ``labels < num_classes // 2``.
    """

    name: str
    images: np.ndarray  # uint8, shape (N, H, W, 3)
    labels: np.ndarray  # int64, shape (N,)
    domains: np.ndarray  # int64, shape (N,)
    cameras: np.ndarray  # int64, shape (N,)
    class_names: list[str]
    domain_names: list[str]
    camera_names: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("labels", "domains", "cameras"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.name}: {name} has {len(getattr(self, name))} rows, images {n}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> ImageDataset:
        """A view of some rows; class/domain/camera name lists are kept whole."""
        index = np.asarray(index)
        return ImageDataset(
            name=self.name,
            images=self.images[index],
            labels=self.labels[index],
            domains=self.domains[index],
            cameras=self.cameras[index],
            class_names=self.class_names,
            domain_names=self.domain_names,
            camera_names=self.camera_names,
            meta=self.meta,
        )

    def counts(self) -> dict[str, int]:
        return {
            "classes": int(len(np.unique(self.labels))),
            "images": len(self),
            "domains": int(len(np.unique(self.domains))),
            "cameras": int(len(np.unique(self.cameras))),
        }


def standard_split(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test): first half of the classes train, second half test."""
    train = labels < num_classes // 2
    return train, ~train
