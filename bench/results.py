"""Results files: per-run JSON records, the tidy table rebuilt from them, and the summary.

Each finished reproduction is written atomically as its own JSON file, from the storage, so a
killed run loses nothing already finished. ``results.csv`` and ``summary.md`` are built from the
storage's results (``bench.results_source``), never from the run files: a stray or edited run
file cannot change a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.analysis.stats import format_interval
from bench.atomic import write_text

ID_COLUMNS = ["protocol", "dataset", "split", "method", "seed", "model", "metric", "value"]




def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_table(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    ordered = ID_COLUMNS + [c for c in frame.columns if c not in ID_COLUMNS]
    frame = frame[ordered].sort_values(["dataset", "split", "method", "seed", "model",
                                        "metric"], kind="stable")
    write_text(path, frame.to_csv(index=False))


def summary_table(frame: pd.DataFrame, *, model: str, metrics: list[str],
                  method_order: list[str], failures: dict[str, str],
                  params: dict[str, dict], data: dict[str, str] | None = None) -> list[str]:
    """Markdown rows: method, reproductions, mean ± 95 % t-interval per metric, parameters,
    and (given ``data``) the data each method received in the setting."""
    columns = ["method", "n", *metrics, "hyperparameters", *(["data used"] if data else [])]
    extra = (lambda method: [data.get(method, "-")]) if data else (lambda method: [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for method in method_order:
        sub = frame[(frame["method"] == method) & (frame["model"] == model)]
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in params.get(method, {}).items()) or "-"
        if method in failures and sub.empty:
            lines.append("| " + " | ".join([method, "0", *(["failed"] * len(metrics)), chosen,
                                            *extra(method)]) + " |")
            continue
        if sub.empty:
            continue
        cells = [method, str(sub["seed"].nunique())]
        for metric in metrics:
            values = sub[sub["metric"] == metric].sort_values("seed")["value"].tolist()
            cells.append(format_interval(values) if values else "-")
        lines.append("| " + " | ".join([*cells, chosen, *extra(method)]) + " |")
    return lines


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sequence_table(frame: pd.DataFrame, splits, *, model: str, metric: str,
                   method_order: list[str]) -> list[str]:
    """Markdown rows: one per method, one column per split of the sequence (FID in the header)."""
    header = ["method", *(f"{s.id}{'*' if s.is_default else ''} (FID {s.fid:.1f})"
                          for s in splits)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = frame[(frame["model"] == model) & (frame["metric"] == metric)] if len(frame) else frame
    for method in method_order:
        sub = rows[rows["method"] == method] if len(rows) else rows
        if sub.empty:
            continue
        means = sub.groupby("split")["value"].mean()
        lines.append("| " + " | ".join([method, *(f"{means[s.id]:.4f}" if s.id in means
                                                  else "-" for s in splits)]) + " |")
    return lines
