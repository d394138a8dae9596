"""``bench report``: one self-contained HTML page (and a Markdown twin) from results directories.

The page holds, per protocol and dataset: the provenance of the numbers, the comparison table on
the default split (mean ± 95 % t-interval, rank, compact letters from Holm-corrected paired
tests) with a means plot and a p-value map; for FID split sequences, the metric-vs-FID curves,
the deviation-from-mean panel, area under the curve and Kendall tau of the rankings; and the
verdicts of the claims that apply. Figures are PNGs embedded as base64 ``data:`` URIs, styles
are inline: the HTML file can be mailed or archived alone. The Markdown file references the same
PNGs written to ``report_figures/`` beside it (Markdown viewers rarely show ``data:`` images).
LaTeX and CSV versions of the tables go to ``tables/``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.analysis import audit as audit_mod
from bench.analysis import ood, tables
from bench.analysis.load import default_split, load_results
from bench.analysis.numbers import format_number, format_p
from bench.errors import BenchError

PROVENANCE = ["setting", "k", "query_reference", "folds", "backbone", "weights", "device",
              "protocol_sha256", "search_seed", "bench", "torch", "pml", "optuna", "python",
              "plugins"]
CLAIMS_DIR = Path("protocols/claims")


@dataclass
class Page:
    """Blocks of the report, each rendered to both HTML and Markdown."""

    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, level: int, text: str) -> None:
        slug = _slug(text)
        self.html.append(f'<h{level} id="{slug}">{html.escape(text)}</h{level}>')
        self.md.append(f"{'#' * level} {text}\n")

    def paragraph(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def table(self, frame: pd.DataFrame, *, classes: dict[str, dict[str, str]] | None = None,
              caption: str | None = None) -> None:
        """``classes``: column -> cell text -> CSS class (verdict badges)."""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        body = []
        for row in frame.itertuples(index=False):
            cells = []
            for column, value in zip(frame.columns, row, strict=True):
                css = " ".join(filter(None, [f"col-{_slug(str(column))}",
                                             (classes or {}).get(column, {}).get(str(value))]))
                attr = f' class="{css}"'
                cells.append(f"<td{attr}>{html.escape(_fmt(value))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.html.append(f'<table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
                         f"</tbody></table>")
        lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
                 "|" + "---|" * len(frame.columns)]
        for row in frame.itertuples(index=False):
            lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
        self.md.append(("" if not caption else caption + "\n\n") + "\n".join(lines) + "\n")

    def figure(self, figure, name: str, alt: str) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        data = buffer.getvalue()
        name = _unique(name, self.figures)
        self.figures[name] = data
        encoded = base64.b64encode(data).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{encoded}" '
                         f'alt="{html.escape(alt)}" data-figure="{name}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        self.md.append(f"![{alt}](report_figures/{name}.png)\n")

    def render_html(self) -> str:
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
                f"<body><main>\n" + "\n".join(self.html) + "\n</main></body></html>\n")

    def render_markdown(self) -> str:
        return "\n".join(self.md)


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
background:#fafafa}main{max-width:1180px;margin:0 auto;padding:1.5rem 2rem;background:#fff}
h1{font-size:1.6rem;border-bottom:2px solid #444}h2{font-size:1.3rem;margin-top:2rem;
border-bottom:1px solid #ccc}h3{font-size:1.1rem}table{border-collapse:collapse;margin:.8rem 0;
font-size:.85rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f0f0f0}caption{caption-side:bottom;text-align:left;
font-size:.8rem;color:#555;padding-top:.3rem}figure{margin:1rem 0}figure img{max-width:100%;
border:1px solid #eee}figcaption{font-size:.8rem;color:#555}.holds{background:#d8f3dc;
font-weight:600}.fails{background:#ffd6d6;font-weight:600}.inconclusive{background:#fff3bf;
font-weight:600}p{line-height:1.45}.col-reason,.col-quantity{min-width:16rem}
.col-source{min-width:12rem}
"""
VERDICT_CLASS = {audit_mod.HOLDS: "holds", audit_mod.FAILS: "fails",
                 audit_mod.INCONCLUSIVE: "inconclusive"}


def build(frame: pd.DataFrame, *, claims=None, metrics: list[str] | None = None,
          test: str = "t", alpha: float = 0.05) -> Page:
    """Assemble the report of a loaded results frame. ``claims``: claims files or folders to
    audit (every claim must match the results); ``None``: the claims under
    ``protocols/claims/`` (if that folder exists here) about the loaded protocols, skipping a
    file that does not match with a note."""
    protocols = list(dict.fromkeys(frame["protocol"]))
    page = Page(title=f"bench report: {', '.join(protocols)}")
    page.heading(1, page.title)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page.paragraph(f"Generated {stamp} from {', '.join(sorted(frame['source'].unique()))}. "
                   f"Every number is a test-set result of a method trained under the protocol's "
                   f"shared settings; intervals are 95 % t-intervals over reproduction seeds.")
    for protocol in protocols:
        _protocol_section(page, frame[frame["protocol"] == protocol], protocol,
                          metrics=metrics, test=test, alpha=alpha)
    _audit_section(page, frame, claims)
    return page


def _protocol_section(page: Page, frame: pd.DataFrame, protocol: str, *, metrics, test,
                      alpha) -> None:
    page.heading(2, f"Protocol {protocol}")
    present = [c for c in PROVENANCE if c in frame.columns]
    prov = {c: ", ".join(map(str, dict.fromkeys(frame[c].dropna()))) for c in present}
    methods = list(dict.fromkeys(frame["method"]))
    seeds = sorted(frame["seed"].unique())
    info = pd.DataFrame([{"field": "datasets", "value": ", ".join(dict.fromkeys(frame["dataset"]))},
                         {"field": "methods", "value": ", ".join(methods)},
                         {"field": "seeds (reproductions)", "value": ", ".join(map(str, seeds))},
                         *({"field": k, "value": v} for k, v in prov.items())])
    page.table(info, caption="Provenance: the settings every number of this protocol shares.")
    for dataset in dict.fromkeys(frame["dataset"]):
        rows = frame[frame["dataset"] == dataset]
        split = default_split(rows)
        plain = rows[rows["split"] == split]
        comparison = tables.compare(plain, metrics=metrics, test=test, alpha=alpha)
        for key in comparison.keys():
            title = comparison.title(key)
            page.heading(3, f"{protocol}: {title}")
            page.table(comparison.wide(key).rename(columns=tables.SHORT),
                       caption=comparison.legend())
            page.figure(tables.plot_means(comparison.summary, key=key),
                        f"{protocol}_{dataset}_means",
                        f"{protocol} / {dataset} / {split}: {comparison.primary} per method, "
                        f"mean and 95 % interval; letters as in the table")
            page.figure(tables.plot_pvalues(comparison.pairs, comparison.summary, key=key,
                                            alpha=alpha),
                        f"{protocol}_{dataset}_pvalues",
                        f"{protocol} / {dataset} / {split}: Holm-adjusted p-values of the "
                        f"pairwise {tables.TEST_NAMES[test]}s on {comparison.primary}")
        _embedding_section(page, plain, protocol, dataset, split, comparison.primary)
        if "fid" in rows.columns and rows["fid"].notna().any() and rows["split"].nunique() > 1:
            _ood_section(page, rows, protocol, dataset, comparison.primary)


def _embedding_section(page: Page, rows: pd.DataFrame, protocol: str, dataset: str, split: str,
                       metric: str) -> None:
    """t-SNE of the saved test embeddings of the top methods (skipped when none were saved)."""
    from bench.analysis.embedding_plot import CLASSES, figure_for

    for source in dict.fromkeys(rows["source"]):
        figure, methods = figure_for(rows[rows["source"] == source], Path(source), dataset,
                                     split, metric)
        if figure is None:
            continue
        page.figure(figure, f"{protocol}_{dataset}_embeddings",
                    f"{protocol} / {dataset} / {split}: test embeddings of the top "
                    f"{len(methods)} methods by {metric} ({', '.join(methods)}; lowest seed, "
                    f"fold models concatenated), t-SNE to 2-D, {CLASSES} test classes spread "
                    f"over the class list, coloured by class")


def _ood_section(page: Page, rows: pd.DataFrame, protocol: str, dataset: str,
                 metric: str) -> None:
    page.heading(3, f"{protocol}: {dataset} across the FID split sequence")
    chosen = ood.resolve_metric(rows, metric)  # size-controlled when recorded
    trained = rows[rows["model"] != ood.UNTRAINED]
    view = ood.describe_metric(chosen)
    if chosen != metric or ood.has_untrained(rows):
        page.paragraph(f"Curves show {view}. Size control: every split is also scored on "
                       f"seeded subsets of its test classes, each as large as the smallest test "
                       f"set of the sequence, so MAP@R at one FID is comparable with another "
                       f"(removal splits shrink the test set, and fewer classes raise MAP@R). "
                       f"The untrained embedding is the same network before training; the gain "
                       f"is trained minus untrained, paired per seed.")
    page.figure(ood.ood_figure(rows, dataset=dataset, metric=metric),
                f"{protocol}_{dataset}_fid_curves",
                f"{dataset}: {view} vs FID per method (mean over seeds, 95 % band)"
                + ("; right: gain over the untrained embedding" if ood.has_untrained(rows)
                   else "; right: deviation from the across-method mean"))
    points, fits = ood.deviations(trained, metric=chosen)
    page.figure(ood.plot_deviations(points, fits, dataset=dataset),
                f"{protocol}_{dataset}_fid_deviation",
                f"{dataset}: deviation from the across-method mean vs FID ({view}), with "
                f"linear fits")
    views = [("trained", trained, None)]
    if ood.has_untrained(rows):
        views += [("untrained embedding", rows, ood.UNTRAINED),
                  ("gain over untrained", ood.gain_rows(rows, metric=chosen), ood.GAIN)]
    for title, frame, model in views:
        auc = ood.area_under_curve(frame, metric=chosen, model=model)
        trend = ood.spearman_trend(frame, metric=chosen, model=model)
        table = auc.merge(trend[["dataset", "method", "rho", "low", "high"]]
                          .rename(columns={"low": "rho_low", "high": "rho_high"}),
                          on=["dataset", "method"], how="left")
        tau = ood.easiest_vs_hardest(frame, metric=chosen, model=model)["kendall_tau"].iloc[0]
        page.table(table[["rank", "method", "n", "auc", "half_width", "rho", "rho_low",
                          "rho_high"]],
                   caption=f"{title}, {view}: area under the curve divided by the FID range "
                           f"(mean ± half-width over seeds); Spearman rho of the mean vs FID "
                           f"with a 95 % seed-bootstrap interval (negative = decays). Kendall "
                           f"tau of the rankings, easiest vs hardest split: "
                           f"{'n/a' if math.isnan(tau) else f'{tau:+.2f}'}.")
    changes = ood.rank_changes(trained, metric=chosen)
    page.table(changes[["split", "fid", "is_default", "is_hardest", "kendall_tau", "p", "best"]],
               caption="Kendall tau between the default split's ranking of the methods and each "
                       "split's (1 = same order); p: scipy's test of no association.")
    page.figure(ood.plot_rank_changes(changes, dataset=dataset),
                f"{protocol}_{dataset}_rank_changes",
                f"{dataset}: Kendall tau vs FID (label: the best method on that split)")


def _audit_section(page: Page, frame: pd.DataFrame, claims) -> None:
    notes: list[str] = []
    if claims is not None and not claims:
        return
    if claims is None:
        if not CLAIMS_DIR.is_dir():
            return
        verdicts = []
        protocols = set(frame["protocol"])
        for path in audit_mod.claims_paths(CLAIMS_DIR):
            try:
                verdicts += audit_mod.audit_files([path], frame, only_protocols=protocols)
            except BenchError as error:
                notes.append(f"not audited: {error}")
        if not verdicts and not notes:
            return
    else:
        verdicts = audit_mod.audit_files(claims, frame)
    page.heading(2, "Claim audits")
    page.paragraph("Each claim is checked against the 95 % interval of the quantity it is about: "
                   "holds = interval inside the claimed region, does not hold = interval "
                   "outside it, inconclusive = interval across its edge (more seeds needed). "
                   + audit_mod.method_note(verdicts) + " "
                   + audit_mod.summary_line(verdicts) + ".")
    if verdicts:
        shown = audit_mod.verdicts_frame(verdicts)
        shown["interval"] = [f"[{format_number(lo)}, {format_number(hi)}]"
                             for lo, hi in zip(shown["low"], shown["high"], strict=True)]
        shown["p"] = shown["p_value"].map(format_p)
        shown["source"] = shown["paper"] + "; " + shown["table"]
        shown["p (Holm)"] = shown["p_holm"].map(format_p)
        shown = shown[["id", "verdict", "quantity", "estimate", "interval", "claimed",
                       "effect_size", "p", "p (Holm)", "n", "reason", "source"]]
        page.table(shown, classes={"verdict": VERDICT_CLASS})
        page.figure(audit_mod.plot_verdicts(verdicts), "claims",
                    "Each claim's measured 95 % interval (coloured by verdict) against the "
                    "claimed region (shaded)")
    for note in notes:
        page.paragraph(note)


def write(page: Page, out: str | Path) -> tuple[Path, Path]:
    """``out/report.html`` and ``out/report.md`` (+ ``out/report_figures/*.png``)."""
    out = Path(out)
    figures = out / "report_figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name, data in page.figures.items():
        (figures / f"{name}.png").write_bytes(data)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(page.render_html(), encoding="utf-8")
    md_path.write_text(page.render_markdown(), encoding="utf-8")
    return html_path, md_path


def report(paths, *, out: str | Path | None = None, claims=None, allow_mixed: bool = False,
           metrics: list[str] | None = None, test: str = "t", alpha: float = 0.05
           ) -> list[Path]:
    """Build and write the report; also the comparison tables as Markdown, LaTeX and CSV under
    ``out/tables/``. Returns the written paths (HTML first)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = Path(out) if out is not None else _default_out(paths)
    frame = load_results(paths, allow_mixed=allow_mixed)
    page = build(frame, claims=claims, metrics=metrics, test=test, alpha=alpha)
    written = list(write(page, out))
    for protocol, rows in frame.groupby("protocol", sort=False):
        plain = pd.concat([sub[sub["split"] == default_split(sub)]
                           for _, sub in rows.groupby("dataset", sort=False)])
        comparison = tables.compare(plain, metrics=metrics, test=test, alpha=alpha)
        written += comparison.write(out / "tables", stem=f"{protocol}_comparison")
    return written


def _default_out(paths: list) -> Path:
    first = Path(paths[0])
    return first.parent if first.is_file() else first


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _unique(name: str, taken: dict) -> str:
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate
