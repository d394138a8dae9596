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


# -- paired comparisons ------------------------------------------------------------------------
# Holm's step-down correction is written out here rather than taken from statsmodels: it is ten
# lines, scipy only ships Benjamini-Hochberg (`false_discovery_control`, which controls the false
# discovery rate, not the family-wise error rate we want for "A beats B" markers), and
# statsmodels would be a heavy dependency for a single function.


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control), in the input order.

    The i-th smallest of m p-values is multiplied by (m - i), i = 0..m-1, made non-decreasing
    along that order and capped at 1. NaN p-values (tests that could not be run) stay NaN and do
    not count towards m. Reject H0 where the adjusted p-value is <= alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def paired_test(a: Sequence[float], b: Sequence[float], *, delta: float = 0.0,
                alternative: str = "two-sided") -> dict[str, float]:
    """Paired comparison of ``a`` and ``b`` (same seeds, same order): difference ``a - b``.

    Returns n, the mean difference with its 95 % t-interval (``diff``, ``low``, ``high``),
    Cohen's d_z (mean difference over its standard deviation), and the p-values of the paired
    t-test and of the Wilcoxon signed-rank test of H0: mean (median) difference = ``delta``.
    Degenerate cases are explicit: fewer than 2 pairs give NaN p-values; identical differences
    give p = 1 when they equal ``delta`` and p = 0 (one-sided: 0 or 1) otherwise.
    """
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(x)
    diff, half = t_interval(x)
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    result = {"n": float(n), "diff": diff, "low": diff - half, "high": diff + half,
              "dz": (diff - delta) / sd if n > 1 and sd > 0 else math.nan,
              "p_t": math.nan, "p_wilcoxon": math.nan}
    if n < 2:
        return result
    shifted = x - delta
    if np.allclose(shifted, shifted[0], rtol=0, atol=1e-12):
        result["p_t"] = result["p_wilcoxon"] = _constant_p(float(shifted[0]), alternative)
        return result
    result["p_t"] = float(stats.ttest_1samp(shifted, 0.0, alternative=alternative).pvalue)
    if np.any(np.abs(shifted) > 1e-12):
        result["p_wilcoxon"] = float(stats.wilcoxon(shifted, alternative=alternative).pvalue)
    else:
        result["p_wilcoxon"] = 1.0
    return result


def _constant_p(value: float, alternative: str) -> float:
    if abs(value) <= 1e-12:
        return 1.0
    if alternative == "greater":
        return 0.0 if value > 0 else 1.0
    if alternative == "less":
        return 0.0 if value < 0 else 1.0
    return 0.0


def compact_letters(order: Sequence[str], different: set[frozenset[str]]) -> dict[str, str]:
    """Compact letter display (Piepho's insert-and-absorb): methods sharing a letter are not
    significantly different. ``order`` lists the methods best first; ``different`` holds the
    significantly different pairs. Letter ``a`` goes to the group holding the best method.
    """
    groups: list[set[str]] = [set(order)]
    for pair in different:
        i, j = tuple(pair)
        split: list[set[str]] = []
        for group in groups:
            if i in group and j in group:
                split += [group - {i}, group - {j}]
            else:
                split.append(group)
        groups = [g for k, g in enumerate(split)
                  if g and not any(g < other or (g == other and m < k)
                                   for m, other in enumerate(split))]
    position = {name: k for k, name in enumerate(order)}
    groups.sort(key=lambda g: sorted(position[name] for name in g))
    letters = {name: "" for name in order}
    for k, group in enumerate(groups):
        for name in group:
            letters[name] += _LETTERS[k] if k < len(_LETTERS) else f"({k})"
    return letters


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
