"""``ipsecd-controller init | issue | revoke | crl | certs``: the cluster CA's commands
(docs/operations.md "Controller", docs/security.md "Operator's steps").

    ipsecd-controller init --state-dir DIR [--listen HOST:PORT] [--advertise HOST[:PORT] ...]
                           [--san NAME ...] [--ca-cert FILE --ca-key FILE] [--force]
    ipsecd-controller issue --state-dir DIR --role admin|viewer|node|controller --name NAME
                            [--address IP|HOST ...] [--controller HOST:PORT ...] --out PATH
    ipsecd-controller revoke --state-dir DIR (--serial HEX | --role ROLE --name NAME)
    ipsecd-controller crl --state-dir DIR       # sign the CRL again (before its nextUpdate)
    ipsecd-controller certs --state-dir DIR     # what was issued, and what is revoked

They work on the files of the state directory (controller/statedir.py) and need no
running controller; a running controller picks up a new CRL by itself.  Errors print
``error: ...`` (exit 1; usage errors exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.ca import DEFAULT_KEY_TYPE, KEY_TYPES, CaError, Role
from controller.statedir import (
    init_state,
    issue_credentials,
    list_records,
    revoke,
    write_crl,
)

__all__ = ["COMMANDS", "main"]

COMMANDS = ("init", "issue", "revoke", "crl", "certs")
DEFAULT_STATE_DIR = "/var/lib/ipsecd-controller"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipsecd-controller", description="the cluster CA of ipsecd-controller"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def state(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--state-dir",
            default=DEFAULT_STATE_DIR,
            help=f"the controller's state directory (default {DEFAULT_STATE_DIR})",
        )

    q = sub.add_parser(
        "init",
        help="create the cluster CA, the envelope key, the serving certificate and admin.conf",
    )
    state(q)
    q.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="where the controller will listen (repeatable; default 127.0.0.1:7480); its "
        "host goes into the serving certificate",
    )
    q.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="the address clients and agents dial (repeatable): named by the serving "
        "certificate and written into admin.conf",
    )
    q.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME|IP",
        help="one more host name or address for the serving certificate (repeatable)",
    )
    q.add_argument("--ca-cert", metavar="FILE", help="use this CA certificate (PEM)")
    q.add_argument("--ca-key", metavar="FILE", help="the key of --ca-cert (PEM, mode 0600)")
    q.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE)
    q.add_argument("--admin-name", default="admin", help="name in the admin certificate")
    q.add_argument("--days", type=int, default=365, help="validity of issued certificates")
    q.add_argument("--ca-days", type=int, default=3650, help="validity of a new CA")
    q.add_argument(
        "--force",
        action="store_true",
        help="replace the CA of an initialized directory (every credential issued "
        "so far stops working; the envelope key is kept)",
    )
    q.set_defaults(func=_init)

    q = sub.add_parser("issue", help="mint a credential for an admin, viewer, node or controller")
    state(q)
    q.add_argument("--role", required=True, choices=[r.value for r in Role])
    q.add_argument("--name", required=True, help="the admin's, viewer's or node's name")
    q.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP|HOST",
        help="node: its addresses (IKE 'id address'); controller: the host names and "
        "addresses it serves on (repeatable)",
    )
    q.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="admin/viewer: controller addresses for the config (default: those of init)",
    )
    q.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="admin/viewer: the config file to write; node/controller: the directory for "
        "NAME.pem, NAME.key, ca.pem and crl.pem",
    )
    q.add_argument("--days", type=int, default=365, help="validity (default 365 days)")
    q.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE)
    q.add_argument("--force", action="store_true", help="overwrite existing files")
    q.set_defaults(func=_issue)

    q = sub.add_parser("revoke", help="revoke certificates and write the CRL")
    state(q)
    q.add_argument("--serial", metavar="HEX", help="the certificate's serial (see `certs`)")
    q.add_argument("--role", choices=[r.value for r in Role])
    q.add_argument("--name", help="with --role: every certificate issued to ROLE/NAME")
    q.add_argument("--crl-days", type=int, default=30, help="the CRL's validity")
    q.set_defaults(func=_revoke)

    q = sub.add_parser("crl", help="sign the CRL again (do it before its next update)")
    state(q)
    q.add_argument("--days", type=int, default=30, help="the CRL's validity (default 30)")
    q.set_defaults(func=_crl)

    q = sub.add_parser("certs", help="list issued certificates")
    state(q)
    q.set_defaults(func=_certs)
    return p


def _init(args: argparse.Namespace) -> int:
    report = init_state(
        Path(args.state_dir),
        listen=args.listen or ["127.0.0.1:7480"],
        advertise=args.advertise,
        extra_hosts=args.san,
        ca_cert_file=Path(args.ca_cert) if args.ca_cert else None,
        ca_key_file=Path(args.ca_key) if args.ca_key else None,
        key_type=args.key_type,
        admin_name=args.admin_name,
        force=args.force,
        ca_days=args.ca_days,
        cert_days=args.days,
    )
    root = report.state_dir
    envelope = "kept" if report.envelope_kept else "created"
    print(f"initialized {root}")
    print(f"  cluster CA        {root}/pki/ca.pem ({report.ca_subject}); key pki/ca.key (0600)")
    print(f"  serving cert      {root}/pki/server.pem for {', '.join(report.hosts)}")
    print(f"  envelope key      {root}/envelope.key ({envelope}, 0600)")
    print(f"  private etcd TLS  {root}/etcd-pki/ (its own CA, server and client certs, 0600)")
    print(f"  admin credentials {root}/admin.conf (0600, {report.admin})")
    print(f"  controllers       {', '.join(report.controllers)}")
    print(
        f"next: ipsecd-controller --state-dir {root}   (serves mTLS only)\n"
        f"      ipsecctl --config {root}/admin.conf history   (or copy it to "
        "~/.config/ipsecctl/config, mode 0600)"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    role = Role(args.role)
    if args.address and role in (Role.ADMIN, Role.VIEWER):
        print("error: --address is for node and controller certificates", file=sys.stderr)
        return 2
    issued = issue_credentials(
        Path(args.state_dir),
        role,
        args.name,
        Path(args.out),
        hosts=args.address,
        controllers=args.controller,
        days=args.days,
        key_type=args.key_type,
        force=args.force,
    )
    print(
        f"issued {issued.identity} (serial {issued.serial:x}, valid until "
        f"{issued.not_after:%Y-%m-%d %H:%M} UTC)"
    )
    for path in issued.files:
        print(f"  {path}")
    if role == Role.NODE:
        d = Path(args.out)
        print(
            f"agent: ipsecd --controller HOST:PORT --node {args.name} --cert "
            f"{d / (args.name + '.pem')} --key {d / (args.name + '.key')} --ca {d / 'ca.pem'} "
            f"--crl {d / 'crl.pem'}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.serial is None and (args.role is None or args.name is None):
        print("error: revoke needs --serial HEX, or --role ROLE --name NAME", file=sys.stderr)
        return 2
    serial = None
    if args.serial is not None:
        try:
            serial = int(args.serial.removeprefix("0x"), 16)
        except ValueError:
            print(f"error: --serial {args.serial!r} is not hexadecimal", file=sys.stderr)
            return 2
    done = revoke(
        Path(args.state_dir),
        serial=serial,
        role=Role(args.role) if args.role else None,
        name=args.name,
        days=args.crl_days,
    )
    if not done:
        print("nothing to revoke: no such certificate, or already revoked")
        return 1
    for r in done:
        who = f"{r.role}/{r.name}" if r.name else "a certificate not in the records"
        print(f"revoked {who} (serial {r.serial:x})")
    print(
        f"CRL written: {Path(args.state_dir) / 'pki' / 'crl.pem'} (a running controller "
        "reads it within seconds; copy it to the nodes' --crl files for IKE)"
    )
    return 0


def _crl(args: argparse.Namespace) -> int:
    number = write_crl(Path(args.state_dir), days=args.days)
    print(f"CRL number {number} written, valid {args.days} days")
    return 0


def _certs(args: argparse.Namespace) -> int:
    rows = [
        [f"{r.serial:x}", r.role, r.name or "-", r.not_after, r.revoked or "-"]
        for r in list_records(Path(args.state_dir))
    ]
    headers = ["SERIAL", "ROLE", "NAME", "NOT AFTER", "REVOKED"]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
