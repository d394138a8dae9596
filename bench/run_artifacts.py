"""What a test reproduction leaves beside its run file besides metrics: its test embeddings
(always, unless ``save.embeddings: none``) and, when asked, its fold models' checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import checkpoints, embeddings
from bench.data.records import ImageDataset
from bench.experiment import reid_ids
from bench.protocol import Protocol
from bench.settings import Layout, evaluation_rows


def save_run_artifacts(run_file: Path, protocol: Protocol, ds: ImageDataset, layout: Layout,
                       test_classes: np.ndarray, results: list, sink: dict[str, list], *,
                       seed: int, method: str) -> None:
    save = protocol.save
    if save.embeddings != "none":
        query, gallery = evaluation_rows(layout, ds, test_classes)
        meta: dict[str, Any] = {
            "protocol": protocol.name, "method": method, "seed": seed,
            "setting": layout.kind, "primary": protocol.evaluation.primary,
            "nmi": bool(protocol.evaluation.nmi and gallery is None),
            "k": protocol.evaluation.k,
            # a method ranking with its own score function cannot be re-scored from
            # embeddings alone: `bench evaluate` says so instead of printing other numbers
            "score_fn": any(sink.get("score_fn", [])),
        }
        extra = {} if gallery is None else {
            "gallery": sink["gallery"], "query_cameras": ds.cameras[query],
            "gallery_ids": reid_ids(ds, gallery), "gallery_cameras": ds.cameras[gallery]}
        embeddings.save(embeddings.path_for(run_file), query=sink["query"],
                        query_labels=ds.labels[query], meta=meta, dtype=save.embeddings, **extra)
    if save.checkpoints != "none":
        for i, r in enumerate(results):
            state = r.last_state if save.checkpoints == "last" else r.model.state_dict()
            checkpoints.save(checkpoints.path_for(run_file, i), state, r.method.parameters())

