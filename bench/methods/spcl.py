"""SpCL: self-paced contrastive learning with a hybrid memory (Ge et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sklearn.cluster import DBSCAN
from torch import nn
from torch.nn import functional as F

from bench.errors import BenchError
from bench.methods.base import Batch, Embed, Method, TrainData
from bench.models.dsbn import convert_dsbn, evaluate_as, use_domain
from bench.validation import invalid


class SpCLParams(BaseModel):
    """Every constant of the paper / the authors' code (defaults = their values)."""

    model_config = ConfigDict(extra="forbid")
    tau: float = Field(0.05, gt=0)  # temperature of the unified contrastive loss
    momentum: float = Field(0.2, ge=0, lt=1)  # hybrid-memory momentum m
    eps: float = Field(0.6, gt=0, le=1)  # DBSCAN radius on the Jaccard distance
    eps_gap: float = Field(0.02, ge=0)  # tight / loose radius = eps -/+ eps_gap
    k1: int = Field(30, ge=1)  # k-reciprocal neighbourhood size
    k2: int = Field(6, ge=1)  # query-expansion neighbourhood size
    min_samples: int = Field(4, ge=1)  # DBSCAN min_samples
    independence_keep: float = Field(0.9, gt=0, le=1)  # share of clusters kept (independence)
    num_instances: int = Field(4, ge=1)  # K of the P x K target sampler
    #: False = the method's own source-only ablation: contrastive loss against the source-class
    #: memory only (no target term, no clustering, no DSBN)
    target_term: bool = True


# -- k-reciprocal Jaccard distance -----------------------------------------------------------
# Hand-written: no maintained library offers the k-reciprocal encoding of Zhong et al. (CVPR
# 2017) that SpCL clusters on; the neighbour search is faiss, the set algebra sparse matrices.

def _mutual_neighbours(rank: np.ndarray, k: int) -> sp.csr_matrix:
    """R[i, j] = 1 when j is among i's first ``k + 1`` neighbours and i among j's (self
    included): the k-reciprocal sets of the authors' ``k_reciprocal_neigh``."""
    n, cols = len(rank), min(k + 1, rank.shape[1])
    rows = np.repeat(np.arange(n), cols)
    forward = sp.csr_matrix((np.ones(n * cols), (rows, rank[:, :cols].ravel())), shape=(n, n))
    forward.data[:] = 1.0  # a duplicate neighbour id would otherwise count twice
    # i always belongs to its own set, even when duplicates push it out of its neighbour list
    return forward.multiply(forward.T).maximum(sp.identity(n, format="csr")).tocsr()


def jaccard_distance(features: np.ndarray, *, k1: int = 30, k2: int = 6) -> np.ndarray:
    """(n, n) k-reciprocal Jaccard distance of the rows of ``features`` (L2-normalised first).

    As in the authors' ``compute_jaccard_distance``: k1-reciprocal sets, expanded by the
    round(k1/2)-reciprocal set of any member sharing more than 2/3 of it; weights
    softmax(-||f_i - f_j||^2) over the expanded set; query expansion averages the weight rows
    of the k2 nearest neighbours; d(i, j) = 1 - s / (2 - s) with s = sum_k min(V_ik, V_jk).
    Symmetric, zero on the diagonal, 1 for pairs sharing no neighbour.
    """
    feats = np.ascontiguousarray(features, dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    n = len(feats)
    index = faiss.IndexFlatL2(feats.shape[1])
    index.add(feats)
    _, rank = index.search(feats, min(k1, n))  # the authors search k1 neighbours (self included)

    near = _mutual_neighbours(rank, k1)
    half = _mutual_neighbours(rank, int(round(k1 / 2)))
    half_size = np.asarray(half.sum(axis=1)).ravel()
    # overlap[i, c] = |near_i ∩ half_c| for each candidate c in near_i
    overlap = (near @ half.T).multiply(near).tocsr()
    overlap.data = (overlap.data > 2.0 / 3.0 * half_size[overlap.indices]).astype(np.float64)
    overlap.eliminate_zeros()
    expanded = (near + overlap @ half).tocoo()
    rows, cols = expanded.row, expanded.col

    sims = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), 1 << 16):  # chunks bound the (pairs x dim) temporary
        part = slice(start, start + (1 << 16))
        sims[part] = np.einsum("ij,ij->i", feats[rows[part]], feats[cols[part]])
    weights = np.exp(-(2.0 - 2.0 * sims))
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]
    v = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    if k2 > 1:
        q = min(k2, rank.shape[1])
        average = sp.csr_matrix((np.full(n * q, 1.0 / q),
                                 (np.repeat(np.arange(n), q), rank[:, :q].ravel())), shape=(n, n))
        v = (average @ v).tocsr()
    v.sum_duplicates()
    v.sort_indices()
    by_column = v.tocsc()
    by_column.sort_indices()

    distance = np.ones((n, n), dtype=np.float32)
    for i in range(n):
        cols_i = v.indices[v.indptr[i]:v.indptr[i + 1]]
        vals_i = v.data[v.indptr[i]:v.indptr[i + 1]]
        starts = by_column.indptr[cols_i]
        lengths = by_column.indptr[cols_i + 1] - starts
        offsets = np.cumsum(lengths) - lengths
        pos = np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
        shared = np.minimum(np.repeat(vals_i, lengths), by_column.data[pos])
        s = np.bincount(by_column.indices[pos], weights=shared, minlength=n)
        distance[i] = 1.0 - s / (2.0 - s)
    np.maximum(distance, 0.0, out=distance)
    return distance


# -- self-paced cluster reliability ----------------------------------------------------------

def _as_groups(labels: np.ndarray) -> np.ndarray:
    """Group ids with every -1 (DBSCAN outlier) turned into its own singleton group."""
    groups = np.asarray(labels, dtype=np.int64).copy()
    outliers = groups < 0
    groups[outliers] = groups.max(initial=-1) + 1 + np.arange(outliers.sum())
    return groups


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per sample i: |A(i) ∩ B(i)| / |A(i) ∪ B(i)| with A(i), B(i) the groups holding i."""
    _, pair, inter = np.unique(np.stack([a, b]), axis=1, return_inverse=True, return_counts=True)
    _, a_inv, a_size = np.unique(a, return_inverse=True, return_counts=True)
    _, b_inv, b_size = np.unique(b, return_inverse=True, return_counts=True)
    inter = inter[pair.ravel()]
    return inter / (a_size[a_inv] + b_size[b_inv] - inter)


def reliable_clusters(labels: np.ndarray, tight_labels: np.ndarray, loose_labels: np.ndarray,
                      threshold: float | None, *,
                      keep: float = 0.9) -> tuple[np.ndarray, float | None]:
    """SpCL's cluster reliability criterion on DBSCAN assignments (-1 = outlier).

    Independence of sample i = IoU of its cluster and its loose-clustering cluster; a cluster's
    independence is its members' best (the authors' code). Compactness of i = IoU of its cluster
    and its tight-clustering cluster. A cluster (2+ members) is kept when its independence
    reaches ``threshold``; when ``threshold`` is None it is set to the independence of the
    round(keep * n)-th (half up) most independent of the n clusters (the caller freezes
    it). Inside a kept
    cluster a sample stays when its compactness equals the cluster's best. Returns the labels
    with every rejected sample set to -1 (kept samples keep their cluster id) and the threshold.
    """
    groups = _as_groups(labels)
    compact = _iou(groups, _as_groups(tight_labels))
    independent = _iou(groups, _as_groups(loose_labels))
    size = np.bincount(groups)
    best_indep = np.zeros(len(size))
    best_comp = np.zeros(len(size))
    np.maximum.at(best_indep, groups, independent)
    np.maximum.at(best_comp, groups, compact)
    clusters = np.flatnonzero(size > 1)
    if threshold is None and len(clusters):
        ranked = np.sort(best_indep[clusters])[::-1]
        count = min(len(ranked), max(1, int(keep * len(ranked) + 0.5)))
        threshold = float(ranked[count - 1])
    out = np.full(len(groups), -1, dtype=np.int64)
    if threshold is None:
        return out, None
    kept = (size[groups] > 1) & (best_indep[groups] >= threshold) & (compact >= best_comp[groups])
    out[kept] = np.asarray(labels, dtype=np.int64)[kept]
    return out, threshold


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Clusters -> 0..K-1 (sorted ids), each -1 -> its own id K, K+1, ...; returns (ids, K)."""
    labels = np.asarray(labels, dtype=np.int64)
    clusters = np.unique(labels[labels >= 0])
    out = np.searchsorted(clusters, labels)
    outliers = labels < 0
    out[outliers] = len(clusters) + np.arange(outliers.sum())
    return out, len(clusters)


def sequential_momentum_update(memory: torch.Tensor, index: torch.Tensor, features: torch.Tensor,
                               momentum: float) -> None:
    """For each (row, x) in batch order: row <- m * row + (1 - m) * x, then L2-normalise.

    Repeated rows (a source class seen K times) are updated once per sample, in turn, as in the
    authors' loop; updates to distinct rows are independent, so each "round" (the r-th
    occurrence of every row) is applied at once.
    """
    rows = index.detach().cpu().numpy()
    order = np.argsort(rows, kind="stable")
    first = np.r_[True, rows[order][1:] != rows[order][:-1]]
    starts = np.flatnonzero(first)
    occurrence = np.empty(len(rows), dtype=np.int64)
    occurrence[order] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    for r in range(int(occurrence.max(initial=-1)) + 1):
        pick = torch.as_tensor(np.flatnonzero(occurrence == r), device=features.device)
        target = index[pick]
        mixed = momentum * memory[target] + (1.0 - momentum) * features[pick].to(memory.dtype)
        memory[target] = F.normalize(mixed, dim=1)


class SpCL(Method):
    """SpCL (Ge et al., NeurIPS 2020): contrastive loss against a hybrid memory of source class
    centroids, target cluster centroids and target outlier instances, re-clustered every epoch
    with a self-paced reliability criterion.

    Setting: ``uda``. Data kinds: requires ``unlabeled_target``; uses ``labeled`` when present.
    ``target_term: false`` is SpCL's own source-only ablation (same loss, memory, momentum and
    temperature over the source-class centroids only; no target term, clustering or DSBN), so a
    protocol can show the adaptation gain of SpCL over itself.
    Without labeled data it is the paper's unsupervised variant (memory = target instances only,
    no DSBN).

    Constants (``SpCLParams`` defaults; paper Sec. 4 and the authors' ``spcl_train_uda.py`` /
    ``hm.py``): tau = 0.05, momentum m = 0.2, DBSCAN eps = 0.6 with eps_gap = 0.02 for the
    tight / loose clusterings, min_samples = 4, Jaccard k1 = 30, k2 = 6, independence_keep =
    0.9 (top 90 % of clusters, threshold set at the first clustering and then frozen),
    num_instances K = 4 (P x K target sampler; the paper's 16 x 4).

    What it does: ``wrap_model`` gives the trunk domain-specific BatchNorm (source / target
    copies of each BN, :mod:`bench.models.dsbn`) when labeled source data is used and there is
    a trunk; ``setup`` fills the memory with one ``embed`` pass (source class centroids = mean
    of the class's L2-normalised embeddings, renormalised; one row per target image);
    ``on_epoch`` clusters the target memory rows (DBSCAN on the k-reciprocal Jaccard distance)
    and applies the reliability criterion (:func:`reliable_clusters`); ``loss`` is
    CE(x . P^T / tau) over all prototypes P (source centroids, target cluster centroids = mean
    of member rows, outlier rows) for the source half (true class) plus the target half
    (pseudo-label); ``after_step`` updates the memory rows with the batch's embeddings.

    Deviations from the paper / the authors' code:

    * Backbone, head, optimiser, schedule, augmentation, batch size, epoch length and budget
      are the protocol's (paper: ResNet-50 with a BN neck, Adam 3.5e-4, wd 5e-4, 50 epochs x
      400 iterations, random erasing); the memory stores the protocol head's L2-normalised
      embeddings.
    * The authors report the best-test-mAP checkpoint; here the checkpoint is chosen on the
      validation split.
    * On the cached-feature path (no trunk) there is no BatchNorm anywhere (the head has none),
      so DSBN has nothing to split and is a no-op. With images, source and target batches run as
      two forward passes with the source / target BN copies (the authors concatenate them and
      split inside each BN: the same statistics). A FrozenBatchNorm trunk keeps both copies in
      eval mode, so only their affine parameters (when trained) can differ.
    * Independence threshold: the authors' index round(0.9 n) into the ascending list keeps one
      cluster more than 90 % (all 10 of 10); here exactly the round(keep * n) most independent
      clusters (ties included) pass. When the first clustering has no cluster the threshold is
      set at the first one that has (the authors' code would fail).
    * Loss: exact log-softmax over the compacted prototypes (the authors use a masked softmax
      with eps 1e-6 inside the log, over cluster ids that may be empty after rejection).
    * Validation on held-out SOURCE identities runs through the source BN copy (the data's
      domain, :meth:`evaluation_domain`); the test on target data through the target copy.
    * Target sampler: P x K on pseudo-labels without the authors' preference for other-camera
      views of the anchor (cameras are not used), drawn with the loop's seeded rng.
    * Jaccard distance: same algorithm on CPU faiss (exact L2 search); each sample is always in
      its own k-reciprocal set (matters only for exact duplicates).
    """

    requires = frozenset({"unlabeled_target"})
    optional = frozenset({"labeled"})
    needs_trunk = False

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> SpCLParams:
        try:
            parsed = SpCLParams.model_validate(params)
        except ValidationError as error:
            raise invalid(error, SpCLParams, source=source, prefix=field) from None
        if parsed.eps - parsed.eps_gap <= 0:
            raise BenchError(f"eps - eps_gap must be positive (tight DBSCAN radius); got "
                             f"{parsed.eps} - {parsed.eps_gap}", source=source,
                             field=f"{field}.eps_gap")
        if parsed.k2 > parsed.k1:
            raise BenchError(f"k2 ({parsed.k2}) cannot exceed k1 ({parsed.k1}): the query "
                             "expansion reads the k1-neighbour list", source=source,
                             field=f"{field}.k2")
        return parsed

    def __init__(self, params: SpCLParams, *, num_classes: int, embedding_size: int) -> None:
        self.params = params
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.device = torch.device("cpu")
        self.source_memory: torch.Tensor | None = None  # (C, d) class centroids
        self.target_memory: torch.Tensor | None = None  # (N, d) one row per target image
        self.pseudo: np.ndarray | None = None  # compact target labels: clusters, then singletons
        self.num_clusters = 0
        self.threshold: float | None = None  # frozen independence threshold
        self._pseudo_t: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- model and state --------------------------------------------------------------------
    def wrap_model(self, model: nn.Module, *, backbone: str) -> nn.Module:
        """DSBN in the trunk for the UDA variant (the runner passes num_classes = 0 without
        labeled data); nothing to do without a trunk (the head has no BatchNorm)."""
        trunk = getattr(model, "trunk", None)
        if self.num_classes > 0 and trunk is not None and self.params.target_term:
            convert_dsbn(trunk)
        return model

    def evaluation_domain(self, model: nn.Module, domain: str):
        """Score source data (validation on held-out source identities) through the source BN
        copy and target data through the target copy: each domain's own statistics."""
        return evaluate_as(model, "source" if domain == "source" else "target")

    def pseudo_labels(self) -> tuple[np.ndarray, int] | None:
        return None if self.pseudo is None else (self.pseudo.copy(), self.num_clusters)

    def to(self, device: torch.device) -> SpCL:
        self.device = torch.device(device)
        for name in ("source_memory", "target_memory", "_pseudo_t"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(self.device))
        return self

    def setup(self, model: nn.Module, data: TrainData, *, embed: Embed,
              generator: torch.Generator) -> None:
        """Fill the hybrid memory from one embedding pass of the initial model."""
        if data.target is None:
            raise ValueError("SpCL needs the unlabeled target training images")
        if data.source is not None and data.labels is not None:
            feats = F.normalize(torch.from_numpy(embed(model, data.source)).float(), dim=1)
            labels = torch.as_tensor(data.labels, dtype=torch.long)
            classes = max(self.num_classes, int(labels.max()) + 1)
            sums = torch.zeros(classes, feats.shape[1]).index_add_(0, labels, feats)
            self.source_memory = F.normalize(sums, dim=1).to(self.device)  # mean, renormalised
        if not self.params.target_term:  # the ablation keeps no target memory
            if self.source_memory is None:
                raise ValueError("SpCL with target_term false needs labeled source data")
            return
        target = torch.from_numpy(embed(model, data.target)).float()
        self.target_memory = F.normalize(target, dim=1).to(self.device)

    # -- per epoch: clustering --------------------------------------------------------------
    def on_epoch(self, epoch: int, model: nn.Module, data: TrainData, *, embed: Embed) -> None:
        """Cluster the target memory rows; unreliable clusters fall back to singletons."""
        p = self.params
        if not p.target_term:
            return
        distance = jaccard_distance(self.target_memory.cpu().numpy(), k1=p.k1, k2=p.k2)

        def cluster(eps: float) -> np.ndarray:
            return DBSCAN(eps=eps, min_samples=p.min_samples,
                          metric="precomputed").fit_predict(distance)

        labels, self.threshold = reliable_clusters(
            cluster(p.eps), cluster(p.eps - p.eps_gap), cluster(p.eps + p.eps_gap),
            self.threshold, keep=p.independence_keep)
        self.pseudo, self.num_clusters = compact_labels(labels)
        self._pseudo_t = torch.as_tensor(self.pseudo, device=self.device)

    def target_sampler(self, epoch: int, iterations: int, batch_size: int,
                       rng: np.random.Generator) -> np.ndarray | None:
        """P x K on pseudo-labels: per group in random order, an anchor plus K - 1 other members
        (with replacement when too few); singletons drawn alone; passes repeat until full."""
        if self.pseudo is None:
            return None
        k = self.params.num_instances
        order = np.argsort(self.pseudo, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(self.pseudo[order])) + 1)
        need = iterations * batch_size
        stream: list[np.ndarray] = []
        total = 0
        while total < need:
            for g in rng.permutation(len(groups)):
                rows = groups[g]
                if len(rows) == 1 or k == 1:
                    chunk = rows[:1] if len(rows) == 1 else rng.choice(rows, 1)
                else:
                    anchor = rng.choice(rows)
                    others = rows[rows != anchor]
                    extra = rng.choice(others, k - 1, replace=len(others) < k - 1)
                    chunk = np.r_[anchor, extra]
                stream.append(chunk)
                total += len(chunk)
                if total >= need:
                    break
        return np.concatenate(stream)[:need].reshape(iterations, batch_size)

    # -- per step ---------------------------------------------------------------------------
    def prototypes(self) -> torch.Tensor:
        """All class prototypes: source centroids, target cluster centroids (mean of member
        rows, not renormalised, as the authors' averaged similarities), outlier rows."""
        if not self.params.target_term:
            return self.source_memory
        count = self.num_clusters + int((self.pseudo >= self.num_clusters).sum())
        sums = torch.zeros(count, self.target_memory.shape[1], device=self.device)
        sums.index_add_(0, self._pseudo_t, self.target_memory)
        sizes = torch.bincount(self._pseudo_t, minlength=count).clamp_min(1)
        target = sums / sizes.unsqueeze(1).to(sums.dtype)
        if self.source_memory is None:
            return target
        return torch.cat([self.source_memory, target])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        p = self.params
        protos = self.prototypes()
        offset = 0 if self.source_memory is None else len(self.source_memory)
        self._pending = []
        total = torch.zeros((), device=protos.device)
        if self.source_memory is not None and batch.source is not None:
            with use_domain(model, "source"):
                xs = model(batch.source)
            total = total + F.cross_entropy(xs @ protos.T / p.tau, batch.labels)
            self._pending.append((self.source_memory, batch.labels, xs.detach()))
        if batch.target is not None and p.target_term:
            with use_domain(model, "target"):
                xt = model(batch.target)
            labels = offset + self._pseudo_t[batch.target_index]
            total = total + F.cross_entropy(xt @ protos.T / p.tau, labels)
            self._pending.append((self.target_memory, batch.target_index, xt.detach()))
        return total

    def after_step(self, batch: Batch) -> None:
        """Momentum-update the memory rows the batch touched (source: sequential per sample)."""
        for memory, index, feats in self._pending:
            sequential_momentum_update(memory, index, feats, self.params.momentum)
        self._pending = []


__all__ = ["SpCL", "SpCLParams", "compact_labels", "jaccard_distance", "reliable_clusters",
           "sequential_momentum_update"]
