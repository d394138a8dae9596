"""Scaling out: `bench launch --local` (submitit), `bench status`, `bench rebuild`, and a
`bench worker` sharing one SQLite storage with a `bench run`.

Every test compares against one reference: a plain one-process `bench run` of the same tiny
protocol (random sampler, 2 methods, 2 trials each, 1 reproduction).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import TINY_PROTOCOL
from optuna.trial import TrialState

from bench.cli import main
from bench.jobs import FAILURE, JOB, JobFailed
from bench.search import TrialFailed
from bench.units import Units

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
     "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}},
    {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"},
     "search": {"loss_optimizer.lr": {"type": "log_float", "low": 0.003, "high": 0.3}}},
]
BUDGET = 2
CHANGES = {"methods": METHODS, "reproductions": 1,
           "budget": {"trials": BUDGET, "sampler": "random", "seed": 0, "max_failures": 3},
           "train": {"iterations": 20, "batch_size": 32, "m_per_class": 4, "validate_every": 10,
                     "patience": 3}}
COLUMNS = ["search_done", "search_running", "search_failed", "search_left",
           "test_done", "test_running", "test_failed", "test_left"]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data.update(CHANGES)
    path = tmp_path_factory.mktemp("protocol") / "protocol.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(protocol: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/tiny/ of a one-process `bench run` (also warms the feature cache)."""
    root = tmp_path_factory.mktemp("reference")
    assert main(["run", str(protocol), "--results", str(root), "--no-progress"]) == 0
    return root / "tiny"


def status_table(protocol: Path, results: Path, capsys) -> dict[str, dict[str, str]]:
    """`bench status` parsed: method -> column -> cell text."""
    capsys.readouterr()
    assert main(["status", str(protocol), "--results", str(results)]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] == "glyphs":
            rows[cells[1]] = dict(zip(COLUMNS, cells[2:], strict=True))
    return rows


def run_files(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text(encoding="utf-8")
            for p in sorted((directory / "runs").glob("**/*.json"))}


def studies(db: Path) -> dict[str, optuna.Study]:
    url = f"sqlite:///{db}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url)
            for s in optuna.get_all_study_summaries(url)}


def assert_each_unit_once(db: Path) -> None:
    """Every search has exactly the budget of COMPLETE trials, every job one COMPLETE trial;
    nothing else but pruned (never trained) trials."""
    found = studies(db)
    for method in METHODS:
        name = method["name"]
        search = found[f"tiny:glyphs:{name}:standard"]
        states = [t.state for t in search.get_trials(deepcopy=False)]
        assert states.count(TrialState.COMPLETE) == BUDGET, (name, states)
        assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, (name, states)
        tests = [s for n, s in found.items() if n.startswith(f"tiny:glyphs:{name}:standard:test:")]
        assert len(tests) == 1, (name, list(found))
        jobs = tests[0].user_attrs["jobs"]
        assert jobs == ["standard/seed0"]
        complete = [t.user_attrs[JOB] for t in tests[0].get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))]
        assert sorted(complete) == sorted(jobs), (name, complete)
        others = {t.state for t in tests[0].get_trials(deepcopy=False)} - {TrialState.COMPLETE}
        assert others <= {TrialState.PRUNED}, (name, others)


def test_launch_local_two_workers_then_status_and_rebuild(protocol: Path, reference: Path,
                                                          tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    code = main(["launch", str(protocol), "--results", str(results), "--local", "--workers", "2",
                 "--wait", "--threads", "1", "--grace", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 worker(s) finished" in out
    logs = results / "tiny" / "launch"
    assert len(list(logs.glob("*_result.pkl"))) == 2, sorted(p.name for p in logs.iterdir())
    assert not (results / "tiny" / "results.csv").exists(), "workers write no tables"

    table = status_table(protocol, results, capsys)
    assert set(table) == {m["name"] for m in METHODS}
    for method, row in table.items():
        assert row == {"search_done": str(BUDGET), "search_running": "0", "search_failed": "0",
                       "search_left": "0", "test_done": "1", "test_running": "0",
                       "test_failed": "0", "test_left": "0"}, method
    assert_each_unit_once(results / "tiny" / "study.db")

    assert main(["rebuild", str(protocol), "--results", str(results)]) == 0
    rebuilt = results / "tiny"
    assert (rebuilt / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert run_files(rebuilt) == run_files(reference)
    assert (rebuilt / "summary.md").read_text() == (reference / "summary.md").read_text()


def test_rebuild_from_storage_alone_is_identical_and_idempotent(protocol: Path, reference: Path,
                                                                tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "tiny").mkdir(parents=True)
    shutil.copy(reference / "study.db", results / "tiny" / "study.db")
    assert sorted(p.name for p in (results / "tiny").iterdir()) == ["study.db"]
    for _ in range(2):
        assert main(["rebuild", str(protocol), "--results", str(results)]) == 0
        out = results / "tiny"
        assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
        assert run_files(out) == run_files(reference)
        assert (out / "summary.md").read_text() == (reference / "summary.md").read_text()
        assert (out / "protocol.yaml").read_text() == protocol.read_text()
    frame = pd.read_csv(results / "tiny" / "results.csv")
    assert len(frame) == len(frame.drop_duplicates(["method", "seed", "model", "metric"]))
    # A run resumed on the rebuilt folder accepts it (same protocol) and trains nothing.
    started = time.perf_counter()
    assert main(["run", str(protocol), "--results", str(results), "--no-progress"]) == 0
    assert time.perf_counter() - started < 30
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


# -- a half-done storage --------------------------------------------------------------------
# Units in round-robin order (contrastive = A, proxy_anchor = B): A-t0, B-t0, A-t1, B-t1,
# A-job0, B-t2, ... Scripted: B-t0 fails (TrialFailed), A-job0 fails (JobFailed), B-t2 is
# interrupted (Ctrl-C: its trial becomes FAIL without a reason, i.e. not a failure of the
# method). Then, as other live processes would, a RUNNING trial is added to B's search and
# one to A's job queue.
SCRIPT = {2: TrialFailed, 5: JobFailed, 6: KeyboardInterrupt}


@pytest.fixture(scope="module")
def half_done(protocol: Path, tmp_path_factory: pytest.TempPathFactory):
    results = tmp_path_factory.mktemp("half")
    data = yaml.safe_load(protocol.read_text())
    data["reproductions"] = 2  # two jobs per method: one failed, one running
    half = protocol.parent / "half.yaml"
    half.write_text(yaml.safe_dump(data), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    units = []
    objective, run_job = Units.objective, Units.run_job

    def scripted(kind: str):
        units.append(kind)
        error = SCRIPT.get(len(units))
        if error is not None:
            raise error(f"scripted failure of unit {len(units)}")

    def objective_(self, values):
        scripted(f"{self.spec.name} trial")
        return objective(self, values)

    def run_job_(self, values, job):
        scripted(f"{self.spec.name} {job}")
        return run_job(self, values, job)

    mp.setattr(Units, "objective", objective_)
    mp.setattr(Units, "run_job", run_job_)
    try:
        code = main(["run", str(half), "--results", str(results), "--no-progress"])
    finally:
        mp.undo()
    assert code == 130, units  # the scripted Ctrl-C
    assert units == ["contrastive trial", "proxy_anchor trial", "contrastive trial",
                     "proxy_anchor trial", "contrastive standard/seed0", "proxy_anchor trial"]
    found = studies(results / "tiny" / "study.db")
    found["tiny:glyphs:proxy_anchor:standard"].ask()  # another process's trial, in flight
    a_jobs = next(s for n, s in found.items() if n.startswith("tiny:glyphs:contrastive:"
                                                                  "standard:test:"))
    a_jobs.ask().set_user_attr(JOB, "standard/seed1")  # another process's claimed job
    return half, results


def expected_from_storage(db: Path, method: str) -> dict[str, int]:
    """What status should say, computed independently from the trials."""
    found = studies(db)
    search = found[f"tiny:glyphs:{method}:standard"].get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in search)
    running = sum(t.state == TrialState.RUNNING for t in search)
    row = {"search_done": complete, "search_running": running,
           "search_failed": sum(t.state == TrialState.FAIL and "failure" in t.user_attrs
                                for t in search),
           "search_left": max(0, BUDGET - complete - running)}
    tests = [s for n, s in found.items() if n.startswith(f"tiny:glyphs:{method}:standard:test:")]
    if not tests:
        return {**row, "test_done": 0, "test_running": 0, "test_failed": 0, "test_left": "?"}
    jobs = set(tests[0].user_attrs["jobs"])
    trials = tests[0].get_trials(deepcopy=False)
    done = {t.user_attrs[JOB] for t in trials if t.state == TrialState.COMPLETE}
    failed = {t.user_attrs[JOB] for t in trials
              if t.state == TrialState.FAIL and FAILURE in t.user_attrs} - done
    running = {t.user_attrs.get(JOB) for t in trials if t.state == TrialState.RUNNING} - done
    return {**row, "test_done": len(done & jobs), "test_running": len(running & jobs),
            "test_failed": len(failed & jobs), "test_left": len(jobs - done - running - failed)}


def test_status_of_a_half_done_storage(half_done, capsys) -> None:
    protocol, results = half_done
    table = status_table(protocol, results, capsys)
    db = results / "tiny" / "study.db"
    # contrastive: search done; job seed0 failed, seed1 running elsewhere.
    # proxy_anchor: 1 completed, 1 failed (TrialFailed), 1 interrupted (not a failure),
    # 1 running elsewhere; no test jobs yet (unknown until its values are chosen).
    assert table["contrastive"] == {
        "search_done": "2", "search_running": "0", "search_failed": "0", "search_left": "0",
        "test_done": "0", "test_running": "1", "test_failed": "1", "test_left": "0"}
    assert table["proxy_anchor"] == {
        "search_done": "1", "search_running": "1", "search_failed": "1", "search_left": "0",
        "test_done": "0", "test_running": "0", "test_failed": "0", "test_left": "?"}
    for method in ("contrastive", "proxy_anchor"):
        expected = {k: str(v) for k, v in expected_from_storage(db, method).items()}
        assert table[method] == expected, method


def test_status_counts_a_failed_job_once(half_done, capsys) -> None:
    protocol, results = half_done
    row = status_table(protocol, results, capsys)["contrastive"]
    jobs = 2
    assert sum(int(row[k]) for k in ("test_done", "test_running", "test_failed",
                                     "test_left")) == jobs, row
    assert row["test_left"] == "0", row


# -- a worker beside a `bench run` ------------------------------------------------------------
WRAPPER = """
import json, os, sys, time
from pathlib import Path
from bench.cli import main
from bench.units import Units
log, go = sys.argv[1], Path(sys.argv[2])
objective, run_job = Units.objective, Units.run_job
def note(kind):
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "unit": kind}) + "\\n")
def objective_(self, values):
    note(self.spec.name + " trial")
    return objective(self, values)
def run_job_(self, values, job):
    note(self.spec.name + " " + str(job))
    return run_job(self, values, job)
Units.objective, Units.run_job = objective_, run_job_
Path(f"{go}.{os.getpid()}").write_text("ready")
while not go.exists():
    time.sleep(0.05)
sys.exit(main(sys.argv[3:]))
"""


def test_worker_beside_a_run_on_one_sqlite_storage(protocol: Path, reference: Path,
                                                   tmp_path: Path) -> None:
    results = tmp_path / "results"
    db = results / "tiny" / "study.db"
    log, go = tmp_path / "units.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = [str(protocol), "--results", str(results), "--no-progress", "--grace", "6"]
    commands = [["run", *common],
                ["worker", *common, "--threads", "1", "--storage", f"sqlite:///{db}"]]
    procs = [subprocess.Popen([sys.executable, "-c", WRAPPER, str(log), str(go), *command],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for command in commands]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.*"))) < 2:  # both imported: start them at one moment
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.write_text("go")
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (results / "tiny" / "results.csv").read_bytes() == \
        (reference / "results.csv").read_bytes()
    assert run_files(results / "tiny") == run_files(reference)
    assert_each_unit_once(db)
    units = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(units) == len(METHODS) * (BUDGET + 1), units  # nothing trained twice
    assert {u["pid"] for u in units} == {p.pid for p in procs}, "both processes did work"
