"""``ipsecctl`` — the operator's command line.

Local subcommands (no controller needed)::

    ipsecctl validate FILE... [--nodes NODES_FILE]
    ipsecctl compile FILE --node NAME --nodes NODES_FILE [-o json|text] [--show-secrets]
    ipsecctl check-rollout OLD NEW [--nodes NODES_FILE] [-o json]   (controller/cli_rollout.py)

Adding subcommands from another module
--------------------------------------
Every entry of :data:`REGISTRARS` is a function ``register(subparsers)`` that adds its
parsers to the argparse subparsers object and sets ``func`` on each::

    p = subparsers.add_parser("push", help="...")
    p.set_defaults(func=handler)      # handler(args: argparse.Namespace) -> int (exit code)

To wire the remote subcommands (push, get, history, ...) from ``controller/cli_remote.py``
append its ``register`` to ``REGISTRARS`` below -- one line, nothing else changes.

Exit codes of the local subcommands: 0 ok, 1 invalid input (diagnostics on stderr),
2 usage error.  Errors print ``error: ...`` on stderr; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

# gRPC's C core logs a failed TLS handshake on stderr at INFO level, read from the
# environment when grpc is first imported; ipsecctl says what failed itself, in one
# line (controller/cli_remote.py), so only the core's errors are let through.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from controller.cli_convert import register as _register_convert
from controller.cli_help import add_examples
from controller.cli_help import register as _register_completion
from controller.cli_nodes import register as _register_nodes
from controller.cli_remote import register as _register_remote
from controller.cli_rollout import register as _register_rollout
from controller.cli_rollout_remote import register as _register_rollout_remote
from controller.cliout import emit, structured
from ipsecd.spd import (
    Diagnostic,
    SpdError,
    check_expanded,
    compile_node,
    load_file,
    load_nodes_file,
)

__all__ = ["REGISTRARS", "build_parser", "main"]

Registrar = Callable[[Any], None]


def _register_local(subparsers: Any) -> None:
    p = subparsers.add_parser("validate", help="check SPD files; print every error and warning")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
    p.add_argument("--nodes", metavar="NODES_FILE",
                   help="also compile for every node of this directory and check the "
                        "per-node policies")  # fmt: skip
    p.set_defaults(func=_validate)

    p = subparsers.add_parser("compile", help="show what one node enforces under an SPD file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--node", required=True, metavar="NAME", help="node name in the nodes file")
    p.add_argument("--nodes", required=True, metavar="NODES_FILE",
                   help="node directory: NAME ADDR[,ADDR] [key=value ...] per line")  # fmt: skip
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    p.add_argument("--show-secrets", action="store_true",
                   help="print literal keys (default: redacted)")  # fmt: skip
    p.set_defaults(func=_compile)


#: Functions that add subcommands.  Other modules' ``register`` functions go here.
REGISTRARS: list[Registrar] = [
    _register_local,
    _register_remote,
    _register_convert,
    _register_nodes,
    _register_rollout,
    _register_completion,
    _register_rollout_remote,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipsecctl", description="ipsecd cluster IPsec policy: validate, compile, manage"
    )
    parser.add_argument(
        "--controller",
        metavar="HOST:PORT",
        help="controller address for remote subcommands (default $IPSECCTL_CONTROLLER, "
        "else the config's first address)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="credentials for remote subcommands (default $IPSECCTL_CONFIG, else "
        "~/.config/ipsecctl/config; `ipsecd-controller init` writes admin.conf)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC to a controller started with --insecure (warns)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    add_examples(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / error
        return int(exc.code) if isinstance(exc.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: a message, never a traceback
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _validate(args: argparse.Namespace) -> int:
    directory = None
    if args.nodes is not None:
        try:
            directory = load_nodes_file(args.nodes)
        except SpdError as exc:
            print(exc.render(), file=sys.stderr)
            print(f"error: {args.nodes} is invalid", file=sys.stderr)
            return 1
    status = 0
    for name in args.files:
        try:
            policy = load_file(name)
        except SpdError as exc:
            print(exc.render(), file=sys.stderr)
            print(f"error: {name} is invalid", file=sys.stderr)
            status = 1
            continue
        warnings = list(policy.warnings)
        errors: list[Diagnostic] = []
        if directory is not None:  # the per-node view: what the nodes will enforce
            for d in check_expanded(policy, directory):
                (errors if d.is_error else warnings).append(d)
        for d in errors:
            print(d.render(), file=sys.stderr)
        if not args.quiet:
            for warning in warnings:
                print(warning.render(), file=sys.stderr)
        if errors:
            print(f"error: {name} is invalid for the nodes of {args.nodes}", file=sys.stderr)
            status = 1
            continue
        nodes = "" if directory is None else f", compiled for {len(directory)} nodes"
        print(f"{name}: ok ({len(warnings)} warnings{nodes})")
    return status


def _compile(args: argparse.Namespace) -> int:
    try:
        policy = load_file(args.file)
        directory = load_nodes_file(args.nodes)
    except SpdError as exc:
        print(exc.render(), file=sys.stderr)
        print("error: cannot compile: the input is invalid", file=sys.stderr)
        return 1
    node = next((n for n in directory if n.name == args.node), None)
    if node is None:
        print(f"error: node '{args.node}' is not in {args.nodes}", file=sys.stderr)
        return 1
    try:
        config = compile_node(policy, node, directory)
    except SpdError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    redact = not args.show_secrets
    if structured(args):
        emit(args, config.to_dict(redact=redact))
    else:
        sys.stdout.write(config.to_text(redact=redact))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
