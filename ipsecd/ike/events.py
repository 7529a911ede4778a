"""Events the IKE engine hands to its driver (``IkeSa.next_event()``).

Past-tense names, frozen slotted dataclasses (DESIGN.md convention 2).  Kernel changes
leave the engine only as events: the agent installs the SAs of a
:class:`ChildSaEstablished`, activates the outbound half of a
:class:`ChildSaOutboundActivated` and removes those of a :class:`ChildSaDeleted`.
Algorithms are IANA transform IDs (RFC 7296 3.3.2); the one table that turns them into
Linux names is :mod:`ipsecd.xfrm.algorithms`.

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
    "ChildSaOutboundActivated",
    "ChildSaRekeyed",
    "Event",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRekeyed",
    "PeerAddressChanged",
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
    #: How the peer authenticated: "psk" or the signature scheme ("ecdsa-sha256", ...),
    #: and the subject of its certificate (RFC 4514 text; empty with a PSK).
    peer_auth: str = ""
    peer_certificate: str = ""


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """The IKE SA was replaced by a new one (RFC 7296 2.18) that took over its CHILD
    SAs.  Emitted by the *new* SA; the old one is deleted afterwards (its
    :class:`IkeSaDeleted` follows, without CHILD SA events)."""

    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """A CHILD SA pair was negotiated; the agent installs it in the kernel.

    The inbound half must be in the kernel before the engine's next datagram is sent
    (a responder's answer lets the peer use the SA at once); the outbound half only
    when ``outbound_active`` (otherwise :class:`ChildSaOutboundActivated` follows: a
    rekey responder waits for the old SA's Delete before it sends on the new one,
    RFC 7296 2.8, so that the initiator has installed its inbound half).
    """

    #: The parent IKE SA (its SPIs as in :class:`IkeSaEstablished`).
    ike_spi_i: bytes
    ike_spi_r: bytes
    protocol: ProtocolId
    mode: Mode
    #: SPI we chose (peer → us) and the SPI the peer chose (us → peer), host order ints.
    inbound_spi: int
    outbound_spi: int
    #: IANA transform IDs: ENCR (None for AH) with its key length in bits (AES; None
    #: for ChaCha20), INTEG (None with an AEAD cipher).
    encr_id: int | None
    encr_key_bits: int | None
    integ_id: int | None
    #: Keys, in: peer → us, out: us → peer (RFC 7296 2.17).  AEAD keys include their
    #: 4-byte salt.
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
    #: Hard lifetime in seconds (the kernel deletes the SA then); ``soft_lifetime``
    #: is a backstop for the kernel's soft EXPIRE, later than the engine's own rekey.
    lifetime: float
    soft_lifetime: float
    #: Which transform proposal was chosen, readable ("AES_GCM_16_256-NO_ESN").
    proposal: str
    connection: str = ""
    #: Name of the CHILD configuration (``ChildConfig.name``).
    child: str = ""
    outbound_active: bool = True
    #: Inbound SPI of the CHILD SA this one replaces (a rekey), else None.
    rekey_of: int | None = None
    #: DH group of a PFS exchange (CREATE_CHILD_SA with KE), else None.
    pfs_group: int | None = None
    #: Byte and packet limits (hard; None = none) for the kernel.
    lifetime_bytes: int | None = None
    lifetime_packets: int | None = None


@dataclass(frozen=True, slots=True)
class ChildSaOutboundActivated:
    """The outbound half of a CHILD SA may now carry traffic (rekey responder, after
    the initiator deleted the old SA)."""

    inbound_spi: int
    outbound_spi: int
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed:
    """A CHILD SA was replaced by a new one (its :class:`ChildSaEstablished` came
    first); the old one's :class:`ChildSaDeleted` follows once it is deleted."""

    old_inbound_spi: int
    old_outbound_spi: int
    inbound_spi: int
    outbound_spi: int
    connection: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """A CHILD SA was not created (IKE_AUTH's, a CREATE_CHILD_SA, or a rekey that
    finally failed); the IKE SA itself stays up (RFC 7296 1.2, 2.21.3)."""

    reason: str
    #: The Notify Message Type reported (or sent), e.g. TS_UNACCEPTABLE (38).
    notify: int | None
    connection: str = ""
    child: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    """A CHILD SA pair is gone (INFORMATIONAL Delete from either side, RFC 7296 1.4.1,
    its IKE SA died, or it was replaced); the agent removes it from the kernel: the
    outbound half at once, the inbound half after a short grace (packets in flight)."""

    protocol: ProtocolId
    inbound_spi: int
    outbound_spi: int
    #: True when the peer asked for the deletion.
    by_peer: bool
    reason: str
    connection: str = ""
    #: True when a rekeyed SA replaced it (traffic goes on over the new one).
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    """The IKE SA was deleted by an INFORMATIONAL Delete (ours or the peer's)."""

    spi_i: bytes
    spi_r: bytes
    by_peer: bool
    connection: str = ""
    #: True when the IKE SA had been replaced by a rekeyed one.
    rekeyed: bool = False


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """The IKE SA could not be set up, or died.  ``notify`` is the Notify Message Type
    involved (received from or sent to the peer), if any, e.g. AUTHENTICATION_FAILED
    (24), NO_PROPOSAL_CHOSEN (14); ``None`` for timeouts."""

    reason: str
    notify: int | None
    connection: str = ""


@dataclass(frozen=True, slots=True)
class PeerAddressChanged:
    """The peer's address or port changed behind a NAT (RFC 7296 2.23: an
    authenticated message came from elsewhere, or the kernel reported a new ESP-in-UDP
    mapping); the agent updates the encapsulation of the installed CHILD SAs."""

    old_addr: tuple[str, int]
    new_addr: tuple[str, int]
    connection: str = ""


Event = (
    IkeSaEstablished
    | IkeSaRekeyed
    | ChildSaEstablished
    | ChildSaOutboundActivated
    | ChildSaRekeyed
    | ChildSaFailed
    | ChildSaDeleted
    | IkeSaDeleted
    | IkeSaFailed
    | PeerAddressChanged
)
