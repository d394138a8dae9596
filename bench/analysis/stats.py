"""Confidence intervals for means over reproductions (scipy's t distribution)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the two-sided t-interval; half-width is NaN for fewer than 2 values."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean()) if len(data) else math.nan
    if len(data) < 2:
        return mean, math.nan
    sem = stats.sem(data)
    return mean, float(sem * stats.t.ppf((1 + confidence) / 2, len(data) - 1))


def format_interval(values: Sequence[float], digits: int = 4) -> str:
    mean, half = t_interval(values)
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"
