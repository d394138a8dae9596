"""Any pytorch-metric-learning loss (and optional miner) by name, with its own parameters.

Names come from PML itself (built-in) or from installed distributions' ``bench.losses`` /
``bench.miners`` entry points (:mod:`bench.plugins`): PML-compatible classes, looked up by name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pytorch_metric_learning import losses, miners
from torch import nn

from bench import plugins
from bench.errors import BenchError
from bench.methods.base import Batch, Method
from bench.validation import invalid


def _classes_of(module: Any, base: type) -> dict[str, type]:
    """Public classes of a PML module deriving from ``base``: the allow-list of names."""
    return {
        name: obj for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
        and not name.startswith(("Base", "Generic"))
    }


LOSSES = _classes_of(losses, losses.BaseMetricLossFunction)
MINERS = _classes_of(miners, miners.BaseMiner)


def find_class(kind: str, name: str, *, source: str = "<protocol>",
               field: str = "params") -> type:
    """The loss or miner class called ``name``: PML's own, else an installed plug-in's."""
    builtin, base = (LOSSES, losses.BaseMetricLossFunction) if kind == "losses" else (
        MINERS, miners.BaseMiner)
    found = plugins.discover(kind, set(builtin))  # a clash with a PML name is refused
    if name in builtin:
        return builtin[name]
    if name not in found:
        raise plugins.unknown_name(kind, name, [*builtin, *found], source=source, field=field)
    return found[name].load(base)


def loss_plugins_used(params: dict[str, Any]) -> dict[str, plugins.Plugin]:
    """The plug-ins among a ``pml_loss`` entry's loss and miner (``group:name`` keys)."""
    out = {}
    for kind, builtin, key in (("losses", LOSSES, "loss"), ("miners", MINERS, "miner")):
        name = params.get(key)
        if isinstance(name, str) and name not in builtin:
            found = plugins.discover(kind, set(builtin))
            if name in found:
                out[f"{found[name].group}:{name}"] = found[name]
    return out


# Losses whose constructor needs the class count and embedding size (proxy/classifier losses).
_SIZED = {"num_classes", "embedding_size"}


class PmlLossParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: str
    loss_params: dict[str, Any] = Field(default_factory=dict)
    miner: str | None = None
    miner_params: dict[str, Any] = Field(default_factory=dict)


def _sizes_to_inject(loss_class: type, loss_params: dict[str, Any]) -> set[str]:
    """Size arguments the constructor requires, plus any the protocol set to ``auto``.

    MarginLoss, for one, takes an optional ``num_classes`` (per-class beta): it gets the class
    count only when the protocol asks for it with ``num_classes: auto``.
    """
    parameters = inspect.signature(loss_class.__init__).parameters
    required = {name for name in _SIZED & set(parameters)
                if parameters[name].default is inspect.Parameter.empty}
    if "args" in parameters and "num_classes" not in parameters:  # CosFace passes *args on
        required |= _SIZED
    return required | {name for name in _SIZED if loss_params.get(name) == "auto"}


def _construct(cls: type, kwargs: dict[str, Any], *, source: str, field: str) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise BenchError(f"{cls.__name__} rejects these parameters ({error})",
                         source=source, field=field) from None


class PmlLoss(Method):
    """A PML loss, with an optional miner; proxy/classifier weights are the method's parameters.

    Labels reaching ``loss`` are 0..C-1 over the training classes of the current split (the loop
    relabels them), which proxy losses need. Uses labeled data only: in ``uda`` it is the
    source-only baseline, in ``dg`` it trains on the pooled source domains.
    """

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> PmlLossParams:
        try:
            parsed = PmlLossParams.model_validate(params)
        except ValidationError as error:
            raise invalid(error, PmlLossParams, source=source, prefix=field) from None
        find_class("losses", parsed.loss, source=source, field=f"{field}.loss")
        if parsed.miner is not None:
            find_class("miners", parsed.miner, source=source, field=f"{field}.miner")
        # Build once on tiny sizes so bad keyword arguments fail now, not mid-run.
        cls._build(parsed, num_classes=4, embedding_size=8, source=source, field=field)
        return parsed

    @staticmethod
    def _build(p: PmlLossParams, *, num_classes: int, embedding_size: int,
               source: str = "<protocol>", field: str = "params") -> tuple[nn.Module, Any]:
        loss_class = find_class("losses", p.loss, source=source, field=f"{field}.loss")
        kwargs = dict(p.loss_params)
        sizes = {"num_classes": num_classes, "embedding_size": embedding_size}
        kwargs.update({name: sizes[name] for name in _sizes_to_inject(loss_class, kwargs)})
        loss = _construct(loss_class, kwargs, source=source, field=f"{field}.loss_params")
        miner = None
        if p.miner is not None:
            miner_class = find_class("miners", p.miner, source=source, field=f"{field}.miner")
            miner = _construct(miner_class, dict(p.miner_params), source=source,
                               field=f"{field}.miner_params")
        return loss, miner

    def __init__(self, params: PmlLossParams, *, num_classes: int, embedding_size: int) -> None:
        self.loss_fn, self.miner = self._build(params, num_classes=num_classes,
                                               embedding_size=embedding_size)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.loss_fn.parameters() if p.requires_grad]

    def to(self, device: torch.device) -> PmlLoss:
        self.loss_fn.to(device)
        return self

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.embedding_loss(model(batch.source), batch.labels)

    def embedding_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss_fn(embeddings, labels, pairs)
