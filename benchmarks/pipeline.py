"""Input pipeline on a generated tree of CUB-like JPEGs: decode + augment throughput, pipeline
efficiency with a simulated device step, and the harness against a bare PyTorch loop.

(a) decode + augment throughput on one core: ``LazyImages`` decode (short side 256, centre
    crop) + the Reality Check augmentation (random resized crop 227, scale 0.16-1, flip), in one
    thread with one torch thread.
(b) the harness's loop (``bench.train.train``) with a *simulated device step*: the method's loss
    sleeps a fixed time per batch (releasing the CPU, as a GPU step would) equal to the measured
    input time per batch. Pipeline efficiency = max(input, step) / actual time per batch; the
    synchronous loop (``loader_workers: 0``) is about 0.5 by construction. The same batches are
    also fed by ``torch.utils.data.DataLoader`` worker processes (same decode + augment
    function, per-batch seeds) for the threads-vs-processes choice.
(c) harness vs the bare loop a user would write: torchvision ``ImageFolder``-style dataset
    (PIL decode, Resize 256, RandomResizedCrop 227, flip, ToTensor, Normalize) +
    ``DataLoader(num_workers=2, batch_sampler=PML MPerClassSampler)`` + PML MultiSimilarityLoss +
    Adam, on the same tree and the same MobileNetV2 + 128-d head; rounds alternate in one
    process.

Usage: python benchmarks/pipeline.py [--images 2000] [--root DIR] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_metric_learning import losses, samplers
from torch import nn

from bench.augment import make_augment
from bench.data.real.lazy import LazyImages
from bench.experiment import LazyImageTensor
from bench.methods.base import Method, TrainData
from bench.methods.pml_loss import PmlLoss, PmlLossParams
from bench.models import EmbeddingHead, EmbeddingModel, Normalize, build_trunk
from bench.pipeline import batch_generator, prepare_batch
from bench.protocol import AugmentationSpec, TrainSpec
from bench.train import batch_indices, train

AUGMENT = AugmentationSpec(random_resized_crop_scale=(0.16, 1.0),
                           random_resized_crop_ratio=(0.75, 1.33), crop_size=227,
                           horizontal_flip=0.5)
CLASSES = 100


def make_tree(root: Path, images: int, seed: int = 0) -> list[str]:
    """CUB-like photos: 500 x 375 JPEGs (quality 90) with smooth structure and noise, so they
    compress and decode like photographs (about 40-60 kB each)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    paths = []
    for i in range(images):
        c = i % CLASSES
        relative = f"{c:03d}/{i:05d}.jpg"
        paths.append(relative)
        if (root / relative).is_file():
            continue
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        base = rng.uniform(40, 215, 3)
        wave = 60 * np.sin(fx * xx + fy * yy + phase)[..., None]
        pixels = np.clip(base + wave + rng.normal(0, 12, (375, 500, 3)), 0, 255)
        (root / f"{c:03d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(root / relative, quality=90)
    return paths


class Pool(nn.Module):
    """A negligible model (mean colour -> linear): the step cost is the simulated wait."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.float().mean(dim=(1, 2)) / 255)


class SimulatedStep(Method):
    """Loss = a tiny real loss; the step itself is a fixed sleep (a device computing)."""

    @classmethod
    def validate_params(cls, params, *, source, field):
        return params

    def __init__(self, wait: float) -> None:
        self.wait = wait

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        time.sleep(self.wait)
        return model(batch.source).pow(2).mean()


def throughput_per_core(images: LazyImages, count: int) -> float:
    """Images/s of decode + augmentation in one thread with one torch thread."""
    augment = make_augment(AUGMENT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for i in range(count):
            batch = torch.from_numpy(np.array(images[i][None]))
            augment(batch, generator)
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def harness_seconds_per_batch(data: TrainData, spec: TrainSpec, wait: float) -> float:
    start = time.perf_counter()
    train(Pool(), SimulatedStep(wait), data, spec, validate=lambda m: 0.0, seed=0,
          device=torch.device("cpu"), augment=make_augment(AUGMENT), progress=False)
    return (time.perf_counter() - start) / spec.iterations


class BatchDataset(torch.utils.data.Dataset):
    """One item = one precomputed batch, decoded + augmented with its own seed (for
    DataLoader worker processes)."""

    def __init__(self, inputs, batches: np.ndarray) -> None:
        self.inputs, self.batches = inputs, batches
        self.augment = make_augment(AUGMENT)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return prepare_batch(self.inputs, self.batches[i], augment=self.augment,
                             generator=batch_generator(0, 0, i + 1), pin=False)


def dataloader_seconds_per_batch(inputs, batches: np.ndarray, wait: float, workers: int) -> float:
    loader = torch.utils.data.DataLoader(BatchDataset(inputs, batches), batch_size=None,
                                         num_workers=workers, prefetch_factor=2,
                                         persistent_workers=False)
    start = time.perf_counter()
    for _ in loader:
        time.sleep(wait)
    return (time.perf_counter() - start) / len(batches)


# --- (c) harness vs bare loop --------------------------------------------------------------------
def mobilenet_parts(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    trunk = build_trunk("mobilenet_v2", pretrained=False).network
    return trunk, EmbeddingHead(1280, 128, 0)


def bare_loop(root: Path, paths: list[str], labels: np.ndarray, spec: TrainSpec,
              channels_last: bool = False) -> float:
    """What a user writes: torchvision transforms + DataLoader workers + PML loss + Adam.

    ``channels_last`` converts model and batches to NHWC memory, the layout the harness's
    ``Normalize`` produces from decoded NHWC images; on CPU (oneDNN) MobileNetV2's step is ~30 %
    faster in it, so this variant separates the memory-format gain from the input pipeline's.
    """
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(256), transforms.RandomResizedCrop(227, scale=(0.16, 1.0)),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class Folder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            with Image.open(root / paths[i]) as image:
                return transform(image.convert("RGB")), int(labels[i])

    trunk, head = mobilenet_parts()
    model = nn.Sequential(trunk, head)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    start = time.perf_counter()
    sampler = samplers.MPerClassSampler(labels, m=spec.m_per_class, batch_size=spec.batch_size,
                                        length_before_new_iter=spec.iterations * spec.batch_size)
    loader = torch.utils.data.DataLoader(Folder(), batch_size=spec.batch_size, sampler=sampler,
                                         num_workers=2, drop_last=True)
    loss_fn = losses.MultiSimilarityLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    model.train()
    for images, target in loader:
        loss = loss_fn(model(images.contiguous(memory_format=layout)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def harness_loop(images: LazyImages, labels: np.ndarray, spec: TrainSpec) -> float:
    trunk, head = mobilenet_parts()
    model = EmbeddingModel(head, nn.Sequential(Normalize(), trunk))
    method = PmlLoss(PmlLossParams(loss="MultiSimilarityLoss"), num_classes=CLASSES,
                     embedding_size=128)
    data = TrainData(source=LazyImageTensor(images), labels=labels, num_classes=CLASSES)
    start = time.perf_counter()
    train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=torch.device("cpu"),
          augment=make_augment(AUGMENT), progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--root", type=Path, help="tree folder (default: a temporary folder)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=30, help="batches per (b) run")
    parser.add_argument("--workers", type=int, default=4, help="input threads in (b)")
    parser.add_argument("--train-iterations", type=int, default=12, help="batches per (c) run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds in (c)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"])
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    started = time.perf_counter()
    paths = make_tree(root, args.images)
    labels = np.array([int(p.split("/")[0]) for p in paths])
    size = sum(os.path.getsize(root / p) for p in paths) / len(paths) / 1e3
    print(f"# {len(paths)} JPEGs 500x375 (mean {size:.0f} kB) in {root}, {CLASSES} classes; "
          f"made in {time.perf_counter() - started:.0f} s; {os.cpu_count()} cores; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()}")
    images = LazyImages(root, paths, 256)

    if "a" not in args.skip:
        rate = throughput_per_core(images, min(200, len(paths)))
        print(f"(a) decode + augment, 1 thread: {rate:.1f} images/s per core "
              f"({1e3 / rate:.1f} ms per image)")

    if "b" not in args.skip:
        data = TrainData(source=LazyImageTensor(images), labels=labels, num_classes=CLASSES)
        spec = TrainSpec(iterations=args.iterations, batch_size=args.batch, m_per_class=4,
                         validate_every=10 * args.iterations, loader_workers=0)
        input_time = harness_seconds_per_batch(data, spec, 0.0)
        print(f"(b) input time (synchronous, no step): {1e3 * input_time:.0f} ms per batch of "
              f"{args.batch}; simulated step set to that")
        for workers in (0, args.workers):
            actual = harness_seconds_per_batch(
                data, spec.model_copy(update={"loader_workers": workers}), input_time)
            print(f"(b) harness, loader_workers {workers}: {1e3 * actual:.0f} ms per batch; "
                  f"pipeline efficiency {input_time / actual:.3f}"
                  + (" (target >= 0.9)" if workers else " (synchronous: ~0.5 expected)"))
        batches = batch_indices(labels, spec, 0)
        actual = dataloader_seconds_per_batch(LazyImageTensor(images), batches, input_time, 2)
        print(f"(b) same batches via DataLoader, 2 worker processes: {1e3 * actual:.0f} ms per "
              f"batch; pipeline efficiency {input_time / actual:.3f}")

    if "c" not in args.skip:
        spec = TrainSpec(iterations=args.train_iterations, batch_size=args.batch, m_per_class=4,
                         validate_every=10 * args.train_iterations, optimizer={"lr": 1e-4})
        harness, bare, bare_nhwc = [], [], []
        for _ in range(args.rounds):
            harness.append(harness_loop(images, labels, spec))
            bare.append(bare_loop(root, paths, labels, spec))
            bare_nhwc.append(bare_loop(root, paths, labels, spec, channels_last=True))
        h, b, c = (statistics.median(x) for x in (harness, bare, bare_nhwc))
        n = args.train_iterations
        print(f"(c) MobileNetV2 + 128-d head, 227 px, batch {args.batch}, {n} iterations x "
              f"{args.rounds} rounds: harness {h / n:.2f} s/iteration, bare DataLoader + PML "
              f"{b / n:.2f} s/iteration (NCHW, as written by users), bare channels_last "
              f"{c / n:.2f} s/iteration; ratio harness/bare {h / b:.3f}, harness/bare "
              f"channels_last {h / c:.3f} (target <= 1.05); rounds harness "
              f"{[round(x, 1) for x in harness]}, bare {[round(x, 1) for x in bare]}, bare "
              f"channels_last {[round(x, 1) for x in bare_nhwc]}")
    print(f"# total {time.perf_counter() - started:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
