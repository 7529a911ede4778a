"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, authentication, the first CHILD SA.

:class:`IkeAuth` is the initiator's task; :func:`respond` answers.  Authentication is
with a pre-shared key (AUTH method 2, RFC 7296 2.15).  An identity that cannot be
decoded (e.g. an ID_IPV4_ADDR that is not 4 bytes) never authenticates: the answer is
AUTHENTICATION_FAILED before anything else.  The first CHILD SA is negotiated by the
functions of :mod:`.child_create` without a KE payload (RFC 7296 1.2): PFS groups of
the CHILD proposals are left out here; a CHILD SA refusal leaves the IKE SA up
(RFC 7296 2.21.3).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import codec
from .. import crypto as ikecrypto
from ..codec import AuthPayload, IdiPayload, IdrPayload, Message, NotifyPayload, Payload
from ..config import IkeConfig
from ..constants import AuthMethod, ExchangeType, NotifyType
from ..errors import IkeProtocolError
from ..events import ChildSaFailed
from ..negotiate import (
    Addr,
    auth_method_name,
    contains_choice,
    fmt_addr,
    identity_of,
    notify_name,
    peer_text,
    prf_id,
)
from ..states import IkeState, IkeTrigger
from . import child_create
from .base import Task

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = ["IkeAuth", "respond"]

log = logging.getLogger("ipsecd.ike")


def _octets(sa: IkeSa, initiator_side: bool, id_body: bytes) -> bytes:
    """RFC 7296 2.15: InitiatorSignedOctets / ResponderSignedOctets."""
    assert sa.keys is not None and sa.ike_choice is not None
    prf = prf_id(sa.ike_choice)
    init = sa.init
    if initiator_side:
        return init.request + init.nonce_r + ikecrypto.maced_id(prf, sa.keys.sk_pi, id_body)
    return init.response + init.nonce_i + ikecrypto.maced_id(prf, sa.keys.sk_pr, id_body)


def _psk_auth(sa: IkeSa, psk: bytes, octets: bytes) -> bytes:
    # RFC 7296 2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
    assert sa.ike_choice is not None
    return ikecrypto.psk_auth_data(prf_id(sa.ike_choice), psk, octets)


class IkeAuth(Task):
    """Initiator of IKE_AUTH (with the first CHILD SA)."""

    exchange: ClassVar[int] = ExchangeType.IKE_AUTH
    label: ClassVar[str] = "IKE_AUTH"

    def __init__(self) -> None:
        self.offer: child_create.ChildOffer | None = None

    def ready(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.EXPECT_SA_INIT_RESPONSE and sa.keys is not None

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        cfg = sa.config
        idi = IdiPayload(cfg.local_id.type, cfg.local_id.data)
        auth = _psk_auth(sa, cfg.psk, _octets(sa, True, codec.payload_body(idi)))
        offer = child_create.make_offer(sa, cfg.child, with_dh=False)
        if offer is None:
            sa.fail("no inbound SPI could be allocated for the CHILD SA", None)
            return None
        self.offer = offer
        inner: list[Payload] = [idi, AuthPayload(AuthMethod.PSK, auth)]
        hook = sa.initial_contact_hook
        if hook(sa) if hook is not None else cfg.initial_contact:
            inner.append(NotifyPayload(NotifyType.INITIAL_CONTACT))  # RFC 7296 2.4
        inner += child_create.offer_payloads(offer, ke=None, nonce=None)
        sa.trigger(IkeTrigger.AUTH_SENT)
        return inner

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        cfg = sa.config
        notifies = [p for p in inner if isinstance(p, NotifyPayload)]
        idr = next((p for p in inner if isinstance(p, IdrPayload)), None)
        auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
        if idr is None or auth is None:
            errors = [n for n in notifies if n.is_error]
            code = errors[0].notify_type if errors else NotifyType.INVALID_SYNTAX
            sa.fail(f"peer refused IKE_AUTH with {notify_name(code)}", code)
            return
        peer = identity_of(idr.id_type, idr.data)
        expected = _psk_auth(sa, cfg.psk, _octets(sa, False, codec.payload_body(idr)))
        if peer is None:
            reason = f"responder's identity cannot be decoded ({peer_text(idr.id_type, idr.data)})"
        elif cfg.remote_id is not None and cfg.remote_id != peer:
            reason = f"peer identity {peer} is not {cfg.remote_id}"
        elif auth.method != AuthMethod.PSK or not hmac.compare_digest(expected, auth.data):
            reason = "responder failed PSK authentication"
        else:
            reason = ""
        if reason:
            log.warning("%s: %s", sa.name, reason)
            # RFC 7296 2.21.2: tell the responder in a separate INFORMATIONAL exchange
            sa.send_notice([NotifyPayload(NotifyType.AUTHENTICATION_FAILED)], now)
            sa.fail(reason, NotifyType.AUTHENTICATION_FAILED)
            return
        sa.remote_id = peer
        nonce_i, nonce_r = sa.init.nonce_i, sa.init.nonce_r
        sa.mark_established(now)
        assert self.offer is not None
        try:
            spec = child_create.check_answer(
                sa, self.offer, inner, nonce_i=nonce_i, nonce_r=nonce_r, ke=None, rekey_of=None
            )
        except child_create.Refused as refused:
            child_create.refuse(sa, self.offer, refused, now)
            return
        sa.add_child(spec, now)


def _config_for_peer(sa: IkeSa, peer_id_type: int, peer_data: bytes) -> IkeConfig | None:
    assert sa.ike_choice is not None
    peer = identity_of(peer_id_type, peer_data)
    if peer is None:
        return None  # an undecodable identity never authenticates
    for cfg in sa.candidates:
        if cfg.remote_id is not None and cfg.remote_id != peer:
            continue
        if cfg is not sa.config and not any(
            contains_choice(p, sa.ike_choice) for p in cfg.ike_proposals
        ):
            continue
        return cfg
    return None


def respond(
    sa: IkeSa, msg: Message, inner: Sequence[Payload], addr: Addr, via_natt: bool, now: float
) -> list[Payload]:
    """Responder: authenticate the initiator, answer with our AUTH and the CHILD SA."""
    idi = next((p for p in inner if isinstance(p, IdiPayload)), None)
    auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
    if idi is None or auth is None:
        raise IkeProtocolError(
            "IKE_AUTH request lacks IDi or AUTH", notify=NotifyType.INVALID_SYNTAX
        )
    who = peer_text(idi.id_type, idi.data)
    cfg = _config_for_peer(sa, idi.id_type, idi.data)
    if cfg is None:
        raise IkeProtocolError(
            f"no connection accepts peer identity {who}", notify=NotifyType.AUTHENTICATION_FAILED
        )
    expected = _psk_auth(sa, cfg.psk, _octets(sa, True, codec.payload_body(idi)))
    if auth.method != AuthMethod.PSK or not hmac.compare_digest(expected, auth.data):
        # DESIGN convention 4: authentication failures drop (no SA kept) and log
        why = (
            "its AUTH does not match our pre-shared key"
            if auth.method == AuthMethod.PSK
            else f"auth method {auth_method_name(auth.method)} is not supported (PSK only)"
        )
        log.warning(
            "%s: authentication of peer %s from %s failed: %s", sa.name, who, fmt_addr(addr), why
        )
        raise IkeProtocolError(
            "peer failed authentication", notify=NotifyType.AUTHENTICATION_FAILED
        )
    peer = identity_of(idi.id_type, idi.data)
    assert peer is not None
    sa.config = cfg
    sa.remote_id = peer
    sa.peer_initial_contact = any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT for p in inner
    )
    idr = IdrPayload(cfg.local_id.type, cfg.local_id.data)
    my_auth = _psk_auth(sa, cfg.psk, _octets(sa, False, codec.payload_body(idr)))
    reply: list[Payload] = [idr, AuthPayload(AuthMethod.PSK, my_auth)]
    try:
        child_payloads, spec = child_create.respond_child(
            sa,
            inner,
            [cfg.child],
            nonce_i=sa.init.nonce_i,
            nonce_r=sa.init.nonce_r,
            ke=None,
            with_dh=False,
        )
    except IkeProtocolError as exc:
        sa.mark_established(now)
        log.warning("%s: CHILD SA refused: %s", sa.name, exc.message)
        sa.emit(
            ChildSaFailed(exc.message, int(exc.notify), connection=cfg.name, child=cfg.child.name)
        )
        return [*reply, NotifyPayload(exc.notify, exc.data)]
    sa.mark_established(now)
    sa.add_child(spec, now)
    return reply + child_payloads
