"""A file-backed dataset trains through the image path without being loaded whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.data import load_dataset
from bench.experiment import LazyImageTensor

pytestmark = pytest.mark.slow


def make_tree(root: Path, classes: int = 12, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            folder = root / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_lazy_tensor_selects_without_decoding(tmp_path: Path) -> None:
    ds = load_dataset("folder", root=str(make_tree(tmp_path / "data")), image_size=16)
    assert not isinstance(ds.images, np.ndarray)
    lazy = LazyImageTensor(ds.images)
    subset = lazy[ds.labels < 3]
    assert isinstance(subset, LazyImageTensor) and len(subset) == 18
    batch = subset[np.array([0, 5, 17])]
    assert tuple(batch.shape) == (3, 16, 16, 3) and str(batch.dtype) == "torch.uint8"
    assert tuple(subset[0:2].shape) == (2, 16, 16, 3)


def test_folder_dataset_trains_last_stage(write_protocol, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data")
    protocol = write_protocol({
        "dataset": {"name": "folder", "options": {"root": str(root), "image_size": 32}},
        "model": {"backbone": "resnet18", "pretrained": False, "trunk": "last_stage",
                  "embedding_size": 8, "head_hidden": 0},
        "train": {"iterations": 3, "batch_size": 8, "m_per_class": 2, "validate_every": 3},
        "evaluation": {"nmi": False},
        "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"}}],
    })
    assert main(["run", str(protocol), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    rows = pd.read_csv(tmp_path / "r" / "tiny" / "results.csv")
    assert set(rows["dataset"]) == {"folder"} and rows["value"].between(0, 1).all()
