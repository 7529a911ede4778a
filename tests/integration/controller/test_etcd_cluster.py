"""A real three-member etcd cluster on 127.0.0.1: pushes across a leader kill, and a
clear failure when the cluster loses its quorum."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from controller.cli_remote import EXIT
from controller.etcd_store import EtcdStore
from ipsecd.v1 import policy_pb2, policy_pb2_grpc
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import (
    SimAgent,
    address,
    start_controller,
    stop_controller,
)
from tests.support.aio import run_async, wait_until
from tests.support.etcd import EtcdCluster, unique_prefix
from tests.support.policies import policy

RPC_TIMEOUT = 15.0  # as ipsecctl


@dataclass
class Attempt:
    n: int
    revision: int = 0  # accepted revision (0: failed)
    code: grpc.StatusCode | None = None
    kind: str = ""
    details: str = ""


async def _push(stub: policy_pb2_grpc.PolicyServiceStub, n: int) -> Attempt:
    try:
        resp = await stub.Push(
            policy_pb2.PushRequest(text=policy(n), filename=f"p{n}.spd", author="t"),
            timeout=RPC_TIMEOUT,
        )
    except grpc.aio.AioRpcError as exc:
        kind = dict(exc.trailing_metadata() or ()).get("ipsecd-error", "")
        return Attempt(n, 0, exc.code(), str(kind), exc.details() or "")
    assert resp.accepted and not resp.unchanged, resp
    return Attempt(n, resp.revision.revision)


def _sha(n: int) -> str:
    return hashlib.sha256(policy(n).encode()).hexdigest()


@run_async(150)
async def test_pushes_across_an_etcd_leader_kill_apply_exactly_once(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    c = await start_controller(etcd_cluster, "r1", unique_prefix())
    agents = [SimAgent(f"n{i}", [address(c)]).start() for i in range(3)]
    store = c.store
    assert isinstance(store, EtcdStore)
    attempts: list[Attempt] = []
    killed = asyncio.Event()
    cli_file = tmp_path / "cli.spd"
    cli_file.write_text(policy(999))
    cli_file.chmod(0o600)
    try:
        async with grpc.aio.insecure_channel(address(c)) as ch:
            stub = policy_pb2_grpc.PolicyServiceStub(ch)

            async def pusher() -> None:
                n = 0
                after_kill = 0
                # keep pushing, one at a time as an operator would, until well after the
                # kill (a push starts every few ms: some are in flight when it happens)
                while after_kill < 15:
                    n += 1
                    attempts.append(await _push(stub, n))
                    if killed.is_set():
                        after_kill += 1

            task = asyncio.create_task(pusher())
            await wait_until(lambda: len(attempts) >= 5, 30, "the first pushes")
            leader = etcd_cluster.leader()
            assert leader is not None
            # the ipsecctl process pushes at the same moment as the loop, across the kill
            cli = asyncio.create_task(ipsecctl("push", str(cli_file), controller=address(c)))
            await asyncio.sleep(0.2)
            etcd_cluster.kill(leader)
            killed.set()
            await asyncio.wait_for(task, 120)
            r = await cli
            await asyncio.to_thread(etcd_cluster.wait_leader)

        failed = [a for a in attempts if not a.revision]
        for a in failed:  # a clear error, never a raw transport error
            if a.code == grpc.StatusCode.ABORTED:  # raced the ipsecctl push: a real conflict
                assert a.kind == "conflict" and "ipsecctl diff" in a.details, a
            else:
                assert a.code == grpc.StatusCode.UNAVAILABLE, a
                assert a.kind == "store-unavailable" and "etcd" in a.details, a
        # the leader change was seen and ridden out (not failed at once, as before)
        assert store.retries > 0
        assert any(a.revision for a in attempts[-5:]), attempts[-5:]
        history = await c.repo.history()
        numbers = sorted(h.revision for h in history)
        assert numbers == list(range(1, len(numbers) + 1))  # no gaps, no repeats
        shas = [h.sha256 for h in history]
        assert len(shas) == len(set(shas)), "a push was applied twice"
        by_sha = {h.sha256: h.revision for h in history}
        for a in attempts:
            if a.revision:  # succeeded: applied exactly once, as the revision it names
                assert by_sha.get(_sha(a.n)) == a.revision, a
            elif "may or may not" not in a.details:  # failed and said so: not applied
                assert _sha(a.n) not in by_sha, a
        assert r.code in (EXIT["ok"], EXIT["conflict"], EXIT["store-unavailable"]), r
        if r.code == EXIT["ok"]:
            assert _sha(999) in by_sha, r
        else:
            assert r.err.startswith("error: ") and r.err.count("\n") == 1, r
        # the fan-out's watch survived the leader change: the newest reaches every agent
        current = await c.repo.current_number()
        await wait_until(lambda: all(a.last == current for a in agents), 30, "newest revision")
        for a in agents:
            assert a.received == sorted(set(a.received)), a.received
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
        await stop_controller(c)


@run_async(120)
async def test_quorum_loss_fails_clearly_and_recovers(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    # a short retry budget keeps the test short; the default is 10 s
    c = await start_controller(
        etcd_cluster, "r1", unique_prefix(), store_options={"retry_budget": 3.0}
    )
    try:
        files = []
        for n in (1, 2, 3):
            f = tmp_path / f"p{n}.spd"
            f.write_text(policy(n))
            f.chmod(0o600)
            files.append(f)
        r = await ipsecctl("push", str(files[0]), controller=address(c))
        assert r.code == EXIT["ok"], r
        leader = etcd_cluster.leader()
        assert leader is not None
        other = next(n for n in etcd_cluster.running() if n != leader)
        etcd_cluster.kill(leader)
        etcd_cluster.kill(other)  # one member of three left: no quorum
        r = await ipsecctl("push", str(files[1]), controller=address(c))
        assert r.code == EXIT["store-unavailable"] == 6, r
        assert r.err.startswith("error: the controller at") and r.err.count("\n") == 1, r
        assert "cannot reach etcd" in r.err and "majority" in r.err, r
        assert "Traceback" not in r.err
        # back to quorum: pushes work again, and the failed one left nothing behind
        await asyncio.to_thread(etcd_cluster.start, leader)
        await asyncio.to_thread(etcd_cluster.wait_leader)
        for _ in range(50):
            r = await ipsecctl("push", str(files[2]), controller=address(c))
            if r.code != EXIT["store-unavailable"]:
                break
            await asyncio.sleep(0.2)
        assert r.code == EXIT["ok"] and "pushed revision 2" in r.out, r
        history = await c.repo.history()
        assert [h.sha256 for h in history] == [_sha(3), _sha(1)]
    finally:
        await stop_controller(c)
