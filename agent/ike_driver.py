"""asyncio adapter of the sans-I/O IKE endpoint (:class:`ipsecd.ike.IkeEndpoint`).

It only moves datagrams and time (docs/architecture.md "The agent's pieces"):

* UDP sockets on 500 and 4500 (IPv4, and IPv6 unless disabled) in the driver's
  network namespace, each with a per-socket *bypass* policy in both directions
  (RFC 4301 5.1: the key exchange must not need the SAs it negotiates); the 4500
  sockets are marked ``UDP_ENCAP_ESPINUDP`` so the kernel takes ESP-in-UDP (RFC 3948)
  and only IKE reaches us.  ``IP_PKTINFO`` gives each datagram's local address, and
  answers leave from it (the NAT detection hashes depend on it, RFC 7296 2.23).
* One worker task handles, in order, every received datagram, every timer and every
  nudge after the owner used an SA, in batches of what is queued (up to 64); after
  each batch it hands the endpoint's events to ``on_events`` and *awaits* it before
  sending the datagrams: the kernel then holds a new inbound SA before the answer
  that lets the peer use it leaves.
* Routing, admission and every IKE rule live in the endpoint; nothing here parses IKE.

Typical use::

    async with IkeDriver([config], netns="ns1") as drv:
        sa = drv.initiate("conn")
        ev = await drv.wait_for(ChildSaEstablished, timeout=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ipsecd import xfrm
from ipsecd.ike import EndpointLimits, IkeConfig, IkeEndpoint, IkeSa, lookup_by_address
from ipsecd.ike.events import ChildSaEstablished, Event
from ipsecd.xfrm.netns import run_in

__all__ = ["IKE_PORT", "NATT_PORT", "EventSink", "IkeDriver", "IkeDriverError"]

log = logging.getLogger("ipsecd.agent.ike")

IKE_PORT = 500  # RFC 7296 2
NATT_PORT = 4500  # RFC 7296 2.23, RFC 3948
# Linux socket options (not all exported by the socket module).
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
_MAX_DATAGRAM = 65535
_READ_BURST = 64
#: Datagrams waiting for the worker; more are dropped (a flood must not grow memory).
QUEUE_LIMIT = 4096

T = TypeVar("T")
Datagram = tuple[bytes, tuple[str, int], tuple[str, int]]
#: Queue item: look at the endpoint (timers, SAs used from outside) without a datagram.
_NUDGE = "nudge"
_STOP = "stop"
EventSink = Callable[[list[tuple[IkeSa, Event]]], Awaitable[None]]


class IkeDriverError(RuntimeError):
    """The driver could not do what was asked (socket, namespace, configuration)."""


def _bypass(sock: socket.socket) -> None:
    # RFC 4301 5.1 / KAME ipsec_set_policy "in bypass" and "out bypass"
    for direction in ("in", "out"):
        xfrm.set_socket_policy(sock, f"{direction} bypass")


#: Receive buffer of each IKE socket.  The worker reads what is queued in batches;
#: under an IKE_SA_INIT flood the default (208 KiB) overflowed between two batches
#: (bench_flood, docs/limits.md "IKE").  Memory is taken only as datagrams wait.
RECEIVE_BUFFER = 4 << 20
#: setsockopt beyond net.core.rmem_max (needs CAP_NET_ADMIN, which the agent has).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _open_udp(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _receive_buffer(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        _bypass(sock)
        if port == NATT_PORT:
            # RFC 3948: the kernel takes ESP-in-UDP off this socket, IKE stays ours.
            sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _pktinfo_dst(family: int, ancdata: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # in_pktinfo.ipi_addr
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            return socket.inet_ntop(socket.AF_INET6, data[:16])  # in6_pktinfo.ipi6_addr
    return None


def _pktinfo_src(family: int, local_ip: str) -> list[tuple[int, int, bytes]]:
    addr = ipaddress.ip_address(local_ip)
    if addr.is_unspecified:
        return []
    if family == socket.AF_INET:
        # struct in_pktinfo: ifindex, ipi_spec_dst (= source to use), ipi_addr
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, addr.packed, bytes(4)))]
    return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, addr.packed + struct.pack("=i", 0))]


class IkeDriver:
    """Runs an :class:`IkeEndpoint` over real UDP sockets in one network namespace.

    ``configs``: the connections (responders are matched by address,
    :func:`ipsecd.ike.lookup_by_address`); ``on_events``: an async callback given
    every batch of ``(sa, event)`` (without it, events queue for :meth:`wait_for`).
    """

    def __init__(
        self,
        configs: Iterable[IkeConfig] = (),
        *,
        netns: str | int | None = None,
        ipv6: bool = True,
        on_events: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        limits: EndpointLimits | None = None,
        bind_v4: str = "0.0.0.0",
        bind_v6: str = "::",
    ) -> None:
        self.netns = netns
        self.ipv6 = ipv6
        self.on_events = on_events
        self.clock = clock
        self._bind: dict[int, str] = {socket.AF_INET: bind_v4, socket.AF_INET6: bind_v6}
        self._configs: dict[str, IkeConfig] = {}
        self.endpoint = IkeEndpoint(lookup_by_address(()), limits=limits)
        self.set_configs(configs)
        self._socks: dict[tuple[int, int], socket.socket] = {}
        self._queue: asyncio.Queue[Datagram | str] = asyncio.Queue()
        self._events: asyncio.Queue[tuple[IkeSa, Event]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: Datagrams dropped because the worker's queue was full.
        self.overruns = 0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> IkeDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the sockets and start the worker."""
        if self._loop is not None:
            raise IkeDriverError("IkeDriver.start: already started")
        self._loop = asyncio.get_running_loop()
        families = [socket.AF_INET] + ([socket.AF_INET6] if self.ipv6 else [])
        try:
            for family in families:
                for port in (IKE_PORT, NATT_PORT):
                    self._open(family, port)
        except BaseException:
            self._close_sockets()
            raise
        self._worker = asyncio.create_task(self._work(), name="ike-worker")

    def _open(self, family: int, port: int) -> None:
        host = self._bind[family]
        try:
            sock = run_in(self.netns, functools.partial(_open_udp, family, host, port))
        except xfrm.XfrmError as exc:
            raise IkeDriverError(
                f"cannot set the IPsec bypass policy on the IKE socket [{host}]:{port} in "
                f"{self._where}: {exc}"
            ) from exc
        except OSError as exc:
            hint = (
                " (another IKE daemon already listens there)"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise IkeDriverError(
                f"cannot bind the IKE socket [{host}]:{port} in {self._where}: {exc.strerror}{hint}"
            ) from exc
        self._socks[(family, port)] = sock
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable, sock, family, port)

    async def close(self) -> None:
        """Stop the worker and close the sockets (SAs are not deleted: see the agent)."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._worker, 5)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._socks.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    @property
    def _where(self) -> str:
        return "the current network namespace" if self.netns is None else f"netns {self.netns!r}"

    # ------------------------------------------------------------------ configuration
    def set_configs(self, configs: Iterable[IkeConfig]) -> None:
        """Replace the connections responders choose from (SAs keep their config)."""
        every = list(configs)
        self._configs = {c.name: c for c in every}
        self.endpoint.lookup = lookup_by_address(every)

    @property
    def configs(self) -> dict[str, IkeConfig]:
        return dict(self._configs)

    @property
    def sas(self) -> list[IkeSa]:
        """The IKE SAs not yet in an end state."""
        return self.endpoint.sas

    # ------------------------------------------------------------------ actions
    def initiate(self, connection: str | IkeConfig, remote: str | None = None) -> IkeSa:
        """Start an IKE SA (and its first CHILD SA) as initiator."""
        if self._loop is None or self._closed:
            raise IkeDriverError("IkeDriver.initiate: the driver is not running (start it)")
        config = self._configs.get(connection) if isinstance(connection, str) else connection
        if config is None:
            raise IkeDriverError(
                f"IkeDriver.initiate: no connection named {connection!r}; "
                f"known: {', '.join(sorted(self._configs)) or 'none'}"
            )
        peer = remote or config.remote_address
        if peer is None:
            raise IkeDriverError(
                f"IkeDriver.initiate: connection {config.name!r} has no remote_address; "
                "pass remote="
            )
        local = config.local_address or self._route_source(peer)
        sa = self.endpoint.initiate(config, (local, IKE_PORT), (peer, IKE_PORT), self.clock())
        self.nudge()
        return sa

    def delete(self, sa: IkeSa) -> None:
        """Delete an IKE SA (INFORMATIONAL Delete, RFC 7296 1.4.1)."""
        sa.delete(self.clock())
        self.nudge()

    def nudge(self) -> None:
        """Have the worker collect what SAs produced after calls from outside."""
        if self._worker is not None and not self._closed:
            self._queue.put_nowait(_NUDGE)

    def _route_source(self, peer: str) -> str:
        family = socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET

        def probe() -> str:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((peer, IKE_PORT))
                return str(s.getsockname()[0])

        try:
            return run_in(self.netns, probe)
        except OSError as exc:
            raise IkeDriverError(
                f"no route to IKE peer {peer} in {self._where}: {exc.strerror}; "
                "set the connection's local_address or add a route"
            ) from exc

    # ------------------------------------------------------------------ events
    async def next_event(self, timeout: float = 10.0) -> tuple[IkeSa, Event]:
        """The next (sa, event) when no ``on_events`` is set; TimeoutError after ``timeout``."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def wait_for(
        self,
        kind: type[Any] | tuple[type[Any], ...],
        *,
        timeout: float = 10.0,
        where: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Wait for an event of ``kind`` (matching ``where``); events before it are
        dropped from the queue.  Raises TimeoutError naming what was seen instead."""
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _sa, ev = await asyncio.wait_for(
                    self._events.get(), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                raise TimeoutError(
                    f"no {getattr(kind, '__name__', kind)} within {timeout:g} s in {self._where}; "
                    f"events seen: {seen or 'none'}"
                ) from None
            if isinstance(ev, kind) and (where is None or where(ev)):
                return ev
            seen.append(type(ev).__name__ if isinstance(ev, ChildSaEstablished) else repr(ev))

    # ------------------------------------------------------------------ the worker
    def _on_readable(self, sock: socket.socket, family: int, port: int) -> None:
        for _ in range(_READ_BURST):
            try:
                data, anc, _flags, addr = sock.recvmsg(_MAX_DATAGRAM, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("IKE socket port %d: receive failed: %s", port, exc.strerror)
                return
            if self._queue.qsize() >= QUEUE_LIMIT:
                self.overruns += 1
                continue
            local_ip = _pktinfo_dst(family, anc) or self._bind[family]
            self._queue.put_nowait((data, (local_ip, port), (str(addr[0]), int(addr[1]))))

    async def _work(self) -> None:
        ep = self.endpoint
        queue = self._queue
        while True:
            item: Datagram | str
            if queue.empty():
                timer = ep.get_timer()
                wait = None if timer is None else max(0.0, timer - self.clock())
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    item = _NUDGE
            else:
                item = queue.get_nowait()
            # what is queued already is handled as one batch: timers, events and sends
            # once per batch, not per datagram (the events are still awaited before
            # any datagram of the batch leaves)
            batch = [item]
            while len(batch) < _READ_BURST and not queue.empty():
                batch.append(queue.get_nowait())
            now = self.clock()
            stop = False
            for it in batch:
                if it == _STOP:
                    stop = True
                    break
                if isinstance(it, str):
                    continue
                try:
                    ep.receive_datagram(it[0], it[1], it[2], now)
                except Exception:
                    # one datagram or one SA's bug must not stop every other SA
                    log.exception("IKE worker: unexpected error")
            try:
                ep.handle_timer(now)
                await self._flush(now)
            except Exception:
                log.exception("IKE worker: unexpected error")
            if stop:
                return

    async def _flush(self, now: float) -> None:
        self.endpoint.flush(now)
        batch = list(self.endpoint.events())
        if batch:
            if self.on_events is not None:
                await self.on_events(batch)
            else:
                for pair in batch:
                    self._events.put_nowait(pair)
        for data, local, dest in self.endpoint.datagrams_to_send(now):
            self._send(data, local, dest)

    def _send(self, datagram: bytes, local: tuple[str, int], dest: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(dest[0]).version == 6 else socket.AF_INET
        sock = self._socks.get((family, local[1]))
        if sock is None:
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            log.warning(
                "no %s IKE socket on port %d: datagram to %s:%d not sent", kind, local[1], *dest
            )
            return
        try:
            sock.sendmsg([datagram], _pktinfo_src(family, local[0]), 0, dest)
        except (BlockingIOError, InterruptedError):
            log.info("IKE socket busy: datagram to %s:%d dropped (retransmission covers it)", *dest)
        except OSError as exc:
            log.warning(
                "sending IKE datagram from %s:%d to %s:%d failed: %s",
                local[0],
                local[1],
                dest[0],
                dest[1],
                exc.strerror,
            )
