"""Learning check: on a small fixed-seed `uda` run each re-ID method improves target mAP over
its own untrained starting point (the same network before its first step).

The target test set is scored here as the "validation" only to read the learning curve: the
runner never does that (it validates on held-out source identities).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.augment import make_augment
from bench.data import load_dataset
from bench.experiment import build_model, prepare_inputs, score_rows
from bench.methods import method_class, validate_method
from bench.protocol import parse_protocol
from bench.seeding import seed_everything
from bench.settings import evaluation_rows, fold_rows, resolve_layout
from bench.splits import ClassSplit
from bench.train import train

PROTOCOL = {
    "name": "learning_check",
    "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 160}},
    "setting": {"kind": "uda", "source": ["sans", "serif"], "target": ["mono", "stix"]},
    "model": {"backbone": "mobilenet_v2", "trunk": "last_stage", "freeze_batchnorm": True,
              "embedding_size": 64, "head_hidden": 256},
    "train": {"iterations": 120, "batch_size": 32, "m_per_class": 4, "validate_every": 40,
              "checkpoint": "last", "optimizer": {"name": "adam", "lr": 3.0e-4}},
    "methods": [{"name": "unused", "params": {"loss": "ContrastiveLoss"}}],
}
PARAMS = {"ecn": {}, "spcl": {}, "dimn": {"logit_scale": 30.0}, "ptl": {}}


@pytest.fixture(scope="module")
def setup():
    protocol = parse_protocol(PROTOCOL)
    options = PROTOCOL["dataset"]["options"]
    ds = load_dataset("glyphs", **options)
    layout = resolve_layout(protocol.setting, ds, source="learning_check")
    inputs = prepare_inputs(protocol, ds, torch.device("cpu"), progress=False)
    return protocol, ds, layout, inputs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ecn", "spcl", "dimn", "ptl"])
def test_method_improves_target_map_over_its_start(setup, name: str) -> None:
    protocol, ds, layout, inputs = setup
    device = torch.device("cpu")
    fold = ClassSplit("all", layout.train_classes, np.array([], np.int64), layout.test_classes)
    cls = method_class(name)
    parsed = validate_method(name, PARAMS[name], source="test", field="methods.0")
    seed_everything(0)
    rows = fold_rows(layout, ds, inputs.tensor, fold, cls.consumed(layout.kinds))
    plugin = cls(parsed, num_classes=rows.data.num_classes,
                 embedding_size=protocol.model.embedding_size)
    model = plugin.wrap_model(build_model(protocol, inputs), backbone="mobilenet_v2")
    query, gallery = evaluation_rows(layout, ds, fold.test)

    def target_map(m: torch.nn.Module) -> float:
        return score_rows(m, plugin, ds, inputs, query, gallery, nmi=False, seed=0,
                          batch_size=256, device=device)["mAP"]

    result = train(model, plugin, rows.data, protocol.train, validate=target_map, seed=0,
                   device=device, augment=make_augment(protocol.train.augmentation),
                   progress=False)
    start, end = result.history[0]["score"], result.history[-1]["score"]
    assert result.history[-1]["iteration"] == protocol.train.iterations
    assert end > start + 0.02, f"{name}: target mAP {start:.4f} -> {end:.4f}"
