"""OOD analysis of FID split sequences: curves, deviations, area under curve, rank changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench.analysis import ood
from bench.analysis.load import load_results
from bench.errors import BenchError

FIXTURE = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(scope="module")
def frame():
    return load_results(FIXTURE / "oodml_glyphs")


def test_curves_bands_and_default(frame):
    curve = ood.curves(frame)
    assert len(curve) == 4 * 4  # methods x splits
    assert set(curve.loc[curve["is_default"], "split"]) == {"fid01"}
    row = curve[(curve["method"] == "triplet") & (curve["split"] == "fid03")].iloc[0]
    sample = frame[(frame["method"] == "triplet") & (frame["split"] == "fid03")
                   & (frame["model"] == "concatenated")
                   & (frame["metric"] == "mean_average_precision_at_r")]["value"]
    low, high = stats.t.interval(0.95, len(sample) - 1, loc=sample.mean(), scale=stats.sem(sample))
    assert (row["low"], row["high"]) == pytest.approx((low, high))


def test_area_under_curve_by_hand(frame):
    auc = ood.area_under_curve(frame).set_index("method")
    rows = frame[(frame["method"] == "contrastive") & (frame["model"] == "concatenated")
                 & (frame["metric"] == "mean_average_precision_at_r")]
    per_seed = []
    for _, seed_rows in rows.groupby("seed"):
        seed_rows = seed_rows.sort_values("fid")
        x, y = seed_rows["fid"].to_numpy(), seed_rows["value"].to_numpy()
        area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
        per_seed.append(area / (x[-1] - x[0]))
    assert auc.loc["contrastive", "auc"] == pytest.approx(np.mean(per_seed))
    assert auc.loc["contrastive", "n"] == 3
    assert sorted(auc["rank"]) == [1, 2, 3, 4]


def test_deviations_and_rank_changes(frame):
    points, fits = ood.deviations(frame)
    assert points.groupby("split")["deviation"].sum().abs().max() < 1e-12
    # proxy_anchor degrades fastest in the fixture: the only negative slope
    assert fits.set_index("method")["slope"].idxmin() == "proxy_anchor"
    changes = ood.rank_changes(frame).set_index("split")
    assert changes.loc["fid01", "kendall_tau"] == 1.0 and changes.loc["fid01", "is_default"]
    assert changes.loc["fid03", "is_hardest"]
    means = ood.curves(frame).pivot_table(index="method", columns="split", values="mean")
    expected = stats.kendalltau(means["fid01"], means["fid03"]).statistic
    assert changes.loc["fid03", "kendall_tau"] == pytest.approx(expected)
    assert changes.loc["fid03", "kendall_tau"] < 1


def test_figures(frame):
    curve = ood.curves(frame)
    points, fits = ood.deviations(frame)
    for figure in (ood.plot_curves(curve), ood.plot_deviations(points, fits),
                   ood.plot_rank_changes(ood.rank_changes(frame))):
        axis = figure.axes[0]
        assert axis.get_xlabel().startswith("FID") and axis.has_data()


def test_results_without_fid_are_refused():
    with pytest.raises(BenchError, match="no `fid` column"):
        ood.curves(load_results(FIXTURE / "quick"))
