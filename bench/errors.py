"""One error type for every user-input problem, so the CLI can print one line and exit 2."""

from __future__ import annotations


class BenchError(Exception):
    """A user-facing error: names the file (or object), the field and the reason.

    The CLI prints ``str(error)`` on one line and exits with code 2; nothing is written to
    ``results/`` when one is raised during validation.
    """

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None):
        self.reason = reason
        self.source = source
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        prefix = ": ".join(parts)
        text = f"{prefix}: {self.reason}" if prefix else self.reason
        return " ".join(text.split())


class DataError(BenchError):
    """A data file went bad (missing, corrupt, refused): never the method's fault, so a search
    trial that meets one is not counted as the method's failure; the run stops with exit 2."""


class StateError(BenchError):
    """Damaged or unusable state, not a bad input: a storage file that is not a database, a
    results folder that cannot be written, a path that would leave ``RESULTS/<name>/``. The CLI
    prints one line naming the file and what to do, and exits with code 3."""


#: exit codes, as README.md lists them
EXIT_OK, EXIT_METHOD_FAILED, EXIT_BAD_INPUT, EXIT_DAMAGED_STATE = 0, 1, 2, 3
