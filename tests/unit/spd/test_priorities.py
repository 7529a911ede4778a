"""Priority tiers (docs/spd.md section 4): native bypass/discard rules outrank every
policy a ``connection`` generates; setkey ``spdadd`` keeps setkey's order; every
automatic priority stays inside the agent's stable window around PRIORITY_DEFAULT."""

from __future__ import annotations

import ipaddress

import pytest

from agent.kernel import kernel_priorities
from ipsecd import xfrm
from ipsecd.spd import Action, Direction, NodeInfo, compile_node, load_nodes_file, load_text
from ipsecd.spd.compiler import CONNECTION_OFFSET, PRIORITY_DEFAULT
from ipsecd.spd.priorities import MAX_SPECIFICITY

from .conftest import EXAMPLES

NODES = ("node-a", "node-b", "node-c")
WINDOW = 8000  # the brief for agent/kernel.py's stable mapping: PRIORITY_DEFAULT +- 8000


def _cluster_config(name: str):  # type: ignore[no-untyped-def]
    policy = load_text((EXAMPLES / "cluster.spd").read_text(), "examples/cluster.spd")
    directory = load_nodes_file(EXAMPLES / "cluster.nodes")
    node = next(n for n in directory if n.name == name)
    return compile_node(policy, node, directory)


def _node(name: str, *addrs: str) -> NodeInfo:
    return NodeInfo(name, tuple(ipaddress.ip_address(a) for a in addrs))


@pytest.mark.parametrize("name", NODES)
def test_cluster_bypass_rules_outrank_the_mesh(name: str) -> None:
    cfg = _cluster_config(name)
    rules = [p for p in cfg.policies if p.action is Action.ALLOW]
    conns = [p for p in cfg.policies if p.action is Action.IPSEC]
    assert rules and conns
    assert max(p.priority for p in rules) < min(p.priority for p in conns)
    # the two cases of the bug report: DNS and IPv6 neighbour discovery
    dns = next(p for p in rules if p.selector.dport == 53 and p.direction is Direction.OUT)
    mesh = next(p for p in conns if p.origin.startswith("examples/cluster.spd:29:"))
    assert dns.priority == 2147483624 and mesh.priority == 2147483520 + CONNECTION_OFFSET
    if name != "node-c":  # node-c has no IPv6 address
        nd = [p for p in rules if p.selector.proto == 58]
        assert {p.selector.icmp_type for p in nd} == {135, 136}
    assert not cfg.warnings and not cfg.diagnostics


@pytest.mark.parametrize("name", NODES)
def test_cluster_priorities_fit_the_agents_stable_window(name: str) -> None:
    cfg = _cluster_config(name)
    prios = [p.priority for p in cfg.policies]
    assert all(abs(p - PRIORITY_DEFAULT) <= WINDOW for p in prios)
    # the agent maps them with one fixed offset (stable across SPD edits), order kept
    own = xfrm.DEFAULT_OWNERSHIP
    width = own.priority_max - own.priority_min + 1
    mapped = kernel_priorities(prios, own)
    anchor = PRIORITY_DEFAULT - width // 2
    assert all(mapped[p] == own.priority_min + p - anchor for p in prios)


def test_automatic_tiers_are_bounded() -> None:
    # the bound the docs promise for any selector: rules/spdadd def-160..def,
    # connections def+1024-160..def+1024
    assert MAX_SPECIFICITY < CONNECTION_OFFSET
    assert PRIORITY_DEFAULT + CONNECTION_OFFSET - PRIORITY_DEFAULT <= WINDOW
    cfg = compile_node(
        load_text(
            "connection c { between all and all; traffic tcp port 443; }\n"
            "bypass tcp from 192.0.2.1 port 1 to 192.0.2.2 port 2 dir out;\n"
        ),
        a := _node("a", "192.0.2.1"),
        [a, _node("b", "192.0.2.2")],
    )
    rule = next(p for p in cfg.policies if p.action is Action.ALLOW)
    assert rule.priority == PRIORITY_DEFAULT - MAX_SPECIFICITY
    conn = [p.priority for p in cfg.policies if p.action is Action.IPSEC]
    assert all(p == PRIORITY_DEFAULT + CONNECTION_OFFSET - 152 for p in conn)


def test_setkey_order_is_unchanged_and_prio_keywords_order_as_in_setkey() -> None:
    text = (
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "spdadd 192.0.2.1 192.0.2.3 any -P out prio high none;\n"
        "spdadd 192.0.2.1 192.0.2.4 any -P out prio low discard;\n"
        "spdadd 192.0.2.1 192.0.2.5 any -P out prio def none;\n"
        "spdadd 192.0.2.1/32[53] 0.0.0.0/0 udp -P out none;\n"
    )
    a = _node("a", "192.0.2.1")
    prio = {str(p.selector.dst): p.priority for p in compile_node(load_text(text), a, [a]).policies}
    assert prio["192.0.2.2/32"] == PRIORITY_DEFAULT - 128  # setkey specificity, as before
    assert prio["0.0.0.0/0"] == PRIORITY_DEFAULT - (64 + 16 + 8)
    assert prio["192.0.2.3/32"] == 0x40000000  # prio high beats every automatic one
    assert prio["192.0.2.4/32"] == 0xC0000000  # prio low loses to every automatic one
    assert prio["192.0.2.5/32"] == PRIORITY_DEFAULT


def test_spdadd_and_rules_share_a_tier_connections_rank_below_both() -> None:
    policy = load_text(
        "connection m between all and all;\n"
        "spdadd 192.0.2.1 192.0.2.2[22] tcp -P out none;\n"
        "discard tcp from @self to 192.0.2.2 port 23 dir out;\n",
        "f.spd",
    )
    a, b = _node("a", "192.0.2.1"), _node("b", "192.0.2.2")
    cfg = compile_node(policy, a, [a, b])
    out = {(p.action, p.selector.dport): p.priority for p in cfg.policies
           if p.direction is Direction.OUT}  # fmt: skip
    ipsec = out[(Action.IPSEC, 0)]
    assert out[(Action.ALLOW, 22)] < ipsec and out[(Action.BLOCK, 23)] < ipsec
    assert out[(Action.ALLOW, 22)] == out[(Action.BLOCK, 23)]  # same selector shape
    assert not cfg.diagnostics  # both are exceptions inside the host pair: silent


def test_explicit_priorities_are_used_as_written() -> None:
    policy = load_text(
        "connection m { between all and all; priority 100; }\nbypass udp port 53 priority 200;\n"
    )
    a, b = _node("a", "192.0.2.1"), _node("b", "192.0.2.2")
    cfg = compile_node(policy, a, [a, b])
    assert {p.priority for p in cfg.policies if p.action is Action.IPSEC} == {100}
    assert {p.priority for p in cfg.policies if p.action is Action.ALLOW} == {200}
    # the author ordered them: the explicit numbers decide, and nothing is reported
    assert not cfg.diagnostics


def test_rule_that_swallows_a_connection_policy_is_a_loud_warning() -> None:
    # the rule outranks the connection, and covers its whole inbound selector: that
    # combination cannot be ordered so that both work
    policy = load_text(
        "nodes web name a;\n"
        "connection m between all and all;\n"
        "discard to 192.0.2.0/24 dir in on web;\n",
        "f.spd",
    )
    a, b = _node("a", "192.0.2.1"), _node("b", "192.0.2.2")
    cfg = compile_node(policy, a, [a, b])
    [d] = cfg.diagnostics
    assert not d.is_error and (d.line, d.col) == (3, 1)
    assert d.message == (
        "'in' policy of the discard rule contains the one of the connection 'm' at f.spd:2:12 "
        "with a conflicting action (discard here, ipsec there); where both match, this one "
        f"wins (priority {PRIORITY_DEFAULT - 48} < {PRIORITY_DEFAULT - 128 + CONNECTION_OFFSET})"
        ", so that policy of the connection 'm' never applies"
    )
    assert "outrank connection policies" in d.hint and "e.g. on a: in " in d.hint
    assert cfg.warnings == (f"f.spd:3:1: {d.message}",)


def test_rule_with_same_selector_as_a_connection_keeps_the_rule() -> None:
    policy = load_text(
        "connection m between all and all;\nbypass from @self to 192.0.2.2 dir out;\n", "f.spd"
    )
    a, b = _node("a", "192.0.2.1"), _node("b", "192.0.2.2")
    cfg = compile_node(policy, a, [a, b])
    out = [p for p in cfg.policies if p.direction is Direction.OUT]
    assert [p.action for p in out] == [Action.ALLOW]  # the connection's is dropped
    [d] = cfg.diagnostics
    assert d.is_error and d.line == 2
    assert "has the same selector as the one of the connection 'm' at f.spd:1:12" in d.message
    assert d.message.endswith("the policy of the connection 'm' is dropped")
