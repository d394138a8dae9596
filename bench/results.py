"""Results files: a tidy table and a human summary, written atomically after every run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

ID_COLUMNS = ["protocol", "dataset", "split", "method", "seed", "metric", "value"]


def write_text_atomically(path: Path, text: str) -> None:
    """Write via a temp file + rename so a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_table(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    ordered = ID_COLUMNS + [c for c in frame.columns if c not in ID_COLUMNS]
    write_text_atomically(path, frame[ordered].to_csv(index=False))


def summary_markdown(rows: list[dict], *, title: str, header_lines: list[str],
                     metrics: list[str], failures: dict[str, str], method_order: list[str]) -> str:
    """One row per method: the mean over seeds of each metric (and the number of seeds)."""
    lines = [f"# {title}", "", *header_lines, ""]
    columns = ["method", "seeds", *metrics]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    frame = pd.DataFrame(rows)
    for method in method_order:
        if method in failures:
            cells = [method, "0", *(["failed"] * len(metrics))]
        else:
            sub = frame[frame["method"] == method] if len(frame) else frame
            if sub.empty:
                continue
            means = sub.groupby("metric")["value"].mean()
            cells = [method, str(sub["seed"].nunique()),
                     *(f"{means[m]:.4f}" if m in means else "-" for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {method}: {reason}" for method, reason in failures.items()]
    return "\n".join(lines) + "\n"
