"""Size-controlled evaluation along an FID split sequence: the class subsets and their names.

Retrieval metrics depend on how many test classes compete (MAP@R rises as classes are removed),
so splits of a sequence with different test-set sizes are not comparable as they stand. Every
split is therefore also evaluated on ``count`` seeded subsets of its test classes, each as large
as the smallest test set of the sequence; the size-controlled value is the mean over the
subsets and their standard deviation is the spread. The subsets depend only on (protocol seed,
dataset, split), never on the method or reproduction, so every method is scored on the same
subsets and comparisons stay paired.

Torch-free (NumPy only): the runner draws the subsets here and the analysis reads the names.
"""

from __future__ import annotations

import hashlib

import numpy as np

CONTROLLED = ".controlled"
SPREAD = ".controlled_sd"
UNTRAINED = "untrained"  # the model column of the evaluation before training


def controlled_name(metric: str) -> str:
    """Column name of a metric's size-controlled mean over class subsets."""
    return metric + CONTROLLED


def spread_name(metric: str) -> str:
    """Column name of the standard deviation of a metric over the class subsets."""
    return metric + SPREAD


def base_metric(name: str) -> str:
    """``mean_average_precision_at_r.controlled`` -> ``mean_average_precision_at_r``."""
    for suffix in (SPREAD, CONTROLLED):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_controlled(name: str) -> bool:
    return name.endswith(CONTROLLED)


def subset_seed(seed: int, dataset: str, split: str) -> int:
    """A seed that depends on the protocol seed, dataset and split only (stable across runs)."""
    text = f"{seed}/{dataset}/{split}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def class_subsets(classes: np.ndarray, size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` sorted subsets of ``size`` classes each, drawn without replacement per subset
    from a seeded generator. With ``size`` >= the number of classes every subset is the whole
    set (that split is the smallest of its sequence: nothing to control)."""
    classes = np.sort(np.asarray(classes))
    if size < 2:
        raise ValueError(f"a size-controlled subset needs at least 2 classes, got {size}")
    if size >= len(classes):
        return [classes.copy() for _ in range(count)]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(classes, size=size, replace=False)) for _ in range(count)]


def aggregate(per_subset: list[dict[str, float]]) -> dict[str, float]:
    """{metric.controlled: mean over subsets, metric.controlled_sd: SD over subsets (ddof 1;
    0 with one subset)} for every metric the subsets report."""
    out: dict[str, float] = {}
    for metric in per_subset[0]:
        values = np.array([s[metric] for s in per_subset], dtype=float)
        out[controlled_name(metric)] = float(values.mean())
        out[spread_name(metric)] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
