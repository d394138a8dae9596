"""Batch augmentation for the image path, drawn from an explicit seeded generator."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from bench.protocol import AugmentationSpec


def make_augment(spec: AugmentationSpec):
    """A function (uint8 NHWC batch, generator) -> augmented batch, or None when nothing to do."""
    if spec.random_resized_crop_scale is None and spec.horizontal_flip == 0:
        return None
    low, high = spec.random_resized_crop_scale or (1.0, 1.0)

    def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, h, w, _ = batch.shape
        out = batch.permute(0, 3, 1, 2).float()
        if spec.random_resized_crop_scale is not None:
            area = torch.empty(n).uniform_(low, high, generator=generator)
            side = area.sqrt()
            crops = []
            for i in range(n):
                ch, cw = max(1, int(h * side[i])), max(1, int(w * side[i]))
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                crop = out[i:i + 1, :, top:top + ch, left:left + cw]
                crops.append(F.interpolate(crop, size=(h, w), mode="bilinear",
                                           align_corners=False))
            out = torch.cat(crops)
        if spec.horizontal_flip > 0:
            flip = torch.rand(n, generator=generator) < spec.horizontal_flip
            out[flip] = out[flip].flip(-1)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    return augment
