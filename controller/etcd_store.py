"""The :class:`~controller.store.Store` over a real etcd (v3 API) with ``etcd3aio``.

Why etcd3aio (async) and not python3-etcd3 (sync, module ``etcd3``):

* the controller is an asyncio gRPC server; a sync client would need a thread per
  blocking call and, for the one long-lived watch, a thread that hands events back to
  the loop.  etcd3aio runs on the same ``grpc.aio`` event loop as the server;
* its watch resumes after an etcd restart from the next revision (measured, see
  LAB-NOTES), which is what keeps agent streams correct across etcd restarts;
* caveats, handled here: (1) it retries Put/Txn on DEADLINE_EXCEEDED, which could apply a
  compare-and-swap twice from the caller's point of view — we construct it with
  ``rpc_max_attempts=1`` so every write is attempted once and a failure is reported;
  (2) its channel target is hard-coded ``ipv4:host:port,...`` — we resolve DNS names
  to IPv4 addresses ourselves and refuse IPv6 endpoints with a clear message;
  (3) its declared minimum versions are too low — pyproject pins grpcio/protobuf.

Every etcd3aio / gRPC failure is mapped to :class:`StoreUnavailable` here (one edge).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
from etcd3aio import Etcd3Client
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService, SortOrder, SortTarget, prefix_range_end

from controller.errors import StoreCompacted, StoreUnavailable
from controller.store import KeyValue, WatchEvent

__all__ = ["EtcdStore", "parse_endpoints"]

_log = logging.getLogger(__name__)
_EVENT_DELETE = 1
_TXN_MAX_OPS = 100  # etcd's default --max-txn-ops is 128


def parse_endpoints(spec: str) -> list[str]:
    """``http://a:2379,b:2379`` -> ``["10.0.0.1:2379", ...]`` (IPv4 host:port)."""
    out: list[str] = []
    for raw in (p.strip() for p in spec.split(",")):
        if not raw:
            continue
        url = urlsplit(raw if "://" in raw else f"http://{raw}")
        if url.scheme not in ("http", ""):
            raise ValueError(
                f"etcd endpoint {raw!r}: only http:// is supported for now (TLS to etcd is "
                "a later security issue)"
            )
        host, port = url.hostname, url.port or 2379
        if not host:
            raise ValueError(f"etcd endpoint {raw!r}: no host")
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
    return out


class EtcdStore:
    """A :class:`~controller.store.Store` backed by etcd.  Create with :meth:`connect`."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._client = Etcd3Client(
            self.endpoints,
            rpc_max_attempts=1,  # never re-send a compare-and-swap (see module docstring)
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
        )
        self._connected = False

    @classmethod
    async def connect(cls, spec: str, *, timeout: float = 5.0) -> EtcdStore:
        """Connect to ``spec`` (``URL[,URL...]``) and check that etcd answers."""
        try:
            store = cls(parse_endpoints(spec), timeout=timeout)
        except ValueError as exc:
            raise StoreUnavailable(str(exc)) from exc
        await store._client.connect()
        store._connected = True
        await store.get("/ipsecd-ping")  # raises StoreUnavailable with the endpoints named
        return store

    def _where(self) -> str:
        return ",".join(self.endpoints)

    def _unavailable(self, op: str, exc: BaseException) -> StoreUnavailable:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (is etcd running and reachable? check --etcd)"
        if isinstance(exc, grpc.aio.AioRpcError):
            detail = f"{exc.code().name}: {exc.details()}"
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                hint = " (etcd refused the request; see the etcd log)"
        return StoreUnavailable(f"etcd at {self._where()} failed during {op}: {detail}{hint}")

    async def _call(self, op: str, coro: Any) -> Any:
        try:
            return await coro
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise self._unavailable(op, exc) from exc

    @property
    def _kv(self) -> KVService:
        assert self._client.kv is not None, "EtcdStore used before connect()"
        return self._client.kv

    # -- Store ------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call("get", self._kv.get(key, timeout=self.timeout))
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision))

    async def get_prefix(
        self, prefix: str, *, limit: int = 0, descending: bool = False
    ) -> tuple[list[KeyValue], int]:
        resp = await self._call(
            "get_prefix",
            self._kv.get(
                prefix,
                range_end=prefix_range_end(prefix),
                limit=limit,
                sort_order=SortOrder.DESCEND if descending else SortOrder.ASCEND,
                sort_target=SortTarget.KEY,
                timeout=self.timeout,
            ),
        )
        kvs = [KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs]
        return kvs, int(resp.header.revision)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        resp = await self._call("put", self._kv.put(key, value, lease=lease, timeout=self.timeout))
        return int(resp.header.revision)

    async def put_many(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0) -> None:
        for i in range(0, len(items), _TXN_MAX_OPS):
            ops = [KVService.txn_op_put(k, v, lease=lease) for k, v in items[i : i + _TXN_MAX_OPS]]
            await self._call("put_many", self._kv.txn([], ops, timeout=self.timeout))

    async def delete(self, key: str) -> None:
        await self._call("delete", self._kv.delete(key, timeout=self.timeout))

    async def delete_many(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), _TXN_MAX_OPS):
            ops = [KVService.txn_op_delete(k) for k in keys[i : i + _TXN_MAX_OPS]]
            await self._call("delete_many", self._kv.txn([], ops, timeout=self.timeout))

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
        resp = await self._call(
            "compare_and_swap", self._kv.txn(compares, ops, timeout=self.timeout)
        )
        return bool(resp.succeeded)

    async def create_if_absent(self, key: str, value: bytes, *, lease: int) -> bool:
        resp = await self._call(
            "create_if_absent",
            self._kv.txn(
                [KVService.txn_compare_create_revision(key, 0)],
                [KVService.txn_op_put(key, value, lease=lease)],
                timeout=self.timeout,
            ),
        )
        return bool(resp.succeeded)

    async def grant_lease(self, ttl: int) -> int:
        assert self._client.lease is not None
        resp = await self._call("grant_lease", self._client.lease.grant(ttl, timeout=self.timeout))
        return int(resp.ID)

    async def refresh_lease(self, lease: int) -> bool:
        assert self._client.lease is not None
        call = self._client.lease.keep_alive(lease)
        try:
            async with asyncio.timeout(self.timeout):
                async for resp in call:
                    return int(resp.TTL) > 0
        except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
            raise self._unavailable("refresh_lease", exc) from exc
        finally:
            call.cancel()
        return False

    async def revoke_lease(self, lease: int) -> None:
        assert self._client.lease is not None
        try:
            await self._call("revoke_lease", self._client.lease.revoke(lease, timeout=self.timeout))
        except StoreUnavailable:
            raise
        except grpc.aio.AioRpcError:  # NOT_FOUND: already expired
            return

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
        except (EtcdError, grpc.aio.AioRpcError, OSError) as exc:
            raise self._unavailable("watch", exc) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator

    async def compact(self, revision: int) -> None:
        try:
            await self._kv.compact(revision, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # already compacted: fine
                return
            raise self._unavailable("compact", exc) from exc
        except (EtcdError, TimeoutError, OSError) as exc:
            raise self._unavailable("compact", exc) from exc

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.close()
