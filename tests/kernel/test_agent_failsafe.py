"""kill -9 of an agent (ipsecd(8) "IP secure" mode) with real ESP, agents as processes.

Two standalone ``ipsecd`` processes (a, b) enforce one SPD (policy discard, every
packet between them in transport-mode ESP).  With a ping running from a to b:

* ``kill -9`` a: its kernel keeps the policies, the default ``block`` and the SAs, so
  the protected flow goes on, encrypted, and nothing leaves a in clear text (egress
  capture); traffic the policy does not allow stays blocked;
* a restarts: it adopts what it finds in the kernel (no flush), negotiates new SAs
  with INITIAL_CONTACT (RFC 7296 2.4: b drops the stale IKE SA), then retires the
  old ones after the new ones are in: the flow continues; the loss is printed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.status import StatusError, query
from tests.kernel.conftest import NsPair
from tests.support.agents import AgentProcess, ping, write_private
from tests.support.aio import run_async

SPD = """
defaults { policy discard; }
connection mesh { between all and all; mode transport; auth psk "failsafe-psk-0123456789";
                  esp lifetime 10m; dpd 10s; }
"""
NODES = "a 192.0.2.1\nb 192.0.2.2\n"


def _args(name: str, ns: Any, tmp: Path, spd: Path, nodes: Path) -> list[str]:
    state = tmp / f"agent-{name}"
    return ["-f", str(spd), "--nodes", str(nodes), "--node", name, "--netns", ns.name,
            "--state-dir", str(state), "--socket", str(state / "ipsecd.sock"),
            "--addresses", ns.addr4, "-m", "verbose"]  # fmt: skip


def _status(tmp: Path, name: str) -> dict[str, Any] | None:
    try:
        return query(tmp / f"agent-{name}" / "ipsecd.sock", timeout=5)
    except StatusError:
        return None


async def _wait_up(
    tmp: Path, name: str, timeout: float, procs: list[AgentProcess]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        st = await asyncio.to_thread(_status, tmp, name)
        if st and st["connections"] and all(c["state"] == "up" for c in st["connections"]):
            return st
        await asyncio.sleep(1)
    logs = "\n\n".join(p.log_tail() for p in procs)
    raise AssertionError(f"agent {name} not up within {timeout:.0f} s; logs:\n{logs}")


@run_async(900)
async def test_kill9_leaks_nothing_and_restart_converges(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Any
) -> None:
    a, b = ns_pair
    b.run(["ip", "addr", "add", "198.51.100.2/24", "dev", "veth0"])
    a.run(["ip", "route", "add", "198.51.100.0/24", "dev", "veth0"])
    spd = write_private(tmp_path / "policy.spd", SPD)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    pa = AgentProcess(_args("a", a, tmp_path, spd, nodes), tmp_path / "a.log").start()
    pb = AgentProcess(_args("b", b, tmp_path, spd, nodes), tmp_path / "b.log").start()
    procs = [pa, pb]
    try:
        await _wait_up(tmp_path, "a", 240, procs)
        before = await _wait_up(tmp_path, "b", 60, procs)
        cap_a, cap_b = egress_capture(a), egress_capture(b)
        flow = asyncio.create_task(ping(a, "192.0.2.2", count=1500, interval=0.05))
        await asyncio.sleep(5)
        pa.kill9()
        # the agent is gone: protected traffic still flows (kernel SAs), the rest is
        # blocked by the default policy
        blocked = await ping(a, "198.51.100.2", count=3, interval=0.2)
        assert blocked.received == 0 and "not permitted" in blocked.output, blocked.output
        await asyncio.sleep(5)
        pa = AgentProcess(pa.args, tmp_path / "a.log").start()
        procs[0] = pa
        await _wait_up(tmp_path, "a", 240, procs)
        result = await flow
        packets = cap_a.stop() + cap_b.stop()
        after = await _wait_up(tmp_path, "b", 60, procs)
        print(f"\nping a->b across kill -9 and restart: {result.sent} sent, "
              f"{result.lost} lost")  # fmt: skip
        assert not [p for p in packets if p.is_echo], "clear-text echo on the wire"
        assert result.received > 0.95 * result.sent, result.output
        (c_before,) = before["connections"]
        (c_after,) = after["connections"]
        assert c_after["ike_spis"] != c_before["ike_spis"]  # a new IKE SA replaced the stale
        assert len(c_after["children"]) == 1
        assert pb.stop() == 0
        assert pa.stop() == 0
    finally:
        for p in procs:
            p.stop()
