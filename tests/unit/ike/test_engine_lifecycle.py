"""Regression tests for the RFC 7296 review of the engine (issue #8 "Fix first"), and
liveness, NAT upkeep and failure handling of established SAs."""

from __future__ import annotations

import dataclasses

import pytest

from ipsecd.ike import auth as auth_module
from ipsecd.ike import codec
from ipsecd.ike.codec import (
    AuthPayload,
    IdiPayload,
    KePayload,
    Message,
    NotifyPayload,
    SaPayload,
    UnknownPayload,
    build_message,
    decrypt_sk,
    parse_message,
)
from ipsecd.ike.config import Mode
from ipsecd.ike.constants import ExchangeType, HeaderFlag, IdType, NotifyType, ProtocolId
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    PeerAddressChanged,
)
from ipsecd.ike.negotiate import NON_ESP_MARKER, ZERO_SPI, wire_proposals
from ipsecd.ike.sa import IkeSa, lookup_by_address
from ipsecd.ike.states import IkeState
from ipsecd.ike.tasks import ike_auth

from .harness import I_ADDR, R_ADDR, Harness, Network, events_of, make_configs
from .pair import Pair


def established(**kw: object) -> Harness:
    ci, cr = make_configs(**kw)  # type: ignore[arg-type]
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert h.initiator.established
    return h


def forge(sender: IkeSa, exchange: int, message_id: int, inner: list[codec.Payload]) -> bytes:
    flags = HeaderFlag.INITIATOR if sender.initiator else HeaderFlag.NONE
    msg = Message(sender.spi_i, sender.spi_r, exchange, int(flags), message_id)
    assert sender.keys is not None
    return codec.encrypt_sk(msg, inner, sender.keys.out_cipher)


def answer_of(h: Harness, receiver: IkeSa) -> list[codec.Payload]:
    out = receiver.datagrams_to_send(h.now)
    assert len(out) == 1, out
    sender = h.initiator if receiver is not h.initiator else h.responder
    assert sender is not None and sender.keys is not None
    data = out[0][0]
    return list(decrypt_sk(data, parse_message(data), sender.keys.in_cipher))


# ------------------------------------------------------------------ fix-first 1


def test_refused_child_sa_is_deleted_on_the_peer() -> None:
    """The initiator asks for transport mode; a tunnel-only responder answers tunnel
    (RFC 7296 1.3.1) and installs the SA; the initiator refuses it and must delete it
    on the responder too, or the SA exists on one side only."""
    h = established(mode=Mode.TRANSPORT, r_mode=Mode.TUNNEL)
    h.run()
    r = h.responder
    assert r is not None and r.established
    assert events_of(h.events_i, ChildSaFailed)
    (created,) = events_of(h.events_r, ChildSaEstablished)
    (deleted,) = events_of(h.events_r, ChildSaDeleted)
    assert deleted.inbound_spi == created.inbound_spi and deleted.by_peer
    assert r.children == () and h.initiator.children == ()


# ------------------------------------------------------------------ fix-first 2


def test_authentic_unparseable_request_is_answered_invalid_syntax() -> None:
    """RFC 7296 3.10.1: once authenticated, a malformed request gets INVALID_SYNTAX
    (else the peer retransmits until it gives the IKE SA up)."""
    h = established()
    r = h.responder
    assert r is not None and h.initiator.keys is not None
    header = Message(
        h.initiator.spi_i,
        h.initiator.spi_r,
        ExchangeType.INFORMATIONAL,
        int(HeaderFlag.INITIATOR),
        2,
    )
    cipher = h.initiator.keys.out_cipher
    # a Delete payload whose length field lies: integrity is fine, the inner chain is not
    plaintext = b"\x00\x00\x00\x03\x03"
    first = 42  # Delete
    sk_len = 4 + cipher.sealed_length(len(plaintext))
    total = 28 + sk_len
    prefix = codec._header_bytes(header, 46, total) + bytes((first, 0)) + sk_len.to_bytes(2, "big")
    data = prefix + cipher.seal(prefix, plaintext)
    r.receive_datagram(data, I_ADDR, h.now)
    inner = answer_of(h, r)
    assert [n.notify_type for n in inner if isinstance(n, NotifyPayload)] == [
        NotifyType.INVALID_SYNTAX
    ]
    assert r.established and r.internal_errors == 0


def test_unknown_exchange_type_is_answered_invalid_syntax() -> None:
    h = established()
    r = h.responder
    assert r is not None
    r.receive_datagram(forge(h.initiator, 99, 2, []), I_ADDR, h.now)
    inner = answer_of(h, r)
    assert [n.notify_type for n in inner if isinstance(n, NotifyPayload)] == [
        NotifyType.INVALID_SYNTAX
    ]
    assert r.internal_errors == 0 and r.established


@pytest.mark.parametrize("kind", ["bare_header", "clear_auth", "skf"])
def test_unprotected_input_after_sa_init_is_a_peer_error(kind: str) -> None:
    """A message without SK after IKE_SA_INIT (a bare header, a clear IKE_AUTH from
    anyone, an SKF nobody negotiated) is unauthenticated peer input: dropped and
    counted as such, never an internal error."""
    ci, cr = make_configs()
    h = Harness(ci, [cr])
    h.start()
    h.run(
        until=lambda: h.responder is not None and h.responder.state == IkeState.EXPECT_AUTH_REQUEST
    )
    r = h.responder
    assert r is not None
    flags = int(HeaderFlag.INITIATOR)
    if kind == "bare_header":
        data = build_message(Message(r.spi_i, r.spi_r, ExchangeType.IKE_AUTH, flags, 1))
    elif kind == "clear_auth":
        clear = (IdiPayload(IdType.FQDN, b"x"), AuthPayload(2, b"y" * 32))
        data = build_message(Message(r.spi_i, r.spi_r, ExchangeType.IKE_AUTH, flags, 1, clear))
    else:
        data = build_message(
            Message(
                r.spi_i,
                r.spi_r,
                ExchangeType.IKE_AUTH,
                flags,
                1,
                (codec.SkfPayload(1, 1, 1, b"z" * 40),),
            )
        )
    r.receive_datagram(data, I_ADDR, h.now)
    assert r.internal_errors == 0 and r.peer_errors == 1
    assert r.datagrams_to_send(h.now) == []
    assert r.state == IkeState.EXPECT_AUTH_REQUEST


# ------------------------------------------------------------------ fix-first 3


def test_cookie_retry_resends_the_same_ke() -> None:
    """RFC 7296 2.6: the retry after a COOKIE is the same request with the cookie in
    front, the same KE included."""
    ci, cr = make_configs()
    h = Harness(ci, [cr], cookie_secret=b"s" * 32)
    h.start()
    h.run_until_established()
    sent = [parse_message(p.data) for p in h.wire if p.sender == "i"]
    inits = [m for m in sent if m.exchange_type == ExchangeType.IKE_SA_INIT]
    assert len(inits) == 2
    ke = [m.get(KePayload) for m in inits]
    assert ke[0] == ke[1] and ke[0] is not None
    assert inits[1].payloads[0] == NotifyPayload(NotifyType.COOKIE, inits[1].payloads[0].data)  # type: ignore[union-attr]
    assert h.initiator.established


def test_cookie_of_bad_length_is_ignored() -> None:
    ci, _ = make_configs()
    sa = IkeSa(ci, initiator=True, local_addr=I_ADDR, remote_addr=R_ADDR)
    sa.initiate(0.0)
    ((req, _),) = sa.datagrams_to_send(0.0)
    spi_i = parse_message(req).spi_i
    for cookie in (b"", b"c" * 65):
        reply = Message(
            spi_i,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            int(HeaderFlag.RESPONSE),
            0,
            (NotifyPayload(NotifyType.COOKIE, cookie),),
        )
        sa.receive_datagram(build_message(reply), R_ADDR, 0.1)
        assert sa.state == IkeState.EXPECT_SA_INIT_RESPONSE
        assert sa.datagrams_to_send(0.1) == []
    assert sa.peer_errors == 2


def test_responder_does_not_add_an_esn_transform_the_initiator_left_out() -> None:
    """RFC 7296 3.3.6: the chosen proposal holds only transform types the initiator
    offered."""
    from ipsecd.ike.config import Proposal, Transform
    from ipsecd.ike.constants import EncrId, TransformType
    from ipsecd.ike.negotiate import select_proposal

    ours = (
        Proposal(
            (Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256), Transform(TransformType.ESN, 0))
        ),
    )
    offered = wire_proposals(
        (Proposal((Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),)),),
        ProtocolId.ESP,
        b"\x01\x02\x03\x04",
    )
    got = select_proposal(offered, ours, ProtocolId.ESP, with_dh=False)
    assert got is not None
    assert TransformType.ESN not in {t.type for t in got[1].transforms}


def test_unknown_critical_payload_in_ike_sa_init_is_answered_in_clear() -> None:
    """RFC 7296 2.5: UNSUPPORTED_CRITICAL_PAYLOAD (with the type octet), even in
    IKE_SA_INIT."""
    ci, cr = make_configs()
    props = wire_proposals(ci.ike_proposals, ProtocolId.IKE, b"")
    msg = Message(
        b"\x11" * 8,
        ZERO_SPI,
        ExchangeType.IKE_SA_INIT,
        int(HeaderFlag.INITIATOR),
        0,
        (SaPayload(props), UnknownPayload(200, b"boo", critical=True)),
    )
    sa = IkeSa.accept(lookup_by_address([cr]), build_message(msg), R_ADDR, I_ADDR, 0.0)
    assert sa is not None and sa.state == IkeState.FAILED
    ((reply, addr),) = sa.datagrams_to_send(0.0)
    got = parse_message(reply)
    assert addr == I_ADDR and got.spi_r == ZERO_SPI and got.is_response
    assert got.notifies(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)[0].data == bytes([200])


# ------------------------------------------------------------------ fix-first 4


def test_ended_sa_answers_a_retransmitted_delete_from_its_cache() -> None:
    """RFC 7296 2.1: our answer to the peer's Delete was lost; the peer retransmits
    its Delete to an SA already DELETED, which still answers (the endpoint keeps
    ended SAs a while for that)."""
    ci, cr = make_configs()
    dropped: list[int] = []

    def drop_first_answer(w: object) -> bool:
        data = getattr(w, "data", b"")
        if getattr(w, "sender", "") == "b" and not dropped:
            msg = parse_message(data)
            if msg.exchange_type == ExchangeType.INFORMATIONAL:
                dropped.append(1)
                return True
        return False

    p = Pair([ci], [cr], drop=drop_first_answer)
    sa = p.initiate("a", ci)
    p.settle()
    sa.delete(p.now)
    p.settle(10)
    assert sa.state == IkeState.DELETED and p.ep["b"].sas == []
    answers = [
        w
        for w in p.wire
        if w.sender == "b" and parse_message(w.data).exchange_type == ExchangeType.INFORMATIONAL
    ]
    assert len(answers) == 2 and answers[0].data == answers[1].data
    assert p.of("a", IkeSaDeleted) and p.of("b", IkeSaDeleted)


def test_kernel_install_failure_deletes_the_child_sa_on_both_sides() -> None:
    h = established()
    r = h.responder
    assert r is not None
    child = r.children[0]
    r.child_install_failed(child.inbound_spi, "kernel lacks rfc4106(gcm(aes))", h.now)
    h.run()
    (failed,) = events_of(h.events_r, ChildSaFailed)
    assert "kernel install failed" in failed.reason
    assert events_of(h.events_i, ChildSaDeleted)[0].by_peer
    assert r.children == () and h.initiator.children == ()


def test_hard_expiry_deletes_and_starts_a_fresh_child_sa() -> None:
    """The kernel reports a hard EXPIRE (bytes) before any rekey: the SA is deleted on
    both sides and a new one negotiated, so protection resumes by itself."""
    h = established()
    old = h.initiator.children[0]
    h.initiator.child_expired(old.outbound_spi, hard=True, now=h.now)
    h.run()
    assert len(h.initiator.children) == 1 and h.initiator.children[0].inbound_spi != old.inbound_spi
    assert len(events_of(h.events_r, ChildSaEstablished)) == 2
    assert len(events_of(h.events_r, ChildSaDeleted)) == 1


def test_invalid_spi_notification_replaces_the_child_sa() -> None:
    """RFC 7296 2.21.4: the peer got ESP with an SPI it does not know."""
    h = established()
    r = h.responder
    assert r is not None
    child = h.initiator.children[0]
    note = NotifyPayload(
        NotifyType.INVALID_SPI, child.outbound_spi.to_bytes(4, "big"), ProtocolId.ESP
    )
    h.inject(forge(r, ExchangeType.INFORMATIONAL, 0, [note]), to="i")
    h.run()
    assert len(h.initiator.children) == 1
    assert h.initiator.children[0].inbound_spi != child.inbound_spi


# ------------------------------------------------------------------ identities (#16 finding 5)


def test_undecodable_identity_never_authenticates() -> None:
    """An ID_IPV4_ADDR of 3 bytes, with the right PSK, to a connection that accepts any
    peer: AUTHENTICATION_FAILED, never ESTABLISHED without its events."""
    ci, cr = make_configs(r_expects=None)
    cr = dataclasses.replace(cr, remote_id=None)
    h = Harness(ci, [cr])
    h.start()
    h.run(until=lambda: h.initiator.state == IkeState.EXPECT_AUTH_RESPONSE)
    r = h.responder
    assert r is not None
    idi = IdiPayload(IdType.IPV4_ADDR, b"\x01\x02\x03")
    octets = ike_auth._octets(h.initiator, True, codec.payload_body(idi))
    auth = AuthPayload(2, auth_module._psk_auth(h.initiator, ci.psk, octets))
    h.network.drop = lambda p: p.sender == "i"
    h.inject(forge(h.initiator, ExchangeType.IKE_AUTH, 1, [idi, auth]), to="r")
    assert r.state == IkeState.FAILED and r.internal_errors == 0
    assert not events_of(h.events_r, IkeSaEstablished)
    assert events_of(h.events_r, IkeSaFailed)[0].notify == NotifyType.AUTHENTICATION_FAILED


# ------------------------------------------------------------------ NAT upkeep


def test_nat_keepalives_when_behind_a_nat_and_idle() -> None:
    """RFC 3948 2.3: one 0xFF octet on port 4500 after nat_keepalive idle seconds."""
    ci, cr = make_configs(force_encapsulation=True)
    ci = dataclasses.replace(ci, nat_keepalive=20.0)
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    h.advance(65)
    keepalives = [p for p in h.wire if p.data == b"\xff"]
    assert len(keepalives) == 3 and all(p.sender == "i" and p.dst[1] == 4500 for p in keepalives)


def test_nat_rebinding_moves_the_peer_and_says_so() -> None:
    """RFC 7296 2.23: behind a NAT the responder follows the address of the last
    authenticated request; the agent then updates the ESP-in-UDP SAs."""
    ci, cr = make_configs()
    h = Harness(ci, [cr], nat=True)
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None and r.nat_remote
    before = r.remote_addr
    h._nat_map.clear()  # the NAT forgets the mapping: a new public port next time
    h._nat_back.clear()
    h.initiator.check_liveness(h.now)
    h.run()
    assert r.remote_addr != before and r.remote_addr[0] == before[0]
    (moved,) = events_of(h.events_r, PeerAddressChanged)
    assert moved.old_addr == before and moved.new_addr == r.remote_addr


def test_non_esp_marker_on_4500_after_float() -> None:
    h = established(force_encapsulation=True)
    h.initiator.check_liveness(h.now)
    h.run()
    last = [p for p in h.wire if p.sender == "i"][-1]
    assert last.data[:4] == NON_ESP_MARKER and last.dst[1] == 4500


# ------------------------------------------------------------------ liveness


def test_dead_peer_ends_every_child_sa() -> None:
    ci, cr = make_configs()
    ci = dataclasses.replace(ci, dpd_interval=10.0)
    p = Pair([ci], [cr])
    p.initiate("a", ci)
    p.settle()
    p.drop = lambda w: True
    p.advance(10 + ci.retransmit.give_up_after() + 2)
    failed = p.of("a", IkeSaFailed)
    assert len(failed) == 1 and "dead peer" in failed[0].reason
    assert len(p.of("a", ChildSaDeleted)) == 1
    assert p.ep["a"].sas == []


def test_network_loss_does_not_break_established_sa() -> None:
    ci, cr = make_configs()
    h = Harness(ci, [cr], network=Network(drop=lambda p: p.seq % 3 == 0))
    h.start()
    h.run(max_steps=5000)
    assert h.initiator.established
