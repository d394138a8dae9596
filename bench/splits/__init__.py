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
