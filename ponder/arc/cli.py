"""`ponder arc ...` sub-commands."""
from __future__ import annotations

import argparse


def add_arc_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("arc", help="ARC-AGI: score a submission, baselines, leakage report")
    arc = p.add_subparsers(dest="arc_command", required=True)
    del arc  # filled in by the ARC module
    p.set_defaults(fn=run_arc)


def run_arc(args: argparse.Namespace, extra: list[str]) -> int:
    raise NotImplementedError
