"""Failure paths of the handshake: authentication, proposals, INVALID_KE_PAYLOAD,
malformed and unexpected input, API misuse."""

from __future__ import annotations

import logging

import pytest

from ipsecd.ike import (
    ChildSaDeleted,
    ChildSaEstablished,
    Identity,
    IkeLocalError,
    IkeSa,
    IkeSaEstablished,
    IkeSaFailed,
    IkeState,
    lookup_by_address,
)
from ipsecd.ike.codec import (
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    SaPayload,
    build_message,
    parse_message,
)
from ipsecd.ike.config import parse_ike_proposal
from ipsecd.ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from ipsecd.ike.negotiate import wire_proposals as _wire_proposals
from ipsecd.ike.states import (
    CHILD_END_STATES,
    CHILD_TRANSITIONS,
    END_STATES,
    TRANSITIONS,
    ChildState,
    IkeTrigger,
    next_state,
)

from .harness import I_ADDR, R_ADDR, Harness, events_of, make_configs


def run(ci: object, cr: object) -> Harness:
    h = Harness(ci, [cr])  # type: ignore[arg-type]
    h.start()
    h.run()
    return h


def test_wrong_psk_fails_both_sides_with_authentication_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ci, cr = make_configs(psk=b"the initiator's secret", r_psk=b"the responder's secret")
    with caplog.at_level(logging.INFO, logger="ipsecd.ike"):
        h = run(ci, cr)
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.FAILED and r.state == IkeState.FAILED
    fi = events_of(h.events_i, IkeSaFailed)
    fr = events_of(h.events_r, IkeSaFailed)
    assert [f.notify for f in fi] == [NotifyType.AUTHENTICATION_FAILED]
    assert [f.notify for f in fr] == [NotifyType.AUTHENTICATION_FAILED]
    assert not events_of(h.events_i, IkeSaEstablished) and not events_of(
        h.events_r, IkeSaEstablished
    )
    # DESIGN convention 4: the responder logs the failed authentication
    assert "authentication of peer 192.0.2.1" in caplog.text
    # nothing is left running
    assert h.initiator.get_timer() is None and r.get_timer() is None


def test_initiator_rejects_responder_with_unexpected_identity() -> None:
    """The responder authenticates, the initiator does not accept its ID: the initiator
    sends AUTHENTICATION_FAILED in an INFORMATIONAL (RFC 7296 2.21.2); both end up
    failed, the responder's CHILD SA is withdrawn."""
    ci, cr = make_configs(i_expects=Identity.fqdn("someone-else.example"))
    h = run(ci, cr)
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.FAILED and r.state == IkeState.FAILED
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    names_r = [type(e).__name__ for e in h.events_r]
    assert names_r == ["IkeSaEstablished", "ChildSaEstablished", "ChildSaDeleted", "IkeSaFailed"]
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_unknown_initiator_identity_is_refused() -> None:
    ci, cr = make_configs(r_expects=Identity.fqdn("expected.example"))
    h = run(ci, cr)
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


def test_no_common_ike_proposal() -> None:
    ci, cr = make_configs(ike=("aes256gcm16-prfsha384-ecp384",), r_ike=("aes128-sha256-modp2048",))
    h = run(ci, cr)
    assert h.initiator.state == IkeState.FAILED
    assert events_of(h.events_i, IkeSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    # RFC 7296 2.6: the error response carries a zero responder SPI
    reply = parse_message(h.wire[1].data)
    assert reply.spi_r == b"\x00" * 8 and reply.notifies(NotifyType.NO_PROPOSAL_CHOSEN)


def test_invalid_ke_payload_retry_with_requested_group() -> None:
    ci, cr = make_configs(
        ike=("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha384-curve25519"),
        r_ike=("aes256gcm16-prfsha384-curve25519",),
    )
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert h.initiator.state == IkeState.ESTABLISHED
    assert events_of(h.events_i, IkeSaEstablished)[0].dh_group == 31
    msgs = [parse_message(p.data) for p in h.wire]
    assert [m.exchange_type for m in msgs[:4]] == [ExchangeType.IKE_SA_INIT] * 4
    assert msgs[1].notifies(NotifyType.INVALID_KE_PAYLOAD)[0].data == (31).to_bytes(2, "big")
    assert msgs[2].get(KePayload) is not None and msgs[2].get(KePayload).dh_group == 31  # type: ignore[union-attr]
    # the retry keeps SPIi and message ID 0
    assert msgs[2].spi_i == msgs[0].spi_i and msgs[2].message_id == 0
    # the first responder kept no state; the second one completed
    assert h.responders[0].state == IkeState.FAILED and not h.responders[0].next_event()
    assert h.responders[1].state == IkeState.ESTABLISHED
    assert not events_of(h.events_i, IkeSaFailed)


def test_acceptable_ke_group_spares_the_retry() -> None:
    """The responder prefers ECP-384 but also accepts the initiator's ECP-256 KE in the
    same proposal: no INVALID_KE_PAYLOAD round trip."""
    ci, cr = make_configs(
        ike=("aes256gcm16-prfsha384-ecp256-ecp384",),
        r_ike=("aes256gcm16-prfsha384-ecp384-ecp256",),
    )
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert events_of(h.events_i, IkeSaEstablished)[0].dh_group == 19
    assert events_of(h.events_r, IkeSaEstablished)[0].dh_group == 19
    assert len(h.wire) == 4


def test_short_nonce_for_the_prf_is_refused() -> None:
    """RFC 7296 2.10: a nonce must be at least half the PRF key size (32 for SHA-512).
    The refusal is not answered: INVALID_SYNTAX goes only into an encrypted answer
    (RFC 7296 3.10.1), so the initiator times out."""
    ci, cr = make_configs(ike=("aes256gcm16-prfsha512-ecp256",))
    fields = {n: getattr(ci, n) for n in ci.__dataclass_fields__}
    short = type(ci)(**{**fields, "nonce_length": 16})
    h = Harness(short, [cr])
    h.start()
    h.run(max_steps=5000)
    assert "nonce" in events_of(h.events_r, IkeSaFailed)[0].reason
    assert events_of(h.events_i, IkeSaFailed)[0].notify is None
    answers = [p for p in h.wire if p.sender == "r"]
    assert answers == []


def test_invalid_ke_for_group_we_never_offered_fails() -> None:
    ci, _ = make_configs()
    sa = IkeSa(ci, initiator=True, local_addr=I_ADDR, remote_addr=R_ADDR)
    sa.initiate(0.0)
    ((req, _),) = sa.datagrams_to_send(0.0)
    spi_i = parse_message(req).spi_i
    reply = Message(
        spi_i,
        b"\x00" * 8,
        ExchangeType.IKE_SA_INIT,
        int(HeaderFlag.RESPONSE),
        0,
        (NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, (14).to_bytes(2, "big")),),
    )
    sa.receive_datagram(build_message(reply), R_ADDR, 0.1)
    # RFC 7296 2.21.1: unauthenticated, so wait for a genuine answer for one more
    # retransmission, then give up with the reason seen
    assert sa.state == IkeState.EXPECT_SA_INIT_RESPONSE
    timer = sa.get_timer()
    assert timer is not None and timer <= 0.0 + ci.retransmit.delay(1)
    sa.handle_timer(timer)
    assert len(sa.datagrams_to_send(timer)) == 1  # the one retransmission
    assert sa.state == IkeState.EXPECT_SA_INIT_RESPONSE
    later = sa.get_timer()
    assert later is not None
    sa.handle_timer(later)
    assert sa.state == IkeState.FAILED
    assert sa.datagrams_to_send(later) == []
    ev = sa.next_event()
    assert isinstance(ev, IkeSaFailed) and ev.notify == NotifyType.INVALID_KE_PAYLOAD


def _sa_init_request(**overrides: object) -> bytes:
    ci, _ = make_configs()
    props = _wire_proposals(ci.ike_proposals, ProtocolId.IKE, b"")
    payloads = overrides.get(
        "payloads",
        (SaPayload(props), KePayload(20, b"\x01" * 96), NoncePayload(b"n" * 32)),
    )
    msg = Message(
        b"\x11" * 8,
        b"\x00" * 8,
        int(overrides.get("exchange", ExchangeType.IKE_SA_INIT)),  # type: ignore[call-overload]
        int(overrides.get("flags", HeaderFlag.INITIATOR)),  # type: ignore[call-overload]
        int(overrides.get("message_id", 0)),  # type: ignore[call-overload]
        tuple(payloads),  # type: ignore[arg-type]
    )
    return build_message(msg)


def test_accept_drops_what_is_not_an_initial_request() -> None:
    _, cr = make_configs()
    lookup = lookup_by_address([cr])
    assert IkeSa.accept(lookup, b"garbage", R_ADDR, I_ADDR, 0.0) is None
    assert IkeSa.accept(lookup, _sa_init_request(message_id=1), R_ADDR, I_ADDR, 0.0) is None
    assert (
        IkeSa.accept(lookup, _sa_init_request(exchange=ExchangeType.IKE_AUTH), R_ADDR, I_ADDR, 0.0)
        is None
    )
    resp_flags = HeaderFlag.RESPONSE | HeaderFlag.INITIATOR
    assert IkeSa.accept(lookup, _sa_init_request(flags=resp_flags), R_ADDR, I_ADDR, 0.0) is None
    # no connection for that peer address
    assert IkeSa.accept(lookup_by_address([]), _sa_init_request(), R_ADDR, I_ADDR, 0.0) is None


def test_invalid_ke_value_is_dropped_not_answered_in_clear() -> None:
    """An off-curve ECP point: refused, but INVALID_SYNTAX is never sent in clear
    (RFC 7296 3.10.1: only inside an authenticated, encrypted answer)."""
    _, cr = make_configs()
    sa = IkeSa.accept(lookup_by_address([cr]), _sa_init_request(), R_ADDR, I_ADDR, 0.0)
    assert sa is not None and sa.state == IkeState.FAILED
    assert sa.datagrams_to_send(0.0) == []
    assert sa.internal_errors == 0 and sa.peer_errors == 1


def test_missing_payloads_are_dropped_not_answered_in_clear() -> None:
    _, cr = make_configs()
    req = _sa_init_request(payloads=(NoncePayload(b"n" * 32),))
    sa = IkeSa.accept(lookup_by_address([cr]), req, R_ADDR, I_ADDR, 0.0)
    assert sa is not None and sa.state == IkeState.FAILED
    assert sa.datagrams_to_send(0.0) == []


def test_lookup_by_address_filters_role_and_addresses() -> None:
    from ipsecd.ike import Role

    _, cr = make_configs()
    fields = {n: getattr(cr, n) for n in cr.__dataclass_fields__}
    pinned = type(cr)(**{**fields, "name": "pinned", "remote_address": "192.0.2.1"})
    other = type(cr)(**{**fields, "name": "other", "remote_address": "192.0.2.99"})
    only_init = type(cr)(**{**fields, "name": "init", "role": Role.INITIATOR})
    lookup = lookup_by_address([other, pinned, only_init, cr])
    assert [c.name for c in lookup("198.51.100.1", "192.0.2.1")] == ["pinned", "conn"]
    assert [c.name for c in lookup("198.51.100.1", "192.0.2.7")] == ["conn"]


# ------------------------------------------------------------------ API misuse


def test_api_misuse_raises_local_errors() -> None:
    ci, cr = make_configs()
    with pytest.raises(IkeLocalError, match="local_addr"):
        IkeSa(ci, initiator=True, local_addr=("not-an-ip", 500), remote_addr=R_ADDR)
    with pytest.raises(IkeLocalError, match="port"):
        IkeSa(ci, initiator=True, local_addr=I_ADDR, remote_addr=("198.51.100.1", 0))
    sa = IkeSa(ci, initiator=True, local_addr=I_ADDR, remote_addr=R_ADDR)
    with pytest.raises(IkeLocalError, match="ESTABLISHED"):
        sa.close_child(1234, 0.0)
    with pytest.raises(IkeLocalError, match="ESTABLISHED"):
        sa.check_liveness(0.0)
    sa.initiate(0.0)
    with pytest.raises(IkeLocalError, match="already started"):
        sa.initiate(0.0)
    resp = IkeSa(cr, initiator=False, local_addr=R_ADDR, remote_addr=I_ADDR)
    with pytest.raises(IkeLocalError, match="responder"):
        resp.initiate(0.0)
    from ipsecd.ike import Role

    fields = {n: getattr(ci, n) for n in ci.__dataclass_fields__}
    passive = type(ci)(**{**fields, "role": Role.RESPONDER})
    with pytest.raises(IkeLocalError, match="role RESPONDER"):
        IkeSa(passive, initiator=True, local_addr=I_ADDR, remote_addr=R_ADDR).initiate(0.0)
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    with pytest.raises(IkeLocalError, match="no CHILD SA"):
        h.initiator.close_child(7, h.now)


def test_abandon_before_established() -> None:
    ci, _ = make_configs()
    sa = IkeSa(ci, initiator=True, local_addr=I_ADDR, remote_addr=R_ADDR)
    sa.initiate(0.0)
    sa.delete(0.1)
    assert sa.state == IkeState.DELETED and sa.get_timer() is None
    assert type(sa.next_event()).__name__ == "IkeSaDeleted"
    sa.receive_datagram(b"anything", R_ADDR, 0.2)  # end state: ignored
    assert sa.next_event() is None


def test_failure_events_construct_positionally() -> None:
    """``IkeSaFailed(reason, notify)`` as drivers and their fakes spell it."""
    ev = IkeSaFailed("timeout", None)
    assert (ev.reason, ev.notify, ev.connection) == ("timeout", None, "")
    with pytest.raises(AttributeError):
        ev.reason = "x"  # type: ignore[misc]


def test_transition_table_is_consistent() -> None:
    """One table: every state is reachable from INITIAL, nothing leaves an end state,
    every other state can fail, and unknown (state, trigger) pairs are refused."""
    sources = {src for src, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert set(IkeState) - {IkeState.INITIAL} <= targets
    assert not (sources & END_STATES)
    for state in set(IkeState) - END_STATES:
        assert TRANSITIONS[(state, IkeTrigger.FAILED)] == IkeState.FAILED
    with pytest.raises(IkeLocalError, match="not allowed"):
        next_state(IkeState.DELETED, IkeTrigger.AUTHENTICATED)
    for (src, _trigger), dst in CHILD_TRANSITIONS.items():
        assert src not in CHILD_END_STATES and dst in ChildState


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    ci, cr = make_configs()
    with caplog.at_level(logging.INFO, logger="ipsecd.ike"):
        h = Harness(ci, [cr])
        h.start()
        h.run_until_established()
    text = caplog.text
    assert "INITIAL -> EXPECT_SA_INIT_RESPONSE" in text
    assert "EXPECT_SA_INIT_RESPONSE -> EXPECT_AUTH_RESPONSE" in text
    assert "EXPECT_AUTH_REQUEST -> ESTABLISHED" in text
    assert "EXPECT_AUTH_RESPONSE -> ESTABLISHED" in text


def test_child_failure_events_do_not_claim_children() -> None:
    ci, cr = make_configs(esp=("aes256gcm16",), r_esp=("aes128-sha256",))
    h = run(ci, cr)
    assert not events_of(h.events_i, ChildSaEstablished)
    assert not events_of(h.events_i, ChildSaDeleted)
    assert h.initiator.child_sas == ()


def test_forbidden_or_inconsistent_proposals_are_refused_in_config() -> None:
    from ipsecd.ike.config import Proposal, Transform, parse_child_proposal
    from ipsecd.ike.constants import EncrId, TransformType

    with pytest.raises(IkeLocalError, match="unknown algorithm 'md5'"):
        parse_ike_proposal("aes256-md5-modp2048")
    with pytest.raises(IkeLocalError, match="needs a DH group"):
        parse_ike_proposal("aes256-sha256")
    with pytest.raises(IkeLocalError, match="AEAD"):
        parse_ike_proposal("aes256gcm16-sha256-ecp256")
    with pytest.raises(IkeLocalError, match="AH has no encryption"):
        parse_child_proposal("aes256-sha256", ProtocolId.AH)
    good = parse_ike_proposal("aes256-sha256-ecp256")
    des = Proposal(
        (
            Transform(TransformType.ENCR, EncrId.DES3),
            *tuple(t for t in good.transforms if t.type != TransformType.ENCR),
        )
    )
    ci, _ = make_configs()
    with pytest.raises(IkeLocalError, match="DES3 is not allowed"):
        type(ci)(
            **{**{n: getattr(ci, n) for n in ci.__dataclass_fields__}, "ike_proposals": (des,)}
        )


# ------------------------------------------------------------------ the error boundary


def _forge(sender: IkeSa, exchange: int, message_id: int, inner: list) -> bytes:  # type: ignore[type-arg]
    from ipsecd.ike import codec

    flags = HeaderFlag.INITIATOR if sender.initiator else HeaderFlag.NONE
    msg = Message(sender.spi_i, sender.spi_r, exchange, int(flags), message_id)
    return codec.encrypt_sk(msg, inner, sender.keys.out_cipher)  # type: ignore[union-attr]


def _answer(h: Harness, receiver: IkeSa) -> list:  # type: ignore[type-arg]
    from ipsecd.ike.codec import decrypt_sk

    out = receiver.datagrams_to_send(h.now)
    assert len(out) == 1
    data = out[0][0]
    sender = h.initiator if receiver is not h.initiator else h.responder
    return list(decrypt_sk(data, parse_message(data), sender.keys.in_cipher))  # type: ignore[union-attr]


def test_protocol_error_in_authentic_request_is_answered_with_its_notify() -> None:
    """RFC 7296 2.5: an unknown payload marked critical rejects the message with
    UNSUPPORTED_CRITICAL_PAYLOAD (data: the payload type); the IKE SA stays up."""
    from ipsecd.ike.codec import UnknownPayload

    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    request = _forge(
        h.initiator, ExchangeType.INFORMATIONAL, 2, [UnknownPayload(200, b"x", critical=True)]
    )
    r.receive_datagram(request, I_ADDR, h.now)
    (notify,) = _answer(h, r)
    assert notify.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and notify.data == bytes(
        [200]
    )
    assert r.established and r.internal_errors == 0
    # the answer is cached like any response (RFC 7296 2.1)
    r.receive_datagram(request, I_ADDR, h.now)
    assert len(r.datagrams_to_send(h.now)) == 1


def test_unknown_non_critical_payload_is_ignored() -> None:
    from ipsecd.ike.codec import UnknownPayload

    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    request = _forge(h.initiator, ExchangeType.INFORMATIONAL, 2, [UnknownPayload(200, b"x")])
    r.receive_datagram(request, I_ADDR, h.now)
    assert _answer(h, r) == []  # an empty INFORMATIONAL response (liveness answer)


def test_failed_integrity_check_is_dropped_without_answer(caplog: pytest.LogCaptureFixture) -> None:
    """RFC 7296 2.21.2: no reply to a message whose ICV does not verify."""
    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    request = bytearray(_forge(h.initiator, ExchangeType.INFORMATIONAL, 2, []))
    request[-1] ^= 1
    with caplog.at_level(logging.INFO, logger="ipsecd.ike"):
        r.receive_datagram(bytes(request), I_ADDR, h.now)
    assert r.datagrams_to_send(h.now) == [] and r.established
    assert "does not verify" in caplog.text


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _instance(cls: type) -> Exception:
    from ipsecd.ike.errors import IkeParseError, IkeProtocolError

    if issubclass(cls, IkeParseError):
        return cls("where", 0, "problem")  # type: ignore[no-any-return]
    if issubclass(cls, IkeProtocolError) and cls.__init__ is IkeProtocolError.__init__:
        return cls("problem", notify=NotifyType.INVALID_SYNTAX)  # type: ignore[no-any-return]
    return cls("problem")  # type: ignore[no-any-return]


@pytest.mark.parametrize("answering", [False, True])
def test_error_boundary_handles_every_error_type(
    monkeypatch: pytest.MonkeyPatch, answering: bool
) -> None:
    """DESIGN convention 7: the receive boundary maps every error type (and anything
    unexpected) to a drop, a NOTIFY or a counted internal error -- never a raise."""
    from ipsecd.ike.errors import (
        IkeError,
        IkeLocalError,
        IkePeerError,
        IkeProtocolError,
    )

    kinds = list(_all_subclasses(IkeError))
    assert {IkePeerError, IkeProtocolError, IkeLocalError} <= set(kinds)
    for cls in [*kinds, RuntimeError, KeyError]:
        ci, cr = make_configs()
        h = Harness(ci, [cr])
        h.start()
        h.run_until_established()
        r = h.responder
        assert r is not None
        exc = _instance(cls)
        request = _forge(h.initiator, ExchangeType.INFORMATIONAL, 2, [])

        def boom(
            data: bytes,
            addr: object,
            now: float,
            exc: Exception = exc,
            sa: IkeSa = r,
            req: bytes = request,
        ) -> None:
            if answering:
                sa._answering = (parse_message(req), req, I_ADDR)
            raise exc

        monkeypatch.setattr(r, "_receive", boom)
        r.receive_datagram(request, I_ADDR, h.now)  # must not raise
        sent = r.datagrams_to_send(h.now)
        internal = not issubclass(cls, IkeError) or issubclass(cls, IkeLocalError)
        assert r.internal_errors == (1 if internal else 0), cls
        # RFC 7296 3.10.1: once authenticated, a syntax error is answered INVALID_SYNTAX
        answered = answering and issubclass(cls, IkeProtocolError)
        assert len(sent) == (1 if answered else 0), cls
        assert r._answering is None
