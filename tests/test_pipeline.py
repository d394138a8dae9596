"""The overlapped input pipeline: batches prepared ahead on threads, identical for any number of
workers at one seed; and the precision / memory-format options of the one loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from bench.augment import make_augment
from bench.cli import main
from bench.data.camera_style import ColourStatistics
from bench.data.real.lazy import LazyImages
from bench.errors import BenchError
from bench.experiment import LazyImageTensor
from bench.methods.base import Method, TrainData
from bench.methods.dimn import DIMN
from bench.models import EmbeddingHead, EmbeddingModel
from bench.pipeline import Prefetch, batch_generator
from bench.plan import plan_protocol
from bench.protocol import AugmentationSpec, TrainSpec, parse_protocol
from bench.train import embed, train

CPU = torch.device("cpu")
CLASSES, PER_CLASS = 4, 6


def jpeg_tree(root: Path) -> list[str]:
    """Small JPEGs of varied sizes (the loop's decode + resize + crop path)."""
    rng = np.random.default_rng(0)
    paths = []
    for c in range(CLASSES):
        base = rng.integers(0, 256, 3)
        for i in range(PER_CLASS):
            h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
            pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            relative = f"c{c}/{i}.jpg"
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / relative, quality=90)
            paths.append(relative)
    return paths


class Pool(nn.Module):
    """A tiny image model: mean colour -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.float().mean(dim=(1, 2)) / 255)


class Recorder(Method):
    """Records what every step receives (and where autocast is on); loss from the source."""

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> Any:
        return params

    def __init__(self, params: Any = None, *, num_classes: int = CLASSES,
                 embedding_size: int = 4) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []
        self.autocast_in_loss: list[bool] = []
        self.autocast_in_after_step: list[bool] = []
        self.output_dtypes: list[torch.dtype] = []

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        self.seen.append({name: getattr(batch, name).clone()
                          for name in ("source", "target", "target_views", "target_index")
                          if getattr(batch, name) is not None})
        self.autocast_in_loss.append(torch.is_autocast_enabled(batch.source.device.type))
        out = model(batch.source)
        self.output_dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    def after_step(self, batch) -> None:
        self.autocast_in_after_step.append(torch.is_autocast_enabled("cpu"))


def image_data(root: Path) -> TrainData:
    paths = jpeg_tree(root)
    images = LazyImageTensor(LazyImages(root, paths, 24))
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    cameras = np.arange(len(labels)) % 2  # label-free views: each row as the other camera
    views = ColourStatistics.fit(images, cameras)
    return TrainData(source=images, labels=labels, target=images, target_cameras=cameras,
                     camera_views=views, num_classes=CLASSES,
                     kinds=frozenset({"labeled", "unlabeled_target"}))


AUGMENT = AugmentationSpec(random_resized_crop_scale=(0.3, 1.0),
                           random_resized_crop_ratio=(0.75, 1.33), crop_size=16,
                           horizontal_flip=0.5)


def fit(data: TrainData, workers: int, seed: int = 0, **spec_changes) -> Recorder:
    torch.manual_seed(0)
    spec = TrainSpec(iterations=5, batch_size=8, m_per_class=2, validate_every=5,
                     epoch_iterations=2, loader_workers=workers, **spec_changes)
    method = Recorder()
    train(Pool(), method, data, spec, validate=lambda m: 0.0, seed=seed, device=CPU,
          augment=make_augment(AUGMENT), progress=False)
    return method


def test_same_batches_and_augmentation_for_0_1_4_workers(tmp_path: Path) -> None:
    data = image_data(tmp_path / "tree")
    threads: list[str] = []
    original = data.source.__class__.__getitem__

    def spy(self, index):
        threads.append(threading.current_thread().name)
        return original(self, index)

    runs = {}
    for workers in (0, 1, 4):
        threads.clear()
        data.source.__class__.__getitem__ = spy
        try:
            runs[workers] = fit(data, workers).seen
        finally:
            data.source.__class__.__getitem__ = original
        # the batches really were decoded on the input threads (or in the loop for 0)
        on_threads = {name.startswith("bench-input") for name in threads}
        assert on_threads == ({False} if workers == 0 else {True}), (workers, set(threads))
    reference = runs[0]
    assert len(reference) == 5
    assert set(reference[0]) == {"source", "target", "target_views", "target_index"}
    assert reference[0]["source"].shape == (8, 16, 16, 3)  # cropped by the augmentation
    for workers in (1, 4):
        assert len(runs[workers]) == len(reference)
        for a, b in zip(reference, runs[workers], strict=True):
            for name in a:
                assert torch.equal(a[name], b[name]), (workers, name)
    # the augmentation is random (two steps' crops of the same images differ) and seeded
    other_seed = fit(data, 0, seed=1).seen
    assert not all(torch.equal(a["source"], b["source"])
                   for a, b in zip(reference, other_seed, strict=True))


def test_device_side_augmentation_gives_the_same_batches(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path augments after the copy, in the loop; run that path on the CPU."""
    data = image_data(tmp_path / "tree")
    reference = fit(data, 0).seen
    monkeypatch.setattr("bench.train.augment_on_device", lambda device: True)
    on_device = fit(data, 2).seen
    for a, b in zip(reference, on_device, strict=True):
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_batch_generators_depend_on_seed_stream_and_step_only() -> None:
    def draw(*key):
        return torch.rand(4, generator=batch_generator(*key))

    assert torch.equal(draw(0, 0, 3), draw(0, 0, 3))
    assert not torch.equal(draw(0, 0, 3), draw(0, 0, 4))
    assert not torch.equal(draw(0, 0, 3), draw(0, 1, 3))
    assert not torch.equal(draw(0, 0, 3), draw(1, 0, 3))


def test_prefetch_prepares_ahead_and_keeps_order() -> None:
    started = [threading.Event() for _ in range(6)]

    def task(i: int):
        def run() -> int:
            started[i].set()
            time.sleep(0.02 * ((5 - i) % 3))  # finish out of order
            return i

        return run

    with Prefetch([task(i) for i in range(6)], workers=2) as feed:
        first = next(feed)
        # while the consumer holds batch 0, batch 1 is already being prepared
        assert started[1].wait(5.0)
        assert [first, *feed] == list(range(6))
    for event in started:
        event.clear()
    sync = Prefetch([task(i) for i in range(3)], workers=0)
    assert next(sync) == 0 and not started[1].is_set()  # no workers: nothing runs ahead
    assert list(sync) == [1, 2]


def test_prefetch_raises_the_task_error_and_stops() -> None:
    def boom() -> int:
        raise ValueError("bad image")

    feed = Prefetch([lambda: 1, boom, lambda: 3], workers=2)
    assert next(feed) == 1
    with pytest.raises(ValueError, match="bad image"):
        next(feed)
    assert list(feed) == []


def test_embed_same_with_and_without_workers(tmp_path: Path) -> None:
    data = image_data(tmp_path / "tree")
    model = Pool()
    a = embed(model, data.source, batch_size=5, device=CPU, workers=0)
    b = embed(model, data.source, batch_size=5, device=CPU, workers=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (CLASSES * PER_CLASS, 4)


# --- precision and memory format ----------------------------------------------------------------
def test_precision_options_are_validated(write_protocol) -> None:
    assert TrainSpec(precision="bf16", channels_last=True).precision == "bf16"
    with pytest.raises(BenchError) as error:
        parse_protocol({"name": "x", "dataset": {"name": "glyphs"},
                        "train": {"precision": "fp8"}, "methods": [{"name": "a"}]})
    assert error.value.field == "train.precision"
    with pytest.raises(BenchError) as error:
        parse_protocol({"name": "x", "dataset": {"name": "glyphs"},
                        "train": {"channels_last": "maybe"}, "methods": [{"name": "a"}]})
    assert error.value.field == "train.channels_last"
    with pytest.raises(BenchError, match="fp16 needs a CUDA device") as error:
        plan_protocol(write_protocol({"device": "cpu", "train": {"precision": "fp16"}}))
    assert error.value.field == "train.precision"
    with pytest.raises(ValueError, match="fp16"):
        fit(TrainData(source=torch.zeros(8, 4, 4, 3, dtype=torch.uint8),
                      labels=np.repeat(np.arange(4), 2), num_classes=4), 0, precision="fp16")


def test_bf16_runs_the_loss_under_autocast_and_keeps_weights_fp32(tmp_path: Path) -> None:
    data = image_data(tmp_path / "tree")
    fp32, bf16 = fit(data, 0), fit(data, 0, precision="bf16")
    assert fp32.autocast_in_loss == [False] * 5 and set(fp32.output_dtypes) == {torch.float32}
    assert bf16.autocast_in_loss == [True] * 5 and set(bf16.output_dtypes) == {torch.bfloat16}
    assert bf16.autocast_in_after_step == [False] * 5  # memory updates in float32
    # embedding extraction under the protocol's precision, returned as float32
    model = Pool()
    out = embed(model, data.source, batch_size=8, device=CPU, precision="bf16")
    ref = embed(model, data.source, batch_size=8, device=CPU)
    assert out.dtype == np.float32 and not np.array_equal(out, ref)
    np.testing.assert_allclose(out, ref, atol=0.05)


def test_memory_method_keeps_its_memory_fp32_under_bf16() -> None:
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(6), 4)
    inputs = torch.randn(6, 16, generator=g)[torch.as_tensor(labels)] \
        + 0.3 * torch.randn(len(labels), 16, generator=g)
    data = TrainData(source=inputs, labels=labels, num_classes=6, kinds=frozenset({"labeled"}))
    torch.manual_seed(0)
    method = DIMN(DIMN.validate_params({}, source="t", field="m"), num_classes=6,
                  embedding_size=8)
    model = method.wrap_model(EmbeddingModel(EmbeddingHead(16, 8, 0)), backbone="none")
    before = method.memory.clone()
    spec = TrainSpec(iterations=4, batch_size=12, m_per_class=4, validate_every=4,
                     precision="bf16")
    train(model, method, data, spec, validate=lambda m: 0.0, seed=0, device=CPU,
          progress=False)
    assert method.memory.dtype == torch.float32
    assert not torch.equal(method.memory, before)  # it was updated, in float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_channels_last_converts_the_convolutions() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class Images(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2).float())

    data = TrainData(source=torch.randint(0, 255, (8, 8, 8, 3), dtype=torch.uint8),
                     labels=np.repeat(np.arange(4), 2), num_classes=4)
    for flag in (False, True):
        model = Images()
        spec = TrainSpec(iterations=1, batch_size=4, m_per_class=2, channels_last=flag)
        train(model, Recorder(), data, spec, validate=lambda m: 0.0, seed=0, device=CPU,
              progress=False)
        weight = model.net[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == flag


@pytest.mark.slow
def test_precision_recorded_in_provenance(write_protocol, tmp_path: Path) -> None:
    protocol = write_protocol({
        "train": {"iterations": 4, "batch_size": 32, "m_per_class": 4, "validate_every": 2,
                  "precision": "bf16", "channels_last": True},
        "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"}}],
    })
    assert main(["run", str(protocol), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    rows = pd.read_csv(tmp_path / "r" / "tiny" / "results.csv")
    assert set(rows["precision"]) == {"bf16"} and set(rows["channels_last"]) == {True}


def test_lazy_images_decode_in_forked_dataloader_workers(tmp_path: Path) -> None:
    """LazyImages' decode pool is per process: a forked DataLoader worker must not wait on the
    parent's (threadless) pool."""
    data = image_data(tmp_path / "tree")
    expected = data.source[np.arange(8)]  # starts the parent's decode pool first
    loader = torch.utils.data.DataLoader(_Rows(data.source), batch_size=None, num_workers=1,
                                         timeout=60, multiprocessing_context="fork")
    assert torch.equal(next(iter(loader)), expected)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[np.arange(8)]
