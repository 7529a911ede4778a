"""Agents that authenticate with certificates (issue #11): ``auth certificate`` with
the node's own certificate (--cert/--key) and the cluster CA (--ca), a CRL (--crl)
that is re-read when it changes, and what a node without a certificate reports.

Host kernel: IKE runs for real between two namespaces (real UDP sockets); the CHILD SAs
cannot be installed (no ESP here), which the kernel lab covers
(tests/kernel/test_agent_certs.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.credentials import NodeFiles
from agent.daemon import Daemon
from tests.support import pki
from tests.support.agents import options, running, write_private
from tests.support.aio import run_async, wait_until
from tests.support.netns import Netns, netns_pair

PREFIX = "iac-"
POLICY = """
defaults { policy discard; }
connection mesh { between all and all; mode transport; }
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
NODES = "a 192.0.2.1,fd00::1\nb 192.0.2.2,fd00::2\n"
NOW = time.time()  # the agents check validity against the real clock


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair(PREFIX) as p:
        yield p


def _pki(tmp: Path) -> tuple[pki.Issued, dict[str, pki.Issued]]:
    root = pki.ca("ipsecd cluster CA", not_before=NOW - pki.DAY, not_after=NOW + 30 * pki.DAY)
    nodes = {
        name: pki.end_entity(
            root,
            name,
            ips=addrs,
            not_before=NOW - pki.DAY,
            not_after=NOW + 30 * pki.DAY,
        )
        for name, addrs in (("a", ("192.0.2.1", "fd00::1")), ("b", ("192.0.2.2", "fd00::2")))
    }
    pki.write_pem(tmp / "ca.pem", root.cert)
    for name, issued in nodes.items():
        pki.write_pem(tmp / f"{name}.pem", issued.cert)
        pki.write_key(tmp / f"{name}.key", issued.key)
    return root, nodes


def _files(tmp: Path, name: str, *, crl: bool = True) -> NodeFiles:
    return NodeFiles(
        tmp / f"{name}.pem",
        tmp / f"{name}.key",
        tmp / "ca.pem",
        (tmp / "crl.pem",) if crl else (),
    )


def _established(d: Daemon) -> list[str]:
    return sorted(sa.config.name for sa in d.driver.sas if sa.established)


@run_async(120)
async def test_nodes_authenticate_with_their_certificates_and_a_revocation_ends_it(
    pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = pair
    root, issued = _pki(tmp_path)
    pki.write_pem(
        tmp_path / "crl.pem", pki.crl(root, (), last_update=NOW - 60, next_update=NOW + pki.DAY)
    )
    spd = write_private(tmp_path / "ipsec.spd", POLICY)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = [
        options(
            n,
            ns,
            tmp_path,
            spd_file=spd,
            nodes_file=nodes,
            node_files=_files(tmp_path, n),
            credential_check=0.5,
        )
        for n, ns in (("a", a), ("b", b))
    ]
    async with running(opts) as daemons:
        da, db = daemons["a"], daemons["b"]
        await wait_until(
            lambda: len(_established(da)) == 2 and len(_established(db)) == 2,
            60,
            "IKE SAs authenticated with certificates (IPv4 and IPv6)",
        )
        conns = {c["name"]: c for c in da.status()["connections"]}
        for conn in conns.values():
            assert conn["peer_auth"] == "ecdsa-sha256"
            assert conn["peer_certificate"] == issued["b"].subject
        # the CA revokes b: a's agent re-reads the CRL, drops b's IKE SAs and refuses b
        revoked = pki.crl(
            root,
            [(issued["b"].cert.serial_number, NOW - 10)],
            last_update=NOW - 5,
            next_update=NOW + pki.DAY,
            number=2,
        )
        pki.write_pem(tmp_path / "crl.pem", revoked)
        os.utime(tmp_path / "crl.pem", (NOW + 5, NOW + 5))
        await wait_until(lambda: not _established(da), 30, "b's IKE SAs deleted on a")
        await wait_until(
            lambda: (
                any("revoked" in (c["last_error"] or "") for c in da.status()["connections"])
                or any(
                    "AUTHENTICATION_FAILED" in (c["last_error"] or "")
                    for c in db.status()["connections"]
                )
            ),
            60,
            "b's new attempts refused as revoked",
        )
        assert not _established(da)


@run_async(60)
async def test_a_node_without_a_certificate_says_what_to_pass(
    pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, _ = pair
    spd = write_private(tmp_path / "ipsec.spd", POLICY)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = options("a", a, tmp_path, spd_file=spd, nodes_file=nodes)
    async with running([opts]) as daemons:
        da = daemons["a"]
        await wait_until(lambda: da.applied is not None, 20, "policy applied")
        errors = [c["last_error"] for c in da.status()["connections"]]
        assert errors and all("--cert FILE --key FILE" in (e or "") for e in errors), errors


@run_async(60)
async def test_a_key_file_readable_by_others_is_refused(
    pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, _ = pair
    _pki(tmp_path)
    os.chmod(tmp_path / "a.key", 0o644)
    spd = write_private(tmp_path / "ipsec.spd", POLICY)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = options(
        "a",
        a,
        tmp_path,
        spd_file=spd,
        nodes_file=nodes,
        node_files=_files(tmp_path, "a", crl=False),
    )
    async with running([opts]) as daemons:
        da = daemons["a"]
        await wait_until(lambda: da.applied is not None, 20, "policy applied")
        errors = [c["last_error"] or "" for c in da.status()["connections"]]
        assert errors and all(f"run chmod 600 {tmp_path / 'a.key'}" in e for e in errors), errors
