"""Real ESP/AH through ipsecd.xfrm in the kernel lab: SAs and policies installed by the
library, ping crosses, the egress capture shows ESP (or AH) and no clear text.

Namespaces use the ``ipx-`` prefix; captures come from tests/kernel/conftest.py.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from ipsecd.xfrm import (
    Action,
    Auth,
    DefaultAction,
    DefaultPolicy,
    Dir,
    Mode,
    Policy,
    Proto,
    Selector,
    State,
    Template,
    XfrmClient,
    address,
    aes_cbc,
    aes_gcm,
    chacha20_poly1305,
    hmac_sha2,
)
from ipsecd.xfrm.netns import run_in
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.capture import EgressCapture, PacketKind, kinds
from tests.support.netns import Netns, netns_pair

T = TypeVar("T")
PING = ["ping", "-c", "2", "-i", "0.2", "-W", "5"]


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def pair(lab: None) -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("ipx-") as p:
        yield p


@dataclass(frozen=True)
class Case:
    name: str
    family: int
    mode: Mode
    proto: Proto
    algos: Callable[[], dict[str, Any]]


def _gcm() -> dict[str, Any]:
    return {"aead": aes_gcm(secrets.token_bytes(20))}


def _chacha() -> dict[str, Any]:
    return {"aead": chacha20_poly1305(secrets.token_bytes(36))}


def _cbc_hmac() -> dict[str, Any]:
    return {
        "crypt": aes_cbc(secrets.token_bytes(16)),
        "auth": hmac_sha2(256, secrets.token_bytes(32)),
    }


def _ah() -> dict[str, Any]:
    return {"auth": hmac_sha2(512, secrets.token_bytes(64))}


CASES = [
    Case("v4-transport-aes-gcm", 4, Mode.TRANSPORT, Proto.ESP, _gcm),
    Case("v6-tunnel-cbc-hmac-sha256", 6, Mode.TUNNEL, Proto.ESP, _cbc_hmac),
    Case("v4-tunnel-chacha20-poly1305", 4, Mode.TUNNEL, Proto.ESP, _chacha),
    Case("v6-transport-ah-hmac-sha512", 6, Mode.TRANSPORT, Proto.AH, _ah),
]


def _addrs(a: Netns, b: Netns, family: int) -> tuple[str, str]:
    pa, pb = (a.addr4, b.addr4) if family == 4 else (a.addr6, b.addr6)
    assert pa and pb
    return pa, pb


def sas_and_policies(
    here: str, there: str, case: Case, spi_out: int, spi_in: int, keys: dict[int, dict[str, Any]]
) -> tuple[list[State], list[Policy]]:
    """One side's SAs and policies; ``keys`` holds the algorithms per SPI (shared)."""
    h, t = address(here), address(there)
    tunnel = case.mode == Mode.TUNNEL
    states = [
        State(h, t, spi_out, case.proto, case.mode, OWN.reqid(1), **keys[spi_out]),
        State(t, h, spi_in, case.proto, case.mode, OWN.reqid(2), **keys[spi_in]),
    ]
    policies = [
        Policy(
            Selector.of(h, t),
            Dir.OUT,
            Action.ALLOW,
            OWN.priority(0),
            (
                Template(
                    case.proto,
                    case.mode,
                    h if tunnel else None,
                    t if tunnel else None,
                    reqid=OWN.reqid(1),
                ),
            ),
        ),
        Policy(
            Selector.of(t, h),
            Dir.IN,
            Action.ALLOW,
            OWN.priority(0),
            (
                Template(
                    case.proto,
                    case.mode,
                    t if tunnel else None,
                    h if tunnel else None,
                    reqid=OWN.reqid(2),
                ),
            ),
        ),
    ]
    return states, policies


async def install(ns: Netns, states: list[State], policies: list[Policy]) -> None:
    async with XfrmClient(ns.name) as x:
        for s in sorted(states, key=lambda s: s.spi):
            await x.add_state(s)
        await x.add_policies(policies)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ping_is_protected_on_the_wire(
    pair: tuple[Netns, Netns], egress_capture: Callable[..., EgressCapture], case: Case
) -> None:
    a, b = pair
    pa, pb = _addrs(a, b, case.family)
    spi_ab, spi_ba = 0x0C000001, 0x0C000002
    keys = {spi_ab: case.algos(), spi_ba: case.algos()}
    sa_a, pol_a = sas_and_policies(pa, pb, case, spi_ab, spi_ba, keys)
    sa_b, pol_b = sas_and_policies(pb, pa, case, spi_ba, spi_ab, keys)
    run(install(a, sa_a, pol_a))
    run(install(b, sa_b, pol_b))

    cap_a, cap_b = egress_capture(a), egress_capture(b)
    a.run([*PING, pb])
    sent_a, sent_b = cap_a.stop(), cap_b.stop()

    want = PacketKind.AH if case.proto == Proto.AH else PacketKind.ESP
    prot_a = [p for p in sent_a if p.kind is want and p.src == pa]
    prot_b = [p for p in sent_b if p.kind is want and p.src == pb]
    assert len(prot_a) >= 2 and {p.spi for p in prot_a} == {spi_ab}, kinds(sent_a)
    assert len(prot_b) >= 2 and {p.spi for p in prot_b} == {spi_ba}, kinds(sent_b)
    # no packet on either wire is a bare ICMP echo (under AH it is classified as AH)
    assert not [p for p in sent_a + sent_b if p.is_echo], kinds(sent_a + sent_b)

    async def counters() -> State:
        async with XfrmClient(a.name) as x:
            return await x.get_state(sa_a[0])

    out_sa = run(counters())
    assert out_sa.current is not None and out_sa.current.packets >= 2
    assert out_sa == sa_a[0]  # what the kernel holds is exactly what we installed


def test_default_block_drops_what_no_policy_allows(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    case = Case("icmp-only", 4, Mode.TRANSPORT, Proto.ESP, _gcm)
    keys = {0x100: _gcm(), 0x200: _gcm()}
    # Only ICMP between a and b is allowed (and protected); everything else is default.
    sa_a, pol_a = sas_and_policies(a.addr4, b.addr4, case, 0x100, 0x200, keys)
    sa_b, pol_b = sas_and_policies(b.addr4, a.addr4, case, 0x200, 0x100, keys)

    def icmp_only(ps: list[Policy]) -> list[Policy]:
        return [
            Policy(
                Selector(p.selector.src, p.selector.dst, socket.IPPROTO_ICMP),
                p.dir,
                p.action,
                p.priority,
                p.templates,
            )
            for p in ps
        ]

    run(install(a, sa_a, icmp_only(pol_a)))
    run(install(b, sa_b, icmp_only(pol_b)))

    async def block(ns: Netns) -> None:
        async with XfrmClient(ns.name) as x:
            await x.set_default_policy(
                DefaultPolicy(DefaultAction.BLOCK, DefaultAction.BLOCK, DefaultAction.BLOCK)
            )

    run(block(a))
    # allowed by a policy: crosses, over ESP.  (-I: without a source address ping
    # probes the route with a UDP connect(), which the default policy blocks.)
    a.run([*PING, "-I", a.addr4, b.addr4])

    def udp() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", (b.addr4, 9))
            except OSError as exc:
                return exc.errno or -1
            return 0

    assert run_in(a.name, udp) == errno.EPERM  # no policy allows UDP: dropped
    assert run_in(b.name, udp) == 0  # b has no default block
    # ...and IPv6, which no policy mentions at all, is dropped too
    assert a.run(["ping", "-c", "1", "-W", "2", b.addr6 or ""], check=False).returncode != 0


def test_ah_auth_object_round_trips(pair: tuple[Netns, Netns]) -> None:
    """AH with an explicit Auth value and 96-bit truncation (hmac(sha1)-style length)."""
    a, b = pair
    assert a.addr4 and b.addr4
    s = State(
        address(a.addr4),
        address(b.addr4),
        0x77,
        Proto.AH,
        reqid=OWN.reqid(5),
        auth=Auth("hmac(sha256)", secrets.token_bytes(32), 96),
    )

    async def go() -> State:
        async with XfrmClient(a.name) as x:
            await x.add_state(s)
            return await x.get_state(s.id)

    assert run(go()) == s
