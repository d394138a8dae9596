"""``sop``: Stanford Online Products in its official layout.

Files (in the root or its ``Stanford_Online_Products/`` folder): ``Ebay_train.txt`` and
``Ebay_test.txt``, each with a header line and then ``image_id class_id super_class_id path``
lines (path like ``bicycle_final/111085122871_0.JPG``), and the 12 ``<super class>_final/``
folders. The split is the two list files (11,318 train classes, 11,316 test classes: not the
class-half rule, so use the roles). Class names are ``<super class>/<class id>``, indexed by class
id; domain = the super-class (bicycle, cabinet, ...), one camera (``sop``).
Documented: 59,551 train images / 11,318 classes, 60,502 test images / 11,316 classes.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import read_lines, safe_entry
from bench.errors import BenchError

LISTS = (("Ebay_train.txt", "train"), ("Ebay_test.txt", "test"))
HEADER = ("image_id", "class_id", "super_class_id", "path")


def _super_name(relative: str) -> str:
    top = relative.replace("\\", "/").split("/", 1)[0]
    return top[: -len("_final")] if top.endswith("_final") else top


def index_sop(folder: Path) -> Table:
    rows: list[tuple[int, str, str, str]] = []  # class id, super name, path, role
    supers: dict[int, str] = {}
    class_super: dict[int, int] = {}
    for list_name, role in LISTS:
        path = folder / list_name
        for number, line in read_lines(path):
            fields = line.split()
            if tuple(f.lower() for f in fields) == HEADER:
                continue
            if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
                raise BenchError(f"expected 'image_id class_id super_class_id path', got "
                                 f"{line[:80]!r}", source=str(path), field=f"line {number}")
            class_id, super_id, relative = int(fields[1]), int(fields[2]), fields[3]
            safe_entry(folder, relative, source=path, line=number)
            super_name = _super_name(relative)
            if supers.setdefault(super_id, super_name) != super_name:
                raise BenchError(f"super-class {super_id} is {supers[super_id]!r} elsewhere but "
                                 f"{super_name!r} here", source=str(path), field=f"line {number}")
            if class_super.setdefault(class_id, super_id) != super_id:
                raise BenchError(f"class {class_id} changes super-class", source=str(path),
                                 field=f"line {number}")
            rows.append((class_id, super_name, relative, role))
    class_ids = sorted(class_super)
    names = {c: f"{supers[class_super[c]]}/{c}" for c in class_ids}
    table = Table(class_order=[names[c] for c in class_ids],
                  domain_order=[supers[s] for s in sorted(supers)], camera_order=["sop"])
    for class_id, super_name, relative, role in rows:
        table.add(relative, names[class_id], super_name, "sop", role)
    table.meta["split"] = "Ebay_train.txt train, Ebay_test.txt test (roles)"
    return table


SOP = register_real(RealDataset(
    name="sop",
    description="Stanford Online Products: 22,634 products in 12 super-classes (domains), "
    "120,053 images; split by Ebay_train.txt / Ebay_test.txt",
    markers=("Ebay_train.txt", "Ebay_test.txt"),
    subdirs=("Stanford_Online_Products",),
    hint="extract Stanford_Online_Products.zip there (Ebay_*.txt and the *_final/ folders)",
    index=index_sop,
    documented={"train_images": 59_551, "train_classes": 11_318, "test_images": 60_502,
                "test_classes": 11_316, "domains": 12},
    source_files=lambda folder: [folder / name for name, _role in LISTS],
))
