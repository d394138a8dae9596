"""One training configuration on one fold: the unit that searches and reproductions repeat.

Everything here is the same for every method; the method contributes only its loss (and
parameters it owns), built from its protocol entry plus the searched values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.augment import make_augment
from bench.data.records import ImageDataset
from bench.evaluate import evaluate_retrieval
from bench.features import trunk_features
from bench.methods import method_class
from bench.models import EmbeddingHead, EmbeddingModel, FrozenBatchNorm, build_trunk, set_trunk_mode
from bench.models.backbones import Normalize
from bench.protocol import Protocol, TrainSpec
from bench.seeding import seed_everything
from bench.splits import ClassSplit
from bench.train import embed, train


@dataclass
class Inputs:
    """What the loop consumes: cached trunk features (frozen path) or raw images."""

    tensor: torch.Tensor
    feature_size: int
    weights: str
    frozen: bool


def prepare_inputs(protocol: Protocol, ds: ImageDataset, device: torch.device,
                   progress: bool) -> Inputs:
    model = protocol.model
    if model.trunk == "none":
        features, weights = trunk_features(ds, model.backbone, pretrained=model.pretrained,
                                           device=device, progress=progress)
        return Inputs(torch.from_numpy(features), features.shape[1], weights, True)
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
    model: EmbeddingModel


def fit_fold(protocol: Protocol, ds: ImageDataset, inputs: Inputs, split: ClassSplit, *,
             method: str, parsed_params: Any, train_spec: TrainSpec, seed: int,
             device: torch.device, progress: bool, description: str) -> FoldResult:
    """Train on ``split.train`` with early stopping on ``split.validation``; best state loaded."""
    seed_everything(seed)
    train_mask = np.isin(ds.labels, split.train)
    val_mask = np.isin(ds.labels, split.validation)
    train_labels = np.searchsorted(split.train, ds.labels[train_mask])
    model = build_model(protocol, inputs)
    loss = method_class(method)(parsed_params, num_classes=len(split.train),
                                embedding_size=protocol.model.embedding_size)
    val_inputs, val_labels = inputs.tensor[val_mask], ds.labels[val_mask]
    primary = protocol.evaluation.primary

    def validate(m: nn.Module) -> float:
        emb = embed(m, val_inputs, batch_size=train_spec.eval_batch_size, device=device)
        return evaluate_retrieval(emb, val_labels, nmi=primary == "nmi", seed=seed)[primary]

    augment = None if inputs.frozen else make_augment(train_spec.augmentation)
    result = train(model, loss, inputs.tensor[train_mask], train_labels, train_spec,
                   validate=validate, seed=seed, device=device, augment=augment,
                   progress=progress, description=description)
    model.load_state_dict(result.best_state)
    return FoldResult(result.best_score, result.best_iteration, result.iterations_run,
                      result.history, model)


def evaluate_test(protocol: Protocol, ds: ImageDataset, inputs: Inputs, split: ClassSplit,
                 models: list[EmbeddingModel], *, seed: int,
                 device: torch.device) -> dict[str, dict[str, float]]:
    """Test metrics per fold model, their mean ("separate") and, with several folds, of the
    fold models' L2-normalised embeddings concatenated ("concatenated"), as the Reality Check."""
    mask = np.isin(ds.labels, split.test)
    labels = ds.labels[mask]
    batch = protocol.train.eval_batch_size
    nmi = protocol.evaluation.nmi
    embeddings = [embed(m, inputs.tensor[mask], batch_size=batch, device=device) for m in models]
    out = {f"fold{i}": evaluate_retrieval(e, labels, nmi=nmi, seed=seed)
           for i, e in enumerate(embeddings)}
    keys = out["fold0"].keys()
    out["separate"] = {k: float(np.mean([out[f"fold{i}"][k] for i in range(len(models))]))
                       for k in keys}
    if len(models) > 1:
        normalised = [e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12) for e in embeddings]
        out["concatenated"] = evaluate_retrieval(np.concatenate(normalised, axis=1), labels,
                                                 nmi=nmi, seed=seed)
    return out
