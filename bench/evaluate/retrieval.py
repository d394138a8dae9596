"""Retrieval metrics for deep metric learning, with PML ``AccuracyCalculator`` semantics.

Why not call ``AccuracyCalculator`` directly: it casts labels to float32 (ids above 2**24
collide), breaks ties between equal distances in whatever order faiss returns them, has no
Recall@k, builds a (classes x references) comparison matrix to count labels, and cannot rank
with a method-supplied asymmetric score. So this module runs ONE neighbour search, breaks ties
by the lower reference index, and computes every metric from that single neighbour list with
PML's own module-level metric functions (``precision_at_k``, ``r_precision``,
``mean_average_precision``), so the numbers are PML's by construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
import torch
from pytorch_metric_learning.utils import accuracy_calculator as pml_acc
from sklearn.metrics import normalized_mutual_info_score

from bench.errors import BenchError
from bench.evaluate.label_dtype import align_integers
from bench.evaluate.rows import unique_rows

ScoreFn = Callable[[np.ndarray, np.ndarray], Any]
"""``score_fn(query_block, reference) -> (len(query_block), len(reference)) scores``, higher =
more similar. Used for asymmetric methods (e.g. DIMN) that cannot be ranked by L2 distance."""

SOURCE = "evaluate_retrieval"
DEFAULT_CHUNK = 1024
KNN_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


# ---------------------------------------------------------------------------------------------
# Input checks (shared with bench.evaluate.reid)
# ---------------------------------------------------------------------------------------------
def to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (any device) and sequences without copying twice."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_embeddings(x: Any, field: str, source: str) -> np.ndarray:
    """Return a finite, C-contiguous float32 (n, dim) array, as faiss needs."""
    if x is None:
        raise BenchError("is missing", source=source, field=field)
    arr = to_numpy(x)
    if arr.ndim != 2:
        raise BenchError(f"must be a 2-D (n, dim) array, got shape {arr.shape}",
                         source=source, field=field)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BenchError(f"is empty (shape {arr.shape})", source=source, field=field)
    if arr.dtype.kind not in "biuf":
        raise BenchError(f"must hold real numbers, got dtype {arr.dtype}", source=source,
                         field=field)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite_rows = np.isfinite(arr).all(axis=1)
    if not finite_rows.all():
        bad = np.flatnonzero(~finite_rows)
        raise BenchError(f"{len(bad)} of {len(arr)} rows contain NaN or inf (first: row {bad[0]})",
                         source=source, field=field)
    return arr


def as_labels(x: Any, n: int, field: str, source: str) -> np.ndarray:
    """Return a 1-D label array of length ``n`` (ints or strings; floats must be finite)."""
    if x is None:
        raise BenchError("is missing", source=source, field=field)
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise BenchError(f"must be a 1-D array, got shape {arr.shape}", source=source,
                         field=field)
    if len(arr) != n:
        raise BenchError(f"has {len(arr)} entries but there are {n} embeddings",
                         source=source, field=field)
    if arr.dtype.kind not in "biufUS":
        raise BenchError(f"must hold integers or strings, got dtype {arr.dtype}",
                         source=source, field=field)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BenchError("contains NaN or inf", source=source, field=field)
    return arr


def encode_labels(a: np.ndarray, b: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Map both label arrays onto 0..C-1 (int64) so no id is lost to float32 rounding."""
    numeric = {k in "biuf" for k in (a.dtype.kind, b.dtype.kind)}
    if len(numeric) != 1:
        raise BenchError(f"query and reference labels have incompatible dtypes "
                         f"({a.dtype} vs {b.dtype})", source=source, field="labels")
    a, b = align_integers(a, b)  # uint64 with int64 would become float64 and merge ids
    uniq, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    inverse = inverse.astype(np.int64, copy=False)
    return inverse[: len(a)], inverse[len(a):], len(uniq)


def check_positive_ints(values: Sequence[int], field: str, source: str) -> tuple[int, ...]:
    """Ranks / recall ks must be positive integers; fail early with a clear message."""
    out = tuple(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                      for v in out):
        raise BenchError(f"must be a non-empty sequence of positive integers, got {values!r}",
                         source=source, field=field)
    return tuple(int(v) for v in out)


def check_chunk_size(chunk_size: int, source: str) -> int:
    """Chunking bounds memory; a non-positive chunk would loop forever."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise BenchError(f"must be a positive integer, got {chunk_size!r}", source=source,
                         field="chunk_size")
    return int(chunk_size)


def call_score_fn(score_fn: ScoreFn, block: np.ndarray, reference: np.ndarray,
                  source: str) -> np.ndarray:
    """Run a method-supplied scoring function and check its output (shape, finiteness)."""
    scores = to_numpy(score_fn(block, reference))
    expected = (len(block), len(reference))
    if scores.shape != expected:
        raise BenchError(f"returned shape {scores.shape}, expected {expected}", source=source,
                         field="score_fn")
    if scores.dtype.kind not in "biuf":
        raise BenchError(f"returned dtype {scores.dtype}, expected real numbers",
                         source=source, field="score_fn")
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise BenchError("returned NaN or inf scores", source=source, field="score_fn")
    return scores


# ---------------------------------------------------------------------------------------------
# Neighbour search with a deterministic tie rule
# ---------------------------------------------------------------------------------------------
def top_k_by_score(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first; equal scores: lower index first.

    Exact at the k boundary too (argpartition alone keeps an arbitrary member of a tie that
    straddles position k). O(rows x columns) memory, so callers pass row chunks.
    """
    # torch.topk allocates only the k chosen columns; np.argpartition returns an index for
    # every column (44 MB for a 1,024 x 5,392 chunk, whose page faults made it ~4x slower in a
    # run than in isolation). Which of several equal scores it picks does not matter: the tie
    # check below redoes those rows.
    cols = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()
    kth = np.take_along_axis(scores, cols, axis=1).min(axis=1)
    straddling = np.flatnonzero(np.count_nonzero(scores >= kth[:, None], axis=1) > k)
    if len(straddling):
        cols[straddling] = _lowest_index_top_k(scores[straddling], kth[straddling], k)
    picked = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((cols, -picked), axis=-1)
    return np.take_along_axis(cols, order, axis=1)


def _lowest_index_top_k(scores: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """Top-k set when the k-th score is tied: all better ones, then the lowest tied indices."""
    take = scores > kth[:, None]
    tied = scores == kth[:, None]
    need = k - np.count_nonzero(take, axis=1)
    take |= tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need[:, None])
    return np.nonzero(take)[1].reshape(len(scores), k)


def grouped_neg_sq_distance(unique: np.ndarray, inverse: np.ndarray) -> ScoreFn:
    """Score function: negative squared L2 distance, duplicates guaranteed to tie exactly."""
    unique_sq = np.einsum("ij,ij->i", unique, unique)

    def score(block: np.ndarray, _reference: np.ndarray) -> np.ndarray:
        block_sq = np.einsum("ij,ij->i", block, block)
        neg = block @ unique.T  # then, in place (same operations, same order, same floats):
        neg *= 2.0              # 2 (q . r) - |q|^2 - |r|^2
        neg -= block_sq[:, None]
        neg -= unique_sq[None, :]
        return neg[:, inverse]

    return score


def dense_neighbours(query: np.ndarray, reference: np.ndarray, k: int, self_index: np.ndarray |
                     None, score_fn: ScoreFn, chunk_size: int, source: str, *,
                     own_scores: bool = False) -> np.ndarray:
    """Top-k by a full score row, ``chunk_size`` queries at a time (memory O(chunk x refs)).

    ``own_scores``: ``score_fn`` is this module's float32 scorer, so its rows are ranked as they
    come (a float32 -> float64 copy orders and ties exactly alike, and selecting on float32 is
    ~3x faster); a method's scores are checked and ranked in float64."""
    out = np.empty((len(query), k), dtype=np.int64)
    for start in range(0, len(query), chunk_size):
        stop = min(start + chunk_size, len(query))
        if own_scores:
            scores = score_fn(query[start:stop], reference)
            if not np.isfinite(scores).all():
                raise BenchError("embeddings too large: squared distances overflow float32",
                                 source=source, field="query")
        else:
            scores = call_score_fn(score_fn, query[start:stop], reference, source)
        if self_index is not None:
            scores[np.arange(stop - start), self_index[start:stop]] = -np.inf
        out[start:stop] = top_k_by_score(scores, k)
    return out


def faiss_neighbours(query: np.ndarray, reference: np.ndarray, k: int,
                     self_index: np.ndarray | None, chunk_size: int) -> np.ndarray:
    """L2 top-k with one exact faiss search; ties ordered by (distance, reference index).

    One extra neighbour is fetched to see whether a tie straddles position k. Such rows, rows
    that retrieved an embedding with an exact duplicate, and rows whose self-match was crowded
    out are redone by dense scoring in which duplicates tie exactly (rare outside collapsed
    embeddings; every other row keeps faiss's order, i.e. PML's).
    """
    fetch = min(k + 1 + int(self_index is not None), len(reference))
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    dist, idx = index.search(query, fetch)
    order = np.lexsort((idx, dist), axis=-1)
    dist = np.take_along_axis(dist, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    unique, inverse = unique_rows(reference)
    has_twin = np.bincount(inverse)[inverse] > 1
    redo = has_twin[idx].any(axis=1)  # faiss may order exact duplicates arbitrarily
    if self_index is not None:
        dist, idx, missing_self = _drop_self(dist, idx, self_index)
        redo |= missing_self
    if idx.shape[1] > k:
        redo |= dist[:, k - 1] == dist[:, k]
        idx = idx[:, :k]
    if redo.any():
        rows = np.flatnonzero(redo)
        own = None if self_index is None else self_index[rows]
        scorer = grouped_neg_sq_distance(unique, inverse)
        idx[rows] = dense_neighbours(query[rows], reference, k, own, scorer, chunk_size, SOURCE,
                                     own_scores=True)
    return idx.astype(np.int64, copy=False)


def _drop_self(dist: np.ndarray, idx: np.ndarray,
               self_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove each query's own reference entry; flag rows where it was not among the results."""
    is_self = idx == self_index[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True  # placeholder removal; those rows are recomputed exactly
    keep = ~is_self
    shape = (len(idx), idx.shape[1] - 1)
    return dist[keep].reshape(shape), idx[keep].reshape(shape), missing


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, k: int, *,
                       self_index: np.ndarray | None = None, score_fn: ScoreFn | None = None,
                       chunk_size: int = DEFAULT_CHUNK,
                       device: torch.device | str | None = None) -> np.ndarray:
    """(len(query), k) reference indices, best first, equal distances/scores by lower index.

    ``self_index[i]`` is the reference row that query ``i`` must never retrieve (itself).
    Without ``score_fn`` the ranking is faiss ``IndexFlatL2`` (as PML), or with ``device`` the
    same exact search in torch on that device (bench.evaluate.torch_knn, same tie rule); with
    ``score_fn``, chunked dense scoring.
    """
    query = as_embeddings(query, "query", SOURCE)
    reference = as_embeddings(reference, "reference", SOURCE)
    available = len(reference) - int(self_index is not None)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise BenchError(f"must be an integer in 1..{available}, got {k!r}", source=SOURCE,
                         field="k")
    if self_index is not None:
        self_index = np.asarray(self_index, dtype=np.int64)
    if score_fn is None and device is not None:
        from bench.evaluate.torch_knn import torch_neighbours

        return torch_neighbours(query, reference, k, self_index, chunk_size, device)
    if score_fn is None:
        return faiss_neighbours(query, reference, k, self_index, chunk_size)
    return dense_neighbours(query, reference, k, self_index, score_fn, chunk_size, SOURCE)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def resolve_k(k: int | str, max_relevant: int, recall_ks: tuple[int, ...], available: int) -> int:
    """Neighbours to fetch: R-metrics need the largest class count, Recall@k needs max(ks)."""
    if k == "max_bin_count":
        base = max_relevant
    elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
        base = int(k)
    else:
        raise BenchError(f"must be 'max_bin_count' or a positive integer, got {k!r}",
                         source=SOURCE, field="k")
    return min(max(base, max(recall_ks)), available)


def knn_metrics(knn_labels: np.ndarray, gt: np.ndarray, ref_counts: np.ndarray,
                ref_includes_query: bool, recall_ks: tuple[int, ...]) -> dict[str, float]:
    """Every kNN metric from one (queries x k) label matrix; lone queries already removed."""
    knn_t = torch.from_numpy(knn_labels)
    gt_t = torch.from_numpy(gt)[:, None]
    uniq = np.unique(gt)
    label_counts = (torch.from_numpy(uniq), torch.from_numpy(ref_counts[uniq]))
    eq = pml_acc.EQUALITY
    out = {
        "precision_at_1": pml_acc.precision_at_k(knn_t, gt_t, 1, False, False, eq),
        "r_precision": pml_acc.r_precision(knn_t, gt_t, ref_includes_query, label_counts,
                                           False, False, eq),
        "mean_average_precision_at_r": pml_acc.mean_average_precision(
            knn_t, gt_t, ref_includes_query, label_counts, False, False, eq, at_r=True),
    }
    out.update(recall_at_ks(knn_labels == gt[:, None], recall_ks))
    return {key: float(value) for key, value in out.items()}


def recall_at_ks(hits: np.ndarray, recall_ks: tuple[int, ...]) -> dict[str, float]:
    """DML Recall@k: share of queries with at least one relevant item among the top k."""
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])
    return {f"recall_at_{k}": float(np.mean(first_hit < k)) for k in recall_ks}


def nmi_score(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """NMI of faiss k-means (k = number of classes, 20 iterations, seeded) against labels,
    exactly as PML's ``FaissKMeans`` + sklearn do it (PML's seed is faiss's default 1234)."""
    n_clusters = len(np.unique(labels))
    kmeans = faiss.Kmeans(embeddings.shape[1], n_clusters, niter=20, seed=int(seed),
                          verbose=False, gpu=False,
                          min_points_per_centroid=1)  # only silences a stderr warning
    kmeans.train(embeddings)
    _, assignment = kmeans.index.search(embeddings, 1)
    return float(normalized_mutual_info_score(labels, assignment[:, 0]))


def evaluate_retrieval(query: Any, query_labels: Any, reference: Any = None,
                       reference_labels: Any = None, *, k: int | str = "max_bin_count",
                       recall_ks: Sequence[int] = (1, 2, 4, 8), nmi: bool = True,
                       score_fn: ScoreFn | None = None, seed: int = 0,
                       chunk_size: int = DEFAULT_CHUNK,
                       device: torch.device | str | None = None) -> dict[str, float]:
    """Precision@1, R-Precision, MAP@R, Recall@k and NMI from one neighbour search.

    ``reference=None``: the query set is its own reference, self-match excluded. Queries whose
    class has no other member among the references are left out of the kNN metrics (as PML);
    if none remain those metrics are NaN. NMI clusters the query embeddings only. ``k`` as in
    PML (``"max_bin_count"`` makes R-metrics exact). ``seed`` seeds k-means (PML uses 1234).
    ``device``: None searches with faiss-cpu; a torch device (e.g. the CUDA device training
    ran on) runs the same exact search with torch there.
    """
    q = as_embeddings(query, "query", SOURCE)
    q_lab = as_labels(query_labels, len(q), "query_labels", SOURCE)
    self_mode = reference is None
    if self_mode:
        if reference_labels is not None:
            raise BenchError("given without reference", source=SOURCE, field="reference_labels")
        ref, r_lab = q, q_lab
    else:
        ref = as_embeddings(reference, "reference", SOURCE)
        r_lab = as_labels(reference_labels, len(ref), "reference_labels", SOURCE)
        if ref.shape[1] != q.shape[1]:
            raise BenchError(f"has dimension {ref.shape[1]} but query has {q.shape[1]}",
                             source=SOURCE, field="reference")
    recall_ks = check_positive_ints(recall_ks, "recall_ks", SOURCE)
    resolve_k(k, 1, recall_ks, 1)  # validate k before any work
    chunk_size = check_chunk_size(chunk_size, SOURCE)
    available = len(ref) - int(self_mode)
    if available < 1:
        raise BenchError("needs at least 2 embeddings when the query set is its own reference",
                         source=SOURCE, field="query")
    q_ids, r_ids, n_classes = encode_labels(q_lab, r_lab, SOURCE)

    ref_counts = np.bincount(r_ids, minlength=n_classes)
    relevant = ref_counts[q_ids] - int(self_mode)
    valid = np.flatnonzero(relevant > 0)
    keys = KNN_KEYS + tuple(f"recall_at_{r}" for r in recall_ks)
    if len(valid) == 0:
        warnings.warn("no query has a relevant reference: kNN metrics are NaN", stacklevel=2)
        results = dict.fromkeys(keys, float("nan"))
    else:
        num_k = resolve_k(k, int(relevant[valid].max()), recall_ks, available)
        knn = nearest_neighbours(q[valid], ref, num_k, self_index=valid if self_mode else None,
                                 score_fn=score_fn, chunk_size=chunk_size, device=device)
        results = knn_metrics(r_ids[knn], q_ids[valid], ref_counts, self_mode, recall_ks)
    if nmi:
        results["nmi"] = nmi_score(q, q_ids, seed)
    return results
