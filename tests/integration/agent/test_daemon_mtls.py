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
