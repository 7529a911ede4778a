"""Policies of every kind on the host kernel, checked through our dump and through
iproute2 (an independent reader of the same kernel objects)."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest

from ipsecd.xfrm import (
    Action,
    Dir,
    Level,
    Lifetime,
    Mark,
    Mode,
    Policy,
    PolicyFlag,
    Proto,
    Selector,
    Template,
    Xfrm,
    XfrmClient,
    XfrmExists,
    XfrmNamespaceError,
    XfrmNotFound,
    address,
)
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.netns import Netns

from .conftest import run

R = OWN.reqid
A, B = address("192.0.2.1"), address("198.51.100.1")

KINDS = [
    Policy(Selector.of("192.0.2.0/24", "198.51.100.0/24"), Dir.OUT, Action.BLOCK, OWN.priority(0)),
    Policy(
        Selector.of("192.0.2.0/24", "198.51.100.0/24", 6, None, 443),
        Dir.OUT,
        priority=OWN.priority(1),
        templates=(Template(Proto.ESP, Mode.TUNNEL, A, B, reqid=R(1), level=Level.UNIQUE),),
    ),
    Policy(
        Selector.of("198.51.100.0/24", "192.0.2.0/24", 17, 53, None),
        Dir.IN,
        priority=OWN.priority(2),
        templates=(Template(Proto.ESP, reqid=R(2)), Template(Proto.AH, reqid=R(2))),
    ),
    Policy(
        Selector.of("198.51.100.0/24", "203.0.113.0/24"),
        Dir.FWD,
        priority=OWN.priority(3),
        templates=(Template(Proto.ESP, Mode.TUNNEL, B, A, level=Level.USE),),
    ),
    Policy(
        Selector.of("fd00::/64", "fd00:1::/64", 58, 128, 0),
        Dir.OUT,
        priority=OWN.priority(4),
        templates=(Template(Proto.AH),),
        mark=Mark(0x10, 0xFF),
    ),
    Policy(
        Selector.of("fd00:2::/64", "fd00:3::/64"),
        Dir.IN,
        priority=OWN.priority(5),
        if_id=7,
        lifetime=Lifetime(soft_add_seconds=3000, hard_add_seconds=3600, hard_use_seconds=600),
        flags=PolicyFlag.ICMP,
    ),
]


def test_add_get_dump_delete_all_kinds(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            for p in KINDS:
                await x.add_policy(p)
            for p in KINDS:
                assert await x.get_policy(p.key) == p
            assert sorted(await x.dump_policies(), key=lambda p: p.priority) == KINDS
            assert gc.isenabled()  # paused only while a dump is decoded
            for p in KINDS:
                await x.delete_policy(p)
            assert await x.dump_policies() == []

    run(go())


def test_iproute2_reads_what_we_wrote(ns: Netns) -> None:
    with Xfrm(ns.name) as x:
        x.add_policies(KINDS)
    out = ns.run(["ip", "xfrm", "policy", "list"]).stdout
    assert "src 192.0.2.0/24 dst 198.51.100.0/24 proto tcp dport 443" in out
    assert "tmpl src 192.0.2.1 dst 198.51.100.1" in out
    assert f"proto esp reqid {R(1)} mode tunnel" in out
    assert "level use" in out  # the fwd template
    assert "proto ah reqid" in out
    assert "mark 0x10/0xff" in out
    assert "if_id 0x7" in out
    assert "action block" in out
    assert "dir fwd priority 32771" in out
    assert "src fd00:2::/64 dst fd00:3::/64" in out


def test_update_in_place_keeps_kernel_index(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            p = KINDS[1]
            await x.add_policy(p)
            before = await x.get_policy(p)
            changed = replace(p, priority=OWN.priority(9), templates=(Template(Proto.AH),))
            await x.update_policy(changed)
            after = await x.get_policy(p)
            assert after == changed
            assert after.index == before.index  # replaced in place, not deleted + re-added
            assert len(await x.dump_policies()) == 1

    run(go())


def test_errors_name_the_policy(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            await x.add_policy(KINDS[0])
            with pytest.raises(XfrmExists, match=r"add policy out 192.0.2.0/24 -> 198.51.100.0/24"):
                await x.add_policy(KINDS[0])
            with pytest.raises(XfrmNotFound, match=r"delete policy in 198\.51\.100\.0/24"):
                await x.delete_policy(KINDS[2])
            with pytest.raises(XfrmNotFound, match="get policy"):
                await x.get_policy(KINDS[3])

    run(go())


def test_batch_reports_each_failure(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            await x.add_policy(KINDS[2])
            results = await x.batch([x.policy_request(p) for p in KINDS])
            assert [r is None for r in results] == [True, True, False, True, True, True]
            assert isinstance(results[2], XfrmExists)
            many = [
                Policy(
                    Selector.of(f"10.{i // 256}.{i % 256}.0/24", "10.255.0.0/16"),
                    Dir.OUT,
                    priority=OWN.priority(100),
                )
                for i in range(3000)
            ]
            await x.add_policies(many)
            assert len(await x.dump_policies()) == len(KINDS) + 3000

    run(go())


def test_namespace_by_fd_and_missing_namespace(ns: Netns) -> None:
    import os

    fd = os.open(ns.path, os.O_RDONLY)
    try:
        with Xfrm(fd) as x:
            x.add_policy(KINDS[0])
    finally:
        os.close(fd)
    assert "192.0.2.0/24" in ns.run(["ip", "xfrm", "policy", "list"]).stdout
    with pytest.raises(XfrmNamespaceError, match="ip netns add ipx-no-such"):
        Xfrm("ipx-no-such")
