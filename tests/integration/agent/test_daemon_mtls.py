"""The agent in cluster mode over mTLS (issue #12): the node certificate that
``ipsecd-controller issue --role node`` makes is both its IKE certificate and its
client certificate for the controller stream; the agent streams its own view, and a
certificate of another node is refused before anything starts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.credentials import CredentialError, NodeFiles
from agent.daemon import Daemon
from controller.ca import Role
from controller.main import mtls_security
from controller.statedir import init_state, issue_credentials
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.agents import options, running
from tests.support.aio import run_async, wait_until
from tests.support.etcd import EtcdProcess
from tests.support.netns import Netns, netns_pair

POLICY = """
defaults { policy discard; }
connection mesh { between all and all; mode transport; }
bypass tcp port 3333;
bypass icmp6 type 135;
bypass icmp6 type 136;
"""


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("iam-") as p:
        yield p


@run_async(180)
async def test_agent_streams_over_mtls_with_its_node_certificate(
    pair: tuple[Netns, Netns], tmp_path: Path, etcd_session: EtcdProcess
) -> None:
    a, _b = pair
    state = tmp_path / "ctl"
    init_state(state)
    certs = tmp_path / "certs"
    issue_credentials(state, Role.NODE, "a", certs, hosts=["192.0.2.1", "fd00::1"])
    files = NodeFiles(certs / "a.pem", certs / "a.key", certs / "ca.pem", (certs / "crl.pem",))
    c = await start_controller(
        etcd_session,
        "r1",
        f"/m{os.getpid()}-{id(tmp_path)}/",
        security=mtls_security(state),
    )
    try:
        # another node's certificate: refused at start, nothing done
        wrong = options("b", a, tmp_path, controllers=(address(c),), node_files=files)
        with pytest.raises(CredentialError, match="certificate of node/a, not of node 'b'"):
            await Daemon(wrong).run()
        opts = options(
            "a",
            a,
            tmp_path,
            controllers=(address(c),),
            addresses=("192.0.2.1", "fd00::1"),
            node_files=files,
        )
        assert not opts.insecure
        async with running([opts]) as daemons:
            d = daemons["a"]
            out = await c.repo.push(POLICY, filename="p.spd", author="test")
            assert out.accepted
            await wait_until(
                lambda: d.applied is not None and d.applied.revision == 1, 60, "revision 1"
            )

            def acked() -> bool:
                record = c.view.records.get("a", {})
                return bool(record.get("status", {}).get("applied_revision") == 1)

            await wait_until(acked, 30, "the ack over mTLS")
            assert c.hub.streams["a"].serial is not None
            assert "b" not in c.view.records
            detail = json.loads(d.node_status().detail)
            assert detail["node"] == "a"
    finally:
        await stop_controller(c)


PSK_POLICY = """
defaults { policy discard; }
connection mesh { between all and all; mode transport; auth psk "agent mesh psk 4c1d7e"; }
bypass tcp port 3333;
bypass icmp6 type 135;
bypass icmp6 type 136;
"""


@run_async(180)
async def test_agents_fetch_their_own_pair_keys_and_authenticate_with_them(
    pair: tuple[Netns, Netns],
    tmp_path: Path,
    etcd_session: EtcdProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PSK mesh pushed with a literal key (docs/security.md "Secrets"): the key moves
    into the controller's sealed store, each agent fetches only its pair key (never the
    root), both ends hold the same key, and the IKE SA authenticates with it
    (the host kernel has no ESP: the CHILD SA install fails, IKE_AUTH succeeded)."""
    import logging

    from controller.secretstore import Envelope
    from controller.statedir import StateDir
    from ipsecd.spd.secrets import pair_key

    caplog.set_level(logging.DEBUG)
    a, b = pair
    state = tmp_path / "ctl"
    init_state(state)
    envelope = Envelope.from_file(StateDir(state).envelope_key)
    certs = tmp_path / "certs"
    files = {}
    for node, ips in (("a", ["192.0.2.1", "fd00::1"]), ("b", ["192.0.2.2", "fd00::2"])):
        issue_credentials(state, Role.NODE, node, certs, hosts=ips)
        files[node] = NodeFiles(
            certs / f"{node}.pem", certs / f"{node}.key", certs / "ca.pem", (certs / "crl.pem",)
        )
    c = await start_controller(
        etcd_session,
        "r1",
        f"/s{os.getpid()}-{id(tmp_path)}/",
        security=mtls_security(state),
        envelope=envelope,
    )
    try:
        opts = [
            options(
                n,
                ns,
                tmp_path,
                controllers=(address(c),),
                addresses=addrs,
                node_files=files[n],
            )
            for n, ns, addrs in (
                ("a", a, ("192.0.2.1", "fd00::1")),
                ("b", b, ("192.0.2.2", "fd00::2")),
            )
        ]
        async with running(opts) as daemons:
            da, db = daemons["a"], daemons["b"]
            await wait_until(lambda: {"a", "b"} <= set(c.view.records), 30, "both nodes known")
            await wait_until(lambda: len(c.hub.directory_message.nodes) == 2, 30, "the directory")
            out = await c.repo.push(
                PSK_POLICY,
                filename="p.spd",
                author="test",
                file_mode=0o600,
                prepare=lambda t: c.prepare_text(t, "p.spd", "test", []),
            )
            assert out.accepted and out.revision is not None
            assert "agent mesh psk" not in out.revision.text
            root = b"agent mesh psk 4c1d7e"
            name = envelope.literal_name(root)
            want = pair_key(root, name, "a", "b")

            def has_key(d: object, peer: str) -> bool:
                return getattr(d, "delivered", {}).get(f"{name}@{peer}") == want

            await wait_until(lambda: has_key(da, "b") and has_key(db, "a"), 60, "pair keys")
            assert root not in da.delivered.values() and name not in da.delivered
            await wait_until(
                lambda: (
                    any(sa.established for sa in da.driver.sas)
                    and any(sa.established for sa in db.driver.sas)
                ),
                60,
                "an IKE SA authenticated with the pair key",
            )
            saved = tmp_path / "agent-a" / "last-applied.json"
            await wait_until(saved.exists, 10, "the saved revision")
            assert saved.stat().st_mode & 0o777 == 0o600  # it holds the pair key
    finally:
        await stop_controller(c)
    text = caplog.text
    assert "agent mesh psk" not in text and root.hex() not in text and want.hex() not in text
