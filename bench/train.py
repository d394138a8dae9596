"""The one training loop every method runs in.

Same sampler (PML's MPerClassSampler), optimiser, schedule, augmentation, validation and early
stopping for every method: a method supplies the loss and may use the hooks of
:class:`bench.methods.base.Method` (memories, per-epoch clustering, model wrappers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch import nn
from tqdm.auto import tqdm

from bench.methods.base import Batch, Method, TrainData
from bench.pipeline import (
    STREAMS,
    Prefetch,
    augment_on_device,
    batch_generator,
    default_workers,
    prepare_batch,
    to_device,
)
from bench.precision import autocast, check_precision, grad_scaler, set_memory_format
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
    """The protocol's optimiser over ``groups``, with torch's multi-tensor (``foreach``) update.

    Why ``foreach``: on the CPU torch otherwise updates one parameter tensor at a time, and on a
    small head that loop is a third of a trial (profile in benchmarks/README.md); the
    multi-tensor update computes the same values bit for bit (tests/test_train_loop.py compares
    both for every optimiser) and made a head iteration ~1.5x faster. It is CUDA's default
    already. (``fused`` is faster still but not bit-identical, so it is not used.)
    """
    kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay, "foreach": True}
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


def loader_workers(spec: TrainSpec, inputs, augment: Augment | None) -> int:
    """Input threads: the protocol's ``loader_workers``, else what the inputs are worth."""
    if spec.loader_workers is not None:
        return spec.loader_workers
    return default_workers(inputs, augment)


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

    Inputs stay on the CPU; the next batches are decoded and augmented on ``loader_workers``
    threads while the current step runs (bench.pipeline), pinned and copied without blocking
    on CUDA, where augmentation runs on the device. Each batch's augmentation has its own
    generator seeded by (seed, stream, step): the same batches whatever the worker count.
    Labeled batches come from PML's MPerClassSampler (the same for every method); target
    batches from the method's ``target_sampler`` or uniform seeded draws. The model and the
    method's loss run under ``spec.precision`` (autocast; a grad scaler for fp16); memory
    updates (``after_step``) run outside it, in float32. Validation runs every
    ``spec.validate_every`` iterations and at the end. ``checkpoint: best`` keeps the
    best-validated state and stops after ``spec.patience`` validations without improvement;
    ``last`` keeps the final state.

    Why one long function: every step shares the loop's state (the prefetch feed, the epoch's
    target rows, optimisers, scaler, early-stopping counters); the per-step pieces that stand
    alone (batch preparation, optimiser and scheduler construction, embedding) live in their
    own functions, and splitting the rest would pass a dozen values between the pieces.
    """
    check_precision(spec.precision, device)
    set_memory_format(model, spec.channels_last)
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
    scaler = grad_scaler(device, spec.precision)
    labeled = data.source is not None
    batches = batch_indices(data.labels, spec, seed) if labeled else None
    labels = torch.as_tensor(data.labels, dtype=torch.long) if labeled else None
    domains = torch.as_tensor(data.domains, dtype=torch.long) \
        if labeled and data.domains is not None else None
    generator = torch.Generator().manual_seed(seed)  # the method's setup draws from it
    rng = np.random.default_rng(seed)
    epoch_len = epoch_length(data, spec)
    workers = loader_workers(spec, data.source if labeled else data.target, augment)
    on_device = augment is not None and augment_on_device(device)
    host_augment = None if on_device else augment
    pin = device.type == "cuda"

    def run_embed(m: nn.Module, inputs) -> np.ndarray:
        return embed(m, inputs, batch_size=spec.eval_batch_size, device=device,
                     precision=spec.precision, workers=workers)

    def host_part(inputs, index: np.ndarray, stream: str, step: int) -> Callable[[], torch.Tensor]:
        generator_ = batch_generator(seed, STREAMS[stream], step) if host_augment else None
        return lambda: prepare_batch(inputs, index, augment=host_augment, generator=generator_,
                                     pin=pin)

    def step_task(step: int, rows: np.ndarray | None, views: np.ndarray | None):
        parts = {}
        if labeled:
            parts["source"] = host_part(data.source, batches[step - 1], "source", step)
        if rows is not None:
            parts["target"] = host_part(data.target, rows, "target", step)
        if views is not None:  # each row re-imaged as camera views[i] (label-free)
            restyled = data.camera_views.rows(data.target, data.target_cameras, rows, views)
            parts["target_views"] = host_part(restyled, np.arange(len(rows)), "target_views",
                                              step)
        return lambda: {name: make() for name, make in parts.items()}

    def ready(prepared: dict[str, torch.Tensor], stream: str, step: int) -> torch.Tensor:
        out = to_device(prepared[stream], device)
        if on_device:
            out = augment(out, batch_generator(seed, STREAMS[stream], step))
        return out

    def epoch_feed(epoch: int, first: int) -> Prefetch:
        """This epoch's batches, prepared ahead (target rows are known only once the epoch's
        ``on_epoch`` / ``target_sampler`` ran, so prefetching stops at epoch ends)."""
        last = min((epoch + 1) * epoch_len, spec.iterations)
        tasks = []
        for step in range(first, last + 1):
            rows = views = None
            if target_rows is not None:
                rows = np.asarray(target_rows[step - 1 - epoch * epoch_len], dtype=np.int64)
                if data.camera_views is not None:  # the camera each row is re-imaged as
                    views = data.camera_views.pick(data.target_cameras[rows], rng)
            tasks.append(step_task(step, rows, views))
        return Prefetch(tasks, workers)

    method.setup(model, data, embed=run_embed, generator=generator)
    best = TrainResult(snapshot(model), validate(model), 0, 0)
    best.history.append({"iteration": 0, "loss": float("nan"), "score": best.best_score})
    stale = 0
    running = 0.0
    target_rows = None
    feed: Prefetch | None = None
    bar = tqdm(total=spec.iterations, desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    model.train()
    try:
        for step in range(1, spec.iterations + 1):
            epoch, position = divmod(step - 1, epoch_len)
            if position == 0:
                if feed is not None:
                    feed.close()
                method.on_epoch(epoch, model, data, embed=run_embed)
                if epoch_monitor is not None and (measured := epoch_monitor(method)):
                    best.epochs.append({"epoch": epoch, "iteration": step - 1, **measured})
                model.train()
                if data.target is not None:
                    target_rows = method.target_sampler(epoch, epoch_len, spec.batch_size, rng)
                    if target_rows is None:
                        target_rows = rng.integers(0, len(data.target),
                                                   (epoch_len, spec.batch_size))
                feed = epoch_feed(epoch, step)
            prepared = next(feed)
            batch = Batch(epoch=epoch, step=step)
            if labeled:
                index = batches[step - 1]
                batch.source = ready(prepared, "source", step)
                batch.labels = labels[index].to(device)
                batch.domains = domains[index].to(device) if domains is not None else None
                batch.source_index = torch.as_tensor(index).to(device)
            if target_rows is not None:
                rows = np.asarray(target_rows[position], dtype=np.int64)
                batch.target = ready(prepared, "target", step)
                batch.target_index = torch.as_tensor(rows).to(device)
                if data.target_cameras is not None:
                    batch.target_cameras = torch.as_tensor(data.target_cameras[rows]).to(device)
                if "target_views" in prepared:
                    batch.target_views = ready(prepared, "target_views", step)
            with autocast(device, spec.precision):
                loss = method.loss(model, batch)
            value = loss.item()  # one host sync per step: the divergence check and running mean
            if not math.isfinite(value):
                raise DivergedError(f"loss became {value} at iteration {step}")
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                for o in optimizers:
                    o.step()
            else:
                scaler.scale(loss).backward()
                for o in optimizers:
                    scaler.step(o)
                scaler.update()
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
            bar.set_postfix(loss=f"{mean_loss:.4f}", val=f"{score:.4f}",
                            best=f"{best.best_score:.4f}")
            if spec.checkpoint == "last":
                if step == spec.iterations:
                    best.best_state, best.best_score, best.best_iteration = (
                        snapshot(model), score, step)
                continue
            if score > best.best_score:
                best.best_state, best.best_score, best.best_iteration = snapshot(model), score, step
                stale = 0
            else:
                stale += 1
                if stale >= spec.patience:
                    break
    finally:
        if feed is not None:
            feed.close()
        bar.close()
    return best


@torch.no_grad()
def embed(model: nn.Module, inputs, *, batch_size: int, device: torch.device,
          precision: str = "fp32", workers: int | None = None) -> np.ndarray:
    """Embeddings of ``inputs`` in eval mode under ``precision``, as float32 NumPy; the next
    batches are decoded on ``workers`` threads (default: by input kind) while one runs."""
    model.eval()
    if workers is None:
        workers = default_workers(inputs, None)
    pin = device.type == "cuda"
    tasks = [functools.partial(prepare_batch, inputs, slice(i, i + batch_size), augment=None,
                               generator=None, pin=pin)
             for i in range(0, len(inputs), batch_size)]
    out = []
    with Prefetch(tasks, workers) as feed, autocast(device, precision):
        for batch in feed:
            out.append(model(to_device(batch, device)).float().cpu())
    return torch.cat(out).numpy()
