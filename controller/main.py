"""``ipsecd-controller``: one controller replica.

    ipsecd-controller [--listen 127.0.0.1:7480] [--state-dir DIR] [--etcd URL[,URL...]]
                      [--insecure] [--metrics-listen HOST:PORT] [-m quiet|default|verbose]
                      [--log-format text|json]
    ipsecd-controller init|issue|revoke|crl|certs --state-dir DIR ...   (controller/pkicmd.py)

It serves mTLS only, with the cluster CA and serving certificate that
``ipsecd-controller init`` put in the state directory (controller/statedir.py), and
authorizes every RPC by the role of the client certificate (controller/authz.py);
``--insecure`` serves plaintext instead and says so on every start.  Without ``--etcd``
it starts a private etcd (the ``etcd`` binary from PATH, data under ``STATE_DIR/etcd``)
so one machine works out of the box; with ``--etcd`` it joins an external cluster, and
several replicas can share it (each with its own ``--replica-id``/``--listen``).  Errors
print ``error: ...`` and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from controller import pkicmd
from controller.authz import Authorizer, CertificateAuthorizer, InsecureAuthorizer
from controller.ca import CaError
from controller.embedded_etcd import EtcdNotFound, EtcdProcess, EtcdStartError
from controller.errors import StoreUnavailable
from controller.etcd_store import EtcdStore
from controller.limits import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_ETCD_ATTEMPT_TIMEOUT,
    DEFAULT_ETCD_RETRY_BUDGET,
    DEFAULT_MAX_POLICY_BYTES,
    POLICY_BYTES_CEILING,
)
from controller.server import Controller, ControllerConfig
from controller.statedir import load_serving, split_hostport
from ipsecd import logformat
from ipsecd.metrics_common import CONTROLLER_PORT, MetricsError, parse_listen

DEFAULT_LISTEN = "127.0.0.1:7480"
DEFAULT_STATE_DIR = "/var/lib/ipsecd-controller"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The controller's own loggers (other libraries log warnings and errors only).
OURS = ("controller", "ipsecd")

_log = logging.getLogger("controller.main")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipsecd-controller",
        description=__doc__.splitlines()[0],
        epilog="the cluster CA: ipsecd-controller init|issue|revoke|crl|certs --state-dir "
        'DIR ... (each with --help; docs/operations.md "Controller")',
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC address (host:port)")
    p.add_argument(
        "--advertise", help="address others use to reach this replica (default --listen)"
    )
    p.add_argument("--etcd", help="external etcd cluster URL[,URL...] (default: private etcd)")
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="state: the cluster CA and serving certificate (ipsecd-controller init), the "
        "private etcd's data",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext gRPC with no authentication (a trusted network only; "
        "warns on every start)",
    )
    p.add_argument("--replica-id", help="unique name of this replica (default: HOST-PORT)")
    p.add_argument("--key-root", default="/ipsecd/", help="etcd key prefix")
    p.add_argument("--lease-ttl", type=int, default=10, help="replica lease TTL, seconds")
    p.add_argument("--ping-interval", type=float, default=10.0, help="agent ping interval")
    p.add_argument(
        "--max-policy-bytes",
        type=int,
        default=DEFAULT_MAX_POLICY_BYTES,
        metavar="N",
        help=f"largest SPD text accepted by push (UTF-8 bytes; default "
        f"{DEFAULT_MAX_POLICY_BYTES}, at most {POLICY_BYTES_CEILING}; above 1 MiB raise "
        "etcd's --max-request-bytes too)",
    )
    p.add_argument(
        "--stream-drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help="drop an agent stream whose pending write has not completed for S seconds "
        "(0: never); the agent reconnects and resumes",
    )
    p.add_argument(
        "--etcd-timeout",
        type=float,
        default=DEFAULT_ETCD_ATTEMPT_TIMEOUT,
        metavar="S",
        help="one etcd request (attempt) times out after S seconds",
    )
    p.add_argument(
        "--etcd-retry-budget",
        type=float,
        default=DEFAULT_ETCD_RETRY_BUDGET,
        metavar="S",
        help="retry transient etcd errors (leader changes) for up to S seconds, within "
        "the deadline of the request that needs etcd",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP; off by "
        f"default; the Helm chart uses 0.0.0.0:{CONTROLLER_PORT})",
    )
    p.add_argument(
        "-m",
        dest="level",
        choices=tuple(logformat.LEVELS),
        default="default",
        help="log level, as the agent's -m: quiet (warnings and errors), default (adds "
        "revisions, streams, leadership), verbose (adds debug)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="the same as -m default (kept for scripts)"
    )
    p.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="text",
        help="log lines as text (default) or as one JSON object per line (time, level, "
        "logger, message, replica and structured fields)",
    )
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bounds on the options (argparse prints ``error: ...`` and exits 2)."""
    if not 0 < args.max_policy_bytes <= POLICY_BYTES_CEILING:
        p.error(
            f"--max-policy-bytes {args.max_policy_bytes} is outside 1..{POLICY_BYTES_CEILING}: "
            "a larger policy would not fit an agent's snapshot under gRPC's 4 MiB default"
        )
    if args.stream_drain_timeout < 0:
        p.error("--stream-drain-timeout must be 0 (never) or a positive number of seconds")
    if args.etcd_timeout <= 0 or args.etcd_retry_budget <= 0:
        p.error("--etcd-timeout and --etcd-retry-budget must be positive numbers of seconds")
    if args.metrics_listen:
        try:
            parse_listen(args.metrics_listen)
        except MetricsError as exc:
            p.error(str(exc))


@dataclass(frozen=True, slots=True)
class Security:
    """How this replica serves: mTLS (credentials) or plaintext (None)."""

    authorizer: Authorizer
    credentials: grpc.ServerCredentials | None = None
    peer_credentials: grpc.ChannelCredentials | None = None
    #: host names and addresses the serving certificate names
    names: tuple[str, ...] = ()


def mtls_security(state_dir: Path) -> Security:
    """mTLS with the state directory's CA and serving certificate: client certificates
    required and authorized by role.  :class:`CaError` when the directory has no usable
    CA (the message says to run ``ipsecd-controller init``)."""
    material = load_serving(state_dir)
    return Security(
        CertificateAuthorizer(material.ca_certs, material.crl_path),
        grpc.ssl_server_credentials(
            [(material.server_key_pem, material.server_chain_pem)],
            root_certificates=material.ca_pem,
            require_client_auth=True,
        ),
        # replica -> replica status forwarding, with the serving certificate (role
        # controller, clientAuth)
        grpc.ssl_channel_credentials(
            material.ca_pem, material.server_key_pem, material.server_chain_pem
        ),
        material.names(),
    )


def security(args: argparse.Namespace) -> Security:
    """mTLS from the state directory, or plaintext with ``--insecure`` (a warning on
    every start)."""
    if args.insecure:
        _log.warning(
            "--insecure: plaintext gRPC on %s, nobody is authenticated: anyone who can "
            "reach it may push a policy and read its keys; run `ipsecd-controller init` "
            "and drop --insecure to serve mTLS",
            args.listen,
        )
        return Security(InsecureAuthorizer())
    sec = mtls_security(Path(args.state_dir))
    for address in filter(None, [args.listen, args.advertise]):
        host = split_hostport(address)[0]
        if host not in ("", "0.0.0.0", "::") and host not in sec.names:
            _log.warning(
                "%s: the serving certificate names %s, not %s: clients dialing %s will "
                "refuse it; give init --advertise/--san that name (docs/security.md)",
                address,
                ", ".join(sec.names) or "nothing",
                host,
                host,
            )
    return sec


async def serve(args: argparse.Namespace) -> int:
    etcd: EtcdProcess | None = None
    store: EtcdStore | None = None
    controller: Controller | None = None
    sec = security(args)  # before etcd starts: a state dir without a CA fails at once
    try:
        if args.etcd:
            url = args.etcd
        else:
            etcd = EtcdProcess(Path(args.state_dir) / "etcd")
            etcd.start()  # main thread: PR_SET_PDEATHSIG is tied to the starting thread
            url = etcd.url
            _log.info("private etcd on %s (data in %s)", url, etcd.data_dir)
        store = await EtcdStore.connect(
            url, timeout=args.etcd_timeout, retry_budget=args.etcd_retry_budget
        )
        port_part = args.listen.rsplit(":", 1)[-1]
        config = ControllerConfig(
            replica_id=args.replica_id or f"{socket.gethostname()}-{port_part}",
            advertise=args.advertise or args.listen,
            key_root=args.key_root,
            lease_ttl=args.lease_ttl,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_interval * 3.5,
            max_policy_bytes=args.max_policy_bytes,
            drain_timeout=args.stream_drain_timeout,
        )
        controller = Controller(
            store, config, authorizer=sec.authorizer, peer_credentials=sec.peer_credentials
        )
        port = await controller.start(args.listen, credentials=sec.credentials)
        if args.metrics_listen:
            await controller.metrics.start(args.metrics_listen)
        mode = "mTLS" if sec.credentials is not None else "plaintext, --insecure"
        _log.info("controller %s serving on port %d (%s)", config.replica_id, port, mode)
        print(
            f"ipsecd-controller: listening on {args.listen.rsplit(':', 1)[0]}:{port} ({mode})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if controller is not None:
            await controller.stop()
        if store is not None:
            await store.close()
        if etcd is not None:
            etcd.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in pkicmd.COMMANDS:
        return pkicmd.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    level = "default" if args.verbose and args.level == "quiet" else args.level
    replica = args.replica_id or f"{socket.gethostname()}-{args.listen.rsplit(':', 1)[-1]}"
    logformat.configure(
        level, args.log_format, ours=OURS, text_format=LOG_FORMAT, fields={"replica": replica}
    )
    try:
        return asyncio.run(serve(args))
    except (EtcdNotFound, EtcdStartError, StoreUnavailable, CaError, MetricsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
