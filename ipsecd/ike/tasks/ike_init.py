"""IKE_SA_INIT (RFC 7296 1.2): algorithms, nonces and Diffie-Hellman, in clear.

:class:`IkeInit` is the initiator's task; :func:`respond` answers a request (the
responder's first and only clear-text answer).  Both end with the IKE SA's keys
derived (RFC 7296 2.13, 2.14) and NAT detection done (RFC 7296 2.23).

Unauthenticated answers cannot end the exchange at once (RFC 7296 2.21.1: an
attacker can forge them): an error notification is remembered and the initiator
gives up only when its next retransmission is due, unless a genuine answer came in
between.  COOKIE (RFC 7296 2.6) and INVALID_KE_PAYLOAD (1.2) make the initiator start
again: the cookie retry sends the same KE (2.6), a new group a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from .. import auth, codec, fragments
from .. import crypto as ikecrypto
from ..codec import (
    CertReqPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
)
from ..config import Proposal, Transform
from ..constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId, TransformType
from ..errors import IkeInvalidKeError, IkePeerError, IkeProtocolError
from ..negotiate import (
    COOKIE_MAX,
    NATT_PORT,
    ZERO_SPI,
    Addr,
    check_choice,
    check_nonce,
    contains_choice,
    nat_hash,
    notify_name,
    one,
    select_proposal,
    wire_choice,
)
from ..signature import OUR_HASHES, decode_hash_algorithms, encode_hash_algorithms
from ..states import IkeState, IkeTrigger
from .base import Task

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = ["MAX_SA_INIT_RETRIES", "IkeInit", "InitData", "respond"]

log = logging.getLogger("ipsecd.ike")

#: How often an initiator follows INVALID_KE_PAYLOAD / COOKIE before giving up.
MAX_SA_INIT_RETRIES = 3


@dataclass(slots=True)
class InitData:
    """Material of IKE_SA_INIT that IKE_AUTH still needs (RFC 7296 2.15); dropped once
    the IKE SA is established.  Never logged."""

    offer: tuple[codec.Proposal, ...] = ()
    dh_group: int = 0
    dh: ikecrypto.DhKeyPair | None = field(default=None, repr=False)
    nonce_i: bytes = field(default=b"", repr=False)
    nonce_r: bytes = field(default=b"", repr=False)
    cookie: bytes = field(default=b"", repr=False)
    retries: int = 0
    #: The IKE_SA_INIT messages as sent (RFC 7296 2.15 signed octets).
    request: bytes = field(default=b"", repr=False)
    response: bytes = field(default=b"", repr=False)
    #: An unauthenticated error answer seen while waiting (reason, notify).
    error: tuple[str, int | None] | None = None


def nat_notifies(sa: IkeSa, spi_i: bytes, spi_r: bytes) -> list[Payload]:
    cfg = sa.config
    if not cfg.nat_traversal:
        return []
    if cfg.force_encapsulation:
        source = sa.random_bytes(20)  # pretend a NAT rewrote our source (charon encap=yes)
    else:
        source = nat_hash(spi_i, spi_r, sa.local_addr)
    return [
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, source),
        NotifyPayload(
            NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, sa.remote_addr)
        ),
    ]


def check_nat(sa: IkeSa, payloads: Sequence[Payload], spi_r: bytes, src: Addr) -> None:
    """RFC 7296 2.23: compare the peer's hashes with the addresses we see."""
    sources = [
        p.data
        for p in payloads
        if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
    ]
    dests = [
        p.data
        for p in payloads
        if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP
    ]
    cfg = sa.config
    if not cfg.nat_traversal or not sources or not dests:
        sa.nat_local = cfg.force_encapsulation
        return
    sa.nat_remote = nat_hash(sa.spi_i, spi_r, src) not in sources
    sa.nat_local = nat_hash(sa.spi_i, spi_r, sa.local_addr) not in dests or cfg.force_encapsulation
    if sa.nat_detected:
        log.info("%s: NAT detected (local %s, remote %s)", sa.name, sa.nat_local, sa.nat_remote)


def signature_notifies(sa: IkeSa) -> list[Payload]:
    """N(SIGNATURE_HASH_ALGORITHMS) when the connection uses certificates (RFC 7427 4)."""
    if not auth.uses_signatures(sa.config):
        return []
    return [NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, encode_hash_algorithms(OUR_HASHES))]


def note_peer_auth_offers(sa: IkeSa, payloads: Sequence[Payload]) -> None:
    """Remember the peer's SIGNATURE_HASH_ALGORITHMS and CERTREQ of IKE_SA_INIT."""
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS:
            sa.peer_hashes = (sa.peer_hashes or frozenset()) | decode_hash_algorithms(p.data)
        elif isinstance(p, CertReqPayload):
            sa.peer_certreq = True


class IkeInit(Task):
    """Initiator of IKE_SA_INIT."""

    exchange: ClassVar[int] = ExchangeType.IKE_SA_INIT
    label: ClassVar[str] = "IKE_SA_INIT"

    def ready(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.INITIAL, IkeState.EXPECT_SA_INIT_RESPONSE)

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        init = sa.init
        if init.dh is None or init.dh.group != init.dh_group:
            init.dh = ikecrypto.dh_generate(init.dh_group)
        payloads: list[Payload] = []
        if init.cookie:
            payloads.append(NotifyPayload(NotifyType.COOKIE, init.cookie))  # RFC 7296 2.6
        payloads += [
            SaPayload(init.offer),
            KePayload(init.dh_group, init.dh.public),
            NoncePayload(init.nonce_i),
        ]
        payloads += nat_notifies(sa, sa.spi_i, ZERO_SPI)
        payloads += fragments.supported_notify(sa.config.fragmentation)  # RFC 7383 2.3
        payloads += signature_notifies(sa)
        sa.trigger(IkeTrigger.SA_INIT_SENT)
        return payloads

    def process_init(self, sa: IkeSa, msg: Message, data: bytes, addr: Addr, now: float) -> None:
        """The (unauthenticated) answer; the request stays outstanding until it is
        consumed here."""
        init = sa.init
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and msg.get(SaPayload) is None:
            if not 1 <= len(cookie[0].data) <= COOKIE_MAX:
                raise IkePeerError(
                    f"COOKIE of {len(cookie[0].data)} bytes (RFC 7296 3.10.1: 1..64)"
                )
            self._retry(sa, "responder asked for a cookie", NotifyType.COOKIE)
            init.cookie = cookie[0].data  # the same KE goes again (RFC 7296 2.6)
            return
        invalid_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke and msg.get(SaPayload) is None:
            raw = invalid_ke[0].data
            group = int.from_bytes(raw, "big") if len(raw) == 2 else -1
            offered = {t.id for p in sa.config.ike_proposals for t in p.of_type(TransformType.DH)}
            if group not in offered or group == init.dh_group:
                self._bad_answer(
                    sa,
                    f"responder wants DH group {group}, which we did not offer",
                    NotifyType.INVALID_KE_PAYLOAD,
                )
                return
            self._retry(sa, f"responder asked for DH group {group}", NotifyType.INVALID_KE_PAYLOAD)
            init.dh_group = group
            return
        errors = [n for n in msg.notifies() if n.is_error]
        if errors:
            code = errors[0].notify_type
            self._bad_answer(sa, f"peer refused IKE_SA_INIT with {notify_name(code)}", code)
            return
        self._accept_answer(sa, msg, data, addr, now)

    def _retry(self, sa: IkeSa, why: str, notify: int) -> None:
        init = sa.init
        if init.retries >= MAX_SA_INIT_RETRIES:
            sa.window_done()
            sa.fail(f"{why} again after {init.retries} retries; giving up", notify)
            return
        init.retries += 1
        log.info("%s: %s, retrying IKE_SA_INIT", sa.name, why)
        sa.window_done()
        sa.requeue_first(self)

    def _bad_answer(self, sa: IkeSa, reason: str, notify: int | None) -> None:
        # RFC 7296 2.21.1: unauthenticated; wait for a genuine answer for one more
        # retransmission before giving up.
        log.info("%s: %s (unauthenticated; waiting for a genuine answer)", sa.name, reason)
        if sa.init.error is None:
            sa.init.error = (reason, notify)
        sa.window_final()

    def _accept_answer(self, sa: IkeSa, msg: Message, data: bytes, addr: Addr, now: float) -> None:
        init = sa.init
        sa_p, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
        if sa_p is None or ke is None or nonce is None or msg.spi_r == ZERO_SPI:
            raise IkePeerError("IKE_SA_INIT response lacks SA, KE, Nonce or SPIr")
        if len(sa_p.proposals) != 1:
            raise IkePeerError("IKE_SA_INIT response must hold exactly one proposal")
        try:
            chosen = check_choice(sa_p.proposals[0], init.offer, ProtocolId.IKE)
            group = one(chosen, TransformType.DH)
            if group is None or group.id != init.dh_group or ke.dh_group != init.dh_group:
                raise IkeProtocolError(
                    "responder chose a DH group other than the one of our KE",
                    notify=NotifyType.NO_PROPOSAL_CHOSEN,
                )
            check_nonce(nonce.data, chosen)
            assert init.dh is not None
            shared = init.dh.shared_secret(ke.data)
        except IkeInvalidKeError as exc:
            self._bad_answer(sa, f"bad IKE_SA_INIT response: {exc.message}", None)
            return
        except IkeProtocolError as exc:
            self._bad_answer(sa, f"bad IKE_SA_INIT response: {exc.message}", int(exc.notify))
            return
        sa.window_done()
        sa.spi_r = msg.spi_r
        sa.ike_choice = chosen
        init.nonce_r = nonce.data
        init.response = data
        init.dh = None
        check_nat(sa, msg.payloads, sa.spi_r, addr)
        note_peer_auth_offers(sa, msg.payloads)
        sa.peer_fragmentation = fragments.offered(msg.payloads)
        sa.derive_keys(shared)
        if sa.nat_detected:
            # RFC 7296 2.23: move to port 4500 for everything that follows
            sa.local_addr = (sa.local_addr[0], NATT_PORT)
            sa.remote_addr = (sa.remote_addr[0], NATT_PORT)

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        raise IkePeerError("IKE_SA_INIT answers are handled by process_init")

    def give_up(self, sa: IkeSa, now: float, why: str) -> None:
        if sa.init.error is not None:
            reason, notify = sa.init.error
            sa.fail(reason, notify)
            return
        super().give_up(sa, now, why)


def respond(sa: IkeSa, msg: Message, data: bytes, addr: Addr, via_natt: bool, now: float) -> None:
    """Responder: answer an IKE_SA_INIT request (errors raise IkeProtocolError, which
    the SA answers in clear where RFC 7296 2.21.1 allows it)."""
    if via_natt:
        sa.local_addr = (sa.local_addr[0], NATT_PORT)
    sa_p, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
    if sa_p is None or ke is None or nonce is None:
        raise IkeProtocolError(
            "IKE_SA_INIT request lacks SA, KE or Nonce", notify=NotifyType.INVALID_SYNTAX
        )
    choice = None
    for cfg in sa.candidates:
        choice = select_proposal(sa_p.proposals, cfg.ike_proposals, ProtocolId.IKE, with_dh=True)
        if choice is not None:
            sa.config = cfg
            break
    if choice is None:
        raise IkeProtocolError(
            "no IKE proposal of the peer is acceptable", notify=NotifyType.NO_PROPOSAL_CHOSEN
        )
    offered, chosen = choice
    group = one(chosen, TransformType.DH)
    assert group is not None
    if ke.dh_group != group.id:
        # Spare a round trip when the KE group is acceptable in the chosen proposal
        # too (RFC 7296 1.2: the responder picks any acceptable group).
        alt = Proposal(
            tuple(
                Transform(TransformType.DH, ke.dh_group) if t.type == TransformType.DH else t
                for t in chosen.transforms
            )
        )
        if any(
            t.transform_type == TransformType.DH and t.transform_id == ke.dh_group
            for t in offered.transforms
        ) and any(contains_choice(p, alt) for p in sa.config.ike_proposals):
            chosen, group = alt, Transform(TransformType.DH, ke.dh_group)
    check_nonce(nonce.data, chosen)
    if ke.dh_group != group.id:
        # RFC 7296 1.2 / 3.4: tell the initiator which group we want; no state kept
        raise IkeProtocolError(
            f"peer sent KE for group {ke.dh_group}, asking for group {group.id}",
            notify=NotifyType.INVALID_KE_PAYLOAD,
            data=int(group.id).to_bytes(2, "big"),
        )
    sa.spi_r = sa.random_spi()
    dh = ikecrypto.dh_generate(group.id)
    shared = dh.shared_secret(ke.data)  # IkeInvalidKeError: dropped (no clear INVALID_SYNTAX)
    init = sa.init
    init.dh_group = group.id
    sa.ike_choice = chosen
    init.nonce_i = nonce.data
    init.nonce_r = sa.random_bytes(sa.config.nonce_length)
    check_nat(sa, msg.payloads, ZERO_SPI, addr)
    reply: list[Payload] = [
        wire_choice(offered.num, ProtocolId.IKE, b"", chosen),
        KePayload(group.id, dh.public),
        NoncePayload(init.nonce_r),
    ]
    if sa.config.nat_traversal and msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP):
        reply += nat_notifies(sa, sa.spi_i, sa.spi_r)
    # RFC 7383 2.3: the responder answers the notification only when it was offered
    sa.peer_fragmentation = fragments.offered(msg.payloads)
    reply += fragments.supported_notify(sa.config.fragmentation and sa.peer_fragmentation)
    note_peer_auth_offers(sa, msg.payloads)
    reply += signature_notifies(sa)
    reply += auth.certreq_payloads(sa.config)  # RFC 7296 3.7: CERTREQ may go here
    raw = codec.build_message(
        Message(
            sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, int(HeaderFlag.RESPONSE), 0, tuple(reply)
        )
    )
    init.request = data
    init.response = raw
    sa.derive_keys(shared)
    sa.trigger(IkeTrigger.SA_INIT_ANSWERED)
    sa.start_half_open(now)
    sa.respond_raw(raw, data, addr)
