"""Checks across statements: names, families, connections, keys, overlaps."""

from __future__ import annotations

import ipaddress

from ._gc import gc_paused
from .errors import Sink
from .model import Connection, Direction, Mode, Prefix, Rule, SpdEntry
from .overlap import Item, report_conflicts
from .parser import Builder
from .secrets import Secret

__all__ = ["validate"]

_ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def validate(b: Builder, sink: Sink) -> None:
    """Cross-statement checks of a parsed file, reported into ``sink``."""
    with gc_paused():
        _validate(b, sink)


def _validate(b: Builder, sink: Sink) -> None:
    _check_group_refs(b, sink)
    _check_peers(b, sink)
    _check_proposal_refs(b, sink)
    for conn in b.connections:
        _check_connection(conn, sink)
        _check_sides(b, conn, sink)
    for rule in b.rules:
        _check_rule(rule, sink)
    _check_reqids(b, sink)
    if not sink.has_errors:  # no nagging about leftovers while the file is broken
        _check_unused(b, sink)
    report_conflicts(_overlap_items(b), sink)


def _check_unused(b: Builder, sink: Sink) -> None:
    used_groups = {name for name, _ in b.group_refs} | {name for name, _ in b.between_refs}
    for name, group in b.groups.items():
        if name not in used_groups:
            sink.warning(group.loc, f"node group '{name}' is never used",
                         "name it in 'between', in a rule's 'on', or in an 'on' block")  # fmt: skip
    for name, peer in b.peers.items():
        if name not in used_groups:
            sink.warning(peer.loc, f"peer '{name}' is never used",
                         f"name it in a connection: between GROUP and {name}")  # fmt: skip
    used = {(kind, name) for kind, name, _ in b.proposal_refs}
    for key, prop in b.proposals.items():
        if key not in used:
            sink.warning(prop.loc, f"{prop.kind} proposal '{prop.name}' is never used",
                         f"name it in a connection: {prop.kind} {prop.name}")  # fmt: skip


def _check_group_refs(b: Builder, sink: Sink) -> None:
    known = sorted(b.groups)
    for name, loc in b.group_refs:  # 'on GROUP': node groups only
        if name in b.peers:
            sink.error(
                loc,
                f"'{name}' is a peer outside the cluster, not a node group",
                "'on' names cluster nodes; a peer never compiles as a node",
            )
        elif name != "all" and name not in b.groups:
            sink.error(loc, f"unknown node group '{name}'", _group_hint(known, []))
    peers = sorted(b.peers)
    for name, loc in b.between_refs:  # 'between': node groups or peers
        if name != "all" and name not in b.groups and name not in b.peers:
            sink.error(loc, f"unknown node group '{name}'", _group_hint(known, peers))


def _group_hint(groups: list[str], peers: list[str]) -> str:
    if not groups and not peers:
        return "define it with: nodes NAME name A, B | label k=v | address PREFIX;"
    hint = "defined groups: " + ", ".join([*groups, "all"])
    return hint + ("; peers: " + ", ".join(peers) if peers else "")


def _check_peers(b: Builder, sink: Sink) -> None:
    for name, peer in b.peers.items():
        group = b.groups.get(name)
        if group is not None:
            first, second = sorted((group.loc, peer.loc), key=lambda loc: (loc.line, loc.col))
            sink.error(
                second,
                f"'{name}' is both a node group and a peer",
                f"the other one is at {first.short()}; give them different names",
            )


def _check_sides(b: Builder, c: Connection, sink: Sink) -> None:
    if c.a_group in b.peers and c.b_group in b.peers:
        sink.error(
            c.clause_locs.get("between", c.loc),
            f"connection '{c.name}' has peers outside the cluster on both sides "
            f"('{c.a_group}' and '{c.b_group}')",
            "one side of 'between' is a node group: a peer never compiles as a node",
        )


def _check_proposal_refs(b: Builder, sink: Sink) -> None:
    for kind, name, loc in b.proposal_refs:
        if (kind, name) in b.proposals:
            continue
        others = [k for (k, n) in b.proposals if n == name]
        hint = (
            f"'{name}' is an {others[0]} proposal"
            if others
            else f"define it with: proposal {kind} {name} TRANSFORM[, TRANSFORM];"
        )
        sink.error(loc, f"unknown {kind} proposal '{name}'", hint)


def _check_connection(c: Connection, sink: Sink) -> None:
    locs = c.clause_locs
    where = locs.get("traffic", c.loc)
    for t in c.traffic:
        if c.mode is Mode.TRANSPORT and (t.a_net is not None or t.b_net is not None):
            sink.error(
                where,
                "transport mode protects only the nodes' own addresses",
                "use 'mode tunnel' for networks behind the nodes, or drop from/to",
            )
        if t.a_net is not None and t.b_net is not None and t.a_net.version != t.b_net.version:
            sink.error(
                where,
                f"traffic from {t.a_net} to {t.b_net} mixes IPv4 and IPv6",
                "write one traffic clause per address family",
            )
    tun = c.tunnel
    if (
        tun is not None
        and not isinstance(tun.local, str)
        and not isinstance(tun.remote, str)
        and tun.local.version != tun.remote.version
    ):
        sink.error(
            locs.get("tunnel", c.loc),
            "tunnel endpoints are different address families",
            "both tunnel endpoints are IPv4, or both IPv6",
        )
    if c.auth.kind == "psk" and isinstance(c.auth.psk, Secret) and len(c.auth.psk.value) < 16:
        # RFC 7296 2.15: a pre-shared key must be as strong as a random key
        sink.warning(
            locs.get("auth", c.loc),
            "pre-shared key is shorter than 16 bytes (RFC 7296 2.15)",
            "use a long random key, e.g. 32 random bytes as 0x...",
        )
    if c.ike_lifetime and c.child_lifetime > c.ike_lifetime:
        sink.warning(
            locs.get("esp", locs.get("ah", c.loc)),
            "child SA lifetime is longer than the IKE SA lifetime",
            "the IKE SA is rekeyed first; this is allowed but unusual",
        )


def _check_rule(r: Rule, sink: Sink) -> None:
    if isinstance(r.src, str) or isinstance(r.dst, str):
        return
    if r.src.version != r.dst.version:
        sink.error(
            r.loc,
            f"source {r.src} and destination {r.dst} are different address families",
            "a selector is either IPv4 or IPv6",
        )


def _check_reqids(b: Builder, sink: Sink) -> None:
    if not b.sas:
        return
    sa_reqids = {s.reqid for s in b.sas.values() if s.reqid}
    for entry in b.spd.values():
        for tmpl in entry.templates:
            if tmpl.reqid and tmpl.reqid not in sa_reqids:
                sink.warning(
                    entry.loc,
                    f"unique:{tmpl.reqid} names no manual SA (add ... -u {tmpl.reqid})",
                    "IKE will have to create the SA for this policy",
                )


def _overlap_items(b: Builder) -> list[Item]:
    items: list[Item] = []
    for e in b.spd.values():
        items.append(_spd_item(len(items), e))
    for r in b.rules:
        for item in _rule_items(r):
            items.append(Item(len(items), *item))  # type: ignore[arg-type]
    return items


def _spd_item(i: int, e: SpdEntry) -> Item:
    s = e.selector
    return Item(
        i,
        e.direction,
        s.src,
        s.dst,
        s.proto,
        s.sport,
        s.dport,
        e.action,
        e.templates,
        e.priority,
        e.loc,
        s.icmp_type,
        s.icmp_code,
    )


def _rule_items(r: Rule) -> list[tuple[object, ...]]:
    if r.src == "@self" or r.dst == "@self" or r.group is not None:
        return []  # node-dependent: checked per node by the compiler's view
    out: list[tuple[object, ...]] = []
    for src, dst in _rule_nets(r.src, r.dst):
        if (r.proto == 1 and src.version == 6) or (r.proto == 58 and src.version == 4):
            continue
        for d in r.directions:
            for sport, dport in _rule_ports(r, d):
                if d is Direction.OUT:
                    sel: tuple[object, ...] = (src, dst, r.proto, sport, dport)
                else:  # inbound and fwd mirror the rule (from = local side)
                    sel = (dst, src, r.proto, dport, sport)
                out.append((d, *sel, r.action, (), r.priority, r.loc, r.icmp_type, r.icmp_code))
    return out


def _rule_nets(src: str | Prefix, dst: str | Prefix) -> list[tuple[Prefix, Prefix]]:
    srcs = list(_ANY) if isinstance(src, str) else [src]
    dsts = list(_ANY) if isinstance(dst, str) else [dst]
    return [(s, d) for s in srcs for d in dsts if s.version == d.version]


def _rule_ports(r: Rule, _d: Direction) -> list[tuple[int, int]]:
    if r.either_port:
        return [(r.either_port, 0), (0, r.either_port)]
    return [(r.sport, r.dport)]
