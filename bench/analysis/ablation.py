"""A method against its own ablation, paired by seed; the pseudo-label audit per epoch.

Why: "method X beats baseline Y" across different losses says little about whether X's
adaptation mechanism works; X minus X-without-its-target-term, seed by seed, does. Both tables
are read from what the runner recorded (results rows, run files); no torch here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.stats import paired_test
from bench.keys import JobKey

AUDIT_COLUMNS = ("clusters", "outliers", "purity", "nmi", "ari")


def ablation_table(frame: pd.DataFrame, pairs: dict[str, str], *, model: str,
                   metrics: list[str]) -> list[str]:
    """Markdown rows: for each (ablation -> method) pair, the paired difference method minus
    ablation per metric, mean ± 95 % t-interval over the seeds both completed."""
    lines = ["| method | ablation | n seeds | " + " | ".join(f"Δ {m}" for m in metrics)
             + " | per seed (" + metrics[-1] + ") |",
             "|---|---|---|" + "---|" * len(metrics) + "---|"]
    sub = frame[frame["model"] == model] if len(frame) else frame
    for ablation, method in pairs.items():
        cells = []
        seeds_used: list[int] = []
        per_seed = ""
        for metric in metrics:
            values = sub[sub["metric"] == metric].pivot_table(
                index="seed", columns="method", values="value", aggfunc="mean") \
                if len(sub) else pd.DataFrame()
            if method not in values or ablation not in values:
                cells.append("—")
                continue
            both = values[[method, ablation]].dropna()
            seeds_used = both.index.tolist()
            test = paired_test(both[method], both[ablation])
            half = test["high"] - test["diff"]
            cells.append(f"{test['diff']:+.4f}" if math.isnan(half)
                         else f"{test['diff']:+.4f} ± {half:.4f}")
            per_seed = ", ".join(f"{int(s)}: {d:+.4f}"
                                 for s, d in (both[method] - both[ablation]).items())
        lines.append(f"| {method} | {ablation} | {len(seeds_used)} | " + " | ".join(cells)
                     + f" | {per_seed} |")
    return lines


def read_pseudo_labels(runs: Path, dataset: str, method: str) -> pd.DataFrame:
    """The ``pseudo_labels`` entries of every run file of ``method`` (one row per seed and
    epoch)."""
    rows = []
    for path in sorted((runs / dataset / method).glob("*/seed*.json")):
        record = json.loads(path.read_text())
        seed = JobKey.seed_of(path.name)
        rows += [{"seed": seed, **entry} for entry in record.get("pseudo_labels", [])]
    return pd.DataFrame(rows)


def pseudo_label_table(runs: Path, dataset: str, methods: list[str],
                       read=read_pseudo_labels) -> list[str]:
    """Markdown rows: per method and epoch, clusters / outliers / purity / NMI / ARI of its
    target pseudo-labels against the hidden target identities, mean over seeds. ``read``:
    where the entries come from (the runner passes the storage's results)."""
    lines = []
    for method in methods:
        table = read(runs, dataset, method)
        if table.empty:
            continue
        if not lines:
            lines = ["| method | epoch | seeds | identities | " + " | ".join(AUDIT_COLUMNS)
                     + " |", "|---|---|---|---|" + "---|" * len(AUDIT_COLUMNS)]
        for epoch, group in table.groupby("epoch"):
            cells = [f"{np.nanmean(group[c]):.3f}" if c in ("purity", "nmi", "ari")
                     else f"{np.nanmean(group[c]):.1f}" for c in AUDIT_COLUMNS]
            lines.append(f"| {method} | {int(epoch)} | {group['seed'].nunique()} | "
                         f"{group['identities'].iloc[0]:.0f} | " + " | ".join(cells) + " |")
    return lines
