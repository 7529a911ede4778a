"""IKEv2 message codec (RFC 7296 section 3, RFC 7383): pure parse/build over dataclasses.

Entry points
------------
``parse_header(data) -> IkeHeader``
    The fixed 28-byte header only (for demultiplexing by SPI before a full parse).
``parse_message(data) -> Message`` / ``build_message(msg) -> bytes``
    A whole datagram (without the 4-byte non-ESP marker of port 4500; the driver strips
    it).  ``build_message(parse_message(x)) == x`` for every well-formed ``x`` whose
    reserved bits are zero.
``parse_payloads(data, first_type)`` / ``build_payloads(payloads) -> (first_type, bytes)``
    A bare payload chain (e.g. the decrypted content of an SK payload).
``payload_body(p) -> bytes``
    The body of one payload without its 4-byte generic header; e.g. the
    "RestOfInitIDPayload" that RFC 7296 2.15 signs is ``payload_body(idi)``.
``encrypt_sk(msg, inner, cipher) -> bytes`` / ``decrypt_sk(data, msg, cipher) -> payloads``
    Protect / unprotect the inner payload chain of a message with the Encrypted payload
    (RFC 7296 3.14), ``cipher`` being an :class:`ipsecd.ike.crypto.SkCipher`.
``encrypt_skf(...)``, ``decrypt_skf(...)``, :class:`FragmentCollector`
    RFC 7383 fragmentation: one message split into SKF-protected datagrams, and
    reassembly of the received fragments into the inner payload chain.

Payload classes (all ``@dataclass(frozen=True, slots=True)``; every payload has a
keyword-only ``critical`` flag, RFC 7296 3.2): :class:`SaPayload` (with
:class:`Proposal`, :class:`Transform`, :class:`TransformAttribute`), :class:`KePayload`,
:class:`IdiPayload`, :class:`IdrPayload`, :class:`CertPayload`, :class:`CertReqPayload`,
:class:`AuthPayload`, :class:`NoncePayload`, :class:`NotifyPayload`,
:class:`DeletePayload`, :class:`VendorIdPayload`, :class:`TsiPayload`,
:class:`TsrPayload` (with :class:`TrafficSelector` / :class:`RawTrafficSelector`),
:class:`SkPayload`, :class:`SkfPayload` and :class:`UnknownPayload` for anything else
(CP, EAP, private types...).

Code fields are typed ``int``: they hold the IntEnum member of
:mod:`ipsecd.ike.constants` when the value is known and the bare ``int`` otherwise;
unknown transform, notify, ID, certificate and auth codes are kept, never rejected.

Errors: every length and count is checked; a malformed input raises
:class:`~ipsecd.ike.errors.IkeParseError` (INVALID_SYNTAX, naming the structure and the
byte offset); an unknown payload with the critical bit raises
:class:`~ipsecd.ike.errors.IkeProtocolError` (UNSUPPORTED_CRITICAL_PAYLOAD, data = the
type octet); a major version other than 2 raises ``IkeProtocolError``
(INVALID_MAJOR_VERSION); a Nonce outside 16..256 bytes is INVALID_SYNTAX (RFC 7296
2.10).  Nothing else escapes a parse function.  Build functions raise
:class:`~ipsecd.ike.errors.IkeLocalError` for values that do not fit their fields.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

from .constants import (
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    AttributeType,
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    IpProtocol,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
    known,
)
from .errors import IkeLocalError, IkeParseError, IkeProtocolError

if TYPE_CHECKING:
    from .crypto import SkCipher

__all__ = [
    "NONCE_MAX",
    "NONCE_MIN",
    "AnySelector",
    "AuthPayload",
    "CertPayload",
    "CertReqPayload",
    "DeletePayload",
    "FragmentCollector",
    "IPAddress",
    "IdiPayload",
    "IdrPayload",
    "IkeHeader",
    "KePayload",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "RawTrafficSelector",
    "SaPayload",
    "SkPayload",
    "SkfPayload",
    "TrafficSelector",
    "Transform",
    "TransformAttribute",
    "TsiPayload",
    "TsrPayload",
    "UnknownPayload",
    "VendorIdPayload",
    "build_message",
    "build_payloads",
    "decrypt_sk",
    "decrypt_skf",
    "encrypt_sk",
    "encrypt_skf",
    "iter_payload_types",
    "parse_header",
    "parse_message",
    "parse_payloads",
    "payload_body",
    "payload_type_of",
]

NONCE_MIN = 16  # RFC 7296 2.10
NONCE_MAX = 256  # RFC 7296 2.10
_GENERIC_LEN = 4  # RFC 7296 3.2
#: Payloads in one chain (the message's, or the plaintext of one SK payload) beyond
#: which the message is refused unparsed.  A real IKEv2 message carries at most a few
#: dozen (strongSwan's per-exchange rules allow ~20 notifies, ~20 vendor IDs and a few
#: certificates); without a cap a datagram of empty payloads costs a parse step per 4
#: bytes (docs/limits.md "IKE").
MAX_PAYLOADS = 64
_CRITICAL = 0x80  # RFC 7296 3.2
_AF_TV = 0x8000  # RFC 7296 3.3.5 Attribute Format bit
_MORE_PROPOSALS = 2  # RFC 7296 3.3.1 "Last Substruc"
_MORE_TRANSFORMS = 3  # RFC 7296 3.3.2 "Last Substruc"


# --------------------------------------------------------------------------- helpers


def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 2], "big")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 4], "big")


def _check_uint(value: int, bits: int, what: str) -> None:
    if not 0 <= value < (1 << bits):
        raise IkeLocalError(f"{what} = {value} does not fit in {bits} bits")


def _check_len(data: bytes, bits: int, what: str) -> None:
    if len(data) >= (1 << bits):
        raise IkeLocalError(f"{what} is {len(data)} bytes, more than a {bits}-bit length allows")


def _ptname(code: int) -> str:
    member = known(PayloadType, code)
    return member.name if isinstance(member, PayloadType) else str(code)


# --------------------------------------------------------------------------- SA payload


@dataclass(frozen=True, slots=True)
class TransformAttribute:
    """RFC 7296 3.3.5.  ``value`` is an ``int`` for the TV format (AF bit set, 16-bit
    value, e.g. Key Length) and ``bytes`` for the TLV format."""

    attr_type: int
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 7296 3.3.2.  ``transform_id`` is an EncrId/PrfId/IntegId/DhGroup/EsnId
    member according to ``transform_type`` (or an int when unknown)."""

    transform_type: int
    transform_id: int
    attributes: tuple[TransformAttribute, ...] = ()

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute in bits (RFC 7296 3.3.5), or None when absent."""
        for attr in self.attributes:
            if attr.attr_type == AttributeType.KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @classmethod
    def make(
        cls, transform_type: int, transform_id: int, key_length: int | None = None
    ) -> Transform:
        """A transform with an optional Key Length attribute (bits)."""
        attrs: tuple[TransformAttribute, ...] = ()
        if key_length is not None:
            attrs = (TransformAttribute(AttributeType.KEY_LENGTH, key_length),)
        return cls(
            known(TransformType, transform_type), _transform_id(transform_type, transform_id), attrs
        )


def _transform_id(transform_type: int, transform_id: int) -> int:
    table: dict[int, type[EncrId] | type[PrfId] | type[IntegId] | type[DhGroup] | type[EsnId]]
    table = {
        TransformType.ENCR: EncrId,
        TransformType.PRF: PrfId,
        TransformType.INTEG: IntegId,
        TransformType.DH: DhGroup,
        TransformType.ESN: EsnId,
    }
    enum_type = table.get(transform_type)
    if enum_type is None:
        return transform_id
    return known(enum_type, transform_id)


@dataclass(frozen=True, slots=True)
class Proposal:
    """RFC 7296 3.3.1.  ``spi`` is empty in an initial IKE_SA_INIT, 8 bytes when
    rekeying an IKE SA, 4 bytes for ESP/AH."""

    num: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def transforms_of(self, transform_type: int) -> tuple[Transform, ...]:
        """The transforms of one type, in the order they appear."""
        return tuple(t for t in self.transforms if t.transform_type == transform_type)


@dataclass(frozen=True, slots=True)
class SaPayload:
    """RFC 7296 3.3: proposals in order of preference."""

    TYPE: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]
    critical: bool = field(default=False, kw_only=True)


# --------------------------------------------------------------------------- simple payloads


@dataclass(frozen=True, slots=True)
class KePayload:
    """RFC 7296 3.4: ``data`` is the public value (encoding per group, see crypto)."""

    TYPE: ClassVar[PayloadType] = PayloadType.KE
    dh_group: int
    data: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class _IdPayload:
    id_type: int
    data: bytes
    critical: bool = field(default=False, kw_only=True)

    def text(self) -> str:
        """Human-readable identity (address, FQDN, e-mail) or hex for binary types."""
        if self.id_type == IdType.IPV4_ADDR and len(self.data) == 4:
            return str(ipaddress.IPv4Address(self.data))
        if self.id_type == IdType.IPV6_ADDR and len(self.data) == 16:
            return str(ipaddress.IPv6Address(self.data))
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("ascii", errors="replace")
        return self.data.hex()


@dataclass(frozen=True, slots=True)
class IdiPayload(_IdPayload):
    """RFC 7296 3.5, initiator identity."""

    TYPE: ClassVar[PayloadType] = PayloadType.IDi


@dataclass(frozen=True, slots=True)
class IdrPayload(_IdPayload):
    """RFC 7296 3.5, responder identity."""

    TYPE: ClassVar[PayloadType] = PayloadType.IDr


@dataclass(frozen=True, slots=True)
class CertPayload:
    """RFC 7296 3.6."""

    TYPE: ClassVar[PayloadType] = PayloadType.CERT
    encoding: int
    data: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class CertReqPayload:
    """RFC 7296 3.7 (``data``: concatenated SHA-1 hashes of CA public keys for X.509)."""

    TYPE: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: int
    data: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class AuthPayload:
    """RFC 7296 3.8."""

    TYPE: ClassVar[PayloadType] = PayloadType.AUTH
    method: int
    data: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class NoncePayload:
    """RFC 7296 3.9 (16..256 bytes, RFC 7296 2.10)."""

    TYPE: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """RFC 7296 3.10.  ``spi`` is empty unless the notify concerns a specific SA."""

    TYPE: ClassVar[PayloadType] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol_id: int = ProtocolId.NONE
    spi: bytes = b""
    critical: bool = field(default=False, kw_only=True)

    @property
    def is_error(self) -> bool:
        """RFC 7296 3.10.1: types below 16384 are errors."""
        return self.notify_type < 16384


@dataclass(frozen=True, slots=True)
class DeletePayload:
    """RFC 7296 3.11.  For IKE: ``spi_size`` 0 and no SPIs; ESP/AH: 4-byte SPIs."""

    TYPE: ClassVar[PayloadType] = PayloadType.DELETE
    protocol_id: int
    spi_size: int
    spis: tuple[bytes, ...] = ()
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class VendorIdPayload:
    """RFC 7296 3.12."""

    TYPE: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes
    critical: bool = field(default=False, kw_only=True)


# --------------------------------------------------------------------------- traffic selectors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """RFC 7296 3.13.1, TS_IPV4_ADDR_RANGE / TS_IPV6_ADDR_RANGE.  ``ts_type`` follows
    from the address family.  For ICMP the ports carry type/code (RFC 7296 3.13.1)."""

    ip_protocol: int
    start_port: int
    end_port: int
    start_address: IPAddress
    end_address: IPAddress

    @property
    def ts_type(self) -> TsType:
        """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE, from the address family."""
        if self.start_address.version == 4:
            return TsType.IPV4_ADDR_RANGE
        return TsType.IPV6_ADDR_RANGE

    @classmethod
    def from_network(
        cls,
        network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
        ip_protocol: int = 0,
        start_port: int = 0,
        end_port: int = 65535,
    ) -> TrafficSelector:
        """Selector covering a whole prefix (``"10.0.0.0/24"``)."""
        net = ipaddress.ip_network(network, strict=False)
        return cls(ip_protocol, start_port, end_port, net.network_address, net.broadcast_address)


@dataclass(frozen=True, slots=True)
class RawTrafficSelector:
    """A traffic selector of a type this codec does not decode (e.g. TS_FC_ADDR_RANGE),
    kept as its bytes after the 4-byte type/protocol/length prefix."""

    ts_type: int
    ip_protocol: int
    data: bytes


AnySelector = TrafficSelector | RawTrafficSelector


@dataclass(frozen=True, slots=True)
class _TsPayload:
    selectors: tuple[AnySelector, ...]
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class TsiPayload(_TsPayload):
    """RFC 7296 3.13, initiator traffic selectors."""

    TYPE: ClassVar[PayloadType] = PayloadType.TSi


@dataclass(frozen=True, slots=True)
class TsrPayload(_TsPayload):
    """RFC 7296 3.13, responder traffic selectors."""

    TYPE: ClassVar[PayloadType] = PayloadType.TSr


# --------------------------------------------------------------------------- SK, SKF, unknown


@dataclass(frozen=True, slots=True)
class SkPayload:
    """RFC 7296 3.14 Encrypted payload, outer view.  ``first_payload`` is the type of
    the first inner payload (the Next Payload field of the SK header); ``body`` is
    IV || ciphertext || ICV, opaque here: :func:`decrypt_sk` opens it."""

    TYPE: ClassVar[PayloadType] = PayloadType.SK
    first_payload: int
    body: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class SkfPayload:
    """RFC 7383 2.5 Encrypted Fragment payload.  ``first_payload`` is non-zero only in
    fragment 1; ``body`` is IV || ciphertext || ICV (:func:`decrypt_skf`)."""

    TYPE: ClassVar[PayloadType] = PayloadType.SKF
    first_payload: int
    fragment_number: int
    total_fragments: int
    body: bytes
    critical: bool = field(default=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload this codec does not decode (RFC 7296 2.5: skipped when not critical),
    kept with its type and body so it round-trips."""

    payload_type: int
    body: bytes
    critical: bool = field(default=False, kw_only=True)


Payload = (
    SaPayload
    | KePayload
    | IdiPayload
    | IdrPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | TsiPayload
    | TsrPayload
    | SkPayload
    | SkfPayload
    | UnknownPayload
)

P = TypeVar(
    "P",
    SaPayload,
    KePayload,
    IdiPayload,
    IdrPayload,
    CertPayload,
    CertReqPayload,
    AuthPayload,
    NoncePayload,
    NotifyPayload,
    DeletePayload,
    VendorIdPayload,
    TsiPayload,
    TsrPayload,
    SkPayload,
    SkfPayload,
    UnknownPayload,
)


def payload_type_of(payload: Payload) -> int:
    """The wire type code of a payload object."""
    if isinstance(payload, UnknownPayload):
        return payload.payload_type
    return payload.TYPE


# --------------------------------------------------------------------------- header & message


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """RFC 7296 3.1, as read from the wire (``next_payload`` and ``length`` included)."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major_version: int
    minor_version: int
    exchange_type: int
    flags: int
    message_id: int
    length: int

    @property
    def is_initiator(self) -> bool:
        """I bit: sent by the original initiator of the IKE SA."""
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def is_response(self) -> bool:
        """R bit: this message is a response."""
        return bool(self.flags & HeaderFlag.RESPONSE)


@dataclass(frozen=True, slots=True)
class Message:
    """An IKEv2 message.  ``flags`` is a :class:`HeaderFlag` combination; the header's
    Next Payload and Length fields are derived when building.  A protected message as
    parsed ends with an :class:`SkPayload` (or :class:`SkfPayload`)."""

    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    flags: int
    message_id: int
    payloads: tuple[Payload, ...] = ()
    major_version: int = IKE_MAJOR_VERSION
    minor_version: int = 0

    @property
    def is_initiator(self) -> bool:
        """I bit (RFC 7296 3.1)."""
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def is_response(self) -> bool:
        """R bit (RFC 7296 3.1)."""
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def sk(self) -> SkPayload | None:
        """The Encrypted payload, when the message has one."""
        for p in self.payloads:
            if isinstance(p, SkPayload):
                return p
        return None

    @property
    def skf(self) -> SkfPayload | None:
        """The Encrypted Fragment payload, when the message has one."""
        for p in self.payloads:
            if isinstance(p, SkfPayload):
                return p
        return None

    def get(self, payload_class: type[P]) -> P | None:
        """The first payload of a class (``msg.get(NoncePayload)``), or None."""
        for p in self.payloads:
            if isinstance(p, payload_class):
                return p
        return None

    def get_all(self, payload_class: type[P]) -> tuple[P, ...]:
        """All payloads of a class, in order."""
        return tuple(p for p in self.payloads if isinstance(p, payload_class))

    def notifies(self, notify_type: int | None = None) -> tuple[NotifyPayload, ...]:
        """Notify payloads, all or of one type."""
        return tuple(
            p
            for p in self.payloads
            if isinstance(p, NotifyPayload)
            and (notify_type is None or p.notify_type == notify_type)
        )


def parse_header(data: bytes) -> IkeHeader:
    """Parse and check the fixed IKE header (RFC 7296 3.1).

    Checks: at least 28 bytes; major version 2 (else INVALID_MAJOR_VERSION, RFC 7296
    2.5); the Length field equal to the datagram length.
    """
    data = bytes(data)
    if len(data) < IKE_HEADER_LEN:
        raise IkeParseError("IKE header", 0, f"datagram is {len(data)} bytes, header needs 28")
    version = data[17]
    major, minor = version >> 4, version & 0x0F
    if major != IKE_MAJOR_VERSION:
        # RFC 7296 2.5: drop, and MAY answer INVALID_MAJOR_VERSION
        raise IkeProtocolError(
            f"IKE header at offset 17: major version {major}, only 2 is supported",
            notify=NotifyType.INVALID_MAJOR_VERSION,
        )
    length = _u32(data, 24)
    if length != len(data):
        raise IkeParseError(
            "IKE header", 24, f"Length field says {length} bytes, datagram has {len(data)}"
        )
    return IkeHeader(
        spi_i=data[0:8],
        spi_r=data[8:16],
        next_payload=known(PayloadType, data[16]),
        major_version=major,
        minor_version=minor,
        exchange_type=known(ExchangeType, data[18]),
        flags=HeaderFlag(data[19]) if data[19] in _VALID_FLAG_BYTES else data[19],
        message_id=_u32(data, 20),
        length=length,
    )


_VALID_FLAG_BYTES = frozenset(
    int(HeaderFlag.INITIATOR) * a | int(HeaderFlag.VERSION) * b | int(HeaderFlag.RESPONSE) * c
    for a in (0, 1)
    for b in (0, 1)
    for c in (0, 1)
)


def parse_message(data: bytes) -> Message:
    """Parse a whole IKEv2 datagram into a :class:`Message` (see module doc)."""
    data = bytes(data)
    header = parse_header(data)
    payloads = _parse_chain(data, IKE_HEADER_LEN, len(data), header.next_payload, "", True)
    return Message(
        spi_i=header.spi_i,
        spi_r=header.spi_r,
        exchange_type=header.exchange_type,
        flags=header.flags,
        message_id=header.message_id,
        payloads=tuple(payloads),
        major_version=header.major_version,
        minor_version=header.minor_version,
    )


def _header_bytes(msg: Message, next_payload: int, length: int) -> bytes:
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:
        raise IkeLocalError(
            f"IKE SPIs must be 8 bytes each, got {len(msg.spi_i)} and {len(msg.spi_r)}"
        )
    _check_uint(msg.major_version, 4, "major version")
    _check_uint(msg.minor_version, 4, "minor version")
    _check_uint(msg.exchange_type, 8, "exchange type")
    _check_uint(msg.flags, 8, "flags")
    _check_uint(msg.message_id, 32, "message ID")
    _check_uint(length, 32, "message length")
    return b"".join(
        (
            msg.spi_i,
            msg.spi_r,
            bytes(
                (
                    next_payload,
                    (msg.major_version << 4) | msg.minor_version,
                    msg.exchange_type,
                    msg.flags,
                )
            ),
            msg.message_id.to_bytes(4, "big"),
            length.to_bytes(4, "big"),
        )
    )


def build_message(msg: Message) -> bytes:
    """Serialize a :class:`Message` (header Next Payload and Length derived)."""
    _check_sk_last(msg.payloads)
    first, chain = build_payloads(msg.payloads)
    return _header_bytes(msg, first, IKE_HEADER_LEN + len(chain)) + chain


def _check_sk_last(payloads: Sequence[Payload]) -> None:
    for i, p in enumerate(payloads):
        if isinstance(p, SkPayload | SkfPayload) and i != len(payloads) - 1:
            # RFC 7296 3.14 / RFC 7383 2.5: the Encrypted payload MUST be the last one
            raise IkeLocalError(f"{_ptname(payload_type_of(p))} payload must be the last payload")


# --------------------------------------------------------------------------- payload chain


def parse_payloads(data: bytes, first_type: int, *, where: str = "") -> tuple[Payload, ...]:
    """Parse a bare payload chain starting with a payload of type ``first_type``
    (e.g. the plaintext of an SK payload).  SK/SKF are not allowed inside."""
    data = bytes(data)
    return tuple(_parse_chain(data, 0, len(data), first_type, where, False))


def _parse_chain(
    data: bytes, start: int, end: int, next_type: int, where: str, outer: bool
) -> list[Payload]:
    payloads: list[Payload] = []
    off = start
    index = 0
    while next_type != PayloadType.NONE:
        index += 1
        if index > MAX_PAYLOADS:
            raise IkeParseError(f"{where}payload chain", off, f"more than {MAX_PAYLOADS} payloads")
        label = f"{where}payload #{index} ({_ptname(next_type)})"
        if end - off < _GENERIC_LEN:
            raise IkeParseError(
                label, off, f"{end - off} bytes left, a payload header needs {_GENERIC_LEN}"
            )
        following = data[off]
        critical = bool(data[off + 1] & _CRITICAL)
        plen = _u16(data, off + 2)
        if plen < _GENERIC_LEN:
            raise IkeParseError(label, off + 2, f"Payload Length {plen} is less than 4")
        if off + plen > end:
            raise IkeParseError(
                label, off + 2, f"Payload Length {plen} runs past the end ({end - off} bytes left)"
            )
        body = data[off + _GENERIC_LEN : off + plen]
        ptype = next_type
        if ptype in (PayloadType.SK, PayloadType.SKF):
            if not outer:
                raise IkeParseError(label, off, "Encrypted payload nested inside an SK payload")
            if off + plen != end:
                # RFC 7296 3.14 / RFC 7383 2.5: it MUST be the last payload
                raise IkeParseError(label, off, "Encrypted payload is not the last payload")
            payloads.append(_parse_encrypted(ptype, following, body, critical, label, off))
            return payloads
        payloads.append(_parse_one(ptype, body, critical, label, off + _GENERIC_LEN))
        off += plen
        next_type = following
    if off != end:
        raise IkeParseError(
            f"{where}payload chain", off, f"{end - off} bytes after the last payload"
        )
    return payloads


def build_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """Serialize a payload chain; returns (type of the first payload, bytes)."""
    _check_sk_last(payloads)
    parts: list[bytes] = []
    for i, p in enumerate(payloads):
        if isinstance(p, SkPayload | SkfPayload):
            following = p.first_payload
        elif i + 1 < len(payloads):
            following = payload_type_of(payloads[i + 1])
        else:
            following = PayloadType.NONE
        parts.append(_generic(p, following))
    first = payload_type_of(payloads[0]) if payloads else PayloadType.NONE
    return first, b"".join(parts)


def _generic(p: Payload, following: int) -> bytes:
    body = payload_body(p)
    _check_uint(following, 8, "next payload type")
    length = _GENERIC_LEN + len(body)
    if length > 0xFFFF:
        raise IkeLocalError(
            f"{_ptname(payload_type_of(p))} payload is {length} bytes, more than 65535"
        )
    flags = _CRITICAL if p.critical else 0
    return bytes((following, flags)) + length.to_bytes(2, "big") + body


# --------------------------------------------------------------------------- per payload parse

_DECODED = frozenset(
    {
        PayloadType.SA,
        PayloadType.KE,
        PayloadType.IDi,
        PayloadType.IDr,
        PayloadType.CERT,
        PayloadType.CERTREQ,
        PayloadType.AUTH,
        PayloadType.NONCE,
        PayloadType.NOTIFY,
        PayloadType.DELETE,
        PayloadType.VENDOR_ID,
        PayloadType.TSi,
        PayloadType.TSr,
    }
)


def _parse_one(ptype: int, body: bytes, critical: bool, label: str, boff: int) -> Payload:
    if ptype not in _DECODED:
        # CP, EAP and anything newer are outside this engine's feature set: kept raw
        # when not critical, refused like an unknown type when critical.
        if critical:
            # RFC 7296 2.5: unrecognised critical payload -> reject the whole message
            raise IkeProtocolError(
                f"{label} at offset {boff - _GENERIC_LEN}: unsupported critical payload "
                f"type {ptype}",
                notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                data=bytes((ptype,)),
            )
        return UnknownPayload(known(PayloadType, ptype), body, critical=critical)
    parser = _PARSERS[ptype]
    return parser(body, critical, label, boff)


def _need(body: bytes, n: int, label: str, boff: int, what: str) -> None:
    if len(body) < n:
        raise IkeParseError(label, boff, f"body is {len(body)} bytes, {what} needs {n}")


def _parse_sa(body: bytes, critical: bool, label: str, boff: int) -> SaPayload:
    proposals: list[Proposal] = []
    off = 0
    more = True
    if not body:
        raise IkeParseError(label, boff, "SA payload has no proposal")
    while more:
        plabel = f"{label} / proposal #{len(proposals) + 1}"
        if len(body) - off < 8:
            raise IkeParseError(plabel, boff + off, f"{len(body) - off} bytes left, need 8")
        last = body[off]
        plen = _u16(body, off + 2)
        num = body[off + 4]
        proto = body[off + 5]
        spi_size = body[off + 6]
        ntrans = body[off + 7]
        if last not in (0, _MORE_PROPOSALS):
            raise IkeParseError(plabel, boff + off, f"Last Substruc is {last}, must be 0 or 2")
        if plen < 8 + spi_size or off + plen > len(body):
            raise IkeParseError(
                plabel, boff + off + 2, f"Proposal Length {plen} inconsistent with SA payload"
            )
        spi = body[off + 8 : off + 8 + spi_size]
        transforms = _parse_transforms(body, off + 8 + spi_size, off + plen, ntrans, plabel, boff)
        proposals.append(Proposal(num, known(ProtocolId, proto), spi, tuple(transforms)))
        off += plen
        more = last == _MORE_PROPOSALS
    if off != len(body):
        # RFC 7296 3.3: total length must be consistent with internal lengths
        raise IkeParseError(label, boff + off, f"{len(body) - off} bytes after the last proposal")
    return SaPayload(tuple(proposals), critical=critical)


def _parse_transforms(
    body: bytes, start: int, end: int, count: int, plabel: str, boff: int
) -> list[Transform]:
    transforms: list[Transform] = []
    off = start
    for i in range(count):
        tlabel = f"{plabel} / transform #{i + 1}"
        if end - off < 8:
            raise IkeParseError(tlabel, boff + off, f"{end - off} bytes left, need 8")
        last = body[off]
        tlen = _u16(body, off + 2)
        ttype = body[off + 4]
        tid = _u16(body, off + 6)
        expect_last = 0 if i == count - 1 else _MORE_TRANSFORMS
        if last != expect_last:
            raise IkeParseError(
                tlabel, boff + off, f"Last Substruc is {last}, expected {expect_last}"
            )
        if tlen < 8 or off + tlen > end:
            raise IkeParseError(
                tlabel, boff + off + 2, f"Transform Length {tlen} inconsistent with proposal"
            )
        attrs = _parse_attributes(body, off + 8, off + tlen, tlabel, boff)
        transforms.append(
            Transform(known(TransformType, ttype), _transform_id(ttype, tid), tuple(attrs))
        )
        off += tlen
    if off != end:
        raise IkeParseError(
            plabel, boff + off, f"{end - off} bytes after {count} transforms (count wrong?)"
        )
    return transforms


def _parse_attributes(
    body: bytes, start: int, end: int, tlabel: str, boff: int
) -> list[TransformAttribute]:
    attrs: list[TransformAttribute] = []
    off = start
    while off < end:
        alabel = f"{tlabel} / attribute #{len(attrs) + 1}"
        if end - off < 4:
            raise IkeParseError(alabel, boff + off, f"{end - off} bytes left, need 4")
        raw_type = _u16(body, off)
        atype = known(AttributeType, raw_type & 0x7FFF)
        if raw_type & _AF_TV:
            attrs.append(TransformAttribute(atype, _u16(body, off + 2)))
            off += 4
            continue
        alen = _u16(body, off + 2)
        if off + 4 + alen > end:
            raise IkeParseError(alabel, boff + off + 2, f"Attribute Length {alen} runs past end")
        attrs.append(TransformAttribute(atype, body[off + 4 : off + 4 + alen]))
        off += 4 + alen
    return attrs


def _parse_ke(body: bytes, critical: bool, label: str, boff: int) -> KePayload:
    _need(body, 4, label, boff, "Key Exchange header")
    return KePayload(known(DhGroup, _u16(body, 0)), body[4:], critical=critical)


def _parse_idi(body: bytes, critical: bool, label: str, boff: int) -> IdiPayload:
    _need(body, 4, label, boff, "ID header")
    return IdiPayload(known(IdType, body[0]), body[4:], critical=critical)


def _parse_idr(body: bytes, critical: bool, label: str, boff: int) -> IdrPayload:
    _need(body, 4, label, boff, "ID header")
    return IdrPayload(known(IdType, body[0]), body[4:], critical=critical)


def _parse_cert(body: bytes, critical: bool, label: str, boff: int) -> CertPayload:
    _need(body, 1, label, boff, "Cert Encoding")
    return CertPayload(known(CertEncoding, body[0]), body[1:], critical=critical)


def _parse_certreq(body: bytes, critical: bool, label: str, boff: int) -> CertReqPayload:
    _need(body, 1, label, boff, "Cert Encoding")
    return CertReqPayload(known(CertEncoding, body[0]), body[1:], critical=critical)


def _parse_auth(body: bytes, critical: bool, label: str, boff: int) -> AuthPayload:
    _need(body, 4, label, boff, "Auth header")
    return AuthPayload(known(AuthMethod, body[0]), body[4:], critical=critical)


def _parse_nonce(body: bytes, critical: bool, label: str, boff: int) -> NoncePayload:
    if not NONCE_MIN <= len(body) <= NONCE_MAX:
        # RFC 7296 2.10: nonces are at least 16 and at most 256 octets
        raise IkeParseError(label, boff, f"nonce is {len(body)} bytes, must be 16..256")
    return NoncePayload(body, critical=critical)


def _parse_notify(body: bytes, critical: bool, label: str, boff: int) -> NotifyPayload:
    _need(body, 4, label, boff, "Notify header")
    spi_size = body[1]
    if len(body) < 4 + spi_size:
        raise IkeParseError(label, boff + 1, f"SPI Size {spi_size} runs past the payload")
    return NotifyPayload(
        notify_type=known(NotifyType, _u16(body, 2)),
        data=body[4 + spi_size :],
        protocol_id=known(ProtocolId, body[0]),
        spi=body[4 : 4 + spi_size],
        critical=critical,
    )


def _parse_delete(body: bytes, critical: bool, label: str, boff: int) -> DeletePayload:
    _need(body, 4, label, boff, "Delete header")
    spi_size = body[1]
    count = _u16(body, 2)
    if spi_size == 0 and count:
        # RFC 7296 3.11: SPI Size 0 is the IKE SA's Delete, which carries no SPI; a
        # count of empty SPIs would cost a step each for nothing
        raise IkeParseError(label, boff + 2, f"{count} SPIs of 0 bytes (SPI Size 0 takes none)")
    if len(body) != 4 + spi_size * count:
        raise IkeParseError(
            label,
            boff + 2,
            f"{count} SPIs of {spi_size} bytes need {4 + spi_size * count} bytes, body has "
            f"{len(body)}",
        )
    spis = tuple(body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(count))
    return DeletePayload(known(ProtocolId, body[0]), spi_size, spis, critical=critical)


def _parse_vendor(body: bytes, critical: bool, label: str, boff: int) -> VendorIdPayload:
    return VendorIdPayload(body, critical=critical)


def _parse_selectors(body: bytes, label: str, boff: int) -> tuple[AnySelector, ...]:
    _need(body, 4, label, boff, "TS header")
    count = body[0]
    off = 4
    selectors: list[AnySelector] = []
    for i in range(count):
        slabel = f"{label} / selector #{i + 1}"
        if len(body) - off < 4:
            raise IkeParseError(slabel, boff + off, f"{len(body) - off} bytes left, need 4")
        ts_type = body[off]
        proto = body[off + 1]
        slen = _u16(body, off + 2)
        if slen < 4 or off + slen > len(body):
            raise IkeParseError(slabel, boff + off + 2, f"Selector Length {slen} inconsistent")
        if ts_type in (TsType.IPV4_ADDR_RANGE, TsType.IPV6_ADDR_RANGE):
            alen = 4 if ts_type == TsType.IPV4_ADDR_RANGE else 16
            if slen != 8 + 2 * alen:
                raise IkeParseError(
                    slabel, boff + off + 2, f"Selector Length {slen}, must be {8 + 2 * alen}"
                )
            a = off + 8
            start_addr: IPAddress
            end_addr: IPAddress
            if alen == 4:
                start_addr = ipaddress.IPv4Address(body[a : a + 4])
                end_addr = ipaddress.IPv4Address(body[a + 4 : a + 8])
            else:
                start_addr = ipaddress.IPv6Address(body[a : a + 16])
                end_addr = ipaddress.IPv6Address(body[a + 16 : a + 32])
            selectors.append(
                TrafficSelector(
                    known(IpProtocol, proto),
                    _u16(body, off + 4),
                    _u16(body, off + 6),
                    start_addr,
                    end_addr,
                )
            )
        else:
            selectors.append(
                RawTrafficSelector(known(TsType, ts_type), proto, body[off + 4 : off + slen])
            )
        off += slen
    if off != len(body):
        raise IkeParseError(
            label, boff + off, f"{len(body) - off} bytes after {count} traffic selectors"
        )
    return tuple(selectors)


def _parse_tsi(body: bytes, critical: bool, label: str, boff: int) -> TsiPayload:
    return TsiPayload(_parse_selectors(body, label, boff), critical=critical)


def _parse_tsr(body: bytes, critical: bool, label: str, boff: int) -> TsrPayload:
    return TsrPayload(_parse_selectors(body, label, boff), critical=critical)


def _parse_encrypted(
    ptype: int, following: int, body: bytes, critical: bool, label: str, off: int
) -> SkPayload | SkfPayload:
    first = known(PayloadType, following)
    if ptype == PayloadType.SK:
        return SkPayload(first, body, critical=critical)
    boff = off + _GENERIC_LEN
    _need(body, 4, label, boff, "Fragment Number and Total Fragments")
    number = _u16(body, 0)
    total = _u16(body, 2)
    if number == 0 or total == 0 or number > total:
        # RFC 7383 2.5: Fragment Number and Total Fragments non-zero, number <= total
        raise IkeParseError(label, boff, f"fragment {number} of {total} is invalid")
    return SkfPayload(first, number, total, body[4:], critical=critical)


_Parser = Callable[[bytes, bool, str, int], Payload]
_PARSERS: dict[int, _Parser] = {
    PayloadType.SA: _parse_sa,
    PayloadType.KE: _parse_ke,
    PayloadType.IDi: _parse_idi,
    PayloadType.IDr: _parse_idr,
    PayloadType.CERT: _parse_cert,
    PayloadType.CERTREQ: _parse_certreq,
    PayloadType.AUTH: _parse_auth,
    PayloadType.NONCE: _parse_nonce,
    PayloadType.NOTIFY: _parse_notify,
    PayloadType.DELETE: _parse_delete,
    PayloadType.VENDOR_ID: _parse_vendor,
    PayloadType.TSi: _parse_tsi,
    PayloadType.TSr: _parse_tsr,
}


# --------------------------------------------------------------------------- per payload build


def payload_body(p: Payload) -> bytes:
    """The wire body of one payload (everything after its 4-byte generic header)."""
    if isinstance(p, SaPayload):
        return _build_sa(p)
    if isinstance(p, KePayload):
        _check_uint(p.dh_group, 16, "KE group")
        return p.dh_group.to_bytes(2, "big") + b"\x00\x00" + p.data
    if isinstance(p, IdiPayload | IdrPayload):
        _check_uint(p.id_type, 8, "ID type")
        return bytes((p.id_type, 0, 0, 0)) + p.data
    if isinstance(p, CertPayload | CertReqPayload):
        _check_uint(p.encoding, 8, "certificate encoding")
        return bytes((p.encoding,)) + p.data
    if isinstance(p, AuthPayload):
        _check_uint(p.method, 8, "auth method")
        return bytes((p.method, 0, 0, 0)) + p.data
    if isinstance(p, NoncePayload | VendorIdPayload):
        return p.data
    if isinstance(p, NotifyPayload):
        _check_uint(p.protocol_id, 8, "notify protocol ID")
        _check_uint(p.notify_type, 16, "notify type")
        _check_len(p.spi, 8, "notify SPI")
        return (
            bytes((p.protocol_id, len(p.spi))) + p.notify_type.to_bytes(2, "big") + p.spi + p.data
        )
    if isinstance(p, DeletePayload):
        _check_uint(p.protocol_id, 8, "delete protocol ID")
        _check_uint(p.spi_size, 8, "delete SPI size")
        _check_uint(len(p.spis), 16, "number of SPIs")
        for spi in p.spis:
            if len(spi) != p.spi_size:
                raise IkeLocalError(
                    f"Delete payload SPI of {len(spi)} bytes, spi_size is {p.spi_size}"
                )
        return (
            bytes((p.protocol_id, p.spi_size)) + len(p.spis).to_bytes(2, "big") + b"".join(p.spis)
        )
    if isinstance(p, TsiPayload | TsrPayload):
        return _build_selectors(p.selectors)
    if isinstance(p, SkPayload):
        return p.body
    if isinstance(p, SkfPayload):
        _check_uint(p.fragment_number, 16, "fragment number")
        _check_uint(p.total_fragments, 16, "total fragments")
        return p.fragment_number.to_bytes(2, "big") + p.total_fragments.to_bytes(2, "big") + p.body
    return p.body


def _build_sa(p: SaPayload) -> bytes:
    out: list[bytes] = []
    for i, prop in enumerate(p.proposals):
        _check_uint(prop.num, 8, "proposal number")
        _check_uint(prop.protocol_id, 8, "proposal protocol ID")
        _check_len(prop.spi, 8, "proposal SPI")
        _check_uint(len(prop.transforms), 8, "number of transforms")
        tparts: list[bytes] = []
        for j, t in enumerate(prop.transforms):
            _check_uint(t.transform_type, 8, "transform type")
            _check_uint(t.transform_id, 16, "transform ID")
            attrs = b"".join(_build_attribute(a) for a in t.attributes)
            tlen = 8 + len(attrs)
            _check_uint(tlen, 16, "transform length")
            last = _MORE_TRANSFORMS if j + 1 < len(prop.transforms) else 0
            tparts.append(
                bytes((last, 0))
                + tlen.to_bytes(2, "big")
                + bytes((t.transform_type, 0))
                + t.transform_id.to_bytes(2, "big")
                + attrs
            )
        transforms = b"".join(tparts)
        plen = 8 + len(prop.spi) + len(transforms)
        _check_uint(plen, 16, "proposal length")
        last = _MORE_PROPOSALS if i + 1 < len(p.proposals) else 0
        out.append(
            bytes((last, 0))
            + plen.to_bytes(2, "big")
            + bytes((prop.num, prop.protocol_id, len(prop.spi), len(prop.transforms)))
            + prop.spi
            + transforms
        )
    return b"".join(out)


def _build_attribute(a: TransformAttribute) -> bytes:
    _check_uint(a.attr_type, 15, "attribute type")
    if isinstance(a.value, int):
        _check_uint(a.value, 16, "TV attribute value")
        return (a.attr_type | _AF_TV).to_bytes(2, "big") + a.value.to_bytes(2, "big")
    _check_len(a.value, 16, "TLV attribute value")
    return a.attr_type.to_bytes(2, "big") + len(a.value).to_bytes(2, "big") + a.value


def _build_selectors(selectors: Sequence[AnySelector]) -> bytes:
    _check_uint(len(selectors), 8, "number of traffic selectors")
    parts = [bytes((len(selectors), 0, 0, 0))]
    for s in selectors:
        if isinstance(s, RawTrafficSelector):
            _check_uint(s.ts_type, 8, "TS type")
            _check_uint(s.ip_protocol, 8, "TS IP protocol")
            slen = 4 + len(s.data)
            _check_uint(slen, 16, "selector length")
            parts.append(bytes((s.ts_type, s.ip_protocol)) + slen.to_bytes(2, "big") + s.data)
            continue
        if s.start_address.version != s.end_address.version:
            raise IkeLocalError(f"traffic selector mixes address families: {s}")
        _check_uint(s.ip_protocol, 8, "TS IP protocol")
        _check_uint(s.start_port, 16, "TS start port")
        _check_uint(s.end_port, 16, "TS end port")
        addrs = s.start_address.packed + s.end_address.packed
        parts.append(
            bytes((s.ts_type, s.ip_protocol))
            + (8 + len(addrs)).to_bytes(2, "big")
            + s.start_port.to_bytes(2, "big")
            + s.end_port.to_bytes(2, "big")
            + addrs
        )
    return b"".join(parts)


# --------------------------------------------------------------------------- SK / SKF helpers


def encrypt_sk(
    msg: Message, inner: Sequence[Payload], cipher: SkCipher, *, iv: bytes | None = None
) -> bytes:
    """Build ``msg`` as a protected datagram: ``msg.payloads`` (normally empty) go in
    clear, then an SK payload carrying ``inner`` encrypted and integrity-protected with
    ``cipher`` (RFC 7296 3.14; AEAD per RFC 5282 / RFC 7634).  ``iv`` is for
    known-answer tests only; by default a fresh random IV is used."""
    if any(isinstance(p, SkPayload | SkfPayload) for p in (*msg.payloads, *inner)):
        raise IkeLocalError("encrypt_sk: SK/SKF payloads cannot be nested")
    first_inner, plaintext = build_payloads(inner)
    first_outer, outer = build_payloads(msg.payloads)
    body_len = cipher.sealed_length(len(plaintext))
    sk_len = _GENERIC_LEN + body_len
    if sk_len > 0xFFFF:
        raise IkeLocalError(f"SK payload would be {sk_len} bytes, more than 65535")
    total = IKE_HEADER_LEN + len(outer) + sk_len
    if msg.payloads:
        # the last clear payload's Next Payload must point at SK: rebuild with SK marker
        outer = _relink_last(msg.payloads, PayloadType.SK)
        header = _header_bytes(msg, first_outer, total)
    else:
        header = _header_bytes(msg, PayloadType.SK, total)
    sk_header = bytes((first_inner, 0)) + sk_len.to_bytes(2, "big")
    prefix = header + outer + sk_header
    return prefix + cipher.seal(prefix, plaintext, iv=iv)


def _relink_last(payloads: Sequence[Payload], last_next: int) -> bytes:
    parts = []
    for i, p in enumerate(payloads):
        following = payload_type_of(payloads[i + 1]) if i + 1 < len(payloads) else last_next
        parts.append(_generic(p, following))
    return b"".join(parts)


def decrypt_sk(data: bytes, msg: Message, cipher: SkCipher) -> tuple[Payload, ...]:
    """Verify and decrypt the SK payload of ``msg`` (parsed from ``data``), returning
    the inner payload chain.  Raises IkeIntegrityError when the ICV/tag does not verify
    (RFC 7296 2.21.2: drop silently), IkeParseError for bad padding or inner syntax,
    IkeLocalError when ``msg`` has no SK payload."""
    sk = msg.sk
    if sk is None:
        raise IkeLocalError("decrypt_sk: message has no SK payload")
    data = bytes(data)
    prefix = data[: len(data) - len(sk.body)]
    plaintext = cipher.open(prefix, sk.body)
    return parse_payloads(plaintext, sk.first_payload, where="inside SK: ")


def encrypt_skf(
    msg: Message,
    inner: Sequence[Payload],
    cipher: SkCipher,
    max_datagram: int,
) -> list[bytes]:
    """RFC 7383 2.5: split ``inner`` into SKF-protected datagrams, each at most
    ``max_datagram`` bytes (IKE header included; the caller subtracts the non-ESP
    marker and IP/UDP headers from its MTU).  ``msg.payloads`` must be empty."""
    if msg.payloads:
        raise IkeLocalError("encrypt_skf: clear payloads cannot accompany fragments")
    first_inner, plaintext = build_payloads(inner)
    overhead = IKE_HEADER_LEN + _GENERIC_LEN + 4
    room = _max_plaintext(cipher, max_datagram - overhead)
    if room < 1:
        raise IkeLocalError(f"max_datagram {max_datagram} is too small for any fragment")
    chunks = [plaintext[i : i + room] for i in range(0, len(plaintext), room)] or [b""]
    total = len(chunks)
    if total > 0xFFFF:
        raise IkeLocalError(f"message needs {total} fragments, more than 65535")
    out: list[bytes] = []
    for number, chunk in enumerate(chunks, start=1):
        body_len = cipher.sealed_length(len(chunk))
        skf_len = _GENERIC_LEN + 4 + body_len
        header = _header_bytes(msg, PayloadType.SKF, IKE_HEADER_LEN + skf_len)
        # RFC 7383 2.5: Next Payload is the first inner type in fragment 1, else 0
        following = first_inner if number == 1 else PayloadType.NONE
        skf_header = (
            bytes((following, 0))
            + skf_len.to_bytes(2, "big")
            + number.to_bytes(2, "big")
            + total.to_bytes(2, "big")
        )
        prefix = header + skf_header
        out.append(prefix + cipher.seal(prefix, chunk))
    return out


def _max_plaintext(cipher: SkCipher, room: int) -> int:
    n = room
    while n > 0 and cipher.sealed_length(n) > room:
        n -= 1
    return n


def decrypt_skf(data: bytes, msg: Message, cipher: SkCipher) -> bytes:
    """Verify and decrypt one SKF fragment; returns its plaintext chunk (padding
    removed).  Feed it to :class:`FragmentCollector`."""
    skf = msg.skf
    if skf is None:
        raise IkeLocalError("decrypt_skf: message has no SKF payload")
    data = bytes(data)
    prefix = data[: len(data) - len(skf.body)]
    return cipher.open(prefix, skf.body)


@dataclass(slots=True)
class FragmentCollector:
    """Reassembly of one fragmented message (RFC 7383 2.6), for one message ID.

    ``add(skf, chunk)`` with each decrypted fragment; it returns the inner payload
    chain once all ``total_fragments`` have arrived, else None.  Duplicates are
    ignored; a fragment whose Total Fragments differs from the first one seen raises
    IkeParseError (RFC 7383 2.6 allows discarding the older set; the caller may
    ``reset()`` and retry)."""

    total: int = 0
    first_payload: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget every fragment received so far."""
        self.total = 0
        self.first_payload = 0
        self.chunks.clear()

    def add(self, skf: SkfPayload, chunk: bytes) -> tuple[Payload, ...] | None:
        """Record one decrypted fragment; the inner payloads once complete."""
        if self.total == 0:
            self.total = skf.total_fragments
        elif skf.total_fragments != self.total:
            raise IkeParseError(
                "SKF payload",
                0,
                f"Total Fragments {skf.total_fragments} differs from {self.total} seen before",
            )
        if skf.fragment_number == 1:
            self.first_payload = skf.first_payload
        self.chunks.setdefault(skf.fragment_number, bytes(chunk))
        if len(self.chunks) < self.total:
            return None
        plaintext = b"".join(self.chunks[i] for i in range(1, self.total + 1))
        return parse_payloads(plaintext, self.first_payload, where="inside SKF: ")


def iter_payload_types(payloads: Iterable[Payload]) -> list[int]:
    """Wire type codes of a payload sequence (handy in logs and tests)."""
    return [payload_type_of(p) for p in payloads]
