"""Clustering quality of a method's target pseudo-labels, measured by the harness.

Why: SpCL-style methods live or die by how well their clusters match the (hidden) target
identities; no public harness reports it. The true labels of the target training rows are held
by the harness and compared here, after each epoch's clustering: they never reach the method.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def pseudo_label_quality(pseudo: np.ndarray, num_clusters: int,
                         truth: np.ndarray) -> dict[str, float]:
    """``pseudo``: 0..K-1 = clusters, ids >= K = singleton outliers (one per row).

    Returns: clusters (K), outliers (rows outside every cluster), clustered_share, purity
    (share of clustered rows whose cluster's majority identity is theirs), the number of true
    identities, and NMI / ARI of the full assignment (outliers as singletons) against the truth.
    """
    pseudo = np.asarray(pseudo)
    truth = np.asarray(truth)
    clustered = pseudo < num_clusters
    purity = float("nan")
    if clustered.any():
        table = contingency_matrix(pseudo[clustered], truth[clustered])
        purity = float(table.max(axis=1).sum() / clustered.sum())
    return {"clusters": float(num_clusters), "outliers": float((~clustered).sum()),
            "clustered_share": float(clustered.mean()) if len(pseudo) else float("nan"),
            "purity": purity, "identities": float(len(np.unique(truth))),
            "nmi": float(normalized_mutual_info_score(truth, pseudo)),
            "ari": float(adjusted_rand_score(truth, pseudo))}
