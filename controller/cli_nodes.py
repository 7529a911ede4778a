"""``ipsecctl token ...`` and ``ipsecctl node remove``: join tokens and node removal
(admin only; docs/operations.md "Joining nodes", docs/security.md).

    ipsecctl token create [--ttl DURATION] [--uses N] [--node NAME] [--description TEXT]
    ipsecctl token list
    ipsecctl token delete ID
    ipsecctl node remove NAME

``token create`` prints the token (``ipsecd1.ID.SECRET.PIN``) once on stdout and
nothing else there (its details go to stderr), so ``TOKEN=$(ipsecctl token create)``
works; the controller keeps only a hash of the secret, so it cannot be shown again.
Exit codes are ipsecctl's (controller/cli_remote.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

import grpc.aio

from controller.cli_remote import EXIT, _table, _to_dict, common_options, runner
from controller.cliout import emit, structured
from ipsecd.v1 import join_pb2, join_pb2_grpc

__all__ = ["parse_duration", "register"]

RPC_TIMEOUT = 30.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> seconds (argparse type)."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number with s, m, h or d (e.g. 30m, 24h)"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def _when(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "-"


def _left(info: join_pb2.TokenInfo) -> str:
    now = time.time()
    if info.expires_unix <= now:
        return "expired"
    if info.uses_left <= 0:
        return "used up"
    secs = int(info.expires_unix - now)
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m"


async def _create(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    req = join_pb2.CreateTokenRequest(
        ttl_seconds=args.ttl or 0.0,
        uses=args.uses or 0,
        node=args.node or "",
        description=args.description or "",
    )
    resp = await join_pb2_grpc.NodeAdminServiceStub(ch).CreateToken(req, timeout=RPC_TIMEOUT)
    if structured(args):
        emit(args, {"token": resp.token, "info": _to_dict(resp.info)})
        return EXIT["ok"]
    print(resp.token)
    info = resp.info
    scope = f", only for node {info.node}" if info.node else ""
    print(
        f"# join token {info.id}: {info.uses} use(s), expires {_when(info.expires_unix)}"
        f"{scope}; shown once (the controller keeps only its hash)\n"
        "# on the new node: ipsecd --controller HOST:PORT --node NAME --join-file FILE "
        "(or $IPSECD_JOIN_TOKEN; --join TOKEN shows it in the process list)",
        file=sys.stderr,
    )
    return EXIT["ok"]


async def _list(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    resp = await join_pb2_grpc.NodeAdminServiceStub(ch).ListTokens(
        join_pb2.ListTokensRequest(), timeout=RPC_TIMEOUT
    )
    if structured(args):
        emit(args, _to_dict(resp))
        return EXIT["ok"]
    rows = [
        [
            t.id,
            _when(t.expires_unix),
            _left(t),
            f"{t.uses_left}/{t.uses}",
            t.node or "-",
            ",".join(t.used_by) or "-",
            t.created_by or "-",
        ]
        for t in resp.tokens
    ]
    headers = ["ID", "EXPIRES", "LEFT", "USES LEFT", "NODE", "USED BY", "CREATED BY"]
    print(_table(headers, rows))
    return EXIT["ok"]


async def _delete(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    await join_pb2_grpc.NodeAdminServiceStub(ch).DeleteToken(
        join_pb2.DeleteTokenRequest(id=args.id), timeout=RPC_TIMEOUT
    )
    if structured(args):
        emit(args, {"deleted": args.id})
    else:
        print(f"join token {args.id} deleted")
    return EXIT["ok"]


async def _remove(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    resp = await join_pb2_grpc.NodeAdminServiceStub(ch).RemoveNode(
        join_pb2.RemoveNodeRequest(node=args.name), timeout=RPC_TIMEOUT
    )
    if structured(args):
        emit(args, _to_dict(resp))
        return EXIT["ok"]
    serials = ", ".join(resp.revoked_serials) or "none still valid"
    print(f"node {args.name} removed: certificates revoked: {serials}")
    print(
        f"CRL number {resp.crl_number} sent to every connected agent (their IKE refuses "
        f"{args.name} from now on); its stream is closed and it left the node directory"
    )
    return EXIT["ok"]


def register(subparsers: Any) -> None:
    """Add ``token`` and ``node`` to ``ipsecctl`` (cli.py ``REGISTRARS``)."""
    common = common_options()
    token = subparsers.add_parser("token", help="join tokens for new nodes (admin)")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = tsub.add_parser("create", parents=[common], help="make a join token (printed once)")
    p.add_argument(
        "--ttl",
        type=parse_duration,
        metavar="DURATION",
        help="how long it can be used: 90s, 30m, 24h (default), 7d (at most 30d)",
    )
    p.add_argument("--uses", type=int, metavar="N", help="how many nodes may join with it (1)")
    p.add_argument(
        "--node",
        metavar="NAME",
        help="only this node name may join with it; a node that holds a valid certificate "
        "can join again only with such a token (its old certificates are revoked)",
    )
    p.add_argument("--description", metavar="TEXT", help="a note shown by token list")
    p.set_defaults(func=runner(_create))
    p = tsub.add_parser("list", parents=[common], help="the join tokens (never their secrets)")
    p.set_defaults(func=runner(_list))
    p = tsub.add_parser("delete", parents=[common], help="delete a join token")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=runner(_delete))

    node = subparsers.add_parser("node", help="cluster nodes (admin)")
    nsub = node.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    p = nsub.add_parser(
        "remove",
        parents=[common],
        help="revoke every certificate of a node, push the CRL to the agents, forget it",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=runner(_remove))
