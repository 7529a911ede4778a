"""The Store contract against the in-memory fake (the same checks run on real etcd in
tests/integration/controller/test_store_etcd.py)."""

from __future__ import annotations

import pytest

from controller.errors import StoreUnavailable
from controller.store import MemoryStore
from tests.support.aio import run_async
from tests.unit.controller.store_contract import ALL_CHECKS


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_contract(check) -> None:  # type: ignore[no-untyped-def]
    @run_async(20)
    async def body() -> None:
        await check(MemoryStore(), "/t/")

    body()


@run_async(5)
async def test_outage_raises_store_unavailable() -> None:
    store = MemoryStore()
    store.available = False
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await store.get("/x")
