"""etcd restarts and controller failover, with real etcd, real gRPC, real sockets."""

from __future__ import annotations

import asyncio
import json

import grpc
import grpc.aio

from controller.cli_remote import EXIT
from controller.embedded_etcd import EtcdProcess
from controller.errors import StoreUnavailable
from ipsecd.v1 import status_pb2, status_pb2_grpc
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix
from tests.support.policies import policy


@run_async(90)
async def test_etcd_restart_keeps_streams_and_policy(etcd_server: EtcdProcess) -> None:
    c = await start_controller(etcd_server, "r1", unique_prefix())
    agents = [SimAgent(f"n{i}", [address(c)]).start() for i in range(10)]
    try:
        await c.repo.push(policy(1), filename="p.spd")
        await wait_until(lambda: all(a.last == 1 for a in agents), 20, "revision 1")
        connects = [a.stream.connects if a.stream else 0 for a in agents]
        etcd_server.stop(kill=True)
        await asyncio.sleep(1.5)  # streams live on while etcd is down (pings keep going)
        assert all(a.stream is not None and a.stream.connected for a in agents)
        assert all(a.last == 1 for a in agents)  # agents keep their policy
        etcd_server.start()
        # the controller's one watch resumes: a push after the restart reaches everyone
        # over the same streams
        await wait_until(lambda: c.watch_synced.is_set(), 10, "watch")
        for attempt in range(50):
            try:
                out = await c.repo.push(policy(2), filename="p.spd")
                break
            except StoreUnavailable:  # etcd may need a moment after its start
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        assert out.accepted
        await wait_until(lambda: all(a.last == 2 for a in agents), 30, "revision 2")
        assert [a.received for a in agents] == [[1, 2]] * 10
        assert [a.stream.connects if a.stream else 0 for a in agents] == connects
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)


@run_async(90)
async def test_failover_between_two_replicas(etcd_session: EtcdProcess) -> None:
    root = unique_prefix()
    c1 = await start_controller(etcd_session, "r1", root)
    c2 = await start_controller(etcd_session, "r2", root)
    stopped = False
    agents = [SimAgent(f"n{i}", [address(c1), address(c2)]).start() for i in range(20)]
    try:
        await wait_until(lambda: c1.is_leader != c2.is_leader, 20, "exactly one leader")
        assert c1.is_leader  # first to campaign
        await c2.repo.push(policy(1), filename="p.spd")  # via the other replica
        await wait_until(lambda: all(a.last == 1 for a in agents), 20, "revision 1")
        assert len(c1.hub.streams) == 20 and not c2.hub.streams
        # kill r1 without a goodbye: its lease is left to expire
        await stop_controller(c1, crash=True)
        stopped = True
        await wait_until(lambda: len(c2.hub.streams) == 20, 30, "agents on r2")
        await wait_until(
            lambda: all(a.connected[-1].controller == "r2" for a in agents), 10, "resumes"
        )
        for a in agents:
            assert a.connected[-1].controller == "r2" and a.connected[-1].resumed
        await wait_until(lambda: c2.is_leader, 30, "r2 to take over the leadership")
        await c2.repo.push(policy(2), filename="p.spd")
        await wait_until(lambda: all(a.last == 2 for a in agents), 20, "revision 2")
        assert all(a.received == [1, 2] for a in agents)
        # conn keys now point at r2 (r1's expired with its lease)
        await wait_until(
            lambda: all(c2.view.conns.get(a.name, {}).get("replica") == "r2" for a in agents),
            20,
            "registry to show r2",
        )
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        if not stopped:
            await stop_controller(c1)
        await stop_controller(c2)


@run_async(60)
async def test_live_status_forwarded_and_stale_fallback(etcd_session: EtcdProcess) -> None:
    root = unique_prefix()
    c1 = await start_controller(etcd_session, "r1", root)
    c2 = await start_controller(etcd_session, "r2", root)
    agent = SimAgent("lonely", [address(c1)]).start()
    try:
        await c1.repo.push(policy(1), filename="p.spd")
        await wait_until(lambda: agent.last == 1, 20, "revision 1")
        await wait_until(lambda: "lonely" in c2.view.conns, 20, "r2 to see the node")
        async with grpc.aio.insecure_channel(address(c2)) as ch:
            stub = status_pb2_grpc.StatusServiceStub(ch)
            # asked at r2, answered live by the node through r1
            resp = await stub.GetNodeStatus(status_pb2.NodeStatusRequest(node="lonely"))
            assert resp.live and not resp.stale
            assert resp.node.status.ike_sas == 2 and resp.node.status.child_sas == 4
            assert resp.node.controller == "r1" and resp.node.connected
            await wait_until(
                lambda: c2.view.records["lonely"].get("status", {}).get("applied_revision") == 1,
                20,
                "the ack to reach r2 through etcd",
            )
            r = await ipsecctl("status", "lonely", controller=address(c2))
            assert r.code == 0 and "live: answered by the node" in r.out, r
            assert r.out.splitlines()[1].split()[:6] == ["lonely", "yes", "r1", "1", "ok", "2"]
            listing = await stub.ListNodes(status_pb2.ListNodesRequest())
            assert [n.name for n in listing.nodes] == ["lonely"]
            assert listing.nodes[0].status.applied_revision == 1
            # the node goes away: last report, marked stale
            await agent.stop()
            await wait_until(lambda: "lonely" not in c2.view.conns, 20, "disconnect seen")
            resp = await stub.GetNodeStatus(status_pb2.NodeStatusRequest(node="lonely"))
            assert resp.stale and not resp.live and "not connected" in resp.note
            assert resp.node.status.applied_revision == 1 and not resp.node.connected
            r = await ipsecctl("status", "lonely", "-o", "json", controller=address(c2))
            data = json.loads(r.out)
            assert r.code == 0 and data["stale"] is True and data["live"] is False
            r = await ipsecctl("status", "nobody", controller=address(c2))
            assert r.code == EXIT["not-found"] and "unknown" in r.err
            try:
                await stub.GetNodeStatus(status_pb2.NodeStatusRequest(node="nobody"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("unknown node must be NOT_FOUND")
    finally:
        await agent.stop()
        await stop_controller(c1)
        await stop_controller(c2)
