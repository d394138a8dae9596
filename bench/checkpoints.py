"""Optional model checkpoints of test reproductions (``save: {checkpoints: best|last}``).

One file per fold model beside the run file, ``seed<N>.fold<i>.pt``: ``{"model": state_dict,
"method": {name: tensor}}`` (the method's own parameters: proxies, centres), tensors only, so
they load with ``torch.load(..., weights_only=True)`` and never execute code from the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from bench.atomic import atomic_write
from bench.errors import BenchError


def path_for(run_file: Path, fold: int) -> Path:
    return run_file.with_name(f"{run_file.stem}.fold{fold}.pt")


def save(path: Path, model_state: dict[str, torch.Tensor],
         method_params: list[torch.nn.Parameter]) -> None:
    """Write atomically (temp file + rename)."""
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in model_state.items()},
                "method": {str(i): p.detach().cpu() for i, p in enumerate(method_params)}},
               buffer)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())


def load(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read a checkpoint safely (``weights_only=True``); problems are one line naming it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchError("missing", source=str(path)) from None
    except Exception as error:  # noqa: BLE001 - unpickling errors come in many types
        raise BenchError(f"corrupt or unsafe checkpoint ({type(error).__name__}: {error})",
                         source=str(path)) from None
    if not isinstance(data, dict) or "model" not in data:
        raise BenchError("not a bench checkpoint (no 'model' entry)", source=str(path))
    return data
