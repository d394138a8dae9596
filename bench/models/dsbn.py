"""Domain-specific BatchNorm (DSBN): one BatchNorm copy per domain, switched by the caller.

Methods that train on a labeled source and an unlabeled target domain at once (SpCL) keep
separate normalisation statistics per domain, so the two domains' feature distributions do not
blur each other's statistics. :func:`convert_dsbn` swaps every BatchNorm1d/2d of a network for
a :class:`DomainSpecificBatchNorm` holding a ``source`` and a ``target`` copy, both initialised
from the original layer; :func:`use_domain` picks which copy the next forward passes use.
Evaluation uses the target copy (the deployment domain) unless :func:`evaluate_as` names the
domain of the data being scored (validation on held-out SOURCE identities: the source copy).

The copies are ordinary BatchNorm submodules, so :class:`bench.models.FrozenBatchNorm` (which
puts every ``_BatchNorm`` below it back in eval mode on ``train()``) keeps freezing them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Domain = Literal["source", "target"]


class DomainSpecificBatchNorm(nn.Module):
    """A BatchNorm layer split into a ``source`` and a ``target`` copy.

    In training mode the copy named by ``domain`` normalises the batch (and updates its own
    running statistics); in eval mode the copy named by ``eval_domain`` (target by default).
    """

    def __init__(self, batchnorm: nn.Module) -> None:
        super().__init__()
        self.source = copy.deepcopy(batchnorm)
        self.target = copy.deepcopy(batchnorm)
        self.domain: Domain = "target"
        self.eval_domain: Domain = "target"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        domain = self.domain if self.training else self.eval_domain
        return self.source(inputs) if domain == "source" else self.target(inputs)


def convert_dsbn(module: nn.Module) -> int:
    """Replace every BatchNorm1d/2d below ``module`` in place; returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, DomainSpecificBatchNorm):
            continue
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
            layer = DomainSpecificBatchNorm(child)
            layer.train(child.training)
            setattr(module, name, layer)
            replaced += 1
        else:
            replaced += convert_dsbn(child)
    return replaced


def dsbn_layers(module: nn.Module) -> list[DomainSpecificBatchNorm]:
    return [m for m in module.modules() if isinstance(m, DomainSpecificBatchNorm)]


def set_domain(module: nn.Module, domain: Domain) -> None:
    """Route every DSBN layer below ``module`` to ``domain`` (a no-op without DSBN layers)."""
    for layer in dsbn_layers(module):
        layer.domain = domain


@contextmanager
def use_domain(module: nn.Module, domain: Domain) -> Iterator[None]:
    """Forward passes inside the block use ``domain``'s BatchNorm; back to target afterwards."""
    set_domain(module, domain)
    try:
        yield
    finally:
        set_domain(module, "target")


@contextmanager
def evaluate_as(module: nn.Module, domain: Domain) -> Iterator[None]:
    """Eval-mode forward passes inside the block use ``domain``'s BatchNorm (the domain of the
    data being scored); back to target afterwards."""
    layers = dsbn_layers(module)
    for layer in layers:
        layer.eval_domain = domain
    try:
        yield
    finally:
        for layer in layers:
            layer.eval_domain = "target"
