"""Size-controlled evaluation along an FID sequence, the untrained embedding and the gain.

Acceptance (issue 15): the size-controlled metric of a split is the mean over its recorded class
subsets; on a synthetic sequence where only the class count changes (same distribution), the
size-controlled metric stays flat within noise while the uncontrolled one rises.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench.analysis import ood
from bench.analysis.subsets import (
    UNTRAINED,
    aggregate,
    base_metric,
    class_subsets,
    controlled_name,
    spread_name,
    subset_seed,
)
from bench.ood_eval import controlled_metrics

METRIC = "mean_average_precision_at_r"


def test_class_subsets_are_seeded_sorted_and_sized():
    classes = np.arange(100, 160)
    a = class_subsets(classes, 20, 4, seed=7)
    assert len(a) == 4 and all(len(s) == 20 and np.all(np.diff(s) > 0) for s in a)
    assert all(set(s) <= set(classes) for s in a)
    assert len({tuple(s) for s in a}) == 4  # different subsets
    assert all(np.array_equal(x, y) for x, y in zip(a, class_subsets(classes, 20, 4, 7),
                                                   strict=True))
    assert not np.array_equal(a[0], class_subsets(classes, 20, 4, 8)[0])
    whole = class_subsets(classes, 60, 3, seed=1)  # the smallest split: nothing to control
    assert all(np.array_equal(s, classes) for s in whole)
    assert subset_seed(0, "glyphs", "fid01") == subset_seed(0, "glyphs", "fid01")
    assert subset_seed(0, "glyphs", "fid01") != subset_seed(0, "glyphs", "fid02")
    with pytest.raises(ValueError):
        class_subsets(classes, 1, 2, seed=0)
    assert base_metric(controlled_name(METRIC)) == METRIC == base_metric(spread_name(METRIC))


def gaussian_classes(n_classes: int, per_class: int, rng: np.random.Generator,
                     dim: int = 16, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Class centres from one N(0, I) and members N(centre, spread^2 I): every class count is a
    draw from the same distribution."""
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    points = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return points.astype(np.float32), labels


def scored(points: np.ndarray, labels: np.ndarray, size: int, count: int, seed: int):
    """controlled_metrics on an identity 'model' over the given embeddings."""
    protocol = SimpleNamespace(train=SimpleNamespace(eval_batch_size=4096))
    ds = SimpleNamespace(labels=labels)
    inputs = SimpleNamespace(tensor=torch.from_numpy(points))
    layout = SimpleNamespace(reid=False)
    result = SimpleNamespace(model=nn.Identity(),
                             method=SimpleNamespace(score_fn=lambda model, device: None))
    subsets = class_subsets(np.unique(labels), size, count, seed)
    return controlled_metrics(protocol, ds, inputs, layout, [result], subsets, seed=0,
                              device=torch.device("cpu"))


def test_controlled_metric_is_the_mean_over_its_recorded_subsets():
    points, labels = gaussian_classes(60, 8, np.random.default_rng(0))
    out, records = scored(points, labels, size=15, count=6, seed=3)
    assert len(records) == 6 and all(len(r["classes"]) == 15 for r in records)
    values = [r["models"]["separate"][METRIC] for r in records]
    assert out["separate"][controlled_name(METRIC)] == pytest.approx(np.mean(values), abs=1e-12)
    assert out["separate"][spread_name(METRIC)] == pytest.approx(np.std(values, ddof=1))
    assert np.std(values) > 0  # the subsets really differ
    # and each record is the metric of exactly those classes
    from bench.evaluate import evaluate_retrieval

    mask = np.isin(labels, records[2]["classes"])
    direct = evaluate_retrieval(points[mask], labels[mask], nmi=False)[METRIC]
    assert records[2]["models"]["separate"][METRIC] == pytest.approx(direct)
    assert aggregate([{"m": 1.0}, {"m": 3.0}]) == {"m.controlled": 2.0,
                                                   "m.controlled_sd": pytest.approx(math.sqrt(2))}


def test_only_the_class_count_changes_controlled_flat_uncontrolled_rises():
    """Splits whose test sets hold 160, 80, 40 and 20 classes from the same distribution."""
    counts, size = [160, 80, 40, 20], 20
    plain, controlled, spreads = [], [], []
    for i, n in enumerate(counts):
        points, labels = gaussian_classes(n, 6, np.random.default_rng(100 + i), spread=1.3)
        out, _ = scored(points, labels, size=size, count=20, seed=i)
        from bench.evaluate import evaluate_retrieval

        plain.append(evaluate_retrieval(points, labels, nmi=False)[METRIC])
        controlled.append(out["separate"][controlled_name(METRIC)])
        spreads.append(out["separate"][spread_name(METRIC)])
    assert all(b > a for a, b in zip(plain, plain[1:], strict=False))  # fewer classes: rises
    rise = plain[-1] - plain[0]
    assert rise > 0.15
    # flat within noise: the controlled values differ by less than a few subset standard errors
    # (the last split has exactly `size` classes: one subset = its whole test set)
    noise = max(spreads[:-1]) / math.sqrt(20) + max(spreads[:-1])
    assert max(controlled) - min(controlled) < max(3 * noise, 0.03)
    assert max(controlled) - min(controlled) < rise / 3


# -- analysis of untrained / gain / trend rows ------------------------------------------------


def sequence_frame(trained: dict[str, list[float]], untrained: list[float],
                   seeds: int = 3, noise: float = 0.002) -> pd.DataFrame:
    """Rows of a synthetic sequence: per method a controlled curve (per split), seeds with a
    little noise, the untrained embedding's curve for every method."""
    fids = [10.0, 50.0, 120.0, 300.0]
    rng = np.random.default_rng(0)
    rows = []
    for method, curve in trained.items():
        for seed in range(seeds):
            for k, (fid, value) in enumerate(zip(fids, curve, strict=True)):
                base = {"protocol": "p", "dataset": "d", "split": f"fid{k:02d}", "method": method,
                        "seed": seed, "fid": fid, "is_default_split": k == 1, "setting": "dml"}
                for model, v in (("separate", value), (UNTRAINED, untrained[k])):
                    v = v + rng.normal(0, noise)
                    rows.append({**base, "model": model, "metric": controlled_name(METRIC),
                                 "value": v})
                    rows.append({**base, "model": model, "metric": METRIC, "value": v - 0.05})
    return pd.DataFrame(rows)


def test_gain_trend_and_two_panel_figure():
    frame = sequence_frame({"a": [0.50, 0.45, 0.40, 0.35], "b": [0.48, 0.46, 0.44, 0.42]},
                           untrained=[0.30, 0.30, 0.29, 0.29])
    assert ood.resolve_metric(frame, METRIC) == controlled_name(METRIC)
    assert ood.resolve_metric(frame, METRIC, controlled=False) == METRIC
    gain = ood.gain_rows(frame, metric=controlled_name(METRIC))
    assert set(gain["model"]) == {ood.GAIN} and len(gain) == 2 * 3 * 4
    trained = frame[(frame["model"] == "separate") & (frame["metric"] == controlled_name(METRIC))]
    before = frame[(frame["model"] == UNTRAINED) & (frame["metric"] == controlled_name(METRIC))]
    keys = ["method", "split", "seed"]
    expected = trained.set_index(keys)["value"] - before.set_index(keys)["value"]
    assert np.allclose(gain.set_index(keys)["value"].sort_index(), expected.sort_index())
    trend = ood.spearman_trend(frame.assign(unit=frame["seed"].astype(str)),
                               metric=controlled_name(METRIC)).set_index("method")
    assert trend.loc["a", "rho"] == pytest.approx(-1.0) and trend.loc["a", "high"] < 0
    assert trend.loc["a", "n"] == 3 and trend.loc["a", "splits"] == 4
    flat = ood.spearman_trend(gain, metric=controlled_name(METRIC), model=ood.GAIN)
    assert set(flat["method"]) == {"a", "b"}
    figure = ood.ood_figure(frame, dataset="d")
    left, right = figure.axes[:2]
    assert "size-controlled" in left.get_title() and "gain" in right.get_title()
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert any("untrained" in x for x in labels) and any("AUC" in x for x in labels)
    uncontrolled = ood.ood_figure(frame, dataset="d", controlled=False)
    assert "uncontrolled" in uncontrolled.axes[0].get_title()
    lines = "\n".join(ood.ood_summary_lines(frame, dataset="d"))
    assert "size-controlled" in lines and "untrained embedding" in lines and "rho" in lines
    assert "gain = trained - untrained" in lines and "uncontrolled" in lines
