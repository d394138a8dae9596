"""The `bench` command line: run protocols and inspect datasets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.cli_options import parse_option
from bench.errors import EXIT_BAD_INPUT, EXIT_DAMAGED_STATE, BenchError, StateError

DESCRIPTION = """\
bench: fair, reproducible benchmarks for deep metric learning and domain-adaptive re-ID.

Every method in a protocol trains under identical settings (data, split, backbone, loop,
sampler, optimiser, schedule, evaluation); only its own parameters differ.
"""
EPILOG = """\
examples:
  bench run protocols/quick.yaml          train the quick protocol's losses on `glyphs`
  bench validate protocols/quick.yaml     check a protocol file without running it
  bench datasets list                     embedded and registered datasets, and availability
  bench methods list                      methods, plug-in losses/miners and their origin
  bench evaluate results/quick --recall-k 16   tables again from saved embeddings, no training
  bench datasets show glyphs              counts and a contact-sheet PNG
  bench datasets prepare cub200 --root D  check (or download) a real dataset copy
  bench datasets verify cub200 --root D   decode every image, list the bad ones
  bench run protocols/quick.yaml --dry-run   the plan: methods x folds x trials x seeds
  bench splits make --dataset glyphs --extractor mobilenet_v2   FID-ranked split sequence
  bench audit protocols/claims/reality_check.yaml --results results/quick
  bench report results/quick              one self-contained HTML page (+ Markdown)
  bench worker protocols/quick.yaml --storage URL   join the work from another process/machine
  bench launch protocols/quick.yaml --slurm --workers 8 --storage URL   workers via submitit
  bench status protocols/quick.yaml       per-method progress read from the storage
  bench rebuild protocols/quick.yaml      results/<protocol>/ rebuilt from the storage alone

exit codes: 0 success, 1 a method failed (others still recorded), 2 bad input, 3 damaged or
unusable state (storage, cache or results folder: the line names the file and what to do).
"""


def cmd_run(args: argparse.Namespace) -> int:
    from bench.state import check_grace
    from bench.storage import check_storage_url

    check_grace(args.grace)  # options first: refused before the protocol's data loads
    check_storage_url(args.storage)
    if args.dry_run:
        from bench.plan import plan_protocol
        from bench.plan_text import describe_plan

        print(describe_plan(plan_protocol(args.protocol)))
        return 0
    started = time.perf_counter()
    from bench.local_jobs import start_held_helpers, stop_helpers

    # -j helpers start before this process's own imports (~6 s), so theirs overlap them
    jobs, helpers = start_held_helpers(args.protocol, args.jobs, Path(args.results),
                                       args.storage)
    try:
        from bench.runner import RunOptions, run_protocol

        options = RunOptions(results_root=Path(args.results), storage=args.storage,
                             fresh=args.fresh, progress=not args.no_progress, grace=args.grace,
                             heartbeat=max(1, args.grace // 3), jobs=jobs, helpers=helpers)
        summary, failures = run_protocol(args.protocol, options)
    finally:  # the run stopped them already unless it failed before starting its work
        stop_helpers(helpers, wait=0)
    print(summary.read_text(encoding="utf-8"))
    print(f"wrote {summary.parent}/ (results.csv, summary.md, runs/, study.db) in "
          f"{time.perf_counter() - started:.0f} s")
    for method, reason in failures.items():
        print(f"bench: method {method} failed: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.feasibility import check_data
    from bench.plan import plan_protocol

    plan = plan_protocol(args.protocol)
    p = plan.protocol
    for note in check_data(p, plan.source):  # class counts: folds and sampler batches
        print(f"{args.protocol}: note: {note}")
    datasets = ", ".join(d.name for d in p.dataset_specs)
    print(f"{args.protocol}: valid — dataset(s) {datasets}, {len(p.methods)} methods "
          f"({', '.join(m.name for m in p.methods)}), {p.folds} fold(s), "
          f"{p.budget.trials} trials, {p.reproductions} reproduction(s)")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from bench.data import dataset_info, dataset_names
    from bench.data.registry import dataset_origin

    for name in dataset_names():
        info = dataset_info(name)
        state = "available" if info["available"] else "missing"
        print(f"{name:12s} {state:9s} {info['where']} [{dataset_origin(name)}]")
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from bench.data import describe, load_dataset
    from bench.data.contact_sheet import write_contact_sheet

    options = dict(parse_option(o) for o in args.option)
    counts = describe(args.name, **options)
    for key, value in counts.items():
        print(f"{key:14s} {value}")
    out = Path(args.out or f"{args.name}_contact_sheet.png")
    write_contact_sheet(load_dataset(args.name, **options), out)
    print(f"contact sheet: {out}")
    return 0


def cmd_datasets_prepare(args: argparse.Namespace) -> int:
    from bench.data.real.prepare import prepare

    options = dict(parse_option(o) for o in args.option)
    problems = prepare(args.name, args.root, download=not args.no_download, **options)
    for line in problems:
        print(line)
    if problems:
        print(f"bench: {args.name}: {len(problems)} problem(s) found", file=sys.stderr)
    return 1 if problems else 0


def cmd_datasets_verify(args: argparse.Namespace) -> int:
    from bench.data.real.prepare import verify

    options = dict(parse_option(o) for o in args.option)
    problems = verify(args.name, args.root, quick=args.quick, **options)
    for line in problems:
        print(line)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command's arguments. Long because it is a flat list of argparse declarations
    (run, validate, datasets ...); the other command groups add their own parsers."""
    parser = argparse.ArgumentParser(prog="bench", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a protocol and write results/<protocol>/",
                         description="Validate PROTOCOL; then, per dataset and method, search "
                         "its hyperparameters on the validation folds with the protocol's fixed "
                         "budget and retrain the best ones `reproductions` times for the test "
                         "phase. Re-running the same command resumes. Writes results.csv (tidy), "
                         "summary.md (mean +- 95% CI) and runs/.")
    run.add_argument("protocol", help="protocol YAML file, e.g. protocols/quick.yaml")
    run.add_argument("--results", default="results",
                     help="results root; output goes to RESULTS/<protocol name>/ (default: results)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and print the plan (methods x folds x trials x seeds) only")
    run.add_argument("--storage", metavar="URL",
                     help="optuna storage URL shared by every process (default: sqlite file "
                     "RESULTS/<protocol>/study.db); e.g. postgresql://user@host/db")
    run.add_argument("--fresh", action="store_true",
                     help="discard earlier results of this protocol and start over")
    run.add_argument("--grace", type=int, default=30, metavar="SECONDS",
                     help="a trial whose process sent no heartbeat for this long is failed and "
                     "its slot re-run (default: 30)")
    run.add_argument("-j", "--jobs", metavar="N|auto", default=None,
                     help="processes sharing the work on this machine: this one plus N-1 local "
                     "`bench worker` helpers; the same trials and jobs as one process. With the "
                     "protocol's cpu_threads pinned (quick.yaml pins 1) every process computes "
                     "alike and values are identical; unpinned, the cores are split between the "
                     "processes and values agree up to float summation order (~5e-4 NMI on "
                     "quick). Default ($BENCH_JOBS overrides): auto when cpu_threads is pinned, "
                     "else 1. auto: cores // cpu_threads processes (at most 4) for protocols of "
                     "16+ training runs whose search is in its seeded random phase (TPE with "
                     "trials <= 5, or random), else 1")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a protocol file without running it")
    validate.add_argument("protocol")
    validate.set_defaults(func=cmd_validate)

    datasets = sub.add_parser("datasets", help="list or inspect datasets")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser("list", help="every registered dataset, and whether it is here")
    dlist.set_defaults(func=cmd_datasets_list)
    show = dsub.add_parser("show", help="counts and a contact-sheet PNG for one dataset")
    show.add_argument("name")
    show.add_argument("--out", help="contact sheet path (default: NAME_contact_sheet.png)")
    show.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="dataset option, e.g. --option image_size=32 (repeatable)")
    show.set_defaults(func=cmd_datasets_show)
    prep = dsub.add_parser("prepare", help="check (or download, where allowed) a real dataset",
                           description="Check a copy of a real dataset placed under ROOT: "
                           "official files, lists, images present, documented counts. Where an "
                           "official source allows it, download and checksum it when missing.")
    verify = dsub.add_parser("verify", help="decode every image of a real dataset",
                             description="Report every missing, unreadable or corrupt image, "
                             "one line each; exit 1 when there is any.")
    for action in (prep, verify):
        action.add_argument("name", help="cub200, cars196, sop, inshop, market1501, dukemtmc, "
                            "msmt17, folder or manifest")
        action.add_argument("--root", help="dataset folder (default: $BENCH_DATA/NAME, else "
                            "~/data/NAME)")
        action.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                            help="dataset option, e.g. --option manifest=list.csv (repeatable)")
    prep.add_argument("--no-download", action="store_true",
                      help="never download; only check what is there")
    prep.set_defaults(func=cmd_datasets_prepare)
    verify.add_argument("--quick", action="store_true",
                        help="only check that each file exists and has a readable header")
    verify.set_defaults(func=cmd_datasets_verify)
    __import__("bench.splits.cli", fromlist=["cli"]).add_splits_parser(sub)  # bench splits ...
    __import__("bench.analysis.cli", fromlist=["cli"]).add_analysis_parsers(sub)  # audit, report
    __import__("bench.workers", fromlist=["workers"]).add_worker_parsers(sub)  # worker, launch..
    __import__("bench.plugin_cli", fromlist=["x"]).add_methods_parser(sub)  # methods list
    __import__("bench.evaluate_cli", fromlist=["x"]).add_evaluate_parser(sub)  # evaluate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StateError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # e.g. a full or read-only results disk: stored results are kept
        where = f"{error.filename}: " if error.filename else ""
        print(f"bench: error: {where}{error.strerror or error}; results already written are "
              f"kept (free space or fix permissions, then re-run to resume)", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    except Exception as error:
        from bench.state import storage_error_line

        line = storage_error_line(error, args)
        if line is None:
            raise  # a bug: keep the traceback
        print(f"bench: error: {line}", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    except KeyboardInterrupt:
        print("bench: interrupted; results already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
