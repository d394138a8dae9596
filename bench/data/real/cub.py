"""``cub200``: Caltech-UCSD Birds-200-2011 in its official layout.

Files (in the root or its ``CUB_200_2011/`` folder): ``images.txt`` (``<image id> <path>``),
``image_class_labels.txt`` (``<image id> <class id>``), ``classes.txt`` (``<class id> <name>``)
and ``images/<class name>/<file>.jpg``. The DML split (Reality Check, ooDML, Revisiting DML):
classes 1-100 train, 101-200 test; the image-level ``train_test_split.txt`` is for
classification and is not used. Classes are indexed in class-id order, so the first half of the
classes is the train half. One domain and one camera (``cub``).
Documented: 11,788 images, 5,864 train / 5,924 test, 200 classes.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import read_lines, safe_entry
from bench.errors import BenchError

TRAIN_CLASSES = 100  # class ids 1..100 train, 101..200 test


def _pairs(path: Path) -> dict[int, tuple[str, int]]:
    """``<int id> <rest>`` lines as {id: (rest, line number)}; BenchError on malformed lines."""
    out: dict[int, tuple[str, int]] = {}
    for number, line in read_lines(path):
        head, _, rest = line.partition(" ")
        rest = rest.strip()
        if not head.isdigit() or not rest:
            raise BenchError(f"expected '<id> <value>', got {line[:80]!r}", source=str(path),
                             field=f"line {number}")
        key = int(head)
        if key in out:
            raise BenchError(f"id {key} appears twice (first on line {out[key][1]})",
                             source=str(path), field=f"line {number}")
        out[key] = (rest, number)
    return out


def index_cub(folder: Path) -> Table:
    images_txt = folder / "images.txt"
    labels_txt = folder / "image_class_labels.txt"
    classes_txt = folder / "classes.txt"
    classes = _pairs(classes_txt)
    labels = _pairs(labels_txt)
    images = _pairs(images_txt)
    class_ids = sorted(classes)
    table = Table(class_order=[classes[c][0] for c in class_ids], domain_order=["cub"],
                  camera_order=["cub"])
    image_dir = folder / "images"
    for image_id in sorted(images):
        relative, number = images[image_id]
        safe_entry(image_dir, relative, source=images_txt, line=number)
        if image_id not in labels:
            raise BenchError(f"image id {image_id} has no class in {labels_txt.name}",
                             source=str(images_txt), field=f"line {number}")
        label_text, label_line = labels[image_id]
        if not label_text.isdigit() or int(label_text) not in classes:
            raise BenchError(f"class id {label_text!r} is not in {classes_txt.name}",
                             source=str(labels_txt), field=f"line {label_line}")
        class_id = int(label_text)
        role = "train" if class_id <= TRAIN_CLASSES else "test"
        table.add(f"images/{relative}", classes[class_id][0], "cub", "cub", role)
    table.meta["split"] = "classes 1-100 train, 101-200 test (roles)"
    return table


CUB = register_real(RealDataset(
    name="cub200",
    description="CUB-200-2011 birds: 200 classes, 11,788 images; classes 1-100 train, "
    "101-200 test",
    markers=("images.txt", "image_class_labels.txt", "classes.txt", "images"),
    subdirs=("CUB_200_2011",),
    hint="extract CUB_200_2011.tgz (data.caltech.edu record 65de6-vp158) there",
    index=index_cub,
    documented={"images": 11_788, "classes": 200, "train_images": 5_864, "test_images": 5_924,
                "train_classes": 100, "test_classes": 100},
    source_files=lambda folder: [folder / "images.txt", folder / "image_class_labels.txt",
                                 folder / "classes.txt"],
))
