"""The optuna storage: URLs checked before any work, and opened with heartbeats (SQLite on one
machine, PostgreSQL or MySQL for many). A storage that cannot be opened is one line naming it
(bench.state, exit 3).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path

import optuna

from bench.errors import BenchError
from bench.state import redact, storage_state_error


def open_storage(url: str, *, heartbeat: int = 10, grace: int = 30) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so trials of a dead process are detected and failed."""
    from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

    shown, url = url, storage_driver_url(url)
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    _make_sqlite_folder(url)
    for attempt in range(20):
        try:
            with warnings.catch_warnings():  # heartbeats: "experimental", stable since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat,
                                                  grace_period=grace)
        except (OperationalError, IntegrityError) as error:
            # Two processes creating the same new SQLite schema at once: one wins, retry.
            if attempt == 19 or not _retryable(error):
                raise storage_state_error(error, shown) from None
            time.sleep(0.25 * (attempt + 1))
        except DatabaseError as error:  # not a database, or a damaged one: exit 3, one line
            raise storage_state_error(error, shown) from None
    raise AssertionError("unreachable")


def _make_sqlite_folder(url: str) -> None:
    """SQLite creates a missing database file but not its folder: create that too, so a
    `bench worker --storage sqlite:///RESULTS/<name>/study.db` started at the same moment as the
    `bench run` that will create RESULTS/<name>/ joins it instead of failing on a race."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a bad URL is reported by RDBStorage below
        return
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    try:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable place: RDBStorage's own one-line error (exit 3) says so


def storage_driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the `postgres` extra installs psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _retryable(error: Exception) -> bool:
    """A race between processes creating the schema (worth a retry), not a damaged file."""
    from sqlalchemy.exc import IntegrityError

    text = str(getattr(error, "orig", error)).lower()
    return isinstance(error, IntegrityError) or any(
        word in text for word in ("locked", "already exists", "unique constraint", "busy"))


SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql")


def check_storage_url(url: str | None, *, field: str = "--storage") -> None:
    """Refuse, before any work or write, a ``--storage`` URL optuna cannot open here: not a
    database URL, a scheme other than sqlite/postgresql/mysql, an async or missing driver,
    SQLite without a file. BenchError (bad input, exit 2)."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = redact(url)
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
