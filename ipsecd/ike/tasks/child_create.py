"""CHILD SA negotiation: in IKE_AUTH (RFC 7296 1.2), new ones and rekeys with
CREATE_CHILD_SA (1.3.1, 1.3.3), collisions (2.8.1, 2.25.1).

* :func:`make_offer` / :func:`offer_payloads` / :func:`check_answer` — the initiator's
  halves, shared by IKE_AUTH and :class:`ChildCreate`;
* :func:`respond_child` — the responder's half, shared by IKE_AUTH and :func:`respond`;
* :class:`ChildCreate` — the task for a new CHILD SA or a rekey (``rekey=old``);
* :func:`respond` — answers CREATE_CHILD_SA (an IKE SA rekey goes to
  :mod:`.ike_rekey`).

Make-before-break (RFC 7296 2.8, docs/ike.md "Rekeying"): the rekey *responder*
creates the new SA with its outbound half inactive; it activates it, and drops the old
SA, when the initiator deletes the old one.  The *initiator* installs both halves of
the new SA as soon as the answer arrives, then deletes the old one.  The old inbound
half stays in the kernel for a short grace (the agent's job), so no packet in flight
is lost.

Collisions (RFC 7296 2.8.1): when both peers rekey the same CHILD SA, each answers the
other; of the two new SAs, the one made by the exchange holding the lowest of the
four nonces is redundant and deleted by its initiator; the other one's initiator
deletes the old SA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from .. import codec
from .. import crypto as ikecrypto
from ..child import ChildSa, ChildSpec
from ..codec import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
)
from ..config import ChildConfig, Mode, Proposal, TrafficSelector, Transform
from ..constants import ExchangeType, NotifyType, ProtocolId, TransformType
from ..errors import IkeInvalidKeError, IkeProtocolError
from ..events import ChildSaFailed, ChildSaRekeyed
from ..negotiate import (
    check_choice,
    check_nonce,
    dh_of,
    first_dh,
    from_wire_ts,
    narrow_selectors,
    notify_name,
    offers_group,
    select_proposal,
    to_wire_ts,
    wire_choice,
    wire_proposals,
    within,
)
from ..states import ChildState, ChildTrigger, IkeState
from .base import Task

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = [
    "ChildCreate",
    "ChildOffer",
    "Refused",
    "check_answer",
    "make_offer",
    "offer_payloads",
    "respond",
    "respond_child",
]

log = logging.getLogger("ipsecd.ike")

#: INVALID_KE_PAYLOAD answers followed before a CREATE_CHILD_SA gives up.
MAX_KE_RETRIES = 2


@dataclass(slots=True)
class ChildOffer:
    """What we proposed for one CHILD SA."""

    config: ChildConfig
    spi: int
    proposals: tuple[codec.Proposal, ...]
    transport: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    dh: ikecrypto.DhKeyPair | None = field(default=None, repr=False)


class Refused(Exception):
    """The answer to our CHILD SA offer is unusable.  ``created``: the responder made
    the SA anyway, so it must be deleted on its side (RFC 7296 1.4.1)."""

    def __init__(self, reason: str, notify: int | None, *, created: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify
        self.created = created


def make_offer(
    sa: IkeSa,
    cfg: ChildConfig,
    *,
    with_dh: bool,
    ts: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]] | None = None,
    group: int | None = None,
) -> ChildOffer | None:
    """Our proposal for a CHILD SA (None when no inbound SPI could be had)."""
    spi = sa.alloc_child_spi(cfg.protocol)
    if spi is None:
        return None
    proposals = wire_proposals(cfg.proposals, cfg.protocol, spi.to_bytes(4, "big"), with_dh=with_dh)
    local_ts, remote_ts = ts if ts is not None else (cfg.local_ts, cfg.remote_ts)
    offer = ChildOffer(cfg, spi, proposals, cfg.mode == Mode.TRANSPORT, local_ts, remote_ts)
    if with_dh:
        g = group if group is not None else first_dh(cfg.proposals)
        if g is not None:
            offer.dh = ikecrypto.dh_generate(g)
    return offer


def offer_payloads(
    offer: ChildOffer, *, ke: bool | None, nonce: bytes | None, rekey: ChildSa | None = None
) -> list[Payload]:
    """SA, [Ni], [KEi], TSi, TSr and the notifications that go with them."""
    out: list[Payload] = []
    if rekey is not None:
        # RFC 7296 1.3.3: the SPI the exchange initiator expects in inbound packets
        out.append(
            NotifyPayload(
                NotifyType.REKEY_SA, b"", rekey.protocol, rekey.inbound_spi.to_bytes(4, "big")
            )
        )
    if offer.transport:
        out.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))  # RFC 7296 1.3.1
    out.append(SaPayload(offer.proposals))
    if nonce is not None:
        out.append(NoncePayload(nonce))
    if ke and offer.dh is not None:
        out.append(KePayload(offer.dh.group, offer.dh.public))
    out += [TsiPayload(to_wire_ts(offer.local_ts)), TsrPayload(to_wire_ts(offer.remote_ts))]
    return out


def check_answer(
    sa: IkeSa,
    offer: ChildOffer,
    inner: Sequence[Payload],
    *,
    nonce_i: bytes,
    nonce_r: bytes,
    ke: KePayload | None,
    rekey_of: int | None,
) -> ChildSpec:
    """Initiator: the responder's answer for our offer, as a ChildSpec (raises Refused)."""
    notifies = [p for p in inner if isinstance(p, NotifyPayload)]
    errors = [n for n in notifies if n.is_error]
    if errors:
        code = errors[0].notify_type
        raise Refused(f"peer refused the CHILD SA with {notify_name(code)}", code, created=False)
    sa_p = next((p for p in inner if isinstance(p, SaPayload)), None)
    tsi = next((p for p in inner if isinstance(p, TsiPayload)), None)
    tsr = next((p for p in inner if isinstance(p, TsrPayload)), None)
    if sa_p is None or len(sa_p.proposals) != 1 or tsi is None or tsr is None:
        raise Refused(
            "answer holds no usable CHILD SA (one SA proposal, TSi, TSr)",
            None,
            created=sa_p is not None,
        )
    try:
        chosen = check_choice(sa_p.proposals[0], offer.proposals, offer.config.protocol)
    except IkeProtocolError as exc:
        raise Refused(exc.message, int(exc.notify), created=True) from None
    peer_spi = sa_p.proposals[0].spi
    if len(peer_spi) != 4 or peer_spi == b"\x00\x00\x00\x00":
        raise Refused("responder's CHILD SA SPI is not 4 non-zero bytes", None, created=False)
    shared: bytes | None = None
    group = dh_of(chosen)
    if offer.dh is not None or group is not None:
        if offer.dh is None or group != offer.dh.group or ke is None or ke.dh_group != group:
            raise Refused(
                "responder's key exchange does not match our PFS group", None, created=True
            )
        try:
            shared = offer.dh.shared_secret(ke.data)
        except IkeInvalidKeError as exc:
            raise Refused(f"responder's KE is invalid: {exc.message}", None, created=True) from None
    transport = any(n.notify_type == NotifyType.USE_TRANSPORT_MODE for n in notifies)
    our_ts = from_wire_ts(tsi.selectors)
    peer_ts = from_wire_ts(tsr.selectors)
    if transport != offer.transport:
        # RFC 7296 1.3.1: the responder may refuse transport mode; we insist on ours
        raise Refused(
            f"responder chose {'transport' if transport else 'tunnel'} mode, "
            f"{offer.config.mode.value} mode is configured",
            None,
            created=True,
        )
    if not within(our_ts, offer.local_ts) or not within(peer_ts, offer.remote_ts):
        raise Refused(
            "responder's traffic selectors are not within the ones we proposed", None, created=True
        )
    if set(our_ts) != set(offer.local_ts) or set(peer_ts) != set(offer.remote_ts):
        log.warning(
            "%s: the peer narrowed the CHILD SA's selectors to %s <-> %s: traffic outside "
            "them that the policy sends over this SA will be dropped by the peer",
            sa.name,
            ", ".join(map(str, our_ts)),
            ", ".join(map(str, peer_ts)),
        )
    return ChildSpec(
        offer.config,
        chosen,
        Mode.TRANSPORT if transport else Mode.TUNNEL,
        offer.spi,
        int.from_bytes(peer_spi, "big"),
        our_ts,
        peer_ts,
        nonce_i,
        nonce_r,
        shared,
        group,
        we_initiated=True,
        outbound_active=True,
        rekey_of=rekey_of,
    )


def refuse(sa: IkeSa, offer: ChildOffer, refused: Refused, now: float) -> None:
    """Report a refused CHILD SA; delete it on the peer if the peer created it."""
    log.warning("%s: CHILD SA %s: %s", sa.name, offer.config.name or "", refused.reason)
    sa.emit(
        ChildSaFailed(
            refused.reason, refused.notify, connection=sa.config.name, child=offer.config.name
        )
    )
    if refused.created:
        from .informational import SpiDelete

        sa.queue(SpiDelete(offer.config.protocol, offer.spi), first=True)


def respond_child(
    sa: IkeSa,
    inner: Sequence[Payload],
    configs: Sequence[ChildConfig],
    *,
    nonce_i: bytes,
    nonce_r: bytes | None,
    ke: KePayload | None,
    with_dh: bool,
    rekey_of: ChildSa | None = None,
) -> tuple[list[Payload], ChildSpec]:
    """Responder: choose among ``configs`` for the peer's CHILD SA request.  Returns
    the answer's payloads and the new SA; raises IkeProtocolError with the notify.
    ``nonce_r`` None: a CREATE_CHILD_SA, whose answer carries a fresh Nr."""
    sa_p = next((p for p in inner if isinstance(p, SaPayload)), None)
    tsi = next((p for p in inner if isinstance(p, TsiPayload)), None)
    tsr = next((p for p in inner if isinstance(p, TsrPayload)), None)
    if sa_p is None or tsi is None or tsr is None:
        raise IkeProtocolError(
            "request has no CHILD SA (SA, TSi, TSr)", notify=NotifyType.INVALID_SYNTAX
        )
    transport_asked = any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.USE_TRANSPORT_MODE
        for p in inner
    )
    error = IkeProtocolError(
        "no CHILD SA proposal of the peer is acceptable", notify=NotifyType.NO_PROPOSAL_CHOSEN
    )
    for cfg in configs:
        choice = select_proposal(sa_p.proposals, cfg.proposals, cfg.protocol, with_dh=with_dh)
        if choice is None:
            continue
        offered, chosen = choice
        if len(offered.spi) != 4 or offered.spi == b"\x00\x00\x00\x00":
            raise IkeProtocolError(
                f"{cfg.protocol.name} proposal SPI must be 4 non-zero bytes",
                notify=NotifyType.INVALID_SYNTAX,
            )
        if cfg.mode == Mode.TRANSPORT and not transport_asked:
            error = IkeProtocolError(
                "peer asked for tunnel mode, transport mode is configured",
                notify=NotifyType.NO_PROPOSAL_CHOSEN,
            )
            continue
        # RFC 7296 1.3.1: a tunnel-mode responder answers without USE_TRANSPORT_MODE
        mode = Mode.TRANSPORT if transport_asked and cfg.mode == Mode.TRANSPORT else Mode.TUNNEL
        # RFC 7296 2.9: narrow to what our policy allows (TSi = peer side, TSr = ours)
        peer_ts = narrow_selectors(from_wire_ts(tsi.selectors), cfg.remote_ts)
        our_ts = narrow_selectors(from_wire_ts(tsr.selectors), cfg.local_ts)
        if not peer_ts or not our_ts:
            error = IkeProtocolError(
                "the peer's traffic selectors are outside the configured ones",
                notify=NotifyType.TS_UNACCEPTABLE,
            )
            continue
        group = dh_of(chosen) if with_dh else None
        shared: bytes | None = None
        dh: ikecrypto.DhKeyPair | None = None
        if group is not None:
            assert ke is not None
            if ke.dh_group != group:
                if offers_group(cfg.proposals, ke.dh_group):
                    group = ke.dh_group  # the KE's group is acceptable too (RFC 7296 1.3)
                else:
                    raise IkeProtocolError(
                        f"peer sent KE for group {ke.dh_group}, asking for group {group}",
                        notify=NotifyType.INVALID_KE_PAYLOAD,
                        data=int(group).to_bytes(2, "big"),
                    )
                chosen = Proposal(
                    tuple(
                        t if t.type != TransformType.DH else Transform(t.type, group, t.key_length)
                        for t in chosen.transforms
                    )
                )
            dh = ikecrypto.dh_generate(group)
            shared = dh.shared_secret(ke.data)
        spi = sa.alloc_child_spi(cfg.protocol)
        if spi is None:
            raise IkeProtocolError(
                "no inbound SPI could be allocated for the CHILD SA",
                notify=NotifyType.NO_ADDITIONAL_SAS,
            )
        fresh = nonce_r is None
        nr = sa.random_bytes(sa.config.nonce_length) if nonce_r is None else nonce_r
        payloads: list[Payload] = []
        if mode == Mode.TRANSPORT:
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        payloads.append(wire_choice(offered.num, cfg.protocol, spi.to_bytes(4, "big"), chosen))
        if fresh:
            payloads.append(NoncePayload(nr))
        if dh is not None:
            payloads.append(KePayload(dh.group, dh.public))
        payloads += [TsiPayload(to_wire_ts(peer_ts)), TsrPayload(to_wire_ts(our_ts))]
        spec = ChildSpec(
            cfg,
            chosen,
            mode,
            spi,
            int.from_bytes(offered.spi, "big"),
            our_ts,
            peer_ts,
            nonce_i,
            nr,
            shared,
            group,
            we_initiated=False,
            outbound_active=rekey_of is None,
            rekey_of=rekey_of.inbound_spi if rekey_of is not None else None,
        )
        return payloads, spec
    raise error


class ChildCreate(Task):
    """CREATE_CHILD_SA for a new CHILD SA, or to rekey ``rekey`` (RFC 7296 1.3)."""

    exchange: ClassVar[int] = ExchangeType.CREATE_CHILD_SA
    label: ClassVar[str] = "CREATE_CHILD_SA"

    def __init__(
        self,
        config: ChildConfig,
        *,
        rekey: ChildSa | None = None,
        group: int | None = None,
        ke_retries: int = 0,
    ) -> None:
        self.config = config
        self.old = rekey
        self.group = group
        self.ke_retries = ke_retries
        self.offer: ChildOffer | None = None
        self.nonce = b""

    def __repr__(self) -> str:
        what = f"rekey of {self.old.inbound_spi:08x}" if self.old is not None else "new"
        return f"<ChildCreate {self.config.name!r} {what}>"

    @property
    def what(self) -> str:
        return "CHILD SA rekey" if self.old is not None else "new CHILD SA"

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        old = self.old
        ts = None
        if old is not None:
            if not old.alive or old.state != ChildState.INSTALLED:
                log.debug(
                    "%s: no rekey of CHILD SA %08x: it is %s",
                    sa.name,
                    old.inbound_spi,
                    old.state.name,
                )
                return None
            old.trigger(ChildTrigger.REKEY_STARTED, sa.name)
            # RFC 7296 2.9.2: a rekey proposes the selectors of the SA it replaces
            ts = (old.event.local_ts, old.event.remote_ts)
        offer = make_offer(sa, self.config, with_dh=self.config.pfs, ts=ts, group=self.group)
        if offer is None:
            self._failed(sa, now, "no inbound SPI could be allocated", None, retry=True)
            return None
        self.offer = offer
        self.nonce = sa.random_bytes(sa.config.nonce_length)
        log.info("%s: starting %s (%s)", sa.name, self.what, self.config.name or "child")
        return offer_payloads(offer, ke=True, nonce=self.nonce, rekey=old)

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        offer = self.offer
        assert offer is not None
        for n in (p for p in inner if isinstance(p, NotifyPayload) and p.is_error):
            self._on_error(sa, n, now)
            return
        nonce = next((p for p in inner if isinstance(p, NoncePayload)), None)
        ke = next((p for p in inner if isinstance(p, KePayload)), None)
        try:
            if nonce is None:
                raise Refused(
                    "CREATE_CHILD_SA answer has no nonce", NotifyType.INVALID_SYNTAX, created=True
                )
            try:
                check_nonce(nonce.data, sa.ike_choice)
            except IkeProtocolError as exc:
                raise Refused(exc.message, int(exc.notify), created=True) from None
            old = self.old
            spec = check_answer(
                sa,
                offer,
                inner,
                nonce_i=self.nonce,
                nonce_r=nonce.data,
                ke=ke,
                rekey_of=old.inbound_spi if old is not None else None,
            )
        except Refused as refused:
            refuse(sa, offer, refused, now)
            self._back_to_installed(sa, now, retry=False)
            return
        if old is None:
            sa.add_child(spec, now)
            return
        self._rekeyed(sa, old, spec, now)

    def _rekeyed(self, sa: IkeSa, old: ChildSa, spec: ChildSpec, now: float) -> None:
        """Our rekey answer came: make the new SA the survivor, or find it redundant."""
        from .informational import ChildDelete, SpiDelete

        ours_lowest = min(spec.nonce_i, spec.nonce_r)
        redundant = False
        if not old.alive or old.state == ChildState.REKEYED:
            # the old SA went while we waited: deleted by a peer that won a collision
            # (its replacement survives), or by the peer for another reason.
            redundant = old.collision is not None or old.replaced_by is not None
        elif old.collision is not None:
            other = old.collision
            # RFC 7296 2.8.1: the SA of the exchange with the lowest nonce is redundant
            redundant = ours_lowest < other.lowest_nonce
            if redundant:
                log.info(
                    "%s: CHILD SA rekey collision lost; the peer's SA %08x replaces %08x",
                    sa.name,
                    other.inbound_spi,
                    old.inbound_spi,
                )
                old.trigger(ChildTrigger.REPLACED, sa.name)
                old.replaced_by = other.inbound_spi
            else:
                log.info("%s: CHILD SA rekey collision won", sa.name)
        if redundant:
            sa.queue(SpiDelete(spec.config.protocol, spec.inbound_spi), first=True)
            return
        new = sa.add_child(spec, now)
        if old.alive:
            old.trigger(ChildTrigger.REPLACED, sa.name)
            old.replaced_by = new.inbound_spi
            old.rekey_at = None
            sa.emit(
                ChildSaRekeyed(
                    old.inbound_spi,
                    old.outbound_spi,
                    new.inbound_spi,
                    new.outbound_spi,
                    connection=sa.config.name,
                )
            )
            # RFC 7296 2.8: the initiator of the surviving rekey deletes the old SA
            sa.queue(ChildDelete(old), first=True)
        log.info(
            "%s: CHILD SA %08x/%08x rekeyed as %08x/%08x",
            sa.name,
            old.inbound_spi,
            old.outbound_spi,
            new.inbound_spi,
            new.outbound_spi,
        )

    def _on_error(self, sa: IkeSa, n: NotifyPayload, now: float) -> None:
        code = n.notify_type
        old = self.old
        if code == NotifyType.TEMPORARY_FAILURE:
            # RFC 7296 2.25: the peer is busy (rekeying or deleting): try again later
            log.info("%s: peer answered TEMPORARY_FAILURE to our %s", sa.name, self.what)
            self._back_to_installed(sa, now, retry=True)
            return
        if code == NotifyType.CHILD_SA_NOT_FOUND and old is not None:
            # RFC 7296 2.25.1: the peer has no such SA any more: start a fresh one
            log.warning(
                "%s: peer does not know CHILD SA %08x; creating a new one",
                sa.name,
                old.outbound_spi,
            )
            sa.child_gone(old, by_peer=True, reason="unknown to the peer (CHILD_SA_NOT_FOUND)")
            sa.queue(ChildCreate(self.config))
            return
        if code == NotifyType.INVALID_KE_PAYLOAD and len(n.data) == 2:
            group = int.from_bytes(n.data, "big")
            if self.ke_retries < MAX_KE_RETRIES and offers_group(self.config.proposals, group):
                log.info("%s: peer wants DH group %d for the %s", sa.name, group, self.what)
                if old is not None and old.state == ChildState.REKEYING:
                    old.trigger(ChildTrigger.REKEY_FAILED, sa.name)
                sa.queue(
                    ChildCreate(
                        self.config, rekey=old, group=group, ke_retries=self.ke_retries + 1
                    ),
                    first=True,
                )
                return
        reason = f"peer refused the {self.what} with {notify_name(code)}"
        log.warning("%s: %s", sa.name, reason)
        sa.emit(ChildSaFailed(reason, int(code), connection=sa.config.name, child=self.config.name))
        self._back_to_installed(sa, now, retry=old is not None)

    def _back_to_installed(self, sa: IkeSa, now: float, *, retry: bool) -> None:
        old = self.old
        if old is None:
            if retry:
                sa.defer(ChildCreate(self.config), now)
            return
        if not old.alive:
            return
        if old.state == ChildState.REKEYING:
            if old.collision is not None:
                # our rekey failed but the peer's went through: it replaces the old SA
                old.trigger(ChildTrigger.REPLACED, sa.name)
                old.replaced_by = old.collision.inbound_spi
                return
            old.trigger(ChildTrigger.REKEY_FAILED, sa.name)
        if retry and old.state == ChildState.INSTALLED:
            sa.defer(ChildCreate(self.config, rekey=old), now)

    def _failed(
        self, sa: IkeSa, now: float, reason: str, notify: int | None, *, retry: bool
    ) -> None:
        sa.emit(ChildSaFailed(reason, notify, connection=sa.config.name, child=self.config.name))
        self._back_to_installed(sa, now, retry=retry)

    def abort(self, sa: IkeSa, reason: str) -> None:
        if self.old is not None and self.old.alive and self.old.state == ChildState.REKEYING:
            self.old.trigger(ChildTrigger.REKEY_FAILED, sa.name)


def respond(sa: IkeSa, inner: Sequence[Payload], now: float) -> list[Payload]:
    """Answer a CREATE_CHILD_SA request (RFC 7296 1.3)."""
    from . import ike_rekey

    sa_p = next((p for p in inner if isinstance(p, SaPayload)), None)
    if sa_p is None:
        raise IkeProtocolError(
            "CREATE_CHILD_SA request has no SA payload", notify=NotifyType.INVALID_SYNTAX
        )
    if any(p.protocol_id == ProtocolId.IKE for p in sa_p.proposals):
        return ike_rekey.respond(sa, inner, now)
    if sa.state != IkeState.ESTABLISHED or sa.rekey_task is not None:
        # RFC 7296 2.25: no new CHILD SA while the IKE SA is rekeyed or deleted
        log.info(
            "%s: CREATE_CHILD_SA while the IKE SA is %s: TEMPORARY_FAILURE",
            sa.name,
            "being rekeyed" if sa.rekey_task is not None else sa.state.name,
        )
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    nonce = next((p for p in inner if isinstance(p, NoncePayload)), None)
    if nonce is None:
        raise IkeProtocolError(
            "CREATE_CHILD_SA request has no nonce", notify=NotifyType.INVALID_SYNTAX
        )
    check_nonce(nonce.data, sa.ike_choice)
    ke = next((p for p in inner if isinstance(p, KePayload)), None)
    rekey_n = next(
        (p for p in inner if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.REKEY_SA),
        None,
    )
    old: ChildSa | None = None
    if rekey_n is not None:
        if rekey_n.protocol_id not in (ProtocolId.ESP, ProtocolId.AH) or len(rekey_n.spi) != 4:
            raise IkeProtocolError(
                "REKEY_SA without an ESP/AH SPI", notify=NotifyType.INVALID_SYNTAX
            )
        old = sa.find_child_by_outbound(rekey_n.protocol_id, int.from_bytes(rekey_n.spi, "big"))
        if old is None:
            # RFC 7296 2.25.1
            log.info(
                "%s: peer rekeys CHILD SA %s we do not have: CHILD_SA_NOT_FOUND",
                sa.name,
                rekey_n.spi.hex(),
            )
            return [
                NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, b"", rekey_n.protocol_id, rekey_n.spi)
            ]
        if old.state in (ChildState.DELETING, ChildState.REKEYED):
            log.info(
                "%s: peer rekeys CHILD SA %08x that is %s: TEMPORARY_FAILURE",
                sa.name,
                old.inbound_spi,
                old.state.name,
            )
            return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    configs = [old.config] if old is not None else list(sa.config.children)
    payloads, spec = respond_child(
        sa,
        inner,
        configs,
        nonce_i=nonce.data,
        nonce_r=None,
        ke=ke,
        with_dh=ke is not None,
        rekey_of=old,
    )
    child = sa.add_child(spec, now)
    if old is not None:
        if old.state == ChildState.REKEYING:
            old.collision = child  # RFC 7296 2.8.1: decided when our own answer comes
            log.info("%s: CHILD SA rekey collision on %08x", sa.name, old.inbound_spi)
        else:
            old.trigger(ChildTrigger.REPLACED, sa.name)
            old.replaced_by = child.inbound_spi
            old.rekey_at = None
            # the initiator deletes the old SA; if it never does, we do, in a while
            old.expire_at = min(old.expire_at, now + sa.config.retransmit.give_up_after())
    return payloads
