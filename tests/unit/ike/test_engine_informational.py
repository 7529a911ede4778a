"""INFORMATIONAL exchanges: Delete of the IKE SA and of CHILD SAs (RFC 7296 1.4.1),
liveness checks, the window of one (2.3), and keys kept out of reprs and logs."""

from __future__ import annotations

import logging

import pytest

from ipsecd.ike import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaFailed,
    IkeState,
)
from ipsecd.ike.codec import DeletePayload, parse_message
from ipsecd.ike.constants import ExchangeType, ProtocolId

from .harness import PSK, Harness, Network, events_of, make_configs


def established(**kw: object) -> Harness:
    ci, cr = make_configs(**kw)  # type: ignore[arg-type]
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    assert h.initiator.established
    return h


def _informational(h: Harness) -> list[tuple[int, bool, str]]:
    out = []
    for p in h.wire:
        m = parse_message(p.data)
        if m.exchange_type == ExchangeType.INFORMATIONAL:
            out.append((m.message_id, m.is_response, p.sender))
    return out


@pytest.mark.parametrize("who", ["i", "r"])
def test_delete_ike_sa(who: str) -> None:
    h = established()
    r = h.responder
    assert r is not None
    deleter, other = (h.initiator, r) if who == "i" else (r, h.initiator)
    deleter.delete(h.now)
    assert deleter.state == IkeState.EXPECT_DELETE_RESPONSE
    h.run()
    assert h.initiator.state == IkeState.DELETED and r.state == IkeState.DELETED
    mine = h.events_i if who == "i" else h.events_r
    theirs = h.events_r if who == "i" else h.events_i
    assert [type(e).__name__ for e in mine[-2:]] == ["ChildSaDeleted", "IkeSaDeleted"]
    assert [type(e).__name__ for e in theirs[-2:]] == ["ChildSaDeleted", "IkeSaDeleted"]
    assert not events_of(mine, IkeSaDeleted)[0].by_peer
    assert events_of(theirs, IkeSaDeleted)[0].by_peer
    assert events_of(theirs, ChildSaDeleted)[0].by_peer
    # one INFORMATIONAL request/response pair; the requester's message ID
    first_id = 2 if who == "i" else 0
    assert _informational(h) == [
        (first_id, False, who),
        (first_id, True, "r" if who == "i" else "i"),
    ]
    assert deleter.get_timer() is None and other.get_timer() is None


def test_delete_without_answer_still_deletes() -> None:
    h = established()
    h.network.drop = lambda p: True
    h.initiator.delete(h.now)
    h.run()
    assert h.initiator.state == IkeState.DELETED
    assert events_of(h.events_i, IkeSaDeleted)[0].by_peer is False
    retries = h.initiator.config.retransmit.max_retransmits
    assert len([p for p in h.wire if p.sender == "i"]) == 2 + 1 + retries


@pytest.mark.parametrize("who", ["i", "r"])
def test_close_child(who: str) -> None:
    h = established()
    r = h.responder
    assert r is not None
    closer = h.initiator if who == "i" else r
    spi = closer.child_sas[0].inbound_spi
    closer.close_child(spi, h.now)
    closer.close_child(spi, h.now)  # a second call while deleting does nothing
    h.run()
    di = events_of(h.events_i, ChildSaDeleted)
    dr = events_of(h.events_r, ChildSaDeleted)
    assert len(di) == len(dr) == 1
    assert di[0].inbound_spi == dr[0].outbound_spi and di[0].outbound_spi == dr[0].inbound_spi
    assert (di[0].by_peer, dr[0].by_peer) == ((False, True) if who == "i" else (True, False))
    assert h.initiator.child_sas == () and r.child_sas == ()
    assert h.initiator.established and r.established
    # the Delete names the sender's inbound SPI; the answer names the peer's (1.4.1)
    req, resp = [
        p for p in h.wire if parse_message(p.data).exchange_type == ExchangeType.INFORMATIONAL
    ]
    sender = h.initiator if who == "i" else r
    receiver = r if who == "i" else h.initiator
    assert _delete_spis(sender, req.data) == [spi]
    assert _delete_spis(receiver, resp.data) == [  # the receiver of the Delete answers
        di[0].outbound_spi if who == "i" else di[0].inbound_spi
    ]


def _delete_spis(author: object, data: bytes) -> list[int]:
    """The ESP SPIs in the Delete payloads of ``data``, a message ``author`` sent
    (opened with the author's sending keys, i.e. what the receiver decrypts with)."""
    from ipsecd.ike.codec import decrypt_sk

    cipher = author.keys.out_cipher  # type: ignore[attr-defined]
    inner = decrypt_sk(data, parse_message(data), cipher)
    spis = []
    for p in inner:
        if isinstance(p, DeletePayload):
            assert p.protocol_id == ProtocolId.ESP
            spis += [int.from_bytes(s, "big") for s in p.spis]
    return spis


def test_liveness_check_answered() -> None:
    h = established()
    h.initiator.check_liveness(h.now)
    h.run()
    assert _informational(h) == [(2, False, "i"), (2, True, "r")]
    # no retransmission pending: the next timer is the first rekey, most of an hour away
    timer = h.initiator.get_timer()
    assert h.initiator.established and timer is not None and timer > h.now + 2900


def test_liveness_check_without_peer_fails_the_sa() -> None:
    h = established()
    h.network.drop = lambda p: True
    h.initiator.check_liveness(h.now)
    h.run()
    assert h.initiator.state == IkeState.FAILED
    names = [type(e).__name__ for e in h.events_i[-2:]]
    assert names == ["ChildSaDeleted", "IkeSaFailed"]
    assert "liveness check" in events_of(h.events_i, IkeSaFailed)[0].reason


def test_window_of_one_queues_requests() -> None:
    """RFC 7296 2.3: with one request outstanding, the next waits for its answer."""
    h = established()
    spi = h.initiator.child_sas[0].inbound_spi
    h.initiator.check_liveness(h.now)
    h.initiator.close_child(spi, h.now)
    h.initiator.delete(h.now)  # the queued Delete of the CHILD SA is superseded
    h.flush()
    # only the first request is on its way
    assert [(m, resp) for m, resp, _ in _informational(h)] == [(2, False)]
    h.run()
    assert [(m, resp) for m, resp, _ in _informational(h)] == [
        (2, False),
        (2, True),
        (3, False),
        (3, True),
    ]
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.DELETED and r.state == IkeState.DELETED


def test_both_sides_request_at_once() -> None:
    """Each side runs its own message-ID sequence: simultaneous requests both complete."""
    h = established()
    r = h.responder
    assert r is not None
    h.initiator.check_liveness(h.now)
    r.check_liveness(h.now)
    h.run()
    info = _informational(h)
    assert sorted(info) == sorted(
        [(2, False, "i"), (0, False, "r"), (2, True, "r"), (0, True, "i")]
    )
    assert h.initiator.established and r.established


def test_simultaneous_child_deletes() -> None:
    h = established()
    r = h.responder
    assert r is not None
    h.initiator.close_child(h.initiator.child_sas[0].inbound_spi, h.now)
    r.close_child(r.child_sas[0].inbound_spi, h.now)
    h.run()
    assert len(events_of(h.events_i, ChildSaDeleted)) == 1
    assert len(events_of(h.events_r, ChildSaDeleted)) == 1
    assert h.initiator.established and r.established
    assert h.initiator.internal_errors == 0 == r.internal_errors


def test_delete_waits_for_outstanding_request_with_loss() -> None:
    h = established()
    drops = iter([True, False, False, False, False, False, False])
    h.network.drop = lambda p: next(drops, False)
    h.initiator.check_liveness(h.now)
    h.initiator.delete(h.now)
    h.run()
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.DELETED and r.state == IkeState.DELETED
    assert events_of(h.events_r, IkeSaDeleted)[0].by_peer


# ------------------------------------------------------------------ secrets


def test_keys_and_psk_never_reach_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ipsecd"):
        ci, cr = make_configs(esp=("aes256-sha256",), ike=("aes256-sha256-modp2048",))
        h = Harness(ci, [cr], network=Network(drop=lambda p: p.seq == 2))
        h.start()
        h.run_until_established()
        r = h.responder
        assert r is not None
        h.initiator.close_child(h.initiator.child_sas[0].inbound_spi, h.now)
        h.run()
        r.delete(h.now)
        h.run()
        # a failed authentication too
        bad_i, bad_r = make_configs(psk=b"wrong wrong wrong", r_psk=PSK)
        h2 = Harness(bad_i, [bad_r])
        h2.start()
        h2.run()
    child = events_of(h.events_i, ChildSaEstablished)[0]
    secrets = [
        PSK,
        child.inbound_encryption_key,
        child.outbound_encryption_key,
        child.inbound_integrity_key,
        child.outbound_integrity_key,
        h.initiator.keys.sk_d,  # type: ignore[union-attr]
        h.initiator.keys.sk_pi,  # type: ignore[union-attr]
        h.initiator.keys.out_cipher.encr_key,  # type: ignore[union-attr]
        h.initiator.keys.out_cipher.integ_key,  # type: ignore[union-attr]
    ]
    texts = [
        caplog.text,
        repr(ci),
        repr(cr),
        repr(h.initiator),
        repr(r),
        *(repr(e) for e in h.events_i + h.events_r + h2.events_i + h2.events_r),
        *(str(e) for e in h.events_i + h.events_r),
        repr(h.initiator.keys),
    ]
    assert caplog.text  # something was logged at all
    for secret in secrets:
        assert len(secret) >= 16
        for text in texts:
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text
            assert secret.decode("latin-1") not in text


def _with(cfg: object, **changes: object) -> object:
    import dataclasses

    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def test_dead_peer_detection_probes_idle_sa_and_detects_death() -> None:
    """RFC 7296 2.4: nothing heard for dpd_interval -> empty INFORMATIONAL; a dead peer
    (no answer after the retransmissions) fails the IKE SA and its CHILD SAs."""
    ci, cr = make_configs()
    h = Harness(_with(ci, dpd_interval=30.0), [cr])  # type: ignore[arg-type]
    h.start()
    h.run_until_established()
    h.advance(29)
    assert _informational(h) == []
    h.advance(2)
    assert _informational(h) == [(2, False, "i"), (2, True, "r")]
    assert h.initiator.established
    # the next probe comes 30 s after the last answer, not earlier
    h.advance(29)
    assert len(_informational(h)) == 2
    h.network.drop = lambda p: True  # the peer dies
    h.advance(2 + ci.retransmit.give_up_after() + 1)
    assert h.initiator.state == IkeState.FAILED
    assert [type(e).__name__ for e in h.events_i[-2:]] == ["ChildSaDeleted", "IkeSaFailed"]


def test_peer_traffic_postpones_dead_peer_detection() -> None:
    ci, cr = make_configs()
    h = Harness(_with(ci, dpd_interval=30.0), [cr])  # type: ignore[arg-type]
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    h.advance(20)
    r.check_liveness(h.now)  # the peer talks to us: we heard from it
    h.advance(20)
    assert [s for _, _, s in _informational(h)] == ["r", "i"]
    h.advance(11)
    assert [s for _, _, s in _informational(h)] == ["r", "i", "i", "r"]


@pytest.mark.parametrize("flag", [False, True])
def test_initial_contact_reaches_the_responder(flag: bool) -> None:
    ci, cr = make_configs()
    h = Harness(_with(ci, initial_contact=flag), [cr])  # type: ignore[arg-type]
    h.start()
    h.run_until_established()
    from ipsecd.ike import IkeSaEstablished

    assert events_of(h.events_r, IkeSaEstablished)[0].initial_contact is flag
    assert events_of(h.events_i, IkeSaEstablished)[0].initial_contact is False
