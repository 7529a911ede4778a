"""The :class:`~controller.store.Store` over a real etcd (v3 API) with ``etcd3aio``.

Why etcd3aio (async) and not python3-etcd3 (sync, module ``etcd3``):

* the controller is an asyncio gRPC server; a sync client would need a thread per
  blocking call and, for the one long-lived watch, a thread that hands events back to
  the loop.  etcd3aio runs on the same ``grpc.aio`` event loop as the server;
* its watch resumes after an etcd restart from the next revision (measured, see
  LAB-NOTES), which is what keeps agent streams correct across etcd restarts;
* caveats, handled here: (1) it retries Put/Txn on DEADLINE_EXCEEDED, which could apply a
  compare-and-swap twice from the caller's point of view — we construct it with
  ``rpc_max_attempts=1`` and retry ourselves (below); (2) its channel target is
  hard-coded ``ipv4:host:port,...`` — we resolve DNS names to IPv4 addresses ourselves
  and refuse IPv6 endpoints with a clear message; (3) its declared minimum versions are
  too low — pyproject pins grpcio/protobuf; (4) its channel keeps gRPC's 4 MiB receive
  limit, too small for revision records of large policies — raised to
  :data:`~controller.limits.ETCD_MAX_RESPONSE_BYTES`.

Retries (docs/architecture.md, "The controller"): an etcd leader change makes
requests fail for a second or two (``leader changed``, ``request timed out``, a member
that was killed mid-request) although the cluster is fine a moment later.  Each
operation retries such *transient* errors with jittered exponential backoff
(:class:`~controller.retry.Backoff`) until its deadline: ``retry_budget`` seconds, or
earlier when the gRPC request that needs it has a deadline
(:func:`~controller.retry.request_deadline`); every attempt is bounded by ``timeout``.
Not retried: an unreachable cluster (no endpoint accepts a connection), and refusals
(permissions, a full database, a request over etcd's size limit).  Reads, plain puts
and deletes are idempotent and simply re-sent.  A compare-and-swap whose outcome is
unknown (the attempt timed out or the member died) is never re-sent blindly: the
pointer and the new keys are read back first — applied (the new keys hold our bytes),
lost (someone else moved the pointer), or not applied (re-sending the same
transaction is safe: its compares make a second application impossible).

TLS (docs/security.md "The etcd link"): etcd3aio takes the CA, the client certificate
chain and key and builds gRPC channel credentials from them; its one channel serves
every member, so one server name is checked in each member's certificate
(``ssl_target_name_override``: the endpoints' common host or ``--etcd-server-name``).
gRPC reports a refused client certificate only as "Unwrap failed", so :meth:`connect`
first probes each member with the same credentials
(:func:`controller.etcd_tls.probe`) and says which side refused.

Every etcd3aio / gRPC failure is mapped to a :mod:`controller.errors` error here (one
edge).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
from etcd3aio import Etcd3Client
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService, SortOrder, SortTarget, prefix_range_end

from controller.errors import (
    ControllerError,
    StoreCompacted,
    StoreOutcomeUnknown,
    StoreRequestTooLarge,
    StoreUnavailable,
)
from controller.etcd_tls import EtcdClientTls, probe
from controller.limits import (
    DEFAULT_ETCD_ATTEMPT_TIMEOUT,
    DEFAULT_ETCD_RETRY_BUDGET,
    ETCD_MAX_RESPONSE_BYTES,
    ETCD_TXN_MAX_BYTES,
    ETCD_TXN_MAX_OPS,
)
from controller.retry import Backoff, operation_deadline
from controller.store import KeyValue, WatchEvent

__all__ = ["EtcdStore", "EtcdUrls", "Failure", "classify", "parse_endpoints", "parse_urls"]

_log = logging.getLogger(__name__)
_EVENT_DELETE = 1
T = TypeVar("T")
_MIN_ATTEMPT = 0.05  # seconds: an attempt shorter than this is not worth sending
_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)

# etcd's own words for "the cluster is busy electing / catching up": retried whatever
# the status code (etcd server/etcdserver/api/v3rpc/rpctypes: ErrGRPCLeaderChanged,
# ErrGRPCNoLeader, ErrGRPCNotLeader, ErrGRPCTimeout*, ErrGRPCTooManyRequests,
# ErrGRPCStopped, ErrGRPCProposalDropped).
_TRANSIENT_DETAILS = (
    "leader changed",
    "no leader",
    "not leader",
    "request timed out",
    "too many requests",
    "server stopped",
    "proposal dropped",
)
# gRPC's words for a TLS handshake that failed (either side refused).
_TLS_DETAILS = ("andshake", "TSI_", "Verification", "CERTIFICATE", "certificate")
# gRPC's words when no endpoint accepts a connection (round_robin, pick_first).
_UNREACHABLE_DETAILS = ("connections to all backends failing", "failed to connect to all addresses")


class Failure(enum.Enum):
    """What an etcd error means for the caller."""

    TRANSIENT = "transient"  # the cluster answered or may answer in a moment: retry
    UNREACHABLE = "unreachable"  # no endpoint accepts a connection: fail now
    TOO_LARGE = "too-large"  # over etcd's --max-request-bytes: fail now
    REFUSED = "refused"  # anything else etcd said no to: fail now


def _rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc
    cause = exc.__cause__
    return cause if isinstance(cause, grpc.aio.AioRpcError) else None


def classify(exc: BaseException) -> Failure:
    """Sort an etcd3aio / gRPC exception (see the module docstring)."""
    if isinstance(exc, TimeoutError):
        return Failure.TRANSIENT  # our per-attempt timeout
    rpc = _rpc_error(exc)
    if rpc is None:
        return Failure.UNREACHABLE if isinstance(exc, OSError) else Failure.REFUSED
    code, details = rpc.code(), (rpc.details() or "")
    if any(words in details for words in _TRANSIENT_DETAILS):
        return Failure.TRANSIENT
    if code == grpc.StatusCode.UNAVAILABLE:
        if any(words in details for words in _UNREACHABLE_DETAILS):
            return Failure.UNREACHABLE
        return Failure.TRANSIENT  # one member went away mid-request (socket closed, ...)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Failure.TRANSIENT
    if "request is too large" in details:
        return Failure.TOO_LARGE
    return Failure.REFUSED


def _detail(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:.1f}s"
    rpc = _rpc_error(exc)
    if rpc is not None:
        return (
            f"{rpc.code().name}: {(rpc.details() or '').splitlines()[0] if rpc.details() else ''}"
        )
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text


@dataclass(frozen=True, slots=True)
class EtcdUrls:
    """``--etcd`` parsed: the ``ip:port`` the client dials, the hosts as written (for
    the TLS server name) and the scheme (None: none was written)."""

    endpoints: tuple[str, ...]
    hosts: tuple[str, ...]
    scheme: str | None

    def server_name(self) -> str | None:
        """The one host every endpoint names (None when they differ)."""
        return self.hosts[0] if len(set(self.hosts)) == 1 else None


def parse_urls(spec: str) -> EtcdUrls:
    """``https://a:2379,b:2379`` -> endpoints ``10.0.0.1:2379, ...`` (IPv4 host:port),
    the hosts ``a, b`` and the scheme (``http``, ``https``, or None when no endpoint
    names one; mixing the two is refused)."""
    out: list[str] = []
    hosts: list[str] = []
    schemes: set[str] = set()
    for raw in (p.strip() for p in spec.split(",")):
        if not raw:
            continue
        url = urlsplit(raw if "://" in raw else f"//{raw}")
        if url.scheme:
            if url.scheme not in ("http", "https"):
                raise ValueError(
                    f"etcd endpoint {raw!r}: the scheme is http:// or https://, not {url.scheme}://"
                )
            schemes.add(url.scheme)
        try:
            host, port = url.hostname, url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {raw!r}: the port is not a number") from None
        if not host:
            raise ValueError(f"etcd endpoint {raw!r}: no host")
        hosts.append(host)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise ValueError(f"etcd endpoint {raw!r}: cannot resolve {host}: {exc}") from exc
            out.extend(f"{info[4][0]}:{port}" for info in infos[:1])
            continue
        if addr.version != 4:
            raise ValueError(
                f"etcd endpoint {raw!r}: IPv6 endpoints are not supported by the etcd client "
                "(etcd3aio dials ipv4: targets); use an IPv4 address or name"
            )
        out.append(f"{addr}:{port}")
    if not out:
        raise ValueError(f"no etcd endpoint in {spec!r}")
    if len(schemes) > 1:
        raise ValueError(
            f"etcd endpoints {spec!r} mix http:// and https://: every member is reached "
            "the same way"
        )
    return EtcdUrls(tuple(out), tuple(hosts), schemes.pop() if schemes else None)


def parse_endpoints(spec: str) -> list[str]:
    """``http://a:2379,b:2379`` -> ``["10.0.0.1:2379", ...]`` (IPv4 host:port)."""
    return list(parse_urls(spec).endpoints)


def _tls_server_name(spec: str, urls: EtcdUrls, tls: EtcdClientTls | None) -> str | None:
    """The scheme rules of :meth:`EtcdStore.connect`, and the TLS server name."""
    if tls is None:
        if urls.scheme == "https":
            raise ValueError(
                f"etcd endpoints {spec!r} are https:// but no TLS credentials were given: "
                "give --etcd-cacert (and --etcd-cert/--etcd-key for client certificate "
                "auth)"
            )
        return None
    if urls.scheme == "http":
        raise ValueError(
            f"etcd endpoints {spec!r} are http:// but TLS credentials were given: write "
            "https:// (or drop --etcd-cacert/--etcd-cert/--etcd-key for plaintext)"
        )
    name = tls.server_name or urls.server_name()
    if name is None:
        raise ValueError(
            f"etcd endpoints {spec!r} name different hosts, and the etcd client checks one "
            "server name in every member's certificate (one gRPC channel): give "
            "--etcd-server-name NAME, a name or address every member's certificate carries"
        )
    return name


class EtcdStore:
    """A :class:`~controller.store.Store` backed by etcd.  Create with :meth:`connect`.

    ``timeout`` bounds one attempt (one etcd RPC); ``retry_budget`` bounds an operation
    with its retries (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = DEFAULT_ETCD_ATTEMPT_TIMEOUT,
        retry_budget: float = DEFAULT_ETCD_RETRY_BUDGET,
        backoff: Backoff | None = None,
        tls: EtcdClientTls | None = None,
        server_name: str | None = None,
    ) -> None:
        if timeout <= 0 or retry_budget <= 0:
            raise ValueError(
                f"etcd timeout and retry budget must be positive (got {timeout}, {retry_budget})"
            )
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.retry_budget = retry_budget
        self.backoff = backoff or Backoff()
        self.retries = 0  # transient failures retried so far (for tests and logs)
        self.tls = tls
        # One channel for every member, so gRPC checks one name in each member's
        # certificate (ssl_target_name_override): the endpoints' common host or
        # --etcd-server-name (connect() refuses TLS without one).
        self.server_name = server_name or (tls.server_name if tls is not None else None)
        #: operations that failed, by kind (Failure values, gave-up, outcome-unknown):
        #: metrics (controller/metrics.py)
        self.failures: Counter[str] = Counter()
        #: operations asked of etcd (not attempts), by name (get, get_prefix, put_many,
        #: ...): metrics, and the reconnect-storm figures of bench/bench_controller.py
        self.requests: Counter[str] = Counter()
        self._client = Etcd3Client(
            self.endpoints,
            rpc_max_attempts=1,  # we retry ourselves, and never a write blindly
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            tls_server_name=self.server_name if tls is not None else None,
            # etcd3aio's TLS arguments (None: a plaintext channel)
            ca_cert=tls.ca_pem if tls is not None else None,
            cert_chain=tls.cert_pem if tls is not None else None,
            cert_key=tls.key_pem if tls is not None else None,
        )
        # etcd3aio has no option for the channel's receive limit; its connection
        # manager's option list is what its channel is built from.
        manager = getattr(self._client, "_manager", None)
        options = getattr(manager, "grpc_options", None)
        if not isinstance(options, list):
            raise RuntimeError(
                "etcd3aio changed: cannot raise its gRPC receive limit (see "
                "controller/etcd_store.py); pin the etcd3aio version from pyproject.toml"
            )
        options.append(("grpc.max_receive_message_length", ETCD_MAX_RESPONSE_BYTES))
        self._connected = False

    @classmethod
    async def connect(
        cls,
        spec: str,
        *,
        tls: EtcdClientTls | None = None,
        timeout: float = DEFAULT_ETCD_ATTEMPT_TIMEOUT,
        retry_budget: float = DEFAULT_ETCD_RETRY_BUDGET,
    ) -> EtcdStore:
        """Connect to ``spec`` (``URL[,URL...]``) and check that etcd answers.

        ``https://`` endpoints need ``tls``; ``http://`` ones must not have it;
        endpoints without a scheme follow ``tls``.  With TLS every member is probed
        first (:func:`controller.etcd_tls.probe`): a member that refuses, or that the
        controller refuses, is named in the error (all of them failing) or in a warning
        (some of them)."""
        try:
            urls = parse_urls(spec)
            server_name = _tls_server_name(spec, urls, tls)
            store = cls(
                urls.endpoints,
                timeout=timeout,
                retry_budget=retry_budget,
                tls=tls,
                server_name=server_name,
            )
        except ValueError as exc:
            raise StoreUnavailable(str(exc)) from exc
        refusals: list[str] = []
        if tls is not None and server_name is not None:
            refusals = await store._probe_members(tls, server_name)
        await store._client.connect()
        store._connected = True
        try:
            await store.get("/ipsecd-ping")  # raises StoreUnavailable naming the endpoints
        except StoreUnavailable as exc:
            await store.close()
            if len(refusals) == len(store.endpoints):
                raise StoreUnavailable(
                    f"etcd at {store._where()} cannot be used (check --etcd and its TLS files): "
                    + "; ".join(refusals)
                ) from exc
            if refusals:
                raise StoreUnavailable(f"{exc}; TLS: {'; '.join(refusals)}") from exc
            raise
        except BaseException:
            await store.close()
            raise
        for refusal in refusals:
            _log.warning("etcd TLS: %s (the other members answer)", refusal)
        return store

    async def _probe_members(self, tls: EtcdClientTls, server_name: str) -> list[str]:
        """What :func:`~controller.etcd_tls.probe` says about each member, for those
        that fail."""
        answers = await asyncio.gather(
            *(probe(ep, tls, server_name, self.timeout) for ep in self.endpoints)
        )
        return [f"{ep}: {why}" for ep, why in zip(self.endpoints, answers, strict=True) if why]

    def _where(self) -> str:
        return ",".join(self.endpoints)

    def _unavailable(self, op: str, exc: BaseException) -> ControllerError:
        """The error for ``exc``, which ended ``op`` without (more) retries."""
        detail = _detail(exc, self.timeout)
        kind = classify(exc)
        self.failures[kind.value] += 1
        if kind is Failure.TOO_LARGE:
            return StoreRequestTooLarge(
                f"etcd at {self._where()} refused {op} as too large ({detail}); etcd "
                "accepts requests up to its --max-request-bytes (default 1.5 MiB)"
            )
        if kind is Failure.REFUSED:
            return StoreUnavailable(
                f"etcd at {self._where()} refused {op}: {detail} (see the etcd log)"
            )
        if self.tls is not None and any(words in detail for words in _TLS_DETAILS):
            return StoreUnavailable(
                f"etcd at {self._where()} failed during {op}: {detail} (a TLS failure: "
                f"check the etcd CA {self.tls.ca_file} and the client certificate "
                f"{self.tls.cert_file or '(none)'})"
            )
        return StoreUnavailable(
            f"etcd at {self._where()} failed during {op}: {detail} (is etcd running and "
            "reachable? check --etcd)"
        )

    def _gave_up(
        self, op: str, started: float, attempts: int, last: BaseException | None
    ) -> StoreUnavailable:
        self.failures["gave-up"] += 1
        spent = time.monotonic() - started
        what = _detail(last, self.timeout) if last is not None else "no time left"
        return StoreUnavailable(
            f"etcd at {self._where()} did not complete {op} in {spent:.1f}s ({attempts} "
            f"attempt{'s' if attempts != 1 else ''}, last: {what}); the cluster has had no "
            "usable leader for that long: are a majority of its members down or "
            "partitioned? check `etcdctl endpoint health --cluster`"
        )

    async def _retrying(
        self,
        op: str,
        attempt: Callable[[float], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """Run ``attempt(timeout)`` until it succeeds, a non-transient error, or the
        deadline.  For idempotent operations only (reads, puts, deletes)."""
        self.requests[op] += 1
        started = time.monotonic()
        if deadline is None:
            deadline = operation_deadline(self.retry_budget, now=started)
        delays = self.backoff.delays()
        attempts = 0
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            if left < _MIN_ATTEMPT:
                raise self._gave_up(op, started, attempts, last) from last
            attempts += 1
            try:
                return await attempt(min(self.timeout, left))
            except _ERRORS as exc:
                if classify(exc) is not Failure.TRANSIENT:
                    raise self._unavailable(op, exc) from exc
                last = exc
            await self._pause(op, last, delays, deadline)

    async def _pause(self, op: str, exc: BaseException, delays: Any, deadline: float) -> None:
        self.retries += 1
        delay = min(next(delays), max(0.0, deadline - time.monotonic()))
        _log.info("etcd %s: %s; retrying in %.2fs", op, _detail(exc, self.timeout), delay)
        await asyncio.sleep(delay)

    def _txn(self, ops: list[Any]) -> Callable[[float], Awaitable[Any]]:
        """One unconditional transaction of ``ops``, as an attempt."""
        return lambda t: self._kv.txn([], ops, timeout=t)

    @property
    def _kv(self) -> KVService:
        assert self._client.kv is not None, "EtcdStore used before connect()"
        return self._client.kv

    # -- Store ------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        resp = await self._retrying("get", lambda t: self._kv.get(key, timeout=t))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision))

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False, below: str | None = None
    ) -> tuple[list[KeyValue], int]:
        end = below.encode() if below is not None else prefix_range_end(prefix)
        resp = await self._retrying(
            "get_prefix",
            lambda t: self._kv.get(
                prefix,
                range_end=end,
                limit=limit,
                sort_order=SortOrder.DESCEND if descending else SortOrder.ASCEND,
                sort_target=SortTarget.KEY,
                timeout=t,
            ),
        )
        kvs = [KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs]
        return kvs, int(resp.header.revision)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        resp = await self._retrying(
            "put", lambda t: self._kv.put(key, value, lease=lease, timeout=t)
        )
        return int(resp.header.revision)

    async def put_many(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> None:
        for chunk in _chunks(items, lambda kv: len(kv[0]) + len(kv[1])):
            ops = [KVService.txn_op_put(k, v, lease=lease) for k, v in chunk]
            await self._retrying("put_many", self._txn(ops))

    async def delete(self, key: str) -> None:
        await self._retrying("delete", lambda t: self._kv.delete(key, timeout=t))

    async def delete_many(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys, len):
            ops = [KVService.txn_op_delete(k) for k in chunk]
            await self._retrying("delete_many", self._txn(ops))

    async def compare_and_swap(
        self,
        pointer: str,
        expected: bytes | None,
        new_pointer_value: bytes,
        writes: Sequence[tuple[str, bytes]],
    ) -> bool:
        compares = [
            KVService.txn_compare_create_revision(pointer, 0)
            if expected is None
            else KVService.txn_compare_value(pointer, expected)
        ]
        compares += [KVService.txn_compare_create_revision(k, 0) for k, _ in writes]
        ops = [KVService.txn_op_put(k, v) for k, v in writes]
        ops.append(KVService.txn_op_put(pointer, new_pointer_value))
        return await self._conditional(
            "compare_and_swap",
            lambda t: self._kv.txn(compares, ops, timeout=t),
            lambda deadline: self._cas_outcome(pointer, expected, writes, deadline),
        )

    async def _conditional(
        self,
        op: str,
        send: Callable[[float], Awaitable[Any]],
        outcome: Callable[[float], Awaitable[bool | None]],
    ) -> bool:
        """A conditional write (a transaction whose compares make it apply at most
        once), with retries.  ``outcome(deadline)`` reads back whether it was applied:
        True (it was), False (it cannot be any more: it lost), None (not applied: re-send).
        """
        started = time.monotonic()
        deadline = operation_deadline(self.retry_budget, now=started)
        delays = self.backoff.delays()
        attempts = 0
        unknown = False  # an attempt may have been applied without us hearing of it
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            if left < _MIN_ATTEMPT:
                raise (
                    self._outcome_unknown(op, started, attempts, last)
                    if unknown
                    else (self._gave_up(op, started, attempts, last))
                )
            attempts += 1
            try:
                resp = await send(min(self.timeout, left))
            except _ERRORS as exc:
                if classify(exc) is not Failure.TRANSIENT:
                    if unknown:
                        raise self._outcome_unknown(op, started, attempts, exc) from exc
                    raise self._unavailable(op, exc) from exc
                last = exc
                unknown = True
            else:
                if resp.succeeded:
                    return True
                if not unknown:
                    return False  # lost on the first attempt: a plain conflict
            # Did an earlier attempt apply after all?  (Read back, never re-send blindly.)
            try:
                applied = await outcome(deadline)
            except StoreUnavailable as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                raise self._outcome_unknown(op, started, attempts, cause) from exc
            if applied is not None:
                return applied
            unknown = True  # not applied as of the read, but an attempt may be in flight
            if last is not None:
                await self._pause(op, last, delays, deadline)

    def _outcome_unknown(
        self, op: str, started: float, attempts: int, last: BaseException | None
    ) -> StoreOutcomeUnknown:
        self.failures["outcome-unknown"] += 1
        spent = time.monotonic() - started
        what = _detail(last, self.timeout) if last is not None else "no time left"
        return StoreOutcomeUnknown(
            f"etcd at {self._where()} stopped answering during {op} ({attempts} "
            f"attempt{'s' if attempts != 1 else ''} in {spent:.1f}s, last: {what}) and its "
            "outcome could not be read back: the write may or may not have been applied; "
            "are a majority of the etcd members down or partitioned? check `etcdctl "
            "endpoint health --cluster`"
        )

    async def _read_many(self, keys: Sequence[str], deadline: float) -> list[KeyValue | None]:
        """Several keys read in one transaction (one consistent snapshot)."""
        ops = [KVService.txn_op_get(k) for k in keys]
        resp = await self._retrying(
            "read-back", lambda t: self._kv.txn([], ops, timeout=t), deadline=deadline
        )
        out: list[KeyValue | None] = []
        for r in resp.responses:
            kvs = r.response_range.kvs
            out.append(
                KeyValue(kvs[0].key.decode(), bytes(kvs[0].value), int(kvs[0].mod_revision))
                if kvs
                else None
            )
        return out

    async def _cas_outcome(
        self,
        pointer: str,
        expected: bytes | None,
        writes: Sequence[tuple[str, bytes]],
        deadline: float,
    ) -> bool | None:
        """Was our compare-and-swap applied?  The transaction writes every key of
        ``writes`` (all absent before) and the pointer, atomically, so: the keys hold
        our bytes -> applied; a key holds other bytes, or the pointer moved on -> lost
        (the pointer only moves forward: our compare can never hold again); the pointer
        still at ``expected`` and the keys absent -> not applied (yet)."""
        got = await self._read_many([pointer, *(k for k, _ in writes)], deadline)
        now_pointer, now_writes = got[0], got[1:]
        if writes and all(
            kv is not None and kv.value == v for kv, (_, v) in zip(now_writes, writes, strict=True)
        ):
            return True
        if any(kv is not None for kv in now_writes):
            return False
        if (now_pointer.value if now_pointer else None) != expected:
            return False
        return None

    async def create_if_absent(self, key: str, value: bytes, *, lease: int) -> bool:
        async def outcome(deadline: float) -> bool | None:
            (kv,) = await self._read_many([key], deadline)
            if kv is None:
                return None
            return kv.value == value

        return await self._conditional(
            "create_if_absent",
            lambda t: self._kv.txn(
                [KVService.txn_compare_create_revision(key, 0)],
                [KVService.txn_op_put(key, value, lease=lease)],
                timeout=t,
            ),
            outcome,
        )

    async def grant_lease(self, ttl: int) -> int:
        lease = self._client.lease
        assert lease is not None
        # A lost reply leaves an unused lease behind: it expires after ``ttl``.
        resp = await self._retrying("grant_lease", lambda t: lease.grant(ttl, timeout=t))
        return int(resp.ID)

    async def refresh_lease(self, lease: int) -> bool:
        service = self._client.lease
        assert service is not None

        async def once(timeout: float) -> bool:
            call = service.keep_alive(lease)
            try:
                async with asyncio.timeout(timeout):
                    async for resp in call:
                        return int(resp.TTL) > 0
            finally:
                call.cancel()
            return False

        return await self._retrying("refresh_lease", once)

    async def revoke_lease(self, lease: int) -> None:
        service = self._client.lease
        assert service is not None
        try:
            await self._retrying("revoke_lease", lambda t: service.revoke(lease, timeout=t))
        except StoreUnavailable as exc:
            rpc = _rpc_error(exc.__cause__) if exc.__cause__ is not None else None
            if rpc is not None and rpc.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired (or revoked by an earlier attempt)
            raise

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        assert self._client.watch is not None
        stream = self._client.watch.watch(
            prefix, range_end=prefix_range_end(prefix), start_revision=start_revision
        )
        try:
            async for resp in stream:
                if resp.compact_revision > 0:
                    raise StoreCompacted(
                        f"etcd at {self._where()} compacted revision {start_revision}; "
                        f"oldest available is {resp.compact_revision}"
                    )
                if resp.canceled:
                    raise StoreUnavailable(
                        f"etcd at {self._where()} cancelled the watch on {prefix}: "
                        f"{resp.cancel_reason or 'no reason given'}"
                    )
                if not resp.events:
                    continue
                yield [
                    WatchEvent(
                        e.kv.key.decode(),
                        None if e.type == _EVENT_DELETE else bytes(e.kv.value),
                        int(e.kv.mod_revision),
                    )
                    for e in resp.events
                ]
        except _ERRORS as exc:
            raise self._unavailable("watch", exc) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator

    async def compact(self, revision: int) -> None:
        try:
            await self._retrying("compact", lambda t: self._kv.compact(revision, timeout=t))
        except StoreUnavailable as exc:
            rpc = _rpc_error(exc.__cause__) if exc.__cause__ is not None else None
            if rpc is not None and rpc.code() == grpc.StatusCode.OUT_OF_RANGE:
                return  # already compacted: fine
            raise

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.close()


def _chunks(items: Sequence[T], size: Callable[[T], int]) -> list[list[T]]:
    """Split a batch into transactions under etcd's op-count and request-size limits."""
    out: list[list[T]] = []
    chunk: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= ETCD_TXN_MAX_OPS or total + n > ETCD_TXN_MAX_BYTES):
            out.append(chunk)
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        out.append(chunk)
    return out
