"""A bench Method: contrastive loss plus a pull towards learned class centres.

It shows the hook contract: ``validate_params`` (refuse bad keys before any training),
``__init__`` (small modules only), ``parameters``/``to`` (owned weights, trained with the
protocol's ``loss_optimizer``) and ``loss`` (one batch -> a scalar). Everything else (data,
sampler, optimiser, schedule, evaluation) is the protocol's, the same for every method.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pytorch_metric_learning.losses import ContrastiveLoss
from torch import nn

from bench.errors import BenchError
from bench.methods.base import Batch, Method


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    neg_margin: float = Field(1.0, gt=0)
    center_weight: float = Field(0.1, ge=0)


class CenterContrastive(Method):
    """Contrastive loss + ``center_weight`` * mean squared distance to the sample's class
    centre (centres are learned, one per training class, L2-normalised like embeddings)."""

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> Params:
        try:
            return Params.model_validate(params)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise BenchError(first["msg"], source=source, field=f"{field}.{key}") from None

    def __init__(self, params: Params, *, num_classes: int, embedding_size: int) -> None:
        self.weight = params.center_weight
        self.contrastive = ContrastiveLoss(pos_margin=0.0, neg_margin=params.neg_margin)
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.1)

    def parameters(self) -> list[nn.Parameter]:
        return [self.centers]

    def to(self, device: torch.device) -> CenterContrastive:
        self.centers.data = self.centers.data.to(device)
        return self

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        embeddings = model(batch.source)
        centers = nn.functional.normalize(self.centers, dim=1)[batch.labels]
        pull = (embeddings - centers).pow(2).sum(1).mean()
        return self.contrastive(embeddings, batch.labels) + self.weight * pull
