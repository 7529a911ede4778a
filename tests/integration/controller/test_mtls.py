"""mTLS and authorization by role over real gRPC and real etcd (issue #12;
controller/authz.py, docs/security.md).

Every RPC is called with no client certificate, a plaintext channel, an expired, a
foreign and a revoked certificate, and every role the table does not allow; each call
gets the right status (a TLS handshake failure is UNAVAILABLE: the server never sees a
request) and etcd is byte for byte what it was.  Then what is allowed works: an admin
push over mTLS records the certificate identity as its author, a viewer reads without
secrets, a node streams as itself (and is dropped when its certificate is revoked),
ipsecctl finds its credentials in a config file, and ``ipsecd-controller`` serves
mTLS from ``init``'s state directory."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller.ca import CertificateAuthority, Role, key_pem, pem
from controller.cli_remote import EXIT
from controller.clientconf import ClientConfig, load_config
from controller.embedded_etcd import EtcdProcess, free_port
from controller.main import mtls_security
from controller.server import Controller
from controller.statedir import StateDir, init_state, issue_credentials, revoke
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
from tests.support.policies import SECRET_KEY, WITH_KEY, policy

RPC_TIMEOUT = 10.0


@dataclasses.dataclass
class Cluster:
    """A state directory and one credential of each kind, as PEM."""

    root: Path
    ca_pem: bytes
    creds: dict[str, tuple[bytes, bytes]]  # name -> (cert chain, key)
    configs: dict[str, Path]

    def channel(self, who: str, target: str) -> grpc.aio.Channel:
        if who == "plaintext":
            return grpc.aio.insecure_channel(target)
        if who == "no-cert":
            return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(self.ca_pem))
        cert, key = self.creds[who]
        creds = grpc.ssl_channel_credentials(self.ca_pem, key, cert)
        return grpc.aio.secure_channel(target, creds)


def _key_and_cert(
    ca: CertificateAuthority, role: Role, name: str, **kw: Any
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(role, name, key.public_key(), **kw)
    return pem(cert), key_pem(key)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    base = tmp_path_factory.mktemp("mtls")
    root = base / "state"
    init_state(root)
    sd = StateDir(root)
    ca = sd.load_ca()
    admin = load_config(sd.admin_conf)
    creds = {"admin": (admin.cert_pem, admin.key_pem)}
    configs = {"admin": sd.admin_conf}
    for who, role in (("viewer", Role.VIEWER), ("mallory", Role.ADMIN)):
        conf_path = base / f"{who}.conf"
        issue_credentials(root, role, who, conf_path)
        conf = load_config(conf_path)
        creds[who] = (conf.cert_pem, conf.key_pem)
        configs[who] = conf_path
    for node in ("a", "b"):
        issue_credentials(root, Role.NODE, node, base / "nodes", hosts=[f"192.0.2.{ord(node)}"])
        d = base / "nodes"
        creds[f"node-{node}"] = ((d / f"{node}.pem").read_bytes(), (d / f"{node}.key").read_bytes())
    creds["controller"] = (sd.server_cert.read_bytes(), sd.server_key.read_bytes())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    creds["expired"] = _key_and_cert(ca, Role.ADMIN, "expired", now=past, days=2)
    creds["foreign"] = _key_and_cert(CertificateAuthority.create(), Role.ADMIN, "admin")
    revoke(root, role=Role.ADMIN, name="mallory")
    # an expired admin config (refused by ipsecctl itself) and another cluster's admin.conf
    cert, key = creds["expired"]
    expired = base / "expired.conf"
    expired.write_bytes(ClientConfig(("127.0.0.1:1",), pem(ca.cert), cert, key).dumps())
    expired.chmod(0o600)
    configs["expired"] = expired
    init_state(base / "other")
    configs["other-cluster"] = base / "other" / "admin.conf"
    return Cluster(root, sd.ca_cert.read_bytes(), creds, configs)


async def _snapshot(c: Controller) -> list[tuple[str, bytes]]:
    kvs, _rev = await c.store.get_prefix(c.keys.root)
    return sorted((kv.key, kv.value) for kv in kvs)


Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


def _unary(stub: Any, method: str, request: Any) -> Call:
    async def call(ch: grpc.aio.Channel) -> Any:
        return await getattr(stub(ch), method)(request, timeout=RPC_TIMEOUT)

    return call


async def _connect(ch: grpc.aio.Channel, node: str) -> Any:
    call = agent_pb2_grpc.AgentServiceStub(ch).Connect(timeout=RPC_TIMEOUT)
    await call.write(
        agent_pb2.AgentMessage(hello=agent_pb2.Hello(node=node, addresses=["1.2.3.4"]))
    )
    msg = await call.read()
    call.cancel()
    return msg


P = policy_pb2_grpc.PolicyServiceStub
S = status_pb2_grpc.StatusServiceStub
RPCS: dict[str, Call] = {
    "Push": _unary(P, "Push", policy_pb2.PushRequest(text=policy(5), filename="x.spd")),
    "Rollback": _unary(P, "Rollback", policy_pb2.RollbackRequest(revision=1)),
    "Get": _unary(P, "Get", policy_pb2.GetRequest()),
    "GetSecrets": _unary(P, "Get", policy_pb2.GetRequest(show_secrets=True)),
    "Validate": _unary(P, "Validate", policy_pb2.ValidateRequest(text=policy(6), filename="v")),
    "History": _unary(P, "History", policy_pb2.HistoryRequest()),
    "Diff": _unary(P, "Diff", policy_pb2.DiffRequest(a=1, b=1)),
    "DiffSecrets": _unary(P, "Diff", policy_pb2.DiffRequest(a=1, b=1, show_secrets=True)),
    "ListNodes": _unary(S, "ListNodes", status_pb2.ListNodesRequest()),
    "GetNodeStatus": _unary(S, "GetNodeStatus", status_pb2.NodeStatusRequest(node="a")),
    "Connect": lambda ch: _connect(ch, "a"),
    "ConnectAsB": lambda ch: _connect(ch, "b"),
}

DENIED = grpc.StatusCode.PERMISSION_DENIED
ALL = set(RPCS)
#: who -> (the RPCs refused, the status they get); everything else must succeed
REFUSED: dict[str, tuple[set[str], grpc.StatusCode]] = {
    "plaintext": (ALL, grpc.StatusCode.UNAVAILABLE),
    "no-cert": (ALL, grpc.StatusCode.UNAVAILABLE),  # the TLS handshake fails
    "expired": (ALL, grpc.StatusCode.UNAVAILABLE),  # the TLS handshake fails
    "foreign": (ALL, grpc.StatusCode.UNAVAILABLE),  # the TLS handshake fails
    "mallory": (ALL, grpc.StatusCode.UNAUTHENTICATED),  # revoked: the CRL
    "viewer": ({"Push", "Rollback", "GetSecrets", "DiffSecrets", "Connect", "ConnectAsB"}, DENIED),
    "node-a": (ALL - {"Connect"}, DENIED),  # only its own stream
    "controller": (ALL - {"GetNodeStatus"}, DENIED),
    "admin": ({"Connect", "ConnectAsB"}, DENIED),
}


@run_async(120)
async def test_every_rpc_with_every_credential(cluster: Cluster, etcd_session: EtcdProcess) -> None:
    sec = mtls_security(cluster.root)
    c = await start_controller(
        etcd_session, "r1", unique_prefix(), security=sec, revocation_interval=0.2
    )
    try:
        target = address(c)
        # revision 1 (with a key: the secrets rules have something to hide)
        out = await c.repo.push(WITH_KEY, filename="k.spd", author="setup", file_mode=0o600)
        assert out.accepted
        await asyncio.sleep(0.3)  # let the registry settle
        for who, (refused, code) in REFUSED.items():
            async with cluster.channel(who, target) as ch:
                for rpc, call in RPCS.items():
                    before = await _snapshot(c)
                    if rpc not in refused:
                        if rpc == "Connect":
                            continue  # node a streams in the next test
                        try:
                            await call(ch)
                        except grpc.aio.AioRpcError as exc:  # e.g. node a is unknown
                            assert exc.code() == grpc.StatusCode.NOT_FOUND, (who, rpc, exc)
                        continue
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(ch)
                    assert err.value.code() == code, (who, rpc, err.value.details())
                    assert await _snapshot(c) == before, (who, rpc)  # nothing changed
                    details = err.value.details() or ""
                    assert SECRET_KEY[2:] not in details
                    if who == "mallory":
                        assert "has been revoked" in details
                    if who == "node-a" and rpc == "ConnectAsB":
                        assert "may not stream as node 'b'" in details
        assert "b" not in c.view.records  # node a's Hello for b registered nothing
        # what is allowed answers: secrets to the admin only
        async with cluster.channel("admin", target) as ch:
            got = await RPCS["GetSecrets"](ch)
            assert SECRET_KEY in got.text
        async with cluster.channel("viewer", target) as ch:
            got = await RPCS["Get"](ch)
            assert got.redacted and SECRET_KEY not in got.text
    finally:
        await stop_controller(c)


@run_async(120)
async def test_author_is_the_certificate_and_nodes_stream_as_themselves(
    cluster: Cluster, etcd_session: EtcdProcess
) -> None:
    c = await start_controller(
        etcd_session,
        "r1",
        unique_prefix(),
        security=mtls_security(cluster.root),
        revocation_interval=0.2,
    )
    agent = None
    try:
        target = address(c)
        async with cluster.channel("admin", target) as ch:
            resp = await policy_pb2_grpc.PolicyServiceStub(ch).Push(
                policy_pb2.PushRequest(text=policy(1), filename="p.spd", author="mallory@evil"),
                timeout=RPC_TIMEOUT,
            )
        assert resp.accepted and resp.revision.author == "admin/admin"
        assert (await c.repo.read(1)).author == "admin/admin"
        # an agent with its node certificate (the AgentStream the real agent uses)
        cert, key = cluster.creds["node-a"]
        creds = grpc.ssl_channel_credentials(cluster.ca_pem, key, cert)
        agent = SimAgent("a", [target]).start(credentials=lambda: creds)
        await wait_until(lambda: agent.last == 1, 20, "node a's snapshot")
        await wait_until(lambda: "a" in c.hub.streams, 10, "node a's stream")
        assert c.hub.streams["a"].serial is not None
        await wait_until(lambda: "a" in c.view.records, 10, "node a's record")
        # its certificate is revoked: the stream is dropped, reconnecting is refused
        lost = len(agent.lost)
        revoke(cluster.root, role=Role.NODE, name="a")
        await wait_until(lambda: len(agent.lost) > lost, 10, "the stream dropped")
        assert "revoked" in agent.lost[-1].reason
        connects = agent.stream.connects if agent.stream is not None else 0
        await asyncio.sleep(1.0)  # the agent retries meanwhile (backoff 0.05..0.5 s)
        assert "a" not in c.hub.streams
        assert agent.stream is not None and agent.stream.connects == connects
        async with cluster.channel("node-a", target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await RPCS["Connect"](ch)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        if agent is not None:
            await agent.stop()
        await stop_controller(c)


@run_async(120)
async def test_ipsecctl_with_a_config(
    cluster: Cluster, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    c = await start_controller(
        etcd_session, "r1", unique_prefix(), security=mtls_security(cluster.root)
    )
    try:
        ctl = address(c)
        spd = tmp_path / "p.spd"
        spd.write_text(policy(1))
        spd.chmod(0o600)
        r = await ipsecctl("push", str(spd), controller=ctl, config=cluster.configs["admin"])
        assert r.code == 0 and not r.err, r
        r = await ipsecctl("history", "-o", "json", controller=ctl, config=cluster.configs["admin"])
        assert json.loads(r.out)["revisions"][0]["author"] == "admin/admin"
        r = await ipsecctl("push", str(spd), controller=ctl, config=cluster.configs["viewer"])
        assert r.code == EXIT["permission-denied"] and "viewer/viewer may not call Push" in r.err
        r = await ipsecctl("get", controller=ctl, config=cluster.configs["viewer"])
        assert r.code == 0 and r.out == policy(1)
        r = await ipsecctl("history", controller=ctl, config=cluster.configs["mallory"])
        assert r.code == EXIT["permission-denied"] and "has been revoked" in r.err, r
        # a config of another cluster: the controller's certificate is not its CA's
        r = await ipsecctl("history", controller=ctl, config=cluster.configs["other-cluster"])
        assert r.code == EXIT["permission-denied"], r
        assert "did not sign" in r.err and "other/admin.conf" in r.err
        assert r.err.count("\n") == 1
        # expired: refused by ipsecctl before dialing
        r = await ipsecctl("history", controller=ctl, config=cluster.configs["expired"])
        assert r.code == EXIT["usage"] and "expired on" in r.err, r
        # plaintext to an mTLS controller
        r = await ipsecctl("history", controller=ctl)
        assert r.code == EXIT["unreachable"] and "use --config instead of --insecure" in r.err
    finally:
        await stop_controller(c)


# --------------------------------------------------------------------------- the process


def _run_controller(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _until_listening(proc: subprocess.Popen[bytes]) -> list[bytes]:
    assert proc.stdout is not None
    lines: list[bytes] = []
    while not lines or b"listening on" not in lines[-1]:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line, b"".join(lines)
        lines.append(line)
    return lines


@run_async(120)
async def test_the_controller_process_serves_mtls_from_init(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    listen = f"127.0.0.1:{port}"
    # no CA: a clear error, nothing started
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", "--state-dir", str(state), "--listen", listen],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert f"run `ipsecd-controller init --state-dir {state}` first" in done.stderr
    assert not (state / "etcd").exists()
    # init, then again (refused)
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", "init", "--state-dir", str(state),
         "--listen", listen],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "admin.conf" in done.stdout, done
    again = subprocess.run(
        [sys.executable, "-m", "controller.main", "init", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1 and "already initialized" in again.stderr
    # a serving key others can read: refused with the chmod
    key = state / "pki" / "server.key"
    key.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", "--state-dir", str(state), "--listen", listen],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and f"chmod 600 {key}" in done.stderr, done
    key.chmod(0o600)
    proc = _run_controller("--state-dir", str(state), "--listen", listen)
    try:
        lines = await _until_listening(proc)
        assert b"(mTLS)" in lines[-1] and not any(b"WARNING" in ln for ln in lines), lines
        conf = state / "admin.conf"
        spd = tmp_path / "p.spd"
        spd.write_text(policy(3))
        spd.chmod(0o600)
        # the address comes from admin.conf (init --listen)
        r = await ipsecctl("push", str(spd), config=conf)
        assert r.code == 0, r
        r = await ipsecctl("get", config=conf)
        assert r.code == 0 and r.out == policy(3), r
        # the issue subcommand mints a viewer config that works at once
        viewer = tmp_path / "v.conf"
        done = subprocess.run(
            [sys.executable, "-m", "controller.main", "issue", "--state-dir", str(state),
             "--role", "viewer", "--name", "carol", "--out", str(viewer)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done
        r = await ipsecctl("history", config=viewer)
        assert r.code == 0 and "admin/admin" in r.out, r
        # revoked with the revoke subcommand: the running controller refuses it
        done = subprocess.run(
            [sys.executable, "-m", "controller.main", "revoke", "--state-dir", str(state),
             "--role", "viewer", "--name", "carol"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and "revoked viewer/carol" in done.stdout, done
        r = await ipsecctl("history", config=viewer)
        assert r.code == EXIT["permission-denied"] and "revoked" in r.err, r
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
