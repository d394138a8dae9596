"""The splits a protocol runs on: the standard one, or an FID sequence mapped onto a dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.records import ImageDataset, default_class_split
from bench.errors import BenchError


@dataclass(frozen=True)
class NamedSplit:
    """Train and test class indices of one split, with its FID when it belongs to a sequence."""

    id: str
    train: np.ndarray
    test: np.ndarray
    fid: float | None = None
    is_default: bool = True


def standard(ds: ImageDataset) -> list[NamedSplit]:
    """The dataset's own split: its roles where it has them (SOP, In-Shop, re-ID sets), else
    the first half of the sorted classes train and the second half test."""
    train, test = default_class_split(ds)
    return [NamedSplit("standard", train, test)]


def split_file_path(template: str, dataset: str, base: Path) -> Path:
    """``{dataset}`` filled in; relative paths are taken from the protocol file's folder."""
    path = Path(template.replace("{dataset}", dataset))
    return path if path.is_absolute() else base / path


def evenly_spaced(count: int, keep: int | None, default: int) -> list[int]:
    """``keep`` indices from 0 to count-1, evenly spaced, always including ``default``."""
    if keep is None or keep >= count:
        return list(range(count))
    chosen = {int(round(i)) for i in np.linspace(0, count - 1, keep)} | {default}
    return sorted(chosen)


def from_document(document: dict[str, Any], ds: ImageDataset, *, source: str,
                  select: int | None = None) -> list[NamedSplit]:
    """Map a split file's class names onto ``ds``'s class indices; refuse unknown names."""
    from bench.splits.fid_sequence import check_class_names, check_split_entry

    entries = document.get("splits") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BenchError("no splits", source=source, field="splits")
    for position, entry in enumerate(entries):  # read_split_file checked these; others may not
        check_split_entry(entry, position, source=source)
    defaults = [i for i, e in enumerate(entries) if e["is_default"]]
    if len(defaults) != 1:
        raise BenchError(f"expected exactly one default split, found {len(defaults)}",
                         source=source, field="splits")
    check_class_names(entries, ds.class_names, source=source, dataset=ds.name)
    index = {name: i for i, name in enumerate(ds.class_names)}
    splits = []
    for position in evenly_spaced(len(entries), select, defaults[0]):
        entry = entries[position]
        sides = [np.array(sorted(index[name] for name in entry[side]))
                 for side in ("train_classes", "test_classes")]
        fid = None if entry["fid"] is None else float(entry["fid"])
        splits.append(NamedSplit(f"fid{int(entry['id']):02d}", sides[0], sides[1], fid,
                                 bool(entry["is_default"])))
    return splits
