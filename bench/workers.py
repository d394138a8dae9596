"""Scaling out: `bench worker`, `bench launch` (Slurm via submitit), `bench status`, `bench rebuild`.

Nothing here schedules work: every process (a `bench run`, or workers on any machine) runs the
same loop against the same optuna storage, which hands out search trials and test jobs, fails
the trials of dead processes by heartbeat, and holds every result. So a worker is a `bench run`
that writes no table, summary or run file under results/ (only its jobs' saved test
embeddings), `status` only reads the storage, and `rebuild` writes the
results directory from the storage alone (bench.storage_views). This module holds their
command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _storage_url(args: argparse.Namespace, name: str) -> str:
    if args.storage:
        return args.storage
    from bench.safe_paths import default_storage_url, protocol_dir

    protocol_dir(args.results, name).mkdir(parents=True, exist_ok=True)  # confined
    return default_storage_url(args.results, name)


def worker_main(protocol: str, storage: str, results: str = "results", threads: int | None = None,
                grace: int = 30, progress: bool = False,
                ready: Callable[[], bool] | None = None) -> dict[str, str] | None:
    """One worker: do whatever work of ``protocol`` is left in ``storage``; return failures.

    ``ready``: called once everything is imported and validated, before the storage is opened;
    False ends the worker without work and returns None. `bench run -j` starts its helpers
    this way while it builds the inputs, then lets them go. A plain function, so submitit can
    run it on a Slurm node (or locally in tests)."""
    import torch
    from threadpoolctl import threadpool_limits

    from bench.plan import check_available, plan_protocol
    from bench.runner import ProtocolRun, RunOptions

    plan = plan_protocol(protocol)
    check_available(plan)
    pinned = plan.protocol.cpu_threads
    if pinned and threads and threads != pinned:
        from bench.errors import BenchError

        raise BenchError(f"the protocol pins cpu_threads: {pinned}; --threads {threads} would "
                         "change its numbers (float summation order)", field="--threads")
    threads = threads or pinned
    options = RunOptions(results_root=Path(results), storage=storage, progress=progress,
                         grace=grace, heartbeat=max(1, grace // 3), writes_results=False)
    run = ProtocolRun(plan, options)
    if threads:
        torch.set_num_threads(threads)
    if ready is not None and not ready():
        return None
    # --threads caps numpy's BLAS and OpenMP pools too: an idle OpenBLAS thread spin-waits and
    # takes CPU from the other workers (benchmarks/scaling.py measured 1.56x vs 1.81x)
    with threadpool_limits(limits=threads) if threads else contextlib.nullcontext():
        run.run()
    return run.failures()


def cmd_worker(args: argparse.Namespace) -> int:
    from bench.errors import BenchError
    from bench.local_jobs import HeldStart
    from bench.state import check_grace
    from bench.storage import check_storage_url

    gate = HeldStart() if args.start_on_stdin else None
    try:
        check_grace(getattr(args, "grace", None))
        check_storage_url(args.storage)
        from bench.plan import plan_protocol

        plan = plan_protocol(args.protocol)
        storage = _storage_url(args, plan.protocol.name)
        failures = worker_main(args.protocol, storage, args.results, args.threads, args.grace,
                               progress=not args.no_progress, ready=gate)
    except BenchError:
        if gate is not None and not gate.released:
            return 2  # a held helper stays silent: the run that started it reports the error
        raise
    if failures is None:
        print(f"bench worker: {plan.protocol.name}: not started (no 'go' on standard input)")
        return 0
    print(f"bench worker: {plan.protocol.name}: no work left in {storage}")
    for method, reason in failures.items():
        print(f"bench: method {method} failed: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_launch(args: argparse.Namespace) -> int:
    from bench.state import check_grace
    from bench.storage import check_storage_url

    check_grace(getattr(args, "grace", None))
    check_storage_url(args.storage)
    import submitit

    from bench.plan import plan_protocol

    plan = plan_protocol(args.protocol)
    name = plan.protocol.name
    storage = _storage_url(args, name)
    if args.slurm and storage.startswith("sqlite"):
        print("bench launch: warning: SQLite on a shared file system is fragile with many nodes; "
              "pass --storage postgresql://... for Slurm", file=sys.stderr)
    folder = Path(args.results).resolve() / name / "launch"
    if args.local:
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.time_min)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"timeout_min": args.time_min,
                                  "cpus_per_task": args.cpus_per_worker}
        if args.partition:
            params["slurm_partition"] = args.partition
        if args.gpus_per_worker:
            params["gpus_per_node"] = args.gpus_per_worker
        executor.update_parameters(**params)
    protocol = str(Path(args.protocol).resolve())
    results = str(Path(args.results).resolve())
    jobs = [executor.submit(worker_main, protocol, storage, results, args.threads, args.grace)
            for _ in range(args.workers)]
    print(f"bench launch: {len(jobs)} worker(s) for {name} on {storage}: "
          + ", ".join(str(j.job_id) for j in jobs))
    print(f"  logs: {folder}; progress: bench status {args.protocol} --storage {storage}")
    if not args.wait:
        return 0
    failures: dict[str, str] = {}
    for job in jobs:
        failures.update(job.result())
    print(f"bench launch: {len(jobs)} worker(s) finished")
    for method, reason in failures.items():
        print(f"bench: method {method} failed: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.state import check_grace
    from bench.storage import check_storage_url

    check_grace(getattr(args, "grace", None))
    check_storage_url(args.storage)
    from bench.plan import plan_protocol

    plan = plan_protocol(args.protocol)
    storage = _storage_url(args, plan.protocol.name)
    from bench.storage_views import progress_table

    rows = progress_table(plan, storage)
    print(f"{plan.protocol.name} in {storage}: search = completed trials of the budget "
          f"({plan.protocol.budget.trials}); test = (split, seed) jobs")
    print("| dataset | method | search done | running | failed | left | test done | running "
          "| failed | left |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['method']} | {r['search_done']} | {r['search_running']} | "
              f"{r['search_failed']} | {r['search_left']} | {r['test_done']} | "
              f"{r['test_running']} | {r['test_failed']} | {r['test_left']} |")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from bench.state import check_grace
    from bench.storage import check_storage_url

    check_grace(getattr(args, "grace", None))
    check_storage_url(args.storage)
    from bench.plan import plan_protocol

    plan = plan_protocol(args.protocol)
    storage = _storage_url(args, plan.protocol.name)
    from bench.storage_views import rebuild_results

    out = rebuild_results(plan, storage, Path(args.results))
    print(f"rebuilt {out}/ (runs/, results.csv, summary.md) from {storage}")
    return 0


def add_worker_parsers(sub) -> None:
    """`bench worker`, `bench launch`, `bench status`, `bench rebuild`."""
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("protocol", help="protocol YAML file")
        parser.add_argument("--storage", metavar="URL",
                            help="optuna storage shared by every process (default: sqlite file "
                            "RESULTS/<protocol>/study.db); for many machines "
                            "postgresql://user:password@host/db")
        parser.add_argument("--results", default="results", help="results root (default: "
                            "results)")

    worker = sub.add_parser(
        "worker", help="join a protocol's work through its storage (any number, any machine)",
        description="Do the protocol's search trials and test jobs that are left in the "
        "storage, alongside any other workers and `bench run` processes, then exit. Trials of a "
        "worker that dies are failed by heartbeat and re-run by another. Writes no table or "
        "run file under results/, only its jobs' saved test embeddings (a `bench run` or "
        "`bench rebuild` writes the tables).")
    common(worker)
    worker.add_argument("--threads", type=int, metavar="N",
                        help="torch / BLAS CPU threads for this worker (default: the protocol's "
                        "cpu_threads if it pins them, else torch's choice)")
    worker.add_argument("--grace", type=int, default=30, metavar="SECONDS",
                        help="heartbeat grace period before a silent trial is failed "
                        "(default: 30)")
    worker.add_argument("--no-progress", action="store_true", help="hide progress bars")
    worker.add_argument("--start-on-stdin", action="store_true",
                        help="load and validate everything, then wait for the line 'go' on "
                        "standard input before touching the storage; anything else (or its end) "
                        "ends the worker without work (how `bench run -j N` starts its helpers "
                        "while it builds the inputs)")
    worker.set_defaults(func=cmd_worker)

    launch = sub.add_parser(
        "launch", help="submit N workers (Slurm through submitit, or local processes)",
        description="Submit N `bench worker` jobs through submitit: to Slurm (--slurm) or as "
        "local processes (--local, for tests and single machines).")
    common(launch)
    where = launch.add_mutually_exclusive_group(required=True)
    where.add_argument("--slurm", action="store_true", help="submit to Slurm")
    where.add_argument("--local", action="store_true", help="run as local processes")
    launch.add_argument("--workers", type=int, default=2, metavar="N",
                        help="number of workers (default: 2)")
    launch.add_argument("--threads", type=int, metavar="N", help="torch threads per worker")
    launch.add_argument("--partition", help="Slurm partition")
    launch.add_argument("--time-min", type=int, default=600, help="time limit per worker, "
                        "minutes (default: 600)")
    launch.add_argument("--cpus-per-worker", type=int, default=4, help="Slurm CPUs per worker")
    launch.add_argument("--gpus-per-worker", type=int, default=0, help="Slurm GPUs per worker")
    launch.add_argument("--grace", type=int, default=30, metavar="SECONDS",
                        help="heartbeat grace period (default: 30)")
    launch.add_argument("--wait", action="store_true", help="wait until every worker ends")
    launch.set_defaults(func=cmd_launch)

    status = sub.add_parser("status", help="per-method progress of a protocol, from its storage",
                            description="Search trials and test jobs done / running / failed / "
                            "left of the budget, per dataset and method, read from the storage.")
    common(status)
    status.set_defaults(func=cmd_status)

    rebuild = sub.add_parser("rebuild", help="write results/<protocol>/ from the storage alone",
                             description="Rebuild run files, results.csv and summary.md from "
                             "the results stored in the optuna storage (e.g. after workers on "
                             "other machines, or a lost results folder). Never duplicates rows.")
    common(rebuild)
    rebuild.set_defaults(func=cmd_rebuild)


__all__ = ["add_worker_parsers", "worker_main"]
