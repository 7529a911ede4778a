"""IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.18) and its collisions (2.8.2).

The new IKE SA gets new SPIs, a fresh Diffie-Hellman and keys from
SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (:meth:`IkeSa.spawn_rekeyed`); its
original initiator is the initiator of the rekey.  The CHILD SAs move to it
(:meth:`IkeSa.replace_with`), nothing changes in the kernel, and the old IKE SA is
deleted by the initiator of the rekey.

A responder busy with a CHILD SA exchange of its own, or deleting, answers
TEMPORARY_FAILURE (RFC 7296 2.25.2) and the initiator retries later.  When both peers
rekey at once, each answers the other: the new SA made by the exchange holding the
lowest of the four nonces is deleted by its initiator; the initiator of the other one
deletes the old SA, whose CHILD SAs move to the survivor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import codec
from .. import crypto as ikecrypto
from ..codec import KePayload, NoncePayload, NotifyPayload, Payload, SaPayload
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..errors import IkeInvalidKeError, IkeProtocolError
from ..negotiate import (
    check_choice,
    check_nonce,
    dh_of,
    first_dh,
    notify_name,
    offers_group,
    select_proposal,
    wire_choice,
    wire_proposals,
)
from ..states import ChildState, IkeState
from .base import Task

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = ["IkeRekey", "respond"]

log = logging.getLogger("ipsecd.ike")


class IkeRekey(Task):
    """Initiator of an IKE SA rekey."""

    exchange: ClassVar[int] = ExchangeType.CREATE_CHILD_SA
    label: ClassVar[str] = "IKE SA rekey"

    def __init__(self, group: int | None = None, retries: int = 0) -> None:
        self.group = group
        self.retries = retries
        self.spi = b""
        self.nonce = b""
        self.offer: tuple[codec.Proposal, ...] = ()
        self.dh: ikecrypto.DhKeyPair | None = None

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        group = self.group if self.group is not None else first_dh(sa.config.ike_proposals)
        assert group is not None  # IKE proposals always carry a DH group (config check)
        self.spi = sa.random_spi()
        self.nonce = sa.random_bytes(sa.config.nonce_length)
        self.offer = wire_proposals(sa.config.ike_proposals, ProtocolId.IKE, self.spi)
        self.dh = ikecrypto.dh_generate(group)
        sa.rekey_task = self
        log.info("%s: rekeying the IKE SA", sa.name)
        return [SaPayload(self.offer), NoncePayload(self.nonce), KePayload(group, self.dh.public)]

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        sa.rekey_task = None
        collision = sa.rekey_collision
        sa.rekey_collision = None
        errors = [p for p in inner if isinstance(p, NotifyPayload) and p.is_error]
        if errors:
            self._refused(sa, errors[0], collision, now)
            return
        try:
            new = self._new_sa(sa, inner, now)
        except IkeProtocolError as exc:
            log.warning("%s: unusable IKE SA rekey answer: %s", sa.name, exc.message)
            if collision is not None:
                sa.replace_with(collision, now)
            else:
                sa.defer(IkeRekey(), now)
            return
        if collision is not None:
            # RFC 7296 2.8.2: the SA made with the lowest of the four nonces is redundant
            if min(self.nonce, new.rekey_nonces[1]) < min(collision.rekey_nonces):
                log.info(
                    "%s: IKE SA rekey collision lost; deleting our redundant %s", sa.name, new.name
                )
                new.quiet = True
                new.delete(now)
                sa.replace_with(collision, now)
                return  # the winner deletes the old SA
            log.info("%s: IKE SA rekey collision won", sa.name)
            collision.quiet = True  # the peer deletes its redundant SA
        sa.replace_with(new, now)
        sa.delete(now)  # RFC 7296 2.18: the initiator of the rekey deletes the old SA

    def _new_sa(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> IkeSa:
        sa_p = next((p for p in inner if isinstance(p, SaPayload)), None)
        nonce = next((p for p in inner if isinstance(p, NoncePayload)), None)
        ke = next((p for p in inner if isinstance(p, KePayload)), None)
        if sa_p is None or nonce is None or ke is None or len(sa_p.proposals) != 1:
            raise IkeProtocolError("answer lacks SA, Nonce or KE", notify=NotifyType.INVALID_SYNTAX)
        chosen = check_choice(sa_p.proposals[0], self.offer, ProtocolId.IKE)
        spi_r = sa_p.proposals[0].spi
        if len(spi_r) != 8 or spi_r == bytes(8):
            raise IkeProtocolError(
                "new responder SPI is not 8 non-zero bytes", notify=NotifyType.INVALID_SYNTAX
            )
        assert self.dh is not None
        if dh_of(chosen) != self.dh.group or ke.dh_group != self.dh.group:
            raise IkeProtocolError(
                "responder's DH group is not the one of our KE",
                notify=NotifyType.NO_PROPOSAL_CHOSEN,
            )
        check_nonce(nonce.data, chosen)
        try:
            shared = self.dh.shared_secret(ke.data)
        except IkeInvalidKeError as exc:
            raise IkeProtocolError(exc.message, notify=NotifyType.INVALID_SYNTAX) from None
        return sa.spawn_rekeyed(
            initiator=True,
            spi_i=self.spi,
            spi_r=spi_r,
            choice=chosen,
            nonce_i=self.nonce,
            nonce_r=nonce.data,
            shared=shared,
            now=now,
        )

    def _refused(self, sa: IkeSa, n: NotifyPayload, collision: IkeSa | None, now: float) -> None:
        code = n.notify_type
        if collision is not None:
            # our rekey failed, the peer's went through: its SA takes over
            sa.replace_with(collision, now)
            return
        if code == NotifyType.INVALID_KE_PAYLOAD and len(n.data) == 2 and self.retries < 2:
            group = int.from_bytes(n.data, "big")
            if offers_group(sa.config.ike_proposals, group):
                sa.queue(IkeRekey(group, self.retries + 1), first=True)
                return
        log.warning(
            "%s: peer refused the IKE SA rekey with %s; retrying later", sa.name, notify_name(code)
        )
        sa.defer(IkeRekey(), now)

    def abort(self, sa: IkeSa, reason: str) -> None:
        if sa.rekey_task is self:
            sa.rekey_task = None


def respond(sa: IkeSa, inner: Sequence[Payload], now: float) -> list[Payload]:
    """Answer the peer's IKE SA rekey."""
    busy = sa.state != IkeState.ESTABLISHED or any(
        c.state in (ChildState.REKEYING, ChildState.DELETING) for c in sa.children
    )
    outstanding = sa.outstanding_task
    if busy or (outstanding is not None and not isinstance(outstanding, IkeRekey)):
        # RFC 7296 2.25.2: not while a CHILD SA exchange of ours is under way
        log.info("%s: peer rekeys the IKE SA while we are busy: TEMPORARY_FAILURE", sa.name)
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    sa_p = next((p for p in inner if isinstance(p, SaPayload)), None)
    nonce = next((p for p in inner if isinstance(p, NoncePayload)), None)
    ke = next((p for p in inner if isinstance(p, KePayload)), None)
    if sa_p is None or nonce is None or ke is None:
        raise IkeProtocolError(
            "IKE SA rekey request lacks SA, Nonce or KE", notify=NotifyType.INVALID_SYNTAX
        )
    choice = select_proposal(sa_p.proposals, sa.config.ike_proposals, ProtocolId.IKE, with_dh=True)
    if choice is None:
        raise IkeProtocolError(
            "no IKE proposal of the peer is acceptable", notify=NotifyType.NO_PROPOSAL_CHOSEN
        )
    offered, chosen = choice
    spi_i = offered.spi
    if len(spi_i) != 8 or spi_i == bytes(8):
        raise IkeProtocolError(
            "IKE SA rekey SPI is not 8 non-zero bytes", notify=NotifyType.INVALID_SYNTAX
        )
    group = dh_of(chosen)
    if group != ke.dh_group:
        raise IkeProtocolError(
            f"peer sent KE for group {ke.dh_group}, asking for {group}",
            notify=NotifyType.INVALID_KE_PAYLOAD,
            data=int(group or 0).to_bytes(2, "big"),
        )
    check_nonce(nonce.data, chosen)
    dh = ikecrypto.dh_generate(ke.dh_group)
    shared = dh.shared_secret(ke.data)
    spi_r = sa.random_spi()
    nonce_r = sa.random_bytes(sa.config.nonce_length)
    new = sa.spawn_rekeyed(
        initiator=False,
        spi_i=spi_i,
        spi_r=spi_r,
        choice=chosen,
        nonce_i=nonce.data,
        nonce_r=nonce_r,
        shared=shared,
        now=now,
    )
    if sa.rekey_task is not None:
        log.info("%s: IKE SA rekey collision", sa.name)
        sa.rekey_collision = new  # decided when our own answer comes (RFC 7296 2.8.2)
    else:
        sa.replace_with(new, now)  # the initiator deletes the old SA
    return [
        wire_choice(offered.num, ProtocolId.IKE, spi_r, chosen),
        NoncePayload(nonce_r),
        KePayload(dh.group, dh.public),
    ]
