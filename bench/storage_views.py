"""What the storage alone says about a protocol: `bench status`'s progress table and
`bench rebuild`'s results folder. Both first check that the storage's studies were made by
this protocol (bench.study_protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench import study_protocol
from bench.jobs import FAILURE, JOB, completed_results, job_counts
from bench.keys import JobKey, StudyKey, method_studies
from bench.plan import Plan, pick_device
from bench.results_writer import ResultsWriter
from bench.scheduler import MethodState
from bench.search import counts
from bench.splits.named import NamedSplit
from bench.storage import open_storage


def open_checked(plan: Plan, storage_url: str) -> Any:
    storage = open_storage(storage_url)
    study_protocol.check_storage(storage, plan)
    return storage


def _split_studies(storage, plan: Plan, pool: str, method: str
                   ) -> tuple[StudyKey | None, list[StudyKey]]:
    keys = method_studies(storage, plan.protocol.name, pool, method)
    search = [k for k in keys if k.phase == "search"]
    return (search[0] if search else None), [k for k in keys if k.phase == "test"]


def progress_table(plan: Plan, storage_url: str) -> list[dict[str, Any]]:
    """Per pool and method: search and test-job progress, read from the storage only."""
    storage = open_checked(plan, storage_url)
    p = plan.protocol
    rows = []
    for pool, _ in p.pools:
        for spec in p.methods:
            search, tests = _split_studies(storage, plan, pool, spec.name)
            row: dict[str, Any] = {"dataset": pool, "method": spec.name}
            budget = p.budget.trials if spec.search else 0
            if search is not None:
                study = optuna.load_study(study_name=str(search), storage=storage)
                complete, failed, running = counts(study)
                row.update(search_done=min(complete, budget), search_running=running,
                           search_failed=failed, search_left=max(0, budget - complete - running))
            else:
                row.update(search_done=0, search_running=0, search_failed=0, search_left=budget)
            if tests:
                study = optuna.load_study(study_name=str(tests[0]), storage=storage)
                jobs = [JobKey.parse(j) for j in study.user_attrs.get("jobs", [])]
                c = job_counts(study, jobs)
                row.update(test_done=c["done"], test_running=c["running"],
                           test_failed=c["failed"], test_left=c["left"])
            else:
                row.update(test_done=0, test_running=0, test_failed=0, test_left="?")
            rows.append(row)
    return rows


def _read_method(study: optuna.Study, state: MethodState, seen: dict[str, NamedSplit]
                 ) -> dict[str, dict[str, Any]]:
    """A test-job study's results; notes the chosen values, data kinds, splits and failure."""
    results = completed_results(study)
    for result in results.values():
        state.params = result["params"]
        state.data = result["rows"][0].get("data", "") if result["rows"] else ""
        for row in result["rows"][:1]:
            seen[row["split"]] = NamedSplit(row["split"], [], [], row["fid"],
                                            bool(row["is_default_split"]))
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if FAILURE in t.user_attrs]
    if failed:
        state.failure = f"{failed[0].user_attrs[JOB]}: {failed[0].user_attrs[FAILURE]}"
    return results


def rebuild_results(plan: Plan, storage_url: str, results_root: Path) -> Path:
    """Write results/<protocol>/ (run files, results.csv, summary.md) from the storage alone."""
    storage = open_checked(plan, storage_url)
    states: dict[tuple[str, str], MethodState] = {}
    writer = ResultsWriter(plan, results_root, device=str(pick_device(plan.protocol.device)),
                           states=states)
    writer.prepare_directory()
    writer.record_protocol()
    for pool, _ in plan.protocol.pools:
        seen: dict[str, NamedSplit] = {}
        for spec in plan.protocol.methods:
            state = states.setdefault((pool, spec.name), MethodState())
            _, tests = _split_studies(storage, plan, pool, spec.name)
            for key in tests:
                study = optuna.load_study(study_name=str(key), storage=storage)
                writer.write_run_files(pool, spec.name, _read_method(study, state, seen))
        writer.note_splits(pool, sorted(seen.values(),
                                        key=lambda s: (s.fid is None, s.fid or 0)))
    writer.write_outputs()
    return writer.dir
