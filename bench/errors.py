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
