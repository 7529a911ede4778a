"""The policy model: what a parsed and validated SPD file says, before node expansion."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from .errors import Diagnostic, Loc
from .secrets import REDACTED, KeyMaterial, Secret, SecretRef

__all__ = [
    "Action",
    "Address",
    "AuthSpec",
    "Connection",
    "Defaults",
    "Direction",
    "IpsecProto",
    "Level",
    "Lifetime",
    "ManualSa",
    "Mode",
    "NodeGroup",
    "Peer",
    "Policy",
    "Prefix",
    "ProposalDef",
    "Rule",
    "Selector",
    "SpdEntry",
    "Template",
    "TrafficSpec",
    "Transform",
    "Tunnel",
    "plain",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    FWD = "fwd"


class Action(StrEnum):
    """Kernel action.  setkey/ipsec(4) ``none`` and native ``bypass`` are ``allow``."""

    ALLOW = "allow"
    BLOCK = "block"
    IPSEC = "ipsec"


class Level(StrEnum):
    """ipsec_set_policy(3) levels; ``default`` defers to the ``*_deflev`` defaults."""

    DEFAULT = "default"
    USE = "use"
    REQUIRE = "require"
    UNIQUE = "unique"


class Mode(StrEnum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"
    ANY = "any"


class IpsecProto(StrEnum):
    ESP = "esp"
    AH = "ah"
    IPCOMP = "ipcomp"


@dataclass(frozen=True, slots=True)
class Defaults:
    """Host-wide defaults (KAME sysctls, Tru64 daemon options)."""

    def_policy: str = "none"  # discard | none  (ipsec(4) net.inet.ipsec.def_policy)
    esp_trans_deflev: str = "use"
    esp_net_deflev: str = "use"
    ah_trans_deflev: str = "use"
    ah_net_deflev: str = "use"
    dfbit: str = "copy"  # clear | set | copy
    ecn: bool = False
    log_unmatched: bool = False
    debug: bool = False
    message_level: str = "default"  # quiet | default | verbose (ipsecd -m)
    socket_policy_ike: str = "bypass"  # per-socket policy on the agent's IKE sockets
    socket_policy_control: str = "bypass"  # ... and on its controller connection


@dataclass(frozen=True, slots=True)
class Selector:
    src: Prefix
    dst: Prefix
    proto: int = 0  # 0 = any upper-layer protocol
    sport: int = 0  # 0 = any port
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class Template:
    """One ``protocol/mode/src-dst/level`` request of an ipsec policy."""

    proto: IpsecProto
    mode: Mode
    src: Address | None
    dst: Address | None
    level: Level
    reqid: int = 0
    src_port: int = 0
    dst_port: int = 0


@dataclass(frozen=True, slots=True)
class SpdEntry:
    """A setkey ``spdadd`` policy, literal addresses, applied per node by ownership."""

    selector: Selector
    direction: Direction
    action: Action
    templates: tuple[Template, ...]
    priority: int | None
    loc: Loc = field(compare=False)
    group: str | None = None  # set by an ``on GROUP { ... }`` block


@dataclass(frozen=True, slots=True)
class Lifetime:
    hard_seconds: int = 0
    soft_seconds: int = 0
    hard_bytes: int = 0
    soft_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ManualSa:
    """A manually keyed SA (setkey ``add`` or native ``sa``)."""

    src: Address
    dst: Address
    proto: IpsecProto
    spi: int
    mode: Mode = Mode.ANY
    reqid: int = 0
    replay: int = 0
    enc: str | None = None
    enc_key: KeyMaterial | None = field(default=None, repr=False)
    auth: str | None = None
    auth_key: KeyMaterial | None = field(default=None, repr=False)
    comp: str | None = None
    raw_cpi: bool = False
    lifetime: Lifetime = Lifetime()
    flags: tuple[str, ...] = ()
    group: str | None = None  # set by an ``on GROUP { ... }`` block
    loc: Loc = field(default=Loc("<none>", 0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Transform:
    """One proposal alternative, e.g. ``aes256gcm16-prfsha384-ecp384``."""

    text: str
    enc: str
    integ: str | None = None
    prf: str | None = None
    dh: str | None = None


@dataclass(frozen=True, slots=True)
class ProposalDef:
    kind: str  # ike | esp | ah
    name: str
    transforms: tuple[Transform, ...]
    loc: Loc = field(compare=False)


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """Members: any listed name, or all labels of one label clause, or any prefix."""

    name: str
    names: tuple[str, ...] = ()
    labels: tuple[tuple[tuple[str, str], ...], ...] = ()
    prefixes: tuple[Prefix, ...] = ()
    loc: Loc = field(default=Loc("<builtin>", 0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Peer:
    """An IKEv2 peer outside the cluster (a strongSwan or Libreswan gateway, ...).

    It is named in ``between`` like a node group, never compiles as a node, and has
    at most one address per family.  ``ike_id`` is its IKE identity (RFC 7296 3.5) as
    text: an address, ``fqdn:NAME``, ``keyid:HEX`` or ``dn:DN``; ``None`` means the
    address of the family a connection uses."""

    name: str
    addresses: tuple[Address, ...]
    ike_id: str | None = None
    loc: Loc = field(default=Loc("<none>", 0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """Traffic between the A-side node and the B-side node of a connection.

    ``None`` networks mean the node's own address; a prefix means a network behind it.
    """

    proto: int = 0
    a_net: Prefix | None = None
    a_port: int = 0
    b_net: Prefix | None = None
    b_port: int = 0


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Outer endpoints: ``@self``, ``@peer`` or a literal address."""

    local: str | Address = "@self"
    remote: str | Address = "@peer"


@dataclass(frozen=True, slots=True)
class AuthSpec:
    """``auth psk KEY`` or ``auth certificate [ca PATH] [cert PATH key PATH]
    [sendcert WHEN] [legacy]`` (docs/spd.md "connection").  Paths are files on each
    node; without them the node's own certificate and the cluster CA are used."""

    kind: str = "certificate"  # certificate | psk
    psk: KeyMaterial | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    send_cert: str = "always"  # always | ifasked | never
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class Connection:
    """An IKE-keyed connection between two node groups, expanded per node pair."""

    name: str
    a_group: str
    b_group: str
    traffic: tuple[TrafficSpec, ...] = (TrafficSpec(),)
    mode: Mode = Mode.TRANSPORT
    protocols: tuple[IpsecProto, ...] = (IpsecProto.ESP,)
    level: Level = Level.REQUIRE
    auth: AuthSpec = AuthSpec()
    ike_proposal: str | None = None
    ike_lifetime: int = 4 * 3600
    child_proposal: str | None = None  # the ESP proposal
    ah_proposal: str | None = None
    child_lifetime: int = 3600
    dpd: int = 30
    priority: int | None = None
    local_id: str = "address"  # address | name
    tunnel: Tunnel | None = None
    loc: Loc = field(default=Loc("<none>", 0, 0), compare=False)
    clause_locs: dict[str, Loc] = field(default_factory=dict, compare=False)
    start: str = "eager"  # eager | ondemand | passive (docs/spd.md, connection)


@dataclass(frozen=True, slots=True)
class Rule:
    """A native ``bypass``/``discard`` rule, optionally limited to a node group."""

    action: Action
    proto: int = 0
    src: str | Prefix = "any"  # any | @self | prefix
    sport: int = 0
    dst: str | Prefix = "any"
    dport: int = 0
    either_port: int = 0  # ``port N`` alone: source or destination port N
    directions: tuple[Direction, ...] = (Direction.IN, Direction.OUT)
    group: str | None = None
    priority: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    loc: Loc = field(default=Loc("<none>", 0, 0), compare=False)


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole SPD file, validated.  ``warnings`` holds what did not stop it."""

    filename: str
    defaults: Defaults
    proposals: dict[tuple[str, str], ProposalDef]
    groups: dict[str, NodeGroup]
    connections: tuple[Connection, ...]
    rules: tuple[Rule, ...]
    spd: tuple[SpdEntry, ...]
    sas: tuple[ManualSa, ...]
    warnings: tuple[Diagnostic, ...] = ()
    has_literal_keys: bool = False
    peers: dict[str, Peer] = field(default_factory=dict)

    def canonical(self) -> str:
        """Stable JSON of the meaning of the file: no comments, no locations, no key
        bytes (literal keys appear as a salted SHA-256 fingerprint).  Two files that mean
        the same policy give the same string; use it to hash and diff revisions."""
        body = {
            "defaults": plain(self.defaults),
            "proposals": [plain(self.proposals[k]) for k in sorted(self.proposals)],
            "groups": [plain(self.groups[k]) for k in sorted(self.groups)],
            "peers": [plain(self.peers[k]) for k in sorted(self.peers)],
            "connections": [plain(c, secrets="fingerprint") for c in self.connections],
            "rules": [plain(r) for r in self.rules],
            "spd": [plain(e) for e in self.spd],
            "sas": [plain(s, secrets="fingerprint") for s in self.sas],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """SHA-256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()


_SKIP = {"loc", "clause_locs"}


def plain(obj: Any, *, secrets: str = "redact") -> Any:
    """A JSON-able view of model values.

    ``secrets``: ``redact`` (``<redacted>``), ``fingerprint`` (salted SHA-256, for
    :meth:`Policy.canonical`) or ``reveal`` (hex key bytes; only when asked for).
    """
    if isinstance(obj, Secret):
        if secrets == "reveal":
            return obj.reveal().hex()
        return obj.fingerprint() if secrets == "fingerprint" else REDACTED
    if isinstance(obj, SecretRef):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: plain(getattr(obj, f.name), secrets=secrets)
            for f in dataclasses.fields(obj)
            if f.name not in _SKIP
        }
    if isinstance(obj, tuple | list):
        return [plain(x, secrets=secrets) for x in obj]
    if isinstance(obj, dict):
        return {str(k): plain(v, secrets=secrets) for k, v in sorted(obj.items())}
    if isinstance(obj, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(obj)
    if isinstance(obj, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return obj.with_prefixlen
    return obj
