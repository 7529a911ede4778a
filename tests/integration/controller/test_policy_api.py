"""Policy API over real gRPC and real etcd: push, conflicts, invalid pushes, secrets,
history, diff, rollback — through the ipsecctl process and through raw gRPC."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import grpc
import grpc.aio
import pytest

from controller.cli_remote import EXIT
from controller.embedded_etcd import EtcdProcess, free_port
from ipsecd.v1 import policy_pb2, policy_pb2_grpc
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.aio import run_async
from tests.support.etcd import unique_prefix
from tests.support.policies import INVALID, INVALID_LINES, SECRET_KEY, WITH_KEY, policy


def _write(tmp: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(mode)
    return path


@run_async(60)
async def test_concurrent_pushes_on_one_base_exactly_one_wins(etcd_session: EtcdProcess) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    try:
        async with grpc.aio.insecure_channel(address(c)) as ch:
            stub = policy_pb2_grpc.PolicyServiceStub(ch)
            first = await stub.Push(policy_pb2.PushRequest(text=policy(1), filename="p.spd"))
            assert first.accepted and first.revision.revision == 1
            for round_ in range(3):
                base = first.revision.revision + round_
                calls = [
                    stub.Push(
                        policy_pb2.PushRequest(
                            text=policy(100 + 10 * round_ + i),
                            filename=f"p{i}.spd",
                            base_revision=base,
                        )
                    )
                    for i in range(2)
                ]
                results = await asyncio.gather(*calls, return_exceptions=True)
                wins = [r for r in results if isinstance(r, policy_pb2.PushResponse)]
                losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
                assert len(wins) == 1 and len(losses) == 1, results
                assert wins[0].revision.revision == base + 1
                assert wins[0].revision.base_revision == base
                err = losses[0]
                assert err.code() == grpc.StatusCode.ABORTED
                assert dict(err.trailing_metadata() or ())["ipsecd-error"] == "conflict"
                assert f"based on revision {base}" in (err.details() or "")
            assert await c.repo.current_number() == 4
            # Validate: server-side check, nothing stored
            v = await stub.Validate(policy_pb2.ValidateRequest(text=INVALID, filename="v.spd"))
            assert not v.ok and [d.line for d in v.diagnostics] == list(INVALID_LINES)
            assert all(d.rendered.startswith("v.spd:") for d in v.diagnostics)
            v = await stub.Validate(policy_pb2.ValidateRequest(text=policy(7), filename="v.spd"))
            assert v.ok and not v.diagnostics
            assert await c.repo.current_number() == 4
    finally:
        await stop_controller(c)


@run_async(60)
async def test_cli_push_conflict_invalid_and_history(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    ctl = address(c)
    try:
        p1 = _write(tmp_path, "one.spd", policy(1))
        r = await ipsecctl("push", str(p1), "--comment", "first", controller=ctl)
        assert r.code == EXIT["ok"], r
        assert "pushed revision 1" in r.out
        p2 = _write(tmp_path, "two.spd", policy(2))
        r = await ipsecctl("push", str(p2), "--base-revision", "1", controller=ctl)
        assert r.code == 0 and "revision 2" in r.out, r
        # a stale base: distinct exit code, one line, nothing changed
        p3 = _write(tmp_path, "three.spd", policy(3))
        r = await ipsecctl("push", str(p3), "--base-revision", "1", controller=ctl)
        assert r.code == EXIT["conflict"] == 3, r
        assert r.err.startswith("error: conflict") and r.err.count("\n") == 1
        assert await c.repo.current_number() == 2
        # invalid: every diagnostic with FILE:LINE:COL, exit 1, current untouched
        bad = _write(tmp_path, "bad.spd", INVALID)
        r = await ipsecctl("push", str(bad), controller=ctl)
        assert r.code == EXIT["invalid"] == 1, r
        for line in INVALID_LINES:
            assert f"{bad}:{line}:" in r.err, r.err
        assert "Traceback" not in r.err
        assert await c.repo.current_number() == 2
        assert len(await c.repo.history()) == 2
        # history as JSON for scripts
        r = await ipsecctl("history", "-o", "json", controller=ctl)
        data = json.loads(r.out)
        assert data["current_revision"] == "2" or data["current_revision"] == 2
        assert [int(m["revision"]) for m in data["revisions"]] == [2, 1]
        assert data["revisions"][1]["comment"] == "first"
        # table for people
        r = await ipsecctl("history", controller=ctl)
        assert r.out.splitlines()[0].split()[:2] == ["REVISION", "CREATED"]
        assert r.out.splitlines()[1].startswith("2*")
        # diff
        r = await ipsecctl("diff", "1", "2", controller=ctl)
        assert r.code == 0 and "--- revision 1" in r.out and "+++ revision 2" in r.out
    finally:
        await stop_controller(c)


@run_async(60)
async def test_rollback_makes_a_new_revision_and_backup(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(etcd_session, "r1", unique_prefix())
    ctl = address(c)
    try:
        for n in (1, 2, 3):
            out = await c.repo.push(policy(n), filename="p.spd", author="t")
            assert out.accepted
        r = await ipsecctl("get", "-o", "json", controller=ctl)
        got = json.loads(r.out)
        assert int(got["backup_revision"]) == 2  # the previous current: ipsec.spd.bak
        r = await ipsecctl("rollback", controller=ctl)  # to the backup
        assert r.code == 0 and "new revision 4" in r.out, r
        cur = await c.repo.current()
        assert cur is not None and cur.revision == 4 and cur.rollback_of == 2
        assert cur.text == policy(2)
        r = await ipsecctl("rollback", "1", "-m", "back to the start", controller=ctl)
        assert r.code == 0, r
        cur = await c.repo.current()
        assert cur is not None and cur.revision == 5 and cur.text == policy(1)
        assert [h.revision for h in await c.repo.history()] == [5, 4, 3, 2, 1]
        r = await ipsecctl("rollback", "42", controller=ctl)
        assert r.code == EXIT["not-found"] == 4 and "revision 42" in r.err
    finally:
        await stop_controller(c)


@run_async(60)
async def test_secrets_are_redacted_unless_asked(
    etcd_session: EtcdProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = await start_controller(etcd_session, "r1", unique_prefix())
    ctl = address(c)
    try:
        open_file = _write(tmp_path, "keys-open.spd", WITH_KEY, mode=0o644)
        r = await ipsecctl("push", str(open_file), controller=ctl)
        assert r.code == EXIT["invalid"], r  # literal keys need mode 0600
        assert SECRET_KEY not in r.err
        keyed = _write(tmp_path, "keys.spd", WITH_KEY)
        r = await ipsecctl("push", str(keyed), controller=ctl)
        assert r.code == 0, r
        r = await ipsecctl("get", controller=ctl)
        assert r.code == 0 and SECRET_KEY not in r.out and "aes-gcm-16" in r.out
        assert "redacted" in r.err
        r = await ipsecctl("get", "-o", "json", controller=ctl)
        assert SECRET_KEY not in r.out and json.loads(r.out)["redacted"] is True
        r = await ipsecctl("get", "--show-secrets", controller=ctl)
        assert r.code == 0 and SECRET_KEY in r.out  # loopback caller may see them
        await c.repo.push(policy(9), filename="p.spd")
        r = await ipsecctl("diff", "1", "2", controller=ctl)
        assert SECRET_KEY not in r.out and "-add 192.0.2.1" in r.out
        assert SECRET_KEY not in repr(await c.repo.read(1))
        assert SECRET_KEY not in caplog.text
    finally:
        await stop_controller(c)


@run_async(60)
async def test_unreachable_controller_and_etcd_are_one_line_errors(
    etcd_server: EtcdProcess, tmp_path: Path
) -> None:
    r = await ipsecctl("history", controller=f"127.0.0.1:{free_port()}")
    assert r.code == EXIT["unreachable"] == 5, r
    assert r.err.startswith("error: cannot reach the controller") and r.err.count("\n") == 1
    c = await start_controller(etcd_server, "r1", unique_prefix())
    try:
        etcd_server.stop(kill=True)
        r = await ipsecctl("history", controller=address(c))
        assert r.code == EXIT["store-unavailable"] == 6, r
        assert "cannot reach etcd" in r.err and r.err.count("\n") == 1
    finally:
        await stop_controller(c)
