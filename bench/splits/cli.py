"""`bench splits make` and `bench splits import`: FID-ranked split sequences (ooDML)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# bench.extractors.EXTRACTORS, repeated so that building the parser does not import torch.
EXTRACTOR_CHOICES = ("mobilenet_v2", "inception", "resnet50")

MAKE_DESCRIPTION = """\
Build a sequence of class splits of increasing difficulty for DATASET (ooDML's recipe):
frozen features per image (cached), one centroid per class, FID between the train and the test
centroids; easier splits by mixing the default split's two sides, harder ones by swapping the
most other-side-like classes, then by removing boundary classes from both sides. Prints the
table and the checksum of the splits and writes the split file (JSON).
"""
MAKE_EPILOG = """\
options (--option KEY=VALUE, repeatable): sequence parameters swaps_per_iteration (2),
swap_memory (5), max_swap_iterations (25), easier_iterations (2), removal_fraction (0.12),
min_fraction (0.5), eps (1e-8); any other key is a dataset option, e.g. image_size=32 or
max_classes=200.

example:
  bench splits make --dataset glyphs --extractor mobilenet_v2 --option image_size=32
"""


def format_table(document: dict[str, Any]) -> str:
    """The split table: id, stage, class counts, FID, default marker."""
    lines = [f"{'split':>5}  {'stage':8s} {'train':>6} {'test':>6} {'FID':>12}  default"]
    for entry in document["splits"]:
        fid = "-" if entry["fid"] is None else f"{entry['fid']:.4f}"
        lines.append(f"{entry['id']:>5}  {entry['stage']:8s} {len(entry['train_classes']):>6} "
                     f"{len(entry['test_classes']):>6} {fid:>12}  "
                     f"{'*' if entry['is_default'] else ''}".rstrip())
    return "\n".join(lines)


def _split_options(texts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """--option values -> (sequence parameters, dataset options)."""
    from bench.cli_options import parse_option
    from bench.splits.fid_sequence import SequenceParams

    names = {f.name for f in dataclasses.fields(SequenceParams)}
    params: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    for text in texts:
        key, value = parse_option(text)
        (params if key in names else dataset)[key] = value
    return params, dataset


def cmd_splits_make(args: argparse.Namespace) -> int:
    from bench.splits.fid_sequence import SequenceParams, make_dataset_splits, write_split_file

    started = time.perf_counter()
    params, dataset_options = _split_options(args.option)
    sequence_params = SequenceParams.from_options(params, source="--option")
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
    document = make_dataset_splits(args.dataset, args.extractor, dataset_options=dataset_options,
                                   params=sequence_params, progress=not args.no_progress, log=log)
    out = Path(args.out or f"results/splits/{args.dataset}-{args.extractor}.json")
    write_split_file(document, out)
    print(format_table(document))
    print(f"checksum: {document['checksum']}")
    print(f"wrote {out} ({len(document['splits'])} splits, {document['num_classes']} classes, "
          f"{args.extractor} features) in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_splits_import(args: argparse.Namespace) -> int:
    from bench.splits.fid_sequence import write_split_file
    from bench.splits.oodml_import import import_oodml_pickle

    document = import_oodml_pickle(args.pickle, dataset=args.dataset, default_id=args.default_id)
    out = Path(args.out)
    if out.resolve() == Path(args.pickle).resolve():
        raise BenchError("refusing to overwrite the pickle being imported", field="--out")
    write_split_file(document, out)
    print(format_table(document))
    print(f"checksum: {document['checksum']}")
    print(f"wrote {out} ({len(document['splits'])} splits)")
    return 0


def add_splits_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `splits make` and `splits import` on the top-level ``bench`` subparsers."""
    splits = subparsers.add_parser("splits", help="FID-ranked class-split sequences (ooDML)")
    ssub = splits.add_subparsers(dest="splits_command", required=True, metavar="ACTION")
    make = ssub.add_parser("make", help="build a split sequence and write its split file",
                           description=MAKE_DESCRIPTION, epilog=MAKE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    make.add_argument("--dataset", required=True, help="dataset name, e.g. glyphs or emoji")
    make.add_argument("--extractor", default="mobilenet_v2", choices=EXTRACTOR_CHOICES,
                      help="frozen feature extractor (default: mobilenet_v2)")
    make.add_argument("--out", help="split file (default: results/splits/DATASET-EXTRACTOR.json)")
    make.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="sequence parameter or dataset option (repeatable; see below)")
    make.add_argument("--no-progress", action="store_true", help="hide progress bars")
    make.add_argument("--verbose", action="store_true", help="log every iteration to stderr")
    make.set_defaults(func=cmd_splits_make)

    imp = ssub.add_parser("import", help="convert an ooDML split pickle (read safely)",
                          description="Read one of ooDML's published split pickles with a "
                          "restricted unpickler (plain containers, strings, numbers and numpy "
                          "arrays only; anything else is refused) and write a bench split file.")
    imp.add_argument("pickle", help="ooDML split pickle")
    imp.add_argument("--dataset", required=True, help="dataset name recorded in the split file")
    imp.add_argument("--out", required=True, help="split file to write (JSON)")
    imp.add_argument("--default-id", help="id of the default split (else a split's own "
                     "is_default/default flag)")
    imp.set_defaults(func=cmd_splits_import)
    return splits
