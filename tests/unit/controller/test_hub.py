"""Fan-out rules: serialize once, coalesce to the newest, bounded control slots."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.hub import CONTROL_SLOTS, Hub, StreamState
from controller.revisions import Revision
from ipsecd.v1 import agent_pb2
from tests.support.aio import run_async


def _rev(n: int) -> Revision:
    return Revision(n, "t", n, f"{n:064x}", "", n - 1, 0, "p.spd", "", f"text {n}\n")


def _decode(data: bytes) -> agent_pb2.ControllerMessage:
    return agent_pb2.ControllerMessage.FromString(data)


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
    s.offer_directory(1, b"dir1")
    sink.gate.set()
    for _ in range(50):
        if s.writer is None:
            break
        await asyncio.sleep(0)
    assert s.writer is None  # drained: no task left behind for an idle stream
    assert sink.written == [b"ping", b"rev2", b"dir1"]
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
