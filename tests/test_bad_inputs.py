"""The bad-input corpus (tests/bad_inputs/): every malformed input gets one line, exit 2
(damaged state, e.g. a storage file that is not a database: exit 3).

Each case of ``tests/bad_inputs/cases.yaml`` runs through the real CLI in-process
(``bench.cli.main``) from a scratch copy of its file or folder. It must exit 2 with exactly one
line on stderr that names the file, the field and the reason, print no traceback, and write
nothing: not to the scratch results dir ``{tmp}``, not beside the inputs, not into the working
directory.
"""

from __future__ import annotations

import os
import shutil
import struct
import traceback
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.cli import main

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "bad_inputs"
CASES_FILE = CORPUS / "cases.yaml"
FIXTURES = HERE / "fixtures"
EXPECT_KEYS = {"file", "field", "reason", "absent"}
CASE_KEYS = {"id", "path", "argv", "build", "expect", "xfail", "exit"}
EXIT_CODES = {2, 3}  # bad input; damaged state (README)


def load_cases() -> list[dict[str, Any]]:
    return yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))["cases"]


CASES = load_cases()


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- building what cannot be committed as a static file ---------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """An RGB PNG written by hand (no Pillow needed); ``rows`` < height leaves the data short."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes((x * 7 + y * 13) % 256 for x in range(width * 3))
                   for y in range(height if rows is None else rows))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _build(root: Path, scratch: Path, entries: list[dict[str, Any]]) -> None:
    """Make the ``build`` entries of a case inside its copy ``root`` (``../`` lands beside it)."""
    for entry in entries:
        path = root / entry["path"]
        assert os.path.normpath(path).startswith(str(scratch)), entry  # never outside scratch
        path.parent.mkdir(parents=True, exist_ok=True)
        make = entry["make"]
        if make == "png":
            path.write_bytes(_png(12, 10))
        elif make == "truncated_png":
            data = _png(40, 40)
            path.write_bytes(data[: len(data) // 2])
        elif make == "bomb_png":  # the header claims 30000 x 30000 pixels; the data is empty
            path.write_bytes(_png(30000, 30000, rows=0))
        elif make == "symlink":
            path.symlink_to(entry["target"])
        elif make == "big_yaml":  # valid YAML lines past the 1 MiB limit
            path.write_text("name: big\n" + "".join(f"key{i}: {i}\n" for i in range(120_000)),
                            encoding="utf-8")
        else:
            raise AssertionError(f"unknown build kind {make!r} in {entry}")


def _snapshot(folder: Path) -> dict[str, tuple[bool, int]]:
    """Every entry under ``folder`` (links not followed): relative path -> (is link, size)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            found[str(path.relative_to(folder))] = (path.is_symlink(), info.st_size
                                                    if path.is_file() else 0)
    return found


# --- the cases --------------------------------------------------------------------------------


def _params() -> list:
    params = []
    for case in CASES:
        marks = ([pytest.mark.xfail(reason=case["xfail"], strict=True)]
                 if case.get("xfail") else [])
        params.append(pytest.param(case, id=case["id"], marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_bad_input_one_line_exit_2_nothing_written(case: dict[str, Any], tmp_path: Path,
                                                   capsys, monkeypatch) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = CORPUS / case["path"]
    copy = inputs / source.name
    if source.is_dir():
        shutil.copytree(source, copy, symlinks=True)
    else:
        shutil.copy2(source, copy)
    _build(copy, inputs, case.get("build", []))
    results = tmp_path / "results"
    argv = [arg.replace("{case}", str(copy)).replace("{tmp}", str(results))
            .replace("{fixtures}", str(FIXTURES)) for arg in case["argv"]]
    before = _snapshot(inputs)
    monkeypatch.chdir(tmp_path)  # anything written to a relative default path shows up here

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: a usage error is not what the corpus is about
        code = exit_.code
    except Exception:  # a traceback is exactly what this test must catch
        pytest.fail(f"bench {' '.join(argv)} raised:\n{traceback.format_exc()}")
    captured = capsys.readouterr()

    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err + captured.out
    assert code == case.get("exit", 2), (code, captured.err)
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith("bench: error: "), line
    expect = case["expect"]
    for fragment in _as_list(expect.get("file")) + _as_list(expect.get("field")) + _as_list(
            expect["reason"]):
        assert fragment in line, (fragment, line)
    for fragment in _as_list(expect.get("absent")):
        assert fragment not in line, (fragment, line)
    assert not results.exists(), sorted(p.name for p in results.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]
    assert _snapshot(inputs) == before


# --- the corpus itself ------------------------------------------------------------------------


def test_corpus_is_complete_and_well_formed() -> None:
    assert len(CASES) >= 20
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    listed = set()
    for case in CASES:
        assert set(case) <= CASE_KEYS, (case["id"], set(case) - CASE_KEYS)
        assert isinstance(case["argv"], list) and case["argv"], case["id"]
        assert case.get("exit", 2) in EXIT_CODES, case["id"]
        assert any("{case}" in arg for arg in case["argv"]), case["id"]
        expect = case["expect"]
        assert set(expect) <= EXPECT_KEYS and "file" in expect and expect["reason"], case["id"]
        path = CORPUS / case["path"]
        assert path.exists() and path.resolve().is_relative_to(CORPUS), case["id"]
        listed.add(path)
    unlisted = []
    for path in CORPUS.rglob("*"):
        if path == CASES_FILE or path.is_dir():
            continue
        if not any(path == case or case in path.parents for case in listed):
            unlisted.append(str(path.relative_to(CORPUS)))
    assert not unlisted, f"case files not listed in cases.yaml: {unlisted}"
