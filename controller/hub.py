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

The node directory goes as deltas (:class:`DirectoryFeed`): each change of the
directory is one ``NodeDirectoryDelta`` (the entries added or changed, the names
removed), serialized once and kept in a bounded log.  A stream holds no directory
message of its own, only the version it has sent; its writer takes the next delta
from the feed when it gets there, or the whole directory when the stream's version is
no longer in the log (or the deltas it lacks would be larger than the whole).

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
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.revisions import Revision
from ipsecd.directory import Directory
from ipsecd.v1 import agent_pb2, types_pb2

__all__ = [
    "CONTROL_SLOTS",
    "NEEDS_WHOLE",
    "DirectoryFeed",
    "Hub",
    "Published",
    "Sink",
    "StreamState",
]

_log = logging.getLogger(__name__)

CONTROL_SLOTS = 8

#: a stream's directory version when it must get the whole directory next
NEEDS_WHOLE = -1
#: deltas kept for streams that lag: at most this many, and at most twice the bytes of
#: the whole directory (a lag beyond that costs less as the whole directory)
DIRECTORY_LOG_ENTRIES = 4096
DIRECTORY_LOG_MIN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Published:
    """The newest revision, as the bytes every stream gets."""

    revision: int
    sha256: str
    message: agent_pb2.PolicyRevision = field(repr=False)
    update_bytes: bytes = field(repr=False)


class SendTotals:
    """Messages and bytes written to this replica's agent streams, and how long the
    newest revision took to be taken by every stream (metrics, the benchmark: the
    controller's own part of push -> ack)."""

    __slots__ = ("bytes", "fanout_left", "fanout_seconds", "fanout_start", "messages", "tracked")

    def __init__(self) -> None:
        self.bytes = 0
        self.messages = 0
        self.tracked: bytes | None = None  # the revision's update being fanned out
        self.fanout_left = 0
        self.fanout_start = 0.0
        self.fanout_seconds = 0.0  # of the last fan-out every stream took

    def track(self, data: bytes, streams: int) -> None:
        self.tracked, self.fanout_left, self.fanout_start = data, streams, time.monotonic()
        if not streams:
            self.tracked, self.fanout_seconds = None, 0.0

    def written(self, data: bytes) -> None:
        self.messages += 1
        self.bytes += len(data)
        if data is self.tracked:
            self.fanout_left -= 1
            if self.fanout_left <= 0:
                self.tracked = None
                self.fanout_seconds = time.monotonic() - self.fanout_start


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
        "dir_feed",
        "directory",
        "first",
        "forget",
        "inflight",
        "killed",
        "last_rx",
        "node",
        "pending_policy",
        "reason",
        "sent_dir_version",
        "sent_rev",
        "serial",
        "sink",
        "task",
        "totals",
        "write_since",
        "writer",
    )

    def __init__(self, node: str, *, directory: bool, sent_rev: int) -> None:
        self.node = node
        self.directory = directory
        self.sent_rev = sent_rev
        # the directory version this stream's agent has once everything written so far
        # has arrived (NEEDS_WHOLE: the whole directory goes next)
        self.sent_dir_version = NEEDS_WHOLE
        self.pending_policy: tuple[int, bytes] | None = None
        self.dir_feed: DirectoryFeed | None = None  # set by offer_directory
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
        self.totals: SendTotals | None = None  # the hub's, set by Hub.add

    def stalled_for(self, now: float) -> float:
        """Seconds the write in progress has been pending (0 when none is)."""
        return now - self.write_since if self.write_since else 0.0

    def pending_bytes(self) -> int:
        """Bytes held for this stream: the write in progress and the three slots."""
        total = self.inflight + sum(len(c) for c in self.control)
        if self.pending_policy is not None:
            total += len(self.pending_policy[1])
        nxt = self._next_directory(peek=True)
        if nxt is not None:
            total += len(nxt)
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
        if self.totals is not None:
            self.totals.written(data)

    def offer_policy(self, revision: int, data: bytes) -> None:
        if revision > self.sent_rev:
            self.pending_policy = (revision, data)  # replaces an unsent older one
            self._kick()

    def offer_directory(self, feed: DirectoryFeed) -> None:
        """The directory changed (or is there to be sent): the writer takes what this
        stream lacks from ``feed`` when it gets to it."""
        if self.directory:
            self.dir_feed = feed
            if feed.published and feed.version != self.sent_dir_version:
                self._kick()

    def _next_directory(self, *, peek: bool = False) -> bytes | None:
        feed = self.dir_feed
        if feed is None or feed.version == self.sent_dir_version:
            return None
        nxt = feed.next_for(self.sent_dir_version)
        if nxt is None:
            return None
        if not peek:
            self.sent_dir_version = nxt[0]
        return nxt[1]

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
        if self.directory:
            return self._next_directory()
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


class DirectoryFeed:
    """The node directory as this replica sends it (see the module docstring).

    ``version`` is the etcd revision the directory was last changed at, so replicas
    sharing an etcd number the same content alike; the digest
    (:class:`ipsecd.directory.Directory`) is what decides whether an agent's directory
    can be resumed."""

    def __init__(self) -> None:
        self.dir = Directory()
        self.published = False
        self.deltas = 0  # deltas serialized (one per change, whatever the streams): tests
        # the log: base version -> (version, delta bytes, log bytes before it, digest at base)
        self._by_base: dict[int, tuple[int, bytes, int, bytes]] = {}
        self._order: deque[int] = deque()  # base versions, oldest first
        self._log_start = 0  # log bytes before the oldest delta kept
        self._log_end = 0  # log bytes after the newest delta
        self._sizes: dict[str, int] = {}  # serialized size of each entry
        self._whole_size = 0
        self._whole: tuple[int, bytes] | None = None
        self._message: tuple[int, agent_pb2.NodeDirectory] | None = None

    @property
    def version(self) -> int:
        return self.dir.version

    def digest(self) -> bytes:
        return self.dir.digest()

    def update(
        self, changes: Mapping[str, types_pb2.NodeEntry | None], version: int | None = None
    ) -> bool:
        d = self.dir
        changed = [e for e in changes.values() if e is not None and not d.same(e)]
        removed = sorted(n for n, e in changes.items() if e is None and n in d.entries)
        if self.published and not changed and not removed:
            return False
        base, digest_at_base = d.version, d.digest()
        new = max(version or 0, base + 1)
        changed.sort(key=lambda e: e.name)
        d.change(new, changed, removed)
        for entry in changed:
            size = entry.ByteSize() + 3  # the repeated field's tag and length
            self._whole_size += size - self._sizes.get(entry.name, 0)
            self._sizes[entry.name] = size
        for name in removed:
            self._whole_size -= self._sizes.pop(name, 0)
        delta = agent_pb2.NodeDirectoryDelta(
            base_version=base, version=new, changed=changed, removed=removed, digest=d.digest()
        )
        data = agent_pb2.ControllerMessage(directory_delta=delta).SerializeToString()
        self.deltas += 1
        self.published = True
        self._by_base[base] = (new, data, self._log_end, digest_at_base)
        self._order.append(base)
        self._log_end += len(data)
        limit = max(DIRECTORY_LOG_MIN_BYTES, 2 * self._whole_size)
        while self._order and (
            len(self._order) > DIRECTORY_LOG_ENTRIES or self._log_end - self._log_start > limit
        ):
            oldest = self._order.popleft()
            _, old_data, _, _ = self._by_base.pop(oldest)
            self._log_start += len(old_data)
        return True

    def resumable(self, version: int, digest: bytes) -> bool:
        """True when an agent holding ``version`` with ``digest`` can be sent the deltas
        from there (the log has them and the agent's digest is ours at that version)."""
        item = self._by_base.get(version)
        return item is not None and item[3] == digest

    def next_for(self, have: int) -> tuple[int, bytes] | None:
        """What a stream at directory version ``have`` gets next: ``(version, bytes)``
        of the next delta, or of the whole directory when ``have`` is not in the log or
        the deltas from there are larger than the whole; None when it is up to date."""
        if not self.published or have == self.dir.version:
            return None
        item = self._by_base.get(have)
        if item is not None:
            version, data, before, _ = item
            if self._log_end - before <= self._whole_size + 64:
                return version, data
        return self.dir.version, self.whole_bytes()

    def message(self) -> agent_pb2.NodeDirectory:
        cached = self._message
        if cached is None or cached[0] != self.dir.version:
            msg = agent_pb2.NodeDirectory(
                version=self.dir.version, nodes=self.dir.nodes(), digest=self.dir.digest()
            )
            cached = self._message = (self.dir.version, msg)
        return cached[1]

    def whole_bytes(self) -> bytes:
        cached = self._whole
        if cached is None or cached[0] != self.dir.version:
            data = agent_pb2.ControllerMessage(directory=self.message()).SerializeToString()
            cached = self._whole = (self.dir.version, data)
        return cached[1]

    def rebase_bytes(self, have: int) -> bytes:
        """For an agent whose directory has our digest at another version number (saved,
        or from another replica): a delta without changes that moves it to ours."""
        return agent_pb2.ControllerMessage(
            directory_delta=agent_pb2.NodeDirectoryDelta(
                base_version=have, version=self.dir.version, digest=self.dir.digest()
            )
        ).SerializeToString()


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
        self.feed = DirectoryFeed()
        self.sent = SendTotals()
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
        self.sent.track(data, len(self.streams))
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

    @property
    def directory_version(self) -> int:
        return self.feed.version

    @property
    def directory_message(self) -> agent_pb2.NodeDirectory:
        """The whole directory (built once per version, when someone needs it)."""
        return self.feed.message()

    @property
    def directory_bytes(self) -> bytes | None:
        """The whole directory as a ``ControllerMessage`` (None before the first one)."""
        return self.feed.whole_bytes() if self.feed.published else None

    def publish_directory(
        self, nodes: Iterable[types_pb2.NodeEntry], version: int | None = None
    ) -> bool:
        """The whole directory: sent as the changes from the one streams have."""
        changes: dict[str, types_pb2.NodeEntry | None] = dict.fromkeys(self.feed.dir.entries)
        for entry in nodes:
            changes[entry.name] = entry
        return self.publish_directory_changes(changes, version)

    def publish_directory_changes(
        self, changes: Mapping[str, types_pb2.NodeEntry | None], version: int | None = None
    ) -> bool:
        """Entries added or changed (name -> entry) and removed (name -> None), at
        ``version`` (the etcd revision they come from; default: the next number).
        Entries equal to what the directory holds are left out; False when nothing
        changed."""
        if not self.feed.update(changes, version):
            return False
        self._snapshot_cache.clear()
        feed = self.feed
        for stream in self.streams.values():
            stream.offer_directory(feed)
        return True

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
        key = (rev, self.feed.version if with_directory else 0, with_directory)
        data = self._snapshot_cache.get(key)
        if data is None:
            snap = agent_pb2.Snapshot(controller=self.replica_id)
            if policy is not None:
                snap.policy.CopyFrom(policy.message)
            if with_directory:
                snap.directory.CopyFrom(self.feed.message())
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
        stream.totals = self.sent
        return old

    def remove(self, stream: StreamState) -> bool:
        if self.streams.get(stream.node) is stream:
            del self.streams[stream.node]
            return True
        return False
