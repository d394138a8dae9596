"""One real run of a tiny protocol through the CLI: files, rows per method, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.evaluate.metric_table import DML_METRICS

pytestmark = pytest.mark.slow


def run(protocol: Path, results: Path) -> pd.DataFrame:
    assert main(["run", str(protocol), "--results", str(results), "--no-progress"]) == 0
    return pd.read_csv(results / "tiny" / "results.csv")


def test_tiny_protocol_twice_gives_identical_rows(write_protocol, tmp_path: Path, capsys) -> None:
    protocol = write_protocol()
    first = run(protocol, tmp_path / "a")
    second = run(protocol, tmp_path / "b")
    pd.testing.assert_frame_equal(first, second)

    assert set(first["method"]) == {"contrastive", "proxy_anchor"}
    assert set(first["metric"]) == set(DML_METRICS)
    assert first["value"].between(0, 1).all()
    for column in ("protocol", "dataset", "split", "seed", "protocol_sha256", "weights", "torch"):
        assert first[column].notna().all(), column

    summary = (tmp_path / "a" / "tiny" / "summary.md").read_text(encoding="utf-8")
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["contrastive", "proxy_anchor"]
    record = json.loads((tmp_path / "a" / "tiny" / "runs" / "glyphs" / "contrastive" /
                         "standard" / "seed0.json").read_text(encoding="utf-8"))
    assert {"fold", "iteration", "loss", "score"} <= set(record["history"][0])
    assert "results.csv" in capsys.readouterr().out


def test_diverging_method_is_recorded_and_others_run(write_protocol, tmp_path: Path,
                                                     capsys) -> None:
    # A margin this large on a scale this large overflows to inf in float32.
    protocol = write_protocol({"methods": [
        {"name": "boom", "params": {"loss": "ArcFaceLoss",
                                    "loss_params": {"scale": 1.0e38, "margin": 28.6}}},
        {"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
    ]})
    results = tmp_path / "r"
    code = main(["run", str(protocol), "--results", str(results), "--no-progress"])
    assert code == 1
    assert "boom failed" in capsys.readouterr().err
    rows = pd.read_csv(results / "tiny" / "results.csv")
    assert set(rows["method"]) == {"contrastive"}
    summary = (results / "tiny" / "summary.md").read_text(encoding="utf-8")
    assert "| boom | 0 | failed" in summary and "became inf" in summary


def test_image_path_trains_last_stage_with_augmentation(write_protocol, tmp_path: Path) -> None:
    protocol = write_protocol({
        "model": {"backbone": "mobilenet_v2", "pretrained": True, "trunk": "last_stage",
                  "embedding_size": 16, "head_hidden": 0},
        "train": {"iterations": 4, "batch_size": 16, "m_per_class": 4, "validate_every": 2,
                  "patience": 2, "augmentation": {"random_resized_crop_scale": [0.6, 1.0]}},
        "evaluation": {"nmi": False},
        "methods": [{"name": "multi_similarity", "params": {
            "loss": "MultiSimilarityLoss", "miner": "MultiSimilarityMiner"}}],
    })
    rows = run(protocol, tmp_path)
    assert set(rows["method"]) == {"multi_similarity"}
    assert "nmi" not in set(rows["metric"])
    assert all(max(json.loads(b)) <= 4 for b in rows["best_iterations"])
