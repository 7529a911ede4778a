"""IKE fragmentation (RFC 7383) between two engines on the simulated network:
negotiation, our messages split to fit ``fragment_size``, the peer's fragments checked
one by one before they are kept, and the bounds of reassembly.

IKE_AUTH is made large with many traffic selectors (a certificate chain is the real
case); a tampering or overeager peer is played by crafting fragments with the
sender's real keys (``_craft``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import pytest

from ipsecd.ike import ChildSaEstablished, IkeSa, IkeState, codec
from ipsecd.ike.codec import Message, NotifyPayload, Payload, SkfPayload, parse_message
from ipsecd.ike.config import IkeConfig, TrafficSelector
from ipsecd.ike.constants import ExchangeType, HeaderFlag, NotifyType
from ipsecd.ike.errors import IkeLocalError
from ipsecd.ike.fragments import MAX_FRAGMENTS, MAX_REASSEMBLED, MAX_REASSEMBLED_HALF_OPEN
from ipsecd.ike.negotiate import NON_ESP_MARKER
from ipsecd.ike.tasks import informational

from .harness import Harness, Network, Packet, events_of, make_configs

#: A private-use status notification (RFC 7296 3.10.1: 40960..65535), ignored by peers.
PRIVATE_NOTIFY = 40961
IPV4_UDP = 28
IPV6_UDP = 48


def many_ts(prefix: str, n: int) -> tuple[TrafficSelector, ...]:
    return tuple(
        TrafficSelector.from_cidr(f"{prefix}.{i // 250}.{i % 250 + 1}/32") for i in range(n)
    )


def big_configs(
    *,
    n_ts: int = 60,
    fragment_size: int = 576,
    i_frag: bool = True,
    r_frag: bool = True,
    **kw: object,
) -> tuple[IkeConfig, IkeConfig]:
    """Configurations whose IKE_AUTH messages are over 2 KB each way."""
    ci, cr = make_configs(
        i_local_ts=many_ts("10.1", n_ts),
        i_remote_ts=many_ts("10.2", n_ts),
        **kw,  # type: ignore[arg-type]
    )
    ci = dataclasses.replace(ci, fragmentation=i_frag, fragment_size=fragment_size)
    cr = dataclasses.replace(cr, fragmentation=r_frag, fragment_size=fragment_size)
    return ci, cr


def _body(data: bytes) -> bytes:
    return data[4:] if data[:4] == NON_ESP_MARKER else data


def msg_of(pkt: Packet | bytes) -> Message:
    return parse_message(_body(pkt.data if isinstance(pkt, Packet) else pkt))


def skf_of(pkt: Packet) -> SkfPayload | None:
    return msg_of(pkt).skf


def fragments_of(h: Harness, exchange: int, *, sender: str) -> list[Packet]:
    return [
        p
        for p in h.wire
        if p.sender == sender and msg_of(p).exchange_type == exchange and skf_of(p) is not None
    ]


def established(h: Harness) -> bool:
    r = h.responder
    return h.initiator.established and r is not None and r.established


def _craft(
    sender: IkeSa,
    exchange: int,
    message_id: int,
    inner: Sequence[Payload],
    max_message: int,
    *,
    response: bool = False,
) -> list[bytes]:
    """``inner`` as SKF fragments sealed with ``sender``'s real keys (framed)."""
    assert sender.keys is not None
    flags = HeaderFlag.INITIATOR if sender.initiator else HeaderFlag.NONE
    if response:
        flags |= HeaderFlag.RESPONSE
    header = Message(sender.spi_i, sender.spi_r, exchange, int(flags), message_id)
    marker = NON_ESP_MARKER if sender.local_addr[1] == 4500 else b""
    return [marker + d for d in sender.keys.seal_fragments(header, inner, max_message)]


def _up(**kw: object) -> Harness:
    ci, cr = big_configs(**kw)  # type: ignore[arg-type]
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert established(h)
    return h


def _next_request(h: Harness) -> int:
    """A message ID of the initiator's, kept from its own requests (crafted ones use it)."""
    return h.initiator._window.allocate()


def _notify(size: int) -> NotifyPayload:
    return NotifyPayload(PRIVATE_NOTIFY, bytes(size))


# --------------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("i_frag", "r_frag"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_negotiation(i_frag: bool, r_frag: bool) -> None:
    """N(IKEV2_FRAGMENTATION_SUPPORTED) from each side that allows it, the responder's only
    when asked (RFC 7383 2.3); fragments only when both did.  Without them the large
    IKE_AUTH goes whole (the IP layer fragments it)."""
    ci, cr = big_configs(i_frag=i_frag, r_frag=r_frag)
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert established(h)
    r = h.responder
    assert r is not None
    init = [msg_of(p) for p in h.wire if msg_of(p).exchange_type == ExchangeType.IKE_SA_INIT]
    req, resp = init[0], init[1]
    assert bool(req.notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)) == i_frag
    assert bool(resp.notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)) == (i_frag and r_frag)
    for n in req.notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED):
        assert n.data == b""  # RFC 7383 2.3: empty
    both = i_frag and r_frag
    assert h.initiator.fragmentation == r.fragmentation == both
    auth = [p for p in h.wire if msg_of(p).exchange_type == ExchangeType.IKE_AUTH]
    assert all((skf_of(p) is not None) == both for p in auth)
    if not both:
        assert len(auth) == 2 and all(len(p.data) + IPV4_UDP > 576 for p in auth)
    assert h.initiator.peer_errors == r.peer_errors == 0


def test_fragment_size_is_validated() -> None:
    ci, _ = make_configs()
    for bad in (575, 65536, 0):
        with pytest.raises(IkeLocalError, match="fragment_size"):
            dataclasses.replace(ci, fragment_size=bad)
    assert ci.fragmentation and ci.fragment_size == 1280


# --------------------------------------------------------------------------- sending


@pytest.mark.parametrize(
    ("ike", "nat", "v6"),
    [
        ("aes256gcm16-prfsha384-ecp384", False, False),
        ("aes256-sha256-modp2048", False, False),
        ("aes256gcm16-prfsha384-ecp384", True, False),
        ("chacha20poly1305-prfsha256-curve25519", False, True),
    ],
    ids=["gcm", "cbc-hmac", "gcm-nat-4500", "chacha-ipv6"],
)
def test_large_ike_auth_is_fragmented_both_ways(ike: str, nat: bool, v6: bool) -> None:
    size = 576 if not v6 else 1280
    addrs = {"i_addr": ("2001:db8::1", 500), "r_addr": ("2001:db8::2", 500)} if v6 else {}
    n_ts = 60 if not v6 else 150
    ci, cr = big_configs(ike=(ike,), fragment_size=size, n_ts=n_ts, **addrs)
    h = Harness(ci, [cr], nat=nat, **addrs)  # type: ignore[arg-type]
    h.start()
    h.run_until_established()
    assert established(h)
    overhead = IPV6_UDP if v6 else IPV4_UDP
    # every datagram fits fragment_size, IP and UDP headers (and the marker) counted
    assert all(len(p.data) + overhead <= size for p in h.wire)
    for sender in ("i", "r"):
        frags = fragments_of(h, ExchangeType.IKE_AUTH, sender=sender)
        assert len(frags) >= 3
        skfs = [skf_of(p) for p in frags]
        total = skfs[0].total_fragments  # type: ignore[union-attr]
        # RFC 7383 2.5: numbered from 1; only fragment 1 names the first inner payload
        assert [s.fragment_number for s in skfs] == list(range(1, total + 1))  # type: ignore[union-attr]
        assert all(s.total_fragments == total for s in skfs)  # type: ignore[union-attr]
        assert [s.first_payload != 0 for s in skfs] == [True] + [False] * (total - 1)  # type: ignore[union-attr]
        if nat:
            assert all(p.data[:4] == NON_ESP_MARKER for p in frags)
        # a fragment uses its room: at most one block and the marker short of the size
        assert max(len(p.data) for p in frags) + overhead > size - 20
    a = events_of(h.events_i, ChildSaEstablished)[0]
    b = events_of(h.events_r, ChildSaEstablished)[0]
    assert len(a.local_ts) == n_ts and a.outbound_encryption_key == b.inbound_encryption_key
    r = h.responder
    assert r is not None
    assert h.initiator.peer_errors == r.peer_errors == 0
    assert h.initiator.internal_errors == r.internal_errors == 0
    assert h.initiator.reassembly.held == r.reassembly.held == 0


def test_small_messages_are_not_fragmented() -> None:
    """Only messages over fragment_size are split, never IKE_SA_INIT (RFC 7383 2.5)."""
    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert established(h) and h.initiator.fragmentation
    assert all(skf_of(p) is None for p in h.wire)


def test_fragments_in_reverse_order() -> None:
    def later_first(p: Packet) -> float:
        skf = skf_of(p)
        return 0.0 if skf is None else (skf.total_fragments - skf.fragment_number) * 0.001

    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(delay=later_first))
    h.start()
    h.run_until_established()
    assert established(h)
    r = h.responder
    assert r is not None and r.peer_errors == h.initiator.peer_errors == 0
    # nothing was retransmitted: reordering alone costs nothing
    assert (
        len(fragments_of(h, ExchangeType.IKE_AUTH, sender="i"))
        == skf_of(fragments_of(h, ExchangeType.IKE_AUTH, sender="i")[0]).total_fragments
    )  # type: ignore[union-attr]


def test_lost_request_fragment_retransmits_all_with_the_same_bytes() -> None:
    seen: list[Packet] = []

    def lose_second_once(p: Packet) -> bool:
        skf = skf_of(p)
        if p.sender == "i" and skf is not None and skf.fragment_number == 2 and not seen:
            seen.append(p)
            return True
        return False

    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(drop=lose_second_once))
    h.start()
    h.run_until_established()
    assert established(h) and seen
    sent = fragments_of(h, ExchangeType.IKE_AUTH, sender="i")
    total = skf_of(sent[0]).total_fragments  # type: ignore[union-attr]
    # RFC 7383 2.6: the retransmission is every fragment again, built once
    assert len(sent) == 2 * total
    assert [p.data for p in sent[:total]] == [p.data for p in sent[total:]]
    # the responder kept the fragments of the first round and answered once
    answers = fragments_of(h, ExchangeType.IKE_AUTH, sender="r")
    assert len(answers) == skf_of(answers[0]).total_fragments  # type: ignore[union-attr]
    assert len(events_of(h.events_r, ChildSaEstablished)) == 1


def test_lost_response_fragment_gets_the_whole_answer_once() -> None:
    """RFC 7383 2.6.1: the retransmitted request (all its fragments) is answered from the
    cache on its fragment 1 only: every fragment of the answer again, once."""
    seen: list[Packet] = []

    def lose_one_answer_fragment(p: Packet) -> bool:
        skf = skf_of(p)
        if p.sender == "r" and skf is not None and skf.fragment_number == 3 and not seen:
            seen.append(p)
            return True
        return False

    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(drop=lose_one_answer_fragment))
    h.start()
    h.run_until_established()
    assert established(h) and seen
    answers = fragments_of(h, ExchangeType.IKE_AUTH, sender="r")
    total = skf_of(answers[0]).total_fragments  # type: ignore[union-attr]
    assert len(answers) == 2 * total
    assert [p.data for p in answers[:total]] == [p.data for p in answers[total:]]
    requests = fragments_of(h, ExchangeType.IKE_AUTH, sender="i")
    assert len(requests) == 2 * skf_of(requests[0]).total_fragments  # type: ignore[union-attr]
    r = h.responder
    assert r is not None and r.peer_errors == 0 and h.initiator.peer_errors == 0
    assert len(events_of(h.events_r, ChildSaEstablished)) == 1


def test_duplicated_fragments_are_ignored() -> None:
    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(duplicate=lambda p: skf_of(p) is not None))
    h.start()
    h.run_until_established()
    h.run()
    r = h.responder
    assert r is not None and established(h)
    assert r.peer_errors == h.initiator.peer_errors == 0
    assert len(events_of(h.events_r, ChildSaEstablished)) == 1
    assert len(events_of(h.events_i, ChildSaEstablished)) == 1


def test_forged_fragments_are_not_kept() -> None:
    """A fragment whose ICV fails is dropped before it is stored (RFC 7383 2.6): forged
    copies of fragment 1, with a larger Total Fragments (which from the genuine peer
    would restart reassembly) or another Fragment Number change nothing."""
    ci, cr = big_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run(until=lambda: h.responder is not None and h.responder.reassembly.held > 0)
    r = h.responder
    assert r is not None
    partial = r.reassembly.partial(response=False)
    assert partial is not None and len(partial.chunks) == 1
    held = r.reassembly.held
    first = fragments_of(h, ExchangeType.IKE_AUTH, sender="i")[0].data
    for bad in (
        _flip(first, -1),  # fragment 1, bad ICV (an ignored duplicate if not checked)
        _flip(_with_number(first, partial.total), -1),
        _with_total(first, partial.total + 1),  # a larger total, not authentic
        _with_number(first, partial.total),  # another fragment number, not authentic
    ):
        r.receive_datagram(bad, h.i_addr, h.now)
    # the forged fragment 1 is a duplicate of one kept: ignored unread; the rest fail
    assert r.peer_errors == 3
    assert r.reassembly.held == held and r.reassembly.partial(response=False) is partial
    h.run_until_established()
    assert established(h)
    assert r.peer_errors == 3 and r.internal_errors == 0


def _flip(data: bytes, index: int) -> bytes:
    raw = bytearray(data)
    raw[index] ^= 1
    return bytes(raw)


def _skf_field(data: bytes, offset: int, value: int) -> bytes:
    """Rewrite a 16-bit field of the SKF header (Fragment Number at 4, Total at 6)."""
    lead = 4 if data[:4] == NON_ESP_MARKER else 0
    pos = lead + 28 + offset
    return data[:pos] + value.to_bytes(2, "big") + data[pos + 2 :]


def _with_total(data: bytes, total: int) -> bytes:
    return _skf_field(data, 6, total)


def _with_number(data: bytes, number: int) -> bytes:
    return _skf_field(data, 4, number)


# --------------------------------------------------------------------------- reassembly rules


def test_total_fragments_changing_mid_message() -> None:
    """RFC 7383 2.6: a larger Total Fragments (the peer split smaller) restarts the
    reassembly; a fragment of the older split with the smaller total is dropped."""
    h = _up()
    r = h.responder
    assert r is not None
    mid = _next_request(h)
    inner = [_notify(3000)]
    coarse = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, inner, 1200)
    fine = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, inner, 560)
    assert len(fine) > len(coarse) >= 3
    sent = len(h.wire)
    for d in coarse[:2]:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.reassembly.partial(response=False).total == len(coarse)  # type: ignore[union-attr]
    r.receive_datagram(fine[0], h.i_addr, h.now)
    partial = r.reassembly.partial(response=False)
    assert partial is not None and partial.total == len(fine) and len(partial.chunks) == 1
    r.receive_datagram(coarse[2], h.i_addr, h.now)  # the older split: dropped
    assert len(r.reassembly.partial(response=False).chunks) == 1  # type: ignore[union-attr]
    for d in fine[1:]:
        r.receive_datagram(d, h.i_addr, h.now)
    h.flush()
    assert r.reassembly.held == 0 and r.peer_errors == 0
    answers = [p for p in h.wire[sent:] if p.sender == "r"]
    assert len(answers) == 1 and msg_of(answers[0]).message_id == mid
    assert msg_of(answers[0]).is_response


def test_too_many_fragments_are_refused_unread() -> None:
    h = _up()
    r = h.responder
    assert r is not None
    mid = _next_request(h)
    many = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, [_notify(8000)], 150)
    assert len(many) > MAX_FRAGMENTS
    for d in many[:5]:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.peer_errors == 5 and r.reassembly.held == 0
    assert r.state == IkeState.ESTABLISHED


def test_oversized_message_is_discarded_and_its_fragments_refused() -> None:
    h = _up()
    r = h.responder
    assert r is not None
    mid = _next_request(h)
    inner = [_notify(36000), _notify(36000)]  # 72 KB of plaintext
    frags = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, inner, 1400)
    assert len(frags) <= MAX_FRAGMENTS
    held = []
    for d in frags:
        r.receive_datagram(d, h.i_addr, h.now)
        held.append(r.reassembly.held)
    assert max(held) <= MAX_REASSEMBLED
    refused = held.index(0)  # the fragment that crossed the bound
    assert 0 < refused < len(frags) - 1 and held[refused - 1] > MAX_REASSEMBLED - 1400
    # that fragment and every later one of the message: dropped, counted, not kept
    assert held[refused:] == [0] * (len(frags) - refused)
    assert r.peer_errors == len(frags) - refused
    assert r.reassembly.partial(response=False) is None
    assert r.state == IkeState.ESTABLISHED and r.internal_errors == 0


def test_half_open_responder_reassembles_less() -> None:
    """Anyone who can do a Diffie-Hellman makes a half-open responder: its IKE_AUTH
    request may reach MAX_REASSEMBLED_HALF_OPEN bytes, not MAX_REASSEMBLED."""
    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(drop=lambda p: skf_of(p) is not None))
    h.start()
    h.advance(0.5)
    r = h.responder
    assert r is not None and r.state == IkeState.EXPECT_AUTH_REQUEST
    inner = [_notify(10000), _notify(10000)]  # 20 KB: fine once authenticated
    frags = _craft(h.initiator, ExchangeType.IKE_AUTH, 1, inner, 1400)
    held = []
    for d in frags:
        r.receive_datagram(d, h.i_addr, h.now)
        held.append(r.reassembly.held)
    assert 0 < max(held) <= MAX_REASSEMBLED_HALF_OPEN and held[-1] == 0
    refused = held.index(0)
    assert r.peer_errors == len(frags) - refused
    assert r.state == IkeState.EXPECT_AUTH_REQUEST  # the genuine IKE_AUTH may still come


def test_partial_message_is_freed_after_the_retransmission_horizon() -> None:
    h = _up()
    r = h.responder
    assert r is not None
    mid = _next_request(h)
    frags = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, [_notify(3000)], 560)
    for d in frags[:-1]:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.reassembly.held > 0
    horizon = r.config.retransmit.give_up_after()
    assert r.get_timer() is not None and r.get_timer() <= h.now + horizon  # type: ignore[operator]
    h.advance(horizon - 1)
    assert r.reassembly.held > 0
    h.advance(2)
    assert r.reassembly.held == 0 and r.reassembly.partial(response=False) is None
    assert r.state == IkeState.ESTABLISHED
    # the last fragment alone is a new, incomplete message now
    r.receive_datagram(frags[-1], h.i_addr, h.now)
    partial = r.reassembly.partial(response=False)
    assert partial is not None and len(partial.chunks) == 1


def test_half_open_responder_frees_an_incomplete_ike_auth() -> None:
    """A fragment of IKE_AUTH that never arrives: the half-open SA ends at its timeout
    and takes its buffer with it."""

    def lose_second(p: Packet) -> bool:
        skf = skf_of(p)
        return p.sender == "i" and skf is not None and skf.fragment_number == 2

    ci, cr = big_configs()
    h = Harness(ci, [cr], network=Network(drop=lose_second))
    h.start()
    h.advance(5)
    r = h.responder
    assert r is not None and r.state == IkeState.EXPECT_AUTH_REQUEST
    assert r.reassembly.held > 0
    h.advance(cr.half_open_timeout)
    assert r.state == IkeState.FAILED and r.reassembly.held == 0


def test_peer_without_negotiated_fragmentation_sends_skf_dropped() -> None:
    h = _up(r_frag=False)
    r = h.responder
    assert r is not None and not r.fragmentation
    mid = _next_request(h)
    frags = _craft(h.initiator, ExchangeType.INFORMATIONAL, mid, [_notify(2000)], 560)
    for d in frags:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.peer_errors == len(frags) and r.reassembly.held == 0
    assert r.state == IkeState.ESTABLISHED


def test_fragment_of_an_unexpected_message_is_dropped() -> None:
    h = _up()
    r = h.responder
    assert r is not None
    ahead = _next_request(h) + 1  # not the message ID the responder expects
    for d in _craft(h.initiator, ExchangeType.INFORMATIONAL, ahead, [_notify(2000)], 560)[:2]:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.peer_errors == 2 and r.reassembly.held == 0
    # a response fragment nobody asked for
    for d in _craft(r, ExchangeType.INFORMATIONAL, 7, [_notify(2000)], 560, response=True)[:2]:
        h.initiator.receive_datagram(d, h.r_addr, h.now)
    assert h.initiator.peer_errors == 2 and h.initiator.reassembly.held == 0


# --------------------------------------------------------------------------- later exchanges


def test_create_child_sa_is_fragmented_when_large() -> None:
    h = _up()
    r = h.responder
    assert r is not None
    before = len(h.wire)
    h.initiator.create_child(h.initiator.config.child, h.now)
    h.run(until=lambda: len(events_of(h.events_r, ChildSaEstablished)) == 2
          and len(events_of(h.events_i, ChildSaEstablished)) == 2)  # fmt: skip
    h.run()
    later = h.wire[before:]
    assert all(len(p.data) + IPV4_UDP <= 576 for p in later)
    ccsa = [p for p in later if msg_of(p).exchange_type == ExchangeType.CREATE_CHILD_SA]
    assert {p.sender for p in ccsa if skf_of(p) is not None} == {"i", "r"}
    assert len(h.initiator.children) == len(r.children) == 2
    assert h.initiator.peer_errors == r.peer_errors == 0


class BigLiveness(informational.Liveness):
    """An INFORMATIONAL request carrying a large private notification."""

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        return [_notify(2500)]


def test_informational_is_fragmented_when_large(monkeypatch: pytest.MonkeyPatch) -> None:
    h = _up()
    r = h.responder
    assert r is not None
    plain: Callable[[IkeSa, Sequence[Payload], float], list[Payload]] = informational.respond

    def big_answer(sa: IkeSa, inner: Sequence[Payload], now: float) -> list[Payload]:
        return [*plain(sa, inner, now), _notify(2500)]

    monkeypatch.setattr(informational, "respond", big_answer)
    before = len(h.wire)
    h.initiator.queue(BigLiveness())
    h.initiator.handle_timer(h.now)
    h.run()
    later = h.wire[before:]
    info = [p for p in later if msg_of(p).exchange_type == ExchangeType.INFORMATIONAL]
    assert {p.sender for p in info if skf_of(p) is not None} == {"i", "r"}
    assert all(len(p.data) + IPV4_UDP <= 576 for p in later)
    assert h.initiator.outstanding_task is None and established(h)
    assert h.initiator.peer_errors == r.peer_errors == 0


def test_rekeyed_ike_sa_keeps_fragmentation() -> None:
    h = _up()
    h.initiator.rekey_ike(h.now)
    h.run()
    new = h.initiator.take_successors()
    assert new and new[0].fragmentation


def test_ended_sa_answers_a_retransmitted_fragmented_request_from_its_cache() -> None:
    """The answer to a fragmented Delete is lost: the deleted SA still answers fragment 1
    of the retransmission (RFC 7296 2.1, RFC 7383 2.6.1) and ignores the others."""
    h = _up()
    r = h.responder
    assert r is not None
    mid = _next_request(h)
    frags = _craft(
        h.initiator,
        ExchangeType.INFORMATIONAL,
        mid,
        [codec.DeletePayload(1, 0, ()), _notify(2000)],
        560,
    )
    for d in frags:
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.state == IkeState.DELETED
    first = r.datagrams_to_send(h.now)
    assert len(first) == 1
    for d in reversed(frags):
        r.receive_datagram(d, h.i_addr, h.now)
    assert r.datagrams_to_send(h.now) == first
