"""A tampering peer: the harness rewrites genuine messages (re-encrypting protected
ones with the sender's real keys) to reach the checks an honest peer never trips."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

import pytest

from ipsecd.ike import (
    ChildSaEstablished,
    ChildSaFailed,
    IkeSa,
    IkeSaEstablished,
    IkeSaFailed,
    IkeState,
    codec,
    lookup_by_address,
)
from ipsecd.ike.codec import (
    AuthPayload,
    KePayload,
    Message,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
    parse_message,
)
from ipsecd.ike.constants import ExchangeType, NotifyType
from ipsecd.ike.negotiate import NON_ESP_MARKER

from .harness import I_ADDR, R_ADDR, Harness, Network, Packet, events_of, make_configs

Edit = Callable[[list[Payload]], list[Payload]]


def _split(data: bytes) -> tuple[bytes, bytes]:
    return (NON_ESP_MARKER, data[4:]) if data[:4] == NON_ESP_MARKER else (b"", data)


def tamper(h: Harness, *, sender: str, exchange: int, edit: Edit, times: int = 1) -> None:
    """Rewrite the first ``times`` messages ``sender`` sends in ``exchange``."""
    left = [times]

    def rewrite(pkt: Packet) -> bytes | None:
        if pkt.sender != sender or left[0] <= 0:
            return None
        marker, body = _split(pkt.data)
        msg = parse_message(body)
        if msg.exchange_type != exchange:
            return None
        left[0] -= 1
        if msg.sk is None:
            new = dataclasses.replace(msg, payloads=tuple(edit(list(msg.payloads))))
            return marker + codec.build_message(new)
        sa = h.initiator if sender == "i" else h.responder
        assert sa is not None and sa.keys is not None
        cipher = sa.keys.out_cipher
        inner = codec.decrypt_sk(body, msg, cipher)
        bare = Message(msg.spi_i, msg.spi_r, msg.exchange_type, msg.flags, msg.message_id)
        return marker + codec.encrypt_sk(bare, edit(list(inner)), cipher)

    h.network.rewrite = rewrite


def run(h: Harness) -> Harness:
    h.start()
    h.run()
    return h


def harness(**kw: object) -> Harness:
    ci, cr = make_configs(**kw)  # type: ignore[arg-type]
    return Harness(ci, [cr], network=Network())


def replace_payload(kind: type, fn: Callable[[Payload], Payload | None]) -> Edit:
    def edit(payloads: list[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if isinstance(p, kind):
                q = fn(p)
                if q is not None:
                    out.append(q)
            else:
                out.append(p)
        return out

    return edit


# ------------------------------------------------------------------ IKE_SA_INIT response


def stateless_cookie(h: Harness, cookie: bytes) -> Edit:
    """Answer with a COOKIE request and, like a real cookie-sending responder, keep no
    state: the retry reaches a fresh ``accept``."""

    def edit(_: list[Payload]) -> list[Payload]:
        h.responders.pop()
        return [NotifyPayload(NotifyType.COOKIE, cookie)]

    return edit


def test_cookie_request_is_followed() -> None:
    """RFC 7296 2.6: asked for a cookie, the initiator repeats IKE_SA_INIT with the
    COOKIE notification first (same SPIi, message ID 0)."""
    h = harness()
    cookie = b"\x42" * 16
    tamper(h, sender="r", exchange=ExchangeType.IKE_SA_INIT, edit=stateless_cookie(h, cookie))
    run(h)
    assert h.initiator.established
    requests = [parse_message(p.data) for p in h.wire if p.sender == "i"]
    first, second = requests[0], requests[1]
    assert second.exchange_type == ExchangeType.IKE_SA_INIT and second.spi_i == first.spi_i
    assert isinstance(second.payloads[0], NotifyPayload)
    assert second.payloads[0].notify_type == NotifyType.COOKIE and second.payloads[0].data == cookie
    # the retry is what AUTH signs (RealMessage1): authentication succeeded above
    assert events_of(h.events_r, IkeSaEstablished)


def test_endless_cookies_give_up() -> None:
    h = harness()
    tamper(
        h,
        sender="r",
        exchange=ExchangeType.IKE_SA_INIT,
        edit=stateless_cookie(h, b"c" * 16),
        times=99,
    )
    run(h)
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.COOKIE


def test_response_without_ke_is_dropped_and_retransmission_recovers() -> None:
    h = harness()
    tamper(
        h,
        sender="r",
        exchange=ExchangeType.IKE_SA_INIT,
        edit=replace_payload(KePayload, lambda p: None),
    )
    run(h)
    assert h.initiator.established
    sent = [p for p in h.wire if p.sender == "i"]
    assert sent[0].data == sent[1].data  # the request was retransmitted


def test_response_with_two_proposals_is_dropped() -> None:
    h = harness()

    def two(p: Payload) -> Payload:
        assert isinstance(p, SaPayload)
        return SaPayload(p.proposals * 2)

    tamper(h, sender="r", exchange=ExchangeType.IKE_SA_INIT, edit=replace_payload(SaPayload, two))
    run(h)
    assert h.initiator.established


@pytest.mark.parametrize("times", [1, 99])
def test_response_choosing_what_we_never_offered(times: int) -> None:
    """RFC 7296 2.21.1: an unauthenticated answer could be forged: one bad answer is
    followed by a retransmission, whose genuine answer wins; answers that stay bad
    fail the SA with the reason seen."""
    h = harness()

    def other_cipher(p: Payload) -> Payload:
        assert isinstance(p, SaPayload)
        (prop,) = p.proposals
        swapped = tuple(
            codec.Transform.make(1, 20, 128) if t.transform_type == 1 else t
            for t in prop.transforms
        )
        return SaPayload((dataclasses.replace(prop, transforms=swapped),))

    tamper(
        h,
        sender="r",
        exchange=ExchangeType.IKE_SA_INIT,
        edit=replace_payload(SaPayload, other_cipher),
        times=times,
    )
    h.start()
    h.run(max_steps=5000)
    if times == 1:
        assert h.initiator.established
        return
    assert h.initiator.state == IkeState.FAILED
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    # one retransmission after the bad answer, no more
    assert len([p for p in h.wire if p.sender == "i"]) == 2


@pytest.mark.parametrize("times", [1, 99])
def test_response_ke_group_mismatch(times: int) -> None:
    h = harness(ike=("aes256gcm16-prfsha384-ecp384-ecp256",))

    def ke256(p: Payload) -> Payload:
        return KePayload(19, b"\x01" * 64)

    tamper(h, sender="r", exchange=ExchangeType.IKE_SA_INIT, edit=replace_payload(KePayload, ke256),
           times=times)  # fmt: skip
    h.start()
    h.run(max_steps=5000)
    if times == 1:
        assert h.initiator.established
        return
    assert h.initiator.state == IkeState.FAILED
    assert "DH group" in events_of(h.events_i, IkeSaFailed)[0].reason


def test_response_with_invalid_ke_value_is_dropped() -> None:
    h = harness()

    def bad(p: Payload) -> Payload:
        assert isinstance(p, KePayload)
        return KePayload(p.dh_group, b"\x00" * len(p.data))

    tamper(h, sender="r", exchange=ExchangeType.IKE_SA_INIT, edit=replace_payload(KePayload, bad))
    run(h)
    assert h.initiator.established and h.initiator.internal_errors == 0


# ------------------------------------------------------------------ IKE_AUTH response


def test_forged_responder_auth_is_rejected() -> None:
    h = harness()

    def flip(p: Payload) -> Payload:
        assert isinstance(p, AuthPayload)
        return AuthPayload(p.method, bytes([p.data[0] ^ 1]) + p.data[1:])

    tamper(h, sender="r", exchange=ExchangeType.IKE_AUTH, edit=replace_payload(AuthPayload, flip))
    run(h)
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.FAILED
    assert "does not match our pre-shared key" in events_of(h.events_i, IkeSaFailed)[0].reason
    # RFC 7296 2.21.2: the initiator says so in an INFORMATIONAL; the responder gives up
    assert r.state == IkeState.FAILED
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_widened_traffic_selectors_are_refused() -> None:
    h = harness()
    wide = codec.TrafficSelector.from_network("0.0.0.0/0")
    tamper(
        h,
        sender="r",
        exchange=ExchangeType.IKE_AUTH,
        edit=replace_payload(TsrPayload, lambda p: TsrPayload((wide,))),
    )
    run(h)
    assert h.initiator.established
    (failed,) = events_of(h.events_i, ChildSaFailed)
    assert "traffic selectors" in failed.reason
    assert not events_of(h.events_i, ChildSaEstablished)
    # the unwanted CHILD SA is deleted at the responder too
    assert [type(e).__name__ for e in h.events_r][-1] == "ChildSaDeleted"


def test_zero_child_spi_from_responder_is_refused() -> None:
    h = harness()

    def zero(p: Payload) -> Payload:
        assert isinstance(p, SaPayload)
        (prop,) = p.proposals
        return SaPayload((dataclasses.replace(prop, spi=b"\x00" * 4),))

    tamper(h, sender="r", exchange=ExchangeType.IKE_AUTH, edit=replace_payload(SaPayload, zero))
    run(h)
    assert h.initiator.established
    assert "SPI" in events_of(h.events_i, ChildSaFailed)[0].reason


def test_child_proposal_not_offered_is_refused() -> None:
    h = harness()

    def cbc(p: Payload) -> Payload:
        assert isinstance(p, SaPayload)
        (prop,) = p.proposals
        ts = (
            codec.Transform.make(1, 12, 128),
            codec.Transform.make(3, 12),
            codec.Transform.make(5, 0),
        )
        return SaPayload((dataclasses.replace(prop, transforms=ts),))

    tamper(h, sender="r", exchange=ExchangeType.IKE_AUTH, edit=replace_payload(SaPayload, cbc))
    run(h)
    assert events_of(h.events_i, ChildSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_auth_response_without_child_payloads() -> None:
    h = harness()
    tamper(
        h,
        sender="r",
        exchange=ExchangeType.IKE_AUTH,
        edit=replace_payload(TsiPayload, lambda p: None),
    )
    run(h)
    assert h.initiator.established
    assert "no usable CHILD SA" in events_of(h.events_i, ChildSaFailed)[0].reason


# ------------------------------------------------------------------ IKE_AUTH request


def test_request_with_zero_child_spi_gets_invalid_syntax() -> None:
    h = harness()

    def zero(p: Payload) -> Payload:
        assert isinstance(p, SaPayload)
        return SaPayload(tuple(dataclasses.replace(q, spi=b"\x00" * 4) for q in p.proposals))

    tamper(h, sender="i", exchange=ExchangeType.IKE_AUTH, edit=replace_payload(SaPayload, zero))
    run(h)
    assert h.initiator.established
    assert events_of(h.events_r, ChildSaFailed)[0].notify == NotifyType.INVALID_SYNTAX
    assert events_of(h.events_i, ChildSaFailed)[0].notify == NotifyType.INVALID_SYNTAX


def test_request_without_auth_payload_fails_with_invalid_syntax() -> None:
    h = harness()
    tamper(
        h,
        sender="i",
        exchange=ExchangeType.IKE_AUTH,
        edit=replace_payload(AuthPayload, lambda p: None),
    )
    run(h)
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.INVALID_SYNTAX
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.INVALID_SYNTAX


def test_unsupported_auth_method_is_refused() -> None:
    h = harness()
    tamper(
        h,
        sender="i",
        exchange=ExchangeType.IKE_AUTH,
        edit=replace_payload(AuthPayload, lambda p: AuthPayload(1, b"\x00" * 32)),
    )
    run(h)
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_narrowed_selectors_with_an_empty_range_are_ignored() -> None:
    """A selector whose start is after its end selects nothing (RFC 7296 3.13.1)."""
    h = harness()
    empty = codec.TrafficSelector(
        0, 0, 65535, ipaddress.IPv4Address("10.1.0.9"), ipaddress.IPv4Address("10.1.0.1")
    )

    def add_empty(p: Payload) -> Payload:
        assert isinstance(p, TsiPayload)
        return TsiPayload((empty, *p.selectors))

    tamper(
        h, sender="i", exchange=ExchangeType.IKE_AUTH, edit=replace_payload(TsiPayload, add_empty)
    )
    run(h)
    a = events_of(h.events_r, ChildSaEstablished)[0]
    assert len(a.remote_ts) == 1


# ------------------------------------------------------------------ NAT-T from the start


def test_initiator_starting_on_port_4500() -> None:
    """An IKE_SA_INIT that arrives with the non-ESP marker (port 4500) is answered on 4500
    with the marker (RFC 7296 2.23)."""
    h = harness()
    h.initiator.initiate(h.now)
    ((request, _),) = h.initiator.datagrams_to_send(h.now)
    sa = IkeSa.accept(
        lookup_by_address(h.responder_configs),
        NON_ESP_MARKER + request,
        (R_ADDR[0], 4500),
        (I_ADDR[0], 4500),
        h.now,
    )
    assert sa is not None and sa.local_addr == (R_ADDR[0], 4500)
    ((reply, dest),) = sa.datagrams_to_send(h.now)
    assert reply[:4] == NON_ESP_MARKER and dest == (I_ADDR[0], 4500)
