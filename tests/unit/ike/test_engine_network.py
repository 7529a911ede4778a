"""Message IDs, retransmission, the response cache and NAT traversal, on the harness's
simulated network (lost, duplicated, reordered datagrams; a NAT in front of the
initiator)."""

from __future__ import annotations

import itertools

import pytest

from ipsecd.ike import ChildSaEstablished, IkeSaEstablished, IkeSaFailed, IkeState, RetransmitConfig
from ipsecd.ike.codec import parse_message
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.negotiate import NON_ESP_MARKER, nat_hash

from .harness import NAT_PUBLIC_IP, Harness, Network, Packet, events_of, make_configs


def _strip(data: bytes) -> bytes:
    return data[4:] if data[:4] == NON_ESP_MARKER else data


def exchanges(h: Harness) -> list[tuple[str, int, bool]]:
    out = []
    for p in h.wire:
        m = parse_message(_strip(p.data))
        out.append((ExchangeType(m.exchange_type).name, m.message_id, m.is_response))
    return out


@pytest.mark.parametrize("lost", [1, 2, 3, 4])
def test_each_handshake_datagram_can_be_lost_once(lost: int) -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=Network(drop=lambda p: p.seq == lost))
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and h.initiator.established and r.established
    a = events_of(h.events_i, ChildSaEstablished)[0]
    b = events_of(h.events_r, ChildSaEstablished)[0]
    assert a.outbound_encryption_key == b.inbound_encryption_key
    # one retransmitted request (and, when a response was lost, one cached answer)
    assert len(h.wire) == (5 if lost % 2 else 6)
    # the retransmitted request is byte-identical to the lost one (RFC 7296 2.1)
    req_index = lost - 1 if lost % 2 else lost - 2
    assert h.wire[req_index].data in [p.data for p in h.wire[req_index + 1 :]]


def test_retransmitted_request_gets_byte_identical_response() -> None:
    """The IKE_AUTH response is lost: the initiator retransmits, the responder answers
    from its cache with the very same bytes (RFC 7296 2.1) and does not re-run the
    exchange (one CHILD SA, one set of events)."""
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=Network(drop=lambda p: p.seq == 4))
    h.start()
    h.run_until_established()
    responses = [p.data for p in h.wire if p.sender == "r"]
    assert len(responses) == 3 and responses[1] == responses[2]
    assert len(events_of(h.events_r, ChildSaEstablished)) == 1
    assert len(events_of(h.events_i, ChildSaEstablished)) == 1


def test_duplicated_datagrams_are_harmless() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=Network(duplicate=lambda p: True))
    h.start()
    h.run_until_established()
    h.run()
    r = h.responder
    assert r is not None and h.initiator.established and r.established
    assert len(h.responders) == 1
    assert len(events_of(h.events_i, IkeSaEstablished)) == 1
    assert len(events_of(h.events_r, ChildSaEstablished)) == 1
    assert h.initiator.internal_errors == 0 and r.internal_errors == 0
    # every duplicated request was answered from the cache with identical bytes
    answers = {p.data for p in h.wire if p.sender == "r"}
    assert len(answers) == 2


@pytest.mark.parametrize("seed", range(8))
def test_loss_duplication_and_reordering(seed: int) -> None:
    import random

    chance = random.Random(seed)
    net = Network(
        jitter=0.3,
        drop=lambda p: chance.random() < 0.25,
        duplicate=lambda p: chance.random() < 0.25,
        seed=seed,
    )
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=net)
    h.start()
    h.run_until_established(max_steps=5000)
    h.run(max_steps=5000)
    r = h.responder
    if h.initiator.state == IkeState.FAILED:
        # only acceptable when the network lost every retransmission of a message
        assert events_of(h.events_i, IkeSaFailed)[0].notify is None
        return
    assert r is not None and h.initiator.established and r.established
    a = events_of(h.events_i, ChildSaEstablished)
    b = events_of(h.events_r, ChildSaEstablished)
    assert len(a) == len(b) == 1 and a[0].outbound_encryption_key == b[0].inbound_encryption_key


def test_retransmission_exhaustion_fails_with_backoff() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=Network(drop=lambda p: True))
    start = h.now
    h.start()
    h.run()
    assert h.initiator.state == IkeState.FAILED
    (failed,) = events_of(h.events_i, IkeSaFailed)
    rt = ci.retransmit
    assert failed.notify is None and f"{rt.max_retransmits} retransmissions" in failed.reason
    sent = [p for p in h.wire if p.sender == "i"]
    assert len(sent) == 1 + rt.max_retransmits and len({p.data for p in sent}) == 1
    # RFC 7296 2.4: exponential backoff (1 s x 1.6^n, capped at 30 s), several minutes
    gaps = [round(b.deliver_at - a.deliver_at, 6) for a, b in itertools.pairwise(sent)]
    assert gaps == [round(rt.delay(n), 6) for n in range(1, len(sent))]
    assert gaps[:3] == [1.0, 1.6, 2.56] and gaps[-1] == 30.0
    assert h.now == pytest.approx(start + rt.give_up_after())
    assert h.now - start > 180
    assert h.initiator.get_timer() is None


def test_retransmission_parameters_are_configurable() -> None:
    ci, cr = make_configs(retransmit=RetransmitConfig(timeout=2.0, base=1.5, max_retransmits=2))
    h = Harness(ci, [cr], network=Network(drop=lambda p: True))
    start = h.now
    h.start()
    h.run()
    sent = [p for p in h.wire if p.sender == "i"]
    assert len(sent) == 3
    assert h.now == pytest.approx(start + 2.0 + 3.0 + 4.5)
    assert "2 retransmissions" in events_of(h.events_i, IkeSaFailed)[0].reason


def test_retransmit_limit_caps_the_delay() -> None:
    cfg = RetransmitConfig(timeout=1.0, base=10.0, max_retransmits=4, limit=5.0)
    assert [cfg.delay(n) for n in range(1, 5)] == [1.0, 5.0, 5.0, 5.0]


def test_lost_ike_auth_exhausts_and_responder_half_open_expires() -> None:
    ci, cr = make_configs()

    def drop(p: Packet) -> bool:
        return p.sender == "i" and p.seq > 1  # every IKE_AUTH request is lost

    h = Harness(ci, [cr], network=Network(drop=drop))
    h.start()
    h.run()
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.FAILED and r.state == IkeState.FAILED
    assert "IKE_AUTH" in events_of(h.events_i, IkeSaFailed)[0].reason
    assert "half-open" in events_of(h.events_r, IkeSaFailed)[0].reason


def test_stale_and_future_message_ids_are_dropped() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    # replaying the IKE_SA_INIT request (message ID 0, no longer the last one) is dropped
    before = len(h.wire)
    h.inject(h.wire[0].data, to="r")
    h.run()
    assert len(h.wire) == before and r.established and r.internal_errors == 0


# ------------------------------------------------------------------ NAT traversal


def test_nat_detected_float_to_4500_and_udp_encapsulation() -> None:
    """RFC 7296 2.23: the initiator is behind a NAT; both detect it, the initiator
    moves to port 4500 (non-ESP marker, RFC 3948 2.2), ESP is UDP-encapsulated."""
    ci, cr = make_configs()
    h = Harness(ci, [cr], nat=True)
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and h.initiator.established and r.established
    assert h.initiator.nat_local and not h.initiator.nat_remote
    assert r.nat_remote and not r.nat_local
    # IKE_SA_INIT on 500 without marker, IKE_AUTH on 4500 with it
    assert [p.data[:4] == NON_ESP_MARKER for p in h.wire] == [False, False, True, True]
    assert h.initiator.local_addr == ("192.0.2.1", 4500)
    assert h.initiator.remote_addr == ("198.51.100.1", 4500)
    assert r.local_addr == ("198.51.100.1", 4500)
    # the NAT gave the float a new public port; the responder follows it
    assert r.remote_addr[0] == NAT_PUBLIC_IP and r.remote_addr[1] == h.wire[2].src[1]
    a = events_of(h.events_i, ChildSaEstablished)[0]
    b = events_of(h.events_r, ChildSaEstablished)[0]
    assert a.encapsulation and b.encapsulation
    assert (a.encap_local_port, a.encap_remote_port) == (4500, 4500)
    assert (b.encap_local_port, b.encap_remote_port) == (4500, r.remote_addr[1])
    assert b.remote_address == NAT_PUBLIC_IP
    # NAT detection hashes in the request are the initiator's private address
    req = parse_message(h.wire[0].data)
    src = req.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)[0].data
    assert src == nat_hash(req.spi_i, b"\x00" * 8, ("192.0.2.1", 500))


def test_nat_traversal_survives_loss_after_float() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr], nat=True, network=Network(drop=lambda p: p.seq in (3, 5)))
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and h.initiator.established and r.established
    assert events_of(h.events_r, ChildSaEstablished)[0].encapsulation


def test_forced_encapsulation_without_nat() -> None:
    """Like charon's encap=yes (and its kernel-libipsec setup): a faked NAT_DETECTION
    hash makes both sides encapsulate although no NAT is in the path."""
    ci, cr = make_configs(force_encapsulation=True)
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and h.initiator.established
    assert h.initiator.nat_local and r.nat_remote
    assert events_of(h.events_i, ChildSaEstablished)[0].encapsulation
    assert events_of(h.events_r, ChildSaEstablished)[0].encapsulation
    assert h.initiator.local_addr[1] == 4500 and r.local_addr[1] == 4500


def test_no_nat_no_float() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert not h.initiator.nat_detected
    assert all(p.data[:4] != NON_ESP_MARKER for p in h.wire)
    assert h.initiator.local_addr[1] == 500


def test_route_datagram_finds_the_sa_of_every_message() -> None:
    from ipsecd.ike import route_datagram

    ci, cr = make_configs()
    h = Harness(ci, [cr], nat=True)
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    routes = [route_datagram(p.data) for p in h.wire]
    assert all(x is not None for x in routes)
    first, *rest = routes
    assert first is not None and first.initial_request and first.local_spi == b"\x00" * 8
    assert first.spi_i == h.initiator.local_spi
    for pkt, route in zip(h.wire[1:], rest, strict=True):
        assert route is not None and not route.initial_request
        receiver = r if pkt.sender == "i" else h.initiator
        assert route.local_spi == receiver.local_spi
    assert route_datagram(b"\x00\x00\x00\x00short") is None
    assert route_datagram(b"") is None


# ------------------------------------------------------------------ cookies (RFC 7296 2.6)


def test_responder_cookie_round_trip() -> None:
    """Under load the responder answers statelessly with a COOKIE; the initiator
    repeats IKE_SA_INIT with it first and the handshake completes (AUTH signs the
    repeated request)."""
    from ipsecd.ike.codec import NotifyPayload

    ci, cr = make_configs()
    h = Harness(ci, [cr], cookie_secret=b"cookie secret 1" * 2)
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and h.initiator.established and r.established
    msgs = [parse_message(p.data) for p in h.wire]
    assert [m.exchange_type for m in msgs[:3]] == [ExchangeType.IKE_SA_INIT] * 3
    (challenge,) = msgs[1].notifies(NotifyType.COOKIE)
    assert len(msgs[1].payloads) == 1 and msgs[1].spi_r == b"\x00" * 8
    first = msgs[2].payloads[0]
    assert isinstance(first, NotifyPayload) and first.data == challenge.data
    assert len(h.responders) == 1  # no state was kept for the cookie-less request


def test_cookie_challenge_checks_secret_address_and_rotation() -> None:
    from ipsecd.ike.codec import NotifyPayload, build_message
    from ipsecd.ike.negotiate import cookie_challenge

    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    request = h.wire[0].data
    src = h.wire[0].src
    reply = cookie_challenge(request, src, b"old secret")
    assert reply is not None
    cookie = parse_message(reply).notifies(NotifyType.COOKIE)[0].data
    msg = parse_message(request)
    with_cookie = build_message(
        type(msg)(
            msg.spi_i,
            msg.spi_r,
            msg.exchange_type,
            msg.flags,
            0,
            (NotifyPayload(NotifyType.COOKIE, cookie), *msg.payloads),
        )
    )
    assert cookie_challenge(with_cookie, src, b"old secret") is None
    # after a rotation the previous secret is still honoured, then no more
    assert cookie_challenge(with_cookie, src, b"new secret", previous=b"old secret") is None
    assert cookie_challenge(with_cookie, src, b"new secret") is not None
    # the cookie is bound to the source address
    assert cookie_challenge(with_cookie, ("203.0.113.9", 500), b"old secret") is not None
    # not an initial request: nothing to say
    assert cookie_challenge(b"junk", src, b"s") is None
    assert cookie_challenge(h.wire[0].data[:20], src, b"s") is None
