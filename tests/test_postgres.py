"""Many `bench worker` processes on one PostgreSQL storage (the set-up for many machines).

Acceptance of scaling out: three workers share a protocol's search trials and test jobs through
PostgreSQL; exactly the budget completes, nothing runs twice, and `bench rebuild` writes the same
results.csv as one `bench run` process with its own SQLite file. A worker SIGKILLed mid-trial
loses nothing: its trial is failed by heartbeat and run again by another worker. The tests at
the end pin three fixed faults: a killed search trial's re-run must train its own values (not
those of a trial that ran meanwhile); a worker killed before its trial's first heartbeat must not
block everyone; a bare postgresql:// URL opens with psycopg2.

The searches use the random sampler on purpose. Trial k's values are seeded by its slot, but
with TPE they also depend on the trials completed before it, and with several workers the
order in which trials complete is a race: a multi-worker TPE search is a valid search but not
the same one as a one-process run, so only a random search can be compared value for value.

Which worker runs which trial: each worker connects with its own `application_name`, and a
trigger added to the test database records it for every trial row inserted (the storage itself
does not say which process runs a trial).

Needs a PostgreSQL server: BENCH_TEST_POSTGRES=postgresql://user@host:port/db (.ci/run starts a
throw-away one on 127.0.0.1:55432); each test creates and drops its own database there. Without
it the tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_PROTOCOL
from optuna.trial import FrozenTrial, TrialState

from bench.cli import main
from bench.jobs import FAILURE, JOB, RESULT
from bench.protocol import BudgetSpec, SearchDimension
from bench.search import (
    SlotSeededSampler,
    fail_stale,
    search_step,
    slot_of,
    suggest,
)
from bench.storage import open_storage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
GRACE = 6  # seconds; workers send a heartbeat every GRACE // 3 = 2 s
SKIP = "no PostgreSQL: set BENCH_TEST_POSTGRES=postgresql://... (.ci/run starts one)"
PROTOCOL = {
    "methods": [
        {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
         "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}},
        {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"},
         "search": {"loss_optimizer.lr": {"type": "log_float", "low": 0.003, "high": 0.3}}},
    ],
    "train": {"iterations": 20, "batch_size": 32, "m_per_class": 4, "validate_every": 10,
              "patience": 3},
    "budget": {"trials": 3, "sampler": "random", "seed": 0, "max_failures": 2},
    "reproductions": 2,
}
BUDGET = PROTOCOL["budget"]["trials"]
METHODS = {"contrastive", "proxy_anchor"}
JOBS = ["standard/seed0", "standard/seed1"]
KEYS = ["dataset", "split", "method", "seed", "model", "metric"]
OWNERS = """
CREATE TABLE test_trial_owner (trial_id integer PRIMARY KEY, owner text NOT NULL);
CREATE FUNCTION test_record_owner() RETURNS trigger AS $$
BEGIN
  INSERT INTO test_trial_owner VALUES (NEW.trial_id, current_setting('application_name'));
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_trial_owner AFTER INSERT ON trials
  FOR EACH ROW EXECUTE FUNCTION test_record_owner();
"""


class ValuesTrainedTwice(AssertionError):
    """A re-run search trial drew the values of another live trial."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def server() -> str:
    """The server's URL from BENCH_TEST_POSTGRES; skip without one (fail under CI)."""
    url = os.environ.get("BENCH_TEST_POSTGRES", "").strip()
    if not url:
        if _in_ci():
            pytest.fail(f"{SKIP}; CI is set, so this is a failure, not a skip")
        pytest.skip(SKIP)
    return url


def _with(url: str, **query: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if query:
        parsed = parsed.update_query_dict(query)
    return parsed.render_as_string(hide_password=False)


def _admin(url: str):
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql").difference_update_query(
        ["application_name"])
    connection = psycopg2.connect(parsed.render_as_string(hide_password=False),
                                  connect_timeout=10, application_name="test")
    connection.autocommit = True
    return connection


@pytest.fixture
def database(server: str) -> Iterator[str]:
    """A fresh, uniquely named database on the server, dropped after the test.

    The URL names the driver (postgresql+psycopg2://): SQLAlchemy 2.1 maps a bare
    postgresql:// to psycopg 3, which the `postgres` extra does not install (see
    test_plain_postgresql_url_opens)."""
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:16]}"
    admin = _admin(server)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield make_url(server).set(drivername="postgresql+psycopg2", database=name
                                   ).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="module")
def protocol(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data.update(yaml.safe_load(yaml.safe_dump(PROTOCOL)))
    path = tmp_path_factory.mktemp("pg-protocol") / "protocol.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(protocol: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """results.csv of one undisturbed `bench run` process on its own SQLite storage (one torch
    thread, like the workers)."""
    results = tmp_path_factory.mktemp("pg-reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(protocol), "--results", str(results), "--no-progress",
                     "--grace", str(GRACE)]) == 0
    finally:
        torch.set_num_threads(threads)
    return _table(results / "tiny" / "results.csv")


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values(KEYS).reset_index(drop=True)


def _start_workers(protocol: Path, url: str, logs: Path, n: int = 3) -> list[subprocess.Popen]:
    """n `bench worker` processes (worker i connects as application_name worker<i>), let go at
    the same moment.

    Start-up (imports, the dataset) takes seconds and varies with the machine's load, the work
    itself well under that: behind a starting gate (the studies table locked until every
    worker waits on it) no worker can do all the work before the others arrive."""
    open_storage(url)  # the optuna schema, so the owner trigger can be added before any trial
    admin = _admin(url)
    with admin.cursor() as cursor:
        cursor.execute(OWNERS)
    gate = _admin(url)
    gate.autocommit = False
    with gate.cursor() as cursor:
        cursor.execute("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = []
    try:
        for i in range(n):
            command = [sys.executable, "-m", "bench", "worker", str(protocol), "--storage",
                       _with(url, application_name=f"worker{i}"), "--threads", "1",
                       "--grace", str(GRACE), "--no-progress", "--results",
                       str(logs / "results")]
            log = (logs / f"worker{i}.log").open("w", encoding="utf-8")
            workers.append(subprocess.Popen(command, env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
            log.close()
        deadline = time.time() + 300
        while True:
            for i, worker in enumerate(workers):
                if worker.poll() is not None:
                    log = (logs / f"worker{i}.log").read_text(encoding="utf-8")
                    raise AssertionError(f"worker {i} ended before the gate:\n{log[-3000:]}")
            with admin.cursor() as cursor:
                cursor.execute("SELECT count(DISTINCT application_name) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND wait_event_type = "
                               "'Lock' AND application_name LIKE 'worker%%'")
                if cursor.fetchone()[0] == n:
                    break
            assert time.time() < deadline, "the workers never reached the storage"
            time.sleep(0.1)
    except BaseException:
        _kill(workers)
        raise
    finally:
        gate.commit()
        gate.close()
        admin.close()
    return workers


def _finish(workers: list[subprocess.Popen], logs: Path, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    try:
        for i, worker in enumerate(workers):
            code = worker.wait(timeout=max(1.0, deadline - time.time()))
            if code != -signal.SIGKILL:
                log = (logs / f"worker{i}.log").read_text(encoding="utf-8")
                assert code == 0, f"worker {i} exited with {code}:\n{log[-3000:]}"
    finally:
        _kill(workers)


def _kill(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _owners(url: str) -> dict[int, str]:
    admin = _admin(url)
    with admin.cursor() as cursor:
        cursor.execute("SELECT trial_id, owner FROM test_trial_owner")
        owners = dict(cursor.fetchall())
    admin.close()
    return owners


def _studies(url: str) -> tuple[dict[str, optuna.Study], dict[str, optuna.Study]]:
    """(search studies, test-job studies) by method."""
    storage = open_storage(url)
    search, tests = {}, {}
    for summary in optuna.get_all_study_summaries(storage):
        name = summary.study_name
        method = name.split(":")[2]
        group = tests if ":test:" in name else search
        assert method not in group, f"two studies for {method}: chosen values differ"
        group[method] = optuna.load_study(study_name=name, storage=storage)
    assert set(search) == set(tests) == METHODS
    return search, tests


def _check_storage(url: str) -> list[FrozenTrial]:
    """Exactly the budget, no values or job run twice, every job done; returns FAILed trials."""
    search, tests = _studies(url)
    failed = []
    for method, study in search.items():
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == BUDGET, (method, [t.state.name for t in trials])
        values = [tuple(sorted(t.params.items())) for t in complete]
        if len(set(values)) < BUDGET:
            raise ValuesTrainedTwice(f"{method}: values trained twice: {values}")
        assert sorted(slot_of(study, t.number) for t in complete) == list(range(BUDGET))
        assert not any(t.state == TrialState.RUNNING for t in trials)
        failed += [t for t in trials if t.state == TrialState.FAIL]
    for method, study in tests.items():
        trials = study.get_trials(deepcopy=False)
        done = [t.user_attrs[JOB] for t in trials if t.state == TrialState.COMPLETE]
        assert sorted(done) == JOBS, f"{method}: completed jobs {done}"
        assert not any(t.state == TrialState.RUNNING for t in trials)
        failed += [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:  # only heartbeat failures: no method failed for a reason of its own
        assert FAILURE not in t.user_attrs, t.user_attrs
    return failed


def _rebuild(protocol: Path, url: str, results: Path) -> pd.DataFrame:
    assert main(["rebuild", str(protocol), "--storage", url, "--results", str(results)]) == 0
    return _table(results / "tiny" / "results.csv")


def test_three_workers_share_the_budget_and_equal_one_process(
        protocol: Path, reference: pd.DataFrame, database: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    workers = _start_workers(protocol, database, tmp_path)
    _finish(workers, tmp_path)
    elapsed = time.perf_counter() - started
    assert _check_storage(database) == []  # nobody died: no trial failed
    owners = _owners(database)
    search, tests = _studies(database)
    worked = {owners[t._trial_id] for s in [*search.values(), *tests.values()]
              for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    assert len(worked) >= 2, f"the work was not shared: {worked}"
    table = _rebuild(protocol, database, tmp_path / "rebuilt")
    pd.testing.assert_frame_equal(table, reference)
    print(f"3 workers: {elapsed:.1f} s; completed trials by {sorted(worked)}")


def _kill_inside(workers: list[subprocess.Popen], url: str,
                 wanted: Callable[[optuna.storages.BaseStorage, FrozenTrial, str], str],
                 timeout: float = 240) -> tuple[int, str, str]:
    """SIGKILL a worker inside a RUNNING trial that ``wanted`` accepts: (that trial's id, its
    study's name, its owner).

    The trial's owner is stopped (SIGSTOP) first, so what the storage shows of it cannot change
    under the check; ``wanted(storage, trial, study_name)`` answers "yes", "no" or "wait" (keep
    the owner stopped a little: other workers may get there). Only a trial whose heartbeat has
    been recorded is taken, and no worker stays stopped long enough to go stale."""
    storage = open_storage(url)
    admin = _admin(url)
    deadline = time.time() + timeout

    def running() -> list[tuple[int, str, str]]:
        with admin.cursor() as cursor:
            cursor.execute("SELECT t.trial_id, s.study_name, o.owner FROM trials t "
                           "JOIN studies s ON s.study_id = t.study_id "
                           "JOIN test_trial_owner o ON o.trial_id = t.trial_id "
                           "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                           "WHERE t.state = 'RUNNING' ORDER BY t.trial_id")
            return cursor.fetchall()

    try:
        while True:
            assert time.time() < deadline, "never caught a worker inside a wanted trial"
            assert any(w.poll() is None for w in workers), "the work ended before a kill"
            found = [(tid, name, who) for tid, name, who in running()
                     if wanted(storage, storage.get_trial(tid), name) != "no"]
            if not found:
                time.sleep(0.02)
                continue
            owner = found[0][2]  # a candidate: stop its worker and look again
            victim = workers[int(owner.removeprefix("worker"))]
            victim.send_signal(signal.SIGSTOP)
            try:
                stop_until = time.time() + GRACE / 3
                while time.time() < stop_until:
                    answers = {(tid, name): wanted(storage, storage.get_trial(tid), name)
                               for tid, name, who in running() if who == owner}
                    chosen = [key for key, answer in answers.items() if answer == "yes"]
                    if chosen:
                        victim.kill()
                        victim.wait()
                        return (*chosen[0], owner)
                    if "wait" not in answers.values():
                        break
                    time.sleep(0.05)
            finally:
                if victim.poll() is None:
                    victim.send_signal(signal.SIGCONT)
            time.sleep(0.02)
    finally:
        admin.close()


def _in_job(storage, trial: FrozenTrial, study: str) -> str:
    """A job trial that has named its job and not yet stored its result."""
    attrs = trial.user_attrs
    return "yes" if ":test:" in study and JOB in attrs and RESULT not in attrs else "no"


def test_worker_killed_mid_job_loses_nothing(
        protocol: Path, reference: pd.DataFrame, database: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    workers = _start_workers(protocol, database, tmp_path)
    try:
        killed_id, name, victim = _kill_inside(workers, database, _in_job)
    except BaseException:
        _kill(workers)
        raise
    caught = time.perf_counter() - started
    _finish(workers, tmp_path)
    elapsed = time.perf_counter() - started
    assert workers[int(victim.removeprefix("worker"))].returncode == -signal.SIGKILL
    failed = _check_storage(database)  # every job done once, exactly the budget
    assert [t._trial_id for t in failed] == [killed_id], "only the killed trial fails"
    killed = failed[0]
    study = optuna.load_study(study_name=name, storage=open_storage(database))
    owners = _owners(database)
    again = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs[JOB] == killed.user_attrs[JOB]]
    assert len(again) == 1 and again[0].number > killed.number
    assert owners[again[0]._trial_id] != victim, "the job was re-run by another worker"
    table = _rebuild(protocol, database, tmp_path / "rebuilt")
    pd.testing.assert_frame_equal(table, reference)
    print(f"{victim} killed in job {killed.user_attrs[JOB]} of {name.split(':')[2]} after "
          f"{caught:.1f} s; re-run by {owners[again[0]._trial_id]}; done after {elapsed:.1f} s")


def test_rerun_of_a_killed_search_trial_draws_its_values(tmp_path: Path) -> None:
    """A worker killed inside search trial 1 while another worker ran trial 2: the re-run must
    train trial 1's values (as one process would), not trial 2's again. Shown here on the
    sampler in one process (seconds); with three workers on PostgreSQL, killing a worker
    inside a search trial that is not the newest one gives the same duplicate."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.sampler = SlotSeededSampler("random", 0)
    space = {"x": SearchDimension(type="float", low=0.0, high=1.0)}

    def start() -> tuple[optuna.Trial, dict]:  # a trial as a worker starts it
        trial = study.ask()
        values = suggest(trial, space)
        storage.record_heartbeat(trial._trial_id)
        return trial, values

    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
        warnings.simplefilter("ignore", UserWarning)
        first, _ = start()
        study.tell(first, 0.5)
        dead, dead_values = start()  # worker A, SIGKILLed inside it
        later, later_values = start()  # worker B, started meanwhile, completes
        study.tell(later, 0.5)
    time.sleep(2.5)
    fail_stale(study)
    assert storage.get_trial(dead._trial_id).state == TrialState.FAIL
    trained = []
    search_step(study, space, BudgetSpec(trials=3, sampler="random", seed=0),
                lambda values: (trained.append(values), (0.5, {}))[1])
    assert len(trained) == 1 and dead_values != later_values
    if trained[0] == later_values:
        raise ValuesTrainedTwice(f"re-run trained {trained[0]} again (trial 2's values); "
                                 f"trial 1's {dead_values} are never tried")
    assert trained[0] == dead_values


class NeverFailed(AssertionError):
    """A dead worker's trial stays RUNNING for good."""


def test_trial_killed_before_its_first_heartbeat_is_failed(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.sampler = SlotSeededSampler("random", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        study.ask()  # what optimize() does first; the worker is SIGKILLed right after
    time.sleep(2.5)
    space = {"x": SearchDimension(type="float", low=0.0, high=1.0)}
    step = search_step(study, space, BudgetSpec(trials=1, sampler="random", seed=0),
                       lambda values: (0.5, {}))
    if step.state == "blocked":
        raise NeverFailed("trial 0 is still RUNNING 2.5 s after its worker died (grace 1 s)")
    assert step.state == "worked"


def test_plain_postgresql_url_opens(database: str) -> None:
    """`--storage postgresql://user@host/db`, as the docs and --help write it, opens."""
    from sqlalchemy.engine import make_url

    plain = make_url(database).set(drivername="postgresql").render_as_string(
        hide_password=False)
    study = optuna.create_study(storage=open_storage(plain), study_name="plain")
    assert study.study_name == "plain"


def _small_protocol(path: Path, iterations: int) -> Path:
    """One method, one search trial, one reproduction: the cheapest run with both studies."""
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data.update({"methods": [PROTOCOL["methods"][0]], "reproductions": 1,
                 "budget": {"trials": 1, "sampler": "random", "seed": 0, "max_failures": 1}})
    data["train"]["iterations"] = iterations
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_edited_protocol_is_refused_and_fresh_deletes_its_studies(database: str, tmp_path: Path,
                                                                 capsys) -> None:
    """Issue 13 on PostgreSQL: a worker with an edited protocol is refused (one line, exit 2,
    nothing added to the studies); `bench run --fresh --storage` deletes the protocol's studies
    there and leaves none of the original protocol (another protocol's study is kept)."""
    from bench.study_protocol import PROTOCOL_HASH

    original = _small_protocol(tmp_path / "original.yaml", 10)
    edited = _small_protocol(tmp_path / "edited.yaml", 20)
    assert main(["run", str(original), "--storage", database, "--results",
                 str(tmp_path / "a"), "--no-progress"]) == 0
    storage = open_storage(database)
    optuna.create_study(storage=storage, study_name="other:glyphs:m:standard")
    old_hashes = {s.user_attrs[PROTOCOL_HASH] for s in optuna.get_all_study_summaries(storage)
                  if s.study_name.startswith("tiny:")}
    before = {s.study_name: (s._study_id, s.n_trials)
              for s in optuna.get_all_study_summaries(storage)}
    capsys.readouterr()
    assert main(["worker", str(edited), "--storage", database, "--results",
                 str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.iterations: 10 -> 20" in err, err
    assert {s.study_name: (s._study_id, s.n_trials)
            for s in optuna.get_all_study_summaries(storage)} == before
    assert main(["run", str(edited), "--fresh", "--storage", database, "--results",
                 str(tmp_path / "c"), "--no-progress"]) == 0
    assert "deleted 2 studies of protocol tiny" in capsys.readouterr().out
    after = optuna.get_all_study_summaries(open_storage(database))
    old_ids = {i for name, (i, _) in before.items() if name.startswith("tiny:")}
    tiny = [s for s in after if s.study_name.startswith("tiny:")]
    assert len(old_ids) == 2 and tiny and not {s._study_id for s in tiny} & old_ids
    assert "other:glyphs:m:standard" in {s.study_name for s in after}
    hashes = {s.user_attrs[PROTOCOL_HASH] for s in tiny}
    assert len(old_hashes) == len(hashes) == 1 and not hashes & old_hashes
