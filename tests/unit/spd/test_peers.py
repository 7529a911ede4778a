"""Peers outside the cluster (``peer``) and connection start modes (``start``)."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.spd import Direction, NodeInfo, SpdError, compile_node, load_text

CLUSTER = [
    NodeInfo("node-a", (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("fd00::a")),
             {"role": "web"}),
    NodeInfo("node-b", (ipaddress.ip_address("192.0.2.2"),), {"role": "web"}),
    NodeInfo("node-c", (ipaddress.ip_address("198.51.100.3"),), {"role": "db"}),
]  # fmt: skip

GATEWAY = (
    "nodes workers label role=web;\n"
    "peer gw1 { address 203.0.113.5, 2001:db8::5; id fqdn:GW1.example.net; }\n"
    "connection vpn { between workers and gw1; auth psk secret:gw1; }\n"
)


def _errors(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(SpdError) as info:
        load_text(text, "f.spd")
    return [(d.line, d.col, d.message) for d in info.value.diagnostics if d.is_error]


def _compile(text: str, node: str = "node-a"):  # type: ignore[no-untyped-def]
    me = next(n for n in CLUSTER if n.name == node)
    return compile_node(load_text(text, "f.spd"), me, CLUSTER)


# -- syntax ---------------------------------------------------------------------------


def test_peer_statement_block_and_one_line_forms() -> None:
    p = load_text(
        GATEWAY + "peer gw2 address 198.51.100.7 id keyid:0A0b;\n"
        "peer gw3 address 2001:db8::9;\n"
        "connection c2 between gw2 and all;\nconnection c3 between all and gw3;\n"
    )
    gw1, gw2, gw3 = p.peers["gw1"], p.peers["gw2"], p.peers["gw3"]
    assert [str(a) for a in gw1.addresses] == ["203.0.113.5", "2001:db8::5"]
    assert gw1.ike_id == "fqdn:gw1.example.net"  # DNS names are case-insensitive
    assert gw2.ike_id == "keyid:0a0b"
    assert gw3.ike_id is None
    assert '"peers":[' in p.canonical() and "gw1.example.net" in p.canonical()


def test_peer_id_may_be_an_address_or_a_quoted_dn() -> None:
    p = load_text(
        "peer gw address 203.0.113.5 id 198.51.100.1;\n"
        'peer gx { address 203.0.113.6; id "CN=gx, O=Example"; }\n'
        'peer gy { address 203.0.113.7; id "CN=gy,O=Example\\, Inc.,C=DE"; }\n'
        "connection c { between all and gw; }\nconnection d { between all and gx; }\n"
        "connection e { between all and gy; }\n",
        "f.spd",
    )
    assert p.peers["gw"].ike_id == "198.51.100.1"
    assert p.peers["gx"].ike_id == "dn:CN=gx, O=Example"
    assert p.peers["gy"].ike_id == "dn:CN=gy,O=Example\\, Inc.,C=DE"
    assert not p.warnings


@pytest.mark.parametrize("dn", ["gw.example.net", "CN", "=x", "CN=a,,O=b"])
def test_a_dn_identity_must_be_a_distinguished_name(dn: str) -> None:
    with pytest.raises(SpdError, match="is not a distinguished name") as info:
        load_text(f'peer gx {{ address 203.0.113.6; id "{dn}"; }}\n', "f.spd")
    assert "f.spd:1:35" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("peer gw { id fqdn:gw.example; }", (1, 6, "peer 'gw' has no address")),
        ("peer gw address 203.0.113.5, 203.0.113.6;",
         (1, 30, "peer 'gw' has two IPv4 addresses")),
        ("peer gw address 203.0.113.0/24;", (1, 17, "'203.0.113.0/24' is not a valid IP address")),
        ("peer gw address gw.example.net;", (1, 17, "'gw.example.net' is not an IP address")),
        ("peer gw { address 203.0.113.5; address 203.0.113.6; }",
         (1, 32, "'address' is given twice in peer 'gw'")),
        ("peer gw address 203.0.113.5 id fqdn:-bad-;",
         (1, 32, "bad host name '-bad-' in identity")),
        ("peer gw address 203.0.113.5 id keyid:abc;", (1, 32, "bad key id 'abc'")),
        ("peer gw address 203.0.113.5 id gw.example;", (1, 32, "bad IKE identity 'gw.example'")),
        ("peer gw address 203.0.113.5 port 500;",
         (1, 29, "expected 'address' or 'id', found 'port'")),
        ("peer all address 203.0.113.5;", (1, 6, "'all' is the built-in group of every node")),
        ("peer gw address 203.0.113.5;\npeer gw address 203.0.113.6;",
         (2, 6, "peer 'gw' is defined twice")),
        ("nodes gw name a;\npeer gw address 203.0.113.5;\nconnection c between gw and all;",
         (2, 6, "'gw' is both a node group and a peer")),
        ("peer g1 address 203.0.113.5;\npeer g2 address 203.0.113.6;\n"
         "connection c between g1 and g2;",
         (3, 14, "connection 'c' has peers outside the cluster on both sides ('g1' and 'g2')")),
        ("peer g1 address 203.0.113.5;\nconnection c between g1 and g1;",
         (2, 14, "connection 'c' has peers outside the cluster on both sides ('g1' and 'g1')")),
        ("peer gw address 203.0.113.5;\nconnection c between all and gw;\nbypass udp on gw;",
         (3, 15, "'gw' is a peer outside the cluster, not a node group")),
        ("peer gw address 203.0.113.5;\nconnection c between all and gw;\non gw { bypass; }",
         (3, 4, "'gw' is a peer outside the cluster, not a node group")),
        ("connection c between all and gw9;", (1, 30, "unknown node group 'gw9'")),
    ],
)  # fmt: skip
def test_peer_errors(text: str, expected: tuple[int, int, str]) -> None:
    assert _errors(text)[0] == expected


def test_unknown_name_hint_lists_groups_and_peers() -> None:
    with pytest.raises(SpdError) as info:
        load_text("nodes web name a;\npeer gw address 203.0.113.5;\n"
                  "connection c between web and gx;\nconnection d between web and gw;")  # fmt: skip
    [d] = info.value.diagnostics
    assert d.hint == "defined groups: web, all; peers: gw"


def test_unused_peer_warns() -> None:
    [w] = load_text("peer gw address 203.0.113.5;", "f.spd").warnings
    assert (w.line, w.message) == (1, "peer 'gw' is never used")


def test_a_macro_named_peer_still_works() -> None:
    p = load_text("peer = 192.0.2.2;\nspdadd 192.0.2.1 $peer any -P out none;\n")
    assert str(p.spd[0].selector.dst) == "192.0.2.2/32"


# -- compilation ----------------------------------------------------------------------


def test_cluster_node_gets_one_external_connection_per_family() -> None:
    cfg = _compile(GATEWAY)
    assert [c.name for c in cfg.connections] == ["vpn/gw1/ipv4", "vpn/gw1/ipv6"]
    v4, v6 = cfg.connections
    assert (v4.peer, v4.external, v4.connection) == ("gw1", True, "vpn")
    assert (str(v4.local_addr), str(v4.remote_addr)) == ("192.0.2.1", "203.0.113.5")
    assert (str(v6.local_addr), str(v6.remote_addr)) == ("fd00::a", "2001:db8::5")
    assert v4.remote_id == v6.remote_id == "fqdn:gw1.example.net"
    assert (v4.local_id, v6.local_id) == ("192.0.2.1", "fd00::a")  # as for node pairs
    assert v4.initiator and v6.initiator is False  # lower address initiates, unchanged
    assert v4.start == "eager"
    out = [p for p in cfg.policies if p.direction is Direction.OUT]
    assert {(str(p.selector.src), str(p.selector.dst)) for p in out} == {
        ("192.0.2.1/32", "203.0.113.5/32"),
        ("fd00::a/128", "2001:db8::5/128"),
    }


def test_remote_id_defaults_to_the_peers_address_and_id_name_is_kept() -> None:
    text = (
        "peer gw address 203.0.113.5;\n"
        "connection c { between all and gw; id name; tunnel; traffic from 10.1.0.0/16 "
        "to 10.9.0.0/16; }\n"
    )
    [c] = _compile(text, "node-b").connections
    assert (c.local_id, c.remote_id, c.external) == ("node-b", "203.0.113.5", True)
    tunnel = [p for p in _compile(text, "node-b").policies if p.direction is Direction.OUT]
    assert [str(t.dst) for t in tunnel[0].templates] == ["203.0.113.5"]


def test_peer_is_never_compiled_and_only_the_other_side_gets_connections() -> None:
    cfg = _compile(GATEWAY, "node-c")  # not a worker
    assert cfg.connections == () and cfg.policies == ()
    gw = NodeInfo("gw1", (ipaddress.ip_address("203.0.113.5"),))
    with pytest.raises(SpdError, match="has the name of a peer outside the cluster"):
        compile_node(load_text(GATEWAY), gw, [*CLUSTER, gw])


def test_peer_with_a_cluster_nodes_address_is_warned_and_skipped_on_that_node() -> None:
    text = "peer gw address 192.0.2.2;\nconnection c between all and gw;\n"
    a = _compile(text, "node-a")
    [d] = a.diagnostics
    assert d.message == "peer 'gw' has the address 192.0.2.2 of cluster node 'node-b'"
    assert [c.name for c in a.connections] == ["c/gw/ipv4"]
    b = _compile(text, "node-b")
    assert b.connections == () and len(b.diagnostics) == 1


def test_peer_without_a_common_family_is_skipped_with_a_warning() -> None:
    cfg = _compile("peer gw address 2001:db8::5;\nconnection c between all and gw;\n", "node-b")
    assert cfg.connections == ()
    assert cfg.warnings == (
        "f.spd:2:12: connection 'c': node-b and peer gw share no address family; skipped",
    )


# -- start ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "ondemand", "passive"])
def test_start_mode_reaches_every_ike_connection(mode: str) -> None:
    text = f"connection m {{ between all and all; start {mode}; }}\n"
    assert load_text(text).connections[0].start == mode
    cfg = _compile(text)
    assert cfg.connections and {c.start for c in cfg.connections} == {mode}
    # the initiator is still the lower address, whatever the start mode
    assert [c.initiator for c in cfg.connections] == [True, True]
    assert f"start {mode}" in cfg.to_text()


def test_start_defaults_to_eager_and_is_checked() -> None:
    assert load_text("connection m between all and all;").connections[0].start == "eager"
    assert _errors("connection m { between all and all; start lazy; }") == [
        (1, 43, "expected a start mode, found 'lazy'")
    ]
    assert _errors("connection m { between all and all; start eager; start passive; }") == [
        (1, 50, "'start' is given twice in connection 'm'")
    ]


def test_a_finding_is_said_once_per_node() -> None:
    text = (
        "peer gw address 192.0.2.2;\n"
        "connection c between all and gw;\nconnection d between all and gw;\n"
    )
    found = [d.message for d in _compile(text, "node-a").diagnostics]
    assert found.count("peer 'gw' has the address 192.0.2.2 of cluster node 'node-b'") == 1
    # c and d give the same selectors two different requests: an error each way
    assert sum("has the same selector" in m for m in found) == 2
