"""The two units of work of one method on one pool: a search trial (train the folds with some
values, score on validation) and a test job (retrain the chosen values with one seed on one
split, evaluate on test, build the run file's record with its provenance).

Both are pure with respect to the storage: the scheduler (bench.scheduler) decides which unit
runs and stores what it returns.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

import bench
from bench import plugins
from bench.errors import BenchError, DataError
from bench.evaluate.metric_table import METRICS, headline_model
from bench.experiment import apply_search_values, evaluate_test, fit_fold
from bench.jobs import JobFailed
from bench.keys import JobKey
from bench.methods import validate_method
from bench.plan import Plan
from bench.pool import DatasetContext, split_folds
from bench.protocol import MethodSpec
from bench.safe_paths import confined
from bench.search import TrialFailed
from bench.splits import ClassSplit
from bench.splits.kfold import split_hash
from bench.splits.named import NamedSplit
from bench.train import DivergedError
from bench.trial_models import TrialModels


class Units:
    """Search trials and test jobs of method ``spec`` on pool ``ctx``."""

    def __init__(self, plan: Plan, ctx: DatasetContext, spec: MethodSpec, *,
                 device: torch.device, results_dir: Path, progress: bool,
                 trial_models: TrialModels | None = None) -> None:
        self.plan, self.p, self.ctx, self.spec = plan, plan.protocol, ctx, spec
        self.device, self.results_dir, self.progress = device, results_dir, progress
        #: this process's best trial's fold models, for the job that would retrain them
        self.trial_models = trial_models if trial_models is not None else TrialModels()
        self.key = (ctx.name, spec.name)

    # -- a search trial -----------------------------------------------------------------------
    def objective(self, values: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Mean validation score over the folds; a failed training is the trial's failure."""
        try:
            results = self.train_folds(values, seed=self.p.seed, label="trial")
        except DataError:
            raise  # a bad file is not the method's failure: stop, exit 2, count nothing
        except (DivergedError, BenchError, RuntimeError, ValueError) as error:
            raise TrialFailed(f"{type(error).__name__}: {error}") from error
        scores = [r.validation_score for r in results]
        stderr = float(np.std(scores, ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 \
            else float("nan")
        self.trial_models.offer(self.key, values, float(np.mean(scores)), results)
        return float(np.mean(scores)), {"fold_scores": scores, "stderr": stderr,
                                        "best_iterations": [r.best_iteration for r in results]}

    def train_folds(self, values: dict[str, Any], *, seed: int, label: str,
                    folds: list[ClassSplit] | None = None) -> list:
        params, train_spec = apply_search_values(self.spec.params, self.p.train, values)
        parsed = validate_method(self.spec.method, params, source=self.plan.source,
                                 field=self.spec.name)
        ctx = self.ctx
        return [fit_fold(self.p, ctx.ds, ctx.inputs, ctx.layout, fold, method=self.spec.method,
                         parsed_params=parsed, train_spec=train_spec, seed=seed,
                         device=self.device, progress=self.progress,
                         description=f"{self.spec.name} {label} {fold.name}")
                for fold in (folds or ctx.folds)]

    # -- a test job ---------------------------------------------------------------------------
    def run_job(self, values: dict[str, Any], job: JobKey) -> tuple[float, dict[str, Any]]:
        """Retrain the chosen values for one split and seed; evaluate on test. Returns the
        headline score and the run file's record (rows, history, extras)."""
        ctx, spec = self.ctx, self.spec
        split = ctx.split(job.split)
        folds = ctx.folds if split.is_default else split_folds(self.plan, split)
        label = f"{spec.name} seed {job.seed}" + ("" if split.id == "standard" else
                                                  f" {split.id}")
        results = self.trial_models.take(self.key, values) if self.repeats_search(job) \
            else None
        try:
            if results is None:
                results = self.train_folds(values, seed=job.seed, label=label, folds=folds)
        except (DivergedError, RuntimeError) as error:
            raise JobFailed(f"{type(error).__name__}: {error}") from error
        sink: dict[str, list] = {}
        metrics = evaluate_test(self.p, ctx.ds, ctx.inputs, ctx.layout, split.test,
                                results, seed=job.seed, device=self.device, sink=sink)
        self.save_artifacts(split, job, results, sink)
        provenance = self.provenance(job.seed, values, results, folds)
        rows = [{"protocol": self.p.name, "dataset": ctx.name, "split": split.id,
                 "method": spec.name, "seed": job.seed, "model": model, "metric": metric,
                 "value": float(value), "fid": split.fid,
                 "is_default_split": split.is_default, **provenance,
                 "plugins": plugins.describe(self.plan.plugins.get(spec.name, {})) or "none"}
                for model, values_ in metrics.items()
                for metric, value in values_.items() if metric in METRICS]
        history = [{"fold": i, **h} for i, r in enumerate(results) for h in r.history]
        epochs = [{"fold": i, **e} for i, r in enumerate(results) for e in r.epochs]
        headline = headline_model(metrics)
        score = float(metrics[headline].get(self.p.evaluation.primary, float("nan")))
        record = {"params": values, "rows": rows, "history": history,
                  **({"pseudo_labels": epochs} if epochs else {})}
        if split.fid is not None and not ctx.layout.reid:  # an FID sequence: issue 15's extras
            record["size_control"] = self.sequence_extras(values, split, folds, results,
                                                          job.seed, rows)
        return score, record

    def repeats_search(self, job: JobKey) -> bool:
        """The job trains exactly what a search trial of the same values trained: the search's
        seed on the default split (whose folds the search used)."""
        return job.seed == self.p.seed and self.ctx.split(job.split).is_default

    def job_order(self, values: dict[str, Any], jobs: list[str]) -> list[str]:
        """The order to take ``jobs`` in: the one repeating the search first when this process
        holds its models (no training), last when it does not (so a process that holds them
        can still take it)."""
        if not self.spec.search or self.p.budget.trials == 0:
            return jobs  # no search trial, nothing any process could hold: the jobs' order
        repeat = [j for j in jobs if self.repeats_search(JobKey.parse(j))]
        rest = [j for j in jobs if j not in repeat]
        return [*repeat, *rest] if self.trial_models.holds(self.key, values) else [*rest, *repeat]

    def sequence_extras(self, values: dict[str, Any], split: NamedSplit,
                        folds: list[ClassSplit], results, seed: int, rows: list[dict]) -> dict:
        """Size-controlled metrics and the untrained embedding's metrics (bench.ood_eval),
        appended to ``rows``; returns the subsets record for the run file."""
        from bench.ood_eval import sequence_evaluation

        ctx, spec = self.ctx, self.spec
        params, _ = apply_search_values(spec.params, self.p.train, values)
        parsed = validate_method(spec.method, params, source=self.plan.source, field=spec.name)
        size = min(len(s.test) for s in ctx.splits)
        extra, record = sequence_evaluation(
            self.p, ctx.ds, ctx.inputs, ctx.layout, dataset=ctx.name, split_id=split.id,
            test_classes=split.test, controlled_size=size, folds=folds, results=results,
            method=spec.method, parsed_params=parsed, seed=seed, device=self.device)
        template = {k: v for k, v in rows[0].items() if k not in ("model", "metric", "value")}
        for row in rows:
            row.update(test_classes=record["test_classes"], controlled_classes=record["size"])
        rows += [{**template, "model": model, "metric": metric, "value": float(value),
                  "test_classes": record["test_classes"], "controlled_classes": record["size"]}
                 for model, found in extra.items() for metric, value in found.items()]
        return record

    def save_artifacts(self, split: NamedSplit, job: JobKey, results,
                       sink: dict[str, list]) -> None:
        """Test embeddings (and checkpoints when asked) beside the job's run file."""
        from bench.run_artifacts import save_run_artifacts

        ctx = self.ctx
        run_file = confined(self.results_dir, "runs", ctx.name, self.spec.name, split.id,
                            f"{job.run_stem}.json")
        save_run_artifacts(run_file, self.p, ctx.ds, ctx.layout, split.test, results, sink,
                           seed=job.seed, method=self.spec.name)

    def provenance(self, seed: int, values: dict[str, Any], results,
                   folds: list[ClassSplit]) -> dict[str, Any]:
        """The columns that say how a row was made (setting, versions, hashes, device)."""
        import pytorch_metric_learning

        layout = self.ctx.layout
        test = ("test=test, self-match excluded" if not layout.reid else
                "target query->gallery, same identity+camera excluded")
        return {
            "setting": layout.kind,
            "data": layout.describe_kinds(results[0].data_used),
            "hyperparameters": json.dumps(values, sort_keys=True),
            "best_iterations": json.dumps([r.best_iteration for r in results]),
            "query_reference": test,
            "k": self.p.evaluation.k,
            "folds": self.p.folds,
            "protocol_sha256": self.plan.protocol_hash[:16],
            "split_sha256": split_hash(folds),
            "search_seed": self.p.budget.seed,
            "backbone": self.p.model.backbone,
            "weights": self.ctx.inputs.weights,
            "device": str(self.device),
            "precision": self.p.train.precision,
            "channels_last": self.p.train.channels_last,
            "bench": bench.__version__,
            "torch": torch.__version__,
            "pml": pytorch_metric_learning.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
        }
