"""ACQUIRE and POLEXPIRE events from the host kernel, through the async listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from ipsecd.xfrm import (
    AcquireRequested,
    Dir,
    Lifetime,
    Policy,
    PolicyExpired,
    Proto,
    Selector,
    Template,
    XfrmClient,
    XfrmListener,
)
from ipsecd.xfrm.netns import run_in
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.netns import Netns

from .conftest import run


def test_acquire_from_policy_with_template_and_traffic(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    pol = Policy(
        Selector.of(a.addr4, b.addr4, 17),
        Dir.OUT,
        priority=OWN.priority(0),
        templates=(Template(Proto.ESP, reqid=OWN.reqid(1)),),
    )

    def poke() -> None:
        # EAGAIN: there is no SA yet, which is what triggers the ACQUIRE
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.sendto(b"x", (b.addr4, 9))

    async def go() -> AcquireRequested:
        async with XfrmListener(a.name) as events, XfrmClient(a.name) as x:
            await x.add_policy(pol)
            run_in(a.name, poke)
            async for ev in events:
                if isinstance(ev, AcquireRequested):
                    return ev
        raise AssertionError("listener ended without an ACQUIRE")

    ev = run(go(), timeout=10)
    assert ev.proto == Proto.ESP
    assert str(ev.dst) == b.addr4 and str(ev.src) == a.addr4
    assert ev.policy == pol
    assert ev.selector.proto == 17 and ev.selector.dport == 9


def test_polexpire_soft_then_hard(ns: Netns) -> None:
    pol = Policy(
        Selector.of("192.0.2.0/24", "198.51.100.0/24"),
        Dir.OUT,
        priority=OWN.priority(0),
        lifetime=Lifetime(soft_add_seconds=1, hard_add_seconds=2),
    )

    async def go() -> list[PolicyExpired]:
        seen: list[PolicyExpired] = []
        async with XfrmListener(ns.name) as events, XfrmClient(ns.name) as x:
            await x.add_policy(pol)
            while not (seen and seen[-1].hard):
                ev = await asyncio.wait_for(events.next_event(), 10)
                if isinstance(ev, PolicyExpired):
                    seen.append(ev)
            assert await x.dump_policies() == []  # hard expiry removed it
        return seen

    seen = run(go(), timeout=20)
    assert [e.hard for e in seen] == [False, True]
    assert all(e.policy == pol for e in seen)
