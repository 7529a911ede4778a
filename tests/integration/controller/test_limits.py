"""Bounds on controller inputs over real gRPC and real etcd (docs/limits.md,
"Controller"): policy size at ipsecctl, at the handler, at gRPC and at etcd; large
policies end to end; agent messages; live query timeouts."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio

from controller.cli_remote import EXIT
from controller.embedded_etcd import EtcdProcess, free_port
from controller.etcd_pki import ensure_etcd_pki
from controller.limits import (
    MAX_AGENT_MESSAGE_BYTES,
    MAX_COMMENT_BYTES,
    MAX_REQUEST_BYTES,
    POLICY_BYTES_CEILING,
    MiB,
    client_channel_options,
)
from controller.server import Controller
from ipsecd.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)
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

LIMIT = 64 * 1024  # a small --max-policy-bytes keeps these tests light


def big_policy(n: int, size: int) -> str:
    """A valid SPD text of at least ``size`` bytes (setkey lines, distinct per ``n``)."""
    lines = [f"# large policy {n}: é ü ✓"]  # non-ASCII on purpose
    i = 0
    total = len(lines[0])
    while total < size:
        line = (
            f"spdadd 10.{i % 250}.{n % 250}.{i // 250 % 250}/32 10.{(i + 7) % 250}.{n % 250}.0/24 "
            f"any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;"
        )
        lines.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n"


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o600)
    return path


async def unchanged(c: Controller, current: int, count: int) -> None:
    assert await c.repo.current_number() == current
    assert len(await c.repo.history()) == count


def kind_of(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get("ipsecd-error", ""))


@run_async(120)
async def test_a_policy_over_the_limit_is_refused_and_changes_nothing(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix(), max_policy_bytes=LIMIT)
    ctl = address(c)
    try:
        assert (await c.repo.push(policy(1), filename="p.spd")).accepted
        over = big_policy(2, LIMIT + 1)
        # the handler answers with the limit and the fix
        async with grpc.aio.insecure_channel(ctl, options=client_channel_options()) as ch:
            stub = policy_pb2_grpc.PolicyServiceStub(ch)
            for call in (
                stub.Push(policy_pb2.PushRequest(text=over, filename="big.spd")),
                stub.Validate(policy_pb2.ValidateRequest(text=over, filename="big.spd")),
                stub.Push(policy_pb2.PushRequest(text=policy(3), comment="x" * 5000)),
            ):
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    assert kind_of(exc) == "invalid"
                    details = exc.details() or ""
                    assert "nothing changed" in details and "\n" not in details
                    if "comment" in details:
                        assert f"{MAX_COMMENT_BYTES:,} bytes" in details
                    else:
                        assert f"{LIMIT:,} bytes" in details and "--max-policy-bytes" in details
                else:
                    raise AssertionError("an over-limit request was accepted")
            await unchanged(c, 1, 1)
            # over gRPC's own receive limit: refused before the handler, still nothing
            huge = "#" * (MAX_REQUEST_BYTES + 1)
            try:
                await stub.Push(policy_pb2.PushRequest(text=huge, filename="huge.spd"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            else:
                raise AssertionError("a message over gRPC's limit was accepted")
            await unchanged(c, 1, 1)
        # ipsecctl: the controller's answer, one line, exit 1
        f = write(tmp_path, "big.spd", over)
        r = await ipsecctl("push", str(f), controller=ctl)
        assert r.code == EXIT["invalid"] == 1, r
        assert r.err.startswith(f"error: policy {f} is ") and r.err.count("\n") == 1, r
        assert "--max-policy-bytes" in r.err and "Traceback" not in r.err
        # over the ceiling: ipsecctl refuses before sending (no controller is listening)
        g = write(tmp_path, "huge.spd", "#" * (POLICY_BYTES_CEILING + 1) + "\n")
        r = await ipsecctl("push", str(g), controller=f"127.0.0.1:{free_port()}")
        assert r.code == EXIT["invalid"], r
        assert "no controller accepts" in r.err and "nothing was sent" in r.err, r
        await unchanged(c, 1, 1)
        # at the limit exactly: accepted
        at = big_policy(4, LIMIT - 200)
        at += "#" * (LIMIT - len(at.encode()) - 1) + "\n"
        assert len(at.encode()) == LIMIT
        r = await ipsecctl("push", str(write(tmp_path, "at.spd", at)), controller=ctl)
        assert r.code == EXIT["ok"] and "pushed revision 2" in r.out, r
    finally:
        await stop_controller(c)


@run_async(180)
async def test_large_policies_end_to_end(etcd_session: EtcdProcess, tmp_path: Path) -> None:
    # Six revisions of ~0.9 MiB (default limit 1 MiB): together over gRPC's 4 MiB
    # default message size, which the history once had to fit in one etcd answer.
    c = await start_controller(etcd_session, "r1", unique_prefix())
    ctl = address(c)
    agent = SimAgent("big", [ctl]).start()
    try:
        texts = [big_policy(n, int(0.9 * MiB)) for n in range(1, 7)]
        for n, text in enumerate(texts, 1):
            r = await ipsecctl("push", str(write(tmp_path, f"p{n}.spd", text)), controller=ctl)
            assert r.code == EXIT["ok"] and f"pushed revision {n}" in r.out, r
        await wait_until(lambda: agent.last == 6, 60, "the newest large revision")
        assert agent.texts[6] == texts[5]
        r = await ipsecctl("history", controller=ctl)
        assert r.code == EXIT["ok"], r
        assert [line.split()[0] for line in r.out.splitlines()[1:]] == [
            "6*",
            "5",
            "4",
            "3",
            "2",
            "1",
        ]
        r = await ipsecctl("history", "--limit", "2", controller=ctl)
        assert len(r.out.splitlines()) == 3, r
        r = await ipsecctl("get", "--revision", "3", controller=ctl)
        assert r.code == EXIT["ok"] and r.out == texts[2], r.err
        r = await ipsecctl("diff", "1", "6", controller=ctl)
        assert r.code == EXIT["ok"] and "+# large policy 6: é ü ✓" in r.out, r.err
        # non-ASCII text is stored as UTF-8, not as \\u escapes
        kv = await c.store.get(c.keys.revision(6))
        assert kv is not None and "é ü ✓".encode() in kv.value
    finally:
        await agent.stop()
        await stop_controller(c)


@run_async(60)
async def test_etcds_request_limit_is_a_clear_error(tmp_path: Path) -> None:
    # etcd with its default --max-request-bytes (1.5 MiB) and a controller configured
    # to accept 2 MiB: the revision record does not fit; the push says so and why.
    etcd = EtcdProcess(
        tmp_path / "etcd", max_request_bytes=None, tls=ensure_etcd_pki(tmp_path / "pki")
    )
    etcd.start()
    c = await start_controller(etcd, "r1", unique_prefix(), max_policy_bytes=2 * MiB)
    try:
        assert (await c.repo.push(policy(1), filename="p.spd")).accepted
        f = write(tmp_path, "big.spd", big_policy(2, int(1.6 * MiB)))
        r = await ipsecctl("push", str(f), controller=address(c))
        assert r.code == EXIT["invalid"], r
        assert "max-request-bytes" in r.err and "nothing changed" in r.err, r
        assert r.err.count("\n") == 1
        await unchanged(c, 1, 1)
    finally:
        await stop_controller(c)
        etcd.stop(kill=True)


async def _connect_raw(ctl: str, hello: agent_pb2.Hello) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(ctl) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Connect()
        await call.write(agent_pb2.AgentMessage(hello=hello))
        try:
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc
        call.cancel()
    raise AssertionError("the controller accepted the stream")


@run_async(60)
async def test_agent_messages_and_queries_are_bounded(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    ctl = address(c)
    try:
        big = agent_pb2.Hello(node="n1", labels={"k": "v" * MAX_AGENT_MESSAGE_BYTES})
        err = await _connect_raw(ctl, big)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{MAX_AGENT_MESSAGE_BYTES:,} bytes" in (err.details() or "")
        err = await _connect_raw(ctl, agent_pb2.Hello(node="n" * 300))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node name" in (err.details() or "")
        assert "n1" not in c.hub.streams and "n" * 300 not in c.hub.streams
        # a live query with a negative timeout is clamped, not an error: asked of a
        # node whose stream is open but never read, it ends after the minimum
        async with grpc.aio.insecure_channel(ctl) as ch:
            mute = agent_pb2_grpc.AgentServiceStub(ch).Connect()
            await mute.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(node="mute")))
            await wait_until(lambda: "mute" in c.hub.streams, 20, "the mute stream")
            resp = await status_pb2_grpc.StatusServiceStub(ch).GetNodeStatus(
                status_pb2.NodeStatusRequest(node="mute", timeout_seconds=-5), timeout=10
            )
            mute.cancel()
        assert resp.stale and "did not answer within 0.1s" in resp.note, resp
    finally:
        await stop_controller(c)
