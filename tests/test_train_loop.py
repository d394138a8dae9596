"""The one training loop: seeded batches, real best-state copies, early stopping, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.methods import validate_method
from bench.methods.base import TrainData
from bench.methods.pml_loss import PmlLoss
from bench.models import EmbeddingHead, EmbeddingModel
from bench.protocol import TrainSpec
from bench.train import DivergedError, batch_indices, embed, snapshot, train

LABELS = np.repeat(np.arange(12), 6)


def toy_inputs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, 16, generator=g)
    return centres[torch.as_tensor(LABELS)] + 0.5 * torch.randn(len(LABELS), 16, generator=g)


def pml(params: dict) -> PmlLoss:
    parsed = validate_method("pml_loss", params, source="test", field="methods.0")
    return PmlLoss(parsed, num_classes=12, embedding_size=8)


def test_batches_are_seeded_and_m_per_class() -> None:
    spec = TrainSpec(iterations=5, batch_size=16, m_per_class=4)
    a, b = batch_indices(LABELS, spec, seed=3), batch_indices(LABELS, spec, seed=3)
    assert a.shape == (5, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batch_indices(LABELS, spec, seed=4))
    for batch in a:
        _, counts = np.unique(LABELS[batch], return_counts=True)
        assert set(counts.tolist()) == {4}


def test_snapshot_is_a_real_copy() -> None:
    model = EmbeddingModel(EmbeddingHead(16, 8))
    saved = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    current = model.state_dict()
    assert all(not torch.equal(saved[k], current[k]) for k in saved)


def test_training_improves_and_is_deterministic() -> None:
    inputs = toy_inputs()
    spec = TrainSpec(iterations=40, batch_size=24, m_per_class=4, validate_every=10, patience=10)

    def fit() -> tuple[float, np.ndarray]:
        torch.manual_seed(0)
        model = EmbeddingModel(EmbeddingHead(16, 8, hidden=32))

        def validate(m):
            emb = embed(m, inputs, batch_size=64, device=torch.device("cpu"))
            # fraction of nearest neighbours (self excluded) sharing the label
            d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
            np.fill_diagonal(d, np.inf)
            return float((LABELS[d.argmin(1)] == LABELS).mean())

        data = TrainData(source=inputs, labels=LABELS)
        result = train(model, pml({"loss": "ContrastiveLoss"}), data, spec, validate=validate,
                       seed=0, device=torch.device("cpu"), progress=False)
        model.load_state_dict(result.best_state)
        assert validate(model) == pytest.approx(result.best_score)
        return result.best_score, embed(model, inputs, batch_size=64, device=torch.device("cpu"))

    (score_a, emb_a), (score_b, emb_b) = fit(), fit()
    assert score_a == score_b
    np.testing.assert_array_equal(emb_a, emb_b)


def test_early_stopping_after_patience() -> None:
    scores = iter([0.5, 0.6, 0.55, 0.54, 0.53, 0.9, 0.9])
    spec = TrainSpec(iterations=60, batch_size=24, m_per_class=4, validate_every=10, patience=3)
    model = EmbeddingModel(EmbeddingHead(16, 8))
    data = TrainData(source=toy_inputs(), labels=LABELS)
    result = train(model, pml({"loss": "ContrastiveLoss"}), data, spec,
                   validate=lambda m: next(scores), seed=0, device=torch.device("cpu"),
                   progress=False)
    # validations at 0 (0.5), 10 (0.6 best), 20, 30, 40 (three without improvement) -> stop
    assert result.best_iteration == 10
    assert result.best_score == 0.6
    assert result.iterations_run == 40


def test_diverging_loss_raises() -> None:
    class NaNLoss(PmlLoss):
        def loss(self, model, batch):
            return model(batch.source).sum() * float("nan")

    method = NaNLoss(validate_method("pml_loss", {"loss": "ContrastiveLoss"}, source="t",
                                     field="m"), num_classes=12, embedding_size=8)
    spec = TrainSpec(iterations=5, batch_size=24, m_per_class=4)
    with pytest.raises(DivergedError, match="iteration 1"):
        train(EmbeddingModel(EmbeddingHead(16, 8)), method,
              TrainData(source=toy_inputs(), labels=LABELS), spec, validate=lambda m: 0.0,
              seed=0, device=torch.device("cpu"), progress=False)


def test_proxies_train_in_their_own_group() -> None:
    method = pml({"loss": "ProxyAnchorLoss"})
    before = [p.detach().clone() for p in method.parameters()]
    assert before, "proxy losses own parameters"
    spec = TrainSpec(iterations=5, batch_size=24, m_per_class=4, validate_every=100)
    train(EmbeddingModel(EmbeddingHead(16, 8)), method,
          TrainData(source=toy_inputs(), labels=LABELS), spec, validate=lambda m: 0.0, seed=0,
          device=torch.device("cpu"), progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_multi_tensor_update_matches_the_per_tensor_loop(name: str) -> None:
    """make_optimizer uses torch's foreach update for speed; it must train to the same bits as
    torch's per-tensor loop, so recorded references stay reproducible."""
    from bench.protocol import OptimizerSpec
    from bench.train import make_optimizer

    spec = OptimizerSpec(name=name, lr=1e-2, weight_decay=1e-4)
    probe = [torch.zeros(1, requires_grad=True)]
    assert make_optimizer(spec, [{"params": probe}]).defaults["foreach"] is True
    x, y = torch.randn(32, 20, generator=torch.Generator().manual_seed(0)), torch.zeros(32, 8)
    weights = []
    for optimizer_of in (lambda ps: make_optimizer(spec, [{"params": ps}]),
                         lambda ps: type(make_optimizer(spec, [{"params": ps}]))(
                             ps, lr=spec.lr, weight_decay=spec.weight_decay, foreach=False,
                             **({"momentum": spec.momentum} if name in ("sgd", "rmsprop") else {}))):
        torch.manual_seed(0)
        head = EmbeddingHead(20, 8, 16)
        params = list(head.parameters())
        optimizer = optimizer_of(params)
        for _ in range(20):
            loss = (head(x) - y).pow(2).mean() + x.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in params]))
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in
                                                  EmbeddingHead(20, 8, 16).parameters()]))
    assert torch.equal(weights[0], weights[1])
