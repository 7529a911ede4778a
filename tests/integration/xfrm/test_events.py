"""ACQUIRE and POLEXPIRE events from the host kernel, through the async listener."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import pytest

from ipsecd.xfrm import (
    AcquireRequested,
    Dir,
    Group,
    Lifetime,
    Policy,
    PolicyExpired,
    Proto,
    Selector,
    Template,
    XfrmBusy,
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
        lifetime=Lifetime(
            soft_add_seconds=1, hard_add_seconds=4
        ),  # margin: a loaded host fires timers late
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


def test_overrun_says_redump_and_the_listener_goes_on(pair: tuple[Netns, Netns]) -> None:
    """A tiny receive buffer and a flood of policy notifications force ENOBUFS; the
    listener reports it once (XfrmBusy, "re-dump") and then still delivers events."""
    a, b = pair
    assert a.addr4 and b.addr4
    flood = [
        Policy(Selector.of(f"10.9.{i // 256}.{i % 256}", "10.8.0.1"), Dir.IN, priority=1)
        for i in range(600)
    ]
    catch = Policy(
        Selector.of(a.addr4, "192.0.2.0/24", 17),
        Dir.OUT,
        priority=OWN.priority(0),
        templates=(Template(Proto.ESP, reqid=OWN.reqid(1)),),
    )

    def poke(dst: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.sendto(b"x", (dst, 9))

    async def go() -> AcquireRequested:
        groups = (Group.POLICY, Group.ACQUIRE)  # POLICY: one notification per policy added
        async with XfrmListener(a.name, groups, rcvbuf=4096) as events, XfrmClient(a.name) as x:
            await x.add_policies(flood)
            with pytest.raises(XfrmBusy) as info:
                await events.next_event()
            assert info.value.errno == errno.ENOBUFS and events.overruns == 1
            text = str(info.value)
            assert "dropped events" in text and "Re-dump" in text and "dump_policies()" in text
            assert "stays usable" in text
            # still usable: the queued notifications are skipped, the next ACQUIRE comes.
            # Each new destination makes a new larval SA, hence a new ACQUIRE (one may
            # be dropped while the buffer still holds the flood's leftovers).
            await x.add_policy(catch)
            waiting = asyncio.ensure_future(events.next_event())
            for host in range(3, 250):
                run_in(a.name, lambda h=host: poke(f"192.0.2.{h}"))
                done, _ = await asyncio.wait({waiting}, timeout=0.2)
                if done:
                    break
            ev = await waiting
            assert isinstance(ev, AcquireRequested) and events.overruns == 1
            return ev

    ev = run(go(), timeout=60)
    assert ev.policy == catch
