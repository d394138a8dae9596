"""ECN plug-in: memory update, neighbourhood soft-label loss, params validation, a short run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import Batch, TrainData
from bench.methods.ecn import ECN
from bench.models import EmbeddingHead, EmbeddingModel
from bench.protocol import TrainSpec
from bench.train import train


def make_method(target_rows: int, dim: int, **params) -> ECN:
    """An ECN set up on a dummy target set of ``target_rows`` rows (memory all zeros)."""
    parsed = ECN.validate_params(params, source="test", field="params")
    method = ECN(parsed, num_classes=3, embedding_size=dim)
    data = TrainData(target=torch.zeros(target_rows, dim))
    method.setup(nn.Identity(), data, embed=lambda m, x: x.numpy(),
                 generator=torch.Generator().manual_seed(0))
    return method


def test_memory_update_matches_hand_computation() -> None:
    memory = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    features = np.array([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    index = [2, 0, 2]  # slot 2 twice: sequential updates in batch order
    method = make_method(4, 3, camera_prob=0.0)  # identity "model", no view swap
    method.memory = torch.tensor(memory, dtype=torch.float32)
    batch = Batch(epoch=3, step=1, target=torch.tensor(features, dtype=torch.float32),
                  target_index=torch.tensor(index))
    method.loss(nn.Identity(), batch)
    method.after_step(batch)

    alpha = 0.03  # 0.01 x epoch 3
    expected = memory.copy()
    s0 = alpha * np.array([1.0, 0.0, 0.0]) + (1 - alpha) * np.array([0.6, 0.0, 0.8])
    expected[0] = s0 / np.sqrt(0.612**2 + 0.776**2)  # s0 = [0.612, 0, 0.776]
    s2 = alpha * np.array([0.0, 0.0, 1.0]) + (1 - alpha) * np.array([0.0, 1.0, 0.0])
    s2 = s2 / np.sqrt(0.97**2 + 0.03**2)  # first occurrence: [0, 0.97, 0.03] normalised
    s2 = alpha * s2 + (1 - alpha) * np.array([0.0, 0.6, 0.8])  # second occurrence
    expected[2] = s2 / np.linalg.norm(s2)
    np.testing.assert_allclose(expected[0], [0.619256, 0.0, 0.785190], atol=1e-5)
    np.testing.assert_allclose(method.memory.numpy(), expected, atol=1e-6)


def test_neighbourhood_soft_label_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    memory = rng.normal(size=(6, 3))
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    features = rng.normal(size=(2, 3))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    index = np.array([0, 3])
    memory[index] = features  # as after a visit: the own slot is the most similar one
    beta, k = 0.05, 2

    z = features @ memory.T / beta
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    per_row = []
    for row, own in enumerate(index):
        candidates = [j for j in np.argsort(-z[row]) if j != own][:k]
        weights = np.zeros(6)
        weights[candidates] = 1.0 / k
        weights[own] = 1.0
        per_row.append(-(weights * log_p[row]).sum())
    expected_soft = float(np.mean(per_row))
    expected_ce = float(np.mean([-log_p[r, i] for r, i in enumerate(index)]))

    method = make_method(6, 3, k=k, beta=beta, lam=1.0, camera_prob=0.0)
    method.memory = torch.tensor(memory, dtype=torch.float32)
    feats = torch.tensor(features, dtype=torch.float32)
    for epoch, expected in ((5, expected_soft), (4, expected_ce)):  # neighbours from epoch 5
        batch = Batch(epoch=epoch, step=1, target=feats, target_index=torch.tensor(index))
        got = float(method.loss(nn.Identity(), batch))
        assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("params", "field"), [
    ({"lamda": 0.3}, "params.lamda"),
    ({"lam": 1.5}, "params.lam"),
    ({"camera_prob": 2.0}, "params.camera_prob"),
    ({"beta": 0}, "params.beta"),
])
def test_params_validation_names_the_field(params: dict, field: str) -> None:
    with pytest.raises(BenchError) as caught:
        ECN.validate_params(params, source="protocol.yaml", field="params")
    assert caught.value.field == field
    assert ECN.validate_params({"camera_prob": "auto"}, source="p", field="params").k == 6


def test_short_training_run_stays_finite() -> None:
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(6), 4)
    target = torch.randn(20, 16, generator=g)
    data = TrainData(source=torch.randn(24, 16, generator=g), labels=labels, target=target,
                     num_classes=6, kinds=frozenset({"labeled", "unlabeled_target"}))
    method = ECN(ECN.validate_params({"neighbour_start_epoch": 1}, source="t", field="params"),
                 num_classes=6, embedding_size=8)
    model = EmbeddingModel(EmbeddingHead(16, 8, 0))
    spec = TrainSpec(iterations=9, batch_size=8, m_per_class=4, validate_every=3, patience=10)
    result = train(model, method, data, spec, validate=lambda m: 0.0, seed=0,
                   device=torch.device("cpu"), progress=False)
    assert result.iterations_run == 9  # 3 epochs of ceil(20 / 8) steps: neighbours in 1 and 2
    assert all(math.isfinite(h["loss"]) for h in result.history[1:])
    visited = method.memory.norm(dim=1) > 0
    assert visited.any()
    torch.testing.assert_close(method.memory[visited].norm(dim=1),
                               torch.ones(int(visited.sum())))


def test_photometric_fallback_keeps_images_and_is_seeded() -> None:
    images = torch.randint(0, 256, (6, 8, 8, 3), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    outs = []
    for _ in range(2):
        method = make_method(6, 4, camera_prob=1.0)
        batch = Batch(epoch=0, step=1, target=images, target_index=torch.arange(6))
        outs.append(method.target_inputs(batch))
    assert outs[0].dtype == torch.uint8 and outs[0].shape == images.shape
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], images)


# -- camera views (label-free) on the views path ----------------------------------------------

def views_setup(camera_prob) -> tuple[ECN, Batch, object]:
    """Four target images of cameras 0..1, an exact two-camera view maker, a built batch."""
    from bench.data.camera_style import ImagingConditions

    conditions = [{"gain": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]},
                  {"gain": [-0.5, 0.5, 0.25], "offset": [200.0, 10.0, 60.0]}]
    cameras = np.array([0, 1, 0, 1])
    maker = ImagingConditions.from_conditions(conditions, cameras)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (4, 6, 6, 3), generator=g, dtype=torch.uint8)
    parsed = ECN.validate_params({"camera_prob": camera_prob}, source="t", field="params")
    method = ECN(parsed, num_classes=2, embedding_size=3)
    data = TrainData(target=images, target_cameras=cameras, camera_views=maker,
                     kinds=frozenset({"labeled", "unlabeled_target", "camera_views"}))
    method.setup(nn.Identity(), data, embed=lambda m, x: np.zeros((len(x), 3)),
                 generator=torch.Generator().manual_seed(0))
    views = maker.draw(images, cameras, np.random.default_rng(0))
    batch = Batch(epoch=0, step=1, target=images, target_index=torch.arange(4),
                  target_cameras=torch.as_tensor(cameras), target_views=views)
    return method, batch, maker


def test_view_swap_uses_the_camera_views() -> None:
    """camera_prob 1: every target row is replaced by its other-camera view (same index)."""
    method, batch, maker = views_setup(1.0)
    swapped = method.target_inputs(batch)
    assert torch.equal(swapped, batch.target_views)
    assert not torch.equal(swapped, batch.target)
    # the view is the row's own image as the other camera takes it
    other = 1 - batch.target_cameras.numpy()
    assert torch.equal(swapped, maker.restyle(batch.target, batch.target_cameras.numpy(), other))
    method0, batch0, _ = views_setup(0.0)
    assert torch.equal(method0.target_inputs(batch0), batch0.target)


def test_auto_swap_probability_is_c_minus_one_over_c() -> None:
    method, batch, _ = views_setup("auto")
    np.testing.assert_allclose(method.view_prob.numpy(), 0.5)  # 2 target cameras
    swaps = 0
    for _ in range(200):
        out = method.target_inputs(batch)
        swaps += int(sum(torch.equal(out[i], batch.target_views[i]) for i in range(4)))
    assert 300 < swaps < 500  # 800 draws at p = 1/2


def test_training_loop_feeds_each_row_its_own_view(monkeypatch) -> None:
    """Through the loop: each step's views are the step's target rows re-imaged by another
    camera (never another row), and ECN trains on them."""
    from bench.data.camera_style import ImagingConditions

    g = torch.Generator().manual_seed(0)
    cameras = np.tile([0, 1, 2], 4)
    target = torch.randint(0, 256, (12, 4, 4, 3), generator=g, dtype=torch.uint8)
    conditions = [{"gain": [1.0] * 3, "offset": [0.0] * 3},
                  {"gain": [0.5] * 3, "offset": [100.0] * 3},
                  {"gain": [-0.5, 0.5, 0.5], "offset": [200.0, 0.0, 50.0]}]
    maker = ImagingConditions.from_conditions(conditions, cameras)
    data = TrainData(source=torch.randint(0, 256, (12, 4, 4, 3), generator=g,
                                          dtype=torch.uint8),
                     labels=np.repeat(np.arange(3), 4), target=target, target_cameras=cameras,
                     camera_views=maker, num_classes=3,
                     kinds=frozenset({"labeled", "unlabeled_target", "camera_views"}))
    seen = []
    original = ECN.target_inputs

    def spy(self, batch):
        seen.append((batch.target.clone(), batch.target_index.clone(), batch.target_views.clone(),
                     batch.target_cameras.clone()))
        return original(self, batch)

    monkeypatch.setattr(ECN, "target_inputs", spy)
    method = ECN(ECN.validate_params({}, source="t", field="params"), num_classes=3,
                 embedding_size=4)

    class Floats(nn.Module):  # a stand-in trunk: uint8 images -> flat floats
        def forward(self, x):
            return x.float().flatten(1) / 255

    model = EmbeddingModel(EmbeddingHead(48, 4, 0), Floats())
    spec = TrainSpec(iterations=3, batch_size=4, m_per_class=4, validate_every=3)
    train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=torch.device("cpu"),
          progress=False)
    assert len(seen) == 3
    for images, index, views, cams in seen:
        assert torch.equal(images, target[index])
        cams = cams.numpy()
        for i in range(len(index)):
            candidates = [maker.restyle(images[i:i + 1], cams[i:i + 1], np.array([c]))[0]
                          for c in (0, 1, 2) if c != cams[i]]
            assert any(torch.equal(views[i], c) for c in candidates)
    assert (method.memory.norm(dim=1) > 0).any()  # the memory was updated from the views


def test_lam_zero_is_the_source_only_ablation() -> None:
    method = make_method(4, 3, lam=0.0, camera_prob=0.0)
    batch = Batch(epoch=3, step=1, target=torch.eye(3)[[0, 1, 2, 0]],
                  target_index=torch.arange(4), source=torch.eye(3)[[0, 1]],
                  labels=torch.tensor([0, 1]))
    loss = method.loss(nn.Identity(), batch)
    expected = torch.nn.functional.cross_entropy(method.classifier(batch.source), batch.labels)
    torch.testing.assert_close(loss, expected)
    method.after_step(batch)
    assert float(method.memory.abs().sum()) == 0.0  # no target term: the memory never moves
