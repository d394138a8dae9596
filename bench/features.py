"""Frozen-trunk features, computed once per (dataset, backbone, weights) and cached on disk.

This is the fast CPU path: with ``trunk: none`` every method trains only its head on the same
cached features, so the trunk's forward pass is paid once for the whole protocol.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bench.data.records import ImageDataset
from bench.digest import load_verified, note, save_verified
from bench.models import Normalize, build_trunk
from bench.models.backbones import IMAGENET_NORMALIZATION, InputNormalization
from bench.paths import cache_root


def dataset_fingerprint(ds: ImageDataset) -> str:
    """A content hash of the images and labels (the cache key's data part).

    Lazy image sources (real datasets) hash their file list and sizes via ``fingerprint()``.
    """
    digest = hashlib.sha256()
    arrays = [ds.images, ds.labels, ds.domains, ds.cameras]
    if callable(getattr(ds.images, "fingerprint", None)):
        digest.update(f"images:{ds.images.fingerprint()}".encode())
        arrays = arrays[1:]
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:16]


@torch.no_grad()
def extract(network: nn.Module, images: np.ndarray, *, device: torch.device, batch_size: int = 256,
            progress: bool = True, description: str = "features",
            normalization: InputNormalization = IMAGENET_NORMALIZATION) -> np.ndarray:
    """Run ``Normalize(normalization)`` + ``network`` over uint8 NHWC images in eval mode.

    The result is C-contiguous float32, whatever memory format the network produced (from
    NHWC input, convolutions answer in channels-last strides): a cache hit loads C-contiguous
    arrays, and a convolution trained on the other layout picks other kernels and gives other
    floats, so a run that built the cache would differ from one that loaded it."""
    model = nn.Sequential(Normalize(normalization), network).to(device).eval()
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, disable=not progress,
                      leave=False, dynamic_ncols=True):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        chunks.append(model(batch).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def trunk_features(ds: ImageDataset, backbone: str, *, pretrained: bool, device: torch.device,
                   progress: bool = True, use_cache: bool = True) -> tuple[np.ndarray, str]:
    """Pooled trunk features for every image of ``ds``; returns (features, weights origin)."""
    if not pretrained:
        torch.manual_seed(0)  # a random-init trunk must still be the same trunk every time
    trunk = build_trunk(backbone, pretrained=pretrained)
    key = f"{dataset_fingerprint(ds)}-{backbone}-{trunk.weights.replace(':', '_')}"
    path = cache_root() / "features" / f"{key}.npz"
    if use_cache:
        cached = load_features(path, len(ds.images))
        if cached is not None:
            return cached, trunk.weights
    features = extract(trunk.network, ds.images, device=device, progress=progress,
                       description=f"{backbone} features", normalization=trunk.normalization)
    if use_cache:
        save_features(path, features)
    return features, trunk.weights


def load_features(path: Path, rows: int) -> np.ndarray | None:
    """A verified features entry of ``rows`` float32 rows, or None (absent, or damaged: one
    line says it is rebuilt)."""
    arrays, damage = load_verified(path)
    if arrays is not None:
        features = arrays.get("features")
        if features is None or features.dtype != np.float32 or features.ndim != 2 \
                or len(features) != rows:
            shape = None if features is None else (features.dtype, features.shape)
            damage = f"holds {shape}, expected float32 features of {rows} rows"
        else:
            return features
    if damage is not None:
        note(path, damage)
    return None


def save_features(path: Path, features: np.ndarray) -> None:
    save_verified(path, {"features": np.ascontiguousarray(features, dtype=np.float32)})
