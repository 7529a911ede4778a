"""Two IKE endpoints on a simulated network with a fixed clock, and a model of the
kernel each one drives (for the lifecycle tests: rekeying, collisions, liveness).

Unlike :mod:`.harness` (one initiator SA and its responders), both sides here are
whole :class:`~ipsecd.ike.endpoint.IkeEndpoint` objects, so IKE SA rekeys, their new
SPIs and simultaneous initiations are routed as in the agent.

:class:`KernelModel` applies each side's events the way the agent does (inbound half
first, outbound half when active, the old outbound removed at once and the old
inbound after a grace), and :meth:`Pair.check_no_loss` asserts the property that
matters: whatever SA a side would send with at any instant, the other side can
receive it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ipsecd.ike.config import IkeConfig
from ipsecd.ike.endpoint import EndpointLimits, IkeEndpoint
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaOutboundActivated,
    Event,
)
from ipsecd.ike.sa import IkeSa, lookup_by_address
from ipsecd.ike.states import IkeState

Addr = tuple[str, int]
A_ADDR: Addr = ("192.0.2.1", 500)
B_ADDR: Addr = ("198.51.100.1", 500)
#: Seconds the agent keeps the inbound half of a deleted CHILD SA (packets in flight).
GRACE = 5.0


@dataclass
class Wire:
    seq: int
    deliver_at: float
    src: Addr
    dst: Addr
    data: bytes
    sender: str


@dataclass
class KernelModel:
    """The SAs one side has in its kernel, per connection: inbound SPIs (with removal
    times for those in their grace period) and outbound SPIs in install order (the
    kernel sends with the newest)."""

    inbound: dict[int, float | None] = field(default_factory=dict)
    outbound: dict[str, list[int]] = field(default_factory=dict)
    pending_out: dict[int, tuple[str, int]] = field(default_factory=dict)

    def apply(self, ev: Event, now: float) -> None:
        if isinstance(ev, ChildSaEstablished):
            assert ev.inbound_spi not in self.inbound, "inbound SPI installed twice"
            self.inbound[ev.inbound_spi] = None
            if ev.outbound_active:
                self.outbound.setdefault(ev.connection, []).append(ev.outbound_spi)
            else:
                self.pending_out[ev.inbound_spi] = (ev.connection, ev.outbound_spi)
        elif isinstance(ev, ChildSaOutboundActivated):
            conn, spi = self.pending_out.pop(ev.inbound_spi)
            assert spi == ev.outbound_spi
            self.outbound.setdefault(conn, []).append(spi)
        elif isinstance(ev, ChildSaDeleted):
            self.pending_out.pop(ev.inbound_spi, None)
            for spis in self.outbound.values():
                if ev.outbound_spi in spis:
                    spis.remove(ev.outbound_spi)
            if ev.inbound_spi in self.inbound:
                self.inbound[ev.inbound_spi] = now + GRACE

    def expire(self, now: float) -> None:
        for spi, until in list(self.inbound.items()):
            if until is not None and until <= now:
                del self.inbound[spi]

    def sending(self) -> dict[str, int]:
        """The SA each connection sends with (the newest outbound)."""
        return {conn: spis[-1] for conn, spis in self.outbound.items() if spis}


class Pair:
    """Endpoints "a" (192.0.2.1) and "b" (198.51.100.1)."""

    def __init__(
        self,
        configs_a: list[IkeConfig],
        configs_b: list[IkeConfig],
        *,
        latency: float = 0.01,
        seed: int = 7,
        limits: EndpointLimits | None = None,
        drop: Callable[[Wire], bool] | None = None,
    ) -> None:
        self.now = 1000.0
        self.latency = latency
        self.drop = drop
        self.ep = {
            "a": IkeEndpoint(lookup_by_address(configs_a), rng=random.Random(seed), limits=limits),
            "b": IkeEndpoint(
                lookup_by_address(configs_b), rng=random.Random(seed + 1), limits=limits
            ),
        }
        self.addr = {"a": A_ADDR, "b": B_ADDR}
        self.events: dict[str, list[tuple[float, IkeSa, Event]]] = {"a": [], "b": []}
        self.kernel = {"a": KernelModel(), "b": KernelModel()}
        self.wire: list[Wire] = []
        self._flight: list[Wire] = []
        self._seq = 0
        #: Checked after every step when set (see check_no_loss).
        self.watch_loss = False

    # ------------------------------------------------------------------ plumbing
    def initiate(self, who: str, config: IkeConfig) -> IkeSa:
        other = "b" if who == "a" else "a"
        sa = self.ep[who].initiate(config, self.addr[who], self.addr[other], self.now)
        self.flush()
        return sa

    def flush(self) -> None:
        for who, ep in self.ep.items():
            ep.flush(self.now)
            for sa, ev in ep.events():
                self.events[who].append((self.now, sa, ev))
                self.kernel[who].apply(ev, self.now)
            for data, local, dest in ep.datagrams_to_send(self.now):
                self._seq += 1
                w = Wire(self._seq, self.now + self.latency, local, dest, data, who)
                self.wire.append(w)
                if self.drop is None or not self.drop(w):
                    self._flight.append(w)

    def _side_of(self, ip: str) -> str:
        return "a" if ip == A_ADDR[0] else "b"

    def step(self, horizon: float) -> bool:
        self.flush()
        timers = [(t, who) for who, ep in self.ep.items() if (t := ep.get_timer()) is not None]
        pkt = min(self._flight, key=lambda p: (p.deliver_at, p.seq), default=None)
        timer = min(timers, default=None)
        if timer is not None and timer[0] > horizon:
            timer = None
        if pkt is not None and pkt.deliver_at > horizon:
            pkt = None
        if pkt is None and timer is None:
            return False
        if pkt is not None and (timer is None or pkt.deliver_at <= timer[0]):
            self.now = max(self.now, pkt.deliver_at)
            self._flight.remove(pkt)
            self.ep[self._side_of(pkt.dst[0])].receive_datagram(
                pkt.data, pkt.dst, pkt.src, self.now
            )
        else:
            assert timer is not None
            self.now = max(self.now, timer[0])
            self.ep[timer[1]].handle_timer(self.now)
        self.flush()
        for k in self.kernel.values():
            k.expire(self.now)
        if self.watch_loss:
            self.check_no_loss()
        return True

    def advance(self, seconds: float, max_steps: int = 200_000) -> None:
        end = self.now + seconds
        for _ in range(max_steps):
            if not self.step(end):
                self.now = end
                self.flush()
                for k in self.kernel.values():
                    k.expire(self.now)
                return
        raise AssertionError("advance(): too many steps")

    def settle(self, seconds: float = 5.0) -> None:
        """Let in-flight exchanges finish (a few round trips)."""
        self.advance(seconds)

    # ------------------------------------------------------------------ views
    def sas(self, who: str) -> list[IkeSa]:
        return [sa for sa in self.ep[who].sas if sa.state == IkeState.ESTABLISHED]

    def of(self, who: str, kind: type) -> list:  # type: ignore[type-arg]
        return [ev for _, _, ev in self.events[who] if isinstance(ev, kind)]

    def check_no_loss(self) -> None:
        """Whatever a side sends with, the other side can receive right now."""
        for who, other in (("a", "b"), ("b", "a")):
            for conn, spi in self.kernel[who].sending().items():
                assert spi in self.kernel[other].inbound, (
                    f"{who} sends {conn} with {spi:08x}, which {other} cannot receive "
                    f"(t={self.now:.3f})"
                )

    def check_pair(self) -> None:
        """Each side has exactly one established IKE SA, with the same SPIs, and the
        live CHILD SAs match pairwise (SPIs and keys)."""
        a, b = self.sas("a"), self.sas("b")
        assert len(a) == 1 and len(b) == 1, (a, b)
        assert (a[0].spi_i, a[0].spi_r) == (b[0].spi_i, b[0].spi_r)
        ca = {c.inbound_spi: c for c in a[0].children}
        cb = {c.inbound_spi: c for c in b[0].children}
        assert len(ca) == len(cb) >= 1
        for c in ca.values():
            peer = cb[c.outbound_spi]
            assert peer.outbound_spi == c.inbound_spi
            assert c.event.outbound_encryption_key == peer.event.inbound_encryption_key
            assert c.event.inbound_encryption_key == peer.event.outbound_encryption_key
