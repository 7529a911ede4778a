"""Per-node compiler: what one node must install and run, from the policy and directory.

Deterministic: the same policy and directory always give the same ``NodeConfig``
(sorted policies, SAs and connections; reqids numbered in that order).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ._gc import gc_paused
from .errors import Diagnostic, Loc, Severity, SpdError
from .limits import MAX_WARNINGS
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
    Peer,
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
from .overlap import (
    Item,
    Verdict,
    classify,
    expanded_message,
    find_conflicts,
    stopped_message,
)
from .priorities import (
    CONNECTION_OFFSET,
    PRIORITY_DEFAULT,
    auto_priority,
    connection_priority,
)
from .secrets import KeyMaterial
from .values import network

__all__ = [
    "CONNECTION_OFFSET",
    "DEFAULT_AH",
    "DEFAULT_ESP",
    "DEFAULT_IKE",
    "PRIORITY_DEFAULT",
    "IkeConnection",
    "KernelPolicy",
    "NodeConfig",
    "TrafficSelector",
    "auto_priority",
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
    """One IKEv2 peer relationship this node runs (RFC 7296).

    ``initiator``: this node has the lower address, so it is the one that initiates
    when the connection starts at all.  ``start`` says when (docs/spd.md, connection):
    ``eager`` at once, ``ondemand`` on the first packet (an XFRM ACQUIRE), ``passive``
    never (only answer).  ``external``: the peer is a ``peer`` statement (another IKEv2
    implementation outside the cluster), not a cluster node; ``peer`` is then the
    peer statement's name and ``remote_id`` its IKE identity.
    """

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
    start: str = "eager"  # eager | ondemand | passive
    external: bool = False  # the peer is outside the cluster (a 'peer' statement)
    #: ``auth certificate`` options (docs/spd.md): files on the node (None: the
    #: node's own certificate and key, the cluster CA), when our chain is sent, and
    #: whether signature methods older than RFC 7427 are allowed.
    auth_ca: str | None = None
    auth_cert: str | None = None
    auth_key: str | None = None
    send_cert: str = "always"
    legacy_auth: bool = False
    #: the node this connection was compiled for: with ``peer`` it names the pair whose
    #: own pre-shared key is derived from ``psk`` (docs/security.md "Per-pair keys")
    local_node: str = ""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node enforces.  Keys stay inside (``repr=False``).

    ``warnings`` are one-line texts (``FILE:LINE:COL: message``); ``diagnostics`` are
    the same findings as located :class:`Diagnostic` values, messages free of
    node-specific addresses so that findings of several nodes can be merged
    (:func:`ipsecd.spd.check_expanded`).  Two policies of this node with the same
    selector and different actions are an error there; the node keeps the winner."""

    node: str
    defaults: Defaults
    policies: tuple[KernelPolicy, ...]
    sas: tuple[ManualSa, ...]
    connections: tuple[IkeConnection, ...]
    warnings: tuple[str, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()

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
    peer = policy.peers.get(node.name)
    if peer is not None:  # a peer never compiles as a node
        loc = peer.loc
        raise SpdError(
            [
                Diagnostic(
                    loc.filename,
                    loc.line,
                    loc.col,
                    Severity.ERROR,
                    f"node '{node.name}' has the name of a peer outside the cluster",
                    "rename the peer statement or the node: a peer never compiles as a node",
                    loc.source_line,
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
    policies = ctx.final_policies()
    diagnostics = ctx.capped_diagnostics()
    return NodeConfig(
        node.name,
        policy.defaults,
        policies,
        sas,
        connections,
        tuple(f"{d.location()}: {d.message}" for d in diagnostics),
        diagnostics,
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


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a kernel policy of this node comes from, for the per-node overlap check:
    the statement, its explicit priority (or None), its tier offset, and whether the
    policy depends on the node (the file-level check in validate.py cannot see it)."""

    loc: Loc
    label: str
    explicit: int | None
    offset: int
    node_dependent: bool


@dataclass
class _Pending:
    name: str
    conn: Connection
    peer: NodeInfo
    external: Peer | None
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
        self.origins: list[_Origin] = []  # one per entry of self.policies
        self.pending: list[_Pending] = []
        self.diagnostics: list[Diagnostic] = []
        self._node_addresses: dict[Address, str] | None = None
        self._said: set[tuple[object, ...]] = set()
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
            origin = _Origin(e.loc, "spdadd", e.priority, 0, False)
            self.add(e.selector, e.direction, e.action, e.templates, prio, origin)

    # -- native bypass/discard ---------------------------------------------------
    def rule(self, r: Rule) -> None:
        group = self.policy.groups.get(r.group) if r.group else None
        if r.group and not node_in_group(self.node, group):
            return
        kind = "bypass" if r.action is Action.ALLOW else "discard"
        node_dependent = r.group is not None or "@self" in (r.src, r.dst)
        origin = _Origin(r.loc, f"{kind} rule", r.priority, 0, node_dependent)
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
                    self.add(sel, d, r.action, (), prio, origin)

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
        groups, externals = self.policy.groups, self.policy.peers
        a_ext, b_ext = externals.get(c.a_group), externals.get(c.b_group)
        a_grp = groups.get(c.a_group) if c.a_group != "all" else None
        b_grp = groups.get(c.b_group) if c.b_group != "all" else None
        in_a = a_ext is None and node_in_group(self.node, a_grp)
        in_b = b_ext is None and node_in_group(self.node, b_grp)
        if not (in_a or in_b):
            return
        if a_ext is not None or b_ext is not None:  # a peer outside the cluster
            ext = a_ext if a_ext is not None else b_ext
            assert ext is not None
            self._external_pair(c, ext, "b" if in_b else "a")
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

    def _external_pair(self, c: Connection, ext: Peer, side: str) -> None:
        """This node (on ``side`` of ``between``) and a peer outside the cluster."""
        owners = self.node_addresses()
        for addr in ext.addresses:
            owner = owners.get(addr)
            if owner is not None:
                self.warn(
                    ext.loc,
                    f"peer '{ext.name}' has the address {addr} of cluster node '{owner}'",
                    "a peer is outside the cluster: name the node in a node group instead",
                )
                if owner == self.node.name:
                    return
        self._pair(c, NodeInfo(ext.name, ext.addresses), [side], ext)

    def node_addresses(self) -> dict[Address, str]:
        if self._node_addresses is None:
            self._node_addresses = {a: n.name for n in self.directory for a in n.addresses}
        return self._node_addresses

    def warn(self, loc: Loc, message: str, hint: str = "", *, error: bool = False) -> None:
        """A finding for this node, once (several connections may find the same)."""
        severity = Severity.ERROR if error else Severity.WARNING
        key = (loc.line, loc.col, severity, message)
        if key not in self._said:
            self._said.add(key)
            self.diagnostics.append(Diagnostic(loc.filename, loc.line, loc.col, severity,
                                               message, hint, loc.source_line))  # fmt: skip

    def hosts(self, node: NodeInfo, external: bool = False) -> dict[int, tuple[Address, Prefix]]:
        """First address of each IP version and its host prefix (cached per node)."""
        key = ("peer " if external else "") + node.name  # node names have no spaces
        found = self._hosts.get(key)
        if found is None:
            found = {}
            for addr in node.addresses:
                if addr.version not in found:
                    found[addr.version] = (addr, _host(addr))
            self._hosts[key] = found
        return found

    def _pair(
        self, c: Connection, peer: NodeInfo, sides: list[str], external: Peer | None = None
    ) -> None:
        mine, theirs = self.hosts(self.node), self.hosts(peer, external is not None)
        families = [v for v in (4, 6) if v in mine and v in theirs]
        if not families:
            what = "peer" if external is not None else "node"
            self.warn(
                c.loc,
                f"connection '{c.name}': {self.node.name} and {what} {peer.name} "
                "share no address family; skipped",
                "give both an address of the same family (IPv4 or IPv6)",
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
                    external,
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
        if p.external is not None:  # the peer statement's identity, or its address
            remote_id = p.external.ike_id or self._text(p.remote)
        else:
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
            c.start,
            p.external is not None,
            auth_ca=c.auth.ca,
            auth_cert=c.auth.cert,
            auth_key=c.auth.key,
            send_cert=c.auth.send_cert,
            legacy_auth=c.auth.legacy,
            local_node=self.node.name,
        )

    def _connection_policies(self, p: _Pending, reqid: int) -> None:
        c = p.conn
        if c.mode is Mode.TUNNEL:
            out_t = self._templates(c, reqid, p.outer_local, p.outer_remote)
            in_t = self._templates(c, reqid, p.outer_remote, p.outer_local)
        else:  # transport: no endpoints, one template list serves both directions
            out_t = in_t = self._templates(c, reqid, None, None)
        offset = 0 if c.priority is not None else CONNECTION_OFFSET
        origin = _Origin(c.loc, f"connection '{c.name}'", c.priority, offset, True)
        for lts, rts in zip(p.local_ts, p.remote_ts, strict=True):
            out_sel = Selector(lts.prefix, rts.prefix, lts.proto, lts.port, rts.port)
            in_sel = Selector(rts.prefix, lts.prefix, lts.proto, rts.port, lts.port)
            # docs/spd.md section 4: connection policies rank below rules and spdadd
            prio = c.priority if c.priority is not None else connection_priority(out_sel)
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
        origin: _Origin,
    ) -> None:
        resolved = tuple(
            replace(t, level=self._level(t.level, t.proto, t.mode))
            if t.level is Level.DEFAULT
            else t
            for t in templates
        )
        self.policies.append(KernelPolicy(sel, d, action, resolved, prio, origin.loc.short()))
        self.origins.append(origin)

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
        """The node's policies in priority order, one per selector and direction (the
        first in that order stays); conflicts between them are reported."""
        keyed = sorted(
            ((_policy_order(p), i) for i, p in enumerate(self.policies)), key=lambda kp: kp[0]
        )
        chosen: dict[tuple[object, ...], int] = {}
        for order, i in keyed:
            key = order[1:-1]  # selector and direction, as plain ints
            old = chosen.get(key)
            if old is None:
                chosen[key] = i
            elif (self.policies[old].action, self.policies[old].templates) != (
                self.policies[i].action,
                self.policies[i].templates,
            ):
                self._conflict(old, i, Verdict.EQUAL)
        kept = list(chosen.values())  # insertion order is the sorted order
        self._overlaps(kept)
        return tuple(self.policies[i] for i in kept)

    def _item(self, n: int, i: int) -> Item:
        p, o = self.policies[i], self.origins[i]
        s = p.selector
        return Item(n, p.direction, s.src, s.dst, s.proto, s.sport, s.dport, p.action,
                    p.templates, o.explicit, o.loc, s.icmp_type, s.icmp_code, o.offset,
                    o.label)  # fmt: skip

    def _overlaps(self, kept: list[int]) -> None:
        """Conflicting overlaps among this node's policies (overlap.py verdicts), for
        pairs the file-level check could not see: at least one policy of the pair
        depends on the node (a connection's, or a rule with @self or 'on')."""
        if not any(self.origins[i].node_dependent for i in kept):
            return
        items = [self._item(n, i) for n, i in enumerate(kept)]
        scan = find_conflicts(items)
        for a, b in scan:
            i, j = kept[a.index], kept[b.index]
            if self.origins[i].node_dependent or self.origins[j].node_dependent:
                verdict = classify(a, b)
                if verdict is not Verdict.EXCEPTION:
                    self._conflict(i, j, verdict, a, b)
        if scan.stopped_at is not None:
            self.warn(scan.stopped_at.loc, *stopped_message(scan))

    def _conflict(
        self, i: int, j: int, verdict: Verdict, a: Item | None = None, b: Item | None = None
    ) -> None:
        a = a if a is not None else self._item(0, i)
        b = b if b is not None else self._item(1, j)
        loc, message, hint = expanded_message(a, b, verdict)
        first, second = self.policies[i], self.policies[j]
        example = (
            f"on {self.node.name}: {first.direction.value} {_sel_text(first.selector)} "
            f"(priority {first.priority}) and {_sel_text(second.selector)} "
            f"(priority {second.priority})"
        )
        self.warn(loc, message, f"{hint}; e.g. {example}", error=verdict is Verdict.EQUAL)

    def capped_diagnostics(self) -> tuple[Diagnostic, ...]:
        """The node's findings, at most MAX_WARNINGS of them (docs/limits.md)."""
        found = self.diagnostics
        if len(found) <= MAX_WARNINGS:
            return tuple(found)
        errors = [d for d in found if d.is_error][:MAX_WARNINGS]
        kept = errors + [d for d in found if not d.is_error][: MAX_WARNINGS - len(errors)]
        kept_ids = {id(d) for d in kept}
        rest = next(d for d in found if id(d) not in kept_ids)
        summary = Diagnostic(
            rest.filename,
            rest.line,
            rest.col,
            Severity.WARNING,
            f"{len(found) - len(kept)} more findings for node {self.node.name} not shown "
            f"(at most {MAX_WARNINGS} per node)",
            "fix the ones above and check again",
            rest.source_line,
        )
        return (*kept, summary)


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
