"""Backbone factory: a trunk that maps images to a pooled feature vector, and its input
normalisation (ImageNet RGB for the torchvision trunks, Caffe BGR for BN-Inception)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.models as tvm
from torch import nn

from bench.errors import BenchError
from bench.models.bninception import FEATURE_SIZE as BN_INCEPTION_FEATURES
from bench.models.bninception import BNInception, adapt_cadene_state
from bench.models.weights import load_pretrained_state

BACKBONES = ("mobilenet_v2", "resnet18", "resnet50", "bn_inception")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputNormalization:
    """How a trunk wants its pixels: optional RGB -> BGR swap, then (x - mean * scale) /
    (std * scale) per channel on 0-255 values (``mean``/``std`` in the trunk's channel order)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 255.0
    bgr: bool = False


IMAGENET_NORMALIZATION = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
#: Caffe convention of the ported BN-Inception weights (Cadene's pretrained_settings): BGR,
#: range 0-255, mean (104, 117, 128), std 1.
BN_INCEPTION_NORMALIZATION = InputNormalization((104.0, 117.0, 128.0), (1.0, 1.0, 1.0),
                                                scale=1.0, bgr=True)


@dataclass
class Trunk:
    """A pooled-feature network, its output width, its last stage, the weights' origin and the
    input normalisation it expects."""

    network: nn.Module
    feature_size: int
    last_stage: nn.Module
    weights: str
    normalization: InputNormalization = IMAGENET_NORMALIZATION


def build_trunk(name: str, *, pretrained: bool) -> Trunk:
    """Build ``name`` without its classifier; the output is the global-average-pooled feature."""
    if name not in BACKBONES:
        raise BenchError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})",
                         field="model.backbone")
    if name == "bn_inception":
        return _bn_inception(pretrained)
    model = getattr(tvm, name)(weights=None)
    origin = "random-init"
    if pretrained:
        state, origin = load_pretrained_state(name)
        model.load_state_dict(state)
    if name == "mobilenet_v2":
        network = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Trunk(network, model.last_channel, model.features[-1], origin)
    model.fc = nn.Identity()
    return Trunk(model, 512 if name == "resnet18" else 2048, model.layer4, origin)


def _bn_inception(pretrained: bool) -> Trunk:
    network = BNInception()
    origin = "random-init"
    if pretrained:
        state, origin = load_pretrained_state("bn_inception")
        network.load_state_dict(adapt_cadene_state(state))
    return Trunk(network, BN_INCEPTION_FEATURES, network.last_stage(), origin,
                 BN_INCEPTION_NORMALIZATION)


def set_trunk_mode(trunk: Trunk, mode: str) -> None:
    """`all` trains everything; `none` freezes the trunk; `last_stage` trains only its last stage."""
    trainable = {"all": True, "none": False, "last_stage": False}[mode]
    trunk.network.requires_grad_(trainable)
    if mode == "last_stage":
        trunk.last_stage.requires_grad_(True)


class Normalize(nn.Module):
    """uint8 NHWC RGB images -> normalised float NCHW, done on the model's device.

    ``Normalize()`` is the ImageNet convention of the torchvision trunks; pass a trunk's
    ``normalization`` for others (BN-Inception: BGR, 0-255, Caffe means).
    """

    def __init__(self, normalization: InputNormalization = IMAGENET_NORMALIZATION) -> None:
        super().__init__()
        self.bgr = normalization.bgr
        scale = normalization.scale
        self.register_buffer("mean", torch.tensor(normalization.mean).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(normalization.std).view(1, 3, 1, 1) * scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std
