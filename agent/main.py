"""``ipsecd`` — the per-node IPsec daemon (Tru64 ipsecd(8) options, plus cluster mode).

Standalone, as the Tru64 daemon::

    ipsecd -f FILE [--nodes NODESFILE] [--node NAME] [-m quiet|default|verbose]
           [-o DEBUGFILE] [-l] [-b] [-d] [-p] [--log-format text|json]
           [--metrics-listen HOST:PORT]

Cluster (mTLS to the controller with the node certificate, which is also its IKE
certificate; ``--insecure`` for plaintext)::

    ipsecd --controller HOST:PORT[,HOST:PORT...] --node NAME [--labels k=v,...]
           --cert NODE.pem --key NODE.key --ca CA.pem
    ipsecd --controller HOST:PORT --node NAME --join-file FILE [--state-dir DIR]
           (or --join TOKEN, or $IPSECD_JOIN_TOKEN: agent/join.py)

Service operations (the seed's init script)::

    ipsecd service start|stop|reload|status [daemon options]
    ipsecd service secure on|off

Runs in the foreground unless ``-d``.  SIGHUP rereads the SPD file; SIGTERM/SIGINT
delete the IKE SAs (telling the peers) and stop within 5 s; the kernel keeps enforcing
the policy ("IP secure" mode).  Exit codes: 0 ok, 1 invalid SPD or no usable policy,
2 usage error or the daemon cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ipsecd.gcpolicy import GcKeeper
from ipsecd.metrics_common import AGENT_PORT, MetricsError, parse_listen
from ipsecd.spd import SpdError, load_file

from .credentials import NodeFiles
from .daemon import STATE_DIR, AgentOptions, ApplyError, Daemon
from .join import ENV_TOKEN, JoinedFiles, JoinError, read_token
from .logsetup import FORMATS, setup_logging
from .status import DEFAULT_SOCKET

__all__ = ["BACKUP_SPD", "DEFAULT_SPD", "build_parser", "main", "options_from"]

DEFAULT_SPD = "/etc/ipsec.spd"
BACKUP_SPD = "/etc/ipsec.spd.bak"
DEFAULT_PIDFILE = Path("/run/ipsecd/ipsecd.pid")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipsecd",
        description="IPsec daemon: policy manager and IKE daemon for this node "
        "(`ipsecd service ...` for start/stop/reload/secure on|off)",
    )
    p.add_argument(
        "-b",
        action="store_true",
        dest="backup",
        help="start from the backup SPD file (FILE.bak, or /etc/ipsec.spd.bak); "
        "the next reload reads FILE again",
    )
    p.add_argument(
        "-d", action="store_true", dest="daemon", help="detach and run in the background"
    )
    p.add_argument(
        "-f",
        metavar="FILE",
        dest="file",
        default=None,
        help=f"SPD file to enforce (default {DEFAULT_SPD})",
    )
    p.add_argument(
        "-l",
        action="store_true",
        dest="log_unmatched",
        help="log packets that match no selector (syslog auth facility)",
    )
    p.add_argument(
        "-m",
        choices=("quiet", "default", "verbose"),
        default="default",
        dest="level",
        help="message level of IKE negotiations and policy changes",
    )
    p.add_argument("-o", metavar="FILE", dest="debug_file", help="write debug output to FILE")
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="log lines as text (default) or as one JSON object per line (time, level, "
        "logger, message, node and structured fields)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP; off by "
        f"default; the Helm chart uses 0.0.0.0:{AGENT_PORT}); the SPD must let the "
        "scrape through (e.g. bypass tcp port PORT)",
    )
    p.add_argument(
        "--metrics-by-peer",
        choices=("yes", "no"),
        default="yes",
        help="label per-connection metrics with the peer node too (default yes: one "
        "series per peer; no: sums per connection, for large clusters)",
    )
    p.add_argument(
        "-p",
        action="store_true",
        dest="parse_only",
        help="parse the SPD file, report every error, and exit",
    )
    p.add_argument("--node", default=None, help="this node's name (default: the host name)")
    p.add_argument(
        "--nodes",
        metavar="NODESFILE",
        default=None,
        help="node directory (standalone mode), as `ipsecctl compile --nodes`",
    )
    p.add_argument(
        "--controller",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=None,
        help="cluster mode: follow these controller replicas",
    )
    p.add_argument("--labels", default="", help="cluster mode: this node's labels k=v,k=v")
    p.add_argument(
        "--addresses",
        default="",
        help="this node's addresses A,B (default: the global addresses it has)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="cluster mode: plaintext gRPC to the controller (a controller started with "
        "--insecure, on a trusted network only; warns on every start); without it the "
        "stream is mTLS with --cert/--key/--ca",
    )
    p.add_argument(
        "--secrets",
        metavar="FILE",
        default=None,
        help='values of secret:NAME references (NAME = 0xHEX or "text"), mode 0600',
    )
    p.add_argument(
        "--cert",
        metavar="FILE",
        default=None,
        help="this node's certificate (PEM; the chain to the cluster CA may follow) for "
        "'auth certificate'",
    )
    p.add_argument(
        "--key", metavar="FILE", default=None, help="the private key of --cert (PEM, mode 0600)"
    )
    p.add_argument("--ca", metavar="FILE", default=None, help="the cluster CA certificate(s) (PEM)")
    p.add_argument(
        "--crl",
        metavar="FILE",
        action="append",
        default=[],
        help="a CRL (PEM or DER) checked for every peer certificate; re-read when it "
        "changes (may be repeated)",
    )
    p.add_argument(
        "--join",
        metavar="TOKEN",
        default=None,
        help="cluster mode: join with this token (ipsecctl token create): the agent makes "
        "its key and gets its certificate into --state-dir; visible in the process list, "
        f"so prefer --join-file or ${ENV_TOKEN}",
    )
    p.add_argument(
        "--join-file",
        metavar="FILE",
        default=None,
        help="cluster mode: read the join token from FILE (mode 0600)",
    )
    p.add_argument(
        "--join-port",
        metavar="PORT",
        type=int,
        default=None,
        help="the controller's join port (default: its port + 1)",
    )
    p.add_argument(
        "--ike-fragment-size",
        metavar="BYTES",
        type=int,
        default=1280,
        help="largest IKE datagram (IP and UDP headers included) once IKE fragmentation "
        "(RFC 7383) is in use: the path MTU to the peers (default 1280, at least 576; "
        "0 turns fragmentation off)",
    )
    p.add_argument(
        "--state-dir",
        default=str(STATE_DIR),
        help=f"where the agent keeps its state (default {STATE_DIR}, mode 0700)",
    )
    p.add_argument(
        "--socket",
        default=str(DEFAULT_SOCKET),
        help=f"status socket (default {DEFAULT_SOCKET}, root only)",
    )
    p.add_argument("--pidfile", default=str(DEFAULT_PIDFILE), help="pid file with -d")
    p.add_argument("--netns", default=None, help=argparse.SUPPRESS)
    return p


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what}: {item!r} is not key=value")
        out[key] = value
    return out


def options_from(args: argparse.Namespace) -> AgentOptions:
    """The daemon's options from parsed arguments (raises ValueError with the fix)."""
    controllers = tuple(filter(None, (c.strip() for c in (args.controller or "").split(","))))
    if controllers and args.file:
        raise ValueError(
            "-f and --controller exclude each other: a node follows either its "
            "SPD file (standalone) or the controller (cluster)"
        )
    token = read_token(text=args.join, file=args.join_file)
    state_dir = Path(args.state_dir)
    joined = JoinedFiles(state_dir)
    if token is not None and not controllers:
        raise ValueError("--join (a join token) needs --controller HOST:PORT: cluster mode")
    if token is not None and args.insecure:
        raise ValueError(
            "--join and --insecure exclude each other: joining pins the cluster CA and "
            "talks TLS; a controller started with --insecure has no CA"
        )
    if token is not None and (args.cert or args.key or args.ca):
        raise ValueError(
            "--join and --cert/--key/--ca exclude each other: a joining node makes its own "
            f"key and gets its certificate into {state_dir}"
        )
    use_joined = (
        bool(controllers)
        and not args.insecure
        and not (args.cert or args.key or args.ca)
        and (token is not None or joined.present())
    )
    if (
        controllers
        and not args.insecure
        and not use_joined
        and not (args.cert and args.key and args.ca)
    ):
        raise ValueError(
            "cluster mode talks mTLS to the controller: join with a token (--join-file "
            f"FILE, ${ENV_TOKEN} or --join TOKEN; ipsecctl token create), or pass --cert "
            "FILE --key FILE --ca FILE (this node's certificate from `ipsecd-controller "
            "issue --role node`), or pass --insecure for plaintext gRPC to a controller "
            "started with --insecure"
        )
    if args.join_port is not None and not 0 < args.join_port < 65536:
        raise ValueError(f"--join-port {args.join_port} is not a port (1..65535)")
    if controllers and args.backup:
        raise ValueError("-b is for standalone mode (the controller keeps the revisions)")
    spd_file = Path(args.file or DEFAULT_SPD)
    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together: the certificate and its private key")
    if args.ike_fragment_size != 0 and not 576 <= args.ike_fragment_size <= 65535:
        raise ValueError(
            f"--ike-fragment-size {args.ike_fragment_size}: give the path MTU to the "
            "peers, 576..65535 bytes (or 0 to turn IKE fragmentation off)"
        )
    if args.metrics_listen:
        try:
            parse_listen(args.metrics_listen)
        except MetricsError as exc:
            raise ValueError(str(exc)) from None
    crls = [Path(c) for c in args.crl]
    if controllers and not args.insecure and joined.crl not in crls:
        crls.append(joined.crl)  # the CRL the controller pushes (docs/security.md)
    if use_joined:
        node_files = NodeFiles(joined.cert, joined.key, joined.ca, tuple(crls))
    else:
        node_files = NodeFiles(
            Path(args.cert) if args.cert else None,
            Path(args.key) if args.key else None,
            Path(args.ca) if args.ca else None,
            tuple(crls),
        )
    return AgentOptions(
        node=args.node or socket.gethostname(),
        spd_file=None if controllers else spd_file,
        backup_file=Path(BACKUP_SPD) if not controllers and spd_file == Path(DEFAULT_SPD) else None,
        use_backup=args.backup,
        nodes_file=Path(args.nodes) if args.nodes else None,
        controllers=controllers,
        labels=_pairs(args.labels, "--labels"),
        addresses=tuple(filter(None, (a.strip() for a in args.addresses.split(",")))),
        secrets_file=Path(args.secrets) if args.secrets else None,
        state_dir=state_dir,
        socket_path=Path(args.socket),
        netns=args.netns,
        log_unmatched=args.log_unmatched,
        node_files=node_files,
        ike_fragment_size=args.ike_fragment_size,
        insecure=bool(controllers) and args.insecure,
        join_token=token if use_joined and not joined.present() else None,
        join_port=args.join_port,
        joined=use_joined,
        metrics_listen=args.metrics_listen,
        metrics_by_peer=args.metrics_by_peer == "yes",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "service":
        from .service import main as service_main

        return service_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if args.parse_only:
        path = BACKUP_SPD if args.backup and not args.file else (args.file or DEFAULT_SPD)
        if args.backup and args.file:
            path = args.file + ".bak"
        try:
            return _parse_only(path, args.level)
        except Exception as exc:  # last resort: a message, never a traceback
            print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    try:
        opts = options_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: ipsecd needs root (it programs the kernel's IPsec tables)", file=sys.stderr)
        return 2
    if args.daemon:
        _detach(Path(args.pidfile))
    setup_logging(
        args.level,
        debug_file=args.debug_file,
        foreground=not args.daemon,
        log_unmatched=args.log_unmatched,
        log_format=args.log_format,
        node=opts.node,
    )
    try:
        return asyncio.run(_run(opts))
    except ApplyError as exc:
        logging.getLogger("ipsecd.agent").error("%s", exc)
        return 1
    except JoinError as exc:
        logging.getLogger("ipsecd.agent").error("cannot join: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        logging.getLogger("ipsecd.agent").error("cannot run: %s: %s", type(exc).__name__, exc)
        return 2
    finally:
        if args.daemon:
            with contextlib.suppress(OSError):
                Path(args.pidfile).unlink()


async def _run(opts: AgentOptions) -> int:
    daemon = Daemon(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    # process-wide, so here and not in Daemon (tests run several in one process)
    keeper = GcKeeper()
    daemon.metrics.gc = keeper
    gc_task = asyncio.create_task(keeper.run(), name="gc-keeper")
    try:
        return await daemon.run()
    finally:
        gc_task.cancel()


def _detach(pidfile: Path) -> None:
    """Classic double fork: no controlling terminal, stdio to /dev/null, a pid file."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{os.getpid()}\n")


def _parse_only(path: str, level: str) -> int:
    try:
        policy = load_file(path)
    except SpdError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"error: {path} is invalid", file=sys.stderr)
        return 1
    if level != "quiet":
        for warning in policy.warnings:
            print(warning.render(), file=sys.stderr)
    if level == "verbose":
        print(
            f"{path}: ok: {len(policy.spd)} setkey policies, {len(policy.sas)} manual SAs, "
            f"{len(policy.connections)} connections, {len(policy.rules)} rules, "
            f"{len(policy.groups)} node groups, {len(policy.warnings)} warnings"
        )
    elif level == "default":
        print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
