"""The Store contract: run against MemoryStore (unit) and real etcd (integration).

Each check takes a store and a key prefix unique to the test.
"""

from __future__ import annotations

import asyncio

from controller.errors import StoreCompacted
from controller.store import Store, WatchEvent


async def check_put_get_prefix(store: Store, p: str) -> None:
    assert await store.get(f"{p}missing") is None
    await store.put(f"{p}a/1", b"one")
    await store.put_many([(f"{p}a/2", b"two"), (f"{p}a/3", b"three"), (f"{p}b", b"bee")])
    kv = await store.get(f"{p}a/2")
    assert kv is not None and kv.value == b"two" and kv.mod_revision > 0
    kvs, rev = await store.get_prefix(f"{p}a/")
    assert [k.key for k in kvs] == [f"{p}a/1", f"{p}a/2", f"{p}a/3"]
    assert rev >= kv.mod_revision
    newest, _ = await store.get_prefix(f"{p}a/", limit=2, descending=True)
    assert [k.value for k in newest] == [b"three", b"two"]
    await store.delete_many([f"{p}a/1", f"{p}a/3"])
    kvs, _ = await store.get_prefix(f"{p}a/")
    assert [k.value for k in kvs] == [b"two"]
    await store.delete(f"{p}a/2")
    assert await store.get(f"{p}a/2") is None


async def check_prefix_pages(store: Store, p: str) -> None:
    await store.put_many([(f"{p}r/{i:02d}", str(i).encode()) for i in range(1, 8)])
    page, _ = await store.get_prefix(f"{p}r/", limit=3, descending=True)
    assert [kv.value for kv in page] == [b"7", b"6", b"5"]
    page, _ = await store.get_prefix(f"{p}r/", limit=3, descending=True, below=page[-1].key)
    assert [kv.value for kv in page] == [b"4", b"3", b"2"]
    page, _ = await store.get_prefix(f"{p}r/", limit=3, descending=True, below=page[-1].key)
    assert [kv.value for kv in page] == [b"1"]
    page, _ = await store.get_prefix(f"{p}r/", below=f"{p}r/03")
    assert [kv.value for kv in page] == [b"1", b"2"]


async def check_cas_exactly_one_wins(store: Store, p: str) -> None:
    ptr = f"{p}current"
    assert await store.compare_and_swap(ptr, None, b"1", [(f"{p}rev/1", b"r1")])
    # same base twice, concurrently: exactly one wins
    results = await asyncio.gather(
        store.compare_and_swap(ptr, b"1", b"2", [(f"{p}rev/2", b"from-a")]),
        store.compare_and_swap(ptr, b"1", b"2", [(f"{p}rev/2", b"from-b")]),
    )
    assert sorted(results) == [False, True]
    cur = await store.get(ptr)
    rev2 = await store.get(f"{p}rev/2")
    assert cur is not None and cur.value == b"2"
    assert rev2 is not None and rev2.value == (b"from-a" if results[0] else b"from-b")
    # a stale base loses and writes nothing
    assert not await store.compare_and_swap(ptr, b"1", b"3", [(f"{p}rev/3", b"x")])
    assert await store.get(f"{p}rev/3") is None
    # an existing revision key is never overwritten, even with the right base
    assert not await store.compare_and_swap(ptr, b"2", b"2", [(f"{p}rev/1", b"overwrite")])
    r1 = await store.get(f"{p}rev/1")
    assert r1 is not None and r1.value == b"r1"
    # absent pointer: expected None; present pointer with expected None loses
    assert not await store.compare_and_swap(ptr, None, b"9", [(f"{p}rev/9", b"x")])


async def check_leases_and_election(store: Store, p: str) -> None:
    lease_a = await store.grant_lease(5)
    lease_b = await store.grant_lease(5)
    assert await store.create_if_absent(f"{p}leader", b"a", lease=lease_a)
    assert not await store.create_if_absent(f"{p}leader", b"b", lease=lease_b)
    await store.put(f"{p}conn/n1", b"a", lease=lease_a)
    assert await store.refresh_lease(lease_a)
    await store.revoke_lease(lease_a)
    assert await store.get(f"{p}leader") is None
    assert await store.get(f"{p}conn/n1") is None
    assert not await store.refresh_lease(lease_a)
    assert await store.create_if_absent(f"{p}leader", b"b", lease=lease_b)
    await store.revoke_lease(lease_b)


async def check_watch_from_revision(store: Store, p: str) -> None:
    first = await store.put(f"{p}w/1", b"one")
    await store.put(f"{p}w/2", b"two")
    await store.put(f"{p}other", b"not watched")
    got: list[WatchEvent] = []

    async def watch() -> None:
        async for batch in store.watch_prefix(f"{p}w/", first):
            got.extend(batch)
            if any(e.value is None for e in batch):
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await store.put(f"{p}w/3", b"three")
    await store.delete(f"{p}w/1")
    await asyncio.wait_for(task, 10)
    assert [(e.key, e.value) for e in got] == [
        (f"{p}w/1", b"one"),
        (f"{p}w/2", b"two"),
        (f"{p}w/3", b"three"),
        (f"{p}w/1", None),
    ]
    revisions = [e.mod_revision for e in got]
    assert revisions == sorted(revisions)


async def check_watch_compacted(store: Store, p: str) -> None:
    first = await store.put(f"{p}c/1", b"one")
    last = await store.put(f"{p}c/1", b"two")
    await store.compact(last)
    try:
        async for _ in store.watch_prefix(f"{p}c/", first):
            raise AssertionError("a compacted start revision must not yield events")
    except StoreCompacted as exc:
        assert str(first) in str(exc)
    else:
        raise AssertionError("watch from a compacted revision did not raise StoreCompacted")


ALL_CHECKS = [
    check_put_get_prefix,
    check_prefix_pages,
    check_cas_exactly_one_wins,
    check_leases_and_election,
    check_watch_from_revision,
    check_watch_compacted,
]
