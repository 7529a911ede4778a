"""IKE fragmentation (RFC 7383) with strongSwan charon on the host, both roles.

charon runs with ``fragmentation = yes`` on the connection and ``charon.fragment_size =
576`` (the whole IP datagram, as ours counts it); the CHILD SA has many traffic
selectors on our side, so each IKE_AUTH message is about 1.2 KB and must travel in
fragments both ways.  charon's log shows what it did: "splitting IKE message ... into
N fragments" for what it sent us, "received fragment #k of N" for what we sent it,
and the size of every datagram it received (all must fit 576 bytes with the IPv4 and
UDP headers).  As in test_charon_host.py, kernel-libipsec makes charon claim a NAT, so
IKE_AUTH goes over port 4500 with the non-ESP marker, counted in the size too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ike_driver import IkeDriver
from ipsecd.ike.config import RetransmitConfig
from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
from tests.interop.conftest import CHARON_INNER, CHARON_IP, OURS_INNER, OURS_IP, PREFIX, Peer
from tests.interop.conftest import _require as require
from tests.support.aio import run_async
from tests.support.charon import CHARON_BIN, SWANCTL_BIN, Charon, Child, Conn, engine_config_for
from tests.support.netns import netns_pair

PSK = "interop-fragments-0123456789"
FAST = RetransmitConfig(timeout=0.5, base=1.5, max_retransmits=3)
FRAGMENT_SIZE = 576
#: Our inner selectors: ours and 59 more /32s (about 960 bytes of TSi/TSr each way).
OUR_TS = (OURS_INNER, *(f"10.99.0.{i}/32" for i in range(1, 60)))
IKE = "aes256-sha256-modp2048"


@pytest.fixture
def frag_peer(tmp_path: Path) -> Iterator[Peer]:
    require(CHARON_BIN, "strongswan-charon")
    require(SWANCTL_BIN, "strongswan-swanctl")
    with netns_pair(PREFIX, addrs_a=(f"{OURS_IP}/24",),
                    addrs_b=(f"{CHARON_IP}/24",)) as (ours, other):  # fmt: skip
        ours.run(["ip", "addr", "add", OURS_INNER, "dev", "lo"])
        other.run(["ip", "addr", "add", CHARON_INNER, "dev", "lo"])
        tuning = {"fragment_size": str(FRAGMENT_SIZE)}
        with Charon.started(other, tmp_path / "charon", tuning=tuning) as charon:
            yield Peer(ours, other, charon)


def _conn() -> Conn:
    child = Child("child", (CHARON_INNER,), OUR_TS, ("aes256-sha256",), mode="tunnel")
    return Conn("frags", (CHARON_IP,), (OURS_IP,), "charon.test", "ours.test", PSK,
                (IKE,), (child,), extra={"fragmentation": "yes"})  # fmt: skip


def _check_fragments_both_ways(log: str) -> None:
    # charon split its IKE_AUTH message for us ...
    split = re.findall(r"splitting IKE message \((\d+) bytes\) into (\d+) fragments", log)
    assert split and all(int(n) >= 2 for _, n in split), log[-3000:]
    # ... and reassembled ours
    received = re.findall(r"received fragment #(\d+) of (\d+)", log)
    assert received and any(int(total) >= 2 for _, total in received), log[-3000:]
    assert "reassembled fragmented IKE message" in log
    assert "EF(" in log  # charon's name for an SKF in its parsed/generated message lines
    # every datagram we sent fits fragment_size with IPv4 (20) and UDP (8) headers
    sizes = [int(n) for n in re.findall(r"received packet: from .*? \((\d+) bytes\)", log)]
    assert sizes and max(sizes) + 28 <= FRAGMENT_SIZE, sizes


@pytest.mark.parametrize(
    "charon_initiates", [False, True], ids=["ours-initiates", "charon-initiates"]
)
@run_async(60)
async def test_ike_auth_fragmented_both_ways(frag_peer: Peer, charon_initiates: bool) -> None:
    conn = _conn()
    frag_peer.charon.load([conn])
    cfg = engine_config_for(conn, retransmit=FAST, fragment_size=FRAGMENT_SIZE)
    assert cfg.fragmentation and len(cfg.child.local_ts) == len(OUR_TS)
    async with IkeDriver([cfg], netns=frag_peer.ours.name) as drv:
        if charon_initiates:
            await asyncio.to_thread(frag_peer.charon.initiate, "child", ike="frags", timeout=15)
        else:
            drv.initiate(cfg.name)
        ike_ev = await drv.wait_for(IkeSaEstablished, timeout=15)
        child = await drv.wait_for(ChildSaEstablished, timeout=5)
        (sa,) = drv.sas
        assert sa.fragmentation and sa.peer_errors == 0 and sa.internal_errors == 0
        assert sa.reassembly.held == 0
        sas = await asyncio.to_thread(frag_peer.charon.list_sas)
    assert ike_ev.initiator == (not charon_initiates)
    (theirs,) = [s for s in sas if s.get("state") == "ESTABLISHED"]
    assert theirs["initiator-spi"] == ike_ev.spi_i.hex()
    (ch,) = theirs["child-sas"].values()
    assert ch["spi-in"] == f"{child.outbound_spi:08x}"
    assert sorted(ch["remote-ts"]) == sorted(OUR_TS)
    assert len(child.local_ts) == len(OUR_TS)
    _check_fragments_both_ways(frag_peer.charon.log_text())
