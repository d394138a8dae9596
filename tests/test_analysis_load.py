"""Loading results directories: provenance kept, mixed evaluation settings refused, no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.load import default_split, headline_model, load_results
from bench.errors import BenchError

FIXTURE = Path(__file__).parent / "fixtures" / "results"


def test_bench_analysis_never_imports_torch():
    code = ("import sys\n"
            "import bench.analysis, bench.analysis.load, bench.analysis.stats\n"
            "import bench.analysis.tables, bench.analysis.ood, bench.analysis.audit\n"
            "import bench.analysis.report, bench.analysis.cli\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_load_fixture_directories_and_root():
    quick = load_results(FIXTURE / "quick")
    assert {"protocol", "seed", "value", "k", "folds", "hyperparameters", "source"} <= set(
        quick.columns)
    assert quick["seed"].dtype.kind == "i" and quick["value"].dtype.kind == "f"
    assert headline_model(quick) == "concatenated"
    assert default_split(quick) == "standard"
    both = load_results(FIXTURE)  # a results root: every protocol below it
    assert set(both["protocol"]) == {"quick", "oodml_glyphs"}
    ood = both[both["protocol"] == "oodml_glyphs"]
    assert default_split(ood) == "fid01" and ood["fid"].notna().all()
    assert len(load_results([FIXTURE / "quick", FIXTURE / "quick"])) == len(quick)


def copy_with(tmp_path: Path, name: str, **changes) -> Path:
    frame = pd.read_csv(FIXTURE / "quick" / "results.csv")
    for column, value in changes.items():
        frame[column] = value
    target = tmp_path / name
    target.mkdir()
    frame.assign(protocol=name).to_csv(target / "results.csv", index=False)
    return target


def test_mixing_different_k_is_refused(tmp_path):
    other = copy_with(tmp_path, "quick_k10", k="10")
    with pytest.raises(BenchError) as error:
        load_results([FIXTURE / "quick", other])
    message = str(error.value)
    assert error.value.field == "k"
    assert "max_bin_count" in message and "10 in" in message and "allow_mixed" in message
    mixed = load_results([FIXTURE / "quick", other], allow_mixed=True)
    assert set(mixed["k"]) == {"max_bin_count", "10"}


def test_mixing_query_reference_or_folds_is_refused(tmp_path):
    other = copy_with(tmp_path, "one_fold", folds=1)
    with pytest.raises(BenchError, match="folds"):
        load_results([FIXTURE / "quick", other])


def test_same_results_twice_is_refused(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURE / "quick", copy)
    with pytest.raises(BenchError, match="appears twice"):
        load_results([FIXTURE / "quick", copy])


def test_bad_results_files(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no results.csv"):
        load_results(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    pd.DataFrame({"protocol": ["p"], "value": [1.0]}).to_csv(broken / "results.csv", index=False)
    with pytest.raises(BenchError) as error:
        load_results(broken)
    assert error.value.field == "dataset" and "results.csv" in str(error.value)
