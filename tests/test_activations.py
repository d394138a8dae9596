"""Cached activations entering the trained last stage (model.cache_frozen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.activations import activation_key, cached_activations, split_trunk
from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.features import extract
from bench.protocol import Protocol


def tiny_dataset(n: int = 6, size: int = 32, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    zeros = np.zeros(n, dtype=np.int64)
    return ImageDataset(name="tiny", images=images, labels=np.arange(n, dtype=np.int64) % 3,
                        domains=zeros, cameras=zeros, class_names=["a", "b", "c"],
                        domain_names=["d"], camera_names=["c"])


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_prefix_then_stage_is_the_whole_trunk(backbone):
    torch.manual_seed(0)
    split = split_trunk(backbone, pretrained=False)
    ds = tiny_dataset()
    device = torch.device("cpu")
    whole = extract(split.trunk.network, ds.images, device=device, progress=False)
    acts = extract(split.prefix, ds.images, device=device, progress=False)
    with torch.no_grad():
        staged = split.suffix.eval()(torch.from_numpy(acts)).numpy()
    assert staged.shape == whole.shape == (len(ds), split.trunk.feature_size)
    assert np.allclose(staged, whole, atol=1e-4)


def test_cache_is_keyed_by_weights_data_and_crop(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    ds = tiny_dataset()
    device = torch.device("cpu")
    first, split, hit = cached_activations(ds, "mobilenet_v2", pretrained=False, crop_size=None,
                                           device=device, progress=False)
    assert not hit and len(list((tmp_path / "activations").glob("*.npz"))) == 1
    again, _, hit = cached_activations(ds, "mobilenet_v2", pretrained=False, crop_size=None,
                                       device=device, progress=False)
    assert hit and np.array_equal(first, again)
    key = activation_key(split, ds, "mobilenet_v2", None)
    assert key != activation_key(split, tiny_dataset(seed=1), "mobilenet_v2", None)  # data
    assert key != activation_key(split, ds, "mobilenet_v2", 24)  # crop
    with torch.no_grad():  # a changed frozen weight must never reuse stale activations
        next(split.prefix.parameters()).add_(1e-3)
    assert key != activation_key(split, ds, "mobilenet_v2", None)
    _, _, hit = cached_activations(ds, "mobilenet_v2", pretrained=False, crop_size=24,
                                   device=device, progress=False)
    assert not hit


def test_cache_miss_and_hit_give_the_same_array_layout(tmp_path, monkeypatch):
    """A run that builds the cache must train on exactly what a run that loads it gets: the
    prefix answers in channels-last strides, the cache holds C-contiguous arrays, and the
    trained stage's convolutions pick other kernels (other floats) for the other layout; the
    reference oodml_glyphs_stage moved by 4e-4 MAP@R between a cold and a warm run before."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    ds = tiny_dataset(size=64)  # 2 x 2 activations: strides tell the layouts apart
    device = torch.device("cpu")
    cold, split, hit = cached_activations(ds, "mobilenet_v2", pretrained=False, crop_size=None,
                                          device=device, progress=False)
    warm, _, hit_again = cached_activations(ds, "mobilenet_v2", pretrained=False,
                                            crop_size=None, device=device, progress=False)
    assert (hit, hit_again) == (False, True)
    assert cold.flags.c_contiguous and warm.flags.c_contiguous
    assert cold.strides == warm.strides and cold.dtype == warm.dtype == np.float32
    rows = np.array([4, 1, 3])
    with torch.no_grad():
        stage = split.suffix.eval()
        assert torch.equal(stage(torch.from_numpy(cold[rows])), stage(torch.from_numpy(warm[rows])))
    features = extract(split.trunk.network, ds.images, device=device, progress=False)
    assert features.flags.c_contiguous and features.dtype == np.float32


def test_cache_frozen_needs_last_stage_and_no_augmentation():
    base = {"name": "p", "dataset": {"name": "glyphs"}, "methods": [{"name": "m"}],
            "model": {"trunk": "last_stage", "cache_frozen": True}}
    Protocol.model_validate(base)
    with pytest.raises(ValueError, match="needs `model.trunk: last_stage`"):
        Protocol.model_validate({**base, "model": {"trunk": "all", "cache_frozen": True}})
    with pytest.raises(ValueError, match="augmentation` must be empty"):
        Protocol.model_validate({**base, "train": {"augmentation": {"horizontal_flip": 0.5}}})
    with pytest.raises(BenchError, match="cache_frozen supports"):
        split_trunk("bn_inception", pretrained=False)


def test_cpu_feature_batches_hold_a_fixed_number_of_pixels():
    """Small CPU batches keep activations in cache (2.5x faster features on quick.yaml); the
    values do not depend on the batch (one image a batch is never used: other kernels)."""
    from bench.features import default_batch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_batch(np.zeros((5, 64, 64, 3), np.uint8), cpu) == 32
    assert default_batch(np.zeros((5, 32, 32, 3), np.uint8), cpu) == 128
    assert default_batch(np.zeros((5, 224, 224, 3), np.uint8), cpu) == 2
    assert default_batch(np.zeros((5, 1024, 1024, 3), np.uint8), cpu) == 2
    assert default_batch(np.zeros((5, 8, 8, 3), np.uint8), cpu) == 256
    assert default_batch(np.zeros((5, 64, 64, 3), np.uint8), cuda) == 256
    trunk = split_trunk("mobilenet_v2", pretrained=True).trunk
    images = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    batches = []
    hook = trunk.network.register_forward_hook(lambda _m, inputs, _o: batches.append(
        len(inputs[0])))
    try:
        small = extract(trunk.network, images, device=cpu, progress=False,
                        normalization=trunk.normalization)
    finally:
        hook.remove()
    assert batches == [32, 8]  # extract uses the rule: 40 images of 64 px in batches of 32
    whole = extract(trunk.network, images, device=cpu, progress=False, batch_size=256,
                    normalization=trunk.normalization)
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-5)
