"""``manifest``: images listed in a CSV file with columns path, class, domain, camera, role.

``path`` (relative to the root, never outside it) and ``class`` are required; ``domain``,
``camera`` and ``role`` are optional columns (a missing column means one domain/camera ``all``,
no roles). ``role`` values: train, test, query, gallery; when the column is present every row
needs one. Any other column is an error (it usually is a typo). The CSV is ``root/manifest.csv``
unless the ``manifest`` option names another file (relative paths are taken from the root).
Classes, domains and cameras are in natural sort order (``2 < 10``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import safe_entry
from bench.data.records import ROLES
from bench.data.registry import Option
from bench.errors import BenchError

DEFAULT_NAME = "manifest.csv"
REQUIRED = ("path", "class")
OPTIONAL = ("domain", "camera", "role")
SINGLE = "all"


def parse_manifest(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a CSV file path, got {value!r}")
    return value


def manifest_path(folder: Path, manifest: str | None) -> Path:
    if manifest is None:
        return folder / DEFAULT_NAME
    path = Path(manifest).expanduser()
    return path if path.is_absolute() else folder / path


def index_manifest(folder: Path, *, manifest: str | None = None) -> Table:
    path = manifest_path(folder, manifest)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchError(f"manifest not found (columns: {', '.join(REQUIRED + OPTIONAL)})",
                         source=str(path)) from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
        except csv.Error as error:
            raise BenchError(f"not a CSV file ({error})", source=str(path)) from None
        unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
        if unknown:
            raise BenchError(f"unknown column {unknown[0]!r}; columns are "
                             f"{', '.join(REQUIRED + OPTIONAL)}", source=str(path),
                             field="line 1")
        missing = [h for h in REQUIRED if h not in header]
        if missing:
            raise BenchError(f"missing column {missing[0]!r}", source=str(path), field="line 1")
        if len(set(header)) != len(header):
            raise BenchError("a column appears twice", source=str(path), field="line 1")
        reader.fieldnames = header
        table = Table(roles=[] if "role" in header else None)
        try:
            for row in reader:
                number = reader.line_num
                if None in row:
                    raise BenchError("more cells than columns", source=str(path),
                                     field=f"line {number}")
                cells = {k: (v or "").strip() for k, v in row.items()}
                for column in header:
                    if not cells.get(column):
                        raise BenchError(f"empty {column!r}", source=str(path),
                                         field=f"line {number}")
                safe_entry(folder, cells["path"], source=path, line=number)
                role = cells.get("role")
                if role is not None:
                    role = role.lower()
                    if role not in ROLES:
                        raise BenchError(f"role {role!r} is not one of {', '.join(ROLES)}",
                                         source=str(path), field=f"line {number}")
                table.add(cells["path"], cells["class"], cells.get("domain", SINGLE),
                          cells.get("camera", SINGLE), role)
        except csv.Error as error:
            raise BenchError(f"malformed CSV ({error})", source=str(path),
                             field=f"line {reader.line_num}") from None
    if not table.paths:
        raise BenchError("lists no images", source=str(path))
    table.meta["manifest"] = str(path)
    return table


MANIFEST = register_real(RealDataset(
    name="manifest",
    description="your own images listed in a CSV (path, class, domain, camera, role)",
    markers=(),
    hint=f"put {DEFAULT_NAME} (columns path, class[, domain, camera, role]) and the images "
    "there",
    index=index_manifest,
    extra_options={
        "manifest": Option(None, parse_manifest,
                           f"CSV file (default ROOT/{DEFAULT_NAME}; relative to the root)"),
    },
    source_files=lambda folder: [p for p in [folder / DEFAULT_NAME] if p.is_file()],
))
