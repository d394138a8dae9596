"""bench: a fair, reproducible harness for deep metric learning and domain-adaptive re-ID."""

__version__ = "0.1.0"
