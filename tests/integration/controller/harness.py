"""Controllers over real etcd and simulated agents (agent/stream.py) for tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
    """A simulated agent: records what arrives and acknowledges it (unless stalled)."""

    name: str
    controllers: list[str]
    capabilities: tuple[str, ...] = ()
    auto_ack: bool = True
    stall: asyncio.Event | None = None  # while set-able and unset, the handler blocks
    received: list[int] = dataclasses.field(default_factory=list)
    snapshots: list[int] = dataclasses.field(default_factory=list)
    connected: list[StreamConnected] = dataclasses.field(default_factory=list)
    lost: list[StreamLost] = dataclasses.field(default_factory=list)
    directories: list[DirectoryReceived] = dataclasses.field(default_factory=list)
    texts: dict[int, str] = dataclasses.field(default_factory=dict)
    stream: AgentStream | None = None
    task: asyncio.Task[None] | None = None

    def start(self, **kw: Any) -> SimAgent:
        ident = AgentIdentity(
            node=self.name,
            addresses=(f"192.0.2.{len(self.name) % 250 + 1}",),
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
        return types_pb2.NodeStatus(
            applied_revision=applied, health=types_pb2.HEALTH_OK, ike_sas=2, child_sas=4
        )

    async def on_event(self, ev: StreamEvent) -> None:
        if isinstance(ev, PolicyReceived):
            if self.stall is not None:
                await self.stall.wait()
            self.received.append(ev.revision)
            self.texts[ev.revision] = ev.text
            if ev.via_snapshot:
                self.snapshots.append(ev.revision)
            if self.auto_ack and self.stream is not None:
                await self.stream.ack(ev.revision)
        elif isinstance(ev, StreamConnected):
            self.connected.append(ev)
        elif isinstance(ev, StreamLost):
            self.lost.append(ev)
        elif isinstance(ev, DirectoryReceived):
            self.directories.append(ev)

    @property
    def last(self) -> int:
        return self.received[-1] if self.received else 0

    async def stop(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)
