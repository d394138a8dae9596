"""The standard split follows a dataset's own roles where it defines them (SOP's list files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from real_layouts import make_sop

from bench.data import load_dataset
from bench.data.real.prepare import open_dataset
from bench.splits.named import standard


def test_standard_split_uses_roles(tmp_path: Path) -> None:
    ds = open_dataset("sop", make_sop(tmp_path), image_size=12)
    (split,) = standard(ds)
    np.testing.assert_array_equal(split.train, np.unique(ds.labels[ds.roles == "train"]))
    np.testing.assert_array_equal(split.test, np.unique(ds.labels[ds.roles != "train"]))
    assert not set(split.train) & set(split.test)


def test_standard_split_halves_classes_without_roles() -> None:
    ds = load_dataset("glyphs", image_size=16, max_classes=10)
    (split,) = standard(ds)
    assert split.train.tolist() == [0, 1, 2, 3, 4] and split.test.tolist() == [5, 6, 7, 8, 9]
