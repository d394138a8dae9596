"""The fold models of a process's best search trial, kept for the test job that would train them
again.

The test phase retrains the chosen values once per reproduction seed on the same folds. With the
search's own seed (``protocol.seed``, always the first reproduction) that job repeats the chosen
trial exactly: same values, seed, folds, data and pinned threads give the same bits (training is
deterministic; `tests/test_trial_models.py` checks a run's values with and without this). So a
process keeps, per (pool, method), the fold results of the best trial it ran itself, and the job
takes them instead of training them again: one training run of ``folds`` models saved per method
(on `quick.yaml`, 8 of 32 test-phase fold trainings). It is a saving only: a process that does
not hold the chosen trial's models (another process ran it, the search was resumed, the models
were over the memory limit) trains them, with the same result.

No file is written (nothing to verify or clean up); memory is bounded by ``limit_bytes`` per
process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.keys import values_digest

#: at most this many bytes of kept model state per process (frozen-trunk heads are ~3 MB a fold;
#: a fine-tuned ResNet-50 fold ~100 MB)
LIMIT_BYTES = 1 << 30


def result_bytes(results: list) -> int:
    """Bytes of the arrays that keeping ``results`` (fold results) holds: each model's state and
    whatever its method holds (proxies, and the memories of ECN, SpCL, DIMN: tensors, arrays,
    modules, and lists or dicts of them), each array counted once."""
    seen: set[int] = set()
    total = 0
    for r in results:
        total += held_bytes(r.model, seen)
        for value in vars(r.method).values():
            total += held_bytes(value, seen)
    return total


def held_bytes(value: Any, seen: set[int]) -> int:
    if isinstance(value, nn.Module):
        return sum(held_bytes(t, seen) for t in value.state_dict(keep_vars=True).values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (torch.Tensor, np.ndarray)) and id(value) not in seen:
        seen.add(id(value))
        return int(value.nbytes)
    return 0


@dataclass
class Kept:
    values: str
    score: float
    results: list
    nbytes: int


class TrialModels:
    """Per (pool, method): the fold results of this process's best completed trial so far."""

    def __init__(self, limit_bytes: int = LIMIT_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.entries: dict[tuple[str, str], Kept] = {}
        self.reused = 0  # test jobs that took kept models (reported by tests and benchmarks)

    def offer(self, key: tuple[str, str], values: dict[str, Any], score: float,
              results: list) -> None:
        """Keep ``results`` if their trial beats the one kept for ``key`` (a tie keeps the
        earlier, as bench.search.best_trial prefers the lower trial number)."""
        if not math.isfinite(score):
            return
        current = self.entries.get(key)
        if current is not None and current.score >= score:
            return
        self.entries.pop(key, None)  # beaten: it can no longer be the chosen trial
        nbytes = result_bytes(results)
        if sum(e.nbytes for e in self.entries.values()) + nbytes > self.limit_bytes:
            return
        self.entries[key] = Kept(values_digest(values), score, results, nbytes)

    def holds(self, key: tuple[str, str], values: dict[str, Any]) -> bool:
        kept = self.entries.get(key)
        return kept is not None and kept.values == values_digest(values)

    def take(self, key: tuple[str, str], values: dict[str, Any]) -> list | None:
        """The kept fold results of ``values`` (given up: a job uses them once), else None."""
        if not self.holds(key, values):
            return None
        self.reused += 1
        return self.entries.pop(key).results

    def drop(self, key: tuple[str, str]) -> None:
        """Free ``key``'s models (its method is finished)."""
        self.entries.pop(key, None)
