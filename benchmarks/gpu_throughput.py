"""Training images/s on a generated JPEG tree: harness vs bare loop, fp32 vs bf16, per backbone.

Harness: ``bench.train.train`` with ``LazyImages`` (decode on input threads, pinned,
non-blocking copies, augmentation on the device) and a PML MultiSimilarityLoss method. Bare: what
a user writes, torchvision transforms (Resize 256, RandomResizedCrop, flip) in
``DataLoader(num_workers, pin_memory=True)`` workers + the same model + PML loss + Adam, under
``torch.autocast`` for bf16. Same model (random-init trunk + 128-d head, bench's ``Normalize``
on the device in both), same batch size; ``channels_last`` with bf16 in both. images/s counts
the iterations after ``--warmup`` (cudnn autotuning, worker start-up excluded).

Usage: python benchmarks/gpu_throughput.py [--device cuda] [--images 1200] [--iterations 25]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_metric_learning import losses, samplers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import CLASSES, make_tree  # noqa: E402  (sibling benchmark script)

from bench.augment import make_augment  # noqa: E402
from bench.data.real.lazy import LazyImages  # noqa: E402
from bench.experiment import LazyImageTensor  # noqa: E402
from bench.methods.base import TrainData  # noqa: E402
from bench.methods.pml_loss import PmlLoss, PmlLossParams  # noqa: E402
from bench.models import EmbeddingHead, EmbeddingModel, Normalize, build_trunk  # noqa: E402
from bench.protocol import AugmentationSpec, TrainSpec  # noqa: E402
from bench.train import train  # noqa: E402


def build(backbone: str, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    trunk = build_trunk(backbone, pretrained=False)
    model = EmbeddingModel(EmbeddingHead(trunk.feature_size, 128, 0),
                           nn.Sequential(Normalize(trunk.normalization), trunk.network))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model.to(device)


class Timed(PmlLoss):
    """PmlLoss that notes when the step after the warm-up starts."""

    warmup = 5

    def loss(self, model, batch):
        if batch.step == self.warmup + 1:
            if batch.source.is_cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()
        return super().loss(model, batch)


def harness(images, labels, backbone: str, precision: str, args, device) -> float:
    model = build(backbone, device, precision != "fp32")
    method = Timed(PmlLossParams(loss="MultiSimilarityLoss"), num_classes=CLASSES,
                   embedding_size=128)
    Timed.warmup = args.warmup
    spec = TrainSpec(iterations=args.iterations, batch_size=args.batch, m_per_class=4,
                     validate_every=10 * args.iterations, precision=precision,
                     channels_last=precision != "fp32", loader_workers=args.workers)
    augment = make_augment(AugmentationSpec(random_resized_crop_scale=(0.16, 1.0),
                                            random_resized_crop_ratio=(0.75, 1.33),
                                            crop_size=args.size, horizontal_flip=0.5))
    data = TrainData(source=LazyImageTensor(images), labels=labels, num_classes=CLASSES)
    train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=device,
          augment=augment, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (args.iterations - args.warmup) * args.batch / (time.perf_counter() - method.started)


def bare(root: Path, paths, labels, backbone: str, precision: str, args, device) -> float:
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(256), transforms.RandomResizedCrop(args.size, scale=(0.16, 1.0)),
        transforms.RandomHorizontalFlip(), transforms.PILToTensor()])

    class Folder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            with Image.open(root / paths[i]) as image:  # uint8 HWC for the model's Normalize
                return transform(image.convert("RGB")).permute(1, 2, 0), int(labels[i])

    model = build(backbone, device, precision != "fp32")
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=args.batch,
                                        length_before_new_iter=args.iterations * args.batch)
    loader = torch.utils.data.DataLoader(Folder(), batch_size=args.batch, sampler=sampler,
                                         num_workers=args.workers, pin_memory=True,
                                         drop_last=True)
    loss_fn = losses.MultiSimilarityLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16}.get(precision)
    model.train()
    started = None
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (args.iterations - args.warmup) * args.batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "bn_inception"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    paths = make_tree(root, args.images)
    labels = np.array([int(p.split("/")[0]) for p in paths])
    images = LazyImages(root, paths, 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}; {os.cpu_count()} cores; torch {torch.__version__}; {len(paths)} JPEGs "
          f"500x375; {args.size} px, batch {args.batch}, {args.iterations} iterations "
          f"({args.warmup} warm-up), {args.workers} input workers/threads")
    for backbone in args.backbones:
        for precision in args.precisions:
            h = harness(images, labels, backbone, precision, args, device)
            b = bare(root, paths, labels, backbone, precision, args, device)
            print(f"{backbone:12s} {precision}: harness {h:7.1f} images/s, bare {b:7.1f} "
                  f"images/s, time ratio harness/bare {b / h:.3f}", flush=True)


if __name__ == "__main__":
    main()
