"""Protocol files: a validated schema, so a typo or a wrong type fails before any work is done.

A protocol fixes everything that must be identical across methods (data, split, backbone, loop,
sampler, optimiser, schedule, augmentation, evaluation); each entry of ``methods`` adds only its
own parameters.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.errors import BenchError
from bench.evaluate.metric_table import DEFAULT_PRIMARY, METRICS, family
from bench.safe_paths import NAME_PATTERN
from bench.setting_kinds import DEFAULT_SETTING, SETTING_KINDS, SETTINGS
from bench.validation import invalid
from bench.yaml_file import read_yaml

#: seeds must fit numpy's and torch's generators (2**32 - 1); negative seeds are refused
MAX_SEED = 2**32 - 1
#: search bounds: finite and of a plausible size (a bound like 1e308 overflows the midpoint)
MAX_BOUND = 1e12
MAX_CHOICES = 1000


class Section(BaseModel):
    """Every section rejects unknown keys: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DatasetSpec(Section):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class SplitSpec(Section):
    """``standard``: first half of the classes train, second half test. ``fid_sequence``: the
    ooDML sequence of splits of rising train/test FID, from ``file`` (a split file made by
    `bench splits make` or imported; ``{dataset}`` is replaced by the dataset name) or generated
    with ``extractor`` and ``sequence`` options. Hyperparameters are searched on the default
    split only, then every method runs on every split with the values its search chose."""

    kind: Literal["standard", "fid_sequence"] = "standard"
    #: Share of the train+validation classes each fold validates on. Default: 1/folds
    #: (the folds tile the classes), or 0.25 with a single fold.
    validation_fraction: float | None = Field(None, gt=0, lt=1)
    file: str | None = None
    extractor: str = "mobilenet_v2"
    sequence: dict[str, Any] = Field(default_factory=dict)
    #: keep this many splits, evenly spaced from easiest to hardest (the default always kept)
    select: int | None = Field(None, ge=2)
    #: size-controlled evaluation along a sequence: this many seeded subsets of the test classes,
    #: each as large as the smallest test set of the sequence (bench.evaluate.subsets)
    subsets: int = Field(5, ge=1, le=100)

    @model_validator(mode="after")
    def _sequence_keys_only_for_sequences(self) -> SplitSpec:
        if self.kind == "standard" and (self.file or self.sequence or self.select):
            raise ValueError("`file`, `sequence` and `select` need `kind: fid_sequence`")
        return self


class ModelSpec(Section):
    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    trunk: Literal["all", "none", "last_stage"] = "none"
    embedding_size: int = Field(128, ge=2, le=65_536)
    head_hidden: int = Field(512, ge=0, le=65_536)
    #: every BatchNorm layer of the trunk stays in eval mode while training (running statistics
    #: frozen); its affine parameters are frozen too unless ``freeze_batchnorm_affine`` is false
    freeze_batchnorm: bool = False
    #: false = pytorch-metric-learning's ``freeze_trunk_batchnorm`` (Reality Check): statistics
    #: frozen, BatchNorm scale/shift still trained. Only meaningful with ``freeze_batchnorm``.
    freeze_batchnorm_affine: bool = True
    #: with ``trunk: last_stage`` and no augmentation: compute the activations entering the last
    #: stage once (cached on disk, keyed by a digest of the frozen weights, data and stage) and
    #: train last stage + head on them (bench.activations)
    cache_frozen: bool = False


class OptimizerSpec(Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class ScheduleSpec(Section):
    name: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(1000, ge=1)
    gamma: float = Field(0.5, gt=0)


class AugmentationSpec(Section):
    """Applied to training batches of images; ignored on the cached-feature path (trunk none).

    ``random_resized_crop_scale``/``_ratio``: torchvision's RandomResizedCrop (area share drawn
    uniformly, aspect ratio w/h log-uniformly; after 10 failed draws a centre crop clipped to the
    ratio range). ``crop_size`` (e.g. 227 from 256-px images) is the training crop's output size
    and the evaluation centre crop; None keeps the dataset's image size. With ``crop_size`` and
    no random resized crop, training takes a plain random ``crop_size`` crop (no rescaling).
    """

    random_resized_crop_scale: tuple[float, float] | None = None
    random_resized_crop_ratio: tuple[float, float] = (1.0, 1.0)
    crop_size: int | None = Field(None, ge=8)
    horizontal_flip: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentationSpec:
        if self.random_resized_crop_scale is not None:
            low, high = self.random_resized_crop_scale
            if not 0 < low <= high <= 1:
                raise ValueError("random_resized_crop_scale needs 0 < low <= high <= 1")
        low, high = self.random_resized_crop_ratio
        if not 0 < low <= high:
            raise ValueError("random_resized_crop_ratio needs 0 < low <= high")
        return self


class TrainSpec(Section):
    iterations: int = Field(400, ge=1, le=10**9)
    batch_size: int = Field(64, ge=2, le=1_000_000)
    m_per_class: int = Field(4, ge=1, le=1_000_000)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    loss_optimizer: OptimizerSpec = Field(
        default_factory=lambda: OptimizerSpec(lr=1e-2),
        description="Optimiser for parameters a method owns (e.g. proxies).",
    )
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    #: iterations per epoch (for methods with per-epoch work: clustering, momentum ramps);
    #: None = one pass over the target training images, or the labeled ones without a target
    epoch_iterations: int | None = Field(None, ge=1)
    validate_every: int = Field(50, ge=1)
    patience: int = Field(4, ge=1)
    #: ``best``: keep the state with the best validation score (early stopping after
    #: ``patience``). ``last``: train all iterations and keep the final state, for settings
    #: whose validation data cannot judge the target (in ``uda`` validation sees only held-out
    #: source identities; target labels are never used for selection).
    checkpoint: Literal["best", "last"] = "best"
    eval_batch_size: int = Field(512, ge=1)
    #: arithmetic of training and embedding extraction, the same for every method: fp32, or
    #: autocast to bf16 / fp16 (fp16 with a grad scaler, CUDA only); see bench.precision
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: convolution weights in channels-last memory layout (faster on tensor cores)
    channels_last: bool = False
    #: threads preparing the next batches during a step; None = by input kind (0 for cached
    #: features, else up to 4). Results do not depend on it (each batch has its own seed).
    loader_workers: int | None = Field(None, ge=0, le=64)

    @model_validator(mode="after")
    def _batch_fits_sampler(self) -> TrainSpec:
        if self.batch_size % self.m_per_class:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of m_per_class {self.m_per_class}"
            )
        return self


class EvaluationSpec(Section):
    #: validation / headline metric; default MAP@R in `dml`, mAP in `uda` and `dg`
    primary: Literal[METRICS] | None = None  # type: ignore[valid-type]
    k: Literal["max_bin_count"] = "max_bin_count"
    nmi: bool = True


class SearchDimension(Section):
    """One searched hyperparameter: float, log_float, int or categorical."""

    type: Literal["float", "log_float", "int", "categorical"]
    low: float | None = Field(None, allow_inf_nan=False, ge=-MAX_BOUND, le=MAX_BOUND)
    high: float | None = Field(None, allow_inf_nan=False, ge=-MAX_BOUND, le=MAX_BOUND)
    choices: list[Any] | None = Field(None, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty `choices` list")
            for choice in self.choices:
                if not _scalar_choice(choice):
                    raise ValueError(f"choices must be scalars (string, number, true/false or "
                                     f"null), got {choice!r}")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} dimension needs `low` < `high`")
        elif self.type == "log_float" and self.low <= 0:
            raise ValueError("a log_float dimension needs `low` > 0")
        return self


def _scalar_choice(value: Any) -> bool:
    """What optuna can store as a categorical choice: a finite scalar."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


#: Search keys that are not paths into ``params`` but still belong to the method.
RESERVED_SEARCH_KEYS = ("loss_optimizer.lr",)


class MethodSpec(Section):
    name: str = Field(pattern=NAME_PATTERN)  # a folder under runs/: one safe path component
    method: str = "pml_loss"
    params: dict[str, Any] = Field(default_factory=dict)
    #: dotted paths into ``params`` (or ``loss_optimizer.lr``) -> search dimension
    search: dict[str, SearchDimension] = Field(default_factory=dict)
    #: this entry is the named entry's own ablation: the summary shows the paired difference
    ablation_of: str | None = None


class SettingSpec(Section):
    """What data every method receives (the same for all methods of a protocol).

    ``dml``: one domain pool, class-disjoint train/test. ``uda``: labeled ``source`` domains plus
    unlabeled training images of the ``target`` domains; test on disjoint target identities,
    query -> gallery across cameras. ``dg``: labeled ``source`` domains only; test on the unseen
    ``target`` domains the same way. Entries name a protocol dataset (all its domains), a domain
    of the dataset (``sans``) or both (``glyphs/sans``).
    """

    kind: Literal[SETTING_KINDS] = DEFAULT_SETTING  # type: ignore[valid-type]
    source: list[str] = Field(default_factory=list)
    target: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _domains(self) -> SettingSpec:
        if not SETTINGS[self.kind].domains:
            if self.source or self.target:
                raise ValueError("`source` and `target` need `kind: uda` or `kind: dg`")
            return self
        if not self.source or not self.target:
            raise ValueError(f"`kind: {self.kind}` needs non-empty `source` and `target` lists")
        shared = sorted(set(self.source) & set(self.target))
        if shared:
            raise ValueError(f"{', '.join(shared)} is both source and target")
        return self


class BudgetSpec(Section):
    """The same search machinery and number of completed trials for every method."""

    trials: int = Field(0, ge=0, le=100_000)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_failures: int = Field(3, ge=0, le=100_000)


class SaveSpec(Section):
    """What a test reproduction keeps beside its run file (see bench.embeddings)."""

    embeddings: Literal["float16", "float32", "none"] = "float16"
    checkpoints: Literal["none", "best", "last"] = "none"


class Protocol(Section):
    name: str = Field(pattern=NAME_PATTERN)  # RESULTS/<name>/: not `.`, `..` or hidden
    description: str = ""
    dataset: DatasetSpec | None = None
    #: several datasets in one protocol (e.g. CUB200, Cars196, SOP); exclusive with ``dataset``
    datasets: list[DatasetSpec] | None = None
    setting: SettingSpec = Field(default_factory=SettingSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    folds: int = Field(1, ge=1, le=1000)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    #: the chosen hyperparameters are retrained this many times, seeds seed, seed+1, ...
    reproductions: int = Field(1, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch / BLAS threads of every process that trains and evaluates (`bench run -j N` runs N
    #: such processes). Values depend on it through float summation order (measured: NMI moved
    #: by up to 5e-4 between 1 and 2 threads), so a protocol that must give the same numbers on
    #: any machine and with any `-j` pins it; absent: the machine's cores split between `-j`
    #: processes. With it pinned `bench run` starts cores // cpu_threads processes by default.
    cpu_threads: int | None = Field(None, ge=1, le=1024)
    methods: list[MethodSpec] = Field(min_length=1)
    save: SaveSpec = Field(default_factory=SaveSpec)

    @field_validator("methods")
    @classmethod
    def _unique_names(cls, methods: list[MethodSpec]) -> list[MethodSpec]:
        names = [m.name for m in methods]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"method names must be unique; repeated: {', '.join(duplicates)}")
        for m in methods:
            if m.ablation_of is not None and (m.ablation_of == m.name
                                              or m.ablation_of not in names):
                raise ValueError(f"{m.name}: ablation_of {m.ablation_of!r} names no other "
                                 "method of the protocol")
        return methods

    @model_validator(mode="after")
    def _one_dataset_key(self) -> Protocol:
        if (self.dataset is None) == (self.datasets is None):
            raise ValueError("give exactly one of `dataset` or `datasets`")
        if self.datasets is not None and not self.datasets:
            raise ValueError("`datasets` is empty")
        return self

    @model_validator(mode="after")
    def _setting_fits(self) -> Protocol:
        reid = SETTINGS[self.setting.kind].reid
        if reid and self.split.kind != "standard":
            raise ValueError(f"`setting.kind: {self.setting.kind}` runs on the datasets' own "
                             f"split only (`split.kind: standard`)")
        primary = self.evaluation.primary
        allowed = family(reid)
        if primary is None:
            self.evaluation.primary = DEFAULT_PRIMARY["reid" if reid else "retrieval"]
        elif primary not in allowed:
            raise ValueError(f"evaluation.primary {primary!r} is not reported in setting "
                             f"{self.setting.kind!r} (use one of {', '.join(allowed)})")
        return self

    @model_validator(mode="after")
    def _cache_frozen_fits(self) -> Protocol:
        if not self.model.cache_frozen:
            return self
        if self.model.trunk != "last_stage":
            raise ValueError("`model.cache_frozen` needs `model.trunk: last_stage`")
        aug = self.train.augmentation
        if (aug.random_resized_crop_scale is not None or aug.crop_size is not None
                or aug.horizontal_flip > 0):
            raise ValueError("`model.cache_frozen` caches un-augmented activations: "
                             "`train.augmentation` must be empty")
        return self

    @model_validator(mode="after")
    def _seeds_in_range(self) -> Protocol:
        last = self.seed + self.reproductions - 1
        if last > MAX_SEED:
            raise ValueError(f"seeds run from seed {self.seed} to {last}, past {MAX_SEED} (the "
                             "largest seed numpy and torch accept): lower `seed`")
        return self

    @property
    def dataset_specs(self) -> list[DatasetSpec]:
        return self.datasets if self.datasets is not None else [self.dataset]

    @property
    def pools(self) -> list[tuple[str, list[DatasetSpec]]]:
        """What runs as one unit: each dataset alone in ``dml``; in ``uda``/``dg`` all the
        protocol's datasets pooled (e.g. DukeMTMC-reID + Market-1501), named ``a+b``."""
        specs = self.dataset_specs
        if not SETTINGS[self.setting.kind].domains:
            return [(d.name, [d]) for d in specs]
        return [("+".join(d.name for d in specs), specs)]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + r for r in range(self.reproductions)]

    def validation_fraction(self) -> float | None:
        if self.split.validation_fraction is not None:
            return self.split.validation_fraction
        return 0.25 if self.folds == 1 else None


def parse_protocol(data: Any, source: str = "<protocol>") -> Protocol:
    """Validate a parsed YAML document; raise BenchError naming the first bad field."""
    if not isinstance(data, dict):
        raise BenchError("a protocol must be a mapping of keys to values", source=source)
    try:
        return Protocol.model_validate(data)
    except ValidationError as error:
        raise invalid(error, Protocol, source=source) from None


def load_protocol(path: str | Path) -> tuple[Protocol, str]:
    """Read and validate a protocol file; returns the protocol and the sha256 of its bytes."""
    data, raw = read_yaml(path, what="protocol")
    return parse_protocol(data, source=str(path)), hashlib.sha256(raw).hexdigest()
