"""Run a protocol: validate everything first (bench.plan), then for each dataset and method search
the hyperparameters on validation folds (fixed budget) and retrain the best ones for the test
phase (bench.scheduler, bench.units), writing the results from the storage
(bench.results_writer).

Resumable: trials live in the optuna storage, finished reproductions in run files; running the
same command again continues where it stopped. `bench worker` runs the same object without the
writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import study_protocol
from bench.local_jobs import (
    pin_process_threads,
    release_helpers,
    start_helpers,
    stop_helpers,
    threads_per_process,
)
from bench.plan import Plan, check_available, pick_device, plan_protocol
from bench.pool import DatasetContext, load_pool
from bench.protocol import DatasetSpec
from bench.results_writer import ResultsWriter
from bench.scheduler import Schedule, Scheduler
from bench.state import delete_protocol_studies
from bench.storage import open_storage


@dataclass
class RunOptions:
    results_root: Path = Path("results")
    storage: str | None = None
    fresh: bool = False
    progress: bool = True
    heartbeat: int = 10
    grace: int = 30
    poll: float = 1.0  # seconds between looks at the storage when others hold the work
    #: False for `bench worker`: do the shared work only, write nothing under results/
    writes_results: bool = True
    #: processes sharing the work (`bench run -j`): this one plus jobs-1 local helpers
    jobs: int = 1
    #: those helpers when the caller started them already, held (bench.local_jobs)
    helpers: list | None = None


class ProtocolRun:
    """One protocol's run over its pools and methods: a plan, a results writer (not for
    workers) and a scheduler on the storage."""

    def __init__(self, plan: Plan, options: RunOptions) -> None:
        self.plan, self.p, self.options = plan, plan.protocol, options
        self.device = pick_device(self.p.device)
        self.states: dict[tuple[str, Any], Any] = {}  # (pool, method) -> MethodState
        self.writer = ResultsWriter(plan, options.results_root, device=str(self.device),
                                    states=self.states)
        self.dir = self.writer.dir
        self.writes_results = options.writes_results
        self.scheduler: Scheduler | None = None

    def storage_url(self) -> str:
        return self.options.storage or self.writer.default_storage_url()

    def load(self, name: str, dspecs: list[DatasetSpec]) -> DatasetContext:
        return load_pool(self.plan, name, dspecs, results_dir=self.dir, device=self.device,
                         progress=self.options.progress)

    def open_storage(self) -> Any:
        """The storage, checked: damaged (exit 3), or holding studies of another version of
        this protocol (exit 2, unless --fresh deletes them first)."""
        storage = open_storage(self.storage_url(), heartbeat=self.options.heartbeat,
                               grace=self.options.grace)
        if self.options.fresh and self.options.storage and self.writes_results:
            deleted = delete_protocol_studies(storage, self.p.name)  # this protocol's only
            print(f"bench: --fresh: deleted {len(deleted)} studies of protocol {self.p.name} "
                  f"in the storage", flush=True)
        study_protocol.check_storage(storage, self.plan)
        schedule = Schedule(self.device, self.dir, progress=self.options.progress,
                            poll=self.options.poll)
        self.scheduler = Scheduler(self.plan, storage, schedule, states=self.states,
                                   on_finished=self.writer.method_finished
                                   if self.writes_results else None)
        return storage

    def run(self) -> Path:
        """Do this protocol's work, shared through the storage with any other `bench run` or
        `bench worker` process, until every method is done or failed; then (not for workers)
        write the results from the storage."""
        if self.writes_results:
            self.writer.prepare_directory(fresh=self.options.fresh)
        storage = None
        if self.options.storage or self.writer.has_default_storage():
            # an existing storage is checked before any work (a damaged one: exit 3); a new
            # default one is created only once the inputs proved loadable
            storage = self.open_storage()
        helpers: list = []
        released = False
        try:
            helpers = self.start_helpers()
            for name, dspecs in self.p.pools:
                ctx = self.load(name, dspecs)
                if self.writes_results:
                    self.writer.record_protocol()
                if storage is None:
                    storage = self.open_storage()
                if not released:
                    self.release_helpers(helpers)
                    released = True
                self.writer.note_splits(name, ctx.splits)
                self.scheduler.work_through(ctx)
        finally:  # helpers never released hold no work: end them at once
            stop_helpers(helpers, wait=2 * self.options.grace if released else 0)
        if self.writes_results and self.p.split.kind == "fid_sequence":
            self.writer.write_ood_figures()
        return self.writer.summary_path

    def start_helpers(self) -> list:
        """`-j N`: N-1 local `bench worker` processes on this run's storage (bench.local_jobs),
        held until ``release_helpers``: the caller's (`bench run` starts them first), or
        started now."""
        if self.options.helpers is not None:
            return self.options.helpers
        if self.options.jobs <= 1 or not self.writes_results:
            return []
        threads = threads_per_process(self.options.jobs, self.p.cpu_threads)
        return start_helpers(self.plan.source, self.storage_url(),
                             self.options.results_root, self.options.jobs - 1, threads)

    def release_helpers(self, helpers: list) -> None:
        """Once the first dataset's inputs are cached and the storage exists: pin this
        process's threads (the protocol's cpu_threads, or the cores split between the
        processes; the build before used them all) and let the helpers work."""
        pin_process_threads(self.options.jobs, self.p.cpu_threads)
        release_helpers(helpers)

    def failures(self) -> dict[str, str]:
        """``pool/method`` -> reason, for the methods that failed."""
        return {f"{d}/{m}": s.failure for (d, m), s in self.states.items() if s.failure}


def run_protocol(path: str | Path, options: RunOptions | None = None
                 ) -> tuple[Path, dict[str, str]]:
    """Validate, then run; returns the summary path and the failed methods with reasons."""
    options = options or RunOptions()
    plan = plan_protocol(path)
    check_available(plan)
    run = ProtocolRun(plan, options)
    summary = run.run()
    return summary, run.failures()
