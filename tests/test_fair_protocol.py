"""Fair-protocol behaviour of `bench run`: budgets, failures, resume, refusal of changed files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch

from bench import methods as methods_module
from bench.cli import main
from bench.methods.pml_loss import PmlLoss

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SEARCHED = [
    {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
     "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}},
    {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"},
     "search": {"loss_optimizer.lr": {"type": "log_float", "low": 0.003, "high": 0.3}}},
]
FAIR = {"methods": SEARCHED, "folds": 2, "reproductions": 2,
        "budget": {"trials": 2, "sampler": "tpe", "seed": 0, "max_failures": 2}}


def run(protocol: Path, results: Path, *extra: str) -> int:
    return main(["run", str(protocol), "--results", str(results), "--no-progress", *extra])


def trial_states(results: Path, study: str) -> dict[str, int]:
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{results / 'tiny' / 'study.db'}")
    out: dict[str, int] = {}
    for t in s.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_summary_has_intervals_and_chosen_hyperparameters(write_protocol, tmp_path: Path) -> None:
    protocol = write_protocol(FAIR)
    assert run(protocol, tmp_path) == 0
    summary = (tmp_path / "tiny" / "summary.md").read_text(encoding="utf-8")
    assert "concatenated" in summary and "separate" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| contrastive |"))
    assert " ± " in row and "loss_params.neg_margin=" in row
    frame = pd.read_csv(tmp_path / "tiny" / "results.csv")
    assert set(frame["model"]) == {"fold0", "fold1", "separate", "concatenated"}
    assert sorted(frame["seed"].unique()) == [0, 1]
    for column in ("protocol_sha256", "split_sha256", "hyperparameters", "torch", "pml",
                   "device", "k", "query_reference", "search_seed"):
        assert frame[column].notna().all(), column
    for name in ("contrastive", "proxy_anchor"):
        assert trial_states(tmp_path, f"tiny:glyphs:{name}:standard") == {"COMPLETE": 2}
    # Running again resumes: nothing is retrained, the table is unchanged.
    before = (tmp_path / "tiny" / "results.csv").read_bytes()
    started = time.perf_counter()
    assert run(protocol, tmp_path) == 0
    assert time.perf_counter() - started < 30
    assert (tmp_path / "tiny" / "results.csv").read_bytes() == before


def test_changed_protocol_is_refused_unless_fresh(write_protocol, tmp_path: Path,
                                                  capsys) -> None:
    protocol = write_protocol({"train": {"iterations": 10, "batch_size": 32, "m_per_class": 4,
                                         "validate_every": 5}})
    assert run(protocol, tmp_path) == 0
    protocol.write_text(protocol.read_text().replace("iterations: 10", "iterations: 12"))
    capsys.readouterr()
    assert run(protocol, tmp_path) == 2
    captured = capsys.readouterr()
    assert "-  iterations: 10" in captured.out + captured.err
    assert "+  iterations: 12" in captured.out + captured.err
    assert "--fresh" in captured.err.strip().splitlines()[-1]
    assert run(protocol, tmp_path, "--fresh") == 0


class NaNAbove(PmlLoss):
    """A test method whose loss is NaN when its searched `x` exceeds `limit`."""

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str):
        base = super().validate_params({"loss": "ContrastiveLoss"}, source=source, field=field)
        return base, float(params.get("x", 0.0)), float(params.get("limit", 0.5))

    def __init__(self, params, *, num_classes: int, embedding_size: int) -> None:
        base, self.x, self.limit = params
        super().__init__(base, num_classes=num_classes, embedding_size=embedding_size)

    def loss(self, model, batch) -> torch.Tensor:
        value = super().loss(model, batch)
        return value * float("nan") if self.x > self.limit else value


def test_nan_trials_are_recorded_and_budget_met(write_protocol, tmp_path: Path,
                                                monkeypatch) -> None:
    monkeypatch.setitem(methods_module.REGISTRY, "nan_above", NaNAbove)
    protocol = write_protocol({
        "budget": {"trials": 3, "sampler": "random", "seed": 3, "max_failures": 20},
        "methods": [
            {"name": "flaky", "method": "nan_above", "params": {"x": 0.0, "limit": 0.5},
             "search": {"x": {"type": "float", "low": 0.0, "high": 1.0}}},
            {"name": "always_nan", "method": "nan_above", "params": {"x": 0.0, "limit": -1.0},
             "search": {"x": {"type": "float", "low": 0.0, "high": 1.0}}},
            {"name": "contrastive", "params": {"loss": "ContrastiveLoss"}},
        ],
    })
    code = run(protocol, tmp_path)
    # always_nan exceeds max_failures (20): reported failed; the others complete.
    assert code == 1
    states = trial_states(tmp_path, "tiny:glyphs:flaky:standard")
    assert states["COMPLETE"] == 3 and states.get("FAIL", 0) >= 1
    study = optuna.load_study(study_name="tiny:glyphs:flaky:standard",
                              storage=f"sqlite:///{tmp_path / 'tiny' / 'study.db'}")
    for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        assert "loss became nan" in t.user_attrs["failure"] and t.params["x"] > 0.5
    assert trial_states(tmp_path, "tiny:glyphs:always_nan:standard")["FAIL"] == 21
    frame = pd.read_csv(tmp_path / "tiny" / "results.csv")
    assert set(frame["method"]) == {"flaky", "contrastive"}
    summary = (tmp_path / "tiny" / "summary.md").read_text(encoding="utf-8")
    assert "| always_nan | 0 | failed" in summary and "21 trials failed" in summary


def test_sigkill_mid_trial_then_rerun_equals_uninterrupted(write_protocol,
                                                           tmp_path: Path) -> None:
    # Trials long enough (two folds x 300 iterations) that the kill lands inside one.
    protocol = write_protocol({**FAIR, "train": {"iterations": 300, "batch_size": 32,
                                                 "m_per_class": 4, "validate_every": 100,
                                                 "patience": 3}})
    reference = tmp_path / "reference"
    assert run(protocol, reference, "--grace", "3") == 0
    results = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", "run", str(protocol), "--results", str(results),
               "--no-progress", "--grace", "3"]
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = results / "tiny" / "study.db"
    deadline = time.time() + 300
    while True:  # kill while the second trial of the first method is running
        assert time.time() < deadline and victim.poll() is None
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    running = con.execute(
                        "select count(*) from trials where state='RUNNING' and number>=1"
                    ).fetchone()[0]
            except sqlite3.Error:
                running = 0
            if running:
                break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    with sqlite3.connect(db) as con:
        left_running = con.execute("select count(*) from trials where state='RUNNING'").fetchone()
    assert left_running[0] == 1, "the kill must land inside a trial"
    assert run(protocol, results, "--grace", "3") == 0
    first = pd.read_csv(reference / "tiny" / "results.csv")
    second = pd.read_csv(results / "tiny" / "results.csv")
    pd.testing.assert_frame_equal(first, second)
    for name in ("contrastive", "proxy_anchor"):
        states = trial_states(results, f"tiny:glyphs:{name}:standard")
        assert states["COMPLETE"] == 2
    assert trial_states(results, "tiny:glyphs:contrastive:standard").get("FAIL") == 1


def test_two_runner_processes_share_one_storage(write_protocol, tmp_path: Path) -> None:
    protocol = write_protocol({**FAIR, "budget": {"trials": 3, "sampler": "tpe", "seed": 0,
                                                  "max_failures": 2}})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", "run", str(protocol), "--results", str(tmp_path),
               "--no-progress"]
    runners = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(2)]
    for runner in runners:
        assert runner.wait(timeout=600) == 0
    for name in ("contrastive", "proxy_anchor"):
        states = trial_states(tmp_path, f"tiny:glyphs:{name}:standard")
        assert states["COMPLETE"] == 3, states
        assert set(states) <= {"COMPLETE", "PRUNED"}, states  # pruned = never trained
    frame = pd.read_csv(tmp_path / "tiny" / "results.csv")
    assert len(frame) == len(frame.drop_duplicates(["method", "seed", "model", "metric"]))
