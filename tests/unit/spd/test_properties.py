"""Property tests: whatever the input, the loaders return a Policy or raise SpdError."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.spd import NodeInfo, Policy, SpdError, compile_node, load_file, load_text
from ipsecd.spd.errors import Loc
from ipsecd.spd.model import Action, Direction, Selector
from ipsecd.spd.overlap import Item, Verdict, classify, effective_priority, find_conflicts

from .conftest import DATA, EXAMPLES

SEEDS = [p.read_text() for p in sorted((DATA / "corpus").glob("*.conf"))]
SEEDS += [p.read_text() for p in sorted((DATA / "errors").glob("*.spd"))]
SEEDS += [(EXAMPLES / "cluster.spd").read_text(), (EXAMPLES / "setkey.conf").read_text()]
WORDS = ["spdadd", "add", "flush", "spdflush", "-P", "in", "out", "fwd", "ipsec", "none",
         "discard", "esp/tunnel/192.0.2.1-192.0.2.2/require", "esp/transport//unique:3",
         "-E", "aes-gcm-16", "-A", "hmac-sha256", "0x" + "ab" * 36, '"k"', "{", "}", ";",
         ",", "connection", "between", "all", "and", "nodes", "label", "a=b", "defaults",
         "policy", "$x", "x", "=", "10.0.0.0/8[80]", "fd00::1", "tcp", "icmp6", "135",
         "secret:k", "proposal", "ike", "esp", "aes256gcm16-prfsha256-ecp256", "bypass",
         "port", "53", "tunnel", "from", "to", "@self", "@peer", "#", "\n", "\t", "\x00",
         "é", "priority", "prio", "high", "+", "-5"]  # fmt: skip
NODES = [
    NodeInfo("n1", (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("fd00::1"))),
    NodeInfo("n2", (ipaddress.ip_address("192.0.2.2"),)),
]
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_and_compile(text: str) -> None:
    try:
        policy = load_text(text, "fuzz.spd")
    except SpdError as exc:
        assert exc.diagnostics and all(d.render() for d in exc.diagnostics)
        # the last-resort guard in load_text must never be what caught it
        assert not any("internal error" in d.message for d in exc.diagnostics), str(exc)
        return
    assert isinstance(policy, Policy)
    policy.canonical()
    for node in NODES:
        cfg = compile_node(policy, node, NODES)
        cfg.to_dict()
        cfg.to_text()


@FAST
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    _load_and_compile(text)


@FAST
@given(st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join))
def test_random_token_soup(text: str) -> None:
    _load_and_compile(text)


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_seed_files(seed: str, data: st.DataObject) -> None:
    chars = list(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "dup"]))
        pos = data.draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "delete" and chars:
            del chars[pos : pos + data.draw(st.integers(1, 20))]
        elif op == "insert":
            chars[pos:pos] = data.draw(st.sampled_from([*WORDS, ";", "/", "[", "]", "-"]))
        elif op == "replace" and chars:
            chars[pos] = data.draw(st.characters())
        else:
            chars[pos:pos] = chars[pos : pos + data.draw(st.integers(1, 40))]
    _load_and_compile("".join(chars))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_from_a_file(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    f: Path = tmp_path_factory.mktemp("fuzz") / "f.spd"
    f.write_bytes(data)
    f.chmod(0o600)
    try:
        load_file(f)
    except SpdError as exc:
        assert exc.diagnostics


_NETS = st.builds(
    lambda a, plen: ipaddress.ip_network((a & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF, plen)),
    st.sampled_from([0x0A000000, 0x0A000100, 0x0A010000, 0x0A000101, 0]),
    st.integers(0, 32),
)
_ITEMS = st.lists(
    st.tuples(
        _NETS,
        _NETS,
        st.sampled_from([0, 6, 17]),
        st.sampled_from([0, 53, 80]),
        st.sampled_from(list(Action)),
    ),
    max_size=25,
)


@FAST
@given(_ITEMS)
def test_indexed_overlap_matches_brute_force(raw: list) -> None:  # type: ignore[type-arg]
    items = [
        Item(i, Direction.OUT, s, d, proto, 0, port, action, (), None, Loc("f", i + 1, 1))
        for i, (s, d, proto, port, action) in enumerate(raw)
    ]
    found = {(min(a.index, b.index), max(a.index, b.index)) for a, b in find_conflicts(items)}
    expected = set()
    for a in items:
        for b in items:
            if a.index >= b.index or a.action is b.action:
                continue
            nets = a.src.overlaps(b.src) and a.dst.overlaps(b.dst)
            ports = (a.proto in (0, b.proto) or b.proto == 0) and (
                a.dport in (0, b.dport) or b.dport == 0
            )
            if nets and ports:
                expected.add((a.index, b.index))
    assert found == expected
    for i, j in found:
        a, b = items[i], items[j]
        verdict = classify(a, b)
        a_in_b = _inside(a, b)
        b_in_a = _inside(b, a)
        if a_in_b and b_in_a:
            assert verdict is Verdict.EQUAL
        elif not (a_in_b or b_in_a):
            assert verdict is Verdict.PARTIAL
        else:  # nested: silent exactly when the narrower one gets the lower priority
            inner, outer = (a, b) if a_in_b else (b, a)
            wins = effective_priority(inner) < effective_priority(outer)
            assert verdict is (Verdict.EXCEPTION if wins else Verdict.NESTED)


def _inside(a: Item, b: Item) -> bool:
    """Brute force: every packet of ``a`` is matched by ``b``."""
    return (
        a.src.subnet_of(b.src)  # type: ignore[arg-type]
        and a.dst.subnet_of(b.dst)  # type: ignore[arg-type]
        and b.proto in (0, a.proto)
        and b.dport in (0, a.dport)
    )


def test_selector_is_hashable_value() -> None:
    n = ipaddress.ip_network("10.0.0.0/8")
    assert Selector(n, n) == Selector(n, n)


@FAST
@given(st.text(alphabet=st.sampled_from("ab1 .:,=#\n\tx9f0"), max_size=120))
def test_random_nodes_files(text: str) -> None:
    from ipsecd.spd import load_nodes_text

    try:
        nodes = load_nodes_text(text, "nodes")
    except SpdError as exc:
        assert all(d.line >= 1 for d in exc.diagnostics)
        return
    assert len({n.name for n in nodes}) == len(nodes)
