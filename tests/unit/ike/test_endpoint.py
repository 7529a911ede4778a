"""IkeEndpoint: routing by SPI, admission of new IKE_SA_INIT requests (rate limits,
half-open bounds, cookies: RFC 7296 2.6), INVALID_IKE_SPI (2.21.4), bounded tables."""

from __future__ import annotations

import dataclasses
import logging
import random

import pytest

from ipsecd.ike.codec import (
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    SaPayload,
    VendorIdPayload,
    build_message,
    parse_message,
)
from ipsecd.ike.config import IkeConfig, parse_ike_proposal
from ipsecd.ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from ipsecd.ike.crypto import dh_generate
from ipsecd.ike.endpoint import EndpointLimits, IkeEndpoint
from ipsecd.ike.negotiate import ZERO_SPI, wire_proposals
from ipsecd.ike.sa import lookup_by_address

from .harness import make_configs
from .pair import A_ADDR, B_ADDR, Pair

RESP = ("198.51.100.1", 500)


def flood_request(cfg: IkeConfig, rng: random.Random) -> bytes:
    """A valid IKE_SA_INIT request with a fresh KE, as a flooder would send."""
    group = cfg.ike_proposals[0].of_type(4)[0].id  # type: ignore[arg-type]
    ke = dh_generate(group)
    props = wire_proposals(cfg.ike_proposals, ProtocolId.IKE, b"")
    msg = Message(
        rng.randbytes(8),
        ZERO_SPI,
        ExchangeType.IKE_SA_INIT,
        int(HeaderFlag.INITIATOR),
        0,
        (SaPayload(props), KePayload(group, ke.public), NoncePayload(rng.randbytes(32))),
    )
    return build_message(msg)


def responder(**limits: object) -> tuple[IkeEndpoint, IkeConfig]:
    ci, cr = make_configs()
    ep = IkeEndpoint(
        lookup_by_address([cr]),
        limits=EndpointLimits(**limits),  # type: ignore[arg-type]
        rng=random.Random(3),
    )
    return ep, ci


def test_half_open_sas_past_the_threshold_get_cookies_not_state() -> None:
    ep, ci = responder(
        cookie_threshold=5, cookie_threshold_ip=100, block_threshold_ip=100, init_burst=1000
    )
    rng = random.Random(1)
    for i in range(20):
        ep.receive_datagram(flood_request(ci, rng), RESP, (f"203.0.113.{i % 50}", 500), 1.0)
    assert ep.half_open == 5 and ep.stats.cookies_sent == 15
    out = ep.datagrams_to_send(1.0)
    cookies = [d for d, _, _ in out if parse_message(d).notifies(NotifyType.COOKIE)]
    assert len(cookies) == 15


def test_per_address_limits_and_rate() -> None:
    ep, ci = responder(
        cookie_threshold=1000,
        cookie_threshold_ip=1000,
        block_threshold_ip=3,
        init_burst=5,
        init_rate=1.0,
    )
    rng = random.Random(1)
    for _ in range(10):
        ep.receive_datagram(flood_request(ci, rng), RESP, ("203.0.113.9", 500), 1.0)
    assert ep.half_open == 3 and ep.stats.blocked == 7
    ep2, _ = responder(
        cookie_threshold=1000,
        cookie_threshold_ip=1000,
        block_threshold_ip=1000,
        init_burst=5,
        init_rate=1.0,
    )
    for _ in range(10):
        ep2.receive_datagram(flood_request(ci, rng), RESP, ("203.0.113.9", 500), 1.0)
    assert ep2.half_open == 5 and ep2.stats.rate_limited == 5
    ep2.receive_datagram(flood_request(ci, rng), RESP, ("203.0.113.9", 500), 3.0)
    assert ep2.half_open == 6  # the bucket refilled


def test_half_open_table_is_bounded_and_empties_after_the_timeout() -> None:
    ep, ci = responder(
        cookie_threshold=10**6,
        cookie_threshold_ip=10**6,
        block_threshold_ip=10**6,
        init_burst=10**6,
        max_half_open=40,
    )
    rng = random.Random(1)
    for i in range(100):
        ep.receive_datagram(flood_request(ci, rng), RESP, (f"203.0.113.{i % 200}", 500), 1.0)
    assert ep.half_open == 40 and ep.stats.half_open_full == 60
    timer = ep.get_timer()
    assert timer is not None and timer <= 1.0 + ci.half_open_timeout
    ep.handle_timer(1.0 + ci.half_open_timeout)
    assert ep.half_open == 0
    # ended SAs linger (to answer retransmissions), then go: nothing is kept for ever
    ep.handle_timer(1.0 + ci.half_open_timeout + ep.limits.linger + 1)
    assert ep.sas == [] and ep._filed == {}


def test_legitimate_handshake_completes_through_cookies_during_a_flood() -> None:
    ci, cr = make_configs()
    limits = EndpointLimits(cookie_threshold=2)
    p = Pair([ci], [cr], limits=limits)
    rng = random.Random(5)
    for i in range(10):
        p.ep["b"].receive_datagram(flood_request(cr, rng), B_ADDR, (f"203.0.113.{i}", 500), p.now)
    assert p.ep["b"].half_open == 2
    p.flush()
    sa = p.initiate("a", ci)
    p.settle()
    assert sa.established
    assert p.ep["b"].stats.cookies_sent >= 9  # the flood's and the legitimate one's first


def test_unknown_spi_request_gets_a_rate_limited_invalid_ike_spi() -> None:
    ep, _ = responder(invalid_spi_rate=2.0)
    msg = Message(
        b"\x01" * 8, b"\x02" * 8, ExchangeType.INFORMATIONAL, int(HeaderFlag.INITIATOR), 5
    )
    data = build_message(msg)
    for _ in range(10):
        ep.receive_datagram(data, RESP, A_ADDR, 1.0)
    out = ep.datagrams_to_send(1.0)
    assert len(out) == 2 and ep.stats.invalid_ike_spi_sent == 2
    reply = parse_message(out[0][0])
    assert reply.is_response and reply.message_id == 5 and reply.spi_i == b"\x01" * 8
    assert reply.notifies(NotifyType.INVALID_IKE_SPI)
    # an INVALID_IKE_SPI answer we receive is audited, never answered
    ep.receive_datagram(out[0][0], RESP, A_ADDR, 1.0)
    assert ep.stats.invalid_ike_spi_received == 1 and ep.datagrams_to_send(1.0) == []


def test_not_ike_and_keepalives_are_dropped_quietly() -> None:
    ep, _ = responder()
    ep.receive_datagram(b"\xff", ("198.51.100.1", 4500), A_ADDR, 1.0)
    ep.receive_datagram(b"\x01\x02\x03\x04" + b"x" * 40, ("198.51.100.1", 4500), A_ADDR, 1.0)
    ep.receive_datagram(b"short", RESP, A_ADDR, 1.0)
    assert ep.stats.not_ike == 2 and ep.datagrams_to_send(1.0) == []


def with_cookie(request: bytes, answer: bytes) -> bytes:
    """The request again with the cookie of ``answer`` first (RFC 7296 2.6), as a
    flooder that owns its source address can do."""
    (cookie,) = parse_message(answer).notifies(NotifyType.COOKIE)
    msg = parse_message(request)
    payloads = (NotifyPayload(NotifyType.COOKIE, cookie.data), *msg.payloads)
    return build_message(dataclasses.replace(msg, payloads=payloads))


def test_a_flooder_returning_cookies_holds_at_most_block_threshold_ip_half_open_sas() -> None:
    ep, ci = responder(init_burst=1000, init_rate=1000.0)  # only the half-open bounds
    rng = random.Random(2)
    src = ("203.0.113.10", 500)
    for _ in range(30):
        req = flood_request(ci, rng)
        ep.receive_datagram(req, RESP, src, 1.0)
        for data, _local, _dest in ep.datagrams_to_send(1.0):
            if parse_message(data).notifies(NotifyType.COOKIE):
                ep.receive_datagram(with_cookie(req, data), RESP, src, 1.0)
    assert ep.limits.block_threshold_ip == 5  # docs/limits.md "IKE", charon's default too
    assert ep.half_open == 5 and ep.stats.blocked > 0 and ep.stats.cookies_sent > 0


def test_expired_half_open_sas_are_forgotten_at_once() -> None:
    ep, ci = responder(cookie_threshold=100, cookie_threshold_ip=100, block_threshold_ip=100)
    rng = random.Random(1)
    reqs = [flood_request(ci, rng) for _ in range(5)]
    for req in reqs:
        ep.receive_datagram(req, RESP, ("203.0.113.9", 500), 1.0)
    assert ep.half_open == 5 and len(ep.datagrams_to_send(1.0)) == 5
    ep.handle_timer(1.0 + ci.half_open_timeout)
    # nothing lingers: only IKE_SA_INIT was answered, and a retransmission of it goes
    # through the half-open table (RFC 7296 2.1, 2.6)
    assert ep.half_open == 0 and ep._filed == {} and not ep._lingering
    assert ep.get_timer() is None
    ep.receive_datagram(reqs[0], RESP, ("203.0.113.9", 500), 40.0)
    assert ep.half_open == 1 and ep.stats.accepted == 6  # a new SA, answered again


def test_an_ike_sa_init_refused_at_once_is_not_kept() -> None:
    ep, ci = responder()  # ECP-384 only
    rng = random.Random(4)
    ci256 = dataclasses.replace(
        ci, ike_proposals=(parse_ike_proposal("aes256gcm16-prfsha256-ecp256"),)
    )
    ep.receive_datagram(flood_request(ci256, rng), RESP, A_ADDR, 1.0)
    (answer,) = ep.datagrams_to_send(1.0)
    assert parse_message(answer[0]).notifies(NotifyType.NO_PROPOSAL_CHOSEN)
    assert ep._filed == {} and not ep._lingering and ep.get_timer() is None


def test_an_sa_that_answered_ike_auth_still_lingers() -> None:
    ci, cr = make_configs()
    p = Pair([ci], [cr])
    sa = p.initiate("a", ci)
    p.settle()
    assert sa.established
    (resp,) = p.ep["b"].sas
    p.ep["a"].flush(p.now)
    sa.delete(p.now)
    p.settle()
    assert resp.ended_at is not None
    # it answers a retransmitted Delete from its cache (RFC 7296 2.1) until linger ends
    assert p.ep["b"].sa_by_spi(resp.local_spi) is resp
    p.now += p.ep["b"].limits.linger + 1
    p.ep["b"].handle_timer(p.now)
    assert p.ep["b"].sa_by_spi(resp.local_spi) is None


def test_datagrams_over_max_datagram_are_dropped_unparsed() -> None:
    ep, ci = responder(max_datagram=400)
    rng = random.Random(5)
    req = flood_request(ci, rng)  # an ECP-384 KE: under 400 bytes
    assert len(req) < 400
    padded = build_message(
        dataclasses.replace(
            parse_message(req), payloads=(*parse_message(req).payloads, VendorIdPayload(bytes(400)))
        )
    )
    ep.receive_datagram(padded, RESP, A_ADDR, 1.0)
    assert ep.stats.oversize == 1 and ep.stats.accepted == 0 and ep.datagrams_to_send(1.0) == []
    ep.receive_datagram(req, RESP, A_ADDR, 1.0)
    assert ep.stats.accepted == 1
    assert EndpointLimits().max_datagram == 10_000  # docs/limits.md "IKE", charon's too


def test_failures_anyone_can_cause_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    # a flood of refused or abandoned IKE_SA_INIT requests must not fill the log with
    # warnings (docs/limits.md "IKE")
    ep, ci = responder(cookie_threshold=100, cookie_threshold_ip=100, block_threshold_ip=100)
    rng = random.Random(6)
    ci256 = dataclasses.replace(
        ci, ike_proposals=(parse_ike_proposal("aes256gcm16-prfsha256-ecp256"),)
    )
    caplog.set_level(logging.DEBUG, logger="ipsecd.ike")
    ep.receive_datagram(flood_request(ci256, rng), RESP, A_ADDR, 1.0)  # NO_PROPOSAL_CHOSEN
    ep.receive_datagram(flood_request(ci, rng), RESP, B_ADDR, 1.0)  # half-open
    ep.handle_timer(1.0 + ci.half_open_timeout)
    assert ep.half_open == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("NO_PROPOSAL_CHOSEN" in m for m in messages)
    assert any("half-open SA expired" in m for m in messages)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
