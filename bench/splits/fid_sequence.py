"""Sequences of class splits of increasing difficulty, measured by FID (ooDML's recipe).

Starting from a dataset's default train/test class split, and with one frozen-feature centroid
per class (:mod:`bench.fid`):

* **swap stage** (harder): each iteration computes the train and test centroid means, scores every
  train class by ``dist(c, mu_test) - dist(c, mu_train)`` and every test class by
  ``dist(c, mu_train) - dist(c, mu_test)`` (low = looks like the other side), and swaps the
  ``swaps_per_iteration`` lowest-scoring train classes with the lowest-scoring test classes,
  pairwise. Classes involved in the last ``swap_memory`` swaps are skipped. Every iteration that
  raises the FID is recorded as a split; the first one that does not is undone and ends the stage.
* **removal stage** (harder still): from the last swap state, repeatedly remove the boundary
  classes -- the lowest-scoring (most test-like) train classes and the lowest-scoring (most
  train-like) test classes -- so that both sides end with the same number of classes,
  ``removal_fraction`` of the default split's smaller side fewer each step, until a further step
  would leave fewer than ``min_fraction`` of it. Every step is recorded.
* **easier splits** (inverse rule): from the default split, swap the HIGHEST-scoring classes
  (the most typical of their own side) instead, which mixes the two sides and lowers the FID;
  up to ``easier_iterations`` iterations, each recorded while it lowers the FID.

Ties are broken by class index, so a sequence is a deterministic function of the centroids.
The split file (JSON) lists the splits easiest first; its ``checksum`` is the sha256 of the
canonical JSON of the ``splits`` list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import atomic_write
from bench.errors import BenchError
from bench.fid import EPS, REMOVED, TEST, TRAIN, ClassSetFid

FORMAT = "bench-splits/1"
# Up to this many classes, the sequence runs with single-threaded BLAS (see _blas_threads).
SINGLE_THREAD_CLASSES = 2048


@dataclass(frozen=True)
class SequenceParams:
    """The knobs of a split sequence (ooDML's values as defaults)."""

    swaps_per_iteration: int = 2
    swap_memory: int = 5  # classes swapped in the last N swaps are skipped
    max_swap_iterations: int = 25
    easier_iterations: int = 2  # inverse-rule iterations below the default split (0: none)
    removal_fraction: float = 0.12  # classes removed per side and step, share of the smaller side
    min_fraction: float = 0.5  # removals stop before a side drops below this share of its size
    eps: float = EPS

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, source: str = "splits") -> SequenceParams:
        """Parse ``KEY=VALUE`` options (strings from the CLI are accepted); BenchError if bad."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key not in fields:
                raise BenchError(f"unknown option {key!r}; known: {', '.join(fields)}",
                                 source=source)
            kind = int if fields[key].type in ("int", int) else float
            try:
                if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                    raise ValueError
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise BenchError(f"expected {kind.__name__}, got {value!r}", source=source,
                                 field=f"option {key}") from None
        params = cls(**values)
        params.check(source=source)
        return params

    def check(self, *, source: str = "splits") -> None:
        rules = {
            "swaps_per_iteration": self.swaps_per_iteration >= 1,
            "swap_memory": self.swap_memory >= 0,
            "max_swap_iterations": self.max_swap_iterations >= 0,
            "easier_iterations": self.easier_iterations >= 0,
            "removal_fraction": 0.0 < self.removal_fraction < 1.0,
            "min_fraction": 0.0 < self.min_fraction <= 1.0,
            "eps": self.eps > 0.0 and math.isfinite(self.eps),
        }
        for key, ok in rules.items():
            if not ok:
                raise BenchError(f"out of range: {getattr(self, key)!r}", source=source,
                                 field=f"option {key}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SequenceSplit:
    """One split of a sequence: class indices (into the centroid table) per side, and its FID."""

    stage: str
    train: tuple[int, ...]
    test: tuple[int, ...]
    fid: float

    @property
    def is_default(self) -> bool:
        return self.stage == "default"


# --- the sequence -------------------------------------------------------------------------------


def _other_side_score(engine: ClassSetFid, classes: np.ndarray, own: int) -> np.ndarray:
    """dist(c, mu_other) - dist(c, mu_own): low = the class looks like the other side."""
    other = TEST if own == TRAIN else TRAIN
    return engine.distances(classes, other) - engine.distances(classes, own)


def _pick(classes: np.ndarray, scores: np.ndarray, count: int, *, barred: set[int] = frozenset(),
          highest: bool = False) -> np.ndarray:
    """The ``count`` lowest- (or highest-) scoring classes not in ``barred``; ties by index."""
    keep = np.array([int(c) not in barred for c in classes], dtype=bool)
    classes, scores = classes[keep], scores[keep]
    order = np.lexsort((classes, -scores if highest else scores))
    return classes[order[:count]]


def _snapshot(engine: ClassSetFid, stage: str, fid: float) -> SequenceSplit:
    return SequenceSplit(stage, tuple(int(c) for c in engine.members(TRAIN)),
                         tuple(int(c) for c in engine.members(TEST)), float(fid))


def _swap_stage(engine: ClassSetFid, params: SequenceParams, start_fid: float, *,
                easier: bool, stage: str, iterations: int,
                log: Callable[[str], None] | None) -> list[SequenceSplit]:
    recent: deque[tuple[int, int]] = deque(maxlen=params.swap_memory)
    recorded: list[SequenceSplit] = []
    current = start_fid
    for iteration in range(iterations):
        train, test = engine.members(TRAIN), engine.members(TEST)
        barred = {c for pair in recent for c in pair}
        out_of_train = _pick(train, _other_side_score(engine, train, TRAIN),
                             params.swaps_per_iteration, barred=barred, highest=easier)
        out_of_test = _pick(test, _other_side_score(engine, test, TEST),
                            params.swaps_per_iteration, barred=barred, highest=easier)
        pairs = [(int(a), int(b)) for a, b in zip(out_of_train, out_of_test, strict=False)]
        if not pairs:
            break
        saved = recent.copy()
        for a, b in pairs:
            engine.move(a, TEST)
            engine.move(b, TRAIN)
            recent.append((a, b))
        fid = engine.fid()
        if (fid < current) if easier else (fid > current):
            recorded.append(_snapshot(engine, stage, fid))
            current = fid
            if log:
                log(f"{stage} iteration {iteration + 1}: swapped {pairs}, FID {fid:.4f}")
            continue
        for a, b in reversed(pairs):  # this iteration no longer moves FID the right way: undo
            engine.move(b, TEST)
            engine.move(a, TRAIN)
        recent = saved
        if log:
            log(f"{stage} iteration {iteration + 1}: FID {fid:.4f} vs {current:.4f}, stop")
        break
    return recorded


def _removal_stage(engine: ClassSetFid, params: SequenceParams, base: int,
                   log: Callable[[str], None] | None) -> list[SequenceSplit]:
    step = max(1, round(params.removal_fraction * base))
    floor = max(2, math.ceil(params.min_fraction * base - 1e-9))
    recorded: list[SequenceSplit] = []
    while True:
        train, test = engine.members(TRAIN), engine.members(TEST)
        target = min(len(train), len(test)) - step
        if target < floor:
            break
        drop_train = _pick(train, _other_side_score(engine, train, TRAIN), len(train) - target)
        drop_test = _pick(test, _other_side_score(engine, test, TEST), len(test) - target)
        for cls in (*drop_train, *drop_test):
            engine.move(int(cls), REMOVED)
        fid = engine.fid()
        recorded.append(_snapshot(engine, "removal", fid))
        if log:
            log(f"removal: {target} classes per side, FID {fid:.4f}")
    return recorded


def generate_sequence(centroids: np.ndarray, train: np.ndarray, test: np.ndarray,
                      params: SequenceParams | None = None, *, mode: str = "auto",
                      log: Callable[[str], None] | None = None) -> list[SequenceSplit]:
    """The whole sequence, easiest first: easier splits, the default, swap and removal splits.

    ``centroids`` has one row per class; ``train``/``test`` index its rows (the default split).
    ``mode`` picks :class:`bench.fid.ClassSetFid`'s backend (``auto``, ``gram``, ``features``).
    """
    params = params or SequenceParams()
    params.check()
    centroids = np.asarray(centroids, dtype=np.float64)
    train = np.unique(np.asarray(train, dtype=np.int64))
    test = np.unique(np.asarray(test, dtype=np.int64))
    if np.intersect1d(train, test).size:
        raise BenchError("the default split's train and test classes overlap", field="split")
    if len(train) < 4 or len(test) < 4:
        raise BenchError(f"a split sequence needs at least 4 train and 4 test classes, got "
                         f"{len(train)} and {len(test)}", field="split")
    if not np.all(np.isfinite(centroids)):
        raise BenchError("class centroids contain NaN or infinite values", field="features")

    with _blas_threads(1 if len(centroids) <= SINGLE_THREAD_CLASSES else None):
        harder = ClassSetFid(centroids, train, test, eps=params.eps, mode=mode)
        default = _snapshot(harder, "default", harder.fid())
        easier: list[SequenceSplit] = []
        if params.easier_iterations:
            engine = ClassSetFid(centroids, train, test, eps=params.eps, mode=mode)
            easier = _swap_stage(engine, params, default.fid, easier=True, stage="easier",
                                 iterations=params.easier_iterations, log=log)
        swaps = _swap_stage(harder, params, default.fid, easier=False, stage="swap",
                            iterations=params.max_swap_iterations, log=log)
        removals = _removal_stage(harder, params, min(len(train), len(test)), log)
    return [*reversed(easier), default, *swaps, *removals]


def _blas_threads(limit: int | None):
    """Limit BLAS threads while the engine factorises many small (m x m) matrices.

    Measured here: a 674-class glyph sequence took 10 s single-threaded but 144 s with
    OpenBLAS's default threads while other processes kept the 2 cores busy (threads that spin on
    an oversubscribed machine). Large tables keep the default. No-op without threadpoolctl.
    """
    if limit is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a scikit-learn dependency, normally present
        return contextlib.nullcontext()
    return threadpool_limits(limits=limit, user_api="blas")


# --- the split file -----------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def splits_checksum(splits: list[dict[str, Any]]) -> str:
    """``sha256:<hex>`` of the canonical JSON (sorted keys, no spaces, ASCII) of ``splits``."""
    return "sha256:" + hashlib.sha256(canonical_json(splits)).hexdigest()


def split_entries(sequence: list[SequenceSplit], class_names: list[str]) -> list[dict[str, Any]]:
    """JSON entries (ids 1, 2, ... in sequence order); class names listed in class-index order."""
    return [{
        "id": number,
        "stage": split.stage,
        "is_default": split.is_default,
        "fid": round(float(split.fid), 6),
        "train_classes": [class_names[c] for c in split.train],
        "test_classes": [class_names[c] for c in split.test],
    } for number, split in enumerate(sequence, start=1)]


def split_document(splits: list[dict[str, Any]], **header: Any) -> dict[str, Any]:
    """A split file's content: ``format``, the header fields, ``splits`` and their checksum."""
    for entry in splits:
        shared = set(entry["train_classes"]) & set(entry["test_classes"])
        if shared:
            raise BenchError(f"split {entry['id']}: train and test share {len(shared)} classes "
                             f"(e.g. {sorted(shared)[0]!r})", field="splits")
    document = {"format": FORMAT, **header, "splits": splits}
    document["checksum"] = splits_checksum(splits)
    return json.loads(json.dumps(document, default=_jsonable))  # plain JSON types only


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_split_file(document: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temporary file + rename), 2-space indented, trailing newline."""
    path = Path(path)
    with atomic_write(path) as handle:  # no half file, and no temp file on failure
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path


def read_split_file(path: str | Path, *, class_names: Sequence[str] | None = None,
                    dataset: str | None = None) -> dict[str, Any]:
    """Load a split file and check its format, fields and checksum (BenchError if wrong).

    Every entry must be an object with an integer ``id`` (unique), a boolean ``is_default``
    (at most one true), non-empty ``train_classes`` / ``test_classes`` lists of distinct class
    names (strings) that share no class, and a finite number or null ``fid``. With
    ``class_names`` (a dataset's, named ``dataset`` in the message), every class name must be
    one of them.
    """
    path = Path(path)
    source = str(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchError(f"cannot read a split file: {error}", source=source) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BenchError(f"not a split file (expected format {FORMAT!r})", source=source,
                         field="format")
    splits = document.get("splits")
    if not isinstance(splits, list) or not splits:
        raise BenchError("no splits", source=source, field="splits")
    for index, entry in enumerate(splits):
        check_split_entry(entry, index, source=source)
    ids = [entry["id"] for entry in splits]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise BenchError(f"split ids must be unique; repeated: {repeated[0]!r}", source=source,
                         field="splits")
    defaults = sum(entry["is_default"] for entry in splits)
    if defaults > 1:  # none is allowed here (an import without a default); running needs one
        raise BenchError(f"expected exactly one default split, found {defaults}",
                         source=source, field="splits")
    if document.get("checksum") != splits_checksum(splits):
        raise BenchError("checksum does not match the splits (the file was edited or is "
                         "damaged)", source=source, field="checksum")
    if class_names is not None:
        check_class_names(splits, class_names, source=source, dataset=dataset)
    return document


SPLIT_KEYS = ("id", "train_classes", "test_classes", "fid", "is_default")


def check_split_entry(entry: Any, index: int, *, source: str) -> None:
    """BenchError (field ``splits[index].key``) unless ``entry`` is a well-formed split."""
    where = f"splits[{index}]"
    if not isinstance(entry, dict):
        raise BenchError(f"a split must be an object with {', '.join(SPLIT_KEYS)}, got "
                         f"{type(entry).__name__} {entry!r}", source=source, field=where)
    missing = set(SPLIT_KEYS) - set(entry)
    if missing:
        raise BenchError(f"missing {sorted(missing)}", source=source, field=where)
    split_id = entry["id"]
    if isinstance(split_id, bool) or not isinstance(split_id, int):
        raise BenchError(f"expected an integer id, got {split_id!r}", source=source,
                         field=f"{where}.id")
    if not isinstance(entry["is_default"], bool):
        raise BenchError(f"expected true or false, got {entry['is_default']!r}",
                         source=source, field=f"{where}.is_default")
    fid = entry["fid"]
    if fid is not None and (isinstance(fid, bool) or not isinstance(fid, (int, float))
                            or not math.isfinite(fid)):
        raise BenchError(f"expected a finite number or null, got {fid!r}", source=source,
                         field=f"{where}.fid")
    for side in ("train_classes", "test_classes"):
        names = entry[side]
        if not isinstance(names, list):
            raise BenchError(f"expected a list of class names, got {names!r}", source=source,
                             field=f"{where}.{side}")
        if not names:
            raise BenchError("no classes", source=source, field=f"{where}.{side}")
        for name in names:
            if not isinstance(name, str):
                raise BenchError(f"class names must be strings, got {name!r}", source=source,
                                 field=f"{where}.{side}")
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise BenchError(f"class {twice!r} is listed twice", source=source,
                             field=f"{where}.{side}")
    shared = set(entry["train_classes"]) & set(entry["test_classes"])
    if shared:
        raise BenchError(f"train and test share {len(shared)} classes (e.g. "
                         f"{sorted(shared)[0]!r})", source=source, field=where)


def check_class_names(splits: list[dict[str, Any]], class_names: Sequence[str], *, source: str,
                      dataset: str | None = None) -> None:
    """BenchError naming the first split side with a class ``class_names`` lacks."""
    known = set(class_names)
    for index, entry in enumerate(splits):
        for side in ("train_classes", "test_classes"):
            missing = [name for name in entry[side] if name not in known]
            if missing:
                where = f"dataset {dataset!r}" if dataset else "the dataset"
                raise BenchError(f"{len(missing)} class names are not in {where} (first: "
                                 f"{missing[0]!r})", source=source,
                                 field=f"splits[{index}].{side}")


# --- from a dataset -----------------------------------------------------------------------------


def make_dataset_splits(dataset: str, extractor: str, *,
                        dataset_options: Mapping[str, Any] | None = None,
                        params: SequenceParams | None = None, device=None,
                        progress: bool = True, log: Callable[[str], None] | None = None,
                        ) -> dict[str, Any]:
    """Load ``dataset``, extract frozen features, build the sequence; returns the split file."""
    from bench.data import load_dataset
    from bench.extractors import extractor_features
    from bench.features import dataset_fingerprint
    from bench.fid import class_centroids

    params = params or SequenceParams()
    ds = load_dataset(dataset, **dict(dataset_options or {}))
    features, weights = extractor_features(ds, extractor, device=device, progress=progress)
    classes, centroids = class_centroids(features, ds.labels)
    from bench.data.records import default_class_split

    train, test = default_class_split(ds)
    position = {int(c): i for i, c in enumerate(classes)}
    sequence = generate_sequence(centroids, [position[int(c)] for c in train],
                                 [position[int(c)] for c in test], params, log=log)
    names = [ds.class_names[int(c)] for c in classes]
    return split_document(
        split_entries(sequence, names),
        dataset=dataset,
        dataset_options=dict(ds.meta.get("options", dataset_options or {})),
        dataset_fingerprint=dataset_fingerprint(ds),
        extractor=extractor,
        extractor_weights=weights,
        feature_size=int(centroids.shape[1]),
        num_classes=len(classes),
        parameters=params.to_dict(),
    )
