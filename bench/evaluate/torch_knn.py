"""Exact L2 k-nearest-neighbour search with torch, in query chunks, on any device.

Why hand-written: faiss-gpu is not installable from PyPI and faiss-cpu leaves an accelerator
idle; torch's matrix product on the device is the fast part, and ``torch.topk`` breaks ties in no
defined order, so the tie rule of :func:`bench.evaluate.retrieval.faiss_neighbours` is added
here: equal distances rank by the lower reference index, exact duplicates of a reference
embedding tie exactly (distances are computed once per distinct embedding and broadcast), and a
tie straddling position k is resolved by a stable sort of that row. Same neighbours as the
faiss path up to float rounding of distinct distances (tests/test_torch_knn.py).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.evaluate.rows import unique_rows


def torch_neighbours(query: np.ndarray, reference: np.ndarray, k: int,
                     self_index: np.ndarray | None, chunk_size: int,
                     device: torch.device | str) -> np.ndarray:
    """(len(query), k) reference indices by squared L2 distance, best first; equal distances
    by lower index; ``self_index[i]`` (the query's own row) is never retrieved."""
    device = torch.device(device)
    unique, inverse = unique_rows(reference)
    ref = torch.from_numpy(unique).to(device)
    ref_sq = (ref * ref).sum(dim=1)
    inv = torch.from_numpy(inverse).to(device)
    n = len(reference)
    fetch = min(k + 1, n)
    out = np.empty((len(query), k), dtype=np.int64)
    for start in range(0, len(query), chunk_size):
        stop = min(start + chunk_size, len(query))
        q = torch.from_numpy(np.ascontiguousarray(query[start:stop])).to(device)
        dist = ((q * q).sum(dim=1)[:, None] + ref_sq[None, :]
                - 2.0 * (q @ ref.T))[:, inv]  # (chunk, n); duplicates share one value
        if self_index is not None:
            rows = torch.arange(stop - start, device=device)
            own = torch.from_numpy(self_index[start:stop]).to(device)
            dist[rows, own] = float("inf")
        out[start:stop] = _ordered_top_k(dist, k, fetch).cpu().numpy()
    return out


def _ordered_top_k(dist: torch.Tensor, k: int, fetch: int) -> torch.Tensor:
    """Top-k smallest per row ordered by (distance, index); exact when a tie crosses k."""
    values, index = torch.topk(dist, fetch, dim=1, largest=False, sorted=True)
    # topk orders equal values arbitrarily: stable sort by index, then stably by value
    by_index = torch.argsort(index, dim=1, stable=True)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    by_value = torch.argsort(values, dim=1, stable=True)
    values, index = values.gather(1, by_value), index.gather(1, by_value)
    if fetch > k:
        straddling = torch.nonzero(values[:, k - 1] == values[:, k]).flatten()
        if len(straddling):  # which tied members make the cut depends on the whole row
            order = torch.argsort(dist[straddling], dim=1, stable=True)[:, :k]
            index[straddling, :k] = order
    return index[:, :k]
