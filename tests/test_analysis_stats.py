"""Statistics behind the comparison tables: t-intervals, paired tests, Holm, letters, outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.analysis.stats import compact_letters, holm, paired_test, t_interval
from bench.analysis.tables import compare, pairwise, summarize
from bench.errors import BenchError


def frame_of(values: dict[str, list[float]], metric: str = "mean_average_precision_at_r",
             model: str = "concatenated") -> pd.DataFrame:
    """A tidy results frame: one row per method and seed (seed = position in the list)."""
    rows = [{"protocol": "p", "dataset": "d", "split": "standard", "setting": "dml",
             "method": method, "seed": seed, "model": model, "metric": metric, "value": value}
            for method, series in values.items() for seed, value in enumerate(series)]
    return pd.DataFrame(rows)


def test_t_interval_by_hand_and_scipy():
    sample = [0.61, 0.63, 0.60, 0.64, 0.62]
    mean, half = t_interval(sample)
    # By hand: mean 0.62, sd = sqrt(0.001 / 4) = 0.0158114, sem = sd / sqrt(5) = 0.0070711,
    # t(0.975, 4) = 2.7764451 -> half-width 0.0196324.
    assert mean == pytest.approx(0.62)
    assert half == pytest.approx(2.7764451 * 0.0070711, rel=1e-5)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(sample), scale=stats.sem(sample))
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)
    assert math.isnan(t_interval([0.5])[1])


def test_summary_intervals_equal_scipy_and_ranks():
    values = {"a": [0.30, 0.32, 0.31], "b": [0.40, 0.41, 0.39, 0.43], "c": [0.20, 0.25, 0.22]}
    summary = summarize(frame_of(values)).set_index("method")
    for method, sample in values.items():
        low, high = stats.t.interval(0.95, df=len(sample) - 1, loc=np.mean(sample),
                                     scale=stats.sem(sample))
        row = summary.loc[method]
        assert row["n"] == len(sample)
        assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-12)
    assert summary["rank"].to_dict() == {"b": 1, "a": 2, "c": 3}


def test_paired_test_matches_scipy():
    a = [0.31, 0.35, 0.33, 0.36, 0.30, 0.34]
    b = [0.30, 0.32, 0.33, 0.31, 0.29, 0.30]
    result = paired_test(a, b)
    assert result["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    diff = np.subtract(a, b)
    assert result["diff"] == pytest.approx(diff.mean())
    assert result["dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    one_sided = paired_test(a, b, delta=0.01, alternative="greater")
    assert one_sided["p_t"] == pytest.approx(
        stats.ttest_1samp(diff - 0.01, 0, alternative="greater").pvalue)
    assert paired_test([0.5, 0.6], [0.5, 0.6])["p_t"] == 1.0  # identical: no difference


def test_holm_hand_worked_example():
    # p sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06,
    # monotone). At alpha 0.05 Holm rejects the first two only; Bonferroni (x4) only the first.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    with_nan = holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_decisions_one_true_one_false_difference():
    # 8 seeds; "strong" is truly 0.05 better than "base"; "same" differs from "base" by noise
    # only. A seed effect is shared by all methods (pairing removes it).
    seed_effect = np.array([0.00, 0.02, -0.01, 0.03, -0.02, 0.01, 0.0, -0.03])
    noise = np.array([0.004, -0.003, 0.002, -0.001, 0.003, -0.004, 0.001, -0.002])
    base = 0.30 + seed_effect
    values = {"strong": list(base + 0.05 + noise), "base": list(base),
              "same": list(base + noise[::-1])}
    pairs = pairwise(frame_of(values))
    significant = {frozenset((r.a, r.b)): r.significant for r in pairs.itertuples()}
    assert significant == {frozenset(("strong", "base")): True,
                           frozenset(("strong", "same")): True,
                           frozenset(("same", "base")): False}
    raw = pairs["p_t"].to_numpy()
    assert pairs["p_holm"].to_numpy() == pytest.approx(holm(raw))
    comparison = compare(frame_of(values))
    letters = comparison.summary.set_index("method")["letters"].to_dict()
    assert letters == {"strong": "a", "same": "b", "base": "b"}


def test_compact_letters():
    order = ["a", "b", "c", "d"]  # best first
    different = {frozenset("ac"), frozenset("ad"), frozenset("bd")}
    assert compact_letters(order, different) == {"a": "a", "b": "ab", "c": "bc", "d": "c"}
    assert compact_letters(order, set()) == dict.fromkeys(order, "a")


def test_outputs_markdown_latex_csv(tmp_path):
    values = {"contrastive": [0.30, 0.31, 0.305], "proxy_anchor": [0.33, 0.345, 0.34]}
    frame = pd.concat([frame_of(values), frame_of(values, metric="precision_at_1")])
    comparison = compare(frame)
    markdown = comparison.markdown()
    assert "| rank | method | n | MAP@R | P@1 |" in markdown
    assert "0.3383 ± " in markdown and "Holm" in markdown
    latex = comparison.latex()
    assert r"proxy\_anchor" in latex and r"\pm" in latex and r"\textsuperscript{a}" in latex
    assert latex.count(r"\begin{tabular}") == 1
    written = comparison.write(tmp_path, stem="t")
    assert [p.name for p in written] == ["t.md", "t.tex", "t.csv", "t_pairs.csv"]
    table = pd.read_csv(tmp_path / "t.csv")
    assert {"method", "metric", "mean", "low", "high", "rank", "letters"} <= set(table.columns)
    assert len(table) == 4


def test_same_method_from_two_protocols_is_not_pooled():
    values = {"a": [0.30, 0.31], "b": [0.40, 0.41]}
    frame = pd.concat([frame_of(values), frame_of(values).assign(protocol="q")])
    with pytest.raises(BenchError, match="several protocols"):
        compare(frame)


def test_reid_results_rank_by_map_first():
    """uda / dg rows carry CMC and mAP: mAP is the default primary metric, ranked first."""
    frames = [frame_of({"a": [0.9, 0.8], "b": [0.7, 0.6]}, metric="cmc_1"),
              frame_of({"a": [0.2, 0.3], "b": [0.4, 0.5]}, metric="mAP")]
    comparison = compare(pd.concat(frames, ignore_index=True))
    assert comparison.primary == "mAP"
    ranks = comparison.summary[comparison.summary["metric"] == "mAP"].set_index("method")["rank"]
    assert ranks["b"] < ranks["a"]


def test_letters_need_three_paired_reproductions():
    """Two seeds whose differences agree give p < 0.001 on one degree of freedom: never a
    letter of their own (the audit's n >= 3 rule); with three seeds the difference counts."""
    two = {"strong": [0.400, 0.410], "base": [0.300, 0.3100001]}
    pairs = pairwise(frame_of(two))
    assert pairs["p_holm"].iloc[0] < 0.05 and not pairs["significant"].iloc[0]
    comparison = compare(frame_of(two))
    assert set(comparison.summary["letters"]) == {"a"}
    assert "fewer than 3 paired" in comparison.legend()
    three = {"strong": [0.400, 0.410, 0.405], "base": [0.300, 0.311, 0.304]}
    assert pairwise(frame_of(three))["significant"].iloc[0]
