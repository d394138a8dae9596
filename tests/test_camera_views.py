"""ECN's camera views never come from identity labels (issue 12, item 1).

For the `uda` layout of every embedded protocol: a view of a target row is made from that row's
own image and camera ids only. Checked three ways: no view is another row of the same identity;
shuffling the identity labels changes no view; views are exact where the dataset records its
imaging conditions. Also: the views code cannot receive labels, and any other declaration is
refused before training.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.data import glyph_cameras, load_dataset
from bench.data.camera_style import CameraViews, ColourStatistics, ImagingConditions
from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.methods import method_class
from bench.protocol import SettingSpec, parse_protocol
from bench.settings import build_camera_views, fold_rows, resolve_layout
from bench.splits import ClassSplit

ROOT = Path(__file__).resolve().parents[1] / "protocols"
EMBEDDED = ("glyphs", "emoji", "glyph_cameras")
#: classes loaded per protocol: the property is structural, a prefix of the classes shows it
MAX_CLASSES = 24


def embedded_uda_protocols() -> list[str]:
    names = []
    for path in sorted(ROOT.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if (isinstance(raw, dict) and raw.get("setting", {}).get("kind") == "uda"
                and raw.get("dataset", {}).get("name") in EMBEDDED):
            names.append(path.stem)
    return names


def test_every_embedded_uda_protocol_is_covered() -> None:
    assert {"uda_glyphs", "uda_emoji", "uda_glyph_cameras"} <= set(embedded_uda_protocols())


def ecn_views(raw: dict, ds: ImageDataset):
    protocol = parse_protocol(raw)
    layout = resolve_layout(protocol.setting, ds, source=raw["name"])
    assert "camera_views" in layout.kinds
    fold = ClassSplit("all", layout.train_classes, np.array([], np.int64), layout.test_classes)
    consumed = method_class("ecn").consumed(layout.kinds)
    rows = fold_rows(layout, ds, torch.from_numpy(ds.images), fold, consumed)
    assert "camera_views" in rows.data.kinds
    return layout, rows


def all_views(views: CameraViews, images: torch.Tensor, cameras: np.ndarray) -> torch.Tensor:
    """(cameras, rows, H, W, 3): every target row rendered as every view camera."""
    return torch.stack([views.restyle(images, cameras, np.full(len(cameras), c))
                        for c in views.cameras])


@pytest.mark.parametrize("name", embedded_uda_protocols())
def test_no_camera_view_is_another_row_of_the_same_identity(name: str) -> None:
    raw = yaml.safe_load((ROOT / f"{name}.yaml").read_text())
    options = {**raw["dataset"].get("options", {}), "max_classes": MAX_CLASSES}
    raw["dataset"]["options"] = options
    ds = load_dataset(raw["dataset"]["name"], **options)
    layout, rows = ecn_views(raw, ds)
    data = rows.data
    target = torch.from_numpy(ds.images[rows.target_rows])
    cameras = ds.cameras[rows.target_rows]
    labels = ds.labels[rows.target_rows]
    views = all_views(data.camera_views, target, cameras)
    assert len(data.camera_views.cameras) >= 2

    # 1. no view is byte-equal to ANOTHER row with the same identity label (the old leak made
    #    every view exactly that); exact re-imaging of the same picture may reproduce the
    #    dataset's own row of that picture under camera c, which is what a camera view is:
    #    there, the check is that the view needs no other row (3.)
    flat = target.reshape(len(target), -1)
    exact = layout.views == "imaging_conditions"
    for i in range(len(target)):
        same = np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
        for c, camera in enumerate(data.camera_views.cameras):
            if camera == cameras[i]:
                continue
            hit = (flat[same] == views[c, i].reshape(1, -1)).all(dim=1)
            if not exact:
                assert not hit.any(), f"{name}: view of row {i} is another row of its identity"

    # 2. shuffling the identity labels changes no view: the views never saw the labels
    shuffled = ds.labels.copy()
    target_index = np.flatnonzero(rows.target_rows if rows.target_rows.dtype == bool
                                  else np.isin(np.arange(len(ds.labels)), rows.target_rows))
    shuffled[target_index] = np.random.default_rng(0).permutation(shuffled[target_index])
    other = dataclasses.replace(ds, labels=shuffled)
    _, rows2 = ecn_views(raw, other)
    np.testing.assert_array_equal(rows2.target_rows, rows.target_rows)
    assert torch.equal(all_views(rows2.data.camera_views, target, cameras), views)

    # 3. a view is a function of the row's own image: with every other row of the
    #    identity replaced by noise, the view maker's input for row i is unchanged and so is its
    #    view (imaging conditions need no other row at all)
    if exact:
        noisy = target.clone()
        first = labels == labels[0]
        first[0] = False
        noisy[torch.as_tensor(first)] = torch.randint(0, 256, noisy[torch.as_tensor(first)].shape,
                                                      dtype=torch.uint8)
        again = build_camera_views(layout.views, noisy, cameras, ds.meta.get("camera_conditions"))
        assert torch.equal(all_views(again, noisy[:1], cameras[:1]), views[:, :1])


def test_the_views_code_cannot_receive_labels() -> None:
    for fn in (build_camera_views, ColourStatistics.fit, ImagingConditions.from_conditions,
               CameraViews.draw, CameraViews.restyle):
        params = set(inspect.signature(fn).parameters)
        assert not params & {"labels", "label", "identities", "ds", "dataset"}, fn


def test_imaging_condition_views_are_the_picture_under_the_other_camera() -> None:
    """glyph_cameras: a view of row (picture p, camera a) as camera b is p imaged by camera b,
    recovered from that one image (within rounding of the stored uint8 image)."""
    ds = load_dataset("glyph_cameras", image_size=16, max_classes=3)
    views = ImagingConditions.from_conditions(ds.meta["camera_conditions"], ds.cameras)
    rng = np.random.default_rng(0)
    for _ in range(20):
        label = rng.integers(3)
        rows = np.flatnonzero(ds.labels == label)
        font = rng.integers(len(glyph_cameras.FONT_INDEX))
        per_font = rows.reshape(len(glyph_cameras.FONT_INDEX), len(glyph_cameras.CAMERAS))[font]
        a, b = rng.choice(len(glyph_cameras.CAMERAS), 2, replace=False)
        image = torch.from_numpy(ds.images[per_font[a]][None])
        view = views.restyle(image, np.array([a]), np.array([b]))[0].numpy().astype(int)
        truth = ds.images[per_font[b]].astype(int)
        assert np.abs(view - truth).max() <= 3  # rounding of x_a, scaled by gain_b / gain_a


def test_colour_statistics_undo_a_per_channel_affine_camera() -> None:
    """Cameras differing by an affine colour change: the statistics transfer is that change."""
    g = torch.Generator().manual_seed(0)
    pictures = torch.randint(30, 220, (40, 6, 6, 1), generator=g).float().expand(-1, -1, -1, 3)
    gain = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.8, 0.3]])
    offset = torch.tensor([[0.0, 0.0, 0.0], [100.0, 20.0, 60.0]])
    cameras = np.repeat([0, 1], 20)
    images = (pictures * gain[cameras][:, None, None] + offset[cameras][:, None, None]).round()
    images = images.to(torch.uint8)
    views = ColourStatistics.fit(images, cameras)
    back = views.restyle(images[20:], cameras[20:], np.zeros(20, np.int64)).int()
    assert (back - pictures[20:].round().int()).abs().max() <= 4


def test_a_label_based_view_declaration_is_refused() -> None:
    ds = load_dataset("glyphs", image_size=16, max_classes=8)
    spec = SettingSpec(kind="uda", source=["sans"], target=["mono"])
    for declared in (True, "same_identity"):
        bad = dataclasses.replace(ds, meta={**ds.meta, "camera_views": declared})
        with pytest.raises(BenchError, match="target labels") as error:
            resolve_layout(spec, bad, source="p.yaml")
        assert error.value.field == "dataset"
    assert "camera_views" not in resolve_layout(
        spec, dataclasses.replace(ds, meta={**ds.meta, "camera_views": False}),
        source="p.yaml").kinds
