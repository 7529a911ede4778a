"""The agent's pure parts: compiled connections as engine configuration, the kernel
states of a negotiated CHILD SA, stable reqids, the keeper rule for duplicate IKE SAs,
the secrets file, status rendering, command-line options."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from agent.connections import Unusable, connection_digest, ike_config
from agent.daemon import ApplyError, read_secrets
from agent.main import build_parser, options_from
from agent.status import render_table
from agent.supervisor import Conn, keeper
from agent.writer import ReqidAllocator, child_states
from ipsecd import spd, xfrm
from ipsecd.ike import ChildSaEstablished, IkeConfig, Mode
from ipsecd.ike.constants import EncrId, IntegId, ProtocolId
from ipsecd.spd.secrets import pair_key

SPD = """
defaults { policy discard; ecn on; dfbit clear; }
connection mesh { between all and all; mode transport; auth psk "psk-0123456789abcdef";
                  esp lifetime 20m; dpd 10s; }
connection db { between all and all; traffic tcp port 5432; mode tunnel;
                auth psk secret:db-psk; }
connection certs { between all and all; traffic udp port 53; auth certificate; }
"""


def compiled() -> spd.NodeConfig:
    policy = spd.load_text(SPD, "t.spd", file_mode=0o600)
    nodes = [
        spd.NodeInfo("a", (ipaddress.ip_address("192.0.2.1"),)),
        spd.NodeInfo("b", (ipaddress.ip_address("192.0.2.2"),)),
    ]
    return spd.compile_node(policy, nodes[0], nodes)


def by_name(cfg: spd.NodeConfig, prefix: str) -> spd.IkeConnection:
    return next(c for c in cfg.connections if c.name.startswith(prefix))


def test_psk_connection_becomes_an_engine_config() -> None:
    conn = by_name(compiled(), "mesh/")
    got = ike_config(conn, {})
    assert isinstance(got, IkeConfig)
    # two cluster nodes: the pair's own key, derived from the SPD's (docs/security.md)
    assert got.name == conn.name and got.psk != b"psk-0123456789abcdef"
    assert got.psk == pair_key(b"psk-0123456789abcdef", "", conn.local_node, conn.peer)
    assert got.local_address == "192.0.2.1" and got.remote_address == "192.0.2.2"
    assert str(got.remote_id) == "192.0.2.2"
    assert got.child.mode == Mode.TRANSPORT and got.child.lifetime == 1200.0
    assert got.dpd_interval == 10.0
    assert "psk-0123" not in repr(got)


def test_missing_secret_and_certificates_say_why_and_how() -> None:
    cfg = compiled()
    db = ike_config(by_name(cfg, "db/"), {})
    assert isinstance(db, Unusable) and "db-psk" in db.reason and "--secrets" in db.reason
    ok = ike_config(by_name(cfg, "db/"), {"db-psk": b"x" * 20})
    assert isinstance(ok, IkeConfig) and ok.child.mode == Mode.TUNNEL
    cert = ike_config(by_name(cfg, "certs/"), {})
    assert isinstance(cert, Unusable) and "auth psk" in cert.reason


def test_digest_changes_with_content_not_with_position() -> None:
    conn = by_name(compiled(), "mesh/")
    same = dataclasses.replace(conn, reqid=conn.reqid + 7, origin="elsewhere:1")
    assert connection_digest(conn, {}) == connection_digest(same, {})
    other = dataclasses.replace(conn, child_lifetime=99)
    assert connection_digest(conn, {}) != connection_digest(other, {})
    db = by_name(compiled(), "db/")
    assert connection_digest(db, {"db-psk": b"1" * 20}) != connection_digest(
        db, {"db-psk": b"2" * 20}
    )


def _event(**kw: object) -> ChildSaEstablished:
    base = dict(
        ike_spi_i=b"\x01" * 8, ike_spi_r=b"\x02" * 8, protocol=ProtocolId.ESP, mode=Mode.TUNNEL,
        inbound_spi=0x1000, outbound_spi=0x2000, encr_id=EncrId.AES_GCM_16, encr_key_bits=256,
        integ_id=None, inbound_encryption_key=b"i" * 36, outbound_encryption_key=b"o" * 36,
        inbound_integrity_key=b"", outbound_integrity_key=b"", local_ts=(), remote_ts=(),
        local_address="192.0.2.1", remote_address="192.0.2.2", encapsulation=False,
        encap_local_port=None, encap_remote_port=None, esn=False, lifetime=3600.0,
        soft_lifetime=3400.0, proposal="AES_GCM_16_256", connection="c",
    )  # fmt: skip
    base.update(kw)
    return ChildSaEstablished(**base)  # type: ignore[arg-type]


def test_child_states_map_the_event_onto_xfrm() -> None:
    defaults = spd.Defaults(ecn=True, dfbit="clear")
    inbound, outbound = child_states(_event(), 0x49508000, defaults)
    assert (inbound.spi, outbound.spi) == (0x1000, 0x2000)
    assert (str(inbound.src), str(inbound.dst)) == ("192.0.2.2", "192.0.2.1")
    assert inbound.reqid == outbound.reqid == 0x49508000
    assert inbound.mode == xfrm.Mode.TUNNEL and inbound.dfbit == xfrm.DfBit.CLEAR and inbound.ecn
    assert inbound.aead == xfrm.Aead("rfc4106(gcm(aes))", b"i" * 36, 128)
    assert outbound.lifetime.hard_add_seconds == 3600 and outbound.lifetime.soft_add_seconds == 3400
    assert b"i" * 36 not in repr(inbound).encode()
    cbc = _event(encr_id=EncrId.AES_CBC, integ_id=IntegId.HMAC_SHA2_256_128,
                 inbound_encryption_key=b"k" * 32, outbound_encryption_key=b"l" * 32,
                 inbound_integrity_key=b"m" * 32, outbound_integrity_key=b"n" * 32,
                 encapsulation=True, encap_local_port=4500, encap_remote_port=41000,
                 lifetime_bytes=1_000_000, mode=Mode.TRANSPORT)  # fmt: skip
    inbound, outbound = child_states(cbc, 7, None)
    assert inbound.crypt == xfrm.Crypt("cbc(aes)", b"k" * 32)
    assert inbound.auth == xfrm.Auth("hmac(sha256)", b"m" * 32, 128)
    assert inbound.encap == xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=41000, dport=4500)
    assert outbound.encap == xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=4500, dport=41000)
    assert outbound.lifetime.hard_bytes == 1_000_000 and outbound.lifetime.soft_bytes == 900_000


def test_reqids_are_stable_and_remembered(tmp_path: Path) -> None:
    path = tmp_path / "reqids.json"
    alloc = ReqidAllocator(path=path)
    first = alloc.get("mesh/b/ipv4")
    second = alloc.get("mesh/c/ipv4")
    assert alloc.get("mesh/b/ipv4") == first and first != second
    alloc.save()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = ReqidAllocator(path=path)
    assert again.get("mesh/c/ipv4") == second
    again.retain(["mesh/c/ipv4"])
    assert again.get("new/d/ipv4") == first  # the freed number is reused
    fresh = ReqidAllocator()
    assert fresh.adopt("old/x/ipv4", second) and fresh.get("old/x/ipv4") == second
    assert not fresh.adopt("other", second)


class _Sa:
    def __init__(self, initiator: bool) -> None:
        self.initiator = initiator


@pytest.mark.parametrize("lower", [True, False])
def test_keeper_is_the_same_on_both_ends(lower: bool) -> None:
    """Two IKE SAs of one connection: both ends keep the one initiated by the node
    with the lower address (each end sees the other's initiator flag inverted)."""
    conn = by_name(compiled(), "mesh/")
    mine = Conn(dataclasses.replace(conn, initiator=lower), None, None, "", 1)
    theirs = Conn(dataclasses.replace(conn, initiator=not lower), None, None, "", 1)
    x_here, y_here = _Sa(True), _Sa(False)  # X initiated by this node, Y by the peer
    x_there, y_there = _Sa(False), _Sa(True)
    kept_here = keeper(mine, [x_here, y_here])  # type: ignore[list-item]
    kept_there = keeper(theirs, [y_there, x_there])  # type: ignore[list-item]
    assert (kept_here is x_here) == (kept_there is x_there) == lower


def test_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text('# comment\ndb-psk = 0x00ff10\nother = "some text"\n')
    os.chmod(path, 0o644)
    with pytest.raises(ApplyError, match="chmod 600"):
        read_secrets(path)
    os.chmod(path, 0o600)
    assert read_secrets(path) == {"db-psk": b"\x00\xff\x10", "other": b"some text"}
    path.write_text("bad line\n")
    with pytest.raises(ApplyError, match=r"secrets:1: expected NAME"):
        read_secrets(path)


def test_status_table_names_the_problem() -> None:
    status = {
        "node": "a", "mode": "standalone", "health": "degraded",
        "applied": {"source": "/etc/ipsec.spd", "revision": 0},
        "kernel": {"policies": 8, "child_sas": 2, "default": "block"},
        "connections": [
            {"name": "mesh/b/ipv4", "peer": "b", "remote": "192.0.2.2", "state": "up",
             "ike_spis": "01:02", "children": [{"in": "0000c001", "out": "0000c002"}],
             "rekeys": 3, "last_error": None, "peer_auth": "ecdsa-sha256",
             "peer_certificate": "CN=b,O=cluster"},
            {"name": "db/b/ipv4", "peer": "b", "remote": "192.0.2.2", "state": "unusable",
             "ike_spis": None, "children": [], "rekeys": 0,
             "last_error": "secret 'db-psk' is not available"},
        ],
    }  # fmt: skip
    text = render_table(status)
    assert "health degraded" in text and "0000c001/0000c002" in text
    assert "db/b/ipv4: secret 'db-psk' is not available" in text
    header, mesh, db = (ln.split() for ln in text.splitlines()[2:5])
    # (the PEER cell is two words: name and address)
    assert header[3] == "AUTH" and mesh[4] == "ecdsa-sha256" and db[4] == "-"
    assert "mesh/b/ipv4: peer certificate CN=b,O=cluster" in text


def test_options_defaults() -> None:
    args = build_parser().parse_args(["-f", "/tmp/x.spd", "--addresses", "192.0.2.1,fd00::1"])
    opts = options_from(args)
    assert opts.spd_file == Path("/tmp/x.spd") and opts.backup_file is None
    assert opts.addresses == ("192.0.2.1", "fd00::1") and not opts.cluster
    args = build_parser().parse_args([])
    assert options_from(args).backup_file == Path("/etc/ipsec.spd.bak")
    args = build_parser().parse_args(["--controller", "c1:1,c2:2", "--insecure", "--node", "n",
                                      "--labels", "role=web,zone=a"])  # fmt: skip
    opts = options_from(args)
    assert opts.cluster and opts.controllers == ("c1:1", "c2:2") and opts.spd_file is None
    assert dict(opts.labels) == {"role": "web", "zone": "a"}


def test_ike_fragment_size_reaches_every_engine_config() -> None:
    """--ike-fragment-size: the path MTU the engine splits IKE messages for (RFC 7383);
    0 turns fragmentation off; out-of-range sizes are refused with the range."""
    conn = by_name(compiled(), "mesh/")
    default = ike_config(conn, {})
    assert isinstance(default, IkeConfig)
    assert default.fragmentation and default.fragment_size == 1280
    small = ike_config(conn, {}, fragment_size=576)
    assert isinstance(small, IkeConfig) and small.fragmentation and small.fragment_size == 576
    off = ike_config(conn, {}, fragment_size=0)
    assert isinstance(off, IkeConfig) and not off.fragmentation
    args = build_parser().parse_args(["-f", "/tmp/x.spd", "--ike-fragment-size", "1400"])
    assert options_from(args).ike_fragment_size == 1400
    assert options_from(build_parser().parse_args(["-f", "/tmp/x.spd"])).ike_fragment_size == 1280
    for bad in ("100", "70000"):
        args = build_parser().parse_args(["-f", "/tmp/x.spd", "--ike-fragment-size", bad])
        with pytest.raises(ValueError, match=r"576\.\.65535.*0 to turn"):
            options_from(args)


def test_status_servers_started_together_leave_the_umask_alone(tmp_path: Path) -> None:
    """Two agents in one process (the tests run several) start their status sockets
    concurrently: the socket is 0600 in a 0700 folder, and the process umask is never
    touched (it once was, across an await: two starts left it at 0177 for good, and
    every folder made afterwards lacked its execute bits)."""
    import asyncio
    import stat

    from agent.status import StatusServer

    async def answer(_line: str) -> dict[str, object]:
        return {}

    async def main() -> int:
        servers = [StatusServer(tmp_path / f"s{i}" / "ipsecd.sock", answer) for i in range(4)]
        await asyncio.gather(*(s.start() for s in servers))
        umask = os.umask(0o022)
        for s in servers:
            assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
            assert stat.S_IMODE(s.path.parent.stat().st_mode) == 0o700
        await asyncio.gather(*(s.close() for s in servers))
        return umask

    before = os.umask(0o022)
    try:
        assert asyncio.run(main()) == 0o022
    finally:
        os.umask(before)
