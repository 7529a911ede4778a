"""The agent side of the controller stream: a reusable asyncio client.

    stream = AgentStream(["10.0.0.1:7480", "10.0.0.2:7480"], identity, on_event=handle)
    task = asyncio.create_task(stream.run())
    ...  # handle() gets PolicyReceived / DirectoryReceived / StreamConnected / StreamLost
    await stream.ack(revision)           # after the policy is applied
    await stream.close()

* Failover: the controller addresses are tried in turn; a lost stream reconnects to
  the next one with exponential backoff (``backoff_initial`` .. ``backoff_max``), each
  delay drawn uniformly between 0 and the current backoff ("full jitter"), so that
  thousands of agents losing one controller at once come back spread out.
* Resume: the hello carries the last revision acknowledged as applied (and its
  sha256); the controller then sends only what was missed — nothing when nothing
  was missed — instead of a full snapshot.
* Node directory (capability ``directory``): the whole directory once, then per-node
  changes (``NodeDirectoryDelta``) applied to the directory held here
  (:class:`ipsecd.directory.Directory`); the hello carries its version and digest, so
  a reconnecting agent (or one started with ``directory=`` from its saved state) gets
  only what changed.  A change that does not apply (another base version, another
  digest afterwards) drops the directory and reconnects for the whole one.
* Keepalive: gRPC HTTP/2 keepalive pings on the channel, and the controller's app
  pings (answered with pongs); when nothing arrives for ``idle_timeout`` seconds the
  stream is considered half-open and is replaced.
* Live status: the controller's queries are answered with ``status()`` (a callable
  the agent provides); ``report()`` sends an unsolicited report, and if
  ``status_interval`` is set the stream reports periodically on its own.

* mTLS: ``credentials`` are ``grpc.ChannelCredentials`` or a callable returning them,
  called for every connection (a renewed certificate is used from the next one on);
  None is plaintext (``--insecure``).

The policy the agent holds is never dropped because the stream is lost: events only
say what arrived; the agent keeps enforcing its last applied revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from ipsecd.directory import Directory, DirectoryMismatch
from ipsecd.v1 import agent_pb2, agent_pb2_grpc, types_pb2

__all__ = [
    "CHANNEL_OPTIONS",
    "AgentIdentity",
    "AgentStream",
    "CrlReceived",
    "DirectoryReceived",
    "PolicyReceived",
    "SecretsChanged",
    "StreamConnected",
    "StreamEvent",
    "StreamLost",
]

_log = logging.getLogger(__name__)

#: The controller may send a snapshot (policy + node directory) of up to 16 MiB
#: (docs/limits.md "Controller"); gRPC's own receive default is 4 MiB.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """What the agent tells the controller about its node."""

    node: str
    addresses: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyReceived:
    """A policy revision arrived (apply it, then ``ack`` it)."""

    revision: int
    sha256: str
    text: str = field(repr=False)  # may hold literal keys
    policy_digest: str = ""
    via_snapshot: bool = False


@dataclass(frozen=True, slots=True)
class DirectoryReceived:
    """The node directory (only with the ``directory`` capability): ``nodes`` is always
    the whole directory after the change, sorted by name (empty only with
    ``AgentStream(directory_list=False)``); ``whole`` when the controller sent all of
    it, else ``changed`` and ``removed`` name what the delta changed (both empty: the
    same directory under a new version number)."""

    version: int
    nodes: tuple[types_pb2.NodeEntry, ...]
    whole: bool = True
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamConnected:
    """A stream is up; ``resumed`` when the controller accepted our last revision."""

    controller: str
    address: str
    resumed: bool
    current_revision: int


@dataclass(frozen=True, slots=True)
class StreamLost:
    """The stream to ``address`` ended; the client reconnects by itself."""

    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class SecretsChanged:
    """A secret changed in the controller's store: fetch this node's secrets again."""

    generation: int


@dataclass(frozen=True, slots=True)
class CrlReceived:
    """The cluster CA's CRL (sent after the opening message and when a newer one is
    published: docs/security.md "Revocation")."""

    number: int
    pem: bytes = field(repr=False)


StreamEvent = (
    PolicyReceived | DirectoryReceived | StreamConnected | StreamLost | CrlReceived | SecretsChanged
)
EventHandler = Callable[[StreamEvent], Awaitable[None]]
StatusProvider = Callable[[], types_pb2.NodeStatus]


class _IdleTimeout(Exception):
    pass


class _DirectoryResync(Exception):
    """A directory change did not apply: reconnect without a directory."""


class AgentStream:
    """One agent's stream to the controller replicas (see the module docstring)."""

    def __init__(
        self,
        controllers: Sequence[str],
        identity: AgentIdentity,
        *,
        on_event: EventHandler,
        status: StatusProvider | None = None,
        status_interval: float | None = None,
        last_revision: int = 0,
        last_sha256: str = "",
        credentials: grpc.ChannelCredentials | Callable[[], Any] | None = None,
        idle_timeout: float = 45.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        channel_options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
        directory: tuple[int, Sequence[types_pb2.NodeEntry]] | None = None,
        directory_list: bool = True,
    ) -> None:
        if not controllers:
            raise ValueError("AgentStream needs at least one controller address")
        self.controllers = list(controllers)
        self.identity = identity
        self.on_event = on_event
        self.status = status
        self.status_interval = status_interval
        self.last_revision = last_revision
        self.last_sha256 = last_sha256
        self.credentials = credentials
        self.idle_timeout = idle_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.channel_options = list(channel_options)
        # the directory held (version 0: none); ``directory`` is a saved one to resume
        self.directory = Directory()
        if directory is not None and directory[0] > 0:
            self.directory.replace(directory[0], directory[1])
        # False (simulated agents of tests and benchmarks): no entries are kept, only the
        # version and the digest the controller announced; events carry no list
        self.directory_list = directory_list
        self._announced = b""  # that digest (directory_list=False)
        self.connects = 0  # streams established so far
        self.address = ""  # controller address of the current stream ("" when down)
        self._shas: dict[int, str] = {}
        self._call: Any = None
        self.channel: grpc.aio.Channel | None = None  # of the current stream (unary calls)
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._index = 0
        self._established = False
        self._last_rx = 0.0  # loop time of the last message on the current stream
        self._idle = False  # the watchdog cancelled the current stream

    # -- public -------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep a stream up until :meth:`close` (failover + backoff between attempts)."""
        backoff = self.backoff_initial
        while not self._closed.is_set():
            address = self.controllers[self._index % len(self.controllers)]
            self._established = False
            try:
                await self._session(address)
                reason = "controller closed the stream"
            except _IdleTimeout:
                reason = f"nothing received for {self.idle_timeout:.0f}s (half-open stream)"
            except _DirectoryResync as exc:
                reason = f"{exc}; reconnecting for the whole node directory"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except (OSError, grpc.aio.UsageError) as exc:
                reason = str(exc) or type(exc).__name__
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed.is_set() and task is not None and not task.cancelling():
                    return  # close() cancelled the call, not someone cancelling run()
                raise
            finally:
                self._call = None
                self.address = ""
            if self._closed.is_set():
                return
            if self._established:
                with contextlib.suppress(Exception):
                    await self.on_event(StreamLost(address, reason))
                backoff = self.backoff_initial
            _log.info("stream to %s ended: %s", address, reason)
            self._index += 1  # fail over to the next controller
            delay = backoff * random.random()  # full jitter: spread a reconnect storm
            backoff = min(backoff * 2, self.backoff_max)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)

    async def ack(self, revision: int, *, ok: bool = True, error: str = "") -> bool:
        """Tell the controller ``revision`` was applied (or not).  False when offline;
        the next hello carries the revision anyway."""
        if ok:
            self.last_revision = revision
            self.last_sha256 = self._shas.get(revision, self.last_sha256)
        return await self._send(
            agent_pb2.AgentMessage(ack=agent_pb2.Ack(revision=revision, ok=ok, error=error))
        )

    async def report(self, status: types_pb2.NodeStatus) -> bool:
        return await self._send(agent_pb2.AgentMessage(status=status))

    async def close(self) -> None:
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()

    async def fetch_secrets(
        self, revision: int, *, timeout: float = 10.0
    ) -> tuple[int, dict[str, bytes]]:
        """This node's secrets for ``revision`` (docs/security.md "Secrets"), asked over
        the current stream's channel: ``(revision, {NAME or NAME@PEER: value})``.
        Raises ``grpc.aio.AioRpcError``, or ``ConnectionError`` when no stream is up."""
        channel = self.channel
        if channel is None:
            raise ConnectionError("no controller stream is up")
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        reply = await stub.FetchSecrets(
            agent_pb2.SecretsRequest(node=self.identity.node, revision=revision),
            timeout=timeout,
        )
        return reply.revision, dict(reply.secrets)

    @property
    def connected(self) -> bool:
        return self._call is not None and bool(self.address)

    # -- internals ----------------------------------------------------------------------
    async def _send(self, msg: agent_pb2.AgentMessage) -> bool:
        call = self._call
        if call is None:
            return False
        try:
            async with self._write_lock:
                await call.write(msg)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return False
        return True

    def _hello(self) -> agent_pb2.AgentMessage:
        ident = self.identity
        hello = agent_pb2.Hello(
            node=ident.node,
            addresses=list(ident.addresses),
            labels=dict(ident.labels),
            capabilities=list(ident.capabilities),
            last_revision=self.last_revision,
            last_sha256=self.last_sha256,
        )
        if "directory" in ident.capabilities and self.directory.version:
            hello.directory_version = self.directory.version
            hello.directory_digest = (
                self.directory.digest() if self.directory_list else self._announced
            )
        return agent_pb2.AgentMessage(hello=hello)

    def _channel(self, address: str) -> grpc.aio.Channel:
        creds = self.credentials
        if creds is None:
            return grpc.aio.insecure_channel(address, options=self.channel_options)
        if callable(creds):  # a provider: read again for every connection (renewals)
            creds = creds()
        return grpc.aio.secure_channel(address, creds, options=self.channel_options)

    async def _session(self, address: str) -> None:
        """One stream, until it ends; sets ``_established`` once the controller answers."""
        reporter: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        async with self._channel(address) as channel:
            self.channel = channel
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            self._call = call
            self._last_rx = loop.time()
            self._idle = False
            # One watchdog per stream instead of ``wait_for`` around every read (which
            # costs a task and a timer per message).
            watchdog = asyncio.create_task(self._watchdog(call))
            try:
                await call.write(self._hello())
                while True:
                    try:
                        msg = await call.read()
                    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
                        task = asyncio.current_task()
                        if self._idle and task is not None and not task.cancelling():
                            raise _IdleTimeout from exc
                        raise
                    self._last_rx = loop.time()
                    if msg is grpc.aio.EOF:
                        return
                    if not self._established:
                        self._established = True
                        self.connects += 1
                        self.address = address
                        if self.status_interval:
                            reporter = asyncio.create_task(self._report_loop())
                    await self._dispatch(address, msg)
            finally:
                self.channel = None
                watchdog.cancel()
                if reporter is not None:
                    reporter.cancel()
                call.cancel()

    async def _watchdog(self, call: Any) -> None:
        """Cancel ``call`` when nothing has arrived for ``idle_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            left = self._last_rx + self.idle_timeout - loop.time()
            if left <= 0:
                self._idle = True
                call.cancel()
                return
            await asyncio.sleep(left)

    async def _dispatch(self, address: str, msg: agent_pb2.ControllerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "update":
            await self._policy(msg.update.policy, via_snapshot=False)
        elif kind == "ping":
            await self._send(agent_pb2.AgentMessage(pong=agent_pb2.Pong(nonce=msg.ping.nonce)))
        elif kind == "query":
            status = self.status() if self.status else types_pb2.NodeStatus()
            await self._send(
                agent_pb2.AgentMessage(
                    answer=agent_pb2.QueryAnswer(query_id=msg.query.query_id, status=status)
                )
            )
        elif kind == "snapshot":
            snap = msg.snapshot
            await self.on_event(
                StreamConnected(snap.controller, address, False, snap.policy.revision)
            )
            if snap.HasField("directory"):
                await self._directory(snap.directory)
            if snap.HasField("policy"):
                await self._policy(snap.policy, via_snapshot=True)
        elif kind == "resume":
            await self.on_event(
                StreamConnected(msg.resume.controller, address, True, msg.resume.current_revision)
            )
        elif kind == "directory":
            await self._directory(msg.directory)
        elif kind == "directory_delta":
            await self._directory_delta(msg.directory_delta)
        elif kind == "secrets_changed":
            await self.on_event(SecretsChanged(msg.secrets_changed.generation))
        elif kind == "crl":
            await self.on_event(CrlReceived(msg.crl.number, msg.crl.pem))

    async def _policy(self, p: agent_pb2.PolicyRevision, *, via_snapshot: bool) -> None:
        self._shas[p.revision] = p.sha256
        if len(self._shas) > 64:
            for old in sorted(self._shas)[:-32]:
                del self._shas[old]
        await self.on_event(
            PolicyReceived(p.revision, p.sha256, p.text, p.policy_digest, via_snapshot)
        )

    async def _directory(self, d: agent_pb2.NodeDirectory) -> None:
        if not self.directory_list:
            self.directory.version, self._announced = d.version, d.digest
            await self.on_event(DirectoryReceived(d.version, ()))
            return
        self.directory.replace(d.version, d.nodes)
        if d.digest and d.digest != self.directory.digest():
            _log.warning(
                "the node directory at version %d does not have the digest the controller "
                "announced; keeping it (it is whole) without resuming it later",
                d.version,
            )
            self.directory.version = 0
        await self.on_event(DirectoryReceived(d.version, tuple(d.nodes)))

    async def _directory_delta(self, d: agent_pb2.NodeDirectoryDelta) -> None:
        changed = tuple(e.name for e in d.changed)
        try:
            if self.directory_list:
                self.directory.apply_delta(
                    d.base_version, d.version, d.changed, d.removed, d.digest
                )
            elif d.base_version != self.directory.version:
                raise DirectoryMismatch(
                    f"a directory change from version {d.base_version} arrived, but the "
                    f"directory held is at version {self.directory.version}"
                )
            else:
                self.directory.version, self._announced = d.version, d.digest
        except DirectoryMismatch as exc:
            self.directory = Directory()  # unusable: the next hello asks for the whole
            raise _DirectoryResync(str(exc)) from None
        nodes = tuple(self.directory.nodes()) if self.directory_list else ()
        await self.on_event(DirectoryReceived(d.version, nodes, False, changed, tuple(d.removed)))

    async def _report_loop(self) -> None:
        assert self.status_interval
        while True:
            await asyncio.sleep(self.status_interval)
            if self.status is not None:
                await self.report(self.status())
