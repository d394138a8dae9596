"""``cars196``: Stanford Cars in the devkit layout used for metric learning.

Files (in the root or its ``stanford_cars/`` / ``cars196/`` folder): ``cars_annos.mat`` (a plain
MATLAB file, read with ``scipy.io.loadmat``; struct array ``annotations`` with fields
``relative_im_path`` (``car_ims/000001.jpg``), ``class`` (1..196) and ``test``, and the cell array
``class_names``) and the ``car_ims/`` folder. The DML split: classes 1-98 train, 99-196 test (the
``test`` flag is the classification split and is not used). One domain and camera (``cars``).
Documented: 16,185 images, 8,054 train / 8,131 test, 196 classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import safe_entry
from bench.errors import BenchError

TRAIN_CLASSES = 98  # class ids 1..98 train, 99..196 test
ANNOTATIONS = "cars_annos.mat"


def _text(value: Any) -> str:
    """A MATLAB char array as loaded by scipy (str, or a 0-d/1-element array of str)."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got an array of {value.size}")
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected one number, got {value!r}")
    number = array.reshape(-1)[0]
    if float(number) != int(number):
        raise ValueError(f"expected an integer, got {number!r}")
    return int(number)


def load_annotations(path: Path) -> tuple[list[tuple[str, int]], list[str] | None]:
    """[(relative_im_path, class id)] and the class names (or None) from ``cars_annos.mat``."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except FileNotFoundError:
        raise BenchError("file not found", source=str(path)) from None
    except Exception as error:  # scipy raises many types on damaged files (IndexError, ...)
        reason = str(error) or type(error).__name__
        raise BenchError(f"not a readable MATLAB v5 file ({reason})", source=str(path)) from None
    annotations = mat.get("annotations")
    if not isinstance(annotations, np.ndarray) or annotations.dtype.names is None:
        raise BenchError("has no 'annotations' struct array", source=str(path))
    missing = [f for f in ("relative_im_path", "class") if f not in annotations.dtype.names]
    if missing:
        raise BenchError(f"'annotations' lacks the field(s) {', '.join(missing)}",
                         source=str(path))
    rows = []
    for number, record in enumerate(np.atleast_1d(annotations).reshape(-1), start=1):
        try:
            rows.append((_text(record["relative_im_path"]), _int(record["class"])))
        except ValueError as error:
            raise BenchError(str(error), source=str(path), field=f"annotation {number}") from None
    names = None
    if "class_names" in mat:
        try:
            names = [_text(v) for v in np.atleast_1d(mat["class_names"]).reshape(-1)]
        except ValueError:
            names = None
    return rows, names


def index_cars(folder: Path) -> Table:
    path = folder / ANNOTATIONS
    rows, names = load_annotations(path)
    present = sorted({class_id for _p, class_id in rows})

    def class_name(class_id: int) -> str:
        if names is not None and 1 <= class_id <= len(names):
            return f"{class_id:03d} {names[class_id - 1]}"
        return f"{class_id:03d}"

    table = Table(class_order=[class_name(c) for c in present], domain_order=["cars"],
                  camera_order=["cars"])
    for number, (relative, class_id) in enumerate(rows, start=1):
        if class_id < 1:
            raise BenchError(f"class {class_id} is not a positive id", source=str(path),
                             field=f"annotation {number}")
        safe_entry(folder, relative, source=path, line=f"annotation {number}")
        role = "train" if class_id <= TRAIN_CLASSES else "test"
        table.add(relative, class_name(class_id), "cars", "cars", role)
    table.meta["split"] = "classes 1-98 train, 99-196 test (roles)"
    return table


CARS = register_real(RealDataset(
    name="cars196",
    description="Stanford Cars196: 196 classes, 16,185 images; classes 1-98 train, 99-196 test",
    markers=(ANNOTATIONS, "car_ims"),
    subdirs=("stanford_cars", "cars196", "Cars196"),
    hint="put cars_annos.mat and the extracted car_ims/ folder (car_ims.tgz) there",
    index=index_cars,
    documented={"images": 16_185, "classes": 196, "train_images": 8_054, "test_images": 8_131,
                "train_classes": 98, "test_classes": 98},
    source_files=lambda folder: [folder / ANNOTATIONS],
))
