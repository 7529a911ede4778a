"""INFORMATIONAL exchanges (RFC 7296 1.4): Delete, liveness, error notifications.

Tasks: :class:`ChildDelete` (a CHILD SA we own), :class:`SpiDelete` (an SA only the
peer installed: a refused or redundant one), :class:`IkeDelete`, :class:`Liveness`
(an empty request: dead peer detection, RFC 7296 2.4).  :func:`respond` answers the
peer's requests; :func:`after_answer` ends the IKE SA once the answer to its Delete
is queued.

RFC 7296 1.4.1: a Delete lists the SPIs the *sender* expects in inbound packets; the
answer lists ours for the same pairs, except for pairs we are deleting ourselves
("it deletes the outgoing SAs while processing the request and the incoming SAs while
processing the response").  When the peer deletes a CHILD SA that a rekey replaced,
the replacement's outbound half becomes active first (docs/ike.md "Rekeying").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from ..child import ChildSa
from ..codec import DeletePayload, NotifyPayload, Payload
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..events import ChildSaOutboundActivated, ChildSaRekeyed
from ..negotiate import notify_name
from ..states import ChildState, ChildTrigger, IkeState, IkeTrigger
from .base import Task

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = [
    "ChildDelete",
    "IkeDelete",
    "Liveness",
    "SpiDelete",
    "activate_successor",
    "after_answer",
    "respond",
]

log = logging.getLogger("ipsecd.ike")


def _spis(p: DeletePayload) -> list[int]:
    return [int.from_bytes(raw, "big") for raw in p.spis] if p.spi_size == 4 else []


def activate_successor(sa: IkeSa, old: ChildSa) -> None:
    """The old SA of a rekey goes: the one that replaces it sends from now on."""
    new_spi = old.replaced_by
    if new_spi is None and old.collision is not None:
        new_spi = old.collision.inbound_spi  # the peer's rekey survived the collision
        old.replaced_by = new_spi
    new = sa._children.get(new_spi) if new_spi is not None else None
    if new is None or not new.alive or new.outbound_active:
        return
    new.outbound_active = True
    sa.emit(
        ChildSaRekeyed(
            old.inbound_spi,
            old.outbound_spi,
            new.inbound_spi,
            new.outbound_spi,
            connection=sa.config.name,
        )
    )
    sa.emit(ChildSaOutboundActivated(new.inbound_spi, new.outbound_spi, connection=sa.config.name))


class ChildDelete(Task):
    """Delete one of our CHILD SAs (RFC 7296 1.4.1)."""

    exchange: ClassVar[int] = ExchangeType.INFORMATIONAL
    label: ClassVar[str] = "CHILD SA Delete"

    def __init__(self, child: ChildSa) -> None:
        self.child = child

    def ready(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED)

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        child = self.child
        if not child.alive or child.state == ChildState.DELETING:
            return None
        child.trigger(ChildTrigger.DELETE_SENT, sa.name)
        log.info("%s: deleting CHILD SA %08x/%08x", sa.name, child.inbound_spi, child.outbound_spi)
        return [DeletePayload(child.protocol, 4, (child.inbound_spi.to_bytes(4, "big"),))]

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        child = self.child
        activate_successor(sa, child)
        replaced = child.replaced_by is not None
        sa.child_gone(
            child, by_peer=False, reason="replaced (rekeyed)" if replaced else "deleted locally"
        )


class SpiDelete(Task):
    """Delete an SA only the peer has (we never installed it)."""

    exchange: ClassVar[int] = ExchangeType.INFORMATIONAL
    label: ClassVar[str] = "Delete of a redundant CHILD SA"

    def __init__(self, protocol: int, inbound_spi: int) -> None:
        self.protocol = protocol
        self.spi = inbound_spi

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        log.info("%s: deleting the peer's copy of CHILD SA %08x", sa.name, self.spi)
        return [DeletePayload(self.protocol, 4, (self.spi.to_bytes(4, "big"),))]

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        return None


class IkeDelete(Task):
    """Delete the IKE SA and with it its CHILD SAs (RFC 7296 1.4.1)."""

    exchange: ClassVar[int] = ExchangeType.INFORMATIONAL
    label: ClassVar[str] = "IKE SA Delete"

    def ready(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED)

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        sa.trigger(IkeTrigger.DELETE_SENT)
        return [DeletePayload(ProtocolId.IKE, 0)]

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        sa.end(IkeTrigger.DELETED, by_peer=False, reason="deleted locally")

    def give_up(self, sa: IkeSa, now: float, why: str) -> None:
        # RFC 7296 1.4.1: the SA is gone anyway
        log.info("%s: no answer to our Delete; IKE SA deleted anyway", sa.name)
        sa.end(IkeTrigger.DELETED, by_peer=False, reason="deleted locally (peer did not answer)")


class Liveness(Task):
    """An empty INFORMATIONAL request (RFC 7296 1.4, 2.4)."""

    exchange: ClassVar[int] = ExchangeType.INFORMATIONAL
    label: ClassVar[str] = "liveness check"

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        return []

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        return None

    def give_up(self, sa: IkeSa, now: float, why: str) -> None:
        sa.fail(f"dead peer (RFC 7296 2.4): {why}", None)


def respond(sa: IkeSa, inner: Sequence[Payload], now: float) -> list[Payload]:
    """Answer an INFORMATIONAL request."""
    answer: dict[int, list[bytes]] = {}
    delete_ike = False
    for p in inner:
        if isinstance(p, DeletePayload):
            if p.protocol_id == ProtocolId.IKE:
                delete_ike = True
                continue
            if p.protocol_id not in (ProtocolId.ESP, ProtocolId.AH):
                continue
            for spi in _spis(p):
                child = sa.find_child_by_outbound(p.protocol_id, spi)
                if child is None:
                    continue
                if child.state != ChildState.DELETING:
                    answer.setdefault(p.protocol_id, []).append(
                        child.inbound_spi.to_bytes(4, "big")
                    )
                activate_successor(sa, child)
                replaced = child.replaced_by is not None
                sa.child_gone(
                    child,
                    by_peer=True,
                    reason="replaced (rekeyed)" if replaced else "deleted by peer",
                )
        elif isinstance(p, NotifyPayload):
            _notice(sa, p, now)
    if delete_ike:
        return []  # RFC 7296 1.4.1: the answer to an IKE SA Delete is empty
    return [DeletePayload(proto, 4, tuple(spis)) for proto, spis in answer.items()]


def _notice(sa: IkeSa, n: NotifyPayload, now: float) -> None:
    from .child_create import ChildCreate

    if n.notify_type == NotifyType.INVALID_SPI:
        # RFC 7296 2.21.4: the peer got ESP/AH with an SPI it does not know
        raw = n.spi if len(n.spi) == 4 else n.data[:4]
        child = (
            sa.find_child_by_outbound(n.protocol_id or ProtocolId.ESP, int.from_bytes(raw, "big"))
            if len(raw) == 4
            else None
        )
        if child is not None and child.state == ChildState.INSTALLED:
            log.warning(
                "%s: peer does not know CHILD SA %08x (INVALID_SPI); replacing it",
                sa.name,
                child.outbound_spi,
            )
            sa.queue(ChildDelete(child), first=True)
            sa.queue(ChildCreate(child.config))
        return
    if n.is_error and n.notify_type != NotifyType.AUTHENTICATION_FAILED:
        log.warning("%s: peer reports %s", sa.name, notify_name(n.notify_type))


def after_answer(sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
    """After the answer is queued: end the IKE SA the peer deleted (or that failed)."""
    if any(isinstance(p, DeletePayload) and p.protocol_id == ProtocolId.IKE for p in inner):
        if sa.rekey_collision is not None and sa.state == IkeState.ESTABLISHED:
            # RFC 7296 2.8.2: the peer won the IKE SA rekey collision and deletes the
            # old SA before our own answer came: its new SA takes the CHILD SAs.
            sa.replace_with(sa.rekey_collision, now)
            sa.rekey_collision = None
        log.info("%s: peer deleted the IKE SA", sa.name)
        sa.end(IkeTrigger.DELETED, by_peer=True, reason="deleted by peer")
        return
    if any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.AUTHENTICATION_FAILED
        for p in inner
    ):
        # RFC 7296 2.21.2: the initiator rejected our authentication
        sa.fail("peer reports AUTHENTICATION_FAILED", NotifyType.AUTHENTICATION_FAILED)
