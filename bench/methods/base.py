"""The method plug-in interface: what a method needs, which hooks it uses, nothing else.

The loop, sampler, optimiser, schedule, backbone, budget and evaluation come from the protocol and
are the same for every method; a method only turns a batch of embeddings into a loss and may own
parameters (proxies, memories) that get their own optimiser group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn


class Method(ABC):
    """Base class for every method registered in ``bench.methods.REGISTRY``."""

    #: which data the method consumes, e.g. ("labeled",) or ("labeled", "unlabeled_target").
    requires: ClassVar[tuple[str, ...]] = ("labeled",)

    @classmethod
    @abstractmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> Any:
        """Check a protocol entry's ``params``; raise BenchError naming the bad key."""

    @abstractmethod
    def __init__(self, params: Any, *, num_classes: int, embedding_size: int) -> None: ...

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the method owns (trained with the protocol's ``loss_optimizer``)."""
        return []

    def to(self, device: torch.device) -> Method:
        return self

    @abstractmethod
    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch."""
