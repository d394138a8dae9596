"""One metric table (bench.evaluate.metric_table) read by the protocol schema, the runner's
summary, bench.analysis and the headline-model rule (issue 13)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from bench.evaluate import metric_table
from bench.evaluate.metric_table import BY_NAME, headline_model, reported, run_headline
from bench.protocol import parse_protocol

BASE = {"name": "t", "dataset": {"name": "glyphs"},
        "methods": [{"name": "m", "params": {"loss": "ContrastiveLoss"}}]}


def test_the_schema_allows_exactly_the_table_metrics() -> None:
    for metric in metric_table.DML_METRICS:
        parse_protocol({**BASE, "evaluation": {"primary": metric}})
    with pytest.raises(Exception, match="mAP"):
        parse_protocol({**BASE, "evaluation": {"primary": "mAP"}})  # re-ID only


def test_reported_metrics_follow_the_switches() -> None:
    assert "nmi" in reported(False) and "nmi" not in reported(False, {"nmi": False})
    assert reported(True) == list(metric_table.REID_METRICS)


def test_one_headline_rule() -> None:
    assert headline_model(["fold0", "separate", "concatenated"]) == "concatenated"
    assert headline_model(["fold0", "separate"]) == "separate"
    assert headline_model([]) is None
    assert run_headline(3) == "concatenated" and run_headline(1) == "separate"
    from bench.analysis.load import headline_model as frame_headline

    frame = pd.DataFrame({"model": ["fold0", "separate"]})
    assert frame_headline(frame) == headline_model(frame["model"])


def test_ranks_follow_the_tables_direction(monkeypatch) -> None:
    from bench.analysis.tables import summarize

    frame = pd.DataFrame({"dataset": "d", "split": "standard", "model": "separate",
                          "metric": "r_precision", "seed": [0, 1, 0, 1],
                          "method": ["a", "a", "b", "b"], "value": [0.2, 0.3, 0.6, 0.7]})
    ranks = summarize(frame).set_index("method")["rank"]
    assert ranks["b"] == 1
    lower = dataclasses.replace(BY_NAME["r_precision"], higher_is_better=False)
    monkeypatch.setitem(BY_NAME, "r_precision", lower)
    assert summarize(frame).set_index("method")["rank"]["a"] == 1
