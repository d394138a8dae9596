"""Numeric precision and memory format of training and embedding extraction (protocol options
``train.precision`` and ``train.channels_last``), applied by the one loop to every method.

``fp32`` computes in float32. ``bf16`` / ``fp16`` run the model and the method's loss under
``torch.autocast`` (weights, optimiser state and the methods' memories stay float32; memory
updates run after the step, outside autocast); ``fp16`` also scales the loss with a
``GradScaler`` (its range is too small for raw gradients). ``fp16`` needs a CUDA device: on the
CPU it is refused before any work (CPU autocast supports bf16 only usefully). Embeddings are
extracted under the same autocast and returned as float32.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ValueError when ``precision`` cannot run on ``device`` (fp16 on the CPU)."""
    if precision not in ("fp32", *DTYPES):
        raise ValueError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (None otherwise)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def set_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """Convolution weights in channels-last layout when asked (images enter NHWC already:
    ``Normalize`` permutes them without copying, which is the channels-last layout)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
