"""Half-open streams are found from both ends (app-level ping/pong, agent idle timer)."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from controller.embedded_etcd import EtcdProcess
from ipsecd.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix


@run_async(60)
async def test_controller_closes_a_stream_that_stops_answering(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), ping_timeout=2.0)
    try:
        async with grpc.aio.insecure_channel(address(c)) as ch:
            call = agent_pb2_grpc.AgentServiceStub(ch).Connect()
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(node="mute")))
            kinds = []
            # read (so transport stays healthy) but never answer a ping
            try:
                while True:
                    msg = await asyncio.wait_for(call.read(), 20)
                    if msg is grpc.aio.EOF:
                        break
                    kinds.append(msg.WhichOneof("kind"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
            assert kinds[0] == "snapshot" and "ping" in kinds
        await wait_until(lambda: "mute" not in c.hub.streams, 10, "the stream to be dropped")
    finally:
        await stop_controller(c)


@run_async(60)
async def test_agent_replaces_a_silent_stream(etcd_session: EtcdProcess) -> None:
    # the controller pings rarely; the agent expects something every second
    c = await start_controller(etcd_session, "r1", unique_prefix(), ping_interval=60.0)
    agent = SimAgent("impatient", [address(c)]).start(idle_timeout=1.0)
    try:
        await wait_until(lambda: len(agent.lost) >= 2, 20, "two replaced streams")
        assert "half-open" in agent.lost[0].reason
        assert agent.stream is not None and agent.stream.connects >= 2
        assert all(ev.resumed or ev.current_revision == 0 for ev in agent.connected)
    finally:
        await agent.stop()
        await stop_controller(c)
