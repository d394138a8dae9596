"""Class-disjoint splits: which classes train, validate and test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.errors import BenchError


@dataclass(frozen=True)
class ClassSplit:
    """Class indices (into the dataset's class list) for each role; roles never share a class."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def check(self) -> None:
        sets = {"train": set(self.train.tolist()), "validation": set(self.validation.tolist()),
                "test": set(self.test.tolist())}
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
            shared = sets[a] & sets[b]
            if shared:
                raise BenchError(f"{a} and {b} share {len(shared)} classes", field=f"split {self.name}")
        for role, classes in sets.items():
            if not classes:
                raise BenchError(f"no {role} classes", field=f"split {self.name}")


def standard_split(present_classes: np.ndarray, validation_fraction: float) -> ClassSplit:
    """First half of the (sorted) classes train+validation, second half test.

    Validation is the last contiguous block of ``validation_fraction`` of the train classes, the
    Reality Check's fold layout with a single fold.
    """
    classes = np.unique(present_classes)
    half = len(classes) // 2
    trainval, test = classes[:half], classes[half:]
    n_val = max(1, round(len(trainval) * validation_fraction))
    split = ClassSplit("standard", trainval[:-n_val], trainval[-n_val:], test)
    if len(split.train) < 2:
        raise BenchError(f"only {len(classes)} classes: too few for train/validation/test",
                         field="split")
    split.check()
    return split
