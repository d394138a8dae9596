"""Frozen BatchNorm: running statistics (and by default the affine parameters) never change.

The training loop calls ``model.train()`` every step; a plain ``eval()`` on the batch-norm
layers would be undone by it. :class:`FrozenBatchNorm` wraps the trunk and puts its batch-norm
layers back in eval mode whenever ``train()`` is called, so batches are normalised with the
pretrained running statistics and those statistics are never updated.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


class FrozenBatchNorm(nn.Module):
    """``network`` with every BatchNorm layer held in eval mode.

    With ``freeze_affine`` (the default) the layers' weight and bias also get no gradient, so
    the optimiser never sees them. ``freeze_affine=False`` matches pytorch-metric-learning's
    ``freeze_trunk_batchnorm`` (the Metric Learning Reality Check): statistics frozen, scale and
    shift still trained.
    """

    def __init__(self, network: nn.Module, *, freeze_affine: bool = True) -> None:
        super().__init__()
        self.network = network
        self.freeze_affine = freeze_affine
        if freeze_affine:
            for layer in batchnorm_layers(network):
                layer.requires_grad_(False)
        self.train(network.training)

    def train(self, mode: bool = True) -> FrozenBatchNorm:
        super().train(mode)
        for layer in batchnorm_layers(self.network):
            layer.eval()
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs)
