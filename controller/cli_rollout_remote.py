"""``ipsecctl push FILE --rollout ...`` and ``ipsecctl rollout status|pause|resume|abort|
rollback`` (docs/operations.md "Rolling out a policy"; the controller side is
controller/rollout.py and controller/rollout_service.py).

``rollout status`` on a terminal redraws a progress bar and the per-node table once a
second until the rollout ends (or Ctrl-C); on a pipe it prints once, or with
``--wait`` one line per change and the table at the end.  ``-o json`` prints the
status as JSON (with ``--wait``: the final one).  ``--wait`` exits 0 when the rollout
succeeded and :data:`EXIT_ROLLOUT_FAILED` when it ended otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any, TextIO

import grpc.aio

from controller import cli_remote
from controller.cliout import emit, structured
from controller.rollout import parse_duration
from ipsecd.v1 import rollout_pb2, rollout_pb2_grpc

__all__ = ["EXIT_INCOMPATIBLE", "EXIT_ROLLOUT_FAILED", "add_push_options", "push", "register"]

#: ``push --rollout`` refused by the compatibility check (as ``check-rollout``).
EXIT_INCOMPATIBLE = 3
#: ``--wait``: the rollout ended failed, aborted, rolled back, cancelled or superseded.
EXIT_ROLLOUT_FAILED = cli_remote.EXIT["rollout-failed"]

POLL = 1.0

_DATA = ("json", "yaml")  # -o values that print data, not tables


def add_push_options(p: argparse.ArgumentParser) -> None:
    """The ``--rollout`` flags of ``ipsecctl push``."""
    g = p.add_argument_group('rolling reload (docs/operations.md "Rolling out a policy")')
    g.add_argument("--rollout", action="store_true",
                   help="move the nodes batch by batch, each batch gated on its health; "
                        "rolled back by itself when a batch fails")  # fmt: skip
    g.add_argument("--canary", metavar="NODES|N",
                   help="the first batch: node names (comma-separated) or a count")  # fmt: skip
    g.add_argument("--batch", metavar="N|P%",
                   help="nodes per batch after the canary: a count or a percentage "
                        "(default 25%%)")  # fmt: skip
    g.add_argument("--max-unavailable", type=int, default=0, metavar="N",
                   help="nodes that may fail their gate without failing the rollout "
                        "(default 0)")  # fmt: skip
    g.add_argument("--pause", default="0", metavar="DURATION",
                   help="wait between batches (e.g. 30s, 2m; default 0)")  # fmt: skip
    g.add_argument("--gate-timeout", default="2m", metavar="DURATION",
                   help="time a batch has to become healthy (default 2m)")  # fmt: skip
    g.add_argument("--force", action="store_true",
                   help="roll out even if the compatibility check refuses (its plan is "
                        "printed)")  # fmt: skip
    g.add_argument("--wait", action="store_true",
                   help="with --rollout: follow it until it ends; exit 9 unless it "
                        "succeeded")  # fmt: skip


def strategy(args: argparse.Namespace) -> rollout_pb2.RolloutStrategy:
    """The flags as a strategy; :class:`cli_remote.CliError` (usage) naming the flag."""
    s = rollout_pb2.RolloutStrategy(max_unavailable=max(0, args.max_unavailable))
    if args.max_unavailable < 0:
        raise cli_remote.CliError("--max-unavailable must be 0 or more", "usage")
    try:
        s.pause_seconds = parse_duration(args.pause, "--pause")
        s.gate_timeout_seconds = parse_duration(args.gate_timeout, "--gate-timeout")
    except ValueError as exc:
        raise cli_remote.CliError(str(exc), "usage") from None
    if args.canary:
        if args.canary.isdigit():
            s.canary_count = int(args.canary)
        else:
            names = [n.strip() for n in args.canary.split(",") if n.strip()]
            if not names:
                raise cli_remote.CliError("--canary: give node names or a count", "usage")
            s.canary_nodes.extend(names)
    if args.batch:
        text = args.batch.strip()
        number = text[:-1] if text.endswith("%") else text
        if not number.isdigit() or int(number) == 0:
            raise cli_remote.CliError(
                f"--batch {args.batch!r}: write a node count (5) or a percentage (20%)", "usage"
            )
        if text.endswith("%"):
            if int(number) > 100:
                raise cli_remote.CliError("--batch: a percentage is at most 100%", "usage")
            s.batch_percent = int(number)
        else:
            s.batch_count = int(number)
    return s


async def push(args: argparse.Namespace, ch: grpc.aio.Channel, req_fields: dict[str, Any]) -> int:
    """``push FILE --rollout``: start the rollout (``req_fields``: the push request's)."""
    req = rollout_pb2.StartRolloutRequest(strategy=strategy(args), force=args.force, **req_fields)
    stub = rollout_pb2_grpc.RolloutServiceStub(ch)
    resp = await stub.Start(req, timeout=cli_remote.RPC_TIMEOUT * 4)
    if structured(args) and not args.wait:
        emit(args, cli_remote._to_dict(resp))
    elif not structured(args):
        _report_start(resp)
    if resp.diagnostics and not resp.accepted:
        return cli_remote.EXIT["invalid"]
    if resp.refused:
        return EXIT_INCOMPATIBLE
    if not resp.accepted:
        return cli_remote.EXIT["ok"]  # unchanged
    if args.wait:
        return await _follow(stub, args.output, sys.stdout)
    return cli_remote.EXIT["ok"]


def _report_start(resp: rollout_pb2.StartRolloutResponse) -> None:
    for d in resp.diagnostics:
        print(d.rendered, file=sys.stderr)
    if resp.diagnostics and not resp.accepted:
        print(
            f"error: policy rejected with {len(resp.diagnostics)} error(s); nothing changed",
            file=sys.stderr,
        )
        return
    if resp.refused:
        sys.stdout.write(resp.compat_report)
        print(
            "error: the compatibility check refuses this rollout (above); nothing changed: "
            "fix the policy, or push with --force to follow the plan above",
            file=sys.stderr,
        )
        return
    if resp.unchanged:
        print(f"unchanged: revision {resp.revision.revision} already has this text")
        return
    if not resp.compatible:
        print("warning: forced past the compatibility check; the plan:", file=sys.stderr)
        sys.stdout.write(resp.compat_report)
    r = resp.rollout
    print(
        f"rollout {r.id} started: revision {r.from_revision} -> {r.to_revision}, "
        f"{len(r.nodes)} node(s) in {r.batches} batch(es)"
    )
    for note in resp.notes:
        print(f"note: {note}")


# -- status ------------------------------------------------------------------------
_GOOD = {"healthy", "tolerated"}


def progress(r: rollout_pb2.RolloutStatus, width: int = 30) -> str:
    """``[#####-----] 12/50 healthy, 1 failed, 5 moving`` for one status."""
    counts = Counter(n.state for n in r.nodes)
    total = len(r.nodes) or 1
    done = sum(counts[s] for s in _GOOD)
    if r.state in ("rolling-back", "failed", "aborted", "rolled-back"):
        done = counts["rolled-back"]
    fill = round(width * done / total)
    parts = [f"{counts[s]} {s}" for s in sorted(counts) if counts[s]]
    return f"[{'#' * fill}{'-' * (width - fill)}] {done}/{len(r.nodes)}  " + ", ".join(parts)


def headline(r: rollout_pb2.RolloutStatus) -> str:
    s = r.strategy
    batch = f"batch {r.batch + 1} of {r.batches}" if r.batch >= 0 else f"{r.batches} batches"
    line = (
        f"rollout {r.id}: {r.state}  revision {r.from_revision} -> {r.to_revision}  "
        f"({batch}, gate {s.gate_timeout_seconds:g}s"
    )
    if s.max_unavailable:
        line += f", max-unavailable {s.max_unavailable}"
    line += ")"
    if r.rollback_revision:
        line += f"  rollback revision {r.rollback_revision}"
    if r.forced:
        line += "  [forced]"
    return line


def render(r: rollout_pb2.RolloutStatus, *, table: bool = True) -> str:
    if not r.exists:
        return "no rollout has been started (ipsecctl push FILE --rollout)\n"
    lines = [headline(r), progress(r)]
    if r.reason:
        lines.append(f"reason: {r.reason}")
    if r.next_batch_unix_ms and r.state == "running":
        left = max(0, r.next_batch_unix_ms / 1000 - time.time())
        lines.append(f"next batch in {left:.0f}s (--pause)")
    if table:
        rows = [
            [
                n.name,
                str(n.batch),
                n.state,
                str(n.applied_revision or "-"),
                cli_remote._ago(n.since_unix_ms),
                n.reason,
            ]
            for n in r.nodes
        ]
        lines.append(
            cli_remote._table(["NODE", "BATCH", "STATE", "APPLIED", "SINCE", "REASON"], rows)
        )
    return "\n".join(lines) + "\n"


async def _follow(
    stub: rollout_pb2_grpc.RolloutServiceStub, output: str, out: TextIO, *, live: bool = False
) -> int:
    """Poll until the rollout ends; print as it goes; the exit code of ``--wait``."""
    last = ""
    while True:
        r = await stub.Status(rollout_pb2.RolloutStatusRequest(), timeout=cli_remote.RPC_TIMEOUT)
        if output not in _DATA:
            if live:
                out.write("\x1b[H\x1b[2J" + render(r))
            else:
                line = f"{r.state}: {progress(r)}"
                if line != last:
                    out.write(line + "\n")
                    last = line
            out.flush()
        if not r.exists or r.done:
            break
        await asyncio.sleep(POLL)
    if output in _DATA:
        emit(argparse.Namespace(output=output), cli_remote._to_dict(r))
    elif not live:
        out.write(render(r))
    if not r.exists:
        return cli_remote.EXIT["not-found"]
    return cli_remote.EXIT["ok"] if r.state == "succeeded" else EXIT_ROLLOUT_FAILED


async def _status(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    stub = rollout_pb2_grpc.RolloutServiceStub(ch)
    live = not structured(args) and sys.stdout.isatty() and not args.once
    if args.wait or live:
        try:
            return await _follow(stub, args.output, sys.stdout, live=live)
        except asyncio.CancelledError:
            return cli_remote.EXIT["ok"]
    r = await stub.Status(rollout_pb2.RolloutStatusRequest(), timeout=cli_remote.RPC_TIMEOUT)
    if structured(args):
        emit(args, cli_remote._to_dict(r))
    else:
        sys.stdout.write(render(r))
    return cli_remote.EXIT["ok"] if r.exists else cli_remote.EXIT["not-found"]


def _action(name: str) -> Any:
    async def run(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        call = getattr(stub, name)
        r = await call(
            rollout_pb2.RolloutActionRequest(author=cli_remote._author()),
            timeout=cli_remote.RPC_TIMEOUT * 4,
        )
        if structured(args) and not args.wait:
            emit(args, cli_remote._to_dict(r))
        elif not structured(args):
            sys.stdout.write(render(r, table=False))
        if args.wait:
            return await _follow(stub, args.output, sys.stdout)
        return cli_remote.EXIT["ok"]

    return run


def register(subparsers: Any) -> None:
    """``ipsecctl rollout ...`` (``push --rollout`` is added by cli_remote)."""
    common = cli_remote.common_options()
    p = subparsers.add_parser(
        "rollout",
        help="watch and steer a rolling policy reload (push FILE --rollout starts one)",
        description="Watch and steer the cluster's rollout.  Exit codes as the other "
        "remote subcommands; --wait: 0 when the rollout succeeded, 9 when it ended "
        "otherwise (failed, aborted, rolled back).",
    )
    sub = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    s = sub.add_parser("status", parents=[common], help="progress and per-node table")
    s.add_argument("--wait", action="store_true",
                   help="until the rollout ends; exit 9 unless it succeeded")  # fmt: skip
    s.add_argument("--once", action="store_true",
                   help="on a terminal too: print once, no live view")  # fmt: skip
    s.set_defaults(func=cli_remote.runner(_status))
    for name, method, text in (
        ("pause", "Pause", "start no new batch (the batch in its gate finishes)"),
        ("resume", "Resume", "carry on (a pause between batches starts again)"),
        ("abort", "Abort", "stop; every node that moved returns to the previous revision"),
        ("rollback", "Rollback", "in progress: as abort; after success: roll the previous "
                                 "revision out again, batch by batch"),
    ):  # fmt: skip
        a = sub.add_parser(name, parents=[common], help=text)
        a.add_argument(
            "--wait", action="store_true", help="follow the rollout until it ends; exit 9 unless ok"
        )
        a.set_defaults(func=cli_remote.runner(_action(method)))
