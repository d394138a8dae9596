"""Method registry: protocols name methods from here, never by import path."""

from __future__ import annotations

from typing import Any

from bench.errors import BenchError
from bench.methods.base import Method
from bench.methods.dimn import DIMN
from bench.methods.ecn import ECN
from bench.methods.pml_loss import PmlLoss
from bench.methods.ptl import PTL
from bench.methods.spcl import SpCL

REGISTRY: dict[str, type[Method]] = {
    "pml_loss": PmlLoss, "ecn": ECN, "spcl": SpCL, "dimn": DIMN, "ptl": PTL,
}


def method_class(name: str, *, source: str = "<protocol>", field: str = "method") -> type[Method]:
    if name not in REGISTRY:
        raise BenchError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})",
                         source=source, field=field)
    return REGISTRY[name]


def validate_method(name: str, params: dict[str, Any], *, source: str, field: str) -> Any:
    """Check that a method exists and accepts ``params``; returns the parsed parameters."""
    cls = method_class(name, source=source, field=f"{field}.method")
    return cls.validate_params(params, source=source, field=f"{field}.params")


__all__ = ["REGISTRY", "Method", "method_class", "validate_method"]
