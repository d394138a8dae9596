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
