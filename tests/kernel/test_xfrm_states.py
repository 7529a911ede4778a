"""The SA side of ipsecd.xfrm against a kernel with ESP (lab VM): every SA option
round-trips, UPDSA, SPI allocation, EXPIRE events, NAT-T encapsulation on the wire,
a make-before-break rekey through the reconciler, counters, and the capability probe."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from ipsecd.xfrm import (
    Action,
    AddState,
    DeleteState,
    DfBit,
    Dir,
    Encap,
    Lifetime,
    MappingChanged,
    Mark,
    Mode,
    Policy,
    Proto,
    Selector,
    State,
    StateExpired,
    Template,
    XfrmClient,
    XfrmExists,
    XfrmListener,
    address,
    aes_cbc,
    aes_gcm,
    hmac_sha2,
    plan,
    probe,
    set_socket_policy,
    xfrm_stat,
)
from ipsecd.xfrm.netns import run_in
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.capture import EgressCapture, PacketKind, kinds
from tests.support.netns import Netns, netns_pair

T = TypeVar("T")
PING = ["ping", "-c", "2", "-i", "0.2", "-W", "5"]
UDP_ENCAP = 100  # linux/udp.h
UDP_ENCAP_ESPINUDP = 2


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def pair(lab: None) -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("ipx-") as p:
        yield p


def transport(
    here: str, there: str, out_spi: int, in_spi: int, keys: dict[int, bytes], **extra: Any
) -> tuple[list[State], list[Policy]]:
    h, t = address(here), address(there)
    states = [
        State(h, t, out_spi, reqid=OWN.reqid(1), aead=aes_gcm(keys[out_spi]), **extra),
        State(t, h, in_spi, reqid=OWN.reqid(2), aead=aes_gcm(keys[in_spi]), **extra),
    ]
    policies = [
        Policy(
            Selector.of(h, t),
            Dir.OUT,
            Action.ALLOW,
            OWN.priority(0),
            (Template(Proto.ESP, reqid=OWN.reqid(1)),),
        ),
        Policy(
            Selector.of(t, h),
            Dir.IN,
            Action.ALLOW,
            OWN.priority(0),
            (Template(Proto.ESP, reqid=OWN.reqid(2)),),
        ),
    ]
    return states, policies


async def install(ns: Netns, states: list[State], policies: list[Policy]) -> None:
    async with XfrmClient(ns.name) as x:
        for s in states:
            await x.add_state(s)
        await x.add_policies(policies)


def test_every_state_option_round_trips(pair: tuple[Netns, Netns]) -> None:
    a, _b = pair
    A, B = address("192.0.2.1"), address("192.0.2.2")
    A6, B6 = address("fd00::1"), address("fd00::2")
    states = [
        State(
            A,
            B,
            0x1001,
            aead=aes_gcm(secrets.token_bytes(36)),
            reqid=OWN.reqid(1),
            replay_window=128,
            esn=True,
        ),
        State(
            A6,
            B6,
            0x1002,
            mode=Mode.TUNNEL,
            crypt=aes_cbc(secrets.token_bytes(32)),
            auth=hmac_sha2(384, secrets.token_bytes(48)),
            ecn=False,
            decap_dscp=True,
            dfbit=DfBit.CLEAR,
            mark=Mark(7, 0xFF),
            if_id=3,
            tfcpad=32,
        ),
        State(
            A,
            B,
            0x1003,
            aead=aes_gcm(secrets.token_bytes(20)),
            encap=Encap(sport=4500, dport=31000),
            lifetime=Lifetime(
                soft_bytes=10**6,
                hard_bytes=2 * 10**6,
                soft_packets=1000,
                hard_packets=2000,
                soft_add_seconds=100,
                hard_add_seconds=200,
                soft_use_seconds=50,
                hard_use_seconds=60,
            ),
            selector=Selector.of(A, B, 17),
            replay_window=0,
        ),
        State(
            A, B, 0x1004, Proto.AH, auth=hmac_sha2(256, secrets.token_bytes(32)), replay_window=32
        ),
    ]

    async def go() -> None:
        async with XfrmClient(a.name) as x:
            for s in states:
                await x.add_state(s)
            for s in states:
                assert await x.get_state(s.id) == s
            assert sorted(await x.dump_states(), key=lambda s: s.spi) == states
            with pytest.raises(XfrmExists, match="add SA esp spi 0x00001001"):
                await x.add_state(states[0])
            # UPDSA on a valid SA: new lifetimes and NAT-T port, same keys
            moved = replace(
                states[2],
                lifetime=Lifetime(hard_add_seconds=999),
                encap=Encap(sport=4500, dport=32000),
            )
            await x.update_state(moved)
            assert await x.get_state(moved.id) == moved
            assert (await x.sad_info()).count == len(states)
            for s in states:
                await x.delete_state(s.id)
            assert await x.dump_states() == []

    run(go())


def test_alloc_spi_then_complete_with_update(pair: tuple[Netns, Netns]) -> None:
    a, _b = pair
    A, B = address("192.0.2.1"), address("192.0.2.2")

    async def go() -> None:
        async with XfrmClient(a.name) as x:
            spi = await x.alloc_spi(B, A, reqid=OWN.reqid(9))
            full = State(B, A, spi, reqid=OWN.reqid(9), aead=aes_gcm(secrets.token_bytes(20)))
            ops = plan([], [full], [], await x.dump_states(), local=[A])
            assert [type(o).__name__ for o in ops] == ["UpdateState"]
            await x.apply(ops)
            assert await x.get_state(full.id) == full

    run(go())


def test_expire_events_soft_then_hard(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    keys = {0x501: secrets.token_bytes(20), 0x502: secrets.token_bytes(20)}
    sa_a, pol_a = transport(a.addr4, b.addr4, 0x501, 0x502, keys)
    sa_b, pol_b = transport(b.addr4, a.addr4, 0x502, 0x501, keys)
    limited = replace(sa_a[0], lifetime=Lifetime(soft_packets=1, hard_packets=3))
    run(install(a, [limited, sa_a[1]], pol_a))
    run(install(b, sa_b, pol_b))

    async def go() -> list[StateExpired]:
        seen: list[StateExpired] = []
        async with XfrmListener(a.name) as events:
            proc = await asyncio.create_subprocess_exec(
                *a.argv(["ping", "-c", "4", "-i", "0.2", "-W", "1", b.addr4 or ""]),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                while not (seen and seen[-1].hard):
                    ev = await asyncio.wait_for(events.next_event(), 20)
                    if isinstance(ev, StateExpired):
                        seen.append(ev)
            finally:
                await proc.wait()
        return seen

    seen = run(go())
    assert [e.hard for e in seen] == [False, True]
    assert all(e.state.id == limited.id for e in seen)
    assert seen[-1].state.current is not None and seen[-1].state.current.packets >= 3


def _encap_socket(ns: Netns) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        # The UDP layer checks the inbound policy *before* handing the datagram to the
        # ESP decapsulation (udp_queue_rcv_one_skb): without a bypass the policy that
        # demands ESP would drop the still-encapsulated packet.  IKE daemons do the same.
        set_socket_policy(s, "in bypass")
        set_socket_policy(s, "out bypass")
        s.bind(("0.0.0.0", 4500))
        return s

    return run_in(ns.name, make)


def test_udp_encapsulated_esp_on_the_wire(
    pair: tuple[Netns, Netns], egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    keys = {0x601: secrets.token_bytes(20), 0x602: secrets.token_bytes(20)}
    sa_a, pol_a = transport(a.addr4, b.addr4, 0x601, 0x602, keys, encap=Encap())
    sa_b, pol_b = transport(b.addr4, a.addr4, 0x602, 0x601, keys, encap=Encap())
    run(install(a, sa_a, pol_a))
    run(install(b, sa_b, pol_b))
    socks = [_encap_socket(a), _encap_socket(b)]  # decapsulation needs a UDP_ENCAP socket
    stat_a, stat_b = xfrm_stat(a.name), xfrm_stat(b.name)
    try:
        cap, cap_b = egress_capture(a), egress_capture(b)
        ping = a.run([*PING, b.addr4], check=False)
        sent, sent_b = cap.stop(), cap_b.stop()
    finally:
        for s in socks:
            s.close()

    def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: after[k] - v for k, v in before.items() if after[k] != v}

    assert ping.returncode == 0, (
        f"ping failed: {ping.stdout}\na sent {kinds(sent)}, b sent {kinds(sent_b)}\n"
        f"xfrm_stat a {moved(stat_a, xfrm_stat(a.name))} b {moved(stat_b, xfrm_stat(b.name))}"
    )
    nat_t = [p for p in sent if p.kind is PacketKind.ESP_IN_UDP]
    assert len(nat_t) >= 2 and {p.spi for p in nat_t} == {0x601}, kinds(sent)
    assert all(p.dport == 4500 for p in nat_t)
    assert not [p for p in sent if p.is_echo or p.kind is PacketKind.ESP], kinds(sent)


def test_mapping_event_when_peer_port_changes(pair: tuple[Netns, Netns]) -> None:
    """b expects a's NAT-T packets from port 4500; a sends from 4501 (as if a NAT
    re-mapped it): b's kernel reports the new mapping (RFC 3948 / XFRM_MSG_MAPPING)."""
    a, b = pair
    assert a.addr4 and b.addr4
    key = secrets.token_bytes(20)
    A, B = address(a.addr4), address(b.addr4)
    out_a = State(A, B, 0xA01, reqid=OWN.reqid(1), aead=aes_gcm(key), encap=Encap(sport=4501))
    in_b = State(A, B, 0xA01, reqid=OWN.reqid(1), aead=aes_gcm(key), encap=Encap(sport=4500))
    pol_a = Policy(
        Selector.of(A, B),
        Dir.OUT,
        Action.ALLOW,
        OWN.priority(0),
        (Template(Proto.ESP, reqid=OWN.reqid(1)),),
    )
    run(install(a, [out_a], [pol_a]))
    run(install(b, [in_b], []))
    sock = _encap_socket(b)

    async def go() -> MappingChanged:
        async with XfrmListener(b.name) as events:
            proc = await asyncio.create_subprocess_exec(
                *a.argv(["ping", "-c", "2", "-i", "0.2", "-W", "1", b.addr4 or ""]),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                while True:
                    ev = await asyncio.wait_for(events.next_event(), 20)
                    if isinstance(ev, MappingChanged):
                        return ev
            finally:
                await proc.wait()

    try:
        ev = run(go())
    finally:
        sock.close()
    assert ev.sa.spi == 0xA01 and ev.sa.dst == B
    assert (ev.old_src, ev.old_sport) == (A, 4500)
    assert (ev.new_src, ev.new_sport) == (A, 4501)


def test_rekey_through_the_reconciler_keeps_traffic_flowing(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    old = {0x701: secrets.token_bytes(20), 0x702: secrets.token_bytes(20)}
    new = {0x801: secrets.token_bytes(20), 0x802: secrets.token_bytes(20)}
    sa_a, pol_a = transport(a.addr4, b.addr4, 0x701, 0x702, old)
    sa_b, pol_b = transport(b.addr4, a.addr4, 0x702, 0x701, old)
    run(install(a, sa_a, pol_a))
    run(install(b, sa_b, pol_b))
    a.run([*PING, b.addr4])

    async def rekey(ns: Netns, here: str, there: str, o: int, i: int) -> None:
        # the new SAs share reqids with the old ones: the policies do not change
        states, policies = transport(here, there, o, i, new)
        async with XfrmClient(ns.name) as x:
            ops = plan(
                policies,
                states,
                await x.dump_policies(),
                await x.dump_states(),
                local=[address(here)],
            )
            assert ops[0] == AddState(states[1])  # inbound first
            assert isinstance(ops[-1], DeleteState) and ops[-1].sa.dst == address(here)
            assert len(ops) == 4  # 2 adds, 2 deletes; policies untouched
            await x.apply(ops)
            assert {s.spi for s in await x.dump_states()} == {o, i}

    run(rekey(b, b.addr4, a.addr4, 0x802, 0x801))
    run(rekey(a, a.addr4, b.addr4, 0x801, 0x802))
    a.run([*PING, b.addr4])

    async def packets(ns: Netns, spi: int, dst: str) -> int:
        async with XfrmClient(ns.name) as x:
            s = await x.get_state(State(address(a.addr4 or ""), address(dst), spi))
            return s.current.packets if s.current else 0

    assert run(packets(a, 0x801, b.addr4)) >= 2


def test_unknown_spi_counted_by_receiver(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    keys = {0x901: secrets.token_bytes(20), 0x902: secrets.token_bytes(20)}
    sa_a, pol_a = transport(a.addr4, b.addr4, 0x901, 0x902, keys)
    run(install(a, sa_a, pol_a))  # b knows nothing about 0x901
    before = xfrm_stat(b.name)["XfrmInNoStates"]
    a.run(["ping", "-c", "2", "-i", "0.2", "-W", "1", b.addr4], check=False)
    assert xfrm_stat(b.name)["XfrmInNoStates"] >= before + 2
    assert xfrm_stat(a.name)["XfrmInNoStates"] == 0


def test_probe_reports_full_support_in_the_lab(lab: None) -> None:
    caps = probe()
    assert not caps.missing(), caps.summary()
