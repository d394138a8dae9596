"""Plug-ins from installed distributions, found by entry point (the packaging convention that
pytest and optuna use).

A distribution declares, in its ``pyproject.toml``::

    [project.entry-points."bench.methods"]
    my_method = "my_package.methods:MyMethod"      # a bench.methods.base.Method subclass
    [project.entry-points."bench.losses"]
    MyLoss = "my_package.losses:MyLoss"            # a PML BaseMetricLossFunction subclass
    [project.entry-points."bench.miners"]
    MyMiner = "my_package.losses:MyMiner"          # a PML BaseMiner subclass
    [project.entry-points."bench.datasets"]
    my_set = "my_package.data:SPEC"                # a bench.data.registry.DatasetSpec

Protocols name plug-ins exactly like built-ins; only the *names* of installed entry points are
looked up, so nothing is ever imported from a path written in a protocol. A name that two
sources claim (a built-in and a plug-in, or two plug-ins) is refused in every lookup of that
group, naming both distributions: which one a protocol meant cannot be guessed.

Discovery is :func:`importlib.metadata.entry_points`, called afresh on every lookup (cheap), so
a package installed or upgraded meanwhile is seen and its version recorded as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench.errors import BenchError

GROUPS = {"methods": "bench.methods", "losses": "bench.losses", "miners": "bench.miners",
          "datasets": "bench.datasets"}
SINGULAR = {"methods": "method", "losses": "loss", "miners": "miner", "datasets": "dataset"}
BUILTIN = "built-in"


@dataclass(frozen=True)
class Plugin:
    """One entry point: its name, group, and the distribution (name, version) declaring it."""

    name: str
    group: str
    distribution: str
    version: str
    entry_point: metadata.EntryPoint

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}"

    def load(self, expected: type | None = None) -> Any:
        """Import the object; a failed import or a wrong kind of object is a one-line error."""
        where = f"entry point {self.name!r} of group {self.group!r} ({self.origin})"
        try:
            obj = self.entry_point.load()
        except Exception as error:  # noqa: BLE001 - any import failure of foreign code
            raise BenchError(f"cannot load {self.entry_point.value!r}: "
                             f"{type(error).__name__}: {error}", source=where) from None
        if expected is not None and not (isinstance(obj, type) and issubclass(obj, expected)):
            raise BenchError(f"{self.entry_point.value!r} is not a subclass of "
                             f"{expected.__module__}.{expected.__qualname__}", source=where)
        return obj


def discover(kind: str, builtins: set[str] | frozenset[str] = frozenset()) -> dict[str, Plugin]:
    """The installed plug-ins of ``kind`` (methods, losses, miners, datasets) by name.

    Raises BenchError when a name is claimed twice: by a built-in and a plug-in, or by two
    distributions (the same distribution seen twice on the path is not a clash).
    """
    group = GROUPS[kind]
    found: dict[str, Plugin] = {}
    for ep in metadata.entry_points(group=group):
        dist = ep.dist
        plugin = Plugin(ep.name, group, dist.metadata["Name"] if dist else "<unknown>",
                        dist.version if dist else "?", ep)
        if ep.name in builtins:
            raise BenchError(f"{SINGULAR[kind]} name {ep.name!r} is claimed by both bench "
                             f"({BUILTIN}) and {plugin.origin}; rename the entry point or "
                             f"uninstall {plugin.distribution}", source=f"entry points {group}")
        other = found.get(ep.name)
        if other is not None and other.distribution != plugin.distribution:
            raise BenchError(f"{SINGULAR[kind]} name {ep.name!r} is claimed by two installed "
                             f"distributions, {other.origin} and {plugin.origin}; uninstall one",
                             source=f"entry points {group}")
        found.setdefault(ep.name, plugin)
    return found


def unknown_name(kind: str, name: str, known: list[str], *, source: str, field: str) -> BenchError:
    """The one-line error for a name that is neither built in nor an installed plug-in."""
    return BenchError(f"unknown {SINGULAR[kind]} {name!r}: neither built in nor declared by an "
                      f"installed distribution under entry-point group {GROUPS[kind]!r} "
                      f"(known: {', '.join(sorted(known))})", source=source, field=field)


def describe(plugins: dict[str, Plugin]) -> str:
    """``"name (group) from dist version"`` parts joined, for provenance and summaries."""
    return "; ".join(f"{p.name} ({p.group}) from {p.origin}"
                     for p in sorted(plugins.values(), key=lambda p: (p.group, p.name)))


# --- what a protocol runs on -----------------------------------------------------------------


def signature(used: dict[str, dict[str, Plugin]]) -> dict[str, str]:
    """``group:name`` -> ``distribution version`` over a protocol's plug-ins (what is recorded
    beside its results and hashed with it)."""
    return {key: p.origin for entry in used.values() for key, p in sorted(entry.items())}


def check_recorded(path: Any, current: dict[str, str], *, source: str) -> None:
    """Refuse to add results of other plug-in versions to a results directory.

    A plug-in's version is a setting of the numbers like any protocol value: results started
    with one version are not mixed with another's (rerun with --fresh, or into another
    ``--results`` folder). ``path``: the ``plugins.json`` recorded by the first run.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BenchError(f"cannot read: {error}", source=str(path)) from None
    if recorded != current:
        changed = sorted(k for k in {*recorded, *current} if recorded.get(k) != current.get(k))
        parts = [f"{k}: {recorded.get(k, 'absent')} -> {current.get(k, 'absent')}"
                 for k in changed]
        raise BenchError(f"plug-in versions changed since these results were started "
                         f"({'; '.join(parts)}); rerun with --fresh to discard them, or use "
                         f"another --results folder", source=source, field=str(path))


def check_study(study: Any, current: dict[str, str], *, source: str) -> None:
    """Record the plug-in versions on a study; refuse a process (e.g. a `bench worker` on
    another machine) whose installed versions differ from the ones the study started with."""
    import json

    text = json.dumps(current, sort_keys=True)
    recorded = study.user_attrs.get("plugins")
    if recorded is None:
        study.set_user_attr("plugins", text)
    elif recorded != text:
        raise BenchError(f"this process has plug-in versions {text}, but study "
                         f"{study.study_name!r} was started with {recorded}; install the same "
                         f"versions everywhere", source=source)
