"""A test job that repeats a search trial (the search's seed, the default split) takes that trial's
fold models instead of training them again (bench.trial_models): fewer trainings, same values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import bench.units
from bench.cli import main
from bench.keys import JobKey
from bench.trial_models import TrialModels, result_bytes
from bench.units import Units

SEARCHED = {"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
            "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4, "high": 1.4}}}
UNSEARCHED = {"name": "proxy_anchor", "params": {"loss": "ProxyAnchorLoss"}}


def fold_result(size: int = 10) -> SimpleNamespace:
    """What TrialModels reads of a fold result: the model and what its method holds."""
    method = SimpleNamespace(memory=torch.zeros(3), name="m")
    return SimpleNamespace(model=nn.Linear(size, 1, bias=False), method=method)


def test_keeps_the_best_trial_per_method_within_the_memory_limit() -> None:
    kept = TrialModels()
    key = ("pool", "m")
    kept.offer(key, {"a": 1}, 0.5, [fold_result()])
    kept.offer(key, {"a": 2}, 0.4, [fold_result()])  # worse: not kept
    assert kept.holds(key, {"a": 1}) and not kept.holds(key, {"a": 2})
    kept.offer(key, {"a": 3}, 0.5, [fold_result()])  # a tie keeps the earlier (lower number)
    assert kept.holds(key, {"a": 1})
    kept.offer(key, {"a": 4}, float("nan"), [fold_result()])
    assert kept.holds(key, {"a": 1})
    better = [fold_result(), fold_result()]
    kept.offer(key, {"a": 5}, 0.9, better)
    assert kept.holds(key, {"a": 5}) and not kept.holds(key, {"a": 1})
    assert kept.take(key, {"a": 1}) is None and kept.reused == 0  # other values: train
    assert kept.take(key, {"a": 5}) is better and kept.reused == 1
    assert kept.take(key, {"a": 5}) is None  # given up once taken
    assert result_bytes(better) == 2 * (10 * 4 + 3 * 4)
    shared = torch.zeros(5)  # held twice (e.g. a list and an attribute): counted once
    holder = SimpleNamespace(model=nn.Linear(2, 1, bias=False), method=SimpleNamespace(
        bank=[shared, np.zeros(4, np.float64)], index={"a": shared}, head=nn.Linear(3, 1)))
    assert result_bytes([holder]) == 2 * 4 + 5 * 4 + 4 * 8 + (3 + 1) * 4

    small = TrialModels(limit_bytes=100)
    small.offer(("pool", "x"), {}, 0.5, [fold_result()])  # 52 bytes: kept
    small.offer(("pool", "y"), {}, 0.5, [fold_result()])  # 104 in all: over the limit
    assert small.holds(("pool", "x"), {}) and not small.holds(("pool", "y"), {})
    small.offer(("pool", "x"), {"b": 1}, 0.9, [fold_result(100)])  # beats x, too large alone
    assert not small.holds(("pool", "x"), {}) and not small.holds(("pool", "x"), {"b": 1})
    small.drop(("pool", "x"))
    assert small.entries == {}


def test_the_holder_takes_the_repeating_job_first_and_others_last() -> None:
    splits = {"standard": SimpleNamespace(is_default=True),
              "swap1": SimpleNamespace(is_default=False)}
    units = SimpleNamespace(p=SimpleNamespace(seed=0, budget=SimpleNamespace(trials=3)),
                            spec=SimpleNamespace(search={"x": None}),
                            ctx=SimpleNamespace(split=splits.get), key=("pool", "m"),
                            trial_models=TrialModels())
    units.repeats_search = lambda job: Units.repeats_search(units, job)
    jobs = ["standard/seed0", "standard/seed1", "swap1/seed0"]
    assert [units.repeats_search(JobKey.parse(j)) for j in jobs] == [True, False, False]
    assert Units.job_order(units, {"v": 1}, jobs) == ["standard/seed1", "swap1/seed0",
                                                      "standard/seed0"]
    units.trial_models.offer(("pool", "m"), {"v": 1}, 0.5, [fold_result()])
    assert Units.job_order(units, {"v": 1}, jobs)[0] == "standard/seed0"
    assert Units.job_order(units, {"v": 2}, jobs)[-1] == "standard/seed0"
    units.spec.search = {}  # no search: no process can hold the models; the jobs' own order
    assert Units.job_order(units, {"v": 2}, jobs) == jobs


@pytest.mark.slow
def test_reuse_saves_the_repeated_trainings_and_changes_no_value(
        write_protocol, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process, with and without reuse: the seed-0 job of the searched method trains
    nothing (one fit per fold fewer); every value and chosen hyperparameter is the same."""
    protocol = write_protocol({"budget": {"trials": 2, "sampler": "tpe", "seed": 0},
                               "reproductions": 2, "cpu_threads": 1,
                               "methods": [SEARCHED, UNSEARCHED]})
    real_fit = bench.units.fit_fold
    fits: list[str] = []

    def counted_fit(*args, **kwargs):
        fits.append(kwargs["description"])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(bench.units, "fit_fold", counted_fit)
    tables, counts = {}, {}
    before = torch.get_num_threads()
    try:
        for mode in ("reuse", "retrain"):
            if mode == "retrain":
                monkeypatch.setattr(TrialModels, "take", lambda self, key, values: None)
            fits.clear()
            results = tmp_path / mode
            assert main(["run", str(protocol), "--results", str(results), "--no-progress",
                         "-j", "1"]) == 0
            counts[mode] = list(fits)
            tables[mode] = pd.read_csv(results / "tiny" / "results.csv")
    finally:
        torch.set_num_threads(before)
    folds = 1  # the tiny protocol validates on one held-out fold
    # searched: 2 trials + 2 jobs; unsearched: 2 jobs (nothing to reuse); one fold each
    assert len(counts["retrain"]) == (2 + 2 + 2) * folds
    assert len(counts["reuse"]) == len(counts["retrain"]) - folds
    assert not any("contrastive seed 0" in d for d in counts["reuse"])
    assert any("contrastive seed 0" in d for d in counts["retrain"])
    assert any("proxy_anchor seed 0" in d for d in counts["reuse"])
    columns = ["method", "seed", "model", "metric", "value", "hyperparameters",
               "best_iterations"]
    keys = ["method", "seed", "model", "metric"]
    one, two = (tables[m].sort_values(keys).reset_index(drop=True)[columns]
                for m in ("reuse", "retrain"))
    assert len(one) > 0
    pd.testing.assert_frame_equal(one, two)
