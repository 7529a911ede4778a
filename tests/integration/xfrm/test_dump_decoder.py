"""Real kernel dumps: the dump decoder gives what the pyroute2 path gives, message by
message, for many generated policies and SAs (larval SAs here: no ESP on the host)."""

from __future__ import annotations

from dataclasses import replace

from ipsecd.xfrm import Mark, Proto, Request, XfrmClient, address, codec, decoder
from ipsecd.xfrm.consts import MsgType
from ipsecd.xfrm.errors import Op
from ipsecd.xfrm.model import Policy, State
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.netns import Netns
from tests.unit.xfrm.test_decoder import gen_policies, same

from .conftest import run


async def _reference(x: XfrmClient, kind: MsgType) -> list[tuple[int, object]]:
    """The same dump, decoded by pyroute2 (the client's request/answer path)."""
    op = Op.DUMP_POLICIES if kind == MsgType.GETPOLICY else Op.DUMP_STATES
    req = Request(codec.encode_dump(kind, x.next_seq()), op, "reference")
    return await x._exchange(req, dump=True)


def test_generated_policies_round_trip_through_the_kernel(ns: Netns) -> None:
    wanted = list(gen_policies(400, seed=21))

    async def go() -> tuple[int, list[Policy], list[Policy]]:
        decoder.forget(ns.name)
        async with XfrmClient(ns.name) as x:
            results = await x.batch([x.policy_request(p, update=True) for p in wanted])
            installed = [p for p, r in zip(wanted, results, strict=True) if r is None]
            cold = await x.dump_policies()
            steady = await x.dump_policies()
            ref = [
                codec.decode_policy(m)
                for k, m in await _reference(x, MsgType.GETPOLICY)
                if k == MsgType.NEWPOLICY
            ]
        for a, b, r in zip(cold, steady, ref, strict=True):
            same(a, r)
            assert b is a  # nothing changed between the dumps
        # The kernel keeps the mark value masked (value & mask); UPDPOLICY replaces a
        # policy of the same identity, so the last one stays.
        stored = [
            p if p.mark is None else replace(p, mark=Mark(p.mark.value & p.mark.mask, p.mark.mask))
            for p in installed
        ]
        assert set(cold) == set({p.key: p for p in stored}.values())
        return len(installed), cold, ref

    n, cold, ref = run(go())
    assert n > 300 and len(cold) == len(ref) > 300  # the kernel took most of them
    assert any(t.mode.name == "TUNNEL" for p in cold for t in p.templates)
    assert any(p.selector.src.version == 6 for p in cold)


def test_larval_states_round_trip_through_the_kernel(ns: Netns) -> None:
    a4, b4 = address("192.0.2.2"), address("192.0.2.1")
    a6, b6 = address("fd00::2"), address("fd00::1")

    async def go() -> list[State]:
        decoder.forget(ns.name)
        async with XfrmClient(ns.name) as x:
            reqs = []
            for i in range(300):
                src, dst = (a6, b6) if i % 3 == 0 else (a4, b4)
                data = codec.encode_allocspi(
                    src,
                    dst,
                    Proto.AH if i % 5 == 0 else Proto.ESP,
                    OWN.reqid(i),
                    x.next_seq(),
                    spi_min=0x2000 + i,
                    spi_max=0x2000 + i,
                )
                reqs.append(Request(data, Op.ALLOC_SPI, f"spi {0x2000 + i:#x}"))
            assert [r for r in await x.batch(reqs) if r is not None] == []
            cold = await x.dump_states()
            steady = await x.dump_states()
            ref = [
                codec.decode_state(m)
                for k, m in await _reference(x, MsgType.GETSA)
                if k == MsgType.NEWSA
            ]
        for c, s, r in zip(cold, steady, ref, strict=True):
            same(c, r)
            assert s is c
        return cold

    states = run(go())
    assert len(states) == 300
    assert {s.spi for s in states} == {0x2000 + i for i in range(300)}
    assert {s.family for s in states} == {2, 10}
