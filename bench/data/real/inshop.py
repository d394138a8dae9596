"""``inshop``: DeepFashion In-Shop Clothes Retrieval in its official layout.

Files (in the root or its ``In-shop Clothes Retrieval Benchmark/`` folder):
``list_eval_partition.txt`` (at the top or in ``Eval/``) whose first line is the entry count and
second the header ``image_name item_id evaluation_status``, then one
``img/<GENDER>/<category>/<item>/<NN>_<k>_<view>.jpg <item_id> train|query|gallery`` line per image;
and the ``img/`` folder (unzipped ``Img/img.zip``; at the top or in ``Img/``). Roles are the
evaluation status: train items are disjoint from the query/gallery items, which query->gallery
retrieval shares. Class = item id; domain = ``<GENDER>/<category>`` (e.g. ``WOMEN/Dresses``);
camera = the view in the file name (front, side, back, full, additional, flat).
Documented: 25,882 train, 14,218 query, 12,612 gallery images; 7,982 items.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import read_lines, safe_entry
from bench.errors import BenchError

LIST = "list_eval_partition.txt"
STATUSES = ("train", "query", "gallery")
VIEW = re.compile(r"^\d+_\d+_([A-Za-z]+)\.\w+$")


def _list_file(folder: Path) -> Path:
    for candidate in (folder / LIST, folder / "Eval" / LIST):
        if candidate.is_file():
            return candidate
    return folder / LIST


def _image_base(folder: Path) -> Path:
    """The folder the list's ``img/...`` paths are relative to (root, or ``Img/``)."""
    if not (folder / "img").is_dir() and (folder / "Img" / "img").is_dir():
        return folder / "Img"
    return folder


def index_inshop(folder: Path) -> Table:
    path = _list_file(folder)
    base = _image_base(folder)
    prefix = "" if base == folder else f"{base.relative_to(folder).as_posix()}/"
    table = Table(camera_order=None)
    declared: tuple[int, int] | None = None
    for number, line in read_lines(path):
        fields = line.split()
        if declared is None and len(fields) == 1 and fields[0].isdigit():
            declared = (int(fields[0]), number)
            continue
        if [f.lower() for f in fields] == ["image_name", "item_id", "evaluation_status"]:
            continue
        if len(fields) != 3 or fields[2] not in STATUSES:
            raise BenchError(f"expected 'image_name item_id train|query|gallery', got "
                             f"{line[:80]!r}", source=str(path), field=f"line {number}")
        relative, item, status = fields
        safe_entry(base, relative, source=path, line=number)
        parts = relative.replace("\\", "/").split("/")
        domain = "/".join(parts[1:3]) if len(parts) >= 5 else "unknown"
        match = VIEW.match(parts[-1])
        view = match.group(1).lower() if match else "unknown"
        table.add(prefix + relative, item, domain, view, status)
    if declared is not None and declared[0] != len(table.paths):
        raise BenchError(f"declares {declared[0]:,} entries but lists {len(table.paths):,}",
                         source=str(path), field=f"line {declared[1]}")
    table.meta["split"] = "evaluation_status train/query/gallery (roles)"
    return table


INSHOP = register_real(RealDataset(
    name="inshop",
    description="DeepFashion In-Shop retrieval: 7,982 items, 52,712 images; train / query / "
    "gallery from list_eval_partition.txt",
    markers=(f"{LIST}|Eval/{LIST}", "img|Img/img"),
    subdirs=("In-shop Clothes Retrieval Benchmark", "In-shop_Clothes_Retrieval_Benchmark",
             "InShop"),
    hint="put Eval/list_eval_partition.txt and the unzipped img/ folder (Img/img.zip) there",
    index=index_inshop,
    documented={"train_images": 25_882, "query_images": 14_218, "gallery_images": 12_612,
                "classes": 7_982},
    source_files=lambda folder: [_list_file(folder)],
))
