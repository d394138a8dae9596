"""Lay studies out for optuna-dashboard (``optuna-dashboard sqlite:///results/<name>/study.db``).

Study names are bench.keys.StudyKey's (``<protocol>:<pool>:<method>:<split>`` for a search and
``...:test:<digest>`` for its test jobs); what is added here is
what the dashboard shows beside them: the objective's name (``set_metric_names``) and study
user attributes saying which method, implementation, split, phase and search space a study is.
Trials already carry their fold scores, standard error, best iterations and, when failed, the
reason (``failure``), which the dashboard lists per trial.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna

MARK = "bench_layout"


def describe_study(study: optuna.Study, *, phase: str, protocol: str, dataset: str,
                   method: str, implementation: str, split: str, metric: str,
                   details: dict[str, Any]) -> None:
    """Name the objective and record what the study is, once (idempotent across processes)."""
    if study.user_attrs.get(MARK) == 1:
        return
    what = ("validation " + metric + " (mean over folds)" if phase == "search"
            else "test " + metric + " (headline model)")
    with warnings.catch_warnings():  # "experimental" since optuna 3.2, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([what])
    attrs = {"phase": phase, "protocol": protocol, "dataset": dataset, "method": method,
             "implementation": implementation, "split": split, "metric": what}
    attrs.update({key: value if isinstance(value, (str, int, float)) else
                  json.dumps(value, sort_keys=True) for key, value in details.items()})
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(MARK, 1)
