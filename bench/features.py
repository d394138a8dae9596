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


#: a CPU batch holds about this many input pixels, so that its activations stay in the CPU's
#: caches: MobileNetV2 over 10,784 glyphs of 64 px took 6.2-6.9 s at 32 images a batch against
#: 16.3 s at 256 (2 threads), and at 224 px 0.96 s at 2 images against 2.7 s at 64, with the
#: same floats (one image a batch picks other kernels and differs, hence at least 2)
CPU_BATCH_PIXELS = 131_072
GPU_BATCH = 256


def default_batch(images: np.ndarray, device: torch.device) -> int:
    """Images per forward pass: whole 256-image batches on an accelerator; on the CPU as many
    as fit ``CPU_BATCH_PIXELS`` (2 to 256)."""
    if device.type != "cpu" or images.ndim != 4:
        return GPU_BATCH
    pixels = max(1, int(images.shape[1]) * int(images.shape[2]))
    return int(np.clip(CPU_BATCH_PIXELS // pixels, 2, GPU_BATCH))


@torch.no_grad()
def extract(network: nn.Module, images: np.ndarray, *, device: torch.device,
            batch_size: int | None = None, progress: bool = True, description: str = "features",
            normalization: InputNormalization = IMAGENET_NORMALIZATION) -> np.ndarray:
    """Run ``Normalize(normalization)`` + ``network`` over uint8 NHWC images in eval mode,
    ``batch_size`` images at a time (default: ``default_batch``).

    The result is C-contiguous float32, whatever memory format the network produced (from
    NHWC input, convolutions answer in channels-last strides): a cache hit loads C-contiguous
    arrays, and a convolution trained on the other layout picks other kernels and gives other
    floats, so a run that built the cache would differ from one that loaded it."""
    model = nn.Sequential(Normalize(normalization), network).to(device).eval()
    batch_size = batch_size or default_batch(images, device)
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
