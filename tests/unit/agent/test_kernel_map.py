"""agent.kernel: compiled SPD → XFRM desired state (pure; the kernel side is in
tests/integration/agent/test_kernel_apply.py)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from agent.kernel import (
    KernelConfigError,
    MissingSecret,
    default_policy,
    desired_state,
    kernel_priorities,
    kernel_reqid,
)
from ipsecd import spd, xfrm
from ipsecd.spd.compiler import PRIORITY_DEFAULT

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
OWN = xfrm.DEFAULT_OWNERSHIP
AUTO_WINDOW = PRIORITY_DEFAULT - (OWN.priority_max - OWN.priority_min + 1) // 2
GCM_KEY = bytes(range(1, 37))  # 288 bits: AES-256 + 4-byte salt


def node(name: str, *addrs: str) -> spd.NodeInfo:
    return spd.NodeInfo(name, tuple(ipaddress.ip_address(a) for a in addrs))


def cluster(name: str = "node-a") -> spd.NodeConfig:
    policy = spd.load_file(EXAMPLES / "cluster.spd")
    nodes = spd.load_nodes_file(EXAMPLES / "cluster.nodes")
    me = next(n for n in nodes if n.name == name)
    return spd.compile_node(policy, me, nodes)


def setkey_config() -> spd.NodeConfig:
    text = (EXAMPLES / "setkey.conf").read_text()
    policy = spd.load_text(text, "setkey.conf", file_mode=0o600)
    me = node("gw", "192.0.2.1", "fd00::1")
    return spd.compile_node(policy, me, [me])


def compile_text(text: str, *addrs: str, mode: int = 0o600) -> spd.NodeConfig:
    policy = spd.load_text(text, "t.spd", file_mode=mode)
    me = node("h", *addrs)
    return spd.compile_node(policy, me, [me])


# -- default policy ------------------------------------------------------------------


def test_def_policy_discard_blocks_every_direction() -> None:
    d = desired_state(cluster())
    block = xfrm.DefaultAction.BLOCK
    assert d.default == xfrm.DefaultPolicy(inbound=block, forward=block, outbound=block)


def test_def_policy_none_accepts() -> None:
    dp = default_policy(spd.Defaults(def_policy="none"))
    acc = xfrm.DefaultAction.ACCEPT
    assert dp == xfrm.DefaultPolicy(inbound=acc, forward=acc, outbound=acc)


# -- policies ------------------------------------------------------------------------


def test_every_compiled_policy_is_mapped_in_order_inside_the_band() -> None:
    cfg = cluster()
    d = desired_state(cfg)
    assert len(d.policies) == len(cfg.policies) > 10
    for sp, kp in zip(cfg.policies, d.policies, strict=True):
        assert OWN.owns_policy(kp)
        assert kp.selector.src == sp.selector.src and kp.selector.dst == sp.selector.dst
        assert kp.dir.name == sp.direction.name
        # automatic priorities sit around PRIORITY_DEFAULT: one fixed offset into the band
        assert kp.priority == OWN.priority_min + sp.priority - AUTO_WINDOW
    # the compiler's order (lower wins) survives
    assert [p.priority for p in d.policies] == sorted(p.priority for p in d.policies)


def test_tunnel_connection_policy_has_ports_endpoints_and_connection_reqid() -> None:
    cfg = cluster()
    d = desired_state(cfg)
    db = next(c for c in cfg.connections if c.connection == "db-link")
    out = [p for p in d.policies if p.dir == xfrm.Dir.OUT and p.selector.dport == 5432]
    assert len(out) == 1
    pol = out[0]
    assert pol.selector.proto == 6 and pol.selector.sport is None
    assert pol.action == xfrm.Action.ALLOW
    (t,) = pol.templates
    assert (t.proto, t.mode, t.level) == (xfrm.Proto.ESP, xfrm.Mode.TUNNEL, xfrm.Level.REQUIRE)
    assert (str(t.src), str(t.dst)) == ("192.0.2.1", "198.51.100.3")
    assert t.reqid == kernel_reqid(db.reqid) and OWN.reqid_min <= t.reqid <= OWN.reqid_max
    # the tunnel also gets in and fwd policies with the reversed endpoints
    back = [p for p in d.policies if p.selector.sport == 5432]
    assert sorted(p.dir for p in back) == [xfrm.Dir.IN, xfrm.Dir.FWD]
    assert all(str(p.templates[0].src) == "198.51.100.3" for p in back)


def test_bypass_and_icmp6_rules() -> None:
    d = desired_state(cluster())
    dns = [
        p
        for p in d.policies
        if p.selector.proto == 17 and 53 in (p.selector.sport, p.selector.dport)
    ]
    assert len(dns) == 8  # out/in × sport/dport × IPv4/IPv6
    assert all(p.action == xfrm.Action.ALLOW and p.templates == () for p in dns)
    nd = [p for p in d.policies if p.selector.proto == 58]
    # ICMPv6 type travels in the source-port field, code (any) in the destination port
    assert sorted((p.selector.sport, p.selector.dport) for p in nd) == [
        (135, None),
        (135, None),
        (136, None),
        (136, None),
    ]


def test_discard_rule_blocks() -> None:
    cfg = compile_text("spdadd 203.0.113.66 0.0.0.0/0 any -P in discard;\n", "192.0.2.1")
    (p,) = desired_state(cfg).policies
    assert p.action == xfrm.Action.BLOCK and p.templates == () and p.dir == xfrm.Dir.IN


def test_huge_setkey_priorities_are_ranked_keeping_order() -> None:
    text = (
        "spdadd 192.0.2.1 192.0.2.2 any -P out prio high+10 none;\n"
        "spdadd 192.0.2.1 192.0.2.9 any -P out prio def none;\n"
        "spdadd 192.0.2.1 192.0.2.8 any -P out none;\n"
    )
    cfg = compile_text(text, "192.0.2.1")
    d = desired_state(cfg)
    by_dst = {str(p.selector.dst): p.priority for p in d.policies}
    assert all(OWN.owns_policy(p) for p in d.policies)
    spd_by_dst = {str(p.selector.dst): p.priority for p in cfg.policies}
    order = sorted(spd_by_dst, key=lambda k: spd_by_dst[k])
    assert sorted(by_dst, key=lambda k: by_dst[k]) == order
    assert sorted(by_dst.values()) == [OWN.priority_min + i for i in range(3)]


def test_priorities_that_cannot_fit_are_refused() -> None:
    small = xfrm.Ownership(priority_min=100, priority_max=101)
    with pytest.raises(KernelConfigError, match="3 distinct policy priorities"):
        kernel_priorities([1 << 20, 2 << 20, 3 << 20], small)


def test_unique_templates_bind_to_their_sa_by_reqid() -> None:
    d = desired_state(setkey_config())
    out = next(p for p in d.policies if p.templates and p.templates[0].level == xfrm.Level.UNIQUE)
    sa = next(s for s in d.states if s.spi == 0x1001)
    assert out.templates[0].reqid == sa.reqid == kernel_reqid(1) == OWN.reqid_min + 1


def test_plain_unique_gets_its_own_reqid() -> None:
    text = "spdadd 192.0.2.1 192.0.2.9 any -P out ipsec esp/transport//unique;\n"
    (p,) = desired_state(compile_text(text, "192.0.2.1")).policies
    assert p.templates[0].reqid == OWN.reqid_max


def test_bundle_keeps_esp_inside_ah_outside() -> None:
    d = desired_state(setkey_config())
    pol = next(p for p in d.policies if len(p.templates) == 2)
    assert [t.proto for t in pol.templates] == [xfrm.Proto.ESP, xfrm.Proto.AH]
    assert pol.selector.dport == 23 and pol.selector.proto == 6


def test_reqid_bands() -> None:
    half = (OWN.reqid_max - OWN.reqid_min + 1) // 2
    assert kernel_reqid(0) == OWN.reqid_min
    assert kernel_reqid(0x10000) == OWN.reqid_min + half
    with pytest.raises(KernelConfigError, match="does not fit"):
        kernel_reqid(half)


# -- manual SAs ----------------------------------------------------------------------


def test_manual_sas_get_algorithms_keys_lifetimes() -> None:
    text = (EXAMPLES / "setkey.conf").read_text()
    d = desired_state(setkey_config())
    assert len(d.states) == 6 and all(OWN.owns_state(s) for s in d.states)
    gcm = next(s for s in d.states if s.spi == 0x1001)
    assert gcm.aead is not None and gcm.aead.name == xfrm.AES_GCM and gcm.aead.icv_bits == 128
    assert gcm.aead.key.hex() in text.lower()
    assert gcm.mode == xfrm.Mode.TRANSPORT
    cbc = next(s for s in d.states if s.spi == 0x2002)
    assert cbc.crypt is not None and cbc.crypt.name == "cbc(aes)"
    assert cbc.auth is not None and (cbc.auth.name, cbc.auth.trunc_bits) == ("hmac(sha256)", 128)
    ah = next(s for s in d.states if s.spi == 0x2001)
    assert ah.proto == xfrm.Proto.AH and ah.crypt is None and ah.aead is None
    tun = next(s for s in d.states if s.spi == 0x3001)
    assert tun.mode == xfrm.Mode.TUNNEL and tun.replay_window == 64
    assert (tun.lifetime.hard_add_seconds, tun.lifetime.soft_add_seconds) == (3600, 3000)


def test_policies_only_leaves_sas_out() -> None:
    d = desired_state(setkey_config(), policies_only=True)
    assert d.states == () and d.policies


SECRET_SA = "add 192.0.2.1 192.0.2.2 esp 0x1001 -m tunnel -u 1 -E aes-gcm-16 secret:k1;\n"


def test_secret_reference_is_resolved() -> None:
    d = desired_state(compile_text(SECRET_SA, "192.0.2.1"), secrets={"k1": GCM_KEY})
    (s,) = d.states
    assert s.aead is not None and s.aead.key == GCM_KEY


def test_missing_secret_names_it_and_the_place() -> None:
    with pytest.raises(MissingSecret) as info:
        desired_state(compile_text(SECRET_SA, "192.0.2.1"), secrets={"other": GCM_KEY})
    assert info.value.name == "k1"
    assert "secret 'k1' is not available" in str(info.value)
    assert "t.spd:1:1" in str(info.value)


def test_secret_of_wrong_length_is_refused_without_showing_it() -> None:
    bad = b"\xab" * 19
    with pytest.raises(KernelConfigError, match="aes-gcm-16 key is 152 bits") as info:
        desired_state(compile_text(SECRET_SA, "192.0.2.1"), secrets={"k1": bad})
    assert "abab" not in str(info.value)


def test_dfbit_set_on_a_tunnel_sa_is_refused() -> None:
    text = "defaults { dfbit set; }\n" + SECRET_SA
    with pytest.raises(KernelConfigError, match="dfbit 'set'"):
        desired_state(compile_text(text, "192.0.2.1"), secrets={"k1": GCM_KEY})


def test_dfbit_clear_and_ecn_reach_tunnel_sas() -> None:
    text = "defaults { dfbit clear; ecn on; }\n" + SECRET_SA
    (s,) = desired_state(compile_text(text, "192.0.2.1"), secrets={"k1": GCM_KEY}).states
    assert s.dfbit == xfrm.DfBit.CLEAR and s.ecn is True


def test_esp_udp_gets_nat_t_encapsulation() -> None:
    text = SECRET_SA.replace(" esp ", " esp-udp ")
    (s,) = desired_state(compile_text(text, "192.0.2.1"), secrets={"k1": GCM_KEY}).states
    assert s.encap == xfrm.Encap()


def test_no_key_material_in_reprs() -> None:
    text = (EXAMPLES / "setkey.conf").read_text()
    keys = {m.lower()[2:] for m in re.findall(r"0x[0-9a-fA-F]{32,}", text)}
    d = desired_state(setkey_config())
    shown = repr(d) + repr(d.states) + "".join(repr(s) for s in d.states)
    assert keys and not any(k in shown.lower() for k in keys)


def test_re_planning_the_same_state_is_empty_and_a_change_is_minimal() -> None:
    d = desired_state(cluster())
    ops = xfrm.plan(d.policies, d.states, [], [])
    assert len(ops) == len(d.policies) and all(isinstance(o, xfrm.AddPolicy) for o in ops)
    assert xfrm.plan(d.policies, d.states, d.policies, d.states) == []
    # node-b's config differs from node-a's only where its own address matters
    other = desired_state(cluster("node-b"))
    changed = xfrm.plan(other.policies, other.states, d.policies, d.states)
    same = set(d.policies) & set(other.policies)
    assert same  # the bypass rules are the same on every node
    touched = {op.policy.key for op in changed if isinstance(op, xfrm.AddPolicy)}
    touched |= {op.key for op in changed if isinstance(op, xfrm.DeletePolicy)}
    assert not touched & {p.key for p in same}
    assert len(changed) == len(set(d.policies) ^ set(other.policies))


def test_ipcomp_sa_is_refused_with_the_place() -> None:
    cfg = compile_text("add 192.0.2.1 192.0.2.2 ipcomp 0x1001 -C deflate;\n", "192.0.2.1")
    with pytest.raises(KernelConfigError, match=r"t\.spd:1:1: .*IPComp SAs are not supported"):
        desired_state(cfg)


def test_unknown_def_policy_is_refused() -> None:
    with pytest.raises(KernelConfigError, match="neither discard nor none"):
        default_policy(spd.Defaults(def_policy="maybe"))


def test_apply_result_summary() -> None:
    from agent.kernel import ApplyResult

    d = desired_state(cluster())
    ops = tuple(xfrm.plan(d.policies, (), [], []))
    res = ApplyResult(ops, True, xfrm.DefaultPolicy())
    assert res.total == len(ops) + 1
    assert res.summary() == f"{len(ops)} AddPolicy, default policy set"
    empty = ApplyResult((), False, d.default)
    assert empty.total == 0 and "nothing to do" in empty.summary()


def test_a_configured_band_is_honoured() -> None:
    own = xfrm.Ownership(priority_min=0xC100, priority_max=0xCFFF, reqid_min=0x100,
                         reqid_max=0x1FF)  # fmt: skip
    cfg = cluster()
    d = desired_state(cfg, ownership=own)
    assert all(own.owns_policy(p) for p in d.policies)
    width = own.priority_max - own.priority_min + 1
    anchor = PRIORITY_DEFAULT - width // 2
    assert [p.priority - 0xC100 for p in d.policies] == [p.priority - anchor for p in cfg.policies]
    reqids = {t.reqid for p in d.policies for t in p.templates}
    assert reqids and all(0x180 <= r <= 0x1FF for r in reqids)  # connection half
    assert not any(xfrm.DEFAULT_OWNERSHIP.owns_policy(p) for p in d.policies)


def test_small_explicit_priorities_map_by_offset_and_mixed_ones_by_rank() -> None:
    from agent.kernel import kernel_priorities

    assert kernel_priorities([5, 50, 100]) == {
        5: OWN.priority_min + 5,
        50: OWN.priority_min + 50,
        100: OWN.priority_min + 100,
    }
    mixed = kernel_priorities([0x40000000, PRIORITY_DEFAULT - 100, 0xC0000000])
    assert [mixed[p] for p in sorted(mixed)] == [
        OWN.priority_min,
        OWN.priority_min + 1,
        OWN.priority_min + 2,
    ]
