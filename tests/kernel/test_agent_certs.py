"""Two standalone agents with real ESP that authenticate with certificates (issue #11).

The SPD's default ``auth certificate``: each node signs with its own certificate
(--cert/--key) and trusts the cluster CA (--ca); the node certificates come from an
intermediate CA, so chains are sent and checked.  Node a has an ECDSA P-256 key, node
b an RSA 3072 one: b's IKE_AUTH (two RSA certificates) is larger than the default
1,280-byte fragment size, so it crosses in IKE fragments (RFC 7383).  A ping crosses as
ESP, none in clear.  Then the CA revokes b (--crl, re-read when it changes): a deletes
b's IKE SAs and refuses b from then on; the traffic stays blocked, never in clear.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent.credentials import NodeFiles
from tests.kernel.conftest import NsPair
from tests.support import pki
from tests.support.agents import options, ping, running, write_private
from tests.support.aio import run_async, wait_until
from tests.support.capture import PacketKind

SPD = """
defaults { policy discard; esp_trans_deflev require; }
connection mesh { between all and all; mode transport; dpd 30s; }
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
NODES = "a 192.0.2.1,fd00::1\nb 192.0.2.2,fd00::2\n"


def _up(daemons: dict[str, Any]) -> bool:
    return all(
        c["state"] == "up" for d in daemons.values() for c in d.status()["connections"]
    ) and all(d.status()["connections"] for d in daemons.values())


@run_async(400)
async def test_certificates_chains_fragments_and_a_revocation(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Any
) -> None:
    now = time.time()
    valid = {"not_before": now - pki.DAY, "not_after": now + 30 * pki.DAY}
    root = pki.ca("lab cluster CA", **valid)  # type: ignore[arg-type]
    inter = pki.ca("lab nodes CA", issuer=root, key="p384", **valid)  # type: ignore[arg-type]
    issued = {
        "a": pki.end_entity(inter, "a", ips=("192.0.2.1", "fd00::1"), key="p256", **valid),  # type: ignore[arg-type]
        "b": pki.end_entity(inter, "b", ips=("192.0.2.2", "fd00::2"), key="rsa3072", **valid),  # type: ignore[arg-type]
    }
    pki.write_pem(tmp_path / "ca.pem", root.cert)
    crl = tmp_path / "crl.pem"
    pki.write_pem(crl, pki.crl(inter, (), last_update=now - 60, next_update=now + pki.DAY))
    for name, cert in issued.items():
        pki.write_pem(tmp_path / f"{name}.pem", cert.cert, inter.cert)
        pki.write_key(tmp_path / f"{name}.key", cert.key)
    spd = write_private(tmp_path / "policy.spd", SPD)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    a, b = ns_pair
    opts = [
        options(
            name,
            ns,
            tmp_path,
            spd_file=spd,
            nodes_file=nodes,
            node_files=NodeFiles(
                tmp_path / f"{name}.pem", tmp_path / f"{name}.key", tmp_path / "ca.pem", (crl,)
            ),
            credential_check=1.0,
        )
        for name, ns in (("a", a), ("b", b))
    ]
    async with running(opts) as daemons:
        da, db = daemons["a"], daemons["b"]
        cap_a, cap_b = egress_capture(a), egress_capture(b)
        await wait_until(lambda: _up(daemons), 120, "IKE and CHILD SAs up with certificates")
        result = await ping(a, "192.0.2.2", count=50, interval=0.05)
        conns = {c["name"]: c for c in da.status()["connections"]}
        assert {c["peer_auth"] for c in conns.values()} == {"rsa-pss-sha256"}, conns
        assert {c["peer_auth"] for c in db.status()["connections"]} == {"ecdsa-sha256"}
        assert {c["peer_certificate"] for c in conns.values()} == {issued["b"].subject}
        # the CA revokes b
        pki.write_pem(
            crl,
            pki.crl(
                inter,
                [(issued["b"].cert.serial_number, now - 5)],
                last_update=now - 1,
                next_update=now + pki.DAY,
                number=2,
            ),
        )
        os.utime(crl, (now + 10, now + 10))
        await wait_until(
            lambda: not [s for s in da.driver.sas if s.established], 60, "b's IKE SAs gone on a"
        )
        blocked = await ping(a, "192.0.2.2", count=10, interval=0.2)
        refused = [c["last_error"] or "" for c in db.status()["connections"]]
        packets = cap_a.stop() + cap_b.stop()
    print(f"\nping with certificates: {result.sent} sent, {result.lost} lost")
    print(f"after revoking b: {blocked.received}/{blocked.sent} answered; b says {refused}")
    assert result.lost == 0, result.output
    assert blocked.received == 0
    esp = [p for p in packets if p.kind == PacketKind.ESP]
    assert len(esp) >= 2 * result.received
    assert not [p for p in packets if p.is_echo], "clear-text echo on the wire"
    # b's IKE_AUTH (two RSA-3072 certificates, over 2,500 bytes) crossed in IKE
    # fragments within 1,280-byte datagrams (+ 14 bytes of Ethernet), never as IP
    # fragments
    ike = [p for p in packets if p.kind == PacketKind.IKE]
    assert ike and max(p.length for p in ike) <= 1280 + 14, max(p.length for p in ike)
    assert not [p for p in packets if p.kind == PacketKind.FRAGMENT], "IP fragments"
    assert sum(1 for p in ike if p.length > 1000) >= 2, "no fragment-sized IKE datagram"
