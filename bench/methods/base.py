"""The method plug-in interface: what a method consumes, which hooks it uses, nothing else.

The loop, sampler, optimiser, schedule, backbone, budget and evaluation come from the protocol and
are the same for every method. A method turns a batch into a loss and may own parameters
(proxies, classifiers, mapping nets: trained by the protocol's ``loss_optimizer``), buffers
(memories: updated in ``after_step``), per-epoch work (clustering: ``on_epoch``), a model wrapper
(extra streams, domain-specific BatchNorm: ``wrap_model``) and a test-time scoring function
(``score_fn``).

Data kinds (``DATA_KINDS``) name what a setting can offer a method:

* ``labeled``: labeled source images (dml: the training classes; uda: the source domains;
  dg: all source domains pooled), labels 0..C-1;
* ``unlabeled_target``: target-domain training images without labels (uda only);
* ``domain_labels``: which source domain each labeled image comes from (2 or more domains);
* ``camera_views``: a view maker rendering a target training image as another target camera
  would see it, from THAT image and camera ids only (:mod:`bench.data.camera_style`: the
  dataset's imaging conditions, else a colour-statistics transfer measured on unlabeled target
  images). Never other rows of the same identity: that would hand the method the target labels.

A method declares ``requires`` (all must be available, else the protocol is refused before any
training) and ``optional`` (used when present). It receives exactly the kinds in
``requires | optional`` that the setting has; the results table records them.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from bench.data.camera_style import CameraViews

DATA_KINDS: tuple[str, ...] = ("labeled", "unlabeled_target", "domain_labels", "camera_views")
DATA_LABELS = {"labeled": "labeled source", "unlabeled_target": "unlabeled target",
               "domain_labels": "domain labels", "camera_views": "camera views"}

#: ``score_fn(query_block, reference) -> scores`` (higher = more similar), as in bench.evaluate.
ScoreFn = Callable[[np.ndarray, np.ndarray], Any]
#: ``embed(model, inputs) -> (n, d) float32`` in eval mode, batched: what methods use to fill
#: memories from the current model (given to ``setup`` and ``on_epoch``).
Embed = Callable[[nn.Module, Any], np.ndarray]


@dataclass
class TrainData:
    """Everything a method may see during training, already restricted to the kinds it uses.

    Inputs are cached trunk features (``trunk: none``) or uint8 NHWC images, on the CPU;
    index them with integer arrays. ``None`` means the kind is not given to this method.
    """

    source: Any | None = None  # labeled inputs (tensor-like)
    labels: np.ndarray | None = None  # int64 0..num_classes-1, one per source row
    domains: np.ndarray | None = None  # int64 0..num_domains-1, one per source row
    target: Any | None = None  # unlabeled target inputs
    target_cameras: np.ndarray | None = None  # int64 camera index per target row
    #: renders target images as other target cameras see them (label-free; ``camera_views``)
    camera_views: CameraViews | None = None
    num_classes: int = 0
    num_domains: int = 0
    kinds: frozenset[str] = field(default_factory=frozenset)


@dataclass
class Batch:
    """One training step's inputs, on the training device (augmented when images).

    ``source``/``labels``/``domains``: a P x K batch of labeled rows (``source_index`` = their
    rows in ``TrainData.source``). ``target``: rows of the unlabeled target set
    (``target_index``), drawn by the method's ``target_sampler`` (uniform by default);
    ``target_views``: for each of them, the same image re-imaged by another target camera
    (``camera_views`` kind only), else None.
    """

    epoch: int
    step: int
    source: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    domains: torch.Tensor | None = None
    source_index: torch.Tensor | None = None
    target: torch.Tensor | None = None
    target_index: torch.Tensor | None = None
    target_cameras: torch.Tensor | None = None
    target_views: torch.Tensor | None = None


class Method(ABC):
    """Base class for every method registered in ``bench.methods.REGISTRY``."""

    #: data kinds the method cannot run without (see DATA_KINDS)
    requires: ClassVar[frozenset[str]] = frozenset({"labeled"})
    #: data kinds it uses when the setting has them
    optional: ClassVar[frozenset[str]] = frozenset()
    #: True when the method needs images and the trunk's stages (not cached pooled features)
    needs_trunk: ClassVar[bool] = False

    @classmethod
    def consumed(cls, available: frozenset[str]) -> frozenset[str]:
        """The kinds this method receives in a setting offering ``available``."""
        return frozenset((cls.requires | cls.optional) & available)

    @classmethod
    def missing(cls, available: frozenset[str]) -> frozenset[str]:
        return frozenset(cls.requires - available)

    @classmethod
    @abstractmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> Any:
        """Check a protocol entry's ``params``; raise BenchError naming the bad key."""

    @classmethod
    def check_train(cls, train: Any, *, source: str) -> None:
        """Refuse a protocol's ``train`` section the method cannot run with (before any work)."""
        return None

    @abstractmethod
    def __init__(self, params: Any, *, num_classes: int, embedding_size: int) -> None:
        """No work here beyond building small modules: data arrives in ``setup``."""

    # -- hooks with defaults ----------------------------------------------------------------
    def wrap_model(self, model: nn.Module, *, backbone: str) -> nn.Module:
        """Return the network to train and evaluate (default: ``model`` unchanged).

        ``model`` is a :class:`bench.models.EmbeddingModel`; its ``trunk`` is None on the
        cached-feature path. Whatever is returned maps inputs to L2-normalised embeddings.
        """
        return model

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the method owns outside the model (trained with ``loss_optimizer``)."""
        return []

    def to(self, device: torch.device) -> Method:
        """Move owned modules and buffers to ``device``."""
        return self

    def setup(self, model: nn.Module, data: TrainData, *, embed: Embed,
              generator: torch.Generator) -> None:
        """Once before training (memories are built here, from ``model`` and ``data``)."""
        return None

    def on_epoch(self, epoch: int, model: nn.Module, data: TrainData, *, embed: Embed) -> None:
        """At the start of every epoch (0, 1, ...): clustering, schedules, state resets."""
        return None

    def target_sampler(self, epoch: int, iterations: int, batch_size: int,
                       rng: np.random.Generator) -> np.ndarray | None:
        """Target rows for this epoch, shape (iterations, batch_size); None = uniform draws."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (the method runs ``model`` on the inputs it uses)."""

    def after_step(self, batch: Batch) -> None:
        """After the optimiser step, without gradient: memory updates."""
        return None

    def evaluation_domain(self, model: nn.Module,
                          domain: str) -> contextlib.AbstractContextManager:
        """Context for scoring data of ``domain`` ("source": validation on held-out source
        identities; "target": the test) with ``model``; domain-specific layers route by it."""
        return contextlib.nullcontext()

    def pseudo_labels(self) -> tuple[np.ndarray, int] | None:
        """The current target pseudo-labels (0..K-1 clusters, then one id per outlier) and K,
        for the harness's audit of clustering quality (None: the method has none)."""
        return None

    def score_fn(self, model: nn.Module, device: torch.device) -> ScoreFn | None:
        """Test-time scoring over embeddings for asymmetric methods; None = Euclidean."""
        return None
