"""The Store contract against real etcd (Debian etcd-server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from controller.embedded_etcd import EtcdProcess
from controller.errors import StoreUnavailable
from controller.etcd_store import EtcdStore, parse_endpoints, parse_urls
from tests.support.aio import run_async
from tests.support.etcd import unique_prefix
from tests.unit.controller.store_contract import ALL_CHECKS


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_contract(check, etcd_session: EtcdProcess) -> None:  # type: ignore[no-untyped-def]
    @run_async(30)
    async def body() -> None:
        store = await EtcdStore.connect(etcd_session.url, tls=etcd_session.client_tls())
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
    urls = parse_urls("https://localhost:2379,https://127.0.0.1")
    assert urls.endpoints == ("127.0.0.1:2379", "127.0.0.1:2379")
    assert urls.hosts == ("localhost", "127.0.0.1") and urls.scheme == "https"
    assert urls.server_name() is None  # two names: --etcd-server-name decides
    assert parse_urls("127.0.0.1:1,127.0.0.1:2").server_name() == "127.0.0.1"
    assert parse_urls("127.0.0.1:1").scheme is None
    with pytest.raises(ValueError, match="mix http:// and https://"):
        parse_urls("https://127.0.0.1:2379,http://127.0.0.1:2380")
    with pytest.raises(ValueError, match="http:// or https://, not unix://"):
        parse_urls("unix://127.0.0.1:2379")
