"""PTL: BConv states carry between training batches, never between test images; wiring and
errors; a short training run stays finite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import Batch, TrainData
from bench.methods.ptl import PTL
from bench.models import EmbeddingHead, EmbeddingModel, FrozenBatchNorm, Normalize, build_trunk
from bench.models.batchnorm import batchnorm_layers
from bench.models.bconv import BConvCell, PTLModel
from bench.protocol import TrainSpec
from bench.train import train

CPU = torch.device("cpu")


def make_method(params: dict | None = None) -> PTL:
    parsed = PTL.validate_params(params or {"cell_channels": 8}, source="test",
                                 field="methods.0.params")
    return PTL(parsed, num_classes=3, embedding_size=8)


def harness_model(backbone: str = "mobilenet_v2", *, frozen_bn: bool = False) -> EmbeddingModel:
    """The harness's layout: Sequential(crop, Normalize, network) + EmbeddingHead."""
    trunk = build_trunk(backbone, pretrained=False)
    network = FrozenBatchNorm(trunk.network) if frozen_bn else trunk.network
    return EmbeddingModel(EmbeddingHead(trunk.feature_size, 8, 16),
                          nn.Sequential(nn.Identity(), Normalize(), network))


def wrapped(backbone: str = "mobilenet_v2", **kwargs) -> tuple[PTL, PTLModel]:
    torch.manual_seed(0)
    method = make_method()
    model = method.wrap_model(harness_model(backbone, **kwargs), backbone=backbone)
    method.setup(model, TrainData(), embed=lambda m, x: np.zeros(0),
                 generator=torch.Generator().manual_seed(0))
    return method, model


def images(seed: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)


def cells(model: nn.Module) -> list[BConvCell]:
    return [m for m in model.modules() if isinstance(m, BConvCell)]


def test_state_carries_between_training_batches() -> None:
    method, model = wrapped()
    a, a_other, b = images(1), images(2), images(3)
    model.train()
    with torch.no_grad():
        model(a)
        after_a = model(b)
        method.on_epoch(1, model, TrainData(), embed=lambda m, x: np.zeros(0))
        model(a_other)
        after_other = model(b)
        method.on_epoch(2, model, TrainData(), embed=lambda m, x: np.zeros(0))
        model(a)
        again = model(b)
    assert not torch.allclose(after_a, after_other)
    torch.testing.assert_close(after_a, again)  # the difference is the carried state only


def test_eval_features_do_not_depend_on_what_came_before() -> None:
    _, model = wrapped()
    x, y, z = images(4), images(5), images(6)
    model.train()
    with torch.no_grad():
        model(images(7))  # leaves a training state behind
    training_states = [c.state for c in cells(model)]
    assert all(s is not None for s in training_states)
    model.eval()
    with torch.no_grad():
        model(y)
        after_y = model(x)
        model(z)
        after_z = model(x)
        alone = model(x[:1])
    assert torch.equal(after_y, after_z)
    torch.testing.assert_close(alone, after_y[:1], rtol=0, atol=1e-5)  # batch-mates too
    # evaluation neither read nor replaced the training state
    assert all(c.state is s for c, s in zip(cells(model), training_states, strict=True))


def test_on_epoch_resets_and_smaller_batch_slices_state() -> None:
    method, model = wrapped()
    model.train()
    with torch.no_grad():
        model(images(8, n=4))
        assert {c.state.shape[0] for c in cells(model)} == {4}
        model(images(9, n=2))
        assert {c.state.shape[0] for c in cells(model)} == {2}
    method.on_epoch(1, model, TrainData(), embed=lambda m, x: np.zeros(0))
    assert all(c.state is None for c in cells(model))

    # one cell: a smaller batch reads the first rows; a larger one starts from zero
    torch.manual_seed(0)
    cell = BConvCell(3, 2).train()
    first, second, third = torch.randn(4, 3, 5, 5), torch.randn(2, 3, 5, 5), torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        cell(first)
        carried = cell.state.clone()
        out = cell(second)
        i, f, o, g = cell.gates(second).chunk(4, 1)
        c = torch.sigmoid(f) * carried[:2] + torch.sigmoid(i) * torch.tanh(g)
        torch.testing.assert_close(out, torch.sigmoid(o) * torch.tanh(c))
        larger = cell(third)
        fresh = cell.eval()(third)
    torch.testing.assert_close(larger, fresh)


def test_errors_name_the_field() -> None:
    method = make_method()
    with pytest.raises(BenchError) as error:
        method.wrap_model(EmbeddingModel(EmbeddingHead(16, 8)), backbone="mobilenet_v2")
    assert error.value.field == "model.trunk"
    dummy = EmbeddingModel(EmbeddingHead(16, 8), nn.Sequential(nn.Identity(), nn.Linear(3, 3)))
    with pytest.raises(BenchError) as error:
        method.wrap_model(dummy, backbone="bn_inception")
    assert error.value.field == "model.backbone"
    for params, key in [({"margin": 0}, "margin"), ({"nope": 1}, "nope"),
                        ({"cell_kernel_size": 2}, "cell_kernel_size"),
                        ({"triplet_weight": 0, "ce_weight": 0}, "triplet_weight")]:
        with pytest.raises(BenchError) as error:
            PTL.validate_params(params, source="p.yaml", field="methods.0.params")
        assert error.value.field == f"methods.0.params.{key}"


def test_resnet18_backbone_unchanged_and_frozen_batchnorm_kept() -> None:
    _, model = wrapped("resnet18", frozen_bn=True)
    model.train()
    assert not any(layer.training for layer in batchnorm_layers(model.trunk))
    assert model.stream.training
    x = images(10)
    with torch.no_grad():
        out = model(x)
        backbone, _ = model.features(x)
        torch.testing.assert_close(backbone, model.trunk(x), rtol=0, atol=0)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_three_iteration_run_stays_finite() -> None:
    torch.manual_seed(0)
    method = make_method()
    model = method.wrap_model(harness_model(), backbone="mobilenet_v2")
    labels = np.repeat(np.arange(3), 4)
    data = TrainData(source=images(11, n=12), labels=labels, num_classes=3,
                     kinds=frozenset({"labeled"}))
    spec = TrainSpec(iterations=3, batch_size=4, m_per_class=2, validate_every=1, patience=5)
    result = train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=CPU,
                   progress=False)
    assert result.iterations_run == 3
    losses = [h["loss"] for h in result.history[1:]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert not any(k.endswith(".state") for k in result.best_state)  # states stay out
    assert all(c.state is not None for c in cells(model))
    model.eval()
    with torch.no_grad():
        assert model(data.source).isfinite().all()


def test_carry_state_false_resets_before_every_training_forward() -> None:
    """The carry-over mechanism is what makes a batch's loss depend on the previous batch;
    ``carry_state: false`` (the authors' script after its first evaluation) removes exactly that."""
    labels = torch.tensor([0, 0, 1, 1])
    losses = {}
    for carry in (True, False):
        torch.manual_seed(0)
        method = PTL(PTL.validate_params({"cell_channels": 8, "carry_state": carry},
                                         source="t", field="p"), num_classes=3, embedding_size=8)
        model = method.wrap_model(harness_model(), backbone="mobilenet_v2")
        method.setup(model, TrainData(), embed=lambda m, x: np.zeros(0),
                     generator=torch.Generator().manual_seed(0))
        model.train()
        with torch.no_grad():
            first = float(method.loss(model, Batch(epoch=0, step=1, source=images(12),
                                                   labels=labels)))
            after_a = float(method.loss(model, Batch(epoch=0, step=2, source=images(13),
                                                     labels=labels)))
            method.on_epoch(1, model, TrainData(), embed=lambda m, x: np.zeros(0))
            alone = float(method.loss(model, Batch(epoch=1, step=3, source=images(13),
                                                   labels=labels)))
        losses[carry] = (first, after_a, alone)
    assert losses[True][1] != pytest.approx(losses[True][2], abs=1e-6)  # carried state mattered
    assert losses[False][1] == pytest.approx(losses[False][2], abs=1e-6)  # no carry: same
