"""Which unit next: for each method of a pool, its next search trial or test job, decided from
the storage alone, so any number of `bench run` and `bench worker` processes share the work.

Round-robin over the methods, one unit at a time, so processes spread over every method
instead of queueing behind one. Every step re-checks that the study was made by this protocol
(bench.study_protocol). The scheduler writes nothing under results/: when a method is finished
it calls ``on_finished`` (bench.runner hands it to the results writer; a worker passes none).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm.auto import tqdm

from bench import plugins, study_protocol
from bench.jobs import job_step
from bench.keys import JobKey, Outcome, StudyKey
from bench.methods import method_class
from bench.plan import Plan
from bench.pool import DatasetContext
from bench.protocol import MethodSpec
from bench.search import MethodFailed, search_step
from bench.trial_models import TrialModels
from bench.units import Units


@dataclass
class MethodState:
    params: dict[str, Any] | None = None  # chosen values, once the search is done
    failure: str | None = None
    data: str = ""  # the data kinds the method received in this setting


@dataclass
class MethodWork:
    """A method's progress in this process: its search, then its queue of test jobs."""

    spec: MethodSpec
    state: MethodState
    units: Units
    study: optuna.Study | None = None  # the test-job study, once the values are chosen
    finished: bool = False


@dataclass
class Schedule:
    """How a process takes part: its device and output folder for saved test embeddings."""

    device: torch.device
    results_dir: Path
    progress: bool = True
    poll: float = 1.0  # seconds between looks at the storage when others hold the work


class Scheduler:
    """Works through one pool's methods against ``storage``; ``states`` holds each
    (pool, method)'s chosen values, failure and data kinds."""

    def __init__(self, plan: Plan, storage: Any, schedule: Schedule, *,
                 states: dict[tuple[str, str], MethodState],
                 on_finished: Callable[[DatasetContext, MethodSpec, optuna.Study | None,
                                        MethodState], None] | None = None) -> None:
        self.plan, self.p, self.storage, self.schedule = plan, plan.protocol, storage, schedule
        self.on_finished = on_finished
        self.states = states
        self.trial_models = TrialModels()  # shared by this process's methods (one memory cap)

    def work_through(self, ctx: DatasetContext) -> None:
        """Step every method of the pool until each is done or failed."""
        work = [self._method_work(ctx, spec) for spec in self.p.methods]
        bar = tqdm(total=len(work), desc=f"{self.p.name} {ctx.name}: methods done",
                   disable=not self.schedule.progress, dynamic_ncols=True)
        while True:
            pending = [w for w in work if not w.finished]
            if not pending:
                break
            progressed = False
            for w in pending:
                try:
                    outcome = self.advance(ctx, w)
                except MethodFailed as error:
                    w.state.failure, outcome = str(error), Outcome.FAILED
                    tqdm.write(f"bench: {self.p.name}: {ctx.name}/{w.spec.name} failed: {error}")
                if outcome.finished:
                    w.finished = True
                    self.trial_models.drop(w.units.key)
                    bar.update()
                    if self.on_finished is not None:
                        self.on_finished(ctx, w.spec, w.study, w.state)
                progressed |= outcome != Outcome.BLOCKED
            if not progressed:
                time.sleep(self.schedule.poll)
        bar.close()

    def _method_work(self, ctx: DatasetContext, spec: MethodSpec) -> MethodWork:
        state = self.states.setdefault((ctx.name, spec.name), MethodState())
        consumed = method_class(spec.method).consumed(ctx.layout.kinds)
        if ctx.inputs.frozen:  # cached features: no image to render a camera view from
            consumed = consumed - {"camera_views"}
        state.data = ctx.layout.describe_kinds(consumed)
        units = Units(self.plan, ctx, spec, device=self.schedule.device,
                      results_dir=self.schedule.results_dir, progress=self.schedule.progress,
                      trial_models=self.trial_models)
        return MethodWork(spec, state, units)

    def search_key(self, ctx: DatasetContext, spec: MethodSpec) -> StudyKey:
        return StudyKey(self.p.name, ctx.name, spec.name, ctx.default.id)

    def jobs(self, ctx: DatasetContext) -> list[JobKey]:
        """The test phase's jobs: one per split and reproduction seed."""
        return [JobKey(split.id, seed) for split in ctx.splits for seed in self.p.seeds]

    def advance(self, ctx: DatasetContext, w: MethodWork) -> Outcome:
        """One step of one method: a search trial until the values are chosen, then a job."""
        spec = w.spec
        if w.state.params is None:
            if not spec.search or self.p.budget.trials == 0:
                w.state.params = {}
            else:
                study = self._open(self.search_key(ctx, spec), ctx, spec, "search", {
                    "searched": {k: v.model_dump(exclude_none=True)
                                 for k, v in spec.search.items()},
                    "budget": f"{self.p.budget.trials} completed trials, {self.p.budget.sampler}"
                              f" seed {self.p.budget.seed}, max_failures "
                              f"{self.p.budget.max_failures}"})
                step = search_step(study, spec.search, self.p.budget, w.units.objective)
                if step.state != Outcome.DONE:
                    return step.state
                w.state.params = step.outcome.best_params
        jobs = self.jobs(ctx)
        if w.study is None:
            key = self.search_key(ctx, spec).test_study(w.state.params)
            w.study = self._open(key, ctx, spec, "test", {"chosen": w.state.params})
            if "jobs" not in w.study.user_attrs:
                w.study.set_user_attr("jobs", [str(j) for j in jobs])  # for `bench status`
        else:
            study_protocol.stamp(w.study, self.plan)  # checked on every step
        values = w.state.params
        return job_step(w.study, jobs, lambda job: w.units.run_job(values, job),
                        order=lambda todo: w.units.job_order(values, todo))

    def _open(self, key: StudyKey, ctx: DatasetContext, spec: MethodSpec, phase: str,
              details: dict[str, Any]) -> optuna.Study:
        """The study of ``key``, created if new; stamped with (or checked against) this
        protocol's hash, and described for optuna-dashboard."""
        from bench.dashboard import describe_study

        study = optuna.create_study(storage=self.storage, study_name=str(key),
                                    direction="maximize", load_if_exists=True)
        study_protocol.stamp(study, self.plan)
        describe_study(study, phase=phase, protocol=self.p.name, dataset=ctx.name,
                       method=spec.name, implementation=spec.method, split=ctx.default.id,
                       metric=self.p.evaluation.primary, details=details)
        plugins.check_study(study, plugins.signature({spec.name: self.plan.plugins.get(
            spec.name, {})}), source=self.plan.source)
        return study
