"""`bench run -j N`: local helper processes share the work and give the one-process values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.errors import BenchError
from bench.local_jobs import (
    auto_jobs,
    pin_process_threads,
    resolve_jobs,
    threads_per_process,
    training_runs,
)
from bench.protocol import BudgetSpec, parse_protocol
from bench.workers import worker_main

SEARCHED = [
    {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
     "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}},
    {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"},
     "search": {"loss_optimizer.lr": {"type": "log_float", "low": 0.003, "high": 0.3}}},
]


def test_auto_jobs_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert auto_jobs(80, BudgetSpec(trials=3)) == 2
    assert auto_jobs(8, BudgetSpec(trials=3)) == 1  # too small to repay a helper's start-up
    assert auto_jobs(80, BudgetSpec(trials=20)) == 1  # TPE past start-up: order-dependent
    assert auto_jobs(80, BudgetSpec(trials=20, sampler="random")) == 2
    protocol = parse_protocol({"name": "p", "dataset": {"name": "glyphs"}, "folds": 2,
                               "reproductions": 2, "budget": {"trials": 3},
                               "methods": SEARCHED})
    assert training_runs(protocol) == 2 * (3 + 2) * 2
    monkeypatch.delenv("BENCH_JOBS", raising=False)
    assert resolve_jobs(None, protocol) == 1  # one process unless asked: exact reference values
    assert resolve_jobs("auto", protocol) == 2 and resolve_jobs("3", protocol) == 3
    monkeypatch.setenv("BENCH_JOBS", "auto")
    assert resolve_jobs(None, protocol) == 2
    with pytest.raises(BenchError, match="positive integer"):
        resolve_jobs("0", protocol)


def test_pinned_threads_make_processes_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol that pins cpu_threads computes alike in every process, so `bench run` fills
    the cores by default; unpinned, one process stays the default."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.delenv("BENCH_JOBS", raising=False)
    base = {"name": "p", "dataset": {"name": "glyphs"}, "folds": 2, "reproductions": 2,
            "budget": {"trials": 3}, "methods": SEARCHED}
    assert resolve_jobs(None, parse_protocol(base)) == 1
    assert resolve_jobs(None, parse_protocol({**base, "cpu_threads": 1})) == 4
    assert resolve_jobs(None, parse_protocol({**base, "cpu_threads": 2})) == 2
    assert resolve_jobs(None, parse_protocol({**base, "cpu_threads": 4})) == 1
    assert threads_per_process(2, 1) == 1 and threads_per_process(2) == 2
    with pytest.raises(BenchError, match="cpu_threads"):
        parse_protocol({**base, "cpu_threads": 0})


def test_pin_process_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr("threadpoolctl.threadpool_limits", lambda limits: calls.append(limits))
    assert pin_process_threads(1, None) is None and calls == []  # one unpinned: torch's choice
    assert pin_process_threads(1, 1) == 1 and calls == [1, 1]
    assert pin_process_threads(2, None) == 2 and calls[2:] == [2, 2]
    assert pin_process_threads(4, 2) == 2


def test_worker_refuses_threads_that_contradict_the_protocol(write_protocol,
                                                              tmp_path: Path) -> None:
    protocol = write_protocol({"cpu_threads": 1})
    with pytest.raises(BenchError, match="pins cpu_threads: 1"):
        worker_main(str(protocol), f"sqlite:///{tmp_path / 's.db'}", str(tmp_path), threads=2)


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(write_protocol, tmp_path: Path) -> None:
    protocol = write_protocol({
        "train": {"iterations": 12, "batch_size": 32, "m_per_class": 4, "validate_every": 4,
                  "patience": 3},
        "budget": {"trials": 2, "sampler": "tpe", "seed": 0},
        "methods": SEARCHED,
        "cpu_threads": 1,  # every process computes alike: -j changes no value
    })
    tables = {}
    before = torch.get_num_threads()
    for jobs in ("1", "2"):
        results = tmp_path / f"j{jobs}"
        torch.set_num_threads(2)
        try:
            assert main(["run", str(protocol), "--results", str(results), "--no-progress",
                         "-j", jobs]) == 0
            assert torch.get_num_threads() == 1  # the run pinned this process, even alone
        finally:
            torch.set_num_threads(before)
        table = pd.read_csv(results / "tiny" / "results.csv")
        keys = ["method", "seed", "model", "metric"]
        tables[jobs] = table.sort_values(keys).reset_index(drop=True)
    one, two = tables["1"], tables["2"]
    assert len(one) == len(two) > 0
    pd.testing.assert_frame_equal(one[["method", "seed", "model", "metric", "value",
                                       "hyperparameters"]],
                                  two[["method", "seed", "model", "metric", "value",
                                       "hyperparameters"]])


def held_worker(protocol: Path, storage: Path, tmp_path: Path, stdin: str):
    """`bench worker --start-on-stdin` fed ``stdin`` (then its end)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "bench", "worker", str(protocol), "--storage",
         f"sqlite:///{storage}", "--results", str(tmp_path / "results"), "--no-progress",
         "--start-on-stdin"], input=stdin, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)})


@pytest.mark.slow
def test_a_held_helper_touches_nothing_until_released(write_protocol, tmp_path: Path) -> None:
    """`bench run -j` starts its helpers before its own imports: held, they open no storage and
    print nothing (not even a bad protocol's error: the run reports it) until told to go."""
    storage = tmp_path / "study.db"
    ended = held_worker(write_protocol(), storage, tmp_path, "")
    assert ended.returncode == 0 and ended.stderr == "" and not storage.exists()
    assert "not started" in ended.stdout
    bad = write_protocol({"methods": [{"name": "x", "method": "no_such_method"}]},
                         name="bad.yaml")
    refused = held_worker(bad, storage, tmp_path, "go\n")
    assert refused.returncode == 2 and refused.stderr == "" and not storage.exists()


def test_held_helpers_start_only_for_a_protocol_that_parses(
        write_protocol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.local_jobs import start_held_helpers

    started: list[list[str]] = []

    class FakeProcess:
        def __init__(self, command, **_kwargs) -> None:
            started.append(command)

    monkeypatch.setattr("subprocess.Popen", FakeProcess)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(BenchError):
        start_held_helpers(broken, "2", tmp_path / "results", None)
    assert started == []
    jobs, helpers = start_held_helpers(write_protocol({"cpu_threads": 1}), "3",
                                       tmp_path / "results", None)
    assert jobs == 3 and len(helpers) == 2 == len(started)
    command = started[0]
    assert "--start-on-stdin" in command and command[command.index("--threads") + 1] == "1"
    storage = command[command.index("--storage") + 1]
    assert storage == f"sqlite:///{(tmp_path / 'results').resolve() / 'tiny' / 'study.db'}"
    assert start_held_helpers(write_protocol(), "1", tmp_path / "results", None) == (1, [])
