"""Agents that stop reading their stream, among agents that read (real gRPC, real etcd):
the others get every revision in order; a stream that does not drain is dropped
(``drain_timeout``) and its agent catches up when it reads again."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import grpc.aio

from agent.stream import CHANNEL_OPTIONS
from controller.embedded_etcd import EtcdProcess
from ipsecd.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix

REVISIONS = 20
# Without BDP probing the receiver's HTTP/2 window stays at its initial 64 KiB, so a
# reader that stops blocks the controller's writes after a message or two (with it,
# gRPC buffers several MiB first; bench/bench_controller.py measures that case).
SMALL_WINDOW = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]


def fat_policy(n: int, rules: int = 1200) -> str:
    """~100 KB of valid SPD, distinct per ``n``."""
    return f"# revision {n}\n" + "".join(
        f"spdadd 10.{i % 250}.{n % 250}.{i // 250}/32 10.{(i + 7) % 250}.{n % 250}.0/24 any "
        "-P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
        for i in range(rules)
    )


async def mute_agent(ctl: str, dropped: asyncio.Event) -> str:
    """A stream that does not read but keeps talking (status every 0.1 s), so only the
    drain check — not the silence check — can end it.  Once ``dropped`` is set it reads
    what was buffered for it; returns the status message the stream ended with."""
    async with grpc.aio.insecure_channel(ctl, options=SMALL_WINDOW) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Connect()
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(node="mute")))
        status = agent_pb2.AgentMessage(status=types_pb2.NodeStatus(health=types_pb2.HEALTH_OK))
        try:
            while not dropped.is_set():
                await asyncio.sleep(0.1)
                with contextlib.suppress(asyncio.InvalidStateError):
                    await call.write(status)
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        finally:
            call.cancel()
    return "EOF"


@run_async(180)
async def test_streams_that_do_not_drain_are_dropped_and_the_others_get_everything(
    etcd_session: EtcdProcess,
) -> None:
    c = await start_controller(
        etcd_session,
        "r1",
        unique_prefix(),
        ping_interval=0.5,
        ping_timeout=120.0,  # the drain check alone must find them
        drain_timeout=1.0,
    )
    ctl = address(c)
    gate = asyncio.Event()
    readers = [SimAgent(f"reader-{i}", [ctl]).start() for i in range(4)]
    stalled = SimAgent("stalled", [ctl], stall=gate)
    stalled.start(channel_options=SMALL_WINDOW, idle_timeout=120.0)
    dropped = asyncio.Event()
    mute = asyncio.create_task(mute_agent(ctl, dropped))
    try:
        await wait_until(lambda: len(c.hub.streams) == 6, 30, "6 streams")
        for n in range(1, REVISIONS + 1):
            out = await c.repo.push(fat_policy(n), filename="p.spd")
            assert out.accepted
            await wait_until(
                lambda n=n: all(a.last == n for a in readers), 30, f"revision {n} at the readers"
            )
        # the readers: every revision, once, in order, whatever the other two do
        assert all(a.received == list(range(1, REVISIONS + 1)) for a in readers)
        # both streams that stopped draining were dropped: gone from the hub at once
        await wait_until(lambda: c.dropped_stalled >= 2, 30, "two dropped streams")
        assert "mute" not in c.hub.streams and "stalled" not in c.hub.streams
        # when the mute one reads, it gets what was in flight, then the reason
        dropped.set()
        ended = await asyncio.wait_for(mute, 30)
        assert ended.startswith("UNAVAILABLE: the controller dropped this stream"), ended
        assert "--stream-drain-timeout" in ended
        # the stalled agent reads again: it finishes what it had, notices the stream
        # is gone, reconnects and catches up with the newest revision
        gate.set()
        await wait_until(lambda: stalled.last == REVISIONS, 60, "the stalled agent")
        assert stalled.received == sorted(set(stalled.received)), stalled.received
        assert stalled.stream is not None and stalled.stream.connects >= 2
        assert stalled.texts[REVISIONS] == fat_policy(REVISIONS)
        # and it is served normally again
        out = await c.repo.push(fat_policy(REVISIONS + 1), filename="p.spd")
        assert out.accepted
        everyone = [*readers, stalled]
        await wait_until(
            lambda: all(a.last == REVISIONS + 1 for a in everyone), 30, "one more revision"
        )
    finally:
        gate.set()
        dropped.set()
        mute.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mute
        await asyncio.gather(*(a.stop() for a in [*readers, stalled]))
        await stop_controller(c)
