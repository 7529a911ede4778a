"""A rolling change of proposals with real ESP (issue #13): three agents, a controller,
``RolloutService.Start`` over gRPC, one node per batch, each gated on the health the
agents report; a ping runs between every pair of nodes for the whole rollout and its
lost packets are counted (the issue's target: 0; the figure is printed).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc.aio

from controller.embedded_etcd import EtcdProcess, free_port
from controller.etcd_store import EtcdStore
from controller.server import Controller, ControllerConfig
from ipsecd.v1 import rollout_pb2, rollout_pb2_grpc
from tests.support.agents import options, running
from tests.support.aio import run_async, wait_until
from tests.support.etcd import start_etcd
from tests.support.netns import Netns, netns_star

ADDRS = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
PSK = "rollout-lab-psk-0123456789abcdef"
PAIRS = (("a", "b"), ("a", "c"), ("b", "c"))
# the CHILD SA proposals as the engine names them (ipsecd.ike.config)
OLD, NEW = "AES_GCM_16_256-NO_ESN", "AES_GCM_16_128-NO_ESN"


def policy(esp: str) -> str:
    lines = [
        "defaults { policy discard; esp_trans_deflev require; }",
        "nodes na name a;",
        "nodes nb name b;",
        "nodes nc name c;",
        f"proposal esp lab {esp};",
    ]
    for name, left, right in (("ab", "na", "nb"), ("ac", "na", "nc"), ("bc", "nb", "nc")):
        lines.append(
            f"connection {name} {{ between {left} and {right}; mode transport; "
            f'auth psk "{PSK}"; esp lab; }}'
        )
    return "\n".join(lines) + "\n"


async def start_controller(etcd: EtcdProcess, port: int) -> Controller:
    store = await EtcdStore.connect(etcd.url, tls=etcd.client_tls())
    config = ControllerConfig(
        replica_id="r1",
        advertise=f"127.0.0.1:{port}",
        key_root="/lab/",
        lease_ttl=3,
        ping_interval=1.0,
        ping_timeout=6.0,
        rollout_soak=2.0,
    )
    c = Controller(store, config)
    await c.start(f"127.0.0.1:{port}")
    await asyncio.wait_for(c.watch_synced.wait(), 60)
    return c


def all_up(daemons: dict[str, Any], revision: int) -> bool:
    for d in daemons.values():
        st = d.status()
        if (st["applied"] or {}).get("revision") != revision or len(st["connections"]) != 2:
            return False
        if any(c["state"] != "up" for c in st["connections"]):
            return False
    return True


def proposals(d: Any) -> set[str]:
    return {ch["proposal"] for c in d.status()["connections"] for ch in c["children"]}


class Flow:
    """``ping -O -i 0.1`` from one namespace until :meth:`stop`.  Lost packets are read
    per sequence number: ``-O`` prints "no answer yet for icmp_seq=N" when the next
    echo goes out without a reply to N; N is lost unless its reply comes later.  (The
    summary's counts would also call lost the echo in flight when ping is stopped.)"""

    def __init__(self, ns: Netns, dst: str) -> None:
        self.proc = ns.popen(
            ["ping", "-n", "-O", "-i", "0.1", "-W", "1", dst],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> tuple[int, list[int], str]:
        """(echoes answered, sequence numbers never answered, ping's output)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        text = out.decode(errors="replace")
        answered = {int(m) for m in re.findall(r"bytes from .* icmp_seq=(\d+)", text)}
        missing = {int(m) for m in re.findall(r"no answer yet for icmp_seq=(\d+)", text)}
        assert "packets transmitted" in text, text
        return len(answered), sorted(missing - answered), text


@run_async(900)
async def test_rolling_proposal_change_keeps_every_pair_flowing(lab: None, tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path)
    port = free_port()
    controller = await start_controller(etcd, port)
    target = f"127.0.0.1:{port}"
    flows: dict[tuple[str, str], Flow] = {}
    try:
        with netns_star("kro-", [[f"{ADDRS[n]}/24"] for n in "abc"]) as (_switch, nodes):
            ns = dict(zip("abc", nodes, strict=True))
            opts = [
                options(n, ns[n], tmp_path, controllers=(target,), insecure=True,
                        addresses=(ADDRS[n],), labels={"role": "web"})
                for n in "abc"
            ]  # fmt: skip
            async with running(opts) as daemons:
                await wait_until(
                    lambda: len(controller.view.records) == 3, 120, "three nodes registered"
                )
                out = await controller.repo.push(policy("aes256gcm16"), filename="lab.spd")
                assert out.accepted
                await wait_until(lambda: all_up(daemons, 1), 300, "revision 1 up everywhere")
                assert all(proposals(d) == {OLD} for d in daemons.values())
                for src, dst in PAIRS:
                    flows[(src, dst)] = Flow(ns[src], ADDRS[dst])
                await asyncio.sleep(2)  # the flows are running before anything moves
                t0 = time.monotonic()
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = rollout_pb2_grpc.RolloutServiceStub(channel)
                    resp = await stub.Start(
                        rollout_pb2.StartRolloutRequest(
                            text=policy("aes128gcm16, aes256gcm16"),
                            filename="lab.spd",
                            author="lab",
                            file_mode=0o600,
                            strategy=rollout_pb2.RolloutStrategy(
                                canary_nodes=["a"], batch_count=1, gate_timeout_seconds=240
                            ),
                        ),
                        timeout=120,
                    )
                    assert resp.accepted and resp.compatible, resp
                    status = resp.rollout
                    while not status.done:
                        await asyncio.sleep(1)
                        status = await stub.Status(rollout_pb2.RolloutStatusRequest(), timeout=30)
                elapsed = time.monotonic() - t0
                assert status.state == "succeeded", status
                assert status.batches == 3
                await wait_until(lambda: all_up(daemons, 2), 300, "revision 2 up everywhere")
                await asyncio.sleep(2)
                results = {pair: flow.stop() for pair, flow in flows.items()}
                flows.clear()
                lost = {f"{s}->{d}": len(gone) for (s, d), (_, gone, _) in results.items()}
                sent = {f"{s}->{d}": n for (s, d), (n, _, _) in results.items()}
                print(
                    f"\nrolling proposal change over 3 nodes (3 batches) took {elapsed:.1f} s; "
                    f"echoes answered {sent}, lost {lost}"
                )
                # after the last batch every pair negotiated the new first choice
                assert all(proposals(d) == {NEW} for d in daemons.values()), {
                    n: proposals(d) for n, d in daemons.items()
                }
                assert all(n > 0 for n in sent.values())
                assert sum(lost.values()) == 0, {k: v[1] for k, v in results.items()}
    finally:
        for flow in flows.values():
            flow.proc.kill()
            flow.proc.wait()
        await controller.stop(grace=0.5)
        await controller.store.close()
        etcd.stop(kill=True)
