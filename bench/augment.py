"""Batch augmentation for the image path, drawn from an explicit seeded generator.

The random resized crop follows torchvision's ``RandomResizedCrop.get_params``: up to 10 draws
of an area share (uniform in ``scale``) and an aspect ratio w/h (log-uniform in ``ratio``); the
first draw that fits is cropped at a uniform position; if none fits, the centre crop of the
whole image clipped to the ratio range. Every draw comes from the generator passed in, so a
seed fixes the augmentation exactly.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from bench.protocol import AugmentationSpec

ATTEMPTS = 10  # torchvision's number of tries before the centre-crop fall-back


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=generator))


def resized_crop_box(height: int, width: int, scale: tuple[float, float],
                     ratio: tuple[float, float],
                     generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as torchvision's RandomResizedCrop draws them."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision computes it
    for _ in range(ATTEMPTS):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = float(torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]),
                                                          generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(height - h, generator), _randint(width - w, generator), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def make_augment(spec: AugmentationSpec):
    """A function (uint8 NHWC batch, generator) -> augmented batch, or None when nothing to do.

    Output images are ``crop_size`` square when it is set, else the input size.
    """
    rrc = spec.random_resized_crop_scale
    if rrc is None and spec.crop_size is None and spec.horizontal_flip == 0:
        return None

    def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, h, w, _ = batch.shape
        out_h, out_w = (spec.crop_size, spec.crop_size) if spec.crop_size else (h, w)
        out = batch.permute(0, 3, 1, 2).float()
        if rrc is not None:
            crops = []
            for i in range(n):
                top, left, ch, cw = resized_crop_box(h, w, rrc, spec.random_resized_crop_ratio,
                                                     generator)
                crop = out[i:i + 1, :, top:top + ch, left:left + cw]
                if (ch, cw) != (out_h, out_w):
                    crop = F.interpolate(crop, size=(out_h, out_w), mode="bilinear",
                                         align_corners=False, antialias=True)
                crops.append(crop)
            out = torch.cat(crops)
        elif (out_h, out_w) != (h, w):  # plain random crop, no rescaling
            if out_h > h or out_w > w:
                raise ValueError(f"crop_size {spec.crop_size} is larger than the {h}x{w} images")
            crops = []
            for i in range(n):
                top, left = _randint(h - out_h, generator), _randint(w - out_w, generator)
                crops.append(out[i:i + 1, :, top:top + out_h, left:left + out_w])
            out = torch.cat(crops)
        if spec.horizontal_flip > 0:
            flip = (torch.rand(n, generator=generator) < spec.horizontal_flip).to(out.device)
            out[flip] = out[flip].flip(-1)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    return augment
