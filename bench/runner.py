"""Run a protocol: validate everything first, then train and evaluate every method × seed."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import bench
from bench.augment import make_augment
from bench.data import dataset_info, load_dataset
from bench.data.records import ImageDataset
from bench.data.registry import get_spec, resolve_options
from bench.errors import BenchError
from bench.evaluate import evaluate_retrieval
from bench.features import trunk_features
from bench.methods import method_class, validate_method
from bench.models import BACKBONES, EmbeddingHead, EmbeddingModel, build_trunk, set_trunk_mode
from bench.models.backbones import Normalize
from bench.protocol import METRICS, Protocol, load_protocol
from bench.results import summary_markdown, write_table, write_text_atomically
from bench.seeding import seed_everything
from bench.splits import ClassSplit, standard_split
from bench.train import DivergedError, embed, train


@dataclass
class Plan:
    """A validated protocol: nothing is read or written before this exists."""

    protocol: Protocol
    source: str
    protocol_hash: str
    method_params: dict[str, Any]


def plan_protocol(path: str | Path) -> Plan:
    """Validate the protocol, its methods, dataset and backbone; raise BenchError otherwise."""
    protocol, digest = load_protocol(path)
    source = str(path)
    params = {
        spec.name: validate_method(spec.method, spec.params, source=source,
                                   field=f"methods.{i}")
        for i, spec in enumerate(protocol.methods)
    }
    try:
        spec = get_spec(protocol.dataset.name)
    except BenchError as error:
        raise BenchError(error.reason, source=source, field="dataset.name") from None
    try:
        resolve_options(spec, protocol.dataset.options)
    except BenchError as error:
        raise BenchError(error.reason, source=source, field="dataset.options") from None
    if not dataset_info(spec.name)["available"]:
        raise BenchError(f"dataset {spec.name!r} is not available here: "
                         f"{dataset_info(spec.name)['where']}", source=source, field="dataset.name")
    if protocol.model.backbone not in BACKBONES:
        raise BenchError(f"unknown backbone {protocol.model.backbone!r} (known: "
                         f"{', '.join(BACKBONES)})", source=source, field="model.backbone")
    if protocol.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA requested but no GPU is available", source=source, field="device")
    return Plan(protocol, source, digest, params)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass
class Inputs:
    """What the loop consumes: cached trunk features (frozen path) or raw images."""

    tensor: torch.Tensor
    feature_size: int
    weights: str
    frozen: bool


def prepare_inputs(plan: Plan, ds: ImageDataset, device: torch.device, progress: bool) -> Inputs:
    model = plan.protocol.model
    if model.trunk == "none":
        features, weights = trunk_features(ds, model.backbone, pretrained=model.pretrained,
                                           device=device, progress=progress)
        return Inputs(torch.from_numpy(features), features.shape[1], weights, True)
    trunk = build_trunk(model.backbone, pretrained=model.pretrained)
    return Inputs(torch.from_numpy(ds.images), trunk.feature_size, trunk.weights, False)


def build_model(plan: Plan, inputs: Inputs) -> EmbeddingModel:
    spec = plan.protocol.model
    head = EmbeddingHead(inputs.feature_size, spec.embedding_size, spec.head_hidden)
    if inputs.frozen:
        return EmbeddingModel(head)
    trunk = build_trunk(spec.backbone, pretrained=spec.pretrained)
    set_trunk_mode(trunk, spec.trunk)
    return EmbeddingModel(head, torch.nn.Sequential(Normalize(), trunk.network))


class ProtocolRun:
    """One protocol's run: loads data once, then trains each method × seed in turn."""

    def __init__(self, plan: Plan, results_dir: Path, *, progress: bool = True) -> None:
        self.plan = plan
        self.protocol = plan.protocol
        self.results_dir = results_dir
        self.progress = progress
        self.device = pick_device(self.protocol.device)
        self.rows: list[dict] = []
        self.history: list[dict] = []
        self.failures: dict[str, str] = {}

    def run(self) -> Path:
        started = time.perf_counter()
        p = self.protocol
        ds = load_dataset(p.dataset.name, **p.dataset.options)
        split = standard_split(ds.labels, p.split.validation_fraction)
        inputs = prepare_inputs(self.plan, ds, self.device, self.progress)
        self.context = self._context(ds, split, inputs)
        jobs = [(m, s) for m in p.methods for s in p.seeds]
        outer = tqdm(jobs, desc=p.name, disable=not self.progress, dynamic_ncols=True)
        for spec, seed in outer:
            outer.set_postfix(method=spec.name, seed=seed)
            if spec.name in self.failures:
                continue
            try:
                self._run_one(spec, seed, ds, split, inputs)
            except DivergedError as error:
                self.failures[spec.name] = f"seed {seed}: {error}"
                tqdm.write(f"bench: {p.name}: method {spec.name} failed: {error}")
            self._write(time.perf_counter() - started)
        return self.results_dir / "summary.md"

    def _context(self, ds: ImageDataset, split: ClassSplit, inputs: Inputs) -> dict[str, Any]:
        counts = {role: int(np.isin(ds.labels, getattr(split, role)).sum())
                  for role in ("train", "validation", "test")}
        return {
            "classes": {r: len(getattr(split, r)) for r in ("train", "validation", "test")},
            "images": counts,
            "weights": inputs.weights,
        }

    def _run_one(self, spec, seed: int, ds: ImageDataset, split: ClassSplit,
                 inputs: Inputs) -> None:
        p = self.protocol
        seed_everything(seed)
        train_mask = np.isin(ds.labels, split.train)
        val_mask = np.isin(ds.labels, split.validation)
        test_mask = np.isin(ds.labels, split.test)
        train_labels = np.searchsorted(split.train, ds.labels[train_mask])
        model = build_model(self.plan, inputs)
        method = method_class(spec.method)(self.plan.method_params[spec.name],
                                           num_classes=len(split.train),
                                           embedding_size=p.model.embedding_size)
        val_inputs, val_labels = inputs.tensor[val_mask], ds.labels[val_mask]
        primary = p.evaluation.primary
        batch = p.train.eval_batch_size

        def validate(m: torch.nn.Module) -> float:
            emb = embed(m, val_inputs, batch_size=batch, device=self.device)
            return evaluate_retrieval(emb, val_labels, nmi=primary == "nmi", seed=seed)[primary]

        result = train(model, method, inputs.tensor[train_mask], train_labels, p.train,
                       validate=validate, seed=seed, device=self.device,
                       augment=None if inputs.frozen else make_augment(p.train.augmentation),
                       progress=self.progress, description=f"{spec.name} s{seed}")
        model.load_state_dict(result.best_state)
        test_emb = embed(model, inputs.tensor[test_mask], batch_size=batch, device=self.device)
        metrics = evaluate_retrieval(test_emb, ds.labels[test_mask], nmi=p.evaluation.nmi,
                                     seed=seed)
        provenance = self._provenance(seed, result.best_iteration, result.iterations_run)
        for metric in METRICS:
            if metric in metrics:
                self.rows.append({"protocol": p.name, "dataset": p.dataset.name,
                                  "split": split.name, "method": spec.name, "seed": seed,
                                  "metric": metric, "value": float(metrics[metric]),
                                  **provenance})
        for h in result.history:
            self.history.append({"method": spec.name, "seed": seed, **h})

    def _provenance(self, seed: int, best_iteration: int, iterations_run: int) -> dict[str, Any]:
        import pytorch_metric_learning

        return {
            "query_reference": "test=test, self-match excluded",
            "k": self.protocol.evaluation.k,
            "best_iteration": best_iteration,
            "iterations_run": iterations_run,
            "protocol_sha256": self.plan.protocol_hash[:16],
            "backbone": self.protocol.model.backbone,
            "weights": self.context["weights"],
            "device": str(self.device),
            "bench": bench.__version__,
            "torch": torch.__version__,
            "pml": pytorch_metric_learning.__version__,
            "python": platform.python_version(),
        }

    def _write(self, elapsed: float) -> None:
        p = self.protocol
        if self.rows:
            write_table(self.results_dir / "results.csv", self.rows)
        if self.history:
            import pandas as pd

            write_text_atomically(self.results_dir / "history.csv",
                                  pd.DataFrame(self.history).to_csv(index=False))
        c = self.context
        header = [
            f"Protocol `{self.plan.source}` (sha256 {self.plan.protocol_hash[:16]}), "
            f"dataset `{p.dataset.name}`, standard split: "
            f"{c['classes']['train']} train / {c['classes']['validation']} validation / "
            f"{c['classes']['test']} test classes "
            f"({c['images']['train']} / {c['images']['validation']} / {c['images']['test']} images).",
            f"Backbone {p.model.backbone} ({c['weights']}), trunk `{p.model.trunk}`, "
            f"{p.model.embedding_size}-d embeddings; {p.train.iterations} iterations max, "
            f"batch {p.train.batch_size} (m={p.train.m_per_class}); early stopping on validation "
            f"`{p.evaluation.primary}`. Test: query = reference = test classes, self-match "
            f"excluded, k = {p.evaluation.k}. Seeds: {', '.join(map(str, p.seeds))}. "
            f"Device {self.device}; elapsed {elapsed:.0f} s.",
        ]
        metrics = [m for m in METRICS if m != "nmi" or p.evaluation.nmi]
        text = summary_markdown(self.rows, title=f"Results: {p.name}", header_lines=header,
                                metrics=metrics, failures=self.failures,
                                method_order=[m.name for m in p.methods])
        write_text_atomically(self.results_dir / "summary.md", text)


def run_protocol(path: str | Path, *, results_root: str | Path = "results",
                 progress: bool = True) -> tuple[Path, dict[str, str]]:
    """Validate, then run; returns the summary path and the failed methods with reasons."""
    plan = plan_protocol(path)
    run = ProtocolRun(plan, Path(results_root) / plan.protocol.name, progress=progress)
    summary = run.run()
    return summary, run.failures
