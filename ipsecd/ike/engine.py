"""The IKEv2 engine: one :class:`IkeSa`, sans-I/O (DESIGN.md convention 1).

Bytes and time go in, datagrams, one timer and events come out; the engine owns no
socket, no clock and no kernel state::

    sa = IkeSa(config, initiator=True, local_addr=("192.0.2.1", 500),
               remote_addr=("198.51.100.1", 500))
    sa.initiate(now)
    while True:
        for data, addr in sa.datagrams_to_send(now):
            send(data, addr, from_port=sa.local_addr[1])
        while (event := sa.next_event()) is not None:
            handle(event)          # ChildSaEstablished -> install in XFRM, ...
        ... wait for a datagram (sa.receive_datagram(data, addr, now)) or until
            sa.get_timer() (sa.handle_timer(now)) ...

A responder is created from the first IKE_SA_INIT request by :meth:`IkeSa.accept`,
which finds the connection through a *config lookup*: a callable
``lookup(local_ip, remote_ip) -> Sequence[IkeConfig]`` giving the candidate
connections for that address pair (:func:`lookup_by_address` builds one from a list).
IKE_SA_INIT is answered with the first candidate whose IKE proposals match; IKE_AUTH
then picks, among the candidates, the one whose ``remote_id`` matches the peer's IDi
(``None`` matches any) and authenticates with its PSK.  A responder that answered an
error (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, ...) to IKE_SA_INIT ends at once (FAILED;
no event for INVALID_KE_PAYLOAD, which is no failure): the initiator's retry is a new
``accept``.

Cookies (RFC 7296 2.6): an initiator follows a COOKIE request by itself; a responder
under load calls :func:`cookie_challenge` before ``accept`` (the driver decides when,
e.g. past a number of half-open SAs).

Demultiplexing (driver side): :func:`route_datagram` names the SPI we chose for the SA a
datagram belongs to (``IkeSa.local_spi``); a new IKE_SA_INIT request (zero SPIr) goes to
the half-open responder of the same (SPIi, peer address) if there is one (a
retransmission, answered from the response cache) or else to ``accept``.
``local_addr`` must be the real local address the peer talks to (not a wildcard): the
NAT detection hashes (RFC 7296 2.23) are computed over it.

Datagrams are UDP payloads exactly as on the wire.  On port 4500 IKE messages carry the
4-byte non-ESP marker (RFC 3948 2.2, RFC 7296 2.23): ``datagrams_to_send`` adds it when
``local_addr`` is on port 4500 and ``receive_datagram`` strips it when present (a
datagram that came with the marker tells a responder that the peer has floated to 4500).
The driver sends each datagram from the socket bound to ``sa.local_addr``.

Errors: ``receive_datagram`` never raises on peer input.  Its single boundary turns
:class:`~ipsecd.ike.errors.IkeProtocolError` of a request into a NOTIFY response (only
where RFC 7296 2.21 allows answering), and drops (with a log line) malformed messages
(:class:`~ipsecd.ike.errors.IkeParseError`), messages failing their integrity check,
unexpected message IDs and anything unauthenticated.  API misuse raises
:class:`~ipsecd.ike.errors.IkeLocalError`.

Logging goes to ``logging.getLogger("ipsecd.ike")``; state transitions are logged by
``_set_state``.  No key, nonce-derived secret or PSK is ever logged.

Timers: retransmission of our outstanding request (RFC 7296 2.1, ``RetransmitConfig``),
the responder's half-open timeout, and the IKE SA lifetime: without rekeying, an IKE SA
reaching ``IkeConfig.ike_lifetime`` is deleted (INFORMATIONAL Delete) and the agent
starts a new one.

Not implemented yet (later issues): CREATE_CHILD_SA (answered NO_ADDITIONAL_SAS), IKE
and CHILD SA rekeying (RFC 7296 2.8), certificates/EAP, IKE fragmentation (RFC 7383),
MOBIKE, more than one CHILD SA per IKE SA.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from . import codec
from . import crypto as ikecrypto
from .codec import (
    AuthPayload,
    DeletePayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
)
from .config import (
    ChildConfig,
    Identity,
    IkeConfig,
    Mode,
    Proposal,
    Role,
    TrafficSelector,
    Transform,
)
from .constants import (
    AttributeType,
    AuthMethod,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    ProtocolId,
    TransformType,
)
from .errors import (
    IkeError,
    IkeIntegrityError,
    IkeLocalError,
    IkeParseError,
    IkePeerError,
    IkeProtocolError,
)
from .events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from .states import END_STATES, IkeState, is_allowed

__all__ = [
    "NATT_PORT",
    "NON_ESP_MARKER",
    "ConfigLookup",
    "DatagramRoute",
    "IkeSa",
    "SpiAllocator",
    "lookup_by_address",
    "narrow_selectors",
    "route_datagram",
    "select_proposal",
]

log = logging.getLogger("ipsecd.ike")

Addr = tuple[str, int]
ConfigLookup = Callable[[str, str], Sequence[IkeConfig]]
#: ``allocator(protocol) -> inbound SPI`` for new CHILD SAs (see ``IkeSa``).
SpiAllocator = Callable[[ProtocolId], int]

NATT_PORT = 4500  # RFC 7296 2.23
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
_ZERO_SPI = b"\x00" * 8
#: How often an initiator follows INVALID_KE_PAYLOAD / COOKIE before giving up.
_MAX_SA_INIT_RETRIES = 3


def lookup_by_address(configs: Iterable[IkeConfig]) -> ConfigLookup:
    """A config lookup over a fixed list: the connections that may respond and whose
    ``local_address``/``remote_address`` (``None`` = any) match, in list order."""
    items = tuple(configs)

    def same(a: str | None, b: str) -> bool:
        if a is None:
            return True
        try:
            return ipaddress.ip_address(a) == ipaddress.ip_address(b)
        except ValueError:
            return False

    def lookup(local_ip: str, remote_ip: str) -> Sequence[IkeConfig]:
        return [
            c
            for c in items
            if c.role != Role.INITIATOR
            and same(c.local_address, local_ip)
            and same(c.remote_address, remote_ip)
        ]

    return lookup


# ============================================================== proposals (RFC 7296 2.7)


def _to_config_transform(t: codec.Transform) -> Transform | None:
    """Our view of a received transform, or None when we cannot accept it (unknown
    type or an attribute other than Key Length, RFC 7296 3.3.6)."""
    try:
        kind = TransformType(t.transform_type)
    except ValueError:
        return None
    for attr in t.attributes:
        if attr.attr_type != AttributeType.KEY_LENGTH:
            return None
    return Transform(kind, int(t.transform_id), t.key_length)


_KNOWN_TYPES = frozenset(int(t) for t in TransformType)


def _normalized_types(transforms: Iterable[Transform], protocol: int) -> set[TransformType]:
    kinds: set[TransformType] = set()
    for t in transforms:
        if t.type == TransformType.INTEG and t.id == IntegId.NONE:
            continue  # "no integrity" listed explicitly with an AEAD cipher
        if t.type == TransformType.DH and (protocol != ProtocolId.IKE or t.id == DhGroup.NONE):
            continue  # RFC 7296 1.2: no DH in the IKE_AUTH child proposals
        kinds.add(t.type)
    if protocol in (ProtocolId.ESP, ProtocolId.AH):
        kinds.add(TransformType.ESN)  # absent ESN means "no ESN"
    return kinds


def select_proposal(
    offered: Sequence[codec.Proposal], ours: Sequence[Proposal], protocol: int
) -> tuple[codec.Proposal, Proposal] | None:
    """Responder's choice (RFC 7296 2.7, 3.3.6): our proposals in our order of
    preference; the first offered proposal of the right protocol with the same transform
    types where every type has a transform we accept.  Returns the offered proposal (for
    its number and SPI) and the chosen transforms (one per type), or None."""
    for mine in ours:
        my_types = _normalized_types(mine.transforms, protocol)
        for prop in offered:
            if prop.protocol_id != protocol:
                continue
            if any(int(raw.transform_type) not in _KNOWN_TYPES for raw in prop.transforms):
                continue  # RFC 7296 3.3.6: unknown transform type rejects the proposal
            present = [
                Transform(TransformType(raw.transform_type), int(raw.transform_id))
                for raw in prop.transforms
            ]
            if _normalized_types(present, protocol) != my_types:
                continue  # RFC 7296 3.3.6: one transform of every type must be chosen
            # RFC 8247 / RFC 8221: forbidden algorithms are never accepted
            known_t = [
                t
                for t in map(_to_config_transform, prop.transforms)
                if t is not None
                and ikecrypto.transform_allowed(protocol, t.type, t.id, t.key_length)
            ]
            chosen: list[Transform] = []
            for kind in sorted(my_types, key=int):
                candidates = [t for t in mine.transforms if t.type == kind]
                if kind == TransformType.ESN and not candidates:
                    candidates = [Transform(TransformType.ESN, EsnId.NO_ESN)]
                offered_kind = {(t.id, t.key_length) for t in known_t if t.type == kind}
                if kind == TransformType.ESN and not offered_kind:
                    offered_kind = {(EsnId.NO_ESN, None)}
                pick = next((c for c in candidates if (c.id, c.key_length) in offered_kind), None)
                if pick is None:
                    break
                chosen.append(pick)
            else:
                return prop, Proposal(tuple(chosen))
    return None


def _check_choice(
    reply: codec.Proposal, offered: Sequence[codec.Proposal], protocol: int
) -> Proposal:
    """Initiator: the responder's single proposal must be one of ours, with one
    transform of each offered type (RFC 7296 2.7)."""
    ours = next((p for p in offered if p.num == reply.num), None)
    if ours is None or reply.protocol_id != protocol:
        raise IkeProtocolError(
            f"responder chose proposal #{reply.num}, which we did not offer",
            notify=NotifyType.NO_PROPOSAL_CHOSEN,
        )
    offered_set = {(t.transform_type, t.transform_id, t.key_length) for t in ours.transforms}
    chosen: list[Transform] = []
    for t in reply.transforms:
        if (t.transform_type, t.transform_id, t.key_length) not in offered_set:
            raise IkeProtocolError(
                "responder chose a transform we did not offer",
                notify=NotifyType.NO_PROPOSAL_CHOSEN,
            )
        ct = _to_config_transform(t)
        if ct is None:  # pragma: no cover - offered_set only holds our own transforms
            raise IkeProtocolError("unusable transform", notify=NotifyType.NO_PROPOSAL_CHOSEN)
        chosen.append(ct)
    kinds = [t.type for t in chosen]
    mine = [
        Transform(TransformType(t.transform_type), int(t.transform_id), t.key_length)
        for t in ours.transforms
    ]
    if len(set(kinds)) != len(kinds) or set(kinds) != {t.type for t in mine}:
        raise IkeProtocolError(
            "responder's proposal does not have exactly one transform of each type",
            notify=NotifyType.NO_PROPOSAL_CHOSEN,
        )
    return Proposal(tuple(chosen))


def _wire_proposals(
    proposals: Sequence[Proposal], protocol: int, spi: bytes
) -> tuple[codec.Proposal, ...]:
    return tuple(
        codec.Proposal(
            num=i,
            protocol_id=protocol,
            spi=spi,
            transforms=tuple(
                codec.Transform.make(t.type, t.id, t.key_length) for t in p.transforms
            ),
        )
        for i, p in enumerate(proposals, start=1)
    )


def _one(p: Proposal, kind: TransformType) -> Transform | None:
    found = p.of_type(kind)
    return found[0] if found else None


# ===================================================== traffic selectors (RFC 7296 2.9)


def _from_wire_ts(selectors: Iterable[codec.AnySelector]) -> tuple[TrafficSelector, ...]:
    out = []
    for s in selectors:
        if isinstance(s, codec.TrafficSelector):
            try:
                out.append(
                    TrafficSelector(
                        s.start_address, s.end_address, s.ip_protocol, s.start_port, s.end_port
                    )
                )
            except IkeLocalError:
                continue  # an empty range (start > end) selects nothing
    return tuple(out)


def _to_wire_ts(selectors: Iterable[TrafficSelector]) -> tuple[codec.TrafficSelector, ...]:
    return tuple(
        codec.TrafficSelector(s.ip_protocol, s.start_port, s.end_port, s.start, s.end)
        for s in selectors
    )


def narrow_selectors(
    proposed: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """RFC 7296 2.9: the parts of ``proposed`` that ``allowed`` permits (every non-empty
    pairwise intersection, without duplicates).  Empty means TS_UNACCEPTABLE."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            got = p.intersect(a)
            if got is not None and got not in out:
                out.append(got)
    return tuple(out)


def _within(got: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
    return bool(got) and all(any(o.contains(g) for o in offered) for g in got)


# =========================================================== NAT detection (RFC 7296 2.23)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    """NAT_DETECTION_*_IP data for an address (RFC 7296 2.23)."""
    return ikecrypto.nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(addr[0]).packed, addr[1])


# ============================================================================ XFRM names

_XFRM_ENCR: dict[int, str] = {
    # transform ID -> Linux XFRM algorithm name (AEAD keys carry a 4-byte salt)
    EncrId.AES_CBC: "cbc(aes)",
    EncrId.AES_GCM_16: "rfc4106(gcm(aes))",  # RFC 4106 8.1
    EncrId.CHACHA20_POLY1305: "rfc7539esp(chacha20,poly1305)",  # RFC 7634 2
}
_XFRM_INTEG: dict[int, tuple[str, int]] = {
    # transform ID -> (XFRM name, truncation bits)  RFC 4868 2.1
    IntegId.HMAC_SHA2_256_128: ("hmac(sha256)", 128),
    IntegId.HMAC_SHA2_384_192: ("hmac(sha384)", 192),
    IntegId.HMAC_SHA2_512_256: ("hmac(sha512)", 256),
}
_AEAD_IDS = frozenset({EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305})


# ================================================================ internal bookkeeping


@dataclass(slots=True)
class _Request:
    """Our outstanding request (window size 1, RFC 7296 2.3)."""

    message_id: int
    exchange: int
    datagram: bytes = field(repr=False)
    kind: str
    sends: int
    next_at: float
    child_spi: int | None = None


@dataclass(slots=True)
class _Child:
    event: ChildSaEstablished = field(repr=False)
    deleting: bool = False


@dataclass(slots=True)
class _ChildOffer:
    """What the initiator proposed for the first CHILD SA."""

    spi: int
    proposals: tuple[codec.Proposal, ...]
    transport: bool


@dataclass(slots=True)
class _Keys:
    """IKE SA keying material (RFC 7296 2.14).  Never logged."""

    sk_d: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)
    out_cipher: ikecrypto.SkCipher = field(repr=False)
    in_cipher: ikecrypto.SkCipher = field(repr=False)


class IkeSa:
    """One IKE SA with one peer, in either role.  See the module documentation."""

    def __init__(
        self,
        config: IkeConfig,
        *,
        initiator: bool,
        local_addr: tuple[str, int],
        remote_addr: tuple[str, int],
        rng: random.Random | None = None,
        spi_allocator: SpiAllocator | None = None,
    ) -> None:
        """``rng`` makes SPIs and nonces reproducible (tests only; by default they come
        from ``os.urandom``; DH keys and IVs always come from OpenSSL / ``os.urandom``).
        ``spi_allocator(protocol)`` returns the inbound SPI for a new CHILD SA (e.g.
        from the kernel's XFRM ALLOCSPI); by default a random SPI >= 256 is used."""
        for label, addr in (("local_addr", local_addr), ("remote_addr", remote_addr)):
            try:
                ipaddress.ip_address(addr[0])
            except (ValueError, TypeError, IndexError) as exc:
                raise IkeLocalError(f"IkeSa: {label} {addr!r} is not (IP address, port)") from exc
            if not 0 < int(addr[1]) < 65536:
                raise IkeLocalError(f"IkeSa: {label} port {addr[1]!r} is not in 1..65535")
        self.config = config
        #: True when we are the original initiator of this IKE SA (RFC 7296 2.2).
        self.initiator = initiator
        self.local_addr: Addr = (str(local_addr[0]), int(local_addr[1]))
        self.remote_addr: Addr = (str(remote_addr[0]), int(remote_addr[1]))
        self._rng = rng
        self._spi_allocator = spi_allocator
        self.state = IkeState.INITIAL
        self.spi_i: bytes = self._random_spi() if initiator else _ZERO_SPI
        self.spi_r: bytes = _ZERO_SPI
        #: NAT detection (RFC 7296 2.23): we are / the peer is behind a NAT.
        self.nat_local = False
        self.nat_remote = False
        #: The peer's authenticated identity once established.
        self.remote_id: Identity | None = None
        #: Count of unexpected internal errors swallowed at the receive boundary
        #: (a bug if ever non-zero; the fuzz tests assert it stays 0).
        self.internal_errors = 0
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Addr]] = []
        # message IDs (RFC 7296 2.2) and the window of one (2.3)
        self._next_id = 0
        self._outstanding: _Request | None = None
        self._queue: deque[Callable[[float], None]] = deque()
        self._peer_next_id = 0
        self._cache_request: bytes | None = None
        self._cache_response: list[bytes] = []
        # handshake material
        self._candidates: list[IkeConfig] = [config]
        self._ike_offer: tuple[codec.Proposal, ...] = ()
        self._ike_choice: Proposal | None = None
        self._dh_group = 0
        self._dh: ikecrypto.DhKeyPair | None = None
        self._nonce_i = b""
        self._nonce_r = b""
        self._cookie = b""
        self._sa_init_retries = 0
        self._sa_init_request = b""
        self._sa_init_response = b""
        self._keys: _Keys | None = None
        self._child_offer: _ChildOffer | None = None
        self._children: dict[int, _Child] = {}
        self._half_open_deadline: float | None = None
        #: When the IKE SA reaches its lifetime (deleted then: rekeying is not done yet).
        self._expires_at: float | None = None
        #: Last time an authenticated message came from the peer (dead peer detection).
        self._last_heard: float | None = None
        #: The peer sent INITIAL_CONTACT in IKE_AUTH (RFC 7296 2.4).
        self.peer_initial_contact = False
        #: The request being handled, while a protocol error in it may be answered.
        self._answering: tuple[Message, bytes, Addr] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def nat_detected(self) -> bool:
        """True when a NAT was detected on either side (or encapsulation forced)."""
        return self.nat_local or self.nat_remote

    @property
    def local_spi(self) -> bytes:
        """The IKE SPI we chose: what a driver files this SA under (see
        :func:`route_datagram`).  Zero for a responder before it answered."""
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state == IkeState.ESTABLISHED

    @property
    def child_sas(self) -> tuple[ChildSaEstablished, ...]:
        """The live CHILD SAs (as their establishment events)."""
        return tuple(c.event for c in self._children.values())

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (
            f"<IkeSa {self.config.name!r} {role} {self.spi_i.hex()}:{self.spi_r.hex()} "
            f"{self.state.name}>"
        )

    # ------------------------------------------------------------------ driver API
    @classmethod
    def accept(
        cls,
        lookup: ConfigLookup,
        data: bytes,
        local_addr: tuple[str, int],
        remote_addr: tuple[str, int],
        now: float,
        *,
        rng: random.Random | None = None,
        spi_allocator: SpiAllocator | None = None,
    ) -> Self | None:
        """Create a responder from a datagram that should be an IKE_SA_INIT request.

        Returns None (and logs why) when the datagram is not a new IKE_SA_INIT request or
        no connection is configured for the address pair.  Otherwise the returned SA has
        processed the request: its response (possibly an error notification, after which
        the SA is already in an end state) waits in ``datagrams_to_send``.
        """
        try:
            payload, _ = _strip_marker(data)
            msg = codec.parse_message(payload)
        except IkeError as exc:
            log.info("dropped datagram from %s: %s", _fmt(remote_addr), exc)
            return None
        if (
            msg.exchange_type != ExchangeType.IKE_SA_INIT
            or msg.is_response
            or not msg.is_initiator
            or msg.message_id != 0
            or msg.spi_r != _ZERO_SPI
            or msg.spi_i == _ZERO_SPI
        ):
            log.info(
                "dropped datagram from %s: not an initial IKE_SA_INIT request", _fmt(remote_addr)
            )
            return None
        candidates = list(lookup(local_addr[0], remote_addr[0]))
        if not candidates:
            log.warning(
                "no connection configured for %s -> %s: IKE_SA_INIT dropped",
                _fmt(remote_addr),
                _fmt(local_addr),
            )
            return None
        sa = cls(
            candidates[0],
            initiator=False,
            local_addr=local_addr,
            remote_addr=remote_addr,
            rng=rng,
            spi_allocator=spi_allocator,
        )
        sa._candidates = candidates
        sa.spi_i = msg.spi_i
        sa.receive_datagram(data, remote_addr, now)
        if sa.state == IkeState.INITIAL:
            return None  # dropped (logged by receive_datagram)
        return sa

    def initiate(self, now: float) -> None:
        """Initiator: queue the IKE_SA_INIT request (RFC 7296 1.2)."""
        if not self.initiator:
            raise IkeLocalError("IkeSa.initiate: this SA is a responder (use IkeSa.accept)")
        if self.state != IkeState.INITIAL:
            raise IkeLocalError(f"IkeSa.initiate: already started (state {self.state.name})")
        if self.config.role == Role.RESPONDER:
            raise IkeLocalError(
                f"IkeSa.initiate: connection {self.config.name!r} has role RESPONDER; "
                "set role INITIATOR or EITHER to initiate it"
            )
        first = self.config.ike_proposals[0].of_type(TransformType.DH)[0]
        self._dh_group = first.id
        self._nonce_i = self._random_bytes(self.config.nonce_length)
        self._ike_offer = _wire_proposals(self.config.ike_proposals, ProtocolId.IKE, b"")
        self._set_state(IkeState.EXPECT_SA_INIT_RESPONSE)
        self._send_sa_init(now)

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Handle one received UDP payload from ``addr``.  Never raises on peer input."""
        if self.state in END_STATES:
            return
        try:
            self._receive(bytes(data), (str(addr[0]), int(addr[1])), now)
        except IkeIntegrityError as exc:
            # RFC 7296 2.21.2: a message that fails its integrity check is dropped
            log.info("%s: dropped message from %s: %s", self._name, _fmt(addr), exc)
        except IkeParseError as exc:
            log.info("%s: dropped malformed message from %s: %s", self._name, _fmt(addr), exc)
        except IkeProtocolError as exc:
            if self._answering is None:
                log.info("%s: dropped message from %s: %s", self._name, _fmt(addr), exc)
            else:
                try:
                    self._answer_error(exc)
                except Exception as inner:  # never raise on peer input
                    self.internal_errors += 1
                    log.error("%s: internal error answering %s: %r", self._name, exc, inner)
        except IkePeerError as exc:
            log.info("%s: dropped message from %s: %s", self._name, _fmt(addr), exc)
        except IkeLocalError as exc:
            self.internal_errors += 1
            log.error("%s: internal error on message from %s: %s", self._name, _fmt(addr), exc)
        except Exception as exc:  # the engine never raises on peer input
            self.internal_errors += 1
            log.error(
                "%s: internal error on message from %s: %s: %s",
                self._name,
                _fmt(addr),
                type(exc).__name__,
                exc,
            )
        finally:
            self._answering = None

    def _answer_error(self, exc: IkeProtocolError) -> None:
        """The one place a peer's protocol error becomes a NOTIFY (RFC 7296 2.21)."""
        assert self._answering is not None
        msg, data, addr = self._answering
        self._answering = None
        name = _notify_name(exc.notify)
        log.warning("%s: answering %s: %s", self._name, name, exc.message)
        if msg.exchange_type == ExchangeType.IKE_SA_INIT:
            self._sa_init_error(msg, data, addr, exc.notify, exc.data)
            self._fail(f"IKE_SA_INIT request refused: {exc.message}", int(exc.notify))
            return
        reply = self._protect(
            msg.exchange_type, msg.message_id, True, [NotifyPayload(exc.notify, exc.data)]
        )
        self._respond(reply, data, addr)
        if msg.exchange_type == ExchangeType.IKE_AUTH:
            self._fail(f"IKE_AUTH request refused: {exc.message}", int(exc.notify))

    def handle_timer(self, now: float) -> None:
        """Retransmit, give up, or expire a half-open SA, as due at ``now``."""
        if self.state in END_STATES:
            return
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._fail(
                f"no IKE_AUTH request within {self.config.half_open_timeout:g} s "
                "of IKE_SA_INIT (half-open SA expired)",
                None,
            )
            return
        if (
            self._expires_at is not None
            and now >= self._expires_at
            and self.state == IkeState.ESTABLISHED
        ):
            # No rekeying yet (RFC 7296 2.8): at the end of its lifetime the IKE SA is
            # deleted, and the agent initiates a new one.
            log.info("%s: lifetime of %g s reached, deleting", self._name, self.config.ike_lifetime)
            self._expires_at = None
            self.delete(now)
        dpd = self._dpd_due()
        if dpd is not None and now >= dpd:
            log.debug("%s: nothing heard for %g s, checking liveness", self._name, now - dpd)
            self._last_heard = now
            self._start_request(ExchangeType.INFORMATIONAL, [], "liveness", now)
            return
        req = self._outstanding
        if req is None or now < req.next_at:
            return
        retransmits = req.sends - 1
        if retransmits >= self.config.retransmit.max_retransmits:
            self._give_up(req)
            return
        req.sends += 1
        req.next_at = now + self.config.retransmit.delay(req.sends)
        log.debug(
            "%s: retransmit %d of %s request %d",
            self._name,
            req.sends - 1,
            _exchange_name(req.exchange),
            req.message_id,
        )
        self._outbox.append((req.datagram, self.remote_addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        """Datagrams to send now, as (UDP payload, destination); send them from
        ``local_addr``."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The time at which ``handle_timer`` must next be called, or None."""
        if self.state in END_STATES:
            return None
        times = []
        if self._outstanding is not None:
            times.append(self._outstanding.next_at)
        if self._half_open_deadline is not None:
            times.append(self._half_open_deadline)
        if self._expires_at is not None and self.state == IkeState.ESTABLISHED:
            times.append(self._expires_at)
        dpd = self._dpd_due()
        if dpd is not None:
            times.append(dpd)
        return min(times) if times else None

    def _dpd_due(self) -> float | None:
        """When an idle established SA checks its peer's liveness (RFC 7296 2.4)."""
        interval = self.config.dpd_interval
        if (
            interval is None
            or self._last_heard is None
            or self.state != IkeState.ESTABLISHED
            or self._outstanding is not None
            or self._queue
        ):
            return None
        return self._last_heard + interval

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def delete(self, now: float) -> None:
        """Delete the IKE SA: INFORMATIONAL with a Delete payload (RFC 7296 1.4.1); its
        CHILD SAs go with it.  Before the SA is established it is just abandoned."""
        if self.state in END_STATES or self.state == IkeState.EXPECT_DELETE_RESPONSE:
            return
        if self.state != IkeState.ESTABLISHED:
            log.info("%s: abandoning IKE SA before it was established", self._name)
            self._outstanding = None
            self._end_deleted(by_peer=False, reason="deleted locally")
            return
        self._set_state(IkeState.EXPECT_DELETE_RESPONSE)
        # Window of one (RFC 7296 2.3): the Delete waits for a pending request's answer.
        self._queue.clear()
        self._request_later(
            lambda t: self._start_request(
                ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, 0)], "delete_ike", t
            ),
            now,
        )

    def close_child(self, spi: int, now: float) -> None:
        """Delete the CHILD SA whose inbound SPI is ``spi`` (RFC 7296 1.4.1)."""
        if self.state != IkeState.ESTABLISHED:
            raise IkeLocalError(f"IkeSa.close_child: IKE SA is {self.state.name}, not ESTABLISHED")
        child = self._children.get(spi)
        if child is None:
            raise IkeLocalError(f"IkeSa.close_child: no CHILD SA with inbound SPI {spi:#010x}")
        if child.deleting:
            return
        child.deleting = True
        ev = child.event
        self._request_later(
            lambda t: self._start_request(
                ExchangeType.INFORMATIONAL,
                [DeletePayload(ev.protocol, 4, (spi.to_bytes(4, "big"),))],
                "delete_child",
                t,
                child_spi=spi,
            ),
            now,
        )

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request (RFC 7296 1.4); no answer after the
        retransmissions fails the SA."""
        if self.state != IkeState.ESTABLISHED:
            raise IkeLocalError(
                f"IkeSa.check_liveness: IKE SA is {self.state.name}, not ESTABLISHED"
            )
        self._request_later(
            lambda t: self._start_request(ExchangeType.INFORMATIONAL, [], "liveness", t), now
        )

    # ------------------------------------------------------------------ internals
    @property
    def _name(self) -> str:
        return f"IKE SA {self.config.name} {self.spi_i.hex()}:{self.spi_r.hex()}"

    def _set_state(self, new: IkeState) -> None:
        old = self.state
        if not is_allowed(old, new):
            raise IkeLocalError(f"{self._name}: transition {old.name} -> {new.name} not allowed")
        self.state = new
        if new in END_STATES:
            self._half_open_deadline = None
            self._outstanding = None
            self._queue.clear()
        log.info("%s: %s -> %s", self._name, old.name, new.name)

    def _random_bytes(self, n: int) -> bytes:
        if self._rng is not None:
            return self._rng.randbytes(n)
        import os

        return os.urandom(n)

    def _random_spi(self) -> bytes:
        while True:
            spi = self._random_bytes(8)
            if spi[:4] != b"\x00\x00\x00\x00":
                return spi

    def _alloc_child_spi(self) -> int | None:
        """Our inbound SPI for a new CHILD SA, or None (logged) if the allocator fails."""
        if self._spi_allocator is None:
            return self._random_child_spi()
        try:
            spi = int(self._spi_allocator(self.config.child.protocol))
        except Exception as exc:
            log.error("%s: spi_allocator failed: %s: %s", self._name, type(exc).__name__, exc)
            return None
        if not 256 <= spi < 2**32 or spi in self._children:
            log.error(
                "%s: spi_allocator returned %#x: a CHILD SA SPI is 256..2**32-1 and unused",
                self._name,
                spi,
            )
            return None
        return spi

    def _random_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._random_bytes(4), "big")
            # RFC 4303 2.1: 1..255 reserved; also avoid reusing a live one
            if spi >= 256 and spi not in self._children:
                return spi

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _fail(self, reason: str, notify: int | None) -> None:
        if self.state in END_STATES:
            return
        log.warning("%s: failed: %s", self._name, reason)
        self._drop_children(by_peer=False, reason=f"IKE SA failed: {reason}")
        self._set_state(IkeState.FAILED)
        self._emit(IkeSaFailed(reason, notify, connection=self.config.name))

    def _end_deleted(self, *, by_peer: bool, reason: str) -> None:
        self._drop_children(by_peer=by_peer, reason=reason)
        self._set_state(IkeState.DELETED)
        self._emit(IkeSaDeleted(self.spi_i, self.spi_r, by_peer, connection=self.config.name))

    def _drop_children(self, *, by_peer: bool, reason: str) -> None:
        for child in self._children.values():
            self._child_deleted(child.event, by_peer, reason)
        self._children.clear()

    def _child_deleted(self, ev: ChildSaEstablished, by_peer: bool, reason: str) -> None:
        self._emit(
            ChildSaDeleted(
                ev.protocol,
                ev.inbound_spi,
                ev.outbound_spi,
                by_peer,
                reason,
                connection=self.config.name,
            )
        )

    def _child_failed(self, reason: str, notify: int | None) -> None:
        self._emit(ChildSaFailed(reason, notify, connection=self.config.name))

    def _give_up(self, req: _Request) -> None:
        tries = req.sends - 1
        if req.kind == "delete_ike":
            # RFC 7296 1.4.1: the SA is gone anyway
            log.info("%s: no answer to our Delete; IKE SA deleted anyway", self._name)
            self._end_deleted(by_peer=False, reason="deleted locally (peer did not answer)")
            return
        self._fail(
            f"no response to {_exchange_name(req.exchange)} request {req.message_id} "
            f"after {tries} retransmissions",
            None,
        )

    # ------------------------------------------------------------------ sending
    def _frame(self, message: bytes) -> bytes:
        # RFC 7296 2.23 / RFC 3948 2.2: IKE on port 4500 carries the non-ESP marker
        return NON_ESP_MARKER + message if self.local_addr[1] == NATT_PORT else message

    def _header(self, exchange: int, message_id: int, response: bool) -> Message:
        flags = HeaderFlag.NONE
        if self.initiator:
            flags |= HeaderFlag.INITIATOR
        if response:
            flags |= HeaderFlag.RESPONSE
        return Message(self.spi_i, self.spi_r, exchange, int(flags), message_id)

    def _protect(
        self, exchange: int, message_id: int, response: bool, inner: Sequence[Payload]
    ) -> bytes:
        assert self._keys is not None
        return codec.encrypt_sk(
            self._header(exchange, message_id, response), list(inner), self._keys.out_cipher
        )

    def _request_later(self, start: Callable[[float], None], now: float) -> None:
        if self._outstanding is None:
            start(now)
        else:
            self._queue.append(start)

    def _start_request(
        self,
        exchange: int,
        inner: Sequence[Payload],
        kind: str,
        now: float,
        *,
        child_spi: int | None = None,
    ) -> None:
        message_id = self._next_id
        self._next_id += 1
        data = self._frame(self._protect(exchange, message_id, False, inner))
        self._track(_Request(message_id, exchange, data, kind, 1, 0.0, child_spi), now)

    def _track(self, req: _Request, now: float) -> None:
        req.next_at = now + self.config.retransmit.delay(1)
        self._outstanding = req
        self._outbox.append((req.datagram, self.remote_addr))

    def _request_done(self, now: float) -> None:
        self._outstanding = None
        while self._queue and self._outstanding is None and self.state not in END_STATES:
            self._queue.popleft()(now)

    def _respond(self, data: bytes, request: bytes, addr: Addr) -> None:
        # RFC 7296 2.1: keep the response for retransmissions of the same request
        framed = self._frame(data)
        self._cache_request = request
        self._cache_response = [framed]
        self._peer_next_id += 1
        # RFC 7296 2.11: reply to the address and port the request came from
        self._outbox.append((framed, addr))

    # ------------------------------------------------------------------ receiving
    def _receive(self, data: bytes, addr: Addr, now: float) -> None:
        payload, via_natt = _strip_marker(data)
        msg = codec.parse_message(payload)
        if msg.spi_i != self.spi_i:
            raise IkePeerError(f"SPIi {msg.spi_i.hex()} is not this SA's")
        # RFC 7296 3.1: the I bit tells who sent it
        if msg.is_initiator == self.initiator:
            raise IkePeerError("I flag says the message comes from our own role")
        if msg.is_response:
            self._on_response(msg, payload, addr, via_natt, now)
        else:
            self._on_request(msg, payload, addr, via_natt, now)

    def _on_request(
        self, msg: Message, data: bytes, addr: Addr, via_natt: bool, now: float
    ) -> None:
        # RFC 7296 2.2 / 2.3: the next request, or a retransmission of the last one
        if msg.message_id == self._peer_next_id - 1 and self._cache_response:
            if data == self._cache_request:
                log.debug(
                    "%s: retransmitted request %d, resending response", self._name, msg.message_id
                )
                self._outbox.extend((d, addr) for d in self._cache_response)
                return
            raise IkePeerError(f"request {msg.message_id} differs from the one already answered")
        if msg.message_id != self._peer_next_id:
            raise IkePeerError(
                f"request message ID {msg.message_id}, expected {self._peer_next_id}"
            )
        if msg.spi_r != self.spi_r and not (
            msg.exchange_type == ExchangeType.IKE_SA_INIT and msg.spi_r == _ZERO_SPI
        ):
            raise IkePeerError(f"SPIr {msg.spi_r.hex()} is not this SA's")
        exchange = msg.exchange_type
        if exchange == ExchangeType.IKE_SA_INIT:
            if self.initiator or self.state != IkeState.INITIAL:
                raise IkePeerError("unexpected IKE_SA_INIT request")
            # RFC 7296 2.21.1: errors in IKE_SA_INIT may be answered in clear
            self._answering = (msg, data, addr)
            self._responder_sa_init(msg, data, addr, via_natt, now)
            return
        if self._keys is None:
            raise IkePeerError(f"{_exchange_name(exchange)} request before IKE_SA_INIT")
        if exchange == ExchangeType.IKE_AUTH:
            if self.initiator or self.state != IkeState.EXPECT_AUTH_REQUEST:
                raise IkePeerError("unexpected IKE_AUTH request")
        elif self.state not in (IkeState.ESTABLISHED, IkeState.EXPECT_DELETE_RESPONSE):
            raise IkePeerError(f"{_exchange_name(exchange)} request before IKE_AUTH completed")
        # From here a protocol error is answered: the integrity check passes before the
        # inner payloads are parsed (IkeIntegrityError / IkeParseError are dropped).
        self._answering = (msg, data, addr)
        inner = codec.decrypt_sk(data, msg, self._keys.in_cipher)
        self._last_heard = now
        if via_natt and self.local_addr[1] != NATT_PORT:
            self.local_addr = (self.local_addr[0], NATT_PORT)  # RFC 7296 2.23
        if exchange == ExchangeType.IKE_AUTH:
            self._responder_auth(msg, inner, data, addr, via_natt, now)
            return
        self._note_peer_address(addr, via_natt)
        if exchange == ExchangeType.INFORMATIONAL:
            self._on_informational(msg, inner, data, addr, now)
        elif exchange == ExchangeType.CREATE_CHILD_SA:
            # Rekeying / more CHILD SAs are not implemented yet (RFC 7296 1.3).
            log.info("%s: CREATE_CHILD_SA request answered NO_ADDITIONAL_SAS", self._name)
            reply = self._protect(
                exchange, msg.message_id, True, [NotifyPayload(NotifyType.NO_ADDITIONAL_SAS)]
            )
            self._respond(reply, data, addr)
        else:
            raise IkePeerError(f"unsupported exchange type {exchange}")

    def _on_response(
        self, msg: Message, data: bytes, addr: Addr, via_natt: bool, now: float
    ) -> None:
        req = self._outstanding
        if req is None or msg.message_id != req.message_id or msg.exchange_type != req.exchange:
            raise IkePeerError(
                f"response {msg.message_id} ({_exchange_name(msg.exchange_type)}) "
                "matches no outstanding request"
            )
        if req.kind == "sa_init":
            self._initiator_sa_init_response(msg, data, addr, now)
            return
        if msg.spi_r != self.spi_r:
            raise IkePeerError(f"SPIr {msg.spi_r.hex()} is not this SA's")
        assert self._keys is not None
        inner = codec.decrypt_sk(data, msg, self._keys.in_cipher)
        self._last_heard = now
        if req.kind == "auth":
            self._initiator_auth_response(inner, now)
            return
        self._outstanding = None
        if req.kind == "delete_ike":
            self._end_deleted(by_peer=False, reason="deleted locally")
            return
        if req.kind == "delete_child" and req.child_spi is not None:
            child = self._children.pop(req.child_spi, None)
            if child is not None:
                self._child_deleted(child.event, False, "deleted locally")
        self._request_done(now)

    def _note_peer_address(self, addr: Addr, via_natt: bool) -> None:
        """RFC 7296 2.23: behind a NAT, follow the peer's address of the last
        authenticated request; a marker means the peer talks to our port 4500."""
        if via_natt and self.local_addr[1] != NATT_PORT:
            self.local_addr = (self.local_addr[0], NATT_PORT)
        if addr != self.remote_addr and (self.nat_remote or via_natt):
            log.info("%s: peer moved %s -> %s", self._name, _fmt(self.remote_addr), _fmt(addr))
            self.remote_addr = addr

    # ------------------------------------------------------------------ IKE_SA_INIT
    def _sa_init_payloads(self) -> list[Payload]:
        assert self._dh is not None
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(NotifyPayload(NotifyType.COOKIE, self._cookie))  # RFC 7296 2.6
        payloads += [
            SaPayload(self._ike_offer),
            KePayload(self._dh_group, self._dh.public),
            NoncePayload(self._nonce_i),
        ]
        payloads += self._nat_notifies(self.spi_i, _ZERO_SPI)
        return payloads

    def _nat_notifies(self, spi_i: bytes, spi_r: bytes) -> list[Payload]:
        if not self.config.nat_traversal:
            return []
        if self.config.force_encapsulation:
            # Pretend a NAT rewrote our source (like charon's encap=yes).
            source = self._random_bytes(20)
        else:
            source = nat_hash(spi_i, spi_r, self.local_addr)
        return [
            NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, source),
            NotifyPayload(
                NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, self.remote_addr)
            ),
        ]

    def _check_nat(self, msg: Message | Sequence[Payload], spi_r: bytes, src: Addr) -> None:
        """RFC 7296 2.23: compare the peer's hashes with the addresses we see."""
        payloads = msg.payloads if isinstance(msg, Message) else msg
        sources = [
            p.data
            for p in payloads
            if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
        ]
        dests = [
            p.data
            for p in payloads
            if isinstance(p, NotifyPayload)
            and p.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP
        ]
        if not self.config.nat_traversal or not sources or not dests:
            self.nat_local = self.config.force_encapsulation
            return
        self.nat_remote = nat_hash(self.spi_i, spi_r, src) not in sources
        self.nat_local = (
            nat_hash(self.spi_i, spi_r, self.local_addr) not in dests
            or self.config.force_encapsulation
        )
        if self.nat_detected:
            log.info(
                "%s: NAT detected (local %s, remote %s)",
                self._name,
                self.nat_local,
                self.nat_remote,
            )

    def _send_sa_init(self, now: float) -> None:
        self._dh = ikecrypto.dh_generate(self._dh_group)
        msg = Message(self.spi_i, _ZERO_SPI, ExchangeType.IKE_SA_INIT, int(HeaderFlag.INITIATOR), 0)
        raw = codec.build_message(
            Message(
                msg.spi_i,
                msg.spi_r,
                msg.exchange_type,
                msg.flags,
                0,
                tuple(self._sa_init_payloads()),
            )
        )
        self._sa_init_request = raw
        self._next_id = 1
        self._track(_Request(0, ExchangeType.IKE_SA_INIT, self._frame(raw), "sa_init", 1, 0.0), now)

    def _responder_sa_init(
        self, msg: Message, data: bytes, addr: Addr, via_natt: bool, now: float
    ) -> None:
        if via_natt:
            self.local_addr = (self.local_addr[0], NATT_PORT)
        sa = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa is None or ke is None or nonce is None:
            raise IkeProtocolError(
                "IKE_SA_INIT request lacks SA, KE or Nonce", notify=NotifyType.INVALID_SYNTAX
            )
        choice = None
        for cfg in self._candidates:
            choice = select_proposal(sa.proposals, cfg.ike_proposals, ProtocolId.IKE)
            if choice is not None:
                self.config = cfg
                break
        if choice is None:
            raise IkeProtocolError(
                "no IKE proposal of the peer is acceptable", notify=NotifyType.NO_PROPOSAL_CHOSEN
            )
        offered, chosen = choice
        group = _one(chosen, TransformType.DH)
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
            ) and any(_contains_choice(p, alt) for p in self.config.ike_proposals):
                chosen, group = alt, Transform(TransformType.DH, ke.dh_group)
        _check_nonce(nonce.data, chosen)
        if ke.dh_group != group.id:
            # RFC 7296 1.2 / 3.4: tell the initiator which group we want; no state kept
            log.info(
                "%s: peer sent KE for group %d, asking for group %d (INVALID_KE_PAYLOAD)",
                self._name,
                ke.dh_group,
                group.id,
            )
            self._sa_init_error(
                msg, data, addr, NotifyType.INVALID_KE_PAYLOAD, int(group.id).to_bytes(2, "big")
            )
            self._set_state(IkeState.FAILED)
            return
        self.spi_r = self._random_spi()
        dh = ikecrypto.dh_generate(group.id)
        shared = dh.shared_secret(ke.data)  # IkeInvalidKeError -> INVALID_SYNTAX below
        self._dh = dh
        self._dh_group = group.id
        self._ike_choice = chosen
        self._nonce_i = nonce.data
        self._nonce_r = self._random_bytes(self.config.nonce_length)
        self._check_nat(msg, _ZERO_SPI, addr)
        reply_payloads: list[Payload] = [
            SaPayload(
                (codec.Proposal(offered.num, ProtocolId.IKE, b"", _wire_transforms(chosen)),)
            ),
            KePayload(group.id, dh.public),
            NoncePayload(self._nonce_r),
        ]
        if self.config.nat_traversal and msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP):
            reply_payloads += self._nat_notifies(self.spi_i, self.spi_r)
        reply = codec.build_message(
            Message(
                self.spi_i,
                self.spi_r,
                ExchangeType.IKE_SA_INIT,
                int(HeaderFlag.RESPONSE),
                0,
                tuple(reply_payloads),
            )
        )
        self._sa_init_request = data
        self._sa_init_response = reply
        self._derive_ike_keys(shared)
        self._set_state(IkeState.EXPECT_AUTH_REQUEST)
        self._half_open_deadline = now + self.config.half_open_timeout
        self._next_id = 0
        self._respond(reply, data, addr)

    def _sa_init_error(
        self, msg: Message, data: bytes, addr: Addr, notify: int, ndata: bytes
    ) -> None:
        # RFC 7296 2.6: error responses to IKE_SA_INIT carry a zero SPIr
        reply = codec.build_message(
            Message(
                msg.spi_i,
                _ZERO_SPI,
                ExchangeType.IKE_SA_INIT,
                int(HeaderFlag.RESPONSE),
                0,
                (NotifyPayload(notify, ndata),),
            )
        )
        self._outbox.append((self._frame(reply), addr))

    def _initiator_sa_init_response(
        self, msg: Message, data: bytes, addr: Addr, now: float
    ) -> None:
        # RFC 7296 2.6: a COOKIE request -> same request with the cookie first
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and len(msg.payloads) == 1:
            if self._sa_init_retries >= _MAX_SA_INIT_RETRIES:
                self._fail("responder keeps asking for cookies", NotifyType.COOKIE)
                return
            self._sa_init_retries += 1
            self._cookie = cookie[0].data
            log.info("%s: responder asked for a cookie, retrying IKE_SA_INIT", self._name)
            self._send_sa_init(now)
            return
        invalid_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke:
            self._retry_ke(invalid_ke[0].data, now)
            return
        errors = [n for n in msg.notifies() if n.is_error]
        if errors:
            # RFC 7296 2.21.1: in IKE_SA_INIT any error notification fails the exchange
            code = errors[0].notify_type
            self._fail(
                f"peer refused IKE_SA_INIT with {_notify_name(code)}",
                code,
            )
            return
        sa = msg.get(SaPayload)
        ke = msg.get(KePayload)
        nonce = msg.get(NoncePayload)
        if sa is None or ke is None or nonce is None or msg.spi_r == _ZERO_SPI:
            raise IkePeerError("IKE_SA_INIT response lacks SA, KE, Nonce or SPIr")
        if len(sa.proposals) != 1:
            raise IkePeerError("IKE_SA_INIT response must hold exactly one proposal")
        try:
            chosen = _check_choice(sa.proposals[0], self._ike_offer, ProtocolId.IKE)
        except IkeProtocolError as exc:
            self._fail(f"bad IKE_SA_INIT response: {exc.message}", exc.notify)
            return
        group = _one(chosen, TransformType.DH)
        if group is None or group.id != self._dh_group or ke.dh_group != self._dh_group:
            self._fail("responder chose a DH group other than the one of our KE", None)
            return
        try:
            _check_nonce(nonce.data, chosen)
        except IkeProtocolError as exc:
            self._fail(f"bad IKE_SA_INIT response: {exc.message}", exc.notify)
            return
        assert self._dh is not None
        shared = self._dh.shared_secret(ke.data)
        self.spi_r = msg.spi_r
        self._ike_choice = chosen
        self._nonce_r = nonce.data
        self._sa_init_response = data
        self._check_nat(msg, self.spi_r, addr)
        self._derive_ike_keys(shared)
        self._outstanding = None
        if self.nat_detected:
            # RFC 7296 2.23: move to port 4500 for everything that follows
            self.local_addr = (self.local_addr[0], NATT_PORT)
            self.remote_addr = (self.remote_addr[0], NATT_PORT)
        self._send_auth_request(now)

    def _retry_ke(self, data: bytes, now: float) -> None:
        if len(data) != 2:
            raise IkePeerError("INVALID_KE_PAYLOAD without a 2-byte group")
        group = int.from_bytes(data, "big")
        offered = {t.id for p in self.config.ike_proposals for t in p.of_type(TransformType.DH)}
        if group not in offered or group == self._dh_group:
            self._fail(
                f"responder wants DH group {group}, which we did not offer",
                NotifyType.INVALID_KE_PAYLOAD,
            )
            return
        if self._sa_init_retries >= _MAX_SA_INIT_RETRIES:
            self._fail("too many INVALID_KE_PAYLOAD answers", NotifyType.INVALID_KE_PAYLOAD)
            return
        self._sa_init_retries += 1
        log.info("%s: responder asked for DH group %d, retrying IKE_SA_INIT", self._name, group)
        self._dh_group = group
        self._set_state(IkeState.EXPECT_SA_INIT_RESPONSE)
        self._send_sa_init(now)

    def _derive_ike_keys(self, shared: bytes) -> None:
        # RFC 7296 2.13 / 2.14
        assert self._ike_choice is not None
        keys = ikecrypto.derive_ike_keys(
            _suite(self._ike_choice), shared, self._nonce_i, self._nonce_r, self.spi_i, self.spi_r
        )
        mine, theirs = keys.initiator_cipher(), keys.responder_cipher()
        if not self.initiator:
            mine, theirs = theirs, mine
        self._keys = _Keys(
            sk_d=keys.sk_d, sk_pi=keys.sk_pi, sk_pr=keys.sk_pr, out_cipher=mine, in_cipher=theirs
        )

    # ------------------------------------------------------------------ IKE_AUTH
    def _auth_octets(self, initiator_side: bool, id_body: bytes) -> bytes:
        """RFC 7296 2.15: InitiatorSignedOctets / ResponderSignedOctets."""
        assert self._keys is not None and self._ike_choice is not None
        prf = _prf_id(self._ike_choice)
        if initiator_side:
            maced = ikecrypto.maced_id(prf, self._keys.sk_pi, id_body)
            return self._sa_init_request + self._nonce_r + maced
        maced = ikecrypto.maced_id(prf, self._keys.sk_pr, id_body)
        return self._sa_init_response + self._nonce_i + maced

    def _psk_auth(self, psk: bytes, octets: bytes) -> bytes:
        # RFC 7296 2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
        assert self._ike_choice is not None
        return ikecrypto.psk_auth_data(_prf_id(self._ike_choice), psk, octets)

    def _send_auth_request(self, now: float) -> None:
        cfg = self.config
        child = cfg.child
        idi = IdiPayload(cfg.local_id.type, cfg.local_id.data)
        auth = self._psk_auth(cfg.psk, self._auth_octets(True, codec.payload_body(idi)))
        spi = self._alloc_child_spi()
        if spi is None:
            self._fail("no inbound SPI could be allocated for the CHILD SA", None)
            return
        offer = _wire_proposals(child.proposals, child.protocol, spi.to_bytes(4, "big"))
        transport = child.mode == Mode.TRANSPORT
        self._child_offer = _ChildOffer(spi, offer, transport)
        inner: list[Payload] = [idi, AuthPayload(AuthMethod.PSK, auth)]
        if cfg.initial_contact:
            inner.append(NotifyPayload(NotifyType.INITIAL_CONTACT))  # RFC 7296 2.4
        if transport:
            inner.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))  # RFC 7296 1.3.1
        inner += [
            SaPayload(offer),
            TsiPayload(_to_wire_ts(child.local_ts)),
            TsrPayload(_to_wire_ts(child.remote_ts)),
        ]
        self._set_state(IkeState.EXPECT_AUTH_RESPONSE)
        message_id = self._next_id
        self._next_id += 1
        data = self._frame(self._protect(ExchangeType.IKE_AUTH, message_id, False, inner))
        self._track(_Request(message_id, ExchangeType.IKE_AUTH, data, "auth", 1, 0.0), now)

    def _responder_auth(
        self,
        msg: Message,
        inner: Sequence[Payload],
        data: bytes,
        addr: Addr,
        via_natt: bool,
        now: float,
    ) -> None:
        idi = next((p for p in inner if isinstance(p, IdiPayload)), None)
        auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
        if idi is None or auth is None:
            self._auth_reply_error(msg, data, addr, NotifyType.INVALID_SYNTAX)
            self._fail("IKE_AUTH request lacks IDi or AUTH", NotifyType.INVALID_SYNTAX)
            return
        peer = _identity(idi.id_type, idi.data)
        cfg = self._config_for_peer(peer)
        if cfg is None:
            log.warning(
                "%s: no connection accepts peer identity %s: AUTHENTICATION_FAILED",
                self._name,
                _peer_text(idi.id_type, idi.data),
            )
            self._auth_reply_error(msg, data, addr, NotifyType.AUTHENTICATION_FAILED)
            self._fail(
                f"peer identity {_peer_text(idi.id_type, idi.data)} is not accepted",
                NotifyType.AUTHENTICATION_FAILED,
            )
            return
        expected = self._psk_auth(cfg.psk, self._auth_octets(True, codec.payload_body(idi)))
        if auth.method != AuthMethod.PSK or not hmac.compare_digest(expected, auth.data):
            # DESIGN convention 4: authentication failures drop (no SA kept) and log
            why = (
                "its AUTH does not match our pre-shared key"
                if auth.method == AuthMethod.PSK
                else f"auth method {_auth_method_name(auth.method)} is not supported (PSK only)"
            )
            log.warning(
                "%s: authentication of peer %s from %s failed: %s",
                self._name,
                _peer_text(idi.id_type, idi.data),
                _fmt(addr),
                why,
            )
            self._auth_reply_error(msg, data, addr, NotifyType.AUTHENTICATION_FAILED)
            self._fail("peer failed PSK authentication", NotifyType.AUTHENTICATION_FAILED)
            return
        self.config = cfg
        self.remote_id = peer
        self.peer_initial_contact = any(
            isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT
            for p in inner
        )
        self._half_open_deadline = None
        self._note_peer_address(addr, via_natt)
        idr = IdrPayload(cfg.local_id.type, cfg.local_id.data)
        my_auth = self._psk_auth(cfg.psk, self._auth_octets(False, codec.payload_body(idr)))
        reply: list[Payload] = [idr, AuthPayload(AuthMethod.PSK, my_auth)]
        child_event: ChildSaEstablished | None = None
        child_error: tuple[str, int] | None = None
        try:
            child_payloads, child_event = self._responder_child(inner)
            reply += child_payloads
        except IkeProtocolError as exc:
            child_error = (exc.message, int(exc.notify))
            reply.append(NotifyPayload(exc.notify, exc.data))
        self._respond(self._protect(ExchangeType.IKE_AUTH, msg.message_id, True, reply), data, addr)
        self._set_state(IkeState.ESTABLISHED)
        self._expires_at = now + self.config.ike_lifetime
        self._last_heard = now
        self._emit(self._established_event())
        if child_event is not None:
            self._children[child_event.inbound_spi] = _Child(child_event)
            self._emit(child_event)
        elif child_error is not None:
            log.warning("%s: CHILD SA refused: %s", self._name, child_error[0])
            self._child_failed(child_error[0], child_error[1])

    def _config_for_peer(self, peer: Identity | None) -> IkeConfig | None:
        assert self._ike_choice is not None
        for cfg in self._candidates:
            if cfg.remote_id is not None and cfg.remote_id != peer:
                continue
            if cfg is not self.config and not any(
                _contains_choice(p, self._ike_choice) for p in cfg.ike_proposals
            ):
                continue
            return cfg
        return None

    def _auth_reply_error(self, msg: Message, data: bytes, addr: Addr, notify: int) -> None:
        reply = self._protect(ExchangeType.IKE_AUTH, msg.message_id, True, [NotifyPayload(notify)])
        self._respond(reply, data, addr)

    def _responder_child(
        self, inner: Sequence[Payload]
    ) -> tuple[list[Payload], ChildSaEstablished]:
        child = self.config.child
        sa = next((p for p in inner if isinstance(p, SaPayload)), None)
        tsi = next((p for p in inner if isinstance(p, TsiPayload)), None)
        tsr = next((p for p in inner if isinstance(p, TsrPayload)), None)
        if sa is None or tsi is None or tsr is None:
            raise IkeProtocolError(
                "IKE_AUTH request has no CHILD SA (SA, TSi, TSr)", notify=NotifyType.INVALID_SYNTAX
            )
        choice = select_proposal(sa.proposals, child.proposals, child.protocol)
        if choice is None:
            raise IkeProtocolError(
                f"no {child.protocol.name} proposal of the peer is acceptable",
                notify=NotifyType.NO_PROPOSAL_CHOSEN,
            )
        offered, chosen = choice
        if len(offered.spi) != 4 or offered.spi == b"\x00\x00\x00\x00":
            raise IkeProtocolError(
                f"{child.protocol.name} proposal SPI must be 4 non-zero bytes",
                notify=NotifyType.INVALID_SYNTAX,
            )
        transport_asked = any(
            isinstance(p, NotifyPayload) and p.notify_type == NotifyType.USE_TRANSPORT_MODE
            for p in inner
        )
        if child.mode == Mode.TRANSPORT and not transport_asked:
            raise IkeProtocolError(
                "peer asked for tunnel mode, transport mode is configured",
                notify=NotifyType.NO_PROPOSAL_CHOSEN,
            )
        # RFC 7296 1.3.1: a tunnel-mode responder answers without USE_TRANSPORT_MODE
        mode = Mode.TRANSPORT if transport_asked and child.mode == Mode.TRANSPORT else Mode.TUNNEL
        # RFC 7296 2.9: narrow to what our policy allows (TSi = peer side, TSr = ours)
        peer_ts = narrow_selectors(_from_wire_ts(tsi.selectors), child.remote_ts)
        our_ts = narrow_selectors(_from_wire_ts(tsr.selectors), child.local_ts)
        if not peer_ts or not our_ts:
            raise IkeProtocolError(
                "the peer's traffic selectors are outside the configured ones",
                notify=NotifyType.TS_UNACCEPTABLE,
            )
        spi = self._alloc_child_spi()
        if spi is None:
            raise IkeProtocolError(
                "no inbound SPI could be allocated for the CHILD SA",
                notify=NotifyType.NO_ADDITIONAL_SAS,
            )
        payloads: list[Payload] = []
        if mode == Mode.TRANSPORT:
            payloads.append(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        payloads += [
            SaPayload(
                (
                    codec.Proposal(
                        offered.num,
                        child.protocol,
                        spi.to_bytes(4, "big"),
                        _wire_transforms(chosen),
                    ),
                )
            ),
            TsiPayload(_to_wire_ts(peer_ts)),
            TsrPayload(_to_wire_ts(our_ts)),
        ]
        event = self._child_event(
            chosen, child, mode, spi, int.from_bytes(offered.spi, "big"), our_ts, peer_ts
        )
        return payloads, event

    def _initiator_auth_response(self, inner: Sequence[Payload], now: float) -> None:
        cfg = self.config
        notifies = [p for p in inner if isinstance(p, NotifyPayload)]
        idr = next((p for p in inner if isinstance(p, IdrPayload)), None)
        auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
        if idr is None or auth is None:
            errors = [n for n in notifies if n.is_error]
            code = errors[0].notify_type if errors else NotifyType.INVALID_SYNTAX
            self._fail(f"peer refused IKE_AUTH with {_notify_name(code)}", code)
            return
        peer = _identity(idr.id_type, idr.data)
        expected = self._psk_auth(cfg.psk, self._auth_octets(False, codec.payload_body(idr)))
        if cfg.remote_id is not None and cfg.remote_id != peer:
            reason = f"peer identity {_peer_text(idr.id_type, idr.data)} is not {cfg.remote_id}"
        elif auth.method != AuthMethod.PSK or not hmac.compare_digest(expected, auth.data):
            reason = "responder failed PSK authentication"
        else:
            reason = ""
        if reason:
            log.warning("%s: %s", self._name, reason)
            # RFC 7296 2.21.2: tell the responder in a separate INFORMATIONAL exchange
            self._outstanding = None
            self._start_request(
                ExchangeType.INFORMATIONAL,
                [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)],
                "auth_failed",
                now,
            )
            self._fail(reason, NotifyType.AUTHENTICATION_FAILED)
            return
        self.remote_id = peer
        self._outstanding = None
        self._set_state(IkeState.ESTABLISHED)
        self._expires_at = now + self.config.ike_lifetime
        self._last_heard = now
        self._emit(self._established_event())
        self._initiator_child(inner, notifies, now)
        self._request_done(now)

    def _initiator_child(
        self, inner: Sequence[Payload], notifies: list[NotifyPayload], now: float
    ) -> None:
        cfg = self.config
        offer = self._child_offer
        assert offer is not None
        errors = [n for n in notifies if n.is_error]
        if errors:
            code = errors[0].notify_type
            reason = f"peer refused the CHILD SA with {_notify_name(code)}"
            log.warning("%s: %s", self._name, reason)
            self._child_failed(reason, int(code))
            return
        sa = next((p for p in inner if isinstance(p, SaPayload)), None)
        tsi = next((p for p in inner if isinstance(p, TsiPayload)), None)
        tsr = next((p for p in inner if isinstance(p, TsrPayload)), None)
        if sa is None or tsi is None or tsr is None or len(sa.proposals) != 1:
            self._child_failed("IKE_AUTH response has no usable CHILD SA", None)
            return
        try:
            chosen = _check_choice(sa.proposals[0], offer.proposals, cfg.child.protocol)
        except IkeProtocolError as exc:
            self._child_failed(exc.message, int(exc.notify))
            return
        peer_spi_raw = sa.proposals[0].spi
        if len(peer_spi_raw) != 4 or peer_spi_raw == b"\x00\x00\x00\x00":
            self._child_failed("responder's CHILD SA SPI is not 4 non-zero bytes", None)
            return
        transport = any(n.notify_type == NotifyType.USE_TRANSPORT_MODE for n in notifies)
        our_ts = _from_wire_ts(tsi.selectors)
        peer_ts = _from_wire_ts(tsr.selectors)
        problem = ""
        if transport != offer.transport:
            # RFC 7296 1.3.1: the responder may refuse transport mode; we insist on ours
            problem = (
                f"responder chose {'transport' if transport else 'tunnel'} mode, "
                f"{cfg.child.mode.value} mode is configured"
            )
        elif not _within(our_ts, cfg.child.local_ts) or not _within(peer_ts, cfg.child.remote_ts):
            problem = "responder's traffic selectors are not within the ones we proposed"
        mode = Mode.TRANSPORT if transport else Mode.TUNNEL
        event = self._child_event(
            chosen, cfg.child, mode, offer.spi, int.from_bytes(peer_spi_raw, "big"), our_ts, peer_ts
        )
        if problem:
            log.warning("%s: CHILD SA rejected: %s; deleting it", self._name, problem)
            self._child_failed(problem, None)
            spi = offer.spi
            self._request_later(
                lambda t: self._start_request(
                    ExchangeType.INFORMATIONAL,
                    [DeletePayload(cfg.child.protocol, 4, (spi.to_bytes(4, "big"),))],
                    "delete_unwanted_child",
                    t,
                ),
                now,
            )
            return
        self._children[offer.spi] = _Child(event)
        self._emit(event)

    def _child_event(
        self,
        chosen: Proposal,
        child: ChildConfig,
        mode: Mode,
        inbound_spi: int,
        outbound_spi: int,
        local_ts: tuple[TrafficSelector, ...],
        remote_ts: tuple[TrafficSelector, ...],
    ) -> ChildSaEstablished:
        """Keys of the CHILD SA (RFC 7296 2.17) as an event."""
        assert self._keys is not None and self._ike_choice is not None
        encr = _one(chosen, TransformType.ENCR)
        integ = _one(chosen, TransformType.INTEG)
        if integ is not None and integ.id == IntegId.NONE:
            integ = None
        esn = _one(chosen, TransformType.ESN)
        enc_name: str | None = None
        icv = 0
        if encr is not None:
            enc_name = _XFRM_ENCR[encr.id]
            if encr.id in _AEAD_IDS:
                icv = 16  # GCM-16 and Poly1305 tags are 16 bytes
        integ_name: str | None = None
        trunc: int | None = None
        if integ is not None:
            integ_name, trunc = _XFRM_INTEG[integ.id]
            icv = trunc // 8
        # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr), initiator->responder keys first
        keys = ikecrypto.derive_child_keys(
            _prf_id(self._ike_choice),
            self._keys.sk_d,
            self._nonce_i,
            self._nonce_r,
            encr_id=encr.id if encr is not None else None,
            encr_key_bits=encr.key_length if encr is not None else None,
            integ_id=integ.id if integ is not None else IntegId.NONE,
        )
        out_e, out_a, in_e, in_a = (
            (keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r)
            if self.initiator
            else (keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i)
        )
        encap = self.nat_detected
        return ChildSaEstablished(
            connection=self.config.name,
            ike_spi_i=self.spi_i,
            ike_spi_r=self.spi_r,
            protocol=child.protocol,
            mode=mode,
            inbound_spi=inbound_spi,
            outbound_spi=outbound_spi,
            encryption=enc_name,
            encryption_key_bits=len(out_e) * 8,
            integrity=integ_name,
            integrity_truncation_bits=trunc,
            icv_length=icv,
            inbound_encryption_key=in_e,
            outbound_encryption_key=out_e,
            inbound_integrity_key=in_a,
            outbound_integrity_key=out_a,
            local_ts=local_ts,
            remote_ts=remote_ts,
            local_address=self.local_addr[0],
            remote_address=self.remote_addr[0],
            encapsulation=encap,
            encap_local_port=self.local_addr[1] if encap else None,
            encap_remote_port=self.remote_addr[1] if encap else None,
            esn=esn is not None and esn.id == EsnId.ESN,
            lifetime=child.lifetime,
            soft_lifetime=child.soft_lifetime,
            proposal=str(chosen),
        )

    def _established_event(self) -> IkeSaEstablished:
        assert self._ike_choice is not None and self.remote_id is not None
        encr = _one(self._ike_choice, TransformType.ENCR)
        integ = _one(self._ike_choice, TransformType.INTEG)
        prf = _one(self._ike_choice, TransformType.PRF)
        log.info(
            "%s: established with %s at %s (%s)",
            self._name,
            self.remote_id,
            _fmt(self.remote_addr),
            self._ike_choice,
        )
        return IkeSaEstablished(
            connection=self.config.name,
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            initiator=self.initiator,
            local_id=self.config.local_id,
            remote_id=self.remote_id,
            local_addr=self.local_addr,
            remote_addr=self.remote_addr,
            encryption=str(encr),
            integrity=str(integ) if integ is not None and integ.id != IntegId.NONE else None,
            prf=str(prf),
            dh_group=self._dh_group,
            nat_local=self.nat_local,
            nat_remote=self.nat_remote,
            lifetime=self.config.ike_lifetime,
            initial_contact=self.peer_initial_contact,
        )

    # ------------------------------------------------------------------ INFORMATIONAL
    def _on_informational(
        self, msg: Message, inner: Sequence[Payload], data: bytes, addr: Addr, now: float
    ) -> None:
        reply: list[Payload] = []
        delete_ike = False
        for p in inner:
            if isinstance(p, DeletePayload):
                if p.protocol_id == ProtocolId.IKE:
                    delete_ike = True
                elif p.protocol_id in (ProtocolId.ESP, ProtocolId.AH):
                    ours = self._peer_deletes_children(p)
                    if ours:
                        reply.append(DeletePayload(p.protocol_id, 4, ours))
            elif isinstance(p, NotifyPayload) and p.is_error:
                log.warning("%s: peer reports %s", self._name, _notify_name(p.notify_type))
        if delete_ike:
            reply = []  # RFC 7296 1.4.1: the answer to an IKE SA Delete is empty
        self._respond(
            self._protect(ExchangeType.INFORMATIONAL, msg.message_id, True, reply), data, addr
        )
        auth_failed = any(
            isinstance(p, NotifyPayload) and p.notify_type == NotifyType.AUTHENTICATION_FAILED
            for p in inner
        )
        if delete_ike:
            log.info("%s: peer deleted the IKE SA", self._name)
            self._end_deleted(by_peer=True, reason="deleted by peer")
        elif auth_failed:
            # RFC 7296 2.21.2: the initiator rejected our authentication
            self._fail("peer reports AUTHENTICATION_FAILED", NotifyType.AUTHENTICATION_FAILED)

    def _peer_deletes_children(self, p: DeletePayload) -> tuple[bytes, ...]:
        """RFC 7296 1.4.1: the peer lists its inbound SPIs (our outbound); we answer
        with our inbound SPIs of the same pairs."""
        ours: list[bytes] = []
        if p.spi_size != 4:
            return ()
        for raw in p.spis:
            outbound = int.from_bytes(raw, "big")
            match = next(
                (
                    c
                    for c in self._children.values()
                    if c.event.outbound_spi == outbound and c.event.protocol == p.protocol_id
                ),
                None,
            )
            if match is None:
                continue
            ev = match.event
            del self._children[ev.inbound_spi]
            if not match.deleting:
                ours.append(ev.inbound_spi.to_bytes(4, "big"))
            self._child_deleted(ev, True, "deleted by peer")
        return tuple(ours)


# ================================================================================ helpers


@dataclass(frozen=True, slots=True)
class DatagramRoute:
    """Where a received datagram belongs (for a driver's demultiplexing)."""

    #: The SPI the receiving side chose: SPIr when the sender is the original
    #: initiator, SPIi otherwise.  Zero for a new IKE_SA_INIT request.
    local_spi: bytes
    spi_i: bytes
    #: An IKE_SA_INIT request without SPIr: a retransmission for the responder filed
    #: under (``spi_i``, remote address), or else a new SA for :meth:`IkeSa.accept`.
    initial_request: bool


def route_datagram(data: bytes) -> DatagramRoute | None:
    """Read just enough of a datagram (marker stripped) to route it to its IkeSa;
    None when it is not an IKEv2 message.  Never raises."""
    payload, _ = _strip_marker(bytes(data))
    try:
        hdr = codec.parse_header(payload)
    except IkeError:
        return None
    from_initiator = bool(hdr.flags & HeaderFlag.INITIATOR)
    initial = (
        hdr.exchange_type == ExchangeType.IKE_SA_INIT
        and from_initiator
        and not hdr.flags & HeaderFlag.RESPONSE
        and hdr.spi_r == _ZERO_SPI
    )
    local = hdr.spi_r if from_initiator else hdr.spi_i
    return DatagramRoute(local, hdr.spi_i, initial)


def _strip_marker(data: bytes) -> tuple[bytes, bool]:
    """Remove the non-ESP marker of port 4500 (RFC 3948 2.2) when present.

    An IKE header starts with SPIi, which is never zero; four zero bytes followed by a
    header whose Length matches the rest is the marker."""
    if len(data) >= 4 + 28 and data[:4] == NON_ESP_MARKER:
        rest = data[4:]
        if int.from_bytes(rest[24:28], "big") == len(rest):
            return rest, True
    return data, False


def _cookie_for(secret: bytes, nonce: bytes, addr: Addr, spi_i: bytes) -> bytes:
    # RFC 7296 2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>);
    # here HMAC-SHA-256 keyed with the secret, and a 4-byte version derived from it.
    version = hashlib.sha256(b"ipsecd cookie version" + secret).digest()[:4]
    ip = ipaddress.ip_address(addr[0]).packed
    return version + hmac.digest(secret, nonce + ip + spi_i, "sha256")


def cookie_challenge(
    data: bytes, remote_addr: tuple[str, int], secret: bytes, *, previous: bytes | None = None
) -> bytes | None:
    """Stateless DoS protection for a responder under load (RFC 7296 2.6).

    For a new IKE_SA_INIT request: None when it carries a valid COOKIE (made with
    ``secret`` or, after a rotation, ``previous``), so the driver goes on with
    :meth:`IkeSa.accept`; otherwise the datagram to send back to ``remote_addr``: an
    IKE_SA_INIT response holding only N(COOKIE), after which no state is kept.  Other
    datagrams give None.  Never raises on peer input."""
    payload, via_natt = _strip_marker(bytes(data))
    try:
        msg = codec.parse_message(payload)
    except IkeError:
        return None
    if (
        msg.exchange_type != ExchangeType.IKE_SA_INIT
        or msg.is_response
        or msg.message_id != 0
        or msg.spi_r != _ZERO_SPI
    ):
        return None
    nonce = msg.get(NoncePayload)
    if nonce is None:
        return None  # accept() answers INVALID_SYNTAX
    first = msg.payloads[0] if msg.payloads else None
    if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
        for key in (secret, previous):
            if key is not None and hmac.compare_digest(
                first.data, _cookie_for(key, nonce.data, remote_addr, msg.spi_i)
            ):
                return None
    reply = codec.build_message(
        Message(
            msg.spi_i,
            _ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            int(HeaderFlag.RESPONSE),
            0,
            (
                NotifyPayload(
                    NotifyType.COOKIE, _cookie_for(secret, nonce.data, remote_addr, msg.spi_i)
                ),
            ),
        )
    )
    return NON_ESP_MARKER + reply if via_natt else reply


def _wire_transforms(p: Proposal) -> tuple[codec.Transform, ...]:
    return tuple(codec.Transform.make(t.type, t.id, t.key_length) for t in p.transforms)


def _contains_choice(ours: Proposal, chosen: Proposal) -> bool:
    have = {(t.type, t.id, t.key_length) for t in ours.transforms}
    return all((t.type, t.id, t.key_length) in have for t in chosen.transforms)


def _check_nonce(nonce: bytes, choice: Proposal) -> None:
    # RFC 7296 2.10: at least 128 bits and at least half the PRF's key size
    need = max(16, ikecrypto.prf_output_len(_prf_id(choice)) // 2)
    if len(nonce) < need:
        raise IkeProtocolError(
            f"nonce of {len(nonce)} bytes is shorter than the {need} the PRF needs (RFC 7296 2.10)",
            notify=NotifyType.INVALID_SYNTAX,
        )


def _prf_id(choice: Proposal) -> int:
    prf = _one(choice, TransformType.PRF)
    assert prf is not None
    return prf.id


def _suite(choice: Proposal) -> ikecrypto.IkeSuite:
    encr = _one(choice, TransformType.ENCR)
    prf = _one(choice, TransformType.PRF)
    integ = _one(choice, TransformType.INTEG)
    dh = _one(choice, TransformType.DH)
    assert encr is not None and prf is not None and dh is not None
    return ikecrypto.IkeSuite(
        encr_id=encr.id,
        encr_key_bits=encr.key_length,
        prf_id=prf.id,
        integ_id=integ.id if integ is not None else IntegId.NONE,
        dh_group=dh.id,
    )


def _identity(id_type: int, data: bytes) -> Identity | None:
    try:
        return Identity(IdType(id_type), data)
    except (ValueError, IkeLocalError):
        return None


def _peer_text(id_type: int, data: bytes) -> str:
    ident = _identity(id_type, data)
    return str(ident) if ident is not None else f"id type {id_type}"


def _fmt(addr: tuple[str, int]) -> str:
    host = addr[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _auth_method_name(code: int) -> str:
    try:
        return AuthMethod(code).name
    except ValueError:
        return str(code)


def _exchange_name(code: int) -> str:
    try:
        return ExchangeType(code).name
    except ValueError:
        return f"exchange {code}"


def _notify_name(code: int) -> str:
    try:
        return NotifyType(code).name
    except ValueError:
        return f"notify {code}"
