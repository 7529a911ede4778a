"""Secrets over real gRPC (mTLS) and real etcd (issue #12 item 4, docs/security.md
"Secrets"): literal keys leave a pushed file for the sealed store, etcd holds no value
in clear, a node fetches its own secrets only (one derived key per pair, never the
root), other roles and other nodes get nothing, a changed secret reaches the streams,
and ``ipsecctl secret`` reads values from stdin and never prints them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from agent.stream import AgentIdentity, AgentStream, SecretsChanged, StreamEvent
from controller.ca import Role
from controller.cli_remote import EXIT
from controller.clientconf import load_config
from controller.embedded_etcd import EtcdProcess
from controller.main import mtls_security
from controller.secretstore import Envelope
from controller.server import Controller
from controller.statedir import StateDir, init_state, issue_credentials
from ipsecd.spd.secrets import pair_key
from ipsecd.v1 import agent_pb2, agent_pb2_grpc, policy_pb2, policy_pb2_grpc
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.aio import run_async, wait_until
from tests.support.etcd import unique_prefix

RPC_TIMEOUT = 10.0
MESH_PSK = "literal mesh psk 7f3c9a1e"  # a literal key in the pushed file
GW_PSK = b"gateway psk from stdin 5d2b8e04"
NODES = {"a": "192.0.2.11", "b": "192.0.2.12", "c": "192.0.2.13"}

POLICY = f"""# a PSK mesh, a gateway outside the cluster, a manual SA between a and b
nodes workers label role=worker;
peer gw {{ address 203.0.113.9; id fqdn:gw.example.net; }}
connection mesh {{ between workers and workers; auth psk "{MESH_PSK}"; }}
connection uplink {{ between workers and gw; auth psk secret:gw-psk; }}
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("secrets")
    root = base / "state"
    init_state(root)
    sd = StateDir(root)
    issue_credentials(root, Role.VIEWER, "auditor", base / "viewer.conf")
    creds: dict[str, tuple[bytes, bytes]] = {}
    for node, ip in NODES.items():
        issue_credentials(root, Role.NODE, node, base / "nodes", hosts=[ip])
        d = base / "nodes"
        creds[node] = ((d / f"{node}.pem").read_bytes(), (d / f"{node}.key").read_bytes())
    admin = load_config(sd.admin_conf)
    creds["admin"] = (admin.cert_pem, admin.key_pem)
    viewer = load_config(base / "viewer.conf")
    creds["viewer"] = (viewer.cert_pem, viewer.key_pem)
    return {
        "root": root,
        "ca": sd.ca_cert.read_bytes(),
        "creds": creds,
        "admin_conf": sd.admin_conf,
        "viewer_conf": base / "viewer.conf",
        "envelope": Envelope.from_file(sd.envelope_key),
    }


def _creds(state: dict[str, Any], who: str) -> grpc.ChannelCredentials:
    cert, key = state["creds"][who]
    return grpc.ssl_channel_credentials(state["ca"], key, cert)


class Node:
    """A node's stream (the AgentStream the real agent uses), collecting events."""

    def __init__(self, state: dict[str, Any], name: str, target: str) -> None:
        self.events: list[StreamEvent] = []
        creds = _creds(state, name)
        ident = AgentIdentity(name, (NODES[name],), {"role": "worker"}, ("directory",))
        self.stream = AgentStream(
            [target], ident, on_event=self._on, credentials=lambda: creds, backoff_max=0.5
        )
        self.task = asyncio.create_task(self.stream.run())

    async def _on(self, ev: StreamEvent) -> None:
        self.events.append(ev)

    async def stop(self) -> None:
        await self.stream.close()
        await asyncio.wait_for(self.task, 5)


async def _etcd_dump(c: Controller) -> bytes:
    kvs, _ = await c.store.get_prefix(c.keys.root)
    return b"\n".join(kv.key.encode() + b"=" + kv.value for kv in kvs)


@run_async(180)
async def test_secrets_end_to_end(state: dict[str, Any], etcd_session: EtcdProcess) -> None:
    c = await start_controller(
        etcd_session,
        "r1",
        unique_prefix(),
        security=mtls_security(state["root"]),
        envelope=state["envelope"],
    )
    nodes: list[Node] = []
    try:
        target = address(c)
        # the admin stores gw-psk through ipsecctl, the value on stdin
        r = await ipsecctl(
            "secret",
            "set",
            "gw-psk",
            controller=target,
            config=state["admin_conf"],
            stdin=GW_PSK + b"\n",
        )
        assert r.code == EXIT["ok"], r
        assert "stored, 31 bytes" in r.out and GW_PSK.decode() not in r.out + r.err
        # push a file with a literal key: it moves into the store
        async with grpc.aio.secure_channel(target, _creds(state, "admin")) as ch:
            resp = await policy_pb2_grpc.PolicyServiceStub(ch).Push(
                policy_pb2.PushRequest(text=POLICY, filename="mesh.spd", file_mode=0o600),
                timeout=RPC_TIMEOUT,
            )
            assert resp.accepted, resp.diagnostics
            assert any("1 literal key(s) moved" in n for n in resp.notes), resp.notes
            stored = (await c.repo.read(resp.revision.revision)).text
            assert MESH_PSK not in stored and "secret:lit-" in stored
            # the admin gets the file back as pushed; a viewer sees no key
            got = await policy_pb2_grpc.PolicyServiceStub(ch).Get(
                policy_pb2.GetRequest(show_secrets=True), timeout=RPC_TIMEOUT
            )
            assert got.text == POLICY
            # the same file again: the same text, no new revision
            again = await policy_pb2_grpc.PolicyServiceStub(ch).Push(
                policy_pb2.PushRequest(text=POLICY, filename="mesh.spd", file_mode=0o600),
                timeout=RPC_TIMEOUT,
            )
            assert again.unchanged
        dump = await _etcd_dump(c)
        assert MESH_PSK.encode() not in dump and GW_PSK not in dump  # sealed at rest

        nodes = [Node(state, name, target) for name in NODES]
        await wait_until(
            lambda: len(c.hub.directory_message.nodes) == 3, 20, "the directory of 3 nodes"
        )
        await wait_until(lambda: all(n.stream.connected for n in nodes), 20, "the three streams up")
        root = MESH_PSK.encode()
        # node a: its two pairs and the gateway's key, never the mesh root
        name = state["envelope"].literal_name(root)  # the literal's name in the store
        _rev, got_a = await nodes[0].stream.fetch_secrets(0)
        assert set(got_a) == {f"{name}@b", f"{name}@c", "gw-psk"}
        pairs = {k: v for k, v in got_a.items() if "@" in k}
        assert pairs[f"{name}@b"] == pair_key(root, name, "a", "b")
        assert got_a["gw-psk"] == GW_PSK
        assert root not in got_a.values() and name not in got_a
        _rev, got_c = await nodes[2].stream.fetch_secrets(0)
        assert pair_key(root, name, "a", "b") not in got_c.values()  # not c's pair
        assert got_c[f"{name}@a"] == pairs[f"{name}@c"]  # both ends of a pair agree

        # another node's secrets: refused for a node, a viewer and an admin alike
        request = agent_pb2.SecretsRequest(node="b")
        for who in ("a", "viewer", "admin"):
            async with grpc.aio.secure_channel(target, _creds(state, who)) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await agent_pb2_grpc.AgentServiceStub(ch).FetchSecrets(
                        request, timeout=RPC_TIMEOUT
                    )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
        # a viewer lists names, never values, and may not set or delete
        r = await ipsecctl(
            "secret", "list", "-o", "json", controller=target, config=state["viewer_conf"]
        )
        assert r.code == EXIT["ok"], r
        listed = json.loads(r.out)["secrets"]
        assert {s["name"] for s in listed} == {"gw-psk", name}
        assert all(s["in_use"] for s in listed)
        assert GW_PSK.decode() not in r.out and MESH_PSK not in r.out
        r = await ipsecctl(
            "secret",
            "set",
            "gw-psk",
            controller=target,
            config=state["viewer_conf"],
            stdin=b"overwrite",
        )
        assert r.code == EXIT["permission-denied"], r
        r = await ipsecctl(
            "secret", "delete", "gw-psk", controller=target, config=state["viewer_conf"]
        )
        assert r.code == EXIT["permission-denied"], r

        # a changed secret reaches every stream; the node fetches the new value
        seen = sum(isinstance(e, SecretsChanged) for e in nodes[1].events)
        r = await ipsecctl(
            "secret",
            "set",
            "gw-psk",
            controller=target,
            config=state["admin_conf"],
            stdin=b"rotated gw psk 123",
        )
        assert r.code == EXIT["ok"] and "used by the current revision" in r.out, r
        await wait_until(
            lambda: sum(isinstance(e, SecretsChanged) for e in nodes[1].events) > seen,
            10,
            "a SecretsChanged notice on node b's stream",
        )
        _rev, got_b = await nodes[1].stream.fetch_secrets(0)
        assert got_b["gw-psk"] == b"rotated gw psk 123"
        # in use: deleting needs --force
        r = await ipsecctl(
            "secret", "delete", "gw-psk", controller=target, config=state["admin_conf"]
        )
        assert r.code == EXIT["conflict"] and "connection uplink" in r.err, r
        # a bad name and an empty value say how to fix them
        r = await ipsecctl(
            "secret", "set", "bad/name", controller=target, config=state["admin_conf"], stdin=b"v"
        )
        assert r.code == EXIT["invalid"] and "bad secret name" in r.err, r
        r = await ipsecctl(
            "secret", "set", "x", controller=target, config=state["admin_conf"], stdin=b"\n"
        )
        assert r.code == EXIT["invalid"] and "empty" in r.err, r
    finally:
        for n in nodes:
            await n.stop()
        await stop_controller(c)


def test_envelope_key_is_0600(state: dict[str, Any]) -> None:
    path = Path(state["root"]) / "envelope.key"
    assert path.stat().st_mode & 0o777 == 0o600
