"""Evaluation of embeddings: retrieval metrics (DML) and re-identification metrics (Market-1501).

Public API
----------
``evaluate_retrieval(query, query_labels, reference=None, reference_labels=None, *,
k="max_bin_count", recall_ks=(1, 2, 4, 8), nmi=True, score_fn=None, seed=0,
chunk_size=1024) -> dict[str, float]``
    Precision@1, R-Precision, MAP@R (PML ``AccuracyCalculator`` semantics), Recall@k in the
    DML sense and NMI. ``reference=None`` evaluates the query set against itself with the
    self-match excluded.

``evaluate_reid(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, *,
ranks=(1, 5, 10), junk_ids=(-1,), score_fn=None, chunk_size=256) -> dict[str, float]``
    CMC@rank and mAP under the Market-1501 protocol.

Both accept numpy arrays or torch tensors, compare embeddings by Euclidean distance unless a
method supplies ``score_fn(query_block, reference) -> scores`` (higher = more similar), break
ties between equal distances by the lower reference index, and raise
:class:`bench.errors.BenchError` on bad input.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: loaded on first use, so that the torch-free metric table (bench.evaluate.metric_table) can be
#: imported by bench.analysis without importing torch through this package
_LAZY = {"evaluate_reid": "reid", "ScoreFn": "retrieval", "evaluate_retrieval": "retrieval",
         "nearest_neighbours": "retrieval"}

__all__ = ["ScoreFn", "evaluate_reid", "evaluate_retrieval", "nearest_neighbours"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bench.evaluate' has no attribute {name!r}")
    return getattr(import_module(f"bench.evaluate.{_LAZY[name]}"), name)
