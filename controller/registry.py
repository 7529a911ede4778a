"""Node registry: who the nodes are, what they last reported, which replica serves them.

Two keys per node (see :class:`controller.keys.Keys`):

* ``nodes/<name>`` — persistent JSON record: addresses, labels, last status, last seen.
  The node directory and ``ipsecctl status`` come from these.
* ``conn/<name>`` — bound to the serving replica's etcd lease: the node is connected,
  and to which replica.  If the replica dies its lease expires and the key goes away;
  the agent reconnects to another replica, which writes it again.

Writes are batched: a flush loop writes the records that changed (status reports only
count as a change when revision/health/SA counts change, or every ``touch_interval``
seconds for ``last seen``), so 5,000 agents reporting every 10 s do not become 500
etcd writes a second.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from controller.errors import StoreUnavailable
from controller.keys import Keys
from controller.store import Store, WatchEvent
from ipsecd.v1 import agent_pb2, status_pb2, types_pb2

__all__ = ["NodeView", "Registry"]

_log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def gate_to_dict(health: types_pb2.RevisionHealth) -> dict[str, Any]:
    """A node's ``RevisionHealth`` as kept in its record (``gate``), for the rollout
    health gate (controller/rollout.py); bounded like the status detail."""
    return {
        "revision": health.revision,
        "refused": health.refused,
        "refused_error": health.refused_error[:500],
        "expected": health.expected,
        "established": health.established,
        "pending": [p[:200] for p in health.pending[:16]],
        "errors": health.errors,
    }


def _gate_key(gate: dict[str, Any] | None) -> tuple[Any, ...]:
    if not gate:
        return ()
    return tuple(
        gate.get(k, 0) for k in ("revision", "refused", "expected", "established", "errors")
    )


def status_to_dict(status: types_pb2.NodeStatus) -> dict[str, Any]:
    return {
        "applied_revision": status.applied_revision,
        "health": int(status.health),
        "ike_sas": status.ike_sas,
        "child_sas": status.child_sas,
        "detail": status.detail,
        "reported_unix_ms": status.reported_unix_ms,
    }


@dataclass(slots=True)
class LocalNode:
    """A node whose stream this replica serves."""

    record: dict[str, Any]
    version: int = 1  # bumped on every change; ``written`` is the version last persisted
    written: int = 0
    conn_lease: int = 0  # the lease the conn key was last written with

    @property
    def dirty(self) -> bool:
        return self.version != self.written

    def touch(self) -> None:
        self.version += 1

    persisted_ms: int = 0
    status_key: tuple[Any, ...] = field(default=(0, 0, 0, 0))


class NodeView:
    """Every node of the cluster as seen through this replica's etcd watch."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.records: dict[str, dict[str, Any]] = {}
        self.conns: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, dict[str, Any]] = {}
        # names whose directory entry (addresses, labels) may have changed since the
        # last take_directory_changes(), and the newest etcd revision seen
        self.dir_dirty: set[str] = set()
        self.revision = 0
        # Node records this replica has just written, by key: (bytes, record).  When the
        # watch brings the same bytes back, the record is taken as is instead of parsed
        # again — with 5,000 acks per push that is 5,000 ``json.loads`` saved, and the
        # record shares its strings with the registry's copy.
        self._echo: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._conn_values: dict[bytes, dict[str, Any]] = {}

    def expect(self, key: str, data: bytes, record: dict[str, Any]) -> None:
        """``record`` (never mutated afterwards) is about to be written as ``data``."""
        self._echo[key] = (data, record)

    @property
    def directory_changed(self) -> bool:
        return bool(self.dir_dirty)

    def load(
        self, nodes: list[tuple[str, bytes]], conns: list[tuple[str, bytes]], revision: int = 0
    ) -> None:
        """Everything again (a resync): every name before and after may have changed;
        the directory feed sends only what did."""
        self.dir_dirty.update(self.records)
        self.records.clear()
        self.conns.clear()
        self._echo.clear()
        for key, value in nodes:
            self.apply(WatchEvent(key, value, revision))
        for key, value in conns:
            self.apply(WatchEvent(key, value, revision))

    def take_directory_changes(self) -> dict[str, types_pb2.NodeEntry | None]:
        """The entries of the names changed since the last call (None: removed)."""
        out: dict[str, types_pb2.NodeEntry | None] = {}
        for name in self.dir_dirty:
            rec = self.records.get(name)
            out[name] = None if rec is None else _entry(name, rec)
        self.dir_dirty.clear()
        return out

    def apply(self, event: WatchEvent) -> None:
        key = event.key
        if event.mod_revision > self.revision:
            self.revision = event.mod_revision
        if key.startswith(self.keys.nodes):
            name = key[len(self.keys.nodes) :]
            old = self.records.get(name)
            echo = self._echo.pop(key, None)
            if event.value is None:
                if self.records.pop(name, None) is not None:
                    self.dir_dirty.add(name)
                return
            if echo is not None and echo[0] == event.value:
                rec = echo[1]  # our own write coming back: same bytes, same record
            else:
                try:
                    rec = json.loads(event.value)
                except ValueError:
                    _log.warning("ignoring malformed node record %s", key)
                    return
            self.records[name] = rec
            if old is None or _entry_key(old) != _entry_key(rec):
                self.dir_dirty.add(name)
        elif key.startswith(self.keys.conns):
            name = key[len(self.keys.conns) :]
            if event.value is None:
                self.conns.pop(name, None)
            else:
                # every node of a replica has the same value: one shared (read-only) dict
                conn = self._conn_values.get(event.value)
                if conn is None:
                    if len(self._conn_values) > 64:
                        self._conn_values.clear()
                    conn = self._conn_values[event.value] = json.loads(event.value)
                self.conns[name] = conn
        elif key.startswith(self.keys.replicas):
            rid = key[len(self.keys.replicas) :]
            if event.value is None:
                self.replicas.pop(rid, None)
            else:
                self.replicas[rid] = json.loads(event.value)

    def directory(self) -> list[types_pb2.NodeEntry]:
        return [_entry(name, rec) for name, rec in sorted(self.records.items())]

    def node_info(self, name: str, live: dict[str, int]) -> status_pb2.NodeInfo | None:
        rec = self.records.get(name)
        if rec is None:
            return None
        conn = self.conns.get(name)
        st = rec.get("status") or {}
        return status_pb2.NodeInfo(
            name=name,
            addresses=rec.get("addresses", []),
            labels=rec.get("labels", {}),
            connected=conn is not None,
            controller=(conn or {}).get("replica", ""),
            status=types_pb2.NodeStatus(**st),
            last_seen_unix_ms=max(int(rec.get("last_seen_unix_ms", 0)), live.get(name, 0)),
        )


def _entry(name: str, rec: dict[str, Any]) -> types_pb2.NodeEntry:
    return types_pb2.NodeEntry(
        name=name, addresses=rec.get("addresses", []), labels=rec.get("labels", {})
    )


def _copy_record(rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    for key in ("status", "labels", "gate"):
        if key in out:
            out[key] = dict(out[key])
    return out


def _entry_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(rec.get("addresses", [])), tuple(sorted(rec.get("labels", {}).items())))


class Registry:
    """This replica's writes to the node registry (batched, see module docstring)."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        replica_id: str,
        address: str,
        *,
        touch_interval: float,
        view: NodeView | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.keys = keys
        self.replica_id = replica_id
        self.address = address
        self.touch_interval_ms = int(touch_interval * 1000)
        self.local: dict[str, LocalNode] = {}
        self.last_seen: dict[str, int] = {}
        self.conn_deletes: set[str] = set()
        self._pending_final: list[dict[str, Any]] = []

    def connected(self, hello: agent_pb2.Hello, previous: dict[str, Any] | None) -> None:
        now = _now_ms()
        record: dict[str, Any] = {
            "name": hello.node,
            "addresses": list(hello.addresses),
            "labels": dict(hello.labels),
            "capabilities": list(hello.capabilities),
            "status": dict((previous or {}).get("status") or {}),
            "gate": dict((previous or {}).get("gate") or {}),
            "last_seen_unix_ms": now,
            "controller": self.replica_id,
        }
        self.local[hello.node] = LocalNode(record)
        self.last_seen[hello.node] = now
        self.conn_deletes.discard(hello.node)

    def seen(self, node: str) -> None:
        self.last_seen[node] = _now_ms()

    def reported(self, node: str, status: types_pb2.NodeStatus) -> None:
        local = self.local.get(node)
        if local is None:
            return
        now = _now_ms()
        self.last_seen[node] = now
        if not status.reported_unix_ms:
            status.reported_unix_ms = now
        gate = (
            gate_to_dict(status.revision_health)
            if status.HasField("revision_health")
            else local.record.get("gate")
        )
        key = (
            status.applied_revision,
            int(status.health),
            status.ike_sas,
            status.child_sas,
            *_gate_key(gate),
        )
        local.record["status"] = status_to_dict(status)
        if gate:
            local.record["gate"] = gate
        local.record["last_seen_unix_ms"] = now
        if key != local.status_key or now - local.persisted_ms > self.touch_interval_ms:
            local.status_key = key
            local.touch()

    def acked(self, node: str, ack: agent_pb2.Ack) -> None:
        local = self.local.get(node)
        if local is None:
            return
        now = _now_ms()
        st = local.record["status"]
        if ack.ok:
            st["applied_revision"] = ack.revision
            if st.get("health", 0) in (types_pb2.HEALTH_UNSPECIFIED, types_pb2.HEALTH_FAILING):
                st["health"] = int(types_pb2.HEALTH_OK)
                st["detail"] = ""
        else:
            st["health"] = int(types_pb2.HEALTH_FAILING)
            st["detail"] = f"revision {ack.revision} not applied: {ack.error}"
            gate = dict(local.record.get("gate") or {})
            gate.update(refused=ack.revision, refused_error=ack.error[:500])
            local.record["gate"] = gate
        st["reported_unix_ms"] = now
        self.last_seen[node] = now
        local.record["last_seen_unix_ms"] = now
        local.status_key = (
            int(st.get("applied_revision", 0)),
            int(st.get("health", 0)),
            int(st.get("ike_sas", 0)),
            int(st.get("child_sas", 0)),
            *_gate_key(local.record.get("gate")),
        )
        local.touch()

    def forget(self, node: str) -> None:
        """The node was removed (ipsecctl node remove): nothing more is written for it."""
        self.local.pop(node, None)
        self.last_seen.pop(node, None)
        self._pending_final = [r for r in self._pending_final if r.get("name") != node]

    def disconnected(self, node: str, *, final: bool = True) -> None:
        local = self.local.pop(node, None)
        if not final:
            self.last_seen.pop(node, None)
        elif local is not None:
            local.record["last_seen_unix_ms"] = self.last_seen.pop(node, _now_ms())
            self._pending_final.append(local.record)
        self.conn_deletes.add(node)

    async def flush(self, lease: int) -> int:
        """Write what changed; returns the number of keys written or deleted."""
        now = _now_ms()
        conns: list[tuple[str, bytes]] = []
        finals, self._pending_final = self._pending_final, []
        written: list[tuple[str, dict[str, Any]]] = [(self.keys.node(r["name"]), r) for r in finals]
        conn_value = json.dumps({"replica": self.replica_id, "address": self.address}).encode()
        taken: list[tuple[LocalNode, int]] = []
        for name, local in self.local.items():
            if local.dirty:
                local.record["last_seen_unix_ms"] = self.last_seen.get(name, now)
                written.append((self.keys.node(name), _copy_record(local.record)))
                taken.append((local, local.version))
            if lease and local.conn_lease != lease:  # new stream, or a new replica lease
                conns.append((self.keys.conn(name), conn_value))
        written = list(dict(written).items())  # one write per key: the newest record wins
        records = [(key, json.dumps(rec).encode()) for key, rec in written]
        if self.view is not None:
            for (key, rec), (_, data) in zip(written, records, strict=True):
                self.view.expect(key, data, rec)
        deletes = sorted(self.conn_deletes)
        if self.view is not None:  # the node may have moved to another replica meanwhile
            mine = (None, self.replica_id)
            moved = [n for n in deletes if self.view.conns.get(n, {}).get("replica") not in mine]
            self.conn_deletes.difference_update(moved)
            deletes = [n for n in deletes if n not in moved]
        try:
            if records:
                await self.store.put_many(records)
            if conns:
                await self.store.put_many(conns, lease=lease)
            if deletes:
                await self.store.delete_many([self.keys.conn(n) for n in deletes])
        except StoreUnavailable:
            self._pending_final = finals + self._pending_final
            raise
        for local, version in taken:  # changes made while we awaited stay dirty
            local.written = version
            local.persisted_ms = now
        if conns:
            for name, _ in conns:
                node = self.local.get(name[len(self.keys.conns) :])
                if node is not None:
                    node.conn_lease = lease
        self.conn_deletes.difference_update(deletes)
        return len(records) + len(conns) + len(deletes)
