"""Settings dml / uda / dg: which rows each method gets, refusals before training, pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data import load_dataset
from bench.data.merge import ConcatImages, merge_datasets
from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.plan import plan_protocol
from bench.protocol import SettingSpec
from bench.runner import RunOptions, run_protocol
from bench.settings import fold_rows, query_gallery_rule, resolve_layout
from bench.splits import ClassSplit

UDA = {"kind": "uda", "source": ["sans", "serif"], "target": ["mono", "stix"]}


@pytest.fixture(scope="module")
def glyphs() -> ImageDataset:
    return load_dataset("glyphs", image_size=16, max_classes=40)


def test_uda_layout_identities_and_rows(glyphs: ImageDataset) -> None:
    layout = resolve_layout(SettingSpec(**UDA), glyphs, source="p.yaml")
    names = np.array(glyphs.domain_names)
    assert set(names[glyphs.domains[layout.source_rows]]) == {"sans", "serif"}
    assert set(names[glyphs.domains[layout.target_rows]]) == {"mono", "stix"}
    # first half of the classes trains, split into disjoint source / target identities
    np.testing.assert_array_equal(layout.train_classes, np.arange(10))
    np.testing.assert_array_equal(layout.target_train_classes, np.arange(10, 20))
    np.testing.assert_array_equal(layout.test_classes, np.arange(20, 40))
    assert layout.kinds == {"labeled", "unlabeled_target", "domain_labels", "camera_views"}
    # test rows: target fonts only; per identity 8 images = 2 queries (one per family) + 6
    test = layout.query_rows | layout.gallery_rows
    assert not np.any(test & layout.source_rows)
    for label in layout.test_classes:
        assert (layout.query_rows & (glyphs.labels == label)).sum() == 2
        assert (layout.gallery_rows & (glyphs.labels == label)).sum() == 6
    assert not np.any(layout.query_rows & layout.gallery_rows)


def test_query_is_the_lowest_camera_per_identity_and_domain(glyphs: ImageDataset) -> None:
    rows = np.isin(glyphs.labels, [3, 4])
    query, gallery = query_gallery_rule(glyphs, rows)
    for label in (3, 4):
        for domain in range(4):
            mine = rows & (glyphs.labels == label) & (glyphs.domains == domain)
            lowest = np.flatnonzero(mine)[np.argmin(glyphs.cameras[mine])]
            assert np.flatnonzero(query & mine).tolist() == [lowest]
    assert np.array_equal(gallery, rows & ~query)


def test_fold_rows_give_each_method_only_what_it_consumes(glyphs: ImageDataset) -> None:
    layout = resolve_layout(SettingSpec(**UDA), glyphs, source="p.yaml")
    fold = ClassSplit("f", layout.train_classes[:8], layout.train_classes[8:],
                      layout.test_classes)
    inputs = np.arange(len(glyphs.labels))  # stands for the inputs: rows are visible
    source_only = fold_rows(layout, glyphs, inputs, fold, frozenset({"labeled"}))
    assert source_only.data.target is None and source_only.data.camera_views is None
    assert set(glyphs.labels[source_only.data.source]) == set(range(8))
    assert source_only.data.labels.max() == 7  # relabelled 0..C-1
    full = fold_rows(layout, glyphs, inputs, fold, frozenset(layout.kinds))
    target = full.data.target
    assert set(glyphs.labels[target]) == set(range(10, 20))
    assert len(target) == 10 * 8
    assert full.data.domains is not None and set(full.data.domains) == {0, 1}
    # row numbers are not images: no view can be rendered, and the kinds say so
    assert full.data.camera_views is None and "camera_views" not in full.data.kinds
    images = fold_rows(layout, glyphs, torch.from_numpy(glyphs.images), fold,
                       frozenset(layout.kinds))
    views = images.data.camera_views
    assert "camera_views" in images.data.kinds and views.num_cameras == 8  # mono + stix fonts
    np.testing.assert_array_equal(images.data.target_cameras, glyphs.cameras[target])
    # validation: held-out source identities, query -> gallery
    assert set(glyphs.labels[full.validation]) == {8, 9}
    assert not np.any(full.validation & full.validation_gallery)


def test_dg_has_no_target_training_data(glyphs: ImageDataset) -> None:
    spec = SettingSpec(kind="dg", source=["sans", "serif", "mono"], target=["stix"])
    layout = resolve_layout(spec, glyphs, source="p.yaml")
    assert "unlabeled_target" not in layout.kinds
    np.testing.assert_array_equal(layout.train_classes, np.arange(20))
    assert len(layout.target_train_classes) == 0
    for label in layout.test_classes[:3]:  # 4 stix styles: 1 query + 3 gallery
        assert (layout.query_rows & (glyphs.labels == label)).sum() == 1
        assert (layout.gallery_rows & (glyphs.labels == label)).sum() == 3


def test_unknown_domain_names_the_setting_field(glyphs: ImageDataset) -> None:
    spec = SettingSpec(kind="uda", source=["sans", "comic"], target=["mono"])
    with pytest.raises(BenchError, match=r"setting\.source\.1: 'comic' names no dataset"):
        resolve_layout(spec, glyphs, source="p.yaml")


def test_camera_view_draws_another_target_camera(glyphs: ImageDataset) -> None:
    layout = resolve_layout(SettingSpec(**UDA), glyphs, source="p.yaml")
    fold = ClassSplit("f", layout.train_classes, np.array([], np.int64), layout.test_classes)
    rows = fold_rows(layout, glyphs, torch.from_numpy(glyphs.images), fold,
                     frozenset(layout.kinds))
    views, cameras = rows.data.camera_views, rows.data.target_cameras
    restyled = []
    for c in views.cameras:  # rows already at camera c are unchanged by "as camera c"
        own = cameras == c
        same = views.restyle(rows.data.target[own], cameras[own], cameras[own])
        assert torch.equal(same, rows.data.target[own])
        restyled.append(views.restyle(rows.data.target, cameras, np.full(len(cameras), c)))
    drawn = views.draw(rows.data.target, cameras, np.random.default_rng(0))
    for i in range(len(cameras)):  # each view is the row as one of the OTHER cameras
        matches = [c for c, r in zip(views.cameras, restyled, strict=True)
                   if torch.equal(r[i], drawn[i])]
        assert any(c != cameras[i] for c in matches)


def _tiny(name: str, n_classes: int, roles: list[str] | None = None) -> ImageDataset:
    labels = np.repeat(np.arange(n_classes), 2)
    return ImageDataset(
        name=name, images=np.full((len(labels), 4, 4, 3), ord(name[0]), np.uint8),
        labels=labels, domains=np.zeros(len(labels), np.int64),
        cameras=np.tile([0, 1], n_classes), class_names=[f"c{i}" for i in range(n_classes)],
        domain_names=[name], camera_names=["a", "b"],
        roles=None if roles is None else np.array(roles))


def test_merge_offsets_identities_and_keeps_roles() -> None:
    a = _tiny("duke", 2, ["train"] * 2 + ["query", "gallery"])
    b = _tiny("market", 4)
    pool = merge_datasets([a, b])
    assert pool.name == "duke+market"
    np.testing.assert_array_equal(pool.labels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    assert pool.domain_names == ["duke", "market"]
    assert pool.camera_names == ["duke/a", "duke/b", "market/a", "market/b"]
    # market has no roles: first half of its classes train, second half test
    assert pool.roles.tolist()[4:] == ["train"] * 4 + ["test"] * 4
    spec = SettingSpec(kind="uda", source=["duke"], target=["market"])
    layout = resolve_layout(spec, pool, source="p.yaml")
    np.testing.assert_array_equal(layout.train_classes, [0])
    np.testing.assert_array_equal(layout.target_train_classes, [2, 3])
    np.testing.assert_array_equal(layout.test_classes, [4, 5])


def test_concat_images_index_like_one_array() -> None:
    parts = [np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) + 100 * i
             for i in range(2)]
    joined = ConcatImages(parts)
    whole = np.concatenate(parts)
    assert joined.shape == whole.shape and len(joined) == 4
    np.testing.assert_array_equal(joined[np.array([3, 0, 2])], whole[[3, 0, 2]])
    np.testing.assert_array_equal(joined[1], whole[1])
    np.testing.assert_array_equal(joined[1:3], whole[1:3])
    np.testing.assert_array_equal(joined.select(np.array([1, 2]))[np.array([0, 1])], whole[1:3])
    assert joined.fingerprint() != ConcatImages(parts[::-1]).fingerprint()


# -- refusals before any training ----------------------------------------------------------

@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"methods": [{"name": "e", "method": "ecn"}]}, "methods.0.method",
     "ecn needs unlabeled target, which setting 'dml' does not give (it runs in: uda)"),
    ({"setting": {"kind": "dg", "source": ["sans", "serif"], "target": ["stix"]},
      "methods": [{"name": "s", "method": "spcl"}]}, "methods.0.method",
     "spcl needs unlabeled target, which setting 'dg' does not give"),
    ({"methods": [{"name": "p", "method": "ptl"}]}, "methods.0.method",
     "cached pooled features (model.trunk: none) cannot serve it"),
    ({"methods": [{"name": "d", "method": "dimn"}],
      "train": {"m_per_class": 1, "batch_size": 32}}, "train.m_per_class",
     "DIMN needs at least 2 images per identity"),
    ({"setting": {"kind": "uda", "source": ["sans"]}}, "setting",
     "needs non-empty `source` and `target` lists"),
    ({"setting": {"kind": "uda", "source": ["sans"], "target": ["sans"]}}, "setting",
     "sans is both source and target"),
    ({"setting": {"kind": "dml", "source": ["sans"]}}, "setting",
     "`source` and `target` need `kind: uda` or `kind: dg`"),
    ({"setting": UDA, "split": {"kind": "fid_sequence"}}, "",
     "runs on the datasets' own split only"),
    ({"setting": UDA, "evaluation": {"primary": "r_precision"}}, "",
     "evaluation.primary 'r_precision' is not reported in setting 'uda'"),
])
def test_setting_refusals(write_protocol, changes, field, reason) -> None:
    path = write_protocol(changes)
    with pytest.raises(BenchError) as caught:
        plan_protocol(path)
    assert caught.value.field == (field or None) or field in str(caught.value)
    assert reason in caught.value.reason


def test_uda_run_end_to_end(write_protocol, tmp_path: Path) -> None:
    """A tiny uda protocol through the runner: re-ID metrics, `data used` per method."""
    path = write_protocol({
        "setting": UDA,
        "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 48}},
        "train": {"iterations": 6, "batch_size": 16, "m_per_class": 4, "validate_every": 3,
                  "checkpoint": "last"},
        "methods": [
            {"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
            {"name": "ecn", "method": "ecn"},
            {"name": "spcl", "method": "spcl", "params": {"k1": 6, "k2": 3}},
            {"name": "dimn", "method": "dimn"},
        ],
    })
    summary, failures = run_protocol(path, RunOptions(results_root=tmp_path, progress=False))
    assert failures == {}
    frame = pd.read_csv(tmp_path / "tiny" / "results.csv")
    assert set(frame["metric"]) == {"cmc_1", "cmc_5", "cmc_10", "mAP"}
    assert set(frame["setting"]) == {"uda"}
    data = frame.groupby("method")["data"].first().to_dict()
    assert data == {"contrastive": "labeled source", "dimn": "labeled source",
                    "ecn": "labeled source + unlabeled target",  # features: no views
                    "spcl": "labeled source + unlabeled target"}
    text = summary.read_text()
    assert "| method | n | cmc_1 | cmc_5 | cmc_10 | mAP | hyperparameters | data used |" in text
    assert "Setting `uda`: source sans, serif, target mono, stix" in text


def test_junk_classes_are_ignored_in_reid_scoring() -> None:
    """Market-1501's junk identity (-1) is dropped from the ranking, also after pooling."""
    from bench.experiment import reid_ids

    a = _tiny("duke", 2)
    b = ImageDataset(**{**_tiny("market", 3).__dict__, "meta": {"junk_label": 1}})
    pool = merge_datasets([a, b])
    assert pool.meta["junk_labels"] == [3]
    ids = reid_ids(pool, np.arange(len(pool.labels)))
    np.testing.assert_array_equal(ids, [0, 0, 1, 1, 2, 2, -1, -1, 4, 4])


@pytest.mark.parametrize("name", ["uda_glyphs", "dg_glyphs", "uda_emoji", "duke_to_market",
                                  "market_to_duke"])
def test_setting_protocols_validate_and_dry_run(name: str) -> None:
    """The shipped uda/dg protocols are valid and plan without data (GPU ones: no datasets)."""
    from bench.methods import method_class
    from bench.plan_text import describe_plan

    root = Path(__file__).resolve().parents[1] / "protocols"
    plan = plan_protocol(root / f"{name}.yaml")
    text = describe_plan(plan)
    p = plan.protocol
    assert p.setting.kind in ("uda", "dg")
    runs = sum((p.budget.trials * p.folds if m.search else 0) + p.reproductions * p.folds
               for m in p.methods)  # unsearched entries (the ablations) only retrain
    assert f"total: {runs} training runs" in text
    names = {m.method for m in p.methods}
    if p.setting.kind == "uda":  # the four re-ID methods and >= 4 PML baselines
        assert {"ecn", "spcl", "dimn", "ptl"} <= names
        assert sum(m.method == "pml_loss" for m in p.methods) >= 4
    else:
        assert not any("unlabeled_target" in method_class(m).requires for m in names)
    for m in p.methods:  # every adaptation method is paired with its own ablation
        if m.method in ("ecn", "spcl") and m.ablation_of is None:
            assert any(a.ablation_of == m.name for a in p.methods), m.name


def test_ablation_protocol_pairs_each_method_with_itself(write_protocol) -> None:
    root = Path(__file__).resolve().parents[1] / "protocols"
    p = plan_protocol(root / "uda_glyph_cameras.yaml").protocol
    pairs = {m.name: m.ablation_of for m in p.methods if m.ablation_of}
    assert pairs == {"ecn_source_only": "ecn", "spcl_source_only": "spcl"}
    by_name = {m.name: m for m in p.methods}
    assert all(by_name[a].method == by_name[m].method for a, m in pairs.items())
    assert p.reproductions >= 3
    with pytest.raises(BenchError, match="ablation_of 'nope'"):
        plan_protocol(write_protocol({"methods": [
            {"name": "a", "params": {"loss": "ContrastiveLoss"}, "ablation_of": "nope"}]}))
