"""Integer label arrays of different dtypes compared exactly.

numpy promotes ``uint64`` with ``int64`` to ``float64``, which merges ids above 2**53 (and
``np.concatenate`` / ``==`` / ``np.unique`` all promote that way). These helpers pick a dtype
that holds every value of both arrays exactly, falling back to Python integers.
"""

from __future__ import annotations

import numpy as np

_I64 = np.iinfo(np.int64)


def align_integers(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` in one dtype that represents both exactly (never a float)."""
    if a.dtype == b.dtype or a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
        return a, b
    arrays = (a, b)
    if all(x.size == 0 or int(x.max()) <= _I64.max for x in arrays):
        return a.astype(np.int64), b.astype(np.int64)
    if all(x.size == 0 or int(x.min()) >= 0 for x in arrays):
        return a.astype(np.uint64), b.astype(np.uint64)
    # negative ids and ids above 2**63 - 1: no numpy integer holds both
    return (np.array([int(v) for v in a.tolist()], dtype=object),
            np.array([int(v) for v in b.tolist()], dtype=object))


def isin_exact(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``np.isin`` without a float round trip for mixed integer dtypes."""
    values, targets = align_integers(values, targets)
    if values.dtype == object:
        wanted = set(targets.tolist())
        return np.fromiter((v in wanted for v in values.tolist()), dtype=bool,
                           count=len(values))
    return np.isin(values, targets)
