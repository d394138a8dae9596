"""The overlapped input pipeline: the next batches are decoded and augmented while a step runs.

Why threads and not ``DataLoader`` worker processes: the expensive parts (Pillow's JPEG decode
and resize, torch's interpolation) release the GIL, so threads overlap them with the step
without pickling the dataset into every process or copying batches back through shared memory;
``benchmarks/pipeline.py`` measures both against the synchronous loop.

Determinism: every batch is a pure function of (seed, stream, step). Its augmentation draws from
its own generator, seeded from those three numbers, never from a generator shared across
batches, so the same seed gives the same batches and the same augmentation whatever the number
of workers and whatever order the threads finish in.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: stream ids of the loop's batch kinds (part of each batch generator's seed)
STREAMS = {"source": 0, "target": 1, "target_views": 2}
#: batches prepared ahead per worker thread
AHEAD_PER_WORKER = 2


def batch_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """The augmentation generator of one batch: depends on (seed, stream, step) only."""
    state = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(
        2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def default_workers(inputs: Any, augment: Augment | None) -> int:
    """Threads worth using: none when a batch is a cheap index into an in-memory tensor
    (cached features, nothing to overlap), else up to 4 (fewer on smaller machines)."""
    if isinstance(inputs, torch.Tensor) and augment is None:
        return 0
    return max(1, min(4, os.cpu_count() or 1))


def prepare_batch(inputs: Any, index: np.ndarray, *, augment: Augment | None,
                  generator: torch.Generator | None, pin: bool) -> torch.Tensor:
    """Index (decoding lazy images), augment on the CPU when given, pin for a CUDA copy."""
    batch = inputs[index]
    if not isinstance(batch, torch.Tensor):
        batch = torch.as_tensor(batch)
    if augment is not None:
        batch = augment(batch, generator)
    if pin:
        batch = batch.pin_memory()
    return batch


class Prefetch(Iterator[T]):
    """Runs ``tasks`` (zero-argument callables) ahead on ``workers`` threads; yields their
    results in task order. ``workers=0`` runs each task when its result is asked for.

    ``close()`` (or leaving a ``with`` block) cancels the tasks not started; a task's exception
    is raised where its result is consumed.
    """

    def __init__(self, tasks: Iterable[Callable[[], T]], workers: int,
                 ahead: int | None = None) -> None:
        self._tasks = iter(tasks)
        self._workers = int(workers)
        self._ahead = ahead if ahead is not None else max(1, AHEAD_PER_WORKER * self._workers)
        self._pool = (ThreadPoolExecutor(self._workers, thread_name_prefix="bench-input")
                      if self._workers > 0 else None)
        self._queue: deque[Future[T]] = deque()
        self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while len(self._queue) < self._ahead:
            task = next(self._tasks, None)
            if task is None:
                return
            self._queue.append(self._pool.submit(task))

    def __next__(self) -> T:
        if self._pool is None:
            task = next(self._tasks, None)
            if task is None:
                raise StopIteration
            return task()
        if not self._queue:
            self.close()
            raise StopIteration
        future = self._queue.popleft()
        self._fill()  # keep the workers busy while the caller waits for / uses this one
        try:
            return future.result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            for future in self._queue:
                future.cancel()
            self._queue.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._tasks = iter(())

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Non-blocking host-to-device copy (overlaps with compute when the batch is pinned)."""
    return batch.to(device, non_blocking=batch.device.type == "cpu" and device.type == "cuda")


def augment_on_device(device: torch.device) -> bool:
    """Augment on the accelerator when there is one (its interpolation is far cheaper than the
    CPU's); on the CPU, augmentation runs in the input threads."""
    return device.type == "cuda"
