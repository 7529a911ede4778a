"""Static compatibility check of a rolling policy change (issue #13; docs/spd.md
section 13, "Compatibility check").

During a rolling reload some nodes run the old SPD revision and some the new one.
:func:`check_rollout` says, before the rollout starts, whether every pair of nodes
with one end on each revision still negotiates every connection they share, and
whether any traffic a pair protected under the old revision would be dropped or sent
in clear while the two ends differ (or after both moved).  Pure: no I/O, no clock.

How it decides (docs/spd.md section 13 has the operator's view):

* **Negotiation** uses the IKE engine's own rules (:mod:`ipsecd.ike.negotiate`:
  ``select_proposal``, ``wire_proposals``, ``contains_choice``, ``narrow_selectors``,
  ``within``; :class:`ipsecd.ike.Identity` matching; the proposal parsers), applied in
  the order the engine applies them (IKE_SA_INIT: the responder's candidates for the
  address pair, first match; IKE_AUTH: identities, the best fitting candidates tried in
  turn until one authenticates, the first CHILD
  SA without PFS; CREATE_CHILD_SA: further children and rekeys with PFS; IKE SA
  rekeys).  Both ends may initiate (``start eager``/``ondemand``; never ``passive``),
  so both directions are tried; a connection is compatible when every way it can be
  negotiated succeeds.
* **Protection** is judged on the compiled kernel policies: the traffic a node sends
  through a working connection under the old revision (both ends old) is looked up,
  as a box of addresses, protocol and ports, in the policies of the sender and the
  receiver for each mix of revisions: kept when it goes through a connection that
  negotiates and whose negotiated selectors cover it, otherwise dropped (fail-closed:
  ``level require``, a discard rule, ``def_policy discard``) or sent in clear (a
  bypass rule, ``level use`` without an SA, ``def_policy none``).
* **Scale.**  Nodes that stand in the same relation to every statement of both
  revisions (the groups they belong to, which address prefixes of the policy hold
  their addresses, their address families) behave the same, so they form one *node
  class* and one or two representatives stand for it.  Only class pairs that share a
  connection in either revision are analysed.  Work: O(N x S) to classify N nodes
  against S statements and prefixes, then O(K x W) for the K class pairs sharing a
  connection (at most C^2 / 2 + C for C classes), W being the work of one pair
  (proportional to the representatives' connections and policies).  A cluster of
  5,000 nodes in a few roles has a handful of classes; the number of class pairs is
  bounded by :data:`MAX_CLASS_PAIRS` (:class:`CompatLimitError` beyond).

Assumptions, said in the report where they matter: a ``secret:NAME`` holds the same
value in both revisions; certificate files named by the same path are the same files;
a peer outside the cluster is configured to match the old revision (it does not roll
with the cluster); a responder orders its candidate connections by name, as a freshly
started agent does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from ..ike.config import (
    Identity,
    Proposal,
    TrafficSelector,
    parse_child_proposal,
    parse_ike_proposal,
)
from ..ike.config import Mode as EngineMode
from ..ike.constants import DhGroup, ProtocolId, TransformType
from ..ike.errors import IkeLocalError
from ..ike.negotiate import (
    contains_choice,
    narrow_selectors,
    select_proposal,
    wire_proposals,
    within,
)
from .compiler import IkeConnection, KernelPolicy, NodeConfig, compile_node
from .compiler import TrafficSelector as SpdSelector
from .errors import SpdError
from .limits import MAX_NODES_LISTED
from .model import (
    Action,
    Direction,
    IpsecProto,
    Level,
    Mode,
    NodeGroup,
    Policy,
    Prefix,
    Selector,
    plain,
)
from .nodes import NodeInfo, node_in_group
from .secrets import Secret, SecretRef

__all__ = [
    "MAX_CLASS_PAIRS",
    "CompatLimitError",
    "Finding",
    "Kind",
    "NodeClass",
    "PlanEntry",
    "Report",
    "check_rollout",
    "synthetic_directory",
]

OLD = "old"
NEW = "new"

#: Class pairs analysed at most (docs/limits.md); each costs one representative pair.
MAX_CLASS_PAIRS = 50_000
#: Pieces one traffic box may be cut into by the policies it meets; beyond, the
#: traffic is reported as not checked.
MAX_PIECES = 4_096
#: Findings listed in the text report (all of them are in the JSON one).
MAX_TEXT_FINDINGS = 200


class CompatLimitError(Exception):
    """The directory has too many distinct node roles for the bounded check."""


class Kind(StrEnum):
    """What a finding says; every kind but ``note`` refuses the rollout."""

    #: A connection that cannot be negotiated between the two revisions (proved).
    INCOMPATIBLE = "incompatible"
    #: A change the check cannot prove compatible offline (files, secrets, peers).
    UNVERIFIED = "unverified"
    #: Traffic protected under the old revision, dropped or in clear while the two
    #: ends differ, protected again once both run the new revision.
    PROTECTION_LOST = "protection-lost"
    #: Traffic protected under the old revision and no longer protected when both
    #: ends run the new one either (the new revision removes the protection).
    PROTECTION_REMOVED = "protection-removed"
    #: Information only (already failing on the old revision, def_policy changes).
    NOTE = "note"


REFUSING = frozenset(
    {Kind.INCOMPATIBLE, Kind.UNVERIFIED, Kind.PROTECTION_LOST, Kind.PROTECTION_REMOVED}
)


@dataclass(frozen=True, slots=True)
class NodeClass:
    """Nodes that behave alike under both revisions; ``old_groups``/``new_groups``
    are the node groups they belong to in each."""

    id: int
    nodes: tuple[str, ...]
    old_groups: tuple[str, ...]
    new_groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding about one pair of node classes (or a class and a peer outside the
    cluster, ``b_peer``), with ``a`` on ``a_revision`` and ``b`` on ``b_revision``.

    ``example`` is a node pair it was found on, ``pairs`` how many node pairs it
    concerns, ``effect`` ``drop`` or ``clear`` for protection findings and ``flow``
    an example of the traffic concerned."""

    kind: Kind
    connection: str
    reason: str
    a_class: int | None = None
    a_revision: str = ""
    b_class: int | None = None
    b_peer: str | None = None
    b_revision: str = ""
    example: tuple[str, ...] = ()
    pairs: int = 0
    effect: str = ""
    flow: str = ""

    @property
    def refusing(self) -> bool:
        return self.kind in REFUSING


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """What ``--force`` does to one pair of classes: ``until`` is ``both-moved`` (down
    from the moment the first of the two nodes moves until both run the new revision)
    or ``permanent`` (the new revision itself does not protect it)."""

    a_class: int
    b_class: int | None
    b_peer: str | None
    pairs: int
    connections: tuple[str, ...]
    effects: tuple[str, ...]
    until: str


@dataclass(frozen=True, slots=True)
class Report:
    """The result of :func:`check_rollout`."""

    old: str
    new: str
    nodes: int
    classes: tuple[NodeClass, ...]
    findings: tuple[Finding, ...]
    plan: tuple[PlanEntry, ...]
    #: Classes that should move in one step to keep the forced outage short
    #: (connected by findings that last until both ends moved).
    batches: tuple[tuple[int, ...], ...]
    class_pairs: int
    node_pairs: int
    synthetic: bool = False

    @property
    def compatible(self) -> bool:
        return not any(f.refusing for f in self.findings)

    def to_dict(self) -> dict[str, object]:
        return {
            "old": self.old,
            "new": self.new,
            "compatible": self.compatible,
            "nodes": self.nodes,
            "synthetic_directory": self.synthetic,
            "class_pairs_checked": self.class_pairs,
            "node_pairs_checked": self.node_pairs,
            "classes": [plain(c) for c in self.classes],
            "findings": [{**plain(f), "refusing": f.refusing} for f in self.findings],
            "forced_plan": [plain(p) for p in self.plan],
            "batches": [list(b) for b in self.batches],
        }

    def to_text(self) -> str:
        return _render_text(self)


# ====================================================================== traffic boxes
# A box is a set of packets: IP version, source and destination address ranges, IP
# protocol range (one protocol, or all), source and destination port ranges.
# XFRM selectors, SPD policies and IKE traffic selectors all map onto boxes.

Box = tuple[int, int, int, int, int, int, int, int, int, int, int]
_V, _SLO, _SHI, _DLO, _DHI, _PLO, _PHI, _SPLO, _SPHI, _DPLO, _DPHI = range(11)


class _TooComplex(Exception):
    pass


def _rng(net: Prefix) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def _one(value: int, top: int) -> tuple[int, int]:
    return (0, top) if value == 0 else (value, value)


def _selector_box(s: Selector) -> Box:
    if s.icmp_type is not None:  # XFRM keeps ICMP type and code in the port fields
        sport = (s.icmp_type, s.icmp_type)
        dport = (0, 65535) if s.icmp_code is None else (s.icmp_code, s.icmp_code)
    else:
        sport, dport = _one(s.sport, 65535), _one(s.dport, 65535)
    return (s.src.version, *_rng(s.src), *_rng(s.dst), *_one(s.proto, 255), *sport, *dport)


def _ts_box(local: TrafficSelector, remote: TrafficSelector) -> Box | None:
    """Packets from ``local`` to ``remote`` (IKE selectors of one SA)."""
    if local.version != remote.version:
        return None
    lp, rp = local.ip_protocol, remote.ip_protocol
    if lp and rp and lp != rp:
        return None
    proto = lp or rp
    return (
        local.version,
        int(local.start),
        int(local.end),
        int(remote.start),
        int(remote.end),
        *_one(proto, 255),
        local.start_port,
        local.end_port,
        remote.start_port,
        remote.end_port,
    )


def _intersect(a: Box, b: Box) -> Box | None:
    if a[_V] != b[_V]:
        return None
    out = [a[_V]]
    for lo in range(1, 11, 2):
        low, high = max(a[lo], b[lo]), min(a[lo + 1], b[lo + 1])
        if low > high:
            return None
        out += [low, high]
    return tuple(out)  # type: ignore[return-value]


def _subtract(a: Box, b: Box) -> list[Box]:
    """``a`` minus ``b`` as disjoint boxes (at most 10)."""
    if _intersect(a, b) is None:
        return [a]
    out: list[Box] = []
    rest = list(a)
    for lo in range(1, 11, 2):
        if rest[lo] < b[lo]:
            piece = list(rest)
            piece[lo + 1] = b[lo] - 1
            out.append(tuple(piece))  # type: ignore[arg-type]
            rest[lo] = b[lo]
        if rest[lo + 1] > b[lo + 1]:
            piece = list(rest)
            piece[lo] = b[lo + 1] + 1
            out.append(tuple(piece))  # type: ignore[arg-type]
            rest[lo + 1] = b[lo + 1]
    return out


def _minus_all(a: Box, cover: Sequence[Box]) -> list[Box]:
    rest = [a]
    for c in cover:
        rest = [piece for r in rest for piece in _subtract(r, c)]
        if len(rest) > MAX_PIECES:
            raise _TooComplex
    return rest


_PROTO_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmp6",
    132: "sctp",
}


def _box_text(b: Box) -> str:
    def make(value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.IPv4Address(value) if b[_V] == 4 else ipaddress.IPv6Address(value)

    def addrs(lo: int, hi: int) -> str:
        nets: list[Prefix] = list(ipaddress.summarize_address_range(make(lo), make(hi)))
        if len(nets) == 1:
            net = nets[0]
            return str(net.network_address) if net.num_addresses == 1 else str(net)
        return f"{make(lo)}-{make(hi)}"

    def ports(lo: int, hi: int) -> str:
        if (lo, hi) == (0, 65535):
            return ""
        return f" port {lo}" if lo == hi else f" ports {lo}-{hi}"

    proto = ""
    if (b[_PLO], b[_PHI]) != (0, 255):
        proto = " " + (
            _PROTO_NAMES.get(b[_PLO], f"proto {b[_PLO]}")
            if b[_PLO] == b[_PHI]
            else f"protos {b[_PLO]}-{b[_PHI]}"
        )
    return (
        f"{addrs(b[_SLO], b[_SHI])}{ports(b[_SPLO], b[_SPHI])} -> "
        f"{addrs(b[_DLO], b[_DHI])}{ports(b[_DPLO], b[_DPHI])}{proto}"
    )


# ===================================================================== engine views


@dataclass(frozen=True, slots=True)
class _Child:
    protocol: ProtocolId
    proposals: tuple[Proposal, ...]
    texts: tuple[str, ...]
    mode: EngineMode

    @property
    def pfs(self) -> bool:  # as ipsecd.ike.ChildConfig.pfs
        return any(
            t.type == TransformType.DH and t.id != DhGroup.NONE
            for p in self.proposals
            for t in p.transforms
        )


@dataclass(frozen=True, slots=True)
class _Conn:
    """One compiled IKE connection of one end, as the engine would run it (the
    translation of agent/connections.py, without files and secret values)."""

    conn: IkeConnection
    owner: str  # node (or peer) name
    rev: str  # old | new | gateway
    ike: tuple[Proposal, ...] = ()
    ike_texts: tuple[str, ...] = ()
    children: tuple[_Child, ...] = ()
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    local_id: Identity | None = None
    remote_id: Identity | None = None
    psk: tuple[str, str] = ("", "")  # ("secret", NAME) | ("literal", fingerprint)
    unusable: str = ""
    may_initiate: bool = True

    @property
    def who(self) -> str:
        return f"{self.owner} ({self.rev})"

    @property
    def cert_files(self) -> tuple[str | None, str | None, str | None]:
        c = self.conn
        return (c.auth_ca, c.auth_cert, c.auth_key)


def _engine_ts(t: SpdSelector) -> TrafficSelector:
    return TrafficSelector.from_cidr(str(t.prefix), ip_protocol=t.proto, port=t.port or None)


def _psk_token(conn: IkeConnection) -> tuple[str, str]:
    km = conn.psk
    if isinstance(km, Secret):
        return ("literal", km.fingerprint())
    if isinstance(km, SecretRef):
        return ("secret", km.name)
    return ("", "")


def _engine_conn(conn: IkeConnection, owner: str, rev: str) -> _Conn:
    base = _Conn(conn, owner, rev, psk=_psk_token(conn), may_initiate=conn.start != "passive")
    try:
        ike = tuple(parse_ike_proposal(p) for p in conn.ike_proposals)
        mode = EngineMode.TUNNEL if conn.mode is Mode.TUNNEL else EngineMode.TRANSPORT
        children = []
        for proto in conn.protocols:
            if proto is IpsecProto.ESP:
                texts, pid = conn.esp_proposals, ProtocolId.ESP
            elif proto is IpsecProto.AH:
                texts, pid = conn.ah_proposals, ProtocolId.AH
            else:
                return _with(base, unusable=f"{proto.value} cannot be negotiated by IKE")
            props = tuple(parse_child_proposal(p, pid) for p in texts)
            children.append(_Child(pid, props, texts, mode))
        return _with(
            base,
            ike=ike,
            ike_texts=conn.ike_proposals,
            children=tuple(children),
            local_ts=tuple(_engine_ts(t) for t in conn.local_ts),
            remote_ts=tuple(_engine_ts(t) for t in conn.remote_ts),
            local_id=Identity.parse(conn.local_id),
            remote_id=Identity.parse(conn.remote_id),
        )
    except (IkeLocalError, ValueError) as exc:
        return _with(base, unusable=str(exc))


def _with(c: _Conn, **changes: object) -> _Conn:
    return replace(c, **changes)  # type: ignore[arg-type]


def _mirror(c: _Conn, gateway: str) -> _Conn:
    """The peer outside the cluster, assumed configured for the old revision."""
    ike = replace(
        c.conn,
        local_addr=c.conn.remote_addr,
        remote_addr=c.conn.local_addr,
        local_id=c.conn.remote_id,
        remote_id=c.conn.local_id,
        local_ts=c.conn.remote_ts,
        remote_ts=c.conn.local_ts,
    )
    return replace(
        c,
        conn=ike,
        owner=gateway,
        rev="configured for old",
        local_ts=c.remote_ts,
        remote_ts=c.local_ts,
        local_id=c.remote_id,
        remote_id=c.local_id,
        may_initiate=True,
    )


# ====================================================================== negotiation


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One way a connection can be negotiated: ``initiator`` starts it, the responder
    picks ``responder`` among its candidates (None: none fitted)."""

    initiator: _Conn
    responder: _Conn | None
    ok: bool
    reason: str = ""
    proved: bool = True  # False: cannot be decided offline (files, secrets)
    local_ts: tuple[TrafficSelector, ...] = ()  # the initiator's view of the SA
    remote_ts: tuple[TrafficSelector, ...] = ()
    narrowed: str = ""  # the SA covers less than one end's policy sends over it


def _texts(props: Iterable[str]) -> str:
    return ", ".join(props) or "nothing"


def _select(offer: Sequence[Proposal], ours: Sequence[Proposal], proto: int, dh: bool) -> bool:
    spi = b"" if proto == ProtocolId.IKE else b"\x00\x00\x00\x01"
    wire = wire_proposals(offer, proto, spi, with_dh=dh)
    return select_proposal(wire, ours, proto, with_dh=dh) is not None


def _choice(offer: Sequence[Proposal], ours: Sequence[Proposal]) -> Proposal | None:
    found = select_proposal(
        wire_proposals(offer, ProtocolId.IKE, b""), ours, ProtocolId.IKE, with_dh=True
    )
    return None if found is None else found[1]


def _respond_child(
    ini: _Child,
    lts: Sequence[TrafficSelector],
    rts: Sequence[TrafficSelector],
    configs: Sequence[tuple[_Child, _Conn]],
    dh: bool,
) -> tuple[str, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """The responder's choice for a CHILD SA, in the order of
    ipsecd.ike.tasks.child_create.respond_child, and the initiator's check of the
    answer (check_answer): ('', TSi, TSr) or (reason, (), ())."""
    reason = ""
    for child, resp in configs:
        if not _select(ini.proposals, child.proposals, ini.protocol, dh):
            continue
        transport = ini.mode is EngineMode.TRANSPORT
        if child.mode is EngineMode.TRANSPORT and not transport:
            reason = "mode: tunnel mode is asked, transport mode is configured"
            continue
        answer = (
            EngineMode.TRANSPORT
            if transport and child.mode is EngineMode.TRANSPORT
            else (EngineMode.TUNNEL)
        )
        # RFC 7296 2.9: narrowed to what the responder allows (TSi: initiator side)
        peer_ts = narrow_selectors(lts, resp.remote_ts)
        our_ts = narrow_selectors(rts, resp.local_ts)
        if not peer_ts or not our_ts:
            reason = "traffic selectors do not overlap"
            continue
        if answer is not ini.mode:  # RFC 7296 1.3.1: the initiator insists on its mode
            return "mode: transport mode is asked, tunnel mode is configured", (), ()
        if not within(peer_ts, lts) or not within(our_ts, rts):  # pragma: no cover - narrowed
            return "traffic selectors outside the proposed ones", (), ()
        return "", peer_ts, our_ts
    return reason or "no common proposal", (), ()


def _negotiate(ini: _Conn, candidates: Sequence[_Conn], responder: str) -> _Outcome:
    """``ini`` initiates towards ``responder``, whose connections for this address
    pair are ``candidates`` (in its order), following the engine step by step."""
    if ini.unusable:
        return _Outcome(ini, None, False, f"cannot run on {ini.who}: {ini.unusable}")
    usable = [c for c in candidates if not c.unusable]
    if not usable:
        if candidates:
            why = f"{candidates[0].who} cannot run its side: {candidates[0].unusable}"
        else:
            why = (
                f"{responder} has no connection for the addresses "
                f"{ini.conn.remote_addr} <- {ini.conn.local_addr}, so it drops the IKE_SA_INIT"
            )
        return _Outcome(ini, None, False, why)
    other = usable[0]
    # IKE_SA_INIT: the first candidate with an acceptable IKE proposal (ike_init.respond)
    chosen: Proposal | None = None
    resp: _Conn | None = None
    for cand in usable:
        chosen = _choice(ini.ike, cand.ike)
        if chosen is not None:
            resp = cand
            break
    if resp is None or chosen is None:
        accepted = sorted({t for c in usable for t in c.ike_texts})
        return _Outcome(
            ini,
            None,
            False,
            f"no common IKE proposal: {ini.who} offers {_texts(ini.ike_texts)}, "
            f"{other.who} accepts only {_texts(accepted)}",
        )
    # IKE_AUTH (ike_auth._configs_for_peer): the connections that accept the
    # initiator's identity and the chosen IKE proposal, best fitting first (the AUTH
    # method, the IDr asked for, the first CHILD SA's traffic selectors); the responder
    # authenticates with each in turn and keeps the first that succeeds
    assert ini.local_id is not None and ini.remote_id is not None
    fitting = [
        cand
        for cand in usable
        if cand.remote_id is not None
        and cand.remote_id.matches(ini.local_id)
        and (cand is resp or any(contains_choice(p, chosen) for p in cand.ike))
    ]
    if not fitting:
        expected = sorted({str(c.remote_id) for c in usable})
        return _Outcome(
            ini,
            resp,
            False,
            f"identities: {ini.who} identifies as {ini.local_id}, {resp.owner} "
            f"({resp.rev}) expects {' or '.join(expected)}",
        )

    def fit(cand: _Conn) -> tuple[bool, bool]:
        ts = bool(
            narrow_selectors(ini.local_ts, cand.remote_ts)
            and narrow_selectors(ini.remote_ts, cand.local_ts)
        )
        return ini.conn.auth == cand.conn.auth, ts  # our initiator sends no IDr

    ranked = sorted(fitting, key=fit, reverse=True)
    resp = next((c for c in ranked if _auth(ini, c) is None), ranked[0])
    auth = _auth(ini, resp)
    if auth is not None:
        return _Outcome(ini, resp, False, auth[0], proved=auth[1])
    # the first CHILD SA, in IKE_AUTH: no KE, so no PFS groups (RFC 7296 1.2)
    first = ini.children[0]
    why, lts, rts = _respond_child(
        first, ini.local_ts, ini.remote_ts, [(resp.children[0], resp)], dh=False
    )
    if why:
        return _Outcome(ini, resp, False, _child_reason(why, first, ini, resp))
    # further CHILD SAs (an AH bundle half): CREATE_CHILD_SA against every child
    for extra in ini.children[1:]:
        why, _, _ = _respond_child(
            extra, ini.local_ts, ini.remote_ts, [(c, resp) for c in resp.children], extra.pfs
        )
        if why:
            return _Outcome(ini, resp, False, _child_reason(why, extra, ini, resp))
    late = _rekeys(ini, resp)
    if late:
        return _Outcome(ini, resp, False, late)
    narrowed = ""
    if (
        set(lts) != set(ini.local_ts)
        or set(rts) != set(ini.remote_ts)
        or (set(lts) != set(resp.remote_ts) or set(rts) != set(resp.local_ts))
    ):
        narrowed = (
            f"the CHILD SA is narrowed to {_ts_text(lts)} <-> {_ts_text(rts)} "
            f"({ini.who} proposes {_ts_text(ini.local_ts)} <-> {_ts_text(ini.remote_ts)}, "
            f"{resp.who} allows {_ts_text(resp.remote_ts)} <-> {_ts_text(resp.local_ts)}): "
            "traffic outside it that either end sends over this connection is dropped"
        )
    return _Outcome(ini, resp, True, local_ts=lts, remote_ts=rts, narrowed=narrowed)


def _child_reason(why: str, child: _Child, ini: _Conn, resp: _Conn) -> str:
    if why == "no common proposal":
        theirs = [c for c in resp.children if c.protocol == child.protocol]
        accepted = theirs[0].texts if theirs else ()
        name = child.protocol.name
        if not theirs:
            return f"{ini.who} negotiates {name}, {resp.who} has no {name} CHILD SA"
        return (
            f"no common {name} proposal: {ini.who} offers {_texts(child.texts)}, "
            f"{resp.who} accepts only {_texts(accepted)}"
        )
    if why == "traffic selectors do not overlap":
        return (
            f"traffic selectors: {ini.who} proposes "
            f"{_ts_text(ini.local_ts)} <-> {_ts_text(ini.remote_ts)}, {resp.who} allows "
            f"{_ts_text(resp.remote_ts)} <-> {_ts_text(resp.local_ts)}"
        )
    if why.startswith("mode:"):
        return f"mode: {ini.who} runs {child.mode.value} mode, {resp.who} {_mode(resp)} mode"
    return why


def _mode(c: _Conn) -> str:
    return c.children[0].mode.value if c.children else "?"


def _ts_text(ts: Sequence[TrafficSelector]) -> str:
    return ", ".join(str(t) for t in ts)


def _auth(ini: _Conn, resp: _Conn) -> tuple[str, bool] | None:
    """Why authentication fails (and whether that is proved), or None."""
    a, b = ini.conn.auth, resp.conn.auth
    if a != b:
        kinds = {"psk": "a pre-shared key", "certificate": "a certificate"}
        return (
            f"authentication: {ini.who} uses {kinds.get(a, a)}, {resp.who} expects "
            f"{kinds.get(b, b)}",
            True,
        )
    if a == "psk":
        (ka, va), (kb, vb) = ini.psk, resp.psk
        if (ka, va) == (kb, vb):
            return None
        if ka == kb == "literal":
            return (
                f"authentication: the literal pre-shared keys of {ini.who} and {resp.who} differ",
                True,
            )
        if ka == kb == "secret":
            return (
                f"authentication: {ini.who} uses secret:{va}, {resp.who} secret:{vb} "
                "(compatible only if both secrets hold the same key: not checked offline)",
                False,
            )
        return (
            f"authentication: one end uses a literal pre-shared key, the other a "
            f"secret:NAME reference ({ini.who}, {resp.who}); the check cannot compare them",
            False,
        )
    if ini.cert_files != resp.cert_files or (
        "never" in (ini.conn.send_cert, resp.conn.send_cert)
        and ini.conn.send_cert != resp.conn.send_cert
    ):

        def files(c: _Conn) -> str:
            ca, cert, _key = c.cert_files
            return (
                f"ca {ca or 'cluster CA'}, cert {cert or 'node certificate'}, "
                f"sendcert {c.conn.send_cert}"
            )

        return (
            f"authentication: certificate settings differ ({ini.who}: {files(ini)}; "
            f"{resp.who}: {files(resp)}); whether the certificates chain to the other "
            "end's CA cannot be checked offline",
            False,
        )
    return None


def _rekeys(ini: _Conn, resp: _Conn) -> str:
    """Rekeys by either end (CREATE_CHILD_SA with the initiator's PFS groups, IKE SA
    rekeys with DH, RFC 7296 1.3.2, 1.3.3)."""
    for a, b in ((ini, resp), (resp, ini)):
        for child in a.children:
            theirs = [c for c in b.children if c.protocol == child.protocol]
            if theirs and not _select(
                child.proposals, theirs[0].proposals, child.protocol, child.pfs
            ):
                return (
                    f"the CHILD SA comes up, but its rekey by {a.who} fails: no common "
                    f"{child.protocol.name} proposal with PFS groups: {a.who} offers "
                    f"{_texts(child.texts)}, {b.who} accepts only {_texts(theirs[0].texts)}"
                )
        if not _select(a.ike, b.ike, ProtocolId.IKE, True):  # pragma: no cover - as INIT
            return f"the IKE SA comes up, but its rekey by {a.who} fails"
    return ""


# ========================================================================= node views


@dataclass
class _View:
    """One end at one revision: its compiled policies and connections (a node), or the
    mirror of the old revision's connections (a peer outside the cluster)."""

    name: str
    rev: str
    conns: dict[str, list[_Conn]]  # by peer name
    by_reqid: dict[int, _Conn]
    outs: list[tuple[Box, KernelPolicy]]
    ins: list[tuple[Box, KernelPolicy]]
    def_policy: str
    gateway: bool = False

    @property
    def who(self) -> str:
        return f"{self.name} ({self.rev})"

    def toward(self, peer: str) -> list[_Conn]:
        return self.conns.get(peer, [])


def _node_view(cfg: NodeConfig, rev: str) -> _View:
    conns: dict[str, list[_Conn]] = {}
    by_reqid: dict[int, _Conn] = {}
    for c in cfg.connections:
        ec = _engine_conn(c, cfg.node, rev)
        conns.setdefault(c.peer, []).append(ec)
        by_reqid[c.reqid] = ec
    outs = [(_selector_box(p.selector), p) for p in cfg.policies if p.direction is Direction.OUT]
    ins = [(_selector_box(p.selector), p) for p in cfg.policies if p.direction is Direction.IN]
    return _View(cfg.node, rev, conns, by_reqid, outs, ins, cfg.defaults.def_policy)


def _gateway_view(peer: str, node_old: _View) -> _View:
    mirrors = [_mirror(c, peer) for c in node_old.toward(peer)]
    return _View(
        peer, "configured for old", {node_old.name: mirrors}, {}, [], [], "none", gateway=True
    )


def _lookup(
    index: Sequence[tuple[Box, KernelPolicy]], box: Box
) -> list[tuple[Box, KernelPolicy | None]]:
    """What the kernel does with the packets of ``box``: the policies in priority
    order (compiled order) take the parts they match; the rest has no policy."""
    out: list[tuple[Box, KernelPolicy | None]] = []
    rest = [box]
    for pbox, pol in index:
        nxt: list[Box] = []
        for r in rest:
            hit = _intersect(r, pbox)
            if hit is None:
                nxt.append(r)
                continue
            out.append((hit, pol))
            nxt.extend(_subtract(r, pbox))
        rest = nxt
        if len(rest) + len(out) > MAX_PIECES:
            raise _TooComplex
        if not rest:
            break
    out.extend((r, None) for r in rest)
    return out


# ============================================================================= pairs


@dataclass
class _Combo:
    """Two ends at given revisions: every way their connections are negotiated."""

    a: _View
    b: _View
    outcomes: list[_Outcome] = field(default_factory=list)
    #: (owner, connection name) -> (up, TS of the SA in the owner's view)
    state: dict[tuple[str, str], tuple[bool, list[Box]]] = field(default_factory=dict)


def _combo(a: _View, b: _View) -> _Combo:
    combo = _Combo(a, b)
    for ini_v, resp_v in ((a, b), (b, a)):
        theirs = resp_v.toward(ini_v.name)
        for k in ini_v.toward(resp_v.name):
            if not k.may_initiate:
                continue
            cands = [
                c
                for c in theirs
                if c.conn.local_addr == k.conn.remote_addr
                and c.conn.remote_addr == k.conn.local_addr
            ]
            combo.outcomes.append(_negotiate(k, cands, resp_v.who))
    involved: dict[tuple[str, str], list[tuple[_Outcome, bool]]] = {}
    for o in combo.outcomes:
        involved.setdefault((o.initiator.owner, o.initiator.conn.name), []).append((o, True))
        if o.responder is not None:
            key = (o.responder.owner, o.responder.conn.name)
            involved.setdefault(key, []).append((o, False))
    for key, items in involved.items():
        up = all(o.ok for o, _ in items)
        boxes: list[Box] = []
        if up:
            o, as_initiator = next((x for x in items if x[1]), items[0])
            lts, rts = (o.local_ts, o.remote_ts) if as_initiator else (o.remote_ts, o.local_ts)
            boxes = [bx for lt in lts for rt in rts if (bx := _ts_box(lt, rt)) is not None]
        combo.state[key] = (up, boxes)
    return combo


@dataclass
class _PairFindings:
    """Findings of one class pair, keyed for de-duplication."""

    items: dict[tuple[object, ...], Finding] = field(default_factory=dict)

    def add(self, f: Finding) -> None:
        key = (
            f.kind,
            f.connection,
            f.reason,
            f.a_class,
            f.a_revision,
            f.b_class,
            f.b_peer,
            f.b_revision,
            f.effect,
        )
        self.items.setdefault(key, f)


def _spd_name(c: _Conn) -> str:
    return c.conn.connection


def _path_key(o: _Outcome) -> tuple[str, str]:
    return (o.initiator.owner, o.initiator.conn.name)


#: ``finding(kind, connection, reason, a_revision, b_revision, effect=, flow=)``
Report_ = Callable[..., None]


@dataclass
class _Ctx:
    old: Policy
    new: Policy
    classes: list[NodeClass]
    compiled: dict[tuple[str, str], NodeConfig | SpdError]
    views: dict[tuple[str, str], _View] = field(default_factory=dict)

    def view(self, node: str, rev: str) -> _View | SpdError:
        got = self.compiled[(node, rev)]
        if isinstance(got, SpdError):
            return got
        key = (node, rev)
        if key not in self.views:
            self.views[key] = _node_view(got, rev)
        return self.views[key]


def _analyse_pair(
    ctx: _Ctx,
    a_cls: NodeClass,
    x: str,
    b_cls: NodeClass | None,
    y: str,
    peer: bool,
    pairs: int,
    out: _PairFindings,
) -> None:
    """Every combination of revisions for the representatives ``x`` (of ``a_cls``) and
    ``y`` (of ``b_cls``, or the peer ``y`` outside the cluster)."""
    b_id = b_cls.id if b_cls is not None else None
    b_peer = y if peer else None

    def finding(kind: Kind, conn: str, reason: str, rx: str, ry: str, **kw: object) -> None:
        out.add(Finding(kind, conn, reason, a_cls.id, rx, b_id, b_peer, ry, (x, y), pairs, **kw))  # type: ignore[arg-type]

    views: dict[tuple[str, str], _View] = {}
    for rev in (OLD, NEW):
        vx = ctx.view(x, rev)
        if isinstance(vx, SpdError):
            what = vx.diagnostics[0].message if vx.diagnostics else "it cannot be compiled"
            kind = Kind.INCOMPATIBLE if rev == NEW else Kind.NOTE
            finding(kind, "", f"{x} cannot run the {rev} revision: {what}", rev, rev)
            return
        views[(x, rev)] = vx
        if peer:
            continue
        vy = ctx.view(y, rev)
        if isinstance(vy, SpdError):
            what = vy.diagnostics[0].message if vy.diagnostics else "it cannot be compiled"
            kind = Kind.INCOMPATIBLE if rev == NEW else Kind.NOTE
            finding(kind, "", f"{y} cannot run the {rev} revision: {what}", rev, rev)
            return
        views[(y, rev)] = vy
    if peer:
        gw = _gateway_view(y, views[(x, OLD)])
        views[(y, OLD)] = views[(y, NEW)] = gw
    combos = {
        (rx, ry): _combo(views[(x, rx)], views[(y, ry)])
        for rx in (OLD, NEW)
        for ry in (OLD, NEW)
        if not (peer and ry == NEW)
        # one class: "x old, y new" is "y old, x new", both nodes being alike
        and not (b_cls is a_cls and (rx, ry) == (OLD, NEW))
    }
    # --- negotiation ----------------------------------------------------------
    failed_in: dict[tuple[str, str], set[tuple[str, str]]] = {
        revs: {_path_key(o) for o in c.outcomes if not o.ok} for revs, c in combos.items()
    }
    for (rx, ry), combo in combos.items():
        for o in combo.outcomes:
            if o.ok:
                if o.narrowed and (rx, ry) != (OLD, OLD):
                    note = f"{o.initiator.who} initiating to {_other(o, combo)}: {o.narrowed}"
                    finding(Kind.NOTE, _spd_name(o.initiator), note, rx, ry)
                continue
            ini_rev = o.initiator.rev
            own = (ini_rev, ini_rev) if not peer else (OLD, OLD)
            name = _spd_name(o.initiator)
            reason = f"{o.initiator.who} initiating to {_other(o, combo)}: {o.reason}"
            if peer and (rx, ry) == (NEW, OLD):
                reason += " (the peer outside the cluster does not roll with it: reconfigure it)"
            if (rx, ry) == (OLD, OLD):
                finding(Kind.NOTE, name, "already fails on the old revision: " + reason, rx, ry)
            elif rx == ry == NEW:
                if _path_key(o) in failed_in[(OLD, OLD)]:
                    finding(Kind.NOTE, name, "still fails on the new revision: " + reason, rx, ry)
                else:
                    finding(
                        Kind.INCOMPATIBLE if o.proved else Kind.UNVERIFIED,
                        name,
                        "fails even when both ends run the new revision: " + reason,
                        rx,
                        ry,
                    )
            elif own in combos and _path_key(o) in failed_in[own]:
                continue  # reported where both ends run the initiator's revision
            else:
                kind = Kind.INCOMPATIBLE if o.proved else Kind.UNVERIFIED
                finding(kind, name, reason, rx, ry)
    # --- protection -----------------------------------------------------------
    try:
        _protection(views, combos, x, y, peer, finding)
    except _TooComplex:
        finding(
            Kind.UNVERIFIED,
            "",
            "too many overlapping policies to follow the traffic "
            f"(more than {MAX_PIECES} pieces): not checked",
            NEW,
            OLD,
        )


def _other(o: _Outcome, combo: _Combo) -> str:
    if o.responder is not None:
        return o.responder.who
    other = combo.b if o.initiator.owner == combo.a.name else combo.a
    return other.who


def _protection(
    views: dict[tuple[str, str], _View],
    combos: dict[tuple[str, str], _Combo],
    x: str,
    y: str,
    peer: bool,
    finding: Report_,
) -> None:
    """Traffic each end sends through a working connection under the old revision,
    followed through every mix of revisions."""
    base = combos[(OLD, OLD)]
    senders = [(x, y)] if peer else [(x, y), (y, x)]
    universes: dict[str, list[tuple[Box, str]]] = {}
    for s, t in senders:
        s_old = views[(s, OLD)]
        names = {c.conn.reqid: c.conn.connection for c in s_old.toward(t)}
        universes[s] = [
            (box, names[tp.reqid])
            for box, pol in s_old.outs
            if pol.action is Action.IPSEC
            for tp in pol.templates[:1]
            if tp.reqid in names
        ]
    # only policies that meet this pair's traffic can decide anything about it
    region = [u for found in universes.values() for u, _ in found]
    views = {key: _narrowed(v, region) for key, v in views.items()}
    seen: set[tuple[object, ...]] = set()
    order = sorted(combos, key=lambda revs: revs != (NEW, NEW))  # new/new first
    for s, t in senders:
        s_old, t_old = views[(s, OLD)], views[(t, OLD)]
        # what the old revision protects: pieces of the connections' traffic
        protected: list[tuple[Box, str, Box]] = []
        for u, name in universes[s]:
            for piece, status, _cause in _follow(s_old, t_old, base, u):
                if status == "ok":
                    protected.append((piece, name, u))
        if not protected:
            continue
        lost_for_good: list[Box] = []
        for revs in order:
            if revs == (OLD, OLD):
                continue
            combo = combos[revs]
            rs = revs[0] if s == x else revs[1]
            rt = revs[1] if s == x else revs[0]
            sv, tv = views[(s, rs)], views[(t, rt)]
            permanent = revs == (NEW, NEW) or peer
            kind = Kind.PROTECTION_REMOVED if permanent else Kind.PROTECTION_LOST
            # the whole traffic of each connection is followed once, then what is lost
            # is cut down to what the old revision protected
            for u, _name in universes[s]:
                for piece, status, cause in _follow(sv, tv, combo, u):
                    if status == "ok":
                        continue
                    for base_piece, conn, whole in protected:
                        if whole != u or (lost := _intersect(piece, base_piece)) is None:
                            continue
                        if revs == (NEW, NEW):
                            lost_for_good.append(lost)
                        elif any(_intersect(lost, g) is not None for g in lost_for_good):
                            continue  # reported once, as removed by the new revision
                        effect = "drop" if status == "drop" else "clear"
                        what = "dropped (fail-closed)" if effect == "drop" else "sent in clear"
                        if effect == "clear":
                            what += _clear_fate(tv, lost)
                        reason = f"{sv.who} -> {tv.who}: {what}: {cause}"
                        key = (kind, conn, reason, revs, effect)
                        if key in seen:
                            continue
                        seen.add(key)
                        flow = _box_text(whole if lost == base_piece else lost)
                        finding(kind, conn, reason, revs[0], revs[1], effect=effect, flow=flow)


def _narrowed(v: _View, region: Sequence[Box]) -> _View:
    def meets(box: Box) -> bool:
        return any(_intersect(box, r) is not None for r in region)

    return replace(
        v, outs=[(b, p) for b, p in v.outs if meets(b)], ins=[(b, p) for b, p in v.ins if meets(b)]
    )


def _follow(s: _View, t: _View, combo: _Combo, box: Box) -> list[tuple[Box, str, str]]:
    """What happens to the packets of ``box`` sent by ``s`` to ``t``: pieces with
    ``ok``, ``drop`` or ``clear`` and the cause."""
    out: list[tuple[Box, str, str]] = []
    for piece, pol in _lookup(s.outs, box):
        if pol is None:
            if s.def_policy == "discard":
                out.append((piece, "drop", f"no policy of {s.who} matches it (def_policy discard)"))
            else:
                out.append((piece, "clear", f"no policy of {s.who} matches it (def_policy none)"))
            continue
        if pol.action is Action.ALLOW:
            out.append((piece, "clear", f"{s.who} bypasses it ({pol.origin})"))
            continue
        if pol.action is Action.BLOCK:
            out.append((piece, "drop", f"{s.who} discards it ({pol.origin})"))
            continue
        conn = next((s.by_reqid[tp.reqid] for tp in pol.templates if tp.reqid in s.by_reqid), None)
        if conn is None:
            out.append((piece, "ok", ""))  # a setkey policy with manual SAs: not followed
            continue
        up, cover = combo.state.get((s.name, conn.conn.name), (False, []))
        use = all(tp.level is Level.USE for tp in pol.templates)
        miss = "clear" if use else "drop"
        level = "level use sends it in clear" if use else f"level {pol.templates[0].level.value}"
        if not up:
            out.append(
                (
                    piece,
                    miss,
                    f"connection {conn.conn.connection} of {s.who} is not "
                    f"negotiated with {t.who} ({level})",
                )
            )
            continue
        inside = [h for c in cover if (h := _intersect(piece, c)) is not None]
        for rest in _minus_all(piece, cover):
            out.append(
                (
                    rest,
                    miss,
                    f"outside the selectors negotiated for connection "
                    f"{conn.conn.connection} ({level})",
                )
            )
        for part in inside:
            out.extend(_receive(t, part))
    return out


def _clear_fate(t: _View, box: Box) -> str:
    """What the receiver does with clear-text packets: said after 'sent in clear'."""
    if t.gateway:
        return ""
    fates = set()
    for _, pol in _lookup(t.ins, box):
        if pol is None:
            fates.add("drops" if t.def_policy == "discard" else "accepts")
        else:
            fates.add("accepts" if pol.action is Action.ALLOW else "drops")
    if fates == {"drops"}:
        return f" (and {t.who} drops it on arrival)"
    if fates == {"accepts"}:
        return f" (and {t.who} accepts it)"
    return f" ({t.who} drops part of it on arrival)"


def _receive(t: _View, box: Box) -> list[tuple[Box, str, str]]:
    """Protected packets arriving at ``t``: dropped where its inbound policy discards."""
    if t.gateway:
        return [(box, "ok", "")]
    out: list[tuple[Box, str, str]] = []
    for piece, pol in _lookup(t.ins, box):
        if pol is None and t.def_policy == "discard":
            out.append(
                (piece, "drop", f"no inbound policy of {t.who} matches it (def_policy discard)")
            )
        elif pol is not None and pol.action is Action.BLOCK:
            out.append((piece, "drop", f"{t.who} discards it on input ({pol.origin})"))
        else:
            out.append((piece, "ok", ""))
    return out


# ==================================================================== node classes


def _prefixes(policy: Policy) -> list[Prefix]:
    """Every address or prefix of the policy a node's addresses may fall in."""
    found: list[Prefix] = []

    def host(addr: object) -> None:
        if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
            found.append(ipaddress.ip_network(addr))

    for r in policy.rules:
        for spec in (r.src, r.dst):
            if not isinstance(spec, str):
                found.append(spec)
    for e in policy.spd:
        found += [e.selector.src, e.selector.dst]
        for tp in e.templates:
            host(tp.src)
            host(tp.dst)
    for sa in policy.sas:
        host(sa.src)
        host(sa.dst)
    for p in policy.peers.values():
        for a in p.addresses:
            host(a)
    for c in policy.connections:
        if c.tunnel is not None:
            host(c.tunnel.local)
            host(c.tunnel.remote)
        for t in c.traffic:
            found += [n for n in (t.a_net, t.b_net) if n is not None]
    unique = {(n.version, int(n.network_address), n.prefixlen): n for n in found}
    return [unique[k] for k in sorted(unique)]


def _signature(
    policy: Policy,
    prefixes: Sequence[Prefix],
    named: Sequence[tuple[frozenset[str], NodeGroup]],
    node: NodeInfo,
) -> tuple[object, ...]:
    # node_in_group, with each group's name list as a set (5,000 names are common)
    groups = tuple(node.name in names or node_in_group(node, rest) for names, rest in named)
    first = {4: node.address(4), 6: node.address(6)}
    bits = tuple(
        (
            any(a in p for a in node.addresses if a.version == p.version),
            (f := first[p.version]) is not None and f in p,
        )
        for p in prefixes
    )
    return (groups, bits, first[4] is not None, first[6] is not None, node.name in policy.peers)


def _member_groups(policy: Policy, node: NodeInfo) -> tuple[str, ...]:
    return tuple(g for g in sorted(policy.groups) if node_in_group(node, policy.groups[g]))


def _classes(old: Policy, new: Policy, directory: Sequence[NodeInfo]) -> list[NodeClass]:
    po, pn = _prefixes(old), _prefixes(new)

    def named(policy: Policy) -> list[tuple[frozenset[str], NodeGroup]]:
        return [
            (frozenset(policy.groups[g].names), replace(policy.groups[g], names=()))
            for g in sorted(policy.groups)
        ]

    no, nn = named(old), named(new)
    by_sig: dict[tuple[object, ...], list[NodeInfo]] = {}
    for node in sorted(directory, key=lambda n: n.name):
        sig = (_signature(old, po, no, node), _signature(new, pn, nn, node))
        by_sig.setdefault(sig, []).append(node)
    groups = sorted(by_sig.values(), key=lambda ns: ns[0].name)
    return [
        NodeClass(
            i, tuple(n.name for n in ns), _member_groups(old, ns[0]), _member_groups(new, ns[0])
        )
        for i, ns in enumerate(groups, start=1)
    ]


def _side_classes(
    policy: Policy, classes: Sequence[NodeClass], nodes: dict[str, NodeInfo], group: str
) -> set[int]:
    if group in policy.peers:
        return set()
    g = None if group == "all" else policy.groups.get(group)
    return {c.id for c in classes if node_in_group(nodes[c.nodes[0]], g)}


def _class_pairs(
    policies: Sequence[Policy], classes: Sequence[NodeClass], nodes: dict[str, NodeInfo]
) -> tuple[set[tuple[int, int]], set[tuple[int, str]]]:
    """Class pairs (and class-peer pairs) that share a connection in either revision."""
    pairs: set[tuple[int, int]] = set()
    peers: set[tuple[int, str]] = set()
    sizes = {c.id: len(c.nodes) for c in classes}
    for policy in policies:
        for conn in policy.connections:
            a = _side_classes(policy, classes, nodes, conn.a_group)
            b = _side_classes(policy, classes, nodes, conn.b_group)
            for side, other in ((a, conn.b_group), (b, conn.a_group)):
                if other in policy.peers:
                    peers.update((c, other) for c in side)
            for i in a:
                for j in b:
                    if i != j or sizes[i] > 1:
                        pairs.add((min(i, j), max(i, j)))
                    if len(pairs) > MAX_CLASS_PAIRS:
                        raise CompatLimitError(
                            f"the node directory has {len(classes)} node classes (nodes with "
                            f"the same groups and addresses relations), more than "
                            f"{MAX_CLASS_PAIRS} pairs of them share connections; the check "
                            "is bounded: describe the cluster with fewer distinct roles"
                        )
    return pairs, peers


# ========================================================================= the check


def check_rollout(old: Policy, new: Policy, directory: Sequence[NodeInfo]) -> Report:
    """Can ``old`` be replaced by ``new`` one node at a time?  See the module doc.
    Deterministic; raises :class:`CompatLimitError` only when the directory has too
    many distinct node roles for the bounded check."""
    nodes = {n.name: n for n in directory}
    classes = _classes(old, new, directory)
    pairs, peer_pairs = _class_pairs((old, new), classes, nodes)
    by_id = {c.id: c for c in classes}
    reps: list[NodeInfo] = [nodes[n] for c in classes for n in c.nodes[:2]]
    wanted = {n for i, j in pairs for n in (by_id[i].nodes[0], by_id[j].nodes[0])}
    wanted |= {by_id[i].nodes[1] for i, j in pairs if i == j}
    wanted |= {by_id[i].nodes[0] for i, _ in peer_pairs}
    compiled: dict[tuple[str, str], NodeConfig | SpdError] = {}
    for name in sorted(wanted):
        for rev, policy in ((OLD, old), (NEW, new)):
            try:
                compiled[(name, rev)] = compile_node(policy, nodes[name], reps)
            except SpdError as exc:
                compiled[(name, rev)] = exc
    ctx = _Ctx(old, new, classes, compiled)
    found = _PairFindings()
    node_pairs = 0
    for i, j in sorted(pairs):
        a, b = by_id[i], by_id[j]
        n = len(a.nodes) * (len(a.nodes) - 1) // 2 if i == j else len(a.nodes) * len(b.nodes)
        node_pairs += n
        y = a.nodes[1] if i == j else b.nodes[0]
        _analyse_pair(ctx, a, a.nodes[0], b, y, False, n, found)
    for i, peer in sorted(peer_pairs):
        a = by_id[i]
        node_pairs += len(a.nodes)
        _analyse_pair(ctx, a, a.nodes[0], None, peer, True, len(a.nodes), found)
    findings = list(found.items.values()) + _global_findings(old, new)
    findings.sort(key=_finding_order)
    plan, batches = _plan(findings, by_id)
    return Report(
        old.filename,
        new.filename,
        len(directory),
        tuple(classes),
        tuple(findings),
        plan,
        batches,
        len(pairs) + len(peer_pairs),
        node_pairs,
    )


_KIND_ORDER = {k: i for i, k in enumerate(Kind)}


def _finding_order(f: Finding) -> tuple[object, ...]:
    return (
        _KIND_ORDER[f.kind],
        f.connection,
        f.a_class or 0,
        f.b_class or 0,
        f.b_peer or "",
        f.a_revision,
        f.b_revision,
        f.effect,
        f.reason,
    )


def _global_findings(old: Policy, new: Policy) -> list[Finding]:
    out: list[Finding] = []
    if old.defaults.def_policy != new.defaults.def_policy:
        effect = {
            "discard": "traffic no policy matches is dropped by nodes on the new revision",
            "none": "traffic no policy matches is sent in clear by nodes on the new revision",
        }[new.defaults.def_policy]
        out.append(
            Finding(
                Kind.NOTE,
                "",
                f"def_policy changes from {old.defaults.def_policy} "
                f"to {new.defaults.def_policy}: {effect}",
            )
        )
    manual_old = sorted(repr(plain(s, secrets="fingerprint")) for s in old.sas)
    manual_new = sorted(repr(plain(s, secrets="fingerprint")) for s in new.sas)
    ipsec_old = sorted(repr(plain(e)) for e in old.spd if e.action is Action.IPSEC)
    ipsec_new = sorted(repr(plain(e)) for e in new.spd if e.action is Action.IPSEC)
    if manual_old != manual_new or ipsec_old != ipsec_new:
        out.append(
            Finding(
                Kind.UNVERIFIED,
                "",
                "manually keyed SAs or setkey ipsec policies change: they are not negotiated, so "
                "both ends of each must change at once; the rolling check does not follow them",
            )
        )
    return out


def _plan(
    findings: Sequence[Finding], by_id: dict[int, NodeClass]
) -> tuple[tuple[PlanEntry, ...], tuple[tuple[int, ...], ...]]:
    """What --force means per class pair, and the classes to move together."""
    grouped: dict[tuple[int, int | None, str | None, str], list[Finding]] = {}
    for f in findings:
        if not f.refusing or f.a_class is None:
            continue
        until = "permanent" if f.kind is Kind.PROTECTION_REMOVED or f.b_peer else "both-moved"
        grouped.setdefault((f.a_class, f.b_class, f.b_peer, until), []).append(f)
    # a connection lost for good is not also listed as lost until both moved
    for (a, b, peer, until), items in list(grouped.items()):
        if until == "both-moved" and (a, b, peer, "permanent") in grouped:
            gone = {f.connection for f in grouped[(a, b, peer, "permanent")]}
            kept = [f for f in items if f.connection not in gone]
            if kept:
                grouped[(a, b, peer, until)] = kept
            else:
                del grouped[(a, b, peer, until)]
    plan = []
    for (a, b, peer, until), items in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2] or "", kv[0][3])
    ):
        effects = set()
        for f in items:
            if f.effect == "clear":
                effects.add("clear text")
            elif f.effect == "drop" or f.kind in (Kind.INCOMPATIBLE, Kind.UNVERIFIED):
                effects.add("down (dropped)")
        conns = tuple(sorted({f.connection for f in items if f.connection}))
        plan.append(
            PlanEntry(a, b, peer, max(f.pairs for f in items), conns, tuple(sorted(effects)), until)
        )
    # classes joined by findings that end when both ends moved: move them together
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for p in plan:
        if p.until == "both-moved" and p.b_class is not None:
            parent[root(p.a_class)] = root(p.b_class)
    members: dict[int, list[int]] = {}
    for i in list(parent):
        members.setdefault(root(i), []).append(i)
    batches = sorted(tuple(sorted(m)) for m in members.values() if len(m) > 1)
    return tuple(plan), tuple(batches)


# ================================================================ synthetic directory


def synthetic_directory(old: Policy, new: Policy) -> list[NodeInfo]:
    """A stand-in node directory when none is given: a node for every name, every
    label clause and every address prefix of the node groups of both revisions (two
    for ``all``), with addresses from 198.18.0.0/15 (RFC 2544) where the group gives
    none.  Combinations of groups a real node may have are not represented."""
    nodes: dict[str, NodeInfo] = {}
    used: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    pool = ipaddress.ip_network("198.18.0.0/15").hosts()
    peer_names = set(old.peers) | set(new.peers)
    taken = {a for p in (*old.peers.values(), *new.peers.values()) for a in p.addresses}

    def fresh() -> ipaddress.IPv4Address:
        for addr in pool:
            if addr not in used and addr not in taken:
                return ipaddress.IPv4Address(addr)
        raise CompatLimitError("no synthetic address left")  # pragma: no cover

    def add(
        name: str,
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if name in nodes or name in peer_names:
            return
        if addr is None or addr in used or addr in taken:
            addr = fresh()
        used.add(addr)
        nodes[name] = NodeInfo(name, (addr,), labels or {})

    count = 0
    for policy in (old, new):
        for g in sorted(policy.groups):
            group = policy.groups[g]
            for name in group.names:
                add(name, None)
            for clause in group.labels:
                count += 1
                add(f"labels-{count}", None, dict(clause))
            for prefix in group.prefixes:
                count += 1
                hosts = iter(prefix.hosts())
                host = next(hosts, None)
                add(f"address-{count}", ipaddress.ip_address(str(host or prefix.network_address)))
    while len(nodes) < 2:
        count += 1
        add(f"node-{count}", None)
    return [nodes[k] for k in sorted(nodes)]


# ======================================================================= text output


def _names(nodes: Sequence[str]) -> str:
    shown = ", ".join(nodes[:MAX_NODES_LISTED])
    more = len(nodes) - MAX_NODES_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _side(f: Finding) -> str:
    b = f"peer {f.b_peer}" if f.b_peer else f"class {f.b_class} ({f.b_revision})"
    return f"class {f.a_class} ({f.a_revision}) <-> {b}"


def _render_text(r: Report) -> str:
    lines = [f"rollout {r.old} -> {r.new}: " + ("compatible" if r.compatible else "NOT compatible")]
    if r.synthetic:
        lines.append(
            f"  (no --nodes: checked on {r.nodes} stand-in nodes, one per group clause; "
            "give --nodes for the real cluster)"
        )
    lines.append(
        f"  {r.nodes} nodes in {len(r.classes)} classes; {r.class_pairs} class pairs "
        f"({r.node_pairs} node pairs) share a connection"
    )
    lines.append("node classes (same role under both revisions):")
    for c in r.classes:
        old = ", ".join(c.old_groups) or "-"
        new = ", ".join(c.new_groups) or "-"
        lines.append(
            f"  class {c.id}: {len(c.nodes)} nodes ({_names(c.nodes)}); groups old: "
            f"{old}; new: {new}"
        )
    refusing = [f for f in r.findings if f.refusing]
    notes = [f for f in r.findings if not f.refusing]
    if refusing:
        lines.append("findings (each refuses the rollout):")
    for f in refusing[:MAX_TEXT_FINDINGS]:
        lines.append("  " + _finding_text(f))
    if len(refusing) > MAX_TEXT_FINDINGS:
        lines.append(f"  ... {len(refusing) - MAX_TEXT_FINDINGS} more (-o json lists them all)")
    if notes:
        lines.append("notes:")
    for f in notes[:MAX_TEXT_FINDINGS]:
        lines.append("  " + _finding_text(f))
    if r.plan:
        lines.append(
            "forced plan (--force): node pairs without their protection, from the moment the "
            "first of the two nodes moves to the new revision"
        )
        for p in r.plan:
            other = f"peer {p.b_peer}" if p.b_peer else f"class {p.b_class}"
            until = (
                "until both ends run the new revision"
                if p.until == "both-moved"
                else "for good (the new revision itself does not protect it, or the peer "
                "outside the cluster is not reconfigured)"
            )
            conns = ", ".join(p.connections) or "-"
            lines.append(
                f"  class {p.a_class} <-> {other}: {p.pairs} node pairs, connections {conns}: "
                f"{' and '.join(p.effects) or 'unverified'} {until}"
            )
        for batch in r.batches:
            ids = ", ".join(str(i) for i in batch)
            lines.append(f"  to keep that short, move classes {ids} in one step")
    return "\n".join(lines) + "\n"


def _finding_text(f: Finding) -> str:
    where = ""
    if f.a_class is not None:
        example = f" e.g. {' and '.join(f.example)}" if f.example else ""
        where = f" [{_side(f)}, {f.pairs} node pairs,{example}]"
    conn = f"connection {f.connection}: " if f.connection else ""
    flow = f" (traffic {f.flow})" if f.flow else ""
    return f"{f.kind.value}: {conn}{f.reason}{flow}{where}"
