"""A search worker process for tests: a cheap deterministic objective, optional sleep, a log.

Run as: python tests/search_worker.py STORAGE_URL STUDY BUDGET LOG SLEEP [HANG_AT [GO]]
HANG_AT: the objective call (1-based) that writes LOG.hang and hangs (the test SIGKILLs it).
GO: a file to wait for before searching (written by the test once every worker is ready, so
slow imports cannot let one worker finish the budget alone); each worker writes GO.<pid>.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import optuna

from bench.keys import Outcome
from bench.protocol import BudgetSpec, SearchDimension
from bench.search import TrialFailed, search_step
from bench.storage import open_storage

SPACE = {"x": SearchDimension(type="float", low=0.0, high=1.0),
         "n": SearchDimension(type="int", low=1, high=5)}


def score(params: dict) -> float:
    return -((params["x"] - 0.3) ** 2) + 0.01 * params["n"]


def main(url: str, name: str, budget: int, log: str, sleep: float, hang_at: int = 0,
         fail_above: float = 2.0, max_failures: int = 3, grace: int = 2) -> optuna.Study:
    storage = open_storage(url, heartbeat=1, grace=grace)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                load_if_exists=True)
    calls = 0

    def objective(params: dict) -> tuple[float, dict]:
        nonlocal calls
        calls += 1
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"pid": os.getpid(), **params}) + "\n")
        if calls == hang_at:
            Path(log + ".hang").write_text("hanging", encoding="utf-8")
            time.sleep(600)
        time.sleep(sleep)
        if params["x"] > fail_above:
            raise TrialFailed(f"loss became nan (x={params['x']:.3f})")
        return score(params), {"fold_scores": [score(params)]}

    spec = BudgetSpec(trials=budget, sampler="tpe", seed=7, max_failures=max_failures)
    # the scheduler's loop (bench.scheduler): one step at a time, polling while others hold
    # the last slots
    while (state := search_step(study, SPACE, spec, objective).state) != Outcome.DONE:
        if state == Outcome.BLOCKED:
            time.sleep(0.2)
    return study


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) > 6:
        Path(f"{args[6]}.{os.getpid()}").write_text("ready", encoding="utf-8")
        while not Path(args[6]).exists():
            time.sleep(0.05)
    main(args[0], args[1], int(args[2]), args[3], float(args[4]),
         int(args[5]) if len(args) > 5 else 0)
