"""asyncio driver of the sans-I/O IKE engine (:mod:`ipsecd.ike.engine`).

The engine owns no socket, clock or kernel state; this driver owns them for every IKE
SA of one network namespace:

* UDP sockets on port 500 and 4500 (IPv4, and IPv6 unless disabled), bound to the
  wildcard address in the driver's namespace.  Each socket carries a per-socket
  *bypass* policy in both directions (:func:`ipsecd.xfrm.set_socket_policy`), so IKE
  keeps flowing whatever the SPD and the host default policy say (RFC 4301 5.1: the
  key exchange must not need the SAs it negotiates).  The 4500 sockets are marked
  ``UDP_ENCAP_ESPINUDP`` so the kernel decapsulates ESP-in-UDP (RFC 3948) itself and
  only IKE (after the 4-byte non-ESP marker) reaches us.
* Demultiplexing: a datagram goes to the IKE SA whose SPI we chose — the responder
  SPI when the sender is the original initiator (I flag set), the initiator SPI
  otherwise (RFC 7296 2.6, 3.1); a new IKE_SA_INIT request (responder SPI zero) goes
  to the half-open SA of the same (peer address, initiator SPI) if there is one
  (a retransmission), else to :meth:`IkeSa.accept` with the configured connections.
  The destination address of each datagram (``IP_PKTINFO``) is the SA's local address,
  and replies leave from it, so NAT detection hashes (RFC 7296 2.23) are right.
* One timer task for all SAs, driven by their ``get_timer()`` (a heap, lazily
  invalidated).
* Events: every engine event goes to ``on_event(sa, event)`` (if given) and to the
  queue read by :meth:`IkeDriver.next_event` / :meth:`IkeDriver.wait_for`.  With
  ``install=True`` a :class:`~ipsecd.ike.events.ChildSaEstablished` is installed in the
  kernel (two states and the policies of its selectors, :class:`XfrmInstaller`) and then
  :class:`ChildSaInstalled` (or :class:`ChildSaInstallFailed`) follows;
  :class:`~ipsecd.ike.events.ChildSaDeleted` removes them again.  With ``install=False``
  (handshake-only, e.g. against a peer using userspace ESP) the kernel is not touched
  apart from the sockets' bypass policies.

Typical use::

    async with IkeDriver([config], netns="ns1", install=True) as drv:
        drv.initiate("peer")
        ev = await drv.wait_for(ChildSaInstalled, timeout=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import ipaddress
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ipsecd import xfrm
from ipsecd.ike.config import IkeConfig, Mode, TrafficSelector
from ipsecd.ike.constants import ProtocolId
from ipsecd.ike.engine import IkeSa, lookup_by_address, route_datagram
from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, Event
from ipsecd.ike.states import END_STATES
from ipsecd.xfrm.netns import run_in

__all__ = [
    "IKE_PORT",
    "NATT_PORT",
    "ChildSaInstallFailed",
    "ChildSaInstalled",
    "DriverEvent",
    "IkeDriver",
    "IkeDriverError",
    "InstalledChild",
    "XfrmInstaller",
    "child_sa_to_xfrm",
]

log = logging.getLogger("ipsecd.agent.ike")

IKE_PORT = 500  # RFC 7296 2
NATT_PORT = 4500  # RFC 7296 2.23, RFC 3948
NON_ESP_MARKER = b"\0\0\0\0"  # RFC 3948 2.2
NATT_KEEPALIVE = b"\xff"  # RFC 3948 2.3
IKE_HEADER_LEN = 28  # RFC 7296 3.1
ZERO_SPI = bytes(8)

# Linux socket options (not all exported by the socket module).
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
_MAX_DATAGRAM = 65535
_READ_BURST = 64

T = TypeVar("T")


class IkeDriverError(RuntimeError):
    """The driver could not do what was asked (socket, namespace, configuration)."""


@dataclass(frozen=True, slots=True)
class ChildSaInstalled:
    """The states and policies of a CHILD SA are in the kernel (``install=True``)."""

    #: Connection name.
    connection: str
    #: SPIs in host order: peer → us, us → peer.
    inbound_spi: int
    outbound_spi: int
    #: The reqid tying the states to the policies' templates.
    reqid: int
    #: How many policies were installed (out, in, and fwd for tunnel mode, per
    #: selector pair).
    policies: int


@dataclass(frozen=True, slots=True)
class ChildSaInstallFailed:
    """Installing a CHILD SA failed; the IKE SA stays up, traffic is not protected."""

    connection: str
    inbound_spi: int
    outbound_spi: int
    #: What went wrong, with the XFRM error (never key material).
    reason: str


DriverEvent = Event | ChildSaInstalled | ChildSaInstallFailed
EventCallback = Callable[[IkeSa | None, DriverEvent], None]


# ===================================================================== XFRM mapping


@dataclass(frozen=True, slots=True)
class InstalledChild:
    """What was installed for one CHILD SA, to remove it again."""

    connection: str
    states: tuple[xfrm.State, ...] = field(repr=False)
    policies: tuple[xfrm.Policy, ...]
    reqid: int


def _ts_networks(ts: TrafficSelector) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    # An address range that is not one prefix becomes several (XFRM selectors are
    # prefixes, RFC 7296 3.13.1 selectors are ranges).
    return list(ipaddress.summarize_address_range(ts.start, ts.end))


def _ts_port(ts: TrafficSelector) -> int | None:
    if (ts.start_port, ts.end_port) == (0, 65535):
        return None
    if ts.start_port == ts.end_port:
        return ts.start_port
    raise IkeDriverError(
        f"traffic selector {ts}: XFRM selectors take one port or any, not the range "
        f"{ts.start_port}-{ts.end_port}; narrow the connection's selectors"
    )


def _algorithms(
    ev: ChildSaEstablished, enc_key: bytes, int_key: bytes
) -> dict[str, xfrm.Aead | xfrm.Crypt | xfrm.Auth]:
    """XFRM algorithm attributes for one direction (names as the engine gives them)."""
    out: dict[str, xfrm.Aead | xfrm.Crypt | xfrm.Auth] = {}
    if ev.encryption is not None and ev.integrity is None and ev.protocol == ProtocolId.ESP:
        out["aead"] = xfrm.Aead(ev.encryption, enc_key, ev.icv_length * 8)
        return out
    if ev.encryption is not None:
        out["crypt"] = xfrm.Crypt(ev.encryption, enc_key)
    if ev.integrity is not None:
        trunc = ev.integrity_truncation_bits or ev.icv_length * 8
        out["auth"] = xfrm.Auth(ev.integrity, int_key, trunc)
    return out


def child_sa_to_xfrm(
    ev: ChildSaEstablished, reqid: int, *, priority: int = 0x2000
) -> tuple[tuple[xfrm.State, xfrm.State], tuple[xfrm.Policy, ...]]:
    """The kernel objects for a negotiated CHILD SA: (outbound state, inbound state) and
    the policies (out and in, plus fwd in tunnel mode) of every selector pair.

    Outer addresses are the IKE SA's; with UDP encapsulation the states carry the IKE
    SA's ports (RFC 3948).  Lifetimes come from the event (hard and soft, in seconds).
    """
    proto = xfrm.Proto.ESP if ev.protocol == ProtocolId.ESP else xfrm.Proto.AH
    mode = xfrm.Mode.TUNNEL if ev.mode == Mode.TUNNEL else xfrm.Mode.TRANSPORT
    local, remote = xfrm.address(ev.local_address), xfrm.address(ev.remote_address)
    lifetime = xfrm.Lifetime(
        soft_add_seconds=max(1, int(ev.soft_lifetime)),
        hard_add_seconds=max(1, int(ev.lifetime)),
    )
    enc_out = enc_in = None
    if ev.encapsulation:
        lport = ev.encap_local_port or NATT_PORT
        rport = ev.encap_remote_port or NATT_PORT
        enc_out = xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=lport, dport=rport)
        enc_in = xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=rport, dport=lport)
    out_state = xfrm.State(
        src=local,
        dst=remote,
        spi=ev.outbound_spi,
        proto=proto,
        mode=mode,
        reqid=reqid,
        encap=enc_out,
        esn=ev.esn,
        replay_window=0 if ev.esn else 32,
        lifetime=lifetime,
        **_algorithms(ev, ev.outbound_encryption_key, ev.outbound_integrity_key),  # type: ignore[arg-type]
    )
    in_state = xfrm.State(
        src=remote,
        dst=local,
        spi=ev.inbound_spi,
        proto=proto,
        mode=mode,
        reqid=reqid,
        encap=enc_in,
        esn=ev.esn,
        replay_window=128 if ev.esn else 32,
        lifetime=lifetime,
        **_algorithms(ev, ev.inbound_encryption_key, ev.inbound_integrity_key),  # type: ignore[arg-type]
    )
    tunnel = mode == xfrm.Mode.TUNNEL
    t_out = xfrm.Template(
        proto, mode, local if tunnel else None, remote if tunnel else None, reqid=reqid
    )
    t_in = xfrm.Template(
        proto, mode, remote if tunnel else None, local if tunnel else None, reqid=reqid
    )
    policies: list[xfrm.Policy] = []
    for lts in ev.local_ts:
        for rts in ev.remote_ts:
            if lts.version != rts.version:
                continue
            if lts.ip_protocol and rts.ip_protocol and lts.ip_protocol != rts.ip_protocol:
                continue
            ip_proto = int(lts.ip_protocol or rts.ip_protocol)
            lp, rp = _ts_port(lts), _ts_port(rts)
            for lnet in _ts_networks(lts):
                for rnet in _ts_networks(rts):
                    # More specific selectors win (lower number = higher priority).
                    prio = priority - lnet.prefixlen - rnet.prefixlen - (1 if ip_proto else 0)
                    out_sel = xfrm.Selector(lnet, rnet, ip_proto, lp, rp)
                    in_sel = xfrm.Selector(rnet, lnet, ip_proto, rp, lp)
                    policies.append(xfrm.Policy(out_sel, xfrm.Dir.OUT, priority=prio,
                                                templates=(t_out,)))  # fmt: skip
                    policies.append(xfrm.Policy(in_sel, xfrm.Dir.IN, priority=prio,
                                                templates=(t_in,)))  # fmt: skip
                    if tunnel:
                        policies.append(xfrm.Policy(in_sel, xfrm.Dir.FWD, priority=prio,
                                                    templates=(t_in,)))  # fmt: skip
    if not policies:
        raise IkeDriverError(
            f"CHILD SA of {ev.connection!r}: no usable selector pair in "
            f"{[str(t) for t in ev.local_ts]} / {[str(t) for t in ev.remote_ts]}"
        )
    return (out_state, in_state), tuple(policies)


class XfrmInstaller:
    """Applies CHILD SA events through :class:`ipsecd.xfrm.XfrmClient` (one namespace)."""

    def __init__(
        self, client: xfrm.XfrmClient, *, reqid_base: int = 0x4900, priority: int = 0x2000
    ) -> None:
        self.client = client
        self.priority = priority
        self._reqids = itertools.count(reqid_base)
        self._installed: dict[tuple[str, int], InstalledChild] = {}

    @property
    def installed(self) -> dict[tuple[str, int], InstalledChild]:
        """(connection, inbound SPI) → what was installed."""
        return dict(self._installed)

    async def install(self, ev: ChildSaEstablished) -> InstalledChild:
        reqid = next(self._reqids)
        states, policies = child_sa_to_xfrm(ev, reqid, priority=self.priority)
        added: list[xfrm.State] = []
        try:
            for st in states:
                await self.client.add_state(st)
                added.append(st)
            # update=True: an identical selector may be left by an earlier SA of the
            # same connection (e.g. both sides initiated); the newest SA wins.
            await self.client.add_policies(policies, update=True)
        except BaseException:
            for st in added:
                with contextlib.suppress(xfrm.XfrmError):
                    await self.client.delete_state(st)
            raise
        done = InstalledChild(ev.connection, states, policies, reqid)
        self._installed[(ev.connection, ev.inbound_spi)] = done
        return done

    async def remove(self, connection: str, inbound_spi: int) -> bool:
        """Remove a CHILD SA's states, and its policies unless a newer SA took them."""
        done = self._installed.pop((connection, inbound_spi), None)
        if done is None:
            return False
        for st in done.states:
            with contextlib.suppress(xfrm.XfrmNotFound):
                await self.client.delete_state(st)
        taken = {
            p.key for other in self._installed.values() for p in other.policies
        }  # same selectors re-used by a newer SA of this namespace
        for pol in done.policies:
            if pol.key in taken:
                continue
            with contextlib.suppress(xfrm.XfrmNotFound):
                await self.client.delete_policy(pol.key)
        return True

    async def remove_all(self) -> None:
        for connection, spi in list(self._installed):
            await self.remove(connection, spi)


# ===================================================================== sockets


def _bypass(sock: socket.socket) -> None:
    # RFC 4301 5.1 / KAME ipsec_set_policy "in bypass" and "out bypass"
    for direction in ("in", "out"):
        xfrm.set_socket_policy(sock, f"{direction} bypass")


def _open_udp(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
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


@dataclass(slots=True)
class _Endpoint:
    sock: socket.socket
    family: int
    port: int


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


# ===================================================================== the driver


class IkeDriver:
    """Runs IKE SAs over real UDP sockets in one network namespace.

    ``configs``: the connections (responders are matched by address, see
    :func:`ipsecd.ike.engine.lookup_by_address`).  ``netns``: a namespace name/path/fd
    for the sockets and the XFRM client (``None``: the caller's).  ``install``: apply
    CHILD SAs through XFRM (else handshake only).  ``clock``: seconds, monotonic.
    """

    def __init__(
        self,
        configs: Iterable[IkeConfig] = (),
        *,
        netns: str | int | None = None,
        ipv6: bool = True,
        install: bool = False,
        uninstall_on_close: bool = True,
        on_event: EventCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        bind_v4: str = "0.0.0.0",
        bind_v6: str = "::",
    ) -> None:
        self.netns = netns
        self.ipv6 = ipv6
        self.install = install
        self.uninstall_on_close = uninstall_on_close
        self.on_event = on_event
        self.clock = clock
        self._bind: dict[int, str] = {socket.AF_INET: bind_v4, socket.AF_INET6: bind_v6}
        self._configs: dict[str, IkeConfig] = {}
        self._lookup = lookup_by_address(())
        self.set_configs(configs)
        self._endpoints: dict[tuple[int, int], _Endpoint] = {}
        self._by_spi: dict[bytes, IkeSa] = {}
        self._spi_of: dict[int, bytes] = {}
        self._half_open: dict[tuple[str, bytes], IkeSa] = {}
        self._half_open_key: dict[int, tuple[str, bytes]] = {}
        self._sas: dict[int, IkeSa] = {}
        self._heap: list[tuple[float, int, IkeSa]] = []
        self._scheduled: dict[int, float] = {}
        self._seq = itertools.count()
        self._events: asyncio.Queue[tuple[IkeSa | None, DriverEvent]] = asyncio.Queue()
        self._wake: asyncio.Event | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._xfrm: xfrm.XfrmClient | None = None
        self.installer: XfrmInstaller | None = None
        self._closed = False
        #: Datagrams dropped because no SA or connection wanted them (diagnostics).
        self.dropped = 0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> IkeDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the sockets (and the XFRM client when installing); start the timer."""
        if self._loop is not None:
            raise IkeDriverError("IkeDriver.start: already started")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        families = [socket.AF_INET] + ([socket.AF_INET6] if self.ipv6 else [])
        try:
            for family in families:
                for port in (IKE_PORT, NATT_PORT):
                    host = self._bind[family]
                    try:
                        sock = self._in_netns(functools.partial(_open_udp, family, host, port))
                    except xfrm.XfrmError as exc:
                        raise IkeDriverError(
                            f"cannot set the IPsec bypass policy on the IKE socket "
                            f"[{host}]:{port} in {self._where}: {exc}"
                        ) from exc
                    except OSError as exc:
                        hint = (
                            " (another IKE daemon already listens there)"
                            if exc.errno == errno.EADDRINUSE
                            else ""
                        )
                        raise IkeDriverError(
                            f"cannot bind the IKE socket [{host}]:{port} in {self._where}: "
                            f"{exc.strerror}{hint}"
                        ) from exc
                    ep = _Endpoint(sock, family, port)
                    self._endpoints[(family, port)] = ep
                    self._loop.add_reader(sock.fileno(), self._on_readable, ep)
            if self.install:
                self._xfrm = xfrm.XfrmClient(self.netns)
                self.installer = XfrmInstaller(self._xfrm)
        except BaseException:
            self._close_sockets()
            raise
        self._timer_task = asyncio.create_task(self._timer_loop(), name="ike-timers")

    async def close(self) -> None:
        """Stop timers and sockets; with ``install`` remove what was installed."""
        if self._closed:
            return
        self._closed = True
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self._close_sockets()
        if self.installer is not None and self.uninstall_on_close:
            try:
                await self.installer.remove_all()
            except xfrm.XfrmError as exc:
                log.warning("could not remove installed CHILD SAs on close: %s", exc)
        if self._xfrm is not None:
            self._xfrm.close()

    def _close_sockets(self) -> None:
        for ep in self._endpoints.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(ep.sock.fileno())
            ep.sock.close()
        self._endpoints.clear()

    @property
    def _where(self) -> str:
        return "the current network namespace" if self.netns is None else f"netns {self.netns!r}"

    def _in_netns(self, fn: Callable[[], T]) -> T:
        return run_in(self.netns, fn)

    # ------------------------------------------------------------------ configuration
    def set_configs(self, configs: Iterable[IkeConfig]) -> None:
        """Replace the connections (existing SAs keep the config they started with)."""
        self._configs = {c.name: c for c in configs}
        self._lookup = lookup_by_address(list(self._configs.values()))

    @property
    def configs(self) -> dict[str, IkeConfig]:
        return dict(self._configs)

    @property
    def sas(self) -> list[IkeSa]:
        """The IKE SAs not yet in an end state."""
        return list(self._sas.values())

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
        sa = IkeSa(config, initiator=True, local_addr=(local, IKE_PORT),
                   remote_addr=(peer, IKE_PORT))  # fmt: skip
        self._sas[id(sa)] = sa
        sa.initiate(self.clock())
        self._pump(sa)
        return sa

    def delete(self, sa: IkeSa) -> None:
        """Delete an IKE SA (INFORMATIONAL Delete, RFC 7296 1.4.1)."""
        sa.delete(self.clock())
        self._pump(sa)

    def _route_source(self, peer: str) -> str:
        family = socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET

        def probe() -> str:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((peer, IKE_PORT))
                return str(s.getsockname()[0])

        try:
            return self._in_netns(probe)
        except OSError as exc:
            raise IkeDriverError(
                f"no route to IKE peer {peer} in {self._where}: {exc.strerror}; "
                "set the connection's local_address or add a route"
            ) from exc

    # ------------------------------------------------------------------ events
    async def next_event(self, timeout: float = 10.0) -> tuple[IkeSa | None, DriverEvent]:
        """The next (sa, event); raises TimeoutError after ``timeout`` seconds."""
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
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                _sa, ev = await asyncio.wait_for(self._events.get(), max(0.0, left))
            except TimeoutError:
                raise TimeoutError(
                    f"no {getattr(kind, '__name__', kind)} within {timeout:g} s in "
                    f"{self._where}; events seen: {seen or 'none'}"
                ) from None
            if isinstance(ev, kind) and (where is None or where(ev)):
                return ev
            seen.append(
                repr(ev) if not isinstance(ev, ChildSaEstablished) else "ChildSaEstablished"
            )

    def _emit(self, sa: IkeSa | None, ev: DriverEvent) -> None:
        self._events.put_nowait((sa, ev))
        if self.on_event is not None:
            try:
                self.on_event(sa, ev)
            except Exception:
                log.exception("on_event callback failed on %s", type(ev).__name__)

    # ------------------------------------------------------------------ receive path
    def _on_readable(self, ep: _Endpoint) -> None:
        for _ in range(_READ_BURST):
            try:
                data, anc, _flags, addr = ep.sock.recvmsg(_MAX_DATAGRAM, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("IKE socket port %d: receive failed: %s", ep.port, exc.strerror)
                return
            local_ip = _pktinfo_dst(ep.family, anc) or self._bind[ep.family]
            try:
                self._dispatch(data, (local_ip, ep.port), (str(addr[0]), int(addr[1])))
            except Exception:
                # Never let one datagram kill the reader; the engine itself never raises
                # on peer input, so this is a driver bug worth a traceback.
                log.exception("IKE datagram from %s:%s not handled", addr[0], addr[1])

    def _dispatch(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        now = self.clock()
        body = data
        if local[1] == NATT_PORT:
            if data == NATT_KEEPALIVE:
                return  # RFC 3948 2.3
            if not data.startswith(NON_ESP_MARKER):
                # ESP-in-UDP the kernel did not take (no ESP support or no SA).
                self.dropped += 1
                log.debug("ESP-in-UDP from %s:%d not decapsulated by the kernel", *remote)
                return
            body = data[4:]
        route = route_datagram(body) if len(body) >= IKE_HEADER_LEN else None
        if route is None:
            self.dropped += 1
            log.info("dropped %d-byte datagram from %s:%d: not an IKEv2 message",
                     len(data), *remote)  # fmt: skip
            return
        sa: IkeSa | None
        if route.initial_request:
            # RFC 7296 2.1/2.6: a retransmitted IKE_SA_INIT request has no SPIr yet;
            # it belongs to the half-open SA of the same peer and SPIi.
            sa = self._half_open.get((remote[0], route.spi_i))
            if sa is None:
                self._accept(data, local, remote, now)
                return
        else:
            sa = self._by_spi.get(route.local_spi)
        if sa is None:
            self.dropped += 1
            log.info("dropped IKE message from %s:%d: no IKE SA with our SPI %s",
                     remote[0], remote[1], route.local_spi.hex())  # fmt: skip
            return
        sa.receive_datagram(data, remote, now)
        self._pump(sa)

    def _accept(
        self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float
    ) -> None:
        sa = IkeSa.accept(self._lookup, data, local, remote, now)
        if sa is None:
            self.dropped += 1
            return
        self._sas[id(sa)] = sa
        self._half_open[(remote[0], sa.spi_i)] = sa
        self._half_open_key[id(sa)] = (remote[0], sa.spi_i)
        self._pump(sa)

    # ------------------------------------------------------------------ engine plumbing
    def _pump(self, sa: IkeSa) -> None:
        """Send what the SA has to send, hand out its events, (re)schedule its timer."""
        now = self.clock()
        key = id(sa)
        ours = sa.spi_i if sa.initiator else sa.spi_r
        if ours != ZERO_SPI and self._spi_of.get(key) != ours:
            old = self._spi_of.get(key)
            if old is not None and self._by_spi.get(old) is sa:
                del self._by_spi[old]
            self._by_spi[ours] = sa
            self._spi_of[key] = ours
        for datagram, dest in sa.datagrams_to_send(now):
            self._send(sa, datagram, dest)
        while (ev := sa.next_event()) is not None:
            self._emit(sa, ev)
            if self.installer is not None:
                if isinstance(ev, ChildSaEstablished):
                    self._spawn(self._install(sa, ev))
                elif isinstance(ev, ChildSaDeleted):
                    self._spawn(self._remove(ev))
        if sa.state in END_STATES:
            self._forget(sa)
            return
        t = sa.get_timer()
        if t is not None and self._scheduled.get(key) != t:
            self._scheduled[key] = t
            heapq.heappush(self._heap, (t, next(self._seq), sa))
            if self._wake is not None:
                self._wake.set()

    def _forget(self, sa: IkeSa) -> None:
        key = id(sa)
        self._sas.pop(key, None)
        self._scheduled.pop(key, None)
        spi = self._spi_of.pop(key, None)
        if spi is not None and self._by_spi.get(spi) is sa:
            del self._by_spi[spi]
        hkey = self._half_open_key.pop(key, None)
        if hkey is not None and self._half_open.get(hkey) is sa:
            del self._half_open[hkey]

    def _send(self, sa: IkeSa, datagram: bytes, dest: tuple[str, int]) -> None:
        local_ip, local_port = sa.local_addr
        family = socket.AF_INET6 if ipaddress.ip_address(dest[0]).version == 6 else socket.AF_INET
        ep = self._endpoints.get((family, local_port))
        if ep is None:
            log.warning("no IKE socket for %s port %d: datagram to %s:%d not sent",
                        "IPv6" if family == socket.AF_INET6 else "IPv4", local_port,
                        dest[0], dest[1])  # fmt: skip
            return
        try:
            ep.sock.sendmsg([datagram], _pktinfo_src(family, local_ip), 0, dest)
        except (BlockingIOError, InterruptedError):
            log.info("IKE socket busy: datagram to %s:%d dropped (retransmission covers it)",
                     dest[0], dest[1])  # fmt: skip
        except OSError as exc:
            log.warning("sending IKE datagram from %s:%d to %s:%d failed: %s",
                        local_ip, local_port, dest[0], dest[1], exc.strerror)  # fmt: skip

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                t, _, sa = heapq.heappop(self._heap)
                key = id(sa)
                if self._scheduled.get(key) != t:
                    continue  # superseded by a later schedule
                del self._scheduled[key]
                try:
                    sa.handle_timer(now)
                    self._pump(sa)
                except Exception:
                    # One SA's bug must not stop every other SA's timers.
                    log.exception("timer of %r failed", sa)
            self._wake.clear()
            delay = None if not self._heap else max(0.0, self._heap[0][0] - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # ------------------------------------------------------------------ kernel
    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _install(self, sa: IkeSa, ev: ChildSaEstablished) -> None:
        assert self.installer is not None
        try:
            done = await self.installer.install(ev)
        except (xfrm.XfrmError, IkeDriverError, ValueError) as exc:
            reason = f"installing CHILD SA {ev.inbound_spi:08x}/{ev.outbound_spi:08x} failed: {exc}"
            log.error("%s: %s", ev.connection, reason)
            self._emit(sa, ChildSaInstallFailed(ev.connection, ev.inbound_spi,
                                                ev.outbound_spi, reason))  # fmt: skip
            return
        log.info("%s: CHILD SA %08x/%08x installed (reqid %d, %d policies)", ev.connection,
                 ev.inbound_spi, ev.outbound_spi, done.reqid, len(done.policies))  # fmt: skip
        self._emit(sa, ChildSaInstalled(ev.connection, ev.inbound_spi, ev.outbound_spi,
                                        done.reqid, len(done.policies)))  # fmt: skip

    async def _remove(self, ev: ChildSaDeleted) -> None:
        assert self.installer is not None
        try:
            await self.installer.remove(ev.connection, ev.inbound_spi)
        except xfrm.XfrmError as exc:
            log.error("%s: removing CHILD SA %08x failed: %s", ev.connection,
                      ev.inbound_spi, exc)  # fmt: skip
