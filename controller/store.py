"""The ``Store`` seam: what the controller needs from etcd, and an in-memory fake.

The controller is the only etcd client.  Everything it keeps there goes through this
small protocol:

* ``get`` / ``get_prefix`` / ``put`` / ``put_many`` / ``delete`` for plain keys (node
  records, replica records);
* ``compare_and_swap`` — the one transaction the revision history needs: write the new
  revision key and move the ``current`` pointer only if ``current`` still holds the
  expected value and the new revision key does not exist yet.  Callers only ever move
  a pointer forward (never back to a value it held), which is what lets an
  implementation that lost the answer to a compare-and-swap read back whether it was
  applied (:mod:`controller.etcd_store`);
* ``create_if_absent`` — leader election (a key bound to a lease);
* leases (``grant_lease``, ``refresh_lease``, ``revoke_lease``) for liveness;
* ``watch_prefix`` — a prefix watch starting at a store revision, yielding batches of
  events; it survives store restarts and raises :class:`StoreCompacted` when the start
  revision is gone;
* ``compact`` — drop MVCC history (done by the leader).

:class:`MemoryStore` is a fake for unit tests.  The same contract checks
(``tests/unit/controller/store_contract.py``) run against it and against real etcd
(``tests/integration/controller/test_store_etcd.py``), so the fake cannot drift.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.errors import StoreCompacted, StoreUnavailable

__all__ = ["KeyValue", "MemoryStore", "Store", "WatchEvent"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as read from the store."""

    key: str
    value: bytes
    mod_revision: int  # store (MVCC) revision of the last write to this key


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch.  ``value`` is None when the key was deleted."""

    key: str
    value: bytes | None
    mod_revision: int


class Store(Protocol):
    """The controller's needs from etcd (see the module docstring)."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False, below: str | None = None
    ) -> tuple[list[KeyValue], int]:
        """Keys under ``prefix`` (and, with ``below``, lower than that key) sorted by key,
        at most ``limit`` of them (0: all), and the store revision of the read."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int: ...

    async def put_many(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def delete_many(self, keys: Sequence[str]) -> None: ...

    async def compare_and_swap(
        self,
        pointer: str,
        expected: bytes | None,
        new_pointer_value: bytes,
        writes: Sequence[tuple[str, bytes]],
    ) -> bool:
        """Atomically: if ``pointer`` holds ``expected`` (None: absent) and none of the
        ``writes`` keys exist, write them and set ``pointer``.  False when it lost."""
        ...

    async def create_if_absent(self, key: str, value: bytes, *, lease: int) -> bool: ...

    async def grant_lease(self, ttl: int) -> int: ...

    async def refresh_lease(self, lease: int) -> bool:
        """Keep ``lease`` alive; False when it has expired (its keys are gone)."""
        ...

    async def revoke_lease(self, lease: int) -> None: ...

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]: ...

    async def compact(self, revision: int) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-memory :class:`Store` for unit tests (single process, no persistence)."""

    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._key_lease: dict[str, int] = {}
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self._lease_ids = itertools.count(0x1000)
        self._revision = 1
        self._compacted = 0
        self._history: list[WatchEvent] = []
        self._watchers: list[tuple[str, asyncio.Queue[list[WatchEvent]]]] = []
        self.available = True  # tests flip this to simulate an outage

    # -- helpers --------------------------------------------------------------------
    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("memory store is marked unavailable (test outage)")
        now = time.monotonic()
        for lease, (_ttl, deadline) in list(self._leases.items()):
            if deadline < now:
                self._drop_lease(lease)

    def _drop_lease(self, lease: int) -> None:
        self._leases.pop(lease, None)
        gone = [k for k, lid in self._key_lease.items() if lid == lease]
        if gone:
            self._revision += 1
            self._emit([self._del(k) for k in gone])

    def _del(self, key: str) -> WatchEvent:
        self._data.pop(key, None)
        self._key_lease.pop(key, None)
        return WatchEvent(key, None, self._revision)

    def _set(self, key: str, value: bytes, lease: int) -> WatchEvent:
        if lease and lease not in self._leases:
            raise StoreUnavailable(f"lease {lease:x} not found (expired?)")
        self._data[key] = KeyValue(key, bytes(value), self._revision)
        if lease:
            self._key_lease[key] = lease
        else:
            self._key_lease.pop(key, None)
        return WatchEvent(key, bytes(value), self._revision)

    def _emit(self, events: list[WatchEvent]) -> None:
        self._history.extend(events)
        for prefix, queue in self._watchers:
            mine = [e for e in events if e.key.startswith(prefix)]
            if mine:
                queue.put_nowait(mine)

    # -- Store ------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return self._data.get(key)

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False, below: str | None = None
    ) -> tuple[list[KeyValue], int]:
        self._check()
        keys = sorted(
            (k for k in self._data if k.startswith(prefix) and (below is None or k < below)),
            reverse=descending,
        )
        if limit:
            keys = keys[:limit]
        return [self._data[k] for k in keys], self._revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check()
        self._revision += 1
        self._emit([self._set(key, value, lease)])
        return self._revision

    async def put_many(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> None:
        self._check()
        if not items:
            return
        self._revision += 1
        self._emit([self._set(k, v, lease) for k, v in items])

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._check()
        present = [k for k in keys if k in self._data]
        if present:
            self._revision += 1
            self._emit([self._del(k) for k in present])

    async def compare_and_swap(
        self,
        pointer: str,
        expected: bytes | None,
        new_pointer_value: bytes,
        writes: Sequence[tuple[str, bytes]],
    ) -> bool:
        self._check()
        await asyncio.sleep(0)  # let concurrent callers interleave, as over a network
        self._check()
        have = self._data.get(pointer)
        if (have.value if have else None) != expected:
            return False
        if any(k in self._data for k, _ in writes):
            return False
        self._revision += 1
        events = [self._set(k, v, 0) for k, v in writes]
        events.append(self._set(pointer, new_pointer_value, 0))
        self._emit(events)
        return True

    async def create_if_absent(self, key: str, value: bytes, *, lease: int) -> bool:
        self._check()
        if key in self._data:
            return False
        self._revision += 1
        self._emit([self._set(key, value, lease)])
        return True

    async def grant_lease(self, ttl: int) -> int:
        self._check()
        lease = next(self._lease_ids)
        self._leases[lease] = (ttl, time.monotonic() + ttl)
        return lease

    async def refresh_lease(self, lease: int) -> bool:
        self._check()
        if lease not in self._leases:
            return False
        ttl, _ = self._leases[lease]
        self._leases[lease] = (ttl, time.monotonic() + ttl)
        return True

    async def revoke_lease(self, lease: int) -> None:
        self._check()
        self._drop_lease(lease)

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        self._check()
        if start_revision and start_revision <= self._compacted:
            raise StoreCompacted(
                f"revision {start_revision} is compacted (oldest kept: {self._compacted + 1})"
            )
        queue: asyncio.Queue[list[WatchEvent]] = asyncio.Queue()
        backlog = [
            e
            for e in self._history
            if e.key.startswith(prefix) and e.mod_revision >= start_revision
        ]
        if start_revision and backlog:
            queue.put_nowait(backlog)
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(entry)

    async def compact(self, revision: int) -> None:
        self._check()
        self._compacted = max(self._compacted, revision)
        self._history = [e for e in self._history if e.mod_revision > revision]

    async def close(self) -> None:
        return None
