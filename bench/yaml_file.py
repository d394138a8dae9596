"""Reading user YAML files (protocols, claims) safely, with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError


def read_yaml(path: str | Path, *, what: str) -> tuple[Any, bytes]:
    """``yaml.safe_load`` of ``path`` and its raw bytes; BenchError if unreadable or not YAML."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BenchError(f"cannot read {what} ({error.strerror or error})",
                         source=str(path)) from None
    try:
        return yaml.safe_load(raw), raw
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise BenchError(f"not valid YAML: {where}{getattr(error, 'problem', error)}",
                         source=str(path)) from None
