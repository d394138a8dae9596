"""Shared fixtures: an isolated cache directory and a tiny protocol writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's ~/.cache/bench; the session shares one cache for speed."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("bench-cache")))
    mp.setenv("BENCH_JOBS", "1")  # `bench run` in one process unless a test asks for -j
    yield
    mp.undo()


TINY_PROTOCOL = {
    "name": "tiny",
    "dataset": {"name": "glyphs", "options": {"image_size": 32, "max_classes": 40}},
    "split": {"validation_fraction": 0.25},
    "model": {"backbone": "mobilenet_v2", "pretrained": True, "trunk": "none",
              "embedding_size": 32, "head_hidden": 64},
    "train": {"iterations": 30, "batch_size": 32, "m_per_class": 4, "validate_every": 10,
              "patience": 3},
    "reproductions": 1,
    "methods": [
        {"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
        {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"}},
    ],
}


@pytest.fixture
def write_protocol(tmp_path: Path):
    """Write a protocol dict (default: the tiny one, updated by ``changes``) to a YAML file."""

    def _write(changes: dict | None = None, name: str = "protocol.yaml") -> Path:
        data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
        for key, value in (changes or {}).items():
            data[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return _write
