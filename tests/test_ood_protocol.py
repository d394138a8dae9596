"""A protocol over an FID split sequence: rows per split with FID, the curve figure, a split file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.data import load_dataset

pytestmark = pytest.mark.slow

SEQUENCE = {
    "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 120}},
    "split": {"kind": "fid_sequence", "extractor": "mobilenet_v2", "select": 3},
    "train": {"iterations": 10, "batch_size": 32, "m_per_class": 4, "validate_every": 5},
    "evaluation": {"nmi": False},
    "reproductions": 2,
    "budget": {"trials": 1},
    "methods": [
        {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
         "search": {"loss_params.neg_margin": {"type": "float", "low": 0.5, "high": 1.2}}},
        {"name": "multi_similarity", "params": {"loss": "MultiSimilarityLoss"}},
    ],
}


def test_sequence_protocol_runs_every_method_on_every_split(write_protocol,
                                                            tmp_path: Path) -> None:
    protocol = write_protocol(SEQUENCE)
    assert main(["run", str(protocol), "--results", str(tmp_path), "--no-progress"]) == 0
    out = tmp_path / "tiny"
    rows = pd.read_csv(out / "results.csv")
    splits = sorted(rows["split"].unique())
    assert len(splits) >= 3 and all(s.startswith("fid") for s in splits)
    per_split = rows.groupby("split")["fid"].first()
    default = rows.loc[rows["is_default_split"], "split"].unique()
    assert len(default) == 1
    # both methods on every split, both seeds
    assert set(rows.groupby(["method", "split"])["seed"].nunique()) == {2}
    assert rows.groupby("split")["method"].nunique().eq(2).all()
    # the split file was written, is class-disjoint and its FIDs are the ones in the rows
    document = json.loads((out / "splits" / "glyphs-mobilenet_v2.json").read_text())
    by_id = {f"fid{e['id']:02d}": e for e in document["splits"]}
    for split, fid in per_split.items():
        entry = by_id[split]
        assert not set(entry["train_classes"]) & set(entry["test_classes"])
        assert entry["fid"] == pytest.approx(fid)
    # the curve figure exists in both formats and the summary has the sequence table
    assert (out / "ood_curve.png").stat().st_size > 10_000
    assert (out / "ood_curve.svg").is_file()
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "along the FID sequence" in summary and f"{default[0]}*" in summary
    check_size_control(out, rows)
    assert "size-controlled" in summary and "rho [95 %]" in summary
    assert "gain = trained - untrained" in summary and "uncontrolled" in summary


def check_size_control(out: Path, rows: pd.DataFrame) -> None:
    """Issue 15: every split also has size-controlled metrics equal to the mean over the
    subsets recorded in its run file, and the untrained embedding's metrics."""
    controlled = "mean_average_precision_at_r.controlled"
    smallest = int(rows["test_classes"].min())
    assert set(rows["controlled_classes"]) == {smallest}
    for path in sorted((out / "runs").glob("glyphs/*/*/seed*.json")):
        record = json.loads(path.read_text())
        control = record["size_control"]
        assert control["size"] == smallest and len(control["subsets"]) == 5
        assert all(len(s["classes"]) == smallest for s in control["subsets"])
        row = {(r["model"], r["metric"]): r["value"] for r in record["rows"]}
        for model in ("separate", "untrained"):
            mean = sum(s["models"][model]["mean_average_precision_at_r"]
                       for s in control["subsets"]) / len(control["subsets"])
            assert row[(model, controlled)] == pytest.approx(mean, abs=1e-12)
        assert ("untrained", "mean_average_precision_at_r") in row


def test_cached_last_stage_sequence_protocol(write_protocol, tmp_path: Path) -> None:
    """model.cache_frozen: the last stage trains on cached activations; training moves the
    metric away from the untrained embedding's."""
    changes = {**SEQUENCE, "reproductions": 1, "budget": {"trials": 0},
               "model": {"backbone": "mobilenet_v2", "trunk": "last_stage",
                         "cache_frozen": True, "embedding_size": 32, "head_hidden": 0},
               "train": {**SEQUENCE["train"], "iterations": 20},
               "methods": [{"name": "multi_similarity",
                            "params": {"loss": "MultiSimilarityLoss"}}]}
    protocol = write_protocol(changes)
    assert main(["run", str(protocol), "--results", str(tmp_path), "--no-progress"]) == 0
    rows = pd.read_csv(tmp_path / "tiny" / "results.csv")
    check_size_control(tmp_path / "tiny", rows)
    metric = rows[rows["metric"] == "mean_average_precision_at_r"].set_index(["split", "model"])
    trained, before = metric.xs("separate", level="model"), metric.xs("untrained", level="model")
    assert (trained["value"] - before["value"]).abs().min() > 1e-4
    assert (tmp_path / "tiny" / "ood_curve.png").stat().st_size > 10_000


def test_split_file_with_unknown_classes_is_refused(write_protocol, tmp_path: Path,
                                                    capsys) -> None:
    from bench.splits.fid_sequence import split_document, write_split_file

    names = load_dataset("glyphs", image_size=32, max_classes=120).class_names
    entries = [{"id": 1, "stage": "default", "is_default": True, "fid": 1.0,
                "train_classes": ["U+10FFFF nope", *names[:3]], "test_classes": names[60:64]}]
    path = write_split_file(split_document(entries, dataset="glyphs"), tmp_path / "s.json")
    protocol = write_protocol({**SEQUENCE, "split": {"kind": "fid_sequence", "file": str(path)}})
    results = tmp_path / "r"
    assert main(["run", str(protocol), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "s.json" in err and "not in dataset" in err and "\n" not in err
    assert not (results / "tiny").exists()


def test_published_oodml_protocol_dry_runs_without_data(capsys) -> None:
    root = Path(__file__).resolve().parents[1]
    assert main(["run", str(root / "protocols" / "oodml.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for dataset in ("cub200", "cars196", "sop"):
        assert f"| {dataset} |" in out and f"bench splits import PICKLE --dataset {dataset}" in out
    assert "total:" in out
