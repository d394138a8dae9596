"""Person re-ID sets in their official layouts: ``market1501``, ``dukemtmc``, ``msmt17``.

Roles are the official folders/lists: train, query, gallery. Class = person identity, camera =
the camera in the file name, domain = the dataset (so cross-dataset adaptation is a domain shift).

* Market-1501 (root or ``Market-1501-v15.09.15/``): ``bounding_box_train/``, ``query/``,
  ``bounding_box_test/`` with files ``PPPP_cCsS_FFFFFF_NN.jpg``. Identity ``-1`` is *junk* and
  ``0000`` a *distractor*: both only count in the gallery. Junk images stay in the gallery as
  class ``-1`` (flagged by ``meta['junk_label']``; the evaluator drops them), distractors stay as
  class ``0000`` (``meta['distractor_label']``, negatives for every query). Either one found in
  the train or query folder is dropped (``meta['dropped']``): training never sees them.
* DukeMTMC-reID (root or ``DukeMTMC-reID/``): the same three folders, files
  ``PPPP_cC_fFFFFFFF.jpg``.
* MSMT17 (root or ``MSMT17_V1/``, ``MSMT17_V2/``, ``MSMT17/``): ``list_train.txt``,
  ``list_val.txt`` (paths relative to ``train/``) and ``list_query.txt``, ``list_gallery.txt``
  (relative to ``test/``), lines ``<path> <label>``; V2's ``mask_train_v2/`` and
  ``mask_test_v2/`` are accepted too. Train = list_train + list_val (the 32,621 images papers
  use). Labels restart at 0 in each half, so classes are named ``train/NNNN`` and ``test/NNNN``;
  the camera is the third ``_`` field of the file name (1..15).

Class names end in the numeric identity; :func:`identities` turns labels back into the integer
ids the re-ID evaluator expects (junk ``-1``, distractor ``0``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bench.data.real.common import RealDataset, Table, natural_key, register_real
from bench.data.real.safety import inside, read_lines, safe_entry
from bench.data.records import ImageDataset
from bench.errors import BenchError

FOLDERS = (("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery"))
JUNK = -1
DISTRACTOR = 0
MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
DUKE_NAME = re.compile(r"^(\d+)_c(\d+)_f(\d+)\.jpg$")


def identities(ds: ImageDataset) -> np.ndarray:
    """Integer identity per sample, parsed from the class names (``-1`` junk, ``0`` distractor)."""
    ids = np.array([int(name.rsplit("/", 1)[-1]) for name in ds.class_names], dtype=np.int64)
    return ids[ds.labels]


def _identity_name(pid: int) -> str:
    return str(pid) if pid < 0 else f"{pid:04d}"


def _scan(folder: Path, subfolder: str, pattern: re.Pattern[str],
          form: str) -> list[tuple[str, int, int]]:
    """(file name, identity, camera) for every .jpg in ``folder/subfolder``, sorted by name."""
    directory = folder / subfolder
    out = []
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.name.lower().endswith(".jpg"))
    for name in names:
        match = pattern.match(name)
        if match is None:
            raise BenchError(f"file name does not match {form}", source=str(directory / name))
        if not inside(directory / name, folder):
            raise BenchError("resolves outside the dataset root (symlink?)",
                             source=str(directory / name))
        out.append((name, int(match.group(1)), int(match.group(2))))
    return out


def _index_folders(folder: Path, dataset: str, pattern: re.Pattern[str], form: str,
                   n_cameras: int) -> Table:
    table = Table(domain_order=[dataset], camera_order=[f"c{i}" for i in range(1, n_cameras + 1)])
    dropped: dict[str, int] = {}
    present: set[int] = set()
    for subfolder, role in FOLDERS:
        for name, pid, camera in _scan(folder, subfolder, pattern, form):
            if not 1 <= camera <= n_cameras:
                raise BenchError(f"camera c{camera} is outside c1..c{n_cameras}",
                                 source=str(folder / subfolder / name))
            if role != "gallery" and pid in (JUNK, DISTRACTOR):
                kind = "junk" if pid == JUNK else "distractor"
                key = f"{role} {kind}"
                dropped[key] = dropped.get(key, 0) + 1
                continue
            present.add(pid)
            table.add(f"{subfolder}/{name}", _identity_name(pid), dataset, f"c{camera}", role)
    table.class_order = [_identity_name(p) for p in sorted(present)]
    labels = {name: i for i, name in enumerate(table.class_order)}
    table.meta.update({
        "split": "bounding_box_train train, query query, bounding_box_test gallery (roles)",
        "junk_label": labels.get(_identity_name(JUNK)),
        "distractor_label": labels.get(_identity_name(DISTRACTOR)),
        "dropped": dropped,
    })
    return table


def index_market(folder: Path) -> Table:
    return _index_folders(folder, "market1501", MARKET_NAME, "PPPP_cCsS_FFFFFF_NN.jpg", 6)


def index_duke(folder: Path) -> Table:
    return _index_folders(folder, "dukemtmc", DUKE_NAME, "PPPP_cC_fFFFFFFF.jpg", 8)


MSMT_LISTS = (("list_train.txt", "train"), ("list_val.txt", "train"),
              ("list_query.txt", "query"), ("list_gallery.txt", "gallery"))
MSMT_CAMERAS = 15


def _msmt_dirs(folder: Path) -> dict[str, str]:
    if (folder / "train").is_dir() or not (folder / "mask_train_v2").is_dir():
        return {"train": "train", "test": "test"}
    return {"train": "mask_train_v2", "test": "mask_test_v2"}


def index_msmt(folder: Path) -> Table:
    dirs = _msmt_dirs(folder)
    table = Table(domain_order=["msmt17"],
                  camera_order=[f"c{i:02d}" for i in range(1, MSMT_CAMERAS + 1)])
    for list_name, role in MSMT_LISTS:
        path = folder / list_name
        half = "train" if role == "train" else "test"
        base = folder / dirs[half]
        for number, line in read_lines(path):
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise BenchError(f"expected '<path> <label>', got {line[:80]!r}",
                                 source=str(path), field=f"line {number}")
            relative, label = fields
            safe_entry(base, relative, source=path, line=number)
            parts = relative.replace("\\", "/").rsplit("/", 1)[-1].split("_")
            if len(parts) < 3 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= MSMT_CAMERAS:
                raise BenchError(f"cannot read a camera 1..{MSMT_CAMERAS} from the third '_' "
                                 f"field of {relative!r}", source=str(path), field=f"line {number}")
            table.add(f"{dirs[half]}/{relative}", f"{half}/{int(label):04d}", "msmt17",
                      f"c{int(parts[2]):02d}", role)
    table.class_order = sorted(set(table.classes), key=lambda n: (n.startswith("test"),
                                                                   natural_key(n)))
    table.meta.update({"split": "list_train + list_val train, list_query query, list_gallery "
                       "gallery (roles)", "junk_label": None, "distractor_label": None})
    return table


MARKET = register_real(RealDataset(
    name="market1501",
    description="Market-1501 person re-ID: 1,501 ids, 6 cameras; train / query / gallery "
    "(junk -1, distractors 0000)",
    markers=tuple(f for f, _r in FOLDERS),
    subdirs=("Market-1501-v15.09.15", "Market-1501"),
    hint="extract Market-1501-v15.09.15.zip there (bounding_box_train/, query/, "
    "bounding_box_test/)",
    index=index_market,
    default_image_size="256x128",
    documented={"train_images": 12_936, "train_classes": 751, "query_images": 3_368,
                "query_classes": 750, "gallery_images": 19_732, "cameras": 6},
))

DUKE = register_real(RealDataset(
    name="dukemtmc",
    description="DukeMTMC-reID person re-ID: 1,812 ids, 8 cameras; train / query / gallery",
    markers=tuple(f for f, _r in FOLDERS),
    subdirs=("DukeMTMC-reID",),
    hint="extract DukeMTMC-reID.zip there (bounding_box_train/, query/, bounding_box_test/)",
    index=index_duke,
    default_image_size="256x128",
    documented={"train_images": 16_522, "train_classes": 702, "query_images": 2_228,
                "query_classes": 702, "gallery_images": 17_661, "cameras": 8},
))

MSMT = register_real(RealDataset(
    name="msmt17",
    description="MSMT17 person re-ID: 4,101 ids, 15 cameras; train (+val) / query / gallery",
    markers=tuple(name for name, _r in MSMT_LISTS) + ("train|mask_train_v2", "test|mask_test_v2"),
    subdirs=("MSMT17_V1", "MSMT17_V2", "MSMT17"),
    hint="extract MSMT17_V1 (list_*.txt, train/, test/) there; it is released on request "
    "by its authors",
    index=index_msmt,
    default_image_size="256x128",
    documented={"train_images": 32_621, "train_classes": 1_041, "query_images": 11_659,
                "query_classes": 3_060, "gallery_images": 82_161, "cameras": 15},
    source_files=lambda folder: [folder / name for name, _r in MSMT_LISTS],
))
