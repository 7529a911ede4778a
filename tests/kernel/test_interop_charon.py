"""Our agent against strongSwan charon, real ESP in the kernel lab: rekeys, Delete, DPD, NAT-T.

Our agent runs standalone (``spd_file=``, docs/operations.md "Running the agent") in
namespace ``a``; the SPD names charon with ``peer`` statements (docs/spd.md, "peer"),
one per address family, and one connection to each:

    link  our connection       who initiates       mode       family  ping
    c4    c4/charon4/ipv4      we (start eager)    transport  IPv4    192.0.2.1 -> 192.0.2.2
    c6    c6/charon6/ipv6      charon (we: start   tunnel     IPv6    fd00:a::1 -> fd00:b::2
                               passive)                               (inner /128s on lo)

The main test goes through these phases, both links at once (a phase ends only when
both ends agree on the SAs again: same IKE SPIs, same CHILD SA SPIs, the CHILD SA in
our kernel):

1. **Rekeys** with a ping every 10 ms on each link: CHILD SA rekeyed by us, then by
   charon, IKE SA rekeyed by us, then by charon (RFC 7296 1.3.3, 2.8, 2.18).  No echo
   may be lost; egress captures on both ends show only ESP with the SAs' SPIs and no
   clear echo.  The engine's events say who initiated each rekey.  (With a peer that
   sends on a new CHILD SA as soon as it has answered our rekey, pluto and iked, the
   echoes it answers before our engine has that answer are lost and counted apart:
   ``ThirdParty.answers_on_new_sa``; likewise iked drops its old inbound SA as it
   sends the Delete of its own rekey, ``drops_old_inbound_at_delete``.  charon does
   neither: with charon every echo must arrive.)
2. **Delete** both ways (RFC 7296 1.4.1): we delete one link's IKE SA while charon
   deletes the other's, then the other way round; each time the CHILD SA leaves both
   kernels and the initiator of the link brings it back.
3. **DPD** (RFC 7296 2.4): charon is killed (SIGKILL); our liveness checks (``dpd
   10s``) fail both IKE SAs and their CHILD SAs leave our kernel.

Two more tests: the same agent behind a NAT namespace (tests/support/nat.py, nftables
masquerade with random ports): we initiate, tunnel, IPv4, ESP in UDP (RFC 3948,
RFC 7296 2.23), rekeys by both sides with a ping running; and INITIAL_CONTACT from
charon on one link must not cost us the IKE SA of the other (RFC 7296 2.4: it speaks
for one pair of identities).

Our SPD bypasses IPv6 neighbour discovery (docs/spd.md section 4), as every agent
whose connections cover two IPv6 hosts must (ND_BYPASS).

The machinery (``Link``, ``Interop``, ``PingFlow``, ...) is shared with
test_interop_libreswan.py and test_interop_openiked.py: each third-party daemon only
supplies an adapter with the :class:`ThirdParty` methods.  Figures (pings sent/lost per
phase, rekey counts, delete and DPD times) are printed for the issue notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from agent.daemon import Daemon
from agent.supervisor import Conn as AgentConn
from ipsecd.ike import IkeSa
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaOutboundActivated,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ipsecd.ike.states import END_STATES, IkeState
from tests.kernel.conftest import NsPair
from tests.support.agents import LAB_RETRANSMIT, options, ping, running, write_private
from tests.support.aio import run_async
from tests.support.capture import EgressCapture, Packet, PacketKind
from tests.support.charon import LAB_PLUGINS, Charon, Child
from tests.support.charon import Conn as CharonConn
from tests.support.nat import INSIDE, NAT_INSIDE, NAT_OUTSIDE, OUTSIDE, nat_topology
from tests.support.netns import Netns

# ---------------------------------------------------------------------------- harness

#: ≥ 24 bytes: Libreswan warns below that for SHA2-384 (RFC 7296 2.15 wants the PSK
#: as strong as the PRF key).  Written only to 0600 files and over vici.
PSK = "interop-lab-psk-0123456789abcdef0123456789"
#: One echo every 10 ms, in back-to-back runs of CHUNK echoes: each run waits for its
#: last answers, so every echo sent is counted as answered or lost.
PING_INTERVAL = 0.01
PING_CHUNK = 300
#: Bounds on waits (never asserted as durations).  Under TCG the first SA with an
#: algorithm makes the kernel load and self-test its crypto (docs/operations.md).
SETTLE_TIMEOUT = 150.0
DPD_SECONDS = 10
#: How far outside a race window (Interop.races) a lost echo's neighbours may be
#: answered: about one round trip under TCG.
RACE_SLACK = 0.25


@dataclass(frozen=True)
class Link:
    """One of our agent's IKE connections to the third-party daemon."""

    conn: str  # our connection name (CONN/PEER/ipvN, docs/spd.md "peer")
    peer_conn: str  # the third party's name for it
    ours_initiates: bool
    mode: str  # "transport" | "tunnel"
    family: int
    ping_dst: str  # pinged from our namespace through the CHILD SA

    @property
    def label(self) -> str:
        who = "we initiate" if self.ours_initiates else "they initiate"
        return f"{self.conn} ({who}, {self.mode}, IPv{self.family})"


class ThirdParty(Protocol):
    """What the harness needs from a third-party daemon (blocking calls; the harness
    runs them in threads so that our in-process agent keeps running)."""

    name: str
    #: As the responder of our CHILD SA rekey it sends on the new SA as soon as it has
    #: answered, before our engine (the initiator) can have the answer and install the
    #: new inbound SA: echoes it answers in that window are lost (see rekey_phase).
    answers_on_new_sa: bool
    #: As the initiator of a CHILD SA rekey it removes its old inbound SA when it sends
    #: the Delete, before our engine (the responder) can have that Delete and move our
    #: outbound traffic to the new SA: echoes we send in that window are lost.
    drops_old_inbound_at_delete: bool

    def children(self, link: Link) -> set[tuple[int, int]]:
        """(its inbound SPI, its outbound SPI) of each installed CHILD SA of ``link``."""

    def ike_spis(self, link: Link) -> set[tuple[bytes, bytes]] | None:
        """(SPIi, SPIr) of each established IKE SA of ``link``; None: not visible."""

    def rekey_child(self, link: Link) -> None: ...

    def rekey_ike(self, link: Link) -> None: ...

    def delete_ike(self, link: Link) -> None:
        """Delete the IKE SA of ``link``, telling us (RFC 7296 1.4.1)."""

    def initiate(self, link: Link) -> None:
        """Start ``link`` again (it is one the third party initiates)."""

    def kill(self) -> None:
        """SIGKILL the daemon: no Delete reaches us."""

    def log_tail(self, lines: int = 30) -> str: ...


@dataclass(frozen=True)
class Snapshot:
    """A link at rest: the IKE SA's SPIs and the CHILD SA's (inbound, outbound) SPIs,
    from our side."""

    ike: tuple[bytes, bytes]
    child: tuple[int, int]


@dataclass
class PingFlow:
    """ping every PING_INTERVAL from ``ns`` to ``dst`` until stopped (see PING_CHUNK).

    ping prints every answer with its time (``-D``): a lost echo is placed between the
    answers before and after it (``gaps``), to be set against the phase's timeline."""

    ns: Netns
    dst: str
    sent: int = 0
    received: int = 0
    #: (first lost icmp_seq, how many, last answer before, first answer after) per gap
    gaps: list[tuple[int, int, float, float]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> PingFlow:
        self._task = asyncio.create_task(self._run(), name=f"ping {self.dst}")
        return self

    async def _run(self) -> None:
        argv = ["ping", "-n", "-D", "-c", str(PING_CHUNK), "-i", str(PING_INTERVAL), "-W", "2"]
        while not self._stop.is_set():
            started = time.time()
            proc = await asyncio.create_subprocess_exec(
                *self.ns.argv([*argv, self.dst]),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            self._account(out.decode(errors="replace"), started)

    def _account(self, text: str, started: float) -> None:
        summary = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
        if summary is None:
            raise AssertionError(f"ping {self.dst} in {self.ns.name} gave no summary: {text!r}")
        sent, received = int(summary[1]), int(summary[2])
        if sent == 0:
            raise AssertionError(f"ping {self.dst} sent nothing: {text!r}")
        self.sent += sent
        self.received += received
        answers = {
            int(m[2]): float(m[1])
            for m in re.finditer(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+) ", text, re.M)
        }
        previous = started
        seq = 1
        while seq <= sent:
            if seq in answers:
                previous = answers[seq]
                seq += 1
                continue
            first = seq
            while seq <= sent and seq not in answers:
                seq += 1
            after = answers.get(seq, time.time())
            self.gaps.append((first, seq - first, previous, after))

    @property
    def lost(self) -> int:
        return self.sent - self.received

    async def stop(self) -> PingFlow:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self


async def until(
    check: Callable[[], Awaitable[Any]], timeout: float, what: Callable[[], str] | str
) -> Any:
    """Poll ``check`` (bounded) until it returns something truthy; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await check()
        if found:
            return found
        if loop.time() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {said}")
        await asyncio.sleep(0.25)


class AgentLog(logging.Handler):
    """Our agent's log (loggers ``ipsecd.*``, INFO and up) kept for failure messages."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(created).3f %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.lines[-lines:])

    @contextlib.contextmanager
    def attached(self) -> Any:
        logger = logging.getLogger("ipsecd")
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            self.path.write_text("\n".join(self.lines) + "\n")


class Interop:
    """Drives our agent (``daemon``) against ``peer`` over ``links`` (see the module doc).

    ``events`` records every engine event our agent handled, with its IKE SA, so that
    each phase can check what happened on our side and who started it.
    """

    def __init__(
        self, daemon: Daemon, peer: ThirdParty, links: Sequence[Link], agent_log: AgentLog
    ) -> None:
        self.daemon = daemon
        self.peer = peer
        self.links = list(links)
        self.log = agent_log
        self.events: list[tuple[IkeSa, Event]] = []
        #: Every CHILD SA SPI the links had at rest (ours: inbound/outbound).
        self.spis_in: set[int] = set()
        self.spis_out: set[int] = set()
        self.figures: dict[str, Any] = {}
        #: When our kernel got each CHILD SA, and when its outbound half became the one
        #: we send on (wall clock), by inbound SPI.
        self.installed_at: dict[int, float] = {}
        self.activated_at: dict[int, float] = {}
        #: Per link, the windows in which a peer's documented behaviour loses echoes
        #: (ThirdParty.answers_on_new_sa, .drops_old_inbound_at_delete): (kind, start,
        #: end) of each CHILD SA rekey, see rekey().
        self.races: dict[Link, list[tuple[str, float, float]]] = {lk: [] for lk in links}
        handler = daemon.driver.on_events
        assert handler is not None

        async def record(batch: list[tuple[IkeSa, Event]]) -> None:
            self.events.extend(batch)
            await handler(batch)
            for _, ev in batch:  # the supervisor has applied it to the kernel now
                if isinstance(ev, ChildSaEstablished):
                    self.installed_at[ev.inbound_spi] = time.time()
                    if ev.outbound_active:
                        self.activated_at[ev.inbound_spi] = time.time()
                elif isinstance(ev, ChildSaOutboundActivated):
                    self.activated_at[ev.inbound_spi] = time.time()

        daemon.driver.on_events = record

    # -- our side
    def conn(self, link: Link) -> AgentConn:
        return self.daemon.supervisor.conns[link.conn]

    def now(self) -> float:
        return self.daemon.driver.clock()

    def since(self, mark: int, link: Link, kind: type[Any]) -> list[tuple[IkeSa, Any]]:
        return [
            (sa, ev)
            for sa, ev in self.events[mark:]
            if isinstance(ev, kind) and sa.config.name == link.conn
        ]

    def describe(self) -> str:
        """Both ends' view of every link, for failure messages."""
        out = []
        for link in self.links:
            c = self.conn(link)
            sas = [f"{s.name} {s.state.name} {'i' if s.initiator else 'r'}" for s in c.sas]
            kids = [f"{e.inbound_spi:08x}/{e.outbound_spi:08x}" for e in c.children.values()]
            out.append(
                f"  ours {link.conn}: {c.state}; IKE {sas}; CHILD {kids}; "
                f"last error {c.last_error!r}"
            )
            try:
                theirs = self.peer.children(link)
                ike = self.peer.ike_spis(link)
            except Exception as exc:  # the daemon may be dead by now
                theirs, ike = set(), f"({type(exc).__name__}: {exc})"  # type: ignore[assignment]
            out.append(
                f"  {self.peer.name} {link.peer_conn}: CHILD "
                f"{sorted(f'{i:08x}/{o:08x}' for i, o in theirs)}; IKE {ike}"
            )
        out.append(
            f"  our kernel CHILD SAs (in SPI: reqid, out installed): "
            f"{ {f'{k:08x}': v for k, v in self.daemon.writer.installed().items()} }"
        )
        return "\n".join(out)

    @contextlib.contextmanager
    def diagnostics(self) -> Any:
        """Re-raise a failure with both ends' state and logs."""
        try:
            yield
        except Exception as exc:
            try:
                state = self.describe()
            except Exception as inner:  # never hide the original failure
                state = f"  (state unavailable: {inner!r})"
            raise AssertionError(
                f"{type(exc).__name__}: {exc}\n--- state ---\n{state}\n"
                f"--- our agent (ipsecd.*) ---\n{self.log.tail(80)}\n"
                f"--- {self.peer.name} ---\n{self.peer.log_tail(60)}"
            ) from exc

    async def snapshot(self, link: Link) -> Snapshot | None:
        """The link at rest, or None: exactly one established IKE SA and one CHILD SA
        on our side (in our kernel, both halves), and the third party agreeing."""
        c = self.conn(link)
        up = [s for s in c.sas if s.state == IkeState.ESTABLISHED]
        pairs = {(e.inbound_spi, e.outbound_spi) for e in c.children.values()}
        if c.state != "up" or len(up) != 1 or len(pairs) != 1:
            return None
        ((spi_in, spi_out),) = pairs
        installed = self.daemon.writer.installed().get(spi_in)
        if installed is None or not installed[1]:
            return None
        theirs = await asyncio.to_thread(self.peer.children, link)
        if theirs != {(spi_out, spi_in)}:
            return None
        ike = (up[0].spi_i, up[0].spi_r)
        their_ike = await asyncio.to_thread(self.peer.ike_spis, link)
        if their_ike is not None and their_ike != {ike}:
            return None
        self.spis_in.add(spi_in)
        self.spis_out.add(spi_out)
        return Snapshot(ike, (spi_in, spi_out))

    async def settled(
        self,
        link: Link,
        changed: Callable[[Snapshot], bool] = lambda s: True,
        timeout: float = SETTLE_TIMEOUT,
    ) -> Snapshot:
        async def check() -> Snapshot | None:
            snap = await self.snapshot(link)
            return snap if snap is not None and changed(snap) else None

        result: Snapshot = await until(
            check, timeout, lambda: f"{link.label} at rest on both ends:\n{self.describe()}"
        )
        return result

    async def all_settled(self, timeout: float = SETTLE_TIMEOUT) -> dict[Link, Snapshot]:
        snaps = await asyncio.gather(*(self.settled(lk, timeout=timeout) for lk in self.links))
        return dict(zip(self.links, snaps, strict=True))

    # -- phase 1: rekeys with pings running
    async def rekey(self, link: Link, what: str) -> None:
        """One rekey of ``link``: ``what`` is ours-child, peer-child, ours-ike, peer-ike."""
        before = await self.settled(link)
        mark = len(self.events)
        sa = self.conn(link).sa
        assert sa is not None
        requested = time.time()
        if what == "ours-child":
            assert sa.rekey_child(before.child[0], self.now()), "rekey_child refused"
            self.daemon.driver.nudge()
        elif what == "ours-ike":
            assert sa.rekey_ike(self.now()), "rekey_ike refused"
            self.daemon.driver.nudge()
        elif what == "peer-child":
            await asyncio.to_thread(self.peer.rekey_child, link)
        elif what == "peer-ike":
            await asyncio.to_thread(self.peer.rekey_ike, link)
        else:
            raise ValueError(what)
        ours = what.startswith("ours")
        if what.endswith("child"):
            after = await self.settled(link, lambda s: s.child != before.child)
            assert after.ike == before.ike, (before, after)
            new = [
                ev
                for _, ev in self.since(mark, link, ChildSaEstablished)
                if ev.rekey_of == before.child[0]
            ]
            assert [ev.inbound_spi for ev in new] == [after.child[0]], new
            # the rekey initiator sends on the new SA at once; the responder only once
            # the old one is deleted (RFC 7296 2.8; docs/ike.md "Rekeying")
            assert new[0].outbound_active is ours, (what, new[0])
            gone = [
                ev
                for _, ev in self.since(mark, link, ChildSaDeleted)
                if ev.inbound_spi == before.child[0]
            ]
            assert len(gone) == 1 and gone[0].replaced, gone
            new_in = after.child[0]
            if ours:  # from our request to our new inbound SA
                self.races[link].append(("answers_on_new_sa", requested, self.installed_at[new_in]))
            else:  # from our answer (new inbound SA) to our switch to the new outbound
                window = (self.installed_at[new_in], self.activated_at[new_in])
                self.races[link].append(("drops_old_inbound_at_delete", *window))
        else:
            after = await self.settled(link, lambda s: s.ike != before.ike)
            assert after.child == before.child, (before, after)  # CHILD SAs move (2.18)
            rekeyed = [
                (s, ev)
                for s, ev in self.since(mark, link, IkeSaRekeyed)
                if ev.old_spi_i == before.ike[0]
            ]
            assert len(rekeyed) == 1, rekeyed
            new_sa, ev = rekeyed[0]
            # the new IKE SA's original initiator is the rekey's initiator (2.18)
            assert new_sa.initiator is ours, (what, new_sa)
            assert (ev.spi_i, ev.spi_r) == after.ike

    async def rekey_phase(
        self, steps: Sequence[str] = ("ours-child", "peer-child", "ours-ike", "peer-ike")
    ) -> dict[Link, PingFlow]:
        """The steps in order on each link (the links in parallel), a ping running on
        every link throughout."""
        await self.all_settled()
        started = time.monotonic()
        flows = {lk: PingFlow(agent_ns(self.daemon), lk.ping_dst).start() for lk in self.links}
        counters = dict(self.daemon.supervisor.counters)
        #: (step, wall-clock start, end) per link, to place lost echoes
        steps_done: dict[Link, list[tuple[str, float, float]]] = {lk: [] for lk in self.links}

        async def sequence(link: Link) -> None:
            await asyncio.sleep(1)  # traffic on the old SAs first
            for step in steps:
                t0 = time.time()
                await self.rekey(link, step)
                steps_done[link].append((step, t0, time.time()))
                await asyncio.sleep(1)  # and on the new ones

        try:
            await asyncio.gather(*(sequence(lk) for lk in self.links))
        finally:
            for flow in flows.values():
                await flow.stop()
        after = self.daemon.supervisor.counters
        self.figures["rekeys"] = {
            k: after[k] - counters[k] for k in ("child_rekeyed", "ike_rekeyed")
        }
        self.figures["rekey phase s"] = round(time.monotonic() - started, 1)
        for lk, flow in flows.items():
            took = ", ".join(f"{step} {t1 - t0:.1f} s" for step, t0, t1 in steps_done[lk])
            print(
                f"[{self.peer.name}] rekeys {lk.label}: {took}; ping "
                f"{flow.sent} sent, {flow.received} received, {flow.lost} lost"
            )
        print(
            f"[{self.peer.name}] rekey phase: our counters {self.figures['rekeys']} in "
            f"{self.figures['rekey phase s']} s"
        )
        losses, raced = [], []
        for lk, flow in flows.items():
            for first, count, t_before, t_after in flow.gaps:
                during = [f"{step} ({t0:.3f}-{t1:.3f})" for step, t0, t1 in steps_done[lk]
                          if t0 - 1 <= t_after and t_before <= t1 + 6]  # fmt: skip
                text = (
                    f"{lk.label}: {count} echo(es) from icmp_seq {first} lost between answers "
                    f"at {t_before:.3f} and {t_after:.3f}; steps around: {during or 'none'}"
                )
                # inside a window where the peer's documented behaviour loses echoes
                # (give or take RACE_SLACK: one echo's round trip under TCG)
                in_race = any(
                    getattr(self.peer, kind) and t0 - RACE_SLACK <= t_before
                    and t_after <= t1 + RACE_SLACK
                    for kind, t0, t1 in self.races[lk]
                )  # fmt: skip
                (raced if in_race else losses).append((lk, count, text))
        for lk, flow in flows.items():
            lost_race = sum(n for link, n, _ in raced if link == lk)
            print(
                f"[{self.peer.name}] {lk.label}: {flow.sent} echoes, {flow.lost} lost, of which "
                f"{lost_race} in the windows of {self.peer.name}'s rekey behaviour"
            )
        print("\n".join(text for _, _, text in raced + losses))
        self.figures["lost to the responder race"] = sum(n for _, n, _ in raced)
        for lk, flow in flows.items():
            assert flow.sent >= PING_CHUNK, (lk.label, flow.sent)
        assert not losses, "\n".join(text for _, _, text in losses)
        return flows

    # -- phase 2: Delete both ways
    async def delete(self, link: Link, by_us: bool) -> float:
        """Delete ``link``'s IKE SA (by us or by the third party), check both ends
        dropped it and its CHILD SA, let the link's initiator bring it back; returns
        the seconds it was down."""
        before = await self.settled(link)
        old = self.conn(link).sa
        assert old is not None
        mark = len(self.events)
        kids = {(c.inbound_spi, c.outbound_spi) for c in old.children}
        started = time.monotonic()
        if by_us:
            old.delete(self.now())
            self.daemon.driver.nudge()
        else:
            await asyncio.to_thread(self.peer.delete_ike, link)

        async def gone() -> bool:
            installed = self.daemon.writer.installed()
            if old.state not in END_STATES or any(i in installed for i, _ in kids):
                return False
            theirs = await asyncio.to_thread(self.peer.children, link)
            return not theirs & {(o, i) for i, o in kids}

        await until(gone, 60, lambda: f"{link.label}: old SAs gone on both ends\n{self.describe()}")
        deleted = [ev for s, ev in self.since(mark, link, IkeSaDeleted) if s is old]
        assert len(deleted) == 1 and deleted[0].by_peer is not by_us, deleted
        # every CHILD SA went with it (one the peer rekeyed meanwhile as "replaced")
        ended = [ev for s, ev in self.since(mark, link, ChildSaDeleted) if s is old]
        assert {(ev.inbound_spi, ev.outbound_spi) for ev in ended} >= kids, (kids, ended)
        assert all(ev.by_peer is not by_us for ev in ended if not ev.replaced), ended
        assert not old.children, old.children
        # RFC 7296 1.4.1: the outbound halves leave our kernel at once (the inbound ones
        # after a grace for packets in flight, docs/ike.md "Rekeying")
        for _, spi_out in kids:
            listed = await asyncio.to_thread(
                agent_ns(self.daemon).run, ["ip", "xfrm", "state", "list", "spi", hex(spi_out)]
            )
            assert listed.stdout.strip() == "", listed.stdout
        if not link.ours_initiates:
            await asyncio.to_thread(self.peer.initiate, link)
        await self.settled(link, lambda s: s.ike != before.ike)
        return time.monotonic() - started

    async def delete_phase(self) -> None:
        """Each link deleted once by us and once by the third party."""
        assert len(self.links) == 2
        x, y = self.links
        for us, them in ((x, y), (y, x)):
            down_us, down_them = await asyncio.gather(
                self.delete(us, by_us=True), self.delete(them, by_us=False)
            )
            print(
                f"[{self.peer.name}] Delete by us of {us.label}: back after {down_us:.1f} s; "
                f"Delete by {self.peer.name} of {them.label}: back after "
                f"{down_them:.1f} s"
            )

    async def quick_ping(self) -> None:
        """A few echoes on every link (after the Delete phase)."""
        results = await asyncio.gather(
            *(
                ping(agent_ns(self.daemon), lk.ping_dst, count=20, interval=0.05)
                for lk in self.links
            )
        )
        for lk, r in zip(self.links, results, strict=True):
            print(f"[{self.peer.name}] after Delete {lk.label}: ping {r.sent} sent, {r.lost} lost")
            assert r.sent == 20 and r.lost == 0, r.output

    # -- phase 3: dead peer detection
    async def dpd_phase(self) -> float:
        """Kill the third party; our liveness checks fail every link's IKE SA."""
        snaps = await self.all_settled()
        sas = {lk: self.conn(lk).sa for lk in self.links}
        mark = len(self.events)
        started = time.monotonic()
        await asyncio.to_thread(self.peer.kill)

        async def dead() -> bool:
            installed = self.daemon.writer.installed()
            return all(
                sa is not None
                and sa.state == IkeState.FAILED
                and snaps[lk].child[0] not in installed
                for lk, sa in sas.items()
            )

        # DPD after DPD_SECONDS of silence, then the retransmissions (RFC 7296 2.4)
        bound = DPD_SECONDS + LAB_RETRANSMIT.give_up_after() + 60
        await until(dead, bound, lambda: f"DPD to fail every link\n{self.describe()}")
        took = time.monotonic() - started
        for lk, sa in sas.items():
            failed = [ev for s, ev in self.since(mark, lk, IkeSaFailed) if s is sa]
            assert len(failed) == 1 and "liveness check" in failed[0].reason, failed
        print(
            f"[{self.peer.name}] DPD: {self.peer.name} killed, both IKE SAs failed and their "
            f"CHILD SAs left our kernel after {took:.1f} s (dpd {DPD_SECONDS}s, "
            f"retransmissions {LAB_RETRANSMIT.give_up_after():.0f} s)"
        )
        return took


def agent_ns(daemon: Daemon) -> Netns:
    """The namespace our agent runs in (its options name it)."""
    assert daemon.opts.netns is not None
    return Netns(daemon.opts.netns)


def check_captures(
    name: str,
    ours: list[Packet],
    theirs: list[Packet],
    interop: Interop,
    flows: Iterable[PingFlow],
    kind: PacketKind = PacketKind.ESP,
    dropped: int = 0,
) -> None:
    """What each end sent during the rekey phase: the echoes as ``kind`` with the SAs'
    SPIs (ours: our outbound SPIs, theirs: our inbound ones), never a clear echo.
    ``dropped``: packets the captures lost (tcpdump's kernel drop count, on a loaded
    lab VM): the echo counts may fall short by that many, never more."""
    received = sum(f.received for f in flows)
    mine = [p for p in ours if p.kind is kind]
    other = [p for p in theirs if p.kind is kind]
    print(
        f"[{name}] egress during rekeys: ours {len(mine)} {kind.value} "
        f"({len({p.spi for p in mine})} SPIs), {name} {len(other)} "
        f"({len({p.spi for p in other})} SPIs); {received} echoes answered; "
        f"{dropped} dropped by the captures"
    )
    assert len(mine) + dropped >= received and len(other) + dropped >= received, (
        len(mine),
        len(other),
        received,
        dropped,
    )
    assert {p.spi for p in mine} <= interop.spis_out, sorted(
        f"{s:08x}" for s in {p.spi for p in mine} - interop.spis_out
    )
    assert {p.spi for p in other} <= interop.spis_in, sorted(
        f"{s:08x}" for s in {p.spi for p in other} - interop.spis_in
    )
    clear = [p for p in ours + theirs if p.is_echo]
    assert clear == [], f"clear-text echo on the wire: {clear[:5]}"


@contextlib.asynccontextmanager
async def agent(
    ns: Netns,
    tmp: Path,
    spd_text: str,
    addresses: tuple[str, ...],
    links: Sequence[Link],
    peer: ThirdParty,
) -> AsyncIterator[Interop]:
    """Our agent, standalone, in ``ns`` with ``spd_text`` (a 0600 file: it holds a PSK)."""
    spd = write_private(tmp / "policy.spd", spd_text)
    log = AgentLog(tmp / "agent.log")
    with log.attached():
        opts = options("ours", ns, tmp, spd_file=spd, addresses=addresses)
        async with running([opts]) as daemons:
            daemon = daemons["ours"]
            interop = Interop(daemon, peer, links, log)
            with interop.diagnostics():
                await until(lambda: _ready(daemon, links), 120, "our agent's policy applied")
                yield interop
        # leave the Delete of the shutdown to the peers that are still alive


async def _ready(daemon: Daemon, links: Sequence[Link]) -> bool:
    return daemon.applied is not None and all(lk.conn in daemon.supervisor.conns for lk in links)


#: IPv6 neighbour discovery in clear (docs/spd.md section 4): a transport-mode
#: connection between two IPv6 addresses otherwise wants ESP for the NS/NA between
#: them, before any SA exists.
ND_BYPASS = "bypass icmp6 type 135;\nbypass icmp6 type 136;"


def spd_for(peers: Iterable[str], connections: Iterable[str]) -> str:
    """Our SPD: the peer statements and connections given, ND in clear."""
    return "\n".join([*peers, *connections, ND_BYPASS, ""])


def peer_nd_bypass(ns: Netns) -> None:
    """The same ND bypass in a third-party daemon's namespace, as plain XFRM policies
    above the daemon's own (priority 1): once its transport-mode SA is up it would
    otherwise discard our NS/NA in clear (RFC 4301 4.4.1: the SPD decides per packet,
    so both ends must bypass the same traffic).  Add them before the daemon starts."""
    lines = [
        f"xfrm policy update src ::/0 dst ::/0 proto ipv6-icmp type {icmp_type} "
        f"dir {direction} priority 1"
        for icmp_type in (135, 136)
        for direction in ("in", "out")
    ]
    proc = subprocess.run(ns.argv(["ip", "-6", "-batch", "-"]), input="\n".join(lines) + "\n",
                          capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"ND bypass in {ns.name}: {proc.stderr}"


def nd_bypassed(ns: Netns) -> bool:
    """``ns`` still lets NS and NA (ICMPv6 135, 136) in and out without IPsec: a policy
    without templates for each (ours, or the daemon's own: Libreswan adds some)."""
    out = ns.run(["ip", "-6", "xfrm", "policy", "list", "proto", "ipv6-icmp"]).stdout
    blocks = re.split(r"\n(?=src )", out.strip())
    return all(
        any(f"type {icmp_type} " in b + " " and f"dir {d} " in b and "tmpl" not in b
            for b in blocks)
        for icmp_type in (135, 136)
        for d in ("in", "out")
    )  # fmt: skip


# ---------------------------------------------------------------------------- charon

IKE, ESP = "aes256gcm16-prfsha384-ecp384", "aes256gcm16"
CHARON_ID = "charon.test"
OURS_IN6, CHARON_IN6 = "fd00:a::1", "fd00:b::2"
# charon's own retransmissions: patient enough for our Python engine under TCG.
CHARON_TUNING = {
    "install_routes": "no",
    "retransmit_tries": "5",
    "retransmit_timeout": "2.0",
}


class CharonPeer:
    """:class:`ThirdParty` for tests/support/charon.py."""

    name = "charon"
    #: charon as rekey responder sends on the new SA only once the old one is deleted,
    #: and as rekey initiator keeps its old inbound SA a while after its Delete
    answers_on_new_sa = False
    drops_old_inbound_at_delete = False

    def __init__(self, charon: Charon) -> None:
        self.charon = charon

    def _sas(self, link: Link) -> list[dict[str, Any]]:
        return [
            s
            for s in self.charon.list_sas()
            if s["name"] == link.peer_conn and s.get("state") == "ESTABLISHED"
        ]

    def children(self, link: Link) -> set[tuple[int, int]]:
        return {
            (int(c["spi-in"], 16), int(c["spi-out"], 16))
            for s in self._sas(link)
            for c in s.get("child-sas", {}).values()
            if c.get("state") == "INSTALLED"
        }

    def ike_spis(self, link: Link) -> set[tuple[bytes, bytes]] | None:
        return {
            (bytes.fromhex(s["initiator-spi"]), bytes.fromhex(s["responder-spi"]))
            for s in self._sas(link)
        }

    def rekey_child(self, link: Link) -> None:
        self.charon.rekey(child=link.peer_conn)

    def rekey_ike(self, link: Link) -> None:
        self.charon.rekey(ike=link.peer_conn)

    def delete_ike(self, link: Link) -> None:
        self.charon.terminate_ike(link.peer_conn, force=False, timeout=30)

    def initiate(self, link: Link) -> None:
        self.charon.initiate(link.peer_conn, ike=link.peer_conn, timeout=120)

    def kill(self) -> None:
        proc = self.charon.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return self.charon.log_tail(lines)


def charon_conn(
    name: str,
    local: str,
    remote: str,
    remote_id: str,
    *,
    mode: str,
    local_ts: str = "dynamic",
    remote_ts: str = "dynamic",
) -> CharonConn:
    """charon's side of one link (PSK, our proposals, no rekeying of its own)."""
    return CharonConn(
        name,
        (local,),
        (remote,),
        CHARON_ID,
        remote_id,
        PSK,
        (IKE,),
        (Child(name, (local_ts,), (remote_ts,), (ESP,), mode=mode),),
    )


def our_connection(name: str, peer: str, body: str, start: str = "eager") -> str:
    return (
        f'connection {name} {{ between all and {peer}; {body} auth psk "{PSK}";\n'
        f"    ike lab lifetime 1h; esp lab lifetime 1h; dpd {DPD_SECONDS}s; "
        f"start {start}; }}"
    )


OUR_PROPOSALS = f"proposal ike lab {IKE};\nproposal esp lab {ESP};"


@run_async(900)
async def test_agent_with_charon_rekeys_delete_dpd(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = ns_pair  # a: our agent 192.0.2.1 / fd00::1; b: charon 192.0.2.2 / fd00::2
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    # IPv6 tunnel: inner addresses on lo, routes that pick them as sources (charon
    # installs no routes here: install_routes = no)
    a.run(["ip", "addr", "add", f"{OURS_IN6}/128", "dev", "lo", "nodad"])
    b.run(["ip", "addr", "add", f"{CHARON_IN6}/128", "dev", "lo", "nodad"])
    a.run(["ip", "-6", "route", "add", f"{CHARON_IN6}/128", "dev", "veth0", "src", OURS_IN6])
    b.run(["ip", "-6", "route", "add", f"{OURS_IN6}/128", "dev", "veth0", "src", CHARON_IN6])
    links = [
        Link("c4/charon4/ipv4", "c4", True, "transport", 4, b.addr4),
        Link("c6/charon6/ipv6", "c6", False, "tunnel", 6, CHARON_IN6),
    ]
    spd = spd_for(
        [
            OUR_PROPOSALS,
            f"peer charon4 {{ address {b.addr4}; id fqdn:{CHARON_ID}; }}",
            f"peer charon6 {{ address {b.addr6}; id fqdn:{CHARON_ID}; }}",
        ],
        [
            our_connection("c4", "charon4", "mode transport;"),
            our_connection(
                "c6",
                "charon6",
                f"tunnel; traffic from {OURS_IN6}/128 to {CHARON_IN6}/128;",
                "passive",
            ),
        ],
    )
    with Charon.started(
        b, tmp_path / "charon", plugins=LAB_PLUGINS, tuning=CHARON_TUNING
    ) as charon:
        charon.load(
            [
                charon_conn("c4", b.addr4, a.addr4, a.addr4, mode="transport"),
                charon_conn(
                    "c6",
                    b.addr6,
                    a.addr6,
                    a.addr6,
                    mode="tunnel",
                    local_ts=f"{CHARON_IN6}/128",
                    remote_ts=f"{OURS_IN6}/128",
                ),
            ]
        )
        peer = CharonPeer(charon)
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer) as ix:
            await asyncio.to_thread(peer.initiate, links[1])  # c6: charon initiates
            await ix.all_settled()
            print(f"[charon] both links up after {time.monotonic() - started:.1f} s")
            caps = [egress_capture(a), egress_capture(b)]
            flows = await ix.rekey_phase()
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "charon",
                ours,
                theirs,
                ix,
                flows.values(),
                dropped=sum(c.dropped or 0 for c in caps),
            )
            assert ix.figures["rekeys"] == {"child_rekeyed": 4, "ike_rekeyed": 4}, ix.figures
            t0 = time.monotonic()
            await ix.delete_phase()
            await ix.quick_ping()
            print(f"[charon] Delete phase {time.monotonic() - t0:.1f} s")
            await ix.dpd_phase()


@run_async(300)
async def test_initial_contact_spares_our_sas_with_other_identities(
    ns_pair: NsPair, tmp_path: Path
) -> None:
    """RFC 7296 2.4: INITIAL_CONTACT asserts that the new IKE SA is the only one
    "between the authenticated identities".  Our two links to charon share charon's
    identity but not ours (192.0.2.1 and fd00::1, docs/spd.md "peer": our identity is
    our address of the family).  With ``unique = keep`` charon sends INITIAL_CONTACT
    when it initiates c6 (it holds no IKE SA between charon.test and fd00::1); our c4
    IKE SA, between charon.test and 192.0.2.1, must stay up: charon keeps its side of
    it and has no reason to tell us anything."""
    a, b = ns_pair
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    a.run(["ip", "addr", "add", f"{OURS_IN6}/128", "dev", "lo", "nodad"])
    b.run(["ip", "addr", "add", f"{CHARON_IN6}/128", "dev", "lo", "nodad"])
    a.run(["ip", "-6", "route", "add", f"{CHARON_IN6}/128", "dev", "veth0", "src", OURS_IN6])
    b.run(["ip", "-6", "route", "add", f"{OURS_IN6}/128", "dev", "veth0", "src", CHARON_IN6])
    links = [
        Link("c4/charon4/ipv4", "c4", True, "transport", 4, b.addr4),
        Link("c6/charon6/ipv6", "c6", False, "tunnel", 6, CHARON_IN6),
    ]
    spd = spd_for(
        [OUR_PROPOSALS,
         f"peer charon4 {{ address {b.addr4}; id fqdn:{CHARON_ID}; }}",
         f"peer charon6 {{ address {b.addr6}; id fqdn:{CHARON_ID}; }}"],
        [our_connection("c4", "charon4", "mode transport;"),
         our_connection("c6", "charon6",
                        f"tunnel; traffic from {OURS_IN6}/128 to {CHARON_IN6}/128;", "passive")],
    )  # fmt: skip
    with Charon.started(b, tmp_path / "charon", plugins=LAB_PLUGINS,
                        tuning=CHARON_TUNING) as charon:  # fmt: skip
        c6 = charon_conn("c6", b.addr6, a.addr6, a.addr6, mode="tunnel",
                         local_ts=f"{CHARON_IN6}/128", remote_ts=f"{OURS_IN6}/128")  # fmt: skip
        charon.load([charon_conn("c4", b.addr4, a.addr4, a.addr4, mode="transport"),
                     replace(c6, unique="keep")])  # fmt: skip
        peer = CharonPeer(charon)
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer) as ix:
            before = await ix.settled(links[0])
            c4_sa = ix.conn(links[0]).sa
            mark = len(ix.events)
            await asyncio.to_thread(peer.initiate, links[1])
            sent = [line for line in charon.log_text().splitlines()
                    if "<c6|" in line and "generating IKE_AUTH request" in line]  # fmt: skip
            assert sent and "N(INIT_CONTACT)" in sent[0], f"no INITIAL_CONTACT from charon: {sent}"
            await asyncio.sleep(2)  # our agent handled c6's IKE_AUTH long ago
            dropped = [ev for s, ev in ix.events[mark:] if s is c4_sa]
            assert c4_sa is not None and c4_sa.state == IkeState.ESTABLISHED and not dropped, (
                f"charon's INITIAL_CONTACT for c6 (charon.test <-> {a.addr6}) made our agent "
                f"drop its c4 IKE SA (charon.test <-> {a.addr4}): {c4_sa!r}, events {dropped}"
            )
            assert (await ix.snapshot(links[0])) == before


# ---------------------------------------------------------------------------- NAT-T

OURS_IN4_NAT, CHARON_IN4_NAT = "203.0.113.1", "203.0.113.2"


@run_async(600)
async def test_agent_behind_nat_with_charon(
    lab: None, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    """We initiate from behind an nftables masquerade (random source ports): both ends
    detect the NAT (RFC 7296 2.23), IKE moves to port 4500 and ESP travels in UDP
    (RFC 3948); CHILD and IKE SA rekeys by each side with a ping running lose nothing."""
    with nat_topology("klab-") as t:
        ours_ns, charon_ns = t.inside, t.outside
        ours_ns.run(["ip", "addr", "add", f"{OURS_IN4_NAT}/32", "dev", "lo"])
        charon_ns.run(["ip", "addr", "add", f"{CHARON_IN4_NAT}/32", "dev", "lo"])
        ours_ns.run(
            ["ip", "route", "add", f"{CHARON_IN4_NAT}/32", "via", NAT_INSIDE, "src", OURS_IN4_NAT]
        )
        charon_ns.run(
            ["ip", "route", "add", f"{OURS_IN4_NAT}/32", "dev", "veth1", "src", CHARON_IN4_NAT]
        )
        link = Link("nat/charon/ipv4", "nat", True, "tunnel", 4, CHARON_IN4_NAT)
        spd = spd_for(
            [OUR_PROPOSALS, f"peer charon {{ address {OUTSIDE}; id fqdn:{CHARON_ID}; }}"],
            [
                our_connection(
                    "nat",
                    "charon",
                    f"tunnel; traffic from {OURS_IN4_NAT}/32 to {CHARON_IN4_NAT}/32;",
                )
            ],
        )
        with Charon.started(
            charon_ns, tmp_path / "charon", plugins=LAB_PLUGINS, tuning=CHARON_TUNING
        ) as charon:
            # charon sees us as the NAT's address; our identity is our own address
            charon.load(
                [
                    charon_conn(
                        "nat",
                        OUTSIDE,
                        "%any",
                        INSIDE,
                        mode="tunnel",
                        local_ts=f"{CHARON_IN4_NAT}/32",
                        remote_ts=f"{OURS_IN4_NAT}/32",
                    )
                ]
            )
            peer = CharonPeer(charon)
            async with agent(ours_ns, tmp_path, spd, (INSIDE,), [link], peer) as ix:
                snap = await ix.settled(link)
                sa = ix.conn(link).sa
                assert sa is not None and sa.nat_local and not sa.nat_remote, sa
                assert sa.local_addr[1] == 4500 and sa.remote_addr == (OUTSIDE, 4500), sa
                (csa,) = await asyncio.to_thread(peer._sas, link)
                assert csa.get("nat-remote") == "yes" and csa.get("remote-host") == NAT_OUTSIDE
                their_port = int(csa["remote-port"])
                print(
                    f"[charon NAT-T] up: charon sees us at {NAT_OUTSIDE}:{their_port}; "
                    f"CHILD SA {snap.child[0]:08x}/{snap.child[1]:08x} in UDP"
                )
                caps = [egress_capture(ours_ns, "veth0"), egress_capture(charon_ns, "veth1")]
                flows = await ix.rekey_phase()
                ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
                check_captures(
                    "charon NAT-T",
                    ours,
                    theirs,
                    ix,
                    flows.values(),
                    kind=PacketKind.ESP_IN_UDP,
                    dropped=sum(c.dropped or 0 for c in caps),
                )
                plain = [p for p in ours + theirs if p.kind is PacketKind.ESP]
                assert plain == [], f"plain ESP through the NAT: {plain[:3]}"
                assert {p.dport for p in ours if p.kind is PacketKind.ESP_IN_UDP} == {4500}
                assert {p.sport for p in ours if p.kind is PacketKind.ESP_IN_UDP} == {4500}
                assert ix.figures["rekeys"] == {"child_rekeyed": 2, "ike_rekeyed": 2}
