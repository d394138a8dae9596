"""Backbone factory: a torchvision trunk that maps images to a pooled feature vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.models as tvm
from torch import nn

from bench.errors import BenchError
from bench.models.weights import load_pretrained_state

BACKBONES = ("mobilenet_v2", "resnet18", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Trunk:
    """A pooled-feature network, its output width, its last stage and the weights' origin."""

    network: nn.Module
    feature_size: int
    last_stage: nn.Module
    weights: str


def build_trunk(name: str, *, pretrained: bool) -> Trunk:
    """Build ``name`` without its classifier; the output is the global-average-pooled feature."""
    if name not in BACKBONES:
        raise BenchError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})",
                         field="model.backbone")
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


def set_trunk_mode(trunk: Trunk, mode: str) -> None:
    """`all` trains everything; `none` freezes the trunk; `last_stage` trains only its last stage."""
    trainable = {"all": True, "none": False, "last_stage": False}[mode]
    trunk.network.requires_grad_(trainable)
    if mode == "last_stage":
        trunk.last_stage.requires_grad_(True)


class Normalize(nn.Module):
    """uint8 NHWC images -> ImageNet-normalised float NCHW, done on the model's device."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std
