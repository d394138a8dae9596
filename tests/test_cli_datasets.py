"""`bench datasets show` prints the documented counts and writes a contact sheet."""

from __future__ import annotations

from pathlib import Path

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
