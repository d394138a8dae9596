"""Method registry: protocols name methods from here, never by import path.

Built-in methods are in ``REGISTRY``; installed distributions add more through the
``bench.methods`` entry-point group (see :mod:`bench.plugins`), looked up by name only.
"""

from __future__ import annotations

from typing import Any

from bench import plugins
from bench.methods.base import Method
from bench.methods.dimn import DIMN
from bench.methods.ecn import ECN
from bench.methods.pml_loss import PmlLoss, loss_plugins_used
from bench.methods.ptl import PTL
from bench.methods.spcl import SpCL

REGISTRY: dict[str, type[Method]] = {
    "pml_loss": PmlLoss, "ecn": ECN, "spcl": SpCL, "dimn": DIMN, "ptl": PTL,
}


def method_plugins() -> dict[str, plugins.Plugin]:
    """Installed ``bench.methods`` plug-ins; a name clash with a built-in is refused."""
    return plugins.discover("methods", set(REGISTRY))


def method_class(name: str, *, source: str = "<protocol>", field: str = "method") -> type[Method]:
    if name in REGISTRY:
        method_plugins()  # a plug-in claiming a built-in's name is refused, not shadowed
        return REGISTRY[name]
    found = method_plugins()
    if name not in found:
        raise plugins.unknown_name("methods", name, [*REGISTRY, *found], source=source,
                                   field=field)
    return found[name].load(Method)


def validate_method(name: str, params: dict[str, Any], *, source: str, field: str) -> Any:
    """Check that a method exists and accepts ``params``; returns the parsed parameters."""
    cls = method_class(name, source=source, field=f"{field}.method")
    return cls.validate_params(params, source=source, field=f"{field}.params")


def plugins_used(name: str, params: dict[str, Any]) -> dict[str, plugins.Plugin]:
    """The plug-ins one protocol entry runs on: its method, and for ``pml_loss`` its loss and
    miner when they come from installed distributions (keyed by ``group:name``)."""
    out: dict[str, plugins.Plugin] = {}
    if name not in REGISTRY:
        found = method_plugins()
        if name in found:
            out[f"{found[name].group}:{name}"] = found[name]
    if REGISTRY.get(name) is PmlLoss:
        out.update(loss_plugins_used(params))
    return out


def list_methods() -> list[tuple[str, str]]:
    """(name, origin) of every method: built-ins first, then plug-ins."""
    found = method_plugins()
    return ([(n, plugins.BUILTIN) for n in sorted(REGISTRY)]
            + [(n, p.origin) for n, p in sorted(found.items())])


__all__ = ["REGISTRY", "Method", "list_methods", "method_class", "plugins_used",
           "validate_method"]
