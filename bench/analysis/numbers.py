"""How bench.analysis prints numbers and p-values in its tables and verdicts."""

from __future__ import annotations

import math


def format_number(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_p(value: float, relation: bool = False) -> str:
    """A p-value: 3 decimals, ``< 0.001`` below; with ``relation`` as ``= 0.012``."""
    if value is None or math.isnan(value):
        return "= n/a" if relation else "n/a"
    if value < 0.001:
        return "< 0.001"
    return f"= {value:.3f}" if relation else f"{value:.3f}"
