"""FID split sequences (ooDML): stages, invariants, split files, the CLI and the pickle importer."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.fid import fid_plain
from bench.splits.fid_sequence import (
    SequenceParams,
    generate_sequence,
    make_dataset_splits,
    read_split_file,
    split_document,
    split_entries,
    splits_checksum,
    write_split_file,
)
from bench.splits.oodml_import import import_oodml_pickle, restricted_load

GLYPHS = {"image_size": 32, "max_classes": 200}


def synthetic(classes: int = 60, dim: int = 48, seed: int = 0, bias: float = 0.5) -> np.ndarray:
    """Centroids in 3 groups, ordered so that the first half leans to the low groups: the default
    split is neither random (no easier splits) nor separated (no harder ones)."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, size=classes)
    x = rng.normal(size=(3, dim))[groups] + 0.6 * rng.normal(size=(classes, dim))
    return x[np.argsort(groups + 3 * bias * rng.normal(size=classes), kind="stable")]


def rising(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def check_sequence_invariants(splits, params: SequenceParams, base: int) -> None:
    stages = [s.stage for s in splits]
    assert stages.count("default") == 1
    order = {"easier": 0, "default": 1, "swap": 2, "removal": 3}
    assert [order[s] for s in stages] == sorted(order[s] for s in stages)
    for split in splits:
        assert not set(split.train) & set(split.test)  # class-disjoint, always
    fids = {stage: [s.fid for s in splits if s.stage == stage] for stage in order}
    # easier splits (listed easiest first) below the default, swaps rising strictly above it
    chain = fids["easier"] + fids["default"] + fids["swap"]
    assert rising(chain)
    removals = [s for s in splits if s.stage == "removal"]
    for split in removals:
        assert len(split.train) == len(split.test)
        assert len(split.train) >= params.min_fraction * base
    for split in splits:
        if split.stage != "removal":
            assert len(split.train) + len(split.test) == 2 * base


def test_synthetic_sequence_and_plain_fids():
    x = synthetic()
    params = SequenceParams()
    splits = generate_sequence(x, np.arange(30), np.arange(30, 60), params)
    check_sequence_invariants(splits, params, 30)
    assert {s.stage for s in splits} == {"easier", "default", "swap", "removal"}
    removal = [s.fid for s in splits if s.stage == "removal"]
    last_swap = [s.fid for s in splits if s.stage == "swap"][-1]
    assert rising([last_swap] + removal)
    for split in splits:  # the incremental FIDs are the reference's
        assert split.fid == pytest.approx(fid_plain(x[list(split.train)], x[list(split.test)]),
                                          rel=1e-6)
    # deterministic, and the same with either backend of the incremental engine
    again = generate_sequence(x, np.arange(30), np.arange(30, 60), params, mode="features")
    assert [(s.stage, s.train, s.test) for s in again] == [(s.stage, s.train, s.test)
                                                           for s in splits]


def test_swap_memory_and_parameters():
    x = synthetic(seed=2)
    params = SequenceParams(swaps_per_iteration=1, swap_memory=3, easier_iterations=0,
                            max_swap_iterations=4, removal_fraction=0.2, min_fraction=0.6)
    splits = generate_sequence(x, np.arange(30), np.arange(30, 60), params)
    swaps = [s for s in splits if s.stage == "swap"]
    assert len(swaps) <= 4 and not [s for s in splits if s.stage == "easier"]
    moved = []
    previous = next(s for s in splits if s.is_default)
    for split in swaps:  # one swap per iteration, never of a class swapped in the last 3
        out = set(previous.train) - set(split.train)
        assert len(out) == 1
        moved.append(out | (set(previous.test) - set(split.test)))
        for recent in moved[-4:-1]:
            assert not recent & moved[-1]
        previous = split
    sizes = [len(s.train) for s in splits if s.stage == "removal"]
    assert sizes == [24, 18][:len(sizes)] and len(sizes) == 2
    with pytest.raises(BenchError, match="option removal_fraction"):
        SequenceParams.from_options({"removal_fraction": 1.5})
    with pytest.raises(BenchError, match="unknown option 'swapz'"):
        SequenceParams.from_options({"swapz": 1})
    with pytest.raises(BenchError, match="expected int"):
        SequenceParams.from_options({"swap_memory": "many"})
    assert SequenceParams.from_options({"swap_memory": "3"}).swap_memory == 3
    with pytest.raises(BenchError, match="at least 4"):
        generate_sequence(x, [0, 1], [2, 3, 4, 5])


def test_split_file_checksum_and_tampering(tmp_path):
    x = synthetic(classes=20, dim=8)
    names = [f"class{i:02d}" for i in range(20)]
    entries = split_entries(generate_sequence(x, np.arange(10), np.arange(10, 20)), names)
    document = split_document(entries, dataset="toy", extractor="none", parameters={})
    assert document["checksum"] == splits_checksum(entries)
    assert document["checksum"].startswith("sha256:") and len(document["checksum"]) == 71
    path = write_split_file(document, tmp_path / "s.json")
    assert read_split_file(path) == document
    data = json.loads(path.read_text())
    data["splits"][0]["fid"] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(BenchError, match="checksum"):
        read_split_file(path)
    bad = [dict(entries[0], test_classes=entries[0]["train_classes"][:1])]
    with pytest.raises(BenchError, match="share 1 classes"):
        split_document(bad, dataset="toy")


def _toy_document():
    names = [f"class{i:02d}" for i in range(8)]
    entries = [{"id": 1, "stage": "default", "is_default": True, "fid": 2.5,
                "train_classes": names[:4], "test_classes": names[4:]},
               {"id": 2, "stage": "imported", "is_default": False, "fid": None,
                "train_classes": names[:3], "test_classes": names[5:]}]
    return split_document(entries, dataset="toy", extractor=None, parameters={}), names


@pytest.mark.parametrize(("index", "change", "field", "words"), [
    (1, 7, "splits[1]", "a split must be an object"),
    (0, {"test_classes": None}, "splits[0].test_classes", "expected a list of class names"),
    (0, {"train_classes": "class00"}, "splits[0].train_classes", "expected a list"),
    (0, {"train_classes": ["class00", 3]}, "splits[0].train_classes", "must be strings, got 3"),
    (0, {"train_classes": []}, "splits[0].train_classes", "no classes"),
    (0, {"train_classes": ["class00", "class00"]}, "splits[0].train_classes", "listed twice"),
    (0, {"train_classes": ["class04"]}, "splits[0]", "train and test share 1 classes"),
    (0, {"fid": "high"}, "splits[0].fid", "'high'"),
    (0, {"fid": True}, "splits[0].fid", "finite number or null"),
    (0, {"id": "one"}, "splits[0].id", "integer id"),
    (1, {"id": 1}, "splits", "repeated: 1"),
    (0, {"is_default": "yes"}, "splits[0].is_default", "true or false"),
    (1, {"is_default": True}, "splits", "exactly one default split, found 2"),
])
def test_read_split_file_checks_every_entry(tmp_path, index, change, field, words):
    document, _ = _toy_document()
    splits = document["splits"]
    splits[index] = change if not isinstance(change, dict) else {**splits[index], **change}
    document["checksum"] = splits_checksum(splits)  # a consistent file: the checks must catch it
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(BenchError) as caught:
        read_split_file(path)
    assert caught.value.source == str(path) and caught.value.field == field
    assert words in caught.value.reason


def test_split_file_class_names_and_null_fid(tmp_path):
    from bench.splits.named import from_document

    document, names = _toy_document()
    path = write_split_file(document, tmp_path / "splits.json")
    assert read_split_file(path, class_names=names) == document
    with pytest.raises(BenchError, match="1 class names are not in dataset 'toy'") as caught:
        read_split_file(path, class_names=names[1:], dataset="toy")
    assert caught.value.field == "splits[0].train_classes"

    class Toy:
        name = "toy"
        class_names = names

    splits = from_document(document, Toy(), source=str(path))
    assert [(s.id, s.fid, s.is_default) for s in splits] == [("fid01", 2.5, True),
                                                             ("fid02", None, False)]
    with pytest.raises(BenchError, match="not in dataset 'toy'"):
        from_document(document, type("Other", (Toy,), {"class_names": names[:7]})(),
                      source=str(path))


@pytest.fixture(scope="module")
def glyph_splits():
    return make_dataset_splits("glyphs", "mobilenet_v2", dataset_options=GLYPHS, progress=False)


def _as_sequence(document):
    from bench.splits.fid_sequence import SequenceSplit

    return [SequenceSplit(e["stage"], tuple(e["train_classes"]), tuple(e["test_classes"]),
                          e["fid"]) for e in document["splits"]]


def test_glyphs_sequence(glyph_splits):
    doc = glyph_splits
    assert doc["dataset"] == "glyphs" and doc["extractor"] == "mobilenet_v2"
    assert doc["num_classes"] == 200 and doc["feature_size"] == 1280
    params = SequenceParams(**doc["parameters"])
    splits = _as_sequence(doc)
    check_sequence_invariants(splits, params, 100)
    stages = [s.stage for s in splits]
    # FID rises through the swap stage until it plateaus (a swap iteration stops raising it
    # before the iteration limit), then rises again through the removals
    assert 3 <= stages.count("swap") < params.max_swap_iterations
    removal = [s.fid for s in splits if s.stage == "removal"]
    assert len(removal) >= 3
    chain = [[s.fid for s in splits if s.stage == "swap"][-1]] + removal
    assert rising(chain)
    assert stages.count("easier") >= 1
    from bench.data import load_dataset

    names = load_dataset("glyphs", **GLYPHS).class_names  # default: first half train
    default = next(e for e in doc["splits"] if e["is_default"])
    assert default["train_classes"] == names[:100] and default["test_classes"] == names[100:]


def test_emoji_sequence():
    from bench.data import dataset_info

    if not dataset_info("emoji")["available"]:
        pytest.skip("emoji artwork packages are not installed")
    doc = make_dataset_splits("emoji", "mobilenet_v2",
                              dataset_options={"image_size": 32, "max_classes": 200},
                              progress=False)
    params = SequenceParams(**doc["parameters"])
    splits = _as_sequence(doc)
    check_sequence_invariants(splits, params, 100)
    removal = [s.fid for s in splits if s.stage == "removal"]
    chain = [[s.fid for s in splits if s.stage == "swap"][-1]] + removal
    assert len(removal) >= 3 and rising(chain)


@pytest.mark.slow
def test_full_glyphs_sequence():
    doc = make_dataset_splits("glyphs", "mobilenet_v2", dataset_options={"image_size": 32},
                              progress=False)
    params = SequenceParams(**doc["parameters"])
    splits = _as_sequence(doc)
    check_sequence_invariants(splits, params, doc["num_classes"] // 2)
    removal = [s.fid for s in splits if s.stage == "removal"]
    chain = [[s.fid for s in splits if s.stage == "swap"][-1]] + removal
    assert len(removal) >= 3 and rising(chain)


def test_cli_make_prints_table_and_same_checksum_twice(tmp_path, capsys, glyph_splits):
    argv = ["splits", "make", "--dataset", "glyphs", "--extractor", "mobilenet_v2",
            "--option", "image_size=32", "--option", "max_classes=200", "--no-progress"]
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.json"
        assert main([*argv, "--out", str(out)]) == 0
        outputs.append(capsys.readouterr().out)
        assert read_split_file(out)["checksum"] == glyph_splits["checksum"]
    first, second = outputs
    assert first.splitlines()[0].split() == ["split", "stage", "train", "test", "FID", "default"]
    default_rows = [line for line in first.splitlines() if line.rstrip().endswith("*")]
    assert len(default_rows) == 1 and "default" in default_rows[0]
    checksums = [line for text in outputs for line in text.splitlines()
                 if line.startswith("checksum: sha256:")]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert glyph_splits["checksum"] in checksums[0]
    assert first.split("wrote")[0] == second.split("wrote")[0]  # identical tables


def test_cli_make_bad_option(tmp_path, capsys):
    code = main(["splits", "make", "--dataset", "glyphs", "--option", "min_fraction=2",
                 "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "min_fraction" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# --- importing ooDML pickles ---------------------------------------------------------------------


def _oodml_like() -> dict:
    return {
        1: {"train": np.array(["001.Black_footed_Albatross", "002.Laysan_Albatross"]),
            "test": np.array(["101.White_Pelican", "102.Western_Wood_Pewee"]),
            "fid": np.float64(19.2), "train_val_split": {"train": [1], "val": [2]}},
        3: {"train": ["001.Black_footed_Albatross", "101.White_Pelican"],
            "test": ["002.Laysan_Albatross", "102.Western_Wood_Pewee"], "fid": 52.6},
        2: {"classes_train": ("a", "b"), "classes_test": {"c", "d"}, "FID": 28.5},
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_import_oodml_pickle(tmp_path, protocol):
    path = tmp_path / "cub200_splits.pkl"
    path.write_bytes(pickle.dumps(_oodml_like(), protocol=protocol))
    doc = import_oodml_pickle(path, dataset="cub200", default_id="3")
    assert [e["source_id"] for e in doc["splits"]] == ["1", "2", "3"]
    assert [e["fid"] for e in doc["splits"]] == [19.2, 28.5, 52.6]
    assert [e["is_default"] for e in doc["splits"]] == [False, False, True]
    assert doc["splits"][0]["train_classes"] == ["001.Black_footed_Albatross",
                                                 "002.Laysan_Albatross"]
    assert doc["splits"][1]["test_classes"] == ["c", "d"]
    assert doc["checksum"] == splits_checksum(doc["splits"])
    assert doc["dataset"] == "cub200" and doc["imported_from"]["file"] == path.name


def test_import_cli(tmp_path, capsys):
    path = tmp_path / "splits.pkl"
    path.write_bytes(pickle.dumps({"splits": list(_oodml_like().values())}, protocol=2))
    out = tmp_path / "imported.json"
    assert main(["splits", "import", str(path), "--dataset", "cub200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checksum: sha256:" in text and "imported" in text
    assert len(read_split_file(out)["splits"]) == 3


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("payload", ["system", "eval", "class"])
def test_import_refuses_disallowed_globals(tmp_path, capsys, payload):
    marker = tmp_path / "executed"
    if payload == "system":
        obj = {1: {"train": ["a"], "test": ["b"], "fid": _Evil(f"touch {marker}")}}
        refused = f"{os.system.__module__}.system"
    elif payload == "eval":
        obj = {1: {"train": ["a"], "test": ["b"], "fid": _EvalReduce(str(marker))}}
        refused = ".eval"  # builtins.eval (__builtin__.eval at protocol 2)
    else:
        obj = {1: {"train": ["a"], "test": ["b"], "fid": Path(marker)}}
        refused = "pathlib"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(BenchError) as caught:
        restricted_load(path)
    message = str(caught.value)
    assert str(path) in message and refused in message and "refused" in message
    assert "\n" not in message
    out = tmp_path / "out.json"
    assert main(["splits", "import", str(path), "--dataset", "cub200", "--out", str(out)]) == 2
    assert refused in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


class _EvalReduce:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (eval, (f"open({self.target!r}, 'w').close()",))


def test_import_rejects_bad_content(tmp_path):
    cases = {
        "list.pkl": (["a", "b"], "expected a dict of splits"),
        "keys.pkl": ({1: {"classes": ["a"]}}, "no train/test class lists"),
        "overlap.pkl": ({1: {"train": ["a", "b"], "test": ["b"]}},
                        r"overlap\.pkl: split 1: train and test share 1 classes"),
        "defaults.pkl": ({1: {"train": ["a"], "test": ["b"], "default": True},
                          2: {"train": ["b"], "test": ["a"], "default": True}},
                         "2 splits are marked default"),
        "fid.pkl": ({1: {"train": ["a"], "test": ["b"], "fid": "high"}}, "FID must be"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(content))
        with pytest.raises(BenchError, match=reason):
            import_oodml_pickle(path, dataset="x")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps(_oodml_like())[:40])
    with pytest.raises(BenchError, match="not a readable pickle"):
        import_oodml_pickle(broken, dataset="x")
    with pytest.raises(BenchError, match="cannot read"):
        import_oodml_pickle(tmp_path / "missing.pkl", dataset="x")
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(_oodml_like()))
    with pytest.raises(BenchError, match="no split with id '9'"):
        import_oodml_pickle(path, dataset="x", default_id="9")
