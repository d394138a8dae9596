"""Tiny trees in the official layouts of the real datasets, written with Pillow (for tests).

Each ``make_*`` writes real small JPEG/PNG files under the official file names and list files
into ``root`` and returns ``root``. Image colours depend on the path, so decoding can be checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def colour(relative: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(relative.encode()).digest()
    return digest[0], digest[1], digest[2]


def write_image(root: Path, relative: str, size: tuple[int, int] = (24, 18)) -> Path:
    """A small image (width, height) at ``root/relative``: a flat colour with a darker centre."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.empty((size[1], size[0], 3), dtype=np.uint8)
    array[:] = colour(relative)
    array[size[1] // 3: 2 * size[1] // 3, size[0] // 3: 2 * size[0] // 3] //= 2
    image = Image.fromarray(array)
    if path.suffix.lower() == ".png":
        image.save(path, format="PNG")
    else:
        image.save(path, format="JPEG", quality=95)
    return path


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- DML sets ---------------------------------------------------------------------------------

CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross",
               101: "101.White_Pelican", 150: "150.Sage_Thrasher"}


def make_cub(root: Path, per_class: int = 2, subdir: str = "CUB_200_2011") -> Path:
    folder = root / subdir if subdir else root
    images, labels = [], []
    image_id = 0
    for class_id, name in CUB_CLASSES.items():
        for k in range(per_class):
            image_id += 1
            relative = f"{name}/{name.split('.')[1]}_{k:04d}_{image_id}.jpg"
            write_image(folder / "images", relative)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    _lines(folder / "images.txt", images)
    _lines(folder / "image_class_labels.txt", labels)
    _lines(folder / "classes.txt", [f"{c} {n}" for c, n in CUB_CLASSES.items()])
    return root


CARS_CLASSES = (1, 5, 98, 99, 196)


def make_cars(root: Path, per_class: int = 2) -> Path:
    from scipy.io import savemat

    records = []
    number = 0
    for class_id in CARS_CLASSES:
        for _ in range(per_class):
            number += 1
            relative = f"car_ims/{number:06d}.jpg"
            write_image(root, relative, size=(30, 20))
            records.append((relative, 1, 2, 20, 15, class_id, number % 2))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    annotations = np.empty((1, len(records)), dtype=dtype)
    for i, (path, x1, y1, x2, y2, class_id, test) in enumerate(records):
        annotations[0, i] = (path, np.array([[x1]], np.uint8), np.array([[y1]], np.uint8),
                             np.array([[x2]], np.uint8), np.array([[y2]], np.uint8),
                             np.array([[class_id]], np.uint8), np.array([[test]], np.uint8))
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = f"Make Model {i + 1}"
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return root


SOP_TRAIN = [(1, 1, "bicycle"), (2, 1, "bicycle"), (3, 2, "cabinet")]
SOP_TEST = [(4, 2, "cabinet"), (5, 12, "toaster")]


def make_sop(root: Path, per_class: int = 2) -> Path:
    folder = root / "Stanford_Online_Products"
    image_id = 0
    for list_name, entries in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, super_name in entries:
            for k in range(per_class):
                image_id += 1
                relative = f"{super_name}_final/{111085122871 + class_id}_{k}.JPG"
                write_image(folder, relative)
                lines.append(f"{image_id} {class_id} {super_id} {relative}")
        _lines(folder / list_name, lines)
    return root


INSHOP_ROWS = [  # (path, item, status)
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "train"),
    ("img/MEN/Denim/id_00000007/01_3_back.jpg", "id_00000007", "train"),
    ("img/WOMEN/Blouses_Shirts/id_00000010/03_1_front.jpg", "id_00000010", "query"),
    ("img/WOMEN/Blouses_Shirts/id_00000010/03_2_side.jpg", "id_00000010", "gallery"),
    ("img/WOMEN/Blouses_Shirts/id_00000010/03_4_full.jpg", "id_00000010", "gallery"),
    ("img/MEN/Shirts_Polos/id_00000012/04_1_front.jpg", "id_00000012", "query"),
    ("img/MEN/Shirts_Polos/id_00000012/04_7_additional.jpg", "id_00000012", "gallery"),
]


def make_inshop(root: Path) -> Path:
    for relative, _item, _status in INSHOP_ROWS:
        write_image(root / "Img", relative, size=(16, 22))
    lines = [str(len(INSHOP_ROWS)), "image_name item_id evaluation_status"]
    lines += [f"{p:<60s} {i} {s}" for p, i, s in INSHOP_ROWS]
    _lines(root / "Eval" / "list_eval_partition.txt", lines)
    return root


# --- re-ID sets --------------------------------------------------------------------------------

MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                           "0007_c2s3_070952_01.jpg", "0007_c3s3_015337_01.jpg",
                           "0000_c1s1_000001_01.jpg"],  # a stray distractor: dropped from train
    "query": ["0001_c1s1_001051_00.jpg", "0003_c3s1_002551_00.jpg"],
    "bounding_box_test": ["0001_c2s1_000301_01.jpg", "0001_c6s1_009301_01.jpg",
                          "0003_c4s1_002201_01.jpg", "0000_c1s1_000151_01.jpg",
                          "-1_c1s1_000401_03.jpg", "-1_c5s1_000401_03.jpg"],
}
DUKE_FILES = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg",
                           "0003_c1_f0044158.jpg"],
    "query": ["0005_c2_f0046985.jpg", "0008_c8_f0176932.jpg"],
    "bounding_box_test": ["0005_c5_f0051781.jpg", "0008_c1_f0001823.jpg",
                          "0011_c3_f0004931.jpg"],
}


def make_reid(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        for name in names:
            write_image(root / folder, name, size=(8, 16))
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    return root


def make_market(root: Path) -> Path:
    make_reid(root / "Market-1501-v15.09.15", MARKET_FILES)
    return root


def make_duke(root: Path) -> Path:
    return make_reid(root, DUKE_FILES)


MSMT_LISTS = {  # list file -> (folder, [(relative path, label)])
    "list_train.txt": ("train", [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                 ("0000/0000_001_05_0303morning_0030_1.jpg", 0),
                                 ("0001/0001_000_15_0303noon_0100_0.jpg", 1)]),
    "list_val.txt": ("train", [("0002/0002_000_02_0303afternoon_0200_0.jpg", 2)]),
    "list_query.txt": ("test", [("0000/0000_000_03_0113morning_0010_0.jpg", 0)]),
    "list_gallery.txt": ("test", [("0000/0000_003_07_0113noon_0500_1.jpg", 0),
                                  ("0001/0001_000_11_0113noon_0600_0.jpg", 1)]),
}


def make_msmt(root: Path) -> Path:
    folder = root / "MSMT17_V1"
    for list_name, (split, rows) in MSMT_LISTS.items():
        for relative, _label in rows:
            write_image(folder / split, relative, size=(8, 16))
        _lines(folder / list_name, [f"{p} {label}" for p, label in rows])
    return root


# --- generic forms ----------------------------------------------------------------------------


def make_folder(root: Path, *, domains: bool = True) -> Path:
    for domain in ("photo", "sketch") if domains else ("",):
        for cls in ("cat", "dog", "fox"):
            for cam in (1, 2):
                relative = f"{domain}/{cls}/{cls}_c{cam}_01.png".lstrip("/")
                write_image(root, relative, size=(20, 20))
    return root


MANIFEST_ROWS = [
    ("imgs/a1.jpg", "7", "day", "cam1", "train"),
    ("imgs/a2.jpg", "7", "night", "cam2", "train"),
    ("imgs/b1.jpg", "10", "day", "cam1", "query"),
    ("imgs/b2.jpg", "10", "night", "cam2", "gallery"),
    ("imgs/c1.png", "2", "day", "cam3", "gallery"),
]


def make_manifest(root: Path, rows: list[tuple[str, ...]] | None = None,
                  header: str = "path,class,domain,camera,role") -> Path:
    rows = MANIFEST_ROWS if rows is None else rows
    for row in rows:
        if not row[0].startswith(("/", "..")):
            write_image(root, row[0])
    _lines(root / "manifest.csv", [header] + [",".join(r) for r in rows])
    return root
