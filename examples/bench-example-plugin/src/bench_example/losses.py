"""A PML-compatible loss: usable by bench's ``pml_loss`` method by name once installed."""

from __future__ import annotations

import torch
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.reducers import MeanReducer


class SoftContrastiveLoss(ContrastiveLoss):
    """Contrastive loss with the hinge replaced by a softplus of sharpness ``scale``.

    Pairs just inside the margins still give a (small) gradient, so fewer pairs go silent than
    with the hinge; as ``scale`` grows it becomes ContrastiveLoss again.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, scale: float = 10.0,
                 **kwargs) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, **kwargs)
        self.scale = scale

    def pos_calc(self, pos_pair_dist: torch.Tensor, margin: float) -> torch.Tensor:
        return torch.nn.functional.softplus(self.scale * self.distance.margin(
            pos_pair_dist, margin)) / self.scale

    def neg_calc(self, neg_pair_dist: torch.Tensor, margin: float) -> torch.Tensor:
        return torch.nn.functional.softplus(self.scale * self.distance.margin(
            margin, neg_pair_dist)) / self.scale

    def get_default_reducer(self):
        return MeanReducer()  # softplus is never exactly 0: average over every pair
