"""protocols/reality_check.yaml: valid, its dry run plans 14 losses x 3 datasets x 4 folds x 50
trials without any dataset or weight file present, and it builds the Reality Check model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.data import dataset_info
from bench.experiment import CenterCrop, Inputs, build_model
from bench.methods import method_class, validate_method
from bench.models import FrozenBatchNorm, Normalize
from bench.protocol import load_protocol

PROTOCOL = Path(__file__).resolve().parents[1] / "protocols" / "reality_check.yaml"
DATASETS = {"cub200", "cars196", "sop"}
LOSSES = {"ContrastiveLoss", "TripletMarginLoss", "NTXentLoss", "ProxyNCALoss", "MarginLoss",
          "NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss", "FastAPLoss",
          "SignalToNoiseRatioContrastiveLoss", "MultiSimilarityLoss", "SoftTripleLoss"}


@pytest.fixture(autouse=True)
def nothing_present(tmp_path: Path, monkeypatch) -> None:
    """No dataset under $BENCH_DATA, no network for weights: planning must not need either."""
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "no-data"))

    def no_download(*args, **kwargs):
        raise AssertionError("planning must not fetch weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)


def test_validate_passes(capsys) -> None:
    assert not any(dataset_info(name)["available"] for name in DATASETS)
    assert main(["validate", str(PROTOCOL)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "cub200, cars196, sop" in out
    assert "14 methods" in out and "4 fold(s)" in out and "50 trials" in out


def test_dry_run_plans_14_losses_x_3_datasets(capsys) -> None:
    assert main(["run", str(PROTOCOL), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "folds: 4" in out and "budget: 50 completed trials per method (tpe" in out
    assert "reproductions: 10" in out and "backbone bn_inception" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if re.match(r"\| (cub200|cars196|sop) \|", line)]
    assert len(rows) == 42
    assert {r[0].strip() for r in rows} == DATASETS
    assert {r[1].strip() for r in rows} == {"1"}  # one (standard) split per dataset
    assert len({r[2].strip() for r in rows}) == 14
    assert all(int(r[4]) == 50 * 4 and int(r[5]) == 10 * 4 for r in rows)
    assert "total: 10080 training runs" in out


def test_settings_are_the_reality_check() -> None:
    p, _ = load_protocol(PROTOCOL)
    assert [d.name for d in p.dataset_specs] == ["cub200", "cars196", "sop"]
    assert all(d.options == {"image_size": 256} for d in p.dataset_specs)
    m = p.model
    assert (m.backbone, m.pretrained, m.trunk, m.embedding_size, m.head_hidden) == (
        "bn_inception", True, "all", 128, 0)
    assert m.freeze_batchnorm and not m.freeze_batchnorm_affine
    t = p.train
    assert (t.batch_size, t.m_per_class, t.iterations) == (32, 4, 100_000)
    for opt in (t.optimizer, t.loss_optimizer):
        assert (opt.name, opt.momentum, opt.weight_decay) == ("rmsprop", 0.9, 1e-4)
    assert t.optimizer.lr == 1e-6 and t.schedule.name == "constant"
    a = t.augmentation
    assert (a.random_resized_crop_scale, a.random_resized_crop_ratio) == ((0.16, 1.0),
                                                                           (0.75, 1.33))
    assert (a.crop_size, a.horizontal_flip) == (227, 0.5)
    assert (t.validate_every, t.patience) == (200, 5)  # 2 epochs of 100, patience 9 epochs
    assert (p.folds, p.budget.trials, p.reproductions) == (4, 50, 10)
    assert p.split.validation_fraction is None  # the 4 validation blocks tile train+val
    assert p.evaluation.primary == "mean_average_precision_at_r"
    assert {x.params["loss"] for x in p.methods} == LOSSES
    assert len(p.methods) == 14


def test_loss_lr_is_searched_exactly_where_the_loss_has_parameters() -> None:
    p, _ = load_protocol(PROTOCOL)
    for spec in p.methods:
        parsed = validate_method(spec.method, spec.params, source="t", field=spec.name)
        loss = method_class(spec.method)(parsed, num_classes=10, embedding_size=128)
        learns = bool(loss.parameters())
        assert learns == ("loss_optimizer.lr" in spec.search), spec.name
        if "loss_optimizer.lr" in spec.search:
            dim = spec.search["loss_optimizer.lr"]
            assert (dim.type, dim.low, dim.high) == ("log_float", 1e-6, 1.0)
        if spec.name == "margin_per_class":
            assert loss.loss_fn.beta.shape == (10,)
        if spec.name == "margin":
            assert loss.loss_fn.beta.numel() == 1


@torch.no_grad()
def test_model_is_bn_inception_with_frozen_statistics() -> None:
    p, _ = load_protocol(PROTOCOL)
    p = p.model_copy(update={"model": p.model.model_copy(update={"pretrained": False})})
    model = build_model(p, Inputs(torch.zeros(1), 1024, "random-init", frozen=False))
    crop, normalize, frozen = model.trunk
    assert isinstance(crop, CenterCrop) and crop.size == 227
    assert isinstance(normalize, Normalize) and normalize.bgr
    assert normalize.mean.flatten().tolist() == [104.0, 117.0, 128.0]
    assert isinstance(frozen, FrozenBatchNorm)
    assert model.head.net.in_features == 1024 and model.head.net.out_features == 128
    model.train()
    bns = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 69 and not any(b.training for b in bns)
    assert all(b.weight.requires_grad for b in bns)  # PML freeze_trunk_batchnorm: eval only
    out = model(torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8))
    assert out.shape == (2, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
