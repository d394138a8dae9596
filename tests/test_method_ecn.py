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
