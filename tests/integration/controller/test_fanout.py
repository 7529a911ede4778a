"""Fan-out over real gRPC: every revision once and in order, slow agents coalesce,
reconnecting agents resume without a snapshot, the directory reaches who asks."""

from __future__ import annotations

import asyncio

from controller.embedded_etcd import EtcdProcess
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix
from tests.support.policies import policy

AGENTS = 200
REVISIONS = 5


@run_async(120)
async def test_200_agents_get_every_revision_exactly_once_in_order(
    etcd_session: EtcdProcess,
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), ping_interval=5.0)
    agents = [SimAgent(f"node-{i:03d}", [address(c)]).start() for i in range(AGENTS)]
    try:
        await wait_until(lambda: len(c.hub.streams) == AGENTS, 60, f"{AGENTS} streams")
        for n in range(1, REVISIONS + 1):
            out = await c.repo.push(policy(n), filename="p.spd", author="test")
            assert out.accepted and out.revision is not None and out.revision.revision == n
            await wait_until(
                lambda n=n: all(a.last == n for a in agents), 60, f"revision {n} everywhere"
            )
        expected = list(range(1, REVISIONS + 1))
        wrong = {a.name: a.received for a in agents if a.received != expected}
        assert not wrong, f"{len(wrong)} agents got a different sequence, e.g. {wrong}"
        assert all(a.snapshots == [] for a in agents)  # joined before revision 1
        assert all(a.texts[REVISIONS] == policy(REVISIONS) for a in agents)
        # serialized once per revision, not once per stream
        assert c.hub.serializations == REVISIONS
        # acks reach the registry: status shows the applied revision for every node
        await wait_until(
            lambda: (
                sum(
                    1
                    for r in c.view.records.values()
                    if r.get("status", {}).get("applied_revision") == REVISIONS
                )
                == AGENTS
            ),
            30,
            "acks of the last revision recorded in etcd",
        )
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)


@run_async(60)
async def test_stuck_agent_does_not_delay_others_and_coalesces(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), ping_interval=5.0)
    gate = asyncio.Event()
    stuck = SimAgent("stuck", [address(c)], stall=gate).start()
    others = [SimAgent(f"fast-{i}", [address(c)]).start() for i in range(5)]
    try:
        await wait_until(lambda: len(c.hub.streams) == 6, 20, "6 streams")
        for n in range(1, 6):
            await c.repo.push(policy(n), filename="p.spd")
            await wait_until(lambda n=n: all(a.last == n for a in others), 20, f"rev {n}")
        assert stuck.received == []  # still blocked on revision 1
        # its slot holds at most one pending policy message: the newest
        st = c.hub.streams["stuck"]
        assert st.pending_policy is None or st.pending_policy[0] == 5
        assert len(st.control) <= 8
        gate.set()
        await wait_until(lambda: stuck.last == 5, 20, "the stuck agent to catch up")
        # in order, no duplicates, ends at the newest (how much was coalesced depends on
        # transport buffering; tests/unit/controller/test_hub.py checks the coalescing)
        assert stuck.received[0] == 1 and stuck.received[-1] == 5
        assert stuck.received == sorted(set(stuck.received))
    finally:
        gate.set()
        await asyncio.gather(stuck.stop(), *(a.stop() for a in others))
        await stop_controller(c)


@run_async(60)
async def test_reconnect_resumes_without_snapshot(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    a = SimAgent("resumer", [address(c)]).start()
    try:
        await c.repo.push(policy(1), filename="p.spd")
        await wait_until(lambda: a.last == 1, 20, "revision 1")
        assert a.snapshots == [1] or a.snapshots == []
        await a.stop()
        await wait_until(lambda: "resumer" not in c.hub.streams, 20, "stream closed")
        # nothing missed: resume, no policy resent
        b = SimAgent("resumer", [address(c)])
        b.start(last_revision=1, last_sha256=a.stream.last_sha256 if a.stream else "")
        await wait_until(lambda: bool(b.connected), 20, "second connect")
        assert b.connected[0].resumed and b.received == []
        await b.stop()
        # missed revisions 2 and 3: only the newest is sent, no snapshot
        await c.repo.push(policy(2), filename="p.spd")
        await c.repo.push(policy(3), filename="p.spd")
        d = SimAgent("resumer", [address(c)])
        d.start(last_revision=1, last_sha256=a.stream.last_sha256 if a.stream else "")
        await wait_until(lambda: d.last == 3, 20, "revision 3 after resume")
        assert d.connected[0].resumed and d.received == [3] and d.snapshots == []
        await d.stop()
        # a revision the controller does not know (wrong sha): full snapshot
        e = SimAgent("resumer", [address(c)])
        e.start(last_revision=2, last_sha256="0" * 64)
        await wait_until(lambda: e.last == 3, 20, "snapshot")
        assert not e.connected[0].resumed and e.snapshots == [3]
        await e.stop()
        # an agent ahead of this replica (its watch lags): never sent an older policy
        f = SimAgent("resumer", [address(c)])
        f.start(last_revision=99, last_sha256="f" * 64)
        await wait_until(lambda: bool(f.connected), 20, "connect of an agent ahead")
        assert f.connected[0].resumed and f.connected[0].current_revision == 3
        await c.repo.push(policy(4), filename="p.spd")
        await wait_until(lambda: c.hub.latest is not None and c.hub.latest.revision == 4, 20, "4")
        await asyncio.sleep(0.3)
        assert f.received == []  # 4 < 99: nothing older than what the agent holds
        await f.stop()
    finally:
        await a.stop()
        await stop_controller(c)


@run_async(60)
async def test_directory_goes_to_agents_that_ask(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    watcher = SimAgent("watcher", [address(c)], capabilities=("directory",)).start()
    plain = SimAgent("plain", [address(c)]).start()
    try:
        await wait_until(
            lambda: any(
                {n.name for n in d.nodes} == {"watcher", "plain"} for d in watcher.directories
            ),
            20,
            "a directory listing both nodes",
        )
        entry = next(n for n in watcher.directories[-1].nodes if n.name == "plain")
        assert list(entry.addresses) and entry.labels["role"] == "worker"
        assert plain.directories == []
    finally:
        await asyncio.gather(watcher.stop(), plain.stop())
        await stop_controller(c)


@run_async(90)
async def test_directory_goes_as_deltas_and_resumes_across_a_controller_restart(
    etcd_session: EtcdProcess,
) -> None:
    root = unique_prefix()
    c = await start_controller(etcd_session, "r1", root)
    await c.repo.push(policy(1), filename="p.spd")  # so that reconnecting agents resume
    watcher = SimAgent("watcher", [address(c)], capabilities=("directory",)).start()
    others = [SimAgent(f"n{i}", [address(c)]).start() for i in range(5)]
    extra: SimAgent | None = None
    try:
        want = {"watcher", *(f"n{i}" for i in range(5))}
        await wait_until(
            lambda: (
                bool(watcher.directories)
                and {n.name for n in watcher.directories[-1].nodes} == want
            ),
            20,
            "the directory of 6 nodes",
        )
        assert watcher.directories[0].whole  # the first one is the whole directory
        assert not any(d.whole for d in watcher.directories[1:])  # then changes only
        await wait_until(lambda: watcher.last == 1, 20, "revision 1")
        seen = len(watcher.directories)
        # a node joins: one delta naming it; the event still lists every node
        extra = SimAgent("joiner", [address(c)]).start()
        await wait_until(
            lambda: any("joiner" in d.changed for d in watcher.directories[seen:]),
            20,
            "a delta with the new node",
        )
        ev = next(d for d in watcher.directories[seen:] if "joiner" in d.changed)
        assert not ev.whole and ev.changed == ("joiner",) and ev.removed == ()
        assert {n.name for n in ev.nodes} == {*want, "joiner"}
        assert [n.name for n in ev.nodes] == sorted(n.name for n in ev.nodes)
        stream = watcher.stream
        assert stream is not None
        assert stream.directory.version == c.hub.directory_version
        assert stream.directory.digest() == c.hub.feed.digest()
        # the stream ends and comes back: resumed, the directory is not sent again
        before = len(watcher.directories)
        c.hub.streams["watcher"].close(kill=True, reason="test: reconnect")
        await wait_until(lambda: len(watcher.connected) == 2, 20, "the second connect")
        assert watcher.connected[1].resumed
        await wait_until(lambda: len(c.hub.streams) == 7, 20, "7 streams again")
        assert watcher.directories[before:] == []
        # a restarted controller has a new feed (other version numbers): the agent's
        # digest is its digest, so at most a renumbering comes, never the whole directory
        await stop_controller(c)
        c = await start_controller(etcd_session, "r1", root)
        await wait_until(lambda: c.hub.feed.published, 20, "the new controller's directory")
        assert c.hub.feed.digest() == stream.directory.digest()
        stream.controllers = [address(c)]
        await wait_until(lambda: len(watcher.connected) == 3, 30, "the watcher back")
        assert watcher.connected[2].resumed
        await wait_until(
            lambda: stream.directory.version == c.hub.directory_version, 20, "renumbered"
        )
        after = watcher.directories[before:]
        assert after and all(not (d.whole or d.changed or d.removed) for d in after), after
    finally:
        await asyncio.gather(watcher.stop(), *(a.stop() for a in others))
        if extra is not None:
            await extra.stop()
        await stop_controller(c)
