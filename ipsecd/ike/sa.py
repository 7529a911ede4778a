"""The IKE SA: the engine's outward API, its state, its timers, its one error boundary.

Sans-I/O (DESIGN.md convention 1): bytes and time go in, datagrams, one timer and
events come out; no socket, no clock, no kernel::

    sa = IkeSa(config, initiator=True, local_addr=("192.0.2.1", 500),
               remote_addr=("198.51.100.1", 500))
    sa.initiate(now)
    loop:
        for event in drain(sa.next_event):   # first: the kernel must hold an SA
            apply(event)                      #   before the answer that uses it leaves
        for data, addr in sa.datagrams_to_send(now):
            send(data, addr, from_=sa.local_addr)
        ... sa.receive_datagram(data, addr, now) / sa.handle_timer(now) at sa.get_timer()

Exchanges are tasks (:mod:`ipsecd.ike.tasks`): the SA queues them and runs one at a
time through its message window (:mod:`ipsecd.ike.window`); the answering half of
each exchange is a ``respond`` function of the same module.  States change only
through :meth:`IkeSa.trigger` and the tables of :mod:`ipsecd.ike.states`.

Errors (DESIGN.md convention 4): ``receive_datagram`` never raises on peer input.  A
:class:`~ipsecd.ike.errors.IkeProtocolError` raised while an authenticated request is
being handled becomes a NOTIFY answer (in IKE_SA_INIT only the codes RFC 7296 2.21.1
allows in clear); malformed or unauthenticated input is dropped and counted in
``peer_errors``; anything else is a bug, logged and counted in ``internal_errors``.
API misuse raises :class:`~ipsecd.ike.errors.IkeLocalError`.

An SA in an end state still answers retransmissions of the last request it answered
(RFC 7296 2.1) from its response cache; the owner drops it after a while
(:class:`ipsecd.ike.endpoint.IkeEndpoint` does).  No key, nonce or PSK is ever logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Self

from . import codec, fragments
from . import crypto as ikecrypto
from .child import ChildSa, ChildSpec, IkeContext, derive_child
from .codec import Message, NotifyPayload, Payload
from .config import ChildConfig, Identity, IkeConfig, Proposal, Role
from .constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId, TransformType
from .errors import (
    IkeIntegrityError,
    IkeLocalError,
    IkeParseError,
    IkePeerError,
    IkeProtocolError,
)
from .events import (
    ChildSaEstablished,
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerAddressChanged,
)
from .negotiate import (
    NATT_PORT,
    NON_ESP_MARKER,
    ZERO_SPI,
    Addr,
    exchange_name,
    fmt_addr,
    notify_name,
    one,
    strip_marker,
    suite,
    wire_proposals,
)
from .protect import SaKeys
from .states import END_STATES, REQUESTS, ChildState, ChildTrigger, IkeState, IkeTrigger, next_state
from .tasks import child_create, ike_auth, ike_init, ike_rekey, informational
from .tasks.base import Task
from .tasks.ike_init import InitData

if TYPE_CHECKING:
    from .auth import PeerAuth
from .window import RequestKind, RequestWindow, ResponseCache

__all__ = ["ConfigLookup", "IkeSa", "SpiAllocator", "lookup_by_address"]

log = logging.getLogger("ipsecd.ike")

ConfigLookup = Callable[[str, str], Sequence[IkeConfig]]
#: ``allocator(protocol) -> inbound SPI`` for new CHILD SAs (see ``IkeSa``).
SpiAllocator = Callable[[ProtocolId], int]

NATT_KEEPALIVE = b"\xff"  # RFC 3948 2.3
#: Codes an IKE_SA_INIT responder may answer in clear (RFC 7296 2.21.1; INVALID_SYNTAX
#: goes only into an encrypted answer, 3.10.1).
_CLEAR_ERRORS = frozenset(
    {
        NotifyType.NO_PROPOSAL_CHOSEN,
        NotifyType.INVALID_KE_PAYLOAD,
        NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
        NotifyType.INVALID_MAJOR_VERSION,
    }
)
#: A TEMPORARY_FAILURE answer is retried after this many seconds, minus up to
#: RETRY_JITTER at random (RFC 7296 2.25: "retry later").
RETRY_DELAY = 10.0
RETRY_JITTER = 5.0


def lookup_by_address(configs: Sequence[IkeConfig]) -> ConfigLookup:
    """A config lookup over a fixed list: the connections that may respond and whose
    ``local_address``/``remote_address`` (``None`` = any) match, in list order."""
    items = tuple(configs)

    def same(a: str | None, b: str) -> bool:
        if a is None:
            return True
        try:
            return ipaddress.ip_address(a) == ipaddress.ip_address(b)
        except ValueError:
            return False

    def lookup(local_ip: str, remote_ip: str) -> Sequence[IkeConfig]:
        return [
            c
            for c in items
            if c.role != Role.INITIATOR
            and same(c.local_address, local_ip)
            and same(c.remote_address, remote_ip)
        ]

    return lookup


class IkeSa:
    """One IKE SA with one peer, in either role.  See the module documentation."""

    def __init__(
        self,
        config: IkeConfig,
        *,
        initiator: bool,
        local_addr: tuple[str, int],
        remote_addr: tuple[str, int],
        rng: random.Random | None = None,
        spi_allocator: SpiAllocator | None = None,
    ) -> None:
        """``rng`` makes SPIs, nonces and jitter reproducible (tests only; by default
        they come from ``os.urandom``; DH keys and IVs always come from OpenSSL /
        ``os.urandom``).  ``spi_allocator(protocol)`` returns the inbound SPI for a new
        CHILD SA (e.g. the kernel's XFRM ALLOCSPI); by default a random SPI >= 256."""
        for label, addr in (("local_addr", local_addr), ("remote_addr", remote_addr)):
            try:
                ipaddress.ip_address(addr[0])
            except (ValueError, TypeError, IndexError) as exc:
                raise IkeLocalError(f"IkeSa: {label} {addr!r} is not (IP address, port)") from exc
            if not 0 < int(addr[1]) < 65536:
                raise IkeLocalError(f"IkeSa: {label} port {addr[1]!r} is not in 1..65535")
        self.config = config
        #: True when we are the original initiator of this IKE SA (RFC 7296 2.2).
        self.initiator = initiator
        self.local_addr: Addr = (str(local_addr[0]), int(local_addr[1]))
        self.remote_addr: Addr = (str(remote_addr[0]), int(remote_addr[1]))
        self._rng = rng
        self._spi_allocator = spi_allocator
        self.state = IkeState.INITIAL
        self.spi_i: bytes = self.random_spi() if initiator else ZERO_SPI
        self.spi_r: bytes = ZERO_SPI
        #: NAT detection (RFC 7296 2.23): we are / the peer is behind a NAT.
        self.nat_local = False
        self.nat_remote = False
        #: The peer's authenticated identity once established.
        self.remote_id: Identity | None = None
        #: The peer sent INITIAL_CONTACT in IKE_AUTH (RFC 7296 2.4).
        self.peer_initial_contact = False
        #: The hashes the peer announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4),
        #: None when it sent none; whether it sent a CERTREQ (RFC 7296 3.7); how it
        #: authenticated (set once IKE_AUTH checked it; kept by IKE SA rekeys).
        self.peer_hashes: frozenset[int] | None = None
        self.peer_certreq = False
        self.peer_auth: PeerAuth | None = None
        #: The peer offered IKE fragmentation in IKE_SA_INIT (RFC 7383 2.3); see
        #: ``fragmentation``.
        self.peer_fragmentation = False
        #: The peer's fragmented messages being reassembled (RFC 7383 2.6).
        self.reassembly = fragments.Reassembly(config.retransmit.give_up_after())
        #: Peer input dropped (malformed, unauthenticated, out of window).
        self.peer_errors = 0
        #: Unexpected errors swallowed at the receive boundary (a bug if ever non-zero;
        #: the fuzz tests assert it stays 0).
        self.internal_errors = 0
        #: When the SA reached an end state (its owner forgets it a while later).
        self.ended_at: float | None = None
        #: Created to be deleted at once (the loser of an IKE rekey collision): no
        #: events, it only sends its Delete.
        self.quiet = False
        self._events: deque[Event] = deque()
        self._outbox: list[tuple[bytes, Addr]] = []
        self._window = RequestWindow(config.retransmit)
        self._cache = ResponseCache()
        self._queue: deque[Task] = deque()
        self._deferred: list[tuple[float, Task]] = []
        self.candidates: list[IkeConfig] = [config]
        self.init = InitData()
        self.ike_choice: Proposal | None = None
        self.keys: SaKeys | None = None
        self._children: dict[int, ChildSa] = {}
        self._half_open_deadline: float | None = None
        self._rekey_at: float | None = None
        self._expire_at: float | None = None
        #: Deadline of a REKEYED SA waiting for the peer's Delete.
        self._replaced_deadline: float | None = None
        #: Last authenticated message from the peer (dead peer detection) and last send.
        self._last_heard: float | None = None
        self._last_sent: float | None = None
        #: The request being handled, while a protocol error in it may be answered.
        self._answering: tuple[Message, bytes, Addr] | None = None
        #: Our outstanding IKE SA rekey, and the SA a colliding peer rekey made
        #: (RFC 7296 2.8.2).
        self.rekey_task: ike_rekey.IkeRekey | None = None
        self.rekey_collision: IkeSa | None = None
        #: IKE SAs this one made by rekeying, for the owner to file (take_successors).
        self._successors: list[IkeSa] = []
        #: Called when the SA has something new for its owner (datagrams, events, a
        #: timer) after a call from outside: the endpoint collects it then.
        self.wakeup: Callable[[IkeSa], None] | None = None
        #: Asked when IKE_AUTH is built whether to send INITIAL_CONTACT (RFC 7296 2.4:
        #: only when no other IKE SA with the peer exists); None: ``config.initial_contact``.
        self.initial_contact_hook: Callable[[IkeSa], bool] | None = None
        #: When this SA object was made (by the owner's clock), for its owner; when it
        #: became ESTABLISHED (the engine's clock, the same one).
        self.created_at: float | None = None
        self.established_at: float | None = None

    # ------------------------------------------------------------------ properties
    @property
    def nat_detected(self) -> bool:
        """True when a NAT was detected on either side (or encapsulation forced)."""
        return self.nat_local or self.nat_remote

    @property
    def local_spi(self) -> bytes:
        """The IKE SPI we chose: what a driver files this SA under.  Zero for a
        responder before it answered."""
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state == IkeState.ESTABLISHED

    @property
    def fragmentation(self) -> bool:
        """IKE fragmentation is in use: both sides offered it (RFC 7383 2.3)."""
        return self.config.fragmentation and self.peer_fragmentation

    @property
    def children(self) -> tuple[ChildSa, ...]:
        return tuple(c for c in self._children.values() if c.alive)

    @property
    def child_sas(self) -> tuple[ChildSaEstablished, ...]:
        """The live CHILD SAs, as their establishment events."""
        return tuple(c.event for c in self.children)

    @property
    def name(self) -> str:
        return f"IKE SA {self.config.name} {self.spi_i.hex()}:{self.spi_r.hex()}"

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (
            f"<IkeSa {self.config.name!r} {role} {self.spi_i.hex()}:{self.spi_r.hex()} "
            f"{self.state.name}>"
        )

    # ------------------------------------------------------------------ creation
    @classmethod
    def accept(
        cls,
        lookup: ConfigLookup,
        data: bytes,
        local_addr: tuple[str, int],
        remote_addr: tuple[str, int],
        now: float,
        *,
        rng: random.Random | None = None,
        spi_allocator: SpiAllocator | None = None,
    ) -> Self | None:
        """Create a responder from a datagram that should be an IKE_SA_INIT request.

        Returns None (and logs why) when the datagram is not a new IKE_SA_INIT request or
        no connection is configured for the address pair.  Otherwise the returned SA has
        processed the request: its answer (possibly an error notification, after which
        the SA is already in an end state) waits in ``datagrams_to_send``."""
        payload, _ = strip_marker(bytes(data))
        try:
            hdr = codec.parse_header(payload)
        except IkeProtocolError as exc:
            log.info("dropped datagram from %s: %s", fmt_addr(remote_addr), exc)
            return None
        if (
            hdr.exchange_type != ExchangeType.IKE_SA_INIT
            or hdr.flags & HeaderFlag.RESPONSE
            or not hdr.flags & HeaderFlag.INITIATOR
            or hdr.message_id != 0
            or hdr.spi_r != ZERO_SPI
            or hdr.spi_i == ZERO_SPI
        ):
            log.info(
                "dropped datagram from %s: not an initial IKE_SA_INIT request",
                fmt_addr(remote_addr),
            )
            return None
        candidates = list(lookup(local_addr[0], remote_addr[0]))
        if not candidates:
            log.info(
                "no connection configured for %s -> %s: IKE_SA_INIT dropped",
                fmt_addr(remote_addr),
                fmt_addr(local_addr),
            )
            return None
        sa = cls(
            candidates[0],
            initiator=False,
            local_addr=local_addr,
            remote_addr=remote_addr,
            rng=rng,
            spi_allocator=spi_allocator,
        )
        sa.candidates = candidates
        sa.spi_i = hdr.spi_i
        sa.receive_datagram(data, remote_addr, now)
        if sa.state == IkeState.INITIAL:
            return None  # dropped (logged by receive_datagram)
        return sa

    def initiate(self, now: float) -> None:
        """Initiator: start IKE_SA_INIT and IKE_AUTH (RFC 7296 1.2)."""
        if not self.initiator:
            raise IkeLocalError("IkeSa.initiate: this SA is a responder (use IkeSa.accept)")
        if self.state != IkeState.INITIAL or self._queue:
            raise IkeLocalError(f"IkeSa.initiate: already started (state {self.state.name})")
        if self.config.role == Role.RESPONDER:
            raise IkeLocalError(
                f"IkeSa.initiate: connection {self.config.name!r} has role RESPONDER; "
                "set role INITIATOR or EITHER to initiate it"
            )
        first = self.config.ike_proposals[0].of_type(TransformType.DH)[0]
        self.init.dh_group = first.id
        self.init.nonce_i = self.random_bytes(self.config.nonce_length)
        self.init.offer = wire_proposals(self.config.ike_proposals, ProtocolId.IKE, b"")
        self._queue.extend((ike_init.IkeInit(), ike_auth.IkeAuth()))
        self._kick(now)

    # ------------------------------------------------------------------ driver API
    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Handle one received UDP payload from ``addr``.  Never raises on peer input."""
        src = (str(addr[0]), int(addr[1]))
        if self.state in END_STATES:
            self._answer_from_cache(bytes(data), src)
            return
        try:
            self._receive(bytes(data), src, now)
        except IkeIntegrityError as exc:
            # RFC 7296 2.21.2: a message that fails its integrity check is dropped
            self.peer_errors += 1
            log.info("%s: dropped message from %s: %s", self.name, fmt_addr(src), exc)
        except IkeProtocolError as exc:
            if self._answering is None:
                self.peer_errors += 1
                log.info("%s: dropped message from %s: %s", self.name, fmt_addr(src), exc)
            else:
                try:
                    self._answer_error(exc, now)
                except Exception as inner:  # never raise on peer input
                    self.internal_errors += 1
                    log.error("%s: internal error answering %s: %r", self.name, exc, inner)
        except IkePeerError as exc:
            self.peer_errors += 1
            log.info("%s: dropped message from %s: %s", self.name, fmt_addr(src), exc)
        except IkeLocalError as exc:
            self.internal_errors += 1
            log.error("%s: internal error on message from %s: %s", self.name, fmt_addr(src), exc)
        except Exception as exc:  # the engine never raises on peer input
            self.internal_errors += 1
            log.error(
                "%s: internal error on message from %s: %s: %s",
                self.name,
                fmt_addr(src),
                type(exc).__name__,
                exc,
            )
        finally:
            self._answering = None
        self._kick(now)

    def handle_timer(self, now: float) -> None:
        """Retransmit, give up, rekey, expire, check liveness: whatever is due."""
        if self.state in END_STATES:
            return
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self.fail(
                f"no IKE_AUTH request within {self.config.half_open_timeout:g} s "
                "of IKE_SA_INIT (half-open SA expired)",
                None,
                unauthenticated=True,
            )
            return
        for partial in self.reassembly.expire(now):
            log.info(
                "%s: discarded message %d: %d of %d fragments after %g s",
                self.name,
                partial.message_id,
                len(partial.chunks),
                partial.total,
                now - partial.started,
            )
        due = self._window.due(now)
        if isinstance(due, tuple):
            req = self._window.outstanding
            assert req is not None
            log.debug(
                "%s: retransmit %d of %s request %d",
                self.name,
                req.sends - 1,
                exchange_name(req.exchange),
                req.message_id,
            )
            self._send_datagrams(due, now)
        elif due is not None:
            self._window.done()
            task = due.task
            assert isinstance(task, Task)
            why = (
                f"no answer to the {task.label} request ({exchange_name(due.exchange)} "
                f"{due.message_id}) after {due.sends - 1} retransmissions"
            )
            log.info("%s: %s", self.name, why)
            task.give_up(self, now, why)
            if self.state in END_STATES:
                return
        deadline = self._replaced_deadline
        if self.state == IkeState.REKEYED and deadline is not None and now >= deadline:
            log.info("%s: the peer never deleted this rekeyed IKE SA; deleting it", self.name)
            self._replaced_deadline = None
            self.delete(now)
        if self.state == IkeState.ESTABLISHED:
            self._established_timers(now)
        self._kick(now)

    def _established_timers(self, now: float) -> None:
        if self._expire_at is not None and now >= self._expire_at:
            log.info(
                "%s: IKE SA lifetime of %g s reached, deleting", self.name, self.config.ike_lifetime
            )
            self._expire_at = None
            self.delete(now)
            return
        if self._rekey_at is not None and now >= self._rekey_at:
            self._rekey_at = None
            self.rekey_ike(now)
        for child in list(self._children.values()):
            if not child.alive or child.state == ChildState.DELETING:
                continue
            if now >= child.expire_at:
                self._child_hard_expiry(child, now)
            elif child.rekey_at is not None and now >= child.rekey_at:
                child.rekey_at = None
                if child.state == ChildState.INSTALLED:
                    self._queue.append(child_create.ChildCreate(child.config, rekey=child))
        ready = [t for t in self._deferred if t[0] <= now]
        if ready:
            self._deferred = [t for t in self._deferred if t[0] > now]
            self._queue.extend(task for _, task in ready)
        dpd = self._dpd_due()
        if dpd is not None and now >= dpd:
            log.debug(
                "%s: nothing heard for %g s, checking liveness",
                self.name,
                now - (self._last_heard or now),
            )
            self._last_heard = now
            self._queue.append(informational.Liveness())
        keepalive = self._keepalive_due()
        if keepalive is not None and now >= keepalive:
            # RFC 3948 2.3: one 0xFF octet keeps the NAT mapping of port 4500 open
            self._outbox.append((NATT_KEEPALIVE, self.remote_addr))
            self._last_sent = now

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        """Datagrams to send now, as (UDP payload, destination); send them from
        ``local_addr``."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The time at which ``handle_timer`` must next be called, or None."""
        if self.state in END_STATES:
            return None
        times: list[float] = []
        for t in (self._window.timer(), self._half_open_deadline, self.reassembly.deadline()):
            if t is not None:
                times.append(t)
        if self.state == IkeState.REKEYED and self._replaced_deadline is not None:
            times.append(self._replaced_deadline)
        if self.state == IkeState.ESTABLISHED:
            for t in (self._rekey_at, self._expire_at, self._dpd_due(), self._keepalive_due()):
                if t is not None:
                    times.append(t)
            for child in self._children.values():
                # a DELETING child waits for the answer to its Delete (the window's
                # timer): its hard lifetime no longer calls for anything
                if child.alive and child.state != ChildState.DELETING:
                    times.append(child.expire_at)
                    if child.rekey_at is not None:
                        times.append(child.rekey_at)
            times += [t for t, _ in self._deferred]
        return min(times) if times else None

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def take_successors(self) -> list[IkeSa]:
        """IKE SAs made by rekeying this one since the last call (file them too)."""
        out, self._successors = self._successors, []
        return out

    # ------------------------------------------------------------------ requests from the owner
    def delete(self, now: float) -> None:
        """Delete the IKE SA: INFORMATIONAL with a Delete payload (RFC 7296 1.4.1); its
        CHILD SAs go with it.  Before the SA is established it is just abandoned."""
        if self.state in END_STATES or self.state == IkeState.EXPECT_DELETE_RESPONSE:
            return
        if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            log.info("%s: abandoning IKE SA before it was established", self.name)
            self._window.done()
            self.end(IkeTrigger.ABANDONED, by_peer=False, reason="deleted locally")
            return
        # Window of one (RFC 7296 2.3): the Delete goes first, after a pending request.
        for task in self._queue:
            task.abort(self, "IKE SA deleted")
        self._queue.clear()
        self._deferred.clear()
        self._queue.append(informational.IkeDelete())
        self._kick(now)

    def close_child(self, spi: int, now: float) -> None:
        """Delete the CHILD SA whose inbound SPI is ``spi`` (RFC 7296 1.4.1)."""
        if self.state != IkeState.ESTABLISHED:
            raise IkeLocalError(f"IkeSa.close_child: IKE SA is {self.state.name}, not ESTABLISHED")
        child = self._children.get(spi)
        if child is None or not child.alive:
            raise IkeLocalError(f"IkeSa.close_child: no CHILD SA with inbound SPI {spi:#010x}")
        if child.state == ChildState.DELETING:
            return
        self._queue.append(informational.ChildDelete(child))
        self._kick(now)

    def discard(self, reason: str, now: float) -> None:
        """Forget the SA without telling the peer (it no longer knows it: RFC 7296 2.4
        INITIAL_CONTACT); its CHILD SAs are reported deleted."""
        if self.state in END_STATES:
            return
        log.info("%s: discarded: %s", self.name, reason)
        self._window.done()
        if self.state in (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.EXPECT_DELETE_RESPONSE):
            self.end(IkeTrigger.DELETED, by_peer=True, reason=reason)
        else:
            self.end(IkeTrigger.ABANDONED, by_peer=True, reason=reason)
        self._kick(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request (RFC 7296 1.4); no answer after the
        retransmissions fails the SA."""
        if self.state != IkeState.ESTABLISHED:
            raise IkeLocalError(
                f"IkeSa.check_liveness: IKE SA is {self.state.name}, not ESTABLISHED"
            )
        self._queue.append(informational.Liveness())
        self._kick(now)

    def rekey_child(self, spi: int, now: float) -> bool:
        """Rekey the CHILD SA with inbound SPI ``spi`` now (e.g. the kernel's soft
        EXPIRE on bytes); False when it is not rekeyable (gone, being replaced)."""
        child = self._children.get(spi)
        if self.state != IkeState.ESTABLISHED or child is None:
            return False
        if child.state != ChildState.INSTALLED or any(
            isinstance(t, child_create.ChildCreate) and t.old is child for t in self._queue
        ):
            return False
        child.rekey_at = None
        self._queue.append(child_create.ChildCreate(child.config, rekey=child))
        self._kick(now)
        return True

    def rekey_ike(self, now: float) -> bool:
        """Rekey this IKE SA (RFC 7296 2.18); False when it is not established or a
        rekey is already under way."""
        if self.state != IkeState.ESTABLISHED or self.rekey_task is not None:
            return False
        if any(isinstance(t, ike_rekey.IkeRekey) for t in self._queue):
            return False
        self._rekey_at = None
        self._queue.append(ike_rekey.IkeRekey())
        self._kick(now)
        return True

    def create_child(self, config: ChildConfig, now: float) -> None:
        """Negotiate one more CHILD SA with CREATE_CHILD_SA (RFC 7296 1.3.1)."""
        if self.state != IkeState.ESTABLISHED:
            raise IkeLocalError(f"IkeSa.create_child: IKE SA is {self.state.name}, not ESTABLISHED")
        self._queue.append(child_create.ChildCreate(config))
        self._kick(now)

    def child_install_failed(self, spi: int, reason: str, now: float) -> None:
        """The kernel refused the CHILD SA: delete it on both sides (RFC 7296 1.4.1)
        and report it failed; traffic falls back to whatever else protects it."""
        child = self._children.get(spi)
        if child is None or not child.alive:
            return
        log.error(
            "%s: CHILD SA %08x could not be installed: %s; deleting it", self.name, spi, reason
        )
        self.emit(
            ChildSaFailed(
                f"kernel install failed: {reason}",
                None,
                connection=self.config.name,
                child=child.config.name,
            )
        )
        if self.state == IkeState.ESTABLISHED and child.state != ChildState.DELETING:
            self._queue.append(informational.ChildDelete(child))
        self._kick(now)

    def child_expired(self, spi: int, *, hard: bool, now: float) -> None:
        """The kernel reports a soft (rekey now) or hard (gone) lifetime for the CHILD SA
        with inbound or outbound SPI ``spi`` (XFRM_MSG_EXPIRE)."""
        child = self._children.get(spi) or next(
            (c for c in self._children.values() if c.outbound_spi == spi), None
        )
        if child is None or not child.alive:
            return
        if hard:
            self._child_hard_expiry(child, now)
            self._kick(now)
        else:
            self.rekey_child(child.inbound_spi, now)

    def peer_alive(self, now: float) -> None:
        """The owner saw traffic from the peer (e.g. inbound ESP counters grew): no
        liveness check is needed yet (RFC 7296 2.4)."""
        if self._last_heard is not None:
            self._last_heard = max(self._last_heard, now)

    def update_remote_address(self, addr: tuple[str, int], now: float) -> None:
        """The kernel saw the peer's ESP-in-UDP come from ``addr`` (XFRM MAPPING): a NAT
        rebinding.  Follow it (RFC 7296 2.23) and confirm with a liveness check."""
        new = (str(addr[0]), int(addr[1]))
        if self.state != IkeState.ESTABLISHED or new == self.remote_addr or not self.nat_remote:
            return
        self._move_peer(new)
        self.check_liveness(now)

    # ------------------------------------------------------------------ for tasks
    def trigger(self, what: IkeTrigger) -> None:
        """Change state through the table (the one place states change)."""
        old = self.state
        new = next_state(old, what)
        self.state = new
        if new in END_STATES:
            self.reassembly.clear()
            self._half_open_deadline = None
            self._window.done()
            for task in self._queue:
                task.abort(self, f"IKE SA {new.value}")
            self._queue.clear()
            self._deferred.clear()
        if new != old:
            log.info("%s: %s -> %s", self.name, old.name, new.name)

    def random_bytes(self, n: int) -> bytes:
        if self._rng is not None:
            return self._rng.randbytes(n)
        return os.urandom(n)

    def random(self) -> float:
        return self._rng.random() if self._rng is not None else random.random()

    def random_spi(self) -> bytes:
        while True:
            spi = self.random_bytes(8)
            if spi[:4] != b"\x00\x00\x00\x00":
                return spi

    def alloc_child_spi(self, protocol: ProtocolId) -> int | None:
        """Our inbound SPI for a new CHILD SA, or None (logged) if the allocator fails."""
        if self._spi_allocator is None:
            while True:
                spi = int.from_bytes(self.random_bytes(4), "big")
                # RFC 4303 2.1: 1..255 are reserved; never reuse a live one
                if spi >= 256 and spi not in self._children:
                    return spi
        try:
            spi = int(self._spi_allocator(protocol))
        except Exception as exc:
            log.error("%s: spi_allocator failed: %s: %s", self.name, type(exc).__name__, exc)
            return None
        if not 256 <= spi < 2**32 or spi in self._children:
            log.error(
                "%s: spi_allocator returned %#x: a CHILD SA SPI is 256..2**32-1 and unused",
                self.name,
                spi,
            )
            return None
        return spi

    def derive_keys(self, shared: bytes) -> None:
        """IKE SA keys after IKE_SA_INIT (RFC 7296 2.13, 2.14)."""
        assert self.ike_choice is not None
        keys = ikecrypto.derive_ike_keys(
            suite(self.ike_choice),
            shared,
            self.init.nonce_i,
            self.init.nonce_r,
            self.spi_i,
            self.spi_r,
        )
        self.keys = SaKeys.of(keys, initiator=self.initiator)

    def ike_context(self) -> IkeContext:
        assert self.keys is not None
        return IkeContext(
            self.config.name,
            self.spi_i,
            self.spi_r,
            self.initiator,
            self.keys.prf_id,
            self.keys.sk_d,
            self.local_addr,
            self.remote_addr,
            self.nat_detected,
        )

    def add_child(self, spec: ChildSpec, now: float) -> ChildSa:
        """Record a new CHILD SA and announce it (ChildSaEstablished)."""
        child = derive_child(self.ike_context(), spec, now, self.random)
        self._children[child.inbound_spi] = child
        self.emit(child.event)
        return child

    def find_child_by_outbound(self, protocol: int, spi: int) -> ChildSa | None:
        return next(
            (
                c
                for c in self._children.values()
                if c.alive and c.outbound_spi == spi and c.protocol == protocol
            ),
            None,
        )

    def child_gone(self, child: ChildSa, *, by_peer: bool, reason: str) -> None:
        """A CHILD SA is deleted: announce it, forget it."""
        if not child.alive:
            return
        event = child.deleted_event(by_peer, reason)
        child.trigger(ChildTrigger.DELETED, self.name)
        self._children.pop(child.inbound_spi, None)
        self.emit(event)

    def start_half_open(self, now: float) -> None:
        self._half_open_deadline = now + self.config.half_open_timeout

    def mark_established(self, now: float) -> None:
        """IKE_AUTH succeeded: announce it, start the lifetime timers."""
        self._half_open_deadline = None
        self.established_at = now
        self.trigger(IkeTrigger.AUTHENTICATED)
        self._start_timers(now)
        self.emit(self._established_event())
        self.init = InitData()  # IKE_SA_INIT material is not needed any more
        if self.initiator:  # the responder only answers (no duplicate CHILD SAs)
            for extra in self.config.extra_children:
                self._queue.append(child_create.ChildCreate(extra))

    def _start_timers(self, now: float) -> None:
        cfg = self.config
        self._rekey_at = now + cfg.ike_soft_lifetime * (1.0 - cfg.jitter * self.random())
        self._expire_at = now + cfg.ike_lifetime
        self._last_heard = now
        self._last_sent = now

    def requeue_first(self, task: Task) -> None:
        self._queue.appendleft(task)

    def queue(self, task: Task, *, first: bool = False) -> None:
        if first:
            self._queue.appendleft(task)
        else:
            self._queue.append(task)

    def defer(self, task: Task, now: float) -> None:
        """Run ``task`` again later (RFC 7296 2.25: TEMPORARY_FAILURE)."""
        when = now + RETRY_DELAY - RETRY_JITTER * self.random()
        log.info("%s: %s retried in %.1f s", self.name, task.label, when - now)
        self._deferred.append((when, task))

    def send_notice(self, payloads: list[Payload], now: float) -> None:
        """An INFORMATIONAL request whose answer is not awaited (RFC 7296 2.21.2:
        AUTHENTICATION_FAILED after a bad IKE_AUTH answer, just before we give up)."""
        mid = self._window.allocate()
        self._send_datagrams(self.protect_datagrams(ExchangeType.INFORMATIONAL, mid, payloads), now)

    def window_done(self) -> None:
        self._window.done()

    def window_final(self) -> None:
        """Give up on the outstanding request after one more retransmission."""
        req = self._window.outstanding
        if req is not None and req.grace is None:
            req.grace = 1

    @property
    def outstanding_task(self) -> Task | None:
        req = self._window.outstanding
        return req.task if req is not None and isinstance(req.task, Task) else None

    def respond_raw(self, raw: bytes, request: bytes, addr: Addr) -> None:
        """Send an answer and remember it for retransmissions (RFC 7296 2.1); the
        answer goes to the address and port the request came from (2.11)."""
        self.respond_datagrams((self._frame(raw),), request, addr)

    def respond_datagrams(self, datagrams: tuple[bytes, ...], request: bytes, addr: Addr) -> None:
        """:meth:`respond_raw` for framed datagrams (all the fragments of one answer:
        a retransmitted request gets them all again, RFC 7383 2.6.1)."""
        self._cache.store(request, datagrams)
        self._outbox.extend((d, addr) for d in datagrams)

    def protect(
        self, exchange: int, message_id: int, response: bool, inner: Sequence[Payload]
    ) -> bytes:
        assert self.keys is not None
        return self.keys.seal(self._header(exchange, message_id, response), inner)

    def protect_datagrams(
        self, exchange: int, message_id: int, inner: Sequence[Payload], *, response: bool = False
    ) -> tuple[bytes, ...]:
        """The framed datagrams of a protected message: one, or its SKF fragments when
        fragmentation is in use and the whole would exceed ``fragment_size`` (RFC 7383
        2.5; the IP and UDP headers and the non-ESP marker count, as in strongSwan)."""
        assert self.keys is not None
        header = self._header(exchange, message_id, response)
        framed = self._frame(self.keys.seal(header, inner))
        if not self.fragmentation:
            return (framed,)
        room = self.config.fragment_size - fragments.ip_udp_overhead(self.remote_addr[0])
        if len(framed) <= room:
            return (framed,)
        room -= len(self._frame(b""))  # the non-ESP marker on port 4500
        parts = tuple(self._frame(p) for p in self.keys.seal_fragments(header, inner, room))
        log.debug(
            "%s: %s %s %d (%d bytes) sent in %d fragments",
            self.name,
            exchange_name(exchange),
            "response" if response else "request",
            message_id,
            len(framed),
            len(parts),
        )
        return parts

    def fail(self, reason: str, notify: int | None, *, unauthenticated: bool = False) -> None:
        """End the SA as FAILED.  ``unauthenticated``: the failure is about a responder
        nobody has authenticated to yet (an IKE_SA_INIT request refused, a half-open SA
        that timed out): anyone can cause it at will, so it is logged at info, not
        warning (docs/limits.md "IKE": the log volume of a flood)."""
        if self.state in END_STATES:
            return
        log.log(
            logging.INFO if unauthenticated else logging.WARNING,
            "%s: failed: %s",
            self.name,
            reason,
        )
        self._drop_children(by_peer=False, reason=f"IKE SA failed: {reason}")
        self.trigger(IkeTrigger.FAILED)
        self.emit(IkeSaFailed(reason, notify, connection=self.config.name))

    def end(self, how: IkeTrigger, *, by_peer: bool, reason: str) -> None:
        """DELETED (by us, by the peer, or abandoned before it was up)."""
        if self.state in END_STATES:
            return
        rekeyed = self._was_replaced
        self._drop_children(by_peer=by_peer, reason=reason)
        self.trigger(how)
        self.emit(
            IkeSaDeleted(
                self.spi_i, self.spi_r, by_peer, connection=self.config.name, rekeyed=rekeyed
            )
        )

    _was_replaced = False

    def spawn_rekeyed(
        self,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        choice: Proposal,
        nonce_i: bytes,
        nonce_r: bytes,
        shared: bytes,
        now: float,
    ) -> IkeSa:
        """The IKE SA a rekey exchange made (RFC 7296 2.18): new SPIs and keys
        (SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)), everything else inherited.
        It has no CHILD SAs until :meth:`replace_with` moves them."""
        assert self.keys is not None
        new = IkeSa(
            self.config,
            initiator=initiator,
            local_addr=self.local_addr,
            remote_addr=self.remote_addr,
            rng=self._rng,
            spi_allocator=self._spi_allocator,
        )
        new.spi_i, new.spi_r = spi_i, spi_r
        new.candidates = [self.config]
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.remote_id = self.remote_id
        new.peer_auth = self.peer_auth
        new.peer_hashes = self.peer_hashes
        new.peer_fragmentation = self.peer_fragmentation  # as strongSwan's inherit_post
        new.ike_choice = choice
        keys = ikecrypto.derive_rekeyed_ike_keys(
            self.keys.prf_id, self.keys.sk_d, suite(choice), shared, nonce_i, nonce_r, spi_i, spi_r
        )
        new.keys = SaKeys.of(keys, initiator=initiator)
        new.trigger(IkeTrigger.CREATED_BY_REKEY)
        new._start_timers(now)
        new.rekey_nonces = (nonce_i, nonce_r)
        self._successors.append(new)
        return new

    rekey_nonces: tuple[bytes, bytes] = (b"", b"")

    def replace_with(self, new: IkeSa, now: float) -> None:
        """Move our CHILD SAs (and queued CHILD tasks) to ``new`` and wait for this SA's
        deletion (RFC 7296 2.18)."""
        for child in self._children.values():
            if child.alive:
                new._children[child.inbound_spi] = child
        self._children.clear()
        moved = [t for t in self._queue if not isinstance(t, informational.IkeDelete)]
        self._queue = deque(t for t in self._queue if isinstance(t, informational.IkeDelete))
        new._queue.extend(moved)
        new._deferred.extend(self._deferred)
        self._deferred.clear()
        self._was_replaced = True
        self.trigger(IkeTrigger.REPLACED)
        self._replaced_deadline = now + self.config.retransmit.give_up_after()
        log.info("%s: rekeyed, CHILD SAs moved to %s", self.name, new.name)
        new.emit(
            IkeSaRekeyed(self.spi_i, self.spi_r, new.spi_i, new.spi_r, connection=self.config.name)
        )
        new._kick(now)

    # ------------------------------------------------------------------ internals
    def emit(self, event: Event) -> None:
        if not self.quiet:
            self._events.append(event)

    def _drop_children(self, *, by_peer: bool, reason: str) -> None:
        for child in list(self._children.values()):
            self.child_gone(child, by_peer=by_peer, reason=reason)
        self._children.clear()

    def _child_hard_expiry(self, child: ChildSa, now: float) -> None:
        """A CHILD SA reached its hard lifetime without a replacement in time: delete
        it (RFC 7296 2.8) and start a fresh one, unless it had been replaced.  One being
        deleted already is left to its Delete exchange."""
        if child.state == ChildState.DELETING:
            return
        log.warning(
            "%s: CHILD SA %08x/%08x reached its hard lifetime",
            self.name,
            child.inbound_spi,
            child.outbound_spi,
        )
        replaced = child.replaced_by is not None
        self._queue.appendleft(informational.ChildDelete(child))
        if not replaced:
            self._queue.append(child_create.ChildCreate(child.config))

    def _dpd_due(self) -> float | None:
        """When an idle established SA checks its peer's liveness (RFC 7296 2.4)."""
        interval = self.config.dpd_interval
        if interval is None or self._last_heard is None or self._window.busy or self._queue:
            return None
        return self._last_heard + interval

    def _keepalive_due(self) -> float | None:
        interval = self.config.nat_keepalive
        if interval is None or not self.nat_local or self._last_sent is None:
            return None
        return self._last_sent + interval

    def _established_event(self) -> IkeSaEstablished:
        assert self.ike_choice is not None and self.remote_id is not None
        encr = one(self.ike_choice, TransformType.ENCR)
        integ = one(self.ike_choice, TransformType.INTEG)
        prf = one(self.ike_choice, TransformType.PRF)
        log.info(
            "%s: established with %s at %s (%s)",
            self.name,
            self.remote_id,
            fmt_addr(self.remote_addr),
            self.ike_choice,
        )
        dh = one(self.ike_choice, TransformType.DH)
        return IkeSaEstablished(
            connection=self.config.name,
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            initiator=self.initiator,
            local_id=self.config.local_id,
            remote_id=self.remote_id,
            local_addr=self.local_addr,
            remote_addr=self.remote_addr,
            encryption=str(encr),
            integrity=str(integ) if integ is not None and integ.id != 0 else None,
            prf=str(prf),
            dh_group=dh.id if dh is not None else 0,
            nat_local=self.nat_local,
            nat_remote=self.nat_remote,
            lifetime=self.config.ike_lifetime,
            initial_contact=self.peer_initial_contact,
            peer_auth=self.peer_auth.method if self.peer_auth else "",
            peer_certificate=self.peer_auth.subject if self.peer_auth else "",
        )

    def _frame(self, message: bytes) -> bytes:
        # RFC 7296 2.23 / RFC 3948 2.2: IKE on port 4500 carries the non-ESP marker
        return NON_ESP_MARKER + message if self.local_addr[1] == NATT_PORT else message

    def _header(self, exchange: int, message_id: int, response: bool) -> Message:
        flags = HeaderFlag.NONE
        if self.initiator:
            flags |= HeaderFlag.INITIATOR
        if response:
            flags |= HeaderFlag.RESPONSE
        return Message(self.spi_i, self.spi_r, exchange, int(flags), message_id)

    def _send_datagrams(self, datagrams: Sequence[bytes], now: float) -> None:
        self._outbox.extend((d, self.remote_addr) for d in datagrams)
        self._last_sent = now

    def _kick(self, now: float) -> None:
        """Start queued tasks while the window is free (RFC 7296 2.3); tell the owner."""
        self._start_tasks(now)
        if self.wakeup is not None:
            self.wakeup(self)

    def _start_tasks(self, now: float) -> None:
        while not self._window.busy and self._queue and self.state not in END_STATES:
            task = self._queue[0]
            if not task.ready(self):
                if self.state in (
                    IkeState.INITIAL,
                    IkeState.EXPECT_SA_INIT_RESPONSE,
                    IkeState.EXPECT_AUTH_REQUEST,
                    IkeState.EXPECT_AUTH_RESPONSE,
                ):
                    return  # waits for the SA to come up
                self._queue.popleft()
                task.abort(self, f"IKE SA is {self.state.name}")
                continue
            self._queue.popleft()
            payloads = task.build(self, now)
            if payloads is None:
                continue
            self._send_request(task, payloads, now)

    def _send_request(self, task: Task, payloads: list[Payload], now: float) -> None:
        exchange = task.exchange
        if exchange == ExchangeType.IKE_SA_INIT:
            self._window.next_id = 0  # a retry of IKE_SA_INIT is message 0 again
            mid = self._window.allocate()
            raw = codec.build_message(
                Message(
                    self.spi_i, ZERO_SPI, exchange, int(HeaderFlag.INITIATOR), mid, tuple(payloads)
                )
            )
            self.init.request = raw
            framed: tuple[bytes, ...] = (self._frame(raw),)
        else:
            mid = self._window.allocate()
            framed = self.protect_datagrams(exchange, mid, payloads)
        self._window.send(mid, exchange, framed, task, now)
        self._send_datagrams(framed, now)

    def _answer_from_cache(self, data: bytes, addr: Addr) -> None:
        """End state: answer only a retransmission of the last request we answered."""
        payload, _ = strip_marker(data)
        try:
            hdr = codec.parse_header(payload)
        except IkeProtocolError:
            return
        if hdr.flags & HeaderFlag.RESPONSE or hdr.spi_i != self.spi_i:
            return
        if self._cache.classify(hdr.message_id, payload) == RequestKind.RETRANSMISSION:
            self._outbox.extend((d, addr) for d in self._cache.responses)

    def _receive(self, data: bytes, addr: Addr, now: float) -> None:
        payload, via_natt = strip_marker(data)
        try:
            msg = codec.parse_message(payload)
        except IkeProtocolError as exc:
            if isinstance(exc, IkeParseError) or self.state != IkeState.INITIAL:
                raise
            # An unknown critical payload or another major version in the first
            # request: RFC 7296 2.5 / 1.5 answer it (in clear, nothing kept).
            hdr = codec.parse_header(payload)
            self._answering = (
                Message(hdr.spi_i, hdr.spi_r, hdr.exchange_type, hdr.flags, hdr.message_id),
                payload,
                addr,
            )
            raise
        if msg.spi_i != self.spi_i:
            raise IkePeerError(f"SPIi {msg.spi_i.hex()} is not this SA's")
        # RFC 7296 3.1: the I flag tells who sent it
        if msg.is_initiator == self.initiator:
            raise IkePeerError("I flag says the message comes from our own role")
        if msg.is_response:
            self._on_response(msg, payload, addr, now)
        else:
            self._on_request(msg, payload, addr, via_natt, now)

    def _on_request(
        self, msg: Message, data: bytes, addr: Addr, via_natt: bool, now: float
    ) -> None:
        skf = msg.skf
        if (
            skf is not None
            and skf.fragment_number != 1
            and self.fragmentation
            and msg.message_id == self._cache.expected - 1
        ):
            # RFC 7383 2.6.1: a retransmitted fragmented request gets its answer again
            # on fragment 1 only; its other fragments are ignored
            return
        kind = self._cache.classify(msg.message_id, data)
        if kind == RequestKind.RETRANSMISSION:
            log.debug(
                "%s: retransmitted request %d, resending the answer", self.name, msg.message_id
            )
            self._outbox.extend((d, addr) for d in self._cache.responses)
            return
        if kind == RequestKind.CONFLICTING:
            raise IkePeerError(f"request {msg.message_id} differs from the one already answered")
        if kind == RequestKind.OUT_OF_WINDOW:
            raise IkePeerError(
                f"request message ID {msg.message_id}, expected {self._cache.expected}"
            )
        exchange = msg.exchange_type
        if msg.spi_r != self.spi_r and not (
            exchange == ExchangeType.IKE_SA_INIT and msg.spi_r == ZERO_SPI
        ):
            raise IkePeerError(f"SPIr {msg.spi_r.hex()} is not this SA's")
        if exchange == ExchangeType.IKE_SA_INIT:
            if self.initiator or self.state != IkeState.INITIAL:
                raise IkePeerError("unexpected IKE_SA_INIT request")
            self._answering = (msg, data, addr)
            ike_init.respond(self, msg, data, addr, via_natt, now)
            return
        if self.keys is None:
            raise IkePeerError(f"{exchange_name(exchange)} request before IKE_SA_INIT completed")
        try:
            opened = self._open(msg, data, now)
        except IkeParseError:
            self._answering = (msg, data, addr)  # authentic, but its padding is wrong
            raise
        if opened is None:
            return  # a fragment; the message is not complete yet
        # a reassembled request is filed (response cache) under its fragment 1
        first, plaintext, data = opened
        # From here the request is authentic: a protocol error in it is answered.
        self._answering = (msg, data, addr)
        self._last_heard = now
        inner = self.keys.parse(first, plaintext)
        if exchange not in REQUESTS[self.state]:
            if exchange in (
                ExchangeType.IKE_AUTH,
                ExchangeType.CREATE_CHILD_SA,
                ExchangeType.INFORMATIONAL,
            ):
                raise IkePeerError(
                    f"unexpected {exchange_name(exchange)} request in state {self.state.name}"
                )
            # RFC 7296 3.10.1: an authenticated message we cannot handle: INVALID_SYNTAX
            raise IkeProtocolError(
                f"unsupported exchange type {exchange}", notify=NotifyType.INVALID_SYNTAX
            )
        self._note_peer_address(addr, via_natt)
        if exchange == ExchangeType.IKE_AUTH:
            reply = ike_auth.respond(self, msg, inner, addr, via_natt, now)
        else:
            if exchange == ExchangeType.CREATE_CHILD_SA:
                reply = child_create.respond(self, inner, now)
            else:
                reply = informational.respond(self, inner, now)
        if reply is not None:
            answer = self.protect_datagrams(exchange, msg.message_id, reply, response=True)
            self.respond_datagrams(answer, data, addr)
        if exchange == ExchangeType.INFORMATIONAL:
            informational.after_answer(self, inner, now)

    def _on_response(self, msg: Message, data: bytes, addr: Addr, now: float) -> None:
        if self.reassembly.completed(msg):
            # RFC 7383 2.6: the rest of a resent answer we already reassembled
            log.debug("%s: late fragment of response %d ignored", self.name, msg.message_id)
            return
        if not self._window.matches(msg.message_id, msg.exchange_type):
            raise IkePeerError(
                f"response {msg.message_id} ({exchange_name(msg.exchange_type)}) matches no "
                "outstanding request"
            )
        task = self.outstanding_task
        assert task is not None
        if msg.exchange_type == ExchangeType.IKE_SA_INIT:
            assert isinstance(task, ike_init.IkeInit)
            task.process_init(self, msg, data, addr, now)
            return
        if msg.spi_r != self.spi_r:
            raise IkePeerError(f"SPIr {msg.spi_r.hex()} is not this SA's")
        assert self.keys is not None
        try:
            opened = self._open(msg, data, now)
            if opened is None:
                return  # a fragment; the answer is not complete yet
            inner = self.keys.parse(opened[0], opened[1])
        except IkeProtocolError as exc:
            # authentic but malformed (a parse error comes only after the integrity
            # check): the peer will resend the same bytes, it will not get better
            self._window.done()
            self.fail(
                f"malformed answer to our {task.label} request: {exc}", NotifyType.INVALID_SYNTAX
            )
            return
        self._last_heard = now
        self._window.done()
        task.process(self, inner, now)

    def _open(self, msg: Message, data: bytes, now: float) -> tuple[int, bytes, bytes] | None:
        """Step 1 of :mod:`.protect` for the expected message: (first inner payload
        type, plaintext, the datagram it is filed under), or None while its fragments
        are being collected (RFC 7383 2.6: each checked before it is kept)."""
        assert self.keys is not None
        if msg.skf is not None and self.fragmentation:
            limit = (
                fragments.MAX_REASSEMBLED_HALF_OPEN
                if self.state == IkeState.EXPECT_AUTH_REQUEST
                else fragments.MAX_REASSEMBLED
            )
            whole = self.reassembly.receive(msg, data, self.keys, now, limit=limit)
            if whole is None:
                return None
            return whole.first_payload, whole.plaintext, whole.first_datagram
        # an SKF payload without fragmentation negotiated is refused here (RFC 7383 2.3)
        first, plaintext = self.keys.authenticate(data, msg)
        return first, plaintext, data

    def _note_peer_address(self, addr: Addr, via_natt: bool) -> None:
        """RFC 7296 2.23: behind a NAT, follow the peer's address of the last
        authenticated request; a marker means the peer talks to our port 4500."""
        if via_natt and self.local_addr[1] != NATT_PORT:
            self.local_addr = (self.local_addr[0], NATT_PORT)
        if addr != self.remote_addr and (self.nat_remote or via_natt):
            self._move_peer(addr)

    def _move_peer(self, addr: Addr) -> None:
        log.info("%s: peer moved %s -> %s", self.name, fmt_addr(self.remote_addr), fmt_addr(addr))
        old = self.remote_addr
        self.remote_addr = addr
        if self.state == IkeState.ESTABLISHED:
            self.emit(PeerAddressChanged(old, addr, connection=self.config.name))

    def _answer_error(self, exc: IkeProtocolError, now: float) -> None:
        """The one place a peer's protocol error becomes a NOTIFY (RFC 7296 2.21)."""
        assert self._answering is not None
        msg, data, addr = self._answering
        self._answering = None
        name = notify_name(exc.notify)
        if msg.exchange_type == ExchangeType.IKE_SA_INIT:
            if exc.notify in _CLEAR_ERRORS:
                # anyone can send an IKE_SA_INIT request: info, not warning (see fail)
                log.info("%s: answering %s: %s", self.name, name, exc.message)
                reply = codec.build_message(
                    Message(
                        msg.spi_i,
                        ZERO_SPI,
                        ExchangeType.IKE_SA_INIT,
                        int(HeaderFlag.RESPONSE),
                        0,
                        (NotifyPayload(exc.notify, exc.data),),
                    )
                )
                self._outbox.append((self._frame(reply), addr))
            else:
                # RFC 7296 3.10.1: INVALID_SYNTAX only inside an encrypted answer
                self.peer_errors += 1
                log.info(
                    "%s: dropped IKE_SA_INIT request from %s: %s",
                    self.name,
                    fmt_addr(addr),
                    exc.message,
                )
            if exc.notify == NotifyType.INVALID_KE_PAYLOAD:
                self.trigger(IkeTrigger.FAILED)  # no failure: the retry is a new SA
                return
            self.fail(
                f"IKE_SA_INIT request refused: {exc.message}",
                int(exc.notify),
                unauthenticated=True,
            )
            return
        log.warning(
            "%s: answering %s to %s request %d: %s",
            self.name,
            name,
            exchange_name(msg.exchange_type),
            msg.message_id,
            exc.message,
        )
        answer = self.protect_datagrams(
            msg.exchange_type, msg.message_id, [NotifyPayload(exc.notify, exc.data)], response=True
        )
        self.respond_datagrams(answer, data, addr)
        if msg.exchange_type == ExchangeType.IKE_AUTH and self.state != IkeState.ESTABLISHED:
            self.fail(f"IKE_AUTH request refused: {exc.message}", int(exc.notify))
