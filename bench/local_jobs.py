"""`bench run -j N`: local helper processes that share the run's work through its storage.

Why processes: one run process keeps about 1.25 of 2 cores busy on small models (the head's
matrix products are too small to use both cores; see benchmarks/scaling.py), so a second
process doing other trials is the only way to fill the machine. The helpers are plain
`bench worker` processes on the run's own storage, started first and held until the first
dataset's inputs are built and cached (they import meanwhile, then load the inputs, not build
them again); the storage hands out trials and
test jobs, and the work is the same as in one process: trial k's parameters depend on k
only while the sampler is in its random start-up phase (``budget.trials`` up to TPE's 5 start-up
trials), and each training run is seeded by its own seed. A protocol that pins ``cpu_threads`` computes
alike in every process, so `-j` gives the same values as one process and is its default; without
it each process has fewer torch threads than one alone, values agree only up to float summation
order, and `-j` is opt-in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: `-j auto` runs helpers only for protocols with at least this many training runs: below it,
#: a helper's start-up (imports, dataset and feature cache loading: ~6 s) is not repaid
AUTO_MIN_RUNS = 16


def auto_jobs(training_runs: int, budget, cpu_threads: int | None = None) -> int:
    """Processes for `-j auto`: one per core, or per ``cpu_threads`` cores when the protocol
    pins them (at most 4), for runs large enough to repay a helper's start-up; 1 otherwise,
    and 1 when TPE's model phase makes trial values depend on the order trials complete in
    (``budget.trials`` above TPE's start-up trials)."""
    from bench.search import TPE_STARTUP_TRIALS

    cores = os.cpu_count() or 1
    order_dependent = budget.sampler == "tpe" and budget.trials > TPE_STARTUP_TRIALS
    if training_runs < AUTO_MIN_RUNS or order_dependent:
        return 1
    return max(1, min(4, cores // (cpu_threads or 1)))


def training_runs(protocol) -> int:
    """Training runs of the default split (search trials x folds + reproductions x folds)."""
    per_method = [((protocol.budget.trials if m.search else 0) + protocol.reproductions)
                  * protocol.folds for m in protocol.methods]
    return sum(per_method) * len(protocol.pools)


def resolve_jobs(jobs: str | int | None, protocol) -> int:
    """``-j``: an int or ``auto``; None means ``$BENCH_JOBS`` if set, else ``auto`` for a
    protocol that pins ``cpu_threads`` and 1 for one that does not.

    Why the default depends on ``cpu_threads``: a process's thread count changes float summation
    order (on quick, unpinned, `-j 2` matched `-j 1` only to ~5e-4 in NMI), so without pinned
    threads more processes would change the numbers; with them every process computes alike.
    """
    if jobs is None:
        jobs = os.environ.get("BENCH_JOBS") or ("auto" if protocol.cpu_threads else "1")
    if jobs == "auto":
        return auto_jobs(training_runs(protocol), protocol.budget, protocol.cpu_threads)
    try:
        value = int(jobs)
    except ValueError:
        value = 0
    if value < 1:
        from bench.errors import BenchError

        raise BenchError(f"must be a positive integer or 'auto', got {jobs!r}", field="-j/--jobs")
    return value


def threads_per_process(jobs: int, cpu_threads: int | None = None) -> int:
    """Torch / BLAS threads each of ``jobs`` processes gets: the protocol's ``cpu_threads`` when
    it pins them, else the machine's cores split between the processes."""
    return cpu_threads or max(1, (os.cpu_count() or 1) // jobs)


def pin_process_threads(jobs: int, cpu_threads: int | None) -> int | None:
    """Set this process's torch and BLAS/OpenMP threads for `bench run -j jobs`: the protocol's
    ``cpu_threads`` when pinned, else the cores split between the processes; one unpinned
    process keeps torch's choice (None). Returns the count set."""
    if jobs <= 1 and not cpu_threads:
        return None
    import torch
    from threadpoolctl import threadpool_limits

    threads = threads_per_process(jobs, cpu_threads)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    return threads


GO = "go"


def start_held_helpers(protocol_path: str | Path, jobs_option: str | int | None,
                       results_root: Path, storage: str | None) -> tuple[int, list]:
    """`bench run -j`: the process count and its N-1 held helpers, started from the protocol's
    parsed fields alone (no torch import yet). A protocol that does not parse raises here,
    before any helper starts."""
    from bench.protocol import load_protocol
    from bench.safe_paths import default_storage_url

    protocol, _ = load_protocol(protocol_path)
    jobs = resolve_jobs(jobs_option, protocol)
    if jobs <= 1:
        return jobs, []
    url = storage or default_storage_url(results_root, protocol.name)
    threads = threads_per_process(jobs, protocol.cpu_threads)
    return jobs, start_helpers(protocol_path, url, results_root, jobs - 1, threads)


def start_helpers(protocol: str | Path, storage: str, results: Path, count: int,
                  threads: int) -> list[subprocess.Popen]:
    """``count`` `bench worker` processes on ``storage``, held before any work until
    ``release_helpers``: started first, they import and validate while this process builds the
    dataset and features (a helper's start-up, ~6 s of a cold 3-minute run, overlaps the
    build), and open the storage and the cached inputs only once both exist. Their progress
    bars are off and their errors reach this terminal."""
    command = [sys.executable, "-m", "bench", "worker", str(protocol), "--storage", storage,
               "--results", str(results), "--threads", str(threads), "--no-progress",
               "--start-on-stdin"]
    return [subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.PIPE,
                             text=True) for _ in range(count)]


def release_helpers(helpers: list[subprocess.Popen]) -> None:
    """Let held helpers start working (the storage and the first pool's inputs exist)."""
    for proc in helpers:
        _close_stdin(proc, GO + "\n")


class HeldStart:
    """In a held helper (`bench worker --start-on-stdin`): waits for the parent's go.

    Until released, the helper is silent: any error it meets (a protocol the parent will
    refuse with the same one line) is the parent's to report."""

    def __init__(self) -> None:
        self.released = False

    def __call__(self) -> bool:
        """True once the parent says go; False if it ended first (stdin closed)."""
        self.released = sys.stdin.readline().strip() == GO
        return self.released


def _close_stdin(proc: subprocess.Popen, line: str = "") -> None:
    if proc.stdin is None or proc.stdin.closed:
        return
    try:
        if line:
            proc.stdin.write(line)
        proc.stdin.close()
    except (BrokenPipeError, OSError):  # the helper already ended; stop_helpers reports nothing
        pass


def stop_helpers(helpers: list[subprocess.Popen], *, wait: float) -> None:
    """Wait up to ``wait`` s for helpers to finish (they exit when no work is left; a helper
    never released ends at once), then end the ones still running (their unfinished trials are
    failed by heartbeat and re-run)."""
    for proc in helpers:
        _close_stdin(proc)
    for proc in helpers:
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
