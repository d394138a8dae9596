"""Where the harness keeps its caches (datasets, trunk features)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$BENCH_CACHE`` if set, else ``~/.cache/bench``."""
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench")
