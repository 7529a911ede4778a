"""The pure reconciler: minimal operations, make-before-break order, ownership."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsecd.xfrm.consts import Action, Dir, Mode, Proto
from ipsecd.xfrm.errors import XfrmConflict
from ipsecd.xfrm.model import Encap, Lifetime, Policy, Selector, State, Template, address, aes_gcm
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from ipsecd.xfrm.reconcile import (
    AddPolicy,
    AddState,
    DeletePolicy,
    DeleteState,
    UpdatePolicy,
    UpdateState,
    plan,
)

LOCAL = address("192.0.2.1")
PEER = address("192.0.2.2")
R1 = OWN.reqid(1)


def sa(spi: int, inbound: bool, key: bytes = b"k" * 20, **kw: object) -> State:
    src, dst = (PEER, LOCAL) if inbound else (LOCAL, PEER)
    return State(src, dst, spi, aead=aes_gcm(key), reqid=R1, **kw)  # type: ignore[arg-type]


def pol(d: Dir, rank: int = 0, **kw: object) -> Policy:
    sel = Selector.of(LOCAL, PEER) if d == Dir.OUT else Selector.of(PEER, LOCAL)
    kw.setdefault("templates", (Template(Proto.ESP, reqid=R1),))
    return Policy(sel, d, Action.ALLOW, OWN.priority(rank), **kw)  # type: ignore[arg-type]


def test_nothing_to_do_when_equal_even_with_kernel_fields() -> None:
    p, s = pol(Dir.OUT), sa(0x100, True)
    dumped_p = replace(p, index=99)
    dumped_s = replace(s, current=None, stats=None)
    assert plan([p], [s], [dumped_p], [dumped_s], local=[LOCAL]) == []


def test_fresh_install_orders_inbound_sa_outbound_sa_then_policies() -> None:
    desired_p = [pol(Dir.OUT), pol(Dir.IN)]
    desired_s = [sa(0x200, False), sa(0x100, True)]
    ops = plan(desired_p, desired_s, [], [], local=[LOCAL])
    assert ops == [
        AddState(sa(0x100, True)),
        AddState(sa(0x200, False)),
        AddPolicy(pol(Dir.IN)),
        AddPolicy(pol(Dir.OUT)),
    ]


def test_rekey_adds_new_sas_before_deleting_old_ones() -> None:
    old_in, old_out = sa(0x100, True), sa(0x200, False)
    new_in, new_out = sa(0x101, True, b"n" * 20), sa(0x201, False, b"n" * 20)
    p = [pol(Dir.IN), pol(Dir.OUT)]
    ops = plan(p, [new_in, new_out], p, [old_in, old_out], local=[LOCAL])
    assert ops == [
        AddState(new_in),
        AddState(new_out),
        DeleteState(old_out.id),
        DeleteState(old_in.id),
    ]


def test_policy_change_is_updated_in_place() -> None:
    old = pol(Dir.OUT, 0)
    new = pol(Dir.OUT, 5)  # same key, other priority
    assert old.key == new.key
    ops = plan([new], [], [old], [])
    assert ops == [UpdatePolicy(new)]
    assert not any(isinstance(o, DeletePolicy) for o in ops)


def test_stale_policies_deleted_out_first_after_adds() -> None:
    have = [pol(Dir.IN), pol(Dir.OUT)]
    want = [replace(pol(Dir.FWD), templates=())]
    ops = plan(want, [], have, [])
    assert ops == [AddPolicy(want[0]), DeletePolicy(have[1].key), DeletePolicy(have[0].key)]


def test_foreign_entries_are_never_touched() -> None:
    foreign_p = Policy(Selector.of("10.0.0.0/8", "10.1.0.0/16"), Dir.OUT, priority=0)
    foreign_s = State(LOCAL, PEER, 0x999, aead=aes_gcm(b"x" * 20), reqid=1)
    assert plan([], [], [foreign_p], [foreign_s], local=[LOCAL]) == []


def test_desired_entries_must_be_owned() -> None:
    with pytest.raises(XfrmConflict, match="outside ipsecd's band"):
        plan([Policy(Selector.of("10.0.0.0/8", "10.1.0.0/16"), Dir.OUT, priority=1)], [], [], [])
    with pytest.raises(XfrmConflict, match="reqid"):
        plan([], [State(LOCAL, PEER, 1, aead=aes_gcm(b"x" * 20), reqid=5)], [], [])
    with pytest.raises(XfrmConflict, match="template reqid"):
        plan([pol(Dir.OUT, templates=(Template(reqid=5),))], [], [], [])


def test_lifetime_change_is_an_update_key_change_a_replacement() -> None:
    s = sa(0x100, True, encap=Encap())
    longer = replace(s, lifetime=Lifetime(hard_add_seconds=3600), encap=Encap(dport=4501))
    assert plan([], [longer], [], [s], local=[LOCAL]) == [UpdateState(longer)]
    rekeyed = replace(s, aead=aes_gcm(b"z" * 20))
    ops = plan([], [rekeyed], [], [s], local=[LOCAL])
    assert ops == [DeleteState(s.id), AddState(rekeyed)]
    assert ops[0].phase == ops[1].phase == 0  # replaced first, before anything else
    moved = replace(s, mode=Mode.TUNNEL)
    assert plan([], [moved], [], [s], local=[LOCAL]) == [DeleteState(s.id), AddState(moved)]


def test_larval_sa_is_completed_and_kept_when_not_wanted() -> None:
    larval = State(PEER, LOCAL, 0x300, reqid=R1)
    full = sa(0x300, True)
    assert plan([], [full], [], [larval], local=[LOCAL]) == [UpdateState(full)]
    assert plan([], [], [], [larval], local=[LOCAL]) == []
    assert plan([], [], [], [larval], local=[LOCAL], keep_larval=False) == [DeleteState(larval.id)]


def test_conflicting_desired_entries_rejected() -> None:
    with pytest.raises(ValueError, match="share one kernel identity"):
        plan([pol(Dir.OUT, 0), pol(Dir.OUT, 1)], [], [], [])
