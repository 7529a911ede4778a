"""The agent's per-connection SA traffic metrics from the kernel's SA counters, with
real ESP (docs/operations.md "Metrics"): two standalone agents, a ping across, the
scraped byte and packet counters in both directions; then a CHILD SA rekey, another
ping, and the counters only grew (the replaced SA's counts are kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kernel.conftest import NsPair
from tests.support.agents import options, ping, running, write_private
from tests.support.aio import run_async, wait_until
from tests.support.metrics import Scrape, scrape

SPD = """
defaults { policy discard; esp_trans_deflev require; }
connection mesh {
    between all and all;
    mode transport;
    auth psk "lab-metrics-psk-0123456789abcdef";
    esp lifetime 15s;
}
"""
NODES = "a 192.0.2.1\nb 192.0.2.2\n"


def _up(daemons: dict[str, Any]) -> bool:
    return all(
        d.status()["connections"] and all(c["state"] == "up" for c in d.status()["connections"])
        for d in daemons.values()
    )


def _traffic(s: Scrape) -> dict[str, float]:
    out = {}
    for direction in ("in", "out"):
        for what in ("bytes", "packets"):
            got = s.value(
                f"ipsecd_sa_{what}_total", connection="mesh", peer="b", direction=direction
            )
            out[f"{what} {direction}"] = got or 0.0
    return out


@run_async(300)
async def test_sa_counters_follow_the_traffic_across_a_rekey(
    ns_pair: NsPair, tmp_path: Path
) -> None:
    a, b = ns_pair
    spd = write_private(tmp_path / "policy.spd", SPD)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = [
        options(name, ns, tmp_path, spd_file=spd, nodes_file=nodes, metrics_listen="127.0.0.1:0")
        for name, ns in (("a", a), ("b", b))
    ]
    async with running(opts) as daemons:
        await wait_until(lambda: _up(daemons), 120, "both agents' IKE and CHILD SAs up")
        server = daemons["a"].metrics.server
        assert server is not None
        before = _traffic(await scrape(server.address))
        first = await ping(a, "192.0.2.2", count=20, interval=0.05)
        assert first.received == 20, first.output
        s = await scrape(server.address)
        after = _traffic(s)
        print(f"\nafter 20 echoes: {after} (before: {before})")
        for direction in ("in", "out"):
            assert after[f"packets {direction}"] - before[f"packets {direction}"] >= 20, after
            # the kernel counts what the SA protects: in transport mode the 64-byte ICMP
            # message of each echo (ping's 56 bytes of data and its 8-byte header)
            assert after[f"bytes {direction}"] - before[f"bytes {direction}"] >= 20 * 64, after
        assert s.value("ipsecd_child_sas", connection="mesh", peer="b") == 1
        rekeys = s.value("ipsecd_rekeys_total", sa="child") or 0

        # a CHILD SA rekey (15 s lifetime), and the old SAs gone after their grace
        d = daemons["a"]
        await wait_until(
            lambda: d.supervisor.counters["child_rekeyed"] > rekeys, 60, "a CHILD SA rekey"
        )
        await wait_until(lambda: not d.writer._leaving, 30, "the replaced SAs removed")
        second = await ping(a, "192.0.2.2", count=20, interval=0.05)
        assert second.received == 20, second.output
        s = await scrape(server.address)
        final = _traffic(s)
        print(f"after the rekey and 20 more echoes: {final}")
        for key, value in final.items():
            assert value >= after[key] + (20 if key.startswith("packets") else 20 * 64), (
                key,
                after,
                final,
            )
        assert (s.value("ipsecd_rekeys_total", sa="child") or 0) > rekeys
        assert s.value("ipsecd_xfrm_errors_total", error="XfrmInNoStates") is not None
        assert s.value("ipsecd_kernel_drift", object="sa") == 0
