"""Backbones, embedding heads and where pretrained weights come from."""

from bench.models.backbones import BACKBONES, Normalize, Trunk, build_trunk, set_trunk_mode
from bench.models.batchnorm import FrozenBatchNorm
from bench.models.heads import EmbeddingHead, EmbeddingModel

__all__ = ["BACKBONES", "EmbeddingHead", "EmbeddingModel", "FrozenBatchNorm", "Normalize", "Trunk",
           "build_trunk", "set_trunk_mode"]
