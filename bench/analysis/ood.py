"""Out-of-distribution analysis of FID split sequences (ooDML's reporting conventions).

Results of a sequence carry one split id per difficulty level (``fid00``, ``fid01``, ...) with an
``fid`` column (the train/test Frechet distance of that split) and ``is_default_split``. From them:

- :func:`curves`: metric vs FID per method, mean and 95 % t-interval over seeds (the band);
- :func:`deviations`: each method's mean minus the across-method mean at each split, with a
  least-squares line per method (above zero = better than the field; a negative slope = degrades
  faster than the field as the shift grows);
- :func:`area_under_curve`: trapezoidal area under each seed's metric-vs-FID curve, divided by the
  FID range (so it reads as the metric averaged over the shift range), mean ± t-interval;
- :func:`rank_changes`: Kendall tau between the default split's ranking of the methods (by mean)
  and each split's (scipy's tau-b; 1 = same order).

Issue 15's views (rows written by bench.ood_eval): the size-controlled metric
(``<metric>.controlled``: mean over seeded subsets of the test classes, all as large as the
smallest test set of the sequence; :func:`resolve_metric` picks it by default), the untrained
embedding (model ``untrained``), the gain over it (:func:`gain_rows`: trained minus untrained,
paired per seed), :func:`spearman_trend` (rho of metric vs FID per method with a seed-bootstrap
interval), :func:`easiest_vs_hardest` (Kendall tau) and :func:`ood_summary_lines`.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (no GUI backend), or
drawn into a given ``ax``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from bench.analysis.figures import axes as _axes
from bench.analysis.figures import method_colors
from bench.analysis.load import default_split
from bench.analysis.stats import t_interval
from bench.analysis.subsets import UNTRAINED, controlled_name, is_controlled, spread_name
from bench.analysis.tables import select_model
from bench.errors import BenchError

PRIMARY = "mean_average_precision_at_r"


def ood_rows(frame: pd.DataFrame, *, metric: str = PRIMARY,
             model: str | None = None) -> pd.DataFrame:
    """The rows of one metric and model that belong to FID sequences (``fid`` known)."""
    if "fid" not in frame.columns or frame["fid"].isna().all():
        raise BenchError("these results have no `fid` column: not an FID split sequence "
                         "(run a protocol with an OOD split sequence)", field="fid")
    rows = frame[frame["fid"].notna()]
    if metric not in set(rows["metric"]):
        raise BenchError(f"metric {metric!r} not in the results", field="metric")
    rows, _ = select_model(rows, model)
    return rows[rows["metric"] == metric]


def curves(frame: pd.DataFrame, *, metric: str = PRIMARY, model: str | None = None,
           confidence: float = 0.95) -> pd.DataFrame:
    """Per dataset, method and split: fid, n, mean, half_width, low, high, is_default."""
    rows = ood_rows(frame, metric=metric, model=model)
    out = []
    for dataset, sub in rows.groupby("dataset", sort=False):
        default = default_split(sub)
        for (method, split), cell in sub.groupby(["method", "split"], sort=False):
            mean, half = t_interval(cell["value"].dropna().to_numpy(), confidence)
            out.append({"dataset": dataset, "method": method, "split": split,
                        "fid": float(cell["fid"].iloc[0]), "n": int(cell["value"].notna().sum()),
                        "mean": mean, "half_width": half, "low": mean - half,
                        "high": mean + half, "is_default": split == default})
    return (pd.DataFrame(out).sort_values(["dataset", "method", "fid"], kind="stable")
            .reset_index(drop=True))


def area_under_curve(frame: pd.DataFrame, *, metric: str = PRIMARY, model: str | None = None,
                     normalize: bool = True) -> pd.DataFrame:
    """Per dataset and method: mean ± t-interval over seeds of the area under the seed's
    metric-vs-FID curve (trapezoids; divided by the FID range when ``normalize``), and rank."""
    rows = ood_rows(frame, metric=metric, model=model)
    out = []
    for (dataset, method), sub in rows.groupby(["dataset", "method"], sort=False):
        n_splits = sub["split"].nunique()
        areas = []
        for _, seed_rows in sub.groupby("unit"):
            curve = seed_rows.groupby("fid")["value"].mean().sort_index()
            if len(curve) != n_splits or len(curve) < 2:
                continue  # a seed missing a split has no comparable curve
            fid = curve.index.to_numpy(dtype=float)
            area = float(np.trapezoid(curve.to_numpy(), fid))
            areas.append(area / (fid[-1] - fid[0]) if normalize else area)
        mean, half = t_interval(areas)
        out.append({"dataset": dataset, "method": method, "n": len(areas), "auc": mean,
                    "half_width": half, "low": mean - half, "high": mean + half,
                    "fid_min": float(sub["fid"].min()), "fid_max": float(sub["fid"].max())})
    table = pd.DataFrame(out)
    table["rank"] = table.groupby("dataset")["auc"].rank(ascending=False, method="min")
    table["rank"] = table["rank"].fillna(0).astype(int)
    return table.sort_values(["dataset", "rank"], kind="stable").reset_index(drop=True)


def deviations(frame: pd.DataFrame, *, metric: str = PRIMARY,
               model: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, fits): each method's mean minus the across-method mean at every split, and per
    method the least-squares line deviation = intercept + slope * fid (with r and its p-value)."""
    table = curves(frame, metric=metric, model=model)
    table["deviation"] = table["mean"] - table.groupby(["dataset", "split"])["mean"].transform(
        "mean")
    fits = []
    for (dataset, method), sub in table.groupby(["dataset", "method"], sort=False):
        if len(sub) >= 2 and sub["fid"].nunique() >= 2:
            fit = stats.linregress(sub["fid"], sub["deviation"])
            slope, intercept, r, p = fit.slope, fit.intercept, fit.rvalue, fit.pvalue
        else:
            slope = intercept = r = p = math.nan
        fits.append({"dataset": dataset, "method": method, "slope": float(slope),
                     "intercept": float(intercept), "r": float(r), "p": float(p)})
    points = table[["dataset", "method", "split", "fid", "deviation", "is_default"]]
    return points, pd.DataFrame(fits)


def rank_changes(frame: pd.DataFrame, *, metric: str = PRIMARY,
                 model: str | None = None) -> pd.DataFrame:
    """Per dataset and split: Kendall tau (and its p-value) between the default split's ranking
    of the methods and this split's, the best method, and whether it is the hardest split."""
    table = curves(frame, metric=metric, model=model)
    out = []
    for dataset, sub in table.groupby("dataset", sort=False):
        means = sub.pivot_table(index="method", columns="split", values="mean")
        fids = sub.groupby("split")["fid"].first().sort_values()
        default = sub.loc[sub["is_default"], "split"].iloc[0]
        for split, fid in fids.items():
            pair = pd.concat([means[default].rename("a"), means[split].rename("b")],
                             axis=1).dropna()
            if len(pair) >= 2 and pair["a"].nunique() > 1 and pair["b"].nunique() > 1:
                tau, p = stats.kendalltau(pair["a"], pair["b"])
            else:
                tau, p = math.nan, math.nan
            out.append({"dataset": dataset, "split": split, "fid": float(fid),
                        "is_default": split == default, "is_hardest": split == fids.index[-1],
                        "methods": len(pair), "kendall_tau": float(tau), "p": float(p),
                        "best": str(means[split].idxmax())})
    return pd.DataFrame(out)


def ranking_tau(means_a: pd.Series, means_b: pd.Series) -> float:
    """Kendall tau between two rankings given as method -> mean (common methods only)."""
    both = pd.concat([means_a, means_b], axis=1, join="inner").dropna()
    if len(both) < 2:
        return math.nan
    return float(stats.kendalltau(both.iloc[:, 0], both.iloc[:, 1]).statistic)


# -- figures ---------------------------------------------------------------------------------


def plot_curves(table: pd.DataFrame, *, dataset: str | None = None, metric: str = PRIMARY,
                ax=None):
    """Metric vs FID, one line per method with its 95 % interval as a band; the default split
    is marked with a dotted vertical line."""
    dataset = dataset or table["dataset"].iloc[0]
    sub = table[table["dataset"] == dataset]
    figure, ax = _axes(ax)
    colors = method_colors(sub["method"])
    for method, rows in sub.groupby("method"):
        rows = rows.sort_values("fid")
        ax.plot(rows["fid"], rows["mean"], marker="o", ms=4, color=colors[method], label=method)
        band = rows.dropna(subset=["half_width"])
        ax.fill_between(band["fid"], band["low"], band["high"], color=colors[method], alpha=0.18,
                        linewidth=0)
    default = sub.loc[sub["is_default"], "fid"]
    if len(default):
        ax.axvline(default.iloc[0], color="0.4", ls=":", lw=1, label="default split")
    ax.set_xlabel("FID between train and test classes (higher = harder)")
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: {metric} vs FID (mean, 95 % CI band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def plot_deviations(points: pd.DataFrame, fits: pd.DataFrame, *, dataset: str | None = None,
                    ax=None):
    """Deviation from the across-method mean vs FID, with each method's linear fit."""
    dataset = dataset or points["dataset"].iloc[0]
    sub = points[points["dataset"] == dataset]
    figure, ax = _axes(ax)
    colors = method_colors(sub["method"])
    span = np.linspace(sub["fid"].min(), sub["fid"].max(), 50)
    for method, rows in sub.groupby("method"):
        ax.scatter(rows["fid"], rows["deviation"], s=16, color=colors[method])
        fit = fits[(fits["dataset"] == dataset) & (fits["method"] == method)]
        if len(fit) and not math.isnan(fit["slope"].iloc[0]):
            slope, intercept = fit["slope"].iloc[0], fit["intercept"].iloc[0]
            ax.plot(span, intercept + slope * span, color=colors[method],
                    label=f"{method} (slope {slope:+.2e})")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("FID between train and test classes")
    ax.set_ylabel("deviation from the across-method mean")
    ax.set_title(f"{dataset}: deviation from the mean, with linear fits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def plot_rank_changes(table: pd.DataFrame, *, dataset: str | None = None, ax=None):
    """Kendall tau between the default split's ranking and each split's, vs FID."""
    dataset = dataset or table["dataset"].iloc[0]
    sub = table[table["dataset"] == dataset].sort_values("fid")
    figure, ax = _axes(ax, size=(6.4, 3.2))
    ax.plot(sub["fid"], sub["kendall_tau"], marker="o", color="tab:purple")
    for row in sub.itertuples():
        ax.annotate(row.best, (row.fid, row.kendall_tau), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_ylim(-1.05, 1.15)
    ax.axhline(1, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("FID between train and test classes")
    ax.set_ylabel("Kendall tau vs default ranking")
    ax.set_title(f"{dataset}: ranking agreement with the default split (labels: best method)")
    ax.grid(alpha=0.3)
    return figure


# -- size control, untrained embedding, gain, trend ------------------------------------------

GAIN = "gain"
BOOTSTRAP = 2000


def resolve_metric(frame: pd.DataFrame, metric: str = PRIMARY, *,
                   controlled: bool = True) -> str:
    """The size-controlled column of ``metric`` when the results have it and ``controlled``,
    else ``metric`` itself (results recorded before size control existed)."""
    if controlled and not is_controlled(metric) and controlled_name(metric) in set(
            frame["metric"]):
        return controlled_name(metric)
    return metric


def describe_metric(metric: str) -> str:
    """Say which view a metric column is: size-controlled or all test classes."""
    if is_controlled(metric):
        return (f"{metric.removesuffix('.controlled')}, size-controlled (mean over class "
                "subsets as large as the smallest test set)")
    return f"{metric}, all test classes (uncontrolled)"


def has_untrained(frame: pd.DataFrame) -> bool:
    return UNTRAINED in set(frame["model"])


def gain_rows(frame: pd.DataFrame, *, metric: str, model: str | None = None) -> pd.DataFrame:
    """Rows of model ``gain``: the trained model's value minus the untrained embedding's, paired
    on (dataset, split, method, seed); pairs missing either side are dropped."""
    trained, model = select_model(frame[frame["metric"] == metric], model)
    before = frame[(frame["model"] == UNTRAINED) & (frame["metric"] == metric)]
    keys = ["dataset", "split", "method", "seed"]
    merged = trained.merge(before[[*keys, "value"]].rename(columns={"value": "_untrained"}),
                           on=keys, how="inner")
    merged["value"] = merged["value"] - merged["_untrained"]
    return merged.drop(columns=["_untrained", "unit"]).assign(model=GAIN)


def easiest_vs_hardest(frame: pd.DataFrame, *, metric: str = PRIMARY,
                       model: str | None = None) -> pd.DataFrame:
    """Per dataset: Kendall tau between the methods' rankings (by mean) on the lowest- and the
    highest-FID split (1 = same order), with the best method on each."""
    table = curves(frame, metric=metric, model=model)
    out = []
    for dataset, sub in table.groupby("dataset", sort=False):
        fids = sub.groupby("split")["fid"].first().sort_values()
        means = sub.pivot_table(index="method", columns="split", values="mean")
        easy, hard = fids.index[0], fids.index[-1]
        out.append({"dataset": dataset, "easiest": easy, "hardest": hard,
                    "kendall_tau": ranking_tau(means[easy], means[hard]),
                    "best_easiest": str(means[easy].idxmax()),
                    "best_hardest": str(means[hard].idxmax())})
    return pd.DataFrame(out)


def spearman_trend(frame: pd.DataFrame, *, metric: str = PRIMARY, model: str | None = None,
                   confidence: float = 0.95, seed: int = 0,
                   draws: int = BOOTSTRAP) -> pd.DataFrame:
    """Per dataset and method: Spearman rho of the mean metric (over seeds) against FID, and a
    percentile interval from a seeded bootstrap over reproduction seeds (whole seeds resampled,
    the same draw on every split, so a seed's curve stays one curve). Negative = decays with
    the shift. ``n``: seeds with a complete curve."""
    rows = ood_rows(frame, metric=metric, model=model)
    rng = np.random.default_rng(seed)
    out = []
    for (dataset, method), sub in rows.groupby(["dataset", "method"], sort=False):
        table = sub.pivot_table(index="unit", columns="fid", values="value").dropna()
        fids = table.columns.to_numpy(dtype=float)
        n = len(table)
        rho = low = high = math.nan
        if n >= 1 and len(fids) >= 3 and np.ptp(table.mean().to_numpy()) > 0:
            rho = float(stats.spearmanr(fids, table.mean().to_numpy()).statistic)
        if n >= 2 and len(fids) >= 3:
            values = table.to_numpy()
            curves_ = values[rng.integers(0, n, (draws, n))].mean(axis=1)
            ranks = stats.rankdata(curves_, axis=1)
            fid_ranks = stats.rankdata(fids)
            rhos = np.array([np.corrcoef(fid_ranks, r)[0, 1] if np.ptp(r) > 0 else math.nan
                             for r in ranks])
            rhos = rhos[~np.isnan(rhos)]
            if len(rhos):
                tail = (1 - confidence) / 2
                low, high = (float(q) for q in np.quantile(rhos, [tail, 1 - tail]))
        out.append({"dataset": dataset, "method": method, "n": n, "splits": len(fids),
                    "rho": rho, "low": low, "high": high})
    return pd.DataFrame(out)


def _auc_text(auc: pd.Series, name: str) -> str:
    return f" (AUC {auc[name]:.3f})" if name in auc.index and not math.isnan(auc[name]) else ""


def plot_untrained(rows: pd.DataFrame, *, metric: str, ax) -> None:
    """The untrained embedding's curve (pooled over methods: only the head's initialisation
    differs between them), dashed black with its 95 % band."""
    before = rows[(rows["model"] == UNTRAINED) & (rows["metric"] == metric)]
    if before.empty:
        return
    grouped = before.groupby("fid")["value"]
    fid = np.array(sorted(before["fid"].unique()), dtype=float)
    stats_ = [t_interval(grouped.get_group(f).to_numpy()) for f in fid]
    mean = np.array([m for m, _ in stats_])
    half = np.array([h for _, h in stats_])
    ax.plot(fid, mean, color="black", ls="--", marker="s", ms=3,
            label="untrained embedding (before training)")
    ok = ~np.isnan(half)
    ax.fill_between(fid[ok], (mean - half)[ok], (mean + half)[ok], color="black", alpha=0.08,
                    linewidth=0)


def ood_figure(frame: pd.DataFrame, *, dataset: str, metric: str = PRIMARY,
               model: str | None = None, controlled: bool = True):
    """Two panels for one dataset. With untrained-embedding rows (issue 15): left, the metric
    vs FID per method (size-controlled by default) with the untrained embedding dashed;
    right, the gain over the untrained embedding (trained minus untrained, paired per seed).
    AUC in the legends, Kendall tau easiest vs hardest in the titles. Older results without
    them: metric vs FID and the deviation-from-mean panel. Written by `bench run` as
    ood_curve.png / .svg."""
    rows = frame[frame["dataset"] == dataset]
    metric = resolve_metric(rows, metric, controlled=controlled)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    trained_rows = rows[rows["model"] != UNTRAINED]
    table = curves(trained_rows, metric=metric, model=model)
    auc = area_under_curve(trained_rows, metric=metric, model=model).set_index("method")["auc"]
    plot_curves(table, dataset=dataset, metric=metric, ax=left)
    plot_untrained(rows, metric=metric, ax=left)
    left.legend(fontsize=7)
    for text in left.get_legend().get_texts():
        text.set_text(text.get_text() + _auc_text(auc, text.get_text()))
    if not has_untrained(rows):
        points, fits = deviations(trained_rows, metric=metric, model=model)
        plot_deviations(points, fits, dataset=dataset, ax=right)
        left.set_title(f"{dataset}: {describe_metric(metric)}", fontsize=9)
        return figure
    tau = easiest_vs_hardest(trained_rows, metric=metric, model=model)["kendall_tau"].iloc[0]
    left.set_title(f"{dataset}: {describe_metric(metric)}\nKendall tau easiest vs hardest "
                   f"{tau:+.2f}", fontsize=9)
    gain = gain_rows(rows, metric=metric, model=model)
    gain_table = curves(gain, metric=metric, model=GAIN)
    gain_auc = area_under_curve(gain, metric=metric, model=GAIN).set_index("method")["auc"]
    plot_curves(gain_table, dataset=dataset, metric=metric, ax=right)
    for text in right.get_legend().get_texts():
        text.set_text(text.get_text() + _auc_text(gain_auc, text.get_text()))
    right.axhline(0, color="0.3", lw=0.8)
    gain_tau = easiest_vs_hardest(gain, metric=metric, model=GAIN)["kendall_tau"].iloc[0]
    right.set_ylabel(f"gain over untrained: {metric}")
    right.set_title(f"{dataset}: gain = trained - untrained (paired per seed)\nKendall tau "
                    f"easiest vs hardest {gain_tau:+.2f}", fontsize=9)
    return figure


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ood_summary_lines(frame: pd.DataFrame, *, dataset: str, metric: str = PRIMARY,
                      method_order: list[str] | None = None) -> list[str]:
    """Markdown for a summary: the size-controlled and uncontrolled metric per split, the
    untrained embedding and the gain, AUC and Kendall tau (easiest vs hardest) of both views,
    and Spearman rho of the size-controlled metric vs FID per method."""
    rows = frame[(frame["dataset"] == dataset) & frame["fid"].notna()]
    if rows.empty or metric not in set(rows["metric"]):
        return []
    chosen = resolve_metric(rows, metric)
    trained = rows[rows["model"] != UNTRAINED]
    views = [("trained", trained, chosen, None)]
    if has_untrained(rows):
        views += [("untrained embedding", rows, chosen, UNTRAINED),
                  ("gain = trained - untrained", gain_rows(rows, metric=chosen), chosen, GAIN)]
    splits = (rows.groupby("split")["fid"].first().sort_values())
    order = method_order or list(dict.fromkeys(rows["method"]))
    lines = []
    sizes = ""
    if "test_classes" in rows.columns and rows["test_classes"].notna().any():
        per = rows.groupby("split")["test_classes"].first()
        size = int(rows["controlled_classes"].dropna().iloc[0])
        sizes = (" Test classes per split: " + ", ".join(
            f"{s} {int(per[s])}" for s in splits.index) + f"; size-controlled on {size}.")
    header = ["method", *(f"{s} (FID {f:.1f})" for s, f in splits.items()), "AUC", "rho [95 %]"]
    for title, view, name, model in views:
        table = curves(view, metric=name, model=model)
        means = table.pivot_table(index="method", columns="split", values="mean")
        auc = area_under_curve(view, metric=name, model=model).set_index("method")["auc"]
        trend = spearman_trend(view, metric=name, model=model).set_index("method")
        tau = easiest_vs_hardest(view, metric=name, model=model)["kendall_tau"].iloc[0]
        lines += ["", f"### {dataset}: {title}: {describe_metric(name)} along the FID "
                  f"sequence (mean over seeds; Kendall tau easiest vs hardest "
                  f"{_fmt(tau, 2)})" + (sizes if model is None else ""), "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in order:
            if method not in means.index:
                continue
            t = trend.loc[method] if method in trend.index else None
            rho = ("n/a" if t is None else
                   f"{_fmt(t['rho'], 2)} [{_fmt(t['low'], 2)}, {_fmt(t['high'], 2)}]")
            cells = [f"{means.loc[method, s]:.4f}" if s in means.columns
                     and not math.isnan(means.loc[method, s]) else "-" for s in splits.index]
            lines.append("| " + " | ".join([method, *cells, _fmt(auc.get(method, math.nan)),
                                            rho]) + " |")
    if chosen != metric:
        spread = rows[(rows["metric"] == spread_name(metric)) & (rows["model"] != UNTRAINED)]
        uncontrolled = curves(trained, metric=metric).pivot_table(
            index="method", columns="split", values="mean")
        lines += ["", f"### {dataset}: {describe_metric(metric)} (for comparison), and the "
                  "spread over class subsets", "",
                  "| " + " | ".join(header[:-2]) + " |", "|" + "---|" * (len(header) - 2)]
        sd = spread.groupby(["method", "split"])["value"].mean()
        for method in order:
            if method not in uncontrolled.index:
                continue
            cells = [f"{uncontrolled.loc[method, s]:.4f} (subset sd "
                     f"{sd.get((method, s), math.nan):.4f})" if s in uncontrolled.columns
                     else "-" for s in splits.index]
            lines.append("| " + " | ".join([method, *cells]) + " |")
    lines += ["", "rho: Spearman rank correlation of the mean metric with FID over the "
              "splits (negative = decays as the shift grows), 95 % percentile interval from "
              f"{BOOTSTRAP} seeded bootstrap resamples of whole reproduction seeds. AUC: area "
              "under the metric-vs-FID curve divided by the FID range."]
    return lines
