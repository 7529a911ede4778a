"""EtcdStore's retries and compare-and-swap outcome checks, against a scripted fake of
etcd3aio's KV service (the exact fault timings a real cluster cannot be made to hit on
demand; tests/integration/controller/test_etcd_cluster.py does the real thing)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
import pytest
from etcd3aio._protobuf import Compare, RangeResponse, RequestOp, TxnResponse
from etcd3aio.errors import EtcdConnectionError, EtcdPermissionDeniedError

from controller.errors import StoreOutcomeUnknown, StoreRequestTooLarge, StoreUnavailable
from controller.etcd_store import EtcdStore, Failure, _chunks, classify
from controller.limits import ETCD_TXN_MAX_BYTES, ETCD_TXN_MAX_OPS
from controller.retry import Backoff, operation_deadline, request_deadline
from tests.support.aio import run_async


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def wrapped(code: grpc.StatusCode, details: str) -> Exception:
    """As etcd3aio raises it: its own error, the gRPC one as the cause."""
    try:
        raise EtcdConnectionError(f"KV.Txn failed after 1 attempts: {code.name}") from (
            rpc_error(code, details)
        )
    except EtcdConnectionError as exc:
        return exc


LEADER_CHANGED = wrapped(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
UNREACHABLE = wrapped(
    grpc.StatusCode.UNAVAILABLE,
    "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused",
)


class FakeKV:
    """Enough of etcd3aio's KVService: txn (value/create compares, put and range ops)
    and get.  ``faults`` scripts the next calls: ``("before", exc)`` fails without
    applying, ``("after", exc)`` applies and then loses the answer; ``hooks`` run
    before the call with the same index."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.revision = 1
        self.faults: list[tuple[str, BaseException] | None] = []
        self.hooks: dict[int, Any] = {}
        self.calls: list[str] = []

    def _fault(self, kind: str) -> tuple[str, BaseException] | None:
        index = len(self.calls)
        self.calls.append(kind)
        hook = self.hooks.pop(index, None)
        if hook is not None:
            hook(self)
        return self.faults.pop(0) if self.faults else None

    def holds(self, c: Compare) -> bool:
        have = self.data.get(c.key)
        if c.target == Compare.CREATE:
            return (have is None) == (c.create_revision == 0)
        return have == c.value

    def apply(self, compares: Sequence[Compare], ops: Sequence[RequestOp]) -> TxnResponse:
        resp = TxnResponse(succeeded=all(self.holds(c) for c in compares))
        if resp.succeeded:
            if any(op.HasField("request_put") for op in ops):
                self.revision += 1
            for op in ops:
                out = resp.responses.add()
                if op.HasField("request_put"):
                    self.data[op.request_put.key] = op.request_put.value
                    out.response_put.SetInParent()
                else:
                    key = op.request_range.key
                    if key in self.data:
                        kv = out.response_range.kvs.add()
                        kv.key, kv.value, kv.mod_revision = key, self.data[key], self.revision
                    else:
                        out.response_range.SetInParent()
        resp.header.revision = self.revision
        return resp

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[RequestOp],
        failure: Sequence[RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        writes = any(op.HasField("request_put") for op in success)
        fault = self._fault("txn" if writes else "read")
        if fault and fault[0] == "before":
            raise fault[1]
        resp = self.apply(compare, success)
        if fault:
            raise fault[1]
        return resp

    async def get(self, key: str, *, timeout: float | None = None, **_: Any) -> RangeResponse:
        fault = self._fault("get")
        if fault:
            raise fault[1]
        resp = RangeResponse()
        if key.encode() in self.data:
            kv = resp.kvs.add()
            kv.key, kv.value, kv.mod_revision = key.encode(), self.data[key.encode()], 1
        return resp


def make_store(retry_budget: float = 5.0) -> tuple[EtcdStore, FakeKV]:
    store = EtcdStore(
        ["127.0.0.1:1"],
        timeout=1.0,
        retry_budget=retry_budget,
        backoff=Backoff(initial=0.001, maximum=0.01),
    )
    fake = FakeKV()
    store._client.kv = fake  # type: ignore[assignment]
    return store, fake


PTR, REV = "/p/current", "/p/rev/2"


async def cas(store: EtcdStore, record: bytes = b"mine") -> bool:
    return await store.compare_and_swap(PTR, b"1", b"2", [(REV, record)])


def seed(fake: FakeKV) -> None:
    fake.data[PTR.encode()] = b"1"


@run_async(10)
async def test_applied_but_answer_lost_is_read_back_not_resent() -> None:
    store, fake = make_store()
    seed(fake)
    fake.faults = [("after", TimeoutError())]
    assert await cas(store) is True
    assert fake.calls == ["txn", "read"]  # sent once, then the read-back
    assert fake.data[REV.encode()] == b"mine" and fake.data[PTR.encode()] == b"2"


@run_async(10)
async def test_not_applied_is_resent_once_and_applies() -> None:
    store, fake = make_store()
    seed(fake)
    fake.faults = [("before", LEADER_CHANGED)]
    assert await cas(store) is True
    assert fake.calls == ["txn", "read", "txn"]
    assert fake.data[REV.encode()] == b"mine" and store.retries == 1


@run_async(10)
async def test_someone_else_won_during_the_outage() -> None:
    store, fake = make_store()
    seed(fake)

    def other_push(f: FakeKV) -> None:  # another replica's push lands meanwhile
        f.data[REV.encode()] = b"theirs"
        f.data[PTR.encode()] = b"2"

    fake.faults = [("before", LEADER_CHANGED)]
    fake.hooks[1] = other_push
    assert await cas(store) is False
    assert fake.data[REV.encode()] == b"theirs"


@run_async(10)
async def test_late_apply_of_the_first_attempt_is_recognized() -> None:
    # The first attempt fails before applying as far as the read-back can tell; it
    # lands just before the re-send, which then fails its compares: still ours.
    store, fake = make_store()
    seed(fake)

    def late_apply(f: FakeKV) -> None:
        f.data[REV.encode()] = b"mine"
        f.data[PTR.encode()] = b"2"

    fake.faults = [("before", TimeoutError())]
    fake.hooks[2] = late_apply
    assert await cas(store) is True
    assert fake.calls == ["txn", "read", "txn", "read"]


@run_async(10)
async def test_a_plain_conflict_is_not_retried() -> None:
    store, fake = make_store()
    fake.data[PTR.encode()] = b"7"
    assert await cas(store) is False
    assert fake.calls == ["txn"]


@run_async(10)
async def test_outage_past_the_deadline_says_the_outcome_is_unknown() -> None:
    store, fake = make_store(retry_budget=0.3)
    seed(fake)
    fake.faults = [("before", TimeoutError())] + [("before", LEADER_CHANGED)] * 10_000
    with pytest.raises(StoreOutcomeUnknown) as info:
        await cas(store)
    message = str(info.value)
    assert "may or may not have been applied" in message and "\n" not in message
    assert "etcdctl endpoint health" in message
    assert REV.encode() not in fake.data


@run_async(10)
async def test_an_unreachable_cluster_fails_at_once() -> None:
    store, fake = make_store()
    seed(fake)
    fake.faults = [("before", UNREACHABLE)]
    with pytest.raises(StoreUnavailable) as info:
        await cas(store)
    assert not isinstance(info.value, StoreOutcomeUnknown)
    assert fake.calls == ["txn"] and store.retries == 0
    assert "--etcd" in str(info.value)


@run_async(10)
async def test_reads_retry_transient_errors_then_succeed() -> None:
    store, fake = make_store()
    fake.data[b"/k"] = b"v"
    fake.faults = [("before", LEADER_CHANGED), ("before", TimeoutError())]
    kv = await store.get("/k")
    assert kv is not None and kv.value == b"v"
    assert fake.calls == ["get"] * 3 and store.retries == 2


@run_async(10)
async def test_quorum_loss_gives_up_with_a_message() -> None:
    store, fake = make_store(retry_budget=0.2)
    fake.faults = [("before", TimeoutError())] * 10_000
    with pytest.raises(StoreUnavailable) as info:
        await store.get("/k")
    message = str(info.value)
    assert "did not complete get" in message and "majority" in message
    assert "\n" not in message


@run_async(10)
async def test_the_request_deadline_ends_retries_before_the_budget() -> None:
    store, fake = make_store(retry_budget=3600.0)
    fake.faults = [("before", LEADER_CHANGED)] * 1_000_000
    # run_async's bound (10 s) fails the test if the one-hour budget were used
    with request_deadline(0.3), pytest.raises(StoreUnavailable):
        await store.get("/k")


@run_async(10)
async def test_refusals_are_not_retried() -> None:
    store, fake = make_store()
    try:
        raise EtcdPermissionDeniedError("KV.Range failed") from rpc_error(
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"
        )
    except EtcdPermissionDeniedError as exc:
        fake.faults = [("before", exc)]
    with pytest.raises(StoreUnavailable, match="refused get"):
        await store.get("/k")
    assert fake.calls == ["get"]
    fake.faults = [
        ("before", rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"))
    ]
    seed(fake)
    with pytest.raises(StoreRequestTooLarge, match="max-request-bytes"):
        await cas(store)


def test_classification() -> None:
    u = grpc.StatusCode.UNAVAILABLE
    cases = {
        "etcdserver: leader changed": Failure.TRANSIENT,
        "etcdserver: no leader": Failure.TRANSIENT,
        "etcdserver: request timed out, possibly due to previous leader failure": (
            Failure.TRANSIENT
        ),
        "Socket closed": Failure.TRANSIENT,
        "failed to connect to all addresses; last error: ...": Failure.UNREACHABLE,
    }
    for details, expected in cases.items():
        assert classify(wrapped(u, details)) is expected, details
    assert classify(TimeoutError()) is Failure.TRANSIENT
    assert classify(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "")) is Failure.TRANSIENT
    too_many = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
    assert classify(too_many) is Failure.TRANSIENT
    nospace = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space")
    assert classify(nospace) is Failure.REFUSED
    big = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
    assert classify(big) is Failure.TOO_LARGE
    assert classify(ConnectionRefusedError()) is Failure.UNREACHABLE


def test_backoff_is_bounded_and_jittered() -> None:
    backoff = Backoff(initial=0.05, maximum=1.0)
    delays = backoff.delays(random.Random(7))
    caps = [min(1.0, 0.05 * 2**n) for n in range(12)]
    got = [next(delays) for _ in caps]
    assert all(cap / 2 <= d < cap for d, cap in zip(got, caps, strict=True))
    other = Backoff(initial=0.05, maximum=1.0).delays(random.Random(8))
    assert got != [next(other) for _ in caps]  # jittered: two callers do not agree
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)


def test_operation_deadline_takes_the_earlier_of_budget_and_request() -> None:
    assert operation_deadline(10.0, now=100.0) == 110.0
    with request_deadline(5.0):
        inner = operation_deadline(3600.0)
        with request_deadline(60.0):  # a nested, later deadline does not extend it
            assert operation_deadline(3600.0) == inner
    with request_deadline(None):
        assert operation_deadline(10.0, now=100.0) == 110.0


def test_batches_split_below_etcds_limits() -> None:
    items = [("k", b"x" * 1000)] * 250
    chunks = _chunks(items, lambda kv: len(kv[0]) + len(kv[1]))
    assert sum(len(c) for c in chunks) == 250
    assert all(len(c) <= ETCD_TXN_MAX_OPS for c in chunks)
    big = [("k", b"x" * (ETCD_TXN_MAX_BYTES // 3))] * 7
    chunks = _chunks(big, lambda kv: len(kv[0]) + len(kv[1]))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    assert _chunks([], len) == []
