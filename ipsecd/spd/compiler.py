"""Per-node compiler: what one node must install and run, from the policy and directory.

Deterministic: the same policy and directory always give the same ``NodeConfig``
(sorted policies, SAs and connections; reqids numbered in that order).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ._gc import gc_paused
from .errors import Diagnostic, Severity, SpdError
from .model import (
    Action,
    Address,
    Connection,
    Defaults,
    Direction,
    IpsecProto,
    Level,
    ManualSa,
    Mode,
    Policy,
    Prefix,
    Rule,
    Selector,
    SpdEntry,
    Template,
    TrafficSpec,
)
from .nodes import NodeInfo, members, node_in_group
from .output import config_to_dict, config_to_text
from .secrets import KeyMaterial
from .values import network

__all__ = [
    "DEFAULT_AH",
    "DEFAULT_ESP",
    "DEFAULT_IKE",
    "IkeConnection",
    "KernelPolicy",
    "NodeConfig",
    "TrafficSelector",
    "compile_node",
]

# One-line connections get these unless told otherwise (RFC 8221 / RFC 8247 MUST/SHOULD).
DEFAULT_IKE = ("aes256gcm16-prfsha256-ecp256", "aes256-sha256-modp3072")
DEFAULT_ESP = ("aes256gcm16", "aes256-sha256")
DEFAULT_AH = ("sha256",)
CONN_REQID_BASE = 0x10000  # above setkey's unique:1..32767


@dataclass(frozen=True, slots=True)
class KernelPolicy:
    """One kernel SPD entry (XFRM policy).  Lower ``priority`` wins."""

    selector: Selector
    direction: Direction
    action: Action
    templates: tuple[Template, ...]
    priority: int
    origin: str  # FILE:LINE of the statement that produced it


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    prefix: Prefix
    proto: int = 0
    port: int = 0


@dataclass(frozen=True, slots=True)
class IkeConnection:
    """One IKEv2 peer relationship this node runs (RFC 7296)."""

    name: str
    connection: str
    peer: str
    local_addr: Address
    remote_addr: Address
    local_id: str
    remote_id: str
    initiator: bool
    mode: Mode
    protocols: tuple[IpsecProto, ...]
    level: Level
    reqid: int
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ah_proposals: tuple[str, ...]
    auth: str
    psk: KeyMaterial | None = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    ike_lifetime: int
    child_lifetime: int
    dpd: int
    origin: str


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node enforces.  Keys stay inside (``repr=False``)."""

    node: str
    defaults: Defaults
    policies: tuple[KernelPolicy, ...]
    sas: tuple[ManualSa, ...]
    connections: tuple[IkeConnection, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self, redact: bool = True) -> dict[str, object]:
        return config_to_dict(self, redact=redact)

    def to_text(self, redact: bool = True) -> str:
        return config_to_text(self, redact=redact)


def compile_node(policy: Policy, node: NodeInfo, directory: Sequence[NodeInfo]) -> NodeConfig:
    """Expand ``policy`` for ``node``; raises :class:`SpdError` if the node is unknown."""
    with gc_paused():
        return _compile_node(policy, node, directory)


def _compile_node(policy: Policy, node: NodeInfo, directory: Sequence[NodeInfo]) -> NodeConfig:
    """Expand ``policy`` for ``node``; raises :class:`SpdError` if the node is unknown."""
    names = {n.name for n in directory}
    if node.name not in names:
        raise SpdError(
            [
                Diagnostic(
                    policy.filename,
                    0,
                    0,
                    Severity.ERROR,
                    f"node '{node.name}' is not in the node directory",
                    "add it to the nodes file",
                )
            ]
        )
    ctx = _Ctx(policy, node, tuple(sorted(directory, key=lambda n: n.name)))
    for entry in policy.spd:
        ctx.spd_entry(entry)
    for rule in policy.rules:
        ctx.rule(rule)
    for conn in policy.connections:
        ctx.connection(conn)
    sas = tuple(
        sorted(
            (s for s in policy.sas if _sa_applies(ctx, s)),
            key=lambda s: (s.src.version, int(s.src), int(s.dst), s.proto.value, s.spi),
        )
    )
    connections = ctx.final_connections()  # adds the connections' kernel policies
    return NodeConfig(
        node.name, policy.defaults, ctx.final_policies(), sas, connections, tuple(ctx.warnings)
    )


def _sa_applies(ctx: _Ctx, sa: ManualSa) -> bool:
    if sa.group is not None:
        return ctx.in_scope(sa.group)
    return _owns(ctx.node, sa.src) or _owns(ctx.node, sa.dst)


def _owns(node: NodeInfo, addr: Address | None) -> bool:
    return addr is not None and addr in node.addresses


def _host(addr: Address) -> Prefix:
    return network(addr, addr.max_prefixlen)


def _any(version: int) -> Prefix:
    return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")


def _proto_fits(proto: int, version: int) -> bool:
    """ICMP (1) is IPv4-only and ICMPv6 (58) IPv6-only."""
    return not ((proto == 1 and version == 6) or (proto == 58 and version == 4))


#: setkey's ``prio def`` (ipsec_set_policy(3) PRIORITY_DEFAULT): a policy without an
#: explicit priority sits at this level, so ``prio high`` beats it and ``prio low`` loses.
PRIORITY_DEFAULT = 0x80000000


def auto_priority(sel: Selector) -> int:
    """``PRIORITY_DEFAULT - specificity``: more specific selectors get lower numbers (win).

    Range ``PRIORITY_DEFAULT - 288 .. PRIORITY_DEFAULT``; explicit setkey priorities
    (``prio high`` = 0x40000000, ``prio low`` = 0xC0000000) order against it as they
    would in setkey.
    """
    scale = 4 if sel.src.version == 4 else 1
    spec = (sel.src.prefixlen + sel.dst.prefixlen) * scale // 2
    spec += 16 if sel.proto else 0
    spec += 8 if sel.sport else 0
    spec += 8 if sel.dport else 0
    return PRIORITY_DEFAULT - spec


@dataclass
class _Pending:
    name: str
    conn: Connection
    peer: NodeInfo
    local: Address
    remote: Address
    outer_local: Address
    outer_remote: Address
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]


class _Ctx:
    def __init__(self, policy: Policy, node: NodeInfo, directory: tuple[NodeInfo, ...]) -> None:
        self.policy = policy
        self.node = node
        self.directory = directory
        self.policies: list[KernelPolicy] = []
        self.pending: list[_Pending] = []
        self.warnings: list[str] = []
        self._hosts: dict[str, dict[int, tuple[Address, Prefix]]] = {}
        self._props: dict[str, tuple[tuple[str, ...], ...]] = {}
        self._texts: dict[Address, str] = {}

    # -- setkey spdadd: applies to the node that owns the relevant end ---------------
    def in_scope(self, group: str) -> bool:
        return node_in_group(self.node, None if group == "all" else self.policy.groups[group])

    def spd_entry(self, e: SpdEntry) -> None:
        tunnels = [t for t in e.templates if t.mode is Mode.TUNNEL]
        if e.group is not None:
            applies = self.in_scope(e.group)
        elif tunnels:
            outer = tunnels[-1]
            end = outer.src if e.direction is Direction.OUT else outer.dst
            applies = _owns(self.node, end)
        elif e.direction is Direction.OUT:
            applies = any(
                a in e.selector.src
                for a in self.node.addresses
                if a.version == e.selector.src.version
            )
        elif e.direction is Direction.IN:
            applies = any(
                a in e.selector.dst
                for a in self.node.addresses
                if a.version == e.selector.dst.version
            )
        else:
            applies = True
        if applies:
            prio = e.priority if e.priority is not None else auto_priority(e.selector)
            self.add(e.selector, e.direction, e.action, e.templates, prio, e.loc.short())

    # -- native bypass/discard ---------------------------------------------------
    def rule(self, r: Rule) -> None:
        group = self.policy.groups.get(r.group) if r.group else None
        if r.group and not node_in_group(self.node, group):
            return
        for src, dst in self._rule_nets(r):
            for d in r.directions:
                ports = (
                    [(r.either_port, 0), (0, r.either_port)]
                    if r.either_port
                    else [(r.sport, r.dport)]
                )
                for sport, dport in ports:
                    if d is Direction.OUT:
                        sel = Selector(src, dst, r.proto, sport, dport, r.icmp_type, r.icmp_code)
                    else:
                        sel = Selector(dst, src, r.proto, dport, sport, r.icmp_type, r.icmp_code)
                    prio = r.priority if r.priority is not None else auto_priority(sel)
                    self.add(sel, d, r.action, (), prio, r.loc.short())

    def _rule_nets(self, r: Rule) -> list[tuple[Prefix, Prefix]]:
        def nets(spec: str | Prefix, version: int) -> list[Prefix]:
            if spec == "any":
                return [_any(version)]
            if spec == "@self":
                return [_host(a) for a in self.node.addresses if a.version == version]
            assert not isinstance(spec, str)
            return [spec] if spec.version == version else []

        versions = [v for v in (4, 6) if _proto_fits(r.proto, v)]
        return [(s, d) for v in versions for s in nets(r.src, v) for d in nets(r.dst, v)]

    # -- connections: one IKE connection per peer and address family ----------------
    def connection(self, c: Connection) -> None:
        groups = self.policy.groups
        a_grp = groups.get(c.a_group) if c.a_group != "all" else None
        b_grp = groups.get(c.b_group) if c.b_group != "all" else None
        in_a = node_in_group(self.node, a_grp)
        in_b = node_in_group(self.node, b_grp)
        if not (in_a or in_b):
            return
        peers: dict[str, tuple[NodeInfo, list[str]]] = {}
        if in_a:
            for peer in members(self.directory, b_grp):
                peers.setdefault(peer.name, (peer, []))[1].append("a")
        if in_b:
            for peer in members(self.directory, a_grp):
                peers.setdefault(peer.name, (peer, []))[1].append("b")
        peers.pop(self.node.name, None)
        for name in sorted(peers):
            peer, sides = peers[name]
            self._pair(c, peer, sides)

    def hosts(self, node: NodeInfo) -> dict[int, tuple[Address, Prefix]]:
        """First address of each IP version and its host prefix (cached per node)."""
        found = self._hosts.get(node.name)
        if found is None:
            found = {}
            for addr in node.addresses:
                if addr.version not in found:
                    found[addr.version] = (addr, _host(addr))
            self._hosts[node.name] = found
        return found

    def _pair(self, c: Connection, peer: NodeInfo, sides: list[str]) -> None:
        mine, theirs = self.hosts(self.node), self.hosts(peer)
        families = [v for v in (4, 6) if v in mine and v in theirs]
        if not families:
            self.warnings.append(
                f"{c.loc.short()}: connection '{c.name}': {self.node.name} and "
                f"{peer.name} share no address family; skipped"
            )
            return
        for family in families:
            local, local_net = mine[family]
            remote, remote_net = theirs[family]
            first = family == families[0]
            lts, rts = self._selectors(c, sides, local_net, remote_net, first=first)
            if not lts:
                continue
            suffix = f"/ipv{family}"
            o_local, o_remote = self._outer(c, local, remote)
            self.pending.append(
                _Pending(
                    f"{c.name}/{peer.name}{suffix}",
                    c,
                    peer,
                    local,
                    remote,
                    o_local,
                    o_remote,
                    lts,
                    rts,
                )
            )

    def _outer(self, c: Connection, local: Address, remote: Address) -> tuple[Address, Address]:
        if c.tunnel is None:
            return local, remote

        def pick(spec: str | Address) -> Address:
            if spec == "@self":
                return local
            if spec == "@peer":
                return remote
            assert not isinstance(spec, str)
            return spec

        return pick(c.tunnel.local), pick(c.tunnel.remote)

    def _selectors(
        self, c: Connection, sides: list[str], local: Prefix, remote: Prefix, first: bool
    ) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
        lts: list[TrafficSelector] = []
        rts: list[TrafficSelector] = []
        seen: set[tuple[int, ...]] = set()
        for t in c.traffic:
            for side in sides:
                pair = _oriented(t, side, local, remote)
                if pair is None:
                    continue
                lsel, rsel = pair
                explicit = (t.a_net is not None) or (t.b_net is not None)
                if lsel.prefix.version != rsel.prefix.version or (explicit and not first):
                    continue
                key = (*_ts_key(lsel), *_ts_key(rsel))
                if key not in seen:
                    seen.add(key)
                    lts.append(lsel)
                    rts.append(rsel)
        return lts, rts

    def final_connections(self) -> tuple[IkeConnection, ...]:
        out = []
        for i, p in enumerate(sorted(self.pending, key=lambda p: p.name)):
            reqid = CONN_REQID_BASE + i
            self._connection_policies(p, reqid)
            out.append(self._ike(p, reqid))
        return tuple(out)

    def _proposals(self, c: Connection) -> tuple[tuple[str, ...], ...]:
        """IKE, ESP and AH transform lists of a connection (once per connection)."""
        found = self._props.get(c.name)
        if found is None:
            props = self.policy.proposals

            def texts(kind: str, name: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
                if name is None:
                    return default
                return tuple(t.text for t in props[(kind, name)].transforms)

            esp = IpsecProto.ESP in c.protocols
            ah = IpsecProto.AH in c.protocols
            found = (
                texts("ike", c.ike_proposal, DEFAULT_IKE),
                texts("esp", c.child_proposal, DEFAULT_ESP) if esp else (),
                texts("ah", c.ah_proposal, DEFAULT_AH) if ah else (),
            )
            self._props[c.name] = found
        return found

    def _text(self, addr: Address) -> str:
        text = self._texts.get(addr)
        if text is None:
            text = self._texts[addr] = str(addr)
        return text

    def _ike(self, p: _Pending, reqid: int) -> IkeConnection:
        c = p.conn
        ike, esp, ah = self._proposals(c)
        local_id = self.node.name if c.local_id == "name" else self._text(p.outer_local)
        remote_id = p.peer.name if c.local_id == "name" else self._text(p.outer_remote)
        return IkeConnection(
            p.name,
            c.name,
            p.peer.name,
            p.outer_local,
            p.outer_remote,
            local_id,
            remote_id,
            int(p.outer_local) < int(p.outer_remote),
            c.mode,
            c.protocols,
            self._level(c.level, IpsecProto.ESP, c.mode),
            reqid,
            ike,
            esp,
            ah,
            c.auth.kind,
            c.auth.psk,
            tuple(p.local_ts),
            tuple(p.remote_ts),
            c.ike_lifetime,
            c.child_lifetime,
            c.dpd,
            c.loc.short(),
        )

    def _connection_policies(self, p: _Pending, reqid: int) -> None:
        c = p.conn
        if c.mode is Mode.TUNNEL:
            out_t = self._templates(c, reqid, p.outer_local, p.outer_remote)
            in_t = self._templates(c, reqid, p.outer_remote, p.outer_local)
        else:  # transport: no endpoints, one template list serves both directions
            out_t = in_t = self._templates(c, reqid, None, None)
        origin = c.loc.short()
        for lts, rts in zip(p.local_ts, p.remote_ts, strict=True):
            out_sel = Selector(lts.prefix, rts.prefix, lts.proto, lts.port, rts.port)
            in_sel = Selector(rts.prefix, lts.prefix, lts.proto, rts.port, lts.port)
            prio = c.priority if c.priority is not None else auto_priority(out_sel)
            self.add(out_sel, Direction.OUT, Action.IPSEC, out_t, prio, origin)
            self.add(in_sel, Direction.IN, Action.IPSEC, in_t, prio, origin)
            if c.mode is Mode.TUNNEL:
                self.add(in_sel, Direction.FWD, Action.IPSEC, in_t, prio, origin)

    def _templates(
        self, c: Connection, reqid: int, src: Address | None, dst: Address | None
    ) -> tuple[Template, ...]:
        return tuple(Template(proto, c.mode, src, dst, c.level, reqid) for proto in c.protocols)

    # -- collecting ---------------------------------------------------------------
    def add(
        self,
        sel: Selector,
        d: Direction,
        action: Action,
        templates: tuple[Template, ...],
        prio: int,
        origin: str,
    ) -> None:
        resolved = tuple(
            replace(t, level=self._level(t.level, t.proto, t.mode))
            if t.level is Level.DEFAULT
            else t
            for t in templates
        )
        self.policies.append(KernelPolicy(sel, d, action, resolved, prio, origin))

    def _level(self, level: Level, proto: IpsecProto, mode: Mode) -> Level:
        """``default`` takes the host-wide ``*_deflev`` (ipsec(4))."""
        if level is not Level.DEFAULT:
            return level
        d = self.policy.defaults
        if proto is IpsecProto.IPCOMP:
            return Level.USE
        if proto is IpsecProto.ESP:
            value = d.esp_net_deflev if mode is Mode.TUNNEL else d.esp_trans_deflev
        else:
            value = d.ah_net_deflev if mode is Mode.TUNNEL else d.ah_trans_deflev
        return Level(value)

    def final_policies(self) -> tuple[KernelPolicy, ...]:
        keyed = sorted(((_policy_order(p), p) for p in self.policies), key=lambda kp: kp[0])
        chosen: dict[tuple[object, ...], KernelPolicy] = {}
        for order, pol in keyed:
            key = order[1:-1]  # selector and direction, as plain ints
            old = chosen.get(key)
            if old is None:
                chosen[key] = pol
            elif (old.action, old.templates) != (pol.action, pol.templates):
                self.warnings.append(
                    f"{pol.origin}: {pol.direction.value} policy "
                    f"{_sel_text(pol.selector)} is shadowed by the one from "
                    f"{old.origin}; dropped"
                )
        return tuple(chosen.values())  # insertion order is the sorted order


def _ts_key(t: TrafficSelector) -> tuple[int, ...]:
    net = t.prefix
    return (net.version, int(net.network_address), net.prefixlen, t.proto, t.port)


def _oriented(
    t: TrafficSpec, side: str, local: Prefix, remote: Prefix
) -> tuple[TrafficSelector, TrafficSelector] | None:
    a_net = t.a_net or (local if side == "a" else remote)
    b_net = t.b_net or (remote if side == "a" else local)
    a = TrafficSelector(a_net, t.proto, t.a_port)
    b = TrafficSelector(b_net, t.proto, t.b_port)
    return (a, b) if side == "a" else (b, a)


_DIR_ORDER = {Direction.OUT: 0, Direction.IN: 1, Direction.FWD: 2}


def _policy_order(p: KernelPolicy) -> tuple[object, ...]:
    s = p.selector
    return (
        p.priority,
        s.src.version,
        int(s.src.network_address),
        s.src.prefixlen,
        int(s.dst.network_address),
        s.dst.prefixlen,
        s.proto,
        s.sport,
        s.dport,
        -1 if s.icmp_type is None else s.icmp_type,
        -1 if s.icmp_code is None else s.icmp_code,
        _DIR_ORDER[p.direction],
        p.origin,
    )


def _sel_text(s: Selector) -> str:
    return f"{s.src}[{s.sport or 'any'}] {s.dst}[{s.dport or 'any'}] proto {s.proto or 'any'}"
