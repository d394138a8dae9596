"""The torch kNN path (what runs on an accelerator) equals the faiss path, ties included.

Runs the same device-agnostic code on the CPU; on a CUDA machine the cuda case runs too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.evaluate import evaluate_retrieval, nearest_neighbours
from bench.evaluate.retrieval import faiss_neighbours
from bench.evaluate.torch_knn import torch_neighbours

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tied_embeddings(n: int = 300, dim: int = 3, seed: int = 0) -> np.ndarray:
    """Small-integer coordinates: distances are exact in float32 and tie very often (exact
    duplicates included), so ties straddle the k-th neighbour in many rows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, (n, dim)).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 40])
def test_same_neighbours_as_faiss_with_ties(device: str, k: int) -> None:
    x = tied_embeddings()
    assert len(np.unique(x, axis=0)) < len(x)  # exact duplicates are present
    own = np.arange(len(x))
    for chunk in (7, 1024):
        for self_index in (own, None):
            expected = faiss_neighbours(x, x, k, self_index, chunk)
            got = torch_neighbours(x, x, k, self_index, chunk, device)
            np.testing.assert_array_equal(got, expected)
    query = tied_embeddings(50, seed=1)
    np.testing.assert_array_equal(
        nearest_neighbours(query, x, k, device=device), nearest_neighbours(query, x, k))


def test_tie_rule_is_lower_index_and_self_never_returned() -> None:
    x = np.zeros((6, 2), dtype=np.float32)  # every distance ties
    got = torch_neighbours(x, x, 3, np.arange(6), 4, "cpu")
    np.testing.assert_array_equal(got, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2],
                                        [0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_equal_faiss_path_on_random_data(device: str) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 60, 3000)
    centres = rng.normal(size=(60, 32)).astype(np.float32)
    x = centres[labels] + rng.normal(scale=1.5, size=(3000, 32)).astype(np.float32)
    x[100:110] = x[200]  # a few exact duplicates across classes
    faiss_path = evaluate_retrieval(x, labels, nmi=False)
    torch_path = evaluate_retrieval(x, labels, nmi=False, device=device)
    assert faiss_path.keys() == torch_path.keys()
    for key, value in faiss_path.items():
        assert torch_path[key] == pytest.approx(value, abs=1e-6), key
    # and the neighbour lists themselves agree except at float-rounding near-ties
    k = 60
    a = nearest_neighbours(x, x, k, self_index=np.arange(len(x)))
    b = nearest_neighbours(x, x, k, self_index=np.arange(len(x)), device=device)
    assert np.mean(a == b) > 0.999
    # separate query and reference sets
    q, r = x[:500], x[500:]
    ql, rl = labels[:500], labels[500:]
    for key, value in evaluate_retrieval(q, ql, r, rl, nmi=False).items():
        assert evaluate_retrieval(q, ql, r, rl, nmi=False, device=device)[key] == \
            pytest.approx(value, abs=1e-6), key
