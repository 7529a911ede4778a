"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, authentication, the first CHILD SA.

:class:`IkeAuth` is the initiator's task; :func:`respond` answers.  Authentication is
with a pre-shared key or certificates, per direction (:mod:`..auth`: AUTH payloads,
CERT and CERTREQ, the check of the peer's chain and signature).  An identity that
cannot be decoded (e.g. an ID_IPV4_ADDR that is not 4 bytes) never authenticates: the
answer is AUTHENTICATION_FAILED before anything else.  The first CHILD SA is negotiated by the
functions of :mod:`.child_create` without a KE payload (RFC 7296 1.2): PFS groups of
the CHILD proposals are left out here; a CHILD SA refusal leaves the IKE SA up
(RFC 7296 2.21.3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import auth, codec
from .. import crypto as ikecrypto
from ..codec import (
    AuthPayload,
    CertReqPayload,
    IdiPayload,
    IdrPayload,
    Message,
    NotifyPayload,
    Payload,
    TsiPayload,
    TsrPayload,
)
from ..config import IkeConfig
from ..constants import AuthMethod, ExchangeType, NotifyType
from ..errors import IkeProtocolError
from ..events import ChildSaFailed
from ..negotiate import (
    Addr,
    contains_choice,
    fmt_addr,
    from_wire_ts,
    identity_of,
    narrow_selectors,
    notify_name,
    peer_text,
    prf_id,
)
from ..signature import NoCommonScheme
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


def _with_auth(first: Payload, ours: list[Payload], certreq: list[Payload]) -> list[Payload]:
    """RFC 7296 1.2 order: ID, [CERT...], [CERTREQ], AUTH."""
    return [first, *ours[:-1], *certreq, ours[-1]]


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
        octets = _octets(sa, True, codec.payload_body(idi))
        try:
            ours = auth.our_auth(sa, cfg, octets, peer_asked=sa.peer_certreq)
        except NoCommonScheme as exc:
            log.warning("%s: cannot authenticate to the peer: %s", sa.name, exc.message)
            sa.fail(exc.message, NotifyType.AUTHENTICATION_FAILED)
            return None
        offer = child_create.make_offer(sa, cfg.child, with_dh=False)
        if offer is None:
            sa.fail("no inbound SPI could be allocated for the CHILD SA", None)
            return None
        self.offer = offer
        inner = _with_auth(idi, ours, auth.certreq_payloads(cfg))
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
        if idr is None or not any(isinstance(p, AuthPayload) for p in inner):
            errors = [n for n in notifies if n.is_error]
            code = errors[0].notify_type if errors else NotifyType.INVALID_SYNTAX
            sa.fail(f"peer refused IKE_AUTH with {notify_name(code)}", code)
            return
        peer = identity_of(idr.id_type, idr.data)
        reason = ""
        if peer is None:
            reason = f"responder's identity cannot be decoded ({peer_text(idr.id_type, idr.data)})"
        elif cfg.remote_id is not None and not cfg.remote_id.matches(peer):
            reason = f"peer identity {peer} is not {cfg.remote_id}"
        else:
            try:
                sa.peer_auth = auth.check_peer(
                    sa, cfg, peer, inner, _octets(sa, False, codec.payload_body(idr))
                )
            except IkeProtocolError as exc:
                reason = f"responder failed authentication: {exc.message}"
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


def _configs_for_peer(
    sa: IkeSa, peer_id_type: int, peer_data: bytes, inner: Sequence[Payload]
) -> list[IkeConfig]:
    """The connections that may answer this IKE_AUTH request, best first.

    Candidates are the connections for the address pair that accept the initiator's
    identity and the IKE proposal chosen in IKE_SA_INIT (which could only look at
    addresses and proposals: RFC 7296 2.15 lets the responder pick its connection by
    identity at IKE_AUTH).  Two connections between the same two addresses (docs/ike.md
    "Choosing the connection") are told apart by what the request says: its AUTH method
    (a pre-shared key or a signature), the identity it wants us to have (IDr, if sent)
    and its traffic selectors (the first CHILD SA).  The order among equals is the
    candidates' own; the caller then authenticates with each in turn."""
    assert sa.ike_choice is not None
    peer = identity_of(peer_id_type, peer_data)
    if peer is None:
        return []  # an undecodable identity never authenticates
    fitting = [
        cfg
        for cfg in sa.candidates
        if (cfg.remote_id is None or cfg.remote_id.matches(peer))
        and (cfg is sa.config or any(contains_choice(p, sa.ike_choice) for p in cfg.ike_proposals))
    ]
    auth_p = next((p for p in inner if isinstance(p, AuthPayload)), None)
    idr = next((p for p in inner if isinstance(p, IdrPayload)), None)
    wanted = identity_of(idr.id_type, idr.data) if idr is not None else None
    tsi = next((p for p in inner if isinstance(p, TsiPayload)), None)
    tsr = next((p for p in inner if isinstance(p, TsrPayload)), None)
    ts_i = from_wire_ts(tsi.selectors) if tsi is not None else None
    ts_r = from_wire_ts(tsr.selectors) if tsr is not None else None

    def fit(cfg: IkeConfig) -> tuple[bool, bool, bool]:
        psk = auth_p is not None and auth_p.method == AuthMethod.PSK
        method = psk == (cfg.trust is None)
        me = wanted is None or cfg.local_id.matches(wanted)
        ts = (
            ts_i is None
            or ts_r is None
            or bool(
                narrow_selectors(ts_i, cfg.child.remote_ts)
                and narrow_selectors(ts_r, cfg.child.local_ts)
            )
        )
        return method, me, ts

    return sorted(fitting, key=fit, reverse=True)  # stable: equals keep their order


def respond(
    sa: IkeSa, msg: Message, inner: Sequence[Payload], addr: Addr, via_natt: bool, now: float
) -> list[Payload]:
    """Responder: authenticate the initiator, answer with our AUTH and the CHILD SA."""
    idi = next((p for p in inner if isinstance(p, IdiPayload)), None)
    if idi is None or not any(isinstance(p, AuthPayload) for p in inner):
        raise IkeProtocolError(
            "IKE_AUTH request lacks IDi or AUTH", notify=NotifyType.INVALID_SYNTAX
        )
    who = peer_text(idi.id_type, idi.data)
    ranked = _configs_for_peer(sa, idi.id_type, idi.data, inner)
    if not ranked:
        raise IkeProtocolError(
            f"no connection accepts peer identity {who}", notify=NotifyType.AUTHENTICATION_FAILED
        )
    peer = identity_of(idi.id_type, idi.data)
    assert peer is not None
    octets_i = _octets(sa, True, codec.payload_body(idi))
    failed: IkeProtocolError | None = None
    for cfg in ranked:  # bounded: the connections between these two addresses
        try:
            peer_auth = auth.check_peer(sa, cfg, peer, inner, octets_i)
            break
        except IkeProtocolError as exc:
            if exc.notify != NotifyType.AUTHENTICATION_FAILED:
                raise
            failed = failed or exc  # the best fitting connection's reason is the one told
    else:
        assert failed is not None
        # DESIGN convention 4: authentication failures drop (no SA kept) and log;
        # the reason stays here (logged, in IkeSaFailed), the peer gets the code
        raise auth.AuthFailed(
            f"authentication of peer {who} from {fmt_addr(addr)} failed: {failed.message}"
        ) from None
    sa.config = cfg
    sa.remote_id = peer
    sa.peer_auth = peer_auth
    sa.peer_certreq = sa.peer_certreq or any(isinstance(p, CertReqPayload) for p in inner)
    sa.peer_initial_contact = any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT for p in inner
    )
    idr = IdrPayload(cfg.local_id.type, cfg.local_id.data)
    octets = _octets(sa, False, codec.payload_body(idr))
    try:
        ours = auth.our_auth(sa, cfg, octets, peer_asked=sa.peer_certreq)
    except NoCommonScheme as exc:
        log.warning("%s: cannot authenticate to peer %s: %s", sa.name, who, exc.message)
        raise
    reply: list[Payload] = _with_auth(idr, ours, [])
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
