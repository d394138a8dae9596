"""Checks that need the class counts, made before any training (and by `bench validate`
when the data is here): enough classes for the folds, and for the sampler's batches.

PML's MPerClassSampler asserts ``m_per_class * classes >= batch_size`` only when a training run
starts; a protocol that cannot satisfy it is refused here, naming the file and the field.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.protocol import Protocol
from bench.splits import ClassSplit
from bench.splits.kfold import kfold_splits


def make_folds(protocol: Protocol, trainval: np.ndarray, test: np.ndarray, *, source: str,
               pool: str, split_id: str = "standard") -> list[ClassSplit]:
    """The protocol's class-disjoint folds over ``trainval``; BenchError (file + field) when
    there are too few classes for them."""
    n = len(trainval)
    where = f"{pool} split {split_id} has {n} train+validation classes"
    if protocol.folds > n:
        raise BenchError(f"{protocol.folds} folds need at least {protocol.folds} classes; {where}",
                         source=source, field="folds")
    fraction = protocol.validation_fraction()
    if fraction is not None and not 1 <= round(n * fraction) < n:
        raise BenchError(f"validation_fraction {fraction} of {n} classes leaves "
                         f"{round(n * fraction)} validation classes; {where}", source=source,
                         field="split.validation_fraction")
    try:
        folds = kfold_splits(trainval, test, protocol.folds, fraction)
    except BenchError as error:
        raise BenchError(f"{error.reason}; {where}", source=source, field="folds") from None
    for fold in folds:
        if len(fold.train) == 0 or len(fold.validation) == 0:
            raise BenchError(f"{fold.name} would have {len(fold.train)} training and "
                             f"{len(fold.validation)} validation classes; {where}",
                             source=source, field="folds")
    return folds


def check_sampler(protocol: Protocol, folds: list[ClassSplit], *, source: str,
                  pool: str) -> None:
    """Every fold's training classes must fill a batch of ``batch_size`` with
    ``m_per_class`` images per class (what MPerClassSampler needs)."""
    train = protocol.train
    need = math.ceil(train.batch_size / train.m_per_class)
    for fold in folds:
        if len(fold.train) < need:
            raise BenchError(f"batch_size {train.batch_size} with m_per_class "
                             f"{train.m_per_class} needs at least {need} training classes, but "
                             f"{pool} {fold.name} trains on {len(fold.train)}: lower batch_size, "
                             f"raise m_per_class or use fewer folds", source=source,
                             field="train.batch_size")


def check_data(protocol: Protocol, source: str) -> list[str]:
    """`bench validate`: load each available dataset (index only for real copies) and run the
    checks above on its standard split; returns notes for what could not be checked."""
    from bench.data import dataset_info, load_dataset
    from bench.data.merge import merge_datasets
    from bench.settings import resolve_layout
    from bench.splits.named import standard

    notes = []
    for name, dspecs in protocol.pools:
        here = all(dataset_info(d.name)["available"] or d.options.get("root") for d in dspecs)
        if not here:
            notes.append(f"{name}: not here; class counts are checked at run time")
            continue
        ds = merge_datasets([load_dataset(d.name, **d.options) for d in dspecs])
        layout = resolve_layout(protocol.setting, ds, source=source)
        if not layout.reid:
            split: Any = standard(ds)[0]
            trainval, test = split.train, split.test
            if protocol.split.kind != "standard":
                notes.append(f"{name}: checked on the standard split; the FID sequence's "
                             "splits are checked at run time")
        else:
            trainval, test = layout.train_classes, layout.test_classes
        folds = make_folds(protocol, np.asarray(trainval), np.asarray(test), source=source,
                           pool=name)
        check_sampler(protocol, folds, source=source, pool=name)
    return notes
