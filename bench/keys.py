"""Names of the units in the optuna storage, formatted and parsed here only, and a step's outcome.

A study is keyed by protocol, pool, method and the split its search ran on
(``<protocol>:<pool>:<method>:<split>``); the test jobs of the values the search chose live in
``<same>:test:<digest of the values>``. A test job is one (split, seed) reproduction,
``<split>/seed<N>``. Every other module builds and reads these names through this one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

TEST_MARK = "test"


class Outcome(str, Enum):
    """What one step of one method did: ``worked`` (a trial or job ran, or was pruned),
    ``blocked`` (other processes hold what is left), ``done`` or ``failed``."""

    WORKED = "worked"
    BLOCKED = "blocked"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (Outcome.DONE, Outcome.FAILED)


def values_digest(values: dict[str, Any]) -> str:
    """12 hex digits naming a set of chosen hyperparameter values."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StudyKey:
    """One study of the storage: a method's search (``values`` None) or its test jobs."""

    protocol: str
    pool: str
    method: str
    split: str
    values: str | None = None  # digest of the chosen values, for the test-job study

    @property
    def phase(self) -> str:
        return "search" if self.values is None else "test"

    def __str__(self) -> str:
        name = f"{self.protocol}:{self.pool}:{self.method}:{self.split}"
        return name if self.values is None else f"{name}:{TEST_MARK}:{self.values}"

    def test_study(self, values: dict[str, Any]) -> StudyKey:
        """The study holding the test jobs of ``values`` (chosen by this search)."""
        return StudyKey(self.protocol, self.pool, self.method, self.split,
                        values_digest(values))

    @classmethod
    def parse(cls, name: str) -> StudyKey:
        """The key of a study name; ValueError for a name bench did not write."""
        parts = name.split(":")
        if len(parts) == 4 and all(parts):
            return cls(*parts)
        if len(parts) == 6 and parts[4] == TEST_MARK and all(parts):
            return cls(*parts[:4], values=parts[5])
        raise ValueError(f"not a bench study name: {name!r}")

    @classmethod
    def try_parse(cls, name: str) -> StudyKey | None:
        try:
            return cls.parse(name)
        except ValueError:
            return None


@dataclass(frozen=True, order=True)
class JobKey:
    """One test job: the reproduction with ``seed`` on split ``split``."""

    split: str
    seed: int

    def __str__(self) -> str:
        return f"{self.split}/seed{self.seed}"

    @classmethod
    def parse(cls, text: str) -> JobKey:
        split, _, seed = text.partition("/")
        if not split or not seed.startswith("seed") or not seed[4:].isdigit():
            raise ValueError(f"not a bench job: {text!r}")
        return cls(split, int(seed[4:]))

    @property
    def run_stem(self) -> str:
        """The job's files in ``runs/<pool>/<method>/<split>/``: ``seed<N>.json`` and the
        saved embeddings and checkpoints beside it."""
        return f"seed{self.seed}"

    @staticmethod
    def seed_of(file_name: str) -> int | None:
        """The seed of a job's file name (``seed3.json``, ``seed3.embeddings.npz``)."""
        stem = file_name.split(".")[0]
        digits = stem.removeprefix("seed")
        return int(digits) if stem.startswith("seed") and digits.isdigit() else None


def protocol_studies(storage: Any, protocol: str) -> list[StudyKey]:
    """The keys of ``protocol``'s studies in ``storage`` (other names are ignored)."""
    import optuna

    keys = (StudyKey.try_parse(s.study_name)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    return [k for k in keys if k is not None and k.protocol == protocol]


def method_studies(storage: Any, protocol: str, pool: str, method: str) -> list[StudyKey]:
    """One method's studies on one pool: its search first, then its test-job studies (in the
    storage's order)."""
    found = [k for k in protocol_studies(storage, protocol)
             if k.pool == pool and k.method == method]
    return sorted(found, key=lambda k: k.values is not None)
