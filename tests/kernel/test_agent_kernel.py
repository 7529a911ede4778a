"""One cluster-wide setkey-style SPD with manual ESP SAs, compiled per node and applied by
agent/kernel.py: real ESP on the wire in the kernel lab.

This is the path a standalone or cluster agent takes for manual keying: SPD text →
``ipsecd.spd`` (validate, compile for this node) → ``agent.kernel`` (desired XFRM state,
reconcile) → kernel.  The host tests (tests/integration/agent) can only show policies;
here the SAs exist too, so the ping must cross encrypted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Callable

from agent.kernel import apply_node_config
from ipsecd import spd
from ipsecd.xfrm import XfrmClient
from tests.kernel.conftest import NsPair
from tests.support.capture import EgressCapture, PacketKind, kinds

PING = ["ping", "-c", "2", "-i", "0.2", "-W", "5"]


def _policy_text(key_ab: str, key_ba: str) -> str:
    # One file for both hosts, as a cluster-common SPD: each node keeps the policies
    # whose local end is its own address, and the SAs of its pairs.
    return f"""
add 192.0.2.1 192.0.2.2 esp 0x1001 -m transport -u 1 -E aes-gcm-16 0x{key_ab};
add 192.0.2.2 192.0.2.1 esp 0x1002 -m transport -u 2 -E aes-gcm-16 0x{key_ba};
spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//unique:1;
spdadd 192.0.2.2 192.0.2.1 any -P in  ipsec esp/transport//unique:2;
spdadd 192.0.2.2 192.0.2.1 any -P out ipsec esp/transport//unique:2;
spdadd 192.0.2.1 192.0.2.2 any -P in  ipsec esp/transport//unique:1;
"""


def test_manual_sa_spd_applied_by_the_agent_encrypts_the_ping(
    ns_pair: NsPair, egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = ns_pair
    assert a.addr4 == "192.0.2.1" and b.addr4 == "192.0.2.2"
    # AES-GCM-128 key + 4-byte salt, fresh for this run
    text = _policy_text(secrets.token_hex(20), secrets.token_hex(20))
    policy = spd.load_text(text, "lab.spd", file_mode=0o600)
    directory = [
        spd.NodeInfo("node-a", (ipaddress.ip_address("192.0.2.1"),), {}),
        spd.NodeInfo("node-b", (ipaddress.ip_address("192.0.2.2"),), {}),
    ]

    async def apply_both() -> list[int]:
        totals = []
        for ns, node in ((a, directory[0]), (b, directory[1])):
            cfg = spd.compile_node(policy, node, directory)
            result = await apply_node_config(cfg, ns.name, local=node.addresses)
            totals.append(result.total)
        return totals

    first = asyncio.run(asyncio.wait_for(apply_both(), 60))
    assert all(t > 0 for t in first), first

    cap_a, cap_b = egress_capture(a), egress_capture(b)
    a.run([*PING, "192.0.2.2"])
    sent_a, sent_b = cap_a.stop(), cap_b.stop()

    esp_a = [p for p in sent_a if p.kind is PacketKind.ESP and p.src == "192.0.2.1"]
    esp_b = [p for p in sent_b if p.kind is PacketKind.ESP and p.src == "192.0.2.2"]
    assert len(esp_a) >= 2 and {p.spi for p in esp_a} == {0x1001}, kinds(sent_a)
    assert len(esp_b) >= 2 and {p.spi for p in esp_b} == {0x1002}, kinds(sent_b)
    assert not [p for p in sent_a + sent_b if p.is_echo], kinds(sent_a + sent_b)

    async def sa_count(ns_name: str) -> int:
        async with XfrmClient(ns_name) as x:
            return len(await x.dump_states())

    assert asyncio.run(sa_count(a.name)) == 2

    # Re-applying the same policy is a no-op: nothing is touched, traffic keeps flowing.
    again = asyncio.run(asyncio.wait_for(apply_both(), 60))
    assert again == [0, 0]
    a.run([*PING, "192.0.2.2"])
