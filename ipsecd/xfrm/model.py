"""Typed values for XFRM policies, states, defaults, events and counters.

Everything is a frozen, slotted dataclass.  Fields the kernel fills in by itself
(``index``, current lifetimes, statistics) are ``compare=False``: a dumped object equals
the desired one when everything *we configure* is equal, which is what the reconciler
relies on.  Key material is ``repr=False`` everywhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from .consts import Action, DefaultAction, Dir, EncapType, Mode, PolicyFlag, Proto

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address(text: str | Address) -> Address:
    """``"192.0.2.1"`` → IPv4Address; addresses pass through."""
    return (
        text
        if isinstance(text, ipaddress.IPv4Address | ipaddress.IPv6Address)
        else (ipaddress.ip_address(text))
    )


def network(text: str | Network | Address) -> Network:
    """``"192.0.2.0/24"`` (or a bare address → host prefix) → network, host bits allowed."""
    if isinstance(text, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return text
    return ipaddress.ip_network(text, strict=False)


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic a policy or SA applies to (``struct xfrm_selector``).

    ``sport``/``dport`` are ports for TCP/UDP/SCTP; for ICMP the kernel compares the
    ICMP type against ``sport`` and the code against ``dport`` (as ``ip xfrm`` does).
    ``None`` means any.  ``proto`` 0 is any upper-layer protocol.
    """

    src: Network
    dst: Network
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    ifindex: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"selector mixes address families: {self.src} and {self.dst}")
        for name in ("sport", "dport"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 0xFFFF:
                raise ValueError(f"selector {name} {port} out of range 0..65535")

    @classmethod
    def of(
        cls,
        src: str | Network | Address,
        dst: str | Network | Address,
        proto: int = 0,
        sport: int | None = None,
        dport: int | None = None,
    ) -> Selector:
        """Convenience constructor from strings."""
        return cls(network(src), network(dst), proto, sport, dport)

    @property
    def family(self) -> int:
        return 2 if self.src.version == 4 else 10


@dataclass(frozen=True, slots=True)
class Mark:
    """``struct xfrm_mark``: matches packets with ``skb->mark & mask == value``."""

    value: int
    mask: int = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft/hard limits (``struct xfrm_lifetime_cfg``); ``None`` means no limit.

    A soft limit makes the kernel send a soft EXPIRE (time to rekey); the hard one
    deletes the object and sends a hard EXPIRE/POLEXPIRE.
    """

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_add_seconds: int | None = None
    hard_add_seconds: int | None = None
    soft_use_seconds: int | None = None
    hard_use_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class LifetimeCurrent:
    """``struct xfrm_lifetime_cur``: what the kernel counted so far."""

    bytes: int
    packets: int
    add_time: int
    use_time: int


class Level(Enum):
    """KAME levels of a template (``esp/transport//require``).

    ``use``: optional (``xfrm_user_tmpl.optional = 1``) — traffic flows in clear text
    when no SA exists; ``require``: an SA is mandatory; ``unique``: mandatory and
    bound to its own SA by ``reqid`` (which must then be non-zero).  KAME's
    ``default`` (the host-wide ``*_deflev``) is resolved by the SPD compiler into one of
    these before it reaches the kernel.
    """

    USE = "use"
    REQUIRE = "require"
    UNIQUE = "unique"


@dataclass(frozen=True, slots=True)
class Template:
    """One transform a policy demands (``struct xfrm_user_tmpl``).

    Tunnel mode needs ``src`` and ``dst`` (the outer addresses); transport leaves them
    unset.  Several templates on one policy form a bundle, outermost last (an ESP+AH
    bundle is ``(esp, ah)``).
    """

    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    src: Address | None = None
    dst: Address | None = None
    reqid: int = 0
    spi: int = 0
    level: Level = Level.REQUIRE

    def __post_init__(self) -> None:
        if self.mode == Mode.TUNNEL and (self.src is None or self.dst is None):
            raise ValueError("tunnel-mode template needs both endpoint addresses (src, dst)")
        if self.level == Level.UNIQUE and self.reqid == 0:
            raise ValueError("level 'unique' binds the policy to its SA by reqid: give reqid")


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """What identifies a policy in the kernel: selector, direction, mark and if_id.

    The priority is *not* part of it: changing the priority updates the policy in place.
    """

    selector: Selector
    dir: Dir
    mark: Mark | None = None
    if_id: int = 0


@dataclass(frozen=True, slots=True)
class Policy:
    """One SPD entry (``struct xfrm_userpolicy_info`` + templates, mark, if_id)."""

    selector: Selector
    dir: Dir
    action: Action = Action.ALLOW
    priority: int = 0
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None
    if_id: int = 0
    lifetime: Lifetime = Lifetime()
    flags: PolicyFlag = PolicyFlag.NONE
    #: Kernel-assigned, read from dumps; ignored on input.
    index: int = field(default=0, compare=False)
    current: LifetimeCurrent | None = field(default=None, compare=False)

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.selector, self.dir, self.mark, self.if_id)


@dataclass(frozen=True, slots=True)
class Crypt:
    """Encryption algorithm (``XFRMA_ALG_CRYPT``), e.g. ``cbc(aes)``."""

    name: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Auth:
    """Integrity algorithm (``XFRMA_ALG_AUTH_TRUNC``), e.g. ``hmac(sha256)`` / 128 bits."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int = 96


@dataclass(frozen=True, slots=True)
class Aead:
    """Combined-mode algorithm (``XFRMA_ALG_AEAD``); the key includes the salt."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int = 128


AES_GCM = "rfc4106(gcm(aes))"
CHACHA20_POLY1305 = "rfc7539esp(chacha20,poly1305)"


def aes_gcm(key: bytes, icv_bits: int = 128) -> Aead:
    """RFC 4106 AES-GCM: key is 16/24/32 bytes of AES key + 4 bytes of salt."""
    if len(key) not in (20, 28, 36):
        raise ValueError("rfc4106(gcm(aes)) key must be 20, 28 or 36 bytes (key + 4 salt)")
    return Aead(AES_GCM, key, icv_bits)


def chacha20_poly1305(key: bytes) -> Aead:
    """RFC 7634 ChaCha20-Poly1305 for ESP: 32 bytes key + 4 bytes salt."""
    if len(key) != 36:
        raise ValueError("rfc7539esp(chacha20,poly1305) key must be 36 bytes (32 + 4 salt)")
    return Aead(CHACHA20_POLY1305, key, 128)


def aes_cbc(key: bytes) -> Crypt:
    if len(key) not in (16, 24, 32):
        raise ValueError("cbc(aes) key must be 16, 24 or 32 bytes")
    return Crypt("cbc(aes)", key)


def hmac_sha2(bits: int, key: bytes) -> Auth:
    """HMAC-SHA2-256/384/512 truncated to half the digest (RFC 4868 2.3)."""
    if bits not in (256, 384, 512):
        raise ValueError("HMAC-SHA2 size must be 256, 384 or 512")
    return Auth(f"hmac(sha{bits})", key, bits // 2)


@dataclass(frozen=True, slots=True)
class Encap:
    """UDP encapsulation of ESP (RFC 3948) for NAT traversal (``XFRMA_ENCAP``)."""

    type: EncapType = EncapType.ESPINUDP
    sport: int = 4500
    dport: int = 4500
    oa: Address | None = None


class DfBit(Enum):
    """KAME ``dfbit`` for tunnel mode, as Linux can express it per SA.

    ``copy`` (Linux default): the outer IPv4 header copies DF from the inner one.
    ``clear``: ``XFRM_STATE_NOPMTUDISC`` — outer DF is always 0 (and PMTU is ignored).
    ``set`` has no per-SA equivalent in Linux XFRM; asking for it is an error.
    """

    COPY = "copy"
    CLEAR = "clear"
    SET = "set"


@dataclass(frozen=True, slots=True)
class SaId:
    """What identifies an SA: destination, SPI, protocol (and mark)."""

    dst: Address
    spi: int
    proto: Proto = Proto.ESP
    mark: Mark | None = None


@dataclass(frozen=True, slots=True)
class SaStats:
    """``struct xfrm_stats`` of a dumped SA (replay window drops, replays, ICV failures)."""

    replay_window: int
    replay: int
    integrity_failed: int


@dataclass(frozen=True, slots=True)
class State:
    """One SAD entry (``struct xfrm_usersa_info`` + algorithms and options).

    ``ecn=False`` sets ``XFRM_STATE_NOECN`` (no ECN propagation between inner and
    outer header, RFC 6040 3); ``decap_dscp`` sets ``XFRM_STATE_DECAP_DSCP``;
    ``dfbit`` see :class:`DfBit`.  ``replay_window`` is in packets (0 = no replay
    check); with ``esn`` the 64-bit sequence numbers of RFC 4303 2.2.1 are used.
    """

    src: Address
    dst: Address
    spi: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    reqid: int = 0
    aead: Aead | None = None
    crypt: Crypt | None = None
    auth: Auth | None = None
    selector: Selector | None = None
    encap: Encap | None = None
    replay_window: int = 32
    esn: bool = False
    lifetime: Lifetime = Lifetime()
    ecn: bool = True
    decap_dscp: bool = False
    dfbit: DfBit = DfBit.COPY
    mark: Mark | None = None
    if_id: int = 0
    tfcpad: int = 0
    current: LifetimeCurrent | None = field(default=None, compare=False)
    stats: SaStats | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"SA mixes address families: {self.src} and {self.dst}")
        if not 0 <= self.spi <= 0xFFFF_FFFF:
            raise ValueError(f"SPI {self.spi:#x} out of 32-bit range")

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, self.proto, self.mark)

    @property
    def family(self) -> int:
        return 2 if self.dst.version == 4 else 10


@dataclass(frozen=True, slots=True)
class DefaultPolicy:
    """Host-wide default for traffic no policy matches (KAME ``def_policy``)."""

    inbound: DefaultAction = DefaultAction.ACCEPT
    forward: DefaultAction = DefaultAction.ACCEPT
    outbound: DefaultAction = DefaultAction.ACCEPT


@dataclass(frozen=True, slots=True)
class SadInfo:
    count: int
    hash_count: int
    hash_max: int


@dataclass(frozen=True, slots=True)
class SpdInfo:
    in_count: int
    out_count: int
    fwd_count: int
    in_socket_count: int
    out_socket_count: int
    fwd_socket_count: int
    hash_count: int
    hash_max: int


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class AcquireRequested:
    """The kernel needs an SA for ``template`` (XFRM_MSG_ACQUIRE).

    ``policy`` is the policy that matched; ``selector`` the packet's flow; ``seq`` is
    echoed back by a key manager when it installs the SA.
    """

    proto: Proto
    dst: Address
    src: Address
    selector: Selector
    policy: Policy
    seq: int


@dataclass(frozen=True, slots=True)
class StateExpired:
    """An SA reached a soft (rekey now) or hard (deleted) lifetime (XFRM_MSG_EXPIRE)."""

    state: State
    hard: bool


@dataclass(frozen=True, slots=True)
class PolicyExpired:
    """A policy reached its lifetime (XFRM_MSG_POLEXPIRE); hard means it is gone."""

    policy: Policy
    hard: bool


@dataclass(frozen=True, slots=True)
class MappingChanged:
    """A UDP-encapsulated SA saw its peer's address/port change (XFRM_MSG_MAPPING)."""

    sa: SaId
    reqid: int
    old_src: Address
    old_sport: int
    new_src: Address
    new_sport: int


XfrmEvent = AcquireRequested | StateExpired | PolicyExpired | MappingChanged

__all__ = [
    "AES_GCM",
    "CHACHA20_POLY1305",
    "AcquireRequested",
    "Action",
    "Address",
    "Aead",
    "Auth",
    "Crypt",
    "DefaultPolicy",
    "DfBit",
    "Dir",
    "Encap",
    "Level",
    "Lifetime",
    "LifetimeCurrent",
    "MappingChanged",
    "Mark",
    "Network",
    "Policy",
    "PolicyExpired",
    "PolicyKey",
    "SaId",
    "SaStats",
    "SadInfo",
    "Selector",
    "SpdInfo",
    "State",
    "StateExpired",
    "Template",
    "XfrmEvent",
]
