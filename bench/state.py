"""Damaged state (the optuna storage) turned into one line naming the file and what to do.

The storage is the single source of truth for results: when it cannot be read, nothing else can
stand in for it, so the run stops with exit 3 (README) instead of a traceback.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bench.errors import BenchError, StateError

ADVICE = ("the storage is damaged or not an optuna database: move it away to start over "
          "(or re-run with --fresh, which discards this protocol's results)")


def is_storage_error(error: BaseException) -> bool:
    """A database error raised by SQLAlchemy or sqlite3 (not a bug of ours)."""
    if isinstance(error, sqlite3.DatabaseError):
        return True
    try:
        from sqlalchemy.exc import DatabaseError, NoSuchModuleError, StatementError
    except ImportError:  # pragma: no cover - sqlalchemy comes with optuna
        return False
    return isinstance(error, (DatabaseError, StatementError, NoSuchModuleError))


def _reason(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    return " ".join(str(orig).split())[:200]


def storage_state_error(error: BaseException, url: str) -> StateError:
    """A StateError naming the storage (a SQLite file: its path) and the cause."""
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)
    return StateError(f"{ADVICE} ({_reason(error)})", source=where)


def storage_error_line(error: BaseException, args: Any) -> str | None:
    """The one line for a storage error met after the storage was opened; None otherwise."""
    if not is_storage_error(error):
        return None
    url = getattr(args, "storage", None) or "the protocol's study.db (RESULTS/<name>/study.db)"
    return str(storage_state_error(error, url))


def redact(url: str) -> str:
    """The URL without its password (never print a credential)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by scheme only
        return url.split(":", 1)[0] + "://..."


def check_grace(grace: int | None, *, field: str = "--grace") -> None:
    """A heartbeat grace period must be a positive number of seconds (refused before loading)."""
    if grace is not None and not 1 <= grace <= 7 * 24 * 3600:
        raise BenchError(f"must be between 1 and {7 * 24 * 3600} seconds, got {grace}",
                         field=field)


def delete_protocol_studies(storage: Any, protocol: str) -> list[str]:
    """``--fresh`` with a shared ``--storage``: delete this protocol's studies (bench.keys
    names) and no other; returns their names."""
    import optuna

    from bench.keys import protocol_studies

    names = [str(key) for key in protocol_studies(storage, protocol)]
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass  # another process deleted it first
    return names
