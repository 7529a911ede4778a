"""The IKE lifecycle on two endpoints: CHILD and IKE SA rekeys initiated by each side,
collisions (RFC 7296 2.8.1, 2.8.2), PFS, many lifetimes in a row, and the
make-before-break property: whatever SA a side sends with, the other can receive
(tests/unit/ike/pair.py KernelModel)."""

from __future__ import annotations

import dataclasses

import pytest

from ipsecd.ike.config import ChildConfig, IkeConfig, parse_child_proposal
from ipsecd.ike.constants import DhGroup
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaOutboundActivated,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ipsecd.ike.sa import IkeSa

from .harness import make_configs
from .pair import Pair


def configs(
    *,
    child_life: float = 3600.0,
    ike_life: float = 14400.0,
    esp: str = "aes256gcm16",
    jitter: float = 0.1,
    **kw: object,
) -> tuple[IkeConfig, IkeConfig]:
    ci, cr = make_configs(esp=(esp,), **kw)  # type: ignore[arg-type]

    def shorten(c: IkeConfig) -> IkeConfig:
        child = dataclasses.replace(c.child, lifetime=child_life, jitter=jitter)
        return dataclasses.replace(c, child=child, ike_lifetime=ike_life, jitter=jitter)

    return shorten(ci), shorten(cr)


def up(ci: IkeConfig, cr: IkeConfig, **kw: object) -> tuple[Pair, IkeSa]:
    p = Pair([ci], [cr], **kw)  # type: ignore[arg-type]
    sa = p.initiate("a", ci)
    p.settle()
    p.check_pair()
    p.watch_loss = True
    return p, sa


def only(p: Pair, who: str) -> IkeSa:
    (sa,) = p.sas(who)
    return sa


# ------------------------------------------------------------------ CHILD SA rekey


@pytest.mark.parametrize("who", ["a", "b"])
def test_child_rekey_by_either_side_is_make_before_break(who: str) -> None:
    ci, cr = configs()
    p, _ = up(ci, cr)
    old = only(p, who).children[0]
    assert only(p, who).rekey_child(old.inbound_spi, p.now)
    p.settle()
    p.check_pair()
    other = "b" if who == "a" else "a"
    new = only(p, who).children[0]
    assert new.inbound_spi != old.inbound_spi
    # the rekey initiator sends with the new SA at once, the responder once the old one
    # is deleted (RFC 7296 2.8); both announce it
    (est,) = [e for e in p.of(who, ChildSaEstablished) if e.rekey_of is not None]
    assert est.outbound_active and est.rekey_of == old.inbound_spi
    (peer_est,) = [e for e in p.of(other, ChildSaEstablished) if e.rekey_of is not None]
    assert not peer_est.outbound_active
    assert len(p.of(other, ChildSaOutboundActivated)) == 1
    for side in (who, other):
        assert len(p.of(side, ChildSaRekeyed)) == 1
        (gone,) = p.of(side, ChildSaDeleted)
        assert gone.replaced and gone.inbound_spi in (old.inbound_spi, old.outbound_spi)
    # the agent's kernel: one outbound SA per side, the old inbound gone after the grace
    p.advance(10)
    for side in ("a", "b"):
        assert len(p.kernel[side].inbound) == 1
        assert sum(len(v) for v in p.kernel[side].outbound.values()) == 1


def test_child_rekey_with_pfs() -> None:
    """CREATE_CHILD_SA carries a KE when the CHILD proposal names a DH group (RFC 7296
    1.3.1); IKE_AUTH leaves it out (RFC 7296 1.2), so the first SA has no PFS."""
    ci, cr = configs(esp="aes256gcm16-ecp256")
    p, _ = up(ci, cr)
    first = p.of("a", ChildSaEstablished)[0]
    assert first.pfs_group is None
    sa = only(p, "a")
    sa.rekey_child(sa.children[0].inbound_spi, p.now)
    p.settle()
    p.check_pair()
    rekeyed = [e for e in p.of("a", ChildSaEstablished) if e.rekey_of is not None]
    assert rekeyed[0].pfs_group == DhGroup.ECP_256
    assert next(e for e in p.of("b", ChildSaEstablished) if e.rekey_of).pfs_group == 19


def test_ike_auth_never_carries_a_dh_group() -> None:
    """Regression: a CHILD proposal with a DH group went into IKE_AUTH, the responder
    dropped the group, and the initiator refused the answer without a Delete."""
    from ipsecd.ike.codec import SaPayload, decrypt_sk, parse_message
    from ipsecd.ike.constants import ExchangeType, TransformType

    ci, cr = configs(esp="aes256gcm16-ecp256")
    p, _ = up(ci, cr)
    sa = only(p, "a")
    auth = next(w for w in p.wire if parse_message(w.data).exchange_type == ExchangeType.IKE_AUTH)
    assert sa.keys is not None
    inner = decrypt_sk(auth.data, parse_message(auth.data), sa.keys.out_cipher)
    (sa_p,) = [x for x in inner if isinstance(x, SaPayload)]
    kinds = {t.transform_type for prop in sa_p.proposals for t in prop.transforms}
    assert TransformType.DH not in kinds
    assert len(p.of("a", ChildSaEstablished)) == len(p.of("b", ChildSaEstablished)) == 1


def test_simultaneous_child_rekey_leaves_one_sa() -> None:
    """RFC 7296 2.8.1: both rekey the same CHILD SA at once; the SA of the exchange
    with the lowest nonce is deleted by its initiator, the other replaces the old."""
    ci, cr = configs()
    p, _ = up(ci, cr)
    a, b = only(p, "a"), only(p, "b")
    assert a.rekey_child(a.children[0].inbound_spi, p.now)
    assert b.rekey_child(b.children[0].inbound_spi, p.now)
    p.settle()
    p.check_pair()
    p.advance(10)
    for side in ("a", "b"):
        assert len(only(p, side).children) == 1
        assert len(p.kernel[side].inbound) == 1
        assert not p.of(side, IkeSaFailed)


@pytest.mark.parametrize("seed", range(8))
def test_rekey_collisions_with_jittered_timers_never_lose_traffic(seed: int) -> None:
    """Both sides rekey on their own timers with a short lifetime: over many
    lifetimes, with collisions when the timers meet, there is always one SA pair and
    every SA a side sends with can be received."""
    ci, cr = configs(child_life=20.0, ike_life=3600.0, jitter=0.5)
    p, _ = up(ci, cr, seed=seed, latency=0.05)
    p.advance(300)
    p.check_pair()
    for side in ("a", "b"):
        assert not p.of(side, IkeSaFailed)
        assert len(p.of(side, ChildSaRekeyed)) >= 300 / 20
        assert only(p, side).internal_errors == 0


# ------------------------------------------------------------------ IKE SA rekey


@pytest.mark.parametrize("who", ["a", "b"])
def test_ike_rekey_by_either_side_moves_the_child_sas(who: str) -> None:
    ci, cr = configs()
    p, _ = up(ci, cr)
    before = only(p, who)
    child = before.children[0].inbound_spi
    assert before.rekey_ike(p.now)
    p.settle()
    p.check_pair()
    after = only(p, who)
    assert after is not before and after.spi_i != before.spi_i
    assert after.children[0].inbound_spi == child  # nothing changes in the kernel
    for side in ("a", "b"):
        assert len(p.of(side, IkeSaRekeyed)) == 1
        (deleted,) = p.of(side, IkeSaDeleted)
        assert deleted.rekeyed and deleted.spi_i == before.spi_i
        assert not p.of(side, ChildSaDeleted)
    # the new IKE SA works: a CHILD rekey and a liveness check over it
    after.rekey_child(child, p.now)
    after.check_liveness(p.now)
    p.settle()
    p.check_pair()
    assert len(p.of(who, ChildSaRekeyed)) == 1


def test_simultaneous_ike_rekey_leaves_one_ike_sa() -> None:
    ci, cr = configs()
    p, _ = up(ci, cr)
    assert only(p, "a").rekey_ike(p.now)
    assert only(p, "b").rekey_ike(p.now)
    p.settle(10)
    p.check_pair()
    assert len(only(p, "a").children) == 1
    for side in ("a", "b"):
        assert not p.of(side, IkeSaFailed)
        assert not p.of(side, ChildSaDeleted)


def test_child_rekey_during_ike_rekey_is_retried() -> None:
    """RFC 7296 2.25: a CREATE_CHILD_SA that meets an IKE SA rekey is answered
    TEMPORARY_FAILURE and tried again later."""
    ci, cr = configs()
    p, _ = up(ci, cr)
    a, b = only(p, "a"), only(p, "b")
    assert a.rekey_ike(p.now)
    assert b.rekey_child(b.children[0].inbound_spi, p.now)
    p.settle(30)
    p.check_pair()
    assert len(p.of("b", ChildSaRekeyed)) == 1
    assert len(p.of("a", IkeSaRekeyed)) == 1


@pytest.mark.parametrize("seed", range(4))
def test_months_in_minutes(seed: int) -> None:
    """Short lifetimes for both SAs, rekeys by both sides on their own jittered
    timers: hundreds of CHILD rekeys and dozens of IKE rekeys, one SA pair at the end,
    no failure, no lost traffic."""
    ci, cr = configs(child_life=30.0, ike_life=120.0, jitter=0.3)
    p, _ = up(ci, cr, seed=seed, latency=0.02)
    p.advance(1800)
    p.check_pair()
    for side in ("a", "b"):
        assert not p.of(side, IkeSaFailed)
        assert len(p.of(side, IkeSaRekeyed)) >= 1800 / 120
        assert len(p.of(side, ChildSaRekeyed)) >= 1800 / 30
        assert all(sa.internal_errors == 0 for sa in p.ep[side].sas)


def test_lost_messages_during_rekeys() -> None:
    """Every 7th datagram is lost: retransmissions carry every rekey through."""
    count = [0]

    def drop(w: object) -> bool:
        count[0] += 1
        return count[0] % 7 == 0

    ci, cr = configs(child_life=30.0, ike_life=100.0, jitter=0.2)
    p = Pair([ci], [cr], drop=drop)
    p.initiate("a", ci)
    p.settle(20)
    p.advance(600)
    p.check_pair()
    assert not p.of("a", IkeSaFailed) and not p.of("b", IkeSaFailed)


def test_extra_children_are_created_after_ike_auth() -> None:
    """An ESP+AH connection: the AH CHILD SA follows with CREATE_CHILD_SA (RFC 7296
    has no bundles); only the initiator creates it."""
    from ipsecd.ike.constants import ProtocolId

    ci, cr = configs()

    def with_ah(c: IkeConfig) -> IkeConfig:
        ah = ChildConfig(
            c.child.local_ts,
            c.child.remote_ts,
            mode=c.child.mode,
            protocol=ProtocolId.AH,
            proposals=(parse_child_proposal("sha256", ProtocolId.AH),),
            name="ah",
        )
        return dataclasses.replace(c, extra_children=(ah,))

    p = Pair([with_ah(ci)], [with_ah(cr)])
    p.initiate("a", with_ah(ci))
    p.settle()
    p.check_pair()
    protocols = sorted(c.protocol for c in only(p, "a").children)
    assert protocols == sorted([ProtocolId.ESP, ProtocolId.AH])
    assert len(p.of("b", ChildSaEstablished)) == 2


def test_established_event_comes_once_per_ike_sa() -> None:
    ci, cr = configs()
    p, _ = up(ci, cr)
    only(p, "a").rekey_ike(p.now)
    p.settle()
    assert len(p.of("a", IkeSaEstablished)) == len(p.of("b", IkeSaEstablished)) == 1
