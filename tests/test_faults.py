"""The fault campaign: every fault ends with the undisturbed run's table, or with a clear,
recorded failure of the faulty method only.

1. `bench run` SIGKILLed three times (search and test phases), re-run each time;
2. one of three `bench worker` processes SIGKILLed, the others finish, `bench rebuild`;
3. an image file truncated in the middle of a run (test phase, then search phase), restored;
4. the results disk fills up (simulated ENOSPC) while results are written, then frees;
5. a method whose loss turns NaN (in its search, or only in its test phase).

From the outside audit (issue 14), each its own test below:

6. data loss: `bench run --fresh` with names `.`, `..`, slashes, a symlinked results root, a
   symlinked `RESULTS/<name>` and a symlinked `runs/`: nothing outside `RESULTS/<name>` changes;
7. a stray or edited run file never changes the table (the storage is the only source);
8. tampered caches (features and datasets: rows reordered, truncated, wrong shape, a link to a
   non-array file, a folder in place, the old digest-less format) are rebuilt with one line;
9. an alias bomb is refused at once, in bounded memory;
10. a damaged storage (garbage, truncated) and a read-only results folder: exit 3, one line,
    stored results kept;
11. audit cases that must now succeed: image decoding (transparency on white, 16-bit, EXIF),
    ids above 2**53 in mixed dtypes, the two re-ID APs, `domain/class` class names, counts=off,
    UTF-16 protocols, the summary under `checkpoint: last`, re-ID validation without a
    cross-camera match.

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
from datetime import datetime
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

import bench.atomic
import bench.jobs
import bench.results
import bench.runner
import bench.scheduler
import bench.search
import bench.units
from bench import methods as methods_module
from bench.atomic import write_text
from bench.cli import main
from bench.methods.pml_loss import PmlLoss
from bench.search import PROCESS
from bench.storage import open_storage

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


def worker_in_a_trial(db: Path, workers: list[subprocess.Popen]) -> subprocess.Popen | None:
    """A worker that runs a RUNNING trial which has sent its first heartbeat, or None."""
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            names = con.execute(
                "select a.value_json from trials t join trial_user_attributes a on "
                "a.trial_id = t.trial_id join trial_heartbeats h on h.trial_id = t.trial_id "
                f"where t.state = 'RUNNING' and a.key = '{PROCESS}'").fetchall()
    except sqlite3.Error:
        return None
    pids = {int(json.loads(value).rsplit(":", 1)[1]) for (value,) in names}
    return next((w for w in workers if w.pid in pids and w.poll() is None), None)


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
    for module in (bench.scheduler, bench.jobs, bench.search):
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
    fit_fold, declared = bench.units.fit_fold, {}

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

    monkeypatch.setattr(bench.units, "fit_fold", stalled)
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
    # The victim is a worker inside a trial (each trial names its process, bench.search).
    victim = wait_for(lambda: worker_in_a_trial(db, workers), workers, log)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    for worker in workers:
        if worker is not victim:
            assert worker.wait(timeout=150) == 0, log.read_text()[-3000:]
    # The victim's trial is failed by heartbeat, or left RUNNING when nobody needed its job
    # again (a duplicate claim); no other trial failed.
    assert stale_failures(url) + len(snapshot(db)[0]) == 1
    assert completed_jobs(url) == JOBS_DONE
    # Workers leave only their jobs' saved test embeddings (issue 16) under results/; tables,
    # summaries and run files come from the storage alone (`bench run` / `bench rebuild`).
    written = [p for p in (results / "tiny").rglob("*") if p.is_file() and p != db
               and not p.name.startswith("study.db")]
    assert written and all(p.name.endswith(".embeddings.npz") for p in written), written
    assert not list((results / "tiny").rglob("*.json")), "workers write no run files"
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
    """Wraps bench.units.fit_fold: on the ``nth`` training whose description contains ``kind``
    ("trial" or "seed"), truncate an image of the fold's validation classes (decoded by the
    training's validation) first. ``restore()`` puts the file back."""

    def __init__(self, kind: str, nth: int) -> None:
        self.kind, self.nth, self.seen, self.calls = kind, nth, 0, []
        self.path: Path | None = None
        self.original = b""
        self.fit_fold = bench.units.fit_fold

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
    monkeypatch.setattr(bench.units, "fit_fold", corrupt)
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
    monkeypatch.setattr(bench.units, "fit_fold", rerun)
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
    monkeypatch.setattr(bench.units, "fit_fold", corrupt)
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
    monkeypatch.setattr(bench.units, "fit_fold", corrupt.fit_fold)
    assert run(protocol, results) == 0
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


# --- 4. A full results disk ------------------------------------------------------------------


class FullDisk:
    """Stands in for ``os`` inside bench.atomic: after ``allowed`` text files were opened for
    writing, a write stores half its text, then fails with ENOSPC (as a full disk does).
    Binary files (embeddings, the cache) are written as usual."""

    def __init__(self, allowed: int) -> None:
        self.allowed, self.opened, self.failed = allowed, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any):
        handle = os.fdopen(fd, mode, *args, **kwargs)
        if "b" in mode:
            return handle
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
    monkeypatch.setattr(bench.atomic, "os", disk)
    outcome = run_outcome(protocol, results)
    assert disk.failed == 1 and outcome != 0, "the run must stop on the full disk"
    if isinstance(outcome, OSError):
        assert outcome.errno == errno.ENOSPC
    assert_intact(results / "tiny", protocol.read_text(encoding="utf-8"))
    assert 1 <= len(list((results / "tiny" / "runs").glob("**/*.json"))) < 6
    url = storage_of(results)
    assert completed_jobs(url) == JOBS_DONE
    monkeypatch.setattr(bench.atomic, "os", os)  # space freed
    elsewhere = tmp_path / "rebuilt"
    assert main(["rebuild", str(protocol), "--storage", url, "--results", str(elsewhere)]) == 0
    pd.testing.assert_frame_equal(table(elsewhere), reference)
    assert summary_rows(elsewhere) == reference_rows
    rerun = CorruptOnce("nothing", 1)
    monkeypatch.setattr(bench.units, "fit_fold", rerun)
    assert run(protocol, results) == 0 and rerun.calls == [], "nothing is retrained"
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_rows


@pytest.mark.slow
def test_full_disk_is_a_one_line_error(write_protocol, tmp_path: Path, monkeypatch,
                                       capsys) -> None:
    protocol = write_protocol(GLYPHS)
    monkeypatch.setattr(bench.atomic, "os", FullDisk(allowed=0))  # protocol.yaml copy fails
    capsys.readouterr()
    outcome = run_outcome(protocol, tmp_path / "results")
    assert isinstance(outcome, int) and outcome != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bench: error: ") and "No space left on device" in last
    assert str(tmp_path / "results" / "tiny" / "protocol.yaml") in last


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(bench.atomic, "os", FullDisk(allowed=0))
    with pytest.raises(OSError, match="No space left"):
        write_text(target, "new,text\n" * 100)
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


# --- 6. data loss outside RESULTS/<name> (issue 14) ----------------------------------------------

#: the smallest real run: one method, no search, one reproduction, 10 iterations
SMALL = {**yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL)),
         "train": {"iterations": 10, "batch_size": 32, "m_per_class": 4, "validate_every": 5,
                   "patience": 2},
         "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"}}]}


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): relative path -> what it is (a link's
    target, a file's sha256, or "dir")."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def sandbox(root: Path) -> Path:
    """Files a careless run must never touch: the user's, and another protocol's results."""
    (root / "precious").mkdir(parents=True)
    (root / "precious" / "thesis.tex").write_text("years of work\n", encoding="utf-8")
    (root / "real_results" / "other").mkdir(parents=True)
    (root / "real_results" / "other" / "summary.md").write_text("other\n", encoding="utf-8")
    (root / "real_results" / "keep.txt").write_text("keep\n", encoding="utf-8")
    (root / "results").symlink_to(root / "real_results")  # a symlinked results root
    return root


@pytest.mark.slow
def test_fresh_never_writes_or_deletes_outside_its_folder(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    box = sandbox(tmp_path / "box")
    monkeypatch.chdir(box)  # the default --results is relative: `..` would be the sandbox
    for name in (".", "..", "a/b", "/tmp", "../precious", ".hidden", "-rf"):
        protocol = write_protocol_file(tmp_path / "protocols" / "p", {**SMALL, "name": name})
        before = tree(tmp_path)
        for results in ("results", str(box / "results" / "other")):
            assert main(["run", str(protocol), "--results", results, "--fresh",
                         "--no-progress"]) == 2, name
        assert tree(tmp_path) == before, name
        assert "should match pattern" in capsys.readouterr().err

    # a good name under a symlinked results root: only real_results/small/ changes, twice
    protocol = write_protocol_file(tmp_path / "protocols" / "ok", {**SMALL, "name": "small"})
    (box / "real_results" / "small").mkdir()
    (box / "real_results" / "small" / "notes.txt").write_text("mine\n", encoding="utf-8")
    for _ in range(2):
        before = tree(box)
        assert main(["run", str(protocol), "--fresh", "--no-progress"]) == 0
        after = tree(box)
        assert all(k.startswith("real_results/small/") for k in changed(before, after)), \
            sorted(changed(before, after))
    assert (box / "real_results" / "small" / "notes.txt").read_text() == "mine\n"
    assert (box / "real_results" / "small" / "results.csv").is_file()

    # RESULTS/<name> itself a link out of the results root: refused (exit 3), nothing touched
    link_protocol = write_protocol_file(tmp_path / "protocols" / "link", {**SMALL,
                                                                         "name": "linked"})
    (box / "real_results" / "linked").symlink_to(box / "precious")
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["run", str(link_protocol), "--fresh", "--no-progress"]) == 3
    assert tree(tmp_path) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link" in err[0] and "linked" in err[0]

    # runs/ a link out of RESULTS/<name>: refused before any work; --fresh removes the link
    # (inside the folder) and never what it points to
    (box / "real_results" / "small" / "runs").rename(box / "old_runs")
    (box / "real_results" / "small" / "runs").symlink_to(box / "precious")
    before = tree(tmp_path)
    assert main(["run", str(protocol), "--no-progress"]) == 3
    assert tree(tmp_path) == before
    assert "runs" in capsys.readouterr().err
    before = tree(box)
    assert main(["run", str(protocol), "--fresh", "--no-progress"]) == 0
    assert all(k.startswith("real_results/small/") for k in changed(before, tree(box)))
    assert (box / "precious" / "thesis.tex").read_text() == "years of work\n"
    assert not (box / "real_results" / "small" / "runs").is_symlink()


def test_confined_refuses_components_and_links(tmp_path: Path) -> None:
    from bench.errors import StateError
    from bench.safe_paths import confined, protocol_dir

    base = protocol_dir(tmp_path, "p")
    for part in ("..", ".", "a/b", "/etc", ""):
        with pytest.raises(StateError):
            confined(base, "runs", part)
    base.mkdir()
    (base / "runs").symlink_to(tmp_path)
    with pytest.raises(StateError, match="outside"):
        confined(base, "runs", "x.json")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(StateError, match="not a folder"):
        protocol_dir(tmp_path, "file")


# --- 7. a stray or edited run file never changes the table -------------------------------------


@pytest.mark.slow
def test_stray_run_file_does_not_change_the_table(tmp_path: Path) -> None:
    protocol = write_protocol_file(tmp_path, {**SMALL, "reproductions": 2})
    results = tmp_path / "results"
    assert run(protocol, results) == 0
    reference = table(results)
    reference_summary = summary_rows(results)
    runs = results / "tiny" / "runs" / "glyphs" / "contrastive" / "standard"
    original = (runs / "seed1.json").read_text(encoding="utf-8")
    stray = json.loads(original)
    for row in stray["rows"]:
        row["seed"], row["value"] = 7, 0.0
    (runs / "seed7.json").write_text(json.dumps(stray), encoding="utf-8")  # a copied run file
    edited = json.loads(original)
    for row in edited["rows"]:
        row["value"] = 1.0
    (runs / "seed1.json").write_text(json.dumps(edited), encoding="utf-8")  # an edited one

    assert run(protocol, results) == 0  # resumes: nothing left to train
    pd.testing.assert_frame_equal(table(results), reference)
    assert summary_rows(results) == reference_summary  # n = 2, the stored means
    assert (runs / "seed1.json").read_text(encoding="utf-8") == original  # checked, rewritten
    assert main(["rebuild", str(protocol), "--results", str(results)]) == 0
    pd.testing.assert_frame_equal(table(results), reference)


# --- 8. tampered caches are rebuilt with one line ------------------------------------------------


def test_tampered_features_cache_is_rebuilt_with_one_line(tmp_path: Path, capsys) -> None:
    from bench.digest import DIGEST_KEY
    from bench.features import load_features, save_features

    features = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    path = tmp_path / "features" / "entry.npz"
    save_features(path, features)
    np.testing.assert_array_equal(load_features(path, 20), features)
    assert capsys.readouterr().err == ""

    def damaged(expect: str) -> None:
        assert load_features(path, 20) is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and expect in err[0] and \
            "rebuilding" in err[0], err

    with np.load(path) as archive:  # rows reordered, the old digest kept: same shape, wrong
        digest = archive[DIGEST_KEY]
    np.savez(path, features=features[::-1].copy(), **{DIGEST_KEY: digest})
    damaged("does not match its digest")
    save_features(path, features)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    damaged("unreadable")
    save_features(path, features[:10])  # intact, but of another dataset size
    damaged("expected float32 features of 20 rows")
    save_features(path, features.astype(np.float64))  # save casts: a hand-made wrong dtype
    np.savez(path, features=features.astype(np.float64),
             **{DIGEST_KEY: np.array(__import__("bench.digest").digest.arrays_sha256(
                 {"features": features.astype(np.float64)}))})
    damaged("expected float32")
    path.unlink()
    (tmp_path / "notes.txt").write_text("not an array\n", encoding="utf-8")
    path.symlink_to(tmp_path / "notes.txt")
    damaged("unreadable")
    save_features(path, features)  # replaces the link, not its target
    assert not path.is_symlink() and (tmp_path / "notes.txt").read_text() == "not an array\n"
    path.unlink()
    np.save(path.with_suffix(""), features)  # the old, digest-less format under the new name
    path.with_suffix(".npy").rename(path)
    damaged("without its digest")
    path.unlink()
    path.mkdir()  # a folder in place of the entry
    damaged("not a regular file")
    save_features(path, features)
    assert "without caching it" in capsys.readouterr().err and path.is_dir()


@pytest.mark.slow
def test_tampered_features_cache_gives_the_uncached_features(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    from bench.data import load_dataset
    from bench.features import trunk_features

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("glyphs", image_size=32, max_classes=4)
    cpu = torch.device("cpu")
    reference, _ = trunk_features(ds, "mobilenet_v2", pretrained=True, device=cpu,
                                  progress=False, use_cache=False)
    first, _ = trunk_features(ds, "mobilenet_v2", pretrained=True, device=cpu, progress=False)
    [entry] = (tmp_path / "cache" / "features").glob("*.npz")
    with np.load(entry) as archive:
        arrays = dict(archive)
    arrays["features"] = arrays["features"][::-1].copy()
    np.savez(entry, **arrays)
    capsys.readouterr()
    again, _ = trunk_features(ds, "mobilenet_v2", pretrained=True, device=cpu, progress=False)
    assert "does not match its digest" in capsys.readouterr().err
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(first, reference)


def test_tampered_dataset_cache_is_rebuilt_with_one_line(tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    from bench.data import load_dataset

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    built = load_dataset("glyphs", image_size=16, max_classes=6)
    [entry] = (tmp_path / "cache" / "datasets").glob("*.npz")
    with np.load(entry) as archive:
        arrays = dict(archive)
    arrays["labels"] = arrays["labels"][::-1].copy()  # labels shuffled, digest kept
    np.savez(entry, **arrays)
    capsys.readouterr()
    again = load_dataset("glyphs", image_size=16, max_classes=6)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match its digest" in err[0] and str(entry) in err[0]
    np.testing.assert_array_equal(again.labels, built.labels)
    np.testing.assert_array_equal(again.images, built.images)
    assert load_dataset("glyphs", image_size=16, max_classes=6) is not None
    assert capsys.readouterr().err == ""  # rewritten whole: read silently now
    entry.unlink()
    entry.mkdir()  # a folder in its place: built, used, not cached, one line each time
    np.testing.assert_array_equal(load_dataset("glyphs", image_size=16, max_classes=6).labels,
                                  built.labels)
    assert "not a regular file" in capsys.readouterr().err


# --- 9. an alias bomb is refused at once, in bounded memory --------------------------------------


def test_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path, capsys) -> None:
    import tracemalloc

    levels = ["x0: &x0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"  # 10**9 strings when expanded
    path.write_text("name: bomb\ndataset: {name: glyphs}\n" + "\n".join(levels) + "\n"
                    "methods:\n  - name: m\n    params: {loss: ContrastiveLoss}\n    search:\n"
                    "      loss_params.neg_margin: {type: categorical, choices: *x8}\n",
                    encoding="utf-8")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert main(["validate", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 50 * 2**20, peak
    assert "alias bomb" in capsys.readouterr().err


# --- 10. damaged storage and unwritable results: exit 3, one line --------------------------------


@pytest.mark.slow
def test_damaged_storage_is_one_line_exit_3_and_keeps_results(tmp_path: Path, capsys) -> None:
    protocol = write_protocol_file(tmp_path, SMALL)
    results = tmp_path / "results"
    assert run(protocol, results) == 0
    db = results / "tiny" / "study.db"
    good = db.read_bytes()
    kept = {name: (results / "tiny" / name).read_bytes() for name in ("results.csv",
                                                                      "summary.md")}
    for damage in (b"garbage " * 512, good[: len(good) // 2], good[:1000]):
        db.write_bytes(damage)
        capsys.readouterr()
        for argv in (["run", str(protocol), "--results", str(results), "--no-progress"],
                     ["status", str(protocol), "--results", str(results)],
                     ["rebuild", str(protocol), "--results", str(results)]):
            assert main(argv) == 3, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(db) in err[0], err
            assert "damaged or not an optuna database" in err[0] and "Traceback" not in err[0]
        for name, data in kept.items():
            assert (results / "tiny" / name).read_bytes() == data
    assert main(["run", str(protocol), "--results", str(results), "--no-progress",
                 "--fresh"]) == 0  # what the line says to do works


def test_read_only_results_folder_is_one_line_exit_3(write_protocol, tmp_path: Path,
                                                      monkeypatch, capsys) -> None:
    protocol = write_protocol(SMALL)
    results = tmp_path / "results"
    results.mkdir()

    def refuse(*args: Any, dir: str = "", **kwargs: Any):  # noqa: A002 - mkstemp's name
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{dir}/.x.tmp")

    mkstemp = bench.atomic.tempfile.mkstemp

    def refuse_in_results(*args: Any, dir: str = "", **kwargs: Any):  # noqa: A002
        if str(results) in str(dir):
            refuse(dir=dir)
        return mkstemp(*args, dir=dir, **kwargs)

    if os.geteuid() != 0:  # a real read-only folder (root ignores permission bits)
        results.chmod(0o555)
    else:
        monkeypatch.setattr(bench.atomic.tempfile, "mkstemp", refuse_in_results)
        monkeypatch.setattr("bench.safe_paths.os.access", lambda *a, **k: True)
    try:
        code = main(["run", str(protocol), "--results", str(results), "--no-progress"])
    finally:
        results.chmod(0o755)
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench: error: " in err[0] and str(results) in err[0], err
    assert "Permission denied" in err[0] or "not writable" in err[0]


def test_unwritable_results_folder_is_refused_before_any_work(write_protocol, tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    import bench.safe_paths

    protocol = write_protocol(SMALL)
    monkeypatch.setattr(bench.safe_paths.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(bench.runner.ProtocolRun, "load", lambda *a: pytest.fail("loaded"))
    assert main(["run", str(protocol), "--results", str(tmp_path / "r"), "--no-progress"]) == 3
    assert "is not writable" in capsys.readouterr().err


# --- 11. audit cases that must now succeed -------------------------------------------------------


def _decoded(path: Path) -> np.ndarray:
    from bench.data.real.safety import open_rgb

    return np.asarray(open_rgb(path))


def test_transparent_pixels_are_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    rgba[0, 0] = (255, 0, 0, 255)  # one opaque red pixel
    rgba[0, 1] = (0, 0, 255, 128)  # half-transparent blue
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = _decoded(tmp_path / "a.png")
    assert (out[3, 3] == 255).all() and tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (127, 127, 255)
    grey_alpha = Image.fromarray(rgba[..., 0], mode="L").convert("LA")
    grey_alpha.putalpha(Image.fromarray(rgba[..., 3], mode="L"))
    grey_alpha.save(tmp_path / "la.png")
    assert (_decoded(tmp_path / "la.png")[3, 3] == 255).all()
    palette = Image.fromarray(rgba, mode="RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((3, 3))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((3, 3)))
    assert (_decoded(tmp_path / "p.png")[3, 3] == 255).all()


def test_16_bit_images_are_scaled_not_saturated(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = _decoded(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)  # landscape, stored sideways
    pixels[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = _decoded(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)  # shown upright: portrait
    assert out[:8].mean() > 200 and out[12:].mean() < 50  # the white half on top


def test_mixed_uint64_int64_ids_above_2_53_stay_distinct() -> None:
    from bench.evaluate import evaluate_reid, evaluate_retrieval

    big = 2**53  # big + 1 is not a float64: it rounds to big
    q = np.array([[0.0, 0.0], [10.0, 0.0]])
    ref = np.array([[0.1, 0.0], [10.1, 0.0], [50.0, 0.0]])
    q_ids = np.array([big, big + 2], dtype=np.uint64)
    ref_ids = np.array([big + 1, big + 2, big], dtype=np.int64)  # query 0's match is far
    out = evaluate_retrieval(q, q_ids, ref, ref_ids, nmi=False, k=1)
    assert out["precision_at_1"] == 0.5
    merged = evaluate_retrieval(q, q_ids.astype(np.float64), ref, ref_ids.astype(np.float64),
                                nmi=False, k=1)
    assert merged["precision_at_1"] == 1.0  # what float64 did: the bug this guards against
    reid = evaluate_reid(q, q_ids, [0, 0], ref, ref_ids, [1, 1, 1], ranks=(1,))
    assert reid["cmc_1"] == 0.5 and reid["mAP"] == pytest.approx((1 / 3 + 1) / 2)
    # ids above int64 with negative ids: no numpy integer holds both, still exact
    huge = np.array([2**64 - 1, 5], dtype=np.uint64)
    out = evaluate_retrieval(q, huge, ref, np.array([-1, 5, 5], dtype=np.int64), nmi=False,
                             k=1)
    assert out["precision_at_1"] == 1.0  # query 0 has no match (skipped), query 1 hits
    junk_like = evaluate_reid(q, huge, [0, 0], ref, np.array([-1, 5, 7], dtype=np.int64),
                              [1, 1, 1], ranks=(1,))
    assert junk_like["cmc_1"] == 1.0  # 2**64 - 1 is not the junk id -1


def test_reid_offers_the_official_trapezoid_ap_too() -> None:
    from bench.evaluate import evaluate_reid

    q = np.zeros((1, 1))
    g = np.array([[1.0], [2.0], [3.0], [4.0]])  # ranked in this order
    ids = [9, 7, 9, 9]  # matches at ranks 1, 3, 4 (all from another camera)
    out = evaluate_reid(q, [9], [0], g, ids, [1, 1, 1, 1], ranks=(1,), ap="both")
    ours = (1 / 1 + 2 / 3 + 3 / 4) / 3
    # compute_AP.m: mean over matches of (precision before it + precision at it) / 2
    official = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3
    assert out["mAP"] == pytest.approx(ours) and out["mAP_market1501"] == pytest.approx(official)
    assert set(evaluate_reid(q, [9], [0], g, ids, [1, 1, 1, 1], ranks=(1,))) == {"cmc_1", "mAP"}


def test_domain_class_folders_with_repeated_names_are_not_merged_silently(tmp_path: Path,
                                                                          capsys) -> None:
    from real_layouts import write_image

    from bench.data.real.prepare import open_dataset

    for alphabet in ("greek", "latin"):  # Omniglot: <alphabet>/<character>/
        for character in ("character01", "character02"):
            for i in range(2):
                write_image(tmp_path, f"{alphabet}/{character}/{i}.png")
    capsys.readouterr()
    merged = open_dataset("folder", tmp_path, image_size=8)
    err = capsys.readouterr().err
    assert merged.counts()["classes"] == 2
    assert "2 class name(s) appear in several domains" in err and "classes=per_domain" in err
    apart = open_dataset("folder", tmp_path, image_size=8, classes="per_domain")
    assert apart.counts()["classes"] == 4 and "greek/character01" in apart.class_names
    assert capsys.readouterr().err == ""
    open_dataset("folder", tmp_path, image_size=8, classes="shared")
    assert capsys.readouterr().err == ""


def test_prepare_and_verify_accept_counts_off(tmp_path: Path, capsys) -> None:
    from real_layouts import make_folder

    root = make_folder(tmp_path / "data")
    for action in ("prepare", "verify"):
        assert main(["datasets", action, "folder", "--root", str(root), "--option",
                     "counts=off", *(["--no-download"] if action == "prepare" else [])]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_utf16_protocol_is_read(write_protocol, tmp_path: Path, capsys) -> None:
    text = write_protocol(SMALL).read_text(encoding="utf-8")
    for encoding in ("utf-16", "utf-8-sig"):
        path = tmp_path / f"{encoding}.yaml"
        path.write_bytes(text.encode(encoding))
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count(": valid") == 2


def test_summary_says_how_the_state_was_chosen(write_protocol, tmp_path: Path) -> None:
    from bench.plan import plan_protocol
    from bench.results_writer import ResultsWriter

    for checkpoint, said, unsaid in (("last", "checkpoint `last`", "early stopping"),
                                     ("best", "early stopping on validation", "`last`")):
        protocol = write_protocol({"train": {**SMALL["train"], "checkpoint": checkpoint}})
        text = ResultsWriter(plan_protocol(protocol), tmp_path, device="cpu", states={}
                             ).summary([])
        assert said in text and unsaid not in text


def test_reid_validation_without_cross_camera_match_names_validation_and_source() -> None:
    from bench.errors import BenchError, DataError
    from bench.experiment import validation_data_error
    from bench.protocol import parse_protocol
    from bench.splits import ClassSplit

    protocol = parse_protocol({
        "name": "u", "datasets": [{"name": "glyphs"}],
        "setting": {"kind": "uda", "source": ["sans"], "target": ["serif"]},
        "methods": [{"name": "m", "params": {"loss": "ContrastiveLoss"}}]})
    ds = type("DS", (), {"name": "glyphs"})()
    fold = ClassSplit("fold0", np.arange(3), np.arange(3, 5), np.arange(5, 8))
    error = validation_data_error(BenchError("no query has a valid gallery match", field=
                                             "gallery_ids"), protocol, ds, fold)
    assert isinstance(error, DataError)
    line = str(error)
    assert "validation (fold0" in line and "source sans" in line and "glyphs" in line


@pytest.mark.slow
def test_fresh_with_a_shared_storage_deletes_this_protocols_studies_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    other = optuna.create_study(study_name="other:glyphs:m:standard", storage=url)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    protocol = write_protocol_file(tmp_path, SMALL)
    results = tmp_path / "results"
    assert run(protocol, results, "--storage", url) == 0
    first = {s.study_name: s._study_id for s in optuna.get_all_study_summaries(url)}
    assert any(name.startswith("tiny:") for name in first)
    between = datetime.now()
    assert run(protocol, results, "--storage", url, "--fresh") == 0
    again = {s.study_name: s._study_id for s in optuna.get_all_study_summaries(url)}
    assert again.keys() == first.keys()
    for name in again:
        starts = [t.datetime_start for t in optuna.load_study(study_name=name, storage=url
                                                              ).get_trials(deepcopy=False)]
        fresh = [start > between for start in starts]
        assert all(fresh) if name.startswith("tiny:") else not any(fresh), name


def test_pseudo_label_audit_comes_from_the_storage_not_run_files(tmp_path: Path) -> None:
    from bench.summary_text import pseudo_label_audit

    entry = {"epoch": 0, "clusters": 4, "outliers": 1, "purity": 0.5, "nmi": 0.25, "ari": 0.1,
             "identities": 6}
    stored = {("pool", "spcl"): {"standard/seed0": {"pseudo_labels": [entry]},
                                 "standard/seed1": {"pseudo_labels": [{**entry, "purity": 0.7}]}}}
    runs = tmp_path / "runs" / "pool" / "spcl" / "standard"
    runs.mkdir(parents=True)  # a stray run file on disk: never read
    (runs / "seed9.json").write_text(json.dumps({"pseudo_labels": [{**entry, "purity": 0.0}]}),
                                     encoding="utf-8")
    lines = pseudo_label_audit(stored, "pool", ["spcl"])
    assert len(lines) == 3 and "| spcl | 0 | 2 | 6 |" in lines[2] and "0.600" in lines[2]
    assert pseudo_label_audit({}, "pool", ["spcl"]) == []
