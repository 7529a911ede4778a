"""agent.kernel against the real host kernel: a compiled SPD applied to a namespace.

The host kernel has XFRM but no ESP, so these tests apply policies and the default
policy; manual ESP SAs must fail with the XFRM library's typed "kernel has no ESP"
error (real ESP SAs are the kernel lab's business).  Namespace prefix ``idm-``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kernel import apply_node_config, desired_state, reconcile
from ipsecd import spd, xfrm
from tests.support.aio import run_async
from tests.support.netns import Netns, netns_single

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
PREFIX = "idm-"


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns_single(PREFIX) as n:
        yield n


def compile_for(text: str, name: str = "node-a", *, mode: int = 0o600) -> spd.NodeConfig:
    policy = spd.load_text(text, "cluster.spd", file_mode=mode)
    nodes = spd.load_nodes_file(EXAMPLES / "cluster.nodes")
    me = next(n for n in nodes if n.name == name)
    return spd.compile_node(policy, me, nodes)


def cluster_text() -> str:
    return (EXAMPLES / "cluster.spd").read_text()


def ip_xfrm(ns: Netns, *args: str) -> str:
    return ns.run(["ip", "xfrm", *args]).stdout


def policy_blocks(text: str) -> list[str]:
    """``ip xfrm policy`` output split into one string per policy."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append(line)
        elif blocks and line.strip():
            blocks[-1] += "\n" + line
    return blocks


@run_async(60)
async def test_cluster_policy_of_node_a_lands_in_the_kernel(ns: Netns) -> None:
    cfg = compile_for(cluster_text())
    result = await apply_node_config(cfg, ns.name)
    assert result.default_changed and len(result.operations) == len(cfg.policies)

    blocks = policy_blocks(ip_xfrm(ns, "policy", "list"))
    assert len(blocks) == len(cfg.policies)
    tunnel_out = [b for b in blocks if "dport 5432" in b and "dir out" in b]
    assert len(tunnel_out) == 1, blocks
    b = tunnel_out[0]
    assert "src 192.0.2.1/32 dst 198.51.100.3/32" in b and "proto tcp" in b
    assert "tmpl src 192.0.2.1 dst 198.51.100.3" in b and "proto esp" in b
    assert "mode tunnel" in b and "level use" not in b  # ip omits the default 'required'
    mesh = [b for b in blocks if "src fd00::a/128 dst fd00::b/128" in b]
    assert len(mesh) == 1 and "mode transport" in mesh[0]
    for block in blocks:  # every policy sits in ipsecd's band
        prio = int(block.split("priority ")[1].split()[0])
        assert xfrm.DEFAULT_OWNERSHIP.priority_min <= prio <= xfrm.DEFAULT_OWNERSHIP.priority_max
    default = ip_xfrm(ns, "policy", "getdefault")
    assert [ln.split() for ln in default.splitlines()[1:]] == [
        ["in:", "block"],
        ["fwd:", "block"],
        ["out:", "block"],
    ]


@run_async(60)
async def test_reapplying_is_a_no_op(ns: Netns) -> None:
    cfg = compile_for(cluster_text())
    first = await apply_node_config(cfg, ns.name)
    assert first.total > 0
    before = ip_xfrm(ns, "policy", "list")
    again = await apply_node_config(cfg, ns.name)
    assert again.total == 0 and again.operations == () and not again.default_changed
    assert ip_xfrm(ns, "policy", "list") == before


@run_async(60)
async def test_a_changed_spd_touches_only_the_difference(ns: Netns) -> None:
    old_cfg = compile_for(cluster_text())
    await apply_node_config(old_cfg, ns.name)
    async with xfrm.XfrmClient(ns.name) as x:
        before = {p.key: p for p in await x.dump_policies()}

    text = cluster_text().replace("bypass udp port domain;", "bypass tcp port 22;")
    text = text.replace("policy discard;", "policy none;")
    new_cfg = compile_for(text)
    result = await apply_node_config(new_cfg, ns.name)

    old = desired_state(old_cfg).policies
    new = desired_state(new_cfg).policies
    added = {p.key for p in new} - {p.key for p in old}
    removed = {p.key for p in old} - {p.key for p in new}
    assert len(added) == len(removed) == 8  # port 22/53 × in/out × sport/dport × v4/v6
    got_add = {op.policy.key for op in result.operations if isinstance(op, xfrm.AddPolicy)}
    got_del = {op.key for op in result.operations if isinstance(op, xfrm.DeletePolicy)}
    assert (got_add, got_del) == (added, removed)
    assert len(result.operations) == 16 and result.default_changed
    # untouched policies kept their kernel index: they were never deleted and re-added
    async with xfrm.XfrmClient(ns.name) as x:
        after = {p.key: p for p in await x.dump_policies()}
        dp = await x.get_default_policy()
    for key in set(before) & set(after):
        assert after[key].index == before[key].index
    assert set(after) == {p.key for p in new}
    assert dp == xfrm.DefaultPolicy()  # def_policy none → accept


@run_async(60)
async def test_foreign_policies_are_left_alone(ns: Netns) -> None:
    ns.run(
        [
            "ip",
            "xfrm",
            "policy",
            "add",
            "src",
            "203.0.113.1",
            "dst",
            "203.0.113.2",
            "dir",
            "out",
            "priority",
            "7",
            "action",
            "block",
        ]
    )
    cfg = compile_for(cluster_text())
    await apply_node_config(cfg, ns.name)
    # a second SPD that wants nothing at all removes ours, not the foreign one
    empty = compile_for("defaults { policy none; }\n")
    result = await apply_node_config(empty, ns.name)
    assert len(result.operations) == len(cfg.policies)
    assert all(isinstance(op, xfrm.DeletePolicy) for op in result.operations)
    blocks = policy_blocks(ip_xfrm(ns, "policy", "list"))
    assert len(blocks) == 1 and "203.0.113.2" in blocks[0] and "priority 7" in blocks[0]


@run_async(60)
async def test_manual_esp_sas_fail_clearly_on_a_kernel_without_esp(ns: Netns) -> None:
    caps = await asyncio.to_thread(xfrm.probe)
    if caps.supports("esp"):
        pytest.fail("this kernel has ESP: the host-kernel test expects none (run in CI host)")
    text = (EXAMPLES / "setkey.conf").read_text()
    policy = spd.load_text(text, "setkey.conf", file_mode=0o600)
    me = spd.NodeInfo("gw", (ipaddress.ip_address("192.0.2.1"),))
    cfg = spd.compile_node(policy, me, [me])
    desired = desired_state(cfg)
    with pytest.raises(xfrm.ReconcileError) as info:
        await reconcile(desired, ns.name, local=me.addresses)
    err = info.value
    assert err.done == 0
    assert all(isinstance(e, xfrm.XfrmUnsupported) for _, e in err.failures)
    msg = str(err)
    # the kernel looks the algorithm up before the protocol: GCM is missing first
    assert "kernel lacks rfc4106(gcm(aes))" in msg and "spi 0x00001002" in msg
    assert "0102030405060708090a0b0c" not in msg  # no key material in the error
    # the same SPD without its manual SAs goes in: the policies work on this kernel
    result = await reconcile(desired_state(cfg, policies_only=True), ns.name)
    assert len(result.operations) == len(cfg.policies)
    assert ip_xfrm(ns, "state", "list").strip() == ""


CBC_SA = (
    "add 192.0.2.2 192.0.2.1 esp 0x4001 -m transport"
    " -E aes-cbc 0x000102030405060708090a0b0c0d0e0f"
    " -A hmac-sha2-256 0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f;\n"
)


@run_async(60)
async def test_cbc_sa_says_the_kernel_has_no_esp(ns: Netns) -> None:
    caps = await asyncio.to_thread(xfrm.probe)
    if caps.supports("esp"):
        pytest.fail("this kernel has ESP: the host-kernel test expects none (run in CI host)")
    me = spd.NodeInfo("gw", (ipaddress.ip_address("192.0.2.1"),))
    cfg = spd.compile_node(spd.load_text(CBC_SA, "cbc.spd", file_mode=0o600), me, [me])
    with pytest.raises(xfrm.ReconcileError) as info:
        await reconcile(desired_state(cfg), ns.name, local=me.addresses)
    ((op, err),) = info.value.failures
    assert isinstance(op, xfrm.AddState) and isinstance(err, xfrm.XfrmUnsupported)
    assert "kernel has no ESP (CONFIG_INET_ESP / CONFIG_INET6_ESP: modprobe esp4 esp6)" in str(err)
    assert "add SA esp spi 0x00004001 192.0.2.2 -> 192.0.2.1" in str(err)
    assert "000102030405" not in str(info.value)
