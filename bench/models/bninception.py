"""BN-Inception (Inception v2 with batch norm, Ioffe & Szegedy 2015), pooled 1024-d output.

This is the trunk of the Metric Learning Reality Check and of much DML work. Its layer names
follow Cadene's ``pretrainedmodels.bninception`` so that the ImageNet weights ported there from
Caffe (``bn_inception-52deb4733.pth``) load unchanged: every convolution is a top-level
attribute (``inception_3a_1x1``) with its batch norm beside it (``inception_3a_1x1_bn``).

The network is described by a table instead of written out layer by layer. Each conv is
followed by its batch norm and a ReLU. The inception blocks have four branches (1x1;
3x3 reduce -> 3x3; double 3x3 reduce -> 3x3 -> 3x3; pool -> 1x1 projection), concatenated in
that order. The two reduction blocks (3c, 4e) have no 1x1 branch, stride-2 3x3s and a stride-2
max pool that is passed through unprojected. The ImageNet classifier (``last_linear``) is left
out: the trunk returns the global average of the last block's 1024 channels (Cadene pools
with ``AvgPool2d(7)``, the same thing on the 7x7 map that 224-227 px inputs give).

Input convention of the ported weights (Caffe): BGR channel order, values 0-255, mean
(104, 117, 128), std 1: see :data:`BN_INCEPTION_NORMALIZATION`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class Block(NamedTuple):
    """One inception block: branch widths; ``c1 = 0`` marks a reduction (stride-2) block."""

    name: str
    c1: int        # 1x1 branch
    r3: int        # 3x3 branch: reduce, then 3x3
    c3: int
    rd: int        # double 3x3 branch: reduce, then two 3x3
    d1: int
    d2: int
    pool: str      # "avg" or "max" (stride 1, projected) or "max_s2" (reduction, unprojected)
    proj: int      # pool projection width (0 for reduction blocks)


BLOCKS = (
    Block("3a", 64, 64, 64, 64, 96, 96, "avg", 32),
    Block("3b", 64, 64, 96, 64, 96, 96, "avg", 64),
    Block("3c", 0, 128, 160, 64, 96, 96, "max_s2", 0),
    Block("4a", 224, 64, 96, 96, 128, 128, "avg", 128),
    Block("4b", 192, 96, 128, 96, 128, 128, "avg", 128),
    Block("4c", 160, 128, 160, 128, 160, 160, "avg", 128),
    Block("4d", 96, 128, 192, 160, 192, 192, "avg", 128),
    Block("4e", 0, 128, 192, 192, 256, 256, "max_s2", 0),
    Block("5a", 352, 192, 320, 160, 224, 224, "avg", 128),
    Block("5b", 352, 192, 320, 192, 224, 224, "max", 128),
)
STEM_CHANNELS = 192
FEATURE_SIZE = 1024


def block_convs(block: Block, in_channels: int) -> list[tuple[str, int, int, int, int]]:
    """(layer suffix, in, out, kernel, stride) of a block's convolutions, in Cadene's order."""
    stride = 2 if block.c1 == 0 else 1
    convs = [("1x1", in_channels, block.c1, 1, 1)] if block.c1 else []
    convs += [("3x3_reduce", in_channels, block.r3, 1, 1), ("3x3", block.r3, block.c3, 3, stride),
              ("double_3x3_reduce", in_channels, block.rd, 1, 1),
              ("double_3x3_1", block.rd, block.d1, 3, 1),
              ("double_3x3_2", block.d1, block.d2, 3, stride)]
    if block.proj:
        convs.append(("pool_proj", in_channels, block.proj, 1, 1))
    return convs


def block_out_channels(block: Block, in_channels: int) -> int:
    pooled = block.proj if block.proj else in_channels
    return block.c1 + block.c3 + block.d2 + pooled


class BNInception(nn.Module):
    """BN-Inception without its classifier: (N, 3, H, W) BGR 0-255 minus mean -> (N, 1024)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, STEM_CHANNELS, 3)
        channels = STEM_CHANNELS
        for block in BLOCKS:
            for suffix, cin, cout, k, s in block_convs(block, channels):
                self._conv(f"inception_{block.name}_{suffix}", cin, cout, k, stride=s)
            channels = block_out_channels(block, channels)
        assert channels == FEATURE_SIZE

    def last_stage(self) -> nn.ModuleList:
        """The last inception block's layers, grouped (not registered twice: names unchanged)."""
        prefix = f"inception_{BLOCKS[-1].name}_"
        return nn.ModuleList(m for n, m in self.named_children() if n.startswith(prefix))

    def _conv(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.get_submodule(f"{name}_bn")(self.get_submodule(name)(x)))

    def _block(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        prefix = f"inception_{block.name}"
        outs = [self._cbr(f"{prefix}_1x1", x)] if block.c1 else []
        outs.append(self._cbr(f"{prefix}_3x3", self._cbr(f"{prefix}_3x3_reduce", x)))
        double = self._cbr(f"{prefix}_double_3x3_reduce", x)
        double = self._cbr(f"{prefix}_double_3x3_1", double)
        outs.append(self._cbr(f"{prefix}_double_3x3_2", double))
        if block.pool == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True,
                                  count_include_pad=True)
        elif block.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        outs.append(self._cbr(f"{prefix}_pool_proj", pooled) if block.proj else pooled)
        return torch.cat(outs, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's (N, 1024, h, w) map."""
        x = F.max_pool2d(self._cbr("conv1_7x7_s2", x), 3, stride=2, ceil_mode=True)
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for block in BLOCKS:
            x = self._block(block, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def adapt_cadene_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cadene's file -> this module's state dict: drop the classifier, and flatten the (1, C)
    batch-norm tensors that some copies of the port store back to (C,)."""
    out = {}
    for key, value in state.items():
        if key.startswith("last_linear."):
            continue
        if "_bn." in key and value.dim() == 2 and value.shape[0] == 1:
            value = value.reshape(-1)
        out[key] = value
    return out
