"""The IKE supervisor: turns the node's compiled IKE connections into live SAs.

For each connection it decides when to initiate, follows the engine's events, hands
the negotiated CHILD SAs to the kernel writer and keeps one IKE SA per connection
(docs/architecture.md "The agent's body"):

* **Who starts.**  ``start eager``: the node with the lower address initiates, and
  re-initiates with backoff after a failure; the other only answers, except right
  after the agent starts, when every node initiates to its eager peers (the peer may
  hold SAs of our previous life: our IKE_AUTH then carries INITIAL_CONTACT, RFC 7296
  2.4).  ``ondemand``: on the kernel's ACQUIRE for the connection's reqid.
  ``passive``: only answers.  Connections to peers outside the cluster are initiated
  by us unless passive.
* **One IKE SA per connection.**  Two SAs made by simultaneous initiation: the one
  whose initiator has the lower address stays; the other's initiator deletes it (both
  sides compute the same answer).  INITIAL_CONTACT from the peer discards our
  established SAs with its identity without an exchange (the peer forgot them).
* **Kernel.**  ``ChildSaEstablished``: inbound half now (before the answer leaves:
  the driver awaits this callback before sending), outbound half when active;
  ``ChildSaDeleted``: out now, in after a grace; an install failure closes the CHILD
  SA on both sides.  Kernel EXPIREs rekey (soft) or end (hard) the SA; MAPPING moves
  the peer (NAT rebinding).
* **Reload** (ipsecd(8)): a connection whose content changed has its SAs deleted and
  renegotiated; the others keep theirs until their lifetimes end.  Make-before-break:
  the changed connection's established SAs are kept (``retiring``) while this side
  negotiates the new one itself (whichever end usually initiates), and deleted once
  the new CHILD SA is in the kernel, so traffic keeps flowing through a policy change,
  a rolling one too (docs/architecture.md "Rollouts").  If the new one never comes up
  the old SAs carry on until their lifetimes end (the rollout gate sees the
  connection as not established); a connection that cannot run any more, or only
  answers (``passive``), has its SAs deleted at once.  The responder of such a
  renegotiation already has CHILD SAs for the connection: it installs the new one's
  outbound half only once the old ones go (the initiator deletes them as soon as it
  has installed the new one), at most :data:`DEFER_OUTBOUND` seconds later, so it
  never sends on an SA the initiator has not installed yet.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from ipsecd import spd, xfrm
from ipsecd.ike import IkeConfig, IkeSa
from ipsecd.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaOutboundActivated,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerAddressChanged,
)
from ipsecd.ike.pki import CertificateError
from ipsecd.ike.states import IkeState

from .ike_driver import IkeDriver, IkeDriverError
from .writer import KernelWriter

__all__ = ["Conn", "Supervisor"]

log = logging.getLogger("ipsecd.agent.ike")

#: Backoff between attempts of a connection we initiate (doubling, with jitter).
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
#: Two IKE SAs of one connection established within this many seconds of each other
#: are a simultaneous initiation, resolved by the address rule.
SIMULTANEOUS = 30.0
#: A responder's new CHILD SA beside the connection's existing ones sends only once
#: those go, or after this many seconds (see the module doc, "Reload").
DEFER_OUTBOUND = 2.0


@dataclass
class Conn:
    """One compiled IKE connection and what the supervisor knows of it."""

    ike: spd.IkeConnection
    config: IkeConfig | None
    problem: str | None
    digest: str
    reqid: int
    #: Its IKE SAs, in progress or established (normally one).
    sas: list[IkeSa] = field(default_factory=list, repr=False)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    established_at: float | None = None
    children: dict[int, ChildSaEstablished] = field(default_factory=dict, repr=False)
    rekeys: int = 0
    #: IKE SAs of the connection's previous content, kept until the new one is up.
    retiring: list[IkeSa] = field(default_factory=list, repr=False)
    #: inbound SPI -> since when: new CHILD SAs whose outbound half waits (responder)
    deferred: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.ike.name

    @property
    def sa(self) -> IkeSa | None:
        """The IKE SA that counts: the established one that stays, else an attempt."""
        up = [s for s in self.sas if s.state == IkeState.ESTABLISHED]
        if up:
            return keeper(self, up)
        live = [s for s in self.sas if s.state not in (IkeState.DELETED, IkeState.FAILED)]
        return live[0] if live else None

    @property
    def initiates(self) -> bool:
        """We are the side that (re)initiates this connection."""
        return self.ike.start != "passive" and (self.ike.initiator or self.ike.external)

    @property
    def state(self) -> str:
        if self.problem is not None:
            return "unusable"
        if self.sa is not None and self.sa.state == IkeState.ESTABLISHED:
            return "up" if self.children else "up (no CHILD SA)"
        if self.sa is not None:
            return "connecting"
        if self.ike.start == "passive" or (not self.initiates and self.ike.start == "eager"):
            return "waiting for peer"
        if self.ike.start == "ondemand":
            return "on demand"
        return "down"


class Supervisor:
    """See the module doc.  ``driver.on_events`` must be :meth:`on_events`."""

    def __init__(
        self,
        driver: IkeDriver,
        writer: KernelWriter,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.driver = driver
        self.writer = writer
        self.clock = clock
        self.rng = rng or random.Random()
        self.conns: dict[str, Conn] = {}
        self.defaults: spd.Defaults | None = None
        self.started_at = clock()
        #: Peer identities we have had an established IKE SA with since start.
        #: (our identity, the peer's) pairs with an IKE SA since start (INITIAL_CONTACT).
        self._known_peers: set[tuple[str, str]] = set()
        #: Peers we initiate to once after start (INITIAL_CONTACT), by connection name.
        self._startup: set[str] = set()
        self._first_update = True
        #: Set by shutdown(): nothing is initiated any more.
        self.stopping = False
        #: Counters for status and metrics.
        self.counters: dict[str, int] = {
            "ike_established": 0,
            "ike_failed": 0,
            "ike_rekeyed": 0,
            "child_established": 0,
            "child_rekeyed": 0,
            "child_failed": 0,
            "install_failed": 0,
        }

    # ------------------------------------------------------------------ policy
    def update(self, conns: Sequence[Conn], defaults: spd.Defaults) -> dict[str, list[str]]:
        """Take a new set of connections (a policy revision): keep the unchanged ones
        with their SAs, renegotiate the changed ones, drop the removed ones."""
        now = self.clock()
        self.defaults = defaults
        new = {c.name: c for c in conns}
        summary: dict[str, list[str]] = {"kept": [], "changed": [], "added": [], "removed": []}
        for name, gone in list(self.conns.items()):
            if name not in new:
                summary["removed"].append(name)
                self._close(gone, now, "the connection is no longer in the policy")
                del self.conns[name]
        for name, conn in new.items():
            old = self.conns.get(name)
            if old is None:
                summary["added"].append(name)
                self.conns[name] = conn
                if self._first_update and conn.ike.start == "eager" and conn.config is not None:
                    self._startup.add(name)
                continue
            if old.digest == conn.digest and old.reqid == conn.reqid:
                summary["kept"].append(name)
                old.ike, old.config, old.problem = conn.ike, conn.config, conn.problem
                continue
            summary["changed"].append(name)
            # ipsecd(8) reload: the SAs of a modified connection are deleted -- once the
            # renegotiated one is up (make-before-break, see the module doc)
            keep = [
                sa
                for sa in (*old.retiring, *old.sas)
                if sa.state == IkeState.ESTABLISHED and sa.children
            ]
            if keep and conn.config is not None and conn.ike.start != "passive":
                conn.retiring = keep
                for sa in old.sas:
                    if sa not in keep and sa.state not in (IkeState.DELETED, IkeState.FAILED):
                        sa.delete(now)
                self._startup.add(name)  # this side renegotiates now
                log.info(
                    "%s: changed: negotiating the new SAs before deleting %d old IKE SA(s)",
                    name,
                    len(keep),
                )
            else:
                self._close(old, now, "the connection changed")
            conn.next_attempt = now
            self.conns[name] = conn
        self._first_update = False
        self.driver.set_configs(c.config for c in self.conns.values() if c.config is not None)
        self.tick()
        return summary

    def _close(self, conn: Conn, now: float, why: str) -> None:
        for sa in (*conn.sas, *conn.retiring):
            if sa.state not in (IkeState.DELETED, IkeState.FAILED):
                log.info("%s: deleting %s: %s", conn.name, sa.name, why)
                sa.delete(now)
        conn.sas.clear()
        conn.retiring.clear()
        self.driver.nudge()

    async def _activate_deferred(self, conn: Conn) -> None:
        for spi in list(conn.deferred):
            await self.writer.activate_outbound(spi)
        conn.deferred.clear()

    async def settle(self) -> None:
        """Send on deferred CHILD SAs whose old ones outlived :data:`DEFER_OUTBOUND`
        (called with :meth:`tick`)."""
        now = self.clock()
        for conn in self.conns.values():
            if conn.deferred and min(conn.deferred.values()) + DEFER_OUTBOUND <= now:
                await self._activate_deferred(conn)

    def _retire(self, conn: Conn, now: float) -> None:
        """The renegotiated connection is up: delete the SAs of its old content."""
        for sa in conn.retiring:
            if sa.state not in (IkeState.DELETED, IkeState.FAILED):
                log.info("%s: new SAs up: deleting the old %s", conn.name, sa.name)
                sa.delete(now)
        conn.retiring.clear()
        self.driver.nudge()

    # ------------------------------------------------------------------ initiation
    def tick(self) -> None:
        """Start what should run: eager connections we initiate (with backoff)."""
        now = self.clock()
        if self.stopping:
            return
        for conn in self.conns.values():
            if conn.config is None or conn.sa is not None or now < conn.next_attempt:
                continue
            startup = conn.name in self._startup
            if conn.ike.start == "eager" and (conn.initiates or startup):
                self._initiate(conn, now)

    def acquire(self, reqid: int) -> None:
        """The kernel needs an SA for ``reqid`` (XFRM ACQUIRE): start its connection."""
        now = self.clock()
        if self.stopping:
            return
        for conn in self.conns.values():
            if (
                conn.reqid == reqid
                and conn.config is not None
                and conn.sa is None
                and conn.ike.start != "passive"
                and now >= conn.next_attempt
            ):
                log.info("%s: traffic needs it (ACQUIRE): initiating", conn.name)
                self._initiate(conn, now)

    def _initiate(self, conn: Conn, now: float) -> None:
        assert conn.config is not None
        self._startup.discard(conn.name)
        try:
            sa = self.driver.initiate(conn.config)
        except IkeDriverError as exc:
            conn.last_error = str(exc)
            self._backoff(conn, now)
            log.warning("%s: cannot initiate: %s", conn.name, exc)
            return
        sa.initial_contact_hook = self._initial_contact
        conn.sas.append(sa)
        conn.attempts += 1
        log.info("%s: initiating to %s", conn.name, conn.ike.remote_addr, extra=_fields(conn))

    def _initial_contact(self, sa: IkeSa) -> bool:
        """RFC 7296 2.4: only on our first IKE SA between the two identities since
        start, and only while no other SA between them exists."""
        pair = (str(sa.config.local_id), str(sa.config.remote_id))
        if pair in self._known_peers:
            return False
        others = [
            o
            for o in self.driver.sas
            if o is not sa
            and (str(o.config.local_id), str(o.config.remote_id)) == pair
            and o.state != IkeState.INITIAL
        ]
        return not others

    def _backoff(self, conn: Conn, now: float) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(conn.attempts, 10))
        conn.next_attempt = now + delay * (0.5 + self.rng.random() / 2)

    # ------------------------------------------------------------------ events
    async def on_events(self, batch: list[tuple[IkeSa, Event]]) -> None:
        """Every batch of engine events, in order (the driver awaits this before it
        sends the datagrams that go with them)."""
        for sa, ev in batch:
            try:
                await self._event(sa, ev)
            except Exception:
                log.exception("%s: handling %s failed", sa.config.name, type(ev).__name__)

    async def _event(self, sa: IkeSa, ev: Event) -> None:
        conn = self.conns.get(sa.config.name)
        now = self.clock()
        if isinstance(ev, ChildSaEstablished):
            await self._child_up(sa, conn, ev)
        elif isinstance(ev, ChildSaOutboundActivated):
            await self.writer.activate_outbound(ev.inbound_spi)
        elif isinstance(ev, ChildSaDeleted):
            if conn is not None and conn.deferred and ev.inbound_spi not in conn.deferred:
                await self._activate_deferred(conn)  # the new one sends before the old goes
            await self.writer.remove_child(ev.inbound_spi)
            if conn is not None:
                conn.deferred.pop(ev.inbound_spi, None)
                conn.children.pop(ev.inbound_spi, None)
                if ev.replaced:
                    conn.rekeys += 1
        elif isinstance(ev, IkeSaEstablished):
            self._ike_up(sa, conn, ev, now)
        elif isinstance(ev, IkeSaRekeyed):
            self.counters["ike_rekeyed"] += 1
            if conn is not None and any(s.spi_i == ev.old_spi_i for s in conn.retiring):
                conn.retiring = [s for s in conn.retiring if s.spi_i != ev.old_spi_i] + [sa]
            elif conn is not None:
                conn.sas = [s for s in conn.sas if s.spi_i != ev.old_spi_i] + [sa]
        elif isinstance(ev, (IkeSaDeleted, IkeSaFailed)):
            self._ike_down(sa, conn, ev, now)
        elif isinstance(ev, PeerAddressChanged):
            for child in sa.children:
                await self.writer.update_peer(child.inbound_spi, ev.new_addr)
        elif isinstance(ev, ChildSaFailed):
            self.counters["child_failed"] += 1
            if conn is not None:
                conn.last_error = ev.reason

    async def _child_up(self, sa: IkeSa, conn: Conn | None, ev: ChildSaEstablished) -> None:
        if conn is None:
            sa.child_install_failed(
                ev.inbound_spi, "its connection is no longer in the policy", self.clock()
            )
            self.driver.nudge()
            return
        mine = {child.inbound_spi for child in sa.children}
        defer = (  # a responder beside the connection's SAs of another IKE SA
            ev.outbound_active
            and ev.rekey_of is None
            and not sa.initiator
            and any(spi not in conn.deferred and spi not in mine for spi in conn.children)
        )
        try:
            await self.writer.install_child(
                replace(ev, outbound_active=False) if defer else ev, conn.reqid, self.defaults
            )
        except (xfrm.XfrmError, ValueError) as exc:
            self.counters["install_failed"] += 1
            conn.last_error = f"kernel refused the CHILD SA: {exc}"
            log.error("%s: %s", conn.name, conn.last_error, extra=_fields(conn))
            sa.child_install_failed(ev.inbound_spi, str(exc), self.clock())
            self.driver.nudge()
            return
        self.counters["child_established"] += 1
        if ev.rekey_of is not None:
            self.counters["child_rekeyed"] += 1
        if sa in conn.retiring:  # a rekey of an old SA: in the kernel, not the status
            return
        if defer:
            conn.deferred[ev.inbound_spi] = self.clock()
        conn.children[ev.inbound_spi] = ev
        if conn.retiring:
            self._retire(conn, self.clock())
        log.info(
            "%s: CHILD SA %08x/%08x installed (%s%s)",
            conn.name,
            ev.inbound_spi,
            ev.outbound_spi,
            ev.proposal,
            ", rekey" if ev.rekey_of is not None else "",
            extra=_fields(conn),
        )

    def _ike_up(self, sa: IkeSa, conn: Conn | None, ev: IkeSaEstablished, now: float) -> None:
        self.counters["ike_established"] += 1
        pair = (str(ev.local_id), str(ev.remote_id))
        if ev.initial_contact:
            # RFC 7296 2.4: the peer has no other IKE SA "between the authenticated
            # identities": ours between the same two identities are stale (one with
            # another identity of ours, e.g. our address of the other family, is not).
            # Only those up before this SA's IKE_SA_INIT: one that came up since was
            # made with the peer as it is now (both ends starting at once each send
            # INITIAL_CONTACT, and the SA the other side initiated must survive it)
            started = sa.created_at if sa.created_at is not None else now
            for other in self.driver.sas:
                if (
                    other is not sa
                    and other.state == IkeState.ESTABLISHED
                    and str(other.remote_id) == pair[1]
                    and str(other.config.local_id) == pair[0]
                    and (other.established_at is None or other.established_at < started)
                ):
                    other.discard("the peer restarted (INITIAL_CONTACT)", now)
                    self.driver.nudge()
        self._known_peers.add(pair)
        if conn is None:
            log.warning(
                "%s: IKE SA established for a connection no longer in the policy; deleting it",
                sa.config.name,
            )
            sa.delete(now)
            self.driver.nudge()
            return
        if sa not in conn.sas:
            conn.sas.append(sa)
        conn.attempts = 0
        conn.last_error = ""
        conn.established_at = now
        up = [s for s in conn.sas if s.state == IkeState.ESTABLISHED]
        if len(up) < 2:
            return
        keep = keeper(conn, up)
        for drop in up:
            # each side deletes only the redundant SAs it initiated: both sides apply
            # the same rule, so every loser is deleted once, by an exchange
            if drop is not keep and drop.initiator:
                log.info(
                    "%s: %d IKE SAs (simultaneous initiation): deleting %s",
                    conn.name,
                    len(up),
                    drop.name,
                )
                drop.delete(now)
                self.driver.nudge()

    def _ike_down(
        self, sa: IkeSa, conn: Conn | None, ev: IkeSaDeleted | IkeSaFailed, now: float
    ) -> None:
        if isinstance(ev, IkeSaFailed):
            self.counters["ike_failed"] += 1
        if conn is not None and sa in conn.retiring:
            conn.retiring.remove(sa)
            return
        if conn is None or sa not in conn.sas:
            return
        conn.sas.remove(sa)
        if conn.sa is not None or (isinstance(ev, IkeSaDeleted) and ev.rekeyed):
            return
        reason = (
            ev.reason
            if isinstance(ev, IkeSaFailed)
            else ("deleted by the peer" if ev.by_peer else "deleted")
        )
        conn.last_error = reason
        self._backoff(conn, now)
        log.info(
            "%s: IKE SA down (%s); next attempt in %.1f s",
            conn.name,
            reason,
            max(0.0, conn.next_attempt - now),
            extra=_fields(conn),
        )

    # ------------------------------------------------------------------ kernel events
    def kernel_event(self, ev: xfrm.XfrmEvent) -> None:
        """ACQUIRE, EXPIRE and MAPPING from the kernel (ipsecd.xfrm.XfrmListener)."""
        now = self.clock()
        if isinstance(ev, xfrm.AcquireRequested):
            for t in ev.policy.templates:
                self.acquire(t.reqid)
            return
        if isinstance(ev, xfrm.StateExpired):
            sa, spi = self._sa_of_spi(ev.state.spi)
            if sa is not None:
                sa.child_expired(spi, hard=ev.hard, now=now)
                self.driver.nudge()
            return
        if isinstance(ev, xfrm.MappingChanged):
            sa, _ = self._sa_of_spi(ev.sa.spi)
            if sa is not None:
                sa.update_remote_address((str(ev.new_src), ev.new_sport), now)
                self.driver.nudge()

    def _sa_of_spi(self, spi: int) -> tuple[IkeSa | None, int]:
        for sa in self.driver.sas:
            for child in sa.children:
                if spi in (child.inbound_spi, child.outbound_spi):
                    return sa, spi
        return None, spi

    # ------------------------------------------------------------------ shutdown, status
    def shutdown(self) -> None:
        """Delete every IKE SA (RFC 7296 1.4.1: an orderly stop tells the peers)."""
        now = self.clock()
        self.stopping = True
        for sa in self.driver.sas:
            sa.delete(now)
        self.driver.nudge()

    def recheck_peers(self) -> int:
        """After CA or CRL files changed: check every established peer's certificate
        again and delete the IKE SAs of those no longer valid (revoked, or their CA no
        longer trusted).  Returns how many were deleted."""
        now = self.clock()
        dropped = 0
        for sa in self.driver.sas:
            auth, trust = sa.peer_auth, sa.config.trust
            if sa.state != IkeState.ESTABLISHED or auth is None or trust is None:
                continue
            if auth.certificate is None:
                continue
            try:
                trust.store.validate(auth.certificate, auth.chain[1:], trust.clock())
            except CertificateError as exc:
                log.warning(
                    "%s: peer certificate %s no longer valid (%s: %s): deleting the IKE SA",
                    sa.name,
                    auth.subject,
                    exc.failure.value,
                    exc.message,
                )
                sa.delete(now)
                dropped += 1
        if dropped:
            self.driver.nudge()
        return dropped

    def status(self) -> list[dict[str, object]]:
        out = []
        for conn in sorted(self.conns.values(), key=lambda c: c.name):
            sa = conn.sa
            out.append(
                {
                    "name": conn.name,
                    "connection": conn.ike.connection,
                    "peer": conn.ike.peer,
                    "local": str(conn.ike.local_addr),
                    "remote": str(conn.ike.remote_addr),
                    "state": conn.state,
                    "start": conn.ike.start,
                    "initiator": conn.initiates,
                    "reqid": conn.reqid,
                    "ike_spis": f"{sa.spi_i.hex()}:{sa.spi_r.hex()}" if sa is not None else None,
                    "peer_auth": sa.peer_auth.method if sa and sa.peer_auth else None,
                    "peer_certificate": sa.peer_auth.subject if sa and sa.peer_auth else None,
                    "children": [
                        {
                            "in": f"{ev.inbound_spi:08x}",
                            "out": f"{ev.outbound_spi:08x}",
                            "proposal": ev.proposal,
                            "mode": ev.mode.value,
                            "protocol": ev.protocol.name.lower(),
                        }
                        for ev in conn.children.values()
                    ],
                    "rekeys": conn.rekeys,
                    "last_error": conn.problem or conn.last_error or None,
                }
            )
        return out


def _fields(conn: Conn) -> dict[str, str]:
    """Structured log fields of a connection (``--log-format json``)."""
    return {"connection": conn.ike.connection, "peer": conn.ike.peer, "ike_name": conn.name}


def keeper(conn: Conn, up: Sequence[IkeSa]) -> IkeSa:
    """Of a connection's established IKE SAs, the one that stays: the one initiated by
    the node with the lower address (both ends agree on it), the oldest among equals;
    with a peer outside the cluster, one the peer initiated."""
    if conn.ike.external:
        theirs = [s for s in up if not s.initiator]
        return theirs[0] if theirs else up[0]
    lower_is_us = conn.ike.initiator
    preferred = [s for s in up if s.initiator == lower_is_us]
    return preferred[0] if preferred else up[0]


def count_sas(conns: Iterable[Conn]) -> tuple[int, int]:
    """(established IKE SAs, installed CHILD SAs)."""
    ike = sum(1 for c in conns if c.sa is not None and c.sa.state == IkeState.ESTABLISHED)
    return ike, sum(len(c.children) for c in conns)
