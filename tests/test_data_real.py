"""Real dataset loaders on tiny trees in the official layouts (written by tests/real_layouts.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import real_layouts as L
from PIL import Image

from bench.cli import main
from bench.data import load_dataset
from bench.data.real import prepare as prep
from bench.data.real.common import REAL_DATASETS, check_counts
from bench.data.real.lazy import LazyImages
from bench.data.real.prepare import open_dataset, prepare, verify
from bench.data.real.reid import identities
from bench.data.records import ImageDataset
from bench.errors import BenchError
from bench.features import dataset_fingerprint

BENCHMARKS = ("cub200", "cars196", "sop", "inshop", "market1501", "dukemtmc", "msmt17")
MAKERS = {"cub200": L.make_cub, "cars196": L.make_cars, "sop": L.make_sop,
          "inshop": L.make_inshop, "market1501": L.make_market, "dukemtmc": L.make_duke,
          "msmt17": L.make_msmt, "folder": L.make_folder, "manifest": L.make_manifest}


def _tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    MAKERS[name](root)
    return root


def _by_role(ds: ImageDataset, role: str) -> list[str]:
    return [ds.class_names[i] for i in ds.labels[ds.roles == role]]


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --- the benchmark layouts ---------------------------------------------------------------------


def test_cub_classes_split_and_decoding(tmp_path: Path) -> None:
    ds = open_dataset("cub200", _tree(tmp_path, "cub200"), image_size=16)
    assert ds.class_names == list(L.CUB_CLASSES.values())
    assert set(_by_role(ds, "train")) == {"001.Black_footed_Albatross", "002.Laysan_Albatross"}
    assert set(_by_role(ds, "test")) == {"101.White_Pelican", "150.Sage_Thrasher"}
    assert ds.domain_names == ["cub"] and ds.camera_names == ["cub"]
    assert ds.counts() == {"classes": 4, "images": 8, "domains": 1, "cameras": 1,
                           "train_images": 4, "test_images": 4}
    assert isinstance(ds.images, LazyImages) and ds.images.shape == (8, 16, 16, 3)
    # class order = class id order, so the class-half rule agrees with the official split
    assert ((ds.labels < ds.num_classes // 2) == (ds.roles == "train")).all()
    batch = ds.images[np.array([0, 7])]
    assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
    first = Path(ds.images.paths[0]).relative_to("images").as_posix()
    assert np.abs(batch[0, 0, 0].astype(int) - L.colour(first)).max() <= 12  # JPEG corner
    assert batch[0, 8, 8].sum() < batch[0, 0, 0].sum()  # the darker centre survives the crop


def test_cars_mat_split(tmp_path: Path) -> None:
    ds = open_dataset("cars196", _tree(tmp_path, "cars196"), image_size=12)
    assert ds.class_names[0] == "001 Make Model 1" and ds.class_names[-1] == "196 Make Model 196"
    assert {n[:3] for n in _by_role(ds, "train")} == {"001", "005", "098"}
    assert {n[:3] for n in _by_role(ds, "test")} == {"099", "196"}
    assert ds.images[3].shape == (12, 12, 3)
    assert ds.images.paths[0] == "car_ims/000001.jpg"


def test_sop_lists_and_super_classes(tmp_path: Path) -> None:
    ds = open_dataset("sop", _tree(tmp_path, "sop"), image_size=12)
    assert ds.domain_names == ["bicycle", "cabinet", "toaster"]
    assert set(_by_role(ds, "train")) == {"bicycle/1", "bicycle/2", "cabinet/3"}
    assert set(_by_role(ds, "test")) == {"cabinet/4", "toaster/5"}
    toaster = ds.class_names.index("toaster/5")
    assert (ds.domains[ds.labels == toaster] == 2).all()


def test_inshop_roles_domains_views(tmp_path: Path) -> None:
    ds = open_dataset("inshop", _tree(tmp_path, "inshop"), image_size=12)
    assert ds.counts()["train_images"] == 4 and ds.counts()["query_images"] == 2
    assert ds.counts()["gallery_images"] == 3
    assert set(_by_role(ds, "query")) == set(_by_role(ds, "gallery"))
    assert not set(_by_role(ds, "train")) & set(_by_role(ds, "query"))
    assert "WOMEN/Dresses" in ds.domain_names
    assert set(ds.camera_names) == {"front", "side", "back", "full", "additional"}
    assert ds.images.paths[0].startswith("Img/img/WOMEN/")
    assert ds.images[0:3].shape == (3, 12, 12, 3)


def test_market_junk_and_distractors(tmp_path: Path) -> None:
    ds = open_dataset("market1501", _tree(tmp_path, "market1501"))
    assert ds.images.shape[1:] == (256, 128, 3)  # the re-ID default: resize to 256 x 128
    ids = identities(ds)
    train, query, gallery = (ds.roles == r for r in ("train", "query", "gallery"))
    assert sorted(set(ids[train])) == [2, 7]  # the stray 0000 in train is dropped
    assert ds.meta["dropped"] == {"train distractor": 1}
    assert sorted(set(ids[query])) == [1, 3]
    assert sorted(ids[gallery].tolist()) == [-1, -1, 0, 1, 1, 3]  # junk flagged, distractor kept
    assert ds.class_names[ds.meta["junk_label"]] == "-1"
    assert ds.class_names[ds.meta["distractor_label"]] == "0000"
    assert ds.camera_names == ["c1", "c2", "c3", "c4", "c5", "c6"]
    name = "0001_c6s1_009301_01.jpg"
    row = list(ds.images.paths).index(f"bounding_box_test/{name}")
    assert ds.camera_names[ds.cameras[row]] == "c6" and ids[row] == 1


def test_duke_names(tmp_path: Path) -> None:
    ds = open_dataset("dukemtmc", _tree(tmp_path, "dukemtmc"), image_size="32x16")
    assert ds.images[0].shape == (32, 16, 3)
    assert ds.camera_names == [f"c{i}" for i in range(1, 9)]
    assert sorted(set(identities(ds)[ds.roles == "gallery"])) == [5, 8, 11]
    assert ds.meta["junk_label"] is None and ds.meta["dropped"] == {}


def test_msmt_lists_and_cameras(tmp_path: Path) -> None:
    ds = open_dataset("msmt17", _tree(tmp_path, "msmt17"), image_size=16)
    assert ds.class_names == ["train/0000", "train/0001", "train/0002", "test/0000", "test/0001"]
    assert ds.counts()["train_images"] == 4  # list_train + list_val
    assert set(_by_role(ds, "query")) == {"test/0000"}
    cams = {ds.images.paths[i]: ds.camera_names[ds.cameras[i]] for i in range(len(ds))}
    assert cams["train/0001/0001_000_15_0303noon_0100_0.jpg"] == "c15"
    assert cams["test/0000/0000_003_07_0113noon_0500_1.jpg"] == "c07"


# --- generic forms -----------------------------------------------------------------------------


def test_folder_domain_class_with_camera_pattern(tmp_path: Path) -> None:
    root = _tree(tmp_path, "folder")
    ds = open_dataset("folder", root, image_size=10, camera_pattern=r"_c(\d+)_")
    assert ds.class_names == ["cat", "dog", "fox"] and ds.domain_names == ["photo", "sketch"]
    assert ds.camera_names == ["1", "2"] and ds.roles is None
    assert ds.counts() == {"classes": 3, "images": 12, "domains": 2, "cameras": 2}
    plain = open_dataset("folder", root, image_size=10)
    assert plain.camera_names == plain.domain_names  # camera = domain without a pattern
    flat = L.make_folder(tmp_path / "flat", domains=False)
    ds = open_dataset("folder", flat, image_size=10)
    assert ds.meta["layout"] == "class" and ds.domain_names == ["all"] and len(ds) == 6
    L.write_image(flat, "stray.png")
    L.write_image(flat, "cat/deeper/x.png")
    with pytest.raises(BenchError, match="different depths"):
        open_dataset("folder", flat)


def test_manifest_csv(tmp_path: Path) -> None:
    root = _tree(tmp_path, "manifest")
    ds = open_dataset("manifest", root, image_size=10)
    assert ds.class_names == ["2", "7", "10"]  # natural order
    assert ds.domain_names == ["day", "night"] and ds.camera_names == ["cam1", "cam2", "cam3"]
    assert ds.roles.tolist() == ["train", "train", "query", "gallery", "gallery"]
    assert ds.images[4].shape == (10, 10, 3)
    other = L.make_manifest(tmp_path / "bare", rows=[("x.jpg", "a"), ("y.jpg", "b")],
                            header="path,class")
    ds = open_dataset("manifest", other, image_size=10)
    assert ds.roles is None and ds.domain_names == ["all"]
    bad = L.make_manifest(tmp_path / "bad", rows=[("x.jpg", "a", "tset")], header="path,class,role")
    with pytest.raises(BenchError) as error:
        open_dataset("manifest", bad)
    assert "manifest.csv: line 2: role 'tset'" in _one_line(error)
    typo = L.make_manifest(tmp_path / "typo", rows=[("x.jpg", "a")], header="path,clas")
    with pytest.raises(BenchError, match="unknown column 'clas'"):
        open_dataset("manifest", typo)


# --- safety and damaged copies -----------------------------------------------------------------


@pytest.mark.parametrize("entry, reason", [("../../etc/passwd", "contains '..'"),
                                           ("/etc/passwd", "absolute path")])
def test_list_entries_cannot_leave_the_root(tmp_path: Path, entry: str, reason: str) -> None:
    root = _tree(tmp_path, "sop")
    listing = root / "Stanford_Online_Products" / "Ebay_test.txt"
    listing.write_text(listing.read_text() + f"99 5 12 {entry}\n")
    with pytest.raises(BenchError) as error:
        open_dataset("sop", root)
    assert f"{listing}: line 6: " in _one_line(error) and reason in str(error.value)


def test_symlink_out_of_root_and_manifest_escape(tmp_path: Path) -> None:
    outside = L.write_image(tmp_path, "outside.jpg")
    root = _tree(tmp_path, "cub200")
    folder = root / "CUB_200_2011"
    link = folder / "images" / "001.Black_footed_Albatross" / "link.jpg"
    link.symlink_to(outside)
    images = folder / "images.txt"
    images.write_text(images.read_text() + "9 001.Black_footed_Albatross/link.jpg\n")
    (folder / "image_class_labels.txt").write_text(
        (folder / "image_class_labels.txt").read_text() + "9 1\n")
    with pytest.raises(BenchError) as error:
        open_dataset("cub200", root)
    assert "images.txt: line 9: " in _one_line(error) and "outside the dataset root" in str(
        error.value)
    escape = L.make_manifest(tmp_path / "m", rows=[("../outside.jpg", "a")], header="path,class")
    with pytest.raises(BenchError, match=r"manifest.csv: line 2: .*'\.\.'"):
        open_dataset("manifest", escape)


def test_truncated_missing_and_bomb_images(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _tree(tmp_path, "cub200")
    ds = open_dataset("cub200", root, image_size=8)
    truncated, missing = ds.images.path(1), ds.images.path(5)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing.unlink()
    with pytest.raises(BenchError) as error:
        ds.images[0:2]
    assert str(truncated) in _one_line(error) and "corrupt" in str(error.value)
    with pytest.raises(BenchError, match="missing"):
        ds.images[5]
    problems = verify("cub200", root, log=lambda _line: None)
    assert problems == [f"{truncated}: {problems[0].split(': ', 1)[1]}", f"{missing}: image "
                        "file is missing"]
    assert "truncated" in problems[0] or "corrupt" in problems[0]
    assert main(["datasets", "verify", "cub200", "--root", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == problems and "2 bad" in out[0]
    quick = verify("cub200", root, quick=True, log=lambda _line: None)
    assert f"{missing}: image file is missing" in quick  # quick: existence and header only
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BenchError, match="decompression bomb"):
        ds.images[0]


def test_unreadable_list_and_bad_mat(tmp_path: Path) -> None:
    root = _tree(tmp_path, "cars196")
    (root / "cars_annos.mat").write_bytes(b"MATLAB 7.3 MAT-file, not really")
    with pytest.raises(BenchError) as error:
        open_dataset("cars196", root)
    assert "cars_annos.mat" in _one_line(error)
    root = _tree(tmp_path, "msmt17")
    (root / "MSMT17_V1" / "list_query.txt").write_text("0000/no_camera.jpg 0\n")
    with pytest.raises(BenchError, match=r"list_query.txt: line 1: cannot read a camera"):
        open_dataset("msmt17", root)


# --- counts, prepare, CLI ----------------------------------------------------------------------


def test_check_counts_report_and_strict_mode(tmp_path: Path) -> None:
    root = _tree(tmp_path, "cub200")
    ds = open_dataset("cub200", root)
    assert ds.meta["count_check"].startswith("skipped")  # a tiny copy is a partial copy
    lines = check_counts(ds, {"images": 8, "train_images": 5, "test_classes": 2})
    assert lines == ["cub200: train images: documented 5, found 4 (-1)"]
    full = check_counts(ds, REAL_DATASETS["cub200"].documented)
    assert "cub200: images: documented 11,788, found 8 (-11,780)" in full
    assert len(full) == 6
    with pytest.raises(BenchError) as error:
        open_dataset("cub200", root, counts="strict")
    assert "train images: documented 5,864, found 4" in _one_line(error)


def test_prepare_reports_and_instructions(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path, "market1501")
    problems = prepare("market1501", root, log=lambda _line: None)
    assert "market1501: train images: documented 12,936, found 4 (-12,932)" in problems
    assert main(["datasets", "prepare", "market1501", "--root", str(root)]) == 1
    assert "query images: documented 3,368, found 2" in capsys.readouterr().out
    with pytest.raises(BenchError) as error:
        prepare("sop", tmp_path / "empty")
    text = _one_line(error)
    assert "Ebay_train.txt" in text and str(tmp_path / "empty") in text
    assert main(["datasets", "prepare", "msmt17", "--root", str(tmp_path / "none")]) == 2
    assert "list_train.txt" in capsys.readouterr().err
    folder = _tree(tmp_path, "folder")
    assert prepare("folder", folder, log=lambda _line: None) == []


def test_prepare_downloads_with_checksum(tmp_path: Path, monkeypatch) -> None:
    staging = _tree(tmp_path / "staging", "cub200")
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(staging / "CUB_200_2011", arcname="CUB_200_2011")
    url = archive.as_uri()
    good = prep.Download(url=url, md5=prep._md5(archive), filename="CUB_200_2011.tgz")
    monkeypatch.setitem(prep.DOWNLOADS, "cub200", good)
    target = tmp_path / "cub"
    problems = prepare("cub200", target, log=lambda _line: None)
    assert (target / "CUB_200_2011" / "images.txt").is_file()
    assert all("documented" in line for line in problems)  # only the tiny-copy counts differ
    bad = prep.Download(url=url, md5="0" * 32, filename="CUB_200_2011.tgz")
    monkeypatch.setitem(prep.DOWNLOADS, "cub200", bad)
    with pytest.raises(BenchError, match="MD5"):
        prepare("cub200", tmp_path / "other", log=lambda _line: None)
    offline = prep.Download(url="http://127.0.0.1:9/x.tgz", md5="0" * 32, filename="x.tgz")
    monkeypatch.setitem(prep.DOWNLOADS, "cub200", offline)
    with pytest.raises(BenchError) as error:
        prepare("cub200", tmp_path / "third", log=lambda _line: None)
    assert "cannot download" in _one_line(error) and str(tmp_path / "third") in str(error.value)
    with pytest.raises(BenchError, match="images.txt"):
        prepare("cub200", tmp_path / "fourth", download=False)


def test_tar_members_cannot_escape(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(BenchError):
        prep.extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_datasets_list_shows_every_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    _tree(tmp_path, "sop")
    assert main(["datasets", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in (*BENCHMARKS, "folder", "manifest", "glyphs"):
        assert name in lines
    assert lines["sop"].split()[1] == "available"
    assert str(tmp_path / "sop" / "Stanford_Online_Products") in lines["sop"]
    assert lines["cub200"].split()[1] == "missing"
    assert f"looks in {tmp_path / 'cub200'}" in lines["cub200"]
    # the registry path: default root from $BENCH_DATA
    ds = load_dataset("sop", cache=False, image_size=8)
    assert ds.roles is not None and ds.meta["dataset"] == "sop" and len(ds) == 10


# --- the data model ----------------------------------------------------------------------------


def test_lazy_images_and_records(tmp_path: Path) -> None:
    ds = open_dataset("manifest", _tree(tmp_path, "manifest"), image_size=8)
    images = ds.images
    assert len(images) == 5 and images.shape == (5, 8, 8, 3)
    mask = ds.roles == "gallery"
    sub = ds.subset(mask)
    assert isinstance(sub.images, LazyImages) and sub.roles.tolist() == ["gallery", "gallery"]
    assert np.array_equal(sub.images[0:2], images[np.flatnonzero(mask)])
    assert np.array_equal(images[mask], images[[3, 4]])
    assert images[np.int64(2)].shape == (8, 8, 3) and images[5:].shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        images[7]
    with pytest.raises(BenchError, match="lazily"):
        np.asarray(images)
    before = dataset_fingerprint(ds)
    assert before == dataset_fingerprint(open_dataset("manifest", tmp_path / "manifest",
                                                      image_size=8))
    assert before != dataset_fingerprint(open_dataset("manifest", tmp_path / "manifest",
                                                      image_size=9))
    assert ds.images.fingerprint() != sub.images.fingerprint()
    # in-memory datasets still work without roles
    plain = ImageDataset(name="x", images=np.zeros((2, 4, 4, 3), np.uint8),
                         labels=np.array([0, 1]), domains=np.zeros(2, np.int64),
                         cameras=np.zeros(2, np.int64), class_names=["a", "b"],
                         domain_names=["d"], camera_names=["c"])
    assert plain.roles is None and plain.subset(np.array([1])).images.shape == (1, 4, 4, 3)
    assert "train_images" not in plain.counts()
    with pytest.raises(ValueError, match="unknown roles"):
        ImageDataset(name="x", images=np.zeros((1, 4, 4, 3), np.uint8), labels=np.array([0]),
                     domains=np.zeros(1, np.int64), cameras=np.zeros(1, np.int64),
                     class_names=["a"], domain_names=["d"], camera_names=["c"],
                     roles=np.array(["dev"]))
