"""Indexed detection of overlapping selectors with conflicting actions.

Two selectors overlap when their source prefixes nest, their destination prefixes
nest, and protocol/ports agree or are wildcards.  For each entry we look up only the
source supernets that exist in the index (one dict probe per distinct prefix length),
and within each, the destination supernets (dict probes) and subnets (one bisect on a
sorted start list) -- no pairwise loop over all entries.

A conflicting pair is then classified (:func:`classify`).  The compiler gives a policy
without an explicit priority ``PRIORITY_DEFAULT - specificity`` (PRIORITY_DEFAULT is
0x80000000, setkey's ``prio def``), so a selector strictly inside
another one normally gets the better priority: that is how exceptions ("bypass DNS
inside this tunnel") are written, and such a pair is not reported.  Reported are: equal
selectors (an error: only one of them can ever apply), partial overlaps (neither
contains the other: which one wins on the common packets follows from priorities the
author may never have looked at), and nested pairs where the narrower selector does not
get the better priority (an explicit priority on one of them, or equal specificity).
Two explicit, different priorities mean the author ordered the pair: never reported.

The same logic judges the policies one node gets (:func:`expanded_message`, used by the
compiler): there the policies of ``connection`` statements sit in a lower tier
(``offset`` CONNECTION_OFFSET, docs/spd.md section 4), so native rules and setkey
policies outrank them.  A pair from two tiers is ordered by the language, as if one of
them had an explicit priority: silent when the winner does not cover the loser
entirely, a warning when it does (the loser never applies).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from enum import Enum

from .errors import Loc, Sink
from .limits import MAX_OVERLAP_WORK
from .model import Action, Direction, Prefix, Selector, Template
from .priorities import auto_priority

__all__ = [
    "ConflictScan",
    "Item",
    "Verdict",
    "classify",
    "effective_priority",
    "expanded_message",
    "find_conflicts",
    "report_conflicts",
    "stopped_message",
]

MAX_REPORTS = 50


class Item:
    """One selector in the index (internal, built 10,000 times per file: a slots class)."""

    __slots__ = ("action", "akey", "bits", "direction", "dport", "dst", "dst_int", "dst_len",
                 "icmp_code", "icmp_type", "index", "label", "loc", "offset", "priority",
                 "proto", "sport", "src", "src_int", "src_len", "templates")  # fmt: skip

    def __init__(
        self,
        index: int,
        direction: Direction,
        src: Prefix,
        dst: Prefix,
        proto: int,
        sport: int,
        dport: int,
        action: Action,
        templates: tuple[Template, ...],
        priority: int | None,
        loc: Loc,
        icmp_type: int | None = None,
        icmp_code: int | None = None,
        offset: int = 0,
        label: str = "",
    ) -> None:
        self.index = index
        self.direction = direction
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.action = action
        self.templates = templates
        self.priority = priority
        self.loc = loc
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.offset = offset  # added to the automatic priority: the tier (compiler)
        self.label = label  # what made it, for per-node messages: "connection 'mesh'"
        self.akey = (action, templates)  # items with equal akeys never conflict
        # plain ints, computed once: the index works on these only
        self.bits = src.max_prefixlen
        self.src_int = int(src.network_address)
        self.src_len = src.prefixlen
        self.dst_int = int(dst.network_address)
        self.dst_len = dst.prefixlen


_MIXED = object()


def _mask(bits: int, plen: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)


class _DstBucket:
    def __init__(self) -> None:
        self.by_net: dict[tuple[int, int], list[Item]] = defaultdict(list)
        self.plens: set[int] = set()
        self.starts: list[tuple[int, int]] = []  # (start, position in items)
        self.items: list[Item] = []
        self.akey: object = None  # the one action of all items, or _MIXED

    def add(self, item: Item) -> None:
        self.by_net[(item.dst_int, item.dst_len)].append(item)
        self.plens.add(item.dst_len)
        self.items.append(item)
        if len(self.items) == 1:
            self.akey = item.akey
        elif self.akey is not _MIXED and self.akey != item.akey:
            self.akey = _MIXED

    def may_conflict(self, item: Item) -> bool:
        """False when every entry has item's action (and requests): none can conflict."""
        return self.akey is _MIXED or self.akey != item.akey

    def freeze(self) -> None:
        self.starts = sorted((it.dst_int, i) for i, it in enumerate(self.items))

    def overlapping(self, item: Item) -> list[Item]:
        """Entries whose destination is a supernet of, equal to, or inside item's."""
        found: list[Item] = []
        addr, dst_len, bits = item.dst_int, item.dst_len, item.bits
        for plen in self.plens:
            if plen < dst_len:  # strict supernets of dst
                found.extend(self.by_net.get((addr & _mask(bits, plen), plen), ()))
        last = addr | ((1 << (bits - dst_len)) - 1)
        lo = bisect.bisect_left(self.starts, (addr, -1))
        hi = bisect.bisect_right(self.starts, (last, len(self.items)))
        for _, pos in self.starts[lo:hi]:  # dst itself and its subnets
            it = self.items[pos]
            if it.dst_len >= dst_len:
                found.append(it)
        return found


class _Index:
    def __init__(self) -> None:
        # (direction, address bits) -> (source start, source length) -> bucket
        self.src: dict[tuple[Direction, int], dict[tuple[int, int], _DstBucket]] = {}
        self.src_plens: dict[tuple[Direction, int], set[int]] = defaultdict(set)

    def add(self, item: Item) -> None:
        group = (item.direction, item.bits)
        buckets = self.src.setdefault(group, {})
        bucket = buckets.get((item.src_int, item.src_len))
        if bucket is None:
            bucket = buckets[(item.src_int, item.src_len)] = _DstBucket()
        bucket.add(item)
        self.src_plens[group].add(item.src_len)

    def freeze(self) -> None:
        for buckets in self.src.values():
            for bucket in buckets.values():
                bucket.freeze()

    def candidates(self, item: Item) -> list[Item]:
        """Entries whose source contains ``item``'s source and whose destination nests."""
        group = (item.direction, item.bits)
        buckets = self.src.get(group, {})
        addr, bits = item.src_int, item.bits
        found: list[Item] = []
        for plen in self.src_plens[group]:
            if plen <= item.src_len:
                bucket = buckets.get((addr & _mask(bits, plen), plen))
                if bucket is not None and bucket.may_conflict(item):
                    found.extend(bucket.overlapping(item))
        return found


def _meet(a: int, b: int) -> bool:
    """Protocol or port: 0 is the wildcard."""
    return a == 0 or b == 0 or a == b


def _icmp_meet(a: int | None, b: int | None) -> bool:
    """ICMP type or code: None is the wildcard (0 is a real type, echo reply)."""
    return a is None or b is None or a == b


def _covers(outer: int, inner: int) -> bool:
    return outer == 0 or outer == inner


def _icmp_covers(outer: int | None, inner: int | None) -> bool:
    return outer is None or outer == inner


def _conflicts(a: Item, b: Item) -> bool:
    """``a`` and ``b`` (whose prefixes nest) match common packets with different actions,
    and the author has not ordered them with two explicit priorities."""
    if not (_meet(a.proto, b.proto) and _meet(a.sport, b.sport) and _meet(a.dport, b.dport)):
        return False
    if not (_icmp_meet(a.icmp_type, b.icmp_type) and _icmp_meet(a.icmp_code, b.icmp_code)):
        return False
    if a.priority is not None and b.priority is not None and a.priority != b.priority:
        return False  # the author ordered them on purpose
    if a.action is not b.action:
        return True
    return a.action is Action.IPSEC and a.templates != b.templates


def _contains(outer: Item, inner: Item) -> bool:
    """Every packet ``inner`` matches, ``outer`` matches too (prefixes already nest)."""
    return (
        outer.src_len <= inner.src_len
        and outer.dst_len <= inner.dst_len
        and _covers(outer.proto, inner.proto)
        and _covers(outer.sport, inner.sport)
        and _covers(outer.dport, inner.dport)
        and _icmp_covers(outer.icmp_type, inner.icmp_type)
        and _icmp_covers(outer.icmp_code, inner.icmp_code)
    )


def effective_priority(item: Item) -> int:
    """The kernel priority the compiler gives the policy (lower wins)."""
    if item.priority is not None:
        return item.priority
    sel = Selector(item.src, item.dst, item.proto, item.sport, item.dport)
    return auto_priority(sel) + item.offset


class Verdict(Enum):
    """How a conflicting pair is reported."""

    EXCEPTION = "exception"  # strictly nested, narrower one wins by specificity: silent
    NESTED = "nested"  # nested, but priorities do not make the narrower one win: warning
    PARTIAL = "partial"  # neither contains the other: warning
    EQUAL = "equal"  # same selector, different actions: error


def classify(a: Item, b: Item) -> Verdict:
    """Classify a conflicting pair (see docs/spd.md, "Overlapping selectors")."""
    a_in_b, b_in_a = _contains(b, a), _contains(a, b)
    if a_in_b and b_in_a:
        return Verdict.EQUAL
    explicit = [x for x in (a, b) if x.priority is not None]
    chosen: Item | None = None
    if len(explicit) == 1:
        chosen = explicit[0]
    elif not explicit and a.offset != b.offset:
        chosen = a if a.offset < b.offset else b  # the tier the language ranks first
    if chosen is not None:
        other = b if chosen is a else a
        # The author raised (or lowered) exactly one of the two on purpose, or the
        # language ranks one tier first, and it wins where both match; that is an
        # ordering, not a mistake -- unless the winner contains the other entirely,
        # which would leave the other dead (NESTED below).
        if effective_priority(chosen) < effective_priority(other) and not _contains(chosen, other):
            return Verdict.EXCEPTION
    if not (a_in_b or b_in_a):
        return Verdict.PARTIAL
    inner, outer = (a, b) if a_in_b else (b, a)
    if (
        inner.priority is None
        and outer.priority is None
        and effective_priority(inner) < effective_priority(outer)
    ):
        return Verdict.EXCEPTION
    return Verdict.NESTED


class ConflictScan:
    """Iterates over every pair of items whose selectors overlap with conflicting
    actions, each once, in the order found (``items`` order of the narrower source).

    Many rules that all overlap each other (e.g. thousands of ``port N`` rules on the
    same addresses) make this quadratic, so the work is bounded (docs/limits.md): after
    ``budget`` candidate pairs the scan stops before the next item and ``stopped_at``
    names it; the pairs found until then are all reported."""

    def __init__(self, items: list[Item], budget: int = MAX_OVERLAP_WORK) -> None:
        self.items = items
        self.budget = budget
        self.work = 0  # candidate pairs examined
        self.stopped_at: Item | None = None

    def __iter__(self) -> Iterator[tuple[Item, Item]]:
        index = _Index()
        for item in self.items:
            index.add(item)
        index.freeze()
        seen: set[tuple[int, int]] = set()
        for item in self.items:
            if self.work >= self.budget:
                self.stopped_at = item
                return
            candidates = index.candidates(item)
            self.work += len(candidates)
            for other in candidates:
                if other.index == item.index:
                    continue
                pair = (min(item.index, other.index), max(item.index, other.index))
                if pair in seen or not _conflicts(item, other):
                    continue
                seen.add(pair)
                yield item, other


def find_conflicts(items: list[Item], budget: int = MAX_OVERLAP_WORK) -> ConflictScan:
    """The conflicting pairs of ``items`` (iterate over the result; see ConflictScan)."""
    return ConflictScan(items, budget)


def stopped_message(scan: ConflictScan) -> tuple[str, str]:
    """Message and hint when a scan hit its budget (at ``scan.stopped_at``)."""
    return (
        f"the check for overlapping selectors stopped here, after {scan.work} pairs of "
        "overlapping selectors; this statement and the ones after it were not checked "
        "against each other",
        "many rules overlap each other (e.g. 'port N' rules on the same addresses): "
        "merge them, or narrow their addresses (docs/limits.md)",
    )


def report_conflicts(items: list[Item], sink: Sink, budget: int = MAX_OVERLAP_WORK) -> int:
    """Report conflicting overlaps: an error for equal selectors, a warning for partial
    overlaps and for nested ones the narrower selector does not win; a narrower
    selector that wins by specificity is a deliberate exception and is not reported.
    Returns the number of pairs reported."""
    count = 0
    scan = find_conflicts(items, budget)
    for a, b in scan:
        verdict = classify(a, b)
        if verdict is Verdict.EXCEPTION:
            continue
        count += 1
        if verdict is Verdict.EQUAL:
            _equal(a, b, sink)  # not capped here: each one must be fixed (Sink caps)
        elif count <= MAX_REPORTS:
            _warn(a, b, verdict, sink)
    if count > MAX_REPORTS:
        sink.warning(
            items[0].loc,
            f"{count - MAX_REPORTS} more overlapping selectors with "
            "conflicting actions were not listed",
        )
    if scan.stopped_at is not None:
        sink.warning(scan.stopped_at.loc, *stopped_message(scan))
    return count


def _describe(item: Item) -> str:
    return {"allow": "none/bypass", "block": "discard", "ipsec": "ipsec"}[item.action.value]


def _ordered(a: Item, b: Item) -> tuple[Item, Item]:
    """(first, second) in file order: the warning goes to the later statement."""
    return (a, b) if (a.loc.line, a.loc.col) <= (b.loc.line, b.loc.col) else (b, a)


def _equal(a: Item, b: Item, sink: Sink) -> None:
    first, second = _ordered(a, b)
    sink.error(
        second.loc,
        f"'{second.direction.value}' selector is the same as the one at {first.loc.short()} "
        f"but the action differs ({_describe(second)} here, {_describe(first)} there); "
        "only one of them can apply",
        "remove one of them, or give both an explicit priority to say which one wins",
    )


def _warn(a: Item, b: Item, verdict: Verdict, sink: Sink) -> None:
    first, second = _ordered(a, b)
    if verdict is Verdict.PARTIAL:
        relation = "partially overlaps"
    elif _contains(first, second):
        relation = "lies inside"
    else:
        relation = "contains"
    p_second, p_first = effective_priority(second), effective_priority(first)
    if p_second < p_first:
        outcome = f"this one wins (priority {p_second} < {p_first})"
    elif p_first < p_second:
        outcome = f"the one at {first.loc.short()} wins (priority {p_first} < {p_second})"
    else:
        outcome = f"both have priority {p_first} and neither is preferred"
    sink.warning(
        second.loc,
        f"'{second.direction.value}' selector {relation} the one at {first.loc.short()} with "
        f"a conflicting action ({_describe(second)} here, {_describe(first)} there); "
        f"where both match, {outcome}",
        "the lower priority wins; narrow one of them so that one selector contains the "
        "other, or give both an explicit priority",
    )


def _relation(first: Item, second: Item, verdict: Verdict) -> str:
    if verdict is Verdict.PARTIAL:
        return "partially overlaps"
    return "lies inside" if _contains(first, second) else "contains"


def expanded_message(a: Item, b: Item, verdict: Verdict) -> tuple[Loc, str, str]:
    """Where, what and a hint for a conflicting pair of one node's policies (items with
    a ``label``).  Nothing node-specific (addresses) goes into the message, so the same
    finding on several nodes reads the same and can be listed once."""
    first, second = _ordered(a, b)
    here = f"'{second.direction.value}' policy of the {second.label}"
    there = f"the one of the {first.label} at {first.loc.short()}"
    acts = f"({_describe(second)} here, {_describe(first)} there)"
    tiers = a.offset != b.offset
    tier_hint = (
        "native bypass/discard rules and setkey policies outrank connection policies "
        "(docs/spd.md section 4): narrow the rule so that it leaves the connection's "
        "traffic alone, or give one of them an explicit priority"
    )
    if verdict is Verdict.EQUAL:
        message = f"{here} has the same selector as {there} but a different action {acts}"
        p_a, p_b = effective_priority(a), effective_priority(b)
        if p_a != p_b:
            loser = a if p_a > p_b else b
            message += f": the policy of the {loser.label} is dropped"
        else:
            message += ": only one of them can apply"
        hint = tier_hint if tiers else "remove one of them, or make their selectors differ"
        return second.loc, message, hint
    p_second, p_first = effective_priority(second), effective_priority(first)
    if p_second < p_first:
        winner, loser = second, first
        outcome = f"this one wins (priority {p_second} < {p_first})"
    elif p_first < p_second:
        winner, loser = first, second
        outcome = f"the other one wins (priority {p_first} < {p_second})"
    else:
        winner = loser = first
        outcome = f"both have priority {p_first} and neither is preferred"
    message = (
        f"{here} {_relation(first, second, verdict)} {there} with a conflicting action "
        f"{acts}; where both match, {outcome}"
    )
    if winner is not loser and _contains(winner, loser):
        message += f", so that policy of the {loser.label} never applies"
    hint = (
        tier_hint
        if tiers
        else "the lower priority wins; narrow one of them so that one selector contains "
        "the other, or give both an explicit priority"
    )
    return second.loc, message, hint
