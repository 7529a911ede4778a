"""Our IKE driver against strongSwan charon on the host: handshakes only.

charon runs with kernel-libipsec (userspace ESP) because the host kernel has no ESP;
our driver installs nothing in the kernel (the agent would).  charon then fakes NAT
detection, so every IKE_AUTH here travels over port 4500 with the non-ESP marker and
the CHILD SAs are UDP-encapsulated; libipsec only does tunnel mode (transport is refused with
NO_PROPOSAL_CHOSEN), so all cases are tunnel mode.  Transport mode and traffic are
covered in the kernel lab (tests/kernel/test_ike_charon.py).

After each handshake charon's own view (vici ``list-sas``) must agree with our events
on the IKE and ESP SPIs, the algorithms, the selectors and who initiated.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.ike_driver import IkeDriver
from ipsecd.ike.config import RetransmitConfig
from ipsecd.ike.constants import EncrId, NotifyType
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from tests.interop.conftest import CHARON_INNER, CHARON_IP, OURS_INNER, OURS_IP, Peer
from tests.support.aio import run_async
from tests.support.charon import CharonError, Child, Conn, engine_config_for, expected_charon_algs

PSK = "interop-psk-0123456789abcdef"
FAST = RetransmitConfig(timeout=0.5, base=1.5, max_retransmits=3)
#: The ESP cipher charon agreed on, as the IANA ID our events carry.
ENCR_IDS = {
    "aes256gcm16": EncrId.AES_GCM_16,
    "aes256-sha256": EncrId.AES_CBC,
    "chacha20poly1305": EncrId.CHACHA20_POLY1305,
}
PROPOSALS = [
    pytest.param("aes256gcm16-prfsha384-ecp384", "aes256gcm16", id="gcm256-ecp384"),
    pytest.param("aes256-sha256-modp2048", "aes256-sha256", id="cbc256-sha256-modp2048"),
    pytest.param("chacha20poly1305-prfsha256-curve25519", "chacha20poly1305",
                 id="chacha20-x25519"),
]  # fmt: skip


def charon_conn(ike: str, esp: str, psk: str = PSK) -> Conn:
    child = Child("child", (CHARON_INNER,), (OURS_INNER,), (esp,), mode="tunnel")
    return Conn("interop", (CHARON_IP,), (OURS_IP,), "charon.test", "ours.test", psk,
                (ike,), (child,))  # fmt: skip


def check_agreement(
    sas: list[dict[str, Any]],
    ike_ev: IkeSaEstablished,
    child: ChildSaEstablished,
    ike: str,
    esp: str,
    *,
    charon_initiated: bool,
) -> None:
    established = [sa for sa in sas if sa.get("state") == "ESTABLISHED"]
    assert len(established) == 1, f"charon's IKE SAs: {sas}"
    sa = established[0]
    assert sa["initiator-spi"] == ike_ev.spi_i.hex()
    assert sa["responder-spi"] == ike_ev.spi_r.hex()
    assert (sa.get("initiator") == "yes") == charon_initiated
    assert ike_ev.initiator == (not charon_initiated)
    assert sa["local-id"] == "charon.test" and sa["remote-id"] == "ours.test"
    assert str(ike_ev.remote_id) == "charon.test"
    want = expected_charon_algs(ike, ike=True)
    assert {k: sa.get(k) for k in want} == want
    children = list(sa["child-sas"].values())
    assert len(children) == 1, f"charon's CHILD SAs: {children}"
    ch = children[0]
    assert ch["state"] == "INSTALLED" and ch["mode"] == "TUNNEL" and ch["protocol"] == "ESP"
    # charon's inbound SPI is our outbound one and vice versa
    assert ch["spi-in"] == f"{child.outbound_spi:08x}"
    assert ch["spi-out"] == f"{child.inbound_spi:08x}"
    want_c = expected_charon_algs(esp, ike=False)
    assert {k: ch.get(k) for k in want_c} == want_c
    assert child.encr_id == ENCR_IDS[esp]
    assert ch["local-ts"] == [CHARON_INNER] and ch["remote-ts"] == [OURS_INNER]
    assert [str(t) for t in child.local_ts] == [OURS_INNER]
    assert [str(t) for t in child.remote_ts] == [CHARON_INNER]
    # kernel-libipsec makes charon claim a NAT: both sides encapsulate on 4500
    assert ch["encap"] == "yes" and child.encapsulation
    assert (child.encap_local_port, child.encap_remote_port) == (4500, 4500)
    assert ike_ev.local_addr == (OURS_IP, 4500) and ike_ev.remote_addr == (CHARON_IP, 4500)


@pytest.mark.parametrize(("ike", "esp"), PROPOSALS)
@run_async(60)
async def test_our_initiator_charon_responder(peer: Peer, ike: str, esp: str) -> None:
    conn = charon_conn(ike, esp)
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST)
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        drv.initiate(cfg.name)
        ike_ev = await drv.wait_for(IkeSaEstablished, timeout=15)
        child = await drv.wait_for(ChildSaEstablished, timeout=5)
        sas = await asyncio.to_thread(peer.charon.list_sas)
    check_agreement(sas, ike_ev, child, ike, esp, charon_initiated=False)


@pytest.mark.parametrize(("ike", "esp"), PROPOSALS)
@run_async(60)
async def test_charon_initiator_our_responder(peer: Peer, ike: str, esp: str) -> None:
    conn = charon_conn(ike, esp)
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST)
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        await asyncio.to_thread(peer.charon.initiate, "child", ike="interop", timeout=15)
        ike_ev = await drv.wait_for(IkeSaEstablished, timeout=5)
        child = await drv.wait_for(ChildSaEstablished, timeout=5)
        sas = await asyncio.to_thread(peer.charon.list_sas)
    check_agreement(sas, ike_ev, child, ike, esp, charon_initiated=True)


@run_async(60)
async def test_wrong_psk_our_initiator(peer: Peer) -> None:
    conn = charon_conn("aes256gcm16-prfsha384-ecp384", "aes256gcm16")
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST, psk=b"not-the-psk-0123456789")
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        drv.initiate(cfg.name)
        failed = await drv.wait_for(IkeSaFailed, timeout=15)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
        assert drv.sas == []
        sas = await asyncio.to_thread(peer.charon.list_sas)
    assert not [sa for sa in sas if sa.get("state") == "ESTABLISHED"]
    log = peer.charon.log_text()
    assert "MAC mismatched" in log and "N(AUTH_FAILED)" in log


@run_async(60)
async def test_wrong_psk_charon_initiator(peer: Peer) -> None:
    conn = charon_conn("aes256-sha256-modp2048", "aes256-sha256")
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST, psk=b"not-the-psk-0123456789")
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        with pytest.raises(CharonError, match="AUTHENTICATION_FAILED"):
            await asyncio.to_thread(peer.charon.initiate, "child", ike="interop", timeout=15)
        failed = await drv.wait_for(IkeSaFailed, timeout=5)
        assert failed.notify == NotifyType.AUTHENTICATION_FAILED
        assert drv.sas == []
    assert await asyncio.to_thread(peer.charon.list_sas) == []


@run_async(60)
async def test_no_common_proposal(peer: Peer) -> None:
    peer.charon.load([charon_conn("aes256gcm16-prfsha384-ecp384", "aes256gcm16")])
    ours = engine_config_for(charon_conn("aes256-sha256-modp2048", "aes256gcm16"), retransmit=FAST)
    async with IkeDriver([ours], netns=peer.ours.name) as drv:
        drv.initiate(ours.name)
        failed = await drv.wait_for(IkeSaFailed, timeout=15)
        assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert "N(NO_PROP)" in peer.charon.log_text()


@run_async(60)
async def test_ipv6_our_initiator_charon_responder(peer: Peer) -> None:
    peer.ours.run(["ip", "addr", "add", "fd00:1::1/128", "dev", "lo"])
    peer.charon_ns.run(["ip", "addr", "add", "fd00:2::1/128", "dev", "lo"])
    child = Child("child", ("fd00:2::1/128",), ("fd00:1::1/128",), ("aes256gcm16",))
    conn = Conn("v6", ("fd00::2",), ("fd00::1",), "fd00::2", "fd00::1", PSK,
                ("aes256gcm16-prfsha384-ecp384",), (child,))  # fmt: skip
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST)
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        drv.initiate(cfg.name)
        ike_ev = await drv.wait_for(IkeSaEstablished, timeout=15)
        ev = await drv.wait_for(ChildSaEstablished, timeout=5)
        (sa,) = await asyncio.to_thread(peer.charon.list_sas)
    assert ike_ev.local_addr == ("fd00::1", 4500) and ike_ev.remote_addr == ("fd00::2", 4500)
    assert str(ike_ev.remote_id) == "fd00::2" and sa["remote-id"] == "fd00::1"
    (ch,) = sa["child-sas"].values()
    assert ch["spi-in"] == f"{ev.outbound_spi:08x}" and ch["spi-out"] == f"{ev.inbound_spi:08x}"
    assert ch["local-ts"] == ["fd00:2::1/128"] and ch["remote-ts"] == ["fd00:1::1/128"]
    assert ev.local_address == "fd00::1" and ev.encr_id == EncrId.AES_GCM_16


@run_async(60)
async def test_delete_both_ways(peer: Peer) -> None:
    """INFORMATIONAL Delete (RFC 7296 1.4.1) with charon, from each side in turn."""
    conn = charon_conn("aes256gcm16-prfsha384-ecp384", "aes256gcm16")
    peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST)
    async with IkeDriver([cfg], netns=peer.ours.name) as drv:
        # we delete: charon's SA goes away
        sa = drv.initiate(cfg.name)
        await drv.wait_for(ChildSaEstablished, timeout=15)
        drv.delete(sa)
        gone = await drv.wait_for(IkeSaDeleted, timeout=10)
        assert not gone.by_peer and gone.spi_i == sa.spi_i
        assert await asyncio.to_thread(peer.charon.list_sas) == []
        # charon deletes: we hear about the IKE SA and its CHILD SA
        sa = drv.initiate(cfg.name)
        child = await drv.wait_for(ChildSaEstablished, timeout=15)
        await asyncio.to_thread(peer.charon.terminate_ike, "interop")
        child_gone = await drv.wait_for(ChildSaDeleted, timeout=10)
        assert child_gone.inbound_spi == child.inbound_spi
        ike_gone = await drv.wait_for(IkeSaDeleted, timeout=10)
        assert ike_gone.by_peer and ike_gone.spi_i == sa.spi_i
        assert drv.sas == []
