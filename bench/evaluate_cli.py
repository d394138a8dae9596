"""``bench evaluate RESULTS_DIR``: the test tables again, from the saved embeddings alone.

No model is built and nothing trains (this module imports neither bench.train nor
bench.experiment): each run file's ``seed<N>.embeddings.npz`` is re-scored with the same
evaluators, so a new metric or a new Recall@k costs seconds, not a retraining. Writes
``evaluation.csv`` (tidy rows, provenance copied from the run, the original value beside each
recomputed one) and ``evaluation.md`` into RESULTS_DIR; results.csv, summary.md and the run
files are never touched. A missing or corrupt embeddings file is one line naming it (exit 2);
every other run is still evaluated and written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench import embeddings
from bench.atomic import write_text
from bench.errors import BenchError
from bench.evaluate.metric_table import DML_METRICS, REID_METRICS
from bench.results import read_json, summary_table, write_table

HELP = __doc__.split("\n\n", 1)[1]


def evaluate_dir(results_dir: Path, *, metrics: list[str] | None = None,
                 extra_ks: list[int] | None = None) -> tuple[list[dict], list[str], list[str]]:
    """(rows, error lines, notes) for every run under ``results_dir/runs``."""
    runs = results_dir / "runs"
    if not runs.is_dir():
        raise BenchError("holds no runs/ folder (run `bench run` first)", source=str(results_dir))
    extra = tuple(sorted(set(extra_ks or [])))
    if any(k < 1 for k in extra):
        raise BenchError("must be positive integers", field="--recall-k")
    rows, errors, notes = [], [], []
    for run_file in sorted(p for p in runs.glob("**/*.json")):
        record = read_json(run_file)
        if record is None or not record.get("rows"):
            errors.append(f"{run_file}: unreadable run file or no rows; skipped")
            continue
        try:
            saved = embeddings.load(embeddings.path_for(run_file))
        except BenchError as error:
            errors.append(str(error))
            continue
        if saved.meta.get("score_fn"):
            notes.append(f"{run_file}: the method ranks with its own score function, which "
                         f"needs its model: not re-scored from embeddings")
            continue
        values = embeddings.evaluate(saved, recall_ks=tuple(sorted({1, 2, 4, 8, *extra})),
                                     ranks=tuple(sorted({1, 5, 10, *extra})))
        original = {(r["model"], r["metric"]): r["value"] for r in record["rows"]}
        template = {k: v for k, v in record["rows"][0].items()
                    if k not in ("model", "metric", "value")}
        for model, scores in values.items():
            for metric, value in scores.items():
                if metrics and metric not in metrics:
                    continue
                rows.append({**template, "model": model, "metric": metric, "value": value,
                             "original_value": original.get((model, metric), float("nan")),
                             "tolerance": embeddings.tolerance(metric, len(saved.query_labels)),
                             "embeddings": str(saved.path.relative_to(results_dir)),
                             "embeddings_dtype": saved.meta.get("dtype")})
    return rows, errors, notes


def check_metrics(names: list[str] | None, extra_ks: list[int] | None) -> list[str] | None:
    if not names:
        return None
    known = {*DML_METRICS, *REID_METRICS, *(f"recall_at_{k}" for k in extra_ks or []),
             *(f"cmc_{k}" for k in extra_ks or [])}
    for name in names:
        if name not in known:
            raise BenchError(f"unknown metric {name!r} (known: {', '.join(sorted(known))}; "
                             f"add --recall-k K for recall_at_K / cmc_K)", field="--metrics")
    return names


def markdown(frame: pd.DataFrame, results_dir: Path, difference: float, compared: int) -> str:
    lines = [f"# Re-evaluation of {results_dir} from saved embeddings", "",
             f"No training: every number below is recomputed from the saved test embeddings "
             f"(`runs/**/seed*.embeddings.npz`). Largest |difference| from the run's own values "
             f"(results.csv) over {compared} shared numbers: {difference:.2e}. Tolerance: ranking "
             f"metrics max({embeddings.TOLERANCE:g}, {embeddings.FLIPS} / number of queries) "
             f"(float16 rounding can only swap nearly tied neighbours), NMI "
             f"{embeddings.NMI_TOLERANCE:g} (k-means on rounded inputs); per row in "
             f"evaluation.csv.", ""]
    metrics = list(dict.fromkeys(frame["metric"]))
    for (dataset, split), sub in frame.groupby(["dataset", "split"], sort=False):
        headline = "concatenated" if (sub["model"] == "concatenated").any() else "separate"
        lines += [f"## {dataset}, split {split}: {headline}", ""]
        lines += summary_table(sub, model=headline, metrics=metrics,
                               method_order=list(dict.fromkeys(sub["method"])), failures={},
                               params={})
        lines.append("")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    results_dir = Path(args.results)
    metrics = check_metrics(args.metrics, args.recall_k)
    rows, errors, notes = evaluate_dir(results_dir, metrics=metrics, extra_ks=args.recall_k)
    for line in errors:
        print(f"bench: error: {line}", file=sys.stderr)
    for line in notes:
        print(f"bench: note: {line}", file=sys.stderr)
    if not rows:
        if not errors:
            print(f"bench: nothing to re-evaluate under {results_dir}/runs", file=sys.stderr)
        return 2 if errors else 0
    frame = pd.DataFrame(rows)
    shared = frame["original_value"].notna()
    gap = (frame["value"] - frame["original_value"]).abs()
    difference = float(gap[shared].max()) if shared.any() else 0.0
    beyond = frame[shared & (gap > frame["tolerance"])]
    write_table(results_dir / "evaluation.csv", rows)
    text = markdown(frame, results_dir, difference, int(shared.sum()))
    write_text(results_dir / "evaluation.md", text)
    print(text)
    print(f"wrote {results_dir / 'evaluation.csv'} and evaluation.md ({len(rows)} rows)")
    if len(beyond):
        first = beyond.iloc[0]
        print(f"bench: warning: {len(beyond)} recomputed value(s) differ from results.csv "
              f"beyond tolerance, e.g. {first['method']} {first['model']} {first['metric']}: "
              f"{first['value']:.6f} vs {first['original_value']:.6f}", file=sys.stderr)
        return 1
    return 2 if errors else 0


def add_evaluate_parser(subparsers) -> None:
    ev = subparsers.add_parser("evaluate", help="recompute test tables from saved embeddings",
                               description=HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("results", metavar="RESULTS_DIR", help="e.g. results/quick")
    ev.add_argument("--metrics", nargs="+", metavar="NAME",
                    help="only these metrics (default: all the run reported, plus new ks)")
    ev.add_argument("--recall-k", nargs="+", type=int, metavar="K",
                    help="also compute Recall@K (re-ID: CMC@K), e.g. --recall-k 16 32")
    ev.set_defaults(func=cmd_evaluate)
