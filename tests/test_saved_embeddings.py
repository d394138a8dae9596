"""Saved test embeddings and `bench evaluate`: same numbers without training, new Recall@k,
one-line errors for bad files, safe checkpoints."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import checkpoints, embeddings
from bench.cli import main
from bench.errors import BenchError


def test_round_trip_is_float16_and_atomic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q = [rng.normal(size=(50, 8)).astype(np.float32) for _ in range(2)]
    path = embeddings.save(tmp_path / "seed0.embeddings.npz", query=q,
                           query_labels=np.arange(50) % 5, meta={"seed": 3, "nmi": False})
    assert [p.name for p in tmp_path.iterdir()] == ["seed0.embeddings.npz"]  # no temp file left
    saved = embeddings.load(path)
    assert saved.query[0].dtype == np.float16 and saved.meta["seed"] == 3
    np.testing.assert_allclose(saved.query[1], q[1], rtol=2**-11, atol=1e-7)
    assert saved.concatenated().shape == (50, 16)
    out = embeddings.evaluate(saved, recall_ks=(1, 16))
    assert set(out) == {"fold0", "fold1", "separate", "concatenated"}
    assert "recall_at_16" in out["concatenated"]


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "seed0.embeddings.npz"
    with pytest.raises(BenchError, match="missing") as error:
        embeddings.load(path)
    assert str(path) in str(error.value)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BenchError, match="corrupt") as error:
        embeddings.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    # an object array would need pickle to load: refused, never unpickled
    np.savez(path, meta=np.array([{"format": 1}], dtype=object))
    with pytest.raises(BenchError, match="corrupt") as error:
        embeddings.load(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "seed0.fold0.pt"
    checkpoints.save(path, {"w": torch.ones(2, 3)}, [torch.nn.Parameter(torch.zeros(4))])
    data = checkpoints.load(path)
    assert torch.equal(data["model"]["w"], torch.ones(2, 3)) and data["method"]["0"].shape == (4,)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(BenchError, match="corrupt or unsafe") as error:
        checkpoints.load(path)
    assert str(path) in str(error.value)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished quick-style run (2 folds: separate + concatenated, 2 methods) with
    checkpoints of the last state."""
    import yaml
    from conftest import TINY_PROTOCOL

    root = tmp_path_factory.mktemp("saved")
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data.update(folds=2, reproductions=2, save={"checkpoints": "last"})
    data["split"] = {}
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(protocol), "--results", str(root / "r"), "--no-progress"]) == 0
    return root / "r" / "tiny"


@pytest.mark.slow
def test_evaluate_reproduces_results_and_adds_recall_k_without_training(
        finished_run: Path, monkeypatch, capsys) -> None:
    files = sorted(finished_run.glob("runs/**/*.embeddings.npz"))
    assert len(files) == 4  # 2 methods x 2 seeds
    assert {embeddings.load(f).query[0].dtype for f in files} == {np.dtype(np.float16)}

    import bench.experiment
    import bench.train

    def forbidden(*args, **kwargs):
        raise AssertionError("training code ran during bench evaluate")

    monkeypatch.setattr(bench.train, "train", forbidden)
    monkeypatch.setattr(bench.experiment, "fit_fold", forbidden)
    monkeypatch.setattr(bench.train, "embed", forbidden)
    assert main(["evaluate", str(finished_run), "--recall-k", "16"]) == 0
    capsys.readouterr()

    original = pd.read_csv(finished_run / "results.csv")
    again = pd.read_csv(finished_run / "evaluation.csv")
    key = ["dataset", "split", "method", "seed", "model", "metric"]
    merged = original.merge(again, on=key, suffixes=("", "_again"))
    assert len(merged) == len(original)  # every original number was recomputed
    assert set(merged["model"]) == {"fold0", "fold1", "separate", "concatenated"}
    gap = (merged["value"] - merged["value_again"]).abs()
    n_queries = len(embeddings.load(files[0]).query_labels)
    limit = merged["metric"].map(lambda m: embeddings.tolerance(m, n_queries))
    assert (gap <= limit).all(), merged.loc[gap > limit, key + ["value", "value_again"]]
    assert (merged["tolerance"] == limit).all()
    assert gap.median() == 0.0  # most numbers are identical; a few move by a near tie
    new = again[again["metric"] == "recall_at_16"]
    assert len(new) == 4 * 4 and new["value"].between(0, 1).all()
    assert (new["value"].to_numpy() >= again[again["metric"] == "recall_at_8"]["value"]
            .to_numpy()).all()
    assert "recall_at_16" in (finished_run / "evaluation.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_evaluate_imports_no_training_code(finished_run: Path) -> None:
    code = ("import sys; from bench.cli import main; "
            f"code = main(['evaluate', {str(finished_run)!r}, '--metrics', 'recall_at_1']); "
            "loaded = [m for m in ('bench.train', 'bench.experiment', 'bench.runner', "
            "'bench.models', 'bench.methods', 'bench.features', 'torchvision') if m in sys.modules]; "
            "print('LOADED', loaded, code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "LOADED [] 0" in out


@pytest.mark.slow
def test_checkpoints_are_saved_and_load_safely(finished_run: Path) -> None:
    files = sorted(finished_run.glob("runs/**/*.fold*.pt"))
    assert len(files) == 2 * 2 * 2  # methods x seeds x folds
    state = checkpoints.load(files[0])["model"]
    assert state and all(hasattr(v, "shape") for v in state.values())


@pytest.mark.slow
def test_bad_embedding_files_lose_nothing_else(finished_run: Path, tmp_path: Path,
                                               capsys) -> None:
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(finished_run, copy)
    files = sorted(copy.glob("runs/**/*.embeddings.npz"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    files[1].unlink()  # missing
    before = {p: p.read_bytes() for p in copy.rglob("*")
              if p.is_file() and not p.name.startswith("evaluation.")}  # its own outputs
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert str(files[0]) in err[0] and "corrupt" in err[0]
    assert str(files[1]) in err[1] and "missing" in err[1]
    rows = pd.read_csv(copy / "evaluation.csv")
    assert set(rows["embeddings"]) == {str(f.relative_to(copy)) for f in files[2:]}
    for path, data in before.items():
        if path.exists():
            assert path.read_bytes() == data, path  # nothing written over
    record = json.loads(sorted(copy.glob("runs/**/seed0.json"))[0].read_text(encoding="utf-8"))
    assert record["rows"]


@pytest.mark.slow
def test_report_shows_the_embedding_space_of_the_top_methods(finished_run: Path,
                                                             tmp_path: Path) -> None:
    from bench.analysis.embedding_plot import class_subset, top_methods
    from bench.analysis.report import report

    written = report(finished_run, out=tmp_path / "rep", claims=[])
    page = written[0].read_text(encoding="utf-8")
    assert "t-SNE" in page and 'data-figure="tiny_glyphs_embeddings"' in page
    rows = pd.read_csv(finished_run / "results.csv")
    best = top_methods(rows, "mean_average_precision_at_r")
    means = rows[(rows["model"] == "concatenated")
                 & (rows["metric"] == "mean_average_precision_at_r")].groupby("method")["value"]
    assert best[0] == means.mean().idxmax()
    assert f"({', '.join(best)};" in page
    assert list(class_subset(np.arange(100))) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    # without saved embeddings, no picture (and no error)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "results.csv").write_bytes((finished_run / "results.csv").read_bytes())
    page = report(bare, out=tmp_path / "rep2", claims=[])[0].read_text(encoding="utf-8")
    assert "t-SNE" not in page


@pytest.mark.slow
def test_reid_embeddings_keep_gallery_ids_cameras_and_reevaluate(write_protocol, tmp_path: Path,
                                                                 capsys) -> None:
    path = write_protocol({
        "setting": {"kind": "uda", "source": ["sans", "serif"], "target": ["mono", "stix"]},
        "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 48}},
        "train": {"iterations": 6, "batch_size": 16, "m_per_class": 4, "validate_every": 3,
                  "checkpoint": "last"},
        "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
                    {"name": "dimn", "method": "dimn"}],
    })
    results = tmp_path / "r"
    assert main(["run", str(path), "--results", str(results), "--no-progress"]) == 0
    run = results / "tiny"
    saved = embeddings.load(run / "runs" / "glyphs" / "contrastive" / "standard"
                            / "seed0.embeddings.npz")
    assert saved.reid and saved.meta["setting"] == "uda" and not saved.meta["score_fn"]
    assert len(saved.gallery_ids) == len(saved.gallery_cameras) == len(saved.gallery[0])
    assert len(saved.query_cameras) == len(saved.query_labels)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--recall-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "dimn" in err and "own score function" in err  # said, not silently re-scored
    rows = pd.read_csv(run / "evaluation.csv")
    assert set(rows["method"]) == {"contrastive"}
    assert {"cmc_1", "cmc_3", "cmc_5", "cmc_10", "mAP"} == set(rows["metric"])
    shared = rows["original_value"].notna()
    assert ((rows["value"] - rows["original_value"]).abs()[shared]
            <= rows["tolerance"][shared]).all()


def test_save_section_is_validated(write_protocol, capsys) -> None:
    assert main(["validate", str(write_protocol({"save": {"embeddings": "float64"}}))]) == 2
    err = capsys.readouterr().err
    assert "save.embeddings" in err and len(err.strip().splitlines()) == 1
    assert main(["validate", str(write_protocol({"save": {"checkpoint": "best"}}))]) == 2
    assert "save.checkpoint" in capsys.readouterr().err
    assert main(["validate", str(write_protocol({"save": {"embeddings": "float32",
                                                          "checkpoints": "best"}}))]) == 0


def test_float32_on_request(tmp_path: Path) -> None:
    q = [np.linspace(0, 1, 30, dtype=np.float32).reshape(10, 3) + 1e-5]
    path = embeddings.save(tmp_path / "s.embeddings.npz", query=q, query_labels=np.arange(10),
                           meta={}, dtype="float32")
    np.testing.assert_array_equal(embeddings.load(path).query[0], q[0])


@pytest.mark.slow
def test_test_embeddings_are_computed_once_per_fold_model(write_protocol, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The concatenated model's test embeddings are the fold models' own (saved ones), not a
    second pass over the test set."""
    import bench.experiment
    import bench.units

    real_embed, real_test = bench.experiment.embed, bench.experiment.evaluate_test
    calls: list[str] = []
    inside = []

    def counted_embed(*args, **kwargs):
        if inside:
            calls.append("embed")
        return real_embed(*args, **kwargs)

    def counted_test(*args, **kwargs):
        inside.append(True)
        try:
            return real_test(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(bench.experiment, "embed", counted_embed)
    monkeypatch.setattr(bench.units, "evaluate_test", counted_test)
    protocol = write_protocol({"folds": 2, "split": {"kind": "standard"},
                               "methods": [{"name": "contrastive",
                                            "params": {"loss": "ContrastiveLoss"}}]})
    assert main(["run", str(protocol), "--results", str(tmp_path / "r"), "--no-progress",
                 "-j", "1"]) == 0
    table = pd.read_csv(tmp_path / "r" / "tiny" / "results.csv")
    assert {"fold0", "fold1", "concatenated"} <= set(table["model"])
    assert len(calls) == 2  # one test job, two fold models, one pass each
