"""Training augmentation: torchvision's RandomResizedCrop draw for draw, crop size, seeding."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from bench.augment import make_augment, resized_crop_box
from bench.errors import BenchError
from bench.protocol import AugmentationSpec, parse_protocol

REALITY_CHECK = {"random_resized_crop_scale": (0.16, 1.0),
                 "random_resized_crop_ratio": (0.75, 1.33), "crop_size": 227,
                 "horizontal_flip": 0.5}


@pytest.mark.parametrize("size,scale,ratio", [
    ((256, 256), (0.16, 1.0), (0.75, 1.33)),
    ((256, 128), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((40, 90), (0.9, 1.0), (0.2, 0.3)),    # mostly falls back to the clipped centre crop
])
def test_box_matches_torchvision_draw_for_draw(size, scale, ratio) -> None:
    height, width = size
    image = torch.zeros(3, height, width)
    for seed in range(200):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(image, list(scale), list(ratio))
        box = resized_crop_box(height, width, scale, ratio, torch.Generator().manual_seed(seed))
        assert box == tuple(expected), seed


def test_fallback_is_the_centre_crop_clipped_to_the_ratio() -> None:
    # An aspect ratio of 2-3 can never fit a full-area crop of a square: 10 failures.
    box = resized_crop_box(100, 100, (1.0, 1.0), (2.0, 3.0), torch.Generator().manual_seed(0))
    assert box == (25, 0, 50, 100)  # width kept, height = width / 2, centred
    box = resized_crop_box(100, 100, (1.0, 1.0), (0.25, 0.5), torch.Generator().manual_seed(0))
    assert box == (0, 25, 100, 50)
    assert resized_crop_box(50, 50, (1.0, 1.0), (1.0, 1.0), torch.Generator()) == (0, 0, 50, 50)


def test_boxes_respect_scale_and_ratio() -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(300):
        top, left, h, w = resized_crop_box(256, 256, (0.16, 1.0), (0.75, 1.33), generator)
        assert 0 <= top <= 256 - h and 0 <= left <= 256 - w
        assert 0.16 * 0.9 <= h * w / 256**2 <= 1.0
        assert 0.75 * 0.95 <= w / h <= 1.33 * 1.05


def test_reality_check_augmentation_is_seeded_and_crops_to_227() -> None:
    augment = make_augment(AugmentationSpec(**REALITY_CHECK))
    batch = torch.randint(0, 256, (4, 256, 256, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    a = augment(batch, torch.Generator().manual_seed(1))
    b = augment(batch, torch.Generator().manual_seed(1))
    c = augment(batch, torch.Generator().manual_seed(2))
    assert a.shape == (4, 227, 227, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_size_alone_is_a_plain_random_crop() -> None:
    augment = make_augment(AugmentationSpec(crop_size=8))
    batch = torch.arange(16 * 16 * 3, dtype=torch.int64).remainder(256).to(torch.uint8)
    batch = batch.reshape(1, 16, 16, 3).repeat(5, 1, 1, 1)
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == (5, 8, 8, 3)
    for crop in out:  # every crop is an unscaled window of the image
        hits = [(t, left) for t in range(9) for left in range(9)
                if torch.equal(batch[0, t:t + 8, left:left + 8], crop)]
        assert hits
    with pytest.raises(ValueError, match="larger"):
        make_augment(AugmentationSpec(crop_size=32))(batch, torch.Generator())


def test_flip_only_keeps_size_and_nothing_is_none() -> None:
    batch = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
    out = make_augment(AugmentationSpec(horizontal_flip=1.0))(batch, torch.Generator())
    assert torch.equal(out, batch.flip(2))
    assert make_augment(AugmentationSpec()) is None


@pytest.mark.parametrize("bad", [{"random_resized_crop_scale": [0.5, 1.5]},
                                 {"random_resized_crop_scale": [0.0, 1.0]},
                                 {"random_resized_crop_ratio": [1.3, 0.7]}])
def test_bad_ranges_are_rejected(bad) -> None:
    with pytest.raises(BenchError, match="train.augmentation"):
        parse_protocol({"name": "t", "dataset": {"name": "glyphs"},
                        "train": {"augmentation": bad},
                        "methods": [{"name": "c", "params": {"loss": "ContrastiveLoss"}}]})
