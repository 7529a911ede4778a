"""Node registry rules over the in-memory store: batching, acks, conn ownership."""

from __future__ import annotations

import json

from controller.keys import Keys
from controller.registry import NodeView, Registry
from controller.store import MemoryStore, WatchEvent
from ipsecd.v1 import agent_pb2, types_pb2
from tests.support.aio import run_async

KEYS = Keys("/r/")


def _setup() -> tuple[MemoryStore, NodeView, Registry]:
    store = MemoryStore()
    view = NodeView(KEYS)
    reg = Registry(store, KEYS, "r1", "127.0.0.1:1", touch_interval=30.0, view=view)
    return store, view, reg


def _hello(name: str) -> agent_pb2.Hello:
    return agent_pb2.Hello(node=name, addresses=["192.0.2.7"], labels={"role": "db"})


@run_async(10)
async def test_hello_ack_flush_and_health_recovery() -> None:
    store, view, reg = _setup()
    lease = await store.grant_lease(10)
    reg.connected(_hello("n1"), None)
    assert await reg.flush(lease) == 2  # node record + conn key
    assert await reg.flush(lease) == 0  # nothing changed: nothing written
    reg.acked("n1", agent_pb2.Ack(revision=3, ok=False, error="netlink said no"))
    await reg.flush(lease)
    rec = json.loads((await store.get(KEYS.node("n1"))).value)  # type: ignore[union-attr]
    assert rec["status"]["health"] == types_pb2.HEALTH_FAILING
    assert "netlink said no" in rec["status"]["detail"]
    reg.acked("n1", agent_pb2.Ack(revision=4, ok=True))
    await reg.flush(lease)
    rec = json.loads((await store.get(KEYS.node("n1"))).value)  # type: ignore[union-attr]
    assert rec["status"]["health"] == types_pb2.HEALTH_OK
    assert rec["status"]["applied_revision"] == 4 and rec["status"]["detail"] == ""
    # the view follows the store through the watch
    raw = (await store.get(KEYS.node("n1"))).value  # type: ignore[union-attr]
    view.apply(WatchEvent(KEYS.node("n1"), raw, 0))
    assert view.records["n1"]["status"]["applied_revision"] == 4


@run_async(10)
async def test_status_reports_only_write_on_change() -> None:
    store, _view, reg = _setup()
    lease = await store.grant_lease(10)
    reg.connected(_hello("n1"), None)
    await reg.flush(lease)
    status = types_pb2.NodeStatus(applied_revision=1, health=types_pb2.HEALTH_OK, ike_sas=2)
    reg.reported("n1", status)
    assert await reg.flush(lease) == 1
    reg.reported("n1", types_pb2.NodeStatus(applied_revision=1, health=1, ike_sas=2))
    assert await reg.flush(lease) == 0
    reg.reported("n1", types_pb2.NodeStatus(applied_revision=1, health=1, ike_sas=3))
    assert await reg.flush(lease) == 1


@run_async(10)
async def test_disconnect_keeps_record_and_spares_a_moved_conn() -> None:
    store, view, reg = _setup()
    lease = await store.grant_lease(10)
    reg.connected(_hello("n1"), None)
    reg.connected(_hello("n2"), None)
    await reg.flush(lease)
    # n2 has moved to replica r2 (seen through the watch) before r1 notices its loss
    moved = json.dumps({"replica": "r2", "address": "x"}).encode()
    await store.put(KEYS.conn("n2"), moved)
    view.apply(WatchEvent(KEYS.conn("n2"), moved, 0))
    view.apply(WatchEvent(KEYS.conn("n1"), json.dumps({"replica": "r1"}).encode(), 0))
    reg.disconnected("n1")
    reg.disconnected("n2")
    await reg.flush(lease)
    assert await store.get(KEYS.conn("n1")) is None
    kept = await store.get(KEYS.conn("n2"))
    assert kept is not None and kept.value == moved
    assert await store.get(KEYS.node("n1")) is not None  # last status stays for `status`


@run_async(10)
async def test_own_write_echo_reuses_the_record_and_foreign_bytes_are_parsed() -> None:
    store, view, reg = _setup()
    lease = await store.grant_lease(10)
    reg.connected(_hello("n1"), None)
    reg.acked("n1", agent_pb2.Ack(revision=2, ok=True))
    await reg.flush(lease)
    raw = (await store.get(KEYS.node("n1"))).value  # type: ignore[union-attr]
    view.apply(WatchEvent(KEYS.node("n1"), raw, 0))  # our own write, as the watch sees it
    echoed = view.records["n1"]
    assert echoed == json.loads(raw) and echoed["status"]["applied_revision"] == 2
    assert echoed is not reg.local["n1"].record  # a snapshot, not the live record
    # reused, not parsed again: it shares the (never mutated) address list
    assert echoed["addresses"] is reg.local["n1"].record["addresses"]
    reg.acked("n1", agent_pb2.Ack(revision=3, ok=True))
    assert view.records["n1"]["status"]["applied_revision"] == 2  # not mutated behind etcd
    # another replica wrote the key meanwhile: different bytes are parsed, not trusted
    await reg.flush(lease)
    other = json.dumps({"name": "n1", "status": {"applied_revision": 9}}).encode()
    view.apply(WatchEvent(KEYS.node("n1"), other, 0))
    assert view.records["n1"]["status"]["applied_revision"] == 9
    # a stale expectation never masks a later foreign value either
    view.apply(WatchEvent(KEYS.node("n1"), raw, 0))
    assert view.records["n1"] == json.loads(raw)
