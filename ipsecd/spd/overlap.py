"""Indexed detection of overlapping selectors with conflicting actions.

Two selectors overlap when their source prefixes nest, their destination prefixes
nest, and protocol/ports agree or are wildcards.  For each entry we look up only the
source supernets that exist in the index (one dict probe per distinct prefix length),
and within each, the destination supernets (dict probes) and subnets (one bisect on a
sorted start list) -- no pairwise loop over all entries.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from .errors import Loc, Sink
from .model import Action, Direction, Prefix, Template

__all__ = ["Item", "report_conflicts"]

MAX_REPORTS = 50


class Item:
    """One selector in the index (internal, built 10,000 times per file: a slots class)."""

    __slots__ = ("action", "bits", "direction", "dport", "dst", "dst_int", "dst_len", "index",
                 "loc", "priority", "proto", "sport", "src", "src_int", "src_len",
                 "templates")  # fmt: skip

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
        # plain ints, computed once: the index works on these only
        self.bits = src.max_prefixlen
        self.src_int = int(src.network_address)
        self.src_len = src.prefixlen
        self.dst_int = int(dst.network_address)
        self.dst_len = dst.prefixlen


def _mask(bits: int, plen: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)


class _DstBucket:
    def __init__(self) -> None:
        self.by_net: dict[tuple[int, int], list[Item]] = defaultdict(list)
        self.plens: set[int] = set()
        self.starts: list[tuple[int, int]] = []  # (start, position in items)
        self.items: list[Item] = []

    def add(self, item: Item) -> None:
        self.by_net[(item.dst_int, item.dst_len)].append(item)
        self.plens.add(item.dst_len)
        self.items.append(item)

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
                if bucket is not None:
                    found.extend(bucket.overlapping(item))
        return found


def _ports_meet(a: int, b: int) -> bool:
    return a == 0 or b == 0 or a == b


def _conflicts(a: Item, b: Item) -> bool:
    if not (
        _ports_meet(a.proto, b.proto)
        and _ports_meet(a.sport, b.sport)
        and _ports_meet(a.dport, b.dport)
    ):
        return False
    if a.priority is not None and b.priority is not None and a.priority != b.priority:
        return False  # the author ordered them on purpose
    if a.action is not b.action:
        return True
    return a.action is Action.IPSEC and a.templates != b.templates


def _describe(item: Item) -> str:
    return {"allow": "none/bypass", "block": "discard", "ipsec": "ipsec"}[item.action.value]


def report_conflicts(items: list[Item], sink: Sink) -> int:
    """Warn about every overlapping pair with different actions; returns the count."""
    index = _Index()
    for item in items:
        index.add(item)
    index.freeze()
    seen: set[tuple[object, ...]] = set()
    count = 0
    for item in items:
        for other in index.candidates(item):
            if other.index == item.index:
                continue
            a, b = sorted((_where(item), _where(other)))
            pair = (a, b, item.direction)
            if pair in seen or not _conflicts(item, other):
                continue
            seen.add(pair)
            count += 1
            if count <= MAX_REPORTS:
                _warn(item, other, sink)
    if count > MAX_REPORTS:
        sink.warning(
            items[0].loc,
            f"{count - MAX_REPORTS} more overlapping selectors with "
            "conflicting actions were not listed",
        )
    return count


def _where(item: Item) -> tuple[str, int, int]:
    return (item.loc.filename, item.loc.line, item.loc.col)


def _warn(a: Item, b: Item, sink: Sink) -> None:
    first, second = (a, b) if (a.loc.line, a.loc.col) <= (b.loc.line, b.loc.col) else (b, a)
    sink.warning(
        second.loc,
        f"'{second.direction.value}' selector overlaps the one at {first.loc.short()} with a "
        f"conflicting action ({_describe(second)} here, {_describe(first)} there)",
        "the more specific selector wins; narrow one of them or give both an explicit priority",
    )
