"""``ipsecctl`` subcommands that talk to the controller over gRPC.

    ipsecctl push FILE [--comment TEXT] [--base-revision N]
    ipsecctl get [--revision N] [--show-secrets]
    ipsecctl history | diff A B | rollback [N] | nodes | status [NODE]

Every subcommand takes ``-o table|json`` (tables for people, JSON for scripts) and
talks mTLS with the credentials of an ipsecctl config (controller/clientconf.py):
``--config FILE``, else ``$IPSECCTL_CONFIG``, else ``~/.config/ipsecctl/config``.  The
controller is ``--controller HOST:PORT``, else ``$IPSECCTL_CONTROLLER``, else the first
address in the config.  ``--insecure`` talks plaintext instead (to a controller started
with ``--insecure``; a warning on every run; default address 127.0.0.1:7480).

Exit codes (stable, for scripts):

====  =============================================================
0     success
1     the SPD is invalid or too large (diagnostics printed, nothing changed)
2     usage error
3     conflict: the base revision is no longer current (someone pushed first)
4     not found (no such revision, no policy yet, unknown node)
5     the controller is unreachable
6     the controller cannot reach etcd
7     permission denied or not authenticated (a role that may not do this, a
      certificate refused or not trusted, --show-secrets without the admin role)
8     any other error
9     ``--wait`` on a rollout: it ended failed, aborted, rolled back, cancelled or
      superseded (controller/cli_rollout_remote.py); ``push --rollout`` refused by
      the compatibility check exits 3, as ``check-rollout`` does
====  =============================================================

A config that cannot be used (missing, readable by others, broken, expired) is a usage
error (exit 2) whose message says what to do; :func:`resolve_target` is the one place
that decides the address and the credentials.

Message sizes are the controller's (:mod:`controller.limits`), mirrored: ``push``
refuses a file over the largest policy any controller can accept before sending it; a
smaller one over *this* controller's ``--max-policy-bytes`` is answered by the
controller with the limit and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format

from controller import cli_secret
from controller.clientconf import ConfigError, load_config, locate
from controller.cliout import READ_FORMATS, emit, error, structured, wide
from controller.limits import (
    DEFAULT_MAX_POLICY_BYTES,
    MAX_RESPONSE_BYTES,
    POLICY_BYTES_CEILING,
    client_channel_options,
    human_bytes,
)
from ipsecd.v1 import policy_pb2, policy_pb2_grpc, status_pb2, status_pb2_grpc, types_pb2

__all__ = ["EXIT", "common_options", "main", "register", "runner"]

DEFAULT_CONTROLLER = "127.0.0.1:7480"
ENV_CONTROLLER = "IPSECCTL_CONTROLLER"
RPC_TIMEOUT = 15.0

EXIT = {
    "ok": 0,
    "invalid": 1,
    "usage": 2,
    "conflict": 3,
    "not-found": 4,
    "unreachable": 5,
    "store-unavailable": 6,
    "permission-denied": 7,
    "error": 8,
    "rollout-failed": 9,
}


class CliError(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Target:
    """Where ipsecctl connects and how: mTLS with the credentials of ``config``, or
    plaintext (``credentials`` None, ``--insecure``)."""

    address: str
    credentials: grpc.ChannelCredentials | None = None
    config: Path | None = None

    @property
    def tls(self) -> bool:
        return self.credentials is not None


INSECURE_WARNING = (
    "warning: --insecure: plaintext gRPC to {address}: the controller is not "
    "authenticated and nothing is encrypted"
)


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Target:
    """The controller address and credentials of a remote subcommand (see the module
    docstring for the order); :class:`CliError` (usage) when no config can be used."""
    env = os.environ if environ is None else environ
    address = getattr(args, "sub_controller", None) or getattr(args, "controller", None)
    address = address or env.get(ENV_CONTROLLER)
    if getattr(args, "sub_insecure", False) or getattr(args, "insecure", False):
        address = address or DEFAULT_CONTROLLER
        print(INSECURE_WARNING.format(address=address), file=sys.stderr)
        return Target(address)
    flag = getattr(args, "sub_config", None) or getattr(args, "config", None)
    try:
        path = locate(flag, env)
        conf = load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), "usage") from None
    address = address or conf.controllers[0]
    return Target(address, conf.channel_credentials(), path)


def _channel(target: Target) -> grpc.aio.Channel:
    options = client_channel_options()
    if target.credentials is None:
        return grpc.aio.insecure_channel(target.address, options=options)
    return grpc.aio.secure_channel(target.address, target.credentials, options=options)


def _unreachable(details: str, address: str, target: Target | None) -> CliError:
    """UNAVAILABLE: a TLS failure (said plainly, with the fix) or no controller."""
    first = details.splitlines()[0]
    host = address.rsplit(":", 1)[0]
    conf = str(target.config) if target is not None and target.config else "the config"
    tls = target is not None and target.tls
    if tls and "CERTIFICATE_VERIFY_FAILED" in details:
        return CliError(
            f"the controller at {address} presented a certificate the CA in {conf} did not "
            f"sign ({first}); is {conf} this cluster's config?",
            "permission-denied",
        )
    if tls and ("Hostname Verification" in details or "Peer name" in details):
        return CliError(
            f"the controller's certificate does not name {host} ({first}): dial a name or "
            "address it was issued for (ipsecd-controller init --advertise/--san)",
            "permission-denied",
        )
    if tls and "WRONG_VERSION_NUMBER" in details:
        return CliError(
            f"the controller at {address} does not speak TLS (started with --insecure?): "
            "talk to it with --insecure, or serve mTLS (ipsecd-controller init)",
            "unreachable",
        )
    if tls and "Socket closed" in details:
        return CliError(
            f"the controller at {address} closed the connection during the TLS "
            f"handshake ({first}): it did not accept the client certificate of {conf} "
            "(expired, or from another cluster's CA?)",
            "permission-denied",
        )
    hint = ""
    if target is not None and not tls and "Socket closed" in details:
        hint = "; if it serves mTLS, use --config instead of --insecure"
    return CliError(
        f"cannot reach the controller at {address} ({first}); is ipsecd-controller "
        f"running? set --controller or ${ENV_CONTROLLER}{hint}",
        "unreachable",
    )


def _map_rpc_error(
    exc: grpc.aio.AioRpcError, address: str, command: str = "", target: Target | None = None
) -> CliError:
    kind = ""
    for key, value in exc.trailing_metadata() or ():
        if key == "ipsecd-error":
            kind = str(value)
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAUTHENTICATED:
        conf = f" of {target.config}" if target is not None and target.config else ""
        return CliError(
            f"the controller at {address} refused the credentials{conf}: {details}",
            "permission-denied",
        )
    if kind == "store-unavailable":
        return CliError(f"the controller at {address} cannot reach etcd: {details}", kind)
    if kind in EXIT:
        return CliError(details, kind)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _unreachable(details, address, target)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own size limit (no ipsecd-error kind: the handler never ran)
        first = details.splitlines()[0]
        if command in ("push", "validate"):
            return CliError(
                f"the controller at {address} refused the policy as too large ({first}); "
                "nothing changed: shorten the policy, or raise --max-policy-bytes on the "
                f"controller (default {human_bytes(DEFAULT_MAX_POLICY_BYTES)})",
                "invalid",
            )
        return CliError(
            f"the answer of the controller at {address} is over a message size limit "
            f"({first}); ipsecctl accepts up to {human_bytes(MAX_RESPONSE_BYTES)}: ask for "
            "less (e.g. history --limit N)",
            "error",
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(details, "not-found")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CliError(details, "permission-denied")
    return CliError(f"controller at {address}: {code.name}: {details}", "error")


def _author() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _ago(ms: int) -> str:
    if not ms:
        return "never"
    secs = max(0, int(time.time() - ms / 1000))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _to_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


_HEALTH = {
    types_pb2.HEALTH_UNSPECIFIED: "unknown",
    types_pb2.HEALTH_OK: "ok",
    types_pb2.HEALTH_DEGRADED: "degraded",
    types_pb2.HEALTH_FAILING: "failing",
}


def _meta_row(m: types_pb2.RevisionMeta, current: int, more: bool = False) -> list[str]:
    note = m.comment
    if m.rollback_of:
        note = f"{note} (rollback of {m.rollback_of})".strip()
    mark = "*" if m.revision == current else ""
    sha = m.sha256 if more else m.sha256[:12]
    row = [f"{m.revision}{mark}", _when(m.created_unix_ms), m.author, sha, note]
    return [*row, str(m.base_revision or "-"), m.filename or "-"] if more else row


# -- commands -----------------------------------------------------------------------------
async def _push(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    path = Path(args.file)
    try:
        st = path.stat()
        if st.st_size > POLICY_BYTES_CEILING:  # before reading it: it may be huge
            raise CliError(_too_large(path, st.st_size), "invalid")
        text = path.read_text()
        mode = st.st_mode & 0o777
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", "error") from exc
    size = len(text.encode())
    if size > POLICY_BYTES_CEILING:  # a file that grew after stat()
        raise CliError(_too_large(path, size), "invalid")
    fields: dict[str, Any] = {
        "text": text,
        "filename": str(path),
        "comment": args.comment or "",
        "author": _author(),
        "file_mode": mode,
    }
    if args.base_revision is not None:
        fields["base_revision"] = args.base_revision
    if args.rollout:  # batch by batch, health-gated (controller/cli_rollout_remote.py)
        from controller import cli_rollout_remote

        return await cli_rollout_remote.push(args, ch, fields)
    if args.wait or args.force:
        raise CliError("--wait and --force go with --rollout", "usage")
    req = policy_pb2.PushRequest(**fields)
    resp = await policy_pb2_grpc.PolicyServiceStub(ch).Push(req, timeout=RPC_TIMEOUT)
    return _report_push(args, resp, "pushed")


def _too_large(path: Path, size: int) -> str:
    return (
        f"{path} is {human_bytes(size)}; no controller accepts a policy over "
        f"{human_bytes(POLICY_BYTES_CEILING)} (the default limit is "
        f"{human_bytes(DEFAULT_MAX_POLICY_BYTES)}, --max-policy-bytes); nothing was sent: "
        "shorten it (node groups and macros instead of rules per node pair)"
    )


def _report_push(args: argparse.Namespace, resp: policy_pb2.PushResponse, verb: str) -> int:
    if structured(args):
        emit(args, _to_dict(resp))
    elif not resp.accepted:
        for d in resp.diagnostics:
            print(d.rendered, file=sys.stderr)
        print(
            f"error: policy rejected with {len(resp.diagnostics)} error(s); nothing changed",
            file=sys.stderr,
        )
    elif resp.unchanged:
        print(f"unchanged: revision {resp.revision.revision} already has this text")
    else:
        r = resp.revision
        print(f"{verb} revision {r.revision} (sha256 {r.sha256[:12]}, base {r.base_revision})")
    if not structured(args):
        for note in resp.notes:
            print(f"note: {note}")
    return EXIT["ok"] if resp.accepted else EXIT["invalid"]


async def _get(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    req = policy_pb2.GetRequest(revision=args.revision or 0, show_secrets=args.show_secrets)
    resp = await policy_pb2_grpc.PolicyServiceStub(ch).Get(req, timeout=RPC_TIMEOUT)
    if structured(args):
        emit(args, _to_dict(resp))
    else:
        sys.stdout.write(
            resp.text if resp.text.endswith("\n") or not resp.text else resp.text + "\n"
        )
        note = " (secrets redacted; --show-secrets to see them)" if resp.redacted else ""
        print(
            f"# revision {resp.meta.revision} of {resp.current_revision}, "
            f"backup {resp.backup_revision or '-'}{note}",
            file=sys.stderr,
        )
    return EXIT["ok"]


async def _history(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    req = policy_pb2.HistoryRequest(limit=args.limit or 0)
    resp = await policy_pb2_grpc.PolicyServiceStub(ch).History(req, timeout=RPC_TIMEOUT)
    if structured(args):
        emit(args, _to_dict(resp))
    else:
        rows = [_meta_row(m, resp.current_revision, wide(args)) for m in resp.revisions]
        headers = ["REVISION", "CREATED", "AUTHOR", "SHA256", "COMMENT"]
        if wide(args):
            headers += ["BASE", "FILE"]
        print(_table(headers, rows))
    return EXIT["ok"]


async def _diff(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    req = policy_pb2.DiffRequest(a=args.a, b=args.b, show_secrets=args.show_secrets)
    resp = await policy_pb2_grpc.PolicyServiceStub(ch).Diff(req, timeout=RPC_TIMEOUT)
    if structured(args):
        emit(args, _to_dict(resp))
    else:
        sys.stdout.write(resp.unified_diff)
    return EXIT["ok"]


async def _rollback(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    req = policy_pb2.RollbackRequest(
        revision=args.revision or 0, comment=args.comment or "", author=_author()
    )
    if args.base_revision is not None:
        req.base_revision = args.base_revision
    resp = await policy_pb2_grpc.PolicyServiceStub(ch).Rollback(req, timeout=RPC_TIMEOUT)
    return _report_push(args, resp, "rolled back: new")


def _node_row(n: status_pb2.NodeInfo, more: bool = False) -> list[str]:
    st = n.status
    extra = (
        [",".join(n.addresses) or "-", ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))]
        if more
        else []
    )
    return [
        n.name,
        "yes" if n.connected else "no",
        n.controller or "-",
        str(st.applied_revision or "-"),
        _HEALTH.get(st.health, str(st.health)),
        str(st.ike_sas),
        str(st.child_sas),
        _ago(n.last_seen_unix_ms),
        *extra,
    ]


_NODE_HEADERS = ["NODE", "CONNECTED", "CONTROLLER", "REVISION", "HEALTH", "IKE", "CHILD", "SEEN"]


async def _nodes(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    resp = await status_pb2_grpc.StatusServiceStub(ch).ListNodes(
        status_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT
    )
    if structured(args):
        emit(args, _to_dict(resp))
    else:
        headers = _NODE_HEADERS + (["ADDRESSES", "LABELS"] if wide(args) else [])
        print(_table(headers, [_node_row(n, wide(args)) for n in resp.nodes]))
        print(f"# current revision {resp.current_revision or '-'}", file=sys.stderr)
    return EXIT["ok"]


def _status_entry(
    remote: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``status --local`` asks the local agent's socket; otherwise the controller."""

    def run(args: argparse.Namespace) -> int:
        if not args.local:
            return remote(args)
        from pathlib import Path

        from agent.status import DEFAULT_SOCKET, StatusError, query, render_table

        try:
            status = query(Path(args.socket) if args.socket else DEFAULT_SOCKET)
        except StatusError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT["unreachable"]
        if structured(args):
            emit(args, status)
        else:
            sys.stdout.write(render_table(status))
        return EXIT["ok"]

    return run


def _agent_table(detail: str) -> str | None:
    """The agent's own status table when the node reported one (agent/status.py)."""
    try:
        status = json.loads(detail)
    except ValueError:
        return None
    if not isinstance(status, dict) or "connections" not in status:
        return None
    from agent.status import render_table

    return render_table(status)


async def _status(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
    if not args.node:
        return await _nodes(args, ch)
    stub = status_pb2_grpc.StatusServiceStub(ch)
    resp = await stub.GetNodeStatus(
        status_pb2.NodeStatusRequest(node=args.node, timeout_seconds=args.timeout),
        timeout=args.timeout + RPC_TIMEOUT,
    )
    if structured(args):
        emit(args, _to_dict(resp))
        return EXIT["ok"]
    table = _agent_table(resp.node.status.detail) if resp.node.status.detail else None
    if table is not None:
        sys.stdout.write(table)
    else:
        headers = _NODE_HEADERS + (["ADDRESSES", "LABELS"] if wide(args) else [])
        print(_table(headers, [_node_row(resp.node, wide(args))]))
        if resp.node.status.detail:
            print(f"detail: {resp.node.status.detail}")
    if resp.stale:
        print(f"stale: last report shown ({resp.note})")
    else:
        print("live: answered by the node just now")
    return EXIT["ok"]


Command = Callable[[argparse.Namespace, grpc.aio.Channel], Awaitable[int]]


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go(target: Target) -> int:
            async with _channel(target) as ch:
                try:
                    return await command(args, ch)
                except grpc.aio.AioRpcError as exc:
                    what = getattr(args, "command", "") or ""
                    raise _map_rpc_error(exc, target.address, what, target) from exc

        try:
            return asyncio.run(go(resolve_target(args)))
        except CliError as exc:
            error(str(exc))
            return EXIT[exc.kind]

    return run


def common_options() -> argparse.ArgumentParser:
    """The options every remote subcommand takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--controller",
        dest="sub_controller",  # a top-level --controller (dest "controller") also works
        metavar="HOST:PORT",
        help=f"controller address (default ${ENV_CONTROLLER} or {DEFAULT_CONTROLLER})",
    )
    common.add_argument(
        "--config",
        dest="sub_config",  # a top-level --config (dest "config") also works
        metavar="FILE",
        help="credentials and addresses (default $IPSECCTL_CONFIG, else ~/.config/ipsecctl/config)",
    )
    common.add_argument(
        "--insecure",
        dest="sub_insecure",
        action="store_true",
        help="plaintext gRPC to a controller started with --insecure (no config)",
    )
    common.add_argument(
        "-o",
        "--output",
        choices=READ_FORMATS,
        default="table",
        help="table (default), wide (more columns), json or yaml (for scripts)",
    )
    return common


#: The runner of a remote subcommand: resolve the target, dial, map errors to exits.
runner = _runner


def register(subparsers: Any) -> None:
    """Add the remote subcommands to ``ipsecctl``'s subparsers (called by cli.py)."""
    common = common_options()

    def add(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(func=_runner(command))
        return p

    p = add("push", _push, "validate FILE on the controller and make it the current policy")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--comment", "-m", help="why (kept in the history)")
    p.add_argument(
        "--base-revision",
        type=int,
        metavar="N",
        help="fail with a conflict unless revision N is still current",
    )
    from controller.cli_rollout_remote import add_push_options

    add_push_options(p)

    p = add("get", _get, "print a policy revision (secrets redacted)")
    p.add_argument("--revision", "-r", type=int, metavar="N", help="default: current")
    p.add_argument("--show-secrets", action="store_true", help="show literal keys")

    p = add("history", _history, "list policy revisions, newest first (* = current)")
    p.add_argument("--limit", type=int, metavar="N")

    p = add("diff", _diff, "unified diff between revisions A and B (0 = current)")
    p.add_argument("a", type=int, metavar="A")
    p.add_argument("b", type=int, metavar="B")
    p.add_argument("--show-secrets", action="store_true")

    p = add("rollback", _rollback, "make revision N (default: the backup) current again")
    p.add_argument("revision", type=int, nargs="?", metavar="N")
    p.add_argument("--comment", "-m")
    p.add_argument("--base-revision", type=int, metavar="N")

    add("nodes", _nodes, "list nodes: revision applied, health, SA counts, last seen")

    p = add("status", _status, "node status; with NODE, ask the node live")
    p.add_argument("node", nargs="?", metavar="NODE")
    p.add_argument("--timeout", type=float, default=2.0, help="live query timeout (s)")
    p.add_argument(
        "--local",
        action="store_true",
        help="ask the agent of this machine through its socket (no controller)",
    )
    p.add_argument(
        "--socket",
        default=None,
        metavar="PATH",
        help="the agent's status socket (default /run/ipsecd/ipsecd.sock)",
    )
    p.set_defaults(func=_status_entry(p.get_default("func")))

    cli_secret.register(subparsers, common, _runner, EXIT, _table, _when, _to_dict)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (the remote subcommands only); ``ipsecctl`` is cli.py."""
    parser = argparse.ArgumentParser(prog="ipsecctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
