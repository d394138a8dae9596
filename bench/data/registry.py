"""The dataset registry: one small spec per dataset, looked up by name.

A dataset is registered with :func:`register_dataset` (a decorator on its builder) or
:func:`register` (a ready :class:`DatasetSpec`). Built-in datasets live in the modules listed in
``BUILTIN_MODULES``; they are imported on first lookup, so importing ``bench.data`` stays cheap and
a new dataset module only has to be added to that tuple. Installed distributions add datasets
through the ``bench.datasets`` entry-point group (:mod:`bench.plugins`): the entry point names a
:class:`DatasetSpec` (or a function returning one), registered under the entry point's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import bench.data.cache as _cache
from bench import plugins
from bench.data.records import ImageDataset, default_class_split
from bench.errors import BenchError

BUILTIN_MODULES: tuple[str, ...] = (
    "bench.data.glyphs",
    "bench.data.emoji",
    "bench.data.glyph_cameras",
    # real datasets read from disk (bench/data/real/)
    "bench.data.real.cub",
    "bench.data.real.cars",
    "bench.data.real.sop",
    "bench.data.real.inshop",
    "bench.data.real.reid",
    "bench.data.real.folder",
    "bench.data.real.manifest",
)

_REGISTRY: dict[str, DatasetSpec] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class Option:
    """One builder option: its default and a parser that normalises a value.

    ``parse`` returns the normalised value (what the builder receives and the cache key hashes)
    or raises ``ValueError`` with a short reason; the registry turns that into a ``BenchError``.
    """

    default: Any
    parse: Callable[[Any], Any]
    help: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the registry needs to know about one dataset.

    ``sources(options)`` maps a label to a digest for each input file the build reads (fonts,
    image folders); it feeds the cache key, so changed inputs never hit a stale cache.
    ``where()`` is one line: where the data is looked for, or what to install.
    """

    name: str
    description: str
    builder: Callable[..., ImageDataset]
    options: Mapping[str, Option]
    available: Callable[[], bool]
    where: Callable[[], str]
    sources: Callable[[Mapping[str, Any]], Mapping[str, str]] = field(default=lambda _opts: {})
    version: str = "1"


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a spec; registering a different builder under a taken name is a programming error."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old.builder is not spec.builder:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_dataset(
    name: str,
    *,
    description: str,
    options: Mapping[str, Option],
    available: Callable[[], bool],
    where: Callable[[], str],
    sources: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
    version: str = "1",
) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator form of :func:`register` for a builder taking the options as keywords."""

    def wrap(builder: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        register(
            DatasetSpec(
                name=name,
                description=description,
                builder=builder,
                options=dict(options),
                available=available,
                where=where,
                sources=sources or (lambda _opts: {}),
                version=version,
            )
        )
        return builder

    return wrap


# --- option parsers shared by dataset modules -------------------------------------------------


def int_in(low: int, high: int) -> Callable[[Any], int]:
    """Parser for an int in ``[low, high]``; digit strings (from the CLI) are accepted."""

    def parse(value: Any) -> int:
        number = _as_int(value)
        if number is None or not low <= number <= high:
            raise ValueError(f"must be an integer in {low}..{high}, got {value!r}")
        return number

    return parse


def optional_positive_int(value: Any) -> int | None:
    """Parser for ``None`` (no limit) or an int >= 1."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "all")):
        return None
    number = _as_int(value)
    if number is None or number < 1:
        raise ValueError(f"must be None or an integer >= 1, got {value!r}")
    return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


# --- lookup ---------------------------------------------------------------------------------------


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def dataset_plugins() -> dict[str, plugins.Plugin]:
    """Installed ``bench.datasets`` plug-ins; a name clash with a built-in is refused."""
    _load_builtins()
    return plugins.discover("datasets", set(_REGISTRY))


def dataset_names() -> list[str]:
    """Names of every registered dataset and installed dataset plug-in, sorted."""
    found = dataset_plugins()  # loads the built-ins first
    return sorted({*_REGISTRY, *found})


def dataset_origin(name: str) -> str:
    """"built-in", or the distribution and version of the plug-in providing ``name``."""
    found = dataset_plugins()
    return found[name].origin if name in found else plugins.BUILTIN


def get_spec(name: str) -> DatasetSpec:
    """The spec for ``name``, or a BenchError listing the known names."""
    found = dataset_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in found:
        raise plugins.unknown_name("datasets", name, [*_REGISTRY, *found], source="datasets",
                                   field="")
    obj = found[name].load()
    spec = obj() if callable(obj) and not isinstance(obj, DatasetSpec) else obj
    if not isinstance(spec, DatasetSpec):
        raise BenchError(f"{found[name].entry_point.value!r} is not a "
                         f"bench.data.registry.DatasetSpec", source=f"entry point {name!r} of "
                         f"group 'bench.datasets' ({found[name].origin})")
    # the plug-in's version joins the cache key: an upgraded builder never reads a stale cache
    return dataclasses.replace(spec, name=name,
                               version=f"{spec.version}+{found[name].distribution}"
                                       f"-{found[name].version}")


def resolve_options(spec: DatasetSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every value parsed; unknown or invalid options raise BenchError."""
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "(none)"
        raise BenchError(
            f"unknown option {unknown[0]!r}; known options: {known}", source=f"dataset {spec.name}"
        )
    resolved: dict[str, Any] = {}
    for key, option in spec.options.items():
        value = options.get(key, option.default)
        try:
            resolved[key] = option.parse(value)
        except ValueError as error:
            raise BenchError(
                str(error), source=f"dataset {spec.name}", field=f"option {key}"
            ) from None
    return resolved


def dataset_info(name: str) -> dict[str, Any]:
    """Name, description, availability here, a where/what-is-needed line and option defaults."""
    spec = get_spec(name)
    return {
        "name": spec.name,
        "description": spec.description,
        "available": bool(spec.available()),
        "where": spec.where(),
        "options": {key: option.default for key, option in spec.options.items()},
    }


def load_dataset(name: str, *, cache: bool = True, **options: Any) -> ImageDataset:
    """Build (or load from the on-disk cache) dataset ``name`` with the given options.

    ``cache=False`` always rebuilds and writes nothing (used by the determinism tests).
    """
    spec = get_spec(name)
    resolved = resolve_options(spec, options)
    file_backed = "root" in spec.options  # read lazily from the user's copy: no npz cache
    if not (file_backed and resolved.get("root")) and not spec.available():
        raise BenchError(f"not available here: {spec.where()}", source=f"dataset {name}")
    if file_backed:
        return _build(spec, resolved, key="")
    sources = spec.sources(resolved)
    key = _cache.content_key(name, spec.version, resolved, sources)
    if not cache:
        return _build(spec, resolved, key)
    path = _cache.dataset_path(name, key)
    found = _cache.read_dataset(path)
    if found is not None:
        return found
    ds = _build(spec, resolved, key)
    _cache.write_dataset(ds, path)
    return ds


def _build(spec: DatasetSpec, resolved: dict[str, Any], key: str) -> ImageDataset:
    start = time.perf_counter()
    ds = spec.builder(**resolved)
    meta = {
        **ds.meta,
        "dataset": spec.name,
        "version": spec.version,
        "options": resolved,
        "key": key,
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return dataclasses.replace(ds, name=spec.name, meta=meta)


def describe(name: str, **options: Any) -> dict[str, int]:
    """Counts for ``bench datasets show NAME``: classes, images, domains, cameras, split sizes."""
    ds = load_dataset(name, **options)
    train, test = default_class_split(ds)  # the classes a run of the dataset uses
    counts = ds.counts()
    counts["train_classes"] = len(train)
    counts["test_classes"] = len(test)
    return counts
