"""Class-disjoint k-fold validation over the train classes, Reality-Check style.

Each fold's validation classes are one contiguous block of the (sorted) train+validation classes,
wrapping around the end; the test classes are the same for every fold.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from bench.errors import BenchError
from bench.splits import ClassSplit


def kfold_splits(trainval: np.ndarray, test: np.ndarray, folds: int,
                 validation_fraction: float | None = None) -> list[ClassSplit]:
    """``folds`` class splits; validation block i starts at i·n/folds and has n·fraction classes.

    With ``validation_fraction`` None each block is n/folds classes (the blocks tile the classes).
    """
    trainval = np.asarray(trainval)
    n = len(trainval)
    size = round(n * validation_fraction) if validation_fraction is not None else None
    splits = []
    for i in range(folds):
        start = i * n // folds
        width = size if size is not None else (i + 1) * n // folds - start
        val_index = (start + np.arange(width)) % n
        val = np.sort(trainval[val_index])
        train = np.setdiff1d(trainval, val)
        splits.append(ClassSplit(f"fold{i}", train, val, np.asarray(test)))
    check_folds(splits)
    return splits


def check_folds(splits: list[ClassSplit]) -> None:
    """Refuse a layout whose roles overlap, whose validation folds overlap, or whose test differs."""
    if not splits:
        raise BenchError("no folds", field="folds")
    for split in splits:
        split.check()
    test = splits[0].test
    for split in splits[1:]:
        if not np.array_equal(split.test, test):
            raise BenchError(f"{split.name} has a different test set from fold0", field="folds")
    if len(splits) > 1:
        seen: set[int] = set()
        for split in splits:
            overlap = seen & set(split.validation.tolist())
            if overlap:
                raise BenchError(f"validation classes of {split.name} overlap an earlier fold's "
                                 f"({len(overlap)} shared); lower split.validation_fraction",
                                 field="folds")
            seen |= set(split.validation.tolist())


def split_hash(splits: list[ClassSplit]) -> str:
    """A short hash of every fold's class lists, recorded with each result row."""
    canonical = [{"name": s.name, "train": s.train.tolist(), "validation": s.validation.tolist(),
                  "test": s.test.tolist()} for s in splits]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]
