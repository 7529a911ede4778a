"""All the IKE SAs of one node, behind its UDP ports: routing and admission (sans-I/O).

:class:`IkeEndpoint` is what a driver feeds: every datagram that arrives on UDP 500 or
4500 (with the local and remote address), every timer; out come datagrams (with the
local address to send them from), one timer and ``(sa, event)`` pairs.  It owns the
SAs' table (by the SPI we chose, RFC 7296 2.6), files new SAs (responders, rekeyed
ones), and decides what a new IKE_SA_INIT request costs us (docs/limits.md "IKE"):

* a per-source token bucket on IKE_SA_INIT requests (the Diffie-Hellman is the
  expensive part);
* a bound on half-open SAs per source address and in all;
* stateless cookies (RFC 7296 2.6) once the half-open SAs pass a threshold (in all,
  or from one address), with a secret that rotates;
* retransmissions of an IKE_SA_INIT request go to the half-open SA they belong to;
* ended SAs linger a while to answer retransmitted requests from their cache
  (RFC 7296 2.1), then are forgotten; their number is bounded too.  A responder that
  ends before answering an IKE_AUTH request (half-open expiry, or an IKE_SA_INIT
  refused at once) is forgotten at once: a retransmitted IKE_SA_INIT request goes
  through the half-open table, never to it, so it has nothing to answer;
* a request for an SPI we do not know gets an unprotected INVALID_IKE_SPI answer
  (RFC 7296 2.21.4), rate-limited; such an answer from the peer changes nothing.

Every table is bounded, so a flood costs bounded memory; the counters in
:attr:`IkeEndpoint.stats` say what was dropped and why.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import codec
from .codec import Message, NotifyPayload
from .config import IkeConfig
from .constants import ExchangeType, HeaderFlag, NotifyType
from .errors import IkeError
from .events import Event
from .negotiate import (
    NATT_PORT,
    NON_ESP_MARKER,
    Addr,
    cookie_challenge,
    fmt_addr,
    route_datagram,
    strip_marker,
)
from .sa import ConfigLookup, IkeSa, SpiAllocator
from .states import END_STATES, IkeState

__all__ = ["EndpointLimits", "EndpointStats", "IkeEndpoint", "Outgoing"]

log = logging.getLogger("ipsecd.ike")

NATT_KEEPALIVE = b"\xff"  # RFC 3948 2.3
_IKE_HEADER_LEN = 28  # RFC 7296 3.1
#: (datagram, local address to send from, destination)
Outgoing = tuple[bytes, Addr, Addr]


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """Admission bounds of an :class:`IkeEndpoint` (docs/limits.md "IKE")."""

    #: Half-open SAs (answered IKE_SA_INIT, no IKE_AUTH yet) in all, and from one source
    #: address, beyond which new requests must carry a valid cookie (RFC 7296 2.6).
    cookie_threshold: int = 20
    cookie_threshold_ip: int = 3
    #: Half-open SAs from one address beyond which its new requests are dropped, and
    #: in all (charon's block_threshold is 5 too: 50 flooding addresses that return
    #: cookies hold at most 250 half-open SAs, bench/bench_flood.py).
    block_threshold_ip: int = 5
    max_half_open: int = 2000
    #: IKE_SA_INIT requests accepted per source address: burst, then per second.
    init_burst: int = 10
    init_rate: float = 20.0
    #: Source addresses whose buckets are remembered (least recently used go first).
    rate_table: int = 4096
    #: Seconds an ended SA keeps answering retransmissions; at most this many linger.
    linger: float = 60.0
    max_lingering: int = 4096
    #: INVALID_IKE_SPI answers per second, in all.
    invalid_spi_rate: float = 10.0
    #: Seconds between cookie secret rotations (the previous secret stays valid).
    cookie_rotation: float = 300.0
    #: Largest datagram looked at; longer ones are dropped unparsed (charon's
    #: max_packet default is the same).  Messages with certificates that would be
    #: longer are sent in fragments (RFC 7383), each far below it.
    max_datagram: int = 10_000

    def __post_init__(self) -> None:
        for name in (
            "cookie_threshold",
            "cookie_threshold_ip",
            "block_threshold_ip",
            "max_half_open",
            "init_burst",
            "rate_table",
            "max_lingering",
            "max_datagram",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"EndpointLimits.{name} must be >= 0")
        for name in ("init_rate", "linger", "invalid_spi_rate", "cookie_rotation"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EndpointLimits.{name} must be > 0")


@dataclass(slots=True)
class EndpointStats:
    """What the endpoint did with what it received (counters only grow)."""

    received: int = 0
    oversize: int = 0
    not_ike: int = 0
    unknown_spi: int = 0
    cookies_sent: int = 0
    rate_limited: int = 0
    blocked: int = 0
    half_open_full: int = 0
    refused: int = 0
    invalid_ike_spi_sent: int = 0
    invalid_ike_spi_received: int = 0
    accepted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Filed:
    """The endpoint's bookkeeping of one SA."""

    sa: IkeSa
    spi: bytes = b""
    half_open: tuple[str, bytes] | None = None
    timer: float | None = None
    seq: int = 0
    #: Whether it lingers once ended (see the module doc).
    linger: bool = True


@dataclass(slots=True)
class _Limiter:
    rate: float
    burst: float
    buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    size: int = 4096

    def allow(self, key: str, now: float) -> bool:
        b = self.buckets.get(key)
        if b is None:
            b = _Bucket(self.burst, now)
            self.buckets[key] = b
            if len(self.buckets) > self.size:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


class IkeEndpoint:
    """The IKE SAs of one node (see the module doc)."""

    def __init__(
        self,
        lookup: ConfigLookup,
        *,
        limits: EndpointLimits | None = None,
        spi_allocator: SpiAllocator | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.lookup = lookup
        self.limits = limits or EndpointLimits()
        self.stats = EndpointStats()
        self._spi_allocator = spi_allocator
        self._rng = rng
        self._filed: dict[int, _Filed] = {}
        self._by_spi: dict[bytes, IkeSa] = {}
        self._half_open: dict[tuple[str, bytes], IkeSa] = {}
        self._half_open_ip: dict[str, int] = {}
        self._lingering: deque[tuple[float, IkeSa]] = deque()
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._events: deque[tuple[IkeSa, Event]] = deque()
        self._outbox: list[Outgoing] = []
        self._dirty: dict[int, IkeSa] = {}
        lim = self.limits
        self._init_limiter = _Limiter(lim.init_rate, float(lim.init_burst), size=lim.rate_table)
        self._invalid_spi_limiter = _Limiter(lim.invalid_spi_rate, lim.invalid_spi_rate)
        self._cookie_secret = self._random(32)
        self._cookie_previous: bytes | None = None
        self._cookie_rotated: float | None = None

    # ------------------------------------------------------------------ views
    @property
    def sas(self) -> list[IkeSa]:
        """The SAs not yet in an end state."""
        return [f.sa for f in self._filed.values() if f.sa.state not in END_STATES]

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def sa_by_spi(self, local_spi: bytes) -> IkeSa | None:
        return self._by_spi.get(local_spi)

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(self.sas)

    # ------------------------------------------------------------------ input
    def initiate(self, config: IkeConfig, local_addr: Addr, remote_addr: Addr, now: float) -> IkeSa:
        """Start an IKE SA as initiator (its IKE_SA_INIT is queued at once)."""
        sa = IkeSa(
            config,
            initiator=True,
            local_addr=local_addr,
            remote_addr=remote_addr,
            rng=self._rng,
            spi_allocator=self._spi_allocator,
        )
        sa.created_at = now
        self.add(sa)
        sa.initiate(now)
        self.pump(sa, now)
        return sa

    def add(self, sa: IkeSa) -> None:
        """File an SA made elsewhere."""
        if id(sa) not in self._filed:
            self._filed[id(sa)] = _Filed(sa)
        sa.wakeup = self._wake

    def _wake(self, sa: IkeSa) -> None:
        self._dirty[id(sa)] = sa

    def flush(self, now: float) -> None:
        """Collect what SAs produced after calls from outside (``sa.delete(now)``,
        ``sa.rekey_child(...)``...): call it, or :meth:`datagrams_to_send`, after them."""
        while self._dirty:
            _, sa = self._dirty.popitem()
            if id(sa) in self._filed:
                self.pump(sa, now)

    def receive_datagram(self, data: bytes, local: Addr, remote: Addr, now: float) -> IkeSa | None:
        """Route one datagram received on ``local`` from ``remote``; returns the SA it
        went to (None when it was dropped or answered statelessly).  Never raises on
        peer input."""
        self.stats.received += 1
        if len(data) > self.limits.max_datagram:
            self.stats.oversize += 1
            log.debug(
                "dropped %d-byte datagram from %s: longer than %d bytes",
                len(data),
                fmt_addr(remote),
                self.limits.max_datagram,
            )
            return None
        self._rotate_cookie(now)
        body = data
        if local[1] == NATT_PORT:
            if data == NATT_KEEPALIVE:
                return None  # RFC 3948 2.3
            if not data.startswith(NON_ESP_MARKER):
                self.stats.not_ike += 1  # ESP-in-UDP the kernel did not take
                return None
            body = data[4:]
        route = route_datagram(body) if len(body) >= _IKE_HEADER_LEN else None
        if route is None:
            self.stats.not_ike += 1
            log.debug(
                "dropped %d-byte datagram from %s: not an IKEv2 message",
                len(data),
                fmt_addr(remote),
            )
            return None
        sa: IkeSa | None
        if route.initial_request:
            sa = self._half_open.get((remote[0], route.spi_i))
            if sa is None:
                return self._admit(data, local, remote, now)
        else:
            sa = self._by_spi.get(route.local_spi)
        if sa is None:
            self.stats.unknown_spi += 1
            self._unknown_spi(body, route.is_response, local, remote, now)
            return None
        sa.receive_datagram(data, remote, now)
        self.pump(sa, now)
        return sa

    def handle_timer(self, now: float) -> None:
        """Run every SA timer that is due; forget SAs that lingered long enough."""
        self.flush(now)
        while self._heap and self._heap[0][0] <= now:
            t, seq, key = heapq.heappop(self._heap)
            filed = self._filed.get(key)
            if filed is None or filed.timer != t or filed.seq != seq:
                continue  # superseded
            filed.timer = None
            half_open = filed.half_open is not None
            filed.sa.handle_timer(now)
            if half_open and filed.sa.state in END_STATES:
                filed.linger = False  # expired half-open: nothing to answer
            self.pump(filed.sa, now)
        self._expire_lingering(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due (call :meth:`flush` first after using SAs)."""
        times = []
        if self._heap:
            times.append(self._heap[0][0])
        if self._lingering:
            times.append(self._lingering[0][0] + self.limits.linger)
        return min(times) if times else None

    # ------------------------------------------------------------------ output
    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        """Datagrams to send (after collecting from SAs used from outside)."""
        self.flush(now)
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> tuple[IkeSa, Event] | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterable[tuple[IkeSa, Event]]:
        while self._events:
            yield self._events.popleft()

    # ------------------------------------------------------------------ bookkeeping
    def pump(self, sa: IkeSa, now: float) -> None:
        """Collect what ``sa`` produced (datagrams, events, successors, timer) and file
        it under its SPI; call after every use of an SA from outside the endpoint."""
        self._dirty.pop(id(sa), None)
        filed = self._filed.get(id(sa))
        if filed is None:
            self.add(sa)
            filed = self._filed[id(sa)]
        spi = sa.local_spi
        if spi != filed.spi and any(spi):
            if filed.spi and self._by_spi.get(filed.spi) is sa:
                del self._by_spi[filed.spi]
            self._by_spi[spi] = sa
            filed.spi = spi
        for data, dest in sa.datagrams_to_send(now):
            self._outbox.append((data, sa.local_addr, dest))
        while (ev := sa.next_event()) is not None:
            self._events.append((sa, ev))
        for new in sa.take_successors():
            self.add(new)
            self.pump(new, now)
        if filed.half_open is not None and sa.state != IkeState.EXPECT_AUTH_REQUEST:
            self._leave_half_open(filed)
        if sa.state in END_STATES:
            self._end(filed, now)
            return
        t = sa.get_timer()
        if t != filed.timer:
            filed.timer = t
            if t is not None:
                filed.seq = next(self._seq)
                heapq.heappush(self._heap, (t, filed.seq, id(sa)))

    def _end(self, filed: _Filed, now: float) -> None:
        sa = filed.sa
        filed.timer = None
        if sa.ended_at is None:
            sa.ended_at = now
            if not filed.linger:
                self._forget(sa)
                return
            self._lingering.append((now, sa))
            while len(self._lingering) > self.limits.max_lingering:
                self._forget(self._lingering.popleft()[1])

    def _expire_lingering(self, now: float) -> None:
        while self._lingering and self._lingering[0][0] + self.limits.linger <= now:
            self._forget(self._lingering.popleft()[1])

    def _forget(self, sa: IkeSa) -> None:
        sa.wakeup = None
        filed = self._filed.pop(id(sa), None)
        if filed is None:
            return
        if filed.spi and self._by_spi.get(filed.spi) is sa:
            del self._by_spi[filed.spi]
        self._leave_half_open(filed)

    def _leave_half_open(self, filed: _Filed) -> None:
        key = filed.half_open
        if key is None:
            return
        filed.half_open = None
        if self._half_open.get(key) is filed.sa:
            del self._half_open[key]
            left = self._half_open_ip.get(key[0], 1) - 1
            if left > 0:
                self._half_open_ip[key[0]] = left
            else:
                self._half_open_ip.pop(key[0], None)

    # ------------------------------------------------------------------ admission
    def _admit(self, data: bytes, local: Addr, remote: Addr, now: float) -> IkeSa | None:
        lim = self.limits
        ip = remote[0]
        per_ip = self._half_open_ip.get(ip, 0)
        if per_ip >= lim.block_threshold_ip:
            self.stats.blocked += 1
            return None
        if not self._init_limiter.allow(ip, now):
            self.stats.rate_limited += 1
            return None
        if len(self._half_open) >= lim.cookie_threshold or per_ip >= lim.cookie_threshold_ip:
            challenge = cookie_challenge(
                data, remote, self._cookie_secret, previous=self._cookie_previous
            )
            if challenge is not None:
                self.stats.cookies_sent += 1
                self._outbox.append((challenge, local, remote))
                return None
        if len(self._half_open) >= lim.max_half_open:
            self.stats.half_open_full += 1
            return None
        sa = IkeSa.accept(
            self.lookup, data, local, remote, now, rng=self._rng, spi_allocator=self._spi_allocator
        )
        if sa is None:
            self.stats.refused += 1
            return None
        self.stats.accepted += 1
        sa.created_at = now
        self.add(sa)
        filed = self._filed[id(sa)]
        # refused in IKE_SA_INIT (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD...): the answer
        # is not cached and the retry is a new request (RFC 7296 1.2, 2.6): forget it
        filed.linger = sa.state not in END_STATES
        if sa.state == IkeState.EXPECT_AUTH_REQUEST:
            key = (ip, sa.spi_i)
            self._half_open[key] = sa
            self._half_open_ip[ip] = per_ip + 1
            filed.half_open = key
        self.pump(sa, now)
        return sa

    def _unknown_spi(
        self, body: bytes, is_response: bool, local: Addr, remote: Addr, now: float
    ) -> None:
        payload, _ = strip_marker(body)
        try:
            msg = codec.parse_message(payload)
        except IkeError:
            return
        if is_response:
            if msg.notifies(NotifyType.INVALID_IKE_SPI):
                # RFC 7296 2.21.4: audit only; never change state on it
                self.stats.invalid_ike_spi_received += 1
                log.info(
                    "peer %s does not know IKE SA %s:%s (INVALID_IKE_SPI)",
                    fmt_addr(remote),
                    msg.spi_i.hex(),
                    msg.spi_r.hex(),
                )
            return
        if msg.exchange_type == ExchangeType.IKE_SA_INIT:
            return
        if not self._invalid_spi_limiter.allow("", now):
            return
        self.stats.invalid_ike_spi_sent += 1
        flags = HeaderFlag.RESPONSE
        if not msg.is_initiator:
            flags |= HeaderFlag.INITIATOR
        reply = codec.build_message(
            Message(
                msg.spi_i,
                msg.spi_r,
                msg.exchange_type,
                int(flags),
                msg.message_id,
                (NotifyPayload(NotifyType.INVALID_IKE_SPI),),
            )
        )
        framed = NON_ESP_MARKER + reply if local[1] == NATT_PORT else reply
        self._outbox.append((framed, local, remote))

    def _rotate_cookie(self, now: float) -> None:
        if self._cookie_rotated is None:
            self._cookie_rotated = now
        elif now - self._cookie_rotated >= self.limits.cookie_rotation:
            self._cookie_previous = self._cookie_secret
            self._cookie_secret = self._random(32)
            self._cookie_rotated = now

    def _random(self, n: int) -> bytes:
        return self._rng.randbytes(n) if self._rng is not None else os.urandom(n)
