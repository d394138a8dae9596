"""Distinct embedding rows: shared by the CPU (faiss / numpy) and torch exact searches, so both
break ties between duplicate embeddings the same way."""

from __future__ import annotations

import numpy as np


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct embeddings and, per row, the index of its distinct embedding.

    Needed because BLAS-based distances (faiss's included) can give bit-identical embeddings
    slightly different distances to the same query; computing each distinct vector once and
    broadcasting makes duplicates tie exactly, so the lower-index rule applies to them.
    """
    rows = np.ascontiguousarray(x + np.float32(0.0))  # -0.0 -> 0.0: equal values, equal bytes
    keys = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], inverse.reshape(-1)
