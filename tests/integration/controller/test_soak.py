"""The short soak (the 30-minute one is bench/bench_soak.py): pushes, reconnect storms
and node churn against one controller over real etcd and gRPC; after a warm-up round,
nothing the controller holds per stream, per node or per request grows, and neither
do the process's open file descriptors and asyncio tasks."""

from __future__ import annotations

import asyncio
import gc
import os

from controller.embedded_etcd import EtcdProcess
from controller.hub import StreamState
from controller.server import Controller
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix
from tests.support.policies import policy

STEADY = 60  # agents that stay (reconnecting in every storm)
CHURN = 10  # agents replaced in every round, by names from a pool of 2 * CHURN
ROUNDS = 6  # the first two are the warm-up (the churn pool is used once by then)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _stream_objects() -> int:
    gc.collect()
    return sum(isinstance(o, StreamState) for o in gc.get_objects())


def _held(c: Controller) -> dict[str, int]:
    """What the controller holds that could grow per stream, node or request."""
    return {
        "streams": len(c.hub.streams),
        "stream_objects": _stream_objects(),
        "registry_local": len(c.registry.local),
        "registry_last_seen": len(c.registry.last_seen),
        "pending_final": len(c.registry._pending_final),
        "conn_deletes": len(c.registry.conn_deletes),
        "metrics_connected": len(c.metrics._connected),
        "queries": len(c._queries),
        "sha_reads": len(c._sha_reads),
        "echo": len(c.view._echo),
        "directory_log": len(c.hub.feed._order),
        "node_records": len(c.view.records),
    }


@run_async(150)
async def test_pushes_storms_and_churn_leave_nothing_behind(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), ping_interval=0.5)
    steady = [
        SimAgent(f"s{i:03d}", [address(c)], capabilities=("directory",) if i % 2 else ()).start()
        for i in range(STEADY)
    ]
    churn: list[SimAgent] = []
    samples: list[tuple[int, int, dict[str, int]]] = []
    try:
        await wait_until(lambda: len(c.hub.streams) == STEADY, 30, "the steady agents")
        for r in range(1, ROUNDS + 1):
            # node churn: this round's nodes replace the last round's (names cycle)
            await asyncio.gather(*(a.stop() for a in churn))
            base = (r % 2) * CHURN
            churn = [
                SimAgent(f"c{base + i:03d}", [address(c)], capabilities=("directory",)).start()
                for i in range(CHURN)
            ]
            everyone = steady + churn
            names = {a.name for a in everyone}
            await wait_until(lambda names=names: set(c.hub.streams) == names, 30, "churn")
            # a push every agent applies
            out = await c.repo.push(policy(r), filename="p.spd", author="soak")
            assert out.accepted
            await wait_until(
                lambda r=r, e=everyone: all(a.last == r for a in e), 30, f"revision {r}"
            )
            # a reconnect storm: every stream ends at once, every agent resumes
            before = {a.name: len(a.connected) for a in everyone}
            for stream in list(c.hub.streams.values()):
                stream.close(kill=True, reason="soak: reconnect storm")
            await wait_until(
                lambda b=before, e=everyone: all(len(a.connected) > b[a.name] for a in e),
                30,
                "every agent back",
            )
            await wait_until(lambda names=names: set(c.hub.streams) == names, 30, "streams")
            assert all(a.connected[-1].resumed for a in everyone)
            # the registry has written what the round changed, the directory is sent
            await wait_until(
                lambda: (
                    not c.registry.conn_deletes
                    and not c.registry._pending_final
                    and not any(n.dirty for n in c.registry.local.values())
                    and not c.view._echo  # every write seen back through the watch
                    and not c.view.dir_dirty
                ),
                30,
                "the registry and directory settled",
            )
            watchers = [a for a in everyone if a.capabilities and a.stream is not None]
            await wait_until(
                lambda w=watchers: all(
                    a.stream is not None and a.stream.directory.version == c.hub.directory_version
                    for a in w
                ),
                30,
                "every directory up to date",
            )
            samples.append((_fds(), len(asyncio.all_tasks()), _held(c)))
        warm_fds, warm_tasks, warm = samples[1]
        for fds, tasks, held in samples[2:]:
            # gRPC lets go of the last few ended calls (and their stream states) later:
            # a couple linger, never one per stream or per round
            assert held.pop("stream_objects") <= held["streams"] + 8, held
            assert held == {k: v for k, v in warm.items() if k != "stream_objects"}, held
            # sockets and tasks of gRPC's own close asynchronously: a leak of one per
            # stream or per round would exceed this within the rounds
            assert fds <= warm_fds + 8, [s[0] for s in samples]
            assert tasks <= warm_tasks + 8, [s[1] for s in samples]
        # node records: the steady nodes and the whole churn pool, never more
        assert warm["node_records"] == STEADY + 2 * CHURN
        assert warm["streams"] == STEADY + CHURN
        # per-node state only for the nodes connected here (nothing of the churned ones)
        for key in ("registry_local", "registry_last_seen", "metrics_connected"):
            assert warm[key] == warm["streams"], (key, warm)
    finally:
        await asyncio.gather(*(a.stop() for a in steady + churn))
        await stop_controller(c)
