"""Run a protocol: validate everything first, then for each dataset and method search the
hyperparameters on validation folds (fixed budget) and retrain the best ones for the test phase.

Resumable: trials live in the optuna storage, finished reproductions in run files; running the
same command again continues where it stopped.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

import bench
from bench import plugins
from bench.data import dataset_info, load_dataset
from bench.data.merge import merge_datasets
from bench.data.records import ImageDataset
from bench.data.registry import get_spec, resolve_options
from bench.errors import BenchError, DataError
from bench.experiment import (
    Inputs,
    apply_search_values,
    evaluate_test,
    fit_fold,
    prepare_inputs,
)
from bench.feasibility import check_sampler, make_folds
from bench.jobs import JobFailed, completed_results, job_step
from bench.local_jobs import start_helpers, stop_helpers, threads_per_process
from bench.methods import method_class, validate_method
from bench.methods.base import DATA_LABELS
from bench.models import BACKBONES
from bench.precision import check_precision
from bench.protocol import (
    DML_METRICS,
    METRICS,
    REID_METRICS,
    RESERVED_SEARCH_KEYS,
    DatasetSpec,
    MethodSpec,
    Protocol,
    TrainSpec,
    load_protocol,
)
from bench.results import (
    read_json,
    sequence_table,
    summary_table,
    write_json,
    write_table,
    write_text_atomically,
)
from bench.results_source import read_protocol_copy, rows_of, stored_pseudo_labels
from bench.safe_paths import check_tree, confined, protocol_dir, remove_written
from bench.search import MethodFailed, TrialFailed, open_storage, search_step
from bench.settings import Layout, resolve_layout, static_kinds
from bench.splits import ClassSplit
from bench.splits.kfold import split_hash
from bench.splits.named import NamedSplit, from_document, split_file_path, standard
from bench.state import delete_protocol_studies
from bench.train import DivergedError
from bench.yaml_file import read_text_bounded


@dataclass
class Plan:
    """A validated protocol: nothing is read or written before this exists."""

    protocol: Protocol
    source: str
    protocol_hash: str
    protocol_text: str
    method_params: dict[str, Any]
    #: per method entry, the installed plug-ins it runs on (bench.plugins.protocol_plugins)
    plugins: dict[str, dict[str, plugins.Plugin]] = field(default_factory=dict)


def _check_search_space(spec: MethodSpec, index: int, source: str) -> None:
    """Every searched key must be a parameter the method accepts: try the mid-point."""
    for key, dim in spec.search.items():
        field_name = f"methods.{index}.search.{key}"
        if key in RESERVED_SEARCH_KEYS:
            continue
        if dim.type == "categorical":
            probe = dim.choices[0]
        elif dim.type == "int":
            probe = int((dim.low + dim.high) // 2)
        else:
            probe = math.sqrt(dim.low * dim.high) if dim.type == "log_float" else (
                (dim.low + dim.high) / 2)
        params, _ = apply_search_values(spec.params, TrainSpec(), {key: probe})
        try:
            validate_method(spec.method, params, source=source, field=f"methods.{index}")
        except BenchError as error:
            raise BenchError(f"searched value {probe!r} is rejected: {error.reason}",
                             source=source, field=field_name) from None


def _check_sequence_spec(protocol: Protocol, source: str) -> None:
    """Sequence options and the extractor must be valid before any work (files: at run time)."""
    split = protocol.split
    if split.kind != "fid_sequence":
        return
    from bench.extractors import EXTRACTORS
    from bench.splits.fid_sequence import SequenceParams

    if split.file is None and split.extractor not in EXTRACTORS:
        raise BenchError(f"unknown extractor {split.extractor!r} (known: "
                         f"{', '.join(EXTRACTORS)})", source=source, field="split.extractor")
    try:
        SequenceParams.from_options(split.sequence, source=source)
    except BenchError as error:
        raise BenchError(error.reason, source=source, field="split.sequence"
                         + (f".{error.field}" if error.field else "")) from None


def _check_setting(protocol: Protocol, spec: MethodSpec, index: int, source: str) -> None:
    """A method runs only in settings that offer the data it requires, and PTL-like methods
    only on images (not cached pooled features): refused here, before any training."""
    cls = method_class(spec.method)
    kind = protocol.setting.kind
    missing = cls.missing(static_kinds(kind))
    if missing:
        runs_in = [k for k in ("dml", "uda", "dg") if not cls.missing(static_kinds(k))]
        raise BenchError(f"{spec.method} needs {', '.join(DATA_LABELS[m] for m in sorted(missing))}"
                         f", which setting {kind!r} does not give (it runs in: "
                         f"{', '.join(runs_in) or 'none'})", source=source,
                         field=f"methods.{index}.method")
    cls.check_train(protocol.train, source=source)
    if cls.needs_trunk and protocol.model.trunk == "none":
        raise BenchError(f"{spec.method} needs images and the backbone's stages; cached pooled "
                         f"features (model.trunk: none) cannot serve it: use model.trunk "
                         f"last_stage or all", source=source, field=f"methods.{index}.method")


def plan_protocol(path: str | Path) -> Plan:
    """Validate the protocol, its methods, datasets and backbone; raise BenchError otherwise."""
    protocol, digest = load_protocol(path)
    source = str(path)
    params = {}
    for i, spec in enumerate(protocol.methods):
        params[spec.name] = validate_method(spec.method, spec.params, source=source,
                                            field=f"methods.{i}")
        _check_search_space(spec, i, source)
        _check_setting(protocol, spec, i, source)
    for i, dspec in enumerate(protocol.dataset_specs):
        where = "dataset" if protocol.datasets is None else f"datasets.{i}"
        try:
            spec = get_spec(dspec.name)
        except BenchError as error:
            raise BenchError(error.reason, source=source, field=f"{where}.name") from None
        try:
            resolve_options(spec, dspec.options)
        except BenchError as error:
            option = (error.field or "").removeprefix("option ")
            raise BenchError(error.reason, source=source, field=f"{where}.options"
                             + (f".{option}" if option else "")) from None
    if protocol.model.backbone not in BACKBONES:
        raise BenchError(f"unknown backbone {protocol.model.backbone!r} (known: "
                         f"{', '.join(BACKBONES)})", source=source, field="model.backbone")
    _check_sequence_spec(protocol, source)
    if protocol.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA requested but no GPU is available", source=source, field="device")
    try:
        check_precision(protocol.train.precision, pick_device(protocol.device))
    except ValueError as error:
        raise BenchError(str(error), source=source, field="train.precision") from None
    text = read_text_bounded(path, what="protocol")  # the size and encoding checks again
    used = plugins.protocol_plugins(protocol)
    if plugins.signature(used):  # a plug-in's version is part of the setting: in the hash
        digest = hashlib.sha256(json.dumps([digest, plugins.signature(used)],
                                           sort_keys=True).encode()).hexdigest()
    return Plan(protocol, source, digest, text, params, used)


def check_available(plan: Plan) -> None:
    for i, dspec in enumerate(plan.protocol.dataset_specs):
        info = dataset_info(dspec.name)
        if not info["available"] and not dspec.options.get("root"):
            where = "dataset" if plan.protocol.datasets is None else f"datasets.{i}"
            raise BenchError(f"dataset {dspec.name!r} is not available here: {info['where']}",
                             source=plan.source, field=f"{where}.name")


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _sequence_length(plan: Plan, dataset: str) -> tuple[int, str]:
    """(splits to run, a note) for the dry run; reads a given split file, builds nothing."""
    spec = plan.protocol.split
    if spec.kind == "standard":
        return 1, ""
    if spec.file is None:
        keep = spec.select or "all"
        return spec.select or 1, (f"FID sequence generated at run time with {spec.extractor} "
                                  f"({keep} splits kept; counts below assume {spec.select or 1})")
    from bench.splits.fid_sequence import read_split_file
    from bench.splits.named import evenly_spaced

    path = split_file_path(spec.file, dataset, Path(plan.source).parent)
    if not path.is_file():
        return 1, (f"split file {path} is missing: import the published splits with `bench "
                   f"splits import PICKLE --dataset {dataset} --out {path}` (counts below "
                   f"assume 1 split)")
    entries = read_split_file(path)["splits"]
    default = next((i for i, e in enumerate(entries) if e["is_default"]), None)
    if default is None:
        raise BenchError("expected exactly one default split, found 0",
                         source=str(path), field="splits")
    count = len(evenly_spaced(len(entries), spec.select, default))
    return count, f"FID sequence from {path}: {count} of {len(entries)} splits"


def describe_plan(plan: Plan) -> str:
    """The dry-run text: methods × folds × trials × seeds and the training runs it implies."""
    p = plan.protocol
    trials = p.budget.trials
    lines = [f"protocol {p.name} ({plan.source}, sha256 {plan.protocol_hash[:16]})",
             f"datasets: {', '.join(d.name for d in p.dataset_specs)}; folds: {p.folds}; "
             f"budget: {trials} completed trials per method ({p.budget.sampler}, seed "
             f"{p.budget.seed}, max_failures {p.budget.max_failures}); reproductions: "
             f"{p.reproductions} (seeds {', '.join(map(str, p.seeds))})",
             f"backbone {p.model.backbone} (pretrained {p.model.pretrained}, trunk "
             f"{p.model.trunk}), {p.model.embedding_size}-d; up to {p.train.iterations} "
             f"iterations per run, batch {p.train.batch_size}", "",
             "| dataset | splits | method | searched | search runs | test runs | max iterations |",
             "|---|---|---|---|---|---|---|"]
    total_runs = 0
    notes = []
    if p.setting.kind != "dml":
        kinds = static_kinds(p.setting.kind)
        notes.append(f"setting {p.setting.kind}: source {', '.join(p.setting.source)} -> target "
                     f"{', '.join(p.setting.target)}; data per method (camera views only where the "
                     f"dataset declares them): " + "; ".join(
                         f"{m.name}: " + " + ".join(
                             DATA_LABELS[k] for k in DATA_LABELS
                             if k in method_class(m.method).consumed(kinds))
                         for m in p.methods))
    for name, dspecs in p.pools:
        n_splits, note = _sequence_length(plan, dspecs[0].name)
        if note:
            notes.append(f"{name}: {note}")
        for m in p.methods:
            searched = ", ".join(m.search) or "-"
            search_runs = (trials if m.search else 0) * p.folds
            test_runs = p.reproductions * p.folds * n_splits
            runs = search_runs + test_runs
            total_runs += runs
            lines.append(f"| {name} | {n_splits} | {m.name} | {searched} | {search_runs} "
                         f"| {test_runs} | {runs * p.train.iterations:,} |")
    lines[3:3] = notes
    lines += ["", f"total: {total_runs} training runs, at most "
              f"{total_runs * p.train.iterations:,} iterations of batch {p.train.batch_size}"]
    return "\n".join(lines)


@dataclass
class DatasetContext:
    """A loaded dataset (or pool), its setting layout, its inputs, the splits to run on and
    the default split's folds."""

    name: str
    ds: ImageDataset
    layout: Layout
    inputs: Inputs
    splits: list[NamedSplit]
    folds: list[ClassSplit]  # of the default split: where hyperparameters are searched

    @property
    def default(self) -> NamedSplit:
        return next(s for s in self.splits if s.is_default)


@dataclass
class RunOptions:
    results_root: Path = Path("results")
    storage: str | None = None
    fresh: bool = False
    progress: bool = True
    heartbeat: int = 10
    grace: int = 30
    poll: float = 1.0  # seconds between looks at the storage when others hold the work
    #: False for `bench worker`: do the shared work only, write nothing under results/
    writes_results: bool = True
    #: processes sharing the work (`bench run -j`): this one plus jobs-1 local helpers
    jobs: int = 1


@dataclass
class MethodState:
    params: dict[str, Any] | None = None  # chosen values, once the search is done
    failure: str | None = None
    data: str = ""  # the data kinds the method received in this setting


@dataclass
class MethodWork:
    """A method's progress in this process: its search, then its queue of test jobs."""

    spec: MethodSpec
    state: MethodState
    study: optuna.Study | None = None  # the test-job study, once the values are chosen
    finished: bool = False


class ProtocolRun:
    """One protocol's run over its datasets and methods."""

    def __init__(self, plan: Plan, options: RunOptions) -> None:
        self.plan = plan
        self.p = plan.protocol
        self.options = options
        self.dir = protocol_dir(options.results_root, self.p.name)  # confined, links resolved
        #: (pool, method) -> job -> result document, as read from the storage: the only
        #: source of results.csv and summary.md (run files are written from it, never read)
        self.stored: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.device = pick_device(self.p.device)
        self.states: dict[tuple[str, str], MethodState] = {}
        self.splits: dict[str, list[NamedSplit]] = {}
        self.started = time.perf_counter()
        self.writes_results = options.writes_results

    # -- set-up -------------------------------------------------------------------------------
    def prepare_directory(self) -> None:
        """Refuse to mix results of a changed protocol; --fresh starts over. Writes nothing."""
        copy = confined(self.dir, "protocol.yaml")
        if self.options.fresh:
            remove_written(self.dir)  # what a run writes there, and nothing else
        check_tree(self.dir)  # no link out of it, writable: refused before any work
        if copy.exists():
            previous = read_protocol_copy(copy)
            if previous != self.plan.protocol_text:
                diff = "".join(difflib.unified_diff(
                    previous.splitlines(True), self.plan.protocol_text.splitlines(True),
                    fromfile=f"{copy} (first run)", tofile=self.plan.source))
                tqdm.write(diff.rstrip())
                raise BenchError(f"changed since the results in {self.dir} were started (diff "
                                 f"above); rerun with --fresh to discard them",
                                 source=self.plan.source)
        plugins.check_recorded(confined(self.dir, "plugins.json"),
                               plugins.signature(self.plan.plugins),
                               source=self.plan.source)

    def record_protocol(self) -> None:
        """Keep the protocol as first run beside its results (after inputs proved loadable)."""
        copy = confined(self.dir, "protocol.yaml")
        if not copy.is_file():
            write_text_atomically(copy, self.plan.protocol_text)
        if not confined(self.dir, "plugins.json").is_file():
            write_json(confined(self.dir, "plugins.json"), plugins.signature(self.plan.plugins))

    def storage_url(self) -> str:
        return self.options.storage or f"sqlite:///{confined(self.dir, 'study.db')}"

    def load(self, name: str, dspecs: list[DatasetSpec]) -> DatasetContext:
        ds = merge_datasets([load_dataset(d.name, **d.options) for d in dspecs])
        layout = resolve_layout(self.p.setting, ds, source=self.plan.source)
        if layout.kind == "dml":
            splits = self.resolve_splits(dspecs[0], ds)
        else:
            splits = [NamedSplit("standard", layout.train_classes, layout.test_classes)]
        default = next(s for s in splits if s.is_default)
        folds = self.make_folds(default, pool=name)  # class counts checked before any work
        inputs = prepare_inputs(self.p, ds, self.device, self.options.progress)
        return DatasetContext(name, ds, layout, inputs, splits, folds)

    def make_folds(self, split: NamedSplit, pool: str = "") -> list[ClassSplit]:
        folds = make_folds(self.p, split.train, split.test, source=self.plan.source,
                           pool=pool or self.p.name, split_id=split.id)
        check_sampler(self.p, folds, source=self.plan.source, pool=pool or self.p.name)
        return folds

    def resolve_splits(self, dspec: DatasetSpec, ds: ImageDataset) -> list[NamedSplit]:
        """The standard split, or the FID sequence from its file (made here if none is given)."""
        spec = self.p.split
        if spec.kind == "standard":
            return standard(ds)
        from bench.splits.fid_sequence import (
            SequenceParams,
            make_dataset_splits,
            read_split_file,
            write_split_file,
        )

        if spec.file is not None:
            path = split_file_path(spec.file, dspec.name, Path(self.plan.source).parent)
            if not path.is_file():
                raise BenchError(f"split file {path} does not exist (make one with `bench splits "
                                 f"make` or `bench splits import`)", source=self.plan.source,
                                 field="split.file")
            document = read_split_file(path)
        else:
            path = confined(self.dir, "splits", f"{dspec.name}-{spec.extractor}.json")
            if path.is_file():
                document = read_split_file(path)
            else:
                params = SequenceParams.from_options(spec.sequence, source=self.plan.source)
                document = make_dataset_splits(dspec.name, spec.extractor,
                                               dataset_options=dspec.options, params=params,
                                               device=self.device,
                                               progress=self.options.progress)
                write_split_file(document, path)
        return from_document(document, ds, source=str(path), select=spec.select)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> Path:
        """Do this protocol's work, shared through the storage with any other `bench run` or
        `bench worker` process, until every method is done or failed; then (not for workers)
        write the results from the storage."""
        if self.writes_results:
            self.prepare_directory()
        storage = None
        if self.options.storage or confined(self.dir, "study.db").exists():
            # an existing storage is checked before any work (a damaged one: exit 3); a new
            # default one is created only once the inputs proved loadable
            storage = open_storage(self.storage_url(), heartbeat=self.options.heartbeat,
                                   grace=self.options.grace)
            if self.options.fresh and self.options.storage and self.writes_results:
                delete_protocol_studies(storage, self.p.name)  # this protocol's, no other
        helpers: list = []
        started = False
        try:
            for name, dspecs in self.p.pools:
                ctx = self.load(name, dspecs)
                if self.writes_results:
                    self.record_protocol()
                if storage is None:
                    storage = open_storage(self.storage_url(), heartbeat=self.options.heartbeat,
                                           grace=self.options.grace)
                if not started:
                    helpers, started = self.start_helpers(), True
                self.splits[name] = ctx.splits
                self.work_through(ctx, storage)
        finally:
            stop_helpers(helpers, wait=2 * self.options.grace)
        if self.writes_results and self.p.split.kind == "fid_sequence":
            self.write_ood_figures()
        return self.dir / "summary.md"

    def start_helpers(self) -> list:
        """`-j N`: N-1 local `bench worker` processes on this run's storage (bench.local_jobs),
        started once the first dataset's inputs are cached; threads split between them."""
        if self.options.jobs <= 1 and not self.p.cpu_threads:
            return []
        threads = threads_per_process(self.options.jobs, self.p.cpu_threads)
        torch.set_num_threads(threads)
        threadpool_limits(limits=threads)
        if self.options.jobs <= 1:
            return []
        return start_helpers(self.plan.source, self.storage_url(),
                             self.options.results_root, self.options.jobs - 1, threads)

    def work_through(self, ctx: DatasetContext, storage) -> None:
        """Round-robin over the methods, one unit of work (a search trial or a test job) at a
        time, so several processes spread over every method instead of queueing behind one."""
        work = []
        for spec in self.p.methods:
            state = self.states.setdefault((ctx.name, spec.name), MethodState())
            consumed = method_class(spec.method).consumed(ctx.layout.kinds)
            if ctx.inputs.frozen:  # cached features: no image to render a camera view from
                consumed = consumed - {"camera_views"}
            state.data = ctx.layout.describe_kinds(consumed)
            work.append(MethodWork(spec, state))
        bar = tqdm(total=len(work), desc=f"{self.p.name} {ctx.name}: methods done",
                   disable=not self.options.progress, dynamic_ncols=True)
        while True:
            pending = [w for w in work if not w.finished]
            if not pending:
                break
            progressed = False
            for w in pending:
                try:
                    outcome = self.advance(ctx, w, storage)
                except MethodFailed as error:
                    w.state.failure, w.finished, outcome = str(error), True, "failed"
                    tqdm.write(f"bench: {self.p.name}: {ctx.name}/{w.spec.name} failed: {error}")
                if outcome in ("done", "failed"):
                    w.finished = True
                    bar.update()
                    if self.writes_results:
                        self.materialize(ctx, w)
                        self.write_outputs()
                progressed |= outcome != "blocked"
            if not progressed:
                time.sleep(self.options.poll)
        bar.close()

    def advance(self, ctx: DatasetContext, w: MethodWork, storage) -> str:
        """One step of one method: "worked", "blocked" (others hold the rest) or "done"."""
        spec = w.spec
        if w.state.params is None:
            if not spec.search or self.p.budget.trials == 0:
                w.state.params = {}
            else:
                study = optuna.create_study(storage=storage, study_name=self.study_name(ctx, spec),
                                            direction="maximize", load_if_exists=True)
                self.describe(study, ctx, spec, "search", {
                    "searched": {k: v.model_dump(exclude_none=True) for k, v in spec.search.items()},
                    "budget": f"{self.p.budget.trials} completed trials, {self.p.budget.sampler} "
                              f"seed {self.p.budget.seed}, max_failures "
                              f"{self.p.budget.max_failures}"})
                step = search_step(study, spec.search, self.p.budget, self.objective(ctx, spec))
                if step.state != "done":
                    return step.state
                w.state.params = step.outcome.best_params
        if w.study is None:
            w.study = optuna.create_study(
                storage=storage, study_name=self.jobs_study_name(ctx, spec, w.state.params),
                direction="maximize", load_if_exists=True)
            if "jobs" not in w.study.user_attrs:
                w.study.set_user_attr("jobs", self.jobs(ctx))  # for `bench status`
            self.describe(w.study, ctx, spec, "test", {"chosen": w.state.params})
        return job_step(w.study, self.jobs(ctx),
                        lambda job: self.run_job(ctx, spec, w.state.params, job))

    def describe(self, study, ctx: DatasetContext, spec: MethodSpec, phase: str,
                 details: dict[str, Any]) -> None:
        """What optuna-dashboard shows beside the study (bench.dashboard)."""
        from bench.dashboard import describe_study

        describe_study(study, phase=phase, protocol=self.p.name, dataset=ctx.name,
                       method=spec.name, implementation=spec.method, split=ctx.default.id,
                       metric=self.p.evaluation.primary, details=details)
        plugins.check_study(study, plugins.signature({spec.name: self.plan.plugins.get(
            spec.name, {})}), source=self.plan.source)

    def objective(self, ctx: DatasetContext, spec: MethodSpec):
        def objective(values: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            try:
                results = self.train_folds(ctx, spec, values, seed=self.p.seed, label="trial")
            except DataError:
                raise  # a bad file is not the method's failure: stop, exit 2, count nothing
            except (DivergedError, BenchError, RuntimeError, ValueError) as error:
                raise TrialFailed(f"{type(error).__name__}: {error}") from error
            scores = [r.validation_score for r in results]
            stderr = float(np.std(scores, ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 \
                else float("nan")
            return float(np.mean(scores)), {"fold_scores": scores, "stderr": stderr,
                                            "best_iterations": [r.best_iteration for r in results]}

        return objective

    def jobs(self, ctx: DatasetContext) -> list[str]:
        """The test phase's jobs: one per split and reproduction seed, ``<split>/seed<N>``."""
        return [f"{split.id}/seed{seed}" for split in ctx.splits for seed in self.p.seeds]

    def jobs_study_name(self, ctx: DatasetContext, spec: MethodSpec,
                        values: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.study_name(ctx, spec)}:test:{digest}"

    def run_job(self, ctx: DatasetContext, spec: MethodSpec, values: dict[str, Any],
                job: str) -> tuple[float, dict[str, Any]]:
        """Retrain the chosen values for one split and seed; evaluate on test."""
        split_id, seed_text = job.split("/")
        split = next(s for s in ctx.splits if s.id == split_id)
        seed = int(seed_text.removeprefix("seed"))
        folds = ctx.folds if split.is_default else self.make_folds(split)
        label = f"{spec.name} seed {seed}" + ("" if split.id == "standard" else f" {split.id}")
        try:
            results = self.train_folds(ctx, spec, values, seed=seed, label=label, folds=folds)
        except (DivergedError, RuntimeError) as error:
            raise JobFailed(f"{type(error).__name__}: {error}") from error
        sink: dict[str, list] = {}
        metrics = evaluate_test(self.p, ctx.ds, ctx.inputs, ctx.layout, split.test,
                                results, seed=seed, device=self.device, sink=sink)
        self.save_artifacts(ctx, spec, split, seed, results, sink)
        provenance = self.provenance(ctx, seed, values, results, folds)
        rows = [{"protocol": self.p.name, "dataset": ctx.name, "split": split.id,
                 "method": spec.name, "seed": seed, "model": model, "metric": metric,
                 "value": float(value), "fid": split.fid,
                 "is_default_split": split.is_default, **provenance,
                 "plugins": plugins.describe(self.plan.plugins.get(spec.name, {})) or "none"}
                for model, values_ in metrics.items()
                for metric, value in values_.items() if metric in METRICS]
        history = [{"fold": i, **h} for i, r in enumerate(results) for h in r.history]
        epochs = [{"fold": i, **e} for i, r in enumerate(results) for e in r.epochs]
        headline = "concatenated" if "concatenated" in metrics else "separate"
        score = float(metrics[headline].get(self.p.evaluation.primary, float("nan")))
        record = {"params": values, "rows": rows, "history": history,
                  **({"pseudo_labels": epochs} if epochs else {})}
        if split.fid is not None and not ctx.layout.reid:  # an FID sequence: issue 15's extras
            record["size_control"] = self.sequence_extras(ctx, spec, values, split, folds,
                                                          results, seed, rows)
        return score, record

    def sequence_extras(self, ctx: DatasetContext, spec: MethodSpec, values: dict[str, Any],
                        split: NamedSplit, folds: list[ClassSplit], results, seed: int,
                        rows: list[dict]) -> dict:
        """Size-controlled metrics and the untrained embedding's metrics (bench.ood_eval),
        appended to ``rows``; returns the subsets record for the run file."""
        from bench.ood_eval import sequence_evaluation

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

    def save_artifacts(self, ctx: DatasetContext, spec: MethodSpec, split, seed: int,
                       results, sink: dict[str, list]) -> None:
        """Test embeddings (and checkpoints when asked) beside the job's run file."""
        from bench.run_artifacts import save_run_artifacts

        run_file = confined(self.dir, "runs", ctx.name, spec.name, split.id, f"seed{seed}.json")
        save_run_artifacts(run_file, self.p, ctx.ds, ctx.layout, split.test, results, sink,
                           seed=seed, method=spec.name)

    def materialize(self, ctx: DatasetContext, w: MethodWork) -> None:
        """Write the method's run files from the storage (atomically; unchanged files kept)."""
        if w.study is None:
            return
        self.write_run_files(ctx.name, w.spec.name, completed_results(w.study))

    def write_run_files(self, pool: str, method: str, results: dict[str, dict[str, Any]]) -> None:
        """Keep ``results`` (from the storage) for the tables; write each as its run file,
        confined to runs/, unless an identical file is there already."""
        self.stored.setdefault((pool, method), {}).update(results)
        for job, result in results.items():
            split_id, seed_text = job.split("/")
            path = confined(self.dir, "runs", pool, method, split_id, f"{seed_text}.json")
            if read_json(path) != result:
                write_json(path, result)

    def write_ood_figures(self) -> None:
        """ood_curve.png / .svg: metric vs FID per method with bands, and deviations panel."""
        from bench.analysis.load import read_results
        from bench.analysis.ood import ood_figure

        frame = read_results(confined(self.dir, "results.csv"))
        for dspec in self.p.dataset_specs:
            figure = ood_figure(frame, dataset=dspec.name, metric=self.p.evaluation.primary)
            suffix = "" if len(self.p.dataset_specs) == 1 else f"_{dspec.name}"
            for extension in ("png", "svg"):
                figure.savefig(confined(self.dir, f"ood_curve{suffix}.{extension}"), dpi=120)

    def study_name(self, ctx: DatasetContext, spec: MethodSpec) -> str:
        return f"{self.p.name}:{ctx.name}:{spec.name}:{ctx.default.id}"

    def train_folds(self, ctx: DatasetContext, spec: MethodSpec, values: dict[str, Any], *,
                    seed: int, label: str, folds: list[ClassSplit] | None = None):
        params, train_spec = apply_search_values(spec.params, self.p.train, values)
        parsed = validate_method(spec.method, params, source=self.plan.source, field=spec.name)
        return [fit_fold(self.p, ctx.ds, ctx.inputs, ctx.layout, fold, method=spec.method,
                         parsed_params=parsed, train_spec=train_spec, seed=seed,
                         device=self.device, progress=self.options.progress,
                         description=f"{spec.name} {label} {fold.name}")
                for fold in (folds or ctx.folds)]

    def provenance(self, ctx: DatasetContext, seed: int, values: dict[str, Any],
                   results, folds: list[ClassSplit]) -> dict[str, Any]:
        import pytorch_metric_learning

        layout = ctx.layout
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
            "weights": ctx.inputs.weights,
            "device": str(self.device),
            "precision": self.p.train.precision,
            "channels_last": self.p.train.channels_last,
            "bench": bench.__version__,
            "torch": torch.__version__,
            "pml": pytorch_metric_learning.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
        }

    # -- outputs ------------------------------------------------------------------------------
    def write_outputs(self) -> None:
        """results.csv and summary.md from the results read from the storage (``stored``);
        a stray or edited file under runs/ cannot change them."""
        rows = rows_of(self.stored)
        if rows:
            write_table(confined(self.dir, "results.csv"), rows)
        write_text_atomically(confined(self.dir, "summary.md"), self.summary(rows))

    def selection_sentence(self) -> str:
        """How the trained state is chosen: early stopping only under ``checkpoint: best``."""
        primary = self.p.evaluation.primary
        if self.p.train.checkpoint == "last":
            return (f"final state after {self.p.train.iterations} iterations (checkpoint `last`; "
                    f"validation `{primary}` recorded, not used to stop or select).")
        return f"early stopping on validation `{primary}`."

    def ood_summary(self, frame: pd.DataFrame, dataset: str, order: list[str]) -> list[str]:
        """Size-controlled curves, untrained embedding, gain and rho (bench.analysis.ood)."""
        if frame.empty or "fid" not in frame.columns or frame["fid"].isna().all():
            return []
        from bench.analysis.ood import ood_summary_lines

        return ood_summary_lines(frame.assign(unit=frame["seed"].astype(str)), dataset=dataset,
                                 metric=self.p.evaluation.primary, method_order=order)

    def test_sentence(self) -> str:
        setting = self.p.setting
        if setting.kind == "dml":
            return (f"Test: query = reference = test classes, self-match excluded, "
                    f"k = {self.p.evaluation.k}.")
        sources = ", ".join(setting.source)
        targets = ", ".join(setting.target)
        data = ("labeled source + unlabeled target training identities" if setting.kind == "uda"
                else "labeled sources only")
        return (f"Setting `{setting.kind}`: source {sources}, target {targets} ({data}; each "
                f"method receives the kinds it declares, see 'data used'). Validation on "
                f"held-out source identities. Test: target identities never seen in training, "
                f"query -> gallery, same identity + same camera gallery entries excluded "
                f"(Market-1501 rules); CMC and mAP in [0, 1].")

    def summary(self, rows: list[dict]) -> str:
        p = self.p
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(
            columns=["dataset", "method", "model", "metric", "value", "seed"])
        reid = p.setting.kind != "dml"
        metrics = list(REID_METRICS) if reid else [
            m for m in DML_METRICS if m != "nmi" or p.evaluation.nmi]
        headline = "concatenated" if p.folds > 1 else "separate"
        lines = [f"# Results: {p.name}", "",
                 f"Protocol `{self.plan.source}` (sha256 {self.plan.protocol_hash[:16]}). "
                 f"Backbone {p.model.backbone}, trunk `{p.model.trunk}`, "
                 f"{p.model.embedding_size}-d; {p.folds} class-disjoint fold(s); search budget "
                 f"{p.budget.trials} completed trials per method ({p.budget.sampler}); "
                 f"{p.reproductions} reproduction(s) (seeds {', '.join(map(str, p.seeds))}); "
                 f"{self.selection_sentence()}",
                 self.test_sentence() + " Values: mean ± 95 % t-interval over reproductions. "
                 f"Device {self.device}.", ""]
        for name, _ in p.pools:
            failures = {m: s.failure for (d, m), s in self.states.items()
                        if d == name and s.failure}
            params = {m: s.params or {} for (d, m), s in self.states.items() if d == name}
            data = {m: s.data for (d, m), s in self.states.items() if d == name} if reid else None
            splits = self.splits.get(name, [])
            default = next((x.id for x in splits if x.is_default), "standard")
            sub = frame[frame["dataset"] == name] if len(frame) else frame
            at_default = sub[sub["split"] == default] if len(sub) else sub
            order = [m.name for m in p.methods]
            where = "" if default == "standard" else f", default split {default}"
            lines += [f"## {name}{where}: {headline}"
                      + (" (fold models' embeddings concatenated)" if p.folds > 1 else ""), ""]
            lines += summary_table(at_default, model=headline, metrics=metrics,
                                   method_order=order, failures=failures, params=params,
                                   data=data)
            if p.folds > 1:
                lines += ["", f"## {name}{where}: separate (mean of the {p.folds} fold "
                          "models)", ""]
                lines += summary_table(at_default, model="separate", metrics=metrics,
                                       method_order=order, failures=failures, params=params,
                                       data=data)
            if len(splits) > 1:
                lines += ["", f"## {name}: {p.evaluation.primary} ({headline}) along the "
                          "FID sequence (mean over reproductions; * = default split)", ""]
                lines += sequence_table(sub, splits, model=headline,
                                        metric=p.evaluation.primary, method_order=order)
                lines += self.ood_summary(sub, name, order)
            pairs = {m.name: m.ablation_of for m in p.methods if m.ablation_of}
            if pairs:
                from bench.analysis.ablation import ablation_table

                lines += ["", f"## {name}: each method against its own ablation "
                          f"({headline}; method minus ablation, paired by seed, mean ± 95 % "
                          "t-interval)", ""]
                lines += ablation_table(at_default, pairs, model=headline, metrics=metrics)
            audit = pseudo_label_audit(self.stored, name, order)
            if audit:
                lines += ["", f"## {name}: target pseudo-labels per epoch against the hidden "
                          "target training identities (audit only, mean over seeds; purity "
                          "over clustered rows)", ""] + audit
            used = {m: plugins.describe(u) for m, u in self.plan.plugins.items() if u}
            if used:
                lines += ["", "Plug-ins (installed distributions):", ""]
                lines += [f"- {m}: {text}" for m, text in used.items()]
            if failures:
                lines += ["", "Failed methods:", ""]
                lines += [f"- {m}: {reason}" for m, reason in failures.items()]
            lines.append("")
        return "\n".join(lines)


def pseudo_label_audit(stored: dict, dataset: str, methods: list[str]) -> list[str]:
    """The pseudo-label audit from the storage's results (never from run files on disk)."""
    from bench.analysis.ablation import pseudo_label_table

    return pseudo_label_table(None, dataset, methods,
                              read=lambda _runs, pool, method: stored_pseudo_labels(
                                  stored, pool, method))


def run_protocol(path: str | Path, options: RunOptions | None = None
                 ) -> tuple[Path, dict[str, str]]:
    """Validate, then run; returns the summary path and the failed methods with reasons."""
    options = options or RunOptions()
    plan = plan_protocol(path)
    check_available(plan)
    run = ProtocolRun(plan, options)
    summary = run.run()
    failures = {f"{d}/{m}": s.failure for (d, m), s in run.states.items() if s.failure}
    return summary, failures
