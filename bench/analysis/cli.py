"""``bench audit`` and ``bench report``: registered on the main parser by
:func:`add_analysis_parsers` (one line in :func:`bench.cli.build_parser`)."""

from __future__ import annotations

import argparse
from pathlib import Path

AUDIT_HELP = """\
Check published claims against results measured under fair settings. Each claim gets a verdict:
holds (the 95 % interval of the measured quantity lies inside the claimed region), does not hold
(it lies outside), or inconclusive (it straddles the edge, or fewer than 3 paired
reproductions: more needed), with the interval, effect size, p-value (also Holm-adjusted across
the claims of each file; "holds" needs the adjusted p < 0.025) and a one-line reason. Exit 0 (1 with --strict when a claim does
not hold); 2 for a bad claims file, naming the file and field.
"""
REPORT_HELP = """\
Write one self-contained HTML page (figures embedded) and a Markdown twin from results
directories: comparison tables with 95 % t-intervals, ranks and Holm-corrected paired tests,
FID-sequence curves when present, and claim audits. Also writes the tables as Markdown, LaTeX
and CSV under OUT/tables/.
"""


def cmd_audit(args: argparse.Namespace) -> int:
    from bench.analysis import audit
    from bench.analysis.load import load_results

    paths = audit.claims_paths(args.claims)
    loaded = [(str(p), audit.load_claims(p)) for p in paths]  # validate before reading results
    frame = load_results(args.results, allow_mixed=args.allow_mixed)
    verdicts = []
    for source, claims in loaded:
        verdicts += audit.audit(claims, frame, source=source)
    print(audit.method_note(verdicts))
    for verdict in verdicts:
        print(verdict.line())
    print(audit.summary_line(verdicts))
    if args.markdown:
        Path(args.markdown).write_text(audit.verdicts_markdown(verdicts), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(audit.verdicts_json(verdicts), encoding="utf-8")
    failed = any(v.verdict == audit.FAILS for v in verdicts)
    return 1 if args.strict and failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.analysis.report import report

    claims = [] if args.no_claims else (args.claims or None)
    written = report(args.results, out=args.out, claims=claims, allow_mixed=args.allow_mixed,
                     metrics=args.metric or None, test=args.test, alpha=args.alpha)
    print(f"wrote {written[0]} (self-contained), {written[1]} and {len(written) - 2} table "
          f"file(s) under {written[0].parent / 'tables'}")
    return 0


def add_analysis_parsers(subparsers) -> None:
    """Add ``audit`` and ``report`` to the ``bench`` sub-command parsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    audit = subparsers.add_parser("audit", help="check published claims against results",
                                  description=AUDIT_HELP, formatter_class=formatter)
    audit.add_argument("claims", nargs="+", metavar="CLAIMS",
                       help="claims YAML file(s) or folder(s), e.g. protocols/claims/")
    audit.add_argument("--results", action="append", required=True, metavar="DIR",
                       help="results directory, e.g. results/quick (repeatable)")
    audit.add_argument("--allow-mixed", action="store_true",
                       help="pool results whose evaluation settings (k, folds, ...) differ")
    audit.add_argument("--markdown", metavar="PATH", help="also write the verdicts as Markdown")
    audit.add_argument("--json", metavar="PATH", help="also write the verdicts as JSON")
    audit.add_argument("--strict", action="store_true",
                       help="exit 1 when any claim does not hold")
    audit.set_defaults(func=cmd_audit)

    rep = subparsers.add_parser("report", help="write an HTML + Markdown report of results",
                                description=REPORT_HELP, formatter_class=formatter)
    rep.add_argument("results", nargs="+", metavar="DIR",
                     help="results directory (results/quick) or root (results/)")
    rep.add_argument("--out", metavar="DIR",
                     help="output folder (default: the first DIR): report.html, report.md, "
                     "report_figures/, tables/")
    rep.add_argument("--claims", action="append", metavar="PATH",
                     help="claims file or folder to audit (repeatable; default: the claims "
                     "under protocols/claims/ about the loaded protocols)")
    rep.add_argument("--no-claims", action="store_true", help="leave claim audits out")
    rep.add_argument("--metric", action="append", metavar="NAME",
                     help="metric column(s) of the tables, first = rank and plots (default: "
                     "MAP@R, P@1, R-Precision, NMI)")
    rep.add_argument("--test", choices=["t", "wilcoxon"], default="t",
                     help="paired test behind the letters (default: t)")
    rep.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default 0.05)")
    rep.add_argument("--allow-mixed", action="store_true",
                     help="pool results whose evaluation settings differ")
    rep.set_defaults(func=cmd_report)
