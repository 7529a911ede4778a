"""A CHILD SA of an IKE SA: its state (one table, :mod:`ipsecd.ike.states`), its
timers and its keys.

A :class:`ChildSa` is made by :func:`derive_child` when an exchange that creates it
completes (IKE_AUTH or CREATE_CHILD_SA, RFC 7296 1.2/1.3): the keys come from
KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 2.17), the timers from the
CHILD configuration (rekey time with jitter, hard lifetime).  The IKE SA owns its
CHILD SAs (``IkeSa._children``, keyed by inbound SPI) and moves them to its successor
when it is rekeyed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import crypto as ikecrypto
from .config import ChildConfig, Mode, Proposal, TrafficSelector
from .constants import EsnId, IntegId, ProtocolId, TransformType
from .events import ChildSaDeleted, ChildSaEstablished
from .negotiate import one
from .states import ChildState, ChildTrigger, next_child_state

__all__ = ["ChildSa", "ChildSpec", "derive_child"]

log = logging.getLogger("ipsecd.ike")


@dataclass(slots=True)
class ChildSa:
    """One CHILD SA pair (see the module doc).  Keys stay in ``event`` (repr=False)."""

    config: ChildConfig
    event: ChildSaEstablished = field(repr=False)
    created: float
    #: When the engine rekeys it (None: never, e.g. once replaced) and when it dies.
    rekey_at: float | None
    expire_at: float
    #: Ni and Nr of the exchange that created it (RFC 7296 2.8.1 collisions).
    nonces: tuple[bytes, bytes] = field(repr=False)
    #: We were the initiator of the exchange that created it.
    we_initiated: bool
    state: ChildState = ChildState.INSTALLED
    outbound_active: bool = True
    #: The CHILD SA that replaces it (its inbound SPI) once rekeyed.
    replaced_by: int | None = None
    #: A replacement the *peer* created while we were rekeying it ourselves
    #: (RFC 7296 2.8.1 collision, resolved when our own rekey answer arrives).
    collision: ChildSa | None = field(default=None, repr=False)

    @property
    def inbound_spi(self) -> int:
        return self.event.inbound_spi

    @property
    def outbound_spi(self) -> int:
        return self.event.outbound_spi

    @property
    def protocol(self) -> ProtocolId:
        return self.event.protocol

    @property
    def alive(self) -> bool:
        return self.state != ChildState.DELETED

    @property
    def lowest_nonce(self) -> bytes:
        return min(self.nonces)

    def trigger(self, what: ChildTrigger, name: str) -> None:
        old = self.state
        self.state = next_child_state(old, what)
        log.debug(
            "%s: CHILD SA %08x/%08x %s -> %s",
            name,
            self.inbound_spi,
            self.outbound_spi,
            old.name,
            self.state.name,
        )

    def deleted_event(self, by_peer: bool, reason: str) -> ChildSaDeleted:
        ev = self.event
        return ChildSaDeleted(
            ev.protocol,
            ev.inbound_spi,
            ev.outbound_spi,
            by_peer,
            reason,
            connection=ev.connection,
            replaced=self.replaced_by is not None or self.state == ChildState.REKEYED,
        )


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What an exchange negotiated for a new CHILD SA (inputs of :func:`derive_child`)."""

    config: ChildConfig
    chosen: Proposal
    mode: Mode
    inbound_spi: int
    outbound_spi: int
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    nonce_i: bytes = field(repr=False)
    nonce_r: bytes = field(repr=False)
    #: g^ir of a PFS key exchange in CREATE_CHILD_SA (RFC 7296 2.17), else None.
    shared: bytes | None = field(default=None, repr=False)
    pfs_group: int | None = None
    we_initiated: bool = True
    outbound_active: bool = True
    rekey_of: int | None = None


@dataclass(frozen=True, slots=True)
class IkeContext:
    """What a CHILD SA takes from its IKE SA."""

    connection: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    prf_id: int
    sk_d: bytes = field(repr=False)
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    encapsulation: bool


def derive_child(
    ike: IkeContext, spec: ChildSpec, now: float, rand: Callable[[], float] = random.random
) -> ChildSa:
    """Keys (RFC 7296 2.17) and timers of a new CHILD SA."""
    chosen, cfg = spec.chosen, spec.config
    encr = one(chosen, TransformType.ENCR)
    integ = one(chosen, TransformType.INTEG)
    if integ is not None and integ.id == IntegId.NONE:
        integ = None
    esn = one(chosen, TransformType.ESN)
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr), initiator->responder first
    keys = ikecrypto.derive_child_keys(
        ike.prf_id,
        ike.sk_d,
        spec.nonce_i,
        spec.nonce_r,
        encr_id=encr.id if encr is not None else None,
        encr_key_bits=encr.key_length if encr is not None else None,
        integ_id=integ.id if integ is not None else IntegId.NONE,
        shared_secret=spec.shared,
    )
    # The "initiator" of RFC 7296 2.17 is the initiator of the exchange creating it.
    out_e, out_a, in_e, in_a = (
        (keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r)
        if spec.we_initiated
        else (keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i)
    )
    encap = ike.encapsulation
    rekey = cfg.soft_lifetime * (1.0 - cfg.jitter * rand())
    event = ChildSaEstablished(
        ike_spi_i=ike.spi_i,
        ike_spi_r=ike.spi_r,
        protocol=cfg.protocol,
        mode=spec.mode,
        inbound_spi=spec.inbound_spi,
        outbound_spi=spec.outbound_spi,
        encr_id=encr.id if encr is not None else None,
        encr_key_bits=encr.key_length if encr is not None else None,
        integ_id=integ.id if integ is not None else None,
        inbound_encryption_key=in_e,
        outbound_encryption_key=out_e,
        inbound_integrity_key=in_a,
        outbound_integrity_key=out_a,
        local_ts=spec.local_ts,
        remote_ts=spec.remote_ts,
        local_address=ike.local_addr[0],
        remote_address=ike.remote_addr[0],
        encapsulation=encap,
        encap_local_port=ike.local_addr[1] if encap else None,
        encap_remote_port=ike.remote_addr[1] if encap else None,
        esn=esn is not None and esn.id == EsnId.ESN,
        lifetime=cfg.lifetime,
        # the kernel's soft EXPIRE is a backstop, after the engine's own rekey time
        soft_lifetime=min(cfg.lifetime, cfg.soft_lifetime + (cfg.lifetime - cfg.soft_lifetime) / 2),
        proposal=str(chosen),
        connection=ike.connection,
        child=cfg.name,
        outbound_active=spec.outbound_active,
        rekey_of=spec.rekey_of,
        pfs_group=spec.pfs_group,
        lifetime_bytes=cfg.lifetime_bytes,
        lifetime_packets=cfg.lifetime_packets,
    )
    return ChildSa(
        config=cfg,
        event=event,
        created=now,
        rekey_at=now + rekey,
        expire_at=now + cfg.lifetime,
        nonces=(spec.nonce_i, spec.nonce_r),
        we_initiated=spec.we_initiated,
        outbound_active=spec.outbound_active,
    )
