"""Settings (``dml``, ``uda``, ``dg``): which rows of a dataset pool every method may see.

Resolved once per run on the loaded pool, identically for every method; a method then receives
only the data kinds it declares (``bench.methods.base.DATA_KINDS``).

Identities: where the datasets define roles (re-ID sets, SOP, In-Shop) they decide train / test
identities and query / gallery rows. Where they do not (the embedded sets), the first half of the
sorted classes trains and the second half tests; in ``uda`` the training half is split again so
that labeled source identities and unlabeled target identities are disjoint, as between two
re-ID datasets. Test rows without a query/gallery role are split by a fixed rule: per identity
and domain the row with the lowest camera index is the query, the others are the gallery, and
same-identity same-camera gallery rows are ignored (Market-1501 rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.data.camera_style import (
    CameraViews,
    ColourStatistics,
    ImagingConditions,
    is_image_batch,
)
from bench.data.records import ImageDataset, default_class_split
from bench.errors import BenchError
from bench.methods.base import DATA_LABELS, TrainData
from bench.protocol import SettingSpec
from bench.setting_kinds import SETTINGS
from bench.splits import ClassSplit


@dataclass(frozen=True)
class Layout:
    """A setting resolved on a pool: row masks and identity sets shared by every method."""

    kind: str
    source_rows: np.ndarray  # bool (N,): rows of the labeled domains
    target_rows: np.ndarray  # bool (N,): rows of the target domains (empty in dml)
    train_classes: np.ndarray  # labeled identities (split into folds)
    target_train_classes: np.ndarray  # unlabeled target training identities (uda)
    test_classes: np.ndarray
    query_rows: np.ndarray | None  # bool (N,); None = retrieval with query = reference
    gallery_rows: np.ndarray | None
    kinds: frozenset[str]
    #: how camera views are made (a key of VIEW_SOURCES) when ``camera_views`` is offered
    views: str | None = None

    @property
    def reid(self) -> bool:
        return self.query_rows is not None

    def describe_kinds(self, consumed: frozenset[str]) -> str:
        names = [DATA_LABELS[k] for k in DATA_LABELS if k in consumed]
        if "camera_views" in consumed and self.views is not None:
            names[-1] = f"camera views ({VIEW_SOURCES[self.views]})"
        return " + ".join(names)


#: the only ways a camera view may be made: from ONE row's own image and camera ids (never from
#: other rows of the same identity, which would give a method the target labels)
VIEW_SOURCES = {
    "imaging_conditions": "the row's own picture re-imaged under another target camera's "
                          "imaging condition, from camera ids only",
    "colour_statistics": "the row's own image with its colours moved to another target "
                         "camera's mean/std, measured on unlabeled target images",
}


def view_source(ds: ImageDataset, target_rows: np.ndarray, *, source: str) -> str | None:
    """How ``ds`` makes camera views of its target rows; None when there are fewer than two
    target cameras (nothing to view). Any declaration but a label-free one is refused."""
    declared = ds.meta.get("camera_views", "colour_statistics")
    if declared is False:
        return None
    if declared not in VIEW_SOURCES:
        raise BenchError(
            f"dataset {ds.name} declares camera_views {declared!r}: camera views must be made "
            f"from one row's own image and camera ids ({', '.join(VIEW_SOURCES)}); views taken "
            "from other rows of the same identity would hand the method the target labels",
            source=source, field="dataset")
    if declared == "imaging_conditions" and len(ds.meta.get("camera_conditions") or []) \
            <= int(ds.cameras.max(initial=0)):
        raise BenchError(f"dataset {ds.name} declares imaging-condition camera views without a "
                         "condition for every camera", source=source, field="dataset")
    if len(np.unique(ds.cameras[target_rows])) < 2:
        return None
    return declared


def _domain_matches(ds: ImageDataset, selector: str) -> np.ndarray:
    """Indices of the domains ``selector`` names: a dataset, a domain, or dataset/domain."""
    merged = ds.meta.get("merged") or [ds.name]
    hits = []
    for i, name in enumerate(ds.domain_names):
        dataset, _, domain = name.partition("/") if "/" in name else (
            (name if name in merged else ds.name), "", name)
        if len(merged) == 1:
            dataset = ds.name
        candidates = {name, domain, dataset, f"{dataset}/{domain}"}
        if selector in candidates:
            hits.append(i)
    return np.array(hits, dtype=np.int64)


def _select(ds: ImageDataset, selectors: list[str], where: str, source: str) -> np.ndarray:
    rows = np.zeros(len(ds.labels), dtype=bool)
    for i, selector in enumerate(selectors):
        domains = _domain_matches(ds, selector)
        if len(domains) == 0:
            raise BenchError(f"{selector!r} names no dataset or domain of {ds.name} (domains: "
                             f"{', '.join(ds.domain_names)})", source=source,
                             field=f"setting.{where}.{i}")
        rows |= np.isin(ds.domains, domains)
    return rows


def query_gallery_rule(ds: ImageDataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (identity, domain) among ``rows``: the lowest-camera row is the query, the rest
    gallery."""
    index = np.flatnonzero(rows)
    order = np.lexsort((index, ds.cameras[index], ds.domains[index], ds.labels[index]))
    index = index[order]
    keys = np.stack([ds.labels[index], ds.domains[index]], axis=1)
    first = np.ones(len(index), dtype=bool)
    first[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    query = np.zeros(len(ds.labels), dtype=bool)
    query[index[first]] = True
    return query, rows & ~query


def resolve_layout(spec: SettingSpec, ds: ImageDataset, *, source: str) -> Layout:
    """The rows and identities of ``spec`` on ``ds``; BenchError naming the setting field."""
    n = len(ds.labels)
    kind = SETTINGS[spec.kind]
    if not kind.domains:
        train, test = default_class_split(ds)
        return Layout(spec.kind, np.ones(n, bool), np.zeros(n, bool), train, np.array([], np.int64),
                      test, None, None, frozenset({"labeled"} | (
                          {"domain_labels"} if len(np.unique(ds.domains)) > 1 else set())))
    source_rows = _select(ds, spec.source, "source", source)
    target_rows = _select(ds, spec.target, "target", source)
    if np.any(source_rows & target_rows):
        raise BenchError("source and target select the same domain", source=source,
                         field="setting.target")
    roles = np.asarray(ds.roles) if ds.roles is not None else None
    if roles is not None:
        train_role = roles == "train"
        train = np.unique(ds.labels[source_rows & train_role])
        target_train = np.unique(ds.labels[target_rows & train_role])
        test = np.unique(ds.labels[target_rows & ~train_role])
        if not kind.target_training:
            target_train = np.array([], np.int64)
    else:
        train_all, test = default_class_split(ds)
        if kind.target_training:
            half = len(train_all) // 2
            train, target_train = train_all[:half], train_all[half:]
        else:
            train, target_train = train_all, np.array([], np.int64)
    test_mask = target_rows & np.isin(ds.labels, test)
    if roles is not None and np.any(np.isin(roles[test_mask], ("query", "gallery"))):
        query, gallery = test_mask & (roles == "query"), test_mask & (roles == "gallery")
    else:
        query, gallery = query_gallery_rule(ds, test_mask)
    for what, count in (("labeled source identities", len(train)),
                        ("target test identities", len(test)),
                        ("target training identities", len(target_train) if kind.target_training
                         else 1)):
        if count == 0:
            raise BenchError(f"the setting leaves no {what} in {ds.name}", source=source,
                             field="setting")
    kinds = {"labeled"}
    if len(np.unique(ds.domains[source_rows])) > 1:
        kinds.add("domain_labels")
    views = None
    if kind.target_training:
        kinds.add("unlabeled_target")
        views = view_source(ds, target_rows, source=source)
        if views is not None:
            kinds.add("camera_views")
    return Layout(spec.kind, source_rows, target_rows, train, target_train, test, query, gallery,
                  frozenset(kinds), views)


def static_kinds(kind: str) -> frozenset[str]:
    """Kinds a setting can offer before data is loaded (for validation before any work)."""
    return SETTINGS[kind].offers


def build_camera_views(views: str, images, cameras: np.ndarray,
                       conditions: list[dict] | None) -> CameraViews:
    """The view maker of the target training images. Deliberately label-free: it is given the
    unlabeled images, their camera ids and the dataset's camera conditions, nothing else."""
    if views == "imaging_conditions":
        return ImagingConditions.from_conditions(conditions or [], cameras)
    return ColourStatistics.fit(images, cameras)


@dataclass
class FoldRows:
    """Row indices of one fold: the method's training data and the validation rows."""

    data: TrainData
    source_rows: np.ndarray
    target_rows: np.ndarray
    validation: np.ndarray  # bool (N,): validation rows (retrieval), or query rows (re-ID)
    validation_gallery: np.ndarray | None  # bool (N,) gallery rows (re-ID)


def fold_rows(layout: Layout, ds: ImageDataset, inputs, fold: ClassSplit,
              consumed: frozenset[str]) -> FoldRows:
    """What a method consuming ``consumed`` trains and validates on in ``fold``.

    ``inputs`` is indexed with boolean masks (lazy image sources select without decoding).
    """
    source_mask = layout.source_rows & np.isin(ds.labels, fold.train)
    target_mask = layout.target_rows & np.isin(ds.labels, layout.target_train_classes)
    source_rows, target_rows = np.flatnonzero(source_mask), np.flatnonzero(target_mask)
    data = TrainData(kinds=consumed, num_classes=len(fold.train) if "labeled" in consumed else 0)
    if "labeled" in consumed:
        data.source = inputs[source_mask]
        data.labels = np.searchsorted(fold.train, ds.labels[source_rows])
        _, domains = np.unique(ds.domains[source_rows], return_inverse=True)
        data.num_domains = int(domains.max()) + 1 if len(domains) else 0
        if "domain_labels" in consumed:
            data.domains = domains.astype(np.int64)
    if "unlabeled_target" in consumed:
        data.target = inputs[target_mask]
        data.target_cameras = ds.cameras[target_rows]
        if "camera_views" in consumed:
            if is_image_batch(data.target) and layout.views is not None:
                data.camera_views = build_camera_views(
                    layout.views, data.target, data.target_cameras,
                    ds.meta.get("camera_conditions"))
            else:  # cached trunk features: no image to re-image, so no views (say so)
                data.kinds = frozenset(consumed - {"camera_views"})
    validation = layout.source_rows & np.isin(ds.labels, fold.validation)
    if layout.reid:
        query, gallery = query_gallery_rule(ds, validation)
        return FoldRows(data, source_rows, target_rows, query, gallery)
    return FoldRows(data, source_rows, target_rows, validation, None)


def evaluation_rows(layout: Layout, ds: ImageDataset, test_classes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Boolean (query, gallery) masks of the test phase; gallery None = query is its own
    reference."""
    if layout.reid:
        return layout.query_rows, layout.gallery_rows
    return np.isin(ds.labels, test_classes), None
