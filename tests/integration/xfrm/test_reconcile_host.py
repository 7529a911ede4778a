"""Reconcile on the host kernel: minimal changes, foreign entries survive, no flush."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsecd.xfrm import (
    Action,
    AddPolicy,
    DeletePolicy,
    Dir,
    Policy,
    Proto,
    ReconcileError,
    Selector,
    Template,
    UpdatePolicy,
    XfrmClient,
    XfrmExists,
    address,
    plan,
)
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.netns import Netns

from .conftest import run

LOCAL = [address("192.0.2.1")]


def desired(n: int, prio: int = 0) -> list[Policy]:
    return [
        Policy(
            Selector.of("192.0.2.1", f"198.51.100.{i}"),
            d,
            priority=OWN.priority(prio),
            templates=(Template(Proto.ESP, reqid=OWN.reqid(i)),),
        )
        if d == Dir.OUT
        else Policy(Selector.of(f"198.51.100.{i}", "192.0.2.1"), d, priority=OWN.priority(prio))
        for i in range(1, n + 1)
        for d in (Dir.IN, Dir.OUT)
    ]


FOREIGN = [
    # as strongSwan / an operator would leave them: outside our priority band
    "ip xfrm policy add src 10.0.0.0/8 dst 10.1.0.0/16 dir out priority 0 action block",
    "ip xfrm policy add src 198.51.100.5 dst 192.0.2.1 dir fwd priority 375423 "
    "tmpl src 198.51.100.5 dst 192.0.2.1 proto esp reqid 1 mode tunnel",
]


def test_reconcile_converges_and_spares_foreign_policies(ns: Netns) -> None:
    for cmd in FOREIGN:
        ns.run(cmd.split())
    foreign_text = ns.run(["ip", "xfrm", "policy", "list"]).stdout

    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            want = desired(4)
            ops = plan(want, [], await x.dump_policies(), [], local=LOCAL)
            assert all(isinstance(o, AddPolicy) for o in ops) and len(ops) == 8
            assert [o.policy.dir for o in ops if isinstance(o, AddPolicy)][:4] == [Dir.IN] * 4
            await x.apply(ops)
            # converged: a second plan is empty
            assert plan(want, [], await x.dump_policies(), [], local=LOCAL) == []
            before = {p.key: p.index for p in await x.dump_policies()}

            # change one, drop one, keep the rest
            want2 = [
                replace(p, action=Action.BLOCK, templates=()) if i == 1 else p
                for i, p in enumerate(want[:-2])
            ]
            ops = plan(want2, [], await x.dump_policies(), [], local=LOCAL)
            assert sorted(type(o).__name__ for o in ops) == [
                "DeletePolicy",
                "DeletePolicy",
                "UpdatePolicy",
            ]
            assert isinstance(ops[0], UpdatePolicy) and isinstance(ops[-1], DeletePolicy)
            await x.apply(ops)
            after = await x.dump_policies()
            owned = sorted((p for p in after if OWN.owns_policy(p)), key=lambda p: p.index)
            assert set(owned) == set(want2)
            # untouched entries keep their kernel index; the updated one too (in place)
            assert all(before[p.key] == p.index for p in owned)
            # foreign policies still there, unchanged
            assert len([p for p in after if not OWN.owns_policy(p)]) == 2

            # even "reconcile to nothing" leaves foreign policies alone
            await x.apply(plan([], [], await x.dump_policies(), [], local=LOCAL))
            assert len(await x.dump_policies()) == 2

    run(go())
    assert ns.run(["ip", "xfrm", "policy", "list"]).stdout == foreign_text


def test_conflict_with_foreign_policy_is_reported_not_overwritten(ns: Netns) -> None:
    cmd = "ip xfrm policy add src 192.0.2.1 dst 198.51.100.1 dir out priority 7 action block"
    ns.run(cmd.split())

    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            want = desired(1)
            ops = plan(want, [], await x.dump_policies(), [], local=LOCAL)
            with pytest.raises(ReconcileError) as info:
                await x.apply(ops)
            err = info.value
            assert isinstance(err.failures[0][1], XfrmExists)
            assert "198.51.100.1" in str(err) and "never overwrites" in str(err)
            assert err.done == 1  # the inbound policy (same phase, before) went in

    run(go())
    assert "priority 7" in ns.run(["ip", "xfrm", "policy", "list"]).stdout
