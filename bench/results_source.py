"""The storage as the single source of a protocol's tables.

``results.csv`` and ``summary.md`` are made from the result documents read from the optuna
storage in this process; run files under ``runs/`` are written from the same documents (for
people and other tools) and never read back as a source, so a stray, copied or edited run file
cannot change a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import StateError
from bench.keys import JobKey


def rows_of(stored: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> list[dict]:
    """Every row of every stored result, in a stable order (pool, method, job)."""
    rows: list[dict] = []
    for key in sorted(stored):
        for job in sorted(stored[key]):
            rows.extend(stored[key][job].get("rows", []))
    return rows


def read_protocol_copy(path: Path) -> str:
    """The protocol as first run (``RESULTS/<name>/protocol.yaml``); StateError if unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise StateError(f"cannot read the protocol copy of earlier results ({reason}): move it "
                         "away, or re-run with --fresh to discard those results",
                         source=str(path)) from None


def stored_pseudo_labels(stored: dict[tuple[str, str], dict[str, dict[str, Any]]], pool: str,
                         method: str):
    """The ``pseudo_labels`` entries of ``method``'s stored results (one row per seed and
    epoch), as ``bench.analysis.ablation.read_pseudo_labels`` reads them from run files."""
    import pandas as pd

    rows = []
    for job, result in sorted(stored.get((pool, method), {}).items()):
        seed = JobKey.parse(job).seed
        rows += [{"seed": seed, **entry} for entry in result.get("pseudo_labels", [])]
    return pd.DataFrame(rows)
