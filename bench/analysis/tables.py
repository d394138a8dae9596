"""Comparison tables: mean ± 95 % t-interval, ranks and paired significance, per group.

A *group* is one (setting, dataset, split): methods are only compared with methods evaluated on
the same data under the same rules. Within a group and metric:

- each method's value is the mean over reproductions (seeds) with its 95 % t-interval;
- methods are ranked by that mean (1 = best, in the metric table's direction);
- every pair of methods is compared on the seeds both have (paired t-test and Wilcoxon
  signed-rank test on the per-seed differences); the p-values of one group and metric form one
  family and are Holm-corrected; the chosen test's corrected decisions become a compact letter
  display: methods that share a letter are not significantly different. As in ``bench audit``,
  a pair with fewer than ``MIN_PAIRED`` (3) paired units is never marked different.

``model="folds"`` pools the individual fold models: the units are then (seed, fold) pairs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.load import headline_model
from bench.analysis.stats import compact_letters, holm, paired_test, t_interval
from bench.errors import BenchError
from bench.evaluate.metric_table import BY_NAME, DEFAULT_COLUMNS, METRICS, SHORT

#: pairs of methods need this many paired units to be marked different (as bench audit's MIN_N)
MIN_PAIRED = 3
GROUPS = ["setting", "dataset", "split"]
DEFAULT_METRICS = DEFAULT_COLUMNS["retrieval"]
#: uda / dg results (re-ID rules): mAP first, so it is the metric methods are ranked by
REID_DEFAULT_METRICS = DEFAULT_COLUMNS["reid"]
TESTS = {"t": "p_t", "wilcoxon": "p_wilcoxon"}
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def group_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in GROUPS if c in frame.columns]


def select_model(frame: pd.DataFrame, model: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of one model (default: the headline one) with a ``unit`` column to pair on."""
    model = model or headline_model(frame)
    if model == "folds":
        rows = frame[frame["model"].str.fullmatch(r"fold\d+")].copy()
        rows["unit"] = rows["seed"].astype(str) + "/" + rows["model"]
    else:
        rows = frame[frame["model"] == model].copy()
        rows["unit"] = rows["seed"].astype(str)
    if rows.empty:
        raise BenchError(f"no rows for model {model!r} (have {', '.join(frame['model'].unique())})",
                         field="model")
    clash = rows.duplicated([*group_columns(rows), "metric", "method", "unit"], keep=False)
    if clash.any() and "protocol" in rows.columns:
        first = rows[clash].iloc[0]
        protocols = sorted(rows.loc[clash & (rows["method"] == first["method"]),
                                    "protocol"].unique())
        raise BenchError(f"method {first['method']!r} has results from several protocols "
                         f"({', '.join(map(str, protocols))}) for dataset {first['dataset']!r}: "
                         f"compare one protocol at a time", field="protocol")
    return rows, model


def present_metrics(frame: pd.DataFrame, metrics: list[str] | None = None) -> list[str]:
    have = set(frame["metric"].unique())
    if metrics:
        unknown = [m for m in metrics if m not in have]
        if unknown:
            raise BenchError(f"metric {unknown[0]!r} not in the results (have "
                             f"{', '.join(sorted(have))})", field="metric")
        return list(metrics)
    chosen = [m for m in DEFAULT_METRICS if m in have]
    return chosen or [m for m in REID_DEFAULT_METRICS if m in have] or [
        m for m in METRICS if m in have]


def summarize(frame: pd.DataFrame, *, model: str | None = None, metrics: list[str] | None = None,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per group, method and metric: n, mean, t-interval (half_width, low, high), sd,
    rank (1 = best mean within the group and metric)."""
    rows, model = select_model(frame, model)
    metrics = present_metrics(rows, metrics)
    groups = group_columns(rows)
    out = []
    for key, sub in rows[rows["metric"].isin(metrics)].groupby(
            [*groups, "metric", "method"], sort=False):
        values = sub.sort_values("unit")["value"].dropna().to_numpy()
        mean, half = t_interval(values, confidence)
        out.append({**dict(zip([*groups, "metric", "method"], key, strict=True)), "model": model,
                    "n": len(values), "mean": mean, "half_width": half,
                    "low": mean - half, "high": mean + half,
                    "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan})
    summary = pd.DataFrame(out)
    # the table's direction: a lower-is-better metric ranks its smallest mean first
    better = summary["mean"] * summary["metric"].map(
        lambda m: 1 if m not in BY_NAME or BY_NAME[m].higher_is_better else -1)
    summary["rank"] = (better.groupby([summary[c] for c in [*groups, "metric"]])
                       .rank(ascending=False, method="min", na_option="bottom")
                       .astype(int))  # a NaN mean (no value) ranks last, never first
    order = {m: i for i, m in enumerate(metrics)}
    summary["_order"] = summary["metric"].map(order)
    return (summary.sort_values([*groups, "_order", "rank", "method"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def pairwise(frame: pd.DataFrame, *, model: str | None = None, metrics: list[str] | None = None,
             test: str = "t", alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of methods per group and metric, paired on shared seeds (or seed/fold units).

    Columns: a, b, n, diff (mean of a - b) with its t-interval (low, high), dz (Cohen's d_z),
    p_t, p_wilcoxon, p (the chosen ``test``), p_holm (Holm within the group and metric) and
    significant (p_holm <= alpha).
    """
    if test not in TESTS:
        raise BenchError(f"unknown test {test!r}; use one of {', '.join(TESTS)}", field="test")
    rows, model = select_model(frame, model)
    metrics = present_metrics(rows, metrics)
    groups = group_columns(rows)
    out = []
    for key, sub in rows[rows["metric"].isin(metrics)].groupby([*groups, "metric"], sort=False):
        table = sub.pivot_table(index="unit", columns="method", values="value", aggfunc="mean")
        means = table.mean().sort_values(ascending=False)
        family = []
        for a, b in itertools.combinations(means.index, 2):
            both = table[[a, b]].dropna()
            result = paired_test(both[a].to_numpy(), both[b].to_numpy())
            family.append({**dict(zip([*groups, "metric"], key, strict=True)), "model": model,
                           "a": a, "b": b, **result, "n": int(result["n"])})
        adjusted = holm([r[TESTS[test]] for r in family])
        for record, p_holm in zip(family, adjusted, strict=True):
            # the audit's minimum-reproductions rule: fewer than MIN_PAIRED pairs never separate
            record.update(p=record[TESTS[test]], p_holm=p_holm,
                          significant=bool(not math.isnan(p_holm) and p_holm <= alpha
                                           and record["n"] >= MIN_PAIRED))
        out += family
    columns = [*groups, "metric", "model", "a", "b", "n", "diff", "low", "high", "dz", "p_t",
               "p_wilcoxon", "p", "p_holm", "significant"]
    return pd.DataFrame(out, columns=columns)


def letters(summary: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """Compact letters per summary row (aligned with ``summary``'s index)."""
    groups = [c for c in [*group_columns(summary), "metric"] if c in summary.columns]
    result = pd.Series("", index=summary.index, dtype=object)
    for key, sub in summary.groupby(groups, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mask = np.ones(len(pairs), dtype=bool)
        for column, value in zip(groups, key, strict=True):
            mask &= (pairs[column] == value).to_numpy()
        different = {frozenset((r.a, r.b)) for r in pairs[mask].itertuples() if r.significant}
        order = list(sub.sort_values("mean", ascending=False)["method"])
        found = compact_letters(order, different)
        result.loc[sub.index] = sub["method"].map(found)
    return result


@dataclass
class Comparison:
    """The tables of one comparison; render with :meth:`markdown`, :meth:`latex`, :meth:`csv`."""

    summary: pd.DataFrame
    pairs: pd.DataFrame
    metrics: list[str]
    model: str
    test: str = "t"
    alpha: float = 0.05
    digits: int = 4
    groups: list[tuple] = field(default_factory=list)

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def legend(self) -> str:
        n = sorted(self.summary["n"].unique())
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        unit = "(seed, fold) units" if self.model == "folds" else "seeds"
        return (f"Model {self.model}. Mean ± 95 % t-interval over {seeds} {unit}; rank by mean "
                f"{SHORT.get(self.primary, self.primary)}. Methods sharing a letter are not "
                f"significantly different ({TEST_NAMES[self.test]} across {unit}, Holm-"
                f"corrected per group and metric, α = {self.alpha:g})."
                + f" A pair with fewer than {MIN_PAIRED} paired {unit} never counts as "
                f"different (one degree of freedom makes tiny chance intervals common)."
                + (" With fewer than 2 seeds no test is possible: every method shares letter a."
                   if n[-1] < 2 else ""))

    def wide(self, key: tuple) -> pd.DataFrame:
        """One group's table: rank, method, n and one formatted cell per metric."""
        sub = self.summary
        for column, value in zip(group_columns(sub), key, strict=True):
            sub = sub[sub[column] == value]
        primary = sub[sub["metric"] == self.primary].set_index("method")
        methods = list(primary.sort_values(["rank", "method"]).index)
        methods += sorted(set(sub["method"]) - set(methods))
        rows = []
        for method in methods:
            cells = {"rank": _int(primary["rank"].get(method)), "method": method,
                     "n": _int(primary["n"].get(method))}
            for metric in self.metrics:
                hit = sub[(sub["method"] == method) & (sub["metric"] == metric)]
                cells[metric] = self._cell(hit.iloc[0]) if len(hit) else "-"
            rows.append(cells)
        return pd.DataFrame(rows)

    def _cell(self, row: pd.Series) -> str:
        d = self.digits
        text = (f"{row['mean']:.{d}f}" if math.isnan(row["half_width"])
                else f"{row['mean']:.{d}f} ± {row['half_width']:.{d}f}")
        return f"{text} {row['letters']}"

    def keys(self) -> list[tuple]:
        columns = group_columns(self.summary)
        return list(dict.fromkeys(map(tuple, self.summary[columns].itertuples(index=False))))

    def title(self, key: tuple) -> str:
        return " / ".join(f"{c} {v}" for c, v in zip(group_columns(self.summary), key, strict=True))

    def markdown(self, heading: str = "###") -> str:
        parts = []
        for key in self.keys():
            table = self.wide(key)
            header = ["rank", "method", "n", *(SHORT.get(m, m) for m in self.metrics)]
            lines = [f"{heading} {self.title(key)}", "",
                     "| " + " | ".join(header) + " |",
                     "|" + "---:|---|---:|" + "---|" * len(self.metrics)]
            for row in table.itertuples(index=False):
                lines.append("| " + " | ".join(str(v) for v in row) + " |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + f"\n\n{self.legend()}\n"

    def latex(self) -> str:
        parts = []
        for key in self.keys():
            table = self.wide(key)
            header = ["", "Method", "$n$", *(_tex(SHORT.get(m, m)) for m in self.metrics)]
            lines = [r"\begin{table}[t]", r"\centering",
                     rf"\caption{{{_tex(self.title(key))}. {_tex(self.legend())}}}",
                     r"\begin{tabular}{rlr" + "c" * len(self.metrics) + "}", r"\toprule",
                     " & ".join(header) + r" \\", r"\midrule"]
            for row in table.to_dict("records"):
                cells = [str(row["rank"]), _tex(row["method"]), str(row["n"])]
                for metric in self.metrics:
                    cells.append(_tex_cell(row[metric]))
                lines.append(" & ".join(cells) + r" \\")
            lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
            parts.append("\n".join(lines))
        return "% requires \\usepackage{booktabs}\n" + "\n\n".join(parts) + "\n"

    def csv(self) -> str:
        return self.summary.to_csv(index=False, float_format="%.6g")

    def write(self, directory: str | Path, stem: str = "comparison") -> list[Path]:
        """``STEM.md``, ``STEM.tex``, ``STEM.csv`` (summary) and ``STEM_pairs.csv``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        outputs = {f"{stem}.md": self.markdown(), f"{stem}.tex": self.latex(),
                   f"{stem}.csv": self.csv(),
                   f"{stem}_pairs.csv": self.pairs.to_csv(index=False, float_format="%.6g")}
        for name, text in outputs.items():
            (directory / name).write_text(text, encoding="utf-8")
        return [directory / name for name in outputs]


def compare(frame: pd.DataFrame, *, model: str | None = None, metrics: list[str] | None = None,
            test: str = "t", alpha: float = 0.05, digits: int = 4) -> Comparison:
    """Summary (with ranks and letters) and pairwise tests for every group of ``frame``."""
    summary = summarize(frame, model=model, metrics=metrics)
    model = summary["model"].iloc[0]
    metrics = list(dict.fromkeys(summary["metric"]))
    pairs = pairwise(frame, model=model, metrics=metrics, test=test, alpha=alpha)
    summary["letters"] = letters(summary, pairs)
    return Comparison(summary=summary, pairs=pairs, metrics=metrics, model=model, test=test,
                      alpha=alpha, digits=digits)


def pvalue_matrix(pairs: pd.DataFrame, order: list[str], column: str = "p_holm") -> pd.DataFrame:
    """Square matrix of one group's and metric's p-values (NaN on the diagonal)."""
    matrix = pd.DataFrame(np.nan, index=order, columns=order)
    for row in pairs.itertuples():
        matrix.loc[row.a, row.b] = matrix.loc[row.b, row.a] = getattr(row, column)
    return matrix


def _int(value: object) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else str(int(value))


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "α": r"$\alpha$", "`": ""}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_cell(cell: str) -> str:
    if cell == "-":
        return "-"
    value, _, letters_ = cell.rpartition(" ")
    value = value.replace(" ± ", r" \pm ")
    return f"${value}$" + (rf"\textsuperscript{{{letters_}}}" if letters_ else "")


# -- figures ---------------------------------------------------------------------------------


def plot_means(summary: pd.DataFrame, *, metric: str | None = None, key: tuple | None = None,
               ax=None):
    """Each method's mean with its 95 % interval as a horizontal error bar, best on top,
    labelled with its compact letters (when ``summary`` has them)."""
    from bench.analysis.figures import axes, method_colors

    metric = metric or summary["metric"].iloc[0]
    sub = summary[summary["metric"] == metric]
    columns = group_columns(sub)
    key = key or tuple(sub[columns].iloc[0])
    for column, value in zip(columns, key, strict=True):
        sub = sub[sub[column] == value]
    sub = sub.sort_values("mean")
    figure, ax = axes(ax, size=(6.4, 0.45 * len(sub) + 1.4))
    colors = method_colors(summary["method"])
    positions = np.arange(len(sub))
    for y, row in zip(positions, sub.itertuples(), strict=True):
        err = None if math.isnan(row.half_width) else row.half_width
        ax.errorbar(row.mean, y, xerr=err, fmt="o", color=colors[row.method], capsize=4)
        label = getattr(row, "letters", "")
        if label:
            ax.annotate(label, (row.mean, y), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
    ax.set_yticks(positions, list(sub["method"]))
    ax.set_ylim(-0.6, len(sub) - 0.3)
    ax.set_xlabel(f"{metric} (mean, 95 % t-interval)")
    title = " / ".join(str(v) for v in key)
    ax.set_title(f"{title}: {SHORT.get(metric, metric)}, model {sub['model'].iloc[0]}")
    ax.grid(axis="x", alpha=0.3)
    return figure


def plot_pvalues(pairs: pd.DataFrame, summary: pd.DataFrame, *, metric: str | None = None,
                 key: tuple | None = None, column: str = "p_holm", alpha: float = 0.05, ax=None):
    """Heat map of one group's pairwise Holm-adjusted p-values (methods ordered best first);
    cells at or below ``alpha`` are outlined."""
    from bench.analysis.figures import axes

    metric = metric or summary["metric"].iloc[0]
    columns = group_columns(summary)
    sub = summary[summary["metric"] == metric]
    key = key or tuple(sub[columns].iloc[0])
    pmask = pairs["metric"] == metric
    for c, value in zip(columns, key, strict=True):
        sub = sub[sub[c] == value]
        pmask &= pairs[c] == value
    order = list(sub.sort_values("mean", ascending=False)["method"])
    matrix = pvalue_matrix(pairs[pmask], order, column)
    size = 1.0 + 0.55 * len(order)
    figure, ax = axes(ax, size=(size + 1.6, size))
    image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis_r")
    for i, j in itertools.product(range(len(order)), repeat=2):
        value = matrix.iat[i, j]
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value < 0.5 else "white",
                    fontweight="bold" if value <= alpha else "normal")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_title(f"{SHORT.get(metric, metric)}: Holm-adjusted p (bold: <= {alpha:g})", fontsize=9)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure
