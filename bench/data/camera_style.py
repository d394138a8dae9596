"""Camera views without labels: "this target image as camera c would have taken it".

ECN's camera invariance (Zhong et al., CVPR 2019) swaps a target image for a CamStyle copy of
*the same photo* translated to another camera; the GAN that makes it is trained with camera ids
only. A view here is likewise a function of ONE row's own image, its camera id and another
camera id, never of other rows of the same identity (that would hand the method the target
labels). Nothing in this module receives, or can receive, identity labels.

Two transfers, both per-channel affine maps between cameras:

* :class:`ImagingConditions`: the dataset renders every camera as a known imaging condition
  (ink / paper colours: contrast and tint) applied to one picture, ``x = gain_c * p + offset_c``
  per channel (:mod:`bench.data.glyph_cameras`). The view is then exact (up to rounding): the
  picture is recovered by inverting camera a's condition and re-imaged by camera c's.
* :class:`ColourStatistics`: elsewhere, a label-free style transfer: the image's colours are
  moved from its camera's pooled per-channel mean / std to camera c's, both measured on the
  unlabeled target training images (the CamStyle substitute without a GAN). For cameras that
  differ by a per-channel affine colour change this equals the exact view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: images per camera read to measure its colour statistics (bounds decoding on real datasets)
STATS_IMAGES_PER_CAMERA = 256
#: smallest per-channel standard deviation used as a divisor (uint8 units)
MIN_STD = 1.0


@dataclass(frozen=True)
class CameraViews:
    """Base: per-camera affine colour maps ``x = gain[c] * p + offset[c]`` (uint8 units).

    ``cameras``: the camera ids a view may be drawn from (the target training cameras).
    """

    cameras: np.ndarray  # int64 camera ids a view can be rendered as
    gain: np.ndarray  # (max camera id + 1, 3) float64
    offset: np.ndarray  # (max camera id + 1, 3) float64
    description: str

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    def restyle(self, images: torch.Tensor, from_cameras: np.ndarray,
                to_cameras: np.ndarray) -> torch.Tensor:
        """Each uint8 NHWC image as camera ``to`` instead of camera ``from`` would see it."""
        gain_a = torch.as_tensor(self.gain[from_cameras], dtype=torch.float32)[:, None, None]
        off_a = torch.as_tensor(self.offset[from_cameras], dtype=torch.float32)[:, None, None]
        gain_b = torch.as_tensor(self.gain[to_cameras], dtype=torch.float32)[:, None, None]
        off_b = torch.as_tensor(self.offset[to_cameras], dtype=torch.float32)[:, None, None]
        picture = (images.float() - off_a) / gain_a
        return (gain_b * picture + off_b).round().clamp(0, 255).to(torch.uint8)

    def pick(self, cameras: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each camera id, one of the OTHER view cameras drawn uniformly (the own camera
        when there is no other)."""
        cameras = np.asarray(cameras, dtype=np.int64)
        others = len(self.cameras) - 1
        if others < 1:
            return cameras.copy()
        pick = rng.integers(0, others, len(cameras))
        own = np.searchsorted(self.cameras, cameras)
        known = (own < len(self.cameras)) & (self.cameras[np.minimum(own, others)] == cameras)
        # skip the own camera's position so the draw is uniform over the others
        return self.cameras[np.where(known & (pick >= own), pick + 1, pick)]

    def draw(self, images: torch.Tensor, cameras: np.ndarray,
             rng: np.random.Generator) -> torch.Tensor:
        """One view per image, as a camera drawn by :meth:`pick`."""
        return self.restyle(images, cameras, self.pick(cameras, rng))

    def rows(self, images, cameras: np.ndarray, rows: np.ndarray,
             to: np.ndarray) -> RestyledRows:
        """``images[rows]`` re-imaged as cameras ``to``, decoded and restyled when indexed (so
        a loader thread does the work)."""
        return RestyledRows(self, images, np.asarray(cameras)[rows], np.asarray(rows), to)


@dataclass(frozen=True)
class RestyledRows:
    """Indexable: position i = ``images[rows[i]]`` as camera ``to[i]`` instead of
    ``cameras[i]``."""

    views: CameraViews
    images: object
    cameras: np.ndarray
    rows_: np.ndarray
    to: np.ndarray

    def __len__(self) -> int:
        return len(self.rows_)

    def __getitem__(self, index) -> torch.Tensor:
        index = np.asarray(index)
        raw = torch.as_tensor(self.images[self.rows_[index]])
        return self.views.restyle(raw, self.cameras[index], self.to[index])


class ImagingConditions(CameraViews):
    """Views from the dataset's own imaging conditions (exact re-imaging of the picture)."""

    @classmethod
    def from_conditions(cls, conditions: list[dict], cameras: np.ndarray) -> ImagingConditions:
        """``conditions[c] = {"gain": [3 floats], "offset": [3 floats]}`` for every camera id."""
        gain = np.array([c["gain"] for c in conditions], dtype=np.float64)
        offset = np.array([c["offset"] for c in conditions], dtype=np.float64)
        if gain.shape != offset.shape or gain.ndim != 2 or gain.shape[1] != 3:
            raise ValueError("camera conditions need a 3-channel gain and offset per camera")
        if np.any(np.abs(gain) < 1e-6):
            raise ValueError("a camera condition with zero gain cannot be inverted")
        return cls(np.unique(np.asarray(cameras, np.int64)), gain, offset,
                   "camera views = the row's own picture re-imaged under another target "
                   "camera's imaging condition (ink/paper colours), from camera ids only")


class ColourStatistics(CameraViews):
    """Views by per-camera colour-statistics transfer, measured on unlabeled target images."""

    @classmethod
    def fit(cls, images, cameras: np.ndarray) -> ColourStatistics:
        """Pooled per-channel pixel mean / std of each camera over (up to
        ``STATS_IMAGES_PER_CAMERA`` evenly spaced) unlabeled images ``images`` (uint8 NHWC,
        tensor-like, indexable with an integer array)."""
        cameras = np.asarray(cameras, dtype=np.int64)
        ids = np.unique(cameras)
        size = int(ids.max()) + 1 if len(ids) else 0
        mean = np.zeros((size, 3))
        std = np.ones((size, 3))
        for c in ids:
            rows = np.flatnonzero(cameras == c)
            take = rows[np.linspace(0, len(rows) - 1, min(len(rows), STATS_IMAGES_PER_CAMERA))
                        .round().astype(np.int64)]
            pixels = torch.as_tensor(images[take]).reshape(-1, 3).double()
            mean[c] = pixels.mean(0).numpy()
            std[c] = np.maximum(pixels.std(0).numpy(), MIN_STD)
        # x = std_c * z + mean_c: the same affine form, z = the standardised picture
        return cls(ids, std, mean,
                   "camera views = the row's own image with its colours moved from its camera's "
                   "to another target camera's mean/std (measured on unlabeled target images)")


def is_image_batch(inputs) -> bool:
    """True for uint8 NHWC RGB images (the only inputs a view can be rendered from); lazy
    sources are probed by decoding their first row."""
    if len(inputs) == 0:
        return False
    sample = inputs[np.array([0])]
    return (getattr(sample, "dtype", None) == torch.uint8 and len(sample.shape) == 4
            and sample.shape[-1] == 3)


__all__ = ["CameraViews", "ColourStatistics", "ImagingConditions", "RestyledRows",
           "is_image_batch"]
