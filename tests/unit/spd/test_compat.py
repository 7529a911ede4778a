"""The static rolling-change check (ipsecd.spd.compat, docs/spd.md section 13): a table
of old/new revisions and what the check must say about them."""

from __future__ import annotations

import random

import pytest

from ipsecd.spd import NodeInfo, load_nodes_text, load_text
from ipsecd.spd.compat import Kind, Report, check_rollout, synthetic_directory

NODES = """
node-a   192.0.2.1      role=web
node-b   192.0.2.2      role=web
node-c   198.51.100.3   role=db
"""

HEAD = """
proposal ike i1 aes256gcm16-prfsha256-ecp256;
proposal esp e1 aes256gcm16;
nodes web label role=web;
nodes db label role=db;
"""

MESH = "connection mesh { between all and all; auth psk secret:k; ike i1; esp e1; }\n"


def check(old: str, new: str, nodes: str = NODES) -> Report:
    return check_rollout(
        load_text(old, "old.spd"), load_text(new, "new.spd"), load_nodes_text(nodes, "n")
    )


def kinds(report: Report) -> set[tuple[Kind, str]]:
    return {(f.kind, f.connection) for f in report.findings}


def reasons(report: Report, kind: Kind) -> str:
    return "\n".join(f"{f.reason} {f.flow}" for f in report.findings if f.kind is kind)


def test_identical_revisions_are_compatible() -> None:
    r = check(HEAD + MESH, HEAD + MESH)
    assert r.compatible and r.findings == ()
    assert r.plan == () and r.batches == ()
    # node-a and node-b are alike (web), node-c is not: two classes, all pairs checked
    assert [c.nodes for c in r.classes] == [("node-a", "node-b"), ("node-c",)]
    assert r.node_pairs == 3


# (name, old, new, compatible, expected kinds (subset), words in the reasons)
TABLE = [
    (
        "esp proposals overlap",
        HEAD + MESH,
        HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305, aes256gcm16") + MESH,
        True,
        set(),
        [],
    ),
    (
        "esp proposals disjoint",
        HEAD + MESH,
        HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305") + MESH,
        False,
        {(Kind.INCOMPATIBLE, "mesh"), (Kind.PROTECTION_LOST, "mesh")},
        ["no common ESP proposal", "offers aes256gcm16", "accepts only chacha20poly1305"],
    ),
    (
        "ike proposals disjoint",
        HEAD + MESH,
        HEAD.replace("i1 aes256gcm16-prfsha256-ecp256", "i1 aes256-sha384-ecp384") + MESH,
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["no common IKE proposal", "aes256-sha384-ecp384"],
    ),
    (
        "ike proposals overlap in another order",
        HEAD + MESH,
        HEAD.replace(
            "i1 aes256gcm16-prfsha256-ecp256",
            "i1 aes256gcm16-prfsha384-ecp384, aes256gcm16-prfsha256-ecp256",
        )
        + MESH,
        True,
        set(),
        [],
    ),
    (
        "psk to certificate",
        HEAD + MESH,
        HEAD + MESH.replace("auth psk secret:k", "auth certificate"),
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["uses a pre-shared key", "expects a certificate"],
    ),
    (
        "identities by name instead of address",
        HEAD + MESH,
        HEAD + MESH.replace("esp e1;", "esp e1; id name;"),
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["identities:", "identifies as node-"],
    ),
    (
        "transport to tunnel",
        HEAD + MESH,
        HEAD + MESH.replace("esp e1;", "esp e1; tunnel;"),
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["mode:", "transport", "tunnel"],
    ),
    (
        "PFS added: the CHILD SA comes up, its rekeys fail",
        HEAD + MESH,
        HEAD.replace("e1 aes256gcm16", "e1 aes256gcm16-ecp256") + MESH,
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["rekey by", "PFS", "aes256gcm16-ecp256"],
    ),
    (
        "lifetimes and dpd change",
        HEAD + MESH,
        HEAD + MESH.replace("ike i1; esp e1;", "esp e1 lifetime 2h; ike i1 lifetime 8h; dpd 10s;"),
        True,
        set(),
        [],
    ),
    (
        "literal pre-shared key changed",
        HEAD + MESH.replace("secret:k", '"first shared key, long enough"'),
        HEAD + MESH.replace("secret:k", '"other shared key, long enough"'),
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["literal pre-shared keys", "differ"],
    ),
    (
        "secret reference renamed",
        HEAD + MESH,
        HEAD + MESH.replace("secret:k", "secret:k2"),
        False,
        {(Kind.UNVERIFIED, "mesh")},
        ["secret:k", "secret:k2", "not checked offline"],
    ),
    (
        "certificate CA file changed",
        HEAD + MESH.replace("auth psk secret:k", "auth certificate"),
        HEAD + MESH.replace("auth psk secret:k", 'auth certificate ca "/etc/ipsecd/new-ca.pem"'),
        False,
        {(Kind.UNVERIFIED, "mesh")},
        ["certificate settings differ", "/etc/ipsecd/new-ca.pem", "cluster CA"],
    ),
    (
        "traffic selectors widened",
        HEAD + MESH.replace("esp e1;", "esp e1; traffic tcp port 5432;"),
        HEAD + MESH,
        True,
        {(Kind.NOTE, "mesh")},
        [],
    ),
    (
        "traffic selectors narrowed",
        HEAD + MESH,
        HEAD + MESH.replace("esp e1;", "esp e1; traffic tcp port 5432;"),
        False,
        {(Kind.PROTECTION_REMOVED, "mesh")},
        ["sent in clear", "def_policy none"],
    ),
    (
        "connection removed, def_policy none",
        HEAD + MESH,
        HEAD,
        False,
        {(Kind.INCOMPATIBLE, "mesh"), (Kind.PROTECTION_REMOVED, "mesh")},
        ["has no connection", "sent in clear"],
    ),
    (
        "connection added",
        HEAD,
        HEAD + MESH,
        False,
        {(Kind.INCOMPATIBLE, "mesh")},
        ["has no connection for the addresses", "drops the IKE_SA_INIT"],
    ),
    (
        "bypass added",
        HEAD + MESH,
        HEAD + MESH + "bypass tcp port 22;\n",
        False,
        {(Kind.PROTECTION_REMOVED, "mesh")},
        ["bypasses it (new.spd:", "port 22"],
    ),
    (
        "def_policy changes only",
        HEAD + MESH,
        "defaults { policy discard; }\n" + HEAD + MESH,
        True,
        {(Kind.NOTE, "")},
        [],
    ),
    (
        "level use: no SA means clear text",
        HEAD + MESH.replace("esp e1;", "esp e1; level use;"),
        HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305")
        + MESH.replace("esp e1;", "esp e1; level use;"),
        False,
        {(Kind.INCOMPATIBLE, "mesh"), (Kind.PROTECTION_LOST, "mesh")},
        ["sent in clear", "level use"],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "compatible", "expected", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in TABLE],
)
def test_table(
    old: str, new: str, compatible: bool, expected: set[tuple[Kind, str]], words: list[str]
) -> None:
    r = check(old, new)
    assert r.compatible is compatible, r.to_text()
    assert expected <= kinds(r), r.to_text()
    text = r.to_text()
    for word in words:
        assert word in text, (word, text)
    if compatible:
        assert not any(f.refusing for f in r.findings)
    # the reverse change is judged too, and never crashes
    check(new, old)


def test_connection_removed_with_discard_is_a_drop() -> None:
    r = check(HEAD + MESH, "defaults { policy discard; }\n" + HEAD)
    removed = [f for f in r.findings if f.kind is Kind.PROTECTION_REMOVED]
    assert removed and {f.effect for f in removed} == {"drop"}
    assert "def_policy discard" in reasons(r, Kind.PROTECTION_REMOVED)
    assert all(p.until == "permanent" for p in r.plan)


def test_incompatible_proposals_explain_the_forced_plan() -> None:
    new = HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305") + MESH
    r = check(HEAD + MESH, new)
    lost = [f for f in r.findings if f.kind is Kind.PROTECTION_LOST]
    # both directions, dropped (level require), never clear text
    assert {f.effect for f in lost} == {"drop"}
    assert {f.flow for f in lost} >= {"192.0.2.1 -> 192.0.2.2", "192.0.2.2 -> 192.0.2.1"}
    assert {(p.a_class, p.b_class, p.until) for p in r.plan} == {
        (1, 1, "both-moved"),
        (1, 2, "both-moved"),
    }
    assert all(p.effects == ("down (dropped)",) for p in r.plan)
    assert r.batches == ((1, 2),)
    text = r.to_text()
    assert "until both ends run the new revision" in text
    assert "move classes 1, 2 in one step" in text


def test_connection_of_one_group_only_concerns_its_pairs() -> None:
    old = HEAD + "connection db-link { between web and db; auth psk secret:k; ike i1; esp e1; }\n"
    new = old.replace("esp e1;", "esp e1; tunnel;")
    r = check(old, new)
    bad = [f for f in r.findings if f.kind is Kind.INCOMPATIBLE]
    # web-web pairs share no connection: only web<->db is reported
    assert bad and {(f.a_class, f.b_class) for f in bad} == {(1, 2)}
    assert r.class_pairs == 1 and r.node_pairs == 2


PEER = """
peer gw { address 203.0.113.5; id fqdn:gw.example.net; }
connection vpn { between web and gw; tunnel; traffic to 10.9.0.0/16; auth psk secret:gw;
                 ike i1; esp e1; }
"""


def test_peer_outside_the_cluster() -> None:
    assert check(HEAD + PEER, HEAD + PEER).compatible
    new = HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305") + PEER
    r = check(HEAD + PEER, new)
    assert not r.compatible
    bad = [f for f in r.findings if f.kind is Kind.INCOMPATIBLE]
    assert bad and all(f.b_peer == "gw" for f in bad)
    assert "reconfigure it" in bad[0].reason
    assert all(p.until == "permanent" and p.b_peer == "gw" for p in r.plan)
    # a changed identity of the gateway: the node on the new revision expects another
    r = check(HEAD + PEER, HEAD + PEER.replace("gw.example.net", "vpn.example.net"))
    assert "identities" in reasons(r, Kind.INCOMPATIBLE)


def test_manual_keying_changes_are_not_followed_but_said() -> None:
    sa = "add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 secret:{};\n"
    r = check(HEAD + MESH + sa.format("a"), HEAD + MESH + sa.format("b"))
    assert (Kind.UNVERIFIED, "") in kinds(r)
    assert "manually keyed SAs" in r.to_text()


def test_already_broken_pairs_are_notes() -> None:
    # the new revision does not fix it, but does not break anything either
    broken = HEAD + MESH.replace("esp e1;", "esp e1; start passive;")
    r = check(broken, broken)
    assert r.compatible


def test_deterministic_and_independent_of_directory_order() -> None:
    nodes = load_nodes_text(NODES, "n")
    old = load_text(HEAD + MESH, "old.spd")
    new = load_text(HEAD.replace("e1 aes256gcm16", "e1 chacha20poly1305") + MESH, "new.spd")
    first = check_rollout(old, new, nodes)
    shuffled = list(nodes)
    random.Random(3).shuffle(shuffled)
    again = check_rollout(old, new, shuffled)
    assert first.to_dict() == again.to_dict()
    assert first.to_text() == again.to_text()


def test_no_secret_in_the_report() -> None:
    key = "the very secret pre-shared key"
    old = HEAD + MESH.replace("secret:k", f'"{key}"')
    new = HEAD + MESH.replace("secret:k", '"another secret pre-shared key"')
    r = check(old, new)
    assert not r.compatible
    for text in (r.to_text(), repr(r.to_dict()), repr(r)):
        assert key not in text and "another secret" not in text


def test_many_nodes_in_few_roles_are_grouped() -> None:
    """5,000 nodes in three roles: three classes, one representative pair per class
    pair; the node pair count is what a pair-by-pair check would have compared."""
    lines = []
    for i in range(5000):
        role = ("web", "db", "cache")[i % 3]
        lines.append(f"n{i:04d} 10.{i // 250}.{i % 250}.1 role={role}")
    nodes = "\n".join(lines)
    head = HEAD + "nodes cache label role=cache;\nproposal ike i2 aes256-sha256-modp3072;\n"
    # its own IKE proposal: the responder tells the two connections of a pair apart
    old = head + MESH + "connection db-link { between web and db; auth psk secret:d; ike i2; }\n"
    new = old.replace("e1 aes256gcm16", "e1 chacha20poly1305")
    r = check(old, new, nodes)
    assert len(r.classes) == 3
    assert sorted(len(c.nodes) for c in r.classes) == [1666, 1667, 1667]
    assert r.node_pairs == 5000 * 4999 // 2
    assert not r.compatible
    assert {(p.a_class, p.b_class) for p in r.plan} == {(1, 1), (1, 2), (1, 3), (2, 2), (2, 3),
                                                        (3, 3)}  # fmt: skip
    assert r.batches == ((1, 2, 3),)


def test_addresses_inside_rule_prefixes_split_classes() -> None:
    nodes = NODES + "node-d 192.0.2.4 role=web\n"
    rule = "discard from 192.0.2.4 to 192.0.2.0/24 dir out;\n"
    r = check(HEAD + MESH, HEAD + MESH + rule, nodes)
    # node-d's address is in the new rule: it is a class of its own
    assert ("node-d",) in [c.nodes for c in r.classes]
    removed = [f for f in r.findings if f.kind is Kind.PROTECTION_REMOVED]
    assert removed and all(f.effect == "drop" for f in removed)
    assert all("node-d" in f.example[0] or "node-d" in f.example[1] for f in removed)


def test_synthetic_directory_covers_every_group_clause() -> None:
    old = load_text(HEAD + "nodes lan address 10.20.0.0/24;\n" + MESH, "old.spd")
    new = load_text(HEAD + "nodes ops name ops-1;\n" + MESH, "new.spd")
    nodes = synthetic_directory(old, new)
    names = [n.name for n in nodes]
    assert "ops-1" in names and len(names) == len(set(names)) >= 4
    assert any(n.labels == {"role": "web"} for n in nodes)
    assert any(str(a).startswith("10.20.0.") for n in nodes for a in n.addresses)
    assert all(isinstance(n, NodeInfo) for n in nodes)
    assert check_rollout(old, new, nodes).compatible
