"""`bench datasets show` prints the documented counts and writes a contact sheet."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main


def test_datasets_show_glyphs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sheet.png"
    assert main(["datasets", "show", "glyphs", "--out", str(out),
                 "--option", "image_size=32"]) == 0
    text = capsys.readouterr().out
    counts = dict(line.split(None, 1) for line in text.splitlines() if line and ":" not in line)
    assert counts["classes"].strip() == "674" and counts["images"].strip() == "10784"
    assert counts["domains"].strip() == "4" and counts["cameras"].strip() == "16"
    with Image.open(out) as image:
        assert image.width > 100 and image.height > 100


def test_datasets_show_unknown_option(capsys) -> None:
    assert main(["datasets", "show", "glyphs", "--option", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert "colour" in err and "\n" not in err


def _shown(capsys, argv: list[str]) -> dict[str, int]:
    capsys.readouterr()
    assert main(argv) == 0
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    return {k: int(v) for k, v in (x for x in lines if len(x) == 2) if v.strip().isdigit()}


@pytest.mark.parametrize("name", ["sop", "inshop", "glyphs"])
def test_datasets_show_and_a_run_agree_on_train_and_test_classes(name, tmp_path: Path, capsys
                                                                 ) -> None:
    """One class-split rule (issue 13): the counts `bench datasets show` prints are those of
    the split a run of the dataset trains and tests on (the dataset's roles where it has them:
    SOP's list files put 3 classes in train and 2 in test, not the first half of 5)."""
    import yaml
    from conftest import TINY_PROTOCOL
    from real_layouts import make_inshop, make_sop

    from bench.plan import plan_protocol
    from bench.pool import pool_splits

    options: dict = {"image_size": 12} if name != "glyphs" else {"image_size": 16,
                                                                   "max_classes": 10}
    if name != "glyphs":
        options["root"] = str({"sop": make_sop, "inshop": make_inshop}[name](tmp_path / name))
    argv = ["datasets", "show", name, "--out", str(tmp_path / "sheet.png")]
    for key, value in options.items():
        argv += ["--option", f"{key}={value}"]
    shown = _shown(capsys, argv)
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data["dataset"] = {"name": name, "options": options}
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    plan = plan_protocol(path)
    (pool, dspecs), = plan.protocol.pools
    splits, _layout, _ds = pool_splits(plan, dspecs, results_dir=tmp_path / "results")
    default = next(s for s in splits if s.is_default)
    assert (shown["train_classes"], shown["test_classes"]) == (len(default.train),
                                                               len(default.test))
    if name == "sop":
        assert (shown["train_classes"], shown["test_classes"]) == (3, 2)
