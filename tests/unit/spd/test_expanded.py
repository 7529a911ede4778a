"""check_expanded and ``ipsecctl validate --nodes``: the per-node view of a policy,
with the verdicts of overlap.py and findings merged across nodes."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from controller.cli import main as ipsecctl
from ipsecd.spd import NodeInfo, check_expanded, compile_node, load_nodes_file, load_text
from ipsecd.spd.limits import MAX_NODES_LISTED

from .conftest import EXAMPLES


def _node(name: str, *addrs: str) -> NodeInfo:
    return NodeInfo(name, tuple(ipaddress.ip_address(a) for a in addrs))


THREE = [_node("a", "192.0.2.1"), _node("b", "192.0.2.2"), _node("c", "192.0.2.3")]


def test_example_cluster_is_clean_per_node() -> None:
    policy = load_text((EXAMPLES / "cluster.spd").read_text(), "examples/cluster.spd")
    assert check_expanded(policy, load_nodes_file(EXAMPLES / "cluster.nodes")) == []


def test_gateway_example_is_clean_and_reaches_the_peer() -> None:
    policy = load_text((EXAMPLES / "gateway.spd").read_text(), "examples/gateway.spd")
    directory = load_nodes_file(EXAMPLES / "cluster.nodes")
    assert policy.warnings == () and check_expanded(policy, directory) == []
    vpn = [c for c in compile_node(policy, directory[0], directory).connections if c.external]
    assert [(c.name, c.remote_id, c.start, c.auth) for c in vpn] == [
        ("branch-vpn/branch/ipv4", "fqdn:gw.branch.example.net", "ondemand", "psk"),
        (
            "partner-vpn/partner/ipv4",
            "dn:CN=vpn.partner.example, O=Partner",
            "eager",
            "certificate",
        ),
    ]
    partner = vpn[1]
    assert (partner.auth_ca, partner.auth_cert, partner.auth_key) == (
        "/etc/ipsecd/partner-ca.pem",
        "/etc/ipsecd/web-vpn.pem",
        "/etc/ipsecd/web-vpn.key",
    )


def test_contained_exception_between_connections_is_silent() -> None:
    # db-link (tcp/5432, tunnel) lies inside the mesh host pair and wins by specificity
    policy = load_text(
        "nodes db name c;\n"
        "connection mesh between all and all;\n"
        "connection db { between all and db; traffic tcp port 5432; tunnel; }\n"
    )
    assert check_expanded(policy, THREE) == []


def test_partial_overlap_only_visible_per_node_is_warned() -> None:
    # '@self' makes the rule node-dependent: the file-level check cannot see it
    policy = load_text(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "bypass udp from @self to any port 53 dir out;\n",
        "f.spd",
    )
    assert policy.warnings == ()
    [d] = check_expanded(policy, THREE)
    assert not d.is_error and (d.line, d.col) == (2, 1)
    assert d.message.startswith(
        "'out' policy of the bypass rule partially overlaps the one of the spdadd at f.spd:1:1"
    )
    assert d.message.endswith(") (on node a)")
    assert "e.g. on a: out " in d.hint


def test_same_finding_on_several_nodes_is_listed_once() -> None:
    policy = load_text(
        "nodes web name a, b;\n"
        "connection m between all and all;\n"
        "discard to 192.0.2.3 dir in on web;\n",
        "f.spd",
    )
    found = check_expanded(policy, THREE)
    [d] = found
    assert d.message.endswith("never applies (on nodes a, b)")
    assert d.render().startswith("f.spd:3:1: warning: 'in' policy of the discard rule contains")


def test_identical_selectors_with_different_actions_are_an_error() -> None:
    policy = load_text(
        "connection m between all and all;\nbypass from @self to 192.0.2.2 dir out;\n", "f.spd"
    )
    found = check_expanded(policy, THREE)
    errors = [d for d in found if d.is_error]
    assert [(d.line, d.col) for d in errors] == [(2, 1)]
    assert errors[0].message.endswith("(on nodes a, c)")


def test_compiler_warnings_are_reported_and_merged() -> None:
    policy = load_text("connection m between all and all;", "f.spd")
    nodes = [_node("a", "192.0.2.1"), _node("b", "fd00::2")]
    found = check_expanded(policy, nodes)
    assert [d.message for d in found] == [
        "connection 'm': a and node b share no address family; skipped (on node a)",
        "connection 'm': b and node a share no address family; skipped (on node b)",
    ]


def test_many_nodes_are_abridged() -> None:
    nodes = [_node(f"n{i:02d}", f"192.0.2.{i + 1}") for i in range(12)]
    policy = load_text(
        "nodes web address 192.0.2.0/24;\n"
        "connection m between all and all;\n"
        "discard to 192.0.2.0/24 dir in on web;\n"
    )
    [d] = check_expanded(policy, nodes)
    assert d.message.endswith("(on all 12 nodes)")
    policy = load_text(
        "nodes web address 192.0.2.0/28;\n"
        "connection m between all and all;\n"
        "discard to 192.0.2.0/24 dir in on web;\n"
    )
    [d] = check_expanded(policy, [*nodes, _node("z", "198.51.100.1")])
    listed = ", ".join(f"n{i:02d}" for i in range(MAX_NODES_LISTED))
    assert d.message.endswith(f"(on nodes {listed} and {12 - MAX_NODES_LISTED} more)")


def test_a_node_named_like_a_peer_is_an_error_not_an_exception() -> None:
    policy = load_text(
        "peer gw1 address 203.0.113.5;\nconnection v between all and gw1;\n", "f.spd"
    )
    found = check_expanded(policy, [_node("gw1", "192.0.2.9"), THREE[0]])
    [err] = [d for d in found if d.is_error]
    assert err.message == ("node 'gw1' has the name of a peer outside the cluster (on node gw1)")


# -- the command line ------------------------------------------------------------------


def _copy(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    dst.chmod(0o600)
    return dst


def test_cli_validate_with_nodes_is_clean_for_the_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _copy(tmp_path, EXAMPLES / "cluster.spd")
    assert ipsecctl(["validate", str(f), "--nodes", str(EXAMPLES / "cluster.nodes")]) == 0
    out, err = capsys.readouterr()
    assert out == f"{f}: ok (0 warnings, compiled for 3 nodes)\n" and err == ""


def test_cli_validate_with_nodes_reports_errors_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spd = tmp_path / "p.spd"
    spd.write_text(
        "nodes web name node-a, node-b;\n"
        "connection m between all and all;\n"
        "discard to 198.51.100.0/24 dir in on web;\n"
        "bypass from @self to 192.0.2.2 dir out;\n"
    )
    nodes = str(EXAMPLES / "cluster.nodes")
    assert ipsecctl(["validate", str(spd), "--nodes", nodes]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{spd}:4:1: error: 'out' policy of the bypass rule has the same selector" in err
    assert f"{spd}:3:1: warning: 'in' policy of the discard rule contains" in err
    assert err.endswith(f"error: {spd} is invalid for the nodes of {nodes}\n")
    assert "Traceback" not in err
    # -q hides warnings, never errors
    assert ipsecctl(["validate", "-q", str(spd), "--nodes", nodes]) == 1
    err = capsys.readouterr().err
    assert ": error: " in err and ": warning: " not in err


def test_cli_validate_with_a_broken_nodes_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes"
    nodes.write_text("a 192.0.2.1\na 192.0.2.2\n")
    spd = _copy(tmp_path, EXAMPLES / "cluster.spd")
    assert ipsecctl(["validate", str(spd), "--nodes", str(nodes)]) == 1
    err = capsys.readouterr().err
    assert f"{nodes}:2:1: error: node 'a' is listed twice" in err
    assert err.endswith(f"error: {nodes} is invalid\n")
