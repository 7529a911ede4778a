"""The rolling-change check agrees with the real IKE engine.

For each pair of revisions, node-a runs one revision and node-b the other (both ways);
the compiled connections become engine configurations exactly as the agent makes them
(agent.connections.ike_config) and two real engines negotiate on a simulated network
(tests/unit/ike/pair.py), each side initiating in turn, through several CHILD SA
rekeys.  The check must call the pair compatible exactly when every negotiation
establishes its CHILD SAs and no rekey fails."""

from __future__ import annotations

import pytest

from agent.connections import ike_config
from ipsecd.ike import IkeConfig
from ipsecd.ike.events import ChildSaEstablished, ChildSaFailed, ChildSaRekeyed, IkeSaFailed
from ipsecd.spd import NodeInfo, Policy, compile_node, load_nodes_text, load_text
from ipsecd.spd.compat import Kind, check_rollout
from tests.unit.ike.pair import A_ADDR, B_ADDR, Pair

NODES = f"node-a {A_ADDR[0]}\nnode-b {B_ADDR[0]}\n"
SECRETS = {"k": b"a pre-shared key that is long enough"}
LIFETIME = 120  # seconds of the CHILD SAs: several rekeys in a short simulated run

HEAD = """
nodes left name node-a;
nodes right name node-b;
proposal ike i1 aes256gcm16-prfsha256-ecp256;
proposal ike i2 aes256gcm16-prfsha384-ecp384;
proposal esp e1 aes256gcm16;
proposal esp e2 chacha20poly1305, aes256gcm16;
proposal esp e3 chacha20poly1305;
proposal esp pfs aes256gcm16-ecp256;
proposal ah a1 sha256;
"""


def conn(extra: str = "", *, esp: str = "e1", ike: str = "i1", auth: str = "psk secret:k") -> str:
    return (
        f"connection c {{ between left and right; auth {auth}; ike {ike}; "
        f"esp {esp} lifetime {LIFETIME}s; dpd off; {extra} }}\n"
    )


BASE = HEAD + conn()
VARIANTS = {
    "same": BASE,
    "esp overlaps": HEAD + conn(esp="e2"),
    "esp disjoint": HEAD + conn(esp="e3"),
    "ike overlaps": HEAD.replace(
        "i1 aes256gcm16-prfsha256-ecp256",
        "i1 aes256gcm16-prfsha384-ecp384, aes256gcm16-prfsha256-ecp256",
    )
    + conn(),
    "ike disjoint": HEAD + conn(ike="i2"),
    "pfs added": HEAD + conn(esp="pfs"),
    "tunnel": HEAD + conn("tunnel;"),
    "id name": HEAD + conn("id name;"),
    "ah added": HEAD + conn(f"ah a1 lifetime {LIFETIME}s;"),
    "literal psk": HEAD + conn(auth='psk "a pre-shared key that is long enough"'),
    "other literal psk": HEAD + conn(auth='psk "another pre-shared key, long enough"'),
    "narrower traffic": HEAD + conn("traffic tcp port 5432;"),
    "removed": HEAD,
    "lifetimes": HEAD
    + conn().replace("dpd off;", "dpd off; ike i1 lifetime 8h;").replace("ike i1;", "", 1),
}
# (old, new) pairs: from the base to every variant, plus a few between variants
# (old, new, negotiable): from the base to every variant, plus a few between variants.
# (a secret:NAME against a literal key cannot be compared offline: the check says
# "unverified", tests/unit/spd/test_compat.py; every case here has a proved verdict)
COMPATIBLE = {"same", "esp overlaps", "ike overlaps", "narrower traffic", "lifetimes"}
CASES = [("same", v, v in COMPATIBLE) for v in VARIANTS if "literal" not in v] + [
    ("esp overlaps", "esp disjoint", True),
    ("tunnel", "ah added", False),
    ("literal psk", "other literal psk", False),
    ("narrower traffic", "same", True),
]


def configs(policy: Policy, node: NodeInfo, directory: list[NodeInfo]) -> list[IkeConfig]:
    out = []
    for c in compile_node(policy, node, directory).connections:
        made = ike_config(c, SECRETS)
        assert isinstance(made, IkeConfig), made
        out.append(made)
    return out


def engine_agrees(a: list[IkeConfig], b: list[IkeConfig]) -> tuple[bool, str]:
    """Every connection, initiated by either side, comes up and survives its rekeys."""
    for who, mine in (("a", a), ("b", b)):
        for cfg in mine:
            pair = Pair(a, b)
            pair.initiate(who, cfg)
            pair.settle(10.0)
            up = [e for e in pair.of(who, ChildSaEstablished) if e.connection == cfg.name]
            if len(up) < len(cfg.children):
                return False, f"{who} initiating {cfg.name}: CHILD SAs not established"
            pair.advance(LIFETIME * 4)
            failed = [
                e for side in "ab" for kind in (ChildSaFailed, IkeSaFailed)
                for e in pair.of(side, kind)
            ]  # fmt: skip
            if failed:
                return False, f"{who} initiating {cfg.name}: {failed[0]}"
            if not pair.of("a", ChildSaRekeyed) and not pair.of("b", ChildSaRekeyed):
                return False, f"{who} initiating {cfg.name}: never rekeyed"
    if not a and not b:
        return True, "no connection"
    if not a or not b:
        return False, "one end has no connection"
    return True, ""


@pytest.mark.parametrize(
    ("old_name", "new_name", "expected"), CASES, ids=[f"{o}->{n}" for o, n, _ in CASES]
)
def test_check_agrees_with_the_engine(old_name: str, new_name: str, expected: bool) -> None:
    directory = load_nodes_text(NODES, "nodes")
    node_a, node_b = directory
    policies = {
        "old": load_text(VARIANTS[old_name], "old.spd"),
        "new": load_text(VARIANTS[new_name], "new.spd"),
    }
    report = check_rollout(policies["old"], policies["new"], directory)
    classes = {c.nodes: c.id for c in report.classes}
    assert set(classes) == {("node-a",), ("node-b",)}
    for ra, rb in (("old", "new"), ("new", "old")):
        mine = [f for f in report.findings if (f.a_revision, f.b_revision) == (ra, rb)]
        assert not any(f.kind is Kind.UNVERIFIED for f in mine), report.to_text()
        negotiable = not any(f.kind is Kind.INCOMPATIBLE for f in mine)
        a = configs(policies[ra], node_a, directory)
        b = configs(policies[rb], node_b, directory)
        engine, why = engine_agrees(a, b)
        assert negotiable == engine, (ra, rb, why, report.to_text())
        assert engine == expected, (ra, rb, why)


def test_two_connections_on_one_address_pair_agree_with_the_engine() -> None:
    """Two connections between the same two addresses with a common IKE proposal and
    different keys: IKE_SA_INIT can only look at addresses and proposals, so the
    responder first picks by name; at IKE_AUTH it authenticates with each fitting
    connection in turn (ike_auth._configs_for_peer) and keeps the one whose key
    verifies.  Both connections come up, from either end, and the check agrees (no
    finding)."""
    directory = load_nodes_text(NODES, "nodes")
    secrets = {**SECRETS, "other": b"some other pre-shared key, long enough"}
    text = BASE + conn().replace("connection c ", "connection d ").replace(
        "secret:k", "secret:other"
    )
    policy = load_text(text, "old.spd")
    report = check_rollout(policy, policy, directory)
    a = [ike_config(c, secrets) for c in compile_node(policy, directory[0], directory).connections]
    b = [ike_config(c, secrets) for c in compile_node(policy, directory[1], directory).connections]
    assert all(isinstance(x, IkeConfig) for x in a + b)
    assert len(a) == len(b) == 2
    broken = []
    for who, mine in (("a", a), ("b", b)):
        for cfg in mine:
            assert isinstance(cfg, IkeConfig)
            pair = Pair(a, b)  # type: ignore[arg-type]
            pair.initiate(who, cfg)
            pair.settle(10.0)
            if pair.of("a", IkeSaFailed) or pair.of("b", IkeSaFailed):
                broken.append((who, cfg.name))
    assert broken == []
    assert not [f for f in report.findings if f.connection == "d"], report.findings
