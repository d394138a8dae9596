"""Saved test embeddings: what a reproduction's test metrics were computed from, kept beside its
run file so that metrics, plots and checks can be redone without training.

``runs/<dataset>/<method>/<split>/seed<N>.embeddings.npz`` holds, per fold model ``i``,
``query_<i>`` (and ``gallery_<i>`` in re-ID settings) as float16 (or the protocol's
``save.embeddings`` dtype), the labels (``query_labels``; re-ID: ``query_ids``,
``query_cameras``, ``gallery_ids``, ``gallery_cameras``, junk identities -1) and a JSON ``meta``
record (setting, seed, nmi, ...). Written atomically (temp file + rename); read without pickle.
numpy only: `bench evaluate` and `bench report` load these without torch or training code.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import atomic_write
from bench.errors import BenchError

FORMAT = 1
SUFFIX = ".embeddings.npz"
#: How far a metric recomputed from saved float16 embeddings may be from the run's own (float32)
#: value. Rounding to float16 (relative error <= 2**-11) can only swap neighbours that were
#: nearly tied, so a ranking metric moves by whole queries: at most ``FLIPS`` queries' outcome
#: (``FLIPS / n_queries``), or ``TOLERANCE``, whichever is larger (measured: at most one query
#: on the tiny and quick protocols; README). NMI clusters with k-means, whose partition can
#: shift with the rounded inputs: ``NMI_TOLERANCE``.
FLIPS = 2
TOLERANCE = 2e-3
NMI_TOLERANCE = 1e-2


def tolerance(metric: str, n_queries: int) -> float:
    if metric == "nmi":
        return NMI_TOLERANCE
    return max(TOLERANCE, FLIPS / max(n_queries, 1))


def path_for(run_file: Path) -> Path:
    """``seed0.json`` -> ``seed0.embeddings.npz`` in the same folder."""
    return run_file.with_name(run_file.stem + SUFFIX)


@dataclass
class SavedEmbeddings:
    """One reproduction's test embeddings (per fold model) and what the evaluators need."""

    path: Path
    meta: dict[str, Any]
    query: list[np.ndarray]
    query_labels: np.ndarray
    gallery: list[np.ndarray] | None = None
    query_cameras: np.ndarray | None = None
    gallery_ids: np.ndarray | None = None
    gallery_cameras: np.ndarray | None = None

    @property
    def reid(self) -> bool:
        return self.gallery is not None

    def concatenated(self, which: str = "query") -> np.ndarray:
        """The fold models' L2-normalised embeddings side by side (the Reality Check's
        "concatenated" model), in float32."""
        parts = self.query if which == "query" else self.gallery
        out = []
        for e in parts:
            e = e.astype(np.float32)
            out.append(e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12))
        return np.concatenate(out, axis=1)


def save(path: Path, *, query: list[np.ndarray], query_labels: np.ndarray,
         meta: dict[str, Any], dtype: str = "float16", gallery: list[np.ndarray] | None = None,
         query_cameras: np.ndarray | None = None, gallery_ids: np.ndarray | None = None,
         gallery_cameras: np.ndarray | None = None) -> Path:
    """Write one reproduction's embeddings atomically; returns the path."""
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({"format": FORMAT, "folds": len(query), "dtype": dtype,
                                     **meta}, sort_keys=True)),
        "query_labels": np.asarray(query_labels, dtype=np.int64),
    }
    for i, q in enumerate(query):
        arrays[f"query_{i}"] = np.asarray(q).astype(dtype)
    if gallery is not None:
        for i, g in enumerate(gallery):
            arrays[f"gallery_{i}"] = np.asarray(g).astype(dtype)
        arrays["query_cameras"] = np.asarray(query_cameras, dtype=np.int64)
        arrays["gallery_ids"] = np.asarray(gallery_ids, dtype=np.int64)
        arrays["gallery_cameras"] = np.asarray(gallery_cameras, dtype=np.int64)
    with atomic_write(path, "wb") as handle:  # a kill or full disk leaves no half file
        np.savez_compressed(handle, **arrays)
    return path


def load(path: Path) -> SavedEmbeddings:
    """Read and check a saved-embeddings file; any problem is one BenchError naming it."""
    if not path.is_file():
        raise BenchError("missing (runs made before embeddings were saved, or deleted): rerun "
                         "the protocol with --fresh to make it", source=str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise BenchError(f"corrupt or unreadable ({type(error).__name__}: {error})",
                         source=str(path)) from None
    try:
        meta = json.loads(str(arrays["meta"]))
        folds = int(meta["folds"])
        query = [arrays[f"query_{i}"] for i in range(folds)]
        labels = arrays["query_labels"]
        gallery = ([arrays[f"gallery_{i}"] for i in range(folds)]
                   if "gallery_0" in arrays else None)
    except (KeyError, ValueError, TypeError) as error:
        raise BenchError(f"incomplete: missing or bad entry {error}", source=str(path)) from None
    if meta.get("format") != FORMAT:
        raise BenchError(f"unknown format {meta.get('format')!r}", source=str(path))
    for i, q in enumerate(query):
        if q.ndim != 2 or len(q) != len(labels) or not np.isfinite(q).all():
            raise BenchError(f"query_{i}: expected {len(labels)} finite rows, got shape "
                             f"{q.shape}", source=str(path))
    saved = SavedEmbeddings(path, meta, query, labels, gallery)
    if gallery is not None:
        try:
            saved.query_cameras = arrays["query_cameras"]
            saved.gallery_ids = arrays["gallery_ids"]
            saved.gallery_cameras = arrays["gallery_cameras"]
        except KeyError as error:
            raise BenchError(f"incomplete: missing {error}", source=str(path)) from None
    return saved


def evaluate(saved: SavedEmbeddings, *, recall_ks: tuple[int, ...] = (1, 2, 4, 8),
             ranks: tuple[int, ...] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Test metrics per fold model, their mean ("separate") and, with several folds, of the
    concatenated model, exactly as the run computed them (bench.experiment.evaluate_test)."""
    from bench.evaluate import evaluate_reid, evaluate_retrieval

    meta = saved.meta
    nmi, seed = bool(meta.get("nmi", False)), int(meta.get("seed", 0))

    def metrics(q: np.ndarray, g: np.ndarray | None) -> dict[str, float]:
        q = q.astype(np.float32)
        if g is None:
            return evaluate_retrieval(q, saved.query_labels, nmi=nmi, seed=seed,
                                      recall_ks=recall_ks)
        return evaluate_reid(q, saved.query_labels, saved.query_cameras, g.astype(np.float32),
                             saved.gallery_ids, saved.gallery_cameras, ranks=ranks)

    galleries = saved.gallery or [None] * len(saved.query)
    out = {f"fold{i}": metrics(q, g)
           for i, (q, g) in enumerate(zip(saved.query, galleries, strict=True))}
    keys = out["fold0"].keys()
    out["separate"] = {k: float(np.mean([out[f"fold{i}"][k] for i in range(len(saved.query))]))
                       for k in keys}
    if len(saved.query) > 1:
        out["concatenated"] = metrics(saved.concatenated("query"),
                                      saved.concatenated("gallery") if saved.reid else None)
    return out
