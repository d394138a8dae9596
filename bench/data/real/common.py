"""Shared machinery for the real (on-disk) datasets: roots, registration, the sample table, counts.

Every real dataset is described by a :class:`RealDataset`: the files that mark a copy
(``markers``, relative to the dataset folder), the folder names an official archive extracts to
(``subdirs``), a one-line hint on what to put where, the documented counts and an ``index``
function that reads the official lists into a :class:`Table`. :func:`register_real` turns it into
a registry entry with the options ``root``, ``image_size`` and ``counts`` (plus any extras).

Root lookup: the ``root`` option, else ``$BENCH_DATA/<name>``, else ``~/data/<name>``. The dataset
folder is the root itself or one of ``subdirs`` inside it (e.g. ``CUB_200_2011/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.real.lazy import LazyImages, normalise_size
from bench.data.real.safety import clear_path_cache
from bench.data.records import ROLES, ImageDataset
from bench.data.registry import Option, register_dataset
from bench.errors import BenchError

DATA_ENV = "BENCH_DATA"
COUNT_MODES = ("auto", "strict", "off")
#: Under ``counts=auto`` a copy with at least this share of the documented images is "full".
FULL_COPY_SHARE = 0.5

REAL_DATASETS: dict[str, RealDataset] = {}


@dataclass
class Table:
    """Per-sample string columns read from the official lists, before indexing.

    ``*_order`` fix the canonical order of the names (default: natural sort of those present).
    """

    paths: list[str] = field(default_factory=list)  # relative to the dataset folder
    classes: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    roles: list[str] | None = field(default_factory=list)
    class_order: list[str] | None = None
    domain_order: list[str] | None = None
    camera_order: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, path: str, cls: str, domain: str, camera: str, role: str | None) -> None:
        self.paths.append(path)
        self.classes.append(cls)
        self.domains.append(domain)
        self.cameras.append(camera)
        if self.roles is not None and role is not None:
            self.roles.append(role)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders digit runs numerically: ``2 < 10``, ``c2 < c10``, ``-1 < 0``."""
    if re.fullmatch(r"-?\d+", text):
        return [0, int(text), text]
    return [1] + [(0, int(part), part) if part.isdigit() else (1, 0, part)
                  for part in re.split(r"(\d+)", text)]


def _index(values: list[str], order: list[str] | None, what: str,
           name: str) -> tuple[np.ndarray, list[str]]:
    names = list(order) if order is not None else sorted(set(values), key=natural_key)
    lookup = {value: i for i, value in enumerate(names)}
    try:
        index = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
    except KeyError as error:
        raise BenchError(f"{what} {error.args[0]!r} is not in the {what} list", source=name) from None
    return index, names


def table_to_dataset(name: str, folder: Path, table: Table,
                     image_size: int | Sequence[int]) -> ImageDataset:
    """Index the string columns and wrap the paths in :class:`LazyImages`."""
    if not table.paths:
        raise BenchError(f"no images found in {folder}", source=f"dataset {name}")
    labels, class_names = _index(table.classes, table.class_order, "class", name)
    domains, domain_names = _index(table.domains, table.domain_order, "domain", name)
    cameras, camera_names = _index(table.cameras, table.camera_order, "camera", name)
    roles = None
    if table.roles:
        if len(table.roles) != len(table.paths):
            raise BenchError("some samples have a role and others not", source=f"dataset {name}")
        roles = np.array(table.roles, dtype=np.str_)
    return ImageDataset(
        name=name,
        images=LazyImages(folder, table.paths, image_size),
        labels=labels,
        domains=domains,
        cameras=cameras,
        class_names=class_names,
        domain_names=domain_names,
        camera_names=camera_names,
        meta={"root": str(folder), **table.meta},
        roles=roles,
    )


# --- counts ----------------------------------------------------------------------------------


def summarize(ds: ImageDataset) -> dict[str, int]:
    """Images/classes/domains/cameras overall and ``<role>_images`` / ``<role>_classes``."""
    summary = {
        "images": len(ds),
        "classes": int(len(np.unique(ds.labels))),
        "domains": int(len(np.unique(ds.domains))),
        "cameras": int(len(np.unique(ds.cameras))),
    }
    if ds.roles is not None:
        for role in ROLES:
            mask = ds.roles == role
            summary[f"{role}_images"] = int(np.count_nonzero(mask))
            summary[f"{role}_classes"] = int(len(np.unique(ds.labels[mask])))
    return summary


def check_counts(ds: ImageDataset, expected: Mapping[str, int]) -> list[str]:
    """One readable line per documented count that differs from ``ds``; empty when all match.

    Keys: ``images``, ``classes``, ``domains``, ``cameras`` and ``<role>_images`` /
    ``<role>_classes`` for the roles train, test, query, gallery.
    """
    found = summarize(ds)
    lines = []
    for key, want in expected.items():
        have = found.get(key, 0)
        if have != want:
            what = key.replace("_", " ")
            lines.append(f"{ds.name}: {what}: documented {want:,}, found {have:,} "
                         f"({have - want:+,})")
    return lines


def apply_count_check(ds: ImageDataset, expected: Mapping[str, int], mode: str) -> ImageDataset:
    """Check documented counts per ``mode``; records the outcome in ``meta['count_check']``.

    ``strict``: any mismatch raises. ``auto``: a copy with at least half the documented images is
    treated as a full copy and checked (mismatch raises); a smaller one is a deliberate subset,
    noted but not checked. ``off``: no check.
    """
    if mode == "off" or not expected:
        ds.meta["count_check"] = "off"
        return ds
    total = expected.get("images") or sum(
        v for k, v in expected.items() if k.endswith("_images"))
    if mode == "auto" and total and len(ds) < FULL_COPY_SHARE * total:
        ds.meta["count_check"] = (f"skipped: {len(ds):,} of {total:,} documented images "
                                  "(a partial copy)")
        return ds
    problems = check_counts(ds, expected)
    if problems:
        raise BenchError(
            "; ".join(p.split(": ", 1)[1] for p in problems)
            + " (pass counts=off to use a modified copy)",
            source=f"dataset {ds.name}",
            field="documented counts",
        )
    ds.meta["count_check"] = "passed"
    return ds


# --- roots -----------------------------------------------------------------------------------


def default_root(name: str) -> Path:
    """``$BENCH_DATA/<name>`` when BENCH_DATA is set, else ``~/data/<name>``."""
    env = os.environ.get(DATA_ENV)
    base = Path(env).expanduser() if env else Path.home() / "data"
    return base / name


def parse_root(value: Any) -> str | None:
    """Option parser: None (the default location) or a folder path, made absolute."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "default")):
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"must be a folder path, got {value!r}")
    return str(Path(value).expanduser().absolute())


def parse_image_size(value: Any) -> int | list[int]:
    """Option parser: ``S`` (square centre crop) or ``HxW`` / ``[H, W]`` (plain resize)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+", text):
            value = int(text)
        elif re.fullmatch(r"\d+\s*x\s*\d+", text):
            value = [int(v) for v in text.split("x")]
    try:
        height, width, crop = normalise_size(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a side in px or HxW, got {value!r}") from None
    for side in (height, width):
        if not 8 <= side <= 2048:
            raise ValueError(f"sides must be in 8..2048 px, got {value!r}")
    return height if crop else [height, width]


def parse_count_mode(value: Any) -> str:
    if value is False:  # YAML 1.1 (and so `--option counts=off`) reads a bare off as false
        return "off"
    if value in COUNT_MODES:
        return value
    raise ValueError(f"must be one of {', '.join(COUNT_MODES)}, got {value!r}")


@dataclass(frozen=True)
class RealDataset:
    """Static description of one real dataset (see the module docstring)."""

    name: str
    description: str
    markers: tuple[str, ...]  # each "a|b" is satisfied by either path
    hint: str  # what to put where, one line
    index: Callable[..., Table]  # index(folder, **extra options) -> Table
    subdirs: tuple[str, ...] = ()
    documented: Mapping[str, int] = field(default_factory=dict)
    extra_options: Mapping[str, Option] = field(default_factory=dict)
    default_image_size: int | str = 224
    source_files: Callable[[Path], list[Path]] = field(default=lambda _folder: [])
    version: str = "1"

    def has_markers(self, folder: Path) -> bool:
        return all(any((folder / alt).exists() for alt in marker.split("|"))
                   for marker in self.markers)

    def locate(self, root: Path) -> Path | None:
        """The dataset folder inside ``root`` (itself or an official subfolder), or None."""
        for candidate in (root, *(root / sub for sub in self.subdirs)):
            if candidate.is_dir() and self.has_markers(candidate):
                return candidate
        return None

    def root(self, root: str | os.PathLike[str] | None) -> Path:
        return Path(root).expanduser() if root is not None else default_root(self.name)

    def folder(self, root: str | os.PathLike[str] | None) -> Path:
        """The dataset folder, or a BenchError saying exactly what to put where."""
        base = self.root(root)
        found = self.locate(base)
        if found is None:
            raise BenchError(self.missing_text(base), source=f"dataset {self.name}")
        return found

    def missing_text(self, base: Path) -> str:
        wanted = ", ".join(m.replace("|", " or ") for m in self.markers)
        return (f"no copy found in {base} (needs {wanted}); {self.hint}; "
                f"then run `bench datasets prepare {self.name} --root {base}`")

    def where(self) -> str:
        base = default_root(self.name)
        found = self.locate(base)
        if found is not None:
            return f"{found} (pass root=DIR to use another copy)"
        env = "" if os.environ.get(DATA_ENV) else f" (or ${DATA_ENV}/{self.name})"
        return f"looks in {base}{env} or root=DIR; {self.hint}"

    def available(self) -> bool:
        return self.locate(default_root(self.name)) is not None


def register_real(info: RealDataset) -> RealDataset:
    """Register ``info`` in the dataset registry and in :data:`REAL_DATASETS`."""
    REAL_DATASETS[info.name] = info
    options: dict[str, Option] = {
        "root": Option(None, parse_root, f"dataset folder (default ${DATA_ENV}/{info.name} "
                       f"else ~/data/{info.name})"),
        "image_size": Option(info.default_image_size, parse_image_size,
                             "S: short side to S then centre crop; HxW: resize to H x W"),
        "counts": Option("auto", parse_count_mode,
                         "documented-count check: auto (full copies), strict, off"),
        **info.extra_options,
    }

    def sources(resolved: Mapping[str, Any]) -> dict[str, str]:
        from bench.data.cache import file_sha256

        folder = info.folder(resolved.get("root"))
        return {f"list:{p.relative_to(folder)}": file_sha256(p) for p in info.source_files(folder)}

    def builder(*, root: str | None = None, image_size: int | list[int] = 224,
                counts: str = "auto", **extra: Any) -> ImageDataset:
        return build(info, root=root, image_size=image_size, counts=counts, **extra)

    builder.__name__ = f"build_{info.name}"
    builder.__doc__ = info.description
    register_dataset(info.name, description=info.description, options=options,
                     available=info.available, where=info.where, sources=sources,
                     version=f"{info.name}-{info.version}")(builder)
    return info


def build(info: RealDataset, *, root: str | os.PathLike[str] | None = None,
          image_size: int | Sequence[int] = 224, counts: str = "auto",
          **extra: Any) -> ImageDataset:
    """Read the lists of ``info`` under ``root`` into a lazy :class:`ImageDataset`."""
    folder = info.folder(root)
    clear_path_cache()  # resolve links afresh for every build
    table = info.index(folder, **extra)
    ds = table_to_dataset(info.name, folder, table, image_size)
    return apply_count_check(ds, info.documented, counts)
