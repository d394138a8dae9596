"""Installed-distribution metadata in a temp folder on sys.path, so the tests exercise the real
importlib.metadata entry-point discovery without pip (CI's clean clone needs no extra step).

``install_example`` reads the example package's own pyproject.toml: the entry points under test
are exactly the ones a `pip install examples/bench-example-plugin` would declare.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bench-example-plugin"


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def fake_distribution(site: Path, name: str, version: str,
                      entry_points: dict[str, dict[str, str]]) -> Path:
    """Write ``<name>-<version>.dist-info`` (METADATA + entry_points.txt) under ``site``."""
    folder = site / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                     encoding="utf-8")
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
                   for group, items in entry_points.items())
    (folder / "entry_points.txt").write_text(text, encoding="utf-8")
    return folder


def install_example(site: Path, monkeypatch: pytest.MonkeyPatch, version: str | None = None
                    ) -> dict:
    """Put the example plug-in (code + metadata) on sys.path; returns its [project] table."""
    project = _toml(EXAMPLE / "pyproject.toml")["project"]
    fake_distribution(site, project["name"], version or project["version"],
                      project["entry-points"])
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.syspath_prepend(str(site))
    return project
