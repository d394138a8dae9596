"""The test phase as a queue of jobs in the optuna storage, shared by any number of processes.

One study per (protocol, pool, method, chosen values) holds one trial per attempt at a job
(a (split, seed) reproduction). optuna supplies the parts a queue needs: the storage shared by
every process (SQLite on one machine, PostgreSQL for many), heartbeats that fail the trials of a
dead process so their job is taken again, and atomic trial creation. What is added here:

- claiming: a trial names its job in a user attribute; if an earlier live trial (lower number)
  or a completed one claims the same job, this one is pruned as a duplicate, so a job runs once
  even when two processes pick it at the same moment;
- results live in the completed trial (``result`` attribute: rows + history), so the results
  directory can always be rebuilt from the storage alone and a job is never counted twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.keys import JobKey, Outcome
from bench.search import MethodFailed, fail_stale, optimize_once

JOB = "job"
RESULT = "result"
FAILURE = "failure"


class JobFailed(RuntimeError):
    """A reproduction diverged or crashed: recorded, and the method is reported as failed."""


def job_counts(study: optuna.Study, jobs: list[JobKey]) -> dict[str, int]:
    """done / running / failed / left of ``jobs`` (what `bench status` shows)."""
    names = {str(j) for j in jobs}
    done, running, failed = set(), set(), set()
    for t in study.get_trials(deepcopy=False):
        job = t.user_attrs.get(JOB)
        if job is None:
            continue
        if t.state == TrialState.COMPLETE:
            done.add(job)
        elif t.state == TrialState.RUNNING:
            running.add(job)
        elif t.state == TrialState.FAIL and FAILURE in t.user_attrs:
            failed.add(job)
    running -= done
    failed -= done | running
    return {"done": len(done & names), "running": len(running & names),
            "failed": len(failed & names), "left": len(names - done - running - failed)}


def completed_results(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """job -> the result document of its (first) completed trial."""
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.number):
        job = t.user_attrs.get(JOB)
        if job is not None and job not in out and RESULT in t.user_attrs:
            out[job] = json.loads(t.user_attrs[RESULT])
    return out


def _claim_is_mine(study: optuna.Study, trial: optuna.Trial, job: str, poll: float) -> bool:
    """False when a completed trial or an earlier live one holds ``job``.

    An earlier RUNNING trial that has not named its job yet may be about to name this one:
    wait for it (it names its job right after creation; a dead one goes stale)."""
    while True:
        fail_stale(study)
        undecided = False
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                           TrialState.RUNNING)):
            if t.number == trial.number:
                continue
            other = t.user_attrs.get(JOB)
            if other == job and (t.state == TrialState.COMPLETE or t.number < trial.number):
                return False
            if other is None and t.state == TrialState.RUNNING and t.number < trial.number:
                undecided = True
        if not undecided:
            return True
        time.sleep(poll)


def job_step(study: optuna.Study, jobs: list[JobKey],
             run_job: Callable[[JobKey], tuple[float, dict[str, Any]]], *,
             order: Callable[[list[str]], list[str]] | None = None,
             poll: float = 0.2) -> Outcome:
    """Run at most one unclaimed job (the first of ``order(unclaimed)``, default the jobs'
    order); WORKED, BLOCKED (the rest is running elsewhere) or DONE. Raises MethodFailed when
    any job failed (in any process)."""
    fail_stale(study)
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.FAIL and FAILURE in t.user_attrs:
            raise MethodFailed(f"{t.user_attrs[JOB]}: {t.user_attrs[FAILURE]}")
    done = {t.user_attrs.get(JOB) for t in trials if t.state == TrialState.COMPLETE}
    running = {t.user_attrs.get(JOB) for t in trials if t.state == TrialState.RUNNING}
    names = [str(j) for j in jobs]
    todo = [j for j in names if j not in done and j not in running]
    if not todo:
        return Outcome.DONE if all(j in done for j in names) else Outcome.BLOCKED
    job = (order(todo) if order is not None else todo)[0]

    def trial_fn(trial: optuna.Trial) -> float:
        trial.set_user_attr(JOB, job)
        if not _claim_is_mine(study, trial, job, poll):
            trial.set_user_attr("pruned", "duplicate claim: another process took this job")
            raise optuna.TrialPruned()
        try:
            value, result = run_job(JobKey.parse(job))
        except JobFailed as error:
            trial.set_user_attr(FAILURE, str(error))
            raise
        trial.set_user_attr(RESULT, json.dumps(result, sort_keys=True))
        return value

    optimize_once(study, trial_fn, (JobFailed,))
    return Outcome.WORKED
