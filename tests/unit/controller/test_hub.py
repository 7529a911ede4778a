"""Fan-out rules: serialize once, coalesce to the newest, bounded control slots."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.hub import CONTROL_SLOTS, NEEDS_WHOLE, DirectoryFeed, Hub, StreamState
from controller.revisions import Revision
from ipsecd.directory import Directory, DirectoryMismatch
from ipsecd.v1 import agent_pb2, types_pb2
from tests.support.aio import run_async


def _rev(n: int) -> Revision:
    return Revision(n, "t", n, f"{n:064x}", "", n - 1, 0, "p.spd", "", f"text {n}\n")


def _decode(data: bytes) -> agent_pb2.ControllerMessage:
    return agent_pb2.ControllerMessage.FromString(data)


def _entry(name: str, address: str = "192.0.2.1", **labels: str) -> types_pb2.NodeEntry:
    return types_pb2.NodeEntry(name=name, addresses=[address], labels=labels)


def test_publish_serializes_once_and_shares_the_bytes() -> None:
    hub = Hub("r1")
    streams = [StreamState(f"n{i}", directory=False, sent_rev=0) for i in range(50)]
    for s in streams:
        hub.add(s)
    assert hub.publish(_rev(1))
    assert hub.serializations == 1
    datas = [s.next_message() for s in streams]
    assert all(d is datas[0] for d in datas)  # the very same bytes object
    assert datas[0] is not None and _decode(datas[0]).update.policy.revision == 1
    assert not hub.publish(_rev(1)) and hub.serializations == 1  # not newer: ignored


def test_slow_stream_coalesces_to_latest_in_order() -> None:
    hub = Hub("r1")
    slow = StreamState("slow", directory=False, sent_rev=0)
    hub.add(slow)
    for n in range(1, 11):
        hub.publish(_rev(n))
    data = slow.next_message()
    assert data is not None and _decode(data).update.policy.revision == 10
    assert slow.next_message() is None  # nothing older comes afterwards
    hub.publish(_rev(11))
    data = slow.next_message()
    assert data is not None and _decode(data).update.policy.revision == 11


def test_never_resends_or_goes_backwards() -> None:
    s = StreamState("n", directory=False, sent_rev=5)
    s.offer_policy(5, b"five")
    s.offer_policy(3, b"three")
    assert s.next_message() is None
    s.offer_policy(6, b"six")
    assert s.next_message() == b"six"
    s.offer_policy(6, b"six")
    assert s.next_message() is None


def test_control_slots_are_bounded_and_first() -> None:
    s = StreamState("n", directory=False, sent_rev=0)
    s.offer_policy(1, b"policy")
    for i in range(CONTROL_SLOTS + 5):
        s.offer_control(bytes([i]))
    out = [s.next_message() for _ in range(CONTROL_SLOTS + 1)]
    assert out[:CONTROL_SLOTS] == [bytes([i]) for i in range(5, CONTROL_SLOTS + 5)]
    assert out[CONTROL_SLOTS] == b"policy"


def test_directory_only_for_streams_that_ask_and_snapshot_cache() -> None:
    hub = Hub("r1")
    want = StreamState("want", directory=True, sent_rev=0)
    plain = StreamState("plain", directory=False, sent_rev=0)
    hub.add(want)
    hub.add(plain)
    hub.publish_directory([])
    assert want.next_message() is not None and plain.next_message() is None
    hub.publish(_rev(1))
    snap = hub.snapshot_bytes(True)
    assert snap is hub.snapshot_bytes(True)  # cached
    msg = _decode(snap).snapshot
    assert msg.policy.revision == 1 and msg.directory.version == 1 and msg.controller == "r1"
    assert not _decode(hub.snapshot_bytes(False)).snapshot.HasField("directory")


def test_newest_stream_of_a_node_replaces_the_older() -> None:
    hub = Hub("r1")
    a = StreamState("n", directory=False, sent_rev=0)
    b = StreamState("n", directory=False, sent_rev=0)
    assert hub.add(a) is None
    assert hub.add(b) is a
    assert not hub.remove(a) and hub.streams["n"] is b
    assert hub.remove(b) and "n" not in hub.streams


def test_policy_text_never_in_reprs() -> None:
    from agent.stream import PolicyReceived
    from controller.hub import Published, policy_message

    secret = "0xdeadbeefdeadbeefdeadbeefdeadbeef"
    rev = Revision(1, "t", 1, "0" * 64, "", 0, 0, "p.spd", "", f"key {secret}\n")
    assert secret not in repr(rev)
    assert secret not in repr(PolicyReceived(1, "0" * 64, rev.text))
    published = Published(1, "0" * 64, policy_message(rev), b"bytes")
    assert secret not in repr(published)


class _Sink:
    """Stands in for the gRPC context (the integration tests run the real one)."""

    def __init__(self, fail: bool = False) -> None:
        self.written: list[bytes] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, message: Any) -> None:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("the RPC is over")
        self.written.append(message)


@run_async(10)
async def test_writer_task_only_while_something_is_pending_and_in_order() -> None:
    s = StreamState("n", directory=True, sent_rev=0)
    s.offer_control(b"ping")  # before attach: kept, not written
    assert s.writer is None
    sink = _Sink()
    sink.gate.clear()
    s.attach(sink)
    assert s.writer is not None
    s.offer_policy(1, b"rev1")
    s.offer_policy(2, b"rev2")  # coalesced: rev1 is never written
    feed = DirectoryFeed()
    feed.update({"a": _entry("a")})
    s.offer_directory(feed)
    dir1 = feed.whole_bytes()
    sink.gate.set()
    for _ in range(50):
        if s.writer is None:
            break
        await asyncio.sleep(0)
    assert s.writer is None  # drained: no task left behind for an idle stream
    assert sink.written == [b"ping", b"rev2", dir1]
    s.offer_control(b"ping2")  # a later offer starts a new writer
    assert s.writer is not None
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sink.written[-1] == b"ping2" and s.writer is None


@run_async(10)
async def test_failed_write_closes_the_stream_and_cancels_its_handler() -> None:
    s = StreamState("n", directory=False, sent_rev=0)
    handler = asyncio.create_task(asyncio.sleep(30))  # stands for the reading handler
    s.task = handler
    s.attach(_Sink(fail=True))
    s.offer_policy(1, b"rev1")
    await asyncio.wait([handler], timeout=5)
    assert handler.cancelled() and s.closed and s.killed
    s.offer_policy(2, b"rev2")
    assert s.writer is None  # closed: nothing more is written
    s.detach()
    assert s.sink is None


class _Blocking:
    """A sink whose writes wait until released (an agent that does not read)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written: list[bytes] = []

    async def write(self, message: Any) -> None:
        await self.release.wait()
        self.written.append(message)


@run_async(10)
async def test_a_stuck_write_is_measured_and_nothing_piles_up() -> None:
    hub = Hub("r1")
    s = StreamState("stuck", directory=True, sent_rev=0)
    hub.add(s)
    sink = _Blocking()
    s.attach(sink, [b"opening"])
    await asyncio.sleep(0)
    assert s.stalled_for(s.write_since + 5.0) == 5.0 and s.inflight == len(b"opening")
    for n in range(1, 50):
        hub.publish(_rev(n))
        s.offer_control(b"ping")
    hub.publish_directory([])
    # one write in progress, one policy, one directory, CONTROL_SLOTS control messages
    latest = hub.latest
    assert latest is not None and hub.directory_bytes is not None
    assert s.pending_bytes() == (
        len(b"opening") + len(latest.update_bytes) + len(hub.directory_bytes) + 4 * CONTROL_SLOTS
    )
    s.close(kill=True, reason="dropped: not drained")
    assert s.reason == "dropped: not drained"
    sink.release.set()
    await s.finish_write()
    assert sink.written == [b"opening"]  # closed: nothing after the write in progress
    assert s.stalled_for(123.0) == 0.0 and s.pending_bytes() > 0
    s.detach()


@run_async(10)
async def test_the_opening_message_goes_first() -> None:
    s = StreamState("n", directory=False, sent_rev=0)
    s.offer_control(b"ping")
    s.offer_policy(1, b"one")
    sink = _Blocking()
    sink.release.set()
    s.attach(sink, [b"snapshot"])
    while s.writer is not None:
        await asyncio.sleep(0)
    assert sink.written == [b"snapshot", b"ping", b"one"]
    s.detach()


# -- the node directory as deltas ----------------------------------------------------------


class _Agent:
    """The agent's side of the directory (what agent/stream.py does with the bytes)."""

    def __init__(self) -> None:
        self.dir = Directory()

    def take(self, data: bytes) -> str:
        msg = _decode(data)
        kind = msg.WhichOneof("kind")
        if kind == "directory":
            self.dir.replace(msg.directory.version, msg.directory.nodes)
            assert msg.directory.digest == self.dir.digest()
        elif kind == "snapshot":
            self.dir.replace(msg.snapshot.directory.version, msg.snapshot.directory.nodes)
        else:
            d = msg.directory_delta
            self.dir.apply_delta(d.base_version, d.version, d.changed, d.removed, d.digest)
        return str(kind)

    def drain(self, stream: StreamState) -> list[str]:
        kinds = []
        while (data := stream.next_message()) is not None:
            kinds.append(self.take(data))
        return kinds


def _names(d: Directory) -> dict[str, list[str]]:
    return {n: list(e.addresses) for n, e in d.entries.items()}


def test_directory_changes_go_as_one_shared_delta_per_change() -> None:
    hub = Hub("r1")
    streams = [StreamState(f"n{i}", directory=True, sent_rev=0) for i in range(20)]
    agents = [_Agent() for _ in streams]
    for s in streams:
        hub.add(s)
    hub.publish_directory([_entry(f"node-{i}", f"10.0.0.{i}") for i in range(100)], version=7)
    # a stream that has nothing gets the whole directory once
    assert {a.drain(s)[0] for a, s in zip(agents, streams, strict=True)} == {"directory"}
    deltas = hub.feed.deltas
    changes: dict[str, types_pb2.NodeEntry | None] = {
        "node-3": _entry("node-3", "10.9.9.9"),  # changed
        "node-200": _entry("node-200", "10.2.0.0"),  # added
        "node-5": None,  # removed
        "node-6": _entry("node-6", "10.0.0.6"),  # the same as before: not sent
    }
    assert hub.publish_directory_changes(changes, version=9)
    assert hub.feed.deltas == deltas + 1  # serialized once for every stream
    datas = [s.next_message() for s in streams]
    assert datas[0] is not None and all(d is datas[0] for d in datas)
    delta = _decode(datas[0]).directory_delta
    assert (delta.base_version, delta.version) == (7, 9)
    assert [e.name for e in delta.changed] == ["node-200", "node-3"]
    assert list(delta.removed) == ["node-5"]
    # the delta is O(changes): far smaller than the whole directory
    assert len(datas[0]) * 10 < len(hub.feed.whole_bytes())
    for a, data in zip(agents, datas, strict=True):
        assert data is not None
        a.take(data)
        assert a.dir.digest() == hub.feed.digest() and a.dir.version == 9
        assert _names(a.dir) == _names(hub.feed.dir)
    # nothing that changes nothing is published
    assert not hub.publish_directory_changes({"node-3": _entry("node-3", "10.9.9.9")}, 10)
    assert all(s.next_message() is None for s in streams)


def test_a_lagging_stream_gets_every_delta_in_order_then_the_whole_when_too_far() -> None:
    hub = Hub("r1")
    lag = StreamState("lag", directory=True, sent_rev=0)
    agent = _Agent()
    hub.add(lag)
    hub.publish_directory([_entry(f"node-{i:04d}") for i in range(500)], version=1)
    assert agent.drain(lag) == ["directory"]
    for v in range(2, 6):  # four changes while the stream does not write
        hub.publish_directory_changes({f"node-{v:04d}": _entry(f"node-{v:04d}", "10.1.1.1")}, v)
    assert agent.drain(lag) == ["directory_delta"] * 4
    assert agent.dir.version == 5 and agent.dir.digest() == hub.feed.digest()
    # so many changes that sending them would cost more than the whole directory
    for v in range(6, 506):
        hub.publish_directory_changes(
            {f"node-{v - 6:04d}": _entry(f"node-{v - 6:04d}", "10.3.3.3")}, v
        )
    assert agent.drain(lag) == ["directory"]
    assert agent.dir.version == 505 and agent.dir.digest() == hub.feed.digest()


def test_the_delta_log_is_bounded() -> None:
    feed = DirectoryFeed()
    feed.update({f"n{i}": _entry(f"n{i}") for i in range(10)}, 1)
    for v in range(2, 20_000):
        feed.update({"n1": _entry("n1", f"10.0.{v // 250 % 250}.{v % 250}")}, v)
    assert len(feed._order) <= 4096
    assert feed._log_end - feed._log_start <= max(64 * 1024, 2 * feed._whole_size)
    assert not feed.resumable(1, b"")  # long gone: such a stream gets the whole directory
    assert feed.next_for(1) == (feed.version, feed.whole_bytes())


def test_resume_decisions_by_version_and_digest() -> None:
    feed = DirectoryFeed()
    feed.update({"a": _entry("a"), "b": _entry("b")}, 10)
    at10 = feed.digest()
    feed.update({"c": _entry("c")}, 12)
    assert feed.resumable(10, at10)  # we have the deltas from there, and it is our 10
    assert not feed.resumable(10, b"\x01" * 32)  # another directory under that number
    assert not feed.resumable(11, at10)
    s = StreamState("n", directory=True, sent_rev=0)
    assert s.sent_dir_version == NEEDS_WHOLE
    s.sent_dir_version = 10
    s.offer_directory(feed)
    data = s.next_message()
    assert data is not None and _decode(data).directory_delta.base_version == 10
    # the same content under another number (a restart, another replica): a renumbering
    a = _Agent()
    a.dir.replace(3, [_entry("a"), _entry("b"), _entry("c")])
    assert a.dir.digest() == feed.digest()
    a.take(feed.rebase_bytes(3))
    assert a.dir.version == 12


def test_agent_side_refuses_a_delta_that_does_not_apply() -> None:
    d = Directory()
    d.replace(5, [_entry("a")])
    with pytest.raises(DirectoryMismatch, match="version 4"):
        d.apply_delta(4, 6, [_entry("b")], [], b"")
    d2 = Directory()
    d2.replace(5, [_entry("a")])
    with pytest.raises(DirectoryMismatch, match="digest"):
        d2.apply_delta(5, 6, [_entry("b")], [], b"\x00" * 32)


def test_digest_is_order_independent_and_field_exact() -> None:
    one, two = Directory(), Directory()
    one.replace(1, [_entry("a", "10.0.0.1", role="x"), _entry("b")])
    two.replace(1, [_entry("b"), _entry("a", "10.0.0.1", role="x")])
    assert one.digest() == two.digest()
    two.change(2, [_entry("a", "10.0.0.1", role="y")])
    assert one.digest() != two.digest()
    two.change(3, [_entry("a", "10.0.0.1", role="x")])
    assert one.digest() == two.digest()
    # length-prefixed: moving bytes between fields changes the digest
    three, four = Directory(), Directory()
    three.replace(1, [_entry("ab", "c")])
    four.replace(1, [_entry("a", "bc")])
    assert three.digest() != four.digest()
    three.change(2, removed=["ab"])
    assert three.digest() == Directory().digest()


@run_async(10)
async def test_fanout_time_is_taken_when_every_stream_has_taken_the_revision() -> None:
    hub = Hub("r1")
    sinks = []
    for i in range(3):
        s = StreamState(f"n{i}", directory=False, sent_rev=0)
        hub.add(s)
        sink = _Sink()
        sink.gate.clear()
        s.attach(sink)
        sinks.append(sink)
    hub.publish(_rev(1))
    assert hub.sent.tracked is not None and hub.sent.fanout_left == 3
    sinks[0].gate.set()
    sinks[1].gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert hub.sent.fanout_left == 1 and hub.sent.fanout_seconds == 0.0  # one still pending
    sinks[2].gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert hub.sent.tracked is None and hub.sent.fanout_seconds > 0.0
    assert hub.sent.messages == 3 and hub.sent.bytes == 3 * len(hub.latest.update_bytes)  # type: ignore[union-attr]
