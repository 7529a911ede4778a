"""``ipsecd-controller``: one controller replica.

    ipsecd-controller [--listen 127.0.0.1:7480] [--state-dir DIR] [--insecure]
                      [--metrics-listen HOST:PORT] [-m quiet|default|verbose]
                      [--log-format text|json]
                      [--etcd https://HOST:PORT[,...] --etcd-cacert FILE
                       [--etcd-cert FILE --etcd-key FILE] [--etcd-server-name NAME]]
                      [--etcd http://HOST:PORT[,...] --etcd-plaintext]
    ipsecd-controller init|issue|revoke|crl|certs --state-dir DIR ...   (controller/pkicmd.py)

It serves mTLS only, with the cluster CA and serving certificate that
``ipsecd-controller init`` put in the state directory (controller/statedir.py), and
authorizes every RPC by the role of the client certificate (controller/authz.py);
``--insecure`` serves plaintext instead and says so on every start.  Without ``--etcd``
it starts a private etcd (the ``etcd`` binary from PATH, data under ``STATE_DIR/etcd``)
so one machine works out of the box; it serves TLS only, with client certificates of
an etcd CA of its own (``STATE_DIR/etcd-pki``, controller/etcd_pki.py).  With ``--etcd``
it joins an external cluster over TLS (``--etcd-cacert``, ``--etcd-cert``,
``--etcd-key``), and several replicas can share it (each with its own
``--replica-id``/``--listen``); ``http://`` endpoints only with ``--etcd-plaintext`` or
``--insecure``, with a warning on every start.  Errors print ``error: ...`` and exit
non-zero.
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
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller import pkicmd
from controller.authz import Authorizer, CertificateAuthorizer, InsecureAuthorizer
from controller.ca import CaError
from controller.embedded_etcd import EtcdNotFound, EtcdProcess, EtcdStartError
from controller.errors import StoreUnavailable
from controller.etcd_pki import state_etcd_pki
from controller.etcd_store import EtcdStore, parse_urls
from controller.etcd_tls import EtcdClientTls, EtcdTlsError, load_client_tls
from controller.limits import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_ETCD_ATTEMPT_TIMEOUT,
    DEFAULT_ETCD_RETRY_BUDGET,
    DEFAULT_MAX_POLICY_BYTES,
    POLICY_BYTES_CEILING,
)
from controller.secretstore import Envelope, EnvelopeError
from controller.server import Controller, ControllerConfig
from controller.statedir import load_serving, split_hostport
from ipsecd import logformat
from ipsecd.gcpolicy import GcKeeper
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
    p.add_argument(
        "--etcd",
        metavar="URL[,URL...]",
        help="external etcd cluster, https:// (default: a private etcd over TLS)",
    )
    p.add_argument(
        "--etcd-cacert",
        type=Path,
        metavar="FILE",
        help="CA certificate that signed the etcd members' certificates (PEM)",
    )
    p.add_argument(
        "--etcd-cert", type=Path, metavar="FILE", help="client certificate for etcd (PEM)"
    )
    p.add_argument(
        "--etcd-key", type=Path, metavar="FILE", help="its key (PEM, unencrypted, mode 0600)"
    )
    p.add_argument(
        "--etcd-server-name",
        metavar="NAME",
        help="name checked in every etcd member's certificate (default: the endpoints' "
        "host, when they share one)",
    )
    p.add_argument(
        "--etcd-plaintext",
        action="store_true",
        help="allow http:// etcd endpoints: keys cross the network in clear text and "
        "anyone who reaches etcd can change the policy (warns on every start)",
    )
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="state: the cluster CA and serving certificate (ipsecd-controller init), the "
        "private etcd's data and TLS certificates",
    )
    p.add_argument(
        "--envelope-key",
        metavar="FILE",
        help="the 32-byte key that seals secrets in etcd (mode 0600; default: STATE_DIR/"
        "envelope.key, made by init; e.g. a mounted Kubernetes Secret). Every replica "
        "needs the same one",
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
        "--join-listen",
        metavar="HOST:PORT|none",
        help="where nodes join with a token (TLS without client certificates; only Join "
        "is callable there); default: the --listen host, port + 1; 'none': no joins",
    )
    p.add_argument(
        "--node-cert-days",
        type=float,
        default=365.0,
        metavar="DAYS",
        help="validity of node certificates issued by join and renewal (default 365); "
        "agents renew theirs when two thirds of it have passed",
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
    external = ("--etcd-cacert", "--etcd-cert", "--etcd-key", "--etcd-server-name")
    given = [f for f in external if getattr(args, f[2:].replace("-", "_")) is not None]
    if args.etcd_plaintext:
        given.append("--etcd-plaintext")
    if given and not args.etcd:
        p.error(
            f"{', '.join(given)} only go with --etcd URL (an external etcd); the private "
            "etcd uses the certificates in STATE_DIR/etcd-pki"
        )
    if args.etcd_plaintext and (args.etcd_cacert or args.etcd_cert or args.etcd_key):
        p.error("--etcd-plaintext and --etcd-cacert/--etcd-cert/--etcd-key exclude each other")
    if (args.etcd_cert is None) != (args.etcd_key is None):
        p.error("--etcd-cert and --etcd-key go together: the client certificate and its key")
    if args.etcd_cert is not None and args.etcd_cacert is None:
        p.error(
            "--etcd-cert needs --etcd-cacert: the CA that signed the etcd members' certificates"
        )
    if not 0 < args.node_cert_days <= 3650:
        p.error("--node-cert-days must be more than 0 and at most 3650")
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
    #: the join port's TLS (no client certificate asked for; the chain carries the CA)
    join_credentials: grpc.ServerCredentials | None = None
    #: the state directory holding the cluster CA (Join, Renew, node removal)
    state_dir: Path | None = None


def mtls_security(state_dir: Path) -> Security:
    """mTLS with the state directory's CA and serving certificate: client certificates
    required and authorized by role.  :class:`CaError` when the directory has no usable
    CA (the message says to run ``ipsecd-controller init``)."""
    material = load_serving(state_dir)
    # The join port presents the CA after the serving chain: a joining agent checks it
    # against the pin of its token before it trusts anything (docs/security.md).
    chain = x509.load_pem_x509_certificates(material.server_chain_pem)
    with_ca = [*chain, *(c for c in material.ca_certs if c not in chain)]
    join_chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in with_ca)
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
        grpc.ssl_server_credentials(
            [(material.server_key_pem, join_chain)], require_client_auth=False
        ),
        state_dir,
    )


def certificate_names(host: str, names: tuple[str, ...]) -> bool:
    """Whether a certificate naming ``names`` is valid for ``host``: an exact name or
    address, or a wildcard for the leftmost label (``*.peers.ns.svc.cluster.local``
    names ``ctl-0.peers.ns.svc.cluster.local``, as the Helm chart's replicas advertise:
    charts/ipsecd/README.md), as gRPC's TLS checks it."""
    host = host.strip("[]").rstrip(".").lower()
    for name in names:
        name = name.rstrip(".").lower()
        if name == host:
            return True
        first, dot, rest = host.partition(".")
        if name.startswith("*.") and dot and first and name[2:] == rest:
            return True
    return False


def join_address(args: argparse.Namespace) -> str | None:
    """The join port's address: ``--join-listen``, else the ``--listen`` host with the
    port + 1; None for ``none``."""
    if args.join_listen is not None:
        return None if args.join_listen.lower() == "none" else args.join_listen
    host, port = split_hostport(args.listen, 7480)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{(port or 7480) + 1}"


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
        if host not in ("", "0.0.0.0", "::") and not certificate_names(host, sec.names):
            _log.warning(
                "%s: the serving certificate names %s, not %s: clients dialing %s will "
                "refuse it; give init --advertise/--san that name (docs/security.md)",
                address,
                ", ".join(sec.names) or "nothing",
                host,
                host,
            )
    return sec


def envelope(args: argparse.Namespace) -> Envelope | None:
    """The envelope key (docs/security.md "Secrets"): required with mTLS; with
    --insecure and none, secrets stay as they were pushed (warned at every start)."""
    path = Path(args.envelope_key or Path(args.state_dir) / "envelope.key")
    if args.envelope_key is None and args.insecure and not path.exists():
        _log.warning(
            "no envelope key (%s): no secret store; literal keys stay in the stored "
            "revisions and every agent receives them all",
            path,
        )
        return None
    return Envelope.from_file(path)


def external_etcd_tls(args: argparse.Namespace) -> EtcdClientTls | None:
    """The credentials for ``--etcd`` (None: plaintext, allowed only with
    ``--etcd-plaintext`` or ``--insecure``, with a warning on every start).
    :class:`EtcdTlsError` naming the file and the fix."""
    try:
        scheme = parse_urls(args.etcd).scheme
    except ValueError as exc:
        raise EtcdTlsError(f"--etcd: {exc}") from None
    if args.etcd_cacert is None:
        if scheme == "https":
            raise EtcdTlsError(
                f"--etcd {args.etcd} is https:// and needs --etcd-cacert FILE, the CA "
                "that signed the etcd members' certificates (and --etcd-cert/--etcd-key "
                "when etcd requires client certificates)"
            )
        if not (args.etcd_plaintext or args.insecure):
            raise EtcdTlsError(
                f"--etcd {args.etcd} is plaintext: give https:// endpoints with "
                "--etcd-cacert FILE --etcd-cert FILE --etcd-key FILE, or accept plaintext "
                "etcd with --etcd-plaintext (a trusted network only)"
            )
        _log.warning(
            "--etcd %s: plaintext etcd: the policy with its keys crosses the network in "
            "clear text and anyone who reaches etcd can change it; use https:// with "
            "--etcd-cacert/--etcd-cert/--etcd-key",
            args.etcd,
        )
        return None
    tls = load_client_tls(
        args.etcd_cacert, args.etcd_cert, args.etcd_key, server_name=args.etcd_server_name
    )
    if not tls.client_auth:
        _log.warning(
            "--etcd %s: no --etcd-cert/--etcd-key, the controller presents no client "
            "certificate: etcd should require one (--client-cert-auth), else anyone who "
            "reaches it can read and change the policy",
            args.etcd,
        )
    return tls


async def serve(args: argparse.Namespace) -> int:
    etcd: EtcdProcess | None = None
    store: EtcdStore | None = None
    controller: Controller | None = None
    sec = security(args)  # before etcd starts: a state dir without a CA fails at once
    sealing = envelope(args)
    try:
        if args.etcd:
            url, tls = args.etcd, external_etcd_tls(args)
        else:
            pki = state_etcd_pki(Path(args.state_dir))
            etcd = EtcdProcess(Path(args.state_dir) / "etcd", tls=pki)
            etcd.start()  # main thread: PR_SET_PDEATHSIG is tied to the starting thread
            url, tls = etcd.url, etcd.client_tls()
            _log.info("private etcd on %s (data in %s)", url, etcd.data_dir)
        store = await EtcdStore.connect(
            url, tls=tls, timeout=args.etcd_timeout, retry_budget=args.etcd_retry_budget
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
            node_cert_lifetime=args.node_cert_days * 86400.0,
        )
        controller = Controller(
            store,
            config,
            authorizer=sec.authorizer,
            peer_credentials=sec.peer_credentials,
            envelope=sealing,
            state_dir=sec.state_dir,
        )
        join_at = join_address(args) if sec.join_credentials is not None else None
        if (
            join_at is not None
            and sec.state_dir is not None
            and not (sec.state_dir / "pki" / "ca.key").exists()
        ):
            _log.info("no CA key in %s: this replica takes no joins", sec.state_dir)
            join_at = None
        port = await controller.start(
            args.listen,
            credentials=sec.credentials,
            join_listen=join_at,
            join_credentials=sec.join_credentials,
        )
        if args.metrics_listen:
            await controller.metrics.start(args.metrics_listen)
        mode = "mTLS" if sec.credentials is not None else "plaintext, --insecure"
        _log.info("controller %s serving on port %d (%s)", config.replica_id, port, mode)
        joins = ""
        if controller.join_port and join_at is not None:
            joins = f", joins on {join_at.rsplit(':', 1)[0]}:{controller.join_port}"
        print(
            f"ipsecd-controller: listening on {args.listen.rsplit(':', 1)[0]}:{port} "
            f"({mode}){joins}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # process-wide, so here and not in Controller (tests run several in one process)
        hub = controller.hub
        keeper = GcKeeper(quiet=lambda: hub.sent.tracked is None)
        controller.metrics.gc = keeper
        gc_task = asyncio.create_task(keeper.run(), name="gc-keeper")
        try:
            await stop.wait()
        finally:
            gc_task.cancel()
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
    except (
        EtcdNotFound,
        EtcdStartError,
        StoreUnavailable,
        CaError,
        EnvelopeError,
        MetricsError,
        OSError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
