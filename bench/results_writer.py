"""RESULTS/<protocol>/: the guard against mixing a changed protocol's results, the protocol copy,
run files, results.csv, summary.md and the OOD figures; shared by `bench run` and
`bench rebuild` (a `bench worker` writes none of these).

Every table is made from the result documents read from the storage (``stored``), never from
files on disk, so a stray or edited run file cannot change one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench import plugins
from bench.atomic import write_text
from bench.errors import BenchError
from bench.jobs import completed_results
from bench.keys import JobKey
from bench.plan import Plan
from bench.results import read_json, write_json, write_table
from bench.results_source import read_protocol_copy, rows_of
from bench.safe_paths import (
    check_tree,
    confined,
    default_storage_url,
    protocol_dir,
    remove_written,
)
from bench.splits.named import NamedSplit
from bench.summary_text import summary


class ResultsWriter:
    """Writes one protocol's results folder. ``states`` ((pool, method) -> chosen values,
    failure, data kinds) is shared with whoever decides them: the scheduler, or a rebuild."""

    def __init__(self, plan: Plan, results_root: Path, *, device: str,
                 states: dict[tuple[str, str], Any]) -> None:
        self.plan, self.p = plan, plan.protocol
        self.dir = protocol_dir(results_root, self.p.name)  # confined, links resolved
        self.device = device
        self.states = states
        #: (pool, method) -> job -> result document, as read from the storage
        self.stored: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.splits: dict[str, list[NamedSplit]] = {}

    # -- the folder ---------------------------------------------------------------------------
    def prepare_directory(self, fresh: bool = False) -> None:
        """Refuse to mix results of a changed protocol; --fresh starts over. Writes nothing."""
        copy = confined(self.dir, "protocol.yaml")
        if fresh:
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
            write_text(copy, self.plan.protocol_text)
        if not confined(self.dir, "plugins.json").is_file():
            write_json(confined(self.dir, "plugins.json"), plugins.signature(self.plan.plugins))

    def default_storage_url(self) -> str:
        return default_storage_url(self.dir.parent, self.p.name)

    def has_default_storage(self) -> bool:
        return confined(self.dir, "study.db").exists()

    # -- results ------------------------------------------------------------------------------
    def note_splits(self, pool: str, splits: list[NamedSplit]) -> None:
        """The splits ``pool`` runs on (for the FID-sequence table)."""
        self.splits[pool] = splits

    def method_finished(self, ctx, spec, study, state) -> None:
        """A method is done or failed: its run files, then the tables, from the storage."""
        if study is not None:
            self.write_run_files(ctx.name, spec.name, completed_results(study))
        self.write_outputs()

    def write_run_files(self, pool: str, method: str, results: dict[str, dict[str, Any]]) -> None:
        """Keep ``results`` (from the storage) for the tables; write each as its run file,
        confined to runs/, unless an identical file is there already."""
        self.stored.setdefault((pool, method), {}).update(results)
        for job, result in results.items():
            key = JobKey.parse(job)
            path = confined(self.dir, "runs", pool, method, key.split, f"{key.run_stem}.json")
            if read_json(path) != result:
                write_json(path, result)

    def write_outputs(self) -> None:
        """results.csv and summary.md from the results read from the storage (``stored``)."""
        rows = rows_of(self.stored)
        if rows:
            write_table(confined(self.dir, "results.csv"), rows)
        write_text(confined(self.dir, "summary.md"), self.summary(rows))

    def summary(self, rows: list[dict]) -> str:
        return summary(self.plan, rows, states=self.states, splits=self.splits,
                       stored=self.stored, device=self.device)

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

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.md"
