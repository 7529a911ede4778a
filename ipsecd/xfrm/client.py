"""Async XFRM netlink client (and a thin synchronous wrapper).

One :class:`XfrmClient` owns one NETLINK_XFRM socket opened in a given network
namespace.  Requests are serialised by a lock; :meth:`XfrmClient.batch` pipelines many
requests (one ``sendmsg`` carries up to ~128 KiB of messages, the kernel answers each
with an ACK) — that is how 10,000 policies go in faster than ``ip -batch``.

:class:`XfrmListener` is an async iterator over ACQUIRE, EXPIRE, POLEXPIRE and MAPPING
events from the kernel's multicast groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import itertools
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from . import codec, wire
from .consts import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    SOL_NETLINK,
    Group,
    Mode,
    MsgType,
    Proto,
)
from .decoder import DumpDecoder, decoder_for
from .errors import Op, XfrmBusy, XfrmError, XfrmNotFound, XfrmPermission, from_errno
from .model import (
    Address,
    DefaultPolicy,
    Mark,
    Policy,
    PolicyKey,
    SadInfo,
    SaId,
    SpdInfo,
    State,
    XfrmEvent,
)
from .netns import Netns, describe, run_in
from .reconcile import (
    AddPolicy,
    AddState,
    DeleteState,
    Operation,
    UpdatePolicy,
    UpdateState,
)

T = TypeVar("T")
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
_RECV = 1 << 18
_CHUNK_BYTES = 96 * 1024  # well under the default sk_sndbuf (netlink_sendmsg limit)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding a 10,000-entry dump allocates ~10^5 small objects that all survive:
    generational GC would rescan them over and over (60% of the time).  Pause it for
    the loop; it is re-enabled (if it was on) right after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def open_socket(netns: Netns = None, groups: int = 0, *, rcvbuf: int = 8 << 20) -> socket.socket:
    """A NETLINK_XFRM socket in ``netns``, bound (to ``groups``), non-blocking, with a
    receive buffer of ``rcvbuf`` bytes (forced past rmem_max when privileged)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        try:
            for opt, size in ((SO_RCVBUFFORCE, rcvbuf), (SO_SNDBUFFORCE, 1 << 20)):
                with contextlib.suppress(PermissionError):
                    s.setsockopt(socket.SOL_SOCKET, opt, size)
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            s.bind((0, groups))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    try:
        return run_in(netns, make)
    except PermissionError as exc:
        raise XfrmPermission(
            f"cannot open XFRM netlink in {describe(netns)}: {exc.strerror} "
            "(needs CAP_NET_ADMIN: run as root)",
            errno=exc.errno or 0,
        ) from exc
    except OSError as exc:
        if exc.errno == errno.EPROTONOSUPPORT:
            raise XfrmError(
                "kernel has no XFRM netlink (CONFIG_XFRM_USER): modprobe xfrm_user",
                errno=exc.errno,
            ) from exc
        raise


Subject = Policy | PolicyKey | State | SaId | str


@dataclass(frozen=True, slots=True)
class Request:
    """One encoded request for :meth:`XfrmClient.batch`.

    ``subject`` is the object it is about; it is described (without keys) only when
    the kernel refuses the request.
    """

    data: bytes = field(repr=False)  # an encoded SA carries its keys
    op: Op = Op.ADD_POLICY
    subject: Subject = ""

    def error(self, err: int, ext: str | None) -> XfrmError:
        s = self.subject
        if isinstance(s, Policy | PolicyKey):
            return from_errno(self.op, err, describe_policy(s), ext)
        if isinstance(s, State):
            return from_errno(self.op, err, describe_sa(s), ext, dict(_state_detail(s)))
        if isinstance(s, SaId):
            return from_errno(self.op, err, describe_sa(s), ext)
        return from_errno(self.op, err, s, ext)


def _describe_policy(key: PolicyKey) -> str:
    s = key.selector
    text = f"{key.dir.name.lower()} {s.src} -> {s.dst}"
    if s.proto:
        text += f" proto {s.proto}"
    if s.sport is not None:
        text += f" sport {s.sport}"
    if s.dport is not None:
        text += f" dport {s.dport}"
    if key.mark is not None:
        text += f" mark {key.mark.value:#x}/{key.mark.mask:#x}"
    if key.if_id:
        text += f" if_id {key.if_id}"
    return text


def describe_policy(p: Policy | PolicyKey) -> str:
    return _describe_policy(p.key if isinstance(p, Policy) else p)


def describe_sa(sa: SaId | State) -> str:
    i = sa.id if isinstance(sa, State) else sa
    text = f"{i.proto.name.lower()} spi {i.spi:#010x} dst {i.dst}"
    if isinstance(sa, State):
        text = f"{i.proto.name.lower()} spi {i.spi:#010x} {sa.src} -> {sa.dst}"
    return text


def _state_detail(s: State) -> tuple[tuple[str, str], ...]:
    algos = [a.name for a in (s.aead, s.crypt, s.auth) if a is not None]
    return (("proto", s.proto.name.lower()), ("algorithms", " + ".join(algos) or "none"))


class XfrmClient:
    """Async XFRM netlink client bound to one network namespace.

    Use ``async with XfrmClient(netns) as x: ...`` or call :meth:`close`.
    """

    def __init__(self, netns: Netns = None) -> None:
        self.netns = netns
        self._sock = open_socket(netns)
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> XfrmClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def next_seq(self) -> int:
        return next(self._seq)

    # ------------------------------------------------------------------ transport

    async def _recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.sock_recv(self._sock, _RECV)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise XfrmBusy(
                    "netlink receive buffer overflowed: answers were lost", errno=exc.errno
                ) from exc
            raise

    async def _send(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self._sock, data)

    async def _exchange(self, req: Request, *, dump: bool = False) -> list[tuple[int, Any]]:
        """Send one request; return the answers as (type, pyroute2 message); raise on
        error."""
        (seq,) = codec.split_seq(req.data)
        out: list[tuple[int, Any]] = []
        async with self._lock:
            await self._send(req.data)
            while True:
                data = await self._recv()
                for off, length, kind, flags, mseq in codec.split_messages(data):
                    if mseq != seq:
                        continue
                    if kind == codec.NLMSG_ERROR:
                        err, ext = codec.parse_error(data, off, length, flags)
                        if err:
                            raise req.error(err, ext)
                        return out
                    if kind == codec.NLMSG_DONE:
                        if dump:
                            return out
                        continue
                    out.append((kind, codec.decode_body(kind, data, off)))

    async def batch(self, requests: Sequence[Request]) -> list[XfrmError | None]:
        """Pipeline ``requests`` (each must ask for an ACK); one result per request.

        The kernel handles the messages of one send in order and answers each; a failed
        message does not stop the ones after it.
        """
        results: list[XfrmError | None] = [None] * len(requests)
        async with self._lock:
            i = 0
            n = len(requests)
            while i < n:
                size = 0
                chunk: list[bytes] = []
                seqs: dict[int, int] = {}
                while i < n and (size < _CHUNK_BYTES or not chunk):
                    data = requests[i].data
                    seqs[codec.split_seq(data)[0]] = i
                    chunk.append(data)
                    size += len(data)
                    i += 1
                await self._send(b"".join(chunk))
                pending = len(seqs)
                while pending:
                    data = await self._recv()
                    for off, length, kind, flags, mseq in codec.split_messages(data):
                        idx = seqs.get(mseq)
                        if idx is None or kind != codec.NLMSG_ERROR:
                            continue
                        err, ext = codec.parse_error(data, off, length, flags)
                        if err:
                            results[idx] = requests[idx].error(err, ext)
                        pending -= 1
        return results

    async def apply(self, ops: Sequence[Operation]) -> int:
        """Apply reconciler operations (see :func:`apply`)."""
        return await apply(self, ops)

    async def _dump(
        self,
        kind: MsgType,
        op: Op,
        what: str,
        answer: MsgType,
        decode: Callable[[DumpDecoder], Callable[[bytes, int, int], T | None]],
    ) -> list[T]:
        """Dump request ``kind``; every ``answer`` message is decoded as it arrives,
        straight from the receive buffer (see :mod:`.decoder`)."""
        seq = self.next_seq()
        req = Request(codec.encode_dump(kind, seq), op, what)
        decoder = decoder_for(self.netns, kind)
        one = decode(decoder)
        out: list[T] = []
        async with self._lock:
            await self._send(req.data)
            # The kernel builds the next part of a dump while serving the read of the
            # previous one, so these awaits do not wait: keep the collector off while
            # the ~10^5 new objects of a large dump are built (see _gc_paused).
            with _gc_paused():
                while True:
                    data = await self._recv()
                    end = decoder.feed(data, seq, answer, one, out)
                    if end >= 0:
                        break
            decoder.rotate()
        _length, got, flags, _seq, _pid = wire.NLMSGHDR.unpack_from(data, end)
        if got == codec.NLMSG_ERROR:
            err, ext = codec.parse_error(data, end, _length, flags)
            if err:
                raise req.error(err, ext)
        return out

    # ------------------------------------------------------------------ policies

    def policy_request(self, p: Policy, *, update: bool = False) -> Request:
        op = Op.UPDATE_POLICY if update else Op.ADD_POLICY
        return Request(codec.encode_policy(p, self.next_seq(), update=update), op, p)

    async def add_policy(self, p: Policy) -> None:
        """Create ``p``; :class:`XfrmExists` if a policy with its key exists."""
        await self._exchange(self.policy_request(p))

    async def update_policy(self, p: Policy) -> None:
        """Replace the policy with ``p``'s key in place (UPDPOLICY), or create it."""
        await self._exchange(self.policy_request(p, update=True))

    async def add_policies(self, policies: Iterable[Policy], *, update: bool = False) -> None:
        """Pipelined bulk install; raises the first error after all were tried."""
        results = await self.batch([self.policy_request(p, update=update) for p in policies])
        errors = [r for r in results if r is not None]
        if errors:
            raise errors[0]

    def delete_policy_request(self, key: PolicyKey | Policy) -> Request:
        k = key.key if isinstance(key, Policy) else key
        data = codec.encode_policy_id(k, MsgType.DELPOLICY, self.next_seq())
        return Request(data, Op.DELETE_POLICY, k)

    async def delete_policy(self, key: PolicyKey | Policy) -> None:
        await self._exchange(self.delete_policy_request(key))

    async def get_policy(self, key: PolicyKey | Policy) -> Policy:
        k = key.key if isinstance(key, Policy) else key
        data = codec.encode_policy_id(k, MsgType.GETPOLICY, self.next_seq())
        answers = await self._exchange(Request(data, Op.GET_POLICY, k))
        for kind, msg in answers:
            if kind == MsgType.NEWPOLICY:
                return codec.decode_policy(msg)
        raise XfrmNotFound(f"get policy {describe_policy(k)}: no answer", op=Op.GET_POLICY.value)

    async def dump_policies(self) -> list[Policy]:
        """Every main-type policy of the namespace (socket policies are not listed)."""
        return await self._dump(
            MsgType.GETPOLICY,
            Op.DUMP_POLICIES,
            "in " + describe(self.netns),
            MsgType.NEWPOLICY,
            _policy_decoder,
        )

    # ------------------------------------------------------------------ states

    def state_request(self, s: State, *, update: bool = False) -> Request:
        op = Op.UPDATE_STATE if update else Op.ADD_STATE
        data = codec.encode_state(s, self.next_seq(), update=update)
        return Request(data, op, s)

    async def add_state(self, s: State) -> None:
        await self._exchange(self.state_request(s))

    async def update_state(self, s: State) -> None:
        """UPDSA: completes a larval SA from :meth:`alloc_spi`, or updates lifetimes/encap."""
        await self._exchange(self.state_request(s, update=True))

    def delete_state_request(self, sa: SaId | State) -> Request:
        i = sa.id if isinstance(sa, State) else sa
        data = codec.encode_sa_id(i, MsgType.DELSA, self.next_seq())
        return Request(data, Op.DELETE_STATE, i)

    async def delete_state(self, sa: SaId | State) -> None:
        await self._exchange(self.delete_state_request(sa))

    async def get_state(self, sa: SaId | State) -> State:
        i = sa.id if isinstance(sa, State) else sa
        data = codec.encode_sa_id(i, MsgType.GETSA, self.next_seq())
        for kind, msg in await self._exchange(Request(data, Op.GET_STATE, i)):
            if kind == MsgType.NEWSA:
                return codec.decode_state(msg)
        raise XfrmNotFound(f"get {describe_sa(i)}: no answer", op=Op.GET_STATE.value)

    async def dump_states(self) -> list[State]:
        return await self._dump(
            MsgType.GETSA,
            Op.DUMP_STATES,
            "in " + describe(self.netns),
            MsgType.NEWSA,
            _state_decoder,
        )

    async def alloc_spi(
        self,
        src: Address,
        dst: Address,
        *,
        proto: Proto = Proto.ESP,
        reqid: int = 0,
        mode: Mode = Mode.TRANSPORT,
        spi_min: int = 0x100,
        spi_max: int = 0x0FFF_FFFF,
        mark: Mark | None = None,
    ) -> int:
        """Reserve an SPI for an inbound SA (XFRM_MSG_ALLOCSPI); creates a larval SA
        that :meth:`update_state` later completes (or that expires by itself)."""
        data = codec.encode_allocspi(
            src,
            dst,
            proto,
            reqid,
            self.next_seq(),
            mode=mode,
            spi_min=spi_min,
            spi_max=spi_max,
            mark=mark,
        )
        target = f"{proto.name.lower()} {src} -> {dst} reqid {reqid}"
        for kind, msg in await self._exchange(Request(data, Op.ALLOC_SPI, target)):
            if kind == MsgType.NEWSA:
                return codec.decode_state(msg).spi
        raise XfrmError(f"allocate SPI {target}: the kernel sent no SA back", op=Op.ALLOC_SPI.value)

    # ------------------------------------------------------------------ defaults, info

    async def set_default_policy(self, dp: DefaultPolicy) -> None:
        req = Request(
            codec.encode_default(dp, self.next_seq()), Op.SET_DEFAULT, f"in {describe(self.netns)}"
        )
        await self._exchange(req)

    async def _single_reply(
        self, req: Request, kind: MsgType, decode: Callable[[Any], T], what: str
    ) -> T:
        """Send ``req`` and decode the one reply of type ``kind``."""
        for got, msg in await self._exchange(req):
            if got == kind:
                return decode(msg)
        raise XfrmError(f"{what}: the kernel sent no answer", op=req.op.value)

    async def get_default_policy(self) -> DefaultPolicy:
        req = Request(
            codec.encode_get_default(self.next_seq()), Op.GET_DEFAULT, f"in {describe(self.netns)}"
        )
        return await self._single_reply(
            req, MsgType.GETDEFAULT, codec.decode_default, "get default policy"
        )

    async def sad_info(self) -> SadInfo:
        req = Request(
            codec.encode_info_request(MsgType.GETSADINFO, self.next_seq()), Op.GET_INFO, "SAD"
        )
        return await self._single_reply(
            req, MsgType.NEWSADINFO, codec.decode_sadinfo, "read SAD info"
        )

    async def spd_info(self) -> SpdInfo:
        req = Request(
            codec.encode_info_request(MsgType.GETSPDINFO, self.next_seq()), Op.GET_INFO, "SPD"
        )
        return await self._single_reply(
            req, MsgType.NEWSPDINFO, codec.decode_spdinfo, "read SPD info"
        )


def _policy_decoder(d: DumpDecoder) -> Callable[[bytes, int, int], Policy | None]:
    return d.policy


def _state_decoder(d: DumpDecoder) -> Callable[[bytes, int, int], State]:
    return d.state


def _operation_request(x: XfrmClient, op: Operation) -> Request:
    if isinstance(op, AddState):
        return x.state_request(op.state)
    if isinstance(op, UpdateState):
        return x.state_request(op.state, update=True)
    if isinstance(op, DeleteState):
        return x.delete_state_request(op.sa)
    if isinstance(op, AddPolicy):
        return x.policy_request(op.policy)
    if isinstance(op, UpdatePolicy):
        return x.policy_request(op.policy, update=True)
    return x.delete_policy_request(op.key)


class ReconcileError(XfrmError):
    """Some operations of a phase failed; later phases were not run.

    ``failures`` pairs each failed operation with its error; ``done`` counts the
    operations that were applied.
    """

    def __init__(self, failures: list[tuple[Operation, XfrmError]], done: int) -> None:
        first = failures[0][1]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(
            f"reconcile stopped after {done} operations: {first}{more}",
            errno=first.errno,
            op=first.op,
            target=first.target,
        )
        self.failures = failures
        self.done = done


async def apply(x: XfrmClient, ops: Sequence[Operation]) -> int:
    """Run a :func:`~ipsecd.xfrm.reconcile.plan` phase by phase (each phase pipelined);
    stop at the first phase with a failure.  Returns the number of operations applied.
    """
    done = 0
    i = 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j].phase == ops[i].phase:
            j += 1
        phase = ops[i:j]
        results = await x.batch([_operation_request(x, op) for op in phase])
        failures = [(op, r) for op, r in zip(phase, results, strict=True) if r is not None]
        done += len(phase) - len(failures)
        if failures:
            raise ReconcileError(failures, done)
        i = j
    return done


class XfrmListener:
    """Async iterator over XFRM events of a namespace::

        async with XfrmListener(netns) as events:
            async for ev in events:
                ...

    Subscribes to the ACQUIRE, EXPIRE (which also carries POLEXPIRE) and MAPPING groups.

    Events are multicast: when they come faster than they are read, the kernel drops
    what no longer fits the receive buffer (``rcvbuf``) and the next read fails with
    ENOBUFS.  :meth:`next_event` then raises :class:`XfrmBusy` once (``overruns``
    counts these); the listener stays usable, and since events were lost the caller
    must re-dump the kernel's policies and SAs to learn what it missed.
    """

    GROUPS = (Group.ACQUIRE, Group.EXPIRE, Group.MAPPING)

    def __init__(
        self, netns: Netns = None, groups: Sequence[Group] = GROUPS, *, rcvbuf: int = 8 << 20
    ) -> None:
        mask = 0
        for g in groups:
            mask |= 1 << (g - 1)
        self.netns = netns
        self._sock = open_socket(netns, mask, rcvbuf=rcvbuf)
        self._pending: deque[XfrmEvent] = deque()
        #: How many times events were lost (each one raised XfrmBusy once).
        self.overruns = 0

    async def __aenter__(self) -> XfrmListener:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def __aiter__(self) -> XfrmListener:
        return self

    async def __anext__(self) -> XfrmEvent:
        return await self.next_event()

    async def next_event(self) -> XfrmEvent:
        """The next event; :class:`XfrmBusy` if events were lost since the last call
        (re-dump, then call again: the listener goes on with the events after the
        loss)."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            try:
                data = await loop.sock_recv(self._sock, _RECV)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel reports an overrun once, on the read after it, and
                    # clears it: the socket keeps working.
                    self.overruns += 1
                    raise XfrmBusy(
                        f"XFRM event socket in {describe(self.netns)} overflowed: the "
                        "kernel dropped events (ACQUIRE/EXPIRE/MAPPING). Re-dump the "
                        "policies and SAs (XfrmClient.dump_policies() / dump_states()) "
                        "to resynchronise, then keep reading from this listener: it "
                        "stays usable. If this repeats, read faster or give the "
                        "listener a larger rcvbuf.",
                        errno=exc.errno,
                        op="listen for events",
                        target=describe(self.netns),
                    ) from exc
                raise
            for off, _length, kind, _flags, _seq in codec.split_messages(data):
                msg = codec.decode_body(kind, data, off)
                if msg is None:
                    continue
                ev = codec.decode_event(kind, msg)
                if ev is not None:
                    self._pending.append(ev)
        return self._pending.popleft()


class Xfrm:
    """Synchronous wrapper: the same operations, each run on a private event loop."""

    def __init__(self, netns: Netns = None) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._loop.run_until_complete(self._make(netns))
        except BaseException:
            self._loop.close()
            raise

    @staticmethod
    async def _make(netns: Netns) -> XfrmClient:
        return XfrmClient(netns)

    def _run(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        return self._loop.run_until_complete(coro)

    def __enter__(self) -> Xfrm:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        self._loop.close()

    @property
    def client(self) -> XfrmClient:
        return self._client

    def add_policy(self, p: Policy) -> None:
        self._run(self._client.add_policy(p))

    def update_policy(self, p: Policy) -> None:
        self._run(self._client.update_policy(p))

    def add_policies(self, ps: Iterable[Policy], *, update: bool = False) -> None:
        self._run(self._client.add_policies(ps, update=update))

    def delete_policy(self, key: PolicyKey | Policy) -> None:
        self._run(self._client.delete_policy(key))

    def get_policy(self, key: PolicyKey | Policy) -> Policy:
        return self._run(self._client.get_policy(key))

    def dump_policies(self) -> list[Policy]:
        return self._run(self._client.dump_policies())

    def add_state(self, s: State) -> None:
        self._run(self._client.add_state(s))

    def update_state(self, s: State) -> None:
        self._run(self._client.update_state(s))

    def delete_state(self, sa: SaId | State) -> None:
        self._run(self._client.delete_state(sa))

    def get_state(self, sa: SaId | State) -> State:
        return self._run(self._client.get_state(sa))

    def dump_states(self) -> list[State]:
        return self._run(self._client.dump_states())

    def alloc_spi(self, src: Address, dst: Address, **kw: Any) -> int:
        return self._run(self._client.alloc_spi(src, dst, **kw))

    def set_default_policy(self, dp: DefaultPolicy) -> None:
        self._run(self._client.set_default_policy(dp))

    def get_default_policy(self) -> DefaultPolicy:
        return self._run(self._client.get_default_policy())

    def sad_info(self) -> SadInfo:
        return self._run(self._client.sad_info())

    def spd_info(self) -> SpdInfo:
        return self._run(self._client.spd_info())

    def batch(self, requests: Sequence[Request]) -> list[XfrmError | None]:
        return self._run(self._client.batch(requests))

    def apply(self, ops: Sequence[Operation]) -> int:
        return self._run(self._client.apply(ops))
