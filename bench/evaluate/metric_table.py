"""The metric table: every metric bench reports, once (name, short label, direction, what it
needs), and the headline-model rule.

Read by the protocol schema (allowed primary metrics), the runner (which rows a run records),
summary.md, and bench.analysis (tables, audit): so this module imports nothing beyond the
standard library (bench.analysis must not import torch). A new metric is a row here plus its
computation in bench/evaluate/retrieval.py or reid.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    short: str  # column label in tables
    #: "retrieval": test set against itself, self-match excluded (dml); "reid": query ->
    #: gallery across cameras, Market-1501 rules (uda, dg)
    needs: str
    higher_is_better: bool = True
    #: computed only when the protocol asks (``evaluation.<switch>``)
    switch: str | None = None


TABLE: tuple[Metric, ...] = (
    Metric("precision_at_1", "P@1", "retrieval"),
    Metric("r_precision", "R-Prec", "retrieval"),
    Metric("mean_average_precision_at_r", "MAP@R", "retrieval"),
    Metric("recall_at_1", "R@1", "retrieval"),
    Metric("recall_at_2", "R@2", "retrieval"),
    Metric("recall_at_4", "R@4", "retrieval"),
    Metric("recall_at_8", "R@8", "retrieval"),
    Metric("nmi", "NMI", "retrieval", switch="nmi"),
    Metric("cmc_1", "R1", "reid"),
    Metric("cmc_5", "R5", "reid"),
    Metric("cmc_10", "R10", "reid"),
    Metric("mAP", "mAP", "reid"),
)
BY_NAME = {m.name: m for m in TABLE}
DML_METRICS: tuple[str, ...] = tuple(m.name for m in TABLE if m.needs == "retrieval")
REID_METRICS: tuple[str, ...] = tuple(m.name for m in TABLE if m.needs == "reid")
METRICS: tuple[str, ...] = DML_METRICS + REID_METRICS
SHORT = {m.name: m.short for m in TABLE}
#: the validation / headline metric when a protocol names none
DEFAULT_PRIMARY = {"retrieval": "mean_average_precision_at_r", "reid": "mAP"}
#: the default columns of bench.analysis.tables (`bench report`): the primary metric first,
#: so it ranks the methods
DEFAULT_COLUMNS = {"retrieval": ["mean_average_precision_at_r", "precision_at_1",
                                 "r_precision", "nmi"],
                   "reid": ["mAP", "cmc_1", "cmc_5", "cmc_10"]}


def family(reid: bool) -> tuple[str, ...]:
    """The metrics a setting reports: re-ID rules or retrieval."""
    return REID_METRICS if reid else DML_METRICS


def reported(reid: bool, switches: dict[str, bool] | None = None) -> list[str]:
    """The metrics a run reports, in table order, without those switched off (e.g. nmi)."""
    switches = switches or {}
    return [name for name in family(reid)
            if BY_NAME[name].switch is None or switches.get(BY_NAME[name].switch, True)]


#: the models a run reports, best first for the headline: fold models' embeddings
#: concatenated (more than one fold), else the mean of the separate fold models
HEADLINE_ORDER = ("concatenated", "separate")


def headline_model(models: Iterable[str]) -> str | None:
    """The headline of the models present: ``concatenated``, else ``separate``, else the first
    (None when there is none)."""
    models = list(dict.fromkeys(models))
    for name in HEADLINE_ORDER:
        if name in models:
            return name
    return str(models[0]) if models else None


def run_headline(folds: int) -> str:
    """The headline model of a run with ``folds`` folds (before any row exists)."""
    return HEADLINE_ORDER[0] if folds > 1 else HEADLINE_ORDER[1]
