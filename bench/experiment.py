"""One training configuration on one fold: the unit that searches and reproductions repeat.

Everything here is the same for every method; the method contributes its loss and hooks (see
bench.methods.base), built from its protocol entry plus the searched values, and receives the
data its setting offers and it declares.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.augment import make_augment
from bench.data.merge import junk_classes
from bench.data.records import ImageDataset
from bench.errors import BenchError, DataError
from bench.evaluate import evaluate_reid, evaluate_retrieval
from bench.evaluate.pseudo_labels import pseudo_label_quality
from bench.features import trunk_features
from bench.methods import method_class
from bench.methods.base import Method, ScoreFn
from bench.models import EmbeddingHead, EmbeddingModel, FrozenBatchNorm, build_trunk, set_trunk_mode
from bench.models.backbones import Normalize
from bench.protocol import Protocol, TrainSpec
from bench.seeding import seed_everything
from bench.settings import Layout, evaluation_rows, fold_rows
from bench.splits import ClassSplit
from bench.train import embed, train


@dataclass
class Inputs:
    """What the loop consumes: cached trunk features (frozen path) or raw images."""

    tensor: torch.Tensor
    feature_size: int
    weights: str
    frozen: bool
    #: ``cache_frozen``: the tensor holds activations entering this trained stage (+ pooling)
    stage: nn.Module | None = None


def prepare_inputs(protocol: Protocol, ds: ImageDataset, device: torch.device,
                   progress: bool) -> Inputs:
    model = protocol.model
    if model.trunk == "none":
        features, weights = trunk_features(ds, model.backbone, pretrained=model.pretrained,
                                           device=device, progress=progress)
        return Inputs(torch.from_numpy(features), features.shape[1], weights, True)
    if model.cache_frozen:
        from bench.activations import cached_activations

        acts, split, _ = cached_activations(ds, model.backbone, pretrained=model.pretrained,
                                            crop_size=protocol.train.augmentation.crop_size,
                                            device=device, progress=progress)
        return Inputs(torch.from_numpy(acts), split.trunk.feature_size, split.trunk.weights,
                      False, stage=split.suffix)
    trunk = build_trunk(model.backbone, pretrained=model.pretrained)
    if isinstance(ds.images, np.ndarray):
        return Inputs(torch.from_numpy(ds.images), trunk.feature_size, trunk.weights, False)
    return Inputs(LazyImageTensor(ds.images), trunk.feature_size, trunk.weights, False)


class LazyImageTensor:
    """File-backed images decoded batch by batch, so SOP-sized sets never sit in memory whole.

    Boolean masks select lazily (the loop's train/validation/test subsets); integer indices and
    slices decode and return a uint8 NHWC tensor, as the in-memory path does.
    """

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.dtype == bool:
            return LazyImageTensor(self.images.select(np.flatnonzero(index)))
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return torch.from_numpy(self.images[index])


class CenterCrop(nn.Module):
    """Evaluation-time centre crop to the training crop size (no-op on already-cropped input)."""

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size is None or images.shape[1] <= self.size:
            return images
        top = (images.shape[1] - self.size) // 2
        left = (images.shape[2] - self.size) // 2
        return images[:, top:top + self.size, left:left + self.size]


def build_model(protocol: Protocol, inputs: Inputs) -> EmbeddingModel:
    spec = protocol.model
    head = EmbeddingHead(inputs.feature_size, spec.embedding_size, spec.head_hidden)
    if inputs.frozen:
        return EmbeddingModel(head)
    if inputs.stage is not None:  # cached activations: only the last stage (+ pooling) runs
        stage = copy.deepcopy(inputs.stage).requires_grad_(True)
        if spec.freeze_batchnorm:
            stage = FrozenBatchNorm(stage, freeze_affine=spec.freeze_batchnorm_affine)
        return EmbeddingModel(head, stage)
    trunk = build_trunk(spec.backbone, pretrained=spec.pretrained)
    set_trunk_mode(trunk, spec.trunk)
    network = trunk.network
    if spec.freeze_batchnorm:
        network = FrozenBatchNorm(network, freeze_affine=spec.freeze_batchnorm_affine)
    crop = CenterCrop(protocol.train.augmentation.crop_size)
    return EmbeddingModel(head, nn.Sequential(crop, Normalize(trunk.normalization), network))


def apply_search_values(params: dict[str, Any], train_spec: TrainSpec,
                        values: dict[str, Any]) -> tuple[dict[str, Any], TrainSpec]:
    """Put searched values into a copy of the method's params (dotted paths) and train spec."""
    params = copy.deepcopy(params)
    for key, value in values.items():
        if key == "loss_optimizer.lr":
            loss_optimizer = train_spec.loss_optimizer.model_copy(update={"lr": value})
            train_spec = train_spec.model_copy(update={"loss_optimizer": loss_optimizer})
            continue
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return params, train_spec


@dataclass
class FoldResult:
    validation_score: float
    best_iteration: int
    iterations_run: int
    history: list[dict[str, float]]
    model: nn.Module  # the (method-wrapped) network with its best state loaded
    method: Method
    data_used: frozenset[str]
    #: the state at the end of training (only kept for ``save: {checkpoints: last}``)
    last_state: dict[str, torch.Tensor] | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)  # pseudo-label audit


def score_rows(model: nn.Module, method: Method, ds: ImageDataset, inputs: Inputs,
               query: np.ndarray, gallery: np.ndarray | None, *, nmi: bool, seed: int,
               batch_size: int, device: torch.device,
               precision: str = "fp32",
               sink: dict[str, list] | None = None) -> dict[str, float]:
    """Metrics of one model: retrieval with query = reference (``gallery`` None), else re-ID
    query -> gallery across cameras. Ranks with the method's ``score_fn`` when it has one.
    Embeddings are extracted under ``precision``; the kNN search runs on ``device`` when it is
    an accelerator (torch), else on faiss-cpu.
    ``sink``: the embeddings are appended to its "query" / "gallery" lists (to be saved)."""
    score_fn = method.score_fn(model, device)
    q = embed(model, inputs.tensor[query], batch_size=batch_size, device=device,
              precision=precision)
    if sink is not None:
        sink.setdefault("query", []).append(q)
        sink.setdefault("score_fn", []).append(score_fn is not None)
    if gallery is None:
        return evaluate_retrieval(q, ds.labels[query], nmi=nmi, seed=seed, score_fn=score_fn,
                                  device=knn_device(device))
    g = embed(model, inputs.tensor[gallery], batch_size=batch_size, device=device,
              precision=precision)
    if sink is not None:
        sink.setdefault("gallery", []).append(g)
    return evaluate_reid(q, ds.labels[query], ds.cameras[query], g, reid_ids(ds, gallery),
                         ds.cameras[gallery], score_fn=score_fn)


def knn_device(device: torch.device) -> torch.device | None:
    """Where retrieval's exact kNN runs: torch on an accelerator, faiss-cpu (None) on the CPU."""
    return device if device.type == "cuda" else None


def reid_ids(ds: ImageDataset, rows: np.ndarray) -> np.ndarray:
    """Identities for the re-ID evaluator: class indices, junk classes as -1 (ignored)."""
    labels = ds.labels[rows]
    return np.where(np.isin(labels, junk_classes(ds)), -1, labels)


def build_fold_model(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
                     split: ClassSplit, *, method: str, parsed_params: Any, seed: int):
    """The method plug-in, its seeded untrained model and the fold's rows: one place, so the
    untrained-embedding baseline (bench.ood_eval) starts from exactly the trained model's
    initial weights."""
    seed_everything(seed)  # fixes model initialisation; the loop seeds its own generators
    cls = method_class(method)
    rows = fold_rows(layout, ds, inputs.tensor, split, cls.consumed(layout.kinds))
    plugin = cls(parsed_params, num_classes=rows.data.num_classes,
                 embedding_size=protocol.model.embedding_size)
    model = plugin.wrap_model(build_model(protocol, inputs), backbone=protocol.model.backbone)
    return plugin, model, rows


def fit_fold(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
             split: ClassSplit, *, method: str, parsed_params: Any, train_spec: TrainSpec,
             seed: int, device: torch.device, progress: bool, description: str) -> FoldResult:
    """Train on ``split.train`` (plus whatever else the setting gives this method) with early
    stopping on ``split.validation``; the best state is loaded."""
    plugin, model, rows = build_fold_model(protocol, ds, inputs, layout, split, method=method,
                                           parsed_params=parsed_params, seed=seed)
    primary = protocol.evaluation.primary

    def validate(m: nn.Module) -> float:
        try:
            with plugin.evaluation_domain(m, "source"):  # held-out labeled (source) identities
                return score_rows(m, plugin, ds, inputs, rows.validation,
                                  rows.validation_gallery, nmi=primary == "nmi", seed=seed,
                                  batch_size=train_spec.eval_batch_size, device=device,
                                  precision=train_spec.precision)[primary]
        except BenchError as error:
            if error.field != "gallery_ids":
                raise  # e.g. a method's NaN scores: its own failure
            # the data cannot validate (no cross-camera match): not the method's failure
            raise validation_data_error(error, protocol, ds, split) from None

    truth = ds.labels[rows.target_rows]  # audit only: never given to the method

    def monitor(method: Method) -> dict[str, float]:
        pseudo = method.pseudo_labels()
        return {} if pseudo is None else pseudo_label_quality(pseudo[0], pseudo[1], truth)

    augment = None if inputs.frozen else make_augment(train_spec.augmentation)
    result = train(model, plugin, rows.data, train_spec, validate=validate, seed=seed,
                   device=device, augment=augment, progress=progress, description=description,
                   epoch_monitor=monitor)
    last = ({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if protocol.save.checkpoints == "last" else None)
    model.load_state_dict(result.best_state)
    return FoldResult(result.best_score, result.best_iteration, result.iterations_run,
                      result.history, model, plugin, rows.data.kinds, last, result.epochs)


def validation_data_error(error: BenchError, protocol: Protocol, ds: ImageDataset,
                          split: ClassSplit) -> DataError:
    """The line for validation data that cannot be scored (e.g. re-ID validation identities
    with no same-identity image from another camera): names validation and the source."""
    source = ", ".join(protocol.setting.source) or ds.name
    return DataError(f"validation ({split.name}, held-out identities of the source {source}) "
                     f"cannot be scored: {error.reason}; choose source data whose identities "
                     f"appear under several cameras, or more validation identities",
                     source=f"dataset {ds.name}", field="split.validation_fraction")


def concatenated_score_fn(score_fns: list[ScoreFn | None], widths: list[int]) -> ScoreFn | None:
    """Score on concatenated fold embeddings: the sum of each fold's own score on its columns
    (for Euclidean folds that is the squared distance of the concatenation, up to sign)."""
    if all(f is None for f in score_fns):
        return None
    bounds = np.cumsum([0, *widths])
    cache: dict[str, Any] = {"ref": None, "parts": None}

    def score(block: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if cache["ref"] is not reference:  # slice the reference once per gallery
            cache["ref"] = reference
            cache["parts"] = [np.ascontiguousarray(reference[:, a:b])
                              for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        total = np.zeros((len(block), len(reference)), dtype=np.float64)
        for fn, a, b, ref in zip(score_fns, bounds[:-1], bounds[1:], cache["parts"],
                                 strict=True):
            q = np.ascontiguousarray(block[:, a:b])
            if fn is None:
                total -= ((q ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None, :]
                          - 2.0 * q @ ref.T)
            else:
                total += np.asarray(fn(q, ref), dtype=np.float64)
        return total

    return score


def evaluate_test(protocol: Protocol, ds: ImageDataset, inputs: Inputs, layout: Layout,
                  test_classes: np.ndarray, results: list[FoldResult], *, seed: int,
                  device: torch.device, sink: dict[str, list] | None = None
                  ) -> dict[str, dict[str, float]]:
    """Test metrics per fold model, their mean ("separate") and, with several folds, of the
    fold models' L2-normalised embeddings concatenated ("concatenated"), as the Reality Check.
    ``dml``: query = reference = test classes; ``uda``/``dg``: target query -> gallery."""
    query, gallery = evaluation_rows(layout, ds, test_classes)
    batch = protocol.train.eval_batch_size
    nmi = protocol.evaluation.nmi and gallery is None
    sink = {} if sink is None else sink  # each fold's embeddings, also for the concatenation

    def embeddings(part: str) -> list[np.ndarray]:
        """The folds' embeddings that score_rows computed, L2-normalised."""
        return [e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
                for e in sink[part][-len(results):]]

    out = {f"fold{i}": score_rows(r.model, r.method, ds, inputs, query, gallery, nmi=nmi,
                                  seed=seed, batch_size=batch, device=device,
                                  precision=protocol.train.precision, sink=sink)
           for i, r in enumerate(results)}
    keys = out["fold0"].keys()
    out["separate"] = {k: float(np.mean([out[f"fold{i}"][k] for i in range(len(results))]))
                       for k in keys}
    if len(results) > 1:
        q = embeddings("query")
        score_fn = concatenated_score_fn([r.method.score_fn(r.model, device) for r in results],
                                         [e.shape[1] for e in q])
        if gallery is None:
            out["concatenated"] = evaluate_retrieval(
                np.concatenate(q, axis=1), ds.labels[query], nmi=nmi, seed=seed,
                score_fn=score_fn, device=knn_device(device))
        else:
            g = embeddings("gallery")
            out["concatenated"] = evaluate_reid(
                np.concatenate(q, axis=1), ds.labels[query], ds.cameras[query],
                np.concatenate(g, axis=1), reid_ids(ds, gallery), ds.cameras[gallery],
                score_fn=score_fn)
    return out
