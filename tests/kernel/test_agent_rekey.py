"""Two standalone agents with real ESP: SAs that outlive their lifetimes.

One SPD for both nodes (a: 192.0.2.1 / fd00::1, b: 192.0.2.2 / fd00::2) with a
20-second CHILD SA lifetime and a 60-second IKE SA lifetime; both agents rekey on
their own jittered timers.  A ping every 10 ms runs across several CHILD and IKE SA
rekeys: no packet may be lost (make-before-break, docs/ike.md "Rekeying"), every
echo crosses as ESP and none in clear (egress captures on both ends).  The figures
(packets, rekeys by each side) are printed for the issue notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kernel.conftest import NsPair
from tests.support.agents import options, ping, running, write_private
from tests.support.aio import run_async, wait_until
from tests.support.capture import PacketKind

SPD = """
defaults { policy discard; esp_trans_deflev require; }
connection mesh {
    between all and all;
    mode transport;
    auth psk "lab-rekey-psk-0123456789abcdef";
    ike lifetime 60s;
    esp lifetime 20s;
    dpd 30s;
}
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
NODES = "a 192.0.2.1,fd00::1\nb 192.0.2.2,fd00::2\n"


def _up(daemons: dict[str, Any]) -> bool:
    return all(
        c["state"] == "up" for d in daemons.values() for c in d.status()["connections"]
    ) and all(d.status()["connections"] for d in daemons.values())


@run_async(600)
async def test_rekeys_by_both_sides_lose_no_packet(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Any
) -> None:
    a, b = ns_pair
    spd = write_private(tmp_path / "policy.spd", SPD)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = [
        options(name, ns, tmp_path, spd_file=spd, nodes_file=nodes)
        for name, ns in (("a", a), ("b", b))
    ]
    async with running(opts) as daemons:
        await wait_until(lambda: _up(daemons), 120, "both agents' IKE and CHILD SAs up")
        cap_a, cap_b = egress_capture(a), egress_capture(b)
        # 100 pings a second for 75 s: more than three CHILD lifetimes, one IKE lifetime
        result = await ping(a, "192.0.2.2", count=7500, interval=0.01)
        packets = cap_a.stop() + cap_b.stop()
        status = {n: d.status() for n, d in daemons.items()}
    counters = {n: s["counters"] for n, s in status.items()}
    print(f"\nping: {result.sent} sent, {result.received} received, {result.lost} lost")
    print(f"counters: {counters}")
    assert result.sent >= 7000
    assert result.lost == 0, result.output
    for n in ("a", "b"):
        assert status[n]["health"] == "ok", status[n]
        assert counters[n]["child_rekeyed"] >= 3, counters
        assert counters[n]["ike_rekeyed"] >= 1, counters
        assert counters[n]["install_failed"] == 0
    esp = [p for p in packets if p.kind == PacketKind.ESP]
    spis = {p.spi for p in esp}
    assert len(esp) >= 2 * result.received and len(spis) >= 6, (len(esp), len(spis))
    assert not [p for p in packets if p.is_echo], "clear-text echo on the wire"
