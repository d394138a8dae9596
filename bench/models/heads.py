"""Embedding head: trunk feature -> d-dimensional, L2-normalised embedding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class EmbeddingHead(nn.Module):
    """Linear (or 2-layer MLP when ``hidden`` > 0) projection followed by L2 normalisation."""

    def __init__(self, in_features: int, embedding_size: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, embedding_size),
            )
        else:
            self.net = nn.Linear(in_features, embedding_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


class EmbeddingModel(nn.Module):
    """What the loop trains: optional preprocessing + trunk, then the head.

    With a frozen trunk (`trunk: none`) the loop feeds cached trunk features and ``trunk`` is
    None, so the same class serves both paths.
    """

    def __init__(self, head: EmbeddingHead, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.trunk(inputs) if self.trunk is not None else inputs
        return self.head(features)
