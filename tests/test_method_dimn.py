"""DIMN: asymmetric test scores reach the evaluators, the memory running average, params, smoke."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.evaluate import evaluate_reid, evaluate_retrieval
from bench.methods.base import Batch, TrainData
from bench.methods.dimn import DIMN, DIMNModel, episode_pairs
from bench.models import EmbeddingHead, EmbeddingModel
from bench.protocol import TrainSpec
from bench.train import embed, train

CPU = torch.device("cpu")
LABELS = np.repeat(np.arange(6), 4)


def toy_data(seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 16, generator=g)
    inputs = centres[torch.as_tensor(LABELS)] + 0.3 * torch.randn(len(LABELS), 16, generator=g)
    return TrainData(source=inputs, labels=LABELS, num_classes=6, kinds=frozenset({"labeled"}))


def make(params: dict | None = None, d: int = 8) -> tuple[DIMN, DIMNModel]:
    torch.manual_seed(0)
    method = DIMN(DIMN.validate_params(params or {}, source="test", field="methods.0.params"),
                  num_classes=6, embedding_size=d)
    model = method.wrap_model(EmbeddingModel(EmbeddingHead(16, d, 0)), backbone="none")
    return method, model


def run_embed(model, inputs) -> np.ndarray:
    return embed(model, inputs, batch_size=64, device=CPU)


def test_scores_are_asymmetric_and_rank_the_evaluators() -> None:
    method, model = make(d=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.mapping.weight.copy_(torch.randn(2, 2, generator=g))
        model.mapping.bias.copy_(torch.randn(2, generator=g))
    score = method.score_fn(model, CPU)
    a = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    assert score(a, b).shape == (5, 4)
    assert not np.allclose(score(a, b), score(b, a).T, atol=1e-3)

    # h rotates by -90 degrees: h([0, 1]) = [1, 0]. Euclidean puts g1 = [.8, .6] first for
    # q = [1, 0]; the DIMN score h(g) . q puts g2 = [0, 1] first (1.0 against 0.6).
    with torch.no_grad():
        model.mapping.weight.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
        model.mapping.bias.zero_()
    calls = []
    model.mapping.register_forward_hook(lambda *_: calls.append(1))
    score = method.score_fn(model, CPU)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(score(query, gallery), [[0.6, 1.0]], atol=1e-6)
    score(query, gallery)
    assert len(calls) == 1  # h(gallery) computed once per gallery array

    kw = {"recall_ks": (1,), "nmi": False}
    assert evaluate_retrieval(query, [2], gallery, [1, 2], **kw)["precision_at_1"] == 0.0
    assert evaluate_retrieval(query, [2], gallery, [1, 2], score_fn=score,
                              **kw)["precision_at_1"] == 1.0
    reid = (query, [2], [0], gallery, [1, 2], [1, 1])
    plain = evaluate_reid(*reid, ranks=(1,))
    dimn = evaluate_reid(*reid, ranks=(1,), score_fn=method.score_fn(model, CPU))
    assert (plain["cmc_1"], plain["mAP"]) == (0.0, 0.5)
    assert (dimn["cmc_1"], dimn["mAP"]) == (1.0, 1.0)


def test_memory_running_average_matches_hand_computation() -> None:
    method, model = make({"alpha": 0.25})
    data = toy_data()
    method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    w0 = method.memory.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(w0, axis=0), 1.0, atol=1e-5)
    with torch.no_grad():  # a non-trivial h
        model.mapping.weight.add_(0.3 * torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))
    rows = np.array([4, 5, 13, 12, 14, 0])  # classes 1, 1, 3, 3, 3, 0
    batch = Batch(epoch=0, step=1, source=data.source[rows],
                  labels=torch.as_tensor(LABELS[rows]))
    gallery, probe = episode_pairs(batch.labels)
    assert sorted(zip(gallery.tolist(), probe.tolist(), strict=True)) == [(0, 1), (2, 3)]
    assert torch.isfinite(method.loss(model, batch))
    with torch.no_grad():
        method.after_step(batch)

    emb = run_embed(model, data.source[rows])
    w, b = model.mapping.weight.detach().numpy(), model.mapping.bias.detach().numpy()
    expected = w0.copy()
    for row, cls in ((0, 1), (2, 3)):  # gallery = first row of each identity in the batch
        theta = w @ emb[row] + b
        column = 0.25 * w0[:, cls] + 0.75 * theta
        expected[:, cls] = column / np.linalg.norm(column)
    np.testing.assert_allclose(method.memory.numpy(), expected, atol=1e-5)
    assert np.array_equal(method.memory.numpy()[:, [0, 2, 4, 5]], w0[:, [0, 2, 4, 5]])


def test_params_errors_k_below_two_and_smoke_run() -> None:
    for params, field in (({"bogus": 1}, "methods.0.params.bogus"),
                          ({"alpha": 1.5}, "methods.0.params.alpha"),
                          ({"triplet_scores": "dot"}, "methods.0.params.triplet_scores")):
        with pytest.raises(BenchError) as error:
            DIMN.validate_params(params, source="p.yaml", field="methods.0.params")
        assert error.value.field == field

    data = toy_data()
    method, model = make()
    with pytest.raises(BenchError, match="m_per_class") as error:
        train(model, method, data, TrainSpec(iterations=2, batch_size=6, m_per_class=1),
              validate=lambda m: 0.0, seed=0, device=CPU, progress=False)
    assert error.value.field == "train.m_per_class"
    with pytest.raises(BenchError, match="m_per_class"):
        DIMN.check_m_per_class(1)

    for scores in ("softmax", "cosine"):
        method, model = make({"triplet_scores": scores})
        h0 = model.mapping.weight.detach().clone()
        spec = TrainSpec(iterations=6, batch_size=12, m_per_class=4, validate_every=3)
        result = train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=CPU,
                       progress=False)
        assert all(np.isfinite(h["loss"]) for h in result.history[1:])
        assert not torch.allclose(model.mapping.weight, h0)
        assert "mapping.weight" in result.best_state  # the snapshot keeps h
        np.testing.assert_allclose(method.memory.norm(dim=0).numpy(), 1.0, atol=1e-5)


# -- mechanisms: each test fails when its mechanism is removed ----------------------------------

def episode_batch(data: TrainData) -> Batch:
    rows = np.array([0, 1, 4, 5, 8, 9, 12, 13])  # classes 0..3, two images each
    return Batch(epoch=0, step=1, source=data.source[rows],
                 labels=torch.as_tensor(LABELS[rows]))


def test_w_hat_insertion_gives_h_a_gradient_from_memory_classification() -> None:
    """Only the memory classification (lambda1) is on: its gradient reaches h only through the
    predicted theta inserted into W_hat."""
    method, model = make({"lambda_regression": 0.0, "lambda_triplet": 0.0})
    data = toy_data()
    method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    loss = method.loss(model, episode_batch(data))
    loss.backward()
    grad = model.mapping.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 1e-6
    # and with lambda1 = 0 as well, h gets nothing: the gradient above is the memory term's
    method, model = make({"lambda_regression": 0.0, "lambda_triplet": 0.0,
                          "lambda_memory": 0.0})
    method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    method.loss(model, episode_batch(data)).backward()
    grad = model.mapping.weight.grad
    assert grad is None or float(grad.abs().sum()) == 0.0


def test_triplet_term_is_the_hardest_negative_hinge() -> None:
    data = toy_data()
    base = {"lambda_regression": 0.0, "lambda_memory": 0.0, "margin": 0.8}
    totals = {}
    for weight in (0.0, 1.0):
        method, model = make({**base, "lambda_triplet": weight})
        method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
        batch = episode_batch(data)
        totals[weight] = float(method.loss(model, batch).detach())
    # by hand: softmax over the probe's memory logits, positive = own theta column
    method, model = make(base)
    method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = model(batch.source).numpy()
        gallery, probe = episode_pairs(batch.labels)
        ids = batch.labels[gallery].numpy()
        theta = model.map(torch.as_tensor(emb[gallery.numpy()])).numpy()
    w_hat = method.memory.t().numpy().copy()
    w_hat[ids] = theta
    logits = 16.0 * emb[probe.numpy()] @ w_hat.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    hinge = []
    for row, own in enumerate(ids):
        hardest = max(p[row, j] for j in range(6) if j != own)
        hinge.append(max(0.0, 0.8 - p[row, own] + hardest))
    assert totals[1.0] - totals[0.0] == pytest.approx(float(np.mean(hinge)), abs=1e-5)
    assert np.mean(hinge) > 0  # the term is active on this batch


def test_default_logit_scale_trains_memory_classification_below_log_c(monkeypatch) -> None:
    """Toy problem with the defaults: the memory classification CE starts near log C and
    training takes it well below (scale 1 on unit vectors could not: logits in [-1, 1])."""
    method, model = make()
    assert method.params.logit_scale == 16.0
    data = toy_data()
    seen = []
    original = torch.nn.functional.cross_entropy

    def spy(logits, target, *args, **kwargs):
        value = original(logits, target, *args, **kwargs)
        if logits.shape[1] == 6 and logits.shape[0] < len(LABELS) // 2:  # the memory term
            seen.append(float(value.detach()))
        return value

    import bench.methods.dimn as dimn_module

    monkeypatch.setattr(dimn_module.F, "cross_entropy", spy)
    spec = TrainSpec(iterations=60, batch_size=12, m_per_class=2, validate_every=60)
    train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=CPU, progress=False)
    monkeypatch.undo()
    assert len(seen) == 60
    assert np.mean(seen[-10:]) < 0.5 * np.log(6)
    scale_one, model_one = make({"logit_scale": 1.0})
    scale_one.setup(model_one, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the bound that makes scale 1 inert: CE >= log C - 2 on unit vectors
        emb = model_one(data.source)
        logits = emb @ scale_one.memory
    assert float(logits.abs().max()) <= 1.0 + 1e-5
