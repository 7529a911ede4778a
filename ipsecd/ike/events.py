"""Events the IKE engine hands to its driver (``IkeSa.next_event()``).

Past-tense names, frozen slotted dataclasses (DESIGN.md convention 2).  Kernel changes
leave the engine only as events: the agent installs the SAs of a
:class:`ChildSaEstablished` and removes those of a :class:`ChildSaDeleted`.

Key material lives in ``repr=False`` fields and never reaches ``repr``, logs or
errors (DESIGN.md convention 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Identity, Mode, TrafficSelector
from .constants import ProtocolId

__all__ = [
    "ChildSaDeleted",
    "ChildSaEstablished",
    "ChildSaFailed",
    "Event",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
]


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    """Both IKE_AUTH messages were authenticated: the IKE SA is up (RFC 7296 1.2)."""

    #: IKE SA SPIs as chosen by the original initiator and responder (8 bytes each).
    spi_i: bytes
    spi_r: bytes
    #: True when we were the original initiator.
    initiator: bool
    local_id: Identity
    #: The peer's authenticated identity (its IDi or IDr payload).
    remote_id: Identity
    #: Outer addresses (IP, UDP port) of the IKE SA at the time it was established.
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    #: Negotiated algorithms, as readable transform names ("AES_GCM_16_256", ...).
    encryption: str
    integrity: str | None
    prf: str
    dh_group: int
    #: NAT detection results (RFC 7296 2.23): we / the peer are behind a NAT.
    nat_local: bool
    nat_remote: bool
    #: IKE SA lifetime in seconds (from the configuration).
    lifetime: float
    #: The peer sent INITIAL_CONTACT (RFC 7296 2.4): it has no other IKE SA with us
    #: any more, so the agent may delete the ones it still keeps with that identity.
    initial_contact: bool = False
    #: Connection name (``IkeConfig.name``), as in every event.
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """A CHILD SA pair was negotiated; the agent installs it in the kernel.

    Algorithm names are the Linux XFRM ones: for AEAD ciphers ``encryption`` is
    e.g. ``"rfc4106(gcm(aes))"`` or ``"rfc7539esp(chacha20,poly1305)"`` and the keys
    include the 4-byte salt (RFC 4106 8.1, RFC 7634 2), ``integrity`` is ``None``;
    otherwise ``encryption`` is ``"cbc(aes)"`` (``None`` for AH) and ``integrity`` e.g.
    ``"hmac(sha256)"`` truncated to ``integrity_truncation_bits``.
    """

    #: The parent IKE SA (its SPIs as in :class:`IkeSaEstablished`).
    ike_spi_i: bytes
    ike_spi_r: bytes
    protocol: ProtocolId
    mode: Mode
    #: SPI we chose (peer → us) and the SPI the peer chose (us → peer), host order ints.
    inbound_spi: int
    outbound_spi: int
    encryption: str | None
    #: Key length in bits, salt included (e.g. 288 for rfc4106 with AES-256).
    encryption_key_bits: int
    integrity: str | None
    integrity_truncation_bits: int | None
    #: ICV length in bytes (AEAD tag or truncated HMAC).
    icv_length: int
    #: Keys, in: peer → us, out: us → peer (RFC 7296 2.17).
    inbound_encryption_key: bytes = field(repr=False)
    outbound_encryption_key: bytes = field(repr=False)
    inbound_integrity_key: bytes = field(repr=False)
    outbound_integrity_key: bytes = field(repr=False)
    #: Negotiated (possibly narrowed, RFC 7296 2.9) traffic selectors.
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    #: Outer (tunnel endpoint) addresses: the IKE SA's IPs.
    local_address: str
    remote_address: str
    #: UDP encapsulation (RFC 3948) when a NAT was detected or forced; the ports are
    #: those of the IKE SA (4500 on our side) when ``encapsulation`` is True.
    encapsulation: bool
    encap_local_port: int | None
    encap_remote_port: int | None
    #: Extended sequence numbers negotiated.
    esn: bool
    #: Hard and soft lifetimes in seconds.
    lifetime: float
    soft_lifetime: float
    #: Which transform proposal was chosen, readable ("AES_GCM_16_256-NO_ESN").
    proposal: str
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """The CHILD SA of IKE_AUTH was not created; the IKE SA itself stays up
    (RFC 7296 1.2, 2.21.3)."""

    reason: str
    #: The Notify Message Type reported (or sent), e.g. TS_UNACCEPTABLE (38).
    notify: int | None
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    """A CHILD SA pair is gone (INFORMATIONAL Delete from either side, RFC 7296 1.4.1,
    or its IKE SA died); the agent removes it from the kernel."""

    protocol: ProtocolId
    inbound_spi: int
    outbound_spi: int
    #: True when the peer asked for the deletion.
    by_peer: bool
    reason: str
    connection: str = ""


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    """The IKE SA was deleted by an INFORMATIONAL Delete (ours or the peer's)."""

    spi_i: bytes
    spi_r: bytes
    by_peer: bool
    connection: str = ""


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """The IKE SA could not be set up, or died.  ``notify`` is the Notify Message Type
    involved (received from or sent to the peer), if any, e.g. AUTHENTICATION_FAILED
    (24), NO_PROPOSAL_CHOSEN (14); ``None`` for timeouts."""

    reason: str
    notify: int | None
    connection: str = ""


Event = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaFailed
    | ChildSaDeleted
    | IkeSaDeleted
    | IkeSaFailed
)
