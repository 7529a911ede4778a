"""Agents that join by token, renew their certificates themselves, and learn of a
removed node from the CRL the controller pushes (issue #12; agent/join.py,
docs/security.md "Joining a node").

Two agents in namespaces join a real controller (mTLS, real etcd) with one token,
authenticate their IKE SAs with the certificates they got, renew them (short-lived
certificates: the controller's ``node_cert_lifetime``) with every IKE and CHILD SA
staying up across the renewal while the connections take the new certificate for
new SAs; then ``node remove b`` reaches a as a CRL that its IKE checks.

Host kernel: IKE runs for real between the namespaces; the CHILD SAs cannot be
installed (no ESP here) and are deleted, so only IKE SAs are compared across the
renewal; the kernel lab test (tests/kernel/test_agent_join.py) compares CHILD SAs in
the kernel too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.daemon import Daemon
from agent.join import JoinedFiles, JoinError
from controller.main import mtls_security
from controller.statedir import init_state
from ipsecd.ike.pki import CertificateError
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.agents import options, running
from tests.support.aio import run_async, wait_until
from tests.support.etcd import EtcdProcess
from tests.support.netns import Netns, netns_pair

POLICY = """
defaults { policy discard; }
connection mesh { between all and all; mode transport; }
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
ADDRS = {"a": ("192.0.2.1", "fd00::1"), "b": ("192.0.2.2", "fd00::2")}


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("iaj-") as p:
        yield p


def _sas(d: Daemon) -> dict[str, tuple[bytes, bytes]]:
    """Established IKE SAs by connection, with their SPIs."""
    return {sa.config.name: (sa.spi_i, sa.spi_r) for sa in d.driver.sas if sa.established}


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number


@run_async(240)
async def test_joined_agents_renew_without_dropping_sas_and_get_the_crl_of_a_removal(
    pair: tuple[Netns, Netns], tmp_path: Path, etcd_session: EtcdProcess
) -> None:
    a_ns, b_ns = pair
    state = tmp_path / "ctl"
    init_state(state)
    c = await start_controller(
        etcd_session,
        "r1",
        f"/j{os.getpid()}-{id(tmp_path)}/",
        security=mtls_security(state),
        revocation_interval=0.2,
        node_cert_lifetime=24.0,  # renewed after two thirds: ~15 s after joining
    )
    try:
        token, _ = await c.identities.create_token(uses=2, ttl=600)
        # a token for another cluster: the agent stops before anything (exit 2 in main)
        wrong = options(
            "a",
            a_ns,
            tmp_path / "wrong",
            controllers=(address(c),),
            addresses=ADDRS["a"],
            join_token=type(token)(token.id, token.secret, "A" * 43),
            join_port=c.join_port,
            joined=True,
            node_files=JoinedFiles(tmp_path / "wrong" / "agent-a").node_files(),
        )
        with pytest.raises(JoinError, match="no CA with the token's pin"):
            await Daemon(wrong).run()
        assert c.join_calls == 0
        opts = [
            options(
                n,
                ns,
                tmp_path,
                controllers=(address(c),),
                addresses=ADDRS[n],
                join_token=token,
                join_port=c.join_port,
                joined=True,
                node_files=JoinedFiles(tmp_path / f"agent-{n}").node_files(),
                renew_check=0.5,
                credential_check=0.5,
            )
            for n, ns in (("a", a_ns), ("b", b_ns))
        ]
        files = {o.node: JoinedFiles(o.state_dir) for o in opts}
        async with running(opts) as daemons:
            da, db = daemons["a"], daemons["b"]
            await wait_until(lambda: files["a"].present() and files["b"].present(), 30, "joins")
            first = {n: _serial(f.cert) for n, f in files.items()}
            out = await c.repo.push(POLICY, filename="p.spd", author="test")
            assert out.accepted
            await wait_until(
                lambda: len(_sas(da)) == 2 and len(_sas(db)) == 2,
                60,
                "IKE SAs authenticated with the joined certificates (IPv4 and IPv6)",
            )
            for conn in da.status()["connections"]:
                assert conn["peer_auth"] == "ecdsa-sha256"
            before = {n: _sas(d) for n, d in daemons.items()}
            # renewal: each agent, by itself, over its stream
            await wait_until(
                lambda: da.renewals >= 1 and db.renewals >= 1, 60, "both certificates renewed"
            )
            renewed = {n: _serial(f.cert) for n, f in files.items()}
            assert all(renewed[n] != first[n] for n in files)
            # every IKE SA up before the renewal is still up, the same SA...
            for n, d in daemons.items():
                now = _sas(d)
                for name, spis in before[n].items():
                    assert now.get(name) == spis, (n, name)
            # ...and the connections make new SAs with the new certificate
            await wait_until(
                lambda: all(
                    conn.config is not None
                    and conn.config.credentials is not None
                    and conn.config.credentials.certificate.serial_number == _serial(files[n].cert)
                    for n, d in daemons.items()
                    for conn in d.supervisor.conns.values()
                ),
                30,
                "connections configured with the renewed certificates",
            )
            status = da.status()["certificate"]
            assert status["joined"] and status["renewals"] >= 1
            # node remove b: the CRL reaches a, whose IKE now refuses b's certificates
            b_serials = {first["b"], renewed["b"], _serial(files["b"].cert)}
            removed = await c.remove_node("b")
            assert {int(s, 16) for s in removed.revoked_serials} >= b_serials
            await wait_until(
                lambda: (
                    files["a"].crl.exists()
                    and b_serials
                    <= {
                        e.serial_number for e in x509.load_pem_x509_crl(files["a"].crl.read_bytes())
                    }
                ),
                30,
                "the CRL revoking b in a's state directory",
            )
            await wait_until(lambda: not _sas(da), 30, "a's IKE SAs with b deleted")
            trust = da.credentials.trust(None)
            b_cert = x509.load_pem_x509_certificates(files["b"].cert.read_bytes())[0]
            with pytest.raises(CertificateError, match="revoked"):
                trust.store.validate(b_cert, (), trust.clock())
            assert "b" not in c.view.records
    finally:
        await stop_controller(c)
