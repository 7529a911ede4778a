"""Controllers over real etcd and simulated agents (agent/stream.py) for tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
from typing import Any

from agent.stream import (
    AgentIdentity,
    AgentStream,
    DirectoryReceived,
    PolicyReceived,
    StreamConnected,
    StreamEvent,
    StreamLost,
)
from controller.embedded_etcd import free_port
from controller.etcd_store import EtcdStore
from controller.main import Security
from controller.secretstore import Envelope
from controller.server import Controller, ControllerConfig
from ipsecd import spd
from ipsecd.spd.nodes import NodeInfo
from ipsecd.v1 import types_pb2
from tests.support.etcd import EtcdTarget

FAST = {
    "lease_ttl": 2,
    "ping_interval": 0.5,
    "ping_timeout": 3.0,
    "flush_interval": 0.1,
    "directory_interval": 0.1,
}


async def start_controller(
    etcd: str | EtcdTarget,
    replica_id: str,
    key_root: str,
    *,
    store_options: dict[str, float] | None = None,
    security: Security | None = None,
    envelope: Envelope | None = None,
    **cfg: Any,
) -> Controller:
    """A controller on real etcd: an etcd fixture (TLS with its client certificate,
    tests/support/etcd.py) or a plaintext URL; ``store_options`` go to
    :meth:`EtcdStore.connect` (``timeout``, ``retry_budget``), ``cfg`` to
    :class:`ControllerConfig`; ``security``: mTLS (:func:`controller.main.mtls_security`),
    else plaintext."""
    url, tls = (etcd, None) if isinstance(etcd, str) else (etcd.url, etcd.client_tls())
    store = await EtcdStore.connect(url, tls=tls, **(store_options or {}))
    port = free_port()
    options = {**FAST, **cfg}
    config = ControllerConfig(
        replica_id=replica_id, advertise=f"127.0.0.1:{port}", key_root=key_root, **options
    )
    if security is None:
        controller = Controller(store, config, envelope=envelope)
        await controller.start(f"127.0.0.1:{port}")
    else:
        controller = Controller(
            store,
            config,
            authorizer=security.authorizer,
            peer_credentials=security.peer_credentials,
            envelope=envelope,
            state_dir=security.state_dir,
        )
        # the join port (TLS without client certificates: only Join passes)
        await controller.start(
            f"127.0.0.1:{port}",
            credentials=security.credentials,
            join_listen="127.0.0.1:0" if security.join_credentials is not None else None,
            join_credentials=security.join_credentials,
        )
    await asyncio.wait_for(controller.watch_synced.wait(), 10)
    return controller


async def stop_controller(controller: Controller, *, crash: bool = False) -> None:
    await controller.stop(grace=0 if crash else 0.5, revoke=not crash)
    await controller.store.close()


def address(controller: Controller) -> str:
    return controller.config.advertise


def join_address(controller: Controller) -> str:
    """The controller's join port (mTLS controllers of the harness have one)."""
    return f"127.0.0.1:{controller.join_port}"


@dataclasses.dataclass
class SimAgent:
    """A simulated agent: records what arrives and acknowledges it (unless stalled).

    With ``report_health`` it also reports the health of the revision it holds the way
    the real agent does (``RevisionHealth``, agent/daemon.py): the policy is compiled
    for its node with the node directory (:mod:`ipsecd.spd`, the real compiler), every
    ``start eager`` connection is expected up, and a connection is "established"
    unless one of its IKE or ESP proposals names an algorithm of ``unsupported`` (this
    simulated IKE engine has none of those, so such a connection stays "connecting"
    with NO_PROPOSAL_CHOSEN).  A revision that does not compile for the node is
    refused (a negative ack), as the real agent does.
    """

    name: str
    controllers: list[str]
    capabilities: tuple[str, ...] = ()
    auto_ack: bool = True
    stall: asyncio.Event | None = None  # while set-able and unset, the handler blocks
    address: str | None = None  # default: derived from the name (not unique)
    report_health: bool = False
    unsupported: tuple[str, ...] = ()
    health: types_pb2.RevisionHealth | None = None  # the last health reported
    nodes: list[NodeInfo] = dataclasses.field(default_factory=list)
    received: list[int] = dataclasses.field(default_factory=list)
    snapshots: list[int] = dataclasses.field(default_factory=list)
    connected: list[StreamConnected] = dataclasses.field(default_factory=list)
    lost: list[StreamLost] = dataclasses.field(default_factory=list)
    directories: list[DirectoryReceived] = dataclasses.field(default_factory=list)
    texts: dict[int, str] = dataclasses.field(default_factory=dict)
    stream: AgentStream | None = None
    task: asyncio.Task[None] | None = None

    def start(self, **kw: Any) -> SimAgent:
        if self.report_health and "directory" not in self.capabilities:
            self.capabilities = (*self.capabilities, "directory")
        ident = AgentIdentity(
            node=self.name,
            addresses=(self.address or f"192.0.2.{len(self.name) % 250 + 1}",),
            labels={"role": "worker"},
            capabilities=self.capabilities,
        )
        self.stream = AgentStream(
            self.controllers,
            ident,
            on_event=self.on_event,
            status=self.status,
            backoff_initial=0.05,
            backoff_max=0.5,
            idle_timeout=kw.pop("idle_timeout", 5.0),
            **kw,
        )
        self.task = asyncio.create_task(self.stream.run())
        return self

    def status(self) -> types_pb2.NodeStatus:
        applied = self.stream.last_revision if self.stream else 0
        status = types_pb2.NodeStatus(
            applied_revision=applied, health=types_pb2.HEALTH_OK, ike_sas=2, child_sas=4
        )
        if self.health is not None:
            status.revision_health.CopyFrom(self.health)
        return status

    def judge(self, revision: int, text: str) -> types_pb2.RevisionHealth | str:
        """The health of ``text`` on this node, or why it cannot be applied."""
        try:
            policy = spd.load_text(text, f"revision {revision}")
            me = next((n for n in self.nodes if n.name == self.name), None)
            if me is None:
                return f"node {self.name} is not in the node directory"
            cfg = spd.compile_node(policy, me, self.nodes)
        except spd.SpdError as exc:
            return exc.render()
        expected = [c for c in cfg.connections if c.start == "eager"]
        bad = [
            c
            for c in expected
            if any(a in p for p in (*c.ike_proposals, *c.esp_proposals) for a in self.unsupported)
        ]
        return types_pb2.RevisionHealth(
            revision=revision,
            expected=len(expected),
            established=len(expected) - len(bad),
            pending=[f"{c.name} ({c.peer}): connecting: NO_PROPOSAL_CHOSEN" for c in bad][:16],
        )

    async def _apply(self, revision: int, text: str) -> None:
        verdict = self.judge(revision, text)
        assert self.stream is not None
        if isinstance(verdict, str):
            await self.stream.ack(revision, ok=False, error=verdict[:2000])
            refused = self.health or types_pb2.RevisionHealth()
            refused.refused, refused.refused_error = revision, verdict[:500]
            self.health = refused
        else:
            await self.stream.ack(revision)
            self.health = verdict
        await self.stream.report(self.status())

    async def on_event(self, ev: StreamEvent) -> None:
        if isinstance(ev, PolicyReceived):
            if self.stall is not None:
                await self.stall.wait()
            self.received.append(ev.revision)
            self.texts[ev.revision] = ev.text
            if ev.via_snapshot:
                self.snapshots.append(ev.revision)
            if self.report_health and self.stream is not None:
                await self._apply(ev.revision, ev.text)
            elif self.auto_ack and self.stream is not None:
                await self.stream.ack(ev.revision)
        elif isinstance(ev, StreamConnected):
            self.connected.append(ev)
            if self.report_health and self.stream is not None and self.health is not None:
                await self.stream.report(self.status())
        elif isinstance(ev, StreamLost):
            self.lost.append(ev)
        elif isinstance(ev, DirectoryReceived):
            self.directories.append(ev)
            if self.report_health:
                self.nodes = [
                    NodeInfo(n.name, tuple(ipaddress.ip_address(a) for a in n.addresses),
                             dict(n.labels))
                    for n in ev.nodes
                ]  # fmt: skip
                if self.received and self.stream is not None and self.health is not None:
                    last = self.received[-1]
                    if self.health.revision == last:  # the real agent applies it again
                        verdict = self.judge(last, self.texts[last])
                        if not isinstance(verdict, str) and verdict != self.health:
                            self.health = verdict
                            await self.stream.report(self.status())

    @property
    def last(self) -> int:
        return self.received[-1] if self.received else 0

    async def stop(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)
