"""Two-engine harness: our IKE initiator and responder on a simulated network with a
fixed (simulated) clock.

No sockets and no real time: the harness asks each engine for its datagrams and timers,
delivers datagrams after a latency, advances the clock to the next delivery or timer, and
records every event.  The network can lose, duplicate and reorder datagrams, and can put
the initiator behind a NAT (source address and port rewritten, a new port for every
private source port, so the float to 4500 gets a new mapping as with a real NAT).

Used by tests/unit/ike/test_engine*.py and test_fuzz_engine.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ipsecd.ike.config import (
    ChildConfig,
    Identity,
    IkeConfig,
    Mode,
    RetransmitConfig,
    TrafficSelector,
    parse_child_proposal,
    parse_ike_proposal,
)
from ipsecd.ike.constants import ProtocolId
from ipsecd.ike.events import Event
from ipsecd.ike.negotiate import cookie_challenge
from ipsecd.ike.sa import IkeSa, SpiAllocator
from ipsecd.ike.states import END_STATES

Addr = tuple[str, int]

I_ADDR: Addr = ("192.0.2.1", 500)
R_ADDR: Addr = ("198.51.100.1", 500)
NAT_PUBLIC_IP = "203.0.113.7"
#: ``run()`` stops when nothing is due within this many simulated seconds.
HORIZON = 600.0


PSK = b"correct horse battery staple 42"
I_NET = "10.1.0.0/16"
R_NET = "10.2.0.0/16"


def ts(*cidrs: str) -> tuple[TrafficSelector, ...]:
    return tuple(TrafficSelector.from_cidr(c) for c in cidrs)


def make_configs(
    *,
    ike: Sequence[str] = ("aes256gcm16-prfsha384-ecp384",),
    r_ike: Sequence[str] | None = None,
    esp: Sequence[str] = ("aes256gcm16",),
    r_esp: Sequence[str] | None = None,
    protocol: ProtocolId = ProtocolId.ESP,
    r_protocol: ProtocolId | None = None,
    mode: Mode = Mode.TUNNEL,
    r_mode: Mode | None = None,
    i_local_ts: tuple[TrafficSelector, ...] = ts(I_NET),
    i_remote_ts: tuple[TrafficSelector, ...] = ts(R_NET),
    r_local_ts: tuple[TrafficSelector, ...] | None = None,
    r_remote_ts: tuple[TrafficSelector, ...] | None = None,
    psk: bytes = PSK,
    r_psk: bytes | None = None,
    i_id: Identity | None = None,
    r_id: Identity | None = None,
    i_expects: Identity | None = None,
    r_expects: Identity | None = None,
    retransmit: RetransmitConfig | None = None,
    force_encapsulation: bool = False,
    i_addr: Addr = I_ADDR,
    r_addr: Addr = R_ADDR,
) -> tuple[IkeConfig, IkeConfig]:
    """An initiator and a responder configuration that agree unless told otherwise."""
    i_ident = i_id or Identity.ip(i_addr[0])
    r_ident = r_id or Identity.ip(r_addr[0])
    rp = r_protocol or protocol
    child_i = ChildConfig(
        local_ts=i_local_ts,
        remote_ts=i_remote_ts,
        mode=mode,
        protocol=protocol,
        proposals=tuple(parse_child_proposal(e, protocol) for e in esp),
    )
    child_r = ChildConfig(
        local_ts=r_local_ts if r_local_ts is not None else i_remote_ts,
        remote_ts=r_remote_ts if r_remote_ts is not None else i_local_ts,
        mode=r_mode or mode,
        protocol=rp,
        proposals=tuple(parse_child_proposal(e, rp) for e in (r_esp or esp)),
    )
    extra = {"retransmit": retransmit} if retransmit is not None else {}
    ci = IkeConfig(
        "conn",
        i_ident,
        i_expects if i_expects is not None else r_ident,
        psk,
        child_i,
        ike_proposals=tuple(parse_ike_proposal(p) for p in ike),
        force_encapsulation=force_encapsulation,
        **extra,  # type: ignore[arg-type]
    )
    cr = IkeConfig(
        "conn",
        r_ident,
        r_expects if r_expects is not None else i_ident,
        r_psk if r_psk is not None else psk,
        child_r,
        ike_proposals=tuple(parse_ike_proposal(p) for p in (r_ike or ike)),
        **extra,  # type: ignore[arg-type]
    )
    return ci, cr


def events_of(events: Sequence[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


@dataclass
class Packet:
    """One datagram on the simulated wire (addresses as seen on the wire)."""

    seq: int
    deliver_at: float
    src: Addr
    dst: Addr
    data: bytes
    #: Which engine sent it ("i" or "r").
    sender: str


@dataclass
class Network:
    """Latency, loss, duplication and reordering.

    ``drop(packet)`` returns True to lose a datagram, ``duplicate(packet)`` True to
    deliver it twice; ``jitter`` adds a random extra delay in [0, jitter) (reordering);
    ``delay(packet)`` an extra delay of one's choosing (reordering on purpose);
    ``rewrite(packet)`` returns replacement bytes (a tampering peer) or None.
    """

    latency: float = 0.01
    jitter: float = 0.0
    drop: Callable[[Packet], bool] | None = None
    duplicate: Callable[[Packet], bool] | None = None
    rewrite: Callable[[Packet], bytes | None] | None = None
    delay: Callable[[Packet], float] | None = None
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class Harness:
    """An initiator :class:`IkeSa` and the responders it creates through ``accept``."""

    def __init__(
        self,
        initiator_config: IkeConfig,
        responder_configs: Sequence[IkeConfig],
        *,
        network: Network | None = None,
        nat: bool = False,
        i_addr: Addr = I_ADDR,
        r_addr: Addr = R_ADDR,
        seed: int = 7,
        spi_allocator_i: SpiAllocator | None = None,
        spi_allocator_r: SpiAllocator | None = None,
        cookie_secret: bytes | None = None,
    ) -> None:
        self.now = 1000.0
        self.network = network or Network()
        self.nat = nat
        self.i_addr = i_addr
        self.r_addr = r_addr
        self._rng_i = random.Random(seed)
        self._rng_r = random.Random(seed + 1)
        self.responder_configs = list(responder_configs)
        self.initiator = IkeSa(
            initiator_config,
            initiator=True,
            local_addr=i_addr,
            remote_addr=r_addr,
            rng=self._rng_i,
            spi_allocator=spi_allocator_i,
        )
        self._spi_allocator_r = spi_allocator_r
        #: When set, new IKE_SA_INIT requests must pass ``cookie_challenge`` first.
        self.cookie_secret = cookie_secret
        #: Every responder ``accept`` created (the live one is the last).
        self.responders: list[IkeSa] = []
        self.events_i: list[Event] = []
        self.events_r: list[Event] = []
        #: Every datagram put on the wire, in order (after NAT rewriting).
        self.wire: list[Packet] = []
        self._in_flight: list[Packet] = []
        self._seq = 0
        self._nat_map: dict[Addr, Addr] = {}
        self._nat_back: dict[Addr, Addr] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def responder(self) -> IkeSa | None:
        return self.responders[-1] if self.responders else None

    def lookup(self, local_ip: str, remote_ip: str) -> list[IkeConfig]:
        return self.responder_configs

    def _engines(self) -> list[tuple[str, IkeSa]]:
        out = [("i", self.initiator)]
        out += [("r", r) for r in self.responders]
        return out

    def _nat_out(self, src: Addr) -> Addr:
        if src not in self._nat_map:
            public = (NAT_PUBLIC_IP, 40000 + len(self._nat_map))
            self._nat_map[src] = public
            self._nat_back[public] = src
        return self._nat_map[src]

    def _send(self, sender: str, src: Addr, dst: Addr, data: bytes) -> None:
        if self.nat and sender == "i":
            src = self._nat_out(src)
        if self.nat and sender == "r" and dst in self._nat_back:
            dst_private = self._nat_back[dst]
        else:
            dst_private = dst
        net = self.network
        self._seq += 1
        delay = net.latency + (net.rng.random() * net.jitter if net.jitter else 0.0)
        pkt = Packet(self._seq, self.now + delay, src, dst_private, data, sender)
        if net.delay is not None:
            pkt.deliver_at += net.delay(pkt)
        if net.rewrite is not None:
            replaced = net.rewrite(pkt)
            if replaced is not None:
                pkt.data = replaced
        self.wire.append(pkt)
        if net.drop is not None and net.drop(pkt):
            return
        self._in_flight.append(pkt)
        if net.duplicate is not None and net.duplicate(pkt):
            self._seq += 1
            dup = Packet(self._seq, pkt.deliver_at + net.latency, src, dst_private, data, sender)
            self._in_flight.append(dup)

    def _flush(self) -> None:
        for who, sa in self._engines():
            for data, dst in sa.datagrams_to_send(self.now):
                self._send(who, sa.local_addr, dst, data)
            sink = self.events_i if who == "i" else self.events_r
            while (ev := sa.next_event()) is not None:
                sink.append(ev)

    def _deliver(self, pkt: Packet) -> None:
        if pkt.dst[0] == self.initiator.local_addr[0]:
            self.initiator.receive_datagram(pkt.data, pkt.src, self.now)
            return
        live = self.responder
        if live is None or live.state in END_STATES:
            if self.cookie_secret is not None:
                challenge = cookie_challenge(pkt.data, pkt.src, self.cookie_secret)
                if challenge is not None:
                    self._send("r", pkt.dst, pkt.src, challenge)
                    return
            sa = IkeSa.accept(
                self.lookup,
                pkt.data,
                local_addr=pkt.dst,
                remote_addr=pkt.src,
                now=self.now,
                rng=self._rng_r,
                spi_allocator=self._spi_allocator_r,
            )
            if sa is not None:
                self.responders.append(sa)
            return
        live.receive_datagram(pkt.data, pkt.src, self.now)

    # --------------------------------------------------------------------- API
    def flush(self) -> None:
        """Collect datagrams and events from every engine now."""
        self._flush()

    def start(self) -> None:
        self.initiator.initiate(self.now)
        self._flush()

    def step(self, horizon: float = HORIZON) -> bool:
        """Advance to the next delivery or timer; False when nothing is left to do
        within ``horizon`` seconds (an established SA's lifetime timer is hours away)."""
        self._flush()
        timers = [(t, sa) for _, sa in self._engines() if (t := sa.get_timer()) is not None]
        next_pkt = min(self._in_flight, key=lambda p: (p.deliver_at, p.seq), default=None)
        next_timer = min(timers, key=lambda x: x[0], default=None)
        if next_timer is not None and next_timer[0] > self.now + horizon:
            next_timer = None
        if next_pkt is None and next_timer is None:
            return False
        if next_pkt is not None and (next_timer is None or next_pkt.deliver_at <= next_timer[0]):
            self.now = max(self.now, next_pkt.deliver_at)
            self._in_flight.remove(next_pkt)
            self._deliver(next_pkt)
        else:
            assert next_timer is not None
            self.now = max(self.now, next_timer[0])
            next_timer[1].handle_timer(self.now)
        self._flush()
        return True

    def run(self, *, until: Callable[[], bool] | None = None, max_steps: int = 2000) -> None:
        """Step until ``until()`` holds or the network and timers are quiet (bounded)."""
        for _ in range(max_steps):
            if until is not None and until():
                return
            if not self.step():
                return
        raise AssertionError(f"harness did not settle within {max_steps} steps")

    def run_until_established(self, max_steps: int = 2000) -> None:
        from ipsecd.ike.states import IkeState

        def done() -> bool:
            r = self.responder
            return (
                self.initiator.state == IkeState.ESTABLISHED
                and r is not None
                and r.state == IkeState.ESTABLISHED
                and not self._in_flight
            ) or self.initiator.state in END_STATES

        self.run(until=done, max_steps=max_steps)
        self._flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, handling whatever falls due."""
        end = self.now + seconds
        for _ in range(10000):
            self._flush()
            timers = [t for _, sa in self._engines() if (t := sa.get_timer()) is not None]
            due = [p.deliver_at for p in self._in_flight] + timers
            if not due or min(due) > end:
                break
            self.step(horizon=end - self.now)
        else:
            raise AssertionError("advance(): too many steps")
        self.now = max(self.now, end)
        self._flush()

    def inject(self, data: bytes, *, to: str, src: Addr | None = None) -> None:
        """Deliver raw bytes to the initiator ("i") or the live responder ("r") now."""
        if to == "i":
            self.initiator.receive_datagram(data, src or self.r_addr, self.now)
        else:
            sa = self.responder
            assert sa is not None, "no responder yet"
            sa.receive_datagram(data, src or self.i_addr, self.now)
        self._flush()
