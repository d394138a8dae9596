"""A pool, loaded: the dataset (or datasets pooled by a uda/dg setting), its setting layout,
the splits a run trains and tests on, the default split's folds, and the model inputs.

`bench run` and `bench worker` load a pool the same way, so both train on the same classes;
`bench datasets show` reports the same default split (bench.data.records.default_class_split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import load_dataset
from bench.data.merge import merge_datasets
from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.experiment import Inputs, prepare_inputs
from bench.feasibility import check_sampler, make_folds
from bench.plan import Plan
from bench.protocol import DatasetSpec
from bench.safe_paths import confined
from bench.settings import Layout, resolve_layout
from bench.splits import ClassSplit
from bench.splits.named import NamedSplit, from_document, split_file_path, standard


@dataclass
class DatasetContext:
    """A loaded dataset (or pool), its setting layout, its inputs, the splits to run on and
    the default split's folds."""

    name: str
    ds: ImageDataset
    layout: Layout
    inputs: Inputs
    splits: list[NamedSplit]
    folds: list[ClassSplit]  # of the default split: where hyperparameters are searched

    @property
    def default(self) -> NamedSplit:
        return next(s for s in self.splits if s.is_default)

    def split(self, split_id: str) -> NamedSplit:
        return next(s for s in self.splits if s.id == split_id)


def load_pool(plan: Plan, name: str, dspecs: list[DatasetSpec], *, results_dir: Path,
              device: torch.device, progress: bool) -> DatasetContext:
    """Load the pool, resolve its splits, check its folds' class counts (before any work) and
    prepare its inputs."""
    splits, layout, ds = pool_splits(plan, dspecs, results_dir=results_dir, device=device,
                                     progress=progress)
    default = next(s for s in splits if s.is_default)
    folds = split_folds(plan, default, pool=name)
    inputs = prepare_inputs(plan.protocol, ds, device, progress)
    return DatasetContext(name, ds, layout, inputs, splits, folds)


def pool_splits(plan: Plan, dspecs: list[DatasetSpec], *, results_dir: Path,
                device: torch.device | None = None, progress: bool = False
                ) -> tuple[list[NamedSplit], Layout, ImageDataset]:
    """The splits a run of the pool trains and tests on, its layout and the loaded data."""
    ds = merge_datasets([load_dataset(d.name, **d.options) for d in dspecs])
    layout = resolve_layout(plan.protocol.setting, ds, source=plan.source)
    if layout.reid:
        splits = [NamedSplit("standard", layout.train_classes, layout.test_classes)]
    else:
        splits = resolve_splits(plan, dspecs[0], ds, results_dir=results_dir, device=device,
                                progress=progress)
    return splits, layout, ds


def split_folds(plan: Plan, split: NamedSplit, pool: str = "") -> list[ClassSplit]:
    """The class-disjoint folds of ``split`` (sampler batches checked)."""
    p = plan.protocol
    folds = make_folds(p, split.train, split.test, source=plan.source, pool=pool or p.name,
                       split_id=split.id)
    check_sampler(p, folds, source=plan.source, pool=pool or p.name)
    return folds


def resolve_splits(plan: Plan, dspec: DatasetSpec, ds: ImageDataset, *, results_dir: Path,
                   device: torch.device | None, progress: bool) -> list[NamedSplit]:
    """The standard split, or the FID sequence from its file (made here if none is given)."""
    spec = plan.protocol.split
    if spec.kind == "standard":
        return standard(ds)
    from bench.splits.fid_sequence import (
        SequenceParams,
        make_dataset_splits,
        read_split_file,
        write_split_file,
    )

    if spec.file is not None:
        path = split_file_path(spec.file, dspec.name, Path(plan.source).parent)
        if not path.is_file():
            raise BenchError(f"split file {path} does not exist (make one with `bench splits "
                             f"make` or `bench splits import`)", source=plan.source,
                             field="split.file")
        document = read_split_file(path)
    else:
        path = confined(results_dir, "splits", f"{dspec.name}-{spec.extractor}.json")
        if path.is_file():
            document = read_split_file(path)
        else:
            params = SequenceParams.from_options(spec.sequence, source=plan.source)
            document = make_dataset_splits(dspec.name, spec.extractor,
                                           dataset_options=dspec.options, params=params,
                                           device=device, progress=progress)
            write_split_file(document, path)
    return from_document(document, ds, source=str(path), select=spec.select)
