"""Extra test-phase evaluations of a split of an FID sequence (the test side of bench.runner).

Two things make a metric-vs-FID curve measure generalisation rather than test-set make-up:

- size control: the split is also scored on seeded subsets of its test classes, each as large as
  the smallest test set of the sequence (bench.analysis.subsets), so a metric at one FID is
  comparable with the metric at another;
- the untrained embedding: the same network before training (pretrained trunk, or cached frozen
  prefix + pretrained last stage, with the method's freshly initialised head; same seed and
  construction as the trained one) is scored the same way, so "this test set is harder" (the
  untrained curve) separates from "training transferred less" (trained minus untrained).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.analysis.subsets import UNTRAINED, aggregate, class_subsets, subset_seed
from bench.data.records import ImageDataset
from bench.evaluate import evaluate_retrieval
from bench.evaluate.metric_table import METRICS
from bench.experiment import FoldResult, Inputs, build_fold_model, evaluate_test
from bench.methods import method_class
from bench.protocol import Protocol
from bench.settings import Layout, evaluation_rows
from bench.splits import ClassSplit
from bench.train import embed


def untrained_folds(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
                    folds: list[ClassSplit], *, method: str, parsed_params: Any,
                    seed: int) -> list[FoldResult]:
    """The fold models exactly as :func:`bench.experiment.fit_fold` builds them
    (:func:`bench.experiment.build_fold_model`), not trained."""
    out = []
    for fold in folds:
        plugin, model, rows = build_fold_model(protocol, ds, inputs, layout, fold,
                                               method=method, parsed_params=parsed_params,
                                               seed=seed)
        consumed = method_class(method).consumed(layout.kinds)
        out.append(FoldResult(float("nan"), 0, 0, [], model, plugin, consumed))
    return out


def controlled_metrics(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
                       results: list[FoldResult], subsets: list[np.ndarray], *, seed: int,
                       device: torch.device) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Per model (``separate``; ``concatenated`` with several folds): the size-controlled mean
    and spread of every kNN metric; and the per-subset records they were computed from."""
    query, _ = evaluation_rows(layout, ds, np.unique(np.concatenate(subsets)))
    labels = ds.labels[query]
    batch = protocol.train.eval_batch_size
    fold_emb = [embed(r.model, inputs.tensor[query], batch_size=batch, device=device)
                for r in results]
    fold_fns = [r.method.score_fn(r.model, device) for r in results]
    concat = None
    if len(results) > 1:
        from bench.experiment import concatenated_score_fn

        normed = [e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12) for e in fold_emb]
        concat = (np.concatenate(normed, axis=1),
                  concatenated_score_fn(fold_fns, [e.shape[1] for e in normed]))

    def score(emb: np.ndarray, fn, mask: np.ndarray) -> dict[str, float]:
        found = evaluate_retrieval(emb[mask], labels[mask], nmi=False, seed=seed, score_fn=fn)
        return {k: float(v) for k, v in found.items() if k in METRICS}

    records = []
    for i, classes in enumerate(subsets):
        mask = np.isin(labels, classes)
        per_fold = [score(e, f, mask) for e, f in zip(fold_emb, fold_fns, strict=True)]
        models = {"separate": {k: float(np.mean([p[k] for p in per_fold])) for k in per_fold[0]}}
        if concat is not None:
            models["concatenated"] = score(concat[0], concat[1], mask)
        records.append({"subset": i, "classes": [int(c) for c in classes], "models": models})
    out = {model: aggregate([r["models"][model] for r in records])
           for model in records[0]["models"]}
    return out, records


def sequence_evaluation(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
                        *, dataset: str, split_id: str, test_classes: np.ndarray,
                        controlled_size: int, folds: list[ClassSplit],
                        results: list[FoldResult], method: str, parsed_params: Any, seed: int,
                        device: torch.device) -> tuple[dict[str, dict[str, float]], dict]:
    """Extra metrics of one job on a sequence split: size-controlled metrics of the trained
    models, and all metrics (plain and size-controlled) of the untrained models under model
    ``untrained``. Returns (model -> metric -> value, the subsets record for the run file)."""
    headline = "concatenated" if len(results) > 1 else "separate"
    subsets = class_subsets(test_classes, controlled_size, protocol.split.subsets,
                            subset_seed(protocol.seed, dataset, split_id))
    trained, records = controlled_metrics(protocol, ds, inputs, layout, results, subsets,
                                          seed=seed, device=device)
    before = untrained_folds(protocol, ds, inputs, layout, folds, method=method,
                             parsed_params=parsed_params, seed=seed)
    plain = evaluate_test(protocol, ds, inputs, layout, test_classes, before, seed=seed,
                          device=device)[headline]
    untrained, before_records = controlled_metrics(protocol, ds, inputs, layout, before,
                                                   subsets, seed=seed, device=device)
    extra = {model: values for model, values in trained.items()}
    extra[UNTRAINED] = {**plain, **untrained[headline]}
    for record, previous in zip(records, before_records, strict=True):
        record["models"][UNTRAINED] = previous["models"][headline]
    return extra, {"size": int(min(controlled_size, len(test_classes))),
                   "test_classes": int(len(test_classes)), "headline": headline,
                   "subsets": records}
