"""The fault campaign: every fault ends with the undisturbed run's table, or with a clear,
recorded failure of the faulty method only.

1. `bench run` SIGKILLed three times (search and test phases), re-run each time;
2. one of three `bench worker` processes SIGKILLed, the others finish, `bench rebuild`;
3. an image file truncated in the middle of a run (test phase, then search phase), restored;
4. the results disk fills up (simulated ENOSPC) while results are written, then frees;
5. a method whose loss turns NaN (in its search, or only in its test phase).

Two more storage faults found on the way: trials left RUNNING by a process killed before
their first heartbeat (optuna never finds them stale), and a process still alive whose trial
another process declared dead.

Everything runs with one torch thread (in-process and in subprocesses): on a shared 2-core box
two threads per process are an order of magnitude slower, and the reference run and the faulty
runs must compute with the same thread count to give identical floats.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_PROTOCOL
from optuna.trial import TrialState
from PIL import Image

import bench.jobs
import bench.results
import bench.runner
import bench.search
from bench import methods as methods_module
from bench.cli import main
from bench.methods.pml_loss import PmlLoss
from bench.results import write_text_atomically
from bench.search import open_storage

ROOT = Path(__file__).resolve().parents[1]
GRACE = "4"  # seconds without heartbeat before a killed process's trial is failed

#: glyphs, one searched method and one without search; 2 + 3 + 3 = 8 units of work.
GLYPHS = {
    **yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL)),
    "budget": {"trials": 2, "sampler": "tpe", "seed": 0, "max_failures": 2},
    "reproductions": 3,
    "methods": [
        {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
         "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}},
        {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"}},
    ],
}
GLYPHS_UNITS = 8
JOBS_DONE = {"tiny:glyphs:contrastive:standard": 3, "tiny:glyphs:proxy_anchor:standard": 3}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses
    yield
    patch.undo()
    torch.set_num_threads(before)


def write_protocol_file(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run(protocol: Path, results: Path, *extra: str, grace: str = GRACE) -> int:
    return main(["run", str(protocol), "--results", str(results), "--no-progress", "--grace",
                 grace, *extra])


def table(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "tiny" / "results.csv")


def summary_rows(results: Path) -> list[str]:
    """The summary's table rows (its header line names the protocol's path, which differs)."""
    text = (results / "tiny" / "summary.md").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("| ")]


def assert_intact(out: Path, protocol_text: str | None = None) -> None:
    """No result file is half-written: every run file and the table parse, and the table holds
    rows of run files only (it may lag behind them, never run ahead)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("runs/**/*.json"))]
    rows = {(r["method"], r["seed"], r["model"], r["metric"]) for rec in records
            for r in rec["rows"]}
    if (out / "results.csv").exists():
        frame = pd.read_csv(out / "results.csv")
        assert not frame.empty and list(frame.columns[:8]) == bench.results.ID_COLUMNS
        keys = set(zip(frame["method"], frame["seed"], frame["model"], frame["metric"],
                       strict=True))
        assert keys <= rows, "results.csv has rows no run file holds"
    if (out / "summary.md").exists():
        assert (out / "summary.md").read_text(encoding="utf-8").startswith("# Results: tiny")
    if protocol_text is not None and (out / "protocol.yaml").exists():
        assert (out / "protocol.yaml").read_text(encoding="utf-8") == protocol_text


def running_ids(db: Path) -> set[int]:
    """Ids of the RUNNING trials (a kill can find the trial an earlier kill left behind)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
        return {i for (i,) in con.execute("select trial_id from trials where state = 'RUNNING'")}


def snapshot(db: Path) -> tuple[list[str], int, list[int]]:
    """(study name of each RUNNING trial, number of COMPLETE trials, ids of RUNNING trials with
    no heartbeat yet), read from the SQLite file while other processes write it."""
    if not db.exists():
        return [], 0, []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            running = con.execute(
                "select s.study_name, t.trial_id, h.trial_id from trials t join studies s on "
                "s.study_id = t.study_id left join trial_heartbeats h on h.trial_id = t.trial_id"
                " where t.state = 'RUNNING'").fetchall()
            done = con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()
    except sqlite3.Error:
        return [], 0, []
    return [name for name, *_ in running], done[0], [i for _, i, beat in running if beat is None]


def kill_when(victim: subprocess.Popen, db: Path, log: Path,
              condition=lambda running, done: True) -> None:
    """SIGKILL ``victim`` once ``condition(running, done)`` holds and every RUNNING trial has
    sent its first heartbeat.

    A kill between a trial's creation and its first heartbeat leaves a trial that optuna's stale
    check skips; bench handles that case (``bench.search.fail_stale``), but only after twice the
    grace period: it has its own test below, and these kills avoid that window to stay quick."""
    def ready() -> bool:
        running, done, orphans = snapshot(db)
        return not orphans and bool(condition(running, done))

    wait_for(ready, [victim], log)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()


def stale_failures(url: str) -> int:
    """Trials failed by heartbeat (a dead process's), not by a reason of the method's own."""
    count = 0
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        count += sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                     if "failure" not in t.user_attrs)
    return count


def completed_jobs(url: str) -> dict[str, int]:
    """Test study name (up to the values' digest) -> completed jobs with a stored result."""
    out = {}
    for summary in optuna.get_all_study_summaries(url):
        if ":test:" in summary.study_name:
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            out[summary.study_name.split(":test:")[0]] = sum(
                1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "result" in t.user_attrs)
    return out


@pytest.fixture
def started():
    """Processes a test starts; any still alive at the end is killed (a hung test leaves none)."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def bench_process(started: list, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with log.open("ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bench", *args], env=env,
                                   stdout=handle, stderr=subprocess.STDOUT)
    started.append(process)
    return process


def wait_for(condition, processes: list[subprocess.Popen], log: Path, timeout: float = 180):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        dead = [p.returncode for p in processes if p.poll() is not None]
        assert not dead and time.time() < deadline, (
            f"condition not met (exits {dead}); log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def glyphs_reference(tmp_path_factory) -> tuple[Path, pd.DataFrame, list[str]]:
    """The undisturbed run: (its results root, results.csv, summary rows)."""
    folder = tmp_path_factory.mktemp("reference")
    protocol = write_protocol_file(folder, GLYPHS)
    assert run(protocol, folder / "results") == 0
    return folder / "results", table(folder / "results"), summary_rows(folder / "results")


# --- 1. SIGKILL of `bench run` -------------------------------------------------------------


@pytest.mark.slow
def test_run_killed_three_times_resumes_to_the_undisturbed_table(glyphs_reference, started,
                                                                 tmp_path: Path) -> None:
    _, reference, reference_rows = glyphs_reference
    protocol = write_protocol_file(tmp_path, GLYPHS)
    results = tmp_path / "results"
    out, db, log = results / "tiny", results / "tiny" / "study.db", tmp_path / "run.log"
    command = ("run", str(protocol), "--results", str(results), "--no-progress", "--grace", GRACE)
    rng = random.Random(8)
    nth = rng.randint(3, GLYPHS_UNITS - 2)
    triggers = {  # each: reached, a seeded random delay, then SIGKILL as soon as it holds
        "a search trial runs": lambda running, done: any(":test:" not in s for s in running),
        "a test job runs": lambda running, done: any(":test:" in s for s in running),
        f"{nth} units done": lambda running, done: done >= nth and running,
    }
    landed = []
    orphans: set[int] = set()  # distinct trials left RUNNING by the kills
    for name, trigger in triggers.items():
        victim = bench_process(started, *command, log=log)
        wait_for(lambda t=trigger: t(*snapshot(db)[:2]), [victim], log)
        time.sleep(rng.uniform(0.0, 0.4))
        kill_when(victim, db, log, trigger)  # at the first moment it holds again
        running, done, _ = snapshot(db)
        orphans |= running_ids(db)
        landed.append((name, done, ["test" if ":test:" in s else "search" for s in running]))
        assert_intact(out, protocol.read_text(encoding="utf-8"))
    print(f"kills (trigger, units done, trials left RUNNING): {landed}")
    phases = {phase for *_, left in landed for phase in left}
    assert phases == {"search", "test"}, f"kills must land in both phases: {landed}"
    final = bench_process(started, *command, log=log)
    assert final.wait(timeout=150) == 0, log.read_text()[-3000:]
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows
    url = f"sqlite:///{db}"
    assert stale_failures(url) == len(orphans)
    assert completed_jobs(url) == JOBS_DONE


class WaitedTooLong(AssertionError):
    """Not caught by bench (it catches BenchError, RuntimeError, ValueError): ends the run."""


class Deadline:
    """Stands in for ``time`` inside bench modules: sleeps for real, but raises once they have
    slept ``limit`` seconds in all, so a run that would wait for ever fails instead."""

    def __init__(self, limit: float) -> None:
        self.limit, self.slept = limit, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        if self.slept > self.limit:
            raise WaitedTooLong(f"still waiting after {self.slept:.0f} s of polling")
        time.sleep(seconds)


@pytest.mark.slow
def test_trials_orphaned_before_their_first_heartbeat_do_not_block_a_run(
        glyphs_reference, tmp_path: Path, monkeypatch) -> None:
    """A process killed between creating a trial and its first heartbeat leaves a RUNNING trial
    that optuna's stale check skips (it has no heartbeat row). One in the search and one in the
    test-job queue: the run must fail them after the grace period and finish undisturbed."""
    _, reference, reference_rows = glyphs_reference
    protocol = write_protocol_file(tmp_path, GLYPHS)
    results = tmp_path / "results"
    db = results / "tiny" / "study.db"
    db.parent.mkdir(parents=True)
    url = f"sqlite:///{db}"
    storage = open_storage(url, heartbeat=1, grace=2)
    no_values = hashlib.sha256(json.dumps({}).encode()).hexdigest()[:12]
    for name in ("tiny:glyphs:contrastive:standard",
                 f"tiny:glyphs:proxy_anchor:standard:test:{no_values}"):
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    load_if_exists=True)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
            warnings.simplefilter("ignore", UserWarning)
            study.ask()  # RUNNING, no heartbeat, no slot or job named: the process died here
    deadline = Deadline(25)
    for module in (bench.runner, bench.jobs, bench.search):
        monkeypatch.setattr(module, "time", deadline)
    assert run(protocol, results, grace="2") == 0
    assert stale_failures(url) == 2
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


@pytest.mark.slow
def test_process_whose_trial_was_declared_dead_goes_on(glyphs_reference, tmp_path: Path,
                                                       monkeypatch) -> None:
    """A process stalled longer than the grace period (a long pause, a stuck disk) finds its
    trial failed by another process's stale check: it must drop that result and go on, and the
    work is done again. Simulated in one process: the first search trial and the first test job
    are failed "by another process" right after their training."""
    _, reference, reference_rows = glyphs_reference
    protocol = write_protocol_file(tmp_path, GLYPHS)
    results = tmp_path / "results"
    db = results / "tiny" / "study.db"
    fit_fold, declared = bench.runner.fit_fold, {}

    def stalled(*args: Any, **kwargs: Any):
        result = fit_fold(*args, **kwargs)
        kind = "trial" if "trial" in kwargs["description"] else "job"
        if kind not in declared:
            with closing(sqlite3.connect(db)) as con:
                (trial_id,), = con.execute("select trial_id from trials where state = 'RUNNING'")
            optuna.storages.RDBStorage(f"sqlite:///{db}").set_trial_state_values(
                trial_id, TrialState.FAIL)
            declared[kind] = trial_id
        return result

    monkeypatch.setattr(bench.runner, "fit_fold", stalled)
    assert run(protocol, results) == 0
    assert set(declared) == {"trial", "job"}
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


# --- 2. SIGKILL of one `bench worker` among three --------------------------------------------


@pytest.mark.slow
def test_killed_worker_leaves_the_others_to_finish(glyphs_reference, started,
                                                   tmp_path: Path) -> None:
    _, reference, reference_rows = glyphs_reference
    protocol = write_protocol_file(tmp_path, GLYPHS)
    results, log = tmp_path / "results", tmp_path / "workers.log"
    db = results / "tiny" / "study.db"
    db.parent.mkdir(parents=True)
    url = f"sqlite:///{db}"
    workers = [bench_process(started, "worker", str(protocol), "--storage", url, "--results",
                             str(results), "--threads", "1", "--grace", GRACE, "--no-progress",
                             log=log) for _ in range(3)]
    # Three trials running at once: each worker holds one, so the victim dies inside a trial.
    victim = random.Random(3).choice(workers)
    kill_when(victim, db, log, lambda running, done: len(running) == 3)
    assert victim.returncode == -signal.SIGKILL
    for worker in workers:
        if worker is not victim:
            assert worker.wait(timeout=150) == 0, log.read_text()[-3000:]
    # The victim's trial is failed by heartbeat, or left RUNNING when nobody needed its job
    # again (a duplicate claim); no other trial failed.
    assert stale_failures(url) + len(snapshot(db)[0]) == 1
    assert completed_jobs(url) == JOBS_DONE
    assert not (results / "tiny" / "runs").exists(), "workers write nothing under results/"
    assert main(["rebuild", str(protocol), "--storage", url, "--results", str(results)]) == 0
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


# --- 3. A corrupt image in the middle of a run ------------------------------------------------


def make_images(root: Path, classes: int = 12, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        base = rng.integers(0, 256, 3)
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def folder_reference(tmp_path_factory) -> tuple[Path, pd.DataFrame, list[str]]:
    """PNG files decoded while training (trunk last_stage): (protocol, results.csv, summary rows).

    Units: 2 search trials of `contrastive`, 2 test jobs per method, one fold each."""
    folder = tmp_path_factory.mktemp("folder")
    make_images(folder / "images")
    protocol = write_protocol_file(folder, {
        **GLYPHS,
        "dataset": {"name": "folder", "options": {"root": str(folder / "images"),
                                                  "image_size": 32}},
        "model": {"backbone": "resnet18", "pretrained": False, "trunk": "last_stage",
                  "embedding_size": 8, "head_hidden": 0},
        "train": {"iterations": 6, "batch_size": 8, "m_per_class": 2, "validate_every": 3},
        "evaluation": {"nmi": False},
        "budget": {"trials": 2, "sampler": "tpe", "seed": 0, "max_failures": 0},
        "reproductions": 2,
    })
    assert run(protocol, folder / "results") == 0
    return protocol, table(folder / "results"), summary_rows(folder / "results")


class CorruptOnce:
    """Wraps bench.runner.fit_fold: on the ``nth`` training whose description contains ``kind``
    ("trial" or "seed"), truncate an image of the fold's validation classes (decoded by the
    training's validation) first. ``restore()`` puts the file back."""

    def __init__(self, kind: str, nth: int) -> None:
        self.kind, self.nth, self.seen, self.calls = kind, nth, 0, []
        self.path: Path | None = None
        self.original = b""
        self.fit_fold = bench.runner.fit_fold

    def __call__(self, protocol, ds, inputs, layout, split, **kwargs):
        self.calls.append(kwargs["description"])
        if self.kind in kwargs["description"]:
            self.seen += 1
            if self.seen == self.nth:
                row = int(np.flatnonzero(ds.labels == split.validation[0])[0])
                self.path = ds.images.path(row)
                self.original = self.path.read_bytes()
                self.path.write_bytes(self.original[: len(self.original) // 2])
        return self.fit_fold(protocol, ds, inputs, layout, split, **kwargs)

    def restore(self) -> None:
        if self.path is not None:
            self.path.write_bytes(self.original)


def storage_of(results: Path) -> str:
    return f"sqlite:///{results / 'tiny' / 'study.db'}"


@pytest.mark.slow
def test_image_corrupted_in_test_phase_stops_with_one_line_then_resumes(
        folder_reference, tmp_path: Path, monkeypatch, capsys) -> None:
    protocol, reference, reference_rows = folder_reference
    results = tmp_path / "results"
    corrupt = CorruptOnce("seed", 2)  # the second test job finds a truncated PNG
    monkeypatch.setattr(bench.runner, "fit_fold", corrupt)
    try:
        capsys.readouterr()
        assert run(protocol, results) == 2
        assert corrupt.path is not None
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"bench: error: {corrupt.path}: corrupt or unreadable image")
        assert_intact(results / "tiny", protocol.read_text(encoding="utf-8"))
        url = storage_of(results)
        kept = sum(completed_jobs(url).values())
        search = optuna.load_study(study_name="tiny:folder:contrastive:standard", storage=url)
        kept += len(search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        assert kept >= 2 and kept == len(corrupt.calls) - 1, corrupt.calls
    finally:
        corrupt.restore()
    rerun = CorruptOnce("nothing", 1)
    monkeypatch.setattr(bench.runner, "fit_fold", rerun)
    assert run(protocol, results) == 0
    assert len(rerun.calls) == 6 - kept, "units recorded before the fault are not redone"
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


@pytest.mark.slow
def test_image_corrupted_in_search_phase_then_restored_gives_undisturbed_table(
        folder_reference, tmp_path: Path, monkeypatch, capsys) -> None:
    protocol, reference, reference_rows = folder_reference
    results = tmp_path / "results"
    corrupt = CorruptOnce("trial", 2)  # the second search trial finds a truncated PNG
    monkeypatch.setattr(bench.runner, "fit_fold", corrupt)
    try:
        capsys.readouterr()
        code = run(protocol, results)
        assert corrupt.path is not None
        err = capsys.readouterr().err
        assert code in (1, 2) and str(corrupt.path) in err
        assert_intact(results / "tiny", protocol.read_text(encoding="utf-8"))
        search = optuna.load_study(study_name="tiny:folder:contrastive:standard",
                                   storage=storage_of(results))
        blamed = [t.number for t in search.get_trials(deepcopy=False)
                  if str(corrupt.path) in t.user_attrs.get("failure", "")]
        assert not blamed, f"trials {blamed} record the corrupt file as the method's failure"
    finally:
        corrupt.restore()
    monkeypatch.setattr(bench.runner, "fit_fold", corrupt.fit_fold)
    assert run(protocol, results) == 0
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


# --- 4. A full results disk ------------------------------------------------------------------


class FullDisk:
    """Stands in for ``os`` inside bench.results: after ``allowed`` files were opened for
    writing, a write stores half its text, then fails with ENOSPC (as a full disk does)."""

    def __init__(self, allowed: int) -> None:
        self.allowed, self.opened, self.failed = allowed, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, *args: Any, **kwargs: Any):
        handle = os.fdopen(fd, *args, **kwargs)
        self.opened += 1
        return handle if self.opened <= self.allowed else Filling(handle, self)


class Filling:
    def __init__(self, handle, disk: FullDisk) -> None:
        self.handle, self.disk = handle, disk

    def __enter__(self) -> Filling:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()

    def write(self, text: str) -> int:
        self.disk.failed += 1
        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_outcome(protocol: Path, results: Path) -> int | OSError:
    try:
        return run(protocol, results)
    except OSError as error:
        return error


@pytest.mark.slow
def test_full_disk_keeps_files_whole_and_storage_complete(glyphs_reference, tmp_path: Path,
                                                          monkeypatch) -> None:
    _, reference, reference_rows = glyphs_reference
    protocol = write_protocol_file(tmp_path, GLYPHS)
    results = tmp_path / "results"
    disk = FullDisk(allowed=7)  # protocol copy + one method's 3 run files, table, summary + 1
    monkeypatch.setattr(bench.results, "os", disk)
    outcome = run_outcome(protocol, results)
    assert disk.failed == 1 and outcome != 0, "the run must stop on the full disk"
    if isinstance(outcome, OSError):
        assert outcome.errno == errno.ENOSPC
    assert_intact(results / "tiny", protocol.read_text(encoding="utf-8"))
    assert 1 <= len(list((results / "tiny" / "runs").glob("**/*.json"))) < 6
    url = storage_of(results)
    assert completed_jobs(url) == JOBS_DONE
    monkeypatch.setattr(bench.results, "os", os)  # space freed
    elsewhere = tmp_path / "rebuilt"
    assert main(["rebuild", str(protocol), "--storage", url, "--results", str(elsewhere)]) == 0
    pd.testing.assert_frame_equal(table(elsewhere), reference)
    assert summary_rows(elsewhere) == reference_rows
    rerun = CorruptOnce("nothing", 1)
    monkeypatch.setattr(bench.runner, "fit_fold", rerun)
    assert run(protocol, results) == 0 and rerun.calls == [], "nothing is retrained"
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


@pytest.mark.slow
def test_full_disk_is_a_one_line_error(write_protocol, tmp_path: Path, monkeypatch,
                                       capsys) -> None:
    protocol = write_protocol(GLYPHS)
    monkeypatch.setattr(bench.results, "os", FullDisk(allowed=0))  # protocol.yaml copy fails
    capsys.readouterr()
    outcome = run_outcome(protocol, tmp_path / "results")
    assert isinstance(outcome, int) and outcome != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bench: error: ") and "No space left on device" in last
    assert str(tmp_path / "results" / "tiny" / "protocol.yaml") in last


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(bench.results, "os", FullDisk(allowed=0))
    with pytest.raises(OSError, match="No space left"):
        write_text_atomically(target, "new,text\n" * 100)
    assert target.read_text(encoding="utf-8") == "old\n", "the old file is kept whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


# --- 5. A diverging method -------------------------------------------------------------------


class Exploding(PmlLoss):
    """A contrastive loss times NaN: diverges at its first step. ``x`` is only there to be
    searched."""

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str):
        rest = {key: value for key, value in params.items() if key != "x"}
        return super().validate_params(rest, source=source, field=field)

    def loss(self, model, batch) -> torch.Tensor:
        return super().loss(model, batch) * float("nan")


@pytest.mark.slow
def test_diverging_methods_fail_alone(glyphs_reference, tmp_path: Path, monkeypatch,
                                      capsys) -> None:
    _, reference, reference_rows = glyphs_reference
    monkeypatch.setitem(methods_module.REGISTRY, "exploding", Exploding)
    protocol = write_protocol_file(tmp_path, {**GLYPHS, "methods": [
        {"name": "nan_in_search", "method": "exploding", "params": {"loss": "ContrastiveLoss"},
         "search": {"x": {"type": "float", "low": 0.0, "high": 1.0}}},
        *GLYPHS["methods"],
        {"name": "nan_in_test", "method": "exploding", "params": {"loss": "ContrastiveLoss"}},
    ]})
    results = tmp_path / "results"
    capsys.readouterr()
    assert run(protocol, results) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == [
        "bench: method glyphs/nan_in_search failed: 3 trials failed (max_failures 2); last: "
        "DivergedError: loss became nan at iteration 1",
        "bench: method glyphs/nan_in_test failed: standard/seed0: DivergedError: loss became "
        "nan at iteration 1"], err[-2:]
    summary = (results / "tiny" / "summary.md").read_text(encoding="utf-8")
    failed = summary.split("Failed methods:")[1].strip().splitlines()
    assert [line.split(":")[0] for line in failed] == ["- nan_in_search", "- nan_in_test"]
    rows = summary_rows(results)
    assert [r for r in rows if r.startswith("| nan_in_")] == [
        "| nan_in_search | 0 | " + "failed | " * 8 + "- |",
        "| nan_in_test | 0 | " + "failed | " * 8 + "- |"]
    assert [r for r in rows if not r.startswith("| nan_in_")] == reference_rows
    frame = table(results)
    assert set(frame["method"]) == {"contrastive", "proxy_anchor"}
    same = [c for c in reference.columns if c != "protocol_sha256"]  # the protocol differs
    pd.testing.assert_frame_equal(frame[same], reference[same])
