"""The `bench` command line: run protocols and inspect datasets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.errors import BenchError

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
  bench datasets show glyphs              counts and a contact-sheet PNG

exit codes: 0 success, 1 a method failed (others still recorded), 2 bad input.
"""


def _parse_option(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise BenchError(f"expected KEY=VALUE, got {text!r}", field="--option")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.runner import run_protocol

    started = time.perf_counter()
    summary, failures = run_protocol(args.protocol, results_root=args.results,
                                     progress=not args.no_progress)
    print(summary.read_text(encoding="utf-8"))
    print(f"wrote {summary.parent}/ (results.csv, history.csv, summary.md) in "
          f"{time.perf_counter() - started:.0f} s")
    for method, reason in failures.items():
        print(f"bench: method {method} failed: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.runner import plan_protocol

    plan = plan_protocol(args.protocol)
    p = plan.protocol
    print(f"{args.protocol}: valid — dataset {p.dataset.name}, {len(p.methods)} methods "
          f"({', '.join(m.name for m in p.methods)}), {len(p.seeds)} seed(s), "
          f"{p.train.iterations} iterations each")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from bench.data import dataset_info, dataset_names

    for name in dataset_names():
        info = dataset_info(name)
        state = "available" if info["available"] else "missing"
        print(f"{name:12s} {state:9s} {info['where']}")
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from bench.data import describe, load_dataset
    from bench.data.contact_sheet import write_contact_sheet

    options = dict(_parse_option(o) for o in args.option)
    counts = describe(args.name, **options)
    for key, value in counts.items():
        print(f"{key:14s} {value}")
    out = Path(args.out or f"{args.name}_contact_sheet.png")
    write_contact_sheet(load_dataset(args.name, **options), out)
    print(f"contact sheet: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a protocol and write results/<protocol>/",
                         description="Validate PROTOCOL, then train and evaluate every method x "
                         "seed; writes results.csv (tidy), history.csv and summary.md.")
    run.add_argument("protocol", help="protocol YAML file, e.g. protocols/quick.yaml")
    run.add_argument("--results", default="results",
                     help="results root; output goes to RESULTS/<protocol name>/ (default: results)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; results already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
