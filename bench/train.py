"""The one training loop every method runs in.

Same sampler (PML's MPerClassSampler), optimiser, schedule, augmentation, validation and early
stopping for every method: a method supplies the loss and may use the hooks of
:class:`bench.methods.base.Method` (memories, per-epoch clustering, model wrappers).
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

from bench.methods.base import Batch, Method, TrainData
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
    #: per epoch, what ``epoch_monitor`` measured after the method's ``on_epoch``
    epochs: list[dict[str, float]] = field(default_factory=list)


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


def epoch_length(data: TrainData, spec: TrainSpec) -> int:
    """Iterations per epoch: the protocol's ``epoch_iterations``, else one pass over the target
    training images (or the labeled images when there is no target)."""
    if spec.epoch_iterations is not None:
        return spec.epoch_iterations
    rows = len(data.target) if data.target is not None else len(data.labels)
    return max(1, math.ceil(rows / spec.batch_size))


def _to_device(inputs, index: np.ndarray, device: torch.device, augment: Augment | None,
               generator: torch.Generator) -> torch.Tensor:
    batch = inputs[index]
    if augment is not None:
        batch = augment(batch, generator)
    return batch.to(device, non_blocking=True)


def train(
    model: nn.Module,
    method: Method,
    data: TrainData,
    spec: TrainSpec,
    *,
    validate: Validate,
    seed: int,
    device: torch.device,
    augment: Augment | None = None,
    progress: bool = True,
    description: str = "train",
    epoch_monitor: Callable[[Method], dict[str, float]] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method``; keep the state with the best validation score.

    Inputs stay on the CPU and batches move to ``device``. Labeled batches come from PML's
    MPerClassSampler (the same for every method); target batches from the method's
    ``target_sampler`` or uniform seeded draws. Validation runs every ``spec.validate_every``
    iterations and at the end. ``checkpoint: best`` keeps the best-validated state and stops
    after ``spec.patience`` validations without improvement; ``last`` keeps the final state.
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
    labeled = data.source is not None
    batches = batch_indices(data.labels, spec, seed) if labeled else None
    labels = torch.as_tensor(data.labels, dtype=torch.long) if labeled else None
    domains = torch.as_tensor(data.domains, dtype=torch.long) \
        if labeled and data.domains is not None else None
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    epoch_len = epoch_length(data, spec)

    def run_embed(m: nn.Module, inputs) -> np.ndarray:
        return embed(m, inputs, batch_size=spec.eval_batch_size, device=device)

    method.setup(model, data, embed=run_embed, generator=generator)
    best = TrainResult(snapshot(model), validate(model), 0, 0)
    best.history.append({"iteration": 0, "loss": float("nan"), "score": best.best_score})
    stale = 0
    running = 0.0
    target_rows = None
    bar = tqdm(total=spec.iterations, desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    model.train()
    for step in range(1, spec.iterations + 1):
        epoch, position = divmod(step - 1, epoch_len)
        if position == 0:
            method.on_epoch(epoch, model, data, embed=run_embed)
            if epoch_monitor is not None and (measured := epoch_monitor(method)):
                best.epochs.append({"epoch": epoch, "iteration": step - 1, **measured})
            model.train()
            if data.target is not None:
                target_rows = method.target_sampler(epoch, epoch_len, spec.batch_size, rng)
                if target_rows is None:
                    target_rows = rng.integers(0, len(data.target), (epoch_len, spec.batch_size))
        batch = Batch(epoch=epoch, step=step)
        if labeled:
            index = batches[step - 1]
            batch.source = _to_device(data.source, index, device, augment, generator)
            batch.labels = labels[index].to(device)
            batch.domains = domains[index].to(device) if domains is not None else None
            batch.source_index = torch.as_tensor(index).to(device)
        if target_rows is not None:
            rows = np.asarray(target_rows[position], dtype=np.int64)
            batch.target = _to_device(data.target, rows, device, augment, generator)
            batch.target_index = torch.as_tensor(rows).to(device)
            if data.target_cameras is not None:
                batch.target_cameras = torch.as_tensor(data.target_cameras[rows]).to(device)
            if data.camera_views is not None:  # each row re-imaged by another camera
                views = data.camera_views.draw(data.target[rows], data.target_cameras[rows], rng)
                batch.target_views = _to_device(views, np.arange(len(rows)), device, augment,
                                                generator)
        loss = method.loss(model, batch)
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
        with torch.no_grad():
            method.after_step(batch)
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
        if spec.checkpoint == "last":
            if step == spec.iterations:
                best.best_state, best.best_score, best.best_iteration = snapshot(model), score, step
            continue
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
