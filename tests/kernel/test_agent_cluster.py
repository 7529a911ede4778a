"""A controller and three agents with real ESP: the product's main path.

Three nodes (a, b, c) on one bridge, a controller on its embedded-style etcd, and an
agent per node in cluster mode (in this process: under emulation one Python process
per agent costs too much).  ``ipsecctl push``'s path (the controller's revision
store) carries one SPD to every node:

* push -> every IKE and CHILD SA of the mesh up; the time is printed (issue figure);
* pings cross as ESP, no clear-text echo on the wire (egress captures);
* a change to one connection renegotiates only that connection's SAs: the others
  keep their SPIs, and a ping over an unchanged connection loses no packet;
* the controller stopped: the agents keep enforcing; etcd restarted: the next push
  arrives.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from controller.embedded_etcd import EtcdProcess, free_port
from controller.errors import StoreUnavailable
from controller.etcd_store import EtcdStore
from controller.server import Controller, ControllerConfig
from tests.support.agents import options, ping, running
from tests.support.aio import run_async, wait_until
from tests.support.capture import PacketKind
from tests.support.etcd import start_etcd
from tests.support.netns import netns_star

ADDRS = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
PSK = "cluster-lab-psk-0123456789abcdef"


def policy(ab_lifetime: str = "10m") -> str:
    conns = []
    for name, left, right, life in (
        ("ab", "na", "nb", ab_lifetime),
        ("ac", "na", "nc", "10m"),
        ("bc", "nb", "nc", "10m"),
    ):
        conns.append(
            f"connection {name} {{ between {left} and {right}; mode transport; "
            f'auth psk "{PSK}"; esp lifetime {life}; }}'
        )
    return (
        "\n".join(
            [
                "defaults { policy discard; esp_trans_deflev require; }",
                "nodes na name a;",
                "nodes nb name b;",
                "nodes nc name c;",
                *conns,
            ]
        )
        + "\n"
    )


async def start_controller(etcd: EtcdProcess, port: int) -> Controller:
    """A controller replica on 127.0.0.1:``port`` (the same port after a restart, as a
    Service address would be), over TLS to ``etcd``."""
    store = await EtcdStore.connect(etcd.url, tls=etcd.client_tls())
    config = ControllerConfig(
        replica_id="r1",
        advertise=f"127.0.0.1:{port}",
        key_root="/lab/",
        lease_ttl=3,
        ping_interval=1.0,
        ping_timeout=6.0,
    )
    c = Controller(store, config)
    await c.start(f"127.0.0.1:{port}")
    await asyncio.wait_for(c.watch_synced.wait(), 60)
    return c


async def stop_controller(c: Controller, *, crash: bool = False) -> None:
    await c.stop(grace=0 if crash else 0.5, revoke=not crash)
    await c.store.close()


def spis(d: Any) -> dict[str, set[str]]:
    """Connection -> the SPIs of its CHILD SAs, from the agent's live status."""
    return {c["connection"]: {ch["in"] for ch in c["children"]} for c in d.status()["connections"]}


def all_up(daemons: dict[str, Any], revision: int) -> bool:
    for d in daemons.values():
        st = d.status()
        if (st["applied"] or {}).get("revision") != revision or len(st["connections"]) != 2:
            return False
        if any(c["state"] != "up" for c in st["connections"]):
            return False
    return True


@run_async(900)
async def test_push_mesh_change_and_controller_loss(
    lab: None, tmp_path: Path, egress_capture: Any
) -> None:
    etcd = start_etcd(tmp_path)
    port = free_port()
    controller: Controller | None = await start_controller(etcd, port)
    target = f"127.0.0.1:{port}"
    addrs = [[f"{ADDRS[n]}/24"] for n in "abc"]
    try:
        with netns_star("kcl-", addrs) as (_switch, nodes):
            ns = dict(zip("abc", nodes, strict=True))
            opts = [
                options(
                    n,
                    ns[n],
                    tmp_path,
                    controllers=(target,),
                    insecure=True,
                    addresses=(ADDRS[n],),
                    labels={"role": "web"},
                )
                for n in "abc"
            ]
            async with running(opts) as daemons:
                await wait_until(
                    lambda: all(
                        d.stream is not None and d.stream.connected for d in daemons.values()
                    ),
                    120,
                    "three streams",
                )
                t0 = time.monotonic()
                out = await controller.repo.push(policy(), filename="mesh.spd", author="lab")
                assert out.accepted
                await wait_until(lambda: all_up(daemons, 1), 300, "the mesh up everywhere")
                print(f"\npush -> every SA of the 3-node mesh up: {time.monotonic() - t0:.1f} s")
                # encrypted on the wire, nothing in clear
                cap = egress_capture(ns["a"])
                for dst in ("b", "c"):
                    r = await ping(ns["a"], ADDRS[dst], count=5, interval=0.2)
                    assert r.lost == 0, r.output
                packets = cap.stop()
                assert {p.dst for p in packets if p.kind == PacketKind.ESP} >= {
                    ADDRS["b"],
                    ADDRS["c"],
                }
                assert not [p for p in packets if p.is_echo], "clear-text echo on the wire"
                # one connection changes: only its SAs are renegotiated, a flow over an
                # unchanged one loses nothing
                before = {n: spis(d) for n, d in daemons.items()}
                flow = asyncio.create_task(ping(ns["a"], ADDRS["c"], count=400, interval=0.02))
                await asyncio.sleep(1)
                out = await controller.repo.push(policy("5m"), filename="mesh.spd", author="lab")
                assert out.accepted
                await wait_until(lambda: all_up(daemons, 2), 300, "revision 2 everywhere")
                result = await flow
                after = {n: spis(d) for n, d in daemons.items()}
                print(f"ping a->c during the change: {result.sent} sent, {result.lost} lost")
                assert result.lost == 0, result.output
                assert after["a"]["ac"] == before["a"]["ac"]
                assert after["b"]["bc"] == before["b"]["bc"]
                assert after["a"]["ab"].isdisjoint(before["a"]["ab"])
                assert after["b"]["ab"].isdisjoint(before["b"]["ab"])
                # no controller: the agents keep enforcing what they have
                await stop_controller(controller, crash=True)
                controller = None
                r = await ping(ns["b"], ADDRS["c"], count=5, interval=0.2)
                assert r.lost == 0, r.output
                # etcd restarts, a controller comes back: the next push arrives
                etcd.restart()
                # etcd reports healthy a moment before its gRPC side takes clients;
                # a controller that finds it unreachable exits (a supervisor restarts
                # it): retry as one would, bounded
                for attempt in range(20):
                    try:
                        controller = await start_controller(etcd, port)
                        break
                    except StoreUnavailable:
                        if attempt == 19:
                            raise
                        await asyncio.sleep(0.5)
                out = await controller.repo.push(policy("7m"), filename="mesh.spd", author="lab")
                assert out.accepted and out.revision is not None
                await wait_until(lambda: all_up(daemons, 3), 300, "revision 3 after the restart")
    finally:
        if controller is not None:
            await stop_controller(controller)
        etcd.stop(kill=True)
