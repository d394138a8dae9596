"""Harness overhead per training iteration: `bench.train.train` vs a bare PML loop.

Both loops train the same model with the same loss, optimiser and sampler (PML's
MPerClassSampler, its batches drawn inside the timed region in both); rounds alternate harness / bare in one process so machine noise
hits both alike. Validation is excluded (a no-op callback; the harness validates only at the
start and end here). Two workloads:

- ``head``: the frozen-trunk path (a 2-layer head on cached 1280-d features) — the cheapest
  iteration, where per-iteration overhead shows most;
- ``trunk``: MobileNetV2 fine-tuned on 64-px images.

Target: time ratio harness / bare at most 1.05.

Usage: python benchmarks/train_overhead.py [--rounds 5] [--iterations 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from pytorch_metric_learning import losses, samplers

from bench.methods.base import TrainData
from bench.methods.pml_loss import PmlLoss, PmlLossParams
from bench.models import EmbeddingHead, EmbeddingModel, Normalize, build_trunk
from bench.protocol import TrainSpec
from bench.train import train


def workload(kind: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(200), 16)
    torch.manual_seed(seed)
    if kind == "head":
        inputs = torch.randn(len(labels), 1280, generator=g)
        return EmbeddingModel(EmbeddingHead(1280, 128, 512)), inputs, labels
    trunk = build_trunk("mobilenet_v2", pretrained=False).network
    inputs = torch.randint(0, 256, (len(labels), 64, 64, 3), dtype=torch.uint8, generator=g)
    model = EmbeddingModel(EmbeddingHead(1280, 128, 0), torch.nn.Sequential(Normalize(), trunk))
    return model, inputs, labels


def bare_loop(model: torch.nn.Module, inputs: torch.Tensor, labels: np.ndarray,
              spec: TrainSpec) -> float:
    """The loop a user would write with PML directly: its sampler, its loss, Adam."""
    start = time.perf_counter()
    loss_fn = losses.MultiSimilarityLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    label_tensor = torch.as_tensor(labels)
    sampler = samplers.MPerClassSampler(labels, m=spec.m_per_class, batch_size=spec.batch_size,
                                        length_before_new_iter=spec.iterations * spec.batch_size)
    batches = np.fromiter(iter(sampler), dtype=np.int64).reshape(-1, spec.batch_size)
    model.train()
    for index in batches:
        embeddings = model(inputs[index])
        loss = loss_fn(embeddings, label_tensor[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def harness_loop(model: torch.nn.Module, inputs: torch.Tensor, labels: np.ndarray,
                 spec: TrainSpec) -> float:
    method = PmlLoss(PmlLossParams(loss="MultiSimilarityLoss"), num_classes=200,
                     embedding_size=128)
    start = time.perf_counter()
    train(model, method, TrainData(source=inputs, labels=labels), spec, validate=lambda m: 0.0,
          seed=0, device=torch.device("cpu"), progress=True, description="harness")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=["head", "trunk"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}")
    for kind in args.kinds:
        iterations = args.iterations if kind == "head" else max(10, args.iterations // 10)
        spec = TrainSpec(iterations=iterations, batch_size=64, m_per_class=4,
                         validate_every=10 * iterations, schedule={"name": "constant"})
        harness, bare = [], []
        for _ in range(args.rounds):
            model, inputs, labels = workload(kind)
            harness.append(harness_loop(model, inputs, labels, spec))
            model, inputs, labels = workload(kind)
            bare.append(bare_loop(model, inputs, labels, spec))
        h, b = statistics.median(harness), statistics.median(bare)
        print(f"{kind:5s}: {iterations} iterations/round; per iteration harness "
              f"{1e3 * h / iterations:.2f} ms, bare {1e3 * b / iterations:.2f} ms; "
              f"ratio harness/bare {h / b:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
