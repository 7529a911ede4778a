"""``ipsecd-controller``: one controller replica.

    ipsecd-controller [--listen 127.0.0.1:7480] [--state-dir DIR] [--etcd URL[,URL...]]

Without ``--etcd`` it starts a private etcd (the ``etcd`` binary from PATH, data under
``STATE_DIR/etcd``) so one machine works out of the box; with ``--etcd`` it joins an
external cluster, and several replicas can share it (each with its own
``--replica-id``/``--listen``).  Errors print ``error: ...`` and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

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

DEFAULT_LISTEN = "127.0.0.1:7480"
DEFAULT_STATE_DIR = "/var/lib/ipsecd-controller"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipsecd-controller", description=__doc__.splitlines()[0])
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC address (host:port)")
    p.add_argument(
        "--advertise", help="address others use to reach this replica (default --listen)"
    )
    p.add_argument("--etcd", help="external etcd cluster URL[,URL...] (default: private etcd)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="state (private etcd data)")
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
    p.add_argument("-v", "--verbose", action="store_true")
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


async def serve(args: argparse.Namespace) -> int:
    etcd: EtcdProcess | None = None
    store: EtcdStore | None = None
    controller: Controller | None = None
    try:
        if args.etcd:
            url = args.etcd
        else:
            etcd = EtcdProcess(Path(args.state_dir) / "etcd")
            etcd.start()  # main thread: PR_SET_PDEATHSIG is tied to the starting thread
            url = etcd.url
            logging.info("private etcd on %s (data in %s)", url, etcd.data_dir)
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
        controller = Controller(store, config)
        port = await controller.start(args.listen)
        logging.info("controller %s serving on port %d", config.replica_id, port)
        print(f"ipsecd-controller: listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(serve(args))
    except (EtcdNotFound, EtcdStartError, StoreUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
