"""Person re-identification metrics (CMC and mAP) under the Market-1501 protocol.

Hand-written on purpose: no well-kept library in our stack (PML, faiss, scikit-learn, torch)
implements the Market-1501 camera/junk filtering; torchreid does, but it is unmaintained and
would pull in a training framework. The protocol, as in Market-1501's evaluation code and
torchreid's ``eval_market1501``:

* for each query, gallery entries with the same identity AND the same camera are removed
  (finding yourself in the same camera view is too easy to count);
* gallery entries whose identity is junk (``-1`` by default) are removed;
* distractors (identity ``0`` in Market-1501) stay, as negatives;
* queries left with no valid match are skipped (not scored as zero);
* CMC@r = share of (non-skipped) queries whose first match is within the top r;
* AP = mean of the precision at the rank of each match (area under the PR curve as
  torchreid computes it, non-interpolated); mAP = mean AP over non-skipped queries. This is
  ``mAP``, what tables report. The official Market-1501 MATLAB code (``compute_AP.m``) instead
  integrates with a trapezoid rule, averaging at each match the precision just before it and at
  it; CMC is identical, mAP differs (up to about 0.04 on real rankings). ``ap="both"`` also
  returns that one as ``mAP_market1501``, for comparison with numbers quoted from papers that
  used the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.evaluate.label_dtype import isin_exact
from bench.evaluate.retrieval import (
    ScoreFn,
    as_embeddings,
    as_labels,
    call_score_fn,
    check_chunk_size,
    check_positive_ints,
    encode_labels,
    grouped_neg_sq_distance,
    to_numpy,
)
from bench.evaluate.rows import unique_rows

SOURCE = "evaluate_reid"
DEFAULT_CHUNK = 256


def rank_stats(scores: np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray, g_ids: np.ndarray,
               g_cams: np.ndarray, junk: np.ndarray, *, both: bool = False) -> tuple:
    """Per query of the chunk: rank of the first valid match (0 = none) and AP (NaN = none);
    with ``both``, also the official Market-1501 code's trapezoid AP.

    Ranking is by descending score; equal scores keep the lower gallery index first.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    ids = g_ids[order]
    same_id = ids == q_ids[:, None]
    removed = junk[order] | (same_id & (g_cams[order] == q_cams[:, None]))
    match = same_id & ~removed
    kept_rank = np.cumsum(~removed, axis=1, dtype=np.int64)  # rank among kept entries
    hits = np.cumsum(match, axis=1, dtype=np.int64)
    n_match = hits[:, -1]
    precision_at_hits = np.where(match, hits / np.maximum(kept_rank, 1), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_match > 0, precision_at_hits / n_match, np.nan)
    first = match.argmax(axis=1)
    first_rank = np.where(n_match > 0, kept_rank[np.arange(len(order)), first], 0)
    if not both:
        return first_rank, ap
    # compute_AP.m: at the i-th match (rank r among kept), precision i/r and the precision just
    # before it, (i-1)/(r-1) (1 when r = 1); AP = sum over matches of their mean / n_match
    before = np.where(kept_rank > 1, (hits - 1) / np.maximum(kept_rank - 1, 1), 1.0)
    mean_pair = np.where(match, (before + hits / np.maximum(kept_rank, 1)) / 2, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        trapezoid = np.where(n_match > 0, mean_pair / n_match, np.nan)
    return first_rank, ap, trapezoid


def as_ids(x: Any, n: int, field: str) -> np.ndarray:
    """Identities must be integers: junk (-1) and distractor (0) ids are numeric conventions."""
    arr = as_labels(x, n, field, SOURCE)
    if arr.dtype.kind not in "iu":
        raise BenchError(f"must be integers, got dtype {arr.dtype}", source=SOURCE, field=field)
    return arr  # integer dtypes are aligned exactly with the other side's (label_dtype)


def evaluate_reid(query: Any, query_ids: Any, query_cams: Any, gallery: Any, gallery_ids: Any,
                  gallery_cams: Any, *, ranks: Sequence[int] = (1, 5, 10),
                  junk_ids: Sequence[int] = (-1,), score_fn: ScoreFn | None = None,
                  chunk_size: int = DEFAULT_CHUNK, ap: str = "torchreid") -> dict[str, float]:
    """CMC@rank (keys ``cmc_<r>``) and ``mAP`` in [0, 1] under the Market-1501 protocol.

    Euclidean distance unless ``score_fn(query_block, gallery) -> scores`` (higher = more
    similar) is given. Works ``chunk_size`` queries at a time: memory O(chunk x gallery).
    ``ap``: ``torchreid`` (``mAP``, non-interpolated, the default) or ``both`` (adds
    ``mAP_market1501``, the official code's trapezoid rule; see the module docstring).
    """
    if ap not in ("torchreid", "both"):
        raise BenchError(f"must be 'torchreid' or 'both', got {ap!r}", source=SOURCE, field="ap")
    q = as_embeddings(query, "query", SOURCE)
    g = as_embeddings(gallery, "gallery", SOURCE)
    if g.shape[1] != q.shape[1]:
        raise BenchError(f"has dimension {g.shape[1]} but query has {q.shape[1]}",
                         source=SOURCE, field="gallery")
    q_ids = as_ids(query_ids, len(q), "query_ids")
    g_ids = as_ids(gallery_ids, len(g), "gallery_ids")
    q_cams = as_labels(query_cams, len(q), "query_cams", SOURCE)
    g_cams = as_labels(gallery_cams, len(g), "gallery_cams", SOURCE)
    if (q_cams.dtype.kind in "biuf") != (g_cams.dtype.kind in "biuf"):
        raise BenchError(f"dtype {g_cams.dtype} cannot be compared with query_cams dtype "
                         f"{q_cams.dtype}", source=SOURCE, field="gallery_cams")
    ranks = check_positive_ints(ranks, "ranks", SOURCE)
    chunk_size = check_chunk_size(chunk_size, SOURCE)
    junk_arr = to_numpy(junk_ids).ravel()
    if junk_arr.dtype.kind not in "iu" and junk_arr.size:
        raise BenchError(f"must be integers, got {junk_ids!r}", source=SOURCE, field="junk_ids")
    junk = isin_exact(g_ids, junk_arr)  # on the ids as given, before they are re-coded
    q_ids, g_ids, _ = encode_labels(q_ids, g_ids, SOURCE)  # int64 codes, exact for any ids

    # Default: squared L2 by GEMM against the distinct gallery vectors, so duplicates tie exactly.
    scorer = score_fn if score_fn is not None else grouped_neg_sq_distance(*unique_rows(g))
    first_rank = np.empty(len(q), dtype=np.int64)
    aps = np.empty(len(q), dtype=np.float64)
    trapezoid = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        scores = call_score_fn(scorer, q[start:stop], g, SOURCE)
        first_rank[start:stop], aps[start:stop], trapezoid[start:stop] = rank_stats(
            scores, q_ids[start:stop], q_cams[start:stop], g_ids, g_cams, junk, both=True)

    scored = first_rank > 0
    if not scored.any():
        raise BenchError("no query has a valid gallery match (same identity, other camera)",
                         source=SOURCE, field="gallery_ids")
    out = {f"cmc_{r}": float(np.mean(first_rank[scored] <= r)) for r in ranks}
    out["mAP"] = float(np.mean(aps[scored]))
    if ap == "both":
        out["mAP_market1501"] = float(np.mean(trapezoid[scored]))
    return out
