"""The node agent: one loop, one writer (docs/architecture.md "The agent's body").

    policy source ──▶ compile for this node ──▶ kernel writer (policies, manual SAs,
    (file + HUP, or        (ipsecd.spd)          negotiated SAs)  ◀── IKE supervisor
     the controller)                                                  (driver, engine)

The source is the only thing that differs between standalone mode (Tru64 ipsecd(8):
``-f FILE``, a backup SPD, SIGHUP) and cluster mode (the controller stream, the last
applied revision kept on disk).  Every policy text goes through :meth:`Daemon.apply`:
parse, compile for this node, reconcile the kernel by diff, then hand the IKE
connections to the supervisor.  A text that fails any step changes nothing: the
previous policy stays in force and the error says why (``FILE:LINE:COL`` for the
SPD).

Fail-closed start ("IP secure" mode): the IKE sockets (with their bypass) exist, and
the controller connection is bypassed, before the policy and its default ``block``
reach the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509

from ipsecd import spd, xfrm
from ipsecd.ike import EndpointLimits, RetransmitConfig
from ipsecd.jointoken import JoinToken
from ipsecd.spd import NodeInfo, SpdError
from ipsecd.v1 import types_pb2
from ipsecd.xfrm.netns import run_in

from .connections import Unusable, connection_digest, ike_config
from .credentials import CredentialError, Credentials, NodeFiles, controller_credentials
from .ike_driver import IkeDriver
from .join import JoinedFiles, JoinError, join, renew, renewal_due, store_crl
from .kernel import DesiredKernel, KernelConfigError, desired_state, kernel_reqid
from .metrics import AgentMetrics
from .status import StatusServer
from .supervisor import Conn, Supervisor, count_sas
from .unmatched import UnmatchedLogger, catch_all_policies
from .writer import KernelWriter, ReqidAllocator

__all__ = ["AgentOptions", "Applied", "ApplyError", "Daemon", "read_secrets"]

log = logging.getLogger("ipsecd.agent")

STATE_DIR = Path("/var/lib/ipsecd")
LAST_APPLIED = "last-applied.json"


class ApplyError(Exception):
    """A policy this node cannot apply; the current one stays in force."""


@dataclass
class AgentOptions:
    """Everything the agent is told on its command line (agent/main.py)."""

    node: str
    spd_file: Path | None = None
    backup_file: Path | None = None
    use_backup: bool = False
    nodes_file: Path | None = None
    controllers: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    secrets_file: Path | None = None
    state_dir: Path = STATE_DIR
    socket_path: Path = Path("/run/ipsecd/ipsecd.sock")
    netns: str | None = None
    insecure: bool = False
    log_unmatched: bool = False
    #: IKE retransmission (tests and the lab shorten it).
    retransmit: RetransmitConfig | None = None
    limits: EndpointLimits | None = None
    grace: float = 5.0
    status_interval: float = 10.0
    #: The node's certificate files (--cert, --key, --ca, --crl) and how often they
    #: and the files the SPD names are checked for changes (docs/operations.md).
    node_files: NodeFiles = field(default_factory=NodeFiles)
    credential_check: float = 60.0
    ipv6: bool = True
    #: --ike-fragment-size: the largest IKE datagram once fragmentation is in use
    #: (RFC 7383); 0 turns fragmentation off (docs/operations.md "Certificates").
    ike_fragment_size: int = 1280
    #: Joining (agent/join.py): the token when the node has no credentials yet, the
    #: controller's join port (None: its port + 1), and whether the node's files are
    #: the joined ones in the state directory (then the agent renews them itself when
    #: ``renew_fraction`` of their lifetime has passed, looking every ``renew_check`` s).
    join_token: JoinToken | None = field(default=None, repr=False)
    join_port: int | None = None
    joined: bool = False
    renew_fraction: float = 2 / 3
    renew_check: float = 60.0
    #: --metrics-listen HOST:PORT ("" = no metrics endpoint) and --metrics-by-peer
    #: (docs/operations.md "Metrics").
    metrics_listen: str = ""
    metrics_by_peer: bool = True

    @property
    def cluster(self) -> bool:
        return bool(self.controllers)


@dataclass(frozen=True)
class Applied:
    """The policy in force."""

    source: str
    text: str = field(repr=False)
    digest: str
    revision: int = 0
    sha256: str = ""
    summary: str = ""
    at: float = 0.0


def read_secrets(path: Path) -> dict[str, bytes]:
    """``NAME = 0xHEX`` or ``NAME = "text"`` per line; the file must be 0600."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ApplyError(f"{path}: secrets file is mode {mode:o}: run chmod 600 {path}")
    out: dict[str, bytes] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = (part.strip() for part in line.partition("="))
        if not sep or not name:
            raise ApplyError(f'{path}:{n}: expected NAME = 0xHEX or NAME = "text"')
        if value.startswith("0x"):
            try:
                out[name] = bytes.fromhex(value[2:])
            except ValueError:
                raise ApplyError(f"{path}:{n}: secret '{name}': bad hex digits") from None
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            out[name] = value[1:-1].encode()
        else:
            raise ApplyError(f"{path}:{n}: secret '{name}': write 0xHEX or \"text\"")
    return out


def local_addresses(netns: str | None) -> tuple[str, ...]:
    """The node's global unicast addresses (in its namespace).

    The namespace is entered with ``setns`` in a helper thread (ipsecd.xfrm.netns), not
    with pyroute2's ``IPRoute(netns=...)``, which forks: a fork of a process whose gRPC
    threads are running can abort in the child and leave the caller waiting on it."""
    from pyroute2 import IPRoute

    def read() -> tuple[str, ...]:
        with IPRoute() as ipr:
            out = []
            for msg in ipr.get_addr():
                addr = msg.get_attr("IFA_ADDRESS")
                if addr is None or msg["scope"] != 0:
                    continue
                out.append(str(addr))
        return tuple(out)

    return run_in(netns, read)


def _write_private(path: Path, data: str) -> None:
    """Write a file only root can read (it may hold keys), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


class Daemon:
    """One node's agent (see the module doc)."""

    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(opts.state_dir, 0o700)
        self.writer = KernelWriter(
            opts.netns,
            reqids=ReqidAllocator(path=opts.state_dir / "reqids.json"),
            grace=opts.grace,
        )
        self.driver = IkeDriver(netns=opts.netns, ipv6=opts.ipv6, limits=opts.limits)
        self.supervisor = Supervisor(self.driver, self.writer)
        self.metrics = AgentMetrics(self, by_peer=opts.metrics_by_peer)
        self.driver.on_events = self.metrics.tap(self.supervisor.on_events)
        self.status_server = StatusServer(opts.socket_path, self._command)
        self.applied: Applied | None = None
        self.policy_error: str | None = None
        self.directory: list[NodeInfo] = []
        # the controller's version of ``directory`` (0: none), saved with it so that a
        # restarted agent resumes it and gets only the changes (agent/stream.py)
        self.directory_version = 0
        self.file_secrets: dict[str, bytes] = {}  # --secrets
        # from the controller: this node's own secrets only (docs/security.md "Secrets")
        self.delivered: dict[str, bytes] = {}
        self.addresses: tuple[str, ...] = ()
        self._desired: DesiredKernel | None = None
        self._adopted = False
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.stream: Any = None
        #: Newest revision the controller sent or announced (cluster mode).
        self.controller_revision = 0
        self.started = time.time()
        self.unmatched = UnmatchedLogger(opts.netns)
        self.credentials = Credentials(opts.node_files)
        self._recheck = asyncio.Event()
        self.renewals = 0  # certificates renewed by this agent
        self.crl_number = 0  # the newest CRL the controller sent
        # the rollout health gate (revision_health): error counters when the policy in
        # force was applied, the newest revision refused, the last health sent
        self._errors_at_apply = 0
        self.refused: tuple[int, str] | None = None
        self._health_sent: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Until stop(): 0 on an orderly stop, 1 when the first policy failed."""
        opts = self.opts
        self.addresses = opts.addresses or await asyncio.to_thread(local_addresses, opts.netns)
        if opts.join_token is not None and not JoinedFiles(opts.state_dir).present():
            await self._join(opts.join_token)
        stream_credentials = self._stream_credentials()  # unusable files: fail before anything
        if opts.secrets_file is not None:
            self.file_secrets = read_secrets(opts.secrets_file)
        await self.writer.open()
        try:
            # fail-closed order: IKE sockets (bypassed) first, then the policy
            await self.driver.start()
            await self.status_server.start()
            if opts.metrics_listen:
                await self.metrics.start(opts.metrics_listen)
            first = await self._first_policy()
            if not first and not opts.cluster:
                return 1
            self._tasks.append(asyncio.create_task(self._ticker(), name="ike-ticker"))
            self._tasks.append(asyncio.create_task(self._kernel_events(), name="xfrm-events"))
            if opts.cluster:
                self._tasks.append(
                    asyncio.create_task(self._follow_controller(stream_credentials), name="stream")
                )
            else:
                self._tasks.append(asyncio.create_task(self._reloader(), name="reloader"))
            self._tasks.append(asyncio.create_task(self.unmatched.run(), name="unmatched"))
            self._tasks.append(asyncio.create_task(self._watch_credentials(), name="certs"))
            if opts.cluster and opts.joined:
                self._tasks.append(asyncio.create_task(self._renewer(), name="renewal"))
            await self._stop.wait()
            await self._shutdown()
            return 0
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.metrics.close()
            await self.status_server.close()
            await self.driver.close()
            await self.writer.close()

    def stop(self) -> None:
        self._stop.set()

    @property
    def secrets(self) -> dict[str, bytes]:
        """The values the policy's references resolve to: the controller's, then the
        --secrets file's."""
        if not self.delivered:
            return self.file_secrets
        return {**self.file_secrets, **self.delivered}

    def reload(self) -> None:
        """SIGHUP: reread the SPD file (standalone mode) and the certificate files."""
        self._reload.set()
        self._recheck.set()

    async def _watch_credentials(self) -> None:
        """CA and CRL files that changed are re-read; established peers are checked
        against them again (agent/credentials.py)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), self.opts.credential_check)
            self._recheck.clear()
            changed = await asyncio.to_thread(self.credentials.refresh)
            for line in changed:
                log.info("certificate files changed: %s", line)
            if changed:
                dropped = self.supervisor.recheck_peers()
                if dropped:
                    log.warning("%d IKE SA(s) deleted: their peers' certificates", dropped)
            if await asyncio.to_thread(self.credentials.local_changed):
                log.info("our certificate or key changed: new IKE SAs use the new one")
                await self._reapply()

    async def _reapply(self) -> None:
        """Apply the policy in force again, e.g. with a renewed certificate: unchanged
        connections keep their SAs and make new ones with the new credentials."""
        a = self.applied
        if a is None:
            return
        try:
            await self.apply(a.text, a.source, revision=a.revision, sha256=a.sha256)
        except ApplyError as exc:
            log.error("the policy in force could not be applied again: %s", exc)

    # ------------------------------------------------------------------ joining
    async def _join(self, token: JoinToken) -> None:
        """Join with ``token`` (agent/join.py); retried while the controller cannot be
        reached, :class:`JoinError` when it refuses (or the pin does not match)."""
        opts = self.opts
        delay = 1.0
        while not self._stop.is_set():
            try:
                await join(
                    opts.controllers,
                    opts.join_port,
                    opts.node,
                    self.addresses,
                    token,
                    JoinedFiles(opts.state_dir),
                )
                return
            except JoinError as exc:
                if exc.final:
                    raise
                log.warning("%s; trying again in %.0fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)
        raise JoinError("stopped before the node could join", final=True)

    async def _renewer(self) -> None:
        """Renew the joined certificate when ``renew_fraction`` of its lifetime has
        passed, over the stream's channel; retried with backoff while it fails."""
        opts = self.opts
        files = JoinedFiles(opts.state_dir)
        backoff = 5.0
        while True:
            try:
                cert = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
            except (OSError, ValueError) as exc:
                log.error("%s: cannot read our certificate (%s); renewal waits", files.cert, exc)
                await asyncio.sleep(opts.renew_check)
                continue
            wait = renewal_due(cert, opts.renew_fraction) - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, opts.renew_check))
                continue
            channel = self.stream.channel if self.stream is not None else None
            if channel is None:
                await asyncio.sleep(min(1.0, opts.renew_check))
                continue
            try:
                new = await renew(channel, opts.node, self.addresses, files)
            except JoinError as exc:
                log.warning("certificate renewal: %s; trying again in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            backoff = 5.0
            self.renewals += 1
            log.info(
                "certificate renewed: serial %x valid until %s UTC",
                new.serial_number,
                f"{new.not_valid_after_utc:%Y-%m-%d %H:%M:%S}",
            )
            await self._reapply()

    async def _store_crl(self, number: int, data: bytes) -> None:
        """The controller's CRL: kept in the state directory (crl.pem, one of the CRL
        files IKE checks) when it is the cluster CA's and newer than the one there."""
        ca_path = self.opts.node_files.ca
        if ca_path is None:
            return
        try:
            ca = x509.load_pem_x509_certificates(ca_path.read_bytes())
            written = store_crl(JoinedFiles(self.opts.state_dir).crl, data, ca)
        except (OSError, ValueError, JoinError) as exc:
            log.error("the CRL from the controller is not used: %s", exc)
            return
        self.crl_number = max(self.crl_number, number)
        if written:
            log.info("CRL number %d from the controller: checking peers against it", number)
            self._recheck.set()

    async def _shutdown(self) -> None:
        """RFC 7296 1.4.1: tell the peers (Delete), give them a moment to answer."""
        if self.stream is not None:
            await self.stream.close()
        self.supervisor.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self.driver.sas and loop.time() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ policy
    async def apply(
        self,
        text: str,
        source: str,
        *,
        revision: int = 0,
        sha256: str = "",
        file_mode: int | None = None,
    ) -> Applied:
        """Parse, compile for this node, reconcile the kernel, renegotiate what changed.
        Raises ApplyError (nothing changed) with the reason."""
        async with self._lock:
            try:
                applied = await self._apply(text, source, revision, sha256, file_mode)
            except ApplyError as exc:
                self.policy_error = str(exc)
                raise
            self.policy_error = None
            return applied

    async def _apply(
        self, text: str, source: str, revision: int, sha256: str, file_mode: int | None
    ) -> Applied:
        try:
            policy = spd.load_text(text, source, file_mode=file_mode)
        except SpdError as exc:
            raise ApplyError(exc.render()) from None
        node, directory = self._node(policy)
        try:
            cfg = spd.compile_node(policy, node, directory)
        except SpdError as exc:
            raise ApplyError(exc.render()) from None
        reqids = self.writer.reqids
        try:
            if not self._adopted:
                # the previous run's reqids and SAs (no flush: make-before-break)
                provisional = desired_state(cfg, secrets=self.secrets)
                names = {kernel_reqid(c.reqid): c.name for c in cfg.connections}
                await self.writer.adopt(provisional, names)
                self._adopted = True
            conns = self._conns(cfg)
            reqids.retain([c.name for c in conns])
            extra = self._bypass_policies()
            # -l / "log unmatched": only meaningful when unmatched packets are dropped
            logging_on = self.opts.log_unmatched or cfg.defaults.log_unmatched
            self.unmatched.enabled = logging_on and cfg.defaults.def_policy == "discard"
            if logging_on and not self.unmatched.enabled:
                log.warning(
                    "log unmatched needs 'defaults { policy discard; }': with "
                    "policy none unmatched packets pass and are not logged"
                )
            if self.unmatched.enabled:
                extra += catch_all_policies(self.writer.own)
            desired = desired_state(
                cfg,
                secrets=self.secrets,
                reqids={c.ike.reqid: c.reqid for c in conns},
                extra_policies=extra,
            )
        except (KernelConfigError, xfrm.XfrmError, ValueError) as exc:
            raise ApplyError(str(exc)) from None
        local = [xfrm.address(a) for a in self.addresses]
        try:
            result = await self.writer.apply(desired, local)
        except xfrm.XfrmError as exc:
            reason = f"the kernel refused the policy: {exc}"
            if self._desired is not None:
                with contextlib.suppress(xfrm.XfrmError):
                    await self.writer.apply(self._desired, local)  # back to the last good one
            raise ApplyError(reason) from None
        reqids.save()
        self._desired = desired
        changes = self.supervisor.update(conns, cfg.defaults)
        for note in desired.notes:
            log.warning("%s", note)
        for warning in cfg.warnings:
            log.info("%s", warning)
        summary = (
            f"{result.summary()}; IKE connections: {len(changes['kept'])} kept, "
            f"{len(changes['changed'])} renegotiated, {len(changes['added'])} added, "
            f"{len(changes['removed'])} removed"
        )
        self.applied = Applied(
            source, text, policy.digest(), revision, sha256, summary, time.time()
        )
        self._errors_at_apply = self.error_total()
        if self.refused is not None and self.refused[0] <= revision:
            self.refused = None
        log.info(
            "policy %s applied: %s",
            source,
            summary,
            extra={"revision": revision, "source": source, "digest": self.applied.digest},
        )
        return self.applied

    def _node(self, policy: spd.Policy) -> tuple[NodeInfo, list[NodeInfo]]:
        import ipaddress

        directory = list(self.directory)
        me = next((n for n in directory if n.name == self.opts.node), None)
        if me is None:
            if directory and self.opts.nodes_file is not None:
                raise ApplyError(
                    f"node '{self.opts.node}' is not in the node directory "
                    f"{self.opts.nodes_file}: add it, or pass --node NAME"
                )
            addrs = tuple(ipaddress.ip_address(a) for a in self.addresses)
            me = NodeInfo(self.opts.node, addrs, dict(self.opts.labels))
            directory.append(me)
        return me, directory

    def _conns(self, cfg: spd.NodeConfig) -> list[Conn]:
        out = []
        for c in cfg.connections:
            made = ike_config(
                c,
                self.secrets,
                retransmit=self.opts.retransmit,
                credentials=self.credentials,
                fragment_size=self.opts.ike_fragment_size,
            )
            problem = made.reason if isinstance(made, Unusable) else None
            if problem:
                log.warning("%s", problem)
            out.append(
                Conn(
                    c,
                    None if isinstance(made, Unusable) else made,
                    problem,
                    connection_digest(c, self.secrets),
                    self.writer.reqids.get(c.name),
                )
            )
        return out

    def _bypass_policies(self) -> list[xfrm.Policy]:
        """The controller connection passes whatever the SPD says (fail-closed mode
        must not cut the node off its controller)."""
        out: list[xfrm.Policy] = []
        prio = self.writer.own.priority_min
        for target in self.opts.controllers:
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            try:
                infos = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
            except (OSError, ValueError):
                continue
            for _fam, _t, _p, _c, sockaddr in infos:
                ip = xfrm.address(str(sockaddr[0]))
                if ip.is_loopback:
                    continue
                anyn = xfrm.network("0.0.0.0/0" if ip.version == 4 else "::/0")
                dst = xfrm.network(ip)
                out.append(
                    xfrm.Policy(
                        xfrm.Selector(anyn, dst, 6, None, int(port)), xfrm.Dir.OUT, priority=prio
                    )
                )
                out.append(
                    xfrm.Policy(
                        xfrm.Selector(dst, anyn, 6, int(port), None), xfrm.Dir.IN, priority=prio
                    )
                )
        return list({p.key: p for p in out}.values())

    # ------------------------------------------------------------------ sources
    async def _first_policy(self) -> bool:
        if self.opts.cluster:
            return await self._restore_last_applied()
        return await self._load_file(initial=True)

    def _spd_paths(self) -> tuple[Path, Path]:
        path = self.opts.spd_file or Path("/etc/ipsec.spd")
        backup = self.opts.backup_file or path.with_name(path.name + ".bak")
        return path, backup

    async def _load_file(self, *, initial: bool) -> bool:
        """Standalone mode (ipsecd(8)): the SPD file, its backup when it is invalid."""
        path, backup = self._spd_paths()
        if self.opts.nodes_file is not None:
            try:
                self.directory = spd.load_nodes_file(self.opts.nodes_file)
            except SpdError as exc:
                log.error("%s", exc.render())
                if initial:
                    return False
        use_backup = initial and self.opts.use_backup
        first = backup if use_backup else path
        previous = self.applied.text if self.applied is not None else None
        try:
            await self._apply_file(first)
        except (ApplyError, OSError) as exc:
            log.error("%s is not applied: %s", first, exc)
            if not initial:
                log.error(
                    "the current policy (%s) stays in force",
                    self.applied.source if self.applied else "none",
                )
                return False
            if use_backup or not backup.exists():
                log.error("no usable policy: nothing is enforced by this agent")
                return False
            log.error("!!! %s is invalid: falling back to the backup %s", path, backup)
            try:
                await self._apply_file(backup)
            except (ApplyError, OSError) as exc2:
                log.error("the backup %s is not usable either: %s", backup, exc2)
                return False
            return True
        # every accepted change keeps the previous file as the backup (ipsecd(8) -b)
        if not use_backup and self.applied is not None:
            keep = previous if previous is not None else self.applied.text
            if previous != self.applied.text or not backup.exists():
                try:
                    _write_private(backup, keep)
                except OSError as exc:
                    log.error("could not save the backup SPD %s: %s", backup, exc)
        return True

    async def _apply_file(self, path: Path) -> Applied:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
        return await self.apply(text, str(path), file_mode=st.st_mode & 0o777)

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            log.info("reloading the SPD file (SIGHUP)")
            await self._load_file(initial=False)

    async def _restore_last_applied(self) -> bool:
        """Cluster mode: enforce the last applied revision before the controller answers."""
        path = self.opts.state_dir / LAST_APPLIED
        if not path.exists():
            log.info("no policy applied yet: waiting for the controller")
            return True
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.directory = [
                NodeInfo(n["name"], tuple(_ip(a) for a in n["addresses"]), dict(n["labels"]))
                for n in data.get("directory", [])
            ]
            self.directory_version = int(data.get("directory_version", 0))
            self.delivered = {k: bytes.fromhex(v) for k, v in data.get("secrets", {}).items()}
            await self.apply(
                data["text"],
                f"revision {data['revision']} (saved)",
                revision=int(data["revision"]),
                sha256=str(data.get("sha256", "")),
            )
        except (OSError, ValueError, KeyError, TypeError, ApplyError) as exc:
            log.error("the saved revision in %s is not usable: %s", path, exc)
            return False
        return True

    def _save_last_applied(self) -> None:
        a = self.applied
        if a is None:
            return
        data = {
            "revision": a.revision,
            "sha256": a.sha256,
            "text": a.text,
            "directory": [
                {
                    "name": n.name,
                    "addresses": [str(x) for x in n.addresses],
                    "labels": dict(n.labels),
                }
                for n in self.directory
            ],
            "directory_version": self.directory_version,
            # this node's own secrets, so that a restart without the controller brings
            # its connections up (the file is 0600, like the node's key)
            "secrets": {k: v.hex() for k, v in self.delivered.items()},
        }
        try:
            _write_private(self.opts.state_dir / LAST_APPLIED, json.dumps(data))
        except OSError as exc:
            log.error(
                "could not save the applied revision in %s: %s (a restart without "
                "the controller would not find it)",
                self.opts.state_dir,
                exc,
            )

    def _stream_credentials(self) -> Any:
        """mTLS to the controller with the node's certificate (a provider that reads the
        files again for every connection, keeping the last good ones when they become
        unusable), or None with ``--insecure`` (warned on every start)."""
        opts = self.opts
        if not opts.cluster:
            return None
        if opts.insecure:
            log.warning(
                "--insecure: plaintext gRPC to the controller (%s): it is not "
                "authenticated and the policy travels in clear",
                ",".join(opts.controllers),
            )
            return None
        last = controller_credentials(opts.node_files, opts.node)

        def provider() -> Any:
            nonlocal last
            try:
                last = controller_credentials(opts.node_files, opts.node)
            except CredentialError as exc:
                log.error("controller stream: %s; connecting with the previous files", exc)
            return last

        return provider

    async def _follow_controller(self, credentials: Any = None) -> None:
        from .stream import (
            AgentIdentity,
            AgentStream,
            CrlReceived,
            DirectoryReceived,
            PolicyReceived,
            SecretsChanged,
            StreamConnected,
            StreamEvent,
        )

        async def fetch(revision: int, text: str) -> bool:
            """This node's secrets for ``revision`` from the controller; True when they
            changed.  A policy naming no secret needs none.  On failure the agent goes on
            with what it has (connections lacking a key report it in the status)."""
            if "secret:" not in text:
                return False
            try:
                _rev, values = await stream.fetch_secrets(revision)
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                why = (
                    f"{exc.code().name}: {exc.details()}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else str(exc)
                )
                log.warning("revision %d: cannot fetch this node's secrets: %s", revision, why)
                return False
            if values == self.delivered:
                return False
            self.delivered = values
            return True

        async def reapply() -> None:
            a = self.applied
            if a is None:
                return
            with contextlib.suppress(ApplyError):
                await self.apply(a.text, a.source, revision=a.revision, sha256=a.sha256)
                self._save_last_applied()

        async def on_event(ev: StreamEvent) -> None:
            if isinstance(ev, StreamConnected):
                self.controller_revision = ev.current_revision
                self._health_sent = None  # the new stream hears our health at once
            elif isinstance(ev, DirectoryReceived):
                self.directory_version = ev.version
                if not (ev.whole or ev.changed or ev.removed):
                    self._save_last_applied()  # the same nodes under a new version number
                    return
                self.directory = [
                    NodeInfo(n.name, tuple(_ip(a) for a in n.addresses), dict(n.labels))
                    for n in ev.nodes
                ]
                if self.applied is not None:
                    await fetch(self.applied.revision, self.applied.text)
                    await reapply()
            elif isinstance(ev, SecretsChanged):
                if self.applied is not None and await fetch(
                    self.applied.revision, self.applied.text
                ):
                    log.info("secrets changed in the controller's store: applying again")
                    await reapply()
            elif isinstance(ev, CrlReceived):
                await self._store_crl(ev.number, ev.pem)
            elif isinstance(ev, PolicyReceived):
                self.controller_revision = ev.revision
                await fetch(ev.revision, ev.text)
                try:
                    await self.apply(
                        ev.text, f"revision {ev.revision}", revision=ev.revision, sha256=ev.sha256
                    )
                except ApplyError as exc:
                    log.error("revision %d not applied: %s", ev.revision, exc)
                    self.refused = (ev.revision, str(exc)[:500])
                    await stream.ack(ev.revision, ok=False, error=str(exc)[:2000])
                    return
                self._save_last_applied()
                await stream.ack(ev.revision)

        def status() -> types_pb2.NodeStatus:
            return self.node_status()

        ident = AgentIdentity(
            self.opts.node, self.addresses, dict(self.opts.labels), capabilities=("directory",)
        )
        last = self.applied.revision if self.applied is not None else 0
        sha = self.applied.sha256 if self.applied is not None else ""
        saved_directory = (
            self.directory_version,
            [
                types_pb2.NodeEntry(
                    name=n.name, addresses=[str(a) for a in n.addresses], labels=dict(n.labels)
                )
                for n in self.directory
            ],
        )
        stream = AgentStream(
            list(self.opts.controllers),
            ident,
            on_event=on_event,
            status=status,
            status_interval=self.opts.status_interval,
            last_revision=last,
            last_sha256=sha,
            credentials=credentials,
            directory=saved_directory if self.directory_version else None,
        )
        self.stream = stream
        await stream.run()

    # ------------------------------------------------------------------ loops
    async def _ticker(self) -> None:
        while True:
            self.supervisor.tick()
            await self.supervisor.settle()
            await self.writer.expire_adopted()
            await self._report_health()
            await asyncio.sleep(0.5)

    async def _report_health(self) -> None:
        """Cluster mode: a status report whenever the revision's health changes (the
        controller's rollout gate waits on it: docs/operations.md "Rolling out a
        policy"), besides the periodic ones."""
        stream = self.stream
        if stream is None or not stream.connected:
            return
        health = self.revision_health()
        key = (
            health.revision,
            health.refused,
            health.expected,
            health.established,
            health.errors,
            tuple(health.pending),
        )
        if key != self._health_sent and await stream.report(self.node_status()):
            self._health_sent = key

    def error_total(self) -> int:
        """The error counters the rollout gate watches, summed: failed IKE and CHILD
        negotiations, CHILD SAs the kernel refused, kernel errors of the writer."""
        c = self.supervisor.counters
        return c["ike_failed"] + c["child_failed"] + c["install_failed"] + self.writer.errors

    def revision_health(self) -> types_pb2.RevisionHealth:
        """The applied revision's health for the rollout gate: every connection that
        starts eagerly (either end initiating) must be up with its CHILD SAs."""
        expected = [c for c in self.supervisor.conns.values() if c.ike.start == "eager"]
        up = [c for c in expected if c.state == "up"]
        pending = [
            f"{c.name} ({c.ike.peer}): {c.state}"
            + (f": {c.problem or c.last_error}" if (c.problem or c.last_error) else "")
            for c in sorted(expected, key=lambda c: c.name)
            if c.state != "up"
        ][:16]
        refused, why = self.refused or (0, "")
        return types_pb2.RevisionHealth(
            revision=self.applied.revision if self.applied is not None else 0,
            refused=refused,
            refused_error=why,
            expected=len(expected),
            established=len(up),
            pending=pending,
            errors=max(0, self.error_total() - self._errors_at_apply),
        )

    async def _kernel_events(self) -> None:
        """ACQUIRE (on-demand connections), EXPIRE (rekey / end), MAPPING (NAT)."""
        while True:
            try:
                async with xfrm.XfrmListener(self.opts.netns) as events:
                    async for ev in events:
                        self.supervisor.kernel_event(ev)
                        if isinstance(ev, xfrm.AcquireRequested):
                            self.unmatched.acquire(ev)
            except xfrm.XfrmBusy as exc:
                log.warning("kernel events overran (%s); listening again", exc)
            except xfrm.XfrmError as exc:
                log.error("kernel event listener failed: %s; retrying in 1 s", exc)
                await asyncio.sleep(1)

    # ------------------------------------------------------------------ status
    @property
    def desired(self) -> DesiredKernel | None:
        """The kernel state of the policy in force (None before the first one)."""
        return self._desired

    def health(self) -> str:
        """ok, degraded, failing or "no policy" (``ipsecctl status``)."""
        if self.applied is None:
            return "failing" if self.policy_error else "no policy"
        usable = [c for c in self.supervisor.conns.values() if c.config is not None]
        if self.policy_error or any(
            c.state != "up" for c in usable if c.initiates or c.sa is not None
        ):
            return "degraded"
        return "ok"

    def status(self) -> dict[str, Any]:
        conns = list(self.supervisor.conns.values())
        ike, child = count_sas(conns)
        health = self.health()
        installed = self.writer.installed()
        return {
            "node": self.opts.node,
            "mode": "cluster" if self.opts.cluster else "standalone",
            "health": health,
            "applied": None
            if self.applied is None
            else {
                "source": self.applied.source,
                "revision": self.applied.revision,
                "digest": self.applied.digest,
                "summary": self.applied.summary,
                "at": self.applied.at,
            },
            "policy_error": self.policy_error,
            "ike_sas": ike,
            "child_sas": child,
            "connections": self.supervisor.status(),
            "kernel": {
                "policies": len(self._desired.policies) if self._desired else 0,
                "child_sas": len(installed),
                "adopted": self.writer.adopted(),
                "errors": self.writer.errors,
                "default": _default_text(self._desired),
            },
            "counters": dict(self.supervisor.counters),
            "ike": self.driver.endpoint.stats.as_dict(),
            "controller": getattr(self.stream, "address", "") if self.stream else None,
            "certificate": self._certificate_status(),
            "uptime": round(time.time() - self.started, 1),
        }

    def _certificate_status(self) -> dict[str, Any] | None:
        path = self.opts.node_files.cert
        if path is None:
            return None
        try:
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError):
            return {"file": str(path), "error": "unreadable"}
        out: dict[str, Any] = {
            "file": str(path),
            "serial": f"{cert.serial_number:x}",
            "not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
            "joined": self.opts.joined,
            "renewals": self.renewals,
            "crl_number": self.crl_number,
        }
        if self.opts.joined:
            due = renewal_due(cert, self.opts.renew_fraction)
            out["renew_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due))
        return out

    def node_status(self) -> types_pb2.NodeStatus:
        st = self.status()
        health = {
            "ok": types_pb2.HEALTH_OK,
            "degraded": types_pb2.HEALTH_DEGRADED,
            "failing": types_pb2.HEALTH_FAILING,
        }.get(st["health"], types_pb2.HEALTH_UNSPECIFIED)
        node_status: types_pb2.NodeStatus = types_pb2.NodeStatus(
            applied_revision=self.applied.revision if self.applied else 0,
            health=health,
            ike_sas=st["ike_sas"],
            child_sas=st["child_sas"],
            detail=json.dumps(st, sort_keys=True),
            reported_unix_ms=int(time.time() * 1000),
            revision_health=self.revision_health(),
        )
        return node_status

    async def _command(self, command: str) -> dict[str, Any]:
        if command == "status":
            return self.status()
        if command == "reload":
            if self.opts.cluster:
                return {
                    "error": "cluster mode: the policy comes from the controller (ipsecctl push)"
                }
            self.reload()
            return {"ok": True}
        return {"error": f"unknown command {command!r}: use status or reload"}


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def _default_text(desired: DesiredKernel | None) -> str:
    if desired is None:
        return "unchanged"
    d = desired.default
    return "block" if d.outbound == xfrm.DefaultAction.BLOCK else "accept"
