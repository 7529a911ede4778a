"""Fan-out of policy revisions to agent streams: serialize once, share the bytes.

Each connected agent has a :class:`StreamState`: a tiny bounded "queue" of three
slots — control messages (pings, live queries; at most :data:`CONTROL_SLOTS`), the
newest policy update not yet written, the newest node directory not yet written.  A
new revision *replaces* the pending one (coalesce to the latest), so a slow or stuck
agent holds at most one policy message and never delays anyone: :meth:`Hub.publish`
only fills slots (starting a stream's writer task if it has none), it never awaits a
stream.

Every message is a ``ControllerMessage`` serialized ONCE into ``bytes``; the agent
stream's gRPC response serializer passes bytes through, so the same object is written
to every stream.

A stream that stops reading: gRPC's ``write`` returns once the message is handed to
HTTP/2, until the peer's flow-control window and the socket buffers are full (several
MiB on loopback, measured by bench/bench_controller.py); from then on the one write in
progress stays pending.  So a stuck stream holds at most that message plus its slots
here — nothing grows per revision — and the stream records since when its write has
been pending (:meth:`StreamState.stalled_for`), which the controller uses to drop
streams that do not drain (``--stream-drain-timeout``).  grpc.aio cannot reset one
stream, and a status cannot overtake a message: a dropped stream leaves the hub at
once, and its call ends (``UNAVAILABLE`` with the reason) right after the agent has
read the message in flight (:meth:`StreamState.finish_write`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.revisions import Revision
from ipsecd.v1 import agent_pb2, types_pb2

__all__ = ["CONTROL_SLOTS", "Hub", "Published", "Sink", "StreamState"]

_log = logging.getLogger(__name__)

CONTROL_SLOTS = 8


@dataclass(frozen=True, slots=True)
class Published:
    """The newest revision, as the bytes every stream gets."""

    revision: int
    sha256: str
    message: agent_pb2.PolicyRevision = field(repr=False)
    update_bytes: bytes = field(repr=False)


class Sink(Protocol):
    """Where a stream's bytes go (the gRPC servicer context of the agent stream)."""

    async def write(self, message: Any) -> None: ...


class StreamState:
    """One agent stream as the hub sees it.

    Memory matters here (one per connected agent, 5,000 per replica): no per-stream
    queue object or event, and no writer task while nothing is pending — a writer task
    is started by the first offer after :meth:`attach` and ends when the slots are
    empty.  The stream's own task (the gRPC handler) only reads.
    """

    __slots__ = (
        "closed",
        "control",
        "directory",
        "first",
        "forget",
        "inflight",
        "killed",
        "last_rx",
        "node",
        "pending_dir",
        "pending_policy",
        "reason",
        "sent_dir_version",
        "sent_rev",
        "serial",
        "sink",
        "task",
        "write_since",
        "writer",
    )

    def __init__(self, node: str, *, directory: bool, sent_rev: int) -> None:
        self.node = node
        self.directory = directory
        self.sent_rev = sent_rev
        self.sent_dir_version = 0
        self.pending_policy: tuple[int, bytes] | None = None
        self.pending_dir: tuple[int, bytes] | None = None
        self.control: list[bytes] = []  # at most CONTROL_SLOTS (a deque costs ~600 B more)
        self.last_rx = time.monotonic()
        self.closed = False
        self.killed = False
        self.task: asyncio.Task[Any] | None = None  # the handler: cancelled by close()
        self.sink: Sink | None = None  # None until the first messages are written
        self.writer: asyncio.Task[None] | None = None
        self.write_since = 0.0  # monotonic start of the write in progress (0: none)
        self.inflight = 0  # bytes of the write in progress
        self.first: list[bytes] = []  # the opening message(s): written before any slot
        self.reason = ""  # why the controller ended the stream ("" when it did not)
        self.serial: int | None = None  # the agent's certificate serial (mTLS)
        self.forget = False  # the node was removed: no last registry record when it ends

    def stalled_for(self, now: float) -> float:
        """Seconds the write in progress has been pending (0 when none is)."""
        return now - self.write_since if self.write_since else 0.0

    def pending_bytes(self) -> int:
        """Bytes held for this stream: the write in progress and the three slots."""
        total = self.inflight + sum(len(c) for c in self.control)
        if self.pending_policy is not None:
            total += len(self.pending_policy[1])
        if self.pending_dir is not None:
            total += len(self.pending_dir[1])
        return total

    async def write_tracked(self, sink: Sink, data: bytes) -> None:
        """``sink.write(data)``, recording that a write is pending while it is."""
        self.write_since = time.monotonic()
        self.inflight = len(data)
        try:
            await sink.write(data)
        finally:
            self.write_since = 0.0
            self.inflight = 0

    def offer_policy(self, revision: int, data: bytes) -> None:
        if revision > self.sent_rev:
            self.pending_policy = (revision, data)  # replaces an unsent older one
            self._kick()

    def offer_directory(self, version: int, data: bytes) -> None:
        if self.directory and version > self.sent_dir_version:
            self.pending_dir = (version, data)
            self._kick()

    def offer_control(self, data: bytes) -> None:
        control = self.control
        if len(control) >= CONTROL_SLOTS:
            del control[0]  # bounded: the oldest control message is dropped
        control.append(data)
        self._kick()

    def next_message(self) -> bytes | None:
        """The next bytes to write, or None when nothing is pending."""
        if self.first:
            return self.first.pop(0)
        if self.control:
            return self.control.pop(0)
        if self.pending_policy is not None:
            revision, data = self.pending_policy
            self.pending_policy = None
            if revision > self.sent_rev:
                self.sent_rev = revision
                return data
        if self.pending_dir is not None:
            version, data = self.pending_dir
            self.pending_dir = None
            if version > self.sent_dir_version:
                self.sent_dir_version = version
                return data
        return None

    def attach(self, sink: Sink, first: list[bytes] | None = None) -> None:
        """From now on pending messages are written to ``sink`` by a writer task (one
        at a time, whoever offers them), ``first`` before anything else."""
        self.sink = sink
        if first:
            self.first = list(first)
        self._kick()

    def _kick(self) -> None:
        if self.writer is None and self.sink is not None and not self.closed:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        sink = self.sink
        assert sink is not None
        try:
            while not self.closed:
                data = self.next_message()
                if data is None:
                    return  # no await since the check: a later offer starts a new writer
                await self.write_tracked(sink, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the RPC ended under us: end the stream
            _log.debug("node %s: write failed (%s); closing the stream", self.node, exc)
            self.close(kill=True)
        finally:
            self.writer = None

    def close(self, *, kill: bool = False, reason: str = "") -> None:
        """End the stream: nothing more is queued, and its handler (blocked reading) is
        cancelled; it ends the call (after the write in progress, if any: see the
        module docstring), with ``reason`` as the status message when one is given.
        ``kill`` is accepted for callers that want to say it was forced; both end the
        handler the same way."""
        del kill
        self.closed = True
        if reason and not self.reason:
            self.reason = reason
        task = self.task
        if task is not None and not self.killed and task is not _current_task():
            self.killed = True
            task.cancel()

    async def finish_write(self) -> None:
        """Wait until the write in progress (if any) has been taken by gRPC; nothing is
        written after it (the stream is closed)."""
        writer = self.writer
        if writer is not None and writer is not _current_task():
            await asyncio.wait({writer})

    def detach(self) -> None:
        """Called by the handler when it ends: stop writing."""
        self.closed = True
        writer = self.writer
        if writer is not None and writer is not _current_task():
            writer.cancel()
        self.writer = None
        self.sink = None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (unit tests of the fan-out rules)
        return None


def policy_message(rev: Revision) -> agent_pb2.PolicyRevision:
    return agent_pb2.PolicyRevision(
        revision=rev.revision,
        sha256=rev.sha256,
        text=rev.text,
        created_unix_ms=rev.created_unix_ms,
        policy_digest=rev.policy_digest,
    )


class Hub:
    """The streams of this replica and the newest revision/directory they follow."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.streams: dict[str, StreamState] = {}
        self.latest: Published | None = None
        self.directory_version = 0
        self.directory_bytes: bytes | None = None
        self.directory_message = agent_pb2.NodeDirectory()
        self.serializations = 0  # policy updates serialized (one per revision): for tests
        self.crl_number = 0
        self.crl_bytes: bytes | None = None  # the newest CRL as a ControllerMessage
        self._snapshot_cache: dict[tuple[int, int, bool], bytes] = {}
        # a rollout in progress: (from, to, nodes held on from) and from's bytes
        self.pins: tuple[int, int, frozenset[str]] | None = None
        self.held: Published | None = None

    def publish(self, rev: Revision) -> bool:
        """Make ``rev`` the newest; False when it is not newer than what we have.
        Streams of nodes a rollout holds back get nothing (controller/rollout.py)."""
        if self.latest is not None and rev.revision <= self.latest.revision:
            return False
        msg = policy_message(rev)
        data = agent_pb2.ControllerMessage(
            update=agent_pb2.PolicyUpdate(policy=msg)
        ).SerializeToString()
        self.serializations += 1
        previous = self.latest
        if previous is not None and self.pins is not None and previous.revision == self.pins[0]:
            self.held = previous  # the revision pinned nodes stay on
        self.latest = Published(rev.revision, rev.sha256, msg, data)
        self._snapshot_cache.clear()
        for stream in self.streams.values():
            self._offer_target(stream)
        return True

    # -- rollouts: per-node target revisions ----------------------------------------
    def set_pins(self, pins: tuple[int, int, frozenset[str]] | None) -> None:
        """``(from, to, nodes)``: while ``to`` is the newest revision, ``nodes`` are
        offered ``from`` (once its bytes are here: :meth:`hold`) instead; None: every
        stream follows the newest revision.  Streams that are let go are offered it."""
        self.pins = pins
        if pins is None or (self.held is not None and self.held.revision != pins[0]):
            self.held = None
        latest = self.latest
        if (
            pins is not None
            and self.held is None
            and latest is not None
            and latest.revision == pins[0]
        ):
            self.held = latest
        for stream in self.streams.values():
            self._offer_target(stream)

    def needs_held(self) -> int:
        """The revision pinned nodes are held on when its bytes are missing (a replica
        that started during a rollout), else 0."""
        pins = self.pins
        if pins is None or self.held is not None:
            return 0
        return pins[0]

    def hold(self, rev: Revision) -> None:
        """The bytes of the revision pinned nodes are held on (serialized once)."""
        if self.pins is None or rev.revision != self.pins[0]:
            return
        msg = policy_message(rev)
        data = agent_pb2.ControllerMessage(
            update=agent_pb2.PolicyUpdate(policy=msg)
        ).SerializeToString()
        self.serializations += 1
        self.held = Published(rev.revision, rev.sha256, msg, data)
        for stream in self.streams.values():
            self._offer_target(stream)

    def held_back(self, node: str) -> bool:
        pins = self.pins
        latest = self.latest
        return (
            pins is not None
            and latest is not None
            and latest.revision == pins[1]
            and node in pins[2]
        )

    def target(self, node: str) -> Published | None:
        """The revision ``node``'s stream is offered: the newest, or the one a rollout
        holds it on (None while those bytes are not loaded yet)."""
        if self.held_back(node):
            return self.held
        return self.latest

    def _offer_target(self, stream: StreamState) -> None:
        target = self.target(stream.node)
        pending = stream.pending_policy
        if pending is not None and (target is None or pending[0] > target.revision):
            stream.pending_policy = None  # not sent yet, and no longer its target
        if target is not None:
            stream.offer_policy(target.revision, target.update_bytes)

    def publish_directory(self, nodes: list[types_pb2.NodeEntry]) -> None:
        self.directory_version += 1
        self.directory_message = agent_pb2.NodeDirectory(
            version=self.directory_version, nodes=nodes
        )
        data = agent_pb2.ControllerMessage(directory=self.directory_message).SerializeToString()
        self.directory_bytes = data
        self._snapshot_cache.clear()
        for stream in self.streams.values():
            stream.offer_directory(self.directory_version, data)

    def publish_crl(self, number: int, pem_data: bytes) -> bool:
        """Send the cluster CA's CRL to every stream (and to new ones after their
        opening message); False when it is not newer than the one we have."""
        if number <= self.crl_number:
            return False
        self.crl_number = number
        data = agent_pb2.ControllerMessage(
            crl=agent_pb2.Crl(pem=pem_data, number=number)
        ).SerializeToString()
        self.crl_bytes = data
        for stream in self.streams.values():
            stream.offer_control(data)
        return True

    def snapshot_bytes(self, with_directory: bool, policy: Published | None = None) -> bytes:
        """The full-state message (cached per revision, directory version and kind);
        ``policy``: the revision the node is targeted at (default: the newest)."""
        policy = policy if policy is not None else self.latest
        rev = policy.revision if policy else 0
        key = (rev, self.directory_version if with_directory else 0, with_directory)
        data = self._snapshot_cache.get(key)
        if data is None:
            snap = agent_pb2.Snapshot(controller=self.replica_id)
            if policy is not None:
                snap.policy.CopyFrom(policy.message)
            if with_directory:
                snap.directory.CopyFrom(self.directory_message)
            data = agent_pb2.ControllerMessage(snapshot=snap).SerializeToString()
            self._snapshot_cache[key] = data
        return data

    def resume_bytes(self) -> bytes:
        current = self.latest.revision if self.latest else 0
        return agent_pb2.ControllerMessage(
            resume=agent_pb2.Resume(current_revision=current, controller=self.replica_id)
        ).SerializeToString()

    def add(self, stream: StreamState) -> StreamState | None:
        """Register ``stream``; returns the older stream of the same node, if any."""
        old = self.streams.get(stream.node)
        self.streams[stream.node] = stream
        return old

    def remove(self, stream: StreamState) -> bool:
        if self.streams.get(stream.node) is stream:
            del self.streams[stream.node]
            return True
        return False
