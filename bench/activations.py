"""Cached activations entering a trunk's trained stage (``trunk: last_stage`` + ``cache_frozen``).

When only the trunk's last stage trains and training batches are not augmented, everything
before that stage is a fixed function of the image: its output is computed once per (trunk
weights, dataset, stage, crop) and cached on disk, and the loop then trains last stage + head on
the cached activations. Fine-tuning protocols get the speed of the frozen-feature path.

The cache key is a digest of the frozen prefix's weights (every tensor of its state dict), the
dataset's content fingerprint, the backbone and stage names, the input normalisation and the
crop, so a changed weight file, dataset or stage can never reuse stale activations; the entry
itself is stored with its content digest (bench.digest), so a damaged file is rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.data.records import ImageDataset
from bench.digest import load_verified, note, save_verified
from bench.errors import BenchError
from bench.features import dataset_fingerprint, extract
from bench.models.backbones import Trunk, build_trunk
from bench.paths import cache_root

STAGE = "last_stage"
#: backbones whose trunk splits into (frozen prefix, trained last stage + pooling)
SPLITTABLE = ("mobilenet_v2", "resnet18", "resnet50")


@dataclass
class StageSplit:
    """A trunk cut before its last stage: ``prefix(x)`` then ``suffix`` = the full trunk."""

    prefix: nn.Module
    suffix: nn.Module
    trunk: Trunk


def split_trunk(backbone: str, *, pretrained: bool) -> StageSplit:
    """Build ``backbone`` and cut it before ``trunk.last_stage`` (the stage `last_stage` trains)."""
    if backbone not in SPLITTABLE:
        raise BenchError(f"cache_frozen supports backbones {', '.join(SPLITTABLE)}, not "
                         f"{backbone!r}", field="model.cache_frozen")
    trunk = build_trunk(backbone, pretrained=pretrained)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if backbone == "mobilenet_v2":
        features = trunk.network[0]
        prefix = nn.Sequential(*list(features)[:-1])
        suffix = nn.Sequential(trunk.last_stage, *pool)
    else:
        net = trunk.network
        prefix = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1,
                               net.layer2, net.layer3)
        suffix = nn.Sequential(net.layer4, *pool)
    return StageSplit(prefix, suffix, trunk)


def weights_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) of ``module``."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def activation_key(split: StageSplit, ds: ImageDataset, backbone: str,
                   crop_size: int | None) -> str:
    """The cache key: digest of (prefix weights, data, backbone, stage, normalisation, crop)."""
    parts = [weights_digest(split.prefix), dataset_fingerprint(ds), backbone, STAGE,
             repr(split.trunk.normalization), f"crop={crop_size}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def center_crop(images: np.ndarray, size: int | None) -> np.ndarray:
    """The evaluation centre crop, applied once before caching (no augmentation is allowed)."""
    if size is None or images.shape[1] <= size:
        return images
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top:top + size, left:left + size]


def cached_activations(ds: ImageDataset, backbone: str, *, pretrained: bool,
                       crop_size: int | None, device: torch.device, progress: bool = True,
                       use_cache: bool = True) -> tuple[np.ndarray, StageSplit, bool]:
    """(activations entering the last stage for every image, the split trunk, cache hit)."""
    if not pretrained:
        torch.manual_seed(0)  # a random-init trunk must still be the same trunk every time
    split = split_trunk(backbone, pretrained=pretrained)
    path = cache_root() / "activations" / f"{activation_key(split, ds, backbone, crop_size)}.npz"
    if use_cache:
        cached = _load(path, len(ds))
        if cached is not None:
            return cached, split, True
    images = ds.images if isinstance(ds.images, np.ndarray) else ds.images[np.arange(len(ds))]
    out = extract(split.prefix, np.ascontiguousarray(center_crop(images, crop_size)),
                  device=device, progress=progress, description=f"{backbone} prefix",
                  normalization=split.trunk.normalization)
    if use_cache:  # extract returns C-contiguous float32: exactly what a cache hit returns
        save_verified(path, {"activations": out})
    return out, split, False


def _load(path, rows: int) -> np.ndarray | None:
    """A verified entry of ``rows`` float32 (N, C, H, W) activations, or None (absent, or
    damaged: one line says it is rebuilt)."""
    arrays, damage = load_verified(path)
    if arrays is not None:
        acts = arrays.get("activations")
        if acts is not None and acts.dtype == np.float32 and acts.ndim == 4 and len(acts) == rows:
            return acts
        damage = "does not hold float32 (N, C, H, W) activations of this dataset"
    if damage is not None:
        note(path, damage)
    return None
