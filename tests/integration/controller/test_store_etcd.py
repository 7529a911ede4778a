"""The Store contract against real etcd (Debian etcd-server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from controller.embedded_etcd import EtcdProcess
from controller.errors import StoreUnavailable
from controller.etcd_store import EtcdStore, parse_endpoints
from tests.support.aio import run_async
from tests.support.etcd import unique_prefix
from tests.unit.controller.store_contract import ALL_CHECKS


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_contract(check, etcd_session: EtcdProcess) -> None:  # type: ignore[no-untyped-def]
    @run_async(30)
    async def body() -> None:
        store = await EtcdStore.connect(etcd_session.url)
        try:
            await check(store, unique_prefix())
        finally:
            await store.close()

    body()


@run_async(30)
async def test_unreachable_etcd_is_one_clear_error() -> None:
    from controller.embedded_etcd import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as info:
        await EtcdStore.connect(url, timeout=1.0)
    message = str(info.value)
    assert url.removeprefix("http://") in message and "--etcd" in message
    assert "\n" not in message


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://127.0.0.1:2379, localhost:2380") == [
        "127.0.0.1:2379",
        "127.0.0.1:2380",
    ]
    with pytest.raises(ValueError, match="IPv6"):
        parse_endpoints("http://[::1]:2379")
    with pytest.raises(ValueError, match="only http"):
        parse_endpoints("https://127.0.0.1:2379")
