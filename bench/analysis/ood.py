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

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (no GUI backend), or
drawn into a given ``ax``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from bench.analysis.load import default_split
from bench.analysis.stats import t_interval
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


def method_colors(methods) -> dict[str, tuple]:
    """One stable colour per method (sorted names over matplotlib's tab10/tab20)."""
    from matplotlib import colormaps

    names = sorted(set(methods))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _axes(ax, size=(6.4, 4.0)):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


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


def ood_figure(frame: pd.DataFrame, *, dataset: str, metric: str = PRIMARY,
               model: str | None = None):
    """Two panels for one dataset: metric vs FID per method (95 % bands, default split marked,
    area under the curve in the legend) and each method's deviation from the across-method
    mean with its linear fit. Written by `bench run` as ood_curve.png / .svg."""
    rows = frame[frame["dataset"] == dataset]
    table = curves(rows, metric=metric, model=model)
    auc = area_under_curve(rows, metric=metric, model=model).set_index("method")["auc"]
    points, fits = deviations(rows, metric=metric, model=model)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    plot_curves(table, dataset=dataset, metric=metric, ax=left)
    for text in left.get_legend().get_texts():
        name = text.get_text()
        if name in auc.index and not math.isnan(auc[name]):
            text.set_text(f"{name} (AUC {auc[name]:.3f})")
    plot_deviations(points, fits, dataset=dataset, ax=right)
    return figure
