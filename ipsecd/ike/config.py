"""Connection configuration of the IKE engine.

One :class:`IkeConfig` describes one IKE connection with one peer: addresses and
identities, the pre-shared key, the IKE proposals, and the first CHILD SA
(:class:`ChildConfig`: ESP or AH, transport or tunnel, proposals, traffic selectors,
lifetime).  The SPD compiler's IKE connections map onto it; every value is immutable
and validated when it is built (bad values raise :class:`~ipsecd.ike.errors.IkeLocalError`
naming the field).

Proposals can be written the strongSwan way, ``parse_ike_proposal("aes256gcm16-prfsha384-
ecp384")`` and ``parse_child_proposal("aes256-sha256")``; see :data:`ALGORITHM_TOKENS`.

The PSK is a ``repr=False`` field: it never shows in ``repr`` or logs.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from cryptography import x509

from .constants import (
    DhGroup,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from .crypto import check_transform
from .errors import IkeLocalError

if TYPE_CHECKING:
    from .auth import Trust
    from .pki import LocalCredentials

__all__ = [
    "ALGORITHM_TOKENS",
    "DEFAULT_CHILD_PROPOSALS",
    "DEFAULT_IKE_PROPOSALS",
    "ChildConfig",
    "IPAddress",
    "Identity",
    "IkeConfig",
    "Mode",
    "Proposal",
    "RetransmitConfig",
    "Role",
    "SendCert",
    "TrafficSelector",
    "Transform",
    "parse_child_proposal",
    "parse_ike_proposal",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Mode(enum.Enum):
    """IPsec mode of a CHILD SA (RFC 7296 1.3.1: tunnel unless USE_TRANSPORT_MODE)."""

    TRANSPORT = "transport"
    TUNNEL = "tunnel"


class SendCert(enum.Enum):
    """When our certificate chain goes in CERT payloads (strongSwan's ``send_cert``)."""

    #: In every IKE_AUTH message we send.
    ALWAYS = "always"
    #: Only when the peer sent a CERTREQ (in IKE_SA_INIT or IKE_AUTH, RFC 7296 3.7).
    IF_ASKED = "ifasked"
    #: Never: the peer has our certificate already.
    NEVER = "never"


class Role(enum.Enum):
    """Who starts the IKE SA of a connection."""

    #: We initiate (the agent calls ``IkeSa(..., initiator=True).initiate()``).
    INITIATOR = "initiator"
    #: We only answer (``IkeSa.accept``).
    RESPONDER = "responder"
    #: Either side may start (both agents of a node pair may initiate).
    EITHER = "either"


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 3.5): ``type`` and the raw identification data.

    Build them with :meth:`ip`, :meth:`fqdn`, :meth:`rfc822`, :meth:`dn`, :meth:`key_id`
    or :meth:`parse`.
    """

    type: IdType
    data: bytes

    def __post_init__(self) -> None:
        if not self.data:
            raise IkeLocalError(f"Identity: {self.type.name} identity data is empty")
        if self.type == IdType.IPV4_ADDR and len(self.data) != 4:
            raise IkeLocalError("Identity: an IPV4_ADDR identity is exactly 4 bytes")
        if self.type == IdType.IPV6_ADDR and len(self.data) != 16:
            raise IkeLocalError("Identity: an IPV6_ADDR identity is exactly 16 bytes")

    @classmethod
    def ip(cls, address: str | IPAddress) -> Self:
        """IPV4_ADDR or IPV6_ADDR identity from an address."""
        try:
            addr = ipaddress.ip_address(address)
        except ValueError as exc:
            raise IkeLocalError(f"Identity: {address!r} is not an IP address") from exc
        kind = IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR
        return cls(kind, addr.packed)

    @classmethod
    def fqdn(cls, name: str) -> Self:
        """FQDN identity (no terminator, RFC 7296 3.5)."""
        try:
            data = name.encode("ascii")
        except UnicodeEncodeError as exc:
            raise IkeLocalError(f"Identity: FQDN {name!r} is not ASCII") from exc
        return cls(IdType.FQDN, data)

    @classmethod
    def key_id(cls, data: bytes) -> Self:
        """KEY_ID identity: opaque octets (RFC 7296 3.5)."""
        return cls(IdType.KEY_ID, bytes(data))

    @classmethod
    def rfc822(cls, address: str) -> Self:
        """RFC822_ADDR identity: an e-mail address, ``user@domain`` (RFC 7296 3.5)."""
        try:
            data = address.encode("ascii")
        except UnicodeEncodeError as exc:
            raise IkeLocalError(f"Identity: e-mail address {address!r} is not ASCII") from exc
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            raise IkeLocalError(f"Identity: {address!r} is not an e-mail address (user@domain)")
        return cls(IdType.RFC822_ADDR, data)

    @classmethod
    def dn(cls, name: x509.Name) -> Self:
        """DER_ASN1_DN identity: the DER encoding of an X.500 name (RFC 7296 3.5), e.g.
        a certificate's subject (see :func:`ipsecd.ike.pki.identity_of`)."""
        if not name.rdns:
            raise IkeLocalError("Identity: the distinguished name is empty")
        return cls(IdType.DER_ASN1_DN, name.public_bytes())

    @classmethod
    def parse(cls, text: str) -> Self:
        """``192.0.2.1``, ``fd00::1``, ``fqdn:host.example``, ``email:user@example.org``,
        ``dn:CN=host,O=Example`` (RFC 4514 order: the most specific RDN first),
        ``keyid:0a0b`` (hex), ``keyid:@text``; a bare name is an FQDN."""
        if text.startswith("fqdn:"):
            return cls.fqdn(text[5:])
        if text.startswith("email:"):
            return cls.rfc822(text[6:])
        if text.startswith("dn:"):
            # RFC 4514 text; blanks after the commas are allowed, as strongSwan writes
            # DNs ("CN=hq, O=Example") and docs/spd.md accepts them
            for candidate in (text[3:], re.sub(r",\s+", ",", text[3:])):
                try:
                    return cls.dn(x509.Name.from_rfc4514_string(candidate))
                except ValueError:
                    continue
            raise IkeLocalError(
                f"Identity: {text!r}: dn: wants an RFC 4514 name such as CN=host,O=Example"
            )
        if text.startswith("keyid:@"):
            return cls.key_id(text[7:].encode())
        if text.startswith("keyid:"):
            try:
                return cls.key_id(bytes.fromhex(text[6:]))
            except ValueError as exc:
                raise IkeLocalError(
                    f"Identity: {text!r}: keyid: wants hex digits (or keyid:@text)"
                ) from exc
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return cls.fqdn(text)
        return cls.ip(text)

    def matches(self, other: Identity) -> bool:
        """Equality as IKE means it: two DER_ASN1_DN identities are the same name when
        they decode to equal names (the string types of their values may differ, as a
        certificate and a configuration often do); anything else compares bytes."""
        if self.type == other.type == IdType.DER_ASN1_DN and self.data != other.data:
            try:
                return x509.Name.from_bytes(self.data) == x509.Name.from_bytes(other.data)
            except ValueError:
                return False
        return self == other

    def __str__(self) -> str:
        if self.type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.type == IdType.FQDN:
            return self.data.decode("ascii", "replace")
        if self.type == IdType.KEY_ID:
            return "keyid:" + self.data.hex()
        if self.type == IdType.RFC822_ADDR:
            return "email:" + self.data.decode("ascii", "replace")
        if self.type == IdType.DER_ASN1_DN:
            try:
                return "dn:" + x509.Name.from_bytes(self.data).rfc4514_string()
            except ValueError:
                pass  # not a DER name: shown in hex below
        return f"{self.type.name}:{self.data.hex()}"


# --------------------------------------------------------------------- traffic selectors


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """An address range, an IP protocol (0 = any) and a port range (RFC 7296 3.13.1)."""

    start: IPAddress
    end: IPAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise IkeLocalError(
                f"TrafficSelector: {self.start} and {self.end} are not the same IP version"
            )
        if int(self.start) > int(self.end):
            raise IkeLocalError(f"TrafficSelector: start {self.start} is after end {self.end}")
        if not 0 <= self.ip_protocol <= 255:
            raise IkeLocalError(f"TrafficSelector: IP protocol {self.ip_protocol} not in 0..255")
        if not 0 <= self.start_port <= self.end_port <= 65535:
            raise IkeLocalError(
                f"TrafficSelector: port range {self.start_port}-{self.end_port} is invalid"
            )

    @classmethod
    def from_cidr(
        cls,
        network: str,
        *,
        ip_protocol: int = 0,
        port: int | None = None,
        ports: tuple[int, int] | None = None,
    ) -> Self:
        """``TrafficSelector.from_cidr("10.0.0.0/24", ip_protocol=6, port=5432)``."""
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise IkeLocalError(f"TrafficSelector: {network!r} is not an address/prefix") from exc
        lo, hi = (0, 65535)
        if port is not None:
            lo = hi = port
        elif ports is not None:
            lo, hi = ports
        return cls(net.network_address, net.broadcast_address, ip_protocol, lo, hi)

    @classmethod
    def host(cls, address: str | IPAddress, *, ip_protocol: int = 0) -> Self:
        """A single address, every port."""
        try:
            addr = ipaddress.ip_address(address)
        except ValueError as exc:
            raise IkeLocalError(f"TrafficSelector: {address!r} is not an IP address") from exc
        return cls(addr, addr, ip_protocol)

    @classmethod
    def any(cls, version: int = 4) -> Self:
        """Every address of one IP version."""
        return cls.from_cidr("0.0.0.0/0" if version == 4 else "::/0")

    @property
    def version(self) -> int:
        return self.start.version

    def contains(self, other: TrafficSelector) -> bool:
        """True when every packet ``other`` matches is matched by ``self``."""
        return self.intersect(other) == other

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The selector matching what both match, or ``None`` (RFC 7296 2.9 narrowing)."""
        if self.version != other.version:
            return None
        if self.ip_protocol and other.ip_protocol and self.ip_protocol != other.ip_protocol:
            return None
        lo = max(int(self.start), int(other.start))
        hi = min(int(self.end), int(other.end))
        if lo > hi:
            return None
        plo = max(self.start_port, other.start_port)
        phi = min(self.end_port, other.end_port)
        if plo > phi:
            return None
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return TrafficSelector(make(lo), make(hi), self.ip_protocol or other.ip_protocol, plo, phi)

    def __str__(self) -> str:
        nets = list(ipaddress.summarize_address_range(self.start, self.end))
        addrs = str(nets[0]) if len(nets) == 1 else f"{self.start}-{self.end}"
        proto = "" if self.ip_protocol == 0 else f" proto {self.ip_protocol}"
        ports = (
            ""
            if (self.start_port, self.end_port) == (0, 65535)
            else f" port {self.start_port}"
            if self.start_port == self.end_port
            else f" ports {self.start_port}-{self.end_port}"
        )
        return f"{addrs}{proto}{ports}"


# ------------------------------------------------------------------------------ proposals


@dataclass(frozen=True, slots=True)
class Transform:
    """One transform of a proposal (RFC 7296 3.3.2): type, ID and optional key length."""

    type: TransformType
    id: int
    key_length: int | None = None

    def __str__(self) -> str:
        enum_of: dict[TransformType, type[enum.IntEnum]] = {
            TransformType.ENCR: EncrId,
            TransformType.PRF: PrfId,
            TransformType.INTEG: IntegId,
            TransformType.DH: DhGroup,
            TransformType.ESN: EsnId,
        }
        try:
            name = enum_of[self.type](self.id).name
        except ValueError:
            name = str(self.id)
        return f"{name}_{self.key_length}" if self.key_length else name


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal: transforms of several types; within a type, alternatives in order of
    preference (RFC 7296 3.3: one of each type is chosen)."""

    transforms: tuple[Transform, ...]

    def of_type(self, kind: TransformType) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == kind)

    def types(self) -> frozenset[TransformType]:
        return frozenset(t.type for t in self.transforms)

    def __str__(self) -> str:
        return "-".join(str(t) for t in self.transforms)


def _encr(ident: EncrId, bits: int | None) -> Transform:
    return Transform(TransformType.ENCR, ident, bits)


#: Proposal keywords (strongSwan spelling) and the transforms they stand for.  ``sha*``
#: is integrity (and, in IKE proposals without ``prf*``, also the PRF).
ALGORITHM_TOKENS: dict[str, Transform] = {
    "aes128": _encr(EncrId.AES_CBC, 128),
    "aes192": _encr(EncrId.AES_CBC, 192),
    "aes256": _encr(EncrId.AES_CBC, 256),
    "aes128gcm16": _encr(EncrId.AES_GCM_16, 128),
    "aes192gcm16": _encr(EncrId.AES_GCM_16, 192),
    "aes256gcm16": _encr(EncrId.AES_GCM_16, 256),
    "chacha20poly1305": _encr(EncrId.CHACHA20_POLY1305, None),
    "sha256": Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
    "sha384": Transform(TransformType.INTEG, IntegId.HMAC_SHA2_384_192),
    "sha512": Transform(TransformType.INTEG, IntegId.HMAC_SHA2_512_256),
    "prfsha256": Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
    "prfsha384": Transform(TransformType.PRF, PrfId.HMAC_SHA2_384),
    "prfsha512": Transform(TransformType.PRF, PrfId.HMAC_SHA2_512),
    "modp2048": Transform(TransformType.DH, DhGroup.MODP_2048),
    "modp3072": Transform(TransformType.DH, DhGroup.MODP_3072),
    "ecp256": Transform(TransformType.DH, DhGroup.ECP_256),
    "ecp384": Transform(TransformType.DH, DhGroup.ECP_384),
    "ecp521": Transform(TransformType.DH, DhGroup.ECP_521),
    "curve25519": Transform(TransformType.DH, DhGroup.CURVE25519),
    "x25519": Transform(TransformType.DH, DhGroup.CURVE25519),
    "esn": Transform(TransformType.ESN, EsnId.ESN),
    "noesn": Transform(TransformType.ESN, EsnId.NO_ESN),
}

_INTEG_TO_PRF = {
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}

_AEAD = frozenset({EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305})


def _tokens(text: str, where: str) -> list[Transform]:
    out: list[Transform] = []
    for token in text.strip().lower().split("-"):
        try:
            out.append(ALGORITHM_TOKENS[token])
        except KeyError:
            raise IkeLocalError(
                f"{where}: unknown algorithm {token!r} in {text!r}; "
                f"known: {', '.join(sorted(ALGORITHM_TOKENS))}"
            ) from None
    return out


def parse_ike_proposal(text: str) -> Proposal:
    """An IKE proposal from ``encr[-integ][-prf]-dh`` keywords, e.g.
    ``aes256gcm16-prfsha384-ecp384`` or ``aes256-sha256-modp2048``."""
    transforms = _tokens(text, "IKE proposal")
    kinds = {t.type for t in transforms}
    if TransformType.PRF not in kinds:
        # strongSwan convention: the integrity keyword names the PRF too.
        transforms += [
            Transform(TransformType.PRF, _INTEG_TO_PRF[IntegId(t.id)])
            for t in transforms
            if t.type == TransformType.INTEG
        ]
    proposal = Proposal(tuple(transforms))
    _check_ike_proposal(proposal, text)
    return proposal


def parse_child_proposal(text: str, protocol: ProtocolId = ProtocolId.ESP) -> Proposal:
    """An ESP (``aes256gcm16``, ``aes256-sha256``) or AH (``sha256``) proposal.
    ESN defaults to "no ESN" when not given."""
    transforms = _tokens(text, f"{protocol.name} proposal")
    if not any(t.type == TransformType.ESN for t in transforms):
        transforms.append(ALGORITHM_TOKENS["noesn"])
    proposal = Proposal(tuple(transforms))
    _check_child_proposal(proposal, protocol, text)
    return proposal


def _check_allowed(p: Proposal, protocol: ProtocolId, label: str) -> None:
    # RFC 8247 (IKE) / RFC 8221 (ESP, AH): forbidden algorithms are never offered
    for t in p.transforms:
        try:
            check_transform(protocol, t.type, t.id, t.key_length)
        except IkeLocalError as exc:
            raise IkeLocalError(f"{protocol.name} proposal {label!r}: {exc}") from None


def _check_ike_proposal(p: Proposal, label: str) -> None:
    _check_ike_structure(p, label)
    _check_allowed(p, ProtocolId.IKE, label)


def _check_ike_structure(p: Proposal, label: str) -> None:
    encr = p.of_type(TransformType.ENCR)
    if not encr:
        raise IkeLocalError(f"IKE proposal {label!r}: needs an encryption algorithm")
    if not p.of_type(TransformType.PRF):
        raise IkeLocalError(f"IKE proposal {label!r}: needs a PRF (prfsha256, ...)")
    if not p.of_type(TransformType.DH):
        raise IkeLocalError(f"IKE proposal {label!r}: needs a DH group (ecp256, ...)")
    aead = [t for t in encr if t.id in _AEAD]
    if aead and len(aead) != len(encr):
        raise IkeLocalError(
            f"IKE proposal {label!r}: do not mix AEAD and non-AEAD ciphers in one proposal"
        )
    if aead and p.of_type(TransformType.INTEG):
        raise IkeLocalError(
            f"IKE proposal {label!r}: an AEAD cipher takes no integrity algorithm (RFC 5282 8)"
        )
    if not aead and not p.of_type(TransformType.INTEG):
        raise IkeLocalError(f"IKE proposal {label!r}: a CBC cipher needs integrity (sha256, ...)")


def _check_child_proposal(p: Proposal, protocol: ProtocolId, label: str) -> None:
    _check_child_structure(p, protocol, label)
    _check_allowed(p, protocol, label)


def _check_child_structure(p: Proposal, protocol: ProtocolId, label: str) -> None:
    encr = p.of_type(TransformType.ENCR)
    integ = p.of_type(TransformType.INTEG)
    if protocol == ProtocolId.AH:
        if encr:
            raise IkeLocalError(f"AH proposal {label!r}: AH has no encryption")
        if not integ:
            raise IkeLocalError(f"AH proposal {label!r}: needs an integrity algorithm")
        return
    if not encr:
        raise IkeLocalError(f"ESP proposal {label!r}: needs an encryption algorithm")
    aead = [t for t in encr if t.id in _AEAD]
    if aead and len(aead) != len(encr):
        raise IkeLocalError(
            f"ESP proposal {label!r}: do not mix AEAD and non-AEAD ciphers in one proposal"
        )
    if aead and integ:
        raise IkeLocalError(f"ESP proposal {label!r}: an AEAD cipher takes no integrity")
    if not aead and not integ:
        raise IkeLocalError(f"ESP proposal {label!r}: a CBC cipher needs integrity")


DEFAULT_IKE_PROPOSALS: tuple[Proposal, ...] = (
    parse_ike_proposal("aes256gcm16-prfsha384-ecp384"),
    parse_ike_proposal("aes256-sha256-modp2048"),
)
DEFAULT_CHILD_PROPOSALS: tuple[Proposal, ...] = (
    parse_child_proposal("aes256gcm16"),
    parse_child_proposal("aes256-sha256"),
)


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True, slots=True)
class RetransmitConfig:
    """Request retransmission (RFC 7296 2.1, 2.4): the n-th retransmission is sent
    ``timeout * base**(n-1)`` seconds (capped at ``limit``) after the previous send;
    after ``max_retransmits`` retransmissions and one more wait, the SA gives up.

    The default keeps trying for about 3.7 minutes (13 sends), as RFC 7296 2.4 asks
    ("several minutes" before an SA is declared dead); :meth:`give_up_after` says how
    long a configuration waits in all.
    """

    timeout: float = 1.0
    base: float = 1.6
    max_retransmits: int = 12
    limit: float | None = 30.0

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.base < 1 or self.max_retransmits < 0:
            raise IkeLocalError(
                "RetransmitConfig: wants timeout > 0, base >= 1, max_retransmits >= 0"
            )
        if self.limit is not None and self.limit <= 0:
            raise IkeLocalError("RetransmitConfig: limit must be > 0 (or None)")

    def delay(self, sends: int) -> float:
        """Wait after the ``sends``-th transmission (1 = the original) of a request."""
        value = self.timeout * self.base ** (sends - 1)
        return value if self.limit is None else min(value, self.limit)

    def give_up_after(self) -> float:
        """Seconds from the first send until the SA gives up on an unanswered request."""
        return sum(self.delay(n) for n in range(1, self.max_retransmits + 2))


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """A CHILD SA of a connection: the first one is negotiated in IKE_AUTH (RFC 7296
    1.2), further ones with CREATE_CHILD_SA (1.3.1).

    ``proposals`` may hold DH groups: they give perfect forward secrecy to the
    CHILD SAs made by CREATE_CHILD_SA (new ones and rekeys, RFC 7296 1.3.1); they are
    left out of IKE_AUTH, which carries no KE payload (RFC 7296 1.2).
    """

    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    mode: Mode = Mode.TUNNEL
    protocol: ProtocolId = ProtocolId.ESP
    proposals: tuple[Proposal, ...] = DEFAULT_CHILD_PROPOSALS
    #: Hard lifetime in seconds (the kernel deletes the SA then).
    lifetime: float = 3600.0
    #: When the engine rekeys (seconds after creation); default 90 % of ``lifetime``.
    rekey_time: float | None = None
    #: Rekeys happen up to this fraction of ``rekey_time`` earlier, at random, so
    #: that the SAs of a cluster do not all rekey at once and the two peers of a pair
    #: rarely collide (RFC 7296 2.8.1).
    jitter: float = 0.1
    #: Hard limits in bytes / packets (None: none); the kernel signals a soft EXPIRE
    #: at 90 % and the agent rekeys then.
    lifetime_bytes: int | None = None
    lifetime_packets: int | None = None
    #: Name of this CHILD configuration (the agent maps it to kernel reqids).
    name: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in (ProtocolId.ESP, ProtocolId.AH):
            raise IkeLocalError(f"ChildConfig: protocol must be ESP or AH, not {self.protocol!r}")
        if not self.local_ts or not self.remote_ts:
            raise IkeLocalError("ChildConfig: local_ts and remote_ts need at least one selector")
        if not self.proposals:
            raise IkeLocalError("ChildConfig: proposals is empty")
        for p in self.proposals:
            _check_child_proposal(p, self.protocol, str(p))
        if self.lifetime <= 0:
            raise IkeLocalError("ChildConfig: lifetime must be > 0 seconds")
        if self.rekey_time is not None and not 0 < self.rekey_time <= self.lifetime:
            raise IkeLocalError("ChildConfig: rekey_time must be in (0, lifetime]")
        if not 0 <= self.jitter < 1:
            raise IkeLocalError("ChildConfig: jitter must be in [0, 1)")
        for label, value in (
            ("lifetime_bytes", self.lifetime_bytes),
            ("lifetime_packets", self.lifetime_packets),
        ):
            if value is not None and value <= 0:
                raise IkeLocalError(f"ChildConfig: {label} must be > 0 (or None)")

    @property
    def soft_lifetime(self) -> float:
        """The rekey time before jitter."""
        return self.rekey_time if self.rekey_time is not None else self.lifetime * 0.9

    @property
    def pfs(self) -> bool:
        """True when CREATE_CHILD_SA exchanges of this child carry a KE payload."""
        return any(
            t.type == TransformType.DH and t.id != DhGroup.NONE
            for p in self.proposals
            for t in p.transforms
        )


@dataclass(frozen=True, slots=True)
class IkeConfig:
    """One IKE connection with one peer.

    ``remote_id`` ``None`` accepts any peer identity (the PSK still has to match, or
    the certificate has to chain to ``trust`` and name that identity).

    Authentication, per direction (:mod:`ipsecd.ike.auth`): we sign with
    ``credentials`` when set, else use ``psk``; the peer must present a certificate
    from ``trust`` when set, else use ``psk``.  ``psk`` may be empty only when both
    are set.
    ``local_address``/``remote_address`` (plain IPs) are what a responder's config
    lookup matches on (see :func:`ipsecd.ike.engine.lookup_by_address`).
    """

    name: str
    local_id: Identity
    remote_id: Identity | None
    psk: bytes = field(repr=False)
    child: ChildConfig
    ike_proposals: tuple[Proposal, ...] = DEFAULT_IKE_PROPOSALS
    local_address: str | None = None
    remote_address: str | None = None
    role: Role = Role.EITHER
    #: IKE SA lifetime in seconds: rekeyed (RFC 7296 2.18) at ``ike_rekey_time``
    #: (default 90 %, minus up to ``jitter`` of it at random), deleted at the end.
    ike_lifetime: float = 14400.0
    ike_rekey_time: float | None = None
    jitter: float = 0.1
    #: CHILD SAs negotiated with CREATE_CHILD_SA once the IKE SA is up (e.g. the AH
    #: half of an ESP+AH bundle; RFC 7296 has no bundles, so each is its own SA).
    extra_children: tuple[ChildConfig, ...] = ()
    retransmit: RetransmitConfig = RetransmitConfig()
    #: A responder that got no IKE_AUTH request this long after IKE_SA_INIT gives up.
    half_open_timeout: float = 30.0
    #: Dead peer detection (RFC 7296 2.4): after this many seconds without an
    #: authenticated message from the peer, send an empty INFORMATIONAL request; no
    #: answer after the retransmissions fails the SA.  None: only on demand.
    dpd_interval: float | None = None
    #: Send INITIAL_CONTACT in IKE_AUTH (RFC 7296 2.4): the peer may then drop the
    #: IKE SAs it still has with us.  Set it for the first IKE SA with a peer after the
    #: agent (re)starts, not for every SA.
    initial_contact: bool = False
    #: Certificate authentication (RFC 7296 2.15, RFC 7427): our chain and key, and the
    #: CAs the peer's certificate must chain to (see the class doc).
    credentials: LocalCredentials | None = None
    trust: Trust | None = None
    #: When our chain is sent in CERT payloads (we always send a CERTREQ with ``trust``).
    #: Always by default: RFC 7296 3.6 says certificates SHOULD be sent when
    #: available, and Libreswan as initiator sends no CERTREQ unless its conn names a
    #: CA (docs/ike.md "Certificates").
    send_cert: SendCert = SendCert.ALWAYS
    #: Sign and accept the signature methods older than RFC 7427 (RSA method 1 with
    #: SHA-1, ECDSA methods 9-11) with a peer that does not announce
    #: SIGNATURE_HASH_ALGORITHMS.
    allow_legacy_auth: bool = False
    #: Send and check NAT detection notifications (RFC 7296 2.23).
    nat_traversal: bool = True
    #: Pretend to be behind a NAT so that ESP is UDP-encapsulated (like charon's
    #: ``encap = yes``).
    force_encapsulation: bool = False
    nonce_length: int = 32
    #: Behind a NAT, send a NAT keepalive (RFC 3948 2.3) after this many idle seconds.
    nat_keepalive: float | None = 20.0
    #: IKE fragmentation (RFC 7383, :mod:`ipsecd.ike.fragments`): offered in
    #: IKE_SA_INIT; used when the peer offers it too.
    fragmentation: bool = True
    #: Largest datagram we send once fragmentation is in use, counted as strongSwan's
    #: ``charon.fragment_size`` counts it: the whole IP datagram (IP header 20/40, UDP 8,
    #: non-ESP marker 4 on port 4500 included).  1,280 (strongSwan's default for IPv4
    #: and IPv6) is the IPv6 minimum MTU; 576 (RFC 791) is the conservative IPv4 choice.
    fragment_size: int = 1280

    def __post_init__(self) -> None:
        if not self.name:
            raise IkeLocalError("IkeConfig: name is empty")
        if not self.psk and (self.credentials is None or self.trust is None):
            raise IkeLocalError(
                f"IkeConfig {self.name!r}: psk is empty (it may be only when both "
                "credentials and trust are set: certificates both ways)"
            )
        if not self.ike_proposals:
            raise IkeLocalError(f"IkeConfig {self.name!r}: ike_proposals is empty")
        for p in self.ike_proposals:
            _check_ike_proposal(p, str(p))
        # RFC 7296 2.10: at least 128 bits and half the PRF key size; 32 covers SHA-512.
        if not 16 <= self.nonce_length <= 256:
            raise IkeLocalError(f"IkeConfig {self.name!r}: nonce_length must be 16..256")
        if self.dpd_interval is not None and self.dpd_interval <= 0:
            raise IkeLocalError(f"IkeConfig {self.name!r}: dpd_interval must be > 0 (or None)")
        if self.half_open_timeout <= 0 or self.ike_lifetime <= 0:
            raise IkeLocalError(
                f"IkeConfig {self.name!r}: half_open_timeout and ike_lifetime must be > 0"
            )
        if self.ike_rekey_time is not None and not 0 < self.ike_rekey_time <= self.ike_lifetime:
            raise IkeLocalError(
                f"IkeConfig {self.name!r}: ike_rekey_time must be in (0, ike_lifetime]"
            )
        if not 0 <= self.jitter < 1:
            raise IkeLocalError(f"IkeConfig {self.name!r}: jitter must be in [0, 1)")
        if self.nat_keepalive is not None and self.nat_keepalive <= 0:
            raise IkeLocalError(f"IkeConfig {self.name!r}: nat_keepalive must be > 0 (or None)")
        # 576: the IPv4 datagram every host accepts (RFC 791); 65,535: the UDP maximum
        if not 576 <= self.fragment_size <= 65535:
            raise IkeLocalError(f"IkeConfig {self.name!r}: fragment_size must be 576..65535")
        for label, value in (
            ("local_address", self.local_address),
            ("remote_address", self.remote_address),
        ):
            if value is not None:
                try:
                    ipaddress.ip_address(value)
                except ValueError as exc:
                    raise IkeLocalError(
                        f"IkeConfig {self.name!r}: {label} {value!r} is not an IP address"
                    ) from exc

    @property
    def children(self) -> tuple[ChildConfig, ...]:
        """Every CHILD configuration: the IKE_AUTH one first."""
        return (self.child, *self.extra_children)

    @property
    def ike_soft_lifetime(self) -> float:
        """When the IKE SA is rekeyed, before jitter."""
        return self.ike_rekey_time if self.ike_rekey_time is not None else self.ike_lifetime * 0.9


def selectors(items: Iterable[str]) -> tuple[TrafficSelector, ...]:
    """Selectors from CIDR strings: ``selectors(["10.0.0.0/24", "fd00::/64"])``."""
    return tuple(TrafficSelector.from_cidr(i) for i in items)
