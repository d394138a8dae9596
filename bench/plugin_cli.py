"""``bench methods list``: every method, loss and miner a protocol can name, with its origin
(built-in, or the installed distribution and version declaring it by entry point)."""

from __future__ import annotations

import argparse


def cmd_methods_list(args: argparse.Namespace) -> int:
    from bench import plugins
    from bench.methods import list_methods
    from bench.methods.pml_loss import LOSSES, MINERS

    print("methods (protocol `method:`):")
    for name, origin in list_methods():
        print(f"  {name:24s} {origin}")
    for kind, builtin in (("losses", LOSSES), ("miners", MINERS)):
        found = plugins.discover(kind, set(builtin))
        print(f"{kind} (pml_loss `{plugins.SINGULAR[kind]}:`): "
              f"{len(builtin)} from pytorch-metric-learning ({plugins.BUILTIN})"
              + ("" if found else "; no plug-ins installed"))
        for name, plugin in sorted(found.items()):
            print(f"  {name:24s} {plugin.origin}")
    return 0


def add_methods_parser(subparsers) -> None:
    methods = subparsers.add_parser("methods", help="list methods, losses and miners")
    msub = methods.add_subparsers(dest="methods_command", required=True, metavar="ACTION")
    mlist = msub.add_parser("list", help="every method (and plug-in loss/miner) with its origin")
    mlist.set_defaults(func=cmd_methods_list)
