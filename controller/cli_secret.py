"""``ipsecctl secret set|list|delete``: the controller's secret store (docs/security.md
"Secrets").  A value is read from standard input or a file, never from the command
line (argv is visible to every user of the machine in /proc), and never printed."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc.aio

from controller.cliout import emit, structured
from ipsecd.v1 import policy_pb2, policy_pb2_grpc

__all__ = ["read_value", "register"]

#: What a secret may hold (controller/secretstore.py MAX_SECRET_BYTES).
MAX_VALUE_BYTES = 4096

Command = Callable[[argparse.Namespace, grpc.aio.Channel], Awaitable[int]]


class BadValue(Exception):
    """The value cannot be read or decoded (the message says how to fix it)."""


def read_value(raw: bytes, *, hex_input: bool, source: str) -> bytes:
    """The secret's bytes from what was read: one trailing newline dropped (what
    ``echo`` and editors add); with ``hex_input`` the text ``0xHEX`` or ``HEX``."""
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if hex_input:
        text = raw.decode("ascii", "replace").strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        if len(text) % 2:
            text = "0" + text
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise BadValue(
                f"{source}: --hex expects hex digits (optionally 0x first); drop --hex to "
                "store the text as it is"
            ) from None
    if not raw:
        raise BadValue(f"{source}: the value is empty")
    if len(raw) > MAX_VALUE_BYTES:
        raise BadValue(f"{source}: {len(raw)} bytes; a secret holds at most {MAX_VALUE_BYTES}")
    return raw


def _read(args: argparse.Namespace) -> bytes:
    if args.from_file:
        path = Path(args.from_file)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_VALUE_BYTES * 2 + 3)
        except OSError as exc:
            raise BadValue(f"cannot read {path}: {exc.strerror}") from None
        return read_value(raw, hex_input=args.hex, source=str(path))
    if sys.stdin.isatty():
        first = getpass.getpass(f"value of secret {args.name}: ")
        again = getpass.getpass("again: ")
        if first != again:
            raise BadValue("the two values differ; nothing was stored")
        return read_value(first.encode(), hex_input=args.hex, source="the terminal")
    raw = sys.stdin.buffer.read(MAX_VALUE_BYTES * 2 + 3)
    return read_value(raw, hex_input=args.hex, source="standard input")


def register(
    subparsers: Any,
    common: argparse.ArgumentParser,
    runner: Callable[[Command], Callable[[argparse.Namespace], int]],
    exits: dict[str, int],
    table: Callable[[list[str], list[list[str]]], str],
    when: Callable[[int], str],
    to_dict: Callable[[Any], dict[str, Any]],
) -> None:
    """Add ``secret`` with its three subcommands (called by cli_remote.register)."""

    async def set_(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
        try:
            value = _read(args)
        except BadValue as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exits["invalid"]
        resp = await policy_pb2_grpc.PolicyServiceStub(ch).SetSecret(
            policy_pb2.SetSecretRequest(name=args.name, value=value), timeout=15.0
        )
        if structured(args):
            emit(args, to_dict(resp))
            return exits["ok"]
        what = "stored" if resp.changed else "unchanged (the store already holds this value)"
        print(f"secret {args.name}: {what}, {len(value)} bytes")
        if resp.used_by and resp.changed:
            print(
                f"used by the current revision ({', '.join(resp.used_by)}): the nodes that use "
                "it fetch it again and renegotiate those connections"
            )
        return exits["ok"]

    async def list_(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
        resp = await policy_pb2_grpc.PolicyServiceStub(ch).ListSecrets(
            policy_pb2.ListSecretsRequest(), timeout=15.0
        )
        if structured(args):
            emit(args, to_dict(resp))
            return exits["ok"]
        rows = [
            [
                s.name,
                str(s.size),
                "yes" if s.in_use else "no",
                "push" if s.literal else "set",
                s.author,
                when(s.updated_unix_ms),
            ]
            for s in resp.secrets
        ]
        print(table(["NAME", "BYTES", "IN-USE", "FROM", "AUTHOR", "UPDATED"], rows))
        return exits["ok"]

    async def delete(args: argparse.Namespace, ch: grpc.aio.Channel) -> int:
        await policy_pb2_grpc.PolicyServiceStub(ch).DeleteSecret(
            policy_pb2.DeleteSecretRequest(name=args.name, force=args.force), timeout=15.0
        )
        print(f"secret {args.name} deleted")
        return exits["ok"]

    top = subparsers.add_parser(
        "secret",
        help="the controller's secret store (values in, never out)",
        description="Secrets referenced as secret:NAME by the SPD, sealed in etcd with the "
        "controller's envelope key; each node receives only those its own connections and "
        "SAs use. Example: ipsecctl secret set db-psk < db-psk.txt",
    )
    sub = top.add_subparsers(dest="secret_command", metavar="set|list|delete", required=True)

    p = sub.add_parser(
        "set",
        parents=[common],
        help="store NAME's value, read from stdin (or a prompt) or --from-file",
        description="Example: head -c 32 /dev/urandom | ipsecctl secret set db-psk",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--from-file", metavar="FILE", help="read the value from FILE")
    p.add_argument("--hex", action="store_true", help="the input is hex text (0x...)")
    p.set_defaults(func=runner(set_))

    p = sub.add_parser(
        "list",
        parents=[common],
        help="names, sizes and users of the stored secrets (never a value)",
        description="Example: ipsecctl secret list -o json",
    )
    p.set_defaults(func=runner(list_))

    p = sub.add_parser(
        "delete",
        parents=[common],
        help="delete NAME (refused while the current revision uses it, unless --force)",
        description="Example: ipsecctl secret delete old-psk",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="delete even if in use")
    p.set_defaults(func=runner(delete))
