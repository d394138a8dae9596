"""Results paths confined by construction: everything a protocol's run writes or deletes lies
inside ``RESULTS/<name>/``, checked after resolving symbolic links (a pattern check alone let
``name: ..`` delete the results root's parent).

``--fresh`` deletes only the entries a run writes (``WRITTEN``), never the folder wholesale.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from bench.errors import BenchError, StateError

#: a protocol or method name: one plain path component, not hidden, not `.` or `..`
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)

#: what a run writes directly under RESULTS/<name>/ (``--fresh`` removes these and no more)
WRITTEN_FILES = ("protocol.yaml", "plugins.json", "results.csv", "summary.md", "study.db",
                 "study.db-journal", "study.db-wal", "study.db-shm")
WRITTEN_DIRS = ("runs", "splits")
WRITTEN_PATTERNS = ("ood_curve*.png", "ood_curve*.svg", ".*.tmp")


def check_name(name: str, *, what: str = "name", source: str | None = None) -> str:
    """``name`` if it is one safe path component; BenchError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BenchError(f"{what} {name!r} must be one plain folder name: letters, digits, "
                         "'_', '.', '-', not starting with '.' or '-' (at most 100 characters)",
                         source=source, field=what)
    return name


def inside(path: Path, base: Path) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``base`` or below it."""
    return os.path.realpath(path) == str(base) or os.path.realpath(path).startswith(
        str(base) + os.sep)


def protocol_dir(results_root: str | os.PathLike[str], name: str) -> Path:
    """``RESULTS/<name>`` resolved; refuses a name or a link that would leave the results root.

    The results root itself may be a symbolic link (it is the user's choice where results
    go); ``<name>`` below it may not be one.
    """
    check_name(name, what="name")
    root = Path(os.path.realpath(Path(results_root).expanduser()))
    target = root / name
    if target.is_symlink():
        raise StateError(f"is a symbolic link (to {os.readlink(target)}); results are written "
                         f"only inside {root}: remove the link or choose another --results",
                         source=str(target))
    if os.path.realpath(target) != str(target) or target.parent != root:
        raise StateError(f"resolves outside {root}; choose another --results",
                         source=str(target))
    if target.exists() and not target.is_dir():
        raise StateError("exists and is not a folder: move it away", source=str(target))
    return target


def confined(base: Path, *parts: str) -> Path:
    """``base / parts`` after checking it resolves inside ``base`` (a link or ``..`` in a part,
    or a symlinked subfolder, would write elsewhere): StateError otherwise."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise StateError(f"refusing path component {part!r}: results are written only "
                             f"inside {base}", source=str(base))
    path = base.joinpath(*parts)
    if not inside(path, Path(os.path.realpath(base))):
        raise StateError(f"resolves outside {base} (a symbolic link?); results are written only "
                         "inside it: remove the link", source=str(path))
    return path


def remove_written(folder: Path) -> list[str]:
    """Delete what a run writes in ``folder`` (``--fresh``); keep anything else. Returns the
    names removed. Symbolic links are removed as links, never followed."""
    if not folder.exists():
        return []
    removed = []
    entries = [folder / n for n in WRITTEN_FILES + WRITTEN_DIRS]
    for pattern in WRITTEN_PATTERNS:
        entries += sorted(folder.glob(pattern))
    for path in entries:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            if path.name in WRITTEN_DIRS:
                _remove_tree(path, folder)
            else:
                continue
        else:
            continue
        removed.append(path.name)
    try:
        folder.rmdir()  # only when nothing else is left in it
    except OSError:
        pass
    return removed


def _remove_tree(path: Path, base: Path) -> None:
    """``shutil.rmtree`` of a folder checked to be inside ``base`` (it removes links inside as
    links and refuses a linked top folder)."""
    if not inside(path, Path(os.path.realpath(base))):
        raise StateError(f"resolves outside {base}; not deleting it: remove the link",
                         source=str(path))
    shutil.rmtree(path)


def check_tree(folder: Path) -> None:
    """Before any work: no symbolic link under ``folder`` may lead outside it (a linked
    ``runs/`` would receive run files elsewhere), and the folder must be writable."""
    base = Path(os.path.realpath(folder))
    if folder.exists():
        for dirpath, dirnames, filenames in os.walk(folder):  # links are not followed
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink() and not inside(path, base):
                    raise StateError(f"is a symbolic link to {os.readlink(path)}, outside "
                                     f"{folder}; results are written only inside it: remove "
                                     "the link (or re-run with --fresh)", source=str(path))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StateError("is not writable: fix its permissions or choose another --results",
                         source=str(existing))


def default_storage_url(results_root: str | os.PathLike[str], name: str) -> str:
    """The run's own SQLite storage, ``RESULTS/<name>/study.db`` (confined)."""
    return f"sqlite:///{confined(protocol_dir(results_root, name), 'study.db')}"
