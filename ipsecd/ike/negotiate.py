"""Pure negotiation rules of IKEv2: proposals, traffic selectors, NAT detection, cookies.

No state and no I/O: every function here takes what it needs and returns a value or
raises :class:`~ipsecd.ike.errors.IkeProtocolError` with the wire code.  The tasks of
:mod:`ipsecd.ike.tasks` call them for the exchange they serve (the ``with_dh`` argument
of :func:`select_proposal` says whether the exchange carries a KE payload: IKE_SA_INIT
and CREATE_CHILD_SA do, IKE_AUTH does not, RFC 7296 1.2 and 1.3).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import codec
from . import crypto as ikecrypto
from .codec import Message, NoncePayload, NotifyPayload
from .config import Identity, Proposal, TrafficSelector, Transform
from .constants import (
    AttributeType,
    AuthMethod,
    DhGroup,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IntegId,
    NotifyType,
    ProtocolId,
    TransformType,
)
from .errors import IkeError, IkeLocalError, IkeProtocolError

__all__ = [
    "NATT_PORT",
    "NON_ESP_MARKER",
    "ZERO_SPI",
    "Addr",
    "DatagramRoute",
    "check_choice",
    "check_nonce",
    "cookie_challenge",
    "expressible",
    "fmt_addr",
    "narrow_selectors",
    "nat_hash",
    "route_datagram",
    "select_proposal",
    "strip_marker",
    "wire_proposals",
]

Addr = tuple[str, int]

NATT_PORT = 4500  # RFC 7296 2.23
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
ZERO_SPI = b"\x00" * 8
#: RFC 7296 3.10.1: the data of a COOKIE notification is 1 to 64 octets.
COOKIE_MAX = 64


# ============================================================== proposals (RFC 7296 2.7)


def to_config_transform(t: codec.Transform) -> Transform | None:
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


def _types(transforms: Iterable[Transform], protocol: int, with_dh: bool) -> set[TransformType]:
    kinds: set[TransformType] = set()
    for t in transforms:
        if t.type == TransformType.INTEG and t.id == IntegId.NONE:
            continue  # "no integrity" listed explicitly with an AEAD cipher
        if t.type == TransformType.DH and (not with_dh or t.id == DhGroup.NONE):
            continue  # RFC 7296 1.2: no KE (so no DH) in IKE_AUTH's child proposals
        kinds.add(t.type)
    if protocol in (ProtocolId.ESP, ProtocolId.AH):
        kinds.add(TransformType.ESN)  # an absent ESN transform means "no ESN"
    return kinds


def select_proposal(
    offered: Sequence[codec.Proposal],
    ours: Sequence[Proposal],
    protocol: int,
    *,
    with_dh: bool,
) -> tuple[codec.Proposal, Proposal] | None:
    """Responder's choice (RFC 7296 2.7, 3.3.6): our proposals in our order of
    preference; the first offered proposal of the right protocol with the same transform
    types where every type has a transform we accept.  Returns the offered proposal (for
    its number and SPI) and the chosen transforms (one per type, only types the
    initiator offered: no ESN transform is added to a proposal that had none), or None.
    ``with_dh``: the exchange carries KE, so DH transforms must match too."""
    for mine in ours:
        my_types = _types(mine.transforms, protocol, with_dh)
        for prop in offered:
            if prop.protocol_id != protocol:
                continue
            if any(int(raw.transform_type) not in _KNOWN_TYPES for raw in prop.transforms):
                continue  # RFC 7296 3.3.6: an unknown transform type rejects the proposal
            present = [
                Transform(TransformType(raw.transform_type), int(raw.transform_id))
                for raw in prop.transforms
            ]
            if _types(present, protocol, with_dh) != my_types:
                continue  # RFC 7296 3.3.6: one transform of every type must be chosen
            offered_esn = any(t.type == TransformType.ESN for t in present)
            # RFC 8247 / RFC 8221: forbidden algorithms are never accepted
            known_t = [
                t
                for t in map(to_config_transform, prop.transforms)
                if t is not None
                and ikecrypto.transform_allowed(protocol, t.type, t.id, t.key_length)
            ]
            chosen: list[Transform] = []
            for kind in sorted(my_types, key=int):
                candidates = [t for t in mine.transforms if t.type == kind]
                if kind == TransformType.ESN and not candidates:
                    candidates = [Transform(TransformType.ESN, EsnId.NO_ESN)]
                offered_kind = {(t.id, t.key_length) for t in known_t if t.type == kind}
                if kind == TransformType.ESN and not offered_esn:
                    offered_kind = {(EsnId.NO_ESN, None)}
                pick = next((c for c in candidates if (c.id, c.key_length) in offered_kind), None)
                if pick is None:
                    break
                if kind == TransformType.ESN and not offered_esn:
                    continue  # accepted as "no ESN", but never echoed back
                chosen.append(pick)
            else:
                return prop, Proposal(tuple(chosen))
    return None


def check_choice(
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
        ct = to_config_transform(t)
        if ct is None:  # pragma: no cover - offered_set only holds our own transforms
            raise IkeProtocolError("unusable transform", notify=NotifyType.NO_PROPOSAL_CHOSEN)
        chosen.append(ct)
    kinds = [t.type for t in chosen]
    mine = {TransformType(t.transform_type) for t in ours.transforms}
    if len(set(kinds)) != len(kinds) or set(kinds) != mine:
        raise IkeProtocolError(
            "responder's proposal does not have exactly one transform of each type",
            notify=NotifyType.NO_PROPOSAL_CHOSEN,
        )
    return Proposal(tuple(chosen))


def wire_proposals(
    proposals: Sequence[Proposal], protocol: int, spi: bytes, *, with_dh: bool = True
) -> tuple[codec.Proposal, ...]:
    """Our proposals as SA payload proposals, numbered from 1; ``with_dh=False`` drops
    DH transforms (RFC 7296 1.2: the CHILD SA of IKE_AUTH has no KE, so no PFS)."""
    out = []
    for i, p in enumerate(proposals, start=1):
        transforms = tuple(
            codec.Transform.make(t.type, t.id, t.key_length)
            for t in p.transforms
            if with_dh or t.type != TransformType.DH
        )
        out.append(codec.Proposal(num=i, protocol_id=protocol, spi=spi, transforms=transforms))
    return tuple(out)


def wire_choice(num: int, protocol: int, spi: bytes, chosen: Proposal) -> codec.SaPayload:
    """The responder's SA payload: one proposal with the chosen transforms."""
    transforms = tuple(codec.Transform.make(t.type, t.id, t.key_length) for t in chosen.transforms)
    return codec.SaPayload((codec.Proposal(num, protocol, spi, transforms),))


def one(p: Proposal, kind: TransformType) -> Transform | None:
    found = p.of_type(kind)
    return found[0] if found else None


def dh_of(p: Proposal) -> int | None:
    """The DH group of a chosen proposal, None when there is none (or NONE)."""
    dh = one(p, TransformType.DH)
    return None if dh is None or dh.id == DhGroup.NONE else dh.id


def first_dh(proposals: Sequence[Proposal]) -> int | None:
    """The group an initiator sends KE for: the first DH of the first proposal."""
    for p in proposals:
        dh = dh_of(p)
        if dh is not None:
            return dh
    return None


def offers_group(proposals: Sequence[Proposal], group: int) -> bool:
    return any(t.id == group for p in proposals for t in p.of_type(TransformType.DH))


def contains_choice(ours: Proposal, chosen: Proposal) -> bool:
    have = {(t.type, t.id, t.key_length) for t in ours.transforms}
    return all((t.type, t.id, t.key_length) in have for t in chosen.transforms)


def prf_id(choice: Proposal) -> int:
    prf = one(choice, TransformType.PRF)
    if prf is None:  # pragma: no cover - IKE proposals always have a PRF (config check)
        raise IkeLocalError("IKE proposal without PRF")
    return prf.id


def suite(choice: Proposal) -> ikecrypto.IkeSuite:
    encr = one(choice, TransformType.ENCR)
    prf = one(choice, TransformType.PRF)
    integ = one(choice, TransformType.INTEG)
    dh = one(choice, TransformType.DH)
    if encr is None or prf is None or dh is None:  # pragma: no cover - checked choice
        raise IkeLocalError("IKE proposal lacks ENCR, PRF or DH")
    return ikecrypto.IkeSuite(
        encr_id=encr.id,
        encr_key_bits=encr.key_length,
        prf_id=prf.id,
        integ_id=integ.id if integ is not None else IntegId.NONE,
        dh_group=dh.id,
    )


def check_nonce(nonce: bytes, choice: Proposal | None) -> None:
    """RFC 7296 2.10: at least 128 bits and at least half the key size of the
    negotiated PRF (its output size for HMAC PRFs)."""
    need = 16
    if choice is not None and one(choice, TransformType.PRF) is not None:
        need = max(16, ikecrypto.prf_output_len(prf_id(choice)) // 2)
    if len(nonce) < need:
        raise IkeProtocolError(
            f"nonce of {len(nonce)} bytes is shorter than the {need} the PRF needs (RFC 7296 2.10)",
            notify=NotifyType.INVALID_SYNTAX,
        )


# ===================================================== traffic selectors (RFC 7296 2.9)


def from_wire_ts(selectors: Iterable[codec.AnySelector]) -> tuple[TrafficSelector, ...]:
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


def to_wire_ts(selectors: Iterable[TrafficSelector]) -> tuple[codec.TrafficSelector, ...]:
    return tuple(
        codec.TrafficSelector(s.ip_protocol, s.start_port, s.end_port, s.start, s.end)
        for s in selectors
    )


def expressible(ts: TrafficSelector) -> bool:
    """Whether a selector maps onto Linux XFRM selectors: one port or every port
    (XFRM has a port and a mask, no ranges); address ranges split into prefixes."""
    return ts.start_port == ts.end_port or (ts.start_port, ts.end_port) == (0, 65535)


def narrow_selectors(
    proposed: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """RFC 7296 2.9: the parts of ``proposed`` that ``allowed`` permits (every non-empty
    pairwise intersection, without duplicates), keeping only selectors the kernel can
    express (:func:`expressible`).  Empty means TS_UNACCEPTABLE."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            got = p.intersect(a)
            if got is not None and expressible(got) and got not in out:
                out.append(got)
    return tuple(out)


def within(got: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
    return bool(got) and all(any(o.contains(g) for o in offered) for g in got)


# =========================================================== NAT detection (RFC 7296 2.23)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    """NAT_DETECTION_*_IP data for an address (RFC 7296 2.23)."""
    return ikecrypto.nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(addr[0]).packed, addr[1])


# ================================================================ framing and routing


def strip_marker(data: bytes) -> tuple[bytes, bool]:
    """Remove the non-ESP marker of port 4500 (RFC 3948 2.2) when present.

    An IKE header starts with SPIi, which is never zero; four zero bytes followed by a
    header whose Length matches the rest is the marker."""
    if len(data) >= 4 + 28 and data[:4] == NON_ESP_MARKER:
        rest = data[4:]
        if int.from_bytes(rest[24:28], "big") == len(rest):
            return rest, True
    return data, False


@dataclass(frozen=True, slots=True)
class DatagramRoute:
    """Where a received datagram belongs (for demultiplexing)."""

    #: The SPI the receiving side chose: SPIr when the sender is the original
    #: initiator, SPIi otherwise.  Zero for a new IKE_SA_INIT request.
    local_spi: bytes
    spi_i: bytes
    spi_r: bytes
    #: An IKE_SA_INIT request without SPIr: a retransmission for the half-open
    #: responder of (``spi_i``, remote address), or else a new SA.
    initial_request: bool
    is_response: bool
    exchange: int
    message_id: int


def route_datagram(data: bytes) -> DatagramRoute | None:
    """Read just enough of a datagram (marker stripped) to route it to its IKE SA;
    None when it is not an IKEv2 message.  Never raises."""
    payload, _ = strip_marker(bytes(data))
    try:
        hdr = codec.parse_header(payload)
    except IkeError:
        return None
    from_initiator = bool(hdr.flags & HeaderFlag.INITIATOR)
    response = bool(hdr.flags & HeaderFlag.RESPONSE)
    initial = (
        hdr.exchange_type == ExchangeType.IKE_SA_INIT
        and from_initiator
        and not response
        and hdr.spi_r == ZERO_SPI
    )
    local = hdr.spi_r if from_initiator else hdr.spi_i
    return DatagramRoute(
        local, hdr.spi_i, hdr.spi_r, initial, response, int(hdr.exchange_type), hdr.message_id
    )


# ==================================================================== cookies (RFC 7296 2.6)


def cookie_for(secret: bytes, nonce: bytes, addr: Addr, spi_i: bytes) -> bytes:
    """RFC 7296 2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>);
    here HMAC-SHA-256 keyed with the secret, and a 4-byte version derived from it."""
    version = hashlib.sha256(b"ipsecd cookie version" + secret).digest()[:4]
    ip = ipaddress.ip_address(addr[0]).packed
    return version + hmac.digest(secret, nonce + ip + spi_i, "sha256")


def cookie_challenge(
    data: bytes, remote_addr: Addr, secret: bytes, *, previous: bytes | None = None
) -> bytes | None:
    """Stateless DoS protection for a responder under load (RFC 7296 2.6).

    For a new IKE_SA_INIT request: None when it carries a valid COOKIE (made with
    ``secret`` or, after a rotation, ``previous``), so the caller goes on; otherwise
    the datagram to send back to ``remote_addr``: an IKE_SA_INIT response holding only
    N(COOKIE), after which no state is kept.  Other datagrams give None.  Never raises
    on peer input."""
    payload, via_natt = strip_marker(bytes(data))
    try:
        msg = codec.parse_message(payload)
    except IkeError:
        return None
    if (
        msg.exchange_type != ExchangeType.IKE_SA_INIT
        or msg.is_response
        or msg.message_id != 0
        or msg.spi_r != ZERO_SPI
    ):
        return None
    nonce = msg.get(NoncePayload)
    if nonce is None:
        return None  # the responder drops it as malformed
    first = msg.payloads[0] if msg.payloads else None
    if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
        for key in (secret, previous):
            if key is not None and hmac.compare_digest(
                first.data, cookie_for(key, nonce.data, remote_addr, msg.spi_i)
            ):
                return None
    reply = codec.build_message(
        Message(
            msg.spi_i,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            int(HeaderFlag.RESPONSE),
            0,
            (
                NotifyPayload(
                    NotifyType.COOKIE, cookie_for(secret, nonce.data, remote_addr, msg.spi_i)
                ),
            ),
        )
    )
    return NON_ESP_MARKER + reply if via_natt else reply


# ================================================================================ names


def identity_of(id_type: int, data: bytes) -> Identity | None:
    """The peer's identity, or None when the ID payload cannot be decoded (e.g. an
    ID_IPV4_ADDR that is not 4 bytes): such a peer never authenticates."""
    from .constants import IdType

    try:
        return Identity(IdType(id_type), data)
    except (ValueError, IkeLocalError):
        return None


def peer_text(id_type: int, data: bytes) -> str:
    ident = identity_of(id_type, data)
    return str(ident) if ident is not None else f"undecodable ID (type {id_type})"


def fmt_addr(addr: Addr) -> str:
    host = addr[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def auth_method_name(code: int) -> str:
    try:
        return AuthMethod(code).name
    except ValueError:
        return str(code)


def exchange_name(code: int) -> str:
    try:
        return ExchangeType(code).name
    except ValueError:
        return f"exchange {code}"


def notify_name(code: int) -> str:
    try:
        return NotifyType(code).name
    except ValueError:
        return f"notify {code}"
