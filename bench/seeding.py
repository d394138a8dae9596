"""Seeded randomness: the same protocol and seed give the same numbers on the same machine."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as pml_common


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def pml_numpy_random(seed: int) -> Iterator[None]:
    """PML's samplers draw from a module-level NumPy state; give them a seeded one meanwhile."""
    saved = pml_common.NUMPY_RANDOM
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed % 2**32)
    try:
        yield
    finally:
        pml_common.NUMPY_RANDOM = saved
