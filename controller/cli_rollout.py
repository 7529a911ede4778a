"""``ipsecctl check-rollout OLD NEW [--nodes FILE] [-o json]``: the offline static
compatibility check of a rolling policy change (:func:`ipsecd.spd.compat.check_rollout`,
docs/spd.md section 13, docs/operations.md "Checking a rollout").

Exit codes: 0 compatible; 3 not compatible (the findings on stdout, each refusing
the rollout, and the plan ``--force`` would follow); 1 invalid input (diagnostics with
FILE:LINE:COL on stderr) or a directory beyond the check's bounds; 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from controller.cliout import emit, structured
from ipsecd.spd import NodeInfo, Policy, SpdError, load_file, load_nodes_file
from ipsecd.spd.compat import CompatLimitError, check_rollout, synthetic_directory

__all__ = ["EXIT_INCOMPATIBLE", "register"]

#: Exit status when the two revisions cannot be rolled out one node at a time.
EXIT_INCOMPATIBLE = 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-rollout",
        help="can NEW replace OLD one node at a time? (offline compatibility check)",
        description="Check, offline, that every pair of nodes with one end on OLD and "
        "the other on NEW still negotiates every connection they share and that no "
        "protected traffic is dropped or sent in clear while they differ.  Exit 0: "
        "compatible; 3: not compatible (the findings and the forced plan on stdout); "
        "1: invalid input; 2: usage.",
    )
    p.add_argument("old", metavar="OLD", help="the SPD file the cluster runs now")
    p.add_argument("new", metavar="NEW", help="the SPD file to roll out")
    p.add_argument(
        "--nodes",
        metavar="NODES_FILE",
        help="node directory: NAME ADDR[,ADDR] [key=value ...] per line (without it, "
        "one stand-in node per group clause of the two files)",
    )
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    p.set_defaults(func=_check_rollout)


def _load(name: str) -> Policy | None:
    try:
        return load_file(name)
    except SpdError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"error: {name} is invalid", file=sys.stderr)
        return None


def _check_rollout(args: argparse.Namespace) -> int:
    old, new = _load(args.old), _load(args.new)
    directory: list[NodeInfo] | None = None
    if args.nodes is not None:
        try:
            directory = load_nodes_file(args.nodes)
        except SpdError as exc:
            print(exc.render(), file=sys.stderr)
            print(f"error: {args.nodes} is invalid", file=sys.stderr)
            return 1
    if old is None or new is None:
        return 1
    synthetic = directory is None
    if directory is None:
        directory = synthetic_directory(old, new)
    try:
        report = check_rollout(old, new, directory)
    except CompatLimitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if synthetic:
        report = replace(report, synthetic=True)
    if structured(args):
        emit(args, report.to_dict())
    else:
        sys.stdout.write(report.to_text())
    return 0 if report.compatible else EXIT_INCOMPATIBLE
