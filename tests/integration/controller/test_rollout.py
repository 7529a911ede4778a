"""Rolling policy reloads (issue #13) over real etcd, real gRPC and simulated agents that
compile the policy with the real SPD compiler and report its health the way the agent
does (harness.SimAgent ``report_health``):

* a good rollout over 50 agents moves batch after batch (no node of a batch gets the
  new revision before every node of the batch before it reported it healthy), each
  revision serialized once, ``ipsecctl push --rollout --wait`` exits 0;
* a proposal nobody accepts: refused by the compatibility check, then forced; the
  canary fails its gate, the rollout rolls back by itself (a new revision with the old
  text) and ends failed with the reason per node; no node is left on the bad revision
  and the nodes after the canary never received it;
* the leader dies mid-rollout: the other replica takes over and finishes it, and the
  agents that fail over to it are still held on the old revision until their batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

from controller.embedded_etcd import EtcdProcess
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix

FAST_ROLLOUT = {"rollout_tick": 0.1, "rollout_soak": 0.3}


def mesh(esp: str, comment: str = "") -> str:
    """Every worker with every other worker, ESP proposal ``esp``."""
    return (
        f"# {comment}\n"
        "nodes workers label role=worker;\n"
        f"proposal esp p {esp};\n"
        "connection mesh { between workers and workers; mode transport; "
        "auth psk secret:mesh; esp p; }\n"
    )


class Arrivals:
    """A global order of arrivals: which agent got which revision when, in sequence
    (no clocks: the order alone says whether a batch moved before the one ahead)."""

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.at: dict[tuple[str, int], int] = {}

    def watch(self, agent: SimAgent) -> None:
        original = agent.on_event

        async def on_event(ev: object) -> None:
            revision = getattr(ev, "revision", None)
            if revision is not None and hasattr(ev, "via_snapshot"):
                self.at[(agent.name, revision)] = next(self.counter)
            await original(ev)  # type: ignore[arg-type]

        agent.on_event = on_event  # type: ignore[method-assign]


def agents_for(addresses: list[str], n: int, arrivals: Arrivals, **kw: object) -> list[SimAgent]:
    out = []
    for i in range(n):
        a = SimAgent(
            f"node-{i:02d}", addresses, address=f"192.0.2.{i + 1}", report_health=True, **kw
        )  # type: ignore[arg-type]
        arrivals.watch(a)
        out.append(a.start())
    return out


def healthy_on(agents: list[SimAgent], revision: int, peers: int) -> bool:
    return all(
        a.health is not None
        and a.health.revision == revision
        and a.health.expected == peers
        and a.health.established == peers
        for a in agents
    )


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def assert_batches_in_order(status: dict[str, object], arrivals: Arrivals, revision: int) -> None:
    batches: dict[int, list[str]] = {}
    for node in status["nodes"]:  # type: ignore[attr-defined]
        batches.setdefault(int(node["batch"]), []).append(node["name"])
    for k in range(1, len(batches)):
        before = max(arrivals.at[(n, revision)] for n in batches[k - 1])
        after = min(arrivals.at[(n, revision)] for n in batches[k])
        assert before < after, f"batch {k} got revision {revision} before batch {k - 1} had it"


@run_async(240)
async def test_good_rollout_over_50_agents(etcd_session: EtcdProcess, tmp_path: Path) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), **FAST_ROLLOUT)
    arrivals = Arrivals()
    agents = agents_for([address(c)], 50, arrivals)
    try:
        await wait_until(lambda: len(c.view.records) == 50, 60, "50 nodes registered")
        await wait_until(
            lambda: all(len(a.nodes) == 50 for a in agents), 60, "the directory everywhere"
        )
        out = await c.repo.push(mesh("aes256gcm16", "one"), filename="mesh.spd")
        assert out.accepted
        await wait_until(lambda: healthy_on(agents, 1, 49), 60, "revision 1 up everywhere")
        new = write(tmp_path, "mesh2.spd", mesh("aes128gcm16, aes256gcm16", "two"))
        res = await ipsecctl(
            "push", str(new), "--rollout", "--canary", "1", "--batch", "25%",
            "--gate-timeout", "60s", "--wait", "-o", "json",
            controller=address(c), timeout=180,
        )  # fmt: skip
        assert res.code == 0, res.out + res.err
        final = json.loads(res.out)
        assert final["state"] == "succeeded" and final["to_revision"] == "2"
        assert final["batches"] == 5  # the canary, then 4 batches of 13 (25 % of 50)
        assert {n["state"] for n in final["nodes"]} == {"healthy"}
        assert all(a.received == [1, 2] for a in agents), [a.received for a in agents]
        assert healthy_on(agents, 2, 49)
        assert_batches_in_order(final, arrivals, 2)
        assert c.hub.serializations == 2  # each revision once, held or not
        # the status afterwards, as a script reads it
        res = await ipsecctl("rollout", "status", "-o", "json", controller=address(c))
        assert res.code == 0 and json.loads(res.out)["state"] == "succeeded"
        res = await ipsecctl("rollout", "status", controller=address(c))
        assert res.code == 0 and "rollout 1: succeeded" in res.out and "node-49" in res.out
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)


@run_async(240)
async def test_bad_proposal_is_refused_then_forced_and_rolled_back(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), **FAST_ROLLOUT)
    arrivals = Arrivals()
    # nobody here supports ChaCha20-Poly1305 for ESP
    agents = agents_for([address(c)], 10, arrivals, unsupported=("chacha20poly1305",))
    try:
        await wait_until(lambda: all(len(a.nodes) == 10 for a in agents), 60, "directory")
        good = mesh("aes256gcm16", "good")
        assert (await c.repo.push(good, filename="mesh.spd")).accepted
        await wait_until(lambda: healthy_on(agents, 1, 9), 60, "revision 1 up everywhere")
        bad = write(tmp_path, "bad.spd", mesh("chacha20poly1305", "bad"))
        flags = ["--canary", "2", "--batch", "50%", "--gate-timeout", "3s"]
        # statically incompatible with revision 1: refused, nothing changes
        res = await ipsecctl("push", str(bad), "--rollout", *flags, controller=address(c))
        assert res.code == 3, res.out + res.err
        assert "--force" in res.err and "mesh" in res.out
        assert await c.repo.current_number() == 1
        # forced: the plan is printed, the canary fails its gate, everything goes back
        res = await ipsecctl(
            "push", str(bad), "--rollout", *flags, "--force", "--wait",
            controller=address(c), timeout=120,
        )  # fmt: skip
        assert res.code == 9, res.out + res.err
        assert "forced past the compatibility check" in res.err
        status = json.loads(
            (await ipsecctl("rollout", "status", "-o", "json", controller=address(c))).out
        )
        assert status["state"] == "failed"
        assert status["rollback_revision"] == "3"
        assert "failed its health gate" in status["reason"]
        by_name = {n["name"]: n for n in status["nodes"]}
        canary = ["node-00", "node-01"]
        for name in canary:
            assert by_name[name]["state"] == "rolled-back", by_name[name]
            assert "NO_PROPOSAL_CHOSEN" in by_name[name]["reason"], by_name[name]
        assert {by_name[n]["state"] for n in by_name if n not in canary} == {"waiting"}
        # no node is left on revision 2; only the canary ever had it
        await wait_until(lambda: all(a.last == 3 for a in agents), 30, "revision 3 everywhere")
        assert [a.name for a in agents if 2 in a.received] == canary
        assert all(a.texts[3] == good for a in agents)
        history = await c.repo.history()
        assert history[0].revision == 3 and history[0].rollback_of == 1
        await wait_until(lambda: healthy_on(agents, 3, 9), 30, "revision 3 up everywhere")
        # a plain push is possible again once the rollout has ended
        assert (await c.repo.push(mesh("aes256gcm16", "after"), filename="m.spd")).accepted
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)


@run_async(240)
async def test_leader_failover_mid_rollout_resumes(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    root = unique_prefix()
    c1 = await start_controller(etcd_session, "r1", root, **FAST_ROLLOUT)
    c2 = await start_controller(etcd_session, "r2", root, **FAST_ROLLOUT)
    arrivals = Arrivals()
    agents = agents_for([address(c1), address(c2)], 12, arrivals)
    stopped = False
    try:
        await wait_until(lambda: c1.is_leader and not c2.is_leader, 20, "r1 leads")
        await wait_until(lambda: all(len(a.nodes) == 12 for a in agents), 60, "directory")
        assert (await c1.repo.push(mesh("aes256gcm16", "one"), filename="m.spd")).accepted
        await wait_until(lambda: healthy_on(agents, 1, 11), 60, "revision 1 everywhere")
        new = write(tmp_path, "two.spd", mesh("aes128gcm16, aes256gcm16", "two"))
        # started through the replica that does not lead; a pause between batches
        res = await ipsecctl(
            "push", str(new), "--rollout", "--batch", "3", "--pause", "1s",
            controller=address(c2),
        )  # fmt: skip
        assert res.code == 0, res.out + res.err
        await wait_until(
            lambda: c1.rollouts.rollout is not None and c1.rollouts.rollout.batch >= 1,
            60,
            "the second batch under r1",
        )
        at_crash = c2.rollouts.rollout
        assert at_crash is not None and at_crash.state in ("running", "paused")
        await stop_controller(c1, crash=True)
        stopped = True
        await wait_until(lambda: c2.is_leader, 30, "r2 to lead")
        res = await ipsecctl(
            "rollout", "status", "--wait", "-o", "json", controller=address(c2), timeout=120
        )
        assert res.code == 0, res.out + res.err
        final = json.loads(res.out)
        assert final["state"] == "succeeded" and final["batches"] == 4
        assert at_crash.batch < 3  # r2 drove at least the last batch
        assert all(a.received == [1, 2] for a in agents), [a.received for a in agents]
        assert all(a.connected[-1].controller == "r2" for a in agents)
        assert_batches_in_order(final, arrivals, 2)
        # the event log in etcd: one key per change, no gap in the sequence
        kvs, _ = await c2.store.get_prefix(c2.keys.root + "rollouts/")
        seqs = [int(kv.key.rsplit("/", 1)[1]) for kv in kvs]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        if not stopped:
            await stop_controller(c1)
        await stop_controller(c2)


@run_async(240)
async def test_pause_resume_abort_and_plain_push_refused(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), **FAST_ROLLOUT)
    arrivals = Arrivals()
    agents = agents_for([address(c)], 6, arrivals)
    try:
        await wait_until(lambda: all(len(a.nodes) == 6 for a in agents), 60, "directory")
        one = mesh("aes256gcm16", "one")
        assert (await c.repo.push(one, filename="m.spd")).accepted
        await wait_until(lambda: healthy_on(agents, 1, 5), 60, "revision 1 everywhere")
        new = write(tmp_path, "two.spd", mesh("aes128gcm16, aes256gcm16", "two"))
        res = await ipsecctl(
            "push", str(new), "--rollout", "--batch", "2", "--pause", "1h",
            controller=address(c),
        )  # fmt: skip
        assert res.code == 0 and "rollout 1 started: revision 1 -> 2" in res.out, res.err
        await wait_until(
            lambda: c.rollouts.rollout is not None and c.rollouts.rollout.next_batch_ms > 0,
            60,
            "the first batch to pass (then the pause)",
        )
        # while it runs: no plain push, no second rollout
        res = await ipsecctl("push", str(new), controller=address(c))
        assert res.code == 3 and "rollout 1" in res.err and "rollout abort" in res.err
        res = await ipsecctl("push", str(new), "--rollout", controller=address(c))
        assert res.code == 3 and "is running" in res.err
        res = await ipsecctl("rollout", "pause", controller=address(c))
        assert res.code == 0 and "paused" in res.out
        res = await ipsecctl("rollout", "pause", controller=address(c))
        assert res.code == 8 and "only a running rollout can be paused" in res.err
        res = await ipsecctl("rollout", "resume", controller=address(c))
        assert res.code == 0 and "running" in res.out
        res = await ipsecctl("rollout", "abort", "--wait", controller=address(c), timeout=60)
        assert res.code == 9, res.out + res.err
        status = json.loads(
            (await ipsecctl("rollout", "status", "-o", "json", controller=address(c))).out
        )
        assert status["state"] == "aborted" and "aborted by" in status["reason"]
        moved = ["node-00", "node-01"]
        states = {n["name"]: n["state"] for n in status["nodes"]}
        assert {states[n] for n in moved} == {"rolled-back"}
        assert {states[n] for n in states if n not in moved} == {"waiting"}
        await wait_until(lambda: all(a.last == 3 for a in agents), 30, "revision 3 everywhere")
        assert [a.name for a in agents if 2 in a.received] == moved
        assert all(a.texts[3] == one for a in agents)
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)
