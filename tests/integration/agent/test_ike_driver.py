"""The asyncio IKE driver over real UDP sockets: two drivers in two namespaces.

Both sides are our engine (``agent.ike_driver.IkeDriver``, handshake only: the host
kernel has no ESP).  What is checked here is the driver's own work: sockets on 500 and
4500 with the non-ESP marker, demultiplexing by SPI, the timer loop, the bypass
policy that lets IKE through a blocking host default policy.  The kernel states of a
negotiated CHILD SA are the writer's (tests/unit/agent/test_writer.py, and the kernel
lab).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
from collections.abc import Iterator

import pytest

from agent.ike_driver import RECEIVE_BUFFER, IkeDriver, IkeDriverError
from ipsecd.ike.config import (
    ChildConfig,
    Identity,
    IkeConfig,
    Mode,
    RetransmitConfig,
    parse_child_proposal,
    parse_ike_proposal,
    selectors,
)
from ipsecd.ike.constants import EncrId, NotifyType
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from tests.support.aio import run_async
from tests.support.netns import Netns, netns_pair

PREFIX = "iki-"
PSK = b"driver-test-psk-0123456789"


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair(PREFIX) as p:
        yield p


def config(
    side: str,
    *,
    ike: str = "aes256gcm16-prfsha384-ecp384",
    esp: str = "aes256gcm16",
    psk: bytes = PSK,
    v6: bool = False,
    mode: Mode = Mode.TUNNEL,
    force_encap: bool = False,
) -> IkeConfig:
    """Side "a" (192.0.2.1 / fd00::1) or "b" (192.0.2.2 / fd00::2) of one connection."""
    me, peer = ("a", "b") if side == "a" else ("b", "a")
    addr = {"a": "fd00::1", "b": "fd00::2"} if v6 else {"a": "192.0.2.1", "b": "192.0.2.2"}
    inner = (
        {"a": "fd00:1::1/128", "b": "fd00:2::1/128"}
        if v6
        else {"a": "198.51.100.1/32", "b": "198.51.100.2/32"}
    )
    return IkeConfig(
        name="drv",
        local_id=Identity.fqdn(f"{me}.test"),
        remote_id=Identity.fqdn(f"{peer}.test"),
        psk=psk,
        child=ChildConfig(
            local_ts=selectors([inner[me]]),
            remote_ts=selectors([inner[peer]]),
            mode=mode,
            proposals=(parse_child_proposal(esp),),
        ),
        ike_proposals=(parse_ike_proposal(ike),),
        local_address=addr[me],
        remote_address=addr[peer],
        retransmit=RetransmitConfig(timeout=0.5, base=1.5, max_retransmits=3),
        force_encapsulation=force_encap,
    )


async def handshake(
    a: Netns, b: Netns, cfg_a: IkeConfig, cfg_b: IkeConfig
) -> tuple[list[object], list[object], IkeDriver, IkeDriver]:
    async with (
        IkeDriver([cfg_a], netns=a.name) as da,
        IkeDriver([cfg_b], netns=b.name) as db,
    ):
        da.initiate("drv")
        ev_a = [await da.wait_for(IkeSaEstablished), await da.wait_for(ChildSaEstablished)]
        ev_b = [await db.wait_for(IkeSaEstablished), await db.wait_for(ChildSaEstablished)]
        return ev_a, ev_b, da, db


def check_pair(ev_a: list[object], ev_b: list[object]) -> tuple[object, object]:
    ike_a, child_a = ev_a
    ike_b, child_b = ev_b
    assert isinstance(ike_a, IkeSaEstablished) and isinstance(ike_b, IkeSaEstablished)
    assert isinstance(child_a, ChildSaEstablished) and isinstance(child_b, ChildSaEstablished)
    assert ike_a.initiator and not ike_b.initiator
    assert (ike_a.spi_i, ike_a.spi_r) == (ike_b.spi_i, ike_b.spi_r)
    assert child_a.inbound_spi == child_b.outbound_spi
    assert child_a.outbound_spi == child_b.inbound_spi
    assert child_a.inbound_encryption_key == child_b.outbound_encryption_key
    assert child_a.encr_id == child_b.encr_id and child_a.integ_id == child_b.integ_id
    return child_a, child_b


@pytest.mark.parametrize(
    ("ike", "esp", "encr_id"),
    [
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16", EncrId.AES_GCM_16),
        ("aes256-sha256-modp2048", "aes256-sha256", EncrId.AES_CBC),
        ("chacha20poly1305-prfsha256-curve25519", "chacha20poly1305",
         EncrId.CHACHA20_POLY1305),
    ],
)  # fmt: skip
@run_async(60)
async def test_handshake_over_udp_500(
    pair: tuple[Netns, Netns], ike: str, esp: str, encr_id: int
) -> None:
    a, b = pair
    ev_a, ev_b, da, db = await handshake(
        a, b, config("a", ike=ike, esp=esp), config("b", ike=ike, esp=esp)
    )
    child_a, _ = check_pair(ev_a, ev_b)
    assert isinstance(child_a, ChildSaEstablished)
    assert child_a.encr_id == encr_id
    assert not child_a.encapsulation
    ike_a = ev_a[0]
    assert isinstance(ike_a, IkeSaEstablished)
    assert ike_a.local_addr == ("192.0.2.1", 500) and ike_a.remote_addr == ("192.0.2.2", 500)
    for drv in (da, db):
        stats = drv.endpoint.stats
        assert stats.not_ike == stats.unknown_spi == stats.refused == drv.overruns == 0


@run_async(30)
async def test_ike_sockets_have_a_receive_buffer_for_floods(pair: tuple[Netns, Netns]) -> None:
    """Every IKE socket (500 and 4500, IPv4 and IPv6) holds RECEIVE_BUFFER, beyond
    net.core.rmem_max (the kernel reports twice what was set, its bookkeeping
    included): a flood is queued, not dropped, between two batches of the worker."""
    a, _b = pair
    async with IkeDriver([config("a")], netns=a.name) as drv:
        assert len(drv._socks) == 4
        for sock in drv._socks.values():
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= RECEIVE_BUFFER


@run_async(60)
async def test_forced_encapsulation_floats_to_4500_with_marker(
    pair: tuple[Netns, Netns],
) -> None:
    a, b = pair
    ev_a, ev_b, _, _ = await handshake(
        a, b, config("a", force_encap=True), config("b", force_encap=True)
    )
    child_a, child_b = check_pair(ev_a, ev_b)
    assert isinstance(child_a, ChildSaEstablished) and isinstance(child_b, ChildSaEstablished)
    ike_a = ev_a[0]
    assert isinstance(ike_a, IkeSaEstablished)
    # IKE_AUTH went over the 4500 sockets (RFC 7296 2.23)
    assert ike_a.local_addr == ("192.0.2.1", 4500) and ike_a.remote_addr == ("192.0.2.2", 4500)
    assert child_a.encapsulation and child_b.encapsulation
    assert (child_a.encap_local_port, child_a.encap_remote_port) == (4500, 4500)


@run_async(60)
async def test_ipv6_handshake(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    ev_a, ev_b, _, _ = await handshake(a, b, config("a", v6=True), config("b", v6=True))
    child_a, _ = check_pair(ev_a, ev_b)
    assert isinstance(child_a, ChildSaEstablished)
    assert child_a.local_address == "fd00::1" and child_a.remote_address == "fd00::2"


@run_async(60)
async def test_many_concurrent_sas_are_demultiplexed_by_spi(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    count = 6
    async with (
        IkeDriver([config("a")], netns=a.name) as da,
        IkeDriver([config("b")], netns=b.name) as db,
    ):
        sas = [da.initiate("drv") for _ in range(count)]
        got_a = [await da.wait_for(ChildSaEstablished) for _ in range(count)]
        got_b = [await db.wait_for(ChildSaEstablished) for _ in range(count)]
        assert len({sa.spi_i for sa in sas}) == count
        assert all(sa.established for sa in sas)
        assert {c.inbound_spi for c in got_a} == {c.outbound_spi for c in got_b}
        assert {c.ike_spi_i for c in got_b} == {sa.spi_i for sa in sas}
        assert len(db.sas) == count


@run_async(60)
async def test_wrong_psk_fails_on_both_sides(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    async with (
        IkeDriver([config("a")], netns=a.name) as da,
        IkeDriver([config("b", psk=b"another-psk-0123456789")], netns=b.name) as db,
    ):
        da.initiate("drv")
        fail_b = await db.wait_for(IkeSaFailed)
        fail_a = await da.wait_for(IkeSaFailed)
        assert fail_b.notify == NotifyType.AUTHENTICATION_FAILED
        assert fail_a.notify == NotifyType.AUTHENTICATION_FAILED
        assert da.sas == [] and db.sas == []
        # nothing about the keys leaks into the failure
        assert "another-psk" not in repr(fail_a) + repr(fail_b) + str(db.configs)


@run_async(60)
async def test_bypass_policy_lets_ike_through_a_blocking_default(
    pair: tuple[Netns, Netns],
) -> None:
    a, b = pair
    for ns in (a, b):
        ns.run(["ip", "xfrm", "policy", "setdefault", "in", "block", "fwd", "block",
                "out", "block"])  # fmt: skip

    def plain_send() -> int:
        # A socket without the bypass policy is blocked (the control for this test).
        with a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", ("192.0.2.2", 9))
            except OSError as exc:
                return exc.errno or 0
        return 0

    assert plain_send() == errno.EPERM
    ev_a, ev_b, _, _ = await handshake(a, b, config("a"), config("b"))
    check_pair(ev_a, ev_b)


@run_async(30)
async def test_port_in_use_is_a_clear_error(pair: tuple[Netns, Netns]) -> None:
    a, _ = pair
    async with IkeDriver([config("a")], netns=a.name):
        with pytest.raises(IkeDriverError, match=r"cannot bind the IKE socket .*:500 .*another"):
            await IkeDriver([config("a")], netns=a.name).start()


@run_async(30)
async def test_initiate_unknown_connection_is_a_clear_error(pair: tuple[Netns, Netns]) -> None:
    a, _ = pair
    async with IkeDriver([config("a")], netns=a.name) as da:
        with pytest.raises(IkeDriverError, match="no connection named 'nope'; known: drv"):
            da.initiate("nope")


@run_async(60)
async def test_no_key_material_in_logs(
    pair: tuple[Netns, Netns], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    caplog.set_level(logging.DEBUG)
    ev_a, ev_b, _, _ = await handshake(a, b, config("a"), config("b"))
    child_a, _ = check_pair(ev_a, ev_b)
    assert isinstance(child_a, ChildSaEstablished)
    assert caplog.records, "the driver and engine log at DEBUG; nothing was captured"
    text = caplog.text + repr(child_a) + repr(ev_a[0])
    for key in (child_a.inbound_encryption_key, child_a.outbound_encryption_key):
        assert key.hex() not in text and repr(key) not in text
    assert PSK.decode() not in text


@run_async(60)
async def test_retransmission_reaches_a_late_responder(pair: tuple[Netns, Netns]) -> None:
    """The timer loop resends the lost IKE_SA_INIT request (RFC 7296 2.1)."""
    a, b = pair
    async with IkeDriver([config("a")], netns=a.name) as da:
        sa = da.initiate("drv")
        await asyncio.sleep(0.2)  # the first request finds no responder socket: lost
        assert not sa.established
        async with IkeDriver([config("b")], netns=b.name) as db:
            child = await da.wait_for(ChildSaEstablished, timeout=15)
            peer_child = await db.wait_for(ChildSaEstablished, timeout=5)
            assert child.inbound_spi == peer_child.outbound_spi


@run_async(60)
async def test_silent_peer_gives_up_after_retransmissions(pair: tuple[Netns, Netns]) -> None:
    a, _ = pair
    quick = RetransmitConfig(timeout=0.2, base=1.5, max_retransmits=2)
    cfg = dataclasses.replace(config("a"), retransmit=quick)
    async with IkeDriver([cfg], netns=a.name) as da:
        da.initiate("drv")
        failed = await da.wait_for(IkeSaFailed, timeout=15)
        assert failed.notify is None and "retransmi" in failed.reason
        assert da.sas == []
