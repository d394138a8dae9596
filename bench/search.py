"""Fixed-budget hyperparameter search on optuna: every method gets the same number of completed
trials from the same sampler, in a storage that any number of processes can share.

Rules enforced here, beyond what optuna does itself:
- the budget counts COMPLETED trials only; a failed trial is recorded with its reason and the
  search goes on, up to ``max_failures`` failures;
- two processes never overshoot the budget: a trial that finds the budget already taken by
  live trials is pruned before it trains ("over budget");
- trial k's parameters depend only on the trials completed before it and on k, never on which
  process ran it or whether an earlier process died, so a resumed search equals an
  uninterrupted one;
- a trial left RUNNING by a killed process is failed by optuna's heartbeat check and not counted.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from bench.protocol import BudgetSpec, SearchDimension

optuna.logging.set_verbosity(optuna.logging.WARNING)
LIVE = (TrialState.COMPLETE, TrialState.RUNNING)


class TrialFailed(RuntimeError):
    """Training in a trial failed (NaN loss, out of memory, an exception): record and go on."""


class MethodFailed(RuntimeError):
    """More than ``max_failures`` trials failed: the method is reported as failed."""


def open_storage(url: str, *, heartbeat: int = 10, grace: int = 30) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so trials of a dead process are detected and failed."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(20):
        try:
            with warnings.catch_warnings():  # heartbeats: "experimental", stable since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat,
                                                  grace_period=grace)
        except (OperationalError, IntegrityError):
            # Two processes creating the same new SQLite schema at once: one wins, retry.
            if attempt == 19:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose process stopped sending heartbeats (optuna marks this experimental,
    but it has been stable since 2.9)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def slot_of(study: optuna.Study, number: int) -> int:
    """How many live (complete or running) trials precede trial ``number``."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < number)


def sampling_key(study: optuna.Study, number: int) -> tuple[int, int]:
    """(slot, failures so far): what a trial's sampler seed depends on.

    Counting the method's own failures makes a trial after a failure draw new values instead
    of repeating the failed ones; trials failed by a stale heartbeat do not count.
    """
    failures = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if t.number < number and "failure" in t.user_attrs)
    return slot_of(study, number), failures


class SlotSeededSampler(BaseSampler):
    """Delegates to a TPE/random sampler re-created per trial, seeded from (base, slot, failures).

    optuna's own seeded sampler carries one RNG across the trials a process runs; seeding by slot
    makes the parameters of the k-th completed trial independent of process history.
    """

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self._inner: BaseSampler = self._make(seed)

    def _make(self, seed: int) -> BaseSampler:
        if self.kind == "random":
            return RandomSampler(seed=seed)
        return TPESampler(seed=seed, n_startup_trials=5, multivariate=True)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        slot, failures = sampling_key(study, trial.number)
        self._inner = self._make((self.seed * 100_003 + slot * 1_009 + failures) % 2**32)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._inner.after_trial(study, trial, state, values)


def suggest(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "categorical":
            values[key] = trial.suggest_categorical(key, dim.choices)
        elif dim.type == "int":
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high))
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.type == "log_float")
    return values


@dataclass
class SearchOutcome:
    best_params: dict[str, Any]
    best_value: float
    completed: int
    failed: int


def counts(study: optuna.Study) -> tuple[int, int, int]:
    """(completed, failed for a reason of the method's own, running) trials."""
    complete = failed = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            complete += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.FAIL and "failure" in t.user_attrs:
            failed += 1
    return complete, failed, running


@dataclass
class SearchStep:
    """One call's result: "worked" (a trial ran or was pruned), "blocked" (the remaining slots
    are held by live trials of other processes) or "done" (with the outcome)."""

    state: str
    outcome: SearchOutcome | None = None


def budget_trial_fn(study: optuna.Study, space: dict[str, SearchDimension], budget: BudgetSpec,
                    objective: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]]):
    """The optuna objective: over-budget trials are pruned, failures recorded with reasons."""

    def trial_fn(trial: optuna.Trial) -> float:
        if slot_of(study, trial.number) >= budget.trials:
            trial.set_user_attr("pruned", "over budget: other processes took the last slots")
            raise optuna.TrialPruned()
        params = suggest(trial, space)
        try:
            value, attrs = objective(params)
        except TrialFailed as error:
            trial.set_user_attr("failure", str(error))
            raise
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        return value

    return trial_fn


def search_step(study: optuna.Study, space: dict[str, SearchDimension], budget: BudgetSpec,
                objective: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]], *,
                waiting: set[int] | None) -> tuple[SearchStep, set[int]]:
    """Do at most one trial of the search; never block (the caller polls other work).

    ``waiting``: trials that were RUNNING when this process first looked (None the first time);
    until they finish or go stale this process runs no trial, so slot numbering, and so the
    sampled parameters, are as in an uninterrupted run (see ``settle_stale``).
    """
    study.sampler = SlotSeededSampler(budget.sampler, budget.seed)
    fail_stale(study)
    running_now = {t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))}
    waiting = running_now if waiting is None else waiting & running_now
    complete, failed, running = counts(study)
    if complete >= budget.trials:
        best = best_trial(study)
        return SearchStep("done", SearchOutcome(best.params, float(best.value),
                                                complete, failed)), waiting
    if failed > budget.max_failures:
        raise MethodFailed(f"{failed} trials failed (max_failures {budget.max_failures}); "
                           f"last: {last_failure(study)}")
    if waiting or complete + running >= budget.trials:
        return SearchStep("blocked"), waiting
    study.optimize(budget_trial_fn(study, space, budget, objective), n_trials=1,
                   catch=(TrialFailed,))
    return SearchStep("worked"), waiting


def run_search(
    study: optuna.Study,
    space: dict[str, SearchDimension],
    budget: BudgetSpec,
    objective: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]],
    *,
    poll_seconds: float = 1.0,
    on_trial: Callable[[int, int], None] | None = None,
) -> SearchOutcome:
    """Run trials until ``budget.trials`` have completed (by any process) and return the best."""
    study.sampler = SlotSeededSampler(budget.sampler, budget.seed)
    trial_fn = budget_trial_fn(study, space, budget, objective)
    settle_stale(study, poll_seconds)
    while True:
        fail_stale(study)
        complete, failed, running = counts(study)
        if on_trial is not None:
            on_trial(complete, failed)
        if complete >= budget.trials:
            break
        if failed > budget.max_failures:
            raise MethodFailed(f"{failed} trials failed (max_failures {budget.max_failures}); "
                               f"last: {last_failure(study)}")
        if complete + running >= budget.trials:
            time.sleep(poll_seconds)  # other processes are finishing the last slots
            continue
        study.optimize(trial_fn, n_trials=1, catch=(TrialFailed,))
    best = best_trial(study)
    return SearchOutcome(best.params, float(best.value), *counts(study)[:2])


def settle_stale(study: optuna.Study, poll_seconds: float) -> None:
    """Before the first trial, wait until the trials RUNNING now are finished or found stale.

    A trial left by a killed process is indistinguishable from a live one until its heartbeat
    expires; waiting keeps slot numbering, and so the sampled parameters, as in an
    uninterrupted run. Trials started after this call are not waited for.
    """
    fail_stale(study)
    waiting = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    while waiting:
        time.sleep(poll_seconds)
        fail_stale(study)
        running = {t.number for t in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))}
        waiting &= running


def best_trial(study: optuna.Study) -> FrozenTrial:
    """Highest value; ties go to the lowest trial number (deterministic)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number))


def last_failure(study: optuna.Study) -> str:
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if "failure" in t.user_attrs]
    return failed[-1].user_attrs["failure"] if failed else "unknown"
