"""Throughput of 1 vs 2 `bench worker --threads 1` processes sharing one SQLite storage.

The workload is a reduced copy of ``protocols/quick.yaml`` (same dataset, model, training and
methods; a smaller search budget and fewer reproductions, printed at the start), written to a
temporary folder. The feature cache is warmed once first (not timed). Then, per round, on a
fresh storage each:

- (a) one ``bench worker --threads 1`` does all the work;
- (b) two ``bench worker --threads 1`` processes, started together, share it.

Wall time runs from spawning the process(es) to the last exit, so it includes each process's
start-up (imports, dataset and cached features loaded per worker). Work units = completed search
trials + completed test jobs, read from the storage; both configurations must do the same work
(same trials, values and jobs), which is checked. Rounds alternate the order (a b, b a, ...).
Also printed, from the trials' timestamps: start-up (spawn -> first unit started), the mean
duration of a unit, and how busy the workers were between the first start and the last end;
and from the kernel (wait4): the CPU time the workers used, and so how many cores they got.

Target: (b)/(a) units per minute >= 1.7 on a 2-core machine.

Usage: python benchmarks/scaling.py [--rounds 3] [--trials 2] [--reproductions 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measurement:
    workers: int
    wall: float
    units: int
    failed: int
    startup: float  # spawn -> first unit started
    tail: float  # last unit ended -> last process exited
    unit_mean: float  # mean duration of a completed unit
    busy: float  # sum of unit durations / (workers x (last end - first start))
    cpu: float  # CPU seconds (user + system) of the worker processes, start-up included
    others: float  # CPU seconds used meanwhile by every other process on the machine
    work: frozenset  # (study, params, value) of every completed unit

    @property
    def per_minute(self) -> float:
        return 60.0 * self.units / self.wall


def reduced_protocol(source: Path, out: Path, trials: int, reproductions: int) -> list[str]:
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    changes = []
    if data["budget"]["trials"] != trials:
        changes.append(f"budget.trials {data['budget']['trials']} -> {trials}")
        data["budget"]["trials"] = trials
    if data.get("reproductions", 1) != reproductions:
        changes.append(f"reproductions {data.get('reproductions', 1)} -> {reproductions}")
        data["reproductions"] = reproductions
    data["name"] = f"{data['name']}_scaling"
    changes.append(f"name {data['name']}")
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return changes


def warm_cache(protocol: Path) -> float:
    """Load every dataset pool and compute (or read) its cached features, as a worker does."""
    from bench.plan import check_available, plan_protocol
    from bench.runner import ProtocolRun, RunOptions

    started = time.perf_counter()
    plan = plan_protocol(protocol)
    check_available(plan)
    run = ProtocolRun(plan, RunOptions(results_root=protocol.parent / "warm", progress=False,
                                       writes_results=False))
    for name, dspecs in plan.protocol.pools:
        run.load(name, dspecs)
    return time.perf_counter() - started


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent outside idle/iowait since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure(protocol: Path, workers: int, folder: Path, env_extra: dict[str, str]
            ) -> Measurement:
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'study.db'}"
    command = [sys.executable, "-m", "bench", "worker", str(protocol), "--storage", url,
               "--results", str(folder / "results"), "--threads", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    machine_busy = busy_cpu_seconds()
    spawned = dt.datetime.now()
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(folder / f"worker{i}.err", "w"))  # noqa: SIM115
             for i in range(workers)]
    cpu = 0.0
    codes = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        codes.append(p.returncode)
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - started
    others = busy_cpu_seconds() - machine_busy - cpu
    exited = dt.datetime.now()
    if any(codes):
        for i in range(workers):
            tail = (folder / f"worker{i}.err").read_text(errors="replace").splitlines()[-15:]
            print(f"worker {i} (exit {codes[i]}) stderr, last lines:", *tail, sep="\n  ")
        kept = Path(tempfile.mkdtemp(prefix="bench-scaling-failed-"))
        shutil.copytree(folder, kept / folder.name)
        raise SystemExit(f"worker exit codes {codes}; storage and logs kept in {kept}")
    done, failed = [], 0
    work = set()
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE:
                done.append(t)
                key = t.user_attrs.get("job") or json.dumps(t.params, sort_keys=True)
                work.add((summary.study_name, key, round(float(t.value), 9)))
            elif t.state == TrialState.FAIL:
                failed += 1
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    span = (last - first).total_seconds()
    return Measurement(workers, wall, len(done), failed, (first - spawned).total_seconds(),
                       (exited - last).total_seconds(), statistics.mean(durations),
                       sum(durations) / (workers * span), cpu, others,
                       frozenset(work))


def describe(m: Measurement) -> str:
    return (f"{m.workers} worker(s): wall {m.wall:6.1f} s, {m.units} units"
            f"{f' (+{m.failed} failed)' if m.failed else ''}, {m.per_minute:5.2f} units/min; "
            f"start-up {m.startup:4.1f} s, unit mean {m.unit_mean:4.2f} s, busy {m.busy:.0%}, "
            f"tail {m.tail:3.1f} s; CPU {m.cpu:5.1f} s = {m.cpu / m.wall:.2f} cores "
            f"({m.cpu / m.units:.2f} s/unit), other processes {m.others / m.wall:.2f} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default=str(ROOT / "protocols" / "quick.yaml"))
    parser.add_argument("--rounds", type=int, default=1, help="a/b pairs, order alternating")
    parser.add_argument("--trials", type=int, default=2, help="search budget of the copy")
    parser.add_argument("--reproductions", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="diagnostics only: extra environment for the workers, e.g. "
                        "OPENBLAS_NUM_THREADS=1 (printed in the header)")
    args = parser.parse_args()

    import torch

    env_extra = dict(item.split("=", 1) for item in args.env)

    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        tmp_path = Path(tmp)
        protocol = tmp_path / "protocol.yaml"
        changes = reduced_protocol(Path(args.protocol), protocol, args.trials, args.reproductions)
        data = yaml.safe_load(protocol.read_text(encoding="utf-8"))
        methods = len(data["methods"])
        units = sum((args.trials if m.get("search") else 0) + data["reproductions"]
                    for m in data["methods"])  # one test job per (split, seed); one split
        print(f"# protocol: copy of {args.protocol}, reduced: {'; '.join(changes)} "
              f"(dataset, model, train, methods unchanged)")
        print(f"# work: {methods} methods x ({args.trials} search trials + "
              f"{data['reproductions']} test job(s)) = {units} units; each worker "
              f"`bench worker --threads 1`, one SQLite storage per measurement"
              + (f"; worker environment + {args.env}" if args.env else ""))
        print(f"# {platform.machine()}, {os.cpu_count()} CPUs, python "
              f"{platform.python_version()}, torch {torch.__version__}, optuna "
              f"{optuna.__version__}; BENCH_CACHE={os.environ.get('BENCH_CACHE', '(default)')}")
        print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"# feature cache warmed in {warm_cache(protocol):.1f} s (not timed)", flush=True)
        pairs = []
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            got = {w: measure(protocol, w, tmp_path / f"round{r}-{w}", env_extra)
                   for w in order}
            a, b = got[1], got[2]
            same = "same work" if a.work == b.work else "DIFFERENT work"
            print(f"round {r + 1} ({'a b' if order == (1, 2) else 'b a'}); load "
                  f"{os.getloadavg()[0]:.2f}; {same}; ratio (b)/(a) "
                  f"{b.per_minute / a.per_minute:.2f}")
            print(f"  (a) {describe(a)}")
            print(f"  (b) {describe(b)}", flush=True)
            pairs.append((a, b))
        ratios = [b.per_minute / a.per_minute for a, b in pairs]
        med_a = statistics.median(a.per_minute for a, _ in pairs)
        med_b = statistics.median(b.per_minute for _, b in pairs)
        print(f"median over {len(pairs)} round(s): (a) {med_a:.2f} units/min, (b) {med_b:.2f} "
              f"units/min; ratio (b)/(a) median {statistics.median(ratios):.2f} "
              f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 1.7)")
        print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
