"""Per-node compilation: goldens for the 3-node example cluster, expansion rules."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from ipsecd.spd import (
    Action,
    Direction,
    Level,
    NodeInfo,
    SpdError,
    compile_node,
    load_nodes_file,
    load_text,
)

from .conftest import DATA, EXAMPLES

UPDATE = os.environ.get("SPD_GOLDEN_UPDATE") == "1"
NODES = ("node-a", "node-b", "node-c")


def _cluster():  # type: ignore[no-untyped-def]
    # a relative name, so the goldens do not depend on where the tree is checked out
    policy = load_text((EXAMPLES / "cluster.spd").read_text(), "examples/cluster.spd")
    directory = load_nodes_file(EXAMPLES / "cluster.nodes")
    return policy, directory


@pytest.mark.parametrize("name", NODES)
def test_cluster_compile_golden(name: str) -> None:
    policy, directory = _cluster()
    node = next(n for n in directory if n.name == name)
    got = json.dumps(compile_node(policy, node, directory).to_dict(), indent=2, sort_keys=True)
    golden = DATA / "compile" / f"{name}.json"
    if UPDATE:
        golden.write_text(got + "\n")
    assert got + "\n" == golden.read_text()


def test_compile_is_deterministic_whatever_the_directory_order() -> None:
    policy, directory = _cluster()
    node = directory[0]
    a = compile_node(policy, node, directory).to_dict()
    b = compile_node(policy, node, list(reversed(directory))).to_dict()
    assert a == b


def test_mesh_expands_per_pair_and_family() -> None:
    policy, directory = _cluster()
    a = compile_node(policy, directory[0], directory)
    names = [c.name for c in a.connections]
    assert names == ["db-link/node-c/ipv4", "mesh/node-b/ipv4", "mesh/node-b/ipv6",
                     "mesh/node-c/ipv4"]  # fmt: skip
    initiators = {c.name: c.initiator for c in a.connections}
    c = compile_node(policy, directory[2], directory)
    assert all(not conn.initiator for conn in c.connections if conn.peer == "node-a")
    assert initiators["mesh/node-c/ipv4"]


def test_tunnel_connection_gets_out_in_fwd_with_endpoints() -> None:
    policy, directory = _cluster()
    a = compile_node(policy, directory[0], directory)
    tunnel = [p for p in a.policies if p.templates and p.templates[0].mode.value == "tunnel"]
    assert sorted(p.direction.value for p in tunnel) == ["fwd", "in", "out"]
    out = next(p for p in tunnel if p.direction is Direction.OUT)
    assert (str(out.templates[0].src), str(out.templates[0].dst)) == ("192.0.2.1", "198.51.100.3")
    assert out.selector.dport == 5432 and out.selector.proto == 6


def test_spdadd_goes_to_the_node_that_owns_the_end() -> None:
    policy = load_text(
        "spdadd 10.1.0.0/16 10.2.0.0/16 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
        "spdadd 10.2.0.0/16 10.1.0.0/16 any -P in ipsec esp/tunnel/192.0.2.2-192.0.2.1/require;\n"
        "spdadd 192.0.2.2 192.0.2.1 any -P out ipsec esp/transport//default;\n"
    )
    n1 = NodeInfo("gw1", (ipaddress.ip_address("192.0.2.1"),))
    n2 = NodeInfo("gw2", (ipaddress.ip_address("192.0.2.2"),))
    c1 = compile_node(policy, n1, [n1, n2])
    c2 = compile_node(policy, n2, [n1, n2])
    assert [p.direction for p in c1.policies] == [Direction.OUT, Direction.IN]
    assert [p.direction for p in c2.policies] == [Direction.OUT]
    assert c2.policies[0].templates[0].level is Level.USE  # default -> esp_trans_deflev


def test_rule_on_group_and_self() -> None:
    policy = load_text(
        "nodes db name b;\n"
        "bypass tcp from @self port 22 dir in on db;\n"
        "discard from 203.0.113.0/24 dir in;\n"
    )
    a = NodeInfo("a", (ipaddress.ip_address("192.0.2.1"),))
    b = NodeInfo("b", (ipaddress.ip_address("192.0.2.2"),))
    ca = compile_node(policy, a, [a, b])
    cb = compile_node(policy, b, [a, b])
    assert [p.action for p in ca.policies] == [Action.BLOCK]
    ssh = cb.policies[0]
    assert (ssh.action, ssh.direction, str(ssh.selector.dst), ssh.selector.dport) == (
        Action.ALLOW,
        Direction.IN,
        "192.0.2.2/32",
        22,
    )


def test_pair_without_common_family_is_skipped_with_warning() -> None:
    policy = load_text("connection m between all and all;")
    a = NodeInfo("a", (ipaddress.ip_address("192.0.2.1"),))
    b = NodeInfo("b", (ipaddress.ip_address("fd00::2"),))
    cfg = compile_node(policy, a, [a, b])
    assert not cfg.connections and "share no address family" in cfg.warnings[0]


def test_unknown_node_is_an_spd_error() -> None:
    policy = load_text("")
    a = NodeInfo("a", (ipaddress.ip_address("192.0.2.1"),))
    with pytest.raises(SpdError, match="not in the node directory"):
        compile_node(policy, a, [])


def test_to_text_lists_everything() -> None:
    policy, directory = _cluster()
    text = compile_node(policy, directory[0], directory).to_text()
    assert text.startswith("# node node-a\ndefaults def_policy=discard")
    assert "conn mesh/node-b/ipv6 fd00::a <-> fd00::b" in text
    assert "esp/tunnel/192.0.2.1-198.51.100.3/require" in text


def test_nodes_file_errors_are_located(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "nodes"
    f.write_text("a 192.0.2.1 role=x\na 192.0.2.2\nb 192.0.2.1\nc\nd 10.0.0.300 bad-label\n")
    with pytest.raises(SpdError) as info:
        load_nodes_file(f)
    got = [(d.line, d.col, d.message) for d in info.value.diagnostics]
    assert got == [
        (2, 1, "node 'a' is listed twice"),
        (3, 3, "address 192.0.2.1 is already used by another node"),
        (4, 2, "node 'c' has no address"),
        (5, 3, "'10.0.0.300' is not an IP address"),
        (5, 14, "bad label 'bad-label'"),
    ]


def test_on_block_pins_setkey_statements_and_rules_to_a_group() -> None:
    policy = load_text(
        "nodes gws name g1;\n"
        "on gws {\n"
        "  spdadd 10.1.0.0/16 10.2.0.0/16 any -P out ipsec\n"
        "    esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
        "  add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 secret:k;\n"
        "  bypass udp port 53 dir out;\n"
        "}\n"
    )
    g1 = NodeInfo("g1", (ipaddress.ip_address("198.51.100.1"),))
    owner = NodeInfo("b", (ipaddress.ip_address("192.0.2.1"),))
    pinned = compile_node(policy, g1, [g1, owner])
    assert len(pinned.sas) == 1 and len(pinned.policies) == 1 + 4
    other = compile_node(policy, owner, [g1, owner])  # owns the addresses, not in the group
    assert not other.sas and not other.policies
