"""The plan: a protocol validated before any work (methods, search spaces, settings, datasets,
backbone, device, precision), with the hash that keys its results and its studies.

Nothing is read from a dataset or written anywhere before :func:`plan_protocol` returns.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import plugins
from bench.data import dataset_info
from bench.data.registry import dataset_plugins, get_spec, resolve_options
from bench.errors import BenchError
from bench.experiment import apply_search_values
from bench.methods import method_class, plugins_used, validate_method
from bench.methods.base import DATA_LABELS
from bench.models import BACKBONES
from bench.precision import check_precision
from bench.protocol import RESERVED_SEARCH_KEYS, MethodSpec, Protocol, TrainSpec, load_protocol
from bench.setting_kinds import SETTING_KINDS
from bench.settings import static_kinds
from bench.yaml_file import read_text_bounded


@dataclass
class Plan:
    """A validated protocol: nothing is read or written before this exists."""

    protocol: Protocol
    source: str
    protocol_hash: str
    protocol_text: str
    #: per method entry, the installed plug-ins it runs on (protocol_plugins)
    plugins: dict[str, dict[str, plugins.Plugin]] = field(default_factory=dict)


def _check_search_space(spec: MethodSpec, index: int, source: str) -> None:
    """Every searched key must be a parameter the method accepts: try the mid-point."""
    for key, dim in spec.search.items():
        field_name = f"methods.{index}.search.{key}"
        if key in RESERVED_SEARCH_KEYS:
            continue
        if dim.type == "categorical":
            probe = dim.choices[0]
        elif dim.type == "int":
            probe = int((dim.low + dim.high) // 2)
        else:
            probe = math.sqrt(dim.low * dim.high) if dim.type == "log_float" else (
                (dim.low + dim.high) / 2)
        params, _ = apply_search_values(spec.params, TrainSpec(), {key: probe})
        try:
            validate_method(spec.method, params, source=source, field=f"methods.{index}")
        except BenchError as error:
            raise BenchError(f"searched value {probe!r} is rejected: {error.reason}",
                             source=source, field=field_name) from None


def _check_sequence_spec(protocol: Protocol, source: str) -> None:
    """Sequence options and the extractor must be valid before any work (files: at run time)."""
    split = protocol.split
    if split.kind != "fid_sequence":
        return
    from bench.extractors import EXTRACTORS
    from bench.splits.fid_sequence import SequenceParams

    if split.file is None and split.extractor not in EXTRACTORS:
        raise BenchError(f"unknown extractor {split.extractor!r} (known: "
                         f"{', '.join(EXTRACTORS)})", source=source, field="split.extractor")
    try:
        SequenceParams.from_options(split.sequence, source=source)
    except BenchError as error:
        raise BenchError(error.reason, source=source, field="split.sequence"
                         + (f".{error.field}" if error.field else "")) from None


def _check_setting(protocol: Protocol, spec: MethodSpec, index: int, source: str) -> None:
    """A method runs only in settings that offer the data it requires, and PTL-like methods
    only on images (not cached pooled features): refused here, before any training."""
    cls = method_class(spec.method)
    kind = protocol.setting.kind
    missing = cls.missing(static_kinds(kind))
    if missing:
        runs_in = [k for k in SETTING_KINDS if not cls.missing(static_kinds(k))]
        raise BenchError(f"{spec.method} needs {', '.join(DATA_LABELS[m] for m in sorted(missing))}"
                         f", which setting {kind!r} does not give (it runs in: "
                         f"{', '.join(runs_in) or 'none'})", source=source,
                         field=f"methods.{index}.method")
    cls.check_train(protocol.train, source=source)
    if cls.needs_trunk and protocol.model.trunk == "none":
        raise BenchError(f"{spec.method} needs images and the backbone's stages; cached pooled "
                         f"features (model.trunk: none) cannot serve it: use model.trunk "
                         f"last_stage or all", source=source, field=f"methods.{index}.method")


def _check_datasets(protocol: Protocol, source: str) -> None:
    """Every dataset is registered and its options are valid (nothing is loaded)."""
    for i, dspec in enumerate(protocol.dataset_specs):
        where = "dataset" if protocol.datasets is None else f"datasets.{i}"
        try:
            spec = get_spec(dspec.name)
        except BenchError as error:
            raise BenchError(error.reason, source=source, field=f"{where}.name") from None
        try:
            resolve_options(spec, dspec.options)
        except BenchError as error:
            option = (error.field or "").removeprefix("option ")
            raise BenchError(error.reason, source=source, field=f"{where}.options"
                             + (f".{option}" if option else "")) from None


def plan_protocol(path: str | Path) -> Plan:
    """Validate the protocol, its methods, datasets and backbone; raise BenchError otherwise."""
    protocol, digest = load_protocol(path)
    source = str(path)
    for i, spec in enumerate(protocol.methods):
        validate_method(spec.method, spec.params, source=source, field=f"methods.{i}")
        _check_search_space(spec, i, source)
        _check_setting(protocol, spec, i, source)
    _check_datasets(protocol, source)
    if protocol.model.backbone not in BACKBONES:
        raise BenchError(f"unknown backbone {protocol.model.backbone!r} (known: "
                         f"{', '.join(BACKBONES)})", source=source, field="model.backbone")
    _check_sequence_spec(protocol, source)
    if protocol.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA requested but no GPU is available", source=source, field="device")
    try:
        check_precision(protocol.train.precision, pick_device(protocol.device))
    except ValueError as error:
        raise BenchError(str(error), source=source, field="train.precision") from None
    text = read_text_bounded(path, what="protocol")  # the size and encoding checks again
    used = protocol_plugins(protocol)
    if plugins.signature(used):  # a plug-in's version is part of the setting: in the hash
        digest = hashlib.sha256(json.dumps([digest, plugins.signature(used)],
                                           sort_keys=True).encode()).hexdigest()
    return Plan(protocol, source, digest, text, used)


def protocol_plugins(protocol: Protocol) -> dict[str, dict[str, plugins.Plugin]]:
    """Per method entry (by its name in the protocol), the plug-ins it may run on: its method,
    its loss and miner (also those a categorical search may choose), and the datasets'."""
    datasets = dataset_plugins()
    shared = {f"{datasets[d.name].group}:{d.name}": datasets[d.name]
              for d in protocol.dataset_specs if d.name in datasets}
    out: dict[str, dict[str, plugins.Plugin]] = {}
    for spec in protocol.methods:
        used = dict(shared)
        used.update(plugins_used(spec.method, spec.params))
        for key in ("loss", "miner"):
            dim = spec.search.get(key)
            for choice in (dim.choices or []) if dim is not None else []:
                used.update(plugins_used(spec.method, {**spec.params, key: choice}))
        out[spec.name] = used
    return out


def check_available(plan: Plan) -> None:
    """Every dataset is here (or the protocol names its root): refused before any work."""
    for i, dspec in enumerate(plan.protocol.dataset_specs):
        info = dataset_info(dspec.name)
        if not info["available"] and not dspec.options.get("root"):
            where = "dataset" if plan.protocol.datasets is None else f"datasets.{i}"
            raise BenchError(f"dataset {dspec.name!r} is not available here: {info['where']}",
                             source=plan.source, field=f"{where}.name")


def pick_device(choice: str) -> torch.device:
    """``auto``: the GPU when there is one."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


