"""The dry run's text (`bench run --dry-run`): methods x folds x trials x seeds and the training
runs they imply, from the plan alone (a given split file is read; no data is loaded)."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.methods import method_class
from bench.methods.base import DATA_LABELS
from bench.plan import Plan
from bench.setting_kinds import SETTINGS
from bench.settings import static_kinds
from bench.splits.named import split_file_path


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
    if SETTINGS[p.setting.kind].domains:
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
