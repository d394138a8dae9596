"""A picture of the embedding space: 2-D t-SNE of the saved test embeddings of the best
methods, coloured by class for a readable subset of classes (bench.embeddings files).

scikit-learn's t-SNE (PCA initialisation, fixed seed) is used rather than a new dependency
(UMAP); the subset keeps the colours distinguishable (tab10) and the run time to seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import embeddings
from bench.errors import BenchError
from bench.evaluate.metric_table import headline_model
from bench.keys import JobKey

TOP = 3
CLASSES = 10


def top_methods(rows: pd.DataFrame, metric: str, top: int = TOP) -> list[str]:
    """Methods ranked by the mean of ``metric`` over seeds (headline model), best first."""
    model = headline_model(map(str, rows["model"].unique()))
    sub = rows[(rows["model"] == model) & (rows["metric"] == metric)]
    means = sub.groupby("method")["value"].mean().sort_values(ascending=False, kind="stable")
    return list(means.index[:top])


def find_embeddings(results_dir: Path, dataset: str, method: str, split: str
                    ) -> embeddings.SavedEmbeddings | None:
    """The lowest seed's saved embeddings of one method, or None when there are none/unreadable."""
    folder = results_dir / "runs" / dataset / method / split
    files = sorted(folder.glob(f"seed*{embeddings.SUFFIX}"),
                   key=lambda p: JobKey.seed_of(p.name) or 0)
    for path in files:
        try:
            return embeddings.load(path)
        except BenchError:
            continue
    return None


def class_subset(labels: np.ndarray, count: int = CLASSES) -> np.ndarray:
    """``count`` classes spread evenly over the sorted test classes (deterministic)."""
    classes = np.unique(labels)
    if len(classes) <= count:
        return classes
    return classes[np.linspace(0, len(classes) - 1, count).round().astype(int)]


def project(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(points) - 1) // 3)))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity
                ).fit_transform(points.astype(np.float32))


def embedding_figure(saved: dict[str, embeddings.SavedEmbeddings], *, title: str):
    """One panel per method: its test (query) embeddings of the class subset, t-SNE to 2-D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(saved.values()))
    keep = class_subset(first.query_labels)
    figure, axes = plt.subplots(1, len(saved), figsize=(4.2 * len(saved), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (method, item) in zip(axes[0], saved.items(), strict=True):
        mask = np.isin(item.query_labels, keep)
        points = item.concatenated("query") if len(item.query) > 1 else \
            item.query[0].astype(np.float32)
        xy = project(points[mask])
        labels = item.query_labels[mask]
        for j, c in enumerate(keep):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(j % 10), label=str(c))
        ax.set_title(method, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(title="class", fontsize=7, title_fontsize=8, loc="center left",
                       bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def figure_for(rows: pd.DataFrame, results_dir: Path, dataset: str, split: str, metric: str):
    """The figure for the top methods of one dataset, or None without saved embeddings."""
    saved = {}
    for method in top_methods(rows, metric):
        item = find_embeddings(results_dir, dataset, method, split)
        if item is not None:
            saved[method] = item
    if not saved:
        return None, []
    return embedding_figure(saved, title=f"{dataset} / {split}: test embeddings (t-SNE), "
                                         f"top methods by {metric}"), list(saved)
