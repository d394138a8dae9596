"""Fixed-budget hyperparameter search on optuna: every method gets the same number of completed
trials from the same sampler, in a storage that any number of processes can share.

Rules enforced here, beyond what optuna does itself:
- the budget counts COMPLETED trials only; a failed trial is recorded with its reason and the
  search goes on, up to ``max_failures`` failures;
- two processes never overshoot the budget: a trial that finds the budget already taken by
  live trials is pruned before it trains ("over budget");
- each trial takes the lowest free budget slot, and slot k's parameters depend only on k (and,
  for TPE, the trials completed before it), never on which process ran it or whether an earlier
  process died: the re-run of a dead trial trains its values, so a resumed or multi-worker search
  equals an uninterrupted one (random sampler; TPE depends on completion order);
- a trial left RUNNING by a killed process is failed by optuna's heartbeat check and not counted.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from bench.keys import Outcome
from bench.protocol import BudgetSpec, SearchDimension

optuna.logging.set_verbosity(optuna.logging.ERROR)  # bench reports failures itself
LIVE = (TrialState.COMPLETE, TrialState.RUNNING)
#: TPE's random start-up trials: up to this many, trial k's values depend on k only
TPE_STARTUP_TRIALS = 5


class TrialFailed(RuntimeError):
    """Training in a trial failed (NaN loss, out of memory, an exception): record and go on."""


class MethodFailed(RuntimeError):
    """More than ``max_failures`` trials failed: the method is reported as failed."""


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose process stopped sending heartbeats (optuna marks this experimental,
    but it has been stable since 2.9), and trials whose process died before their first one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial_id in _never_beating(study):
        try:
            study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed (or finished) it first


def _never_beating(study: optuna.Study) -> list[int]:
    """RUNNING trials with no heartbeat row, started more than two grace periods ago.

    optuna's stale check skips trials that never sent a heartbeat, and the first one is sent
    only after the trial is created and sampled: a process killed in that window would leave a
    trial RUNNING for ever, blocking every other process. optuna has no public query for
    heartbeat rows, hence its RDB models here. Start times are the client clock's.
    """
    storage = getattr(study._storage, "_backend", study._storage)  # under optuna's cache
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.heartbeat_interval is None:
        return []
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    limit = timedelta(seconds=2 * (storage.grace_period or 2 * storage.heartbeat_interval))
    now = datetime.now()
    out = []
    with _create_scoped_session(storage.scoped_session) as session:
        running = (session.query(models.TrialModel)
                   .filter(models.TrialModel.state == TrialState.RUNNING)
                   .filter(models.TrialModel.study_id == study._study_id).all())
        for trial in running:
            started = trial.datetime_start
            if not trial.heartbeats and started is not None and now - started > limit:
                out.append(trial.trial_id)
    return out


SLOT = "slot"


#: user attribute naming the process that runs a trial (``host:pid``), for `optuna-dashboard`
#: and for tests that must stop the process inside a given trial
PROCESS = "process"


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def optimize_once(study: optuna.Study, trial_fn, catch: tuple[type[Exception], ...]) -> None:
    """``study.optimize`` for one trial, surviving a trial that another process declared dead
    meanwhile (a long pause, a slow disk): its result is dropped and the slot or job is run
    again, by whoever comes first. The trial records which process runs it."""
    def named_trial_fn(trial: optuna.Trial) -> float:
        trial.set_user_attr(PROCESS, process_name())
        return trial_fn(trial)

    try:
        study.optimize(named_trial_fn, n_trials=1, catch=catch)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    except ValueError as error:  # optuna's "Cannot tell a FAIL trial." after the above
        if "Cannot tell" not in str(error):
            raise


def assign_slot(study: optuna.Study, number: int, poll: float = 0.1) -> int:
    """The lowest budget slot that no live (complete or running) trial holds.

    A trial's slot decides its sampler seed, so the re-run of a dead trial (failed by
    heartbeat) takes the dead one's slot and trains the same values, whatever ran meanwhile.
    Two trials never take one slot: a trial waits for earlier RUNNING trials that have not
    recorded theirs yet (they do right after creation; a dead one is failed by ``fail_stale``).
    """
    while True:
        fail_stale(study)
        held, undecided = set(), False
        for t in study.get_trials(deepcopy=False, states=LIVE):
            if t.number == number:
                continue
            slot = t.user_attrs.get(SLOT)
            if slot is not None:
                held.add(slot)
            elif t.state == TrialState.RUNNING and t.number < number:
                undecided = True
        if not undecided:
            return next(k for k in itertools.count() if k not in held)
        time.sleep(poll)


def slot_of(study: optuna.Study, number: int) -> int | None:
    """The slot trial ``number`` recorded (None before it has one)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return trial.user_attrs.get(SLOT)


def failures_before(study: optuna.Study, number: int) -> int:
    """The method's own failures before trial ``number``: a retry after a failure draws new
    values instead of repeating the failed ones; trials failed by a stale heartbeat do not
    count (their slot is re-run with the same values)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if t.number < number and "failure" in t.user_attrs)


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
        return TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        slot = assign_slot(study, trial.number)
        # optuna offers no public way to write a trial's attributes from a sampler hook
        study._storage.set_trial_user_attr(trial._trial_id, SLOT, slot)
        failures = failures_before(study, trial.number)
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
    """One call's result: WORKED (a trial ran or was pruned), BLOCKED (the remaining slots
    are held by live trials of other processes) or DONE (with the outcome)."""

    state: Outcome
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
                objective: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]]
                ) -> SearchStep:
    """Do at most one trial of the search; never wait (the caller polls other work)."""
    study.sampler = SlotSeededSampler(budget.sampler, budget.seed)
    fail_stale(study)
    complete, failed, running = counts(study)
    if complete >= budget.trials:
        best = best_trial(study)
        return SearchStep(Outcome.DONE, SearchOutcome(best.params, float(best.value),
                                                complete, failed))
    if failed > budget.max_failures:
        raise MethodFailed(f"{failed} trials failed (max_failures {budget.max_failures}); "
                           f"last: {last_failure(study)}")
    if complete + running >= budget.trials:
        return SearchStep(Outcome.BLOCKED)
    optimize_once(study, budget_trial_fn(study, space, budget, objective), (TrialFailed,))
    return SearchStep(Outcome.WORKED)


def best_trial(study: optuna.Study) -> FrozenTrial:
    """Highest value; ties go to the lowest trial number (deterministic)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number))


def last_failure(study: optuna.Study) -> str:
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if "failure" in t.user_attrs]
    return failed[-1].user_attrs["failure"] if failed else "unknown"
