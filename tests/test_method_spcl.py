"""SpCL: reliability criterion, Jaccard distance, sequential memory updates, DSBN, smoke runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import BenchError
from bench.methods.base import Batch, TrainData
from bench.methods.spcl import (
    SpCL,
    compact_labels,
    jaccard_distance,
    reliable_clusters,
    sequential_momentum_update,
)
from bench.models import EmbeddingHead, EmbeddingModel, FrozenBatchNorm
from bench.models.dsbn import dsbn_layers, use_domain
from bench.protocol import TrainSpec
from bench.train import embed, train

CPU = torch.device("cpu")


def make(params: dict | None = None, *, num_classes: int = 6) -> SpCL:
    parsed = SpCL.validate_params(params or {}, source="test", field="methods.0.params")
    return SpCL(parsed, num_classes=num_classes, embedding_size=8)


def clustered(n_classes: int, per_class: int, dim: int, seed: int, spread: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[torch.as_tensor(labels)] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


# -- 1. reliability criterion on hand-made assignments ----------------------------------------

def test_reliability_keeps_and_drops_expected_samples() -> None:
    # cluster 0 = 0..3, cluster 1 = 4..7, cluster 2 = 8..10, outliers 11, 12
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, -1, -1])
    # tight: sample 3 leaves cluster 0 (compactness 1/4 < 3/4), sample 10 leaves cluster 2
    tight = np.array([0, 0, 0, -1, 1, 1, 1, 1, 2, 2, -1, -1, -1])
    # loose: cluster 1 absorbs outlier 11 -> independence 4/5; clusters 0 and 2 stay at 1
    loose = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 1, -1])

    # keep 90 % of 3 clusters = 3: threshold 4/5, every cluster kept, only compactness drops
    out, threshold = reliable_clusters(labels, tight, loose, None, keep=0.9)
    np.testing.assert_array_equal(out, [0, 0, 0, -1, 1, 1, 1, 1, 2, 2, -1, -1, -1])
    assert threshold == pytest.approx(0.8)

    # keep 50 % of 3 = 2: threshold 1, cluster 1 (absorbs an outlier when loosened) dissolves
    out, threshold = reliable_clusters(labels, tight, loose, None, keep=0.5)
    np.testing.assert_array_equal(out, [0, 0, 0, -1, -1, -1, -1, -1, 2, 2, -1, -1, -1])
    assert threshold == 1.0

    # a frozen threshold is reused as is, whatever ``keep`` says
    out, frozen = reliable_clusters(labels, tight, loose, 1.0, keep=0.9)
    np.testing.assert_array_equal(out, [0, 0, 0, -1, -1, -1, -1, -1, 2, 2, -1, -1, -1])
    assert frozen == 1.0


def test_reliability_top_90_percent_of_ten_clusters() -> None:
    # ten clusters of two (rows 2c, 2c+1) and one outlier (row 20)
    labels = np.r_[np.repeat(np.arange(10), 2), -1]
    # tight splits cluster 0 into two singletons: both have compactness 1/2 = the cluster's
    # best, so both stay
    tight = labels.copy()
    tight[[0, 1]] = -1
    # loose: cluster 9 absorbs the outlier -> independence 2/3, the least independent cluster
    loose = labels.copy()
    loose[20] = 9
    out, threshold = reliable_clusters(labels, tight, loose, None)  # default keep = 0.9
    expected = labels.copy()
    expected[[18, 19]] = -1  # 9 of 10 clusters kept (the authors' index would keep all 10)
    np.testing.assert_array_equal(out, expected)
    assert threshold == 1.0


def test_no_cluster_leaves_threshold_unset_and_compact_labels() -> None:
    out, threshold = reliable_clusters(np.full(4, -1), np.full(4, -1), np.full(4, -1), None)
    np.testing.assert_array_equal(out, [-1, -1, -1, -1])
    assert threshold is None
    ids, k = compact_labels(np.array([5, -1, 5, 2, -1]))
    np.testing.assert_array_equal(ids, [1, 2, 1, 0, 3])
    assert k == 2


# -- 2. Jaccard distance ------------------------------------------------------------------------

def naive_jaccard(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The k-reciprocal Jaccard distance written straight from its definition (loops)."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    n = len(f)
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    rank = np.argsort(d, axis=1, kind="stable")[:, :min(k1, n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in rank[i, :k + 1] if i in rank[j, :k + 1]} | {i}

    v = np.zeros((n, n))
    for i in range(n):
        near = reciprocal(i, k1)
        expanded = set(near)
        for c in near:
            half = reciprocal(c, round(k1 / 2))
            if len(half & near) > 2 / 3 * len(half):
                expanded |= half
        cols = sorted(expanded)
        w = np.exp(-d[i, cols])
        v[i, cols] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    s = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    return np.maximum(1 - s / (2 - s), 0)


def test_jaccard_is_symmetric_with_zero_diagonal() -> None:
    # unstructured features: overlapping neighbourhoods, so the 2/3 expansion rule fires
    feats = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    dist = jaccard_distance(feats, k1=6, k2=3)
    assert dist.shape == (30, 30)
    np.testing.assert_allclose(dist, dist.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(dist), 0.0, atol=1e-6)
    assert dist.min() >= 0.0 and dist.max() <= 1.0
    np.testing.assert_allclose(dist, naive_jaccard(feats, 6, 3), atol=1e-5)
    # the paper's k1 = 30, k2 = 6 on fewer rows than k1 still works
    small = jaccard_distance(feats[:12], k1=30, k2=6)
    np.testing.assert_allclose(small, small.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(small), 0.0, atol=1e-6)


# -- 3. sequential source-centroid update -------------------------------------------------------

def test_source_centroid_update_is_sequential() -> None:
    g = torch.Generator().manual_seed(1)
    memory = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    feats = F.normalize(torch.randn(4, 4, generator=g), dim=1)
    index = torch.tensor([1, 2, 1, 1])
    m = 0.2

    expected = memory.clone()
    for x, y in zip(feats, index.tolist(), strict=True):  # the authors' per-sample loop
        expected[y] = m * expected[y] + (1 - m) * x
        expected[y] = expected[y] / expected[y].norm()
    averaged = memory.clone()
    for y in (1, 2):
        mean = feats[index == y].mean(0)
        averaged[y] = F.normalize(m * averaged[y] + (1 - m) * mean, dim=0)

    updated = memory.clone()
    sequential_momentum_update(updated, index, feats, m)
    torch.testing.assert_close(updated, expected)
    torch.testing.assert_close(updated[0], memory[0])  # untouched row
    assert not torch.allclose(updated[1], averaged[1], atol=1e-4)  # averaging would differ


def test_after_step_updates_source_centroids_in_batch_order() -> None:
    method = make(num_classes=3)
    g = torch.Generator().manual_seed(2)
    method.source_memory = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    method.target_memory = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    method.pseudo, method.num_clusters = compact_labels(np.array([0, 0, -1, -1, -1]))
    method._pseudo_t = torch.as_tensor(method.pseudo)
    model = EmbeddingModel(EmbeddingHead(4, 4))
    batch = Batch(epoch=0, step=1, source=torch.randn(4, 4, generator=g),
                  labels=torch.tensor([0, 0, 2, 2]), target=torch.randn(2, 4, generator=g),
                  target_index=torch.tensor([1, 3]))
    before = method.source_memory.clone()
    loss = method.loss(model, batch)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    with torch.no_grad():
        xs = model(batch.source)
        method.after_step(batch)
    expected = before.clone()
    for x, y in zip(xs, batch.labels.tolist(), strict=True):
        expected[y] = F.normalize(0.2 * expected[y] + 0.8 * x, dim=0)
    torch.testing.assert_close(method.source_memory, expected)


# -- 4. DSBN ------------------------------------------------------------------------------------

def conv_model(frozen: bool = False) -> EmbeddingModel:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    trunk = FrozenBatchNorm(network, freeze_affine=False) if frozen else network
    return EmbeddingModel(EmbeddingHead(4, 8), trunk)


def test_dsbn_routes_domains_and_eval_uses_target() -> None:
    model = make(num_classes=3).wrap_model(conv_model(), backbone="resnet18")
    (layer,) = dsbn_layers(model)
    assert isinstance(layer.source, nn.BatchNorm2d) and isinstance(layer.target, nn.BatchNorm2d)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(6, 3, 6, 6, generator=g) + 3.0
    xt = torch.randn(6, 3, 6, 6, generator=g) - 3.0
    model.train()
    with use_domain(model, "source"):
        model(xs)
    assert not torch.equal(layer.source.running_mean, torch.zeros(4))
    torch.testing.assert_close(layer.target.running_mean, torch.zeros(4))
    model(xt)  # default: target
    assert not torch.allclose(layer.source.running_mean, layer.target.running_mean)

    model.eval()
    h = model.trunk[0](xs)  # the conv output reaching the BN
    torch.testing.assert_close(layer(h), layer.target(h))
    assert not torch.allclose(layer(h), layer.source(h))
    with use_domain(model, "source"):  # eval ignores the switch
        torch.testing.assert_close(model(xs), model(xs))
        torch.testing.assert_close(layer(h), layer.target(h))

    # unsupervised variant: no DSBN
    assert not dsbn_layers(make(num_classes=0).wrap_model(conv_model(), backbone="resnet18"))


def test_dsbn_under_frozen_batchnorm_and_method_routing() -> None:
    frozen = make(num_classes=3).wrap_model(conv_model(frozen=True), backbone="resnet18")
    (layer,) = dsbn_layers(frozen)
    frozen.train()
    assert layer.training and not layer.source.training and not layer.target.training
    with use_domain(frozen, "source"):
        frozen(torch.randn(4, 3, 6, 6) + 3.0)
    torch.testing.assert_close(layer.source.running_mean, torch.zeros(4))

    # the method's loss sends source rows through the source BN, target rows through the target
    method = make(num_classes=3)
    model = method.wrap_model(conv_model(), backbone="resnet18")
    (layer,) = dsbn_layers(model)
    g = torch.Generator().manual_seed(3)
    source = torch.randn(12, 3, 6, 6, generator=g) + 3.0
    target = torch.randn(12, 3, 6, 6, generator=g) - 3.0
    labels = np.repeat(np.arange(3), 4)
    data = TrainData(source=source, labels=labels, target=target, num_classes=3,
                     kinds=frozenset({"labeled", "unlabeled_target"}))

    def run_embed(m, x):
        return embed(m, x, batch_size=8, device=CPU)

    method.setup(model, data, embed=run_embed, generator=torch.Generator().manual_seed(0))
    method.on_epoch(0, model, data, embed=run_embed)
    model.train()
    conv = model.trunk[0]
    batch = Batch(epoch=0, step=1, source=source[:8], labels=torch.as_tensor(labels[:8]),
                  target=target[:8], target_index=torch.arange(8))
    method.loss(model, batch)
    with torch.no_grad():
        mean_s = conv(source[:8]).mean((0, 2, 3))
        mean_t = conv(target[:8]).mean((0, 2, 3))
    momentum = layer.source.momentum
    torch.testing.assert_close(layer.source.running_mean, momentum * mean_s)
    torch.testing.assert_close(layer.target.running_mean, momentum * mean_t)


# -- 5. params and smoke runs -------------------------------------------------------------------

@pytest.mark.parametrize(("params", "field"), [
    ({"tau": 0}, "methods.0.params.tau"),
    ({"momentum": 1.5}, "methods.0.params.momentum"),
    ({"bogus": 1}, "methods.0.params.bogus"),
    ({"k1": "many"}, "methods.0.params.k1"),
    ({"eps": 0.01}, "methods.0.params.eps_gap"),
    ({"k1": 4, "k2": 6}, "methods.0.params.k2"),
    ({"independence_keep": 0}, "methods.0.params.independence_keep"),
])
def test_bad_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(BenchError) as error:
        make(params)
    assert error.value.field == field
    assert error.value.source == "test"


def test_defaults_are_the_paper_constants() -> None:
    p = make().params
    assert (p.tau, p.momentum, p.eps, p.eps_gap, p.k1, p.k2, p.min_samples,
            p.independence_keep, p.num_instances) == (0.05, 0.2, 0.6, 0.02, 30, 6, 4, 0.9, 4)


SMALL = {"k1": 6, "k2": 3}  # 24 target rows: the paper's k1 = 30 would see everyone as a neighbour


@pytest.mark.parametrize("labeled", [True, False])
def test_smoke_run_stays_finite(labeled: bool) -> None:
    source, labels = clustered(6, 4, 16, seed=0)
    target, _ = clustered(6, 4, 16, seed=1)
    kinds = {"unlabeled_target"} | ({"labeled"} if labeled else set())
    data = TrainData(source=source if labeled else None, labels=labels if labeled else None,
                     target=target, num_classes=6 if labeled else 0, kinds=frozenset(kinds))
    method = make(SMALL, num_classes=6 if labeled else 0)
    torch.manual_seed(0)
    model = method.wrap_model(EmbeddingModel(EmbeddingHead(16, 8)), backbone="resnet18")
    spec = TrainSpec(iterations=6, batch_size=8, m_per_class=4, validate_every=3)
    result = train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=CPU,
                   progress=False)
    assert result.iterations_run == 6
    losses = [h["loss"] for h in result.history[1:]]
    assert losses and all(math.isfinite(v) for v in losses)
    assert method.num_clusters >= 1  # the well-separated target forms clusters
    assert method.threshold is not None
    norms = method.target_memory.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    n_protos = len(method.prototypes())
    singletons = int((method.pseudo >= method.num_clusters).sum())
    assert n_protos == (6 if labeled else 0) + method.num_clusters + singletons
    rows = method.target_sampler(2, 3, 8, np.random.default_rng(0))
    assert rows.shape == (3, 8) and rows.min() >= 0 and rows.max() < 24


# -- 6. mechanisms: each test fails when its mechanism is removed --------------------------------

def prepared(target: torch.Tensor, params: dict | None = None) -> SpCL:
    """An unsupervised SpCL whose target memory is ``target`` (normalised), clustered once."""
    method = make({**SMALL, **(params or {})}, num_classes=0)
    method.target_memory = F.normalize(target, dim=1)
    method.on_epoch(0, nn.Identity(), TrainData(), embed=None)
    return method


def test_after_step_moves_the_target_memory_rows() -> None:
    target, _ = clustered(3, 8, 8, seed=4)
    method = prepared(target)
    before = method.target_memory.clone()
    g = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    batch = Batch(epoch=0, step=1, target=x, target_index=torch.tensor([2, 9, 2]))
    method.loss(nn.Identity(), batch)
    method.after_step(batch)
    expected = before.clone()
    for row, feat in zip([2, 9, 2], x, strict=True):  # sequential, in batch order
        expected[row] = F.normalize(0.2 * expected[row] + 0.8 * feat, dim=0)
    torch.testing.assert_close(method.target_memory, expected)


def test_every_epoch_reclusters_the_current_memory() -> None:
    two, _ = clustered(2, 12, 8, seed=6, spread=0.05)
    three, _ = clustered(3, 8, 8, seed=7, spread=0.05)
    method = prepared(two)  # 24 rows in 2 groups
    assert method.num_clusters == 2
    method.target_memory = F.normalize(three, dim=1)  # the memory moved during the epoch
    method.on_epoch(1, nn.Identity(), TrainData(), embed=None)
    assert method.num_clusters == 3
    ids = method.pseudo[:method.num_clusters * 8].reshape(3, 8)
    assert all(len(set(r)) == 1 for r in ids) and len({r[0] for r in ids}) == 3


def test_on_epoch_applies_the_reliability_filter(monkeypatch) -> None:
    """on_epoch's labels are the reliability criterion's output (tight and loose clusterings
    included), not the raw DBSCAN clusters; the first threshold is frozen."""
    import bench.methods.spcl as spcl_module

    calls = []
    real = spcl_module.reliable_clusters

    def drop_first(labels, tight, loose, threshold, keep=0.9):
        calls.append((labels.copy(), tight.copy(), loose.copy(), threshold))
        out, frozen = real(labels, tight, loose, threshold, keep=keep)
        out = out.copy()
        out[0] = -1  # an observable decision of the filter
        return out, frozen

    monkeypatch.setattr(spcl_module, "reliable_clusters", drop_first)
    target, _ = clustered(3, 8, 8, seed=8, spread=0.05)
    method = prepared(target)
    assert len(calls) == 1
    assert method.pseudo[0] >= method.num_clusters  # row 0 is an outlier now
    assert method.threshold is not None and calls[0][3] is None
    method.on_epoch(1, nn.Identity(), TrainData(), embed=None)
    assert calls[1][3] == method.threshold  # frozen after the first clustering


def test_reliability_filter_acts_inside_on_epoch() -> None:
    """Data-driven: a cluster made of two nearby blobs plus a far blob; with eps_gap 0.3 the
    tight clustering splits them, so the compactness criterion rejects members that raw DBSCAN
    keeps. on_epoch returns the filtered labels, not the raw ones."""
    from sklearn.cluster import DBSCAN

    g = np.random.default_rng(3)
    c1, c3 = g.normal(size=8), 3 * g.normal(size=8)
    x = np.concatenate([c1 + 0.05 * g.normal(size=(8, 8)),
                        c1 + 0.3 * np.eye(8)[0] + 0.05 * g.normal(size=(4, 8)),
                        c3 + 0.05 * g.normal(size=(8, 8))]).astype(np.float32)
    method = make({**SMALL, "eps_gap": 0.3}, num_classes=0)
    method.target_memory = F.normalize(torch.as_tensor(x), dim=1)
    distance = jaccard_distance(method.target_memory.numpy(), k1=6, k2=3)
    raw = [DBSCAN(eps=e, min_samples=4, metric="precomputed").fit_predict(distance)
           for e in (0.6, 0.3, 0.9)]
    expected, _ = reliable_clusters(*raw, None, keep=0.9)
    assert np.any(expected != raw[0])  # the criterion rejects something here
    method.on_epoch(0, nn.Identity(), TrainData(), embed=None)
    np.testing.assert_array_equal(method.pseudo, compact_labels(expected)[0])
    assert not np.array_equal(method.pseudo, compact_labels(raw[0])[0])


def test_validation_on_source_data_uses_the_source_batchnorm() -> None:
    method = make(num_classes=3)
    model = method.wrap_model(conv_model(), backbone="resnet18")
    (layer,) = dsbn_layers(model)
    with torch.no_grad():
        layer.source.running_mean.fill_(2.0)  # distinguishable statistics
    model.eval()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    h = model.trunk[0](x)
    with method.evaluation_domain(model, "source"):
        torch.testing.assert_close(layer(h), layer.source(h))
        source_embedding = model(x)
    torch.testing.assert_close(layer(h), layer.target(h))  # back to target afterwards
    assert not torch.allclose(source_embedding, model(x))
    with method.evaluation_domain(model, "target"):
        torch.testing.assert_close(layer(h), layer.target(h))


def test_target_term_false_is_the_source_only_ablation() -> None:
    source, labels = clustered(3, 4, 8, seed=10)
    target, _ = clustered(3, 4, 8, seed=11)
    method = make({**SMALL, "target_term": False}, num_classes=3)
    model = method.wrap_model(conv_model(), backbone="resnet18")
    assert not dsbn_layers(model)  # no DSBN in the ablation
    head = EmbeddingModel(EmbeddingHead(8, 8))
    data = TrainData(source=source, labels=labels, target=target, num_classes=3,
                     kinds=frozenset({"labeled", "unlabeled_target"}))
    method.setup(head, data, embed=lambda m, x: embed(m, x, batch_size=8, device=CPU),
                 generator=torch.Generator().manual_seed(0))
    method.on_epoch(0, head, data, embed=None)
    assert method.target_memory is None and method.pseudo is None
    batch = Batch(epoch=0, step=1, source=source[:4], labels=torch.as_tensor(labels[:4]),
                  target=target[:4], target_index=torch.arange(4))
    loss = method.loss(head, batch)
    xs = head(source[:4])
    torch.testing.assert_close(loss, F.cross_entropy(xs @ method.source_memory.T / 0.05,
                                                     batch.labels))
