"""The one training loop every method runs in.

Same sampler (PML's MPerClassSampler), optimiser, schedule, augmentation, validation and early
stopping for every method: a method only supplies the loss (and may own parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch import nn
from tqdm.auto import tqdm

from bench.methods.base import Method
from bench.protocol import OptimizerSpec, ScheduleSpec, TrainSpec
from bench.seeding import pml_numpy_random

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Validate = Callable[[nn.Module], float]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the run is recorded as failed, with this reason."""


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_score: float
    best_iteration: int
    iterations_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(spec: OptimizerSpec, groups: list[dict]) -> torch.optim.Optimizer:
    kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    if spec.name == "sgd":
        return torch.optim.SGD(groups, momentum=spec.momentum, **kwargs)
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=spec.momentum, **kwargs)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.name](groups, **kwargs)


def make_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, iterations: int):
    if spec.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    if spec.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, spec.step_size, gamma=spec.gamma)
    return None


def batch_indices(labels: np.ndarray, spec: TrainSpec, seed: int) -> np.ndarray:
    """All training batches up front: (iterations, batch_size) indices from MPerClassSampler."""
    total = spec.iterations * spec.batch_size
    sampler = MPerClassSampler(labels, m=spec.m_per_class, batch_size=spec.batch_size,
                               length_before_new_iter=total)
    with pml_numpy_random(seed):
        flat = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    return flat.reshape(spec.iterations, spec.batch_size)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A real copy of the weights (not references that later steps would overwrite)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(
    model: nn.Module,
    method: Method,
    inputs: torch.Tensor,
    labels: np.ndarray,
    spec: TrainSpec,
    *,
    validate: Validate,
    seed: int,
    device: torch.device,
    augment: Augment | None = None,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` with ``method``'s loss; keep the state with the best validation score.

    ``inputs`` stays on the CPU and batches move to ``device``; ``labels`` are 0..C-1.
    Validation runs every ``spec.validate_every`` iterations and at the end; training stops early
    after ``spec.patience`` validations without improvement.
    """
    model.to(device)
    method.to(device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = make_optimizer(spec.optimizer, groups)
    method_params = method.parameters()
    method_optimizer = (make_optimizer(spec.loss_optimizer, [{"params": method_params}])
                        if method_params else None)
    optimizers = [o for o in (optimizer, method_optimizer) if o is not None]
    schedulers = [s for o in optimizers
                  if (s := make_scheduler(spec.schedule, o, spec.iterations)) is not None]
    batches = batch_indices(labels, spec, seed)
    label_tensor = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)

    best = TrainResult(snapshot(model), validate(model), 0, 0)
    best.history.append({"iteration": 0, "loss": float("nan"), "score": best.best_score})
    stale = 0
    running = 0.0
    bar = tqdm(total=spec.iterations, desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    model.train()
    for step, index in enumerate(batches, start=1):
        batch = inputs[index]
        if augment is not None:
            batch = augment(batch, generator)
        embeddings = model(batch.to(device, non_blocking=True))
        loss = method.loss(embeddings, label_tensor[index].to(device))
        value = loss.item()  # one host sync per step: the divergence check and the running mean
        if not math.isfinite(value):
            bar.close()
            raise DivergedError(f"loss became {value} at iteration {step}")
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optimizers:
            o.step()
        for s in schedulers:
            s.step()
        running += value
        bar.update()
        best.iterations_run = step
        if step % spec.validate_every and step != spec.iterations:
            continue
        score = validate(model)
        model.train()
        mean_loss = running / (step - best.history[-1]["iteration"])
        running = 0.0
        best.history.append({"iteration": step, "loss": mean_loss, "score": score})
        bar.set_postfix(loss=f"{mean_loss:.4f}", val=f"{score:.4f}", best=f"{best.best_score:.4f}")
        if score > best.best_score:
            best.best_state, best.best_score, best.best_iteration = snapshot(model), score, step
            stale = 0
        else:
            stale += 1
            if stale >= spec.patience:
                break
    bar.close()
    return best


@torch.no_grad()
def embed(model: nn.Module, inputs: torch.Tensor, *, batch_size: int,
          device: torch.device) -> np.ndarray:
    """Embeddings of ``inputs`` in eval mode, as float32 NumPy."""
    model.eval()
    out = [model(inputs[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy()
