"""Parsing shared by the `bench` subcommands (bench.cli, bench.splits.cli, ...)."""

from __future__ import annotations

from bench.errors import BenchError


def parse_option(text: str) -> tuple[str, object]:
    """``--option KEY=VALUE``: the value parsed as YAML (``image_size=32`` gives an int)."""
    import yaml

    if "=" not in text:
        raise BenchError(f"expected KEY=VALUE, got {text!r}", field="--option")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)
