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
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else _redact(url)
    return StateError(f"{ADVICE} ({_reason(error)})", source=where)


def storage_error_line(error: BaseException, args: Any) -> str | None:
    """The one line for a storage error met after the storage was opened; None otherwise."""
    if not is_storage_error(error):
        return None
    url = getattr(args, "storage", None) or "the protocol's study.db (RESULTS/<name>/study.db)"
    return str(storage_state_error(error, url))


def _redact(url: str) -> str:
    """The URL without its password (never print a credential)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by scheme only
        return url.split(":", 1)[0] + "://..."


SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql")


def check_storage_url(url: str | None, *, field: str = "--storage") -> None:
    """Refuse, before any work or write, a ``--storage`` URL optuna cannot open here: not a
    database URL, a scheme other than sqlite/postgresql/mysql, an async or missing driver,
    SQLite without a file. BenchError (bad input, exit 2)."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from bench.search import storage_driver_url

    shown = _redact(url)
    try:
        parsed = make_url(storage_driver_url(url))
    except ArgumentError:
        raise BenchError(f"{shown!r} is not a database URL (e.g. sqlite:///PATH/study.db or "
                         "postgresql://user@host/db)", field=field) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise BenchError(f"unsupported storage scheme {parsed.drivername!r} in {shown!r} "
                         f"(supported: {', '.join(SUPPORTED_BACKENDS)})", field=field)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise BenchError(f"unknown database driver {parsed.drivername!r} in {shown!r}",
                         field=field) from None
    if getattr(dialect, "is_async", False):
        raise BenchError(f"driver {parsed.get_driver_name()!r} is asynchronous; optuna needs a "
                         f"synchronous one (e.g. {backend}+psycopg2)", field=field)
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise BenchError(f"the {parsed.get_driver_name()!r} driver for {backend} is not "
                         f"installed ({error}); install it (PostgreSQL: pip install "
                         "'bench[postgres]')", field=field) from None
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise BenchError("an in-memory SQLite storage cannot be shared or resumed: give a file, "
                         "sqlite:///PATH/study.db", field=field)


def check_grace(grace: int | None, *, field: str = "--grace") -> None:
    """A heartbeat grace period must be a positive number of seconds (refused before loading)."""
    if grace is not None and not 1 <= grace <= 7 * 24 * 3600:
        raise BenchError(f"must be between 1 and {7 * 24 * 3600} seconds, got {grace}",
                         field=field)


def delete_protocol_studies(storage: Any, protocol: str) -> list[str]:
    """``--fresh`` with a shared ``--storage``: delete this protocol's studies (named
    ``<protocol>:...``) and no other; returns their names."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage,
                                                                  include_best_trial=False)
             if s.study_name.startswith(f"{protocol}:")]
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass  # another process deleted it first
    return names
