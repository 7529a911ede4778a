"""Our IKE driver against strongSwan charon with real kernel ESP (kernel lab only).

charon runs with ``kernel-netlink`` alone (real XFRM SAs in its namespace); our driver
runs with ``install=True`` and applies its CHILD SAs through :mod:`ipsecd.xfrm`.  After
each handshake a ping crosses the negotiated SAs; an egress capture on *both* ends
(tests/support/capture.py) must show ESP with the negotiated SPIs and no clear-text
ICMP echo; ``swanctl --list-sas`` and vici ``list-sas`` must agree with our events on
SPIs and algorithms.

The matrix is small on purpose (each case costs 10–20 s under TCG): every proposal
set once, every role and every mode twice::

    gcm256-ecp384           ours initiates   tunnel
    cbc256-sha256-modp2048  charon initiates transport
    chacha20-x25519         ours initiates   transport
    gcm256-ecp384           charon initiates tunnel
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.ike_driver import ChildSaInstalled, IkeDriver
from ipsecd.ike.config import RetransmitConfig
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
from tests.support.aio import run_async
from tests.support.capture import EgressCapture, PacketKind
from tests.support.charon import (
    LAB_PLUGINS,
    Charon,
    Child,
    Conn,
    engine_config_for,
    expected_charon_algs,
)
from tests.support.netns import Netns, netns_pair

PSK = "kernel-lab-psk-0123456789abcdef"
OURS_IP, CHARON_IP = "192.0.2.1", "192.0.2.2"
OURS_INNER, CHARON_INNER = "198.51.100.1", "198.51.100.2"
# Patient retransmissions (~40 s in all): under TCG the first CHILD SA with a given
# algorithm makes the kernel load and self-test its crypto modules, and charon, as
# responder, only answers IKE_AUTH once its SAs are in (measured: 18 s for the first
# rfc7539esp state).
PATIENT = RetransmitConfig(timeout=2.0, base=1.5, max_retransmits=5)
PING = ["ping", "-c", "3", "-i", "0.3", "-W", "5"]
# swanctl --list-sas spelling of the ESP algorithms
SWANCTL_ESP = {
    "aes256gcm16": "AES_GCM_16-256",
    "aes256-sha256": "AES_CBC-256/HMAC_SHA2_256_128",
    "chacha20poly1305": "CHACHA20_POLY1305",
}


@dataclass(frozen=True)
class Case:
    name: str
    ike: str
    esp: str
    charon_initiates: bool
    mode: str


CASES = [
    Case("gcm256-ecp384", "aes256gcm16-prfsha384-ecp384", "aes256gcm16", False, "tunnel"),
    Case("cbc256-sha256-modp2048", "aes256-sha256-modp2048", "aes256-sha256", True, "transport"),
    Case("chacha20-x25519", "chacha20poly1305-prfsha256-curve25519", "chacha20poly1305",
         False, "transport"),
    Case("gcm256-ecp384", "aes256gcm16-prfsha384-ecp384", "aes256gcm16", True, "tunnel"),
]  # fmt: skip


@dataclass
class Lab:
    ours: Netns
    other: Netns
    charon: Charon


@pytest.fixture
def lab_pair(lab: None, tmp_path: Path) -> Iterator[Lab]:
    with netns_pair("iki-", addrs_a=(f"{OURS_IP}/24",), addrs_b=(f"{CHARON_IP}/24",)) as (a, b):
        # Tunnel-mode inner addresses, with routes that pick them as source.
        a.run(["ip", "addr", "add", f"{OURS_INNER}/32", "dev", "lo"])
        b.run(["ip", "addr", "add", f"{CHARON_INNER}/32", "dev", "lo"])
        a.run(["ip", "route", "add", f"{CHARON_INNER}/32", "dev", "veth0", "src", OURS_INNER])
        b.run(["ip", "route", "add", f"{OURS_INNER}/32", "dev", "veth0", "src", CHARON_INNER])
        with Charon.started(
            b, tmp_path / "charon", plugins=LAB_PLUGINS, tuning={"install_routes": "no"}
        ) as charon:
            yield Lab(a, b, charon)


def charon_conn(case: Case) -> Conn:
    if case.mode == "tunnel":
        lts, rts = f"{CHARON_INNER}/32", f"{OURS_INNER}/32"
    else:
        lts, rts = f"{CHARON_IP}/32", f"{OURS_IP}/32"
    child = Child("child", (lts,), (rts,), (case.esp,), mode=case.mode)
    return Conn("lab", (CHARON_IP,), (OURS_IP,), "charon.test", "ours.test", PSK,
                (case.ike,), (child,))  # fmt: skip


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.name}-{'charon' if c.charon_initiates else 'ours'}-{c.mode}"
                        for c in CASES]
)  # fmt: skip
@run_async(240)
async def test_handshake_and_esp_traffic(lab_pair: Lab, case: Case, tmp_path: Path) -> None:
    try:
        await _case(lab_pair, case, tmp_path)
    except Exception as exc:
        # charon's side of the story (its log never holds keys at these levels)
        raise AssertionError(
            f"{type(exc).__name__}: {exc}\n--- charon log tail ---\n{lab_pair.charon.log_tail(80)}"
        ) from exc


async def _case(lab: Lab, case: Case, tmp_path: Path) -> None:
    conn = charon_conn(case)
    await asyncio.to_thread(lab.charon.load, [conn])
    cfg = engine_config_for(conn, retransmit=PATIENT)
    async with IkeDriver([cfg], netns=lab.ours.name, install=True, ipv6=False) as drv:
        if case.charon_initiates:
            await asyncio.to_thread(lab.charon.initiate, "child", ike="lab", timeout=60)
        else:
            drv.initiate(cfg.name)
        ike_ev = await drv.wait_for(IkeSaEstablished, timeout=60)
        child = await drv.wait_for(ChildSaEstablished, timeout=10)
        installed = await drv.wait_for(ChildSaInstalled, timeout=60)
        assert installed.inbound_spi == child.inbound_spi
        assert installed.policies == (3 if case.mode == "tunnel" else 2)
        assert not child.encapsulation  # no NAT between the namespaces: plain ESP

        # traffic: ping across the SAs, capture what leaves each side
        src, dst = (OURS_INNER, CHARON_INNER) if case.mode == "tunnel" else (OURS_IP, CHARON_IP)
        cap_a = EgressCapture("veth0", tmp_path / "ours.pcap", netns=lab.ours.name)
        cap_b = EgressCapture("veth0", tmp_path / "charon.pcap", netns=lab.other.name)
        with cap_a, cap_b:
            await asyncio.to_thread(lab.ours.run, [*PING, "-I", src, dst], timeout=30)
        sas = await asyncio.to_thread(lab.charon.list_sas)
        listed = await asyncio.to_thread(lab.charon.swanctl, "--list-sas")

    # ESP on the wire, with the negotiated SPIs, in both directions; no clear echo
    for cap, spi, who in ((cap_a, child.outbound_spi, "ours"), (cap_b, child.inbound_spi,
                                                                "charon")):  # fmt: skip
        esp = [p for p in cap.packets if p.kind is PacketKind.ESP]
        assert len(esp) >= 3, f"{who} sent {len(esp)} ESP packets: {cap.packets}"
        assert {p.spi for p in esp} == {spi}, f"{who}'s ESP SPIs {[p.spi for p in esp]}"
        assert cap.echoes() == [], f"{who} sent clear-text ICMP echo: {cap.echoes()}"

    # charon agrees: SPIs, algorithms, mode, who initiated
    (sa,) = [s for s in sas if s.get("state") == "ESTABLISHED"]
    assert sa["initiator-spi"] == ike_ev.spi_i.hex()
    assert sa["responder-spi"] == ike_ev.spi_r.hex()
    assert (sa.get("initiator") == "yes") == case.charon_initiates
    want = expected_charon_algs(case.ike, ike=True)
    assert {k: sa.get(k) for k in want} == want
    (ch,) = sa["child-sas"].values()
    assert ch["mode"] == case.mode.upper() and ch["protocol"] == "ESP"
    assert ch["spi-in"] == f"{child.outbound_spi:08x}"
    assert ch["spi-out"] == f"{child.inbound_spi:08x}"
    want_c = expected_charon_algs(case.esp, ike=False)
    assert {k: ch.get(k) for k in want_c} == want_c
    assert int(ch["packets-in"]) >= 3 and int(ch["packets-out"]) >= 3
    # and so does the swanctl command an operator would run
    assert f"{ike_ev.spi_i.hex()}_i" in listed and f"{ike_ev.spi_r.hex()}_r" in listed
    assert f"in  {child.outbound_spi:08x}," in listed
    assert f"out {child.inbound_spi:08x}," in listed
    assert f"INSTALLED, {case.mode.upper()}, ESP:{SWANCTL_ESP[case.esp]}" in listed
